import { compareTasksBy, isTaskSort, normalizeTaskFilter, taskFilterParams, taskPredicate, } from './filter.js';
import { ApiError, isAuthFailure } from './http.js';
import { RealtimeError } from './realtime.js';
export function openLiveTasks(rt, session, query, opts = {}) {
    const q = checkTasksQuery(query);
    const pageSize = checkPageSize(opts.pageSize);
    const key = `tasks:${q.teamId}:${q.boardId ?? '*'}:${q.sort ?? '*'}:${JSON.stringify(q.filter)}`;
    return open(rt, key, () => new LiveTasks(rt, session, pageSize, key, q));
}
export function openLiveLabels(rt, session, query, opts = {}) {
    const teamId = checkId(query?.teamId, 'teamId');
    const pageSize = checkPageSize(opts.pageSize);
    const key = `labels:${teamId}`;
    return open(rt, key, () => new LiveLabels(rt, session, pageSize, key, teamId));
}
export function openLiveComments(rt, session, query, opts = {}) {
    const taskId = checkId(query?.taskId, 'taskId');
    const pageSize = checkPageSize(opts.pageSize);
    const key = `comments:${taskId}`;
    return open(rt, key, () => new LiveComments(rt, session, pageSize, key, taskId));
}
export function openLiveMembers(rt, session, query, opts = {}) {
    const teamId = checkId(query?.teamId, 'teamId');
    const pageSize = checkPageSize(opts.pageSize);
    const key = `members:${teamId}`;
    return open(rt, key, () => new LiveMembers(rt, session, pageSize, key, teamId));
}
function checkId(v, name) {
    if (typeof v !== 'string' || v === '')
        throw new TypeError(`${name} must be a non-empty string`);
    return v;
}
function checkPageSize(v) {
    if (v === undefined)
        return 200;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 200) {
        throw new TypeError('pageSize must be an integer from 1 to 200');
    }
    return v;
}
function checkTasksQuery(query) {
    if (!query || typeof query !== 'object')
        throw new TypeError('the query must be an object with a teamId');
    const teamId = checkId(query.teamId, 'teamId');
    const boardId = query.boardId === undefined ? undefined : checkId(query.boardId, 'boardId');
    const f = query.filter;
    if (f !== undefined && (f === null || typeof f !== 'object'))
        throw new TypeError('filter must be an object');
    if (f && 'boardId' in f)
        throw new TypeError('filter.boardId: give the board as the query\'s boardId');
    let filter;
    try {
        filter = normalizeTaskFilter(f);
    }
    catch (e) {
        throw new TypeError(`filter.${e instanceof Error ? e.message : String(e)}`);
    }
    if (query.sort !== undefined && !isTaskSort(query.sort))
        throw new TypeError(`sort: not a sort of the task list: ${String(query.sort)}`);
    return { teamId, boardId, filter, sort: query.sort };
}
const registry = new WeakMap();
function open(rt, key, make) {
    if (!rt || typeof rt.subscribe !== 'function')
        throw new TypeError('rt must be a RealtimeClient');
    let byKey = registry.get(rt);
    if (!byKey)
        registry.set(rt, (byKey = new Map()));
    let base = byKey.get(key);
    if (!base || base.finished) {
        base = make();
        byKey.set(key, base);
        base.refs++;
        base.start();
    }
    else {
        base.refs++;
    }
    return new LiveHandle(base);
}
function unregister(rt, key, base) {
    const byKey = registry.get(rt);
    if (byKey?.get(key) === base)
        byKey.delete(key);
}
class LiveHandle {
    ready;
    base;
    mine = new Set();
    closedSnapshot = null;
    rejectReady;
    readyWatch = null;
    constructor(base) {
        this.base = base;
        this.ready = new Promise((resolve, reject) => {
            this.rejectReady = reject;
            const now = base.getSnapshot();
            if (now.status === 'live')
                return resolve(now);
            if (now.status === 'error')
                return reject(now.error);
            const watch = (s) => {
                if (s.status === 'loading' || s.status === 'refetching')
                    return;
                base.listeners.delete(watch);
                this.readyWatch = null;
                if (s.status === 'live')
                    resolve(this.getSnapshot());
                else
                    reject(s.error ?? new RealtimeError('closed', 'the live collection ended'));
            };
            this.readyWatch = watch;
            base.listeners.add(watch);
        });
        this.ready.catch(() => { });
    }
    getSnapshot() {
        return this.closedSnapshot ?? this.base.getSnapshot();
    }
    subscribe(listener) {
        if (typeof listener !== 'function')
            throw new TypeError('listener must be a function');
        if (this.closedSnapshot)
            return () => { };
        const entry = (s) => listener(s);
        this.mine.add(entry);
        this.base.listeners.add(entry);
        return () => {
            this.mine.delete(entry);
            this.base.listeners.delete(entry);
        };
    }
    get(id) {
        return this.closedSnapshot ? undefined : this.base.get(id);
    }
    close() {
        if (this.closedSnapshot)
            return;
        const last = this.base.getSnapshot();
        this.closedSnapshot = Object.freeze({ items: Object.freeze([]), status: 'closed', error: null, seq: last.seq });
        for (const l of this.mine)
            this.base.listeners.delete(l);
        this.mine.clear();
        if (this.readyWatch)
            this.base.listeners.delete(this.readyWatch);
        this.readyWatch = null;
        this.rejectReady(new RealtimeError('closed', 'the live collection was closed'));
        this.base.release();
    }
}
const ERROR_AFTER_FAILURES = 3;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;
const MAX_HELD = 10_000;
const GONE_PRUNE_AT = 1_000;
const GONE_HARD_CAP = 50_000;
class PermanentError extends Error {
    name = 'PermanentError';
}
function isPermanent(e) {
    if (e instanceof PermanentError || isAuthFailure(e))
        return true;
    return e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
}
function seqOf(r, path) {
    if (r.seq === null || !Number.isInteger(r.seq) || r.seq < 0) {
        throw new PermanentError(`GET ${path} answered without a usable X-TaskForge-Seq`);
    }
    return r.seq;
}
class LiveBase {
    key;
    ready;
    listeners = new Set();
    refs = 0;
    finished = false;
    rt;
    http;
    pageSize;
    items = new Map();
    gone = new Map();
    rooms = new Map();
    baseSeq = -1;
    holding = true;
    status = 'loading';
    error = null;
    seq = null;
    held = new Map();
    heldDropped = -1;
    finalWhileHolding = -1;
    loadGen = 0;
    abort = null;
    retryTimer = null;
    failures = 0;
    everLive = false;
    loaded = false;
    snapshot = null;
    lastNotified = null;
    pruneAt = GONE_PRUNE_AT;
    notifyQueued = false;
    readySettled = false;
    offState = null;
    resolveReady;
    rejectReady;
    constructor(rt, http, pageSize, key) {
        this.rt = rt;
        this.http = http;
        this.pageSize = pageSize;
        this.key = key;
        this.ready = new Promise((resolve, reject) => {
            this.resolveReady = resolve;
            this.rejectReady = reject;
        });
        this.ready.catch(() => { });
    }
    accept(item) {
        return !this.gone.get(this.idOf(item))?.deleted;
    }
    admit(item) {
        return item;
    }
    same(_a, _b) {
        return false;
    }
    wants(_room, _a) {
        return true;
    }
    onArrival(_a) { }
    needsReload(_a) {
        return false;
    }
    roomLost(_room, _e) {
        return false;
    }
    loadGone(_e, _loadedBefore) {
        return false;
    }
    start() {
        this.offState = this.rt.onStateChange((c) => {
            if (c.state === 'closed' && c.error?.code === 'unauthorized')
                this.fail(c.error);
        });
        this.startLoad();
    }
    get(id) {
        return this.items.get(id);
    }
    getSnapshot() {
        if (!this.snapshot) {
            const items = Object.freeze([...this.items.values()].sort((a, b) => this.compare(a, b)));
            this.snapshot = Object.freeze({ items, status: this.status, error: this.error, seq: this.seq });
        }
        return this.snapshot;
    }
    release() {
        if (--this.refs > 0)
            return;
        this.end('closed', null);
    }
    teamOf() {
        return undefined;
    }
    join(scope, since) {
        if (this.finished)
            return;
        const key = 'teamId' in scope ? `team:${scope.teamId}` : 'boardId' in scope ? `board:${scope.boardId}` : `task:${scope.taskId}`;
        if (this.rooms.has(key))
            return;
        const room = { scope, key, sub: null, joined: false, cursor: since, since };
        this.rooms.set(key, room);
        const current = () => !this.finished && this.rooms.get(key) === room;
        let sub;
        try {
            sub = this.rt.subscribe(scope, {
                onActivity: (a) => {
                    if (current())
                        this.onRoomActivity(room, a);
                },
                onSubscribed: (info) => {
                    if (!current())
                        return;
                    room.joined = true;
                    room.cursor = Math.max(room.cursor, info.seq);
                    this.settle();
                },
                onGap: (g) => {
                    if (!current())
                        return;
                    room.cursor = Math.max(room.cursor, g.seq);
                    this.refetch();
                },
                onError: (e) => {
                    if (current())
                        this.onRoomEnded(room, e);
                },
            }, { since, ...(this.teamOf() ? { teamId: this.teamOf() } : {}) });
        }
        catch (e) {
            this.rooms.delete(key);
            this.fail(e);
            return;
        }
        room.sub = sub;
        sub.ready.catch((e) => {
            if (!current())
                return;
            if (sub.state === 'ended')
                return this.onRoomEnded(room, e);
            if (!this.everLive)
                this.setError(e);
        });
    }
    leave(key) {
        const room = this.rooms.get(key);
        if (!room)
            return;
        this.rooms.delete(key);
        room.sub?.unsubscribe();
        this.settle();
    }
    onRoomEnded(room, e) {
        this.rooms.delete(room.key);
        if (this.roomLost(room, e)) {
            this.settle();
            return;
        }
        this.fail(e);
    }
    onRoomActivity(room, a) {
        room.cursor = Math.max(room.cursor, a.seq);
        if (!this.wants(room, a))
            return;
        this.onArrival(a);
        if (this.finished)
            return;
        if (!this.holding && a.seq > this.baseSeq && this.needsReload(a))
            this.refetch();
        if (this.holding) {
            if (this.isFinal(a)) {
                this.applyOne(a);
                this.finalWhileHolding = Math.max(this.finalWhileHolding, a.seq);
            }
            else {
                this.hold(a);
            }
            return;
        }
        if (a.seq <= this.baseSeq && !this.isFinal(a))
            return;
        this.applyOne(a);
        this.pruneGone();
    }
    applyOne(a) {
        let changed = this.apply(a);
        if (this.finished)
            return;
        if (!this.holding && (this.seq === null || a.seq > this.seq)) {
            this.seq = a.seq;
            changed = true;
        }
        if (changed)
            this.changed();
    }
    hold(a) {
        if (this.held.has(a.seq))
            return;
        if (this.held.size >= MAX_HELD) {
            this.heldDropped = Math.max(this.heldDropped, a.seq);
            return;
        }
        this.held.set(a.seq, a);
    }
    refetch() {
        if (this.finished)
            return;
        this.holding = true;
        this.failures = 0;
        if (this.status !== 'error')
            this.status = this.loaded ? 'refetching' : 'loading';
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
        this.fetchAll(ac.signal).then((r) => {
            if (gen !== this.loadGen || this.finished)
                return;
            this.abort = null;
            this.install(r);
        }, (e) => {
            if (gen !== this.loadGen || this.finished)
                return;
            this.abort = null;
            this.loadFailed(e);
        });
    }
    install(r) {
        const s = r.seq;
        const reload = [...this.held.values()].some((a) => a.seq > s && this.needsReload(a));
        if (this.heldDropped > s || reload) {
            for (const seq of [...this.held.keys()])
                if (seq <= s)
                    this.held.delete(seq);
            this.startLoad();
            return;
        }
        const items = new Map();
        for (const loaded of r.items) {
            const id = this.idOf(loaded);
            const item = this.admit(loaded);
            if (item === null) {
                if (!this.accept(loaded)) {
                    const mine = this.items.get(id);
                    if (mine !== undefined)
                        items.set(id, mine);
                }
                continue;
            }
            if (this.accept(item)) {
                const mine = this.items.get(id);
                items.set(id, mine !== undefined && this.same(mine, item) ? mine : item);
                this.gone.delete(id);
            }
            else {
                const mine = this.items.get(id);
                if (mine !== undefined)
                    items.set(id, mine);
            }
        }
        this.items = items;
        this.baseSeq = s;
        this.seq = Math.max(this.seq ?? s, s);
        this.holding = false;
        const held = [...this.held.values()].sort((x, y) => x.seq - y.seq);
        this.held.clear();
        this.heldDropped = -1;
        for (const a of held) {
            if (this.finished)
                return;
            if (a.seq > s)
                this.applyOne(a);
        }
        this.seq = Math.max(this.seq, this.finalWhileHolding);
        this.finalWhileHolding = -1;
        this.loaded = true;
        this.failures = 0;
        this.error = null;
        this.status = this.everLive ? 'live' : 'loading';
        this.pruneGone(true);
        this.changed();
        this.settle();
    }
    loadFailed(e) {
        if (isPermanent(e)) {
            if (this.loadGone(e, this.loaded))
                return;
            return this.fail(e);
        }
        this.failures++;
        if (this.failures >= ERROR_AFTER_FAILURES)
            this.setError(e);
        const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (this.failures - 1));
        const delay = base / 2 + (Math.random() * base) / 2;
        this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            this.startLoad();
        }, delay);
    }
    settle() {
        if (this.finished || this.holding || !this.loaded)
            return;
        if (!this.everLive) {
            for (const room of this.rooms.values())
                if (!room.joined)
                    return;
            this.everLive = true;
        }
        if (this.status !== 'live') {
            this.status = 'live';
            this.error = null;
            this.changed();
        }
        if (!this.readySettled) {
            this.readySettled = true;
            this.resolveReady(this.getSnapshot());
        }
    }
    setError(e) {
        this.status = 'error';
        this.error = e;
        this.changed();
        if (!this.readySettled) {
            this.readySettled = true;
            this.rejectReady(e);
        }
    }
    fail(e) {
        this.end('error', e);
    }
    end(status, e, clear = false) {
        if (this.finished)
            return;
        this.finished = true;
        this.offState?.();
        this.offState = null;
        unregister(this.rt, this.key, this);
        this.loadGen++;
        this.abort?.abort();
        this.abort = null;
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
        for (const key of [...this.rooms.keys()])
            this.leave(key);
        this.held.clear();
        if (clear)
            this.items = new Map();
        this.status = status;
        this.error = status === 'error' ? e : null;
        this.changed();
        if (!this.readySettled) {
            this.readySettled = true;
            this.rejectReady(status === 'error' ? e : new RealtimeError('closed', 'the live collection ended'));
        }
    }
    pruneGone(force = false) {
        if (this.holding || (!force && this.gone.size <= this.pruneAt))
            return;
        let floor = this.baseSeq;
        let min = Infinity;
        for (const room of this.rooms.values())
            min = Math.min(min, room.cursor);
        if (min !== Infinity)
            floor = Math.max(floor, min);
        for (const [id, g] of this.gone)
            if (g.seq <= floor)
                this.gone.delete(id);
        this.pruneAt = Math.min(GONE_HARD_CAP, Math.max(GONE_PRUNE_AT, this.gone.size * 2));
        if (this.gone.size > GONE_HARD_CAP)
            this.refetch();
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
    async readAll(path, query, signal, afterFirst) {
        const first = await this.http.request('GET', path, { query: { ...query, limit: this.pageSize }, signal });
        const seq = seqOf(first, path);
        await afterFirst?.(seq);
        const items = [...first.data.items];
        let cursor = first.data.nextCursor;
        const seen = new Set();
        while (cursor) {
            if (seen.has(cursor))
                throw new PermanentError(`GET ${path}: the server repeated a page cursor`);
            seen.add(cursor);
            signal.throwIfAborted();
            const page = await this.http.request('GET', path, {
                query: { ...query, limit: this.pageSize, cursor },
                signal,
            });
            items.push(...page.data.items);
            cursor = page.data.nextCursor;
        }
        return { items, seq };
    }
}
function compareTasks(a, b) {
    return a.position - b.position || cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
}
function cmp(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
}
class LiveTasks extends LiveBase {
    q;
    predicate;
    order;
    deletedLabels = new Set();
    constructor(rt, http, pageSize, key, q) {
        super(rt, http, pageSize, key);
        this.q = q;
        this.predicate = taskPredicate(q.filter);
        this.order = q.sort === undefined ? compareTasks : compareTasksBy(q.sort);
    }
    idOf(t) {
        return t.id;
    }
    compare(a, b) {
        return this.order(a, b);
    }
    teamOf() {
        return this.q.teamId;
    }
    matches(t) {
        const q = this.q;
        return t.teamId === q.teamId && (q.boardId === undefined || t.boardId === q.boardId) && this.predicate(t);
    }
    withoutDeleted(t) {
        const ids = t.labelIds;
        if (!ids || this.deletedLabels.size === 0 || !ids.some((id) => this.deletedLabels.has(id)))
            return t;
        return { ...t, labelIds: ids.filter((id) => !this.deletedLabels.has(id)) };
    }
    known(id) {
        const g = this.gone.get(id);
        if (g)
            return g.version;
        return this.items.get(id)?.version ?? -1;
    }
    accept(t) {
        const g = this.gone.get(t.id);
        if (g)
            return t.version > g.version;
        const mine = this.items.get(t.id);
        return mine === undefined || t.version >= mine.version;
    }
    admit(t) {
        const clean = this.withoutDeleted(t);
        return this.matches(clean) ? clean : null;
    }
    isFinal(a) {
        return a.type === 'task.deleted' || a.type === 'label.deleted';
    }
    same(a, b) {
        return a.version === b.version && sameLabels(a.labelIds, b.labelIds);
    }
    async fetchAll(signal) {
        const q = this.q;
        const path = `/teams/${q.teamId}/tasks`;
        const query = { ...taskFilterParams(q.filter), boardId: q.boardId };
        return this.readAll(path, query, signal, async (seq) => {
            this.join({ teamId: q.teamId }, seq);
            if (q.boardId !== undefined) {
                this.join({ boardId: q.boardId }, seq);
                return;
            }
            const boards = await this.readAll(`/teams/${q.teamId}/boards`, {}, signal);
            if (this.finished || signal.aborted)
                return;
            const ids = new Set(boards.items.map((b) => b.id));
            for (const id of ids)
                this.join({ boardId: id }, seq);
            for (const room of [...this.rooms.values()]) {
                if ('boardId' in room.scope && !ids.has(room.scope.boardId) && room.since <= boards.seq)
                    this.leave(room.key);
            }
        });
    }
    wants(room, a) {
        return this.q.boardId === undefined || !('teamId' in room.scope) || a.type === 'label.deleted';
    }
    onArrival(a) {
        if (this.q.boardId !== undefined)
            return;
        if (a.type === 'board.created') {
            if (a.seq > this.baseSeq || this.holding)
                this.join({ boardId: a.data.board.id }, a.seq);
        }
        else if (a.type === 'board.deleted') {
            this.leave(`board:${a.data.boardId}`);
        }
    }
    needsReload(a) {
        return a.type === 'task.imported' && (this.q.boardId === undefined || a.data.boardId === this.q.boardId);
    }
    roomLost(room, e) {
        return this.q.boardId === undefined && 'boardId' in room.scope && e instanceof RealtimeError && e.code === 'forbidden';
    }
    apply(a) {
        switch (a.type) {
            case 'task.created':
            case 'task.updated':
            case 'task.assigned':
                return this.upsert(a.data.task, a.seq);
            case 'task.deleted': {
                const had = this.items.delete(a.data.taskId);
                this.gone.set(a.data.taskId, { version: Infinity, deleted: true, seq: a.seq });
                return had;
            }
            case 'label.deleted':
                return this.dropLabel(a.data.labelId, a.seq);
            default:
                return false;
        }
    }
    upsert(t, seq) {
        if (t.teamId !== this.q.teamId || t.version <= this.known(t.id))
            return false;
        const clean = this.withoutDeleted(t);
        if (this.matches(clean)) {
            this.items.set(t.id, clean);
            this.gone.delete(t.id);
            return true;
        }
        this.gone.set(t.id, { version: t.version, deleted: false, seq });
        return this.items.delete(t.id);
    }
    dropLabel(labelId, seq) {
        if (this.deletedLabels.has(labelId))
            return false;
        this.deletedLabels.add(labelId);
        let changed = false;
        for (const [id, t] of [...this.items]) {
            const clean = this.withoutDeleted(t);
            if (clean === t)
                continue;
            changed = true;
            if (this.matches(clean)) {
                this.items.set(id, clean);
            }
            else {
                this.items.delete(id);
                this.gone.set(id, { version: t.version, deleted: false, seq });
            }
        }
        return changed;
    }
}
function sameLabels(a, b) {
    const x = a ?? [];
    const y = b ?? [];
    return x.length === y.length && x.every((id, i) => id === y[i]);
}
class LiveComments extends LiveBase {
    taskId;
    constructor(rt, http, pageSize, key, taskId) {
        super(rt, http, pageSize, key);
        this.taskId = taskId;
    }
    idOf(c) {
        return c.id;
    }
    compare(a, b) {
        return cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
    }
    isFinal(a) {
        return a.type === 'comment.deleted' || a.type === 'task.deleted';
    }
    fetchAll(signal) {
        return this.readAll(`/tasks/${this.taskId}/comments`, {}, signal, (seq) => {
            this.join({ taskId: this.taskId }, seq);
        });
    }
    loadGone(e, loadedBefore) {
        if (loadedBefore && e instanceof ApiError && e.status === 404) {
            this.end('closed', null, true);
            return true;
        }
        return false;
    }
    apply(a) {
        switch (a.type) {
            case 'comment.created':
            case 'comment.updated': {
                const c = a.data.comment;
                if (c.taskId !== this.taskId || this.gone.has(c.id))
                    return false;
                this.items.set(c.id, c);
                return true;
            }
            case 'comment.deleted': {
                const had = this.items.delete(a.data.commentId);
                this.gone.set(a.data.commentId, { version: Infinity, deleted: true, seq: a.seq });
                return had;
            }
            case 'task.deleted':
                if (a.data.taskId === this.taskId)
                    this.end('closed', null, true);
                return true;
            default:
                return false;
        }
    }
}
class LiveMembers extends LiveBase {
    teamId;
    constructor(rt, http, pageSize, key, teamId) {
        super(rt, http, pageSize, key);
        this.teamId = teamId;
    }
    teamOf() {
        return this.teamId;
    }
    idOf(m) {
        return m.user.id;
    }
    compare(a, b) {
        return cmp(a.joinedAt, b.joinedAt) || cmp(a.user.id, b.user.id);
    }
    isFinal(_a) {
        return false;
    }
    fetchAll(signal) {
        return this.readAll(`/teams/${this.teamId}/members`, {}, signal, (seq) => {
            this.join({ teamId: this.teamId }, seq);
        });
    }
    apply(a) {
        switch (a.type) {
            case 'member.added':
            case 'member.updated':
                if (a.data.member.teamId !== this.teamId)
                    return false;
                this.items.set(a.data.member.user.id, a.data.member);
                return true;
            case 'member.removed':
                return this.items.delete(a.data.userId);
            default:
                return false;
        }
    }
}
class LiveLabels extends LiveBase {
    teamId;
    constructor(rt, http, pageSize, key, teamId) {
        super(rt, http, pageSize, key);
        this.teamId = teamId;
    }
    teamOf() {
        return this.teamId;
    }
    idOf(l) {
        return l.id;
    }
    compare(a, b) {
        return cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
    }
    isFinal(a) {
        return a.type === 'label.deleted';
    }
    fetchAll(signal) {
        return this.readAll(`/teams/${this.teamId}/labels`, {}, signal, (seq) => {
            this.join({ teamId: this.teamId }, seq);
        });
    }
    apply(a) {
        switch (a.type) {
            case 'label.created':
            case 'label.updated': {
                const l = a.data.label;
                if (l.teamId !== this.teamId || this.gone.has(l.id))
                    return false;
                this.items.set(l.id, l);
                return true;
            }
            case 'label.deleted': {
                const had = this.items.delete(a.data.labelId);
                this.gone.set(a.data.labelId, { version: Infinity, deleted: true, seq: a.seq });
                return had;
            }
            default:
                return false;
        }
    }
}
