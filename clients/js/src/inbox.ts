// The user's inbox, kept live: `rt.inbox()`.
//
// It works like the live collections (live.ts), on the user's own stream instead of a room:
//  1. It reads the newest page of GET /me/notifications. The body's `seq` is the snapshot seq S;
//     then it subscribes the inbox stream with `since: S`, so the server replays every event
//     after S and goes on live. Events are held while a (re)load runs and applied after it, those
//     with seq > S only (the page shows the older ones).
//  2. `notification.created` adds the notification (once: by id, and the stream delivers each seq
//     once; a replayed one may show `readAt` already); `notification.read` marks the named ids, or
//     every notification with `seq <= upto`.
//     Being read is final (nothing marks a notification unread), so a mark is also applied to
//     notifications that show up later through `loadMore()`, whose pages may be older reads.
//  3. The unread count is the server's: each count comes with the seq it is exact at (the page's S,
//     a `notification.read`'s own seq, the `subscribed` seq, a mark-read answer's seq), and is
//     kept only if that seq is newer than the one the current count is exact at; a created event
//     after that seq adds one. So an answer that arrives before the events it already counts does
//     not count them twice.
//  4. After a reconnect the client resubscribes with the highest seq it has seen (a `since` the
//     server refuses as `resume_unavailable` makes it join without one and reload). What the stream
//     cannot say is a change of membership (a team's notifications leave the list with the user,
//     and come back with them): the inbox reloads when the user's own `member.added` /
//     `member.removed` arrives, and when a join's unread count differs from what the events gave.

import type { Activity, Notification } from './generated/protocol.js';
import { ApiError, isAuthFailure, type Session } from './http.js';
import type { InboxEvent, MarkReadResult, NotificationPage } from './inbox-types.js';
import { RealtimeError, type InboxSubscribedInfo, type InboxSubscription, type RealtimeClient } from './realtime.js';

export type InboxStatus = 'loading' | 'live' | 'refetching' | 'error' | 'closed';

export interface InboxSnapshot {
  /** Newest first (descending `seq`): the first page and whatever `loadMore()` added, and every
   * notification created since. */
  readonly items: readonly Notification[];
  /** The user's unread notifications (all of them, also those on pages not loaded). */
  readonly unreadCount: number;
  readonly status: InboxStatus;
  /** With status 'error': why. */
  readonly error: unknown;
  /** The highest seq of the inbox stream accounted for; null before the first load. */
  readonly seq: number | null;
  /** Older notifications are left to load (`loadMore()`). */
  readonly hasMore: boolean;
  /** A `loadMore()` is running. */
  readonly loadingMore: boolean;
}

export interface InboxOptions {
  /** Notifications per page (1 to 200; default 50). The first open of a client's inbox decides. */
  pageSize?: number;
}

export interface Inbox {
  /** The current snapshot: the SAME object until something changed. */
  getSnapshot(): InboxSnapshot;
  /** Called once per batch of changes (after a microtask). Returns its remover. */
  subscribe(listener: (s: InboxSnapshot) => void): () => void;
  /** The same as `subscribe`: `inbox.on('change', fn)`. */
  on(event: 'change', listener: (s: InboxSnapshot) => void): () => void;
  readonly items: readonly Notification[];
  readonly unreadCount: number;
  readonly status: InboxStatus;
  /** The first page is loaded and the stream joined. Rejects if the inbox errs or closes first. */
  readonly ready: Promise<InboxSnapshot>;
  get(id: string): Notification | undefined;
  /** Loads the next older page (nothing when there is none). */
  loadMore(): Promise<void>;
  /** Marks these notifications read (POST /me/notifications/read with `ids`, 200 at a time). */
  markRead(ids: string | readonly string[]): Promise<void>;
  /** Marks every notification up to the newest seq the inbox has seen read (`upto`). */
  markAllRead(): Promise<void>;
  /** Releases this handle; the last one of the client leaves the stream. */
  close(): void;
}

/** What the inbox needs for HTTP: a `Session` fits. */
export type InboxHttp = Pick<Session, 'request'> & { readonly user?: { id: string } };

const registry = new WeakMap<RealtimeClient, InboxEngine>();

