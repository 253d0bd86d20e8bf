// Refreshes shared between tabs. Refresh tokens rotate, and presenting a spent one revokes the
// whole login (every tab's). Tabs of one origin can hold the same token: duplicating a tab copies
// its sessionStorage. If both refresh it, the second presentation logs both out. So a refresh runs
// under a lock shared by the origin's tabs, each rotation is announced to the others, and a tab
// about to present a token someone already rotated adopts the announced pair instead.
//
// The announcement (BroadcastChannel) and the lock (Web Locks) travel separately: the next tab can
// get the lock before the news, and then present the spent token. So before it lets the lock go,
// the tab that rotated also takes a lock named after the spent token ("spent marker"); the lock
// manager is one authority, so the next holder's `locks.query()` sees that marker for certain, and
// it waits for the announcement instead of presenting the token. A tab that was not listening yet
// when the announcement went out (a duplicated tab resuming from a copy its original has rotated
// since) asks for it again: the tabs that remember the rotation repeat it.

import type { AuthResponse } from './http.js';
import { NetworkError, TokenRotatedError } from './http.js';

/** Serialises refreshes of one refresh token among its holders and tells them of rotations. */
export interface RefreshCoordinator {
  /**
   * Runs `run` (which presents `used`) unless `used` is already known to be rotated, in which
   * case it resolves to the newer pair without a request. One `run` at a time.
   */
  refresh(used: string, run: () => Promise<AuthResponse>): Promise<AuthResponse>;
  /** Called with every rotation seen (`used` was exchanged for `auth`), here or in another tab. */
  onRotated(fn: (used: string, auth: AuthResponse) => void): () => void;
  /** Stops listening; pending lock waits reject. A refresh already running completes. */
  close(): void;
}

export interface TabCoordinatorOptions {
  /** How long `refresh` waits for the lock before it rejects (`NetworkError` `timeout`; default 60 s). */
  lockTimeoutMs?: number;
  /**
   * How long a tab that finds its token spent by another tab waits for that tab's announcement
   * before it gives up with `TokenRotatedError` (default 5 s; it normally takes milliseconds).
   */
  announceTimeoutMs?: number;
}

const MESSAGE_TYPE = 'taskforge.rotated';
/** A waiting tab's request to repeat the announcements of a token's rotations. */
const QUERY_TYPE = 'taskforge.rotated?';
/** Rotations remembered: enough for every tab's recent history; older ones are long settled. */
const REMEMBERED = 16;
/** How long a spent marker is held: far longer than an announcement takes to arrive. */
const MARKER_HOLD_MS = 60_000;
const MAX_TIMER_MS = 2_147_483_647;

interface Announcement {
  type: typeof MESSAGE_TYPE;
  used: string;
  auth: AuthResponse;
  /** When `auth` was received (epoch ms, this machine's clock, like every tab's). */
  at: number;
}

interface Rotation {
  auth: AuthResponse;
  at: number;
}

/**
 * State shared by the coordinators of one name in this realm (page, worker, Node process): the
 * fallback mutex and the rotations seen, so that they are exact here without any messaging.
 */
interface Group {
  tail: Promise<void>;
  rotated: Map<string, Rotation>;
  /** Called on every rotation remembered (waits for an announcement). */
  waiters: Set<() => void>;
  refs: number;
  busy: number;
}

const groups = new Map<string, Group>();

function group(name: string): Group {
  let g = groups.get(name);
  if (!g) {
    g = { tail: Promise.resolve(), rotated: new Map(), waiters: new Set(), refs: 0, busy: 0 };
    groups.set(name, g);
  }
  return g;
}

function release(name: string, g: Group): void {
  if (g.refs === 0 && g.busy === 0 && groups.get(name) === g) groups.delete(name);
}

interface Query {
  type: typeof QUERY_TYPE;
  used: string;
}

function isQuery(m: unknown): m is Query {
  return !!m && typeof m === 'object' && (m as Query).type === QUERY_TYPE && typeof (m as Query).used === 'string';
}

