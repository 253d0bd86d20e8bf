// The realtime connection: one WebSocket to /realtime carrying every subscribed room.
//
// What it guarantees to each subscription's handlers: every activity the server routes to that
// room, exactly once and in seq order, across reconnects. It gets there by
//  - keeping a cursor (the last seq delivered) per subscription and resubscribing with
//    `since: cursor` after every reconnect, so the server replays what was missed;
//  - buffering what arrives for a subscription until its `subscribed` reply and delivering it in
//    seq order then (the replay of one room may interleave with live frames of another room, and
//    those can be the same activities);
//  - dropping anything at or below the cursor (duplicates are expected: the contract asks clients
//    to de-duplicate by (teamId, seq));
//  - when the server cannot resume (`resume_unavailable`), subscribing without `since` and telling
//    the app through `onGap` to refetch.
// It also renews the access token on the live socket (an `auth` message) before it expires, and
// reconnects with jittered exponential backoff when the socket drops.

import type {
  Activity,
  ActivityOf,
  ActivityType,
  ClientFrame,
  PresenceActivity,
  Scope,
  ServerFrame,
} from './generated/protocol.js';
import { PRESENCE_TYPES } from './generated/protocol.js';
import { isAuthFailure, type AccessToken, type TokenSource } from './http.js';
import { PresenceState } from './presence.js';
import { MoveTracker, normalizeScope, reaches, scopeKey, scopeOfFrame, type ScopeKey } from './scope.js';

/**
 * The part of the WebSocket API the client uses. The browser's `WebSocket` and the `ws` package's
 * class both fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type ConnectionState =
  /** `connect()` not called yet. */
  | 'idle'
  /** Opening the first socket. */
  | 'connecting'
  /** Authenticated; subscriptions are being (re)joined or are live. */
  | 'open'
  /** The socket dropped; waiting for the next attempt, or making it. */
  | 'reconnecting'
  /** `close()` was called, or the credentials are gone. */
  | 'closed';

export interface StateChange {
  state: ConnectionState;
  /** Close code and reason of the socket that dropped. */
  code?: number;
  reason?: string;
  /** Delay before the next attempt. */
  delayMs?: number;
  /** On 'open': true when this is not the first socket. Refetch `GET /me` then: deliveries to a
   * user's own sockets (assignments, memberships) are live only and are not replayed. */
  reconnected?: boolean;
}

/** An `error` frame, or a failure of the client itself. */
export class RealtimeError extends Error {
  readonly code: string;
  readonly scope: Scope | undefined;

  constructor(code: string, message: string, scope?: Scope) {
    super(`${code}: ${message}`);
    this.name = 'RealtimeError';
    this.code = code;
    this.scope = scope;
  }
}

export interface GapInfo {
  scope: Scope;
  /** The `since` the server could not resume from. */
  since: number;
  /** The seq the subscription now continues after. Refetch the scope's data over HTTP; apply
   * activities whose task `version` is newer than what the refetch returned. */
  seq: number;
  message: string;
}

export interface SubscribedInfo {
  scope: Scope;
  /** The `subscribed` reply's seq: everything after it will be delivered live. */
  seq: number;
  /** The `since` sent with this subscribe (null: none). */
  since: number | null;
  /** How many activities the replay delivered to this subscription. */
  replayed: number;
  /** True from the second `subscribed` of this subscription on (after a reconnect). */
  resumed: boolean;
}

/** Per-type handlers: `on: { 'task.created': (a) => a.data.task.title }`. */
export type TypedHandlers = { [T in ActivityType]?: (a: ActivityOf<T>) => void };

export interface SubscriptionHandlers {
  /** Every activity routed to this scope, once, in seq order. */
  onActivity?: (a: Activity) => void;
  /** The same, by type (called after `onActivity`). */
  on?: TypedHandlers;
  /** The server joined the room (again, after a reconnect). */
  onSubscribed?: (info: SubscribedInfo) => void;
  /** The server could not resume this scope: refetch it. Called once the room is joined again. */
  onGap?: (info: GapInfo) => void;
  /** The subscription ended for good: `forbidden`, `too_many_subscriptions`, `membership_revoked`. */
  onError?: (error: RealtimeError) => void;
  /** Task scopes: `presence.joined` / `presence.left` (see also `subscription.presence`). */
  onPresence?: (a: PresenceActivity) => void;
}