/** The user's inbox on `rt`, shared by every open of the same client. */
export function openInbox(rt: RealtimeClient, http: InboxHttp, opts: InboxOptions = {}): Inbox {
  if (!rt || typeof rt.subscribeInbox !== 'function') throw new TypeError('rt must be a RealtimeClient');
  const pageSize = opts.pageSize ?? 50;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 200) {
    throw new TypeError('pageSize must be an integer from 1 to 200');
  }
  let engine = registry.get(rt);
  if (!engine || engine.finished) {
    engine = new InboxEngine(rt, http, pageSize);
    registry.set(rt, engine);
    engine.refs++;
    engine.start();
  } else {
    engine.refs++;
  }
  return new InboxHandle(engine);
}

const CLOSED: InboxSnapshot = Object.freeze({
  items: Object.freeze([]),
  unreadCount: 0,
  status: 'closed',
  error: null,
  seq: null,
  hasMore: false,
  loadingMore: false,
});

class InboxHandle implements Inbox {
  readonly ready: Promise<InboxSnapshot>;
  private readonly engine: InboxEngine;
  private readonly mine = new Set<(s: InboxSnapshot) => void>();
  private closed = false;
  private rejectReady!: (e: unknown) => void;
  private readyWatch: ((s: InboxSnapshot) => void) | null = null;

  constructor(engine: InboxEngine) {
    this.engine = engine;
    this.ready = new Promise<InboxSnapshot>((resolve, reject) => {
      this.rejectReady = reject;
      const now = engine.getSnapshot();
      if (now.status === 'live') return resolve(now);
      if (now.status === 'error') return reject(now.error);
      const watch = (s: InboxSnapshot) => {
        if (s.status === 'loading' || s.status === 'refetching') return;
        engine.listeners.delete(watch);
        this.readyWatch = null;
        if (s.status === 'live') resolve(s);
        else reject(s.error ?? new RealtimeError('closed', 'the inbox ended'));
      };
      this.readyWatch = watch;
      engine.listeners.add(watch);
    });
    this.ready.catch(() => {});
  }

  getSnapshot(): InboxSnapshot {
    return this.closed ? CLOSED : this.engine.getSnapshot();
  }

  subscribe(listener: (s: InboxSnapshot) => void): () => void {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function');
    if (this.closed) return () => {};
    const entry = (s: InboxSnapshot) => listener(s);
    this.mine.add(entry);
    this.engine.listeners.add(entry);
    return () => {
      this.mine.delete(entry);
      this.engine.listeners.delete(entry);
    };
  }

  on(event: 'change', listener: (s: InboxSnapshot) => void): () => void {
    if (event !== 'change') throw new TypeError(`an inbox emits 'change', not ${JSON.stringify(event)}`);
    return this.subscribe(listener);
  }

  get items(): readonly Notification[] {
    return this.getSnapshot().items;
  }

  get unreadCount(): number {
    return this.getSnapshot().unreadCount;
  }

  get status(): InboxStatus {
    return this.getSnapshot().status;
  }

  get(id: string): Notification | undefined {
    return this.closed ? undefined : this.engine.get(id);
  }

  loadMore(): Promise<void> {
    return this.closed ? Promise.reject(closedError()) : this.engine.loadMore();
  }

  markRead(ids: string | readonly string[]): Promise<void> {
    return this.closed ? Promise.reject(closedError()) : this.engine.markRead(ids);
  }

  markAllRead(): Promise<void> {
    return this.closed ? Promise.reject(closedError()) : this.engine.markAllRead();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const l of this.mine) this.engine.listeners.delete(l);
    this.mine.clear();
    if (this.readyWatch) this.engine.listeners.delete(this.readyWatch);
    this.readyWatch = null;
    this.rejectReady(closedError());
    this.engine.release();
  }
}

function closedError(): RealtimeError {
  return new RealtimeError('closed', 'the inbox was closed');
}

const ERROR_AFTER_FAILURES = 3;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;
/** Ids of marks remembered for pages loaded later; past this the inbox reloads (rare: huge marks). */
const MAX_READ_IDS = 10_000;
const MAX_HELD = 10_000;
const MARK_BATCH = 200;

