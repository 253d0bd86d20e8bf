// Smoke test of server.js: `node smoke.mjs`, and again with REDIS_URL set to also check two
// instances sharing one seq through Redis. Exits non-zero on any failure, within 30 s.
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import jwt from 'jsonwebtoken';
import { io as connect } from 'socket.io-client';
import WebSocket from 'ws';

const SERVER = fileURLToPath(new URL('./server.js', import.meta.url));
const SECRET = randomBytes(32).toString('hex');
const REDIS_URL = process.env.REDIS_URL;
const children = new Set();
const sockets = new Set();

const overall = setTimeout(() => fail(new Error('timed out after 30 s')), 30_000);

function token(claims = {}, secret = SECRET) {
  return jwt.sign({ sub: randomUUID(), ...claims }, secret, {
    algorithm: 'HS256', issuer: 'taskforge', expiresIn: '1h', notBefore: 0,
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(what, cond, ms = 5000) {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// Starts server.js and resolves with its base URL once it printed its ready line.
async function start(env) {
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, PORT: '0', JWT_SECRET: SECRET, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => (out += d));
  await waitFor('the ready line', () => /listening on (http:\/\/[^ ]*)/.test(out) || child.exitCode !== null);
  const m = /^socketio-peer listening on (http:\/\/127\.0\.0\.1:\d+)\n$/.exec(out);
  assert.ok(m, `unexpected stdout: ${JSON.stringify(out)}`);
  return { child, url: m[1] };
}

async function stop({ child }) {
  if (child.exitCode === null) {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
  assert.equal(child.exitCode, 0, 'server exits with 0 on SIGTERM');
}

// A socket.io-client socket that keeps every event it gets.
// opts: { auth } or { query }, the two places a token may come in.
async function client(url, opts) {
  const s = connect(url, { transports: ['websocket'], reconnection: false, forceNew: true, ...opts });
  sockets.add(s);
  s.got = [];
  s.onAny((event, payload) => s.got.push({ event, payload }));
  const [err] = await Promise.race([once(s, 'connect').then(() => [null]), once(s, 'connect_error')]);
  return { s, err };
}

async function subscribe(s, teamId) {
  s.emit('subscribe', { teamId });
  const [ack] = await once(s, 'subscribed');
  assert.deepEqual(ack, { teamId, seq: 0 });
}

const activities = (s) => s.got.filter((e) => e.event === 'activity').map((e) => e.payload);

// body: an object sent as JSON, or a string sent as it is.
async function post(url, teamId, body, auth = token()) {
  const res = await fetch(`${url}/api/v1/teams/${teamId}/tasks`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(auth && { authorization: `Bearer ${auth}` }) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
}

// The exchange a client speaking Engine.IO v4 / Socket.IO v5 frames directly goes through.
async function rawClient(url, teamId) {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  sockets.add(ws);
  const frames = [];
  ws.on('message', (data, isBinary) => {
    assert.equal(isBinary, false, 'text frames only');
    const text = data.toString();
    if (text === '2') ws.send('3'); // answer the server's ping
    else frames.push(text);
  });
  const next = async () => {
    await waitFor('a frame', () => frames.length > 0);
    return frames.shift();
  };
  await once(ws, 'open');
  const open = await next();
  assert.match(open, /^0\{"sid":"[^"]+","upgrades":\[\],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000\}$/);
  ws.send(`40${JSON.stringify({ token: token() })}`);
  const connected = await next();
  assert.match(connected, /^40\{"sid":"[^"]+"\}$/);
  ws.send(`42${JSON.stringify(['subscribe', { teamId }])}`);
  assert.equal(await next(), `42["subscribed",{"teamId":"${teamId}","seq":0}]`);
  return { ws, frames, open, connected };
}

async function main() {
  const bare = spawn(process.execPath, [SERVER], { env: { ...process.env, JWT_SECRET: '' }, stdio: 'ignore' });
  children.add(bare);
  const [code] = await once(bare, 'exit');
  assert.equal(code, 2, 'exit 2 without JWT_SECRET');

  const env = REDIS_URL ? { REDIS_URL } : { REDIS_URL: '' };
  const a = await start(env);
  const team = randomUUID();
  const otherTeam = randomUUID();

  const health = await fetch(`${a.url}/healthz`);
  assert.equal(health.status, 200);
  assert.equal(await health.text(), 'ok');
  assert.equal((await fetch(`${a.url}/nope`)).status, 404);

  const [c1, c2, c3] = await Promise.all([1, 2, 3].map(() => client(a.url, { auth: { token: token() } })));
  for (const c of [c1, c2, c3]) assert.equal(c.err, null, `connects: ${c.err?.message}`);
  await Promise.all([subscribe(c1.s, team), subscribe(c2.s, team), subscribe(c3.s, otherTeam)]);
  const raw = await rawClient(a.url, team);

  const bad = await client(a.url, { auth: { token: token({}, 'not-the-secret') } });
  assert.equal(bad.err?.message, 'unauthorized', 'bad token refused at connect');
  const expired = await client(a.url, { auth: { token: jwt.sign({ sub: randomUUID(), exp: 1 }, SECRET, { issuer: 'taskforge' }) } });
  assert.equal(expired.err?.message, 'unauthorized', 'expired token refused');
  const viaQuery = await client(a.url, { query: { token: token() } });
  assert.equal(viaQuery.err, null, 'token in the query string accepted');

  c1.s.emit('subscribe', { teamId: 'not-a-uuid' });
  assert.deepEqual((await once(c1.s, 'failed'))[0], { code: 'bad_request' });

  const titles = ['smoke 1', 'smoke 2', 'smoke 3'];
  for (const title of titles) {
    const res = await post(a.url, team, { title });
    assert.equal(res.status, 201, res.body);
    assert.equal(res.type, 'application/json');
    const task = JSON.parse(res.body);
    assert.equal(task.title, title);
    assert.equal(task.teamId, team);
  }
  for (const c of [c1, c2]) {
    await waitFor('3 activities', () => activities(c.s).length >= 3);
    const got = activities(c.s);
    assert.deepEqual(got.map((x) => x.seq), [1, 2, 3]);
    assert.deepEqual(got.map((x) => x.data.task.title), titles);
    assert.deepEqual(Object.keys(got[0]), ['id', 'v', 'type', 'data', 'teamId', 'actorUserId', 'ts', 'seq', 'boardId', 'taskId']);
  }
  await waitFor('3 raw frames', () => raw.frames.length >= 3);
  raw.frames.forEach((f, i) => {
    assert.ok(f.startsWith('42["activity",{"id":"'), f);
    assert.ok(f.indexOf(`"seq":${i + 1},`) > f.indexOf('"data":'), 'seq after data');
  });

  assert.equal((await post(a.url, team, { title: 'x' }, null)).status, 401, 'POST without a token');
  assert.equal((await post(a.url, team, '{"title":')).status, 400, 'bad JSON');
  assert.equal((await post(a.url, team, {})).status, 400, 'no title');
  assert.equal((await post(a.url, team, { title: 'x'.repeat(70_000) })).status, 413);

  if (REDIS_URL) {
    const b = await start({ REDIS_URL });
    const shared = randomUUID();
    const onA = await client(a.url, { auth: { token: token() } });
    const onB = await client(b.url, { auth: { token: token() } });
    await Promise.all([subscribe(onA.s, shared), subscribe(onB.s, shared)]);
    for (const [i, srv] of [a, b, a].entries()) {
      assert.equal((await post(srv.url, shared, { title: `shared ${i + 1}` })).status, 201);
    }
    for (const c of [onA, onB]) {
      await waitFor('3 shared activities', () => activities(c.s).length >= 3);
      // Every activity with its seq, but in any order: the adapter does not order deliveries
      // across instances (a local emit can overtake one still in Redis), which is what the
      // benchmark counts as out of order.
      const got = activities(c.s).map((x) => [x.seq, x.data.task.title]).sort((x, y) => x[0] - y[0]);
      assert.deepEqual(got, [[1, 'shared 1'], [2, 'shared 2'], [3, 'shared 3']]);
    }
    await stop(b);

    // Leave no seq keys behind in a Redis that may be shared.
    const { createClient } = await import('redis');
    const r = await createClient({ url: REDIS_URL }).connect();
    await r.del([team, otherTeam, shared].map((t) => 'taskforge-peer:seq:' + t));
    await r.quit();
  }

  await sleep(200); // time for a stray delivery to the other team to show up
  assert.deepEqual(c3.s.got.filter((e) => e.event !== 'subscribed'), [], 'other team got nothing');

  console.log('open packet:', JSON.stringify(raw.open));
  console.log('activity frame:', JSON.stringify(raw.frames[0]));
  await stop(a);
  console.log(`smoke ok (${REDIS_URL ? 'two instances over Redis' : 'one instance, no Redis'})`);
}

function cleanup() {
  for (const s of sockets) (s.disconnect ?? s.terminate).call(s);
  for (const c of children) c.kill('SIGKILL');
}

function fail(err) {
  console.error('smoke FAILED:', err);
  cleanup();
  process.exit(1);
}

process.on('SIGINT', () => fail(new Error('interrupted')));
main().then(() => {
  clearTimeout(overall);
  cleanup();
  process.exit(0);
}, fail);
