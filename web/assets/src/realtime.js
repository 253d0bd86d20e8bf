import { PRESENCE_TYPES } from './generated/protocol.js';
import { Session, isAuthFailure } from './http.js';
import { openInbox } from './inbox.js';
import { inboxEventOf } from './inbox-types.js';
import { openLiveComments, openLiveMembers, openLiveTasks, } from './live.js';
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
const ROOM_HISTORY = 200;
class Room {
    scope;
    key;
    presence;
    handles = new Set();
    status = 'pending';
    joined = false;
    cursor = null;
    sentSince = null;
    buffer = new Map();
    gap = null;
    coveredFrom = null;
    history = [];
    historyStart = 0;
    refusals = 0;
    retryTimer = null;
    constructor(scope, reportError) {
        this.scope = scope;
        this.key = scopeKey(scope);
        this.presence = 'taskId' in scope ? new PresenceState(scope.taskId, reportError) : undefined;
    }
    record(a) {
        this.cursor = a.seq;
        this.history.push(a);
    }
    trim() {
        const excess = this.history.length - ROOM_HISTORY;
        if (excess <= 0)
            return;
        this.historyStart = this.history[excess - 1].seq;
        this.history.splice(0, excess);
    }
}
let nextSubscriptionId = 1;
export class Subscription {
    scope;
    key;
    ready;
    id = nextSubscriptionId++;
    room;
    handlers;
    listeners = new Map();
    status = 'pending';
    cursor;
    joins = 0;
    resolveReady;
    rejectReady;
    client;
    constructor(client, room, handlers, since) {
        this.client = client;
        this.room = room;
        this.scope = room.scope;
        this.key = room.key;
        this.handlers = handlers;
        this.cursor = since;
        this.ready = new Promise((resolve, reject) => {
            this.resolveReady = resolve;
            this.rejectReady = reject;
        });
        this.ready.catch(() => { });
    }
    get state() {
        return this.status;
    }
    get presence() {
        return this.room.presence;
    }
    get lastSeq() {
        return this.cursor;
    }
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set)
            this.listeners.set(event, (set = new Set()));
        set.add(fn);
        return () => {
            this.listeners.get(event)?.delete(fn);
        };
    }
    unsubscribe() {
        this.client.unsubscribe(this);
    }
}
class InboxStream {
    handles = new Set();
    status = 'pending';
    cursor = null;
    unread = 0;
    buffer = new Map();
    onSocket = false;
    refusals = 0;
    retryTimer = null;
    gap = null;
}
export class InboxSubscription {
    ready;
    stream;
    handlers;
    listeners = new Map();
    status = 'pending';
    cursor;
    joinSince;
    joins = 0;
    resolveReady;
    rejectReady;
    client;
    constructor(client, stream, handlers, since) {
        this.client = client;
        this.stream = stream;
        this.handlers = handlers;
        this.cursor = since;
        this.joinSince = since;
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
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set)
            this.listeners.set(event, (set = new Set()));
        set.add(fn);
        return () => {
            this.listeners.get(event)?.delete(fn);
        };
    }
    unsubscribe() {
        this.client.unsubscribeInbox(this);
    }
}
const OPEN = 1;
const SEEN_PER_TEAM = 512;
const SEEN_TEAMS = 64;
class SeenWindow {
    teams = new Map();
    mark(teamId, seq) {
        let team = this.teams.get(teamId);
        if (team) {
            this.teams.delete(teamId);
        }
        else {
            team = { seqs: new Set() };
            if (this.teams.size >= SEEN_TEAMS)
                this.teams.delete(this.teams.keys().next().value);
        }
        this.teams.set(teamId, team);
        if (team.seqs.has(seq))
            return false;
        team.seqs.add(seq);
        if (team.seqs.size > SEEN_PER_TEAM) {
            const sorted = [...team.seqs].sort((x, y) => x - y);
            for (const s of sorted.slice(0, sorted.length - SEEN_PER_TEAM / 2))
                team.seqs.delete(s);
        }
        return true;
    }
    get size() {
        let n = 0;
        for (const t of this.teams.values())
            n += t.seqs.size;
        return n;
    }
}
const INBOX_EVENTS = new Set(['notification.created', 'notification.read']);
function isInboxFrame(frame) {
    const f = frame;
    if (!f || typeof f !== 'object' || typeof f.type !== 'string')
        return false;
    return INBOX_EVENTS.has(f.type) || f.inbox === true;
}
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
function withTimeout(p, ms, error) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(error()), timerDelay(ms));
    });
    return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
