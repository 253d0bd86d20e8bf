// HTTP failure modes: requests that never get an answer (a refresh among them, which used to
// wedge the Session and with it every later request and realtime reconnect), 502/503/504 and 429
// answers, refused connections, the caller's abort, and which requests are retried (idempotent
// ones and POSTs with an Idempotency-Key, which Session adds to every POST) and which never are
// (PATCH, a POST without a key). The failures come from a small HTTP server on 127.0.0.1
// in front of the real one, which can hold a request without answering or answer an error, and
// otherwise forwards to the real server.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';
import { after, before, describe, test } from 'node:test';

import {
  ApiError,
  NetworkError,
  Session,
  apiRequest,
  register,
  type AuthResponse,
  type FetchLike,
} from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { closeAll, connect, waitFor, within } from './helpers/util.js';

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

after(async () => {
  closeAll();
  await server?.dispose();
});

const password = 'correct horse battery';
const newAuth = (): Promise<AuthResponse> =>
  register(server.baseUrl, { email: `user-${randomUUID()}@example.com`, password, displayName: 'Ann' });

type Fault = { kind: 'hang' } | { kind: 'lose' } | { kind: 'status'; status: number; retryAfter?: string };

/**
 * Forwards to the real server, except that the next requests matching a path take the queued
 * faults: `hang` accepts and never answers (until `close`), `lose` forwards the request and drops
 * the connection when the answer comes (the server did the work; the client never hears of it),
 * `status` answers that error itself.
 */
class FaultyServer {
  private readonly server: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly faults: { path: string; fault: Fault }[] = [];
  /** Every request received, as `METHOD /path` (without the API prefix and query). */
  readonly seen: string[] = [];
  /** The `Idempotency-Key` of each request in `seen` (undefined when it had none). */
  readonly keys: (string | undefined)[] = [];
  port = 0;