function isPermanent(e: unknown): boolean {
  if (isAuthFailure(e)) return true;
  return e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
}

function checkPage(p: NotificationPage): NotificationPage {
  if (!p || !Array.isArray(p.items) || !Number.isInteger(p.seq) || !Number.isInteger(p.unreadCount)) {
    throw new Error('GET /me/notifications answered without items, seq or unreadCount');
  }
  return p;
}

class InboxEngine {
  readonly listeners = new Set<(s: InboxSnapshot) => void>();
  refs = 0;
  finished = false;

  private readonly rt: RealtimeClient;
  private readonly http: InboxHttp;
  private readonly pageSize: number;
  private items = new Map<string, Notification>();
  /** Marks learnt after the load's seq: applied to notifications that show up later too. */
  private readIds = new Set<string>();
  private readUpto = -1;
  /** The seq of the load the data comes from. */
  private baseSeq = -1;
  private holding = true;
  private readonly held = new Map<number, InboxEvent>();
  private heldOverflow = false;
  private count = 0;
  /** The seq `count` is exact at. */
  private countSeq = -1;
  private seq: number | null = null;
  private nextCursor: string | null = null;
  private more: Promise<void> | null = null;
  private status: InboxStatus = 'loading';
  private error: unknown = null;
  private sub: InboxSubscription | null = null;
  private joined = false;
  private loaded = false;
  private loadGen = 0;
  private abort: AbortController | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  private snapshot: InboxSnapshot | null = null;
  private lastNotified: InboxSnapshot | null = null;
  private notifyQueued = false;
  private readonly offs: (() => void)[] = [];

  constructor(rt: RealtimeClient, http: InboxHttp, pageSize: number) {
    this.rt = rt;
    this.http = http;
    this.pageSize = pageSize;
  }

  start(): void {
    this.offs.push(
      this.rt.onStateChange((c) => {
        if (c.state === 'closed' && c.error?.code === 'unauthorized') this.end('error', c.error);
      }),
      // Membership changes reach the user's own sockets; the inbox stream says nothing of them.
      this.rt.onActivity((a) => {
        if (this.aboutMyMembership(a)) this.reload();
      }),
    );
    this.startLoad();
  }

  private aboutMyMembership(a: Activity): boolean {
    const me = this.http.user?.id;
    if (!me) return false;
    if (a.type === 'member.added') return a.data.member.user.id === me;
    if (a.type === 'member.removed') return a.data.userId === me;
    return false;
  }

  get(id: string): Notification | undefined {
    return this.items.get(id);
  }

  getSnapshot(): InboxSnapshot {
    if (!this.snapshot) {
      const items = Object.freeze([...this.items.values()].sort((a, b) => b.seq - a.seq));
      this.snapshot = Object.freeze({
        items,
        unreadCount: this.count,
        status: this.status,
        error: this.error,
        seq: this.seq,
        hasMore: this.nextCursor !== null,
        loadingMore: this.more !== null,
      });
    }
    return this.snapshot;
  }

  release(): void {
    if (--this.refs > 0) return;
    this.end('closed', null);
  }

  // ---- loading ----

  private reload(): void {
    if (this.finished) return;
    if (this.status !== 'error') this.status = this.loaded ? 'refetching' : 'loading';
    this.failures = 0;
    this.changed();
    this.startLoad();
  }

  private startLoad(): void {
    if (this.finished) return;
    const gen = ++this.loadGen;
    this.abort?.abort();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ac = new AbortController();
    this.abort = ac;
    this.holding = true;
    this.http
      .request<NotificationPage>('GET', '/me/notifications', { query: { limit: this.pageSize }, signal: ac.signal })
      .then(
        (r) => {
          if (gen !== this.loadGen || this.finished) return;
          this.abort = null;
          try {
            this.install(checkPage(r.data));
          } catch (e) {
            this.loadFailed(e);
          }
        },
        (e: unknown) => {
          if (gen !== this.loadGen || this.finished) return;
          this.abort = null;
          this.loadFailed(e);
        },
      );
  }