export class RealtimeClient {
    url;
    tokens;
    WS;
    opts;
    random;
    session;
    rooms = new Map();
    inboxStream = null;
    seen = new SeenWindow();
    moves = new MoveTracker();
    stateListeners = new Set();
    activityListeners = new Set();
    gapListeners = new Set();
    stateValue = 'idle';
    closedBy = null;
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
    resendTimers = new Set();
    counters = {
        connects: 0,
        activityFrames: 0,
        duplicates: 0,
        renewals: 0,
        gaps: 0,
        rateLimited: 0,
        inboxEvents: 0,
    };
    constructor(opts) {
        this.opts = opts;
        this.url = realtimeUrl(opts.url);
        const auth = opts.auth;
        this.tokens = typeof auth === 'string' ? { getAccessToken: async () => ({ token: auth }) } : auth;
        this.session = opts.session ?? (auth instanceof Session ? auth : undefined);
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
        return { ...this.counters, remembered: this.seen.size };
    }
    get subscriptions() {
        return [...this.rooms.values()].flatMap((r) => [...r.handles]);
    }
    get inboxSubscriptions() {
        return [...(this.inboxStream?.handles ?? [])];
    }
    onStateChange(fn) {
        this.stateListeners.add(fn);
        return () => this.stateListeners.delete(fn);
    }
    onActivity(fn) {
        this.activityListeners.add(fn);
        return () => this.activityListeners.delete(fn);
    }
    onGap(fn) {
        this.gapListeners.add(fn);
        return () => this.gapListeners.delete(fn);
    }
    get sendRate() {
        return this.opts.sendRate ?? { perSecond: 50, burst: 100 };
    }
    connect() {
        if (this.wantOpen)
            return;
        this.wantOpen = true;
        this.closedBy = null;
        this.attempt = 0;
        this.authRejects = 0;
        void this.open();
    }
    close() {
        this.shutDown(new RealtimeError('closed', 'the client was closed'));
    }
    shutDown(reason) {
        this.wantOpen = false;
        this.closedBy = reason;
        this.clearTimer('reconnectTimer');
        this.socketId++;
        const ws = this.ws;
        this.teardown();
        if (ws)
            this.detachAndClose(ws, 1000, 'client closed');
        for (const room of this.rooms.values())
            for (const h of room.handles)
                h.rejectReady(reason);
        for (const h of this.inboxStream?.handles ?? [])
            h.rejectReady(reason);
        this.setState({ state: 'closed', error: reason });
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
        if (opts.since !== undefined && !(Number.isInteger(opts.since) && opts.since >= 0)) {
            throw new TypeError('since is a seq: an integer, 0 or more');
        }
        let room = this.rooms.get(key);
        const fresh = !room;
        if (!room) {
            room = new Room(plain, (e) => this.reportError(e));
            this.rooms.set(key, room);
        }
        const sub = new Subscription(this, room, handlers, opts.since ?? null);
        room.handles.add(sub);
        if (this.closedBy)
            sub.rejectReady(this.closedBy);
        if (fresh) {
            if (this.authed)
                this.sendSubscribe(room);
        }
        else if (room.status === 'active') {
            if (sub.cursor === null)
                sub.cursor = room.cursor;
            queueMicrotask(() => {
                if (sub.status === 'pending' && room.status === 'active' && this.isCurrent(room)) {
                    this.catchUp(sub, room, sub.cursor);
                }
            });
        }
        return sub;
    }
    unsubscribe(sub) {
        if (sub.status === 'ended')
            return;
        sub.status = 'ended';
        sub.rejectReady(new RealtimeError('unsubscribed', 'the subscription ended', sub.scope));
        const room = sub.room;
        room.handles.delete(sub);
        if (room.handles.size === 0 && this.isCurrent(room))
            this.leave(room);
    }
    leave(room) {
        const queued = this.queue.findIndex((o) => o.kind === 'subscribe' && o.room === room);
        this.endRoom(room, null);
        if (queued >= 0) {
            this.queue.splice(queued, 1);
        }
        else if (this.authed) {
            this.enqueue({ kind: 'unsubscribe', key: room.key, room, frame: { type: 'unsubscribe', ...room.scope } });
        }
    }
    subscribeInbox(handlers = {}, opts = {}) {
        if (opts.since !== undefined && !(Number.isInteger(opts.since) && opts.since >= 0)) {
            throw new TypeError('since is a seq: an integer, 0 or more');
        }
        let stream = this.inboxStream;
        const fresh = !stream;
        if (!stream)
            stream = this.inboxStream = new InboxStream();
        const sub = new InboxSubscription(this, stream, handlers, opts.since ?? null);
        stream.handles.add(sub);
        if (this.closedBy)
            sub.rejectReady(this.closedBy);
        if (fresh) {
            if (this.authed)
                this.sendInboxSubscribe(stream);
            return sub;
        }
        const joined = stream;
        if (stream.status === 'active' && (sub.cursor === null || sub.cursor >= (stream.cursor ?? 0))) {
            if (sub.cursor === null)
                sub.cursor = stream.cursor;
            queueMicrotask(() => {
                if (sub.status === 'pending' && joined.status === 'active' && this.inboxStream === joined) {
                    this.inboxCatchUp(sub, [], joined.cursor ?? 0, joined.unread);
                }
            });
        }
        else if (this.authed && sub.cursor !== null && (stream.status === 'active' || this.inboxSubscribesOut(stream))) {
            this.sendInboxSubscribe(stream);
        }
        return sub;
    }
    unsubscribeInbox(sub) {
        if (sub.status === 'ended')
            return;
        sub.status = 'ended';
        sub.rejectReady(new RealtimeError('unsubscribed', 'the inbox subscription ended'));
        const stream = sub.stream;
        stream.handles.delete(sub);
        if (stream.handles.size > 0 || this.inboxStream !== stream)
            return;
        const wasOnSocket = stream.onSocket;
        this.queue = this.queue.filter((o) => !(o.kind === 'inbox' && o.stream === stream));
        this.endInbox(stream, null);
        if (this.authed && wasOnSocket) {
            this.enqueue({ kind: 'inbox-unsub', stream, frame: { type: 'unsubscribe', inbox: true } });
        }
    }
    inbox(opts) {
        return openInbox(this, this.http(), opts);
    }
    liveTasks(query, opts) {
        return openLiveTasks(this, this.http(), query, opts);
    }
    liveComments(query, opts) {
        return openLiveComments(this, this.http(), query, opts);
    }
    liveMembers(query, opts) {
        return openLiveMembers(this, this.http(), query, opts);
    }
    http() {
        if (!this.session) {
            throw new TypeError('live collections load over HTTP: pass a Session as `auth` or as `session`');
        }
        return this.session;
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
        if (this.opts.onStateChange)
            this.safe(this.opts.onStateChange, change);
        for (const fn of [...this.stateListeners])
            this.safe(fn, change);
    }
    async open() {
        const id = ++this.socketId;
        if (!this.everAuthed)
            this.setState({ state: 'connecting' });
        let token;
        try {
            token = await withTimeout(this.tokens.getAccessToken(this.forceRefresh ? { forceRefresh: true } : {}), this.opts.authTimeoutMs ?? 10_000, () => new RealtimeError('timeout', 'the token source did not answer in time'));
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
        if (authedAt > 0 && Date.now() - authedAt >= (this.opts.backoff?.resetAfterMs ?? 10_000))
            this.attempt = 0;
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
        for (const t of this.resendTimers)
            clearTimeout(t);
        this.resendTimers.clear();
        for (const room of this.rooms.values()) {
            room.status = 'pending';
            room.buffer.clear();
            if (room.retryTimer)
                clearTimeout(room.retryTimer);
            room.retryTimer = null;
            room.presence?.markStale();
            for (const h of room.handles)
                h.status = 'pending';
        }
        const stream = this.inboxStream;
        if (stream) {
            stream.status = 'pending';
            stream.buffer.clear();
            stream.onSocket = false;
            if (stream.retryTimer)
                clearTimeout(stream.retryTimer);
            stream.retryTimer = null;
            for (const h of stream.handles)
                h.status = 'pending';
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
        this.shutDown(new RealtimeError('unauthorized', `the credentials are gone: ${String(error)}`));
        const onAuthFailure = this.opts.onAuthFailure;
        if (onAuthFailure)
            this.safe(onAuthFailure, error);
        else
            this.reportError(error);
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
            this.authedAt = Date.now();
            this.counters.connects++;
            const reconnected = this.everAuthed;
            this.everAuthed = true;
            this.startHeartbeat();
            this.setState({ state: 'open', reconnected });
            for (const room of [...this.rooms.values()])
                this.sendSubscribe(room);
            if (this.inboxStream)
                this.sendInboxSubscribe(this.inboxStream);
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
            if (o.kind === 'inbox')
                o.stream.onSocket = true;
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
    sendSubscribe(room) {
        if (room.retryTimer)
            clearTimeout(room.retryTimer);
        room.retryTimer = null;
        room.status = 'pending';
        room.buffer.clear();
        if (room.gap)
            room.sentSince = null;
        else if (room.joined)
            room.sentSince = room.cursor;
        else {
            const wanted = [...room.handles].map((h) => h.cursor).filter((c) => c !== null);
            room.sentSince = wanted.length > 0 ? Math.min(...wanted) : null;
        }
        const frame = room.sentSince === null
            ? { type: 'subscribe', ...room.scope }
            : { type: 'subscribe', ...room.scope, since: room.sentSince };
        this.enqueue({ kind: 'subscribe', key: room.key, room, frame });
    }
    endRoom(room, error) {
        room.status = 'ended';
        if (this.rooms.get(room.key) === room)
            this.rooms.delete(room.key);
        if (room.retryTimer)
            clearTimeout(room.retryTimer);
        room.retryTimer = null;
        room.buffer.clear();
        room.history = [];
        room.presence?.clear();
        for (const h of [...room.handles]) {
            h.status = 'ended';
            h.rejectReady(error ?? new RealtimeError('unsubscribed', 'the subscription ended', h.scope));
            if (error)
                this.emit(h, 'error', error, h.handlers.onError);
        }
        room.handles.clear();
    }
    isCurrent(room) {
        return !!room && room.status !== 'ended' && this.rooms.get(room.key) === room;
    }
    catchUp(h, room, since) {
        let gap = null;
        let replayed = 0;
        const roomSeq = room.cursor ?? 0;
        if (h.cursor === null) {
            h.cursor = roomSeq;
        }
        else if (h.cursor < room.historyStart || room.gap) {
            gap = {
                scope: room.scope,
                since: h.cursor,
                seq: roomSeq,
                message: room.gap?.message ?? 'the activities after this seq are no longer available to this client',
            };
            h.cursor = roomSeq;
        }
        h.status = 'active';
        for (const a of room.history) {
            if (h.status !== 'active')
                return;
            if (a.seq > h.cursor) {
                this.deliver(h, a);
                replayed++;
            }
        }
        const info = { scope: room.scope, seq: roomSeq, since, replayed, resumed: h.joins > 0 };
        h.joins++;
        h.resolveReady(info);
        this.emit(h, 'subscribed', info, h.handlers.onSubscribed);
        if (gap && h.status === 'active') {
            this.emit(h, 'gap', gap, h.handlers.onGap);
            if (this.opts.onGap)
                this.safe(this.opts.onGap, gap);
            for (const fn of [...this.gapListeners])
                this.safe(fn, gap);
        }
    }
    sendInboxSubscribe(stream) {
        if (stream.retryTimer)
            clearTimeout(stream.retryTimer);
        stream.retryTimer = null;
        stream.status = 'pending';
        const wanted = [...stream.handles].map((h) => h.cursor).filter((c) => c !== null);
        const since = wanted.length > 0 && !stream.gap ? Math.min(...wanted) : null;
        for (const h of stream.handles)
            if (h.status === 'pending')
                h.joinSince = h.cursor;
        const frame = since === null ? { type: 'subscribe', inbox: true } : { type: 'subscribe', inbox: true, since };
        this.enqueue({ kind: 'inbox', stream, frame });
    }
    inboxSubscribesOut(stream) {
        const mine = (o) => o.kind === 'inbox' && o.stream === stream;
        return stream.retryTimer !== null || this.inflight.some(mine) || this.queue.some(mine);
    }
    endInbox(stream, error) {
        stream.status = 'ended';
        if (this.inboxStream === stream)
            this.inboxStream = null;
        if (stream.retryTimer)
            clearTimeout(stream.retryTimer);
        stream.retryTimer = null;
        stream.buffer.clear();
        for (const h of [...stream.handles]) {
            h.status = 'ended';
            h.rejectReady(error ?? new RealtimeError('unsubscribed', 'the inbox subscription ended'));
            if (error)
                this.emitInbox(h, 'error', error, h.handlers.onError);
        }
        stream.handles.clear();
    }
    inboxCatchUp(h, events, seq, unreadCount) {
        const wasPending = h.status === 'pending';
        if (h.cursor === null)
            h.cursor = seq;
        h.status = 'active';
        let replayed = 0;
        for (const ev of events) {
            if (h.status !== 'active')
                return;
            if (ev.seq > h.cursor) {
                this.deliverInbox(h, ev);
                replayed++;
            }
        }
        if (!wasPending)
            return;
        const info = { seq, unreadCount, since: h.joinSince, replayed, resumed: h.joins > 0 };
        h.joins++;
        h.joinSince = h.cursor;
        h.resolveReady(info);
        this.emitInbox(h, 'subscribed', info, h.handlers.onSubscribed);
    }
    onInboxSubscribed(frame) {
        const entry = this.takeInflight((o) => o.kind === 'inbox');
        const stream = entry?.kind === 'inbox' ? entry.stream : undefined;
        if (!stream || stream !== this.inboxStream || stream.status === 'ended')
            return;
        if (this.inboxSubscribesOut(stream))
            return;
        const seq = typeof frame.seq === 'number' ? frame.seq : (stream.cursor ?? 0);
        stream.status = 'active';
        stream.refusals = 0;
        const events = [...stream.buffer.values()].sort((x, y) => x.seq - y.seq);
        stream.buffer.clear();
        const gap = stream.gap;
        stream.gap = null;
        stream.cursor = gap ? seq : Math.max(stream.cursor ?? 0, seq, events.at(-1)?.seq ?? 0);
        if (typeof frame.unreadCount === 'number')
            stream.unread = frame.unreadCount;
        for (const h of [...stream.handles]) {
            if (h.status === 'ended' || this.inboxStream !== stream)
                continue;
            const behind = gap ? h.cursor : null;
            if (gap) {
                h.cursor = seq;
                if (h.status === 'active')
                    h.status = 'pending';
            }
            this.inboxCatchUp(h, gap ? [] : events, seq, stream.unread);
            if (gap && h.status === 'active') {
                const info = { since: behind ?? gap.since, seq, message: gap.message };
                this.emitInbox(h, 'gap', info, h.handlers.onGap);
            }
        }
    }
    onInboxEvent(frame) {
        this.counters.inboxEvents++;
        const ev = inboxEventOf(frame);
        if (!ev) {
            this.reportError(new RealtimeError('bad_frame', `malformed inbox frame from the server: ${JSON.stringify(frame).slice(0, 160)}`));
            return;
        }
        const stream = this.inboxStream;
        if (!stream || stream.status === 'ended')
            return;
        if (stream.status === 'pending') {
            stream.buffer.set(ev.seq, ev);
            return;
        }
        if (stream.cursor !== null && ev.seq <= stream.cursor)
            return;
        stream.cursor = ev.seq;
        stream.unread = ev.type === 'notification.read' ? ev.unreadCount : stream.unread + 1;
        for (const h of [...stream.handles]) {
            if (h.status === 'active' && h.cursor !== null && ev.seq > h.cursor)
                this.deliverInbox(h, ev);
        }
    }
    deliverInbox(h, ev) {
        h.cursor = ev.seq;
        this.emitInbox(h, 'event', ev, h.handlers.onEvent);
        this.emitInbox(h, ev.type, ev, undefined);
    }
    emitInbox(h, event, arg, handler) {
        if (h.status === 'ended' && event !== 'error')
            return;
        if (handler)
            this.safe(handler, arg);
        const listeners = h.listeners.get(event);
        if (!listeners)
            return;
        for (const fn of [...listeners]) {
            if (h.status === 'ended' && event !== 'error')
                return;
            if (listeners.has(fn))
                this.safe(fn, arg);
        }
    }
    onInboxRefused(stream, error) {
        if (stream !== this.inboxStream || stream.status === 'ended')
            return;
        if (error.code === 'resume_unavailable') {
            this.counters.gaps++;
            const wanted = [...stream.handles].map((h) => h.cursor).filter((c) => c !== null);
            stream.gap = { since: wanted.length > 0 ? Math.min(...wanted) : 0, message: error.message };
            this.sendInboxSubscribe(stream);
            return;
        }
        if (error.code !== 'unavailable') {
            this.endInbox(stream, error);
            return;
        }
        const id = this.socketId;
        stream.status = 'pending';
        const b = this.opts.backoff ?? {};
        const base = Math.min(b.maxMs ?? 30_000, (b.minMs ?? 250) * 2 ** (stream.refusals + 1));
        stream.refusals++;
        if (stream.retryTimer)
            clearTimeout(stream.retryTimer);
        stream.retryTimer = setTimeout(() => {
            stream.retryTimer = null;
            if (id === this.socketId && this.authed && this.inboxStream === stream)
                this.sendInboxSubscribe(stream);
        }, Math.round(base / 2 + (this.random() * base) / 2));
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
        if (isInboxFrame(frame))
            return this.onInboxFrame(frame);
        switch (frame.type) {
            case 'activity':
                return this.onActivityFrame(frame.activity);
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
    onInboxFrame(frame) {
        switch (frame.type) {
            case 'notification.created':
            case 'notification.read':
                return this.onInboxEvent(frame);
            case 'subscribed':
                return this.onInboxSubscribed(frame);
            case 'unsubscribed': {
                if (!frame.reason) {
                    this.takeInflight((o) => o.kind === 'inbox-unsub');
                    return;
                }
                const stream = this.inboxStream;
                if (stream)
                    this.endInbox(stream, new RealtimeError(String(frame.reason), 'the server ended the inbox subscription'));
                return;
            }
            case 'error': {
                const error = new RealtimeError(String(frame.code ?? 'error'), String(frame.message ?? ''));
                if (error.code === 'rate_limited' || error.code === 'slow_consumer')
                    return this.onConnectionError(error);
                const entry = this.takeInflight((o) => o.kind === 'inbox' || o.kind === 'inbox-unsub');
                if (entry?.kind === 'inbox')
                    this.onInboxRefused(entry.stream, error);
                else
                    this.reportError(error);
                return;
            }
        }
    }
    onActivityFrame(a) {
        if (isPresence(a)) {
            const room = this.rooms.get(`task:${a.data.taskId}`);
            if (room && room.status === 'active') {
                room.presence?.applyEvent(a);
                for (const h of [...room.handles]) {
                    if (h.status === 'active')
                        this.emit(h, 'presence', a, h.handlers.onPresence);
                }
            }
            return;
        }
        this.counters.activityFrames++;
        const previousBoard = this.moves.observe(a);
        if (this.seen.mark(a.teamId, a.seq) && !this.deliveredBefore(a, previousBoard)) {
            if (this.opts.onActivity)
                this.safe(this.opts.onActivity, a);
            for (const fn of [...this.activityListeners])
                this.safe(fn, a);
        }
        else {
            this.counters.duplicates++;
        }
        for (const room of [...this.rooms.values()]) {
            if (room.status === 'ended' || !reaches(a, room.scope, previousBoard))
                continue;
            if (room.status === 'pending') {
                if (room.sentSince !== null && a.seq > room.sentSince)
                    room.buffer.set(a.seq, a);
                continue;
            }
            if (room.cursor !== null && a.seq <= room.cursor)
                continue;
            room.record(a);
            for (const h of [...room.handles]) {
                if (h.status === 'active' && h.cursor !== null && a.seq > h.cursor)
                    this.deliver(h, a);
            }
            room.trim();
        }
    }
    deliveredBefore(a, previousBoard) {
        for (const room of this.rooms.values()) {
            if (room.status !== 'active' || room.coveredFrom === null || room.cursor === null)
                continue;
            if (a.seq > room.coveredFrom && a.seq <= room.cursor && reaches(a, room.scope, previousBoard))
                return true;
        }
        return false;
    }
    deliver(h, a) {
        h.cursor = a.seq;
        this.emit(h, 'activity', a, h.handlers.onActivity);
        const typed = h.handlers.on?.[a.type];
        this.emit(h, a.type, a, typed);
    }
    emit(h, event, arg, handler) {
        if (h.status === 'ended' && event !== 'error')
            return;
        if (handler)
            this.safe(handler, arg);
        const listeners = h.listeners.get(event);
        if (!listeners)
            return;
        for (const fn of [...listeners]) {
            if (h.status === 'ended' && event !== 'error')
                return;
            if (listeners.has(fn))
                this.safe(fn, arg);
        }
    }
    onSubscribed(frame) {
        if ('inbox' in frame)
            return;
        const scope = scopeOfFrame(frame);
        if (!scope)
            return;
        const key = scopeKey(scope);
        const entry = this.takeInflight((o) => o.kind === 'subscribe' && o.key === key);
        const room = entry?.kind === 'subscribe' ? entry.room : undefined;
        if (!this.isCurrent(room))
            return;
        const since = room.sentSince;
        room.status = 'active';
        room.refusals = 0;
        if (since === null) {
            room.history = [];
            room.historyStart = frame.seq;
            room.cursor = frame.seq;
            room.coveredFrom = frame.seq;
        }
        else {
            if (!room.joined) {
                room.history = [];
                room.historyStart = since;
                room.cursor = since;
                room.coveredFrom = since;
            }
            for (const a of [...room.buffer.values()].sort((x, y) => x.seq - y.seq)) {
                if (room.cursor === null || a.seq > room.cursor)
                    room.record(a);
            }
            room.cursor = Math.max(room.cursor ?? frame.seq, frame.seq);
        }
        room.buffer.clear();
        room.joined = true;
        if (room.presence)
            room.presence.applySnapshot(frame.presence ?? []);
        for (const h of [...room.handles]) {
            if (h.status === 'ended' || !this.isCurrent(room))
                continue;
            this.catchUp(h, room, since);
        }
        room.gap = null;
        if (this.isCurrent(room))
            room.trim();
    }
    onUnsubscribed(frame) {
        if ('inbox' in frame)
            return;
        const scope = scopeOfFrame(frame);
        if (!scope)
            return;
        const key = scopeKey(scope);
        if (!frame.reason) {
            this.takeInflight((o) => o.kind === 'unsubscribe' && o.key === key);
            return;
        }
        const room = this.rooms.get(key);
        if (room)
            this.endRoom(room, new RealtimeError(frame.reason, 'the server ended this subscription', scope));
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
        const room = entry.room;
        if (!this.isCurrent(room))
            return;
        switch (frame.code) {
            case 'resume_unavailable':
                this.counters.gaps++;
                room.gap = { since: room.sentSince ?? 0, message: frame.message };
                this.sendSubscribe(room);
                return;
            case 'forbidden':
            case 'too_many_subscriptions':
            case 'bad_request':
                this.endRoom(room, error);
                return;
            default: {
                const id = this.socketId;
                room.status = 'pending';
                const b = this.opts.backoff ?? {};
                const base = Math.min(b.maxMs ?? 30_000, (b.minMs ?? 250) * 2 ** (room.refusals + 1));
                room.refusals++;
                room.retryTimer = setTimeout(() => {
                    room.retryTimer = null;
                    if (id === this.socketId && this.authed && this.isCurrent(room))
                        this.sendSubscribe(room);
                }, Math.round(base / 2 + (this.random() * base) / 2));
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
                    const timer = setTimeout(() => {
                        this.resendTimers.delete(timer);
                        if (id !== this.socketId || !this.authed)
                            return;
                        if (refused.kind === 'subscribe' && !this.isCurrent(refused.room))
                            return;
                        if (refused.kind === 'unsubscribe' && this.rooms.has(refused.key))
                            return;
                        if (refused.kind === 'inbox' && this.inboxStream !== refused.stream)
                            return;
                        if (refused.kind === 'inbox-unsub' && this.inboxStream !== null)
                            return;
                        this.enqueue(refused, refused.kind === 'auth');
                    }, 1000 + this.random() * 1000);
                    this.resendTimers.add(timer);
                }
                return;
            }
            case 'slow_consumer':
                return;
            case 'unauthorized':
            case 'token_expired':
                this.takeInflight((o) => o.kind === 'auth');
                return;
            default: {
                const refused = this.takeInflight(() => true);
                if (refused?.kind === 'subscribe' && this.isCurrent(refused.room))
                    this.endRoom(refused.room, error);
                else if (refused?.kind === 'inbox')
                    this.onInboxRefused(refused.stream, error);
                else
                    this.reportError(error);
            }
        }
    }
    safe(fn, arg) {
        try {
            const result = fn(arg);
            if (result && typeof result.then === 'function') {
                result.then(undefined, (e) => this.reportError(e));
            }
        }
        catch (e) {
            this.reportError(e);
        }
    }
}
