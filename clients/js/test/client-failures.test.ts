// The realtime client's own failure modes and its listener API, each against a real server
// except where the server cannot be made to answer as needed on demand (`unavailable`, which it
// sends only when a team is too busy to join or its store fails: a scripted peer plays that part).

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';

import {
  ApiError,
  RealtimeClient,
  RealtimeError,
  type Activity,
  type ActivityOf,
  type ClientFrame,
  type GapInfo,
  type StateChange,
  type WebSocketConstructor,
} from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { TcpProxy, closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;

before(async () => {
  server = await TestServer.start();
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => {
  closeAll();
  proxy.dropAfter(null);
});

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

/** A `ws` WebSocket that records every frame the client sends. */
function recordingSocket(sent: ClientFrame[]): WebSocketConstructor {
  class Recording extends WebSocket {
    override send(data: string): void {
      sent.push(JSON.parse(data) as ClientFrame);
      super.send(data);
    }
  }
  return Recording as unknown as WebSocketConstructor;
}

const created = (a: Activity) => (a as ActivityOf<'task.created'>).data.task.title;

test('subscriptions of one scope share one room, each with its own listeners', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Shared')).data;
  const sent: ClientFrame[] = [];
  const { client } = connect(server.baseUrl, ann, { WebSocket: recordingSocket(sent) });
  const first = client.subscribe({ teamId: team.id });
  const second = client.subscribe({ teamId: team.id });
  const firstTitles: string[] = [];
  const secondAll: Activity[] = [];
  first.on('task.created', (a) => void firstTitles.push(a.data.task.title));
  const off = second.on('activity', (a) => void secondAll.push(a));
  await within('both joined', Promise.all([first.ready, second.ready]));
  assert.equal(sent.filter((f) => f.type === 'subscribe').length, 1, 'one subscribe for both');

  await ann.createTask(team.id, { title: 'one' });
  await waitFor('both got it', () => firstTitles.length === 1 && secondAll.length === 1);
  off();
  await ann.createTask(team.id, { title: 'two' });
  await waitFor('first got two', () => firstTitles.length === 2);
  await sleep(100);
  assert.deepEqual(secondAll.map(created), ['one'], 'a removed listener hears nothing more');

  // Releasing one handle keeps the room for the other.
  const secondTitles: string[] = [];
  second.on('task.created', (a) => void secondTitles.push(a.data.task.title));
  first.unsubscribe();
  assert.equal(first.state, 'ended');
  await ann.createTask(team.id, { title: 'three' });
  await waitFor('second got three', () => secondTitles.length === 1);
  assert.deepEqual(firstTitles, ['one', 'two']);
  assert.equal(sent.filter((f) => f.type === 'unsubscribe').length, 0, 'the room is still in use');
  second.unsubscribe();
  await waitFor('the room is left', () => sent.filter((f) => f.type === 'unsubscribe').length === 1);
});

test("a subscription joining a live room with an older since is served from the room's history", { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('History')).data;
  const sent: ClientFrame[] = [];
  const { client } = connect(server.baseUrl, ann, { WebSocket: recordingSocket(sent) });
  const live: Activity[] = [];
  const first = client.subscribe({ teamId: team.id }, { onActivity: (a) => void live.push(a) });
  await within('joined', first.ready);
  for (const title of ['a', 'b', 'c']) await ann.createTask(team.id, { title });
  await waitFor('three live', () => live.length === 3);

  const late: Activity[] = [];
  const since = live[0]!.seq;
  const second = client.subscribe({ teamId: team.id }, { onActivity: (a) => void late.push(a) }, { since });
  const fromNow: Activity[] = [];
  const third = client.subscribe({ teamId: team.id }, { onActivity: (a) => void fromNow.push(a) });
  const info = await within('late join', second.ready);
  await within('third join', third.ready);
  assert.equal(info.replayed, 2);
  assert.deepEqual(late.map(created), ['b', 'c'], 'exactly what came after its since');
  assert.deepEqual(fromNow, [], 'no since: nothing from before');
  assert.equal(sent.filter((f) => f.type === 'subscribe').length, 1, 'served without asking the server');
  await ann.createTask(team.id, { title: 'd' });
  await waitFor('everyone live', () => late.length === 3 && fromNow.length === 1 && live.length === 4);
});