  private install(page: NotificationPage): void {
    const s = page.seq;
    if (this.heldOverflow) {
      // Events after this load were dropped from the full buffer: load again.
      this.held.clear();
      this.heldOverflow = false;
      this.startLoad();
      return;
    }
    this.items = new Map(page.items.map((n) => [n.id, n]));
    this.readIds = new Set();
    this.readUpto = -1;
    this.nextCursor = page.nextCursor ?? null;
    this.baseSeq = s;
    this.count = page.unreadCount;
    this.countSeq = s;
    this.seq = Math.max(this.seq ?? s, s);
    this.holding = false;
    const held = [...this.held.values()].sort((x, y) => x.seq - y.seq);
    this.held.clear();
    for (const ev of held) if (ev.seq > s) this.apply(ev);
    this.loaded = true;
    this.failures = 0;
    this.error = null;
    if (!this.sub) this.join(s);
    if (this.joined) this.status = 'live';
    this.changed();
    this.settle();
  }

  private join(since: number): void {
    let sub: InboxSubscription;
    try {
      sub = this.rt.subscribeInbox(
        {
          onEvent: (ev) => {
            if (this.sub === sub) this.onEvent(ev);
          },
          onSubscribed: (info) => {
            if (this.sub === sub) this.onJoined(info);
          },
          onGap: () => {
            if (this.sub !== sub) return;
            // The stream could not be resumed (its seqs may have started over): load again, and
            // forget what the old numbering said.
            this.seq = null;
            this.held.clear();
            this.reload();
          },
          onError: (e) => {
            if (this.sub === sub) this.end('error', e);
          },
        },
        { since },
      );
    } catch (e) {
      this.end('error', e);
      return;
    }
    this.sub = sub;
    sub.ready.catch((e: unknown) => {
      if (this.sub !== sub || this.finished) return;
      if (sub.state === 'ended') return this.end('error', e);
      // Not joined for now (the client was closed): an inbox waiting for it is in error until it is.
      if (!this.joined) this.setError(e);
    });
  }

  private onJoined(info: InboxSubscribedInfo): void {
    this.joined = true;
    if (info.seq > this.countSeq && !this.holding) {
      // Every event up to the join has been applied: the server's count must be ours. When it is
      // not, something the stream does not carry happened (a membership change while away).
      const mismatch = info.resumed && info.unreadCount !== this.count;
      this.count = info.unreadCount;
      this.countSeq = info.seq;
      this.seq = Math.max(this.seq ?? info.seq, info.seq);
      this.changed();
      if (mismatch) return this.reload();
    }
    this.settle();
  }

