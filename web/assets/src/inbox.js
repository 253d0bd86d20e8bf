import { ApiError, isAuthFailure } from './http.js';
import { RealtimeError } from './realtime.js';
const registry = new WeakMap();
export function openInbox(rt, http, opts = {}) {
    if (!rt || typeof rt.subscribeInbox !== 'function')
        throw new TypeError('rt must be a RealtimeClient');
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
    }
    else {
        engine.refs++;
    }
    return new InboxHandle(engine);
}
const CLOSED = Object.freeze({
    items: Object.freeze([]),
    unreadCount: 0,
    status: 'closed',
    error: null,
    seq: null,
    hasMore: false,
    loadingMore: false,
});
class InboxHandle {
    ready;
    engine;
    mine = new Set();
    closed = false;
    rejectReady;
    readyWatch = null;
    constructor(engine) {
        this.engine = engine;
        this.ready = new Promise((resolve, reject) => {
            this.rejectReady = reject;
            const now = engine.getSnapshot();
            if (now.status === 'live')
                return resolve(now);
            if (now.status === 'error')
                return reject(now.error);
            const watch = (s) => {
                if (s.status === 'loading' || s.status === 'refetching')
                    return;
                engine.listeners.delete(watch);
                this.readyWatch = null;
                if (s.status === 'live')
                    resolve(s);
                else
                    reject(s.error ?? new RealtimeError('closed', 'the inbox ended'));
            };
            this.readyWatch = watch;
            engine.listeners.add(watch);
        });
        this.ready.catch(() => { });
    }
    getSnapshot() {
        return this.closed ? CLOSED : this.engine.getSnapshot();
    }
    subscribe(listener) {
        if (typeof listener !== 'function')
            throw new TypeError('listener must be a function');
        if (this.closed)
            return () => { };
        const entry = (s) => listener(s);
        this.mine.add(entry);
        this.engine.listeners.add(entry);
        return () => {
            this.mine.delete(entry);
            this.engine.listeners.delete(entry);
        };
    }
    on(event, listener) {
        if (event !== 'change')
            throw new TypeError(`an inbox emits 'change', not ${JSON.stringify(event)}`);
        return this.subscribe(listener);
    }
    get items() {
        return this.getSnapshot().items;
    }
    get unreadCount() {
        return this.getSnapshot().unreadCount;
    }
    get status() {
        return this.getSnapshot().status;
    }
    get(id) {
        return this.closed ? undefined : this.engine.get(id);
    }
    loadMore() {
        return this.closed ? Promise.reject(closedError()) : this.engine.loadMore();
    }
    markRead(ids) {
        return this.closed ? Promise.reject(closedError()) : this.engine.markRead(ids);
    }
    markAllRead() {
        return this.closed ? Promise.reject(closedError()) : this.engine.markAllRead();
    }
    close() {
        if (this.closed)
            return;
        this.closed = true;
        for (const l of this.mine)
            this.engine.listeners.delete(l);
        this.mine.clear();
        if (this.readyWatch)
            this.engine.listeners.delete(this.readyWatch);
        this.readyWatch = null;
        this.rejectReady(closedError());
        this.engine.release();
    }
}
function closedError() {
    return new RealtimeError('closed', 'the inbox was closed');
}
const ERROR_AFTER_FAILURES = 3;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;
const MAX_READ_IDS = 10_000;
const MAX_HELD = 10_000;
const MARK_BATCH = 200;
function isPermanent(e) {
    if (isAuthFailure(e))
        return true;
    return e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
}
function checkPage(p) {
    if (!p || !Array.isArray(p.items) || !Number.isInteger(p.seq) || !Number.isInteger(p.unreadCount)) {
        throw new Error('GET /me/notifications answered without items, seq or unreadCount');
    }
    return p;
}
class InboxEngine {
    listeners = new Set();
    refs = 0;
    finished = false;
    rt;
    http;
    pageSize;
    items = new Map();
    readIds = new Set();
    readUpto = -1;
    baseSeq = -1;
    holding = true;
    held = new Map();
    heldOverflow = false;
    count = 0;
    countSeq = -1;
    seq = null;
    nextCursor = null;
    more = null;
    status = 'loading';
    error = null;
    sub = null;
    joined = false;
    loaded = false;
    loadGen = 0;
    abort = null;
    retryTimer = null;
    failures = 0;
    snapshot = null;
    lastNotified = null;
    notifyQueued = false;
    offs = [];
    constructor(rt, http, pageSize) {
        this.rt = rt;
        this.http = http;
        this.pageSize = pageSize;
    }
    start() {
        this.offs.push(this.rt.onStateChange((c) => {
            if (c.state === 'closed' && c.error?.code === 'unauthorized')
                this.end('error', c.error);
        }), this.rt.onActivity((a) => {
            if (this.aboutMyMembership(a))
                this.reload();
        }));
        this.startLoad();
    }
    aboutMyMembership(a) {
        const me = this.http.user?.id;
        if (!me)
            return false;
        if (a.type === 'member.added')
            return a.data.member.user.id === me;
        if (a.type === 'member.removed')
            return a.data.userId === me;
        return false;
    }
    get(id) {
        return this.items.get(id);
    }
    getSnapshot() {
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
    release() {
        if (--this.refs > 0)
            return;
        this.end('closed', null);
    }
    reload() {
        if (this.finished)
            return;
        if (this.status !== 'error')
            this.status = this.loaded ? 'refetching' : 'loading';
        this.failures = 0;
        this.changed();
        this.startLoad();
    }
    startLoad() {
        if (this.finished)
            return;
        const gen = ++this.loadGen;
        this.abort?.abort();
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
        const ac = new AbortController();
        this.abort = ac;
        this.holding = true;
        this.http
            .request('GET', '/me/notifications', { query: { limit: this.pageSize }, signal: ac.signal })
            .then((r) => {
            if (gen !== this.loadGen || this.finished)
                return;
            this.abort = null;
            try {
                this.install(checkPage(r.data));
            }
            catch (e) {
                this.loadFailed(e);
            }
        }, (e) => {
            if (gen !== this.loadGen || this.finished)
                return;
            this.abort = null;
            this.loadFailed(e);
        });
    }
    install(page) {
        const s = page.seq;
        if (this.heldOverflow) {
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
        for (const ev of held)
            if (ev.seq > s)
                this.apply(ev);
        this.loaded = true;
        this.failures = 0;
        this.error = null;
        if (!this.sub)
            this.join(s);
        if (this.joined)
            this.status = 'live';
        this.changed();
        this.settle();
    }
    join(since) {
        let sub;
        try {
            sub = this.rt.subscribeInbox({
                onEvent: (ev) => {
                    if (this.sub === sub)
                        this.onEvent(ev);
                },
                onSubscribed: (info) => {
                    if (this.sub === sub)
                        this.onJoined(info);
                },
                onGap: () => {
                    if (this.sub !== sub)
                        return;
                    this.seq = null;
                    this.held.clear();
                    this.reload();
                },
                onError: (e) => {
                    if (this.sub === sub)
                        this.end('error', e);
                },
            }, { since });
        }
        catch (e) {
            this.end('error', e);
            return;
        }
        this.sub = sub;
        sub.ready.catch((e) => {
            if (this.sub !== sub || this.finished)
                return;
            if (sub.state === 'ended')
                return this.end('error', e);
            if (!this.joined)
                this.setError(e);
        });
    }
    onJoined(info) {
        this.joined = true;
        if (info.seq > this.countSeq && !this.holding) {
            const mismatch = info.resumed && info.unreadCount !== this.count;
            this.count = info.unreadCount;
            this.countSeq = info.seq;
            this.seq = Math.max(this.seq ?? info.seq, info.seq);
            this.changed();
            if (mismatch)
                return this.reload();
        }
        this.settle();
    }
    loadFailed(e) {
        if (isPermanent(e))
            return this.end('error', e);
        this.failures++;
        if (this.failures >= ERROR_AFTER_FAILURES)
            this.setError(e);
        const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (this.failures - 1));
        this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            this.startLoad();
        }, base / 2 + (Math.random() * base) / 2);
    }
    settle() {
        if (this.finished || this.holding || !this.loaded || !this.joined)
            return;
        if (this.status !== 'live') {
            this.status = 'live';
            this.error = null;
            this.changed();
        }
    }
    setError(e) {
        this.status = 'error';
        this.error = e;
        this.changed();
    }
    end(status, e) {
        if (this.finished)
            return;
        this.finished = true;
        if (registry.get(this.rt) === this)
            registry.delete(this.rt);
        for (const off of this.offs.splice(0))
            off();
        this.loadGen++;
        this.abort?.abort();
        this.abort = null;
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
        const sub = this.sub;
        this.sub = null;
        sub?.unsubscribe();
        this.held.clear();
        this.status = status;
        this.error = status === 'error' ? e : null;
        this.changed();
    }
    onEvent(ev) {
        if (this.finished)
            return;
        if (this.holding) {
            if (this.held.size >= MAX_HELD)
                this.heldOverflow = true;
            else
                this.held.set(ev.seq, ev);
            return;
        }
        if (ev.seq <= this.baseSeq)
            return;
        this.apply(ev);
    }
    apply(ev) {
        this.seq = Math.max(this.seq ?? ev.seq, ev.seq);
        if (ev.type === 'notification.created') {
            const n = ev.notification;
            if (!this.items.has(n.id))
                this.items.set(n.id, this.withMarks(n));
            if (ev.seq > this.countSeq) {
                this.count++;
                this.countSeq = ev.seq;
            }
        }
        else {
            this.learnMarks(ev.ids, ev.upto);
            if (ev.seq > this.countSeq) {
                this.count = ev.unreadCount;
                this.countSeq = ev.seq;
            }
        }
        this.changed();
    }
    isMarked(n) {
        return this.readIds.has(n.id) || n.seq <= this.readUpto;
    }
    withMarks(n) {
        return n.readAt == null && this.isMarked(n) ? { ...n, readAt: new Date().toISOString() } : n;
    }
    learnMarks(ids, upto) {
        if (ids)
            for (const id of ids)
                this.readIds.add(id);
        if (upto !== null)
            this.readUpto = Math.max(this.readUpto, upto);
        for (const [id, n] of this.items) {
            const marked = this.withMarks(n);
            if (marked !== n)
                this.items.set(id, marked);
        }
        if (this.readIds.size > MAX_READ_IDS)
            this.reload();
    }
    loadMore() {
        if (this.finished)
            return Promise.reject(closedError());
        if (this.more)
            return this.more;
        const cursor = this.nextCursor;
        if (cursor === null || !this.loaded)
            return Promise.resolve();
        const gen = this.loadGen;
        const run = async () => {
            try {
                const r = await this.http.request('GET', '/me/notifications', {
                    query: { limit: this.pageSize, cursor },
                });
                if (gen !== this.loadGen || this.finished || this.nextCursor !== cursor)
                    return;
                const page = checkPage(r.data);
                for (const n of page.items)
                    if (!this.items.has(n.id))
                        this.items.set(n.id, this.withMarks(n));
                this.nextCursor = page.nextCursor ?? null;
            }
            finally {
                this.more = null;
                this.changed();
            }
        };
        this.more = run();
        this.changed();
        return this.more;
    }
    async markRead(ids) {
        const list = typeof ids === 'string' ? [ids] : [...ids];
        if (!list.every((id) => typeof id === 'string' && id !== ''))
            throw new TypeError('ids must be notification ids');
        const unique = [...new Set(list)];
        for (let i = 0; i < unique.length; i += MARK_BATCH) {
            const batch = unique.slice(i, i + MARK_BATCH);
            const r = await this.http.request('POST', '/me/notifications/read', { body: { ids: batch } });
            this.answered(r.data, batch, null);
        }
    }
    async markAllRead() {
        const upto = this.seq;
        if (upto === null)
            return;
        const r = await this.http.request('POST', '/me/notifications/read', { body: { upto } });
        this.answered(r.data, null, upto);
    }
    answered(r, ids, upto) {
        if (this.finished)
            return;
        this.learnMarks(ids, upto);
        if (Number.isInteger(r?.seq) && Number.isInteger(r?.unreadCount) && r.seq > this.countSeq && !this.holding) {
            this.count = r.unreadCount;
            this.countSeq = r.seq;
        }
        this.changed();
    }
    changed() {
        this.snapshot = null;
        if (this.notifyQueued)
            return;
        this.notifyQueued = true;
        queueMicrotask(() => this.flush());
    }
    flush() {
        this.notifyQueued = false;
        const s = this.getSnapshot();
        if (s === this.lastNotified)
            return;
        this.lastNotified = s;
        for (const l of [...this.listeners]) {
            try {
                l(s);
            }
            catch (e) {
                this.rt.reportError(e);
            }
        }
    }
}