test("a subscription joining with a since older than the room's history gets a gap, then goes on live", { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Long history')).data;
  const { client } = connect(server.baseUrl, ann);
  const live: Activity[] = [];
  const first = client.subscribe({ teamId: team.id }, { onActivity: (a) => void live.push(a) });
  await within('joined', first.ready);
  const count = 230; // more than the 200 a room keeps
  for (let i = 0; i < count; i += 10) {
    await Promise.all(Array.from({ length: 10 }, (_, j) => ann.createTask(team.id, { title: `t${i + j}` })));
  }
  await waitFor('all live', () => live.length === count, 30_000);
  const late: Activity[] = [];
  const gaps: GapInfo[] = [];
  const second = client.subscribe(
    { teamId: team.id },
    { onActivity: (a) => void late.push(a), onGap: (g) => void gaps.push(g) },
    { since: live[0]!.seq },
  );
  await within('late join', second.ready);
  assert.deepEqual(gaps, [{ scope: { teamId: team.id }, since: live[0]!.seq, seq: live.at(-1)!.seq, message: gaps[0]?.message }]);
  assert.deepEqual(late, [], 'nothing partial: the app refetches');
  await ann.createTask(team.id, { title: 'after' });
  await waitFor('live after the gap', () => late.length === 1);
});

test('ready settles: rejected with `closed` when the client closes first, `unauthorized` when the credentials are gone', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Ready')).data;
  const idle = new RealtimeClient({
    url: server.baseUrl,
    auth: ann,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    onError: () => {},
  });
  const pending = idle.subscribe({ teamId: team.id });
  idle.close();
  const closed = await within('ready after close', pending.ready.catch((e: unknown) => e), 2000);
  assert.ok(closed instanceof RealtimeError && closed.code === 'closed', String(closed));

  const failures: unknown[] = [];
  const revoked = new RealtimeClient({
    url: server.baseUrl,
    auth: { getAccessToken: async () => Promise.reject(new ApiError(401, { code: 'unauthorized' })) },
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    onAuthFailure: (e) => void failures.push(e),
    onError: () => {},
  });
  const never = revoked.subscribe({ teamId: team.id });
  revoked.connect();
  const refused = await within('ready after auth failure', never.ready.catch((e: unknown) => e), 5000);
  assert.ok(refused instanceof RealtimeError && refused.code === 'unauthorized', String(refused));
  assert.equal(failures.length, 1);
  assert.equal(revoked.state, 'closed');
});

test('a subscription made on a closed client says so in ready, and joins on the next connect', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Closed')).data;
  const { client } = connect(server.baseUrl, ann);
  await waitFor('open', () => client.state === 'open');
  client.close();
  const sub = client.subscribe({ teamId: team.id });
  const why = await within('ready after close', sub.ready.catch((e: unknown) => e), 2000);
  assert.ok(why instanceof RealtimeError && why.code === 'closed', String(why));
  const joined = new Promise<void>((resolve) => sub.on('subscribed', () => resolve()));
  client.connect();
  await within('joined after connect', joined);
  assert.equal(sub.state, 'active');
});

test('scope ids must be UUIDs; upper case is the same scope as lower case', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Case')).data;
  const { client } = connect(server.baseUrl, ann);
  assert.throws(() => client.subscribe({ teamId: 'not-a-uuid' }), /teamId must be a UUID/);
  const upper = client.subscribe({ teamId: team.id.toUpperCase() });
  assert.equal(upper.key, `team:${team.id}`);
  await within('joined with the upper-case id', upper.ready);
});

