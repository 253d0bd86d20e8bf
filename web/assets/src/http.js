export const API_PREFIX = '/api/v1';
export class ApiError extends Error {
    status;
    code;
    problem;
    constructor(status, problem) {
        const code = typeof problem.code === 'string' ? problem.code : `http_${status}`;
        super(`${status} ${code}${problem.detail ? `: ${problem.detail}` : ''}`);
        this.name = 'ApiError';
        this.status = status;
        this.code = code;
        this.problem = problem;
    }
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
        if (v !== undefined && v !== null)
            url.searchParams.set(k, String(v));
    }
    return url.toString();
}
export async function apiRequest(baseUrl, method, path, opts = {}) {
    const headers = { accept: 'application/json', ...opts.headers };
    if (opts.token)
        headers.authorization = `Bearer ${opts.token}`;
    let body;
    if (opts.body !== undefined) {
        headers['content-type'] = 'application/json';
        body = JSON.stringify(opts.body);
    }
    const init = { method, headers };
    if (body !== undefined)
        init.body = body;
    if (opts.signal)
        init.signal = opts.signal;
    const res = await (opts.fetch ?? defaultFetch())(apiUrl(baseUrl, path, opts.query), init);
    const text = await res.text();
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
        throw new ApiError(res.status, problem);
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
export function isAuthFailure(e) {
    return e instanceof ApiError && (e.status === 401 || e.status === 403);
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
    constructor(baseUrl, auth, opts = {}) {
        this.baseUrl = baseUrl;
        this.auth = auth;
        this.fetchImpl = opts.fetch;
        this.onTokens = opts.onTokens;
        this.refreshBeforeMs = opts.refreshBeforeMs ?? 60_000;
        this.adopt(auth);
    }
    static async login(baseUrl, credentials, opts = {}) {
        const auth = await login(baseUrl, credentials, opts.fetch ? { fetch: opts.fetch } : {});
        return new Session(baseUrl, auth, opts);
    }
    static async register(baseUrl, body, opts = {}) {
        const auth = await register(baseUrl, body, opts.fetch ? { fetch: opts.fetch } : {});
        return new Session(baseUrl, auth, opts);
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
    refresh() {
        if (!this.refreshing) {
            const used = this.auth.refreshToken;
            this.refreshing = refresh(this.baseUrl, used, this.fetchImpl ? { fetch: this.fetchImpl } : {})
                .then((auth) => {
                this.adopt(auth);
                this.onTokens?.(auth);
                return auth;
            })
                .finally(() => {
                this.refreshing = null;
            });
        }
        return this.refreshing;
    }
    async getAccessToken(opts = {}) {
        if (opts.forceRefresh || Date.now() >= this.refreshAtMs)
            await this.refresh();
        return { token: this.auth.accessToken, refreshAt: this.refreshAtMs };
    }
    async request(method, path, opts = {}) {
        const { token } = await this.getAccessToken();
        const call = (t) => apiRequest(this.baseUrl, method, path, {
            ...opts,
            token: t,
            ...(this.fetchImpl ? { fetch: this.fetchImpl } : {}),
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
        await logout(this.baseUrl, this.auth.refreshToken, this.fetchImpl ? { fetch: this.fetchImpl } : {});
    }
    me() {
        return this.request('GET', '/me');
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
    listTasks(teamId, query = {}) {
        return this.request('GET', `/teams/${teamId}/tasks`, { query });
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
