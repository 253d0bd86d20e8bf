// Reconnects in the middle of a stream of writes: the server process crashes (SIGKILL) or shuts
// down (SIGTERM: close 1001) and comes back on the same port and database, or the network between
// client and server is cut. Every subscription must receive every activity exactly once, in seq
// order: the list is checked against the tasks the HTTP writes created.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import type { Activity, SubscribedInfo, Task } from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { writeTasks } from './helpers/stream.js';
import { TcpProxy, closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;

before(async () => {
  server = await TestServer.start();
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => closeAll());

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

type Created = Extract<Activity, { type: 'task.created' }>;

/** Asserts that `got` is exactly the task.created activities of `tasks`, in seq order. */
function assertExactlyOnce(got: Activity[], tasks: Task[], label: string): void {
  assert.ok(got.every((a) => a.type === 'task.created'), `${label}: only task.created`);
  assert.deepEqual(
    got.map((a) => (a as Created).data.task.id),
    tasks.map((t) => t.id),
    `${label}: every task once, in order`,
  );
  const seqs = got.map((a) => a.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i]! > seqs[i - 1]!, `${label}: seq increases at ${i}`);
}

describe('server restart in the middle of a stream', { timeout: 120_000 }, () => {
  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    test(`${signal}: every activity arrives exactly once, in seq order`, async (t) => {
      const ann = await newUser(server, 'Ann');
      const team = (await ann.createTeam(`Restart ${signal}`)).data;
      // Through the proxy, so that the client can be kept away for a while after the restart and
      // must get part of the stream as a replay.
      const { client, states, errors } = connect(proxy.baseUrl, ann, { backoff: { minMs: 50, maxMs: 250 } });
      const teamGot: Activity[] = [];
      const boardGot: Activity[] = [];
      const joins: SubscribedInfo[] = [];
      const t1 = client.subscribe({ teamId: team.id }, { onActivity: (a) => teamGot.push(a), onSubscribed: (i) => joins.push(i) });
      const t2 = client.subscribe({ boardId: team.defaultBoardId }, { onActivity: (a) => boardGot.push(a), onSubscribed: (i) => joins.push(i) });
      await within('subscribed', Promise.all([t1.ready, t2.ready]));

      const count = 60;
      const stats = { retries: 0 };
      let restart: Promise<void> | undefined;
      const tasks = await writeTasks(ann, team.id, count, {
        pauseMs: 20,
        stats,
        before: (i) => {
          if (i === 20) {
            // The server goes down while the writes go on (some fail and are retried); the
            // client's socket drops with it and its reconnects are refused until write 40. The
            // writes after that race the reconnect: replay and live frames meet.
            proxy.block({ cut: false });
            restart = server.restart({ signal, downMs: 200 });
          }
          if (i === 40) proxy.unblock();
        },
      });
      await within('restart', restart!, 30_000);
      assert.equal(tasks.length, count);

      await waitFor('all deliveries', () => teamGot.length >= count && boardGot.length >= count, 30_000, () => ({
        team: teamGot.length,
        board: boardGot.length,
        states: states.map((s) => `${s.state}:${s.code ?? ''}`),
      }));
      await sleep(200); // anything extra (a duplicate) would show up now
      assertExactlyOnce(teamGot, tasks, 'team');
      assertExactlyOnce(boardGot, tasks, 'board');

      const resumes = joins.filter((j) => j.resumed);
      t.diagnostic(
        `writes retried: ${stats.retries}; resumes: ${resumes.map((j) => `since ${j.since} -> ${j.seq}, replayed ${j.replayed}`).join('; ')}`,
      );
      assert.ok(stats.retries > 0, 'the restart happened in the middle of the writes');
      assert.ok(client.stats.connects >= 2, 'the client reconnected');
      assert.ok(resumes.length >= 2 && resumes.every((j) => j.since !== null), 'both scopes resumed with since');
      assert.ok(resumes.every((j) => j.replayed > 0), 'what was written while away came as a replay');
      const drops = states.filter((s) => s.state === 'reconnecting' && s.code !== undefined);
      if (signal === 'SIGTERM') assert.ok(drops.some((s) => s.code === 1001), 'a graceful shutdown closes with 1001');
      assert.deepEqual(errors, []);
    });
  }
});

