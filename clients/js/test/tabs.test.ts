// Refreshes shared between tabs. Two tabs of one origin can hold the same refresh token (a
// duplicated tab copies sessionStorage); if both present it, the server's reuse detection revokes
// the whole login. With a coordinator exactly one refresh reaches the server and every holder ends
// with the new pair. Tabs are modelled as Sessions built from one AuthResponse (in this process,
// with the in-realm lock), as a worker thread (another realm: BroadcastChannel only), and as two
// real Chromium tabs (Web Locks and BroadcastChannel as a browser has them).

import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { after, before, describe, test } from 'node:test';

import { chromium, type Browser, type Page } from 'playwright-core';

import {
  ApiError,
  NetworkError,
  Session,
  refresh,
  register,
  tabRefreshCoordinator,
  type AuthResponse,
  type FetchLike,
  type RefreshCoordinator,
} from '@taskforge/client';
import { PKG_ROOT, TestServer } from './helpers/server.js';
import { waitFor, within } from './helpers/util.js';

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

after(async () => {
  await server?.dispose();
});

const newAuth = (): Promise<AuthResponse> =>
  register(server.baseUrl, {
    email: `user-${randomUUID()}@example.com`,
    password: 'correct horse battery',
    displayName: 'Ann',
  });

/** The real fetch, counting the refreshes that go out. */
function countingFetch(): { fetch: FetchLike; refreshes: () => number } {
  let n = 0;
  return {
    fetch: (input, init) => {
      if (new URL(input).pathname.endsWith('/auth/refresh')) n++;
      return fetch(input, init);
    },
    refreshes: () => n,
  };
}

/** Closed after each test that made them. */
const coordinators = new Set<RefreshCoordinator>();
function coordinator(name: string): RefreshCoordinator {
  const c = tabRefreshCoordinator(name);
  coordinators.add(c);
  return c;
}
function closeCoordinators(): void {
  for (const c of coordinators) c.close();
  coordinators.clear();
}

/** Two "tabs": Sessions built from one AuthResponse, each counting the pairs it was given. */
type Tab = { session: Session; tokens: string[] };
function twoTabs(
  auth: AuthResponse,
  fetchImpl: FetchLike,
  coordinators: [RefreshCoordinator | undefined, RefreshCoordinator | undefined],
): [Tab, Tab] {
  return coordinators.map((c) => {
    const tokens: string[] = [];
    const session = new Session(server.baseUrl, auth, {
      fetch: fetchImpl,
      onTokens: (a) => tokens.push(a.refreshToken),
      ...(c ? { coordinator: c } : {}),
    });
    return { session, tokens };
  }) as [Tab, Tab];
}

