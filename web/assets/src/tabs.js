import { NetworkError, TokenRotatedError } from './http.js';
const MESSAGE_TYPE = 'taskforge.rotated';
const QUERY_TYPE = 'taskforge.rotated?';
const REMEMBERED = 16;
const MARKER_HOLD_MS = 60_000;
const MAX_TIMER_MS = 2_147_483_647;
const groups = new Map();
function group(name) {
    let g = groups.get(name);
    if (!g) {
        g = { tail: Promise.resolve(), rotated: new Map(), waiters: new Set(), refs: 0, busy: 0 };
        groups.set(name, g);
    }
    return g;
}
function release(name, g) {
    if (g.refs === 0 && g.busy === 0 && groups.get(name) === g)
        groups.delete(name);
}
function isQuery(m) {
    return !!m && typeof m === 'object' && m.type === QUERY_TYPE && typeof m.used === 'string';
}
function isAnnouncement(m) {
    if (!m || typeof m !== 'object')
        return false;
    const o = m;
    const a = o.auth;
    return (o.type === MESSAGE_TYPE &&
        typeof o.used === 'string' &&
        typeof o.at === 'number' &&
        !!a &&
        typeof a === 'object' &&
        typeof a.accessToken === 'string' &&
        typeof a.refreshToken === 'string' &&
        typeof a.expiresIn === 'number' &&
        !!a.user &&
        typeof a.user === 'object');
}
function aged(r) {
    const age = Math.max(0, Date.now() - r.at) / 1000;
    return age < 1 ? r.auth : { ...r.auth, expiresIn: Math.max(0, Math.floor(r.auth.expiresIn - age)) };
}
function webLocks() {
    const nav = globalThis.navigator;
    return nav?.locks && typeof nav.locks.request === 'function' ? nav.locks : undefined;
}
async function markerName(name, token) {
    const subtle = globalThis.crypto?.subtle;
    if (!subtle)
        return null;
    const digest = new Uint8Array(await subtle.digest('SHA-256', new TextEncoder().encode(token)));
    let hex = '';
    for (const b of digest.subarray(0, 16))
        hex += b.toString(16).padStart(2, '0');
    return `${name}:spent:${hex}`;
}
function checkMs(v, fallback, what, min) {
    if (v === undefined)
        return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > MAX_TIMER_MS) {
        throw new RangeError(`${what} must be a number of milliseconds in [${min}, ${MAX_TIMER_MS}], got ${String(v)}`);
    }
    return v;
}
export function tabRefreshCoordinator(name = 'taskforge-auth', opts = {}) {
    if (typeof name !== 'string' || name === '')
        throw new TypeError('the coordinator name must be a non-empty string');
    return new TabCoordinator(name, checkMs(opts.lockTimeoutMs, 60_000, 'lockTimeoutMs', 1), checkMs(opts.announceTimeoutMs, 5_000, 'announceTimeoutMs', 1));
}
class TabCoordinator {
    name;
    lockTimeoutMs;
    announceTimeoutMs;
    listeners = new Set();
    channel;
    group;
    pending = new Set();
    closed = false;
    constructor(name, lockTimeoutMs, announceTimeoutMs) {
        this.name = name;
        this.lockTimeoutMs = lockTimeoutMs;
        this.announceTimeoutMs = announceTimeoutMs;
        this.group = group(name);
        this.group.refs++;
        this.channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel(name) : null;
        if (this.channel) {
            this.channel.onmessage = (ev) => {
                if (isQuery(ev.data))
                    return this.repeat(ev.data.used);
                if (!isAnnouncement(ev.data))
                    return;
                const r = { auth: ev.data.auth, at: ev.data.at };
                this.remember(ev.data.used, r);
                this.notify(ev.data.used, aged(r));
            };
            this.channel.unref?.();
        }
    }
    refresh(used, run) {
        if (this.closed)
            return Promise.reject(new Error('the refresh coordinator is closed'));
        const locks = webLocks();
        return locks ? this.underWebLock(locks, used, run) : this.underMutex(used, run);
    }
    onRotated(fn) {
        if (this.closed)
            return () => { };
        const entry = (used, auth) => fn(used, auth);
        this.listeners.add(entry);
        return () => {
            this.listeners.delete(entry);
        };
    }
    close() {
        if (this.closed)
            return;
        this.closed = true;
        for (const cancel of [...this.pending])
            cancel();
        this.pending.clear();
        this.listeners.clear();
        if (this.channel) {
            this.channel.onmessage = null;
            this.channel.close();
        }
        this.group.refs--;
        release(this.name, this.group);
    }
    latest(used) {
        let found;
        let token = used;
        for (let i = 0; i < REMEMBERED; i++) {
            const next = this.group.rotated.get(token);
            if (!next)
                break;
            found = next;
            token = next.auth.refreshToken;
        }
        return found && aged(found);
    }
    async critical(used, run, locks) {
        const known = this.latest(used);
        if (known)
            return known;
        const marker = locks ? await markerName(this.name, used) : null;
        if (locks && marker && (await locks.query()).held?.some((l) => l.name === marker)) {
            return this.announcement(used);
        }
        const auth = await run();
        const r = { auth, at: Date.now() };
        this.remember(used, r);
        if (locks && marker)
            await this.holdMarker(locks, marker);
        if (!this.closed) {
            const message = { type: MESSAGE_TYPE, used, auth, at: r.at };
            this.channel?.postMessage(message);
        }
        this.notify(used, auth);
        return auth;
    }
    underWebLock(locks, used, run) {
        return new Promise((resolve, reject) => {
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
                }
                catch (e) {
                    reject(e);
                }
            })
                .catch((e) => {
                clearTimeout(timer);
                this.pending.delete(cancel);
                reject(ctrl.signal.aborted ? ctrl.signal.reason : e);
            });
        });
    }
    holdMarker(locks, name) {
        return new Promise((held) => {
            locks
                .request(name, { mode: 'shared', ifAvailable: true }, (lock) => {
                held();
                if (!lock)
                    return undefined;
                return new Promise((release) => {
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
    announcement(used) {
        return new Promise((resolve, reject) => {
            const finish = () => {
                clearTimeout(timer);
                this.group.waiters.delete(check);
                this.pending.delete(cancel);
            };
            const check = () => {
                const auth = this.latest(used);
                if (!auth)
                    return;
                finish();
                resolve(auth);
            };
            const timer = setTimeout(() => {
                finish();
                reject(new TokenRotatedError(`another tab spent this refresh token and its new pair did not arrive within ${this.announceTimeoutMs} ms`));
            }, this.announceTimeoutMs);
            const cancel = () => {
                finish();
                reject(new Error('the refresh coordinator is closed'));
            };
            this.group.waiters.add(check);
            this.pending.add(cancel);
            check();
            if (this.group.waiters.has(check) && !this.closed) {
                const query = { type: QUERY_TYPE, used };
                this.channel?.postMessage(query);
            }
        });
    }
    repeat(used) {
        if (this.closed)
            return;
        let token = used;
        for (let i = 0; i < REMEMBERED; i++) {
            const r = this.group.rotated.get(token);
            if (!r)
                return;
            const message = { type: MESSAGE_TYPE, used: token, auth: r.auth, at: r.at };
            this.channel?.postMessage(message);
            token = r.auth.refreshToken;
        }
    }
    underMutex(used, run) {
        const g = this.group;
        const prev = g.tail;
        let unlock;
        const mine = new Promise((r) => (unlock = r));
        g.tail = prev.then(() => mine);
        g.busy++;
        const done = () => {
            unlock();
            g.busy--;
            release(this.name, g);
        };
        return new Promise((resolve, reject) => {
            let state = 'waiting';
            const giveUp = (e) => {
                if (state !== 'waiting')
                    return;
                state = 'gone';
                clearTimeout(timer);
                this.pending.delete(cancel);
                reject(e);
            };
            const timer = setTimeout(() => giveUp(this.lockTimeout()), this.lockTimeoutMs);
            const cancel = () => giveUp(new Error('the refresh coordinator is closed'));
            this.pending.add(cancel);
            void prev.then(async () => {
                if (state === 'gone')
                    return done();
                state = 'running';
                clearTimeout(timer);
                this.pending.delete(cancel);
                try {
                    resolve(await this.critical(used, run));
                }
                catch (e) {
                    reject(e);
                }
                finally {
                    done();
                }
            });
        });
    }
    lockTimeout() {
        return new NetworkError('timeout', 'POST', '/auth/refresh', `the refresh lock "${this.name}" was not free within ${this.lockTimeoutMs} ms`);
    }
    remember(used, r) {
        const rotated = this.group.rotated;
        rotated.delete(used);
        rotated.set(used, r);
        for (const oldest of rotated.keys()) {
            if (rotated.size <= REMEMBERED)
                break;
            rotated.delete(oldest);
        }
        for (const wake of [...this.group.waiters])
            wake();
    }
    notify(used, auth) {
        for (const fn of [...this.listeners]) {
            try {
                fn(used, auth);
            }
            catch (e) {
                console.error(e);
            }
        }
    }
}
