import { PRESENCE_TYPES } from './generated/protocol.js';
import { Session, isAuthFailure } from './http.js';
import { openInbox } from './inbox.js';
import { inboxEventOf } from './inbox-types.js';
import { openLiveComments, openLiveLabels, openLiveMembers, openLiveTasks, } from './live.js';
import { PresenceState } from './presence.js';
import { MoveTracker, normalizeScope, reaches, scopeKey, scopeOfFrame } from './scope.js';
import { FetchEventSource, formatEventId, parseEventId, sseUrl, tokenExpiry, } from './sse.js';
import { API_PREFIX } from './http.js';
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
    teamId;
    sseCovered = false;
    blindSince = null;
    lookingUp = false;
    lookedUp = false;
    constructor(scope, reportError, teamId) {
        this.scope = scope;
        this.key = scopeKey(scope);
        this.presence = 'taskId' in scope ? new PresenceState(scope.taskId, reportError) : undefined;
        this.teamId = 'teamId' in scope ? scope.teamId : teamId;
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
    sseCovered = false;
    wantSince = null;
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
const STREAM_ENDERS = new Set(['slow_consumer', 'token_expired', 'unauthorized', 'rate_limited']);
const VIEWER_STATES = new Set(['viewing', 'editing', 'typing']);
const PRESENCE_FIELDS = new Set(['title', 'description', 'comment']);
function isInboxFrame(frame) {
    const f = frame;
    if (!f || typeof f !== 'object' || typeof f.type !== 'string')
        return false;
    return INBOX_EVENTS.has(f.type) || f.inbox === true;
}
function isPresence(a) {
    return PRESENCE_TYPES.includes(a.type) || String(a.type).startsWith('presence.');
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
    transportOption;
    mode;
    wsFailedOpens = 0;
    wsShortCloses = 0;
    wsHttpUp = false;
    wsFailedWhileUp = false;
    wsOpened = false;
    openTimer = null;
    probeTimer = null;
    probeDelayMs = 0;
    probeSocket = null;
    sseBase;
    ES;
    fetchImpl;
    sseToken = null;
    sse = null;
    sseOld = null;
    sseCount = 0;
    reopenTimer = null;
    retireTimer = null;
    ssePos = new Map();
    sseRenewal = null;
    presenceHeld = new Map();
    presenceTimer = null;
    counters = {
        connects: 0,
        activityFrames: 0,
        duplicates: 0,
        renewals: 0,
        gaps: 0,
        rateLimited: 0,
        inboxEvents: 0,
        streams: 0,
        transportSwitches: 0,
    };
    constructor(opts) {
        this.opts = opts;
        this.url = realtimeUrl(opts.url);
        const auth = opts.auth;
        this.tokens = typeof auth === 'string' ? { getAccessToken: async () => ({ token: auth }) } : auth;
        this.session = opts.session ?? (auth instanceof Session ? auth : undefined);
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        const transport = opts.transport ?? 'auto';
        if (transport !== 'auto' && transport !== 'websocket' && transport !== 'sse') {
            throw new TypeError(`transport is 'auto', 'websocket' or 'sse', not ${JSON.stringify(transport)}`);
        }
        this.transportOption = transport;
        if (!WS && transport === 'websocket') {
            throw new Error('no WebSocket implementation: pass { WebSocket } (e.g. the "ws" package in Node 20)');
        }
        this.WS = WS ?? null;
        this.sseBase = sseUrl(opts.url);
        this.ES = opts.EventSource ?? null;
        const f = opts.fetch ?? (typeof globalThis.fetch === 'function' ? globalThis.fetch.bind(globalThis) : null);
        this.fetchImpl = f;
        this.mode = transport === 'sse' || !WS ? 'sse' : 'websocket';
        if (this.mode === 'sse' && !this.ES && !f) {
            throw new Error('no WebSocket and no fetch: pass { WebSocket } or { fetch } (or { EventSource })');
        }
        this.random = opts.random ?? Math.random;
        this.bucket.tokens = this.sendRate.burst;
        this.bucket.at = Date.now();
    }
    get state() {
        return this.stateValue;
    }
    get transport() {
        return this.mode;
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
        this.ensurePresenceTimer();
        void this.open();
    }
    close() {
        this.shutDown(new RealtimeError('closed', 'the client was closed'));
    }
    shutDown(reason) {
        this.wantOpen = false;
        this.closedBy = reason;
        this.clearTimer('reconnectTimer');
        this.stopProbe();
        this.ensurePresenceTimer();
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
        if (this.ws || this.sseToken) {
            this.dropSocket(4000, 'reconnect requested', false);
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
        const teamHint = typeof opts.teamId === 'string' && opts.teamId !== '' ? opts.teamId.toLowerCase() : null;
        let room = this.rooms.get(key);
        const fresh = !room;
        if (!room) {
            room = new Room(plain, (e) => this.reportError(e), teamHint);
            this.rooms.set(key, room);
        }
        else if (room.teamId === null && teamHint) {
            room.teamId = teamHint;
        }
        const sub = new Subscription(this, room, handlers, opts.since ?? null);
        room.handles.add(sub);
        if (this.closedBy)
            sub.rejectReady(this.closedBy);
        if (fresh) {
            if (this.canSubscribe())
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
        if ('taskId' in room.scope)
            this.presenceHeld.delete(room.scope.taskId);
        if (this.mode === 'sse') {
            this.endRoom(room, null);
            this.requestReopen();
            return;
        }
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
            if (this.canSubscribe())
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
        else if (this.canSubscribe() && sub.cursor !== null && (stream.status === 'active' || this.inboxSubscribesOut(stream))) {
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
        if (this.mode === 'sse') {
            this.requestReopen();
            return;
        }
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
    liveLabels(query, opts) {
        return openLiveLabels(this, this.http(), query, opts);
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
        if (this.mode === 'websocket' && this.transportOption === 'auto' && this.wsFailedOpens >= 2) {
            const reachable = await this.serverAnswers();
            if (id !== this.socketId || !this.wantOpen)
                return;
            if (reachable && this.wsFailedWhileUp)
                this.switchTransport('sse');
            else
                this.wsHttpUp = reachable;
        }
        if (this.mode === 'sse' || !this.WS)
            return this.openSse(token);
        let ws;
        try {
            ws = new this.WS(this.url);
        }
        catch (e) {
            this.reportError(e);
            if (this.transportOption === 'auto')
                this.wsFailedOpens++;
            return this.scheduleReconnect({});
        }
        this.ws = ws;
        this.wsOpened = false;
        this.openTimer = setTimeout(() => {
            this.openTimer = null;
            if (id === this.socketId && !this.wsOpened)
                this.dropSocket(4000, 'the socket did not open in time');
        }, this.opts.openTimeoutMs ?? 5000);
        ws.onopen = () => {
            if (id !== this.socketId)
                return;
            this.wsOpened = true;
            this.wsFailedOpens = 0;
            this.wsHttpUp = this.wsFailedWhileUp = false;
            this.clearTimer('openTimer');
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
    onSocketClosed(id, code, reason, countFailure = true) {
        if (id !== this.socketId)
            return;
        const authedAt = this.authedAt;
        const wasWs = this.ws !== null;
        const opened = this.wsOpened;
        this.teardown();
        if (wasWs && countFailure && this.wantOpen)
            this.noteSocketFailure(opened, authedAt, code);
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
        this.wsOpened = false;
        this.authed = false;
        this.authedAt = 0;
        this.queue = [];
        this.inflight = [];
        this.currentToken = null;
        this.closeSse();
        for (const t of ['authTimer', 'renewTimer', 'pumpTimer', 'openTimer'])
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
    dropSocket(code, reason, countFailure = true) {
        const ws = this.ws;
        if (ws)
            this.detachAndClose(ws, code, reason, true);
        this.onSocketClosed(this.socketId, code, reason, countFailure);
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
    noteSocketFailure(opened, authedAt, code) {
        if (this.transportOption !== 'auto' || this.mode !== 'websocket')
            return;
        const stableMs = this.opts.backoff?.resetAfterMs ?? 10_000;
        if (authedAt > 0 && Date.now() - authedAt >= stableMs) {
            this.wsFailedOpens = 0;
            this.wsShortCloses = 0;
            this.probeDelayMs = 0;
            return;
        }
        if (!opened) {
            this.wsFailedOpens++;
            if (this.wsHttpUp)
                this.wsFailedWhileUp = true;
            return;
        }
        const abnormal = code === 4000 || (code < 4000 && code !== 1000 && code !== 1001);
        if (abnormal && ++this.wsShortCloses >= 3)
            this.switchTransport('sse');
    }
    async serverAnswers() {
        const f = this.fetchImpl;
        if (!f)
            return true;
        const url = `${this.sseBase.replace(/\/realtime\/sse$/, '')}/healthz`;
        const ctrl = new AbortController();
        try {
            const res = await withTimeout(f(url, { signal: ctrl.signal, cache: 'no-store' }), this.opts.openTimeoutMs ?? 5000, () => new RealtimeError('timeout', 'no answer'));
            void res.body?.cancel().catch(() => { });
            return true;
        }
        catch {
            ctrl.abort();
            return false;
        }
    }
    switchTransport(to) {
        if (this.mode === to)
            return;
        this.mode = to;
        this.counters.transportSwitches++;
        this.wsFailedOpens = 0;
        this.wsShortCloses = 0;
        this.wsHttpUp = this.wsFailedWhileUp = false;
        this.ssePos = new Map();
        for (const room of this.rooms.values())
            room.sseCovered = false;
        if (this.inboxStream)
            this.inboxStream.sseCovered = false;
        if (to === 'sse')
            this.scheduleProbe();
        else
            this.stopProbe();
    }
    scheduleProbe() {
        const first = this.opts.probeWebSocketMs ?? 120_000;
        if (!(first > 0) || this.transportOption !== 'auto' || !this.WS || !this.wantOpen)
            return;
        this.probeDelayMs = this.probeDelayMs > 0 ? Math.min(30 * 60_000, this.probeDelayMs * 2) : first;
        this.clearTimer('probeTimer');
        this.probeTimer = setTimeout(() => this.probe(), timerDelay(this.probeDelayMs));
    }
    stopProbe() {
        this.clearTimer('probeTimer');
        const ws = this.probeSocket;
        this.probeSocket = null;
        if (ws)
            this.detachAndClose(ws, 1000, 'probe over');
    }
    probe() {
        this.probeTimer = null;
        if (!this.wantOpen || this.mode !== 'sse' || !this.WS)
            return;
        let ws;
        try {
            ws = new this.WS(this.url);
        }
        catch {
            return this.scheduleProbe();
        }
        this.probeSocket = ws;
        const done = (ok) => {
            if (this.probeSocket !== ws)
                return;
            clearTimeout(timer);
            this.probeSocket = null;
            this.detachAndClose(ws, 1000, 'probe over');
            if (!ok)
                return this.scheduleProbe();
            if (!this.wantOpen || this.mode !== 'sse')
                return;
            this.switchTransport('websocket');
            this.reconnect();
        };
        const timer = setTimeout(() => done(false), this.opts.openTimeoutMs ?? 5000);
        ws.onopen = () => done(true);
        ws.onclose = () => done(false);
        ws.onerror = () => { };
    }
    canSubscribe() {
        return this.mode === 'sse' ? this.sseToken !== null : this.authed;
    }
    hasSseScopes() {
        for (const room of this.rooms.values())
            if (room.status !== 'ended')
                return true;
        return this.inboxStream !== null && this.inboxStream.status !== 'ended';
    }
    openSse(token) {
        this.sseToken = token;
        this.currentToken = token.token;
        if (!this.hasSseScopes()) {
            this.onSseAuthed();
            return;
        }
        for (const room of [...this.rooms.values()])
            this.sendSubscribe(room);
        if (this.inboxStream)
            this.sendInboxSubscribe(this.inboxStream);
    }
    onSseAuthed() {
        if (this.authed)
            return;
        const token = this.sseToken;
        this.authed = true;
        this.authedAt = Date.now();
        this.counters.connects++;
        const reconnected = this.everAuthed;
        this.everAuthed = true;
        this.startHeartbeat();
        this.setState({ state: 'open', reconnected, transport: 'sse' });
        if (token) {
            const exp = tokenExpiry(token.token);
            this.scheduleRenewal(token, exp === null ? '' : new Date(exp).toISOString());
        }
    }
    requestReopen() {
        if (this.mode !== 'sse' || !this.sseToken || this.reopenTimer)
            return;
        const id = this.socketId;
        this.reopenTimer = setTimeout(() => {
            this.reopenTimer = null;
            if (id === this.socketId && this.sseToken && this.mode === 'sse')
                this.openStream();
        }, 5);
    }
    openStream() {
        const rooms = [...this.rooms.values()].filter((r) => r.status !== 'ended');
        const inbox = this.inboxStream && this.inboxStream.status !== 'ended' ? this.inboxStream : null;
        if (rooms.length === 0 && !inbox) {
            this.closeConn(this.sse);
            this.closeConn(this.sseOld);
            this.sse = this.sseOld = null;
            this.onSseAuthed();
            return;
        }
        const unknown = rooms.filter((r) => r.status === 'pending' && !r.sseCovered && !r.teamId && r.sentSince !== null && 'taskId' in r.scope && !r.lookedUp && !r.lookingUp);
        if (unknown.length > 0 || rooms.some((r) => r.lookingUp)) {
            for (const r of unknown)
                this.lookUpTeam(r);
            return;
        }
        const base = this.ssePos;
        const pos = new Map();
        for (const [k, v] of base)
            if (k !== 'inbox')
                pos.set(k, v);
        const lower = (k, v) => pos.set(k, Math.min(pos.get(k) ?? v, v));
        for (const room of rooms) {
            room.blindSince = null;
            if (room.status !== 'pending')
                continue;
            if (room.sseCovered) {
                if (room.teamId && !base.has(room.teamId) && room.cursor !== null)
                    lower(room.teamId, room.cursor);
                continue;
            }
            const since = room.sentSince;
            if (since === null)
                continue;
            if (room.teamId)
                lower(room.teamId, since);
            else
                room.blindSince = since;
        }
        if (inbox) {
            if (inbox.status === 'pending') {
                const covered = inbox.sseCovered ? base.get('inbox') : undefined;
                const want = inbox.gap ? undefined : (inbox.wantSince ?? undefined);
                const at = [covered, want].filter((x) => x !== undefined);
                if (at.length > 0 && !inbox.gap)
                    pos.set('inbox', Math.min(...at));
            }
            else if (base.has('inbox')) {
                pos.set('inbox', base.get('inbox'));
            }
        }
        const u = new URL(this.sseBase);
        for (const room of rooms) {
            const [k, v] = Object.entries(room.scope)[0];
            u.searchParams.append(k, v);
        }
        if (inbox)
            u.searchParams.set('inbox', 'true');
        if (pos.size > 0)
            u.searchParams.set('lastEventId', formatEventId(pos));
        const own = !this.ES;
        const token = this.currentToken ?? this.sseToken?.token ?? '';
        if (!own)
            u.searchParams.set('token', token);
        const url = u.toString();
        let es;
        try {
            es = own
                ? new FetchEventSource(url, {
                    headers: { authorization: `Bearer ${token}` },
                    ...(this.fetchImpl ? { fetch: this.fetchImpl } : {}),
                })
                : new this.ES(url);
        }
        catch (e) {
            this.reportError(e);
            return this.dropSocket(1006, 'could not open the event stream', false);
        }
        this.counters.streams++;
        const conn = {
            n: ++this.sseCount,
            es,
            url,
            own,
            streamId: null,
            pos,
            waiting: new Set([...rooms, ...(inbox ? [inbox] : [])]),
            joined: new Set(),
            endCode: null,
            timer: null,
        };
        const prev = this.sse;
        if (prev && prev.streamId !== null) {
            this.closeConn(this.sseOld);
            this.sseOld = prev;
            this.clearTimer('retireTimer');
            this.retireTimer = setTimeout(() => this.retireOld(), 10_000);
        }
        else {
            this.closeConn(prev);
        }
        this.sse = conn;
        this.ssePos = pos;
        es.onmessage = (ev) => this.onSseMessage(conn, ev);
        es.onerror = (ev) => this.onSseError(conn, ev);
        if (es instanceof FetchEventSource) {
            es.oncomment = () => {
                if (this.sse === conn)
                    this.lastHeard = Date.now();
            };
        }
        conn.timer = setTimeout(() => {
            conn.timer = null;
            if (this.sse === conn && conn.streamId === null)
                this.dropSocket(4000, 'the event stream did not start in time');
        }, this.opts.authTimeoutMs ?? 10_000);
    }
    lookUpTeam(room) {
        if (!('taskId' in room.scope))
            return;
        const taskId = room.scope.taskId;
        room.lookingUp = true;
        const id = this.socketId;
        const finish = (teamId) => {
            room.lookingUp = false;
            room.lookedUp = true;
            if (teamId && !room.teamId)
                room.teamId = teamId.toLowerCase();
            if (id === this.socketId)
                this.requestReopen();
        };
        const read = async () => {
            if (this.session)
                return (await this.session.getTask(taskId)).data.teamId;
            const f = this.fetchImpl;
            if (!f)
                return null;
            const base = this.sseBase.replace(/\/realtime\/sse$/, '');
            const res = await withTimeout(f(`${base}${API_PREFIX}/tasks/${taskId}`, {
                headers: { authorization: `Bearer ${this.currentToken ?? ''}`, accept: 'application/json' },
            }), this.opts.authTimeoutMs ?? 10_000, () => new RealtimeError('timeout', 'no answer'));
            if (!res.ok)
                return null;
            const body = (await res.json());
            return typeof body.teamId === 'string' ? body.teamId : null;
        };
        read().then(finish, () => finish(null));
    }
    onSseMessage(conn, ev) {
        if (conn !== this.sse)
            return;
        this.lastHeard = Date.now();
        if (ev.lastEventId) {
            conn.pos = parseEventId(ev.lastEventId);
            this.ssePos = conn.pos;
        }
        let frame;
        try {
            frame = JSON.parse(ev.data);
        }
        catch (e) {
            this.reportError(new RealtimeError('bad_frame', `unreadable event from the server: ${String(e)}`));
            return;
        }
        if (frame.type === 'stream') {
            conn.streamId = typeof frame.streamId === 'string' ? frame.streamId : '';
            if (conn.timer)
                clearTimeout(conn.timer);
            conn.timer = null;
            this.onSseAuthed();
            this.maybeRetire();
            return;
        }
        this.onFrame(frame);
    }
    onSseError(conn, ev) {
        if (conn === this.sseOld) {
            this.closeConn(conn);
            this.sseOld = null;
            return;
        }
        if (conn !== this.sse)
            return;
        if (conn.own || conn.streamId !== null)
            return this.onStreamFailed(conn, ev.status, ev.code);
        conn.es.onerror = null;
        conn.es.close();
        void this.statusOf(conn.url).then((status) => {
            if (this.sse === conn)
                this.onStreamFailed(conn, status === 200 ? undefined : status, undefined);
        });
    }
    async statusOf(url) {
        const f = this.fetchImpl;
        if (!f)
            return undefined;
        const ctrl = new AbortController();
        try {
            const res = await withTimeout(f(url, { signal: ctrl.signal, headers: { accept: 'text/event-stream' } }), 5000, () => new Error('timeout'));
            ctrl.abort();
            return res.status;
        }
        catch {
            ctrl.abort();
            return undefined;
        }
    }
    onStreamFailed(conn, status, code) {
        if (status === undefined) {
            const c = conn.endCode;
            const closeCode = c === 'token_expired' || c === 'unauthorized' ? 4001 : c === 'slow_consumer' ? 4008 : c === 'rate_limited' ? 4029 : 1006;
            return this.dropSocket(closeCode, c ?? 'the event stream ended', false);
        }
        if (status === 401)
            return this.dropSocket(4001, 'the event stream refused the token', false);
        if (status === 404 && this.transportOption === 'auto' && this.WS) {
            this.switchTransport('websocket');
            return this.dropSocket(1006, 'the server has no event stream', false);
        }
        if (status === 403 || status === 400) {
            const fresh = [...conn.waiting].filter((x) => x instanceof Room && !x.sseCovered && x.status === 'pending');
            const ending = status === 403 ? [...conn.waiting].filter((x) => x instanceof Room) : fresh;
            if (ending.length === 0) {
                this.reportError(new RealtimeError(code ?? 'bad_request', `the event stream was refused (${status})`));
                return this.dropSocket(1006, `the event stream was refused (${status})`, false);
            }
            this.closeConn(conn);
            this.sse = null;
            const errorCode = status === 403 ? 'forbidden' : (code ?? 'bad_request');
            for (const room of ending) {
                if (room.status !== 'ended')
                    this.endRoom(room, new RealtimeError(errorCode, `the server refused the stream (${status})`, room.scope));
            }
            this.onSseAuthed();
            this.requestReopen();
            return;
        }
        if (status === 429)
            return this.dropSocket(4029, 'rate limited', false);
        return this.dropSocket(1006, `the event stream was refused (${status})`, false);
    }
    closeConn(conn) {
        if (!conn)
            return;
        if (conn.timer)
            clearTimeout(conn.timer);
        conn.timer = null;
        conn.es.onmessage = null;
        conn.es.onerror = null;
        try {
            conn.es.close();
        }
        catch {
        }
    }
    closeSse() {
        this.closeConn(this.sse);
        this.closeConn(this.sseOld);
        this.sse = this.sseOld = null;
        this.sseToken = null;
        this.sseRenewal = null;
        for (const t of ['reopenTimer', 'retireTimer'])
            this.clearTimer(t);
    }
    maybeRetire() {
        const conn = this.sse;
        if (!this.sseOld || !conn || conn.streamId === null || conn.waiting.size > 0)
            return;
        this.clearTimer('retireTimer');
        if (this.presenceHeld.size === 0)
            return this.retireOld();
        this.retireTimer = setTimeout(() => this.retireOld(), 400);
    }
    retireOld() {
        this.retireTimer = null;
        this.closeConn(this.sseOld);
        this.sseOld = null;
    }
    onSseSubscribed(key, frame) {
        const room = this.rooms.get(key);
        if (!room || room.status === 'ended')
            return;
        const conn = this.sse;
        conn?.waiting.delete(room);
        if (conn && 'taskId' in room.scope)
            conn.joined.add(room);
        if (room.status === 'pending') {
            if (room.blindSince !== null) {
                this.counters.gaps++;
                room.gap = { since: room.blindSince, message: 'the stream could not resume this scope from its since (its team is unknown)' };
                room.sentSince = null;
                room.blindSince = null;
            }
            this.joinRoom(room, frame);
        }
        else {
            if (room.presence)
                room.presence.applySnapshot(frame.presence ?? []);
            room.cursor = Math.max(room.cursor ?? frame.seq, frame.seq);
        }
        room.sseCovered = true;
        this.resendPresence(room);
        this.maybeRetire();
    }
    onSseScopeError(key, error) {
        const room = this.rooms.get(key);
        if (!room || room.status === 'ended')
            return;
        const conn = this.sse;
        switch (error.code) {
            case 'resume_unavailable':
                this.counters.gaps++;
                room.gap = { since: room.status === 'pending' ? (room.sentSince ?? room.cursor ?? 0) : (room.cursor ?? 0), message: error.message };
                room.status = 'pending';
                room.sentSince = null;
                room.buffer.clear();
                room.sseCovered = false;
                for (const h of room.handles)
                    if (h.status === 'active')
                        h.status = 'pending';
                return;
            case 'bad_request':
            case 'forbidden':
            case 'too_many_subscriptions':
                if (error.code === 'bad_request' && room.status === 'active') {
                    this.reportError(error);
                    return;
                }
                conn?.waiting.delete(room);
                this.endRoom(room, error);
                this.maybeRetire();
                return;
            default: {
                conn?.waiting.delete(room);
                room.status = 'pending';
                room.buffer.clear();
                room.sseCovered = false;
                this.retryRefused(room, () => this.isCurrent(room) && this.sendSubscribe(room));
                this.maybeRetire();
            }
        }
    }
    onSseInboxError(error) {
        const stream = this.inboxStream;
        if (!stream || stream.status === 'ended')
            return;
        const conn = this.sse;
        if (error.code === 'resume_unavailable') {
            this.counters.gaps++;
            const wanted = [...stream.handles].map((h) => h.cursor).filter((c) => c !== null);
            stream.gap = { since: wanted.length > 0 ? Math.min(...wanted) : 0, message: error.message };
            stream.status = 'pending';
            stream.buffer.clear();
            stream.sseCovered = false;
            return;
        }
        conn?.waiting.delete(stream);
        if (error.code !== 'unavailable') {
            this.endInbox(stream, error);
        }
        else {
            stream.status = 'pending';
            stream.sseCovered = false;
            this.retryRefused(stream, () => this.inboxStream === stream && this.sendInboxSubscribe(stream));
        }
        this.maybeRetire();
    }
    onSseAuthenticated(expiresAt) {
        const token = this.sseRenewal;
        this.sseRenewal = null;
        if (token) {
            this.sseToken = token;
            this.currentToken = token.token;
        }
        this.counters.renewals++;
        this.authRejects = 0;
        this.scheduleRenewal(token ?? this.sseToken ?? undefined, expiresAt);
    }
    postSse(o) {
        if (o.kind !== 'auth' && o.kind !== 'ping' && o.kind !== 'presence')
            return;
        const conn = this.sse;
        const id = this.socketId;
        if (o.kind === 'auth') {
            if (!conn || conn.streamId === null || !this.fetchImpl) {
                this.sseToken = o.token;
                this.currentToken = o.token.token;
                this.counters.renewals++;
                const exp = tokenExpiry(o.token.token);
                this.scheduleRenewal(o.token, exp === null ? '' : new Date(exp).toISOString());
                if (conn)
                    this.requestReopen();
                return;
            }
            this.sseRenewal = o.token;
        }
        if (!conn || conn.streamId === null)
            return;
        const token = o.kind === 'auth' ? o.token.token : (this.currentToken ?? '');
        void this.post(conn, o.frame, token).then((status) => {
            if (status === 202 || id !== this.socketId)
                return;
            if (o.kind === 'auth') {
                this.sseRenewal = null;
                this.clearTimer('renewTimer');
                this.renewTimer = setTimeout(() => void this.renew(id), 1000 + this.random() * 1000);
            }
            else if (o.kind === 'presence' && status === 400) {
                this.reportError(new RealtimeError('bad_request', `the server refused a presence message for task ${o.frame.taskId}`));
            }
        });
    }
    async post(conn, frame, token) {
        const f = this.fetchImpl;
        if (!f || conn.streamId === null)
            return 0;
        try {
            const res = await withTimeout(f(`${this.sseBase}/${encodeURIComponent(conn.streamId)}`, {
                method: 'POST',
                headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
                body: JSON.stringify(frame),
            }), this.opts.authTimeoutMs ?? 10_000, () => new RealtimeError('timeout', 'no answer'));
            void res.body?.cancel().catch(() => { });
            return res.status;
        }
        catch {
            return 0;
        }
    }
    setPresence(taskId, state, field) {
        const scope = normalizeScope({ taskId });
        if (!VIEWER_STATES.has(state))
            throw new TypeError(`state is 'viewing', 'editing' or 'typing', not ${JSON.stringify(state)}`);
        if (state !== 'viewing' && (field === undefined || !PRESENCE_FIELDS.has(field))) {
            throw new TypeError(`${state} needs a field: 'title', 'description' or 'comment'`);
        }
        const id = scope.taskId;
        const held = this.presenceHeld.get(id);
        if (state === 'viewing') {
            if (!held)
                return;
            this.presenceHeld.delete(id);
            this.sendPresence(id, { state });
        }
        else {
            if (held && held.state === state && held.field === field)
                return;
            const next = { state, field: field };
            this.presenceHeld.set(id, next);
            this.sendPresence(id, next);
        }
        this.ensurePresenceTimer();
    }
    clearPresence(taskId) {
        this.setPresence(taskId, 'viewing');
    }
    presenceOf(taskId) {
        return this.presenceHeld.get(taskId.toLowerCase()) ?? { state: 'viewing' };
    }
    sendPresence(taskId, p) {
        const room = this.rooms.get(`task:${taskId}`);
        if (!room || room.status !== 'active')
            return;
        const frame = p.state === 'viewing' || p.field === undefined ? { type: 'presence', taskId, state: p.state } : { type: 'presence', taskId, state: p.state, field: p.field };
        if (this.mode === 'sse' && !this.ws) {
            if (this.sse && this.sse.streamId !== null && this.sse.joined.has(room))
                this.postSse({ kind: 'presence', frame });
            return;
        }
        if (this.authed)
            this.enqueue({ kind: 'presence', frame });
    }
    resendPresence(room) {
        if (!('taskId' in room.scope))
            return;
        const held = this.presenceHeld.get(room.scope.taskId);
        if (held)
            this.sendPresence(room.scope.taskId, held);
    }
    ensurePresenceTimer() {
        if (this.presenceHeld.size === 0 || !this.wantOpen) {
            if (this.presenceTimer)
                clearInterval(this.presenceTimer);
            this.presenceTimer = null;
            return;
        }
        if (this.presenceTimer)
            return;
        this.presenceTimer = setInterval(() => {
            for (const [taskId, held] of this.presenceHeld)
                this.sendPresence(taskId, held);
        }, 2000);
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
            this.setState({ state: 'open', reconnected, transport: 'websocket' });
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
        if (this.mode === 'sse' && !this.ws) {
            this.postSse(o);
            return;
        }
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
            if (o.kind !== 'presence')
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
            if (this.mode === 'sse' && !(this.sse && this.sse.streamId !== null)) {
                this.lastHeard = now;
                this.pingSentAt = 0;
                return;
            }
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
        if (this.mode === 'sse') {
            this.requestReopen();
            return;
        }
        const frame = room.sentSince === null
            ? { type: 'subscribe', ...room.scope }
            : { type: 'subscribe', ...room.scope, since: room.sentSince };
        this.enqueue({ kind: 'subscribe', key: room.key, room, frame });
    }
    endRoom(room, error) {
        room.status = 'ended';
        if ('taskId' in room.scope && this.rooms.get(room.key) === room) {
            this.presenceHeld.delete(room.scope.taskId);
            this.ensurePresenceTimer();
        }
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
        stream.wantSince = since;
        if (this.mode === 'sse') {
            this.requestReopen();
            return;
        }
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
        if (this.mode === 'sse') {
            const stream = this.inboxStream;
            if (!stream || stream.status === 'ended')
                return;
            this.sse?.waiting.delete(stream);
            stream.sseCovered = true;
            if (stream.status === 'pending' && !this.inboxSubscribesOut(stream))
                this.inboxJoined(stream, frame);
            this.maybeRetire();
            return;
        }
        const entry = this.takeInflight((o) => o.kind === 'inbox');
        const stream = entry?.kind === 'inbox' ? entry.stream : undefined;
        if (!stream || stream !== this.inboxStream || stream.status === 'ended')
            return;
        if (this.inboxSubscribesOut(stream))
            return;
        this.inboxJoined(stream, frame);
    }
    inboxJoined(stream, frame) {
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
        stream.status = 'pending';
        this.retryRefused(stream, () => this.authed && this.inboxStream === stream && this.sendInboxSubscribe(stream));
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
        this.onFrame(frame);
    }
    onFrame(frame) {
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
                if (this.mode === 'sse')
                    return this.onSseAuthenticated(frame.expiresAt);
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
                if (this.mode === 'sse')
                    return this.onSseInboxError(error);
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
            if (room && room.teamId === null && a.teamId)
                room.teamId = a.teamId;
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
            if (room.teamId === null)
                room.teamId = a.teamId;
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
        if (this.mode === 'sse')
            return this.onSseSubscribed(key, frame);
        const entry = this.takeInflight((o) => o.kind === 'subscribe' && o.key === key);
        const room = entry?.kind === 'subscribe' ? entry.room : undefined;
        if (!this.isCurrent(room))
            return;
        this.joinRoom(room, frame);
        this.resendPresence(room);
    }
    joinRoom(room, frame) {
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
        if (this.mode === 'sse')
            return this.onSseScopeError(key, error);
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
                room.status = 'pending';
                this.retryRefused(room, () => this.authed && this.isCurrent(room) && this.sendSubscribe(room));
            }
        }
    }
    retryRefused(target, resend) {
        const id = this.socketId;
        const b = this.opts.backoff ?? {};
        const base = Math.min(b.maxMs ?? 30_000, (b.minMs ?? 250) * 2 ** (target.refusals + 1));
        target.refusals++;
        if (target.retryTimer)
            clearTimeout(target.retryTimer);
        target.retryTimer = setTimeout(() => {
            target.retryTimer = null;
            if (id === this.socketId)
                resend();
        }, Math.round(base / 2 + (this.random() * base) / 2));
    }
    onConnectionError(error) {
        if (this.mode === 'sse' && !this.ws) {
            if (this.sse)
                this.sse.endCode = error.code;
            if (error.code === 'rate_limited')
                this.counters.rateLimited++;
            if (!STREAM_ENDERS.has(error.code))
                this.reportError(error);
            return;
        }
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
