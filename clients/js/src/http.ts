// HTTP helpers: the auth endpoints, a Session that keeps an access token fresh (and is the token
// source of the realtime client), and thin typed wrappers for the endpoints an app needs to line
// snapshots up with the activity stream. Only `fetch` is used, so this runs in browsers and in
// Node 18+ alike.

import type {
  Activity,
  Board,
  Comment,
  Member,
  Priority,
  Role,
  Task,
  TaskStatus,
  Team,
  User,
} from './generated/protocol.js';

/** Every endpoint of the contract lives under this path of the server. */
export const API_PREFIX = '/api/v1';

/** What register, login and refresh answer. */
export interface AuthResponse {
  user: User;
  accessToken: string;
  refreshToken: string;
  /** Seconds until the access token expires. */
  expiresIn: number;
}

/** An RFC 9457 problem document, as the server sends for every error. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  /** Stable machine-readable code: `unauthorized`, `conflict`, `resume_unavailable`, ... */
  code?: string;
  errors?: { field: string; message: string }[];
  [extra: string]: unknown;
}

/** A non-2xx answer. `code` is the problem's `code` (or `http_<status>` when there was none). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly problem: Problem;

  constructor(status: number, problem: Problem) {
    const code = typeof problem.code === 'string' ? problem.code : `http_${status}`;
    super(`${status} ${code}${problem.detail ? `: ${problem.detail}` : ''}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.problem = problem;
  }
}

/** A 2xx answer with the headers a client uses to line data up with the stream. */
export interface ApiResponse<T> {
  status: number;
  data: T;
  headers: Headers;
  /** `X-TaskForge-Seq`: the team's latest seq when the data was read (null when absent). */
  seq: number | null;
}

/** A cursor-paginated list. */
export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | null | undefined>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

function defaultFetch(): FetchLike {
  if (typeof globalThis.fetch !== 'function') {
    throw new Error('no global fetch: pass { fetch } in the options');
  }
  return globalThis.fetch.bind(globalThis);
}

function apiUrl(baseUrl: string, path: string, query?: RequestOptions['query']): string {
  const base = baseUrl.replace(/\/+$/, '');
  const url = new URL(`${base}${API_PREFIX}${path}`);
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
  }
  return url.toString();
}

/** One HTTP call: JSON in, JSON out, problem+json turned into `ApiError`. */
export async function apiRequest<T>(
  baseUrl: string,
  method: string,
  path: string,
  opts: RequestOptions & { token?: string; fetch?: FetchLike } = {},
): Promise<ApiResponse<T>> {
  const headers: Record<string, string> = { accept: 'application/json', ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  const init: RequestInit = { method, headers };
  if (body !== undefined) init.body = body;
  if (opts.signal) init.signal = opts.signal;
  const res = await (opts.fetch ?? defaultFetch())(apiUrl(baseUrl, path, opts.query), init);
  const text = await res.text();
  let json: unknown = undefined;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
  }
  if (!res.ok) {
    const problem: Problem =
      json && typeof json === 'object' ? (json as Problem) : { status: res.status, detail: text };
    throw new ApiError(res.status, problem);
  }
  const seqHeader = res.headers.get('x-taskforge-seq');
  return {
    status: res.status,
    data: json as T,
    headers: res.headers,
    seq: seqHeader === null ? null : Number(seqHeader),
  };
}

interface AuthCallOptions {
  fetch?: FetchLike;
  signal?: AbortSignal;
}

/** POST /auth/register. */
export async function register(
  baseUrl: string,
  body: { email: string; password: string; displayName: string },
  opts: AuthCallOptions = {},
): Promise<AuthResponse> {
  return (await apiRequest<AuthResponse>(baseUrl, 'POST', '/auth/register', { ...opts, body })).data;
}

/** POST /auth/login. Wrong email or password: `ApiError` 401 `unauthorized`. */
export async function login(
  baseUrl: string,
  body: { email: string; password: string },
  opts: AuthCallOptions = {},
): Promise<AuthResponse> {
  return (await apiRequest<AuthResponse>(baseUrl, 'POST', '/auth/login', { ...opts, body })).data;
}

/**
 * POST /auth/refresh. Refresh tokens rotate: use the returned one next time. Presenting an
 * already-rotated token answers 401 and revokes the whole family (every session of that login).
 */
export async function refresh(
  baseUrl: string,
  refreshToken: string,
  opts: AuthCallOptions = {},
): Promise<AuthResponse> {
  return (
    await apiRequest<AuthResponse>(baseUrl, 'POST', '/auth/refresh', { ...opts, body: { refreshToken } })
  ).data;
}