function isAnnouncement(m: unknown): m is Announcement {
  if (!m || typeof m !== 'object') return false;
  const o = m as Record<string, unknown>;
  const a = o.auth as Record<string, unknown> | null | undefined;
  return (
    o.type === MESSAGE_TYPE &&
    typeof o.used === 'string' &&
    typeof o.at === 'number' &&
    !!a &&
    typeof a === 'object' &&
    typeof a.accessToken === 'string' &&
    typeof a.refreshToken === 'string' &&
    typeof a.expiresIn === 'number' &&
    !!a.user &&
    typeof a.user === 'object'
  );
}

/** The pair with its lifetime counted from now rather than from when it was issued. */
function aged(r: Rotation): AuthResponse {
  const age = Math.max(0, Date.now() - r.at) / 1000;
  return age < 1 ? r.auth : { ...r.auth, expiresIn: Math.max(0, Math.floor(r.auth.expiresIn - age)) };
}

function webLocks(): LockManager | undefined {
  const nav = (globalThis as { navigator?: { locks?: LockManager } }).navigator;
  return nav?.locks && typeof nav.locks.request === 'function' ? nav.locks : undefined;
}

/**
 * The name of the lock that marks `token` as spent: a digest, so that no token material shows in
 * lock names. Null without WebCrypto (Web Locks and WebCrypto both need a secure context, so in
 * practice they come together).
 */
async function markerName(name: string, token: string): Promise<string | null> {
  const subtle = (globalThis as { crypto?: Crypto }).crypto?.subtle;
  if (!subtle) return null;
  const digest = new Uint8Array(await subtle.digest('SHA-256', new TextEncoder().encode(token)));
  let hex = '';
  for (const b of digest.subarray(0, 16)) hex += b.toString(16).padStart(2, '0');
  return `${name}:spent:${hex}`;
}

function checkMs(v: number | undefined, fallback: number, what: string, min: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > MAX_TIMER_MS) {
    throw new RangeError(`${what} must be a number of milliseconds in [${min}, ${MAX_TIMER_MS}], got ${String(v)}`);
  }
  return v;
}

/**
 * A coordinator for the tabs of this origin: `run` goes under the Web Lock `name`
 * (`navigator.locks`), or, where there is none (Node 20), under a mutex of this realm keyed by
 * `name`, which still serialises the sessions of one page or Node program. Rotations go out on
 * the BroadcastChannel `name`. Give every `Session` of the login the same coordinator (or one per
 * tab with the same name).
 */
export function tabRefreshCoordinator(name = 'taskforge-auth', opts: TabCoordinatorOptions = {}): RefreshCoordinator {
  if (typeof name !== 'string' || name === '') throw new TypeError('the coordinator name must be a non-empty string');
  return new TabCoordinator(
    name,
    checkMs(opts.lockTimeoutMs, 60_000, 'lockTimeoutMs', 1),
    checkMs(opts.announceTimeoutMs, 5_000, 'announceTimeoutMs', 1),
  );
}

class TabCoordinator implements RefreshCoordinator {
  private readonly listeners = new Set<(used: string, auth: AuthResponse) => void>();
  private readonly channel: BroadcastChannel | null;
  private readonly group: Group;
  /** Lock and announcement waits and held markers: `close()` ends them and their timers. */
  private readonly pending = new Set<() => void>();
  private closed = false;

  constructor(
    private readonly name: string,
    private readonly lockTimeoutMs: number,
    private readonly announceTimeoutMs: number,
  ) {
    this.group = group(name);
    this.group.refs++;
    this.channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel(name) : null;
    if (this.channel) {
      this.channel.onmessage = (ev: MessageEvent) => {
        if (isQuery(ev.data)) return this.repeat(ev.data.used);
        if (!isAnnouncement(ev.data)) return;
        const r = { auth: ev.data.auth, at: ev.data.at };
        this.remember(ev.data.used, r);
        this.notify(ev.data.used, aged(r));
      };
      // Node: an open channel would keep the process alive; a coordinator should not.
      (this.channel as unknown as { unref?: () => void }).unref?.();
    }
  }