test('a live collection says so when the client gives up on the credentials', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Revoked')).data;
  let revoked = false;
  const tokens = {
    getAccessToken: async (opts?: { forceRefresh?: boolean }) => {
      if (revoked) throw new ApiError(401, { code: 'unauthorized' });
      return ann.getAccessToken(opts);
    },
  };
  const { client } = connect(server.baseUrl, tokens, { session: ann, onAuthFailure: () => {} });
  const tasks = client.liveTasks({ teamId: team.id, boardId: team.defaultBoardId });
  await within('live', tasks.ready);
  revoked = true;
  client.reconnect();
  await waitFor('status error', () => tasks.getSnapshot().status === 'error');
  const error = tasks.getSnapshot().error;
  assert.ok(error instanceof RealtimeError && error.code === 'unauthorized', String(error));
  tasks.close();
});

test('handlers may be async: their rejections go to onError, never unhandled', { timeout: 30_000 }, async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => void unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  try {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Async')).data;
    const { client, errors } = connect(server.baseUrl, ann);
    const sub = client.subscribe(
      { teamId: team.id },
      {
        onActivity: async () => {
          throw new Error('handler boom');
        },
      },
    );
    sub.on('task.created', async () => {
      await sleep(1);
      throw new Error('listener boom');
    });
    client.onStateChange(async () => {
      throw new Error('state boom');
    });
    await within('joined', sub.ready);
    await ann.createTask(team.id, { title: 'x' });
    await waitFor('both rejections reported', () => errors.filter((e) => String(e).includes('boom')).length >= 2);
    client.reconnect();
    await waitFor('the state listener rejection reported', () => errors.some((e) => String(e).includes('state boom')));
    await sleep(50);
    assert.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test('state listeners come and go at any time', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const { client } = connect(server.baseUrl, ann);
  const a: StateChange[] = [];
  const b: StateChange[] = [];
  client.onStateChange((s) => void a.push(s));
  const offB = client.onStateChange((s) => void b.push(s));
  await waitFor('open', () => client.state === 'open');
  client.reconnect();
  await waitFor('open again', () => a.filter((s) => s.state === 'open').length >= 1 && client.state === 'open');
  offB();
  const seenByB = b.length;
  client.reconnect();
  await waitFor('open a third time', () => a.filter((s) => s.state === 'open').length >= 2);
  assert.equal(b.length, seenByB, 'a removed listener hears nothing more');
  assert.ok(a.some((s) => s.state === 'reconnecting'));
});

test('a server that accepts and drops at once is retried ever more slowly', { timeout: 60_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  // Long enough for the socket to authenticate, so the old reset at `authenticated` would fire.
  proxy.dropAfter(400);
  const { client, states } = connect(proxy.baseUrl, ann, {
    // The socket's own backoff (`auto` would move to the event stream after three such drops).
    transport: 'websocket',
    backoff: { minMs: 20, maxMs: 5000 },
    random: () => 0, // the delay is exactly half the base: the sequence is deterministic
  });
  await waitFor(
    'five drops after authenticating',
    () => client.stats.connects >= 3 && states.filter((s) => s.state === 'reconnecting').length >= 5,
    40_000,
    () => ({ connects: client.stats.connects, states }),
  );
  proxy.dropAfter(null);
  const delays = states.filter((s) => s.state === 'reconnecting').map((s) => s.delayMs!);
  assert.deepEqual(delays.slice(0, 5), [10, 20, 40, 80, 160], `delays ${delays.join(', ')}`);
});

test('a subscribe refused as `unavailable` is retried with growing delays', { timeout: 30_000 }, async () => {
  const peer = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => peer.once('listening', () => r()));
  const port = (peer.address() as { port: number }).port;
  const subscribes: number[] = [];
  peer.on('connection', (socket) => {
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data)) as ClientFrame;
      if (frame.type === 'auth') {
        socket.send(JSON.stringify({ type: 'authenticated', expiresAt: new Date(Date.now() + 3600_000).toISOString() }));
      } else if (frame.type === 'subscribe' && 'teamId' in frame) {
        subscribes.push(Date.now());
        socket.send(JSON.stringify({ type: 'error', code: 'unavailable', message: 'busy', teamId: frame.teamId }));
      }
    });
  });
  try {
    const { client } = connect(`http://127.0.0.1:${port}`, 'a-token', {
      backoff: { minMs: 25, maxMs: 5000 },
      random: () => 0,
    });
    client.subscribe({ teamId: '00000000-0000-4000-8000-000000000001' });
    await waitFor('five subscribes', () => subscribes.length >= 5, 20_000);
    const gaps = subscribes.slice(1, 5).map((t, i) => t - subscribes[i]!);
    // 25, 50, 100, 200 ms by the schedule; the old fixed 500 ms pause gives a ratio near 1.
    assert.ok(gaps[3]! >= 3 * gaps[0]!, `intervals ${gaps.join(', ')} ms grow`);
  } finally {
    closeAll();
    await new Promise<void>((r) => peer.close(() => r()));
  }
});