describe('two tabs with one refresh token', { timeout: 60_000 }, () => {
  after(closeCoordinators);

  test('sharing a coordinator, both refresh at once: one /auth/refresh, one new pair, both keep working', async () => {
    const auth = await newAuth();
    const counter = countingFetch();
    const c = coordinator(`tabs-${randomUUID()}`);
    const [a, b] = twoTabs(auth, counter.fetch, [c, c]);

    const [ra, rb] = await within('refreshes', Promise.all([a.session.refresh(), b.session.refresh()]));
    assert.equal(counter.refreshes(), 1, 'one refresh reached the server');
    assert.equal(ra.refreshToken, rb.refreshToken);
    assert.notEqual(a.session.refreshToken, auth.refreshToken);
    assert.equal(a.session.refreshToken, b.session.refreshToken);
    assert.equal(a.session.accessToken, b.session.accessToken);
    assert.deepEqual(a.tokens, [ra.refreshToken], 'onTokens once per new pair');
    assert.deepEqual(b.tokens, [ra.refreshToken]);
    assert.equal((await a.session.me()).status, 200);
    assert.equal((await b.session.me()).status, 200);

    // One tab alone renews: the other adopts the announced pair at once (before it could present
    // the spent token), and the login survives further refreshes from either.
    const next = await b.session.refresh();
    assert.equal(a.session.refreshToken, next.refreshToken);
    assert.deepEqual(a.tokens, [ra.refreshToken, next.refreshToken]);
    await a.session.refresh();
    assert.equal(b.session.refreshToken, a.session.refreshToken);
    assert.equal(counter.refreshes(), 3);
    assert.equal((await b.session.me()).status, 200);
  });

  test('one coordinator per tab under one name: the same', async () => {
    const auth = await newAuth();
    const counter = countingFetch();
    const name = `tabs-${randomUUID()}`;
    const [a, b] = twoTabs(auth, counter.fetch, [coordinator(name), coordinator(name)]);

    await within('refreshes', Promise.all([a.session.refresh(), b.session.refresh(), a.session.refresh()]));
    assert.equal(counter.refreshes(), 1);
    assert.equal(a.session.refreshToken, b.session.refreshToken);
    assert.notEqual(a.session.refreshToken, auth.refreshToken);

    const next = await a.session.refresh();
    // Between coordinators the news travels over BroadcastChannel.
    await waitFor('b adopts', () => b.session.refreshToken === next.refreshToken);
    assert.equal(b.tokens.at(-1), next.refreshToken);
    await b.session.refresh();
    assert.equal(counter.refreshes(), 3);
    for (const t of [a, b]) assert.equal((await t.session.me()).status, 200);
  });

  test('without a coordinator, both refreshing at once revokes the login (the uncoordinated case)', async () => {
    const auth = await newAuth();
    const counter = countingFetch();
    const [a, b] = twoTabs(auth, counter.fetch, [undefined, undefined]);

    const results = await within('refreshes', Promise.allSettled([a.session.refresh(), b.session.refresh()]));
    assert.equal(counter.refreshes(), 2);
    assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(refused.reason instanceof ApiError && refused.reason.status === 401);
    // Reuse detection revoked the family: the winner's new token is dead too.
    const winner = results[0].status === 'fulfilled' ? a : b;
    const e = await winner.session.refresh().catch((x: unknown) => x);
    assert.ok(e instanceof ApiError && e.status === 401, String(e));
  });

  test('Session.resume: two tabs resuming from one copied refresh token share the refresh', async () => {
    const auth = await newAuth();
    const counter = countingFetch();
    const c = coordinator(`tabs-${randomUUID()}`);
    const seen: string[] = [];
    const opts = { fetch: counter.fetch, coordinator: c, onTokens: (a: AuthResponse) => seen.push(a.refreshToken) };
    const [a, b] = await within(
      'resumes',
      Promise.all([
        Session.resume(server.baseUrl, auth.refreshToken, opts),
        Session.resume(server.baseUrl, auth.refreshToken, opts),
      ]),
    );
    assert.equal(counter.refreshes(), 1);
    assert.equal(a.refreshToken, b.refreshToken);
    assert.ok(seen.length >= 2 && seen.every((t) => t === a.refreshToken), 'each got the new pair');
    assert.equal((await a.me()).status, 200);
    await b.refresh();
    assert.equal(a.refreshToken, b.refreshToken, 'a adopted b’s rotation');
    assert.equal((await a.me()).status, 200);
    a.close();
    b.close();
  });

  test('another realm (a worker thread) learns of rotations over BroadcastChannel, and announces its own', async () => {
    const auth = await newAuth();
    const name = `tabs-${randomUUID()}`;
    const main = new Session(server.baseUrl, auth, { coordinator: coordinator(name) });
    const worker = new Worker(WORKER, {
      eval: true,
      workerData: { dist: pathToFileURL(path.join(PKG_ROOT, 'dist', 'index.js')).href, name, base: server.baseUrl, auth },
    });
    try {
      const ask = askWorker(worker);
      await ask('ready');
      const rotated = await main.refresh();
      await waitFor('the worker adopts', async () => (await ask('token')).token === rotated.refreshToken);
      // The worker refreshes with the adopted token: no reuse, the login lives on.
      const fromWorker = await ask('refresh');
      assert.equal(fromWorker.error, undefined);
      assert.notEqual(fromWorker.token, rotated.refreshToken);
      await waitFor('main adopts', () => main.refreshToken === fromWorker.token);
      assert.equal((await main.me()).status, 200);
      assert.equal((await ask('me')).status, 200);
    } finally {
      main.close();
      await worker.terminate();
    }
  });
});