  refresh(used: string, run: () => Promise<AuthResponse>): Promise<AuthResponse> {
    if (this.closed) return Promise.reject(new Error('the refresh coordinator is closed'));
    const locks = webLocks();
    return locks ? this.underWebLock(locks, used, run) : this.underMutex(used, run);
  }

  onRotated(fn: (used: string, auth: AuthResponse) => void): () => void {
    if (this.closed) return () => {};
    // A wrapper per registration, so that registering one function twice needs two removals.
    const entry = (used: string, auth: AuthResponse) => fn(used, auth);
    this.listeners.add(entry);
    return () => {
      this.listeners.delete(entry);
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const cancel of [...this.pending]) cancel();
    this.pending.clear();
    this.listeners.clear();
    if (this.channel) {
      this.channel.onmessage = null;
      this.channel.close();
    }
    this.group.refs--;
    release(this.name, this.group);
  }

  // ---- under the lock --------------------------------------------------------------------

  /** The newest pair `used` leads to through the rotations seen, if it was rotated. */
  private latest(used: string): AuthResponse | undefined {
    let found: Rotation | undefined;
    let token = used;
    for (let i = 0; i < REMEMBERED; i++) {
      const next = this.group.rotated.get(token);
      if (!next) break;
      found = next;
      token = next.auth.refreshToken;
    }
    return found && aged(found);
  }

  /**
   * Inside the lock: adopt a known rotation, or run the refresh and announce it. With Web Locks,
   * a token another tab marked spent is not presented: the announcement is on its way.
   */
  private async critical(
    used: string,
    run: () => Promise<AuthResponse>,
    locks?: LockManager,
  ): Promise<AuthResponse> {
    const known = this.latest(used);
    if (known) return known;
    const marker = locks ? await markerName(this.name, used) : null;
    if (locks && marker && (await locks.query()).held?.some((l) => l.name === marker)) {
      return this.announcement(used);
    }
    const auth = await run();
    const r = { auth, at: Date.now() };
    this.remember(used, r);
    // Marked before the lock goes (the caller releases it when this returns).
    if (locks && marker) await this.holdMarker(locks, marker);
    if (!this.closed) {
      const message: Announcement = { type: MESSAGE_TYPE, used, auth, at: r.at };
      this.channel?.postMessage(message);
    }
    this.notify(used, auth);
    return auth;
  }