export interface SubscribeOptions {
  /** Resume after this seq (e.g. the `X-TaskForge-Seq` of the snapshot the app holds). */
  since?: number;
}

export type SubscriptionState = 'pending' | 'active' | 'ended';

let nextSubscriptionId = 1;

/** One scope's subscription. Created by `RealtimeClient.subscribe`. */
export class Subscription {
  readonly scope: Scope;
  readonly key: ScopeKey;
  /** Task scopes: who is looking at the task. */
  readonly presence: PresenceState | undefined;
  /** Resolves at the first `subscribed`; rejects if the subscription ends before. */
  readonly ready: Promise<SubscribedInfo>;

  /** @internal */ readonly id = nextSubscriptionId++;
  /** @internal */ handlers: SubscriptionHandlers;
  /** @internal */ status: SubscriptionState = 'pending';
  /** @internal The last seq delivered (or the `subscribed` seq); null before the first one. */
  cursor: number | null;
  /** @internal The `since` of the subscribe in flight. */
  sentSince: number | null = null;
  /** @internal Activities received before the `subscribed` reply, by seq. */
  buffer = new Map<number, Activity>();
  /** @internal Set while resubscribing after `resume_unavailable`. */
  gap: { since: number; message: string } | null = null;
  /** @internal */ joins = 0;
  /** @internal */ retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** @internal */ resolveReady!: (info: SubscribedInfo) => void;
  /** @internal */ rejectReady!: (e: Error) => void;
  private readonly client: RealtimeClient;

  /** @internal */
  constructor(client: RealtimeClient, scope: Scope, handlers: SubscriptionHandlers, since: number | null) {
    this.client = client;
    this.scope = scope;
    this.key = scopeKey(scope);
    this.handlers = handlers;
    this.cursor = since;
    this.presence = 'taskId' in scope ? new PresenceState(scope.taskId, (e) => client.reportError(e)) : undefined;
    this.ready = new Promise<SubscribedInfo>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // An app that never awaits `ready` must not get an unhandled rejection.
    this.ready.catch(() => {});
  }

  get state(): SubscriptionState {
    return this.status;
  }

  /** The last seq this subscription has accounted for; resumes start after it. */
  get lastSeq(): number | null {
    return this.cursor;
  }

  /** Leaves the room. */
  unsubscribe(): void {
    this.client.unsubscribe(this);
  }
}

export interface BackoffOptions {
  /** First delay (default 250 ms). */
  minMs?: number;
  /** Largest delay (default 30 s). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
}

export interface RealtimeOptions {
  /** The server's base URL (`https://host`) or the socket URL (`wss://host/realtime`). */
  url: string;
  /** Where access tokens come from: a `Session`, any `TokenSource`, or a fixed token. */
  auth: TokenSource | string;
  /** A WebSocket class; defaults to the global one (browsers, Node 22+). In Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Send a `ping` after this much silence (default 25 s); reconnect if nothing comes back
   * within `heartbeatTimeoutMs` (default 10 s). Detects half-open connections. */
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  /** How long the server may take to answer the `auth` message (default 10 s). */
  authTimeoutMs?: number;
  /** Outgoing messages per second and burst. The server cuts sockets that exceed 100/s
   * (burst 200) by default; the client stays under half of that (50/s, burst 100). */
  sendRate?: { perSecond: number; burst: number };
  /** Every distinct activity the socket receives, once per (teamId, seq), including the user's
   * own deliveries (assignments, memberships) that no subscription covers. */
  onActivity?: (a: Activity) => void;
  /** A scope could not be resumed (also reported to the subscription's own `onGap`). */
  onGap?: (info: GapInfo) => void;
  onStateChange?: (change: StateChange) => void;
  /** The credentials are gone (the refresh was refused): log in again. The client is closed. */
  onAuthFailure?: (error: unknown) => void;
  /** Errors that are not fatal: handler exceptions, unexpected `error` frames, failed token
   * fetches. Defaults to `console.error`. */
  onError?: (error: unknown) => void;
  /** Random source for the jitter (tests). */
  random?: () => number;
}

/** Counters for monitoring and tests. */
export interface RealtimeStats {
  /** Sockets that authenticated. */
  connects: number;
  /** Activity frames received (duplicates included). */
  activityFrames: number;
  /** Frames whose (teamId, seq) had been received before. */
  duplicates: number;
  /** Tokens replaced on a live socket. */
  renewals: number;
  /** `resume_unavailable` answers. */
  gaps: number;
  /** Messages the server refused with `rate_limited` (each is sent again). */
  rateLimited: number;
}

