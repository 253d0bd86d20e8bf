import { PRESENCE_TYPES } from './generated/protocol.js';
import { isAuthFailure } from './http.js';
import { PresenceState } from './presence.js';
import { MoveTracker, normalizeScope, reaches, scopeKey, scopeOfFrame } from './scope.js';
export class RealtimeError extends Error {
    code;
    scope;
    constructor(code, message, scope) {
        super(`${code}: ${message}`);
        this.name = 'RealtimeError';
        this.code = code;
        this.scope = scope;
    }
}
let nextSubscriptionId = 1;
export class Subscription {
    scope;
    key;
    presence;
    ready;
    id = nextSubscriptionId++;
    handlers;
    status = 'pending';
    cursor;
    sentSince = null;
    buffer = new Map();
    gap = null;
    joins = 0;
    retryTimer = null;
    resolveReady;
    rejectReady;
    client;
    constructor(client, scope, handlers, since) {
        this.client = client;
        this.scope = scope;
        this.key = scopeKey(scope);
        this.handlers = handlers;
        this.cursor = since;
        this.presence = 'taskId' in scope ? new PresenceState(scope.taskId, (e) => client.reportError(e)) : undefined;
        this.ready = new Promise((resolve, reject) => {
            this.resolveReady = resolve;
            this.rejectReady = reject;
        });
        this.ready.catch(() => { });
    }
    get state() {
        return this.status;
    }
    get lastSeq() {
        return this.cursor;
    }
    unsubscribe() {
        this.client.unsubscribe(this);
    }
}
const OPEN = 1;
const SEEN_PER_TEAM = 10_000;
function isPresence(a) {
    return PRESENCE_TYPES.includes(a.type);
}
function decode(data) {
    if (typeof data === 'string')
        return data;
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
        return new TextDecoder().decode(data);
    }
    return null;
}
export function realtimeUrl(url) {
    const u = new URL(url);
    if (u.protocol === 'http:')
        u.protocol = 'ws:';
    else if (u.protocol === 'https:')
        u.protocol = 'wss:';
    if (!u.pathname.endsWith('/realtime'))
        u.pathname = `${u.pathname.replace(/\/+$/, '')}/realtime`;
    return u.toString();
}
function timerDelay(ms) {
    return Math.min(Math.max(0, ms), 2 ** 31 - 1);
}
export class RealtimeClient {
    url;
    tokens;
    WS;
    opts;
    random;
    subs = new Map();
    seen = new Map();
    moves = new MoveTracker();
    stateValue = 'idle';
    wantOpen = false;
    ws = null;
    socketId = 0;
    authed = false;
    everAuthed = false;
    attempt = 0;
    authRejects = 0;
    authedAt = 0;
    forceRefresh = false;
    currentToken = null;
    queue = [];
    inflight = [];
    bucket = { tokens: 0, at: 0 };
    lastHeard = 0;
    pingSentAt = 0;
    reconnectTimer = null;
    authTimer = null;
    renewTimer = null;
    pumpTimer = null;
    heartbeatTimer = null;
    counters = {
        connects: 0,
        activityFrames: 0,
        duplicates: 0,
        renewals: 0,
        gaps: 0,
        rateLimited: 0,
    };
    constructor(opts) {
        this.opts = opts;
        this.url = realtimeUrl(opts.url);
        const auth = opts.auth;
        this.tokens = typeof auth === 'string' ? { getAccessToken: async () => ({ token: auth }) } : auth;
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new Error('no WebSocket implementation: pass { WebSocket } (e.g. the "ws" package in Node 20)');
        }
        this.WS = WS;
        this.random = opts.random ?? Math.random;
        this.bucket.tokens = this.sendRate.burst;
        this.bucket.at = Date.now();
    }
    get state() {
        return this.stateValue;
    }
    get stats() {
        return { ...this.counters };
    }
    get subscriptions() {
        return [...this.subs.values()];
    }
    get sendRate() {
        return this.opts.sendRate ?? { perSecond: 50, burst: 100 };
    }
    connect() {
        if (this.wantOpen)
            return;
        this.wantOpen = true;
        this.attempt = 0;
        this.authRejects = 0;
        void this.open();
    }
    close() {
        this.wantOpen = false;
        this.clearTimer('reconnectTimer');
        this.socketId++;
        const ws = this.ws;
        this.teardown();
        if (ws)
            this.detachAndClose(ws, 1000, 'client closed');
        this.setState({ state: 'closed' });
    }
    reconnect() {
        if (!this.wantOpen)
            return;
        if (this.ws) {
            this.dropSocket(4000, 'reconnect requested');
        }
        if (this.reconnectTimer) {
            this.clearTimer('reconnectTimer');
            void this.open();
        }
    }
    subscribe(scope, handlers = {}, opts = {}) {
        const plain = normalizeScope(scope);
        const key = scopeKey(plain);
        if (this.subs.has(key))
            throw new Error(`already subscribed to ${key}`);
        if (opts.since !== undefined && !(Number.isInteger(opts.since) && opts.since >= 0)) {
            throw new TypeError('since is a seq: an integer, 0 or more');
        }
        const sub = new Subscription(this, plain, handlers, opts.since ?? null);
        this.subs.set(key, sub);
        if (this.authed)
            this.sendSubscribe(sub);
        return sub;
    }
    unsubscribe(sub) {
        if (sub.status === 'ended')
            return;
        const queued = this.queue.findIndex((o) => o.kind === 'subscribe' && o.sub === sub);
        this.endSubscription(sub, null);
        if (queued >= 0) {
            this.queue.splice(queued, 1);
        }
        else if (this.authed) {
            this.enqueue({ kind: 'unsubscribe', key: sub.key, sub, frame: { type: 'unsubscribe', ...sub.scope } });
        }
    }
    reportError(e) {
        if (this.opts.onError) {
            try {
                this.opts.onError(e);
                return;
            }
            catch (inner) {
                e = inner;
            }
        }
        console.error('[taskforge realtime]', e);
    }
    setState(change) {
        this.stateValue = change.state;
        this.safe(() => this.opts.onStateChange?.(change));
    }
    async open() {
        const id = ++this.socketId;
        if (!this.everAuthed)
            this.setState({ state: 'connecting' });
        let token;
        try {
            token = await this.tokens.getAccessToken(this.forceRefresh ? { forceRefresh: true } : {});
            this.forceRefresh = false;
        }
        catch (e) {
            if (id !== this.socketId || !this.wantOpen)
                return;
            if (isAuthFailure(e))
                return this.failAuth(e);
            this.reportError(e);
            return this.scheduleReconnect({});
        }
        if (id !== this.socketId || !this.wantOpen)
            return;
        let ws;
        try {
            ws = new this.WS(this.url);
        }
        catch (e) {
            this.reportError(e);
            return this.scheduleReconnect({});
        }
        this.ws = ws;
        ws.onopen = () => {
            if (id !== this.socketId)
                return;
            this.lastHeard = Date.now();
            this.send({ kind: 'auth', token, frame: { type: 'auth', token: token.token } });
            this.authTimer = setTimeout(() => {
                if (id === this.socketId && !this.authed)
                    this.dropSocket(4000, 'no answer to auth');
            }, this.opts.authTimeoutMs ?? 10_000);
        };
        ws.onmessage = (ev) => {
            if (id === this.socketId)
                this.onMessage(ev.data);
        };
        ws.onclose = (ev) => {
            this.onSocketClosed(id, ev.code ?? 1006, ev.reason ?? '');
        };
        ws.onerror = () => {
        };
    }
    onSocketClosed(id, code, reason) {
        if (id !== this.socketId)
            return;
        const authedAt = this.authedAt;
        this.teardown();
        if (!this.wantOpen) {
            this.setState({ state: 'closed', code, reason });
            return;
        }
        if (code === 4001) {
            this.forceRefresh = true;
            const atOnce = authedAt === 0 || Date.now() - authedAt < 1000;
            this.authRejects = atOnce ? this.authRejects + 1 : 1;
            if (this.authRejects > 3) {
                return this.failAuth(new RealtimeError('unauthorized', `the server refused the token ${this.authRejects} times`));
            }
        }
        else {
            this.authRejects = 0;
        }
        this.scheduleReconnect({ code, reason });
    }
    teardown() {
        this.ws = null;
        this.authed = false;
        this.authedAt = 0;
        this.queue = [];
        this.inflight = [];
        this.currentToken = null;
        for (const t of ['authTimer', 'renewTimer', 'pumpTimer'])
            this.clearTimer(t);
        if (this.heartbeatTimer)
            clearInterval(this.heartbeatTimer);
        this.heartbeatTimer = null;
        for (const sub of this.subs.values()) {
            if (sub.status === 'ended')
                continue;
            sub.status = 'pending';
            sub.buffer.clear();
            if (sub.retryTimer)
                clearTimeout(sub.retryTimer);
            sub.retryTimer = null;
            sub.presence?.markStale();
        }
    }
    scheduleReconnect(info) {
        this.clearTimer('reconnectTimer');
        const b = this.opts.backoff ?? {};
        const min = b.minMs ?? 250;
        const max = b.maxMs ?? 30_000;
        const base = Math.min(max, min * (b.factor ?? 2) ** this.attempt);
        this.attempt++;
        const delayMs = Math.round(base / 2 + (this.random() * base) / 2);
        this.setState({ state: 'reconnecting', delayMs, ...info });
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            if (this.wantOpen)
                void this.open();
        }, delayMs);
    }
    dropSocket(code, reason) {
        const ws = this.ws;
        if (ws)
            this.detachAndClose(ws, code, reason, true);
        this.onSocketClosed(this.socketId, code, reason);
    }
    detachAndClose(ws, code, reason, abandon = false) {
        ws.onopen = ws.onmessage = ws.onclose = null;
        ws.onerror = () => { };
        try {
            const terminate = ws.terminate;
            if (abandon && typeof terminate === 'function')
                terminate.call(ws);
            else
                ws.close(code, reason);
        }
        catch {
        }
    }
    failAuth(error) {
        this.close();
        this.safe(() => (this.opts.onAuthFailure ? this.opts.onAuthFailure(error) : this.reportError(error)));
    }
    clearTimer(name) {
        const t = this[name];
        if (t)
            clearTimeout(t);
        this[name] = null;
    }
    onAuthenticated(entry, expiresAt) {
        const token = entry?.kind === 'auth' ? entry.token : undefined;
        if (token)
            this.currentToken = token.token;
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
                if (sub.status !== 'ended')
                    this.sendSubscribe(sub);
            }
        }
        else {
            this.counters.renewals++;
            this.authRejects = 0;
        }
        this.scheduleRenewal(token, expiresAt);
    }
    scheduleRenewal(token, expiresAt) {
        this.clearTimer('renewTimer');
        let at = token?.refreshAt;
        if (at === undefined) {
            const exp = Date.parse(expiresAt);
            if (Number.isNaN(exp))
                return;
            at = exp - Math.min(60_000, Math.max(0, exp - Date.now()) / 4);
        }
        const id = this.socketId;
        this.renewTimer = setTimeout(() => void this.renew(id), timerDelay(Math.max(250, at - Date.now())));
    }
    async renew(id) {
        this.renewTimer = null;
        if (id !== this.socketId || !this.authed)
            return;
        try {
            let token = await this.tokens.getAccessToken();
            if (token.token === this.currentToken)
                token = await this.tokens.getAccessToken({ forceRefresh: true });
            if (id !== this.socketId || !this.authed)
                return;
            if (token.token === this.currentToken) {
                this.renewTimer = setTimeout(() => void this.renew(id), 5000 + this.random() * 5000);
                return;
            }
            this.enqueue({ kind: 'auth', token, frame: { type: 'auth', token: token.token } }, true);
        }
        catch (e) {
            if (id !== this.socketId)
                return;
            if (isAuthFailure(e))
                return this.failAuth(e);
            this.reportError(e);
            this.renewTimer = setTimeout(() => void this.renew(id), 1000 + this.random() * 1000);
        }
    }
    enqueue(o, front = false) {
        if (front)
            this.queue.unshift(o);
        else
            this.queue.push(o);
        this.pump();
    }
    pump() {
        if (!this.authed || !this.ws || this.pumpTimer)
            return;
        const { perSecond, burst } = this.sendRate;
        const now = Date.now();
        this.bucket.tokens = Math.min(burst, this.bucket.tokens + ((now - this.bucket.at) / 1000) * perSecond);
        this.bucket.at = now;
        while (this.queue.length > 0 && this.bucket.tokens >= 1) {
            this.bucket.tokens -= 1;
            this.send(this.queue.shift());
        }
        if (this.queue.length > 0) {
            const wait = Math.ceil(((1 - this.bucket.tokens) / perSecond) * 1000);
            this.pumpTimer = setTimeout(() => {
                this.pumpTimer = null;
                this.pump();
            }, wait);
        }
    }
    send(o) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN)
            return;
        try {
            ws.send(JSON.stringify(o.frame));
            this.inflight.push(o);
        }
        catch (e) {
            this.reportError(e);
        }
    }
    takeInflight(pred) {
        const i = this.inflight.findIndex(pred);
        return i < 0 ? undefined : this.inflight.splice(i, 1)[0];
    }
    startHeartbeat() {
        const interval = this.opts.heartbeatIntervalMs ?? 25_000;
        const timeout = this.opts.heartbeatTimeoutMs ?? 10_000;
        this.pingSentAt = 0;
        const id = this.socketId;
        this.heartbeatTimer = setInterval(() => {
            if (id !== this.socketId || !this.authed)
                return;
            const now = Date.now();
            if (this.pingSentAt > this.lastHeard && now - this.pingSentAt >= timeout) {
                this.dropSocket(4000, 'no answer to ping');
            }
            else if (this.pingSentAt <= this.lastHeard && now - this.lastHeard >= interval) {
                this.pingSentAt = now;
                this.enqueue({ kind: 'ping', frame: { type: 'ping' } }, true);
            }
        }, Math.max(50, Math.min(interval, timeout) / 2));
    }
    sendSubscribe(sub) {
        if (sub.retryTimer)
            clearTimeout(sub.retryTimer);
        sub.retryTimer = null;
        sub.status = 'pending';
        sub.sentSince = sub.cursor;
        sub.buffer.clear();
        const frame = sub.cursor === null
            ? { type: 'subscribe', ...sub.scope }
            : { type: 'subscribe', ...sub.scope, since: sub.cursor };
        this.enqueue({ kind: 'subscribe', key: sub.key, sub, frame });
    }
    endSubscription(sub, error) {
        sub.status = 'ended';
        if (this.subs.get(sub.key) === sub)
            this.subs.delete(sub.key);
        if (sub.retryTimer)
            clearTimeout(sub.retryTimer);
        sub.retryTimer = null;
        sub.buffer.clear();
        sub.presence?.clear();
        sub.rejectReady(error ?? new RealtimeError('unsubscribed', 'the subscription ended', sub.scope));
        if (error)
            this.safe(() => sub.handlers.onError?.(error));
    }
    isCurrent(sub) {
        return !!sub && sub.status !== 'ended' && this.subs.get(sub.key) === sub;
    }
    onMessage(data) {
        this.lastHeard = Date.now();
        const text = decode(data);
        let frame;
        try {
            if (text === null)
                throw new Error('binary frame');
            frame = JSON.parse(text);
        }
        catch (e) {
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
                return;
        }
    }
    onActivity(a) {
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
        if (this.markSeen(a.teamId, a.seq))
            this.safe(() => this.opts.onActivity?.(a));
        else
            this.counters.duplicates++;
        for (const sub of [...this.subs.values()]) {
            if (sub.status === 'ended' || !reaches(a, sub.scope, previousBoard))
                continue;
            if (sub.status === 'pending') {
                if (sub.sentSince !== null && a.seq > sub.sentSince)
                    sub.buffer.set(a.seq, a);
                continue;
            }
            if (sub.cursor === null || a.seq > sub.cursor)
                this.deliver(sub, a);
        }
    }
    markSeen(teamId, seq) {
        let set = this.seen.get(teamId);
        if (!set)
            this.seen.set(teamId, (set = new Set()));
        if (set.has(seq))
            return false;
        set.add(seq);
        if (set.size > SEEN_PER_TEAM)
            set.delete(set.values().next().value);
        return true;
    }
    deliver(sub, a) {
        sub.cursor = a.seq;
        const h = sub.handlers;
        if (h.onActivity)
            this.safe(() => h.onActivity(a));
        const typed = h.on?.[a.type];
        if (typed)
            this.safe(() => typed(a));
    }
    onSubscribed(frame) {
        const scope = scopeOfFrame(frame);
        if (!scope)
            return;
        const key = scopeKey(scope);
        const entry = this.takeInflight((o) => o.kind === 'subscribe' && o.key === key);
        const sub = entry?.kind === 'subscribe' ? entry.sub : undefined;
        if (!this.isCurrent(sub))
            return;
        const since = sub.sentSince;
        sub.status = 'active';
        let replayed = 0;
        if (since !== null) {
            const held = [...sub.buffer.values()].sort((x, y) => x.seq - y.seq);
            for (const a of held) {
                if (sub.status !== 'active')
                    break;
                if (sub.cursor === null || a.seq > sub.cursor) {
                    this.deliver(sub, a);
                    replayed++;
                }
            }
        }
        sub.buffer.clear();
        if (sub.status !== 'active')
            return;
        sub.cursor = sub.cursor === null ? frame.seq : Math.max(sub.cursor, frame.seq);
        if (sub.presence)
            sub.presence.applySnapshot(frame.presence ?? []);
        const info = { scope: sub.scope, seq: frame.seq, since, replayed, resumed: sub.joins > 0 };
        sub.joins++;
        sub.resolveReady(info);
        this.safe(() => sub.handlers.onSubscribed?.(info));
        const gap = sub.gap;
        if (gap) {
            sub.gap = null;
            const g = { scope: sub.scope, since: gap.since, seq: frame.seq, message: gap.message };
            this.safe(() => sub.handlers.onGap?.(g));
            this.safe(() => this.opts.onGap?.(g));
        }
    }
    onUnsubscribed(frame) {
        const scope = scopeOfFrame(frame);
        if (!scope)
            return;
        const key = scopeKey(scope);
        if (!frame.reason) {
            this.takeInflight((o) => o.kind === 'unsubscribe' && o.key === key);
            return;
        }
        const sub = this.subs.get(key);
        if (sub)
            this.endSubscription(sub, new RealtimeError(frame.reason, 'the server ended this subscription', scope));
    }
    onErrorFrame(frame) {
        const scope = scopeOfFrame(frame);
        const error = new RealtimeError(frame.code, frame.message, scope ?? undefined);
        if (!scope)
            return this.onConnectionError(error);
        const key = scopeKey(scope);
        const entry = this.takeInflight((o) => (o.kind === 'subscribe' || o.kind === 'unsubscribe') && o.key === key);
        if (entry?.kind !== 'subscribe') {
            if (entry)
                this.reportError(error);
            return;
        }
        const sub = entry.sub;
        if (!this.isCurrent(sub))
            return;
        switch (frame.code) {
            case 'resume_unavailable':
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
                const id = this.socketId;
                sub.status = 'pending';
                sub.retryTimer = setTimeout(() => {
                    sub.retryTimer = null;
                    if (id === this.socketId && this.authed && this.isCurrent(sub))
                        this.sendSubscribe(sub);
                }, 500 + this.random() * 1000);
            }
        }
    }
    onConnectionError(error) {
        switch (error.code) {
            case 'rate_limited': {
                const refused = this.takeInflight(() => true);
                this.counters.rateLimited++;
                const id = this.socketId;
                if (refused && refused.kind !== 'ping') {
                    setTimeout(() => {
                        if (id !== this.socketId || !this.authed)
                            return;
                        if (refused.kind === 'subscribe' && !this.isCurrent(refused.sub))
                            return;
                        this.enqueue(refused, refused.kind === 'auth');
                    }, 1000 + this.random() * 1000);
                }
                return;
            }
            case 'slow_consumer':
                return;
            case 'unauthorized':
            case 'token_expired':
                this.takeInflight((o) => o.kind === 'auth');
                return;
            default:
                this.takeInflight(() => true);
                this.reportError(error);
        }
    }
    safe(fn) {
        try {
            fn();
        }
        catch (e) {
            this.reportError(e);
        }
    }
}
