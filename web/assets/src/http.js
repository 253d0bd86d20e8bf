import { normalizeTaskFilter, taskFilterParams, isTaskSort } from './filter.js';
export const API_PREFIX = '/api/v1';
export class ApiError extends Error {
    status;
    code;
    problem;
    retryAfterMs;
    constructor(status, problem, opts = {}) {
        const code = typeof problem.code === 'string' ? problem.code : `http_${status}`;
        super(`${status} ${code}${problem.detail ? `: ${problem.detail}` : ''}`);
        this.name = 'ApiError';
        this.status = status;
        this.code = code;
        this.problem = problem;
        this.retryAfterMs = opts.retryAfterMs;
    }
}
export class NetworkError extends Error {
    code;
    method;
    path;
    constructor(code, method, path, message, opts = {}) {
        super(`${method} ${path}: ${message}`, 'cause' in opts ? { cause: opts.cause } : undefined);
        this.name = 'NetworkError';
        this.code = code;
        this.method = method;
        this.path = path;
    }
}
export const DEFAULT_TIMEOUT_MS = 15_000;
export const DEFAULT_RETRIES = 2;
const RETRY_BASE_MS = 200;
const RETRY_MAX_MS = 2_000;
const RETRY_AFTER_CAP_MS = 10_000;
const MAX_RETRIES = 10;
const MAX_TIMER_MS = 2_147_483_647;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']);
const RETRY_STATUS = new Set([429, 502, 503, 504]);
const IDEMPOTENCY_KEY = 'idempotency-key';
function idempotencyKey(headers) {
    for (const [name, value] of Object.entries(headers ?? {})) {
        if (name.toLowerCase() === IDEMPOTENCY_KEY)
            return value;
    }
    return undefined;
}
const UNKEYED_POST = [/^\/auth\//, /^\/teams\/[^/]+\/webhooks\/?$/, /^\/webhooks\/[^/]+\/rotate-secret\/?$/];
function newIdempotencyKey() {
    return globalThis.crypto.randomUUID();
}
function checkTimeout(v, what) {
    if (v === undefined)
        return DEFAULT_TIMEOUT_MS;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > MAX_TIMER_MS) {
        throw new RangeError(`${what} must be a number of milliseconds in (0, ${MAX_TIMER_MS}], got ${String(v)}`);
    }
    return v;
}
function checkRetries(v, what) {
    if (v === undefined)
        return DEFAULT_RETRIES;
    if (!Number.isInteger(v) || v < 0 || v > MAX_RETRIES) {
        throw new RangeError(`${what} must be an integer from 0 to ${MAX_RETRIES}, got ${String(v)}`);
    }
    return v;
}
function retryAfterMs(headers) {
    const v = headers.get('retry-after')?.trim();
    if (!v || !/^\d+$/.test(v))
        return undefined;
    return Number(v) * 1000;
}
function abortReason(signal) {
    return signal.reason ?? new DOMException('aborted', 'AbortError');
}
function pause(ms, signal) {
    return new Promise((resolve, reject) => {
        if (signal?.aborted)
            return reject(abortReason(signal));
        const onAbort = () => {
            clearTimeout(timer);
            reject(abortReason(signal));
        };
        const timer = setTimeout(() => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
        }, ms);
        signal?.addEventListener('abort', onAbort, { once: true });
    });
}
function raceAbort(p, signal) {
    if (signal.aborted)
        return Promise.reject(abortReason(signal));
    return new Promise((resolve, reject) => {
        const onAbort = () => reject(abortReason(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
}
function defaultFetch() {
    if (typeof globalThis.fetch !== 'function') {
        throw new Error('no global fetch: pass { fetch } in the options');
    }
    return globalThis.fetch.bind(globalThis);
}
function apiUrl(baseUrl, path, query) {
    const base = baseUrl.replace(/\/+$/, '');
    const url = new URL(`${base}${API_PREFIX}${path}`);
    for (const [k, v] of Object.entries(query ?? {})) {
        if (Array.isArray(v))
            for (const item of v)
                url.searchParams.append(k, String(item));
        else if (v !== undefined && v !== null)
            url.searchParams.set(k, String(v));
    }
    return url.toString();
}
export async function apiRequest(baseUrl, method, path, opts = {}) {
    const timeoutMs = checkTimeout(opts.timeoutMs, 'timeoutMs');
    const verb = method.toUpperCase();
    const requested = checkRetries(opts.retries, 'retries');
    const keyed = verb === 'POST' && idempotencyKey(opts.headers) !== undefined;
    const retries = IDEMPOTENT.has(verb) || keyed ? requested : 0;
    const headers = { accept: 'application/json', ...opts.headers };
    if (opts.token)
        headers.authorization = `Bearer ${opts.token}`;
    let body;
    if (opts.body !== undefined) {
        headers['content-type'] = 'application/json';
        body = JSON.stringify(opts.body);
    }
    const url = apiUrl(baseUrl, path, opts.query);
    const fetchImpl = opts.fetch ?? defaultFetch();
    for (let attempt = 0;; attempt++) {
        let failure;
        let wait = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
        try {
            return await attemptOnce(fetchImpl, url, { method, headers, body }, verb, path, timeoutMs, opts.signal);
        }
        catch (e) {
            if (e instanceof NetworkError)
                failure = e;
            else if (e instanceof ApiError && RETRY_STATUS.has(e.status))
                failure = e;
            else if (keyed && e instanceof ApiError && e.status === 409 && e.code === 'idempotency_key_in_use')
                failure = e;
            else
                throw e;
        }
        if (attempt >= retries)
            throw failure;
        if (failure instanceof ApiError && failure.retryAfterMs !== undefined) {
            if (failure.retryAfterMs > RETRY_AFTER_CAP_MS)
                throw failure;
            wait = failure.retryAfterMs;
        }
        await pause(wait, opts.signal);
    }
}
async function attemptOnce(fetchImpl, url, req, verb, path, timeoutMs, signal) {
    if (signal?.aborted)
        throw abortReason(signal);
    const ctrl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
        timedOut = true;
        ctrl.abort(new NetworkError('timeout', verb, path, `no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const onAbort = () => ctrl.abort(abortReason(signal));
    signal?.addEventListener('abort', onAbort, { once: true });
    const init = { method: req.method, headers: req.headers, signal: ctrl.signal };
    if (req.body !== undefined)
        init.body = req.body;
    let res;
    let text;
    try {
        res = await raceAbort(fetchImpl(url, init), ctrl.signal);
        text = await raceAbort(res.text(), ctrl.signal);
    }
    catch (e) {
        if (signal?.aborted)
            throw abortReason(signal);
        if (timedOut)
            throw new NetworkError('timeout', verb, path, `no answer within ${timeoutMs} ms`, { cause: e });
        throw new NetworkError('network', verb, path, e instanceof Error ? e.message : String(e), { cause: e });
    }
    finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
    }
    let json = undefined;
    if (text) {
        try {
            json = JSON.parse(text);
        }
        catch {
            json = undefined;
        }
    }
    if (!res.ok) {
        const problem = json && typeof json === 'object' ? json : { status: res.status, detail: text };
        const after = retryAfterMs(res.headers);
        throw new ApiError(res.status, problem, after === undefined ? {} : { retryAfterMs: after });
    }
    const seqHeader = res.headers.get('x-taskforge-seq');
    return {
        status: res.status,
        data: json,
        headers: res.headers,
        seq: seqHeader === null ? null : Number(seqHeader),
    };
}
export async function register(baseUrl, body, opts = {}) {
    return (await apiRequest(baseUrl, 'POST', '/auth/register', { ...opts, body })).data;
}
export async function login(baseUrl, body, opts = {}) {
    return (await apiRequest(baseUrl, 'POST', '/auth/login', { ...opts, body })).data;
}
export async function refresh(baseUrl, refreshToken, opts = {}) {
    return (await apiRequest(baseUrl, 'POST', '/auth/refresh', { ...opts, body: { refreshToken } })).data;
}
export async function logout(baseUrl, refreshToken, opts = {}) {
    await apiRequest(baseUrl, 'POST', '/auth/logout', { ...opts, body: { refreshToken } });
}
function authCallOptions(opts) {
    const o = {};
    if (opts.fetch)
        o.fetch = opts.fetch;
    if (opts.timeoutMs !== undefined)
        o.timeoutMs = opts.timeoutMs;
    return o;
}
export class TokenRotatedError extends Error {
    constructor(message) {
        super(message);
        this.name = 'TokenRotatedError';
    }
}
export function isAuthFailure(e) {
    return (e instanceof ApiError && (e.status === 401 || e.status === 403)) || e instanceof TokenRotatedError;
}
export function taskListParams(query = {}) {
    const { sort, limit, cursor, ...filter } = query;
    if (sort !== undefined && !isTaskSort(sort))
        throw new TypeError(`sort: not a sort of the task list: ${String(sort)}`);
    return { ...taskFilterParams(normalizeTaskFilter(filter)), sort, limit, cursor };
}
export class Session {
    baseUrl;
    auth;
    fetchImpl;
    onTokens;
    refreshBeforeMs;
    expiresAtMs = 0;
    refreshAtMs = 0;
    refreshing = null;
    timeoutMs;
    retries;
    coordinator;
    stopRotated = null;
    constructor(baseUrl, auth, opts = {}) {
        this.baseUrl = baseUrl;
        this.auth = auth;
        this.fetchImpl = opts.fetch;
        this.onTokens = opts.onTokens;
        this.refreshBeforeMs = opts.refreshBeforeMs ?? 60_000;
        this.timeoutMs = checkTimeout(opts.timeoutMs, 'SessionOptions.timeoutMs');
        this.retries = checkRetries(opts.retries, 'SessionOptions.retries');
        this.coordinator = opts.coordinator;
        this.adopt(auth);
        this.stopRotated =
            this.coordinator?.onRotated((used, next) => {
                if (used === this.auth.refreshToken)
                    this.take(next);
            }) ?? null;
    }
    static async login(baseUrl, credentials, opts = {}) {
        const auth = await login(baseUrl, credentials, authCallOptions(opts));
        return new Session(baseUrl, auth, opts);
    }
    static async register(baseUrl, body, opts = {}) {
        const auth = await register(baseUrl, body, authCallOptions(opts));
        return new Session(baseUrl, auth, opts);
    }
    static async resume(baseUrl, refreshToken, opts = {}) {
        const run = () => refresh(baseUrl, refreshToken, authCallOptions(opts));
        const auth = await (opts.coordinator ? opts.coordinator.refresh(refreshToken, run) : run());
        const session = new Session(baseUrl, auth, opts);
        session.onTokens?.(auth);
        return session;
    }
    get user() {
        return this.auth.user;
    }
    get accessToken() {
        return this.auth.accessToken;
    }
    get refreshToken() {
        return this.auth.refreshToken;
    }
    get expiresAt() {
        return this.expiresAtMs;
    }
    get refreshAt() {
        return this.refreshAtMs;
    }
    adopt(auth) {
        this.auth = auth;
        const lifetime = Math.max(0, auth.expiresIn * 1000);
        this.expiresAtMs = Date.now() + lifetime - 1000;
        this.refreshAtMs = this.expiresAtMs - Math.min(this.refreshBeforeMs, lifetime / 4);
    }
    take(auth) {
        this.adopt(auth);
        this.onTokens?.(auth);
    }
    callOptions() {
        return this.fetchImpl ? { fetch: this.fetchImpl, timeoutMs: this.timeoutMs } : { timeoutMs: this.timeoutMs };
    }
    refresh() {
        if (!this.refreshing) {
            const used = this.auth.refreshToken;
            const run = () => refresh(this.baseUrl, used, this.callOptions());
            this.refreshing = (this.coordinator ? this.coordinator.refresh(used, run) : run())
                .then((auth) => {
                if (this.auth.refreshToken === used)
                    this.take(auth);
                return auth;
            })
                .finally(() => {
                this.refreshing = null;
            });
        }
        return this.refreshing;
    }
    close() {
        this.stopRotated?.();
        this.stopRotated = null;
    }
    async getAccessToken(opts = {}) {
        if (opts.forceRefresh || Date.now() >= this.refreshAtMs)
            await this.refresh();
        return { token: this.auth.accessToken, refreshAt: this.refreshAtMs };
    }
    async request(method, path, opts = {}) {
        const { token } = await this.getAccessToken();
        const keyed = method.toUpperCase() === 'POST' &&
            idempotencyKey(opts.headers) === undefined &&
            !UNKEYED_POST.some((p) => p.test(path));
        const headers = keyed ? { ...opts.headers, [IDEMPOTENCY_KEY]: newIdempotencyKey() } : opts.headers;
        const call = (t) => apiRequest(this.baseUrl, method, path, {
            ...opts,
            ...(headers ? { headers } : {}),
            ...(this.fetchImpl ? { fetch: this.fetchImpl } : {}),
            timeoutMs: opts.timeoutMs ?? this.timeoutMs,
            retries: opts.retries ?? this.retries,
            token: t,
        });
        try {
            return await call(token);
        }
        catch (e) {
            if (!(e instanceof ApiError) || e.status !== 401)
                throw e;
            if (this.auth.accessToken === token)
                await this.refresh();
            return call(this.auth.accessToken);
        }
    }
    async logout() {
        await logout(this.baseUrl, this.auth.refreshToken, this.callOptions());
    }
    me() {
        return this.request('GET', '/me');
    }
    listNotifications(query = {}) {
        return this.request('GET', '/me/notifications', { query: { ...query } });
    }
    markNotificationsRead(body) {
        return this.request('POST', '/me/notifications/read', { body });
    }
    followTask(taskId) {
        return this.request('PUT', `/tasks/${taskId}/follow`);
    }
    unfollowTask(taskId) {
        return this.request('DELETE', `/tasks/${taskId}/follow`);
    }
    createTeam(name) {
        return this.request('POST', '/teams', { body: { name } });
    }
    listTeams(query = {}) {
        return this.request('GET', '/teams', { query });
    }
    getTeam(teamId) {
        return this.request('GET', `/teams/${teamId}`);
    }
    addMember(teamId, body) {
        return this.request('POST', `/teams/${teamId}/members`, { body });
    }
    removeMember(teamId, userId) {
        return this.request('DELETE', `/teams/${teamId}/members/${userId}`);
    }
    createBoard(teamId, name) {
        return this.request('POST', `/teams/${teamId}/boards`, { body: { name } });
    }
    listBoards(teamId, query = {}) {
        return this.request('GET', `/teams/${teamId}/boards`, { query });
    }
    createTask(teamId, task) {
        return this.request('POST', `/teams/${teamId}/tasks`, { body: task });
    }
    importTasks(teamId, batch) {
        return this.request('POST', `/teams/${teamId}/tasks:batch`, { body: batch });
    }
    listTasks(teamId, query = {}) {
        return this.request('GET', `/teams/${teamId}/tasks`, { query: taskListParams(query) });
    }
    searchTasks(teamId, query) {
        return this.request('GET', `/teams/${teamId}/search`, { query: { q: query.q, limit: query.limit } });
    }
    createLabel(teamId, label) {
        return this.request('POST', `/teams/${teamId}/labels`, { body: label });
    }
    listLabels(teamId, query = {}) {
        return this.request('GET', `/teams/${teamId}/labels`, { query });
    }
    updateLabel(labelId, patch) {
        return this.request('PATCH', `/labels/${labelId}`, { body: patch });
    }
    deleteLabel(labelId) {
        return this.request('DELETE', `/labels/${labelId}`);
    }
    getTask(taskId) {
        return this.request('GET', `/tasks/${taskId}`);
    }
    updateTask(taskId, patch, opts = {}) {
        const headers = {};
        if (opts.ifMatch !== undefined)
            headers['if-match'] = `"${opts.ifMatch}"`;
        return this.request('PATCH', `/tasks/${taskId}`, { body: patch, headers });
    }
    deleteTask(taskId) {
        return this.request('DELETE', `/tasks/${taskId}`);
    }
    createComment(taskId, body) {
        return this.request('POST', `/tasks/${taskId}/comments`, { body: { body } });
    }
    listComments(taskId, query = {}) {
        return this.request('GET', `/tasks/${taskId}/comments`, { query });
    }
    listActivity(teamId, query = {}) {
        return this.request('GET', `/teams/${teamId}/activity`, { query });
    }
}