/** POST /auth/logout: revokes the refresh token's family. */
export async function logout(baseUrl: string, refreshToken: string, opts: AuthCallOptions = {}): Promise<void> {
  await apiRequest<void>(baseUrl, 'POST', '/auth/logout', { ...opts, body: { refreshToken } });
}

/** An access token and when to replace it (epoch ms on this machine's clock). */
export interface AccessToken {
  token: string;
  /** Get a new token before this time; undefined when the source cannot tell. */
  refreshAt?: number;
}

/** Where the realtime client gets its tokens; `Session` is one. */
export interface TokenSource {
  /** A valid access token; with `forceRefresh`, a newly issued one. */
  getAccessToken(opts?: { forceRefresh?: boolean }): Promise<AccessToken>;
}

/** True when an error means the credentials are gone (re-login needed), not a passing failure. */
export function isAuthFailure(e: unknown): boolean {
  return e instanceof ApiError && (e.status === 401 || e.status === 403);
}

export interface SessionOptions {
  fetch?: FetchLike;
  /**
   * Called with every new token pair. Refresh tokens rotate, so an app that persists the session
   * must store the new refresh token each time.
   */
  onTokens?: (auth: AuthResponse) => void;
  /** Renew this long before expiry at most (default 60 s; never more than a quarter of the lifetime). */
  refreshBeforeMs?: number;
}

export interface NewTask {
  title: string;
  description?: string;
  boardId?: string;
  status?: TaskStatus;
  priority?: Priority;
  assigneeUserId?: string | null;
  dueDate?: string | null;
  position?: number;
}

export type TaskPatch = Partial<NewTask>;

/**
 * A logged-in user: holds the token pair, renews the access token before it expires (one refresh
 * at a time, because a refresh token can be used only once), and signs requests with it.
 */
export class Session implements TokenSource {
  readonly baseUrl: string;
  private auth: AuthResponse;
  private readonly fetchImpl: FetchLike | undefined;
  private readonly onTokens: ((auth: AuthResponse) => void) | undefined;
  private readonly refreshBeforeMs: number;
  private expiresAtMs = 0;
  private refreshAtMs = 0;
  private refreshing: Promise<AuthResponse> | null = null;

  constructor(baseUrl: string, auth: AuthResponse, opts: SessionOptions = {}) {
    this.baseUrl = baseUrl;
    this.auth = auth;
    this.fetchImpl = opts.fetch;
    this.onTokens = opts.onTokens;
    this.refreshBeforeMs = opts.refreshBeforeMs ?? 60_000;
    this.adopt(auth);
  }

  static async login(
    baseUrl: string,
    credentials: { email: string; password: string },
    opts: SessionOptions = {},
  ): Promise<Session> {
    const auth = await login(baseUrl, credentials, opts.fetch ? { fetch: opts.fetch } : {});
    return new Session(baseUrl, auth, opts);
  }

  static async register(
    baseUrl: string,
    body: { email: string; password: string; displayName: string },
    opts: SessionOptions = {},
  ): Promise<Session> {
    const auth = await register(baseUrl, body, opts.fetch ? { fetch: opts.fetch } : {});
    return new Session(baseUrl, auth, opts);
  }

  get user(): User {
    return this.auth.user;
  }

  get accessToken(): string {
    return this.auth.accessToken;
  }

  get refreshToken(): string {
    return this.auth.refreshToken;
  }

  /** When the access token expires (epoch ms, local clock, conservative). */
  get expiresAt(): number {
    return this.expiresAtMs;
  }

  /** When `getAccessToken()` starts answering with a renewed token (epoch ms, local clock). */
  get refreshAt(): number {
    return this.refreshAtMs;
  }

  private adopt(auth: AuthResponse): void {
    this.auth = auth;
    const lifetime = Math.max(0, auth.expiresIn * 1000);
    // Counted from receipt on this machine's clock, so a skewed clock does not matter. `exp` is in
    // whole seconds and the socket is cut exactly at `exp` (no leeway there), so take one second
    // off to stay on the safe side of the truncation.
    this.expiresAtMs = Date.now() + lifetime - 1000;
    this.refreshAtMs = this.expiresAtMs - Math.min(this.refreshBeforeMs, lifetime / 4);
  }