type Outbound =
  | { kind: 'auth'; frame: ClientFrame; token: AccessToken }
  | { kind: 'subscribe' | 'unsubscribe'; frame: ClientFrame; key: ScopeKey; sub: Subscription }
  | { kind: 'ping'; frame: ClientFrame };

const OPEN = 1;
/** Per team, how many seen seqs are remembered for the client-wide de-duplication. */
const SEEN_PER_TEAM = 10_000;

function isPresence(a: Activity | PresenceActivity): a is PresenceActivity {
  return (PRESENCE_TYPES as readonly string[]).includes(a.type);
}

function decode(data: unknown): string | null {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return new TextDecoder().decode(data as ArrayBuffer);
  }
  return null;
}

/** The socket URL for a base URL: `https://h/x` -> `wss://h/x/realtime`. */
export function realtimeUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (!u.pathname.endsWith('/realtime')) u.pathname = `${u.pathname.replace(/\/+$/, '')}/realtime`;
  return u.toString();
}

/** Caps a delay for setTimeout, which misbehaves past 2^31 - 1 ms. */
function timerDelay(ms: number): number {
  return Math.min(Math.max(0, ms), 2 ** 31 - 1);
}

export class RealtimeClient {
  private readonly url: string;
  private readonly tokens: TokenSource;
  private readonly WS: WebSocketConstructor;
  private readonly opts: RealtimeOptions;
  private readonly random: () => number;

  private readonly subs = new Map<ScopeKey, Subscription>();
  private readonly seen = new Map<string, Set<number>>();
  private readonly moves = new MoveTracker();

  private stateValue: ConnectionState = 'idle';
  private wantOpen = false;
  private ws: WebSocketLike | null = null;
  /** Identifies the current socket; callbacks of an older one are ignored. */
  private socketId = 0;
  private authed = false;
  private everAuthed = false;
  private attempt = 0;
  /** 4001 closes in a row: past a few, the credentials are not coming back. */
  private authRejects = 0;
  /** When the current socket authenticated (0: not yet). */
  private authedAt = 0;
  private forceRefresh = false;
  private currentToken: string | null = null;

  private queue: Outbound[] = [];
  /** Sent and not yet answered, oldest first. The server answers every message once, in order. */
  private inflight: Outbound[] = [];
  private bucket = { tokens: 0, at: 0 };
  private lastHeard = 0;
  private pingSentAt = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private authTimer: ReturnType<typeof setTimeout> | null = null;
  private renewTimer: ReturnType<typeof setTimeout> | null = null;
  private pumpTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;

  private readonly counters: RealtimeStats = {
    connects: 0,
    activityFrames: 0,
    duplicates: 0,
    renewals: 0,
    gaps: 0,
    rateLimited: 0,
  };

  constructor(opts: RealtimeOptions) {
    this.opts = opts;
    this.url = realtimeUrl(opts.url);
    const auth = opts.auth;
    this.tokens = typeof auth === 'string' ? { getAccessToken: async () => ({ token: auth }) } : auth;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new Error('no WebSocket implementation: pass { WebSocket } (e.g. the "ws" package in Node 20)');
    }
    this.WS = WS;
    this.random = opts.random ?? Math.random;
    this.bucket.tokens = this.sendRate.burst;
    this.bucket.at = Date.now();
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  get stats(): Readonly<RealtimeStats> {
    return { ...this.counters };
  }

  /** The live subscriptions. */
  get subscriptions(): Subscription[] {
    return [...this.subs.values()];
  }

  private get sendRate(): { perSecond: number; burst: number } {
    return this.opts.sendRate ?? { perSecond: 50, burst: 100 };
  }

  /** Opens the socket (and keeps it open until `close()`). */
  connect(): void {
    if (this.wantOpen) return;
    this.wantOpen = true;
    this.attempt = 0;
    this.authRejects = 0;
    void this.open();
  }

  /**
   * Closes the socket and stops reconnecting. Subscriptions and their cursors are kept: a later
   * `connect()` resumes them where they stopped.
   */
  close(): void {
    this.wantOpen = false;
    this.clearTimer('reconnectTimer');
    this.socketId++;
    const ws = this.ws;
    this.teardown();
    if (ws) this.detachAndClose(ws, 1000, 'client closed');
    this.setState({ state: 'closed' });
  }