  private loadFailed(e: unknown): void {
    if (isPermanent(e)) return this.end('error', e);
    this.failures++;
    if (this.failures >= ERROR_AFTER_FAILURES) this.setError(e);
    const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (this.failures - 1));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.startLoad();
    }, base / 2 + (Math.random() * base) / 2);
  }

  private settle(): void {
    if (this.finished || this.holding || !this.loaded || !this.joined) return;
    // The handles' `ready` follow the snapshots they are told of.
    if (this.status !== 'live') {
      this.status = 'live';
      this.error = null;
      this.changed();
    }
  }

  private setError(e: unknown): void {
    this.status = 'error';
    this.error = e;
    this.changed();
  }

  private end(status: 'closed' | 'error', e: unknown): void {
    if (this.finished) return;
    this.finished = true;
    if (registry.get(this.rt) === this) registry.delete(this.rt);
    for (const off of this.offs.splice(0)) off();
    this.loadGen++;
    this.abort?.abort();
    this.abort = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const sub = this.sub;
    this.sub = null;
    sub?.unsubscribe();
    this.held.clear();
    this.status = status;
    this.error = status === 'error' ? e : null;
    this.changed();
  }

  // ---- the stream ----

  private onEvent(ev: InboxEvent): void {
    if (this.finished) return;
    if (this.holding) {
      if (this.held.size >= MAX_HELD) this.heldOverflow = true;
      else this.held.set(ev.seq, ev);
      return;
    }
    if (ev.seq <= this.baseSeq) return; // the load shows it
    this.apply(ev);
  }

  private apply(ev: InboxEvent): void {
    this.seq = Math.max(this.seq ?? ev.seq, ev.seq);
    if (ev.type === 'notification.created') {
      const n = ev.notification;
      if (!this.items.has(n.id)) this.items.set(n.id, this.withMarks(n));
      // Unread when it was created (at this seq), even if a replay shows it read already: the
      // mark that read it follows at its own seq, with its count.
      if (ev.seq > this.countSeq) {
        this.count++;
        this.countSeq = ev.seq;
      }
    } else {
      this.learnMarks(ev.ids, ev.upto);
      if (ev.seq > this.countSeq) {
        this.count = ev.unreadCount;
        this.countSeq = ev.seq;
      }
    }
    this.changed();
  }

  private isMarked(n: Notification): boolean {
    return this.readIds.has(n.id) || n.seq <= this.readUpto;
  }

  private withMarks(n: Notification): Notification {
    return n.readAt == null && this.isMarked(n) ? { ...n, readAt: new Date().toISOString() } : n;
  }

  /** Records a mark (final) and applies it to what is shown. */
  private learnMarks(ids: readonly string[] | null, upto: number | null): void {
    if (ids) for (const id of ids) this.readIds.add(id);
    if (upto !== null) this.readUpto = Math.max(this.readUpto, upto);
    for (const [id, n] of this.items) {
      const marked = this.withMarks(n);
      if (marked !== n) this.items.set(id, marked);
    }
    if (this.readIds.size > MAX_READ_IDS) this.reload();
  }

  // ---- actions ----

  loadMore(): Promise<void> {
    if (this.finished) return Promise.reject(closedError());
    if (this.more) return this.more;
    const cursor = this.nextCursor;
    if (cursor === null || !this.loaded) return Promise.resolve();
    const gen = this.loadGen;
    const run = async () => {
      try {
        const r = await this.http.request<NotificationPage>('GET', '/me/notifications', {
          query: { limit: this.pageSize, cursor },
        });
        if (gen !== this.loadGen || this.finished || this.nextCursor !== cursor) return; // reloaded meanwhile
        const page = checkPage(r.data);
        for (const n of page.items) if (!this.items.has(n.id)) this.items.set(n.id, this.withMarks(n));
        this.nextCursor = page.nextCursor ?? null;
      } finally {
        this.more = null;
        this.changed();
      }
    };
    this.more = run();
    this.changed();
    return this.more;
  }

  async markRead(ids: string | readonly string[]): Promise<void> {
    const list = typeof ids === 'string' ? [ids] : [...ids];
    if (!list.every((id) => typeof id === 'string' && id !== '')) throw new TypeError('ids must be notification ids');
    const unique = [...new Set(list)];
    for (let i = 0; i < unique.length; i += MARK_BATCH) {
      const batch = unique.slice(i, i + MARK_BATCH);
      const r = await this.http.request<MarkReadResult>('POST', '/me/notifications/read', { body: { ids: batch } });
      this.answered(r.data, batch, null);
    }
  }

  async markAllRead(): Promise<void> {
    const upto = this.seq;
    if (upto === null) return;
    const r = await this.http.request<MarkReadResult>('POST', '/me/notifications/read', { body: { upto } });
    this.answered(r.data, null, upto);
  }

  /** A mark-read answer: the marks hold now; its count is exact at its seq. */
  private answered(r: MarkReadResult, ids: string[] | null, upto: number | null): void {
    if (this.finished) return;
    this.learnMarks(ids, upto);
    if (Number.isInteger(r?.seq) && Number.isInteger(r?.unreadCount) && r.seq > this.countSeq && !this.holding) {
      this.count = r.unreadCount;
      this.countSeq = r.seq;
    }
    this.changed();
  }

  // ---- notifications ----

  private changed(): void {
    this.snapshot = null;
    if (this.notifyQueued) return;
    this.notifyQueued = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.notifyQueued = false;
    const s = this.getSnapshot();
    if (s === this.lastNotified) return;
    this.lastNotified = s;
    for (const l of [...this.listeners]) {
      try {
        l(s);
      } catch (e) {
        this.rt.reportError(e);
      }
    }
  }
}