  /** Renews the token pair now. Concurrent callers share one request. */
  refresh(): Promise<AuthResponse> {
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

  async getAccessToken(opts: { forceRefresh?: boolean } = {}): Promise<AccessToken> {
    if (opts.forceRefresh || Date.now() >= this.refreshAtMs) await this.refresh();
    return { token: this.auth.accessToken, refreshAt: this.refreshAtMs };
  }

  /**
   * An authenticated call. A 401 is retried once with a renewed token (the access token may have
   * expired between the check and the request).
   */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<ApiResponse<T>> {
    const { token } = await this.getAccessToken();
    const call = (t: string) =>
      apiRequest<T>(this.baseUrl, method, path, {
        ...opts,
        token: t,
        ...(this.fetchImpl ? { fetch: this.fetchImpl } : {}),
      });
    try {
      return await call(token);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) throw e;
      // Renew only if nobody else did meanwhile: each refresh spends a refresh token.
      if (this.auth.accessToken === token) await this.refresh();
      return call(this.auth.accessToken);
    }
  }

  /** Revokes this login's refresh token family. */
  async logout(): Promise<void> {
    await logout(this.baseUrl, this.auth.refreshToken, this.fetchImpl ? { fetch: this.fetchImpl } : {});
  }

  // Typed endpoints. Each returns the full response so that `seq` (X-TaskForge-Seq) is at hand.

  me(): Promise<ApiResponse<{ user: User; teams: { team: Team; role: Role }[] }>> {
    return this.request('GET', '/me');
  }

  createTeam(name: string): Promise<ApiResponse<Team>> {
    return this.request('POST', '/teams', { body: { name } });
  }

  listTeams(query: { limit?: number; cursor?: string } = {}): Promise<ApiResponse<Page<Team>>> {
    return this.request('GET', '/teams', { query });
  }

  getTeam(teamId: string): Promise<ApiResponse<Team>> {
    return this.request('GET', `/teams/${teamId}`);
  }

  addMember(
    teamId: string,
    body: { email: string; role: Exclude<Role, 'owner'> } | { userId: string; role: Exclude<Role, 'owner'> },
  ): Promise<ApiResponse<Member>> {
    return this.request('POST', `/teams/${teamId}/members`, { body });
  }

  removeMember(teamId: string, userId: string): Promise<ApiResponse<void>> {
    return this.request('DELETE', `/teams/${teamId}/members/${userId}`);
  }

  createBoard(teamId: string, name: string): Promise<ApiResponse<Board>> {
    return this.request('POST', `/teams/${teamId}/boards`, { body: { name } });
  }

  listBoards(teamId: string, query: { limit?: number; cursor?: string } = {}): Promise<ApiResponse<Page<Board>>> {
    return this.request('GET', `/teams/${teamId}/boards`, { query });
  }

  createTask(teamId: string, task: NewTask): Promise<ApiResponse<Task>> {
    return this.request('POST', `/teams/${teamId}/tasks`, { body: task });
  }

  listTasks(
    teamId: string,
    query: { boardId?: string; status?: TaskStatus; assigneeUserId?: string; limit?: number; cursor?: string } = {},
  ): Promise<ApiResponse<Page<Task>>> {
    return this.request('GET', `/teams/${teamId}/tasks`, { query });
  }

  getTask(taskId: string): Promise<ApiResponse<Task>> {
    return this.request('GET', `/tasks/${taskId}`);
  }

  /** With `ifMatch` (the version you edited), a stale edit fails with 412 `precondition_failed`. */
  updateTask(taskId: string, patch: TaskPatch, opts: { ifMatch?: number } = {}): Promise<ApiResponse<Task>> {
    const headers: Record<string, string> = {};
    if (opts.ifMatch !== undefined) headers['if-match'] = `"${opts.ifMatch}"`;
    return this.request('PATCH', `/tasks/${taskId}`, { body: patch, headers });
  }

  deleteTask(taskId: string): Promise<ApiResponse<void>> {
    return this.request('DELETE', `/tasks/${taskId}`);
  }

  createComment(taskId: string, body: string): Promise<ApiResponse<Comment>> {
    return this.request('POST', `/tasks/${taskId}/comments`, { body: { body } });
  }

  listComments(taskId: string, query: { limit?: number; cursor?: string } = {}): Promise<ApiResponse<Page<Comment>>> {
    return this.request('GET', `/tasks/${taskId}/comments`, { query });
  }

  /**
   * The team's durable activity log after `since` (exclusive), oldest first. A `since` older than
   * the retained log fails with 410 `resume_unavailable`: refetch the resources instead.
   */
  listActivity(
    teamId: string,
    query: { since?: number; limit?: number; cursor?: string } = {},
  ): Promise<ApiResponse<Page<Activity>>> {
    return this.request('GET', `/teams/${teamId}/activity`, { query });
  }
}