  /**
   * Drops the current socket and reconnects now, or cuts a backoff wait short (e.g. when the app
   * learns that the network is back).
   */
  reconnect(): void {
    if (!this.wantOpen) return;
    if (this.ws) {
      this.dropSocket(4000, 'reconnect requested');
    }
    if (this.reconnectTimer) {
      this.clearTimer('reconnectTimer');
      void this.open();
    }
  }

  /**
   * Subscribes to a team, board or task. One subscription per scope: subscribing to a scope that
   * already has one throws.
   */
  subscribe(scope: Scope, handlers: SubscriptionHandlers = {}, opts: SubscribeOptions = {}): Subscription {
    const plain = normalizeScope(scope);
    const key = scopeKey(plain);
    if (this.subs.has(key)) throw new Error(`already subscribed to ${key}`);
    if (opts.since !== undefined && !(Number.isInteger(opts.since) && opts.since >= 0)) {
      throw new TypeError('since is a seq: an integer, 0 or more');
    }
    const sub = new Subscription(this, plain, handlers, opts.since ?? null);
    this.subs.set(key, sub);
    if (this.authed) this.sendSubscribe(sub);
    return sub;
  }

  /** Leaves a subscription's room (same as `subscription.unsubscribe()`). */
  unsubscribe(sub: Subscription): void {
    if (sub.status === 'ended') return;
    const queued = this.queue.findIndex((o) => o.kind === 'subscribe' && o.sub === sub);
    this.endSubscription(sub, null);
    if (queued >= 0) {
      this.queue.splice(queued, 1); // never sent: nothing to undo on the server
    } else if (this.authed) {
      this.enqueue({ kind: 'unsubscribe', key: sub.key, sub, frame: { type: 'unsubscribe', ...sub.scope } });
    }
  }

  /** @internal */
  reportError(e: unknown): void {
    if (this.opts.onError) {
      try {
        this.opts.onError(e);
        return;
      } catch (inner) {
        e = inner;
      }
    }
    console.error('[taskforge realtime]', e);
  }

  // ---- connection lifecycle -------------------------------------------------------------

  private setState(change: StateChange): void {
    this.stateValue = change.state;
    this.safe(() => this.opts.onStateChange?.(change));
  }