describe('network cuts in the middle of a stream', { timeout: 120_000 }, () => {
  test('cuts and an outage: every activity exactly once, in seq order, for team, board and task scopes', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Cuts')).data;
    const watched = (await ann.createTask(team.id, { title: 'watched' })).data;
    // The client goes through the proxy; the writer talks to the server directly.
    const { client, errors } = connect(proxy.baseUrl, ann);
    const teamGot: Activity[] = [];
    const boardGot: Activity[] = [];
    const taskGot: Activity[] = [];
    const subs = [
      client.subscribe({ teamId: team.id }, { onActivity: (a) => teamGot.push(a) }),
      client.subscribe({ boardId: team.defaultBoardId }, { onActivity: (a) => boardGot.push(a) }),
      client.subscribe({ taskId: watched.id }, { onActivity: (a) => taskGot.push(a) }),
    ];
    await within('subscribed', Promise.all(subs.map((s) => s.ready)));

    const count = 50;
    let comments = 0;
    const tasks = await writeTasks(ann, team.id, count, {
      pauseMs: 10,
      before: async (i) => {
        if (i === 10 || i === 20 || i === 30) proxy.cut();
        if (i === 35) proxy.block(); // an outage: writes go on while the client cannot connect
        if (i === 45) proxy.unblock();
        if (i % 5 === 0) {
          await ann.createComment(watched.id, `c${i}`);
          comments++;
        }
      },
    });
    await waitFor(
      'all deliveries',
      () => teamGot.length >= count && boardGot.length >= count && taskGot.length >= comments,
      30_000,
      () => ({ team: teamGot.length, board: boardGot.length, task: taskGot.length, comments }),
    );
    await sleep(200);
    assertExactlyOnce(teamGot, tasks, 'team');
    assertExactlyOnce(boardGot, tasks, 'board');
    assert.deepEqual(
      taskGot.map((a) => (a.type === 'comment.created' ? a.data.comment.body : a.type)),
      Array.from({ length: comments }, (_, k) => `c${k * 5}`),
    );
    assert.ok(client.stats.connects >= 4, `reconnected after each cut (${client.stats.connects})`);
    assert.deepEqual(errors, []);
  });

  test('backoff: delays grow with failed attempts, are jittered, and stay within min/max', async () => {
    const ann = await newUser(server, 'Ann');
    proxy.block();
    try {
      const { client, states } = connect(proxy.baseUrl, ann, { backoff: { minMs: 20, maxMs: 200 } });
      await waitFor('several attempts', () => states.filter((s) => s.delayMs !== undefined).length >= 8, 15_000);
      client.close();
      const delays = states.filter((s) => s.delayMs !== undefined).map((s) => s.delayMs!);
      // Attempt n waits between half and all of min(max, min * 2^n).
      delays.forEach((d, n) => {
        const base = Math.min(200, 20 * 2 ** n);
        assert.ok(d >= base / 2 && d <= base, `delay ${n} = ${d} not in [${base / 2}, ${base}]`);
      });
      assert.ok(new Set(delays.slice(4)).size > 1, 'jittered');
    } finally {
      proxy.unblock();
    }
  });

  test('a half-open connection is detected by the heartbeat and resumed', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Half-open')).data;
    const { client, states } = connect(proxy.baseUrl, ann, { heartbeatIntervalMs: 300, heartbeatTimeoutMs: 300 });
    const got: Activity[] = [];
    await within('subscribed', client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) }).ready);
    const first = await writeTasks(ann, team.id, 3, { prefix: 'a' });
    await waitFor('live', () => got.length === 3);
    proxy.freeze(); // nothing passes any more, and nothing closes
    const second = await writeTasks(ann, team.id, 3, { prefix: 'b' });
    await waitFor('reconnected and replayed', () => got.length === 6, 10_000, () => states);
    assertExactlyOnce(got, [...first, ...second], 'team');
    assert.ok(states.some((s) => s.reason === 'no answer to ping'));
  });
});
