// HTTP helpers: the auth endpoints, a Session that keeps an access token fresh (and is the token
// source of the realtime client), and thin typed wrappers for the endpoints an app needs to line
// snapshots up with the activity stream. Only `fetch` is used, so this runs in browsers and in
// Node 18+ alike. Every request has a timeout (a fetch can otherwise wait forever on a silent
// peer), and idempotent ones are retried on passing failures.

import type {
  Activity,
  Board,
  Comment,
  Label,
  Member,
  Priority,
  Role,
  Task,
  TaskStatus,
  Team,
  User,
} from './generated/protocol.js';
import type {
  MarkReadRequest,
  MarkReadResult,
  MeInbox,
  NotificationPage,
  NotificationQuery,
} from './inbox-types.js';
import { normalizeTaskFilter, taskFilterParams, isTaskSort, type TaskListQuery } from './filter.js';
import type { RefreshCoordinator } from './tabs.js';

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
  /** A numeric `Retry-After` of the answer (429, 503), in ms; undefined when there was none. */
  readonly retryAfterMs: number | undefined;

  constructor(status: number, problem: Problem, opts: { retryAfterMs?: number } = {}) {
    const code = typeof problem.code === 'string' ? problem.code : `http_${status}`;
    super(`${status} ${code}${problem.detail ? `: ${problem.detail}` : ''}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.problem = problem;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

export type NetworkErrorCode = 'timeout' | 'network';

/**
 * No HTTP answer: `timeout` (nothing within `timeoutMs`, the request was aborted) or `network`
 * (the connection failed; `cause` is what fetch threw). Either way the request may or may not
 * have reached the server. A caller's own abort is not one of these: it rejects with the
 * signal's reason.
 */
export class NetworkError extends Error {
  readonly code: NetworkErrorCode;
  readonly method: string;
  readonly path: string;

  constructor(code: NetworkErrorCode, method: string, path: string, message: string, opts: { cause?: unknown } = {}) {
    super(`${method} ${path}: ${message}`, 'cause' in opts ? { cause: opts.cause } : undefined);
    this.name = 'NetworkError';
    this.code = code;
    this.method = method;
    this.path = path;
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

/** How long one attempt may take, and how often idempotent requests are tried again. */
export interface TimeoutOptions {
  /**
   * Each attempt (connect, headers and body) is aborted after this long with `NetworkError`
   * `timeout` (default 15 s).
   */
  timeoutMs?: number;
  /**
   * Further attempts for GET, HEAD, PUT, DELETE and OPTIONS, and for a POST that carries an
   * `Idempotency-Key`, after a network error, a timeout, a 502/503/504 or a 429 (default 2); a
   * keyed POST also after a 409 `idempotency_key_in_use` (its first attempt is still running).
   * Every attempt of a POST sends the same key, so the server runs it once and answers the
   * retries with the first answer. PATCH and a POST without a key are never retried (and a
   * refresh that reached the server has spent its token). `Session` puts a key on every POST.
   */
  retries?: number;
}

export interface RequestOptions extends TimeoutOptions {
  body?: unknown;
  /** An array repeats the parameter once per value (`status=todo&status=done`). */
  query?: Record<string, string | number | boolean | null | undefined | readonly (string | number)[]>;
  headers?: Record<string, string>;
  /** Aborting rejects with the signal's reason at once, also between retries. */
  signal?: AbortSignal;
}

export const DEFAULT_TIMEOUT_MS = 15_000;
export const DEFAULT_RETRIES = 2;
/** Backoff before retry n (0-based): between half and all of min(MAX, BASE * 2^n). */
const RETRY_BASE_MS = 200;
const RETRY_MAX_MS = 2_000;
/** A `Retry-After` longer than this is not waited for: the error goes to the caller. */
const RETRY_AFTER_CAP_MS = 10_000;
const MAX_RETRIES = 10;
/** setTimeout's limit; a longer delay would fire at once. */
const MAX_TIMER_MS = 2_147_483_647;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']);
const RETRY_STATUS = new Set([429, 502, 503, 504]);
const IDEMPOTENCY_KEY = 'idempotency-key';

/** The request's `Idempotency-Key`, whatever the case of its name. */
function idempotencyKey(headers: Record<string, string> | undefined): string | undefined {
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (name.toLowerCase() === IDEMPOTENCY_KEY) return value;
  }
  return undefined;
}

/**
 * POSTs whose answer the server never keeps for a key (it shows a secret once: a webhook's
 * creation and secret rotation; the auth routes), so a retry would run them again: they get no
 * key and are not retried.
 */
const UNKEYED_POST = [/^\/auth\//, /^\/teams\/[^/]+\/webhooks\/?$/, /^\/webhooks\/[^/]+\/rotate-secret\/?$/];

/** A fresh key for one call (all its attempts). */
function newIdempotencyKey(): string {
  return globalThis.crypto.randomUUID();
}

function checkTimeout(v: number | undefined, what: string): number {
  if (v === undefined) return DEFAULT_TIMEOUT_MS;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > MAX_TIMER_MS) {
    throw new RangeError(`${what} must be a number of milliseconds in (0, ${MAX_TIMER_MS}], got ${String(v)}`);
  }
  return v;
}

function checkRetries(v: number | undefined, what: string): number {
  if (v === undefined) return DEFAULT_RETRIES;
  if (!Number.isInteger(v) || v < 0 || v > MAX_RETRIES) {
    throw new RangeError(`${what} must be an integer from 0 to ${MAX_RETRIES}, got ${String(v)}`);
  }
  return v;
}

/** `Retry-After` in seconds (the HTTP-date form is not used by the server and is ignored). */
function retryAfterMs(headers: Headers): number | undefined {
  const v = headers.get('retry-after')?.trim();
  if (!v || !/^\d+$/.test(v)) return undefined;
  return Number(v) * 1000;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('aborted', 'AbortError');
}

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * `p`, or a rejection as soon as `signal` aborts: a fetch implementation that ignores its signal
 * (or a body that never ends) must not hold the caller past the timeout.
 */
function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
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
    if (Array.isArray(v)) for (const item of v) url.searchParams.append(k, String(item));
    else if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
  }
  return url.toString();
}

/**
 * One HTTP call: JSON in, JSON out, problem+json turned into `ApiError`, no answer into
 * `NetworkError`. Each attempt is bounded by `timeoutMs`; idempotent methods are tried again
 * (`retries`) on network errors, timeouts, 502/503/504 and 429, after a jittered exponential
 * backoff or the answer's `Retry-After` (up to 10 s: a longer one is the caller's to handle).
 */
export async function apiRequest<T>(
  baseUrl: string,
  method: string,
  path: string,
  opts: RequestOptions & { token?: string; fetch?: FetchLike } = {},
): Promise<ApiResponse<T>> {
  const timeoutMs = checkTimeout(opts.timeoutMs, 'timeoutMs');
  const verb = method.toUpperCase();
  const requested = checkRetries(opts.retries, 'retries');
  // A POST with a key is as safe to send again as a GET: the server answers a repeat with the
  // first answer instead of running it again.
  const keyed = verb === 'POST' && idempotencyKey(opts.headers) !== undefined;
  const retries = IDEMPOTENT.has(verb) || keyed ? requested : 0;
  const headers: Record<string, string> = { accept: 'application/json', ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  const url = apiUrl(baseUrl, path, opts.query);
  const fetchImpl = opts.fetch ?? defaultFetch();
  for (let attempt = 0; ; attempt++) {
    let failure: ApiError | NetworkError;
    let wait = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
    try {
      return await attemptOnce<T>(fetchImpl, url, { method, headers, body }, verb, path, timeoutMs, opts.signal);
    } catch (e) {
      if (e instanceof NetworkError) failure = e;
      else if (e instanceof ApiError && RETRY_STATUS.has(e.status)) failure = e;
      else if (keyed && e instanceof ApiError && e.status === 409 && e.code === 'idempotency_key_in_use') failure = e;
      else throw e;
    }
    if (attempt >= retries) throw failure;
    if (failure instanceof ApiError && failure.retryAfterMs !== undefined) {
      if (failure.retryAfterMs > RETRY_AFTER_CAP_MS) throw failure;
      wait = failure.retryAfterMs;
    }
    await pause(wait, opts.signal);
  }
}

async function attemptOnce<T>(
  fetchImpl: FetchLike,
  url: string,
  req: { method: string; headers: Record<string, string>; body: string | undefined },
  verb: string,
  path: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<ApiResponse<T>> {
  if (signal?.aborted) throw abortReason(signal);
  const ctrl = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ctrl.abort(new NetworkError('timeout', verb, path, `no answer within ${timeoutMs} ms`));
  }, timeoutMs);
  const onAbort = () => ctrl.abort(abortReason(signal!));
  signal?.addEventListener('abort', onAbort, { once: true });
  const init: RequestInit = { method: req.method, headers: req.headers, signal: ctrl.signal };
  if (req.body !== undefined) init.body = req.body;
  let res: Response;
  let text: string;
  try {
    res = await raceAbort(fetchImpl(url, init), ctrl.signal);
    // The body too: headers can come while the body never does.
    text = await raceAbort(res.text(), ctrl.signal);
  } catch (e) {
    if (signal?.aborted) throw abortReason(signal);
    if (timedOut) throw new NetworkError('timeout', verb, path, `no answer within ${timeoutMs} ms`, { cause: e });
    throw new NetworkError('network', verb, path, e instanceof Error ? e.message : String(e), { cause: e });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
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
    const after = retryAfterMs(res.headers);
    throw new ApiError(res.status, problem, after === undefined ? {} : { retryAfterMs: after });
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
  /** Default 15 s. The auth calls are POSTs: never retried. */
  timeoutMs?: number;
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

function authCallOptions(opts: SessionOptions): AuthCallOptions {
  const o: AuthCallOptions = {};
  if (opts.fetch) o.fetch = opts.fetch;
  if (opts.timeoutMs !== undefined) o.timeoutMs = opts.timeoutMs;
  return o;
}

/**
 * The refresh token was spent by another holder (another tab) and its new pair never reached
 * this one. Presenting the token again would revoke the login everywhere, so this holder must log
 * in again. `isAuthFailure` is true for it.
 */
export class TokenRotatedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenRotatedError';
  }
}

/** True when an error means the credentials are gone (re-login needed), not a passing failure. */
export function isAuthFailure(e: unknown): boolean {
  return (e instanceof ApiError && (e.status === 401 || e.status === 403)) || e instanceof TokenRotatedError;
}

export interface SessionOptions extends TimeoutOptions {
  fetch?: FetchLike;
  /**
   * Called with every new token pair. Refresh tokens rotate, so an app that persists the session
   * must store the new refresh token each time.
   */
  onTokens?: (auth: AuthResponse) => void;
  /** Renew this long before expiry at most (default 60 s; never more than a quarter of the lifetime). */
  refreshBeforeMs?: number;
  /**
   * Shares refreshes with other holders of the same refresh token (other tabs: see
   * `tabRefreshCoordinator`). Without one, two holders that refresh at once revoke the login.
   * The session also adopts a pair the coordinator announces for its current refresh token.
   */
  coordinator?: RefreshCoordinator;
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
  /** The task's labels (the team's; at most 20). In a patch: the whole new set. */
  labelIds?: string[];
}

export type TaskPatch = Partial<NewTask>;

/** One task of a batch: a new task's fields (the batch names the board), a key, comments. */
export interface BatchTask extends Omit<NewTask, 'boardId' | 'position'> {
  /** The row of the source it comes from (1-200 visible ASCII characters, unique in the batch). */
  importKey?: string;
  /** Written as the importing user's, oldest first. */
  comments?: { body: string }[];
}

/** The body of `importTasks`: 1 to 1,000 tasks for one board. */
export interface TaskBatch {
  boardId: string;
  tasks: BatchTask[];
}

/** One task of a batch's answer, in the batch's order (its id: read it with `getTask`/`listTasks`). */
export interface ImportedTask {
  taskId: string;
  /** False when the team had the task under this import key already. */
  created: boolean;
}

/** A new label: 1-50 characters, unique in the team whatever the case; `#rrggbb`. */
export interface NewLabel {
  name: string;
  color: string;
}

/** One fragment of a search snippet: `match` marks a word that matched (highlight it yourself). */
export interface SnippetFragment {
  text: string;
  match: boolean;
}

/** Where a search hit matched: an excerpt of that field, cut in fragments. */
export interface SearchSnippet {
  field: 'title' | 'description';
  fragments: SnippetFragment[];
}

/** A search result: the task, its score (compare only within one answer) and a snippet. */
export interface SearchHit {
  task: Task;
  score: number;
  snippet: SearchSnippet;
}

/** The task list's query parameters for `query` (filters checked; a bad value throws `TypeError`). */
export function taskListParams(query: TaskListQuery = {}): Record<string, string | number | string[] | undefined> {
  const { sort, limit, cursor, ...filter } = query;
  if (sort !== undefined && !isTaskSort(sort)) throw new TypeError(`sort: not a sort of the task list: ${String(sort)}`);
  return { ...taskFilterParams(normalizeTaskFilter(filter)), sort, limit, cursor };
}

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
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly coordinator: RefreshCoordinator | undefined;
  private stopRotated: (() => void) | null = null;

  constructor(baseUrl: string, auth: AuthResponse, opts: SessionOptions = {}) {
    this.baseUrl = baseUrl;
    this.auth = auth;
    this.fetchImpl = opts.fetch;
    this.onTokens = opts.onTokens;
    this.refreshBeforeMs = opts.refreshBeforeMs ?? 60_000;
    this.timeoutMs = checkTimeout(opts.timeoutMs, 'SessionOptions.timeoutMs');
    this.retries = checkRetries(opts.retries, 'SessionOptions.retries');
    this.coordinator = opts.coordinator;
    this.adopt(auth);
    // Another holder (tab) of our refresh token rotated it: take the new pair now, before we
    // present the spent token ourselves.
    this.stopRotated =
      this.coordinator?.onRotated((used, next) => {
        if (used === this.auth.refreshToken) this.take(next);
      }) ?? null;
  }

  static async login(
    baseUrl: string,
    credentials: { email: string; password: string },
    opts: SessionOptions = {},
  ): Promise<Session> {
    const auth = await login(baseUrl, credentials, authCallOptions(opts));
    return new Session(baseUrl, auth, opts);
  }

  static async register(
    baseUrl: string,
    body: { email: string; password: string; displayName: string },
    opts: SessionOptions = {},
  ): Promise<Session> {
    const auth = await register(baseUrl, body, authCallOptions(opts));
    return new Session(baseUrl, auth, opts);
  }

  /**
   * A session from a stored refresh token (a page reload). With a coordinator the refresh is
   * shared, so a duplicated tab that resumes from the same copied token does not revoke the login.
   * `onTokens` is called with the new pair.
   */
  static async resume(baseUrl: string, refreshToken: string, opts: SessionOptions = {}): Promise<Session> {
    const run = () => refresh(baseUrl, refreshToken, authCallOptions(opts));
    const auth = await (opts.coordinator ? opts.coordinator.refresh(refreshToken, run) : run());
    const session = new Session(baseUrl, auth, opts);
    session.onTokens?.(auth);
    return session;
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

  /** A new pair: stored, and reported to `onTokens`. */
  private take(auth: AuthResponse): void {
    this.adopt(auth);
    this.onTokens?.(auth);
  }

  private callOptions(): { fetch?: FetchLike; timeoutMs: number } {
    return this.fetchImpl ? { fetch: this.fetchImpl, timeoutMs: this.timeoutMs } : { timeoutMs: this.timeoutMs };
  }

  /**
   * Renews the token pair now. Concurrent callers share one request, which is bounded by the
   * timeout: a refresh that gets no answer rejects (`NetworkError`) and the next call starts
   * a new one. It is never retried by itself: if it reached the server, the token is spent.
   */
  refresh(): Promise<AuthResponse> {
    if (!this.refreshing) {
      const used = this.auth.refreshToken;
      const run = () => refresh(this.baseUrl, used, this.callOptions());
      this.refreshing = (this.coordinator ? this.coordinator.refresh(used, run) : run())
        .then((auth) => {
          // Unless an announcement of this very rotation got here first.
          if (this.auth.refreshToken === used) this.take(auth);
          return auth;
        })
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }

  /** Stops listening to the coordinator's announcements (the session keeps working alone). */
  close(): void {
    this.stopRotated?.();
    this.stopRotated = null;
  }

  async getAccessToken(opts: { forceRefresh?: boolean } = {}): Promise<AccessToken> {
    if (opts.forceRefresh || Date.now() >= this.refreshAtMs) await this.refresh();
    return { token: this.auth.accessToken, refreshAt: this.refreshAtMs };
  }

  /**
   * An authenticated call. A 401 is retried once with a renewed token (the access token may have
   * expired between the check and the request). A POST carries an `Idempotency-Key` (a new one
   * per call unless `headers` name one), the same on every attempt: a retry after a lost answer
   * gets the first answer and never creates twice. Not the POSTs whose answers the server never
   * keeps (a webhook's creation and secret rotation): those are sent once.
   */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<ApiResponse<T>> {
    const { token } = await this.getAccessToken();
    const keyed =
      method.toUpperCase() === 'POST' &&
      idempotencyKey(opts.headers) === undefined &&
      !UNKEYED_POST.some((p) => p.test(path));
    const headers = keyed ? { ...opts.headers, [IDEMPOTENCY_KEY]: newIdempotencyKey() } : opts.headers;
    const call = (t: string) =>
      apiRequest<T>(this.baseUrl, method, path, {
        ...opts,
        ...(headers ? { headers } : {}),
        ...(this.fetchImpl ? { fetch: this.fetchImpl } : {}),
        timeoutMs: opts.timeoutMs ?? this.timeoutMs,
        retries: opts.retries ?? this.retries,
        token: t,
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
    await logout(this.baseUrl, this.auth.refreshToken, this.callOptions());
  }

  // Typed endpoints. Each returns the full response so that `seq` (X-TaskForge-Seq) is at hand.

  /** The user, their teams, and their inbox's unread count and latest seq. */
  me(): Promise<ApiResponse<{ user: User; teams: { team: Team; role: Role }[] } & MeInbox>> {
    return this.request('GET', '/me');
  }

  /**
   * GET /me/notifications: newest first. The body's `seq` is the inbox stream's latest seq when the
   * page was read (subscribe the inbox with `since: seq` to miss nothing), `nextCursor` pages
   * towards older ones. `rt.inbox()` keeps this list live.
   */
  listNotifications(query: NotificationQuery = {}): Promise<ApiResponse<NotificationPage>> {
    return this.request('GET', '/me/notifications', { query: { ...query } });
  }

  /**
   * POST /me/notifications/read, by `ids` (at most 200) or `upto` a seq. Unknown, foreign and
   * already read ids are ignored.
   */
  markNotificationsRead(body: MarkReadRequest): Promise<ApiResponse<MarkReadResult>> {
    return this.request('POST', '/me/notifications/read', { body });
  }

  /** PUT /tasks/{id}/follow: notifications of its comments, status changes and deletion (idempotent). */
  followTask(taskId: string): Promise<ApiResponse<void>> {
    return this.request('PUT', `/tasks/${taskId}/follow`);
  }

  /** DELETE /tasks/{id}/follow: stop following (being assigned or mentioned still notifies). */
  unfollowTask(taskId: string): Promise<ApiResponse<void>> {
    return this.request('DELETE', `/tasks/${taskId}/follow`);
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

  /**
   * POST /teams/{teamId}/tasks:batch: up to 1,000 tasks on one board, with their comments, in one
   * transaction and one `task.imported` activity. A task whose `importKey` the team has seen is
   * answered (`created: false`), not written again.
   */
  importTasks(teamId: string, batch: TaskBatch): Promise<ApiResponse<{ items: ImportedTask[] }>> {
    return this.request('POST', `/teams/${teamId}/tasks:batch`, { body: batch });
  }

  /**
   * GET /teams/{teamId}/tasks: one page, filtered (every field of `TaskFilter`, together ANDed),
   * sorted (`sort`, default `createdAt`) and key-set paginated (`cursor`, valid with its sort only).
   * `filter.ts` has the same filter as a predicate over a task.
   */
  listTasks(teamId: string, query: TaskListQuery = {}): Promise<ApiResponse<Page<Task>>> {
    return this.request('GET', `/teams/${teamId}/tasks`, { query: taskListParams(query) });
  }

  /**
   * GET /teams/{teamId}/search: the best matches of `q` first (`limit` 1-50, default 20), each
   * with a snippet whose matching fragments are marked (the text comes as text, never markup).
   */
  searchTasks(teamId: string, query: { q: string; limit?: number }): Promise<ApiResponse<{ items: SearchHit[] }>> {
    return this.request('GET', `/teams/${teamId}/search`, { query: { q: query.q, limit: query.limit } });
  }

  /** POST /teams/{teamId}/labels (members and above); emits `label.created`. */
  createLabel(teamId: string, label: NewLabel): Promise<ApiResponse<Label>> {
    return this.request('POST', `/teams/${teamId}/labels`, { body: label });
  }

  /** GET /teams/{teamId}/labels: oldest first. `rt.liveLabels()` keeps this list live. */
  listLabels(teamId: string, query: { limit?: number; cursor?: string } = {}): Promise<ApiResponse<Page<Label>>> {
    return this.request('GET', `/teams/${teamId}/labels`, { query });
  }

  /** PATCH /labels/{labelId}: rename and/or recolor; emits `label.updated` when something changed. */
  updateLabel(labelId: string, patch: Partial<NewLabel>): Promise<ApiResponse<Label>> {
    return this.request('PATCH', `/labels/${labelId}`, { body: patch });
  }

  /** DELETE /labels/{labelId}: also takes it off every task (their versions stay); emits `label.deleted`. */
  deleteLabel(labelId: string): Promise<ApiResponse<void>> {
    return this.request('DELETE', `/labels/${labelId}`);
  }

  /** The task, and whether the caller follows it (`following`). */
  getTask(taskId: string): Promise<ApiResponse<Task & { following?: boolean }>> {
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
