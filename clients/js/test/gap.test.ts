// resume_unavailable: the server cannot replay from the client's `since`, because the log no
// longer holds it (this server keeps activities for 1 second) or because it is ahead of the
// team's latest seq. The client must subscribe without `since`, call onGap so the app refetches,
// then go on live.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { ApiError, type Activity, type GapInfo } from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { TcpProxy, closeAll, connect, newUser, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;

before(async () => {
  server = await TestServer.start({ env: { TASKFORGE_LOG_RETENTION: '1s' } });
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => closeAll());

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

const title = (a: Activity) => (a.type === 'task.created' ? a.data.task.title : a.type);

test('a `since` older than the retained log: onGap, refetch, then live again', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Gaps')).data;
  const clientGaps: GapInfo[] = [];
  const { client } = connect(proxy.baseUrl, ann, { onGap: (g) => clientGaps.push(g) });

  const got: Activity[] = [];
  const gaps: GapInfo[] = [];
  let refetch: Promise<{ titles: string[]; seq: number }> | undefined;
  const sub = client.subscribe(
    { teamId: team.id },
    {
      onActivity: (a) => got.push(a),
      onGap: (g) => {
        gaps.push(g);
        // What an app does: reload the scope's data, lined up by X-TaskForge-Seq.
        refetch = ann.listTasks(team.id).then((r) => ({ titles: r.data.items.map((t) => t.title), seq: r.seq! }));
      },
    },
  );
  await within('subscribed', sub.ready);
  await ann.createTask(team.id, { title: 'before' });
  await waitFor('live delivery', () => got.length === 1);
  const cursor = sub.lastSeq!;

  // The client loses the network; meanwhile three tasks are created and the log moves past them.
  proxy.block();
  await waitFor('client notices', () => client.state === 'reconnecting');
  for (let i = 0; i < 3; i++) await ann.createTask(team.id, { title: `missed-${i}` });
  await waitFor(
    'the log to drop the missed activities',
    async () => {
      try {
        await ann.listActivity(team.id, { since: cursor });
        return false;
      } catch (e) {
        if (e instanceof ApiError && e.status === 410 && e.code === 'resume_unavailable') return true;
        throw e;
      }
    },
    20_000,
  );
  proxy.unblock();

  await waitFor('onGap', () => gaps.length === 1, 20_000);
  const gap = gaps[0]!;
  assert.deepEqual(gap.scope, { teamId: team.id });
  assert.equal(gap.since, cursor);
  assert.ok(gap.seq >= cursor + 3, `gap.seq ${gap.seq} covers the missed writes`);
  assert.deepEqual(clientGaps, gaps, 'the client-wide onGap saw the same');
  assert.equal(client.stats.gaps, 1);
  const snapshot = await within('refetch', refetch!);
  assert.deepEqual(snapshot.titles, ['before', 'missed-0', 'missed-1', 'missed-2']);
  assert.ok(snapshot.seq >= gap.seq);
  // The missed activities are not delivered: the refetch covers them.
  assert.deepEqual(got.map(title), ['before']);

  await ann.createTask(team.id, { title: 'after' });
  await waitFor('live again', () => got.length === 2);
  assert.equal(title(got[1]!), 'after');
  assert.ok(got[1]!.seq > gap.seq);
});

test('a `since` ahead of the team: onGap, then live from the current seq', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Ahead')).data;
  await ann.createTask(team.id, { title: 'one' });
  const { client } = connect(server.baseUrl, ann);
  const got: Activity[] = [];
  const gaps: GapInfo[] = [];
  // E.g. a client that kept its cursor across a server whose database was replaced.
  const sub = client.subscribe(
    { teamId: team.id },
    { onActivity: (a) => got.push(a), onGap: (g) => gaps.push(g) },
    { since: 1000 },
  );
  const info = await within('subscribed', sub.ready);
  assert.equal(info.since, null, 'joined again without since');
  assert.equal(info.seq, 1);
  assert.deepEqual(gaps.map((g) => [g.since, g.seq]), [[1000, 1]]);
  await ann.createTask(team.id, { title: 'two' });
  await waitFor('live', () => got.length === 1);
  assert.equal(title(got[0]!), 'two');
  assert.equal(got[0]!.seq, 2);
});

test('a `since` the log still holds resumes without a gap', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Fresh')).data;
  await ann.createTask(team.id, { title: 'one' });
  await ann.createTask(team.id, { title: 'two' });
  const { client } = connect(server.baseUrl, ann);
  const got: Activity[] = [];
  const gaps: GapInfo[] = [];
  // Subscribed right away: the two activities are still in the (1 s) log.
  const sub = client.subscribe(
    { teamId: team.id },
    { onActivity: (a) => got.push(a), onGap: (g) => gaps.push(g) },
    { since: 0 },
  );
  const info = await within('subscribed', sub.ready);
  if (gaps.length === 0) {
    assert.equal(info.replayed, 2);
    assert.deepEqual(got.map(title), ['one', 'two']);
  } else {
    // A slow machine let the log drop them first: then it must be reported as a gap.
    assert.equal(gaps[0]!.since, 0);
  }
});
