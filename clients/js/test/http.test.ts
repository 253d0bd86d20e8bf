// The HTTP helpers: register/login/refresh/logout, the Session's token handling, problem+json
// errors and the X-TaskForge-Seq header.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { ApiError, Session, login, logout, refresh, register, type AuthResponse } from '@taskforge/client';
import { TestServer } from './helpers/server.js';

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

after(async () => {
  await server?.dispose();
});

const password = 'correct horse battery';
const email = () => `user-${randomUUID()}@example.com`;

describe('auth helpers', { timeout: 30_000 }, () => {
  test('register, then login with the same credentials', async () => {
    const address = email();
    const reg = await register(server.baseUrl, { email: address, password, displayName: 'Ann' });
    assert.equal(reg.user.email, address);
    assert.equal(reg.user.displayName, 'Ann');
    assert.ok(reg.accessToken && reg.refreshToken);
    assert.equal(reg.expiresIn, 900); // the server's default lifetime: 15 minutes

    const again = await login(server.baseUrl, { email: address, password });
    assert.equal(again.user.id, reg.user.id);
    assert.notEqual(again.refreshToken, reg.refreshToken);
  });

  test('a wrong password and an unknown email get the same 401', async () => {
    const address = email();
    await register(server.baseUrl, { email: address, password, displayName: 'Ann' });
    const wrong = await login(server.baseUrl, { email: address, password: 'not the password' }).catch((e) => e);
    const unknown = await login(server.baseUrl, { email: email(), password }).catch((e) => e);
    for (const e of [wrong, unknown]) {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 401);
      assert.equal(e.code, 'unauthorized');
    }
  });

  test('registering an email twice is a 409 conflict; a bad body a 422 with the field', async () => {
    const address = email();
    await register(server.baseUrl, { email: address, password, displayName: 'Ann' });
    const dup = await register(server.baseUrl, { email: address, password, displayName: 'Ann' }).catch((e) => e);
    assert.ok(dup instanceof ApiError);
    assert.equal(dup.status, 409);
    assert.equal(dup.code, 'conflict');

    const short = await register(server.baseUrl, { email: email(), password: 'short', displayName: 'Ann' }).catch(
      (e) => e,
    );
    assert.ok(short instanceof ApiError);
    assert.equal(short.status, 422);
    assert.equal(short.code, 'validation_failed');
  });

  test('refresh rotates; reusing a rotated token is refused and revokes the family', async () => {
    const first = await register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const second = await refresh(server.baseUrl, first.refreshToken);
    assert.notEqual(second.refreshToken, first.refreshToken);
    // (The access tokens may be equal: a JWT has no nonce, and both may be issued in one second.)
    assert.equal(second.user.id, first.user.id);

    const reused = await refresh(server.baseUrl, first.refreshToken).catch((e) => e);
    assert.ok(reused instanceof ApiError);
    assert.equal(reused.status, 401);
    // The whole family is gone, the newest token included.
    const after = await refresh(server.baseUrl, second.refreshToken).catch((e) => e);
    assert.ok(after instanceof ApiError);
    assert.equal(after.status, 401);
  });

  test('logout revokes the refresh token', async () => {
    const auth = await register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    await logout(server.baseUrl, auth.refreshToken);
    const e = await refresh(server.baseUrl, auth.refreshToken).catch((err) => err);
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 401);
  });
});

describe('Session', { timeout: 30_000 }, () => {
  test('signs requests and computes its renewal time from expiresIn', async () => {
    const before = Date.now();
    const session = await Session.register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const me = await session.me();
    assert.equal(me.data.user.id, session.user.id);
    // 900 s lifetime: expires (conservatively) a second early, renews 60 s before that.
    assert.ok(session.expiresAt >= before + 899_000 && session.expiresAt <= Date.now() + 899_000);
    assert.equal(session.expiresAt - session.refreshAt, 60_000);
  });

  test('Session.login works for an existing account', async () => {
    const address = email();
    await register(server.baseUrl, { email: address, password, displayName: 'Bob' });
    const session = await Session.login(server.baseUrl, { email: address, password });
    assert.equal((await session.me()).data.user.displayName, 'Bob');
  });

  test('a 401 is retried once with a refreshed token, and onTokens reports the new pair', async () => {
    const auth = await register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const seen: AuthResponse[] = [];
    // An access token the server rejects stands in for one that expired in flight.
    const session = new Session(server.baseUrl, { ...auth, accessToken: 'not-a-jwt' }, { onTokens: (a) => seen.push(a) });
    const me = await session.me();
    assert.equal(me.data.user.id, auth.user.id);
    assert.equal(seen.length, 1);
    assert.equal(session.refreshToken, seen[0]!.refreshToken);
  });

  test('concurrent refreshes share one request (a second use of the token would revoke the login)', async () => {
    const session = await Session.register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const results = await Promise.all([session.refresh(), session.refresh(), session.refresh()]);
    assert.equal(new Set(results.map((r) => r.refreshToken)).size, 1);
    // The login is still alive: a further refresh works.
    await session.refresh();
    assert.equal((await session.me()).status, 200);
  });

  test('getAccessToken renews only when due, or when forced', async () => {
    const renewed: AuthResponse[] = [];
    const auth = await register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const session = new Session(server.baseUrl, auth, { onTokens: (a) => renewed.push(a) });
    await session.getAccessToken();
    assert.equal(renewed.length, 0, 'a fresh token is not renewed');
    const b = await session.getAccessToken({ forceRefresh: true });
    assert.equal(renewed.length, 1);
    assert.notEqual(session.refreshToken, auth.refreshToken);
    assert.equal(session.accessToken, b.token);
    assert.equal(b.refreshAt, session.refreshAt);
  });

  test('GETs under a team carry X-TaskForge-Seq, lined up with the activity log', async () => {
    const session = await Session.register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const team = (await session.createTeam('Core')).data;
    const empty = await session.listTasks(team.id);
    assert.equal(empty.seq, 0);
    const task = (await session.createTask(team.id, { title: 'One' })).data;
    const updated = await session.updateTask(task.id, { status: 'in_progress' }, { ifMatch: 1 });
    assert.equal(updated.data.version, 2);
    const stale = await session.updateTask(task.id, { status: 'done' }, { ifMatch: 1 }).catch((e) => e);
    assert.ok(stale instanceof ApiError);
    assert.equal(stale.status, 412);
    assert.equal(stale.code, 'precondition_failed');

    const log = await session.listActivity(team.id, { since: 0 });
    assert.deepEqual(
      log.data.items.map((a) => a.type),
      ['task.created', 'task.updated'],
    );
    assert.equal(log.seq, log.data.items.at(-1)!.seq);
    assert.equal((await session.getTask(task.id)).seq, log.seq);
  });

  test('a resource of another team is a 404', async () => {
    const ann = await Session.register(server.baseUrl, { email: email(), password, displayName: 'Ann' });
    const bob = await Session.register(server.baseUrl, { email: email(), password, displayName: 'Bob' });
    const team = (await ann.createTeam('Ann only')).data;
    const e = await bob.getTeam(team.id).catch((err) => err);
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'not_found');
  });
});