  private async open(): Promise<void> {
    const id = ++this.socketId;
    if (!this.everAuthed) this.setState({ state: 'connecting' });
    let token: AccessToken;
    try {
      token = await this.tokens.getAccessToken(this.forceRefresh ? { forceRefresh: true } : {});
      this.forceRefresh = false;
    } catch (e) {
      if (id !== this.socketId || !this.wantOpen) return;
      if (isAuthFailure(e)) return this.failAuth(e);
      this.reportError(e);
      return this.scheduleReconnect({});
    }
    if (id !== this.socketId || !this.wantOpen) return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url);
    } catch (e) {
      this.reportError(e);
      return this.scheduleReconnect({});
    }
    this.ws = ws;
    // The token goes in the first message rather than in `?token=`: browsers cannot set headers,
    // and URLs end up in logs. The `authenticated` reply also tells when the server cuts us off.
    ws.onopen = () => {
      if (id !== this.socketId) return;
      this.lastHeard = Date.now();
      this.send({ kind: 'auth', token, frame: { type: 'auth', token: token.token } });
      this.authTimer = setTimeout(() => {
        if (id === this.socketId && !this.authed) this.dropSocket(4000, 'no answer to auth');
      }, this.opts.authTimeoutMs ?? 10_000);
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (id === this.socketId) this.onMessage(ev.data);
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      this.onSocketClosed(id, ev.code ?? 1006, ev.reason ?? '');
    };
    ws.onerror = () => {
      // A close event follows every error; the reconnect is decided there.
    };
  }

  private onSocketClosed(id: number, code: number, reason: string): void {
    if (id !== this.socketId) return;
    const authedAt = this.authedAt;
    this.teardown();
    if (!this.wantOpen) {
      this.setState({ state: 'closed', code, reason });
      return;
    }
    if (code === 4001) {
      // unauthorized or token_expired: the next attempt presents a newly refreshed token. A token
      // the server refuses at once, again and again, will not get better: give up after a few.
      // "At once" includes a close right after `authenticated`: the server accepts a token up to
      // its clock leeway past `exp` and then cuts the socket immediately. A socket that lived a
      // while and then expired starts a new count.
      this.forceRefresh = true;
      const atOnce = authedAt === 0 || Date.now() - authedAt < 1000;
      this.authRejects = atOnce ? this.authRejects + 1 : 1;
      if (this.authRejects > 3) {
        return this.failAuth(new RealtimeError('unauthorized', `the server refused the token ${this.authRejects} times`));
      }
    } else {
      this.authRejects = 0;
    }
    this.scheduleReconnect({ code, reason });
  }

  /** Forgets the socket and everything tied to it; subscriptions wait to be joined again. */
  private teardown(): void {
    this.ws = null;
    this.authed = false;
    this.authedAt = 0;
    this.queue = [];
    this.inflight = [];
    this.currentToken = null;
    for (const t of ['authTimer', 'renewTimer', 'pumpTimer'] as const) this.clearTimer(t);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    for (const sub of this.subs.values()) {
      if (sub.status === 'ended') continue;
      sub.status = 'pending';
      sub.buffer.clear();
      if (sub.retryTimer) clearTimeout(sub.retryTimer);
      sub.retryTimer = null;
      sub.presence?.markStale();
    }
  }

  private scheduleReconnect(info: { code?: number; reason?: string }): void {
    this.clearTimer('reconnectTimer');
    const b = this.opts.backoff ?? {};
    const min = b.minMs ?? 250;
    const max = b.maxMs ?? 30_000;
    const base = Math.min(max, min * (b.factor ?? 2) ** this.attempt);
    this.attempt++;
    // "Equal jitter": half fixed, half random, so that clients cut off together (a server restart)
    // do not come back together, and no delay collapses to zero.
    const delayMs = Math.round(base / 2 + (this.random() * base) / 2);
    this.setState({ state: 'reconnecting', delayMs, ...info });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.wantOpen) void this.open();
    }, delayMs);
  }

  /** Abandons the current socket at once (without waiting for a close handshake) and reconnects. */
  private dropSocket(code: number, reason: string): void {
    const ws = this.ws;
    if (ws) this.detachAndClose(ws, code, reason, true);
    this.onSocketClosed(this.socketId, code, reason);
  }

  private detachAndClose(ws: WebSocketLike, code: number, reason: string, abandon = false): void {
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      // A socket given up on (no answer to ping) would wait for a close handshake that never
      // comes: the `ws` package can drop it at once. Browsers have no such call.
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (abandon && typeof terminate === 'function') terminate.call(ws);
      else ws.close(code, reason);
    } catch {
      // Already closed or closing.
    }
  }

  private failAuth(error: unknown): void {
    this.close();
    this.safe(() => (this.opts.onAuthFailure ? this.opts.onAuthFailure(error) : this.reportError(error)));
  }

  private clearTimer(name: 'reconnectTimer' | 'authTimer' | 'renewTimer' | 'pumpTimer'): void {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
  }

  // ---- authentication and token renewal ----------------------------------------------------

  private onAuthenticated(entry: Outbound | undefined, expiresAt: string): void {
    const token = entry?.kind === 'auth' ? entry.token : undefined;
    if (token) this.currentToken = token.token;
    if (!this.authed) {
      this.authed = true;
      this.clearTimer('authTimer');
      this.attempt = 0;
      this.authedAt = Date.now();
      this.counters.connects++;
      const reconnected = this.everAuthed;
      this.everAuthed = true;
      this.startHeartbeat();
      this.setState({ state: 'open', reconnected });
      for (const sub of [...this.subs.values()]) {
        if (sub.status !== 'ended') this.sendSubscribe(sub);
      }
    } else {
      this.counters.renewals++;
      this.authRejects = 0;
    }
    this.scheduleRenewal(token, expiresAt);
  }

  /**
   * The server closes the socket (4001 token_expired) the moment its token expires, so a fresh
   * token is sent with `auth` on the live socket before then.
   */
  private scheduleRenewal(token: AccessToken | undefined, expiresAt: string): void {
    this.clearTimer('renewTimer');
    let at = token?.refreshAt;
    if (at === undefined) {
      // A token source that cannot tell: go by the server's clock, with a generous margin.
      const exp = Date.parse(expiresAt);
      if (Number.isNaN(exp)) return;
      at = exp - Math.min(60_000, Math.max(0, exp - Date.now()) / 4);
    }
    const id = this.socketId;
    // A floor, so that a token source whose refreshAt is already past cannot spin this loop.
    this.renewTimer = setTimeout(() => void this.renew(id), timerDelay(Math.max(250, at - Date.now())));
  }

  private async renew(id: number): Promise<void> {
    this.renewTimer = null;
    if (id !== this.socketId || !this.authed) return;
    try {
      let token = await this.tokens.getAccessToken();
      // Same token: the source thinks it is still good, but our schedule says renew now.
      if (token.token === this.currentToken) token = await this.tokens.getAccessToken({ forceRefresh: true });
      if (id !== this.socketId || !this.authed) return;
      if (token.token === this.currentToken) {
        // The source has nothing newer (a fixed token): nothing to send; look again later.
        this.renewTimer = setTimeout(() => void this.renew(id), 5000 + this.random() * 5000);
        return;
      }
      this.enqueue({ kind: 'auth', token, frame: { type: 'auth', token: token.token } }, true);
    } catch (e) {
      if (id !== this.socketId) return;
      if (isAuthFailure(e)) return this.failAuth(e);
      this.reportError(e);
      // Passing failure (network): try again soon. If the token runs out first, the server closes
      // with 4001 and the reconnect fetches a new one.
      this.renewTimer = setTimeout(() => void this.renew(id), 1000 + this.random() * 1000);
    }
  }

  // ---- sending ------------------------------------------------------------------------------

  private enqueue(o: Outbound, front = false): void {
    if (front) this.queue.unshift(o);
    else this.queue.push(o);
    this.pump();
  }

  /** Sends queued messages at the configured rate (a token bucket), once authenticated. */
  private pump(): void {
    if (!this.authed || !this.ws || this.pumpTimer) return;
    const { perSecond, burst } = this.sendRate;
    const now = Date.now();
    this.bucket.tokens = Math.min(burst, this.bucket.tokens + ((now - this.bucket.at) / 1000) * perSecond);
    this.bucket.at = now;
    while (this.queue.length > 0 && this.bucket.tokens >= 1) {
      this.bucket.tokens -= 1;
      this.send(this.queue.shift()!);
    }
    if (this.queue.length > 0) {
      const wait = Math.ceil(((1 - this.bucket.tokens) / perSecond) * 1000);
      this.pumpTimer = setTimeout(() => {
        this.pumpTimer = null;
        this.pump();
      }, wait);
    }
  }

  private send(o: Outbound): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    try {
      ws.send(JSON.stringify(o.frame));
      this.inflight.push(o);
    } catch (e) {
      this.reportError(e);
    }
  }

  /** Removes and returns the oldest unanswered message matching `pred`. */
  private takeInflight(pred: (o: Outbound) => boolean): Outbound | undefined {
    const i = this.inflight.findIndex(pred);
    return i < 0 ? undefined : this.inflight.splice(i, 1)[0];
  }

  private startHeartbeat(): void {
    const interval = this.opts.heartbeatIntervalMs ?? 25_000;
    const timeout = this.opts.heartbeatTimeoutMs ?? 10_000;
    this.pingSentAt = 0;
    const id = this.socketId;
    this.heartbeatTimer = setInterval(() => {
      if (id !== this.socketId || !this.authed) return;
      const now = Date.now();
      if (this.pingSentAt > this.lastHeard && now - this.pingSentAt >= timeout) {
        this.dropSocket(4000, 'no answer to ping');
      } else if (this.pingSentAt <= this.lastHeard && now - this.lastHeard >= interval) {
        this.pingSentAt = now;
        this.enqueue({ kind: 'ping', frame: { type: 'ping' } }, true);
      }
    }, Math.max(50, Math.min(interval, timeout) / 2));
  }

  // ---- subscriptions ------------------------------------------------------------------------

  private sendSubscribe(sub: Subscription): void {
    if (sub.retryTimer) clearTimeout(sub.retryTimer);
    sub.retryTimer = null;
    sub.status = 'pending';
    sub.sentSince = sub.cursor;
    sub.buffer.clear();
    const frame: ClientFrame =
      sub.cursor === null
        ? { type: 'subscribe', ...sub.scope }
        : { type: 'subscribe', ...sub.scope, since: sub.cursor };
    this.enqueue({ kind: 'subscribe', key: sub.key, sub, frame });
  }

  private endSubscription(sub: Subscription, error: RealtimeError | null): void {
    sub.status = 'ended';
    if (this.subs.get(sub.key) === sub) this.subs.delete(sub.key);
    if (sub.retryTimer) clearTimeout(sub.retryTimer);
    sub.retryTimer = null;
    sub.buffer.clear();
    sub.presence?.clear();
    sub.rejectReady(error ?? new RealtimeError('unsubscribed', 'the subscription ended', sub.scope));
    if (error) this.safe(() => sub.handlers.onError?.(error));
  }

  /** Whether `sub` is still the app's subscription for its scope. */
  private isCurrent(sub: Subscription | undefined): sub is Subscription {
    return !!sub && sub.status !== 'ended' && this.subs.get(sub.key) === sub;
  }

  // ---- receiving ----------------------------------------------------------------------------

  private onMessage(data: unknown): void {
    this.lastHeard = Date.now();
    const text = decode(data);
    let frame: ServerFrame;
    try {
      if (text === null) throw new Error('binary frame');
      frame = JSON.parse(text) as ServerFrame;
    } catch (e) {
      this.reportError(new RealtimeError('bad_frame', `unreadable frame from the server: ${String(e)}`));
      return;
    }
    switch (frame.type) {
      case 'activity':
        return this.onActivity(frame.activity);
      case 'subscribed':
        return this.onSubscribed(frame);
      case 'unsubscribed':
        return this.onUnsubscribed(frame);
      case 'error':
        return this.onErrorFrame(frame);
      case 'authenticated':
        return this.onAuthenticated(this.takeInflight((o) => o.kind === 'auth'), frame.expiresAt);
      case 'pong':
        this.takeInflight((o) => o.kind === 'ping');
        return;
      default:
        // Unknown frame types are ignored: the server may add some.
        return;
    }
  }

  private onActivity(a: Activity | PresenceActivity): void {
    if (isPresence(a)) {
      const sub = this.subs.get(`task:${a.data.taskId}`);
      if (sub && sub.status === 'active') {
        sub.presence?.applyEvent(a);
        this.safe(() => sub.handlers.onPresence?.(a));
      }
      return;
    }
    this.counters.activityFrames++;
    const previousBoard = this.moves.observe(a);
    if (this.markSeen(a.teamId, a.seq)) this.safe(() => this.opts.onActivity?.(a));
    else this.counters.duplicates++;

    for (const sub of [...this.subs.values()]) {
      if (sub.status === 'ended' || !reaches(a, sub.scope, previousBoard)) continue;
      if (sub.status === 'pending') {
        // Before `subscribed`: this is the room's replay, or a live frame of another room that the
        // replay will repeat. Keep it; `subscribed` delivers the lot in seq order. Without `since`
        // the subscription starts at the `subscribed` seq, and all of these predate it.
        if (sub.sentSince !== null && a.seq > sub.sentSince) sub.buffer.set(a.seq, a);
        continue;
      }
      if (sub.cursor === null || a.seq > sub.cursor) this.deliver(sub, a);
    }
  }

  /** Records (teamId, seq); false if it was already there. */
  private markSeen(teamId: string, seq: number): boolean {
    let set = this.seen.get(teamId);
    if (!set) this.seen.set(teamId, (set = new Set()));
    if (set.has(seq)) return false;
    set.add(seq);
    if (set.size > SEEN_PER_TEAM) set.delete(set.values().next().value!);
    return true;
  }

  private deliver(sub: Subscription, a: Activity): void {
    sub.cursor = a.seq;
    const h = sub.handlers;
    if (h.onActivity) this.safe(() => h.onActivity!(a));
    const typed = h.on?.[a.type] as ((a: Activity) => void) | undefined;
    if (typed) this.safe(() => typed(a));
  }

  private onSubscribed(frame: Extract<ServerFrame, { type: 'subscribed' }>): void {
    const scope = scopeOfFrame(frame);
    if (!scope) return;
    const key = scopeKey(scope);
    const entry = this.takeInflight((o) => o.kind === 'subscribe' && o.key === key);
    const sub = entry?.kind === 'subscribe' ? entry.sub : undefined;
    if (!this.isCurrent(sub)) return; // answered after the app unsubscribed
    const since = sub.sentSince;
    sub.status = 'active';
    let replayed = 0;
    if (since !== null) {
      const held = [...sub.buffer.values()].sort((x, y) => x.seq - y.seq);
      for (const a of held) {
        if (sub.status !== 'active') break; // a handler unsubscribed
        if (sub.cursor === null || a.seq > sub.cursor) {
          this.deliver(sub, a);
          replayed++;
        }
      }
    }
    sub.buffer.clear();
    if (sub.status !== 'active') return;
    sub.cursor = sub.cursor === null ? frame.seq : Math.max(sub.cursor, frame.seq);
    if (sub.presence) sub.presence.applySnapshot(frame.presence ?? []);
    const info: SubscribedInfo = { scope: sub.scope, seq: frame.seq, since, replayed, resumed: sub.joins > 0 };
    sub.joins++;
    sub.resolveReady(info);
    this.safe(() => sub.handlers.onSubscribed?.(info));
    const gap = sub.gap;
    if (gap) {
      sub.gap = null;
      const g: GapInfo = { scope: sub.scope, since: gap.since, seq: frame.seq, message: gap.message };
      this.safe(() => sub.handlers.onGap?.(g));
      this.safe(() => this.opts.onGap?.(g));
    }
  }

  private onUnsubscribed(frame: Extract<ServerFrame, { type: 'unsubscribed' }>): void {
    const scope = scopeOfFrame(frame);
    if (!scope) return;
    const key = scopeKey(scope);
    if (!frame.reason) {
      this.takeInflight((o) => o.kind === 'unsubscribe' && o.key === key);
      return;
    }
    // Server-initiated (membership_revoked): the room is gone for good.
    const sub = this.subs.get(key);
    if (sub) this.endSubscription(sub, new RealtimeError(frame.reason, 'the server ended this subscription', scope));
  }

  private onErrorFrame(frame: Extract<ServerFrame, { type: 'error' }>): void {
    const scope = scopeOfFrame(frame);
    const error = new RealtimeError(frame.code, frame.message, scope ?? undefined);
    if (!scope) return this.onConnectionError(error);
    const key = scopeKey(scope);
    const entry = this.takeInflight((o) => (o.kind === 'subscribe' || o.kind === 'unsubscribe') && o.key === key);
    if (entry?.kind !== 'subscribe') {
      if (entry) this.reportError(error);
      return;
    }
    const sub = entry.sub;
    if (!this.isCurrent(sub)) return;
    switch (frame.code) {
      case 'resume_unavailable':
        // The contract's order: subscribe without `since` first, then refetch. `onGap` fires when
        // the room is joined again, with the seq the app's refetch lines up with.
        this.counters.gaps++;
        sub.gap = { since: sub.sentSince ?? 0, message: frame.message };
        sub.cursor = null;
        this.sendSubscribe(sub);
        return;
      case 'forbidden':
      case 'too_many_subscriptions':
      case 'bad_request':
        this.endSubscription(sub, error);
        return;
      default: {
        // `unavailable` (the team is busy, or the server could not check) or a code this client
        // does not know: retry the same subscribe after a pause.
        const id = this.socketId;
        sub.status = 'pending';
        sub.retryTimer = setTimeout(() => {
          sub.retryTimer = null;
          if (id === this.socketId && this.authed && this.isCurrent(sub)) this.sendSubscribe(sub);
        }, 500 + this.random() * 1000);
      }
    }
  }

  /** An `error` frame that names no scope. */
  private onConnectionError(error: RealtimeError): void {
    switch (error.code) {
      case 'rate_limited': {
        // The refused message is the oldest unanswered one: send it again a little later.
        const refused = this.takeInflight(() => true);
        this.counters.rateLimited++;
        const id = this.socketId;
        if (refused && refused.kind !== 'ping') {
          setTimeout(() => {
            if (id !== this.socketId || !this.authed) return;
            if (refused.kind === 'subscribe' && !this.isCurrent(refused.sub)) return;
            this.enqueue(refused, refused.kind === 'auth');
          }, 1000 + this.random() * 1000);
        }
        return;
      }
      case 'slow_consumer':
        return; // the server closes with 4008 next; the reconnect resumes every scope
      case 'unauthorized':
      case 'token_expired':
        this.takeInflight((o) => o.kind === 'auth');
        return; // 4001 follows; the reconnect presents a refreshed token
      default:
        this.takeInflight(() => true);
        this.reportError(error);
    }
  }

  /** Runs app code; an exception there must not break the stream. */
  private safe(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.reportError(e);
    }
  }
}