  private constructor(private readonly target: () => number) {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  static async start(target: () => number): Promise<FaultyServer> {
    const f = new FaultyServer(target);
    await new Promise<void>((resolve) => f.server.listen(0, '127.0.0.1', resolve));
    f.port = (f.server.address() as net.AddressInfo).port;
    return f;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The next `times` requests to `path` (e.g. '/auth/refresh') get `fault`. */
  fail(path: string, fault: Fault, times = 1): void {
    for (let i = 0; i < times; i++) this.faults.push({ path, fault });
  }

  /** Drops the faults not used yet. */
  clear(): void {
    this.faults.length = 0;
  }

  count(what: string): number {
    return this.seen.filter((s) => s === what).length;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = new URL(req.url ?? '/', 'http://x').pathname.replace(/^\/api\/v1/, '');
    this.seen.push(`${req.method} ${path}`);
    const key = req.headers['idempotency-key'];
    this.keys.push(typeof key === 'string' ? key : undefined);
    const i = this.faults.findIndex((f) => f.path === path);
    const fault = i >= 0 ? this.faults.splice(i, 1)[0]!.fault : undefined;
    if (fault?.kind === 'hang') {
      req.resume(); // read the body, answer nothing
      return;
    }
    if (fault?.kind === 'status') {
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/problem+json' };
      if (fault.retryAfter !== undefined) headers['retry-after'] = fault.retryAfter;
      res.writeHead(fault.status, headers);
      res.end(JSON.stringify({ status: fault.status, code: 'unavailable', detail: 'injected' }));
      return;
    }
    const up = http.request(
      { host: '127.0.0.1', port: this.target(), method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        if (fault?.kind === 'lose') {
          answer.resume();
          res.socket?.destroy();
          return;
        }
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  }

  /** The keys of the requests seen as `what` (e.g. 'POST /teams'), in order. */
  keysOf(what: string): (string | undefined)[] {
    return this.keys.filter((_, i) => this.seen[i] === what);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

let faulty: FaultyServer;
before(async () => {
  faulty = await FaultyServer.start(() => server.port);
});
after(async () => {
  await faulty?.close();
});

/** The settled outcome of `p` (bounded), for asserting on rejections. */
async function outcome<T>(what: string, p: Promise<T>, ms = 10_000): Promise<{ ok: T } | { error: unknown }> {
  return within(
    what,
    p.then(
      (ok) => ({ ok }),
      (error: unknown) => ({ error }),
    ),
    ms,
  );
}

function rejected(o: { ok: unknown } | { error: unknown }): unknown {
  assert.ok('error' in o, `expected a rejection, got ${JSON.stringify(o)}`);
  return o.error;
}

describe('timeouts', { timeout: 60_000 }, () => {
  test('a refresh that never gets an answer rejects at the timeout, and the next one works', async () => {
    const auth = await newAuth();
    const session = new Session(faulty.baseUrl, auth, { timeoutMs: 500 });
    faulty.fail('/auth/refresh', { kind: 'hang' });
    // Before timeouts this never settled, and every later getAccessToken waited on it.
    const stuck = rejected(await outcome('the stuck refresh', session.getAccessToken({ forceRefresh: true })));
    assert.ok(stuck instanceof NetworkError, String(stuck));
    assert.equal(stuck.code, 'timeout');
    assert.equal(stuck.path, '/auth/refresh');
    assert.equal(session.refreshToken, auth.refreshToken, 'no pair adopted');

    const next = await within('the next refresh', session.getAccessToken({ forceRefresh: true }));
    assert.notEqual(session.refreshToken, auth.refreshToken);
    assert.equal(next.token, session.accessToken);
    assert.equal((await within('me', session.me())).data.user.id, auth.user.id);
    assert.equal(faulty.count('POST /auth/refresh'), 2, 'the timed out refresh was not retried');
  });

  test('a realtime client whose token refresh hangs connects once the refresh has timed out', async () => {
    const auth = await newAuth();
    // A token due for renewal: the client's first getAccessToken refreshes, and that one hangs.
    const session = new Session(faulty.baseUrl, { ...auth, expiresIn: 1 }, { timeoutMs: 500 });
    faulty.fail('/auth/refresh', { kind: 'hang' });
    const { client, errors } = connect(server.baseUrl, session);
    await waitFor('open', () => client.state === 'open', 15_000, () => ({ state: client.state, errors: errors.map(String) }));
    assert.ok(
      errors.some((e) => e instanceof NetworkError && e.code === 'timeout'),
      'the timed out refresh was reported',
    );
    client.close();
  });

  test('a GET that never gets an answer is timed out and tried again', async () => {
    const session = new Session(faulty.baseUrl, await newAuth(), { timeoutMs: 400 });
    const before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'hang' });
    const me = await within('me', session.me());
    assert.equal(me.status, 200);
    assert.equal(faulty.count('GET /me') - before, 2);
  });

  test('a POST whose answer is lost is sent again with the same Idempotency-Key and creates once', async () => {
    const session = new Session(faulty.baseUrl, await newAuth());
    const team = (await session.createTeam('Keys')).data;
    const path = `/teams/${team.id}/tasks`;
    faulty.fail(path, { kind: 'lose' });
    const before = faulty.count(`POST ${path}`);
    const task = await within('create task', session.createTask(team.id, { title: 'only once' }));
    assert.equal(task.status, 201);
    assert.equal(task.headers.get('idempotent-replayed'), 'true', 'the retry got the first answer');
    assert.equal(faulty.count(`POST ${path}`) - before, 2);
    const keys = faulty.keysOf(`POST ${path}`).slice(-2);
    assert.ok(keys[0] !== undefined && keys[0] === keys[1], `one key for both attempts: ${keys.join(', ')}`);
    const all = (await session.listTasks(team.id)).data.items;
    assert.deepEqual(all.map((t) => t.id), [task.data.id], 'created once');
    // Every call has its own key.
    await session.createTask(team.id, { title: 'second' });
    assert.notEqual(faulty.keysOf(`POST ${path}`).at(-1), keys[0]);
  });

  test('a webhook creation (its secret is shown once, never kept) is sent without a key', async () => {
    const session = new Session(faulty.baseUrl, await newAuth());
    const team = (await session.createTeam('Hooks')).data;
    const path = `/teams/${team.id}/webhooks`;
    await outcome('create webhook', session.request('POST', path, { body: { url: 'https://example.com/hook' } }));
    assert.deepEqual(faulty.keysOf(`POST ${path}`), [undefined]);
    assert.ok(faulty.keysOf('POST /teams').every((k) => k !== undefined), 'other POSTs carry one');
  });

  test('a POST without a key that never gets an answer times out once and is not sent again', async () => {
    const auth = await newAuth();
    faulty.fail('/teams', { kind: 'hang' });
    const before = faulty.count('POST /teams');
    const timedOut = rejected(
      await outcome(
        'create team',
        apiRequest(faulty.baseUrl, 'POST', '/teams', { token: auth.accessToken, body: { name: 'Never' }, timeoutMs: 300 }),
      ),
    );
    assert.ok(timedOut instanceof NetworkError);
    assert.equal(timedOut.code, 'timeout');
    assert.equal(faulty.count('POST /teams') - before, 1);
    const session = new Session(faulty.baseUrl, auth);
    assert.equal((await session.listTeams()).data.items.length, 0, 'no team was created');
  });

  test('the caller can abort a hanging request at once; it is not retried', async () => {
    const session = new Session(faulty.baseUrl, await newAuth(), { timeoutMs: 10_000 });
    const before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'hang' });
    const ctrl = new AbortController();
    const pending = outcome('aborted me', session.request('GET', '/me', { signal: ctrl.signal }), 5_000);
    await waitFor('request arrived', () => faulty.count('GET /me') > before);
    ctrl.abort();
    const e = rejected(await pending);
    assert.ok(e instanceof Error && e.name === 'AbortError', String(e));
    assert.equal(faulty.count('GET /me') - before, 1);
  });
});

describe('retries', { timeout: 60_000 }, () => {
  test('a GET answered 503 twice is retried and succeeds', async () => {
    const session = new Session(faulty.baseUrl, await newAuth());
    const before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'status', status: 503 }, 2);
    const me = await within('me', session.me());
    assert.equal(me.status, 200);
    assert.equal(faulty.count('GET /me') - before, 3);
  });

  test('502 and 504 are retried too; after `retries` the last error is thrown', async () => {
    const session = new Session(faulty.baseUrl, await newAuth(), { retries: 1 });
    const before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'status', status: 502 });
    faulty.fail('/me', { kind: 'status', status: 504 });
    const e = rejected(await outcome('me', session.me()));
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 504);
    assert.equal(faulty.count('GET /me') - before, 2);
  });

  test('a keyed POST answered 503 is retried; a PATCH is not', async () => {
    const session = new Session(faulty.baseUrl, await newAuth());
    const team = (await session.createTeam('Core')).data;
    const task = (await session.createTask(team.id, { title: 'One' })).data;

    const posts = faulty.count('POST /teams');
    faulty.fail('/teams', { kind: 'status', status: 503 });
    const again = await within('create team', session.createTeam('Again'));
    assert.equal(again.status, 201);
    assert.equal(faulty.count('POST /teams') - posts, 2);
    const names = (await session.listTeams()).data.items.map((t) => t.name).sort();
    assert.deepEqual(names, ['Again', 'Core']);

    const before = faulty.count(`PATCH /tasks/${task.id}`);
    faulty.fail(`/tasks/${task.id}`, { kind: 'status', status: 503 });
    const patch = rejected(await outcome('update task', session.updateTask(task.id, { title: 'Two' })));
    assert.ok(patch instanceof ApiError);
    assert.equal(faulty.count(`PATCH /tasks/${task.id}`) - before, 1);
  });

  test('a 429 waits for its Retry-After; one beyond the cap goes to the caller at once', async () => {
    const session = new Session(faulty.baseUrl, await newAuth());
    let before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'status', status: 429, retryAfter: '1' });
    const started = Date.now();
    assert.equal((await within('me', session.me())).status, 200);
    assert.ok(Date.now() - started >= 950, 'waited for Retry-After');
    assert.equal(faulty.count('GET /me') - before, 2);

    before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'status', status: 429, retryAfter: '60' });
    const e = rejected(await outcome('me', session.me()));
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 429);
    assert.equal(e.retryAfterMs, 60_000);
    assert.equal(faulty.count('GET /me') - before, 1);
  });

  test('a refused connection is a NetworkError `network`, tried 1 + retries times', async () => {
    // A port that was just free: nothing listens there.
    const probe = http.createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    let calls = 0;
    const counting: FetchLike = (input, init) => {
      calls++;
      return fetch(input, init);
    };
    const e = rejected(await outcome('get', apiRequest(`http://127.0.0.1:${port}`, 'GET', '/me', { fetch: counting })));
    assert.ok(e instanceof NetworkError, String(e));
    assert.equal(e.code, 'network');
    assert.ok(e.cause !== undefined);
    assert.equal(calls, 3);

    calls = 0;
    const post = rejected(
      await outcome('post', apiRequest(`http://127.0.0.1:${port}`, 'POST', '/teams', { fetch: counting, body: {} })),
    );
    assert.ok(post instanceof NetworkError);
    assert.equal(calls, 1);
  });

  test('an abort during the backoff ends the retries', async () => {
    const session = new Session(faulty.baseUrl, await newAuth(), { retries: 10 });
    const before = faulty.count('GET /me');
    faulty.fail('/me', { kind: 'status', status: 503, retryAfter: '5' }, 10);
    const ctrl = new AbortController();
    const pending = outcome('me', session.request('GET', '/me', { signal: ctrl.signal }), 4_000);
    await waitFor('first answer', () => faulty.count('GET /me') > before);
    ctrl.abort();
    const e = rejected(await pending);
    assert.ok(e instanceof Error && e.name === 'AbortError', String(e));
    assert.equal(faulty.count('GET /me') - before, 1);
    faulty.clear();
  });

  test('bad timeouts and retry counts are refused with a clear error', async () => {
    const auth = await newAuth();
    for (const timeoutMs of [0, -1, Number.NaN, Infinity, 3e9]) {
      await assert.rejects(apiRequest(server.baseUrl, 'GET', '/healthz', { timeoutMs }), RangeError);
      assert.throws(() => new Session(server.baseUrl, auth, { timeoutMs }), /timeoutMs must be/);
    }
    for (const retries of [-1, 1.5, 11]) {
      await assert.rejects(apiRequest(server.baseUrl, 'GET', '/healthz', { retries }), /retries must be an integer/);
      assert.throws(() => new Session(server.baseUrl, auth, { retries }), RangeError);
    }
  });
});
