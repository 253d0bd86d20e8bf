// The server's per-socket message rate limit: a message it refuses is answered with
// `rate_limited` and otherwise dropped. The client finds which one (the server answers every
// message once, in order) and sends it again later, so every subscription still gets joined.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { TestServer } from './helpers/server.js';
import { closeAll, connect, newUser, within } from './helpers/util.js';

let server: TestServer;

before(async () => {
  server = await TestServer.start({ env: { TASKFORGE_WS_RATE: '5', TASKFORGE_WS_BURST: '5' } });
});

afterEach(() => closeAll());

after(async () => {
  closeAll();
  await server?.dispose();
});

test('subscribes refused with rate_limited are sent again until every scope is joined', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Busy')).data;
  const tasks = [];
  for (let i = 0; i < 15; i++) tasks.push((await ann.createTask(team.id, { title: `t${i}` })).data);
  // A client paced far above what this server allows (5 per second, bursts of 5).
  const { client, errors } = connect(server.baseUrl, ann, { sendRate: { perSecond: 1000, burst: 1000 } });
  const subs = [client.subscribe({ teamId: team.id }), ...tasks.map((t) => client.subscribe({ taskId: t.id }))];
  await within('every subscription joined', Promise.all(subs.map((s) => s.ready)), 30_000);
  assert.ok(subs.every((s) => s.state === 'active'));
  // Every task room carries presence: the caller is in each.
  for (const s of subs.slice(1)) assert.deepEqual(s.presence!.userIds, [ann.user.id]);
  assert.ok(client.stats.rateLimited > 0, 'the server did refuse some');
  assert.deepEqual(errors, []);
  assert.equal(client.stats.connects, 1, 'refusals did not cost the socket');
});

test('a refused unsubscribe is not sent again over a subscription of the same scope made meanwhile', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Again')).data;
  const tasks = [];
  for (let i = 0; i < 8; i++) tasks.push((await ann.createTask(team.id, { title: `t${i}` })).data);
  const { client } = connect(server.baseUrl, ann, { sendRate: { perSecond: 1000, burst: 1000 } });
  const first = client.subscribe({ teamId: team.id });
  await within('joined', first.ready);
  // Spend the server's burst, so that the unsubscribe right after is refused and sent again later.
  for (const t of tasks) client.subscribe({ taskId: t.id });
  first.unsubscribe();
  await new Promise((r) => setTimeout(r, 400)); // the server's bucket refills a little
  const got: string[] = [];
  const second = client.subscribe({ teamId: team.id }, { on: { 'task.created': (a) => void got.push(a.data.task.title) } });
  await within('joined again', second.ready, 30_000);
  await new Promise((r) => setTimeout(r, 2500)); // past every resend of a refused message
  await ann.createTask(team.id, { title: 'still live' });
  const deadline = Date.now() + 10_000;
  while (got.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(got, ['still live']);
  assert.ok(client.stats.rateLimited > 0, 'the server did refuse some');
});