test('a token source that never answers does not wedge the reconnects', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  let calls = 0;
  const { client, errors } = connect(server.baseUrl, {
    getAccessToken: (opts) => (calls++ === 0 ? new Promise(() => {}) : ann.getAccessToken(opts)),
  }, { authTimeoutMs: 300 });
  await waitFor('open after the stuck token', () => client.state === 'open', 10_000);
  assert.ok(errors.some((e) => e instanceof RealtimeError && e.code === 'timeout'), 'the stuck call was reported');
});

test('the client-wide de-duplication remembers a bounded window', { timeout: 120_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Many')).data;
  const { client } = connect(server.baseUrl, ann);
  const got: Activity[] = [];
  const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => void got.push(a) });
  await within('joined', sub.ready);
  const count = 700;
  for (let i = 0; i < count; i += 20) {
    await Promise.all(Array.from({ length: Math.min(20, count - i) }, (_, j) => ann.createTask(team.id, { title: `t${i + j}` })));
  }
  await waitFor('all delivered', () => got.length === count, 60_000);
  assert.ok(client.stats.remembered <= 512, `remembers ${client.stats.remembered} seqs`);
  // Still de-duplicates what is recent: a second room's replay repeats the last activities.
  const board = client.subscribe({ boardId: team.defaultBoardId }, {}, { since: got[count - 11]!.seq });
  await within('board joined', board.ready);
  assert.equal(client.stats.duplicates, 10);
});

test('rt.liveTasks / liveComments / liveMembers load with the client session and stay live', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Live')).data;
  const task = (await ann.createTask(team.id, { title: 'first' })).data;
  const { client } = connect(server.baseUrl, ann);
  const tasks = client.liveTasks({ teamId: team.id, boardId: team.defaultBoardId });
  const comments = client.liveComments({ taskId: task.id });
  const members = client.liveMembers({ teamId: team.id });
  await within('loaded', Promise.all([tasks.ready, comments.ready, members.ready]));
  assert.deepEqual(tasks.getSnapshot().items.map((t) => t.title), ['first']);
  assert.deepEqual(members.getSnapshot().items.map((m) => m.user.id), [ann.user.id]);
  await ann.createComment(task.id, 'hello');
  await ann.createTask(team.id, { title: 'second' });
  await waitFor('live', () => comments.getSnapshot().items.length === 1 && tasks.getSnapshot().items.length === 2);
  for (const c of [tasks, comments, members]) c.close();
  assert.equal(client.subscriptions.length, 0, 'every room released');

  const { client: bare } = connect(server.baseUrl, 'a-fixed-token');
  assert.throws(() => bare.liveTasks({ teamId: team.id }), /Session/);
});