  private underWebLock(locks: LockManager, used: string, run: () => Promise<AuthResponse>): Promise<AuthResponse> {
    return new Promise<AuthResponse>((resolve, reject) => {
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(this.lockTimeout()), this.lockTimeoutMs);
      const cancel = () => {
        clearTimeout(timer);
        ctrl.abort(new Error('the refresh coordinator is closed'));
      };
      this.pending.add(cancel);
      locks
        .request(this.name, { signal: ctrl.signal }, async () => {
          clearTimeout(timer);
          this.pending.delete(cancel);
          try {
            resolve(await this.critical(used, run, locks));
          } catch (e) {
            reject(e);
          }
        })
        .catch((e: unknown) => {
          // Only a wait that never got the lock ends here (the callback itself does not throw).
          clearTimeout(timer);
          this.pending.delete(cancel);
          reject(ctrl.signal.aborted ? ctrl.signal.reason : e);
        });
    });
  }

  /** Holds the spent marker `name` for a while; resolves once it is held. */
  private holdMarker(locks: LockManager, name: string): Promise<void> {
    return new Promise<void>((held) => {
      locks
        .request(name, { mode: 'shared', ifAvailable: true }, (lock) => {
          held();
          if (!lock) return undefined;
          return new Promise<void>((release) => {
            const end = () => {
              clearTimeout(timer);
              this.pending.delete(end);
              release();
            };
            const timer = setTimeout(end, MARKER_HOLD_MS);
            this.pending.add(end);
          });
        })
        .catch(() => held());
    });
  }

  /** The pair another holder got for `used`, once its announcement arrives (bounded). */
  private announcement(used: string): Promise<AuthResponse> {
    return new Promise<AuthResponse>((resolve, reject) => {
      const finish = () => {
        clearTimeout(timer);
        this.group.waiters.delete(check);
        this.pending.delete(cancel);
      };
      const check = () => {
        const auth = this.latest(used);
        if (!auth) return;
        finish();
        resolve(auth);
      };
      const timer = setTimeout(() => {
        finish();
        reject(
          new TokenRotatedError(
            `another tab spent this refresh token and its new pair did not arrive within ${this.announceTimeoutMs} ms`,
          ),
        );
      }, this.announceTimeoutMs);
      const cancel = () => {
        finish();
        reject(new Error('the refresh coordinator is closed'));
      };
      this.group.waiters.add(check);
      this.pending.add(cancel);
      check();
      // The announcement may have gone out before this tab listened: ask for it again.
      if (this.group.waiters.has(check) && !this.closed) {
        const query: Query = { type: QUERY_TYPE, used };
        this.channel?.postMessage(query);
      }
    });
  }

  /** Repeats the announcements of the rotations that follow `used`, as far as remembered here. */
  private repeat(used: string): void {
    if (this.closed) return;
    let token = used;
    for (let i = 0; i < REMEMBERED; i++) {
      const r = this.group.rotated.get(token);
      if (!r) return;
      const message: Announcement = { type: MESSAGE_TYPE, used: token, auth: r.auth, at: r.at };
      this.channel?.postMessage(message);
      token = r.auth.refreshToken;
    }
  }

  private underMutex(used: string, run: () => Promise<AuthResponse>): Promise<AuthResponse> {
    const g = this.group;
    const prev = g.tail;
    let unlock!: () => void;
    const mine = new Promise<void>((r) => (unlock = r));
    g.tail = prev.then(() => mine);
    g.busy++;
    const done = () => {
      unlock();
      g.busy--;
      release(this.name, g);
    };
    return new Promise<AuthResponse>((resolve, reject) => {
      let state: 'waiting' | 'running' | 'gone' = 'waiting';
      const giveUp = (e: unknown) => {
        if (state !== 'waiting') return;
        state = 'gone';
        clearTimeout(timer);
        this.pending.delete(cancel);
        reject(e);
      };
      const timer = setTimeout(() => giveUp(this.lockTimeout()), this.lockTimeoutMs);
      const cancel = () => giveUp(new Error('the refresh coordinator is closed'));
      this.pending.add(cancel);
      void prev.then(async () => {
        if (state === 'gone') return done();
        state = 'running';
        clearTimeout(timer);
        this.pending.delete(cancel);
        try {
          resolve(await this.critical(used, run));
        } catch (e) {
          reject(e);
        } finally {
          done();
        }
      });
    });
  }

  // ---- helpers ---------------------------------------------------------------------------

  private lockTimeout(): NetworkError {
    return new NetworkError(
      'timeout',
      'POST',
      '/auth/refresh',
      `the refresh lock "${this.name}" was not free within ${this.lockTimeoutMs} ms`,
    );
  }

  private remember(used: string, r: Rotation): void {
    const rotated = this.group.rotated;
    rotated.delete(used);
    rotated.set(used, r);
    for (const oldest of rotated.keys()) {
      if (rotated.size <= REMEMBERED) break;
      rotated.delete(oldest);
    }
    for (const wake of [...this.group.waiters]) wake();
  }

  private notify(used: string, auth: AuthResponse): void {
    for (const fn of [...this.listeners]) {
      try {
        fn(used, auth);
      } catch (e) {
        // A listener's failure must not stop the others, nor fail the refresh that announced.
        console.error(e);
      }
    }
  }
}