/** A "tab" in another realm: its own copy of the package, its own coordinator under `name`. */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const ready = import(workerData.dist).then((m) => {
  const coordinator = m.tabRefreshCoordinator(workerData.name);
  return new m.Session(workerData.base, workerData.auth, { coordinator });
});
parentPort.on('message', async ({ id, cmd }) => {
  try {
    const s = await ready;
    if (cmd === 'ready') parentPort.postMessage({ id });
    else if (cmd === 'token') parentPort.postMessage({ id, token: s.refreshToken });
    else if (cmd === 'refresh') parentPort.postMessage({ id, token: (await s.refresh()).refreshToken });
    else if (cmd === 'me') parentPort.postMessage({ id, status: (await s.me()).status });
  } catch (e) {
    parentPort.postMessage({ id, error: String(e) });
  }
});
`;

interface WorkerAnswer {
  id: number;
  token?: string;
  status?: number;
  error?: string;
}

function askWorker(worker: Worker): (cmd: string) => Promise<WorkerAnswer> {
  let next = 0;
  return (cmd) => {
    const id = ++next;
    return within(
      `worker ${cmd}`,
      new Promise<WorkerAnswer>((resolve, reject) => {
        const onMessage = (m: WorkerAnswer) => {
          if (m.id !== id) return;
          worker.off('message', onMessage);
          worker.off('error', reject);
          resolve(m);
        };
        worker.on('message', onMessage);
        worker.once('error', reject);
        worker.postMessage({ id, cmd });
      }),
    );
  };
}

describe('the coordinator itself', { timeout: 30_000 }, () => {
  after(closeCoordinators);

  const fake = (n: number): AuthResponse => ({
    user: { id: 'u', email: 'u@example.com', displayName: 'U', createdAt: '2024-01-01T00:00:00Z' } as AuthResponse['user'],
    accessToken: `access-${n}`,
    refreshToken: `refresh-${n}`,
    expiresIn: 900,
  });

  test('one run at a time; a token already rotated is answered from the rotation, through chains', async () => {
    const c = coordinator(`unit-${randomUUID()}`);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const runs: string[] = [];
    const first = c.refresh('refresh-0', async () => {
      runs.push('0');
      await gate;
      return fake(1);
    });
    const second = c.refresh('refresh-1', async () => {
      runs.push('1');
      return fake(2);
    });
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(runs, ['0'], 'the second waits for the first');
    release();
    assert.equal((await first).refreshToken, 'refresh-1');
    assert.equal((await second).refreshToken, 'refresh-2');
    // Both rotations are known now: refresh-0 leads to refresh-2 without a request.
    const third = await c.refresh('refresh-0', async () => assert.fail('must not run'));
    assert.equal(third.refreshToken, 'refresh-2');
  });

  test('a lock held too long: the waiter rejects with a timeout; close() ends the waits', async () => {
    const name = `unit-${randomUUID()}`;
    const c = tabRefreshCoordinator(name, { lockTimeoutMs: 200 });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const holder = c.refresh('a', async () => {
      await gate;
      return fake(1);
    });
    const waiter = await c.refresh('b', async () => fake(2)).catch((e: unknown) => e);
    assert.ok(waiter instanceof NetworkError && waiter.code === 'timeout', String(waiter));
    const closing = c.refresh('c', async () => fake(3)).catch((e: unknown) => e);
    c.close();
    assert.match(String(await closing), /closed/);
    release();
    assert.equal((await holder).refreshToken, 'refresh-1', 'a run already under way completes');
    await assert.rejects(c.refresh('d', async () => fake(4)), /closed/);
  });

  test('bad options are refused', () => {
    assert.throws(() => tabRefreshCoordinator(''), TypeError);
    assert.throws(() => tabRefreshCoordinator('x', { lockTimeoutMs: 0 }), RangeError);
    assert.throws(() => tabRefreshCoordinator('x', { announceTimeoutMs: Number.NaN }), RangeError);
  });
});

// ---- two real browser tabs -----------------------------------------------------------------

const CHROMIUM = process.env.TASKFORGE_CHROMIUM ?? '/usr/bin/chromium';
const browserSkip =
  existsSync(CHROMIUM) || process.env.CI === 'true' ? false : `no Chromium at ${CHROMIUM} (set TASKFORGE_CHROMIUM); skipped`;

type Client = typeof import('@taskforge/client');
interface TabGlobals {
  tf: { session: Session; locks: boolean };
}

/**
 * A Chromium with `n` tabs of the real server's origin, each with a Session built from `auth` and
 * its own coordinator under `name`. The built package is served under that origin (which serves
 * the API), so the pages are same-origin with the API and share its Web Locks and
 * BroadcastChannel, as an app's tabs do. Counts the /auth/refresh requests the browser sends.
 */
async function chromiumTabs(
  n: number,
  auth: AuthResponse,
  name: string,
  fn: (pages: Page[], refreshes: () => number) => Promise<void>,
): Promise<void> {
  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
  try {
    const context = await browser.newContext();
    const dist = path.join(PKG_ROOT, 'dist');
    await context.route(
      (url) => url.pathname.startsWith('/tabs-test/'),
      async (route) => {
        const rel = new URL(route.request().url()).pathname.slice('/tabs-test/'.length);
        if (rel === 'index.html') return route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>tab</title>' });
        const file = path.join(dist, rel);
        if (!file.startsWith(dist + path.sep) || !existsSync(file)) return route.fulfill({ status: 404 });
        return route.fulfill({ contentType: 'text/javascript', body: readFileSync(file, 'utf8') });
      },
    );
    let refreshes = 0;
    context.on('request', (r) => {
      if (new URL(r.url()).pathname === '/api/v1/auth/refresh') refreshes++;
    });
    const pages: Page[] = [];
    for (let i = 0; i < n; i++) {
      const page = await context.newPage();
      await page.goto(`${server.baseUrl}/tabs-test/index.html`);
      await page.evaluate(
        async ({ auth, name }) => {
          const url = '/tabs-test/index.js';
          const m = (await import(url)) as Client;
          const coordinator = m.tabRefreshCoordinator(name, { announceTimeoutMs: 1000 });
          const session = new m.Session(location.origin, auth, { coordinator });
          (globalThis as unknown as TabGlobals).tf = { session, locks: typeof navigator.locks?.request === 'function' };
        },
        { auth, name },
      );
      assert.equal(await page.evaluate(() => (globalThis as unknown as TabGlobals).tf.locks), true, 'Web Locks in the page');
      pages.push(page);
    }
    await fn(pages, () => refreshes);
  } finally {
    await browser.close();
  }
}

describe('two Chromium tabs', { skip: browserSkip, timeout: 120_000 }, () => {
  test('refreshing at once under Web Locks: one refresh per round, the same pair, both keep working', async () => {
    const auth = await newAuth();
    await chromiumTabs(2, auth, `tabs-${randomUUID()}`, async (pages, refreshes) => {
      const tokens = new Set<string>([auth.refreshToken]);
      for (let round = 1; round <= 10; round++) {
        const [a, b] = await within(
          `round ${round}`,
          Promise.all(
            pages.map((p) =>
              p.evaluate(async () => (await (globalThis as unknown as TabGlobals).tf.session.refresh()).refreshToken),
            ),
          ),
          20_000,
        );
        assert.equal(a, b, `round ${round}: both tabs hold the same pair`);
        assert.ok(!tokens.has(a!), `round ${round}: a new pair`);
        tokens.add(a!);
        assert.equal(refreshes(), round, `round ${round}: one refresh per round`);
      }
      for (const page of pages) {
        const status = await page.evaluate(async () => (await (globalThis as unknown as TabGlobals).tf.session.me()).status);
        assert.equal(status, 200);
      }
    });
  });

  test('a token another tab marked spent is never presented, even if the news is lost', async () => {
    const auth = await newAuth();
    const name = `tabs-${randomUUID()}`;
    // The marker a tab takes when it rotates a token, without the announcement that follows it.
    const marker = `${name}:spent:${createHash('sha256').update(auth.refreshToken).digest('hex').slice(0, 32)}`;
    await chromiumTabs(2, auth, name, async ([holder, tab], refreshes) => {
      // Held (granted) before the other tab looks.
      await holder!.evaluate(
        (m) =>
          new Promise<void>((held) => {
            void navigator.locks.request(m, { mode: 'shared' }, () => {
              held();
              return new Promise<void>(() => {});
            });
          }),
        marker,
      );
      const e = await tab!.evaluate(async () => {
        try {
          await (globalThis as unknown as TabGlobals).tf.session.refresh();
          return 'refreshed';
        } catch (err) {
          return err instanceof Error ? err.name : String(err);
        }
      });
      assert.equal(e, 'TokenRotatedError');
      assert.equal(refreshes(), 0, 'the spent token was not presented');
      // The login is intact: the token still works from elsewhere.
      assert.notEqual((await refresh(server.baseUrl, auth.refreshToken)).refreshToken, auth.refreshToken);
    });
  });
});
