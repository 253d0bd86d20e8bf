// Token renewal against a server whose access tokens live 6 seconds. The server cuts a socket
// (4001 token_expired) the moment its token expires, unless the client sends a fresh one with
// `auth` on the live socket first.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import type { Activity, AuthResponse, TokenSource } from '@taskforge/client';
import { Session, register } from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { writeTasks } from './helpers/stream.js';
import { closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

const TTL_S = 6;
let server: TestServer;

before(async () => {
  server = await TestServer.start({ env: { TASKFORGE_ACCESS_TOKEN_TTL: `${TTL_S}s` } });
});

afterEach(() => closeAll());

after(async () => {
  closeAll();
  await server?.dispose();
});

test('a Session renews its token once a quarter of the lifetime is left', { timeout: 30_000 }, async () => {
  const renewed: AuthResponse[] = [];
  const auth = await register(server.baseUrl, {
    email: `renew-${Date.now()}@example.com`,
    password: 'correct horse battery',
    displayName: 'Ann',
  });
  assert.equal(auth.expiresIn, TTL_S);
  const session = new Session(server.baseUrl, auth, { onTokens: (a) => renewed.push(a) });
  assert.equal(session.expiresAt - session.refreshAt, (TTL_S * 1000) / 4);
  await session.getAccessToken();
  assert.equal(renewed.length, 0);
  await sleep(session.refreshAt - Date.now() + 50);
  await session.getAccessToken();
  assert.equal(renewed.length, 1);
  assert.ok(session.refreshAt > Date.now());
  // Requests keep working well past the first token's lifetime.
  await sleep(session.refreshAt - Date.now() + 50);
  assert.equal((await session.me()).status, 200);
  assert.equal(renewed.length, 2);
});

test('the live socket gets a new token before expiry and is never cut', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Long stream')).data;
  const { client, states, errors } = connect(server.baseUrl, ann);
  const got: Activity[] = [];
  await within('subscribed', client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) }).ready);

  // About two and a half token lifetimes of writes.
  const tasks = await writeTasks(ann, team.id, 20, { pauseMs: 700 });
  await waitFor('deliveries', () => got.length === tasks.length, 10_000);
  assert.deepEqual(
    got.map((a) => (a.type === 'task.created' ? a.data.task.id : a.type)),
    tasks.map((t) => t.id),
  );
  assert.equal(client.stats.connects, 1, 'one socket all along');
  assert.ok(client.stats.renewals >= 2, `renewed ${client.stats.renewals} times`);
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'open']);
  assert.deepEqual(errors, []);
});

test('without renewal the server cuts the socket at expiry (4001); the client refreshes and resumes', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Expiring')).data;
  // A token source that never asks for a renewal on the live socket.
  const lazy: TokenSource = {
    getAccessToken: async (opts) => ({ token: (await ann.getAccessToken(opts)).token, refreshAt: Date.now() + 3_600_000 }),
  };
  const { client, states, errors } = connect(server.baseUrl, lazy);
  const got: Activity[] = [];
  await within('subscribed', client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) }).ready);
  const tasks = await writeTasks(ann, team.id, 16, { pauseMs: 600 });
  await waitFor('deliveries', () => got.length >= tasks.length, 15_000);
  await sleep(200);
  assert.deepEqual(
    got.map((a) => (a.type === 'task.created' ? a.data.task.id : a.type)),
    tasks.map((t) => t.id),
  );
  assert.ok(states.some((s) => s.code === 4001), 'cut with 4001');
  assert.ok(client.stats.connects >= 2);
  assert.equal(client.stats.renewals, 0);
  assert.deepEqual(errors, []);
});

test('a token that cannot be renewed ends in onAuthFailure and a closed client', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  let failure: unknown;
  const { client } = connect(server.baseUrl, ann.accessToken, { onAuthFailure: (e) => (failure = e) });
  await waitFor('open', () => client.state === 'open');
  await waitFor('auth failure', () => failure !== undefined, 30_000);
  assert.equal(client.state, 'closed');
});
