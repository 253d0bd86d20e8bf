// The event-stream transport (`/realtime/sse`) and the transport choice, against a live server:
// forced SSE and the fallback of `auto` when sockets cannot open or keep dropping; subscribing and
// leaving (each a new stream) while another user writes, with every activity once and in seq
// order; refusals (401, 403) as the socket reports them; a restart in the middle of a stream;
// presence state between two users on either transport; and the stream format itself.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import {
  EventStreamParser,
  FetchEventSource,
  RealtimeError,
  formatEventId,
  parseEventId,
  type Activity,
  type EventSourceConstructor,
  type EventSourceLike,
  type PresenceViewer,
  type Task,
  type WebSocketConstructor,
  type WebSocketLike,
} from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { writeTasks } from './helpers/stream.js';
import { TcpProxy, closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;

before(async () => {
  server = await TestServer.start({ env: { TASKFORGE_PRESENCE_STATE_TTL: '2s' } });
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => {
  closeAll();
  proxy.refuseUpgrades(false);
});

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

type Created = Extract<Activity, { type: 'task.created' }>;

/** Asserts that `got` is exactly the task.created activities of `tasks`, in seq order. */
function assertExactlyOnce(got: Activity[], tasks: Task[], label: string): void {
  const created = got.filter((a) => a.type === 'task.created') as Created[];
  assert.deepEqual(
    created.map((a) => a.data.task.id),
    tasks.map((t) => t.id),
    `${label}: every task once, in order`,
  );
  const seqs = got.map((a) => a.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i]! > seqs[i - 1]!, `${label}: seq increases at ${i}`);
}

/** A WebSocket class that must never be used. */
function noSocket(made: string[]): WebSocketConstructor {
  return class {
    constructor(url: string) {
      made.push(url);
      throw new Error('no sockets here');
    }
  } as unknown as WebSocketConstructor;
}

/** Sockets that never open: each fails (close 1006) a moment after it is made. */
function failingSockets(made: string[]): WebSocketConstructor {
  return class implements WebSocketLike {
    readyState = 0;
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: unknown) => void) | null = null;
    onclose: ((ev: { code: number; reason: string }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;
    constructor(url: string) {
      made.push(url);
      setTimeout(() => {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: '' });
      }, 5);
    }
    send(): void {}
    close(): void {
      this.readyState = 3;
    }
  } as unknown as WebSocketConstructor;
}

/** Sockets that open and drop a moment later (a proxy that cuts WebSockets). */
function dyingSockets(made: string[]): WebSocketConstructor {
  return class implements WebSocketLike {
    readyState = 0;
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: unknown) => void) | null = null;
    onclose: ((ev: { code: number; reason: string }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;
    constructor(url: string) {
      made.push(url);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 5);
      setTimeout(() => {
        this.readyState = 3;
        this.onclose?.({ code: 1006, reason: '' });
      }, 40);
    }
    send(): void {}
    close(): void {
      this.readyState = 3;
    }
  } as unknown as WebSocketConstructor;
}

/**
 * An EventSource as browsers have it: the token in the URL, and an error that does not say why
 * (built on the package's reader, with the status hidden).
 */
function browserLikeEventSource(urls: string[]): EventSourceConstructor {
  return class implements EventSourceLike {
    private readonly inner: FetchEventSource;
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: { data: string; lastEventId?: string }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;
    constructor(url: string) {
      urls.push(url);
      this.inner = new FetchEventSource(url);
      this.inner.onopen = (ev) => this.onopen?.(ev);
      this.inner.onmessage = (ev) => this.onmessage?.({ data: ev.data, lastEventId: ev.lastEventId });
      this.inner.onerror = () => this.onerror?.({ type: 'error' });
    }
    get readyState(): number {
      return this.inner.readyState;
    }
    close(): void {
      this.inner.close();
    }
  };
}

describe('the event stream format', () => {
  test('events, ids, comments and line ends split anywhere', () => {
    const events: [string, string][] = [];
    const comments: string[] = [];
    const text = '\uFEFFretry: 1000\r\n: keepalive\r\nid: a:1\r\ndata: {"x":1}\r\n\r\ndata: two\rdata: lines\r\rid: a:2,inbox:3\ndata: {}\n\nevent: other\ndata: skipped\n\n: bye\n';
    // Every split point, CR and LF halves included.
    for (let cut = 0; cut <= text.length; cut++) {
      events.length = 0;
      comments.length = 0;
      const q = new EventStreamParser((data, id) => events.push([data, id]), (c) => comments.push(c));
      q.push(text.slice(0, cut));
      q.push(text.slice(cut));
      assert.deepEqual(events, [['{"x":1}', 'a:1'], ['two\nlines', 'a:1'], ['{}', 'a:2,inbox:3']], `cut at ${cut}`);
      assert.deepEqual(comments, ['keepalive', 'bye'], `cut at ${cut}`);
    }
  });

  test('resume points read and write as the server writes them', () => {
    const pos = parseEventId('0190AAAA-0000-7000-8000-000000000001:41,0190aaaa-0000-7000-8000-000000000002:17,inbox:5,junk');
    assert.deepEqual([...pos], [
      ['0190aaaa-0000-7000-8000-000000000001', 41],
      ['0190aaaa-0000-7000-8000-000000000002', 17],
      ['inbox', 5],
    ]);
    assert.equal(formatEventId(pos), '0190aaaa-0000-7000-8000-000000000001:41,0190aaaa-0000-7000-8000-000000000002:17,inbox:5');
  });
});

describe('transport choice', { timeout: 60_000 }, () => {
  test("transport 'sse': no socket is made; team, board and task scopes get their activities once, in order", async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Streamed')).data;
    const watched = (await ann.createTask(team.id, { title: 'Watched' })).data;
    const made: string[] = [];
    const { client, states } = connect(server.baseUrl, ann, { transport: 'sse', WebSocket: noSocket(made) });
    const got = { team: [] as Activity[], board: [] as Activity[], task: [] as Activity[] };
    const subs = [
      client.subscribe({ teamId: team.id }, { onActivity: (a) => got.team.push(a) }),
      client.subscribe({ boardId: team.defaultBoardId }, { onActivity: (a) => got.board.push(a) }),
      client.subscribe({ taskId: watched.id }, { onActivity: (a) => got.task.push(a) }),
    ];
    await within('subscribed', Promise.all(subs.map((s) => s.ready)));
    assert.equal(client.transport, 'sse');
    assert.equal(states.find((s) => s.state === 'open')?.transport, 'sse');

    const tasks = await writeTasks(ann, team.id, 10);
    await ann.updateTask(watched.id, { priority: 'high' });
    await ann.createComment(watched.id, 'on the stream');
    await waitFor('deliveries', () => got.team.length >= 10 && got.board.length >= 11 && got.task.length >= 2, 10_000, () => ({
      team: got.team.length,
      board: got.board.length,
      task: got.task.map((a) => a.type),
    }));
    await sleep(200);
    assertExactlyOnce(got.team, tasks, 'team');
    assertExactlyOnce(got.board.slice(0, 10), tasks, 'board');
    assert.deepEqual(got.task.map((a) => a.type), ['task.updated', 'comment.created']);
    assert.deepEqual(made, [], 'no WebSocket was made');
    assert.equal(client.stats.connects, 1);
  });

  test("auto: sockets that never open while the server answers HTTP -> the event stream, remembered", async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Fallback')).data;
    const made: string[] = [];
    const { client, states } = connect(server.baseUrl, ann, { WebSocket: failingSockets(made), backoff: { minMs: 20, maxMs: 200 } });
    const got: Activity[] = [];
    const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) });
    await within('subscribed over the stream', sub.ready, 15_000);
    assert.equal(client.transport, 'sse');
    assert.ok(made.length >= 3, `the socket was tried (${made.length} times) before the stream`);
    assert.equal(states.find((s) => s.state === 'open')?.transport, 'sse');
    const tasks = await writeTasks(ann, team.id, 5);
    await waitFor('deliveries', () => got.length >= 5);
    assertExactlyOnce(got, tasks, 'team');
    // Remembered: a reconnect stays on the stream.
    const tried = made.length;
    client.reconnect();
    await waitFor('open again', () => states.filter((s) => s.state === 'open').length >= 2);
    assert.equal(made.length, tried, 'no socket after the fallback');
    assert.equal(client.transport, 'sse');
  });

  test('auto: sockets that open and drop within moments, three in a row -> the event stream', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Dying')).data;
    const made: string[] = [];
    const { client } = connect(server.baseUrl, ann, { WebSocket: dyingSockets(made), backoff: { minMs: 20, maxMs: 200 } });
    const sub = client.subscribe({ teamId: team.id });
    await within('subscribed over the stream', sub.ready, 15_000);
    assert.equal(client.transport, 'sse');
    assert.equal(made.length, 3, 'three sockets dropped, then the stream');
    assert.equal(client.stats.transportSwitches, 1);
  });

  test('auto: a proxy that drops WebSocket upgrades -> the event stream; the socket is probed again and takes over once it opens', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Proxy')).data;
    proxy.refuseUpgrades();
    const { client, states } = connect(proxy.baseUrl, ann, { backoff: { minMs: 20, maxMs: 200 }, probeWebSocketMs: 1500 });
    const got: Activity[] = [];
    const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) });
    await within('subscribed over the stream', sub.ready, 15_000);
    assert.equal(client.transport, 'sse');
    assert.ok(proxy.refusedUpgrades >= 3);
    const first = await writeTasks(ann, team.id, 3, { prefix: 'sse' });
    await waitFor('deliveries over the stream', () => got.length >= 3);

    // The proxy lets sockets through again: the next probe moves the client back to them.
    proxy.refuseUpgrades(false);
    await waitFor('back on the socket', () => client.transport === 'websocket' && states.at(-1)?.state === 'open', 20_000, () => states);
    assert.equal(states.at(-1)?.transport, 'websocket');
    const second = await writeTasks(ann, team.id, 3, { prefix: 'ws' });
    await waitFor('deliveries over the socket', () => got.length >= 6);
    await sleep(200);
    assertExactlyOnce(got, [...first, ...second], 'team across the switch');
  });
});

describe('subscribing and leaving on the event stream', { timeout: 120_000 }, () => {
  test('activities made while streams are replaced arrive once, in order; a late room with since gets exactly what follows it', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Churn')).data;
    const other = (await ann.createTeam('Other team')).data;
    const spare = (await ann.createBoard(team.id, 'Spare')).data;
    const side = (await ann.createTask(team.id, { title: 'Side', boardId: spare.id })).data;

    const { client, errors } = connect(server.baseUrl, ann, { transport: 'sse' });
    const teamGot: Activity[] = [];
    const teamSub = client.subscribe({ teamId: team.id }, { onActivity: (a) => teamGot.push(a) });
    await within('team subscribed', teamSub.ready);

    // Bob's writer, from another session (he never subscribes).
    await ann.addMember(team.id, { email: bob.user.email, role: 'member' });
    const count = 60;
    let late: { seq: number; got: Activity[]; at: number } | null = null;
    const writing = writeTasks(bob, team.id, count, {
      pauseMs: 20,
      before: async (i) => {
        if (i === 30) {
          // A board room joined half-way with the seq of a snapshot read now: it must get
          // exactly the tasks created after that seq (its team is passed on, as collections do).
          const seq = (await ann.listTasks(team.id, { boardId: team.defaultBoardId, limit: 1 })).seq!;
          const lateGot: Activity[] = [];
          late = { seq, got: lateGot, at: i };
          client.subscribe({ boardId: team.defaultBoardId }, { onActivity: (a) => lateGot.push(a) }, { since: seq, teamId: team.id });
        }
      },
    });
    // Meanwhile scopes come and go: each change is a new stream.
    let churned = 0;
    const churn = (async () => {
      while (churned < 12) {
        const a = client.subscribe({ taskId: side.id });
        const b = client.subscribe({ teamId: other.id });
        const c = client.subscribe({ boardId: spare.id });
        await sleep(60);
        a.unsubscribe();
        await sleep(30);
        b.unsubscribe();
        c.unsubscribe();
        await sleep(60);
        churned++;
      }
    })();
    const [tasks] = await Promise.all([writing, churn]);
    await waitFor('every task on the team scope', () => teamGot.length >= count, 20_000, () => ({ got: teamGot.length, streams: client.stats.streams }));
    await sleep(300);
    assertExactlyOnce(teamGot, tasks, 'team');
    assert.ok(client.stats.streams >= 20, `streams were replaced (${client.stats.streams})`);

    assert.ok(late, 'the late room was joined');
    const { seq, got: lateGot } = late as { seq: number; got: Activity[] };
    const seqOf = new Map((teamGot.filter((a) => a.type === 'task.created') as Created[]).map((a) => [a.data.task.id, a.seq]));
    const after = tasks.filter((t) => seqOf.get(t.id)! > seq);
    assert.ok(after.length > 0 && after.length < tasks.length, `the late room came half-way (${after.length} of ${tasks.length} after it)`);
    await waitFor('the late room', () => lateGot.length >= after.length);
    await sleep(200);
    assertExactlyOnce(lateGot, after, 'late board room');
    assert.deepEqual(errors.filter((e) => !(e instanceof RealtimeError && e.code === 'unsubscribed')), [], 'no errors');
  });

  test('a task room joined with since and no team hint resumes exactly (its team is looked up)', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Lookup')).data;
    const task = (await ann.createTask(team.id, { title: 'Looked up' })).data;
    const { client } = connect(server.baseUrl, ann, { transport: 'sse' });
    const teamSub = client.subscribe({ teamId: team.id });
    await within('team', teamSub.ready);
    const seq = (await ann.listComments(task.id)).seq!;
    // Written after the snapshot and before the room is joined: the room must replay them.
    const c1 = (await ann.createComment(task.id, 'one')).data;
    const c2 = (await ann.createComment(task.id, 'two')).data;
    // The team's stream moves past them (a task.created reaches the team scope): resuming the
    // new room from the stream's point would skip the two comments.
    let moved = false;
    teamSub.on('task.created', () => (moved = true));
    await ann.createTask(team.id, { title: 'moves the team' });
    await waitFor('the team stream to move', () => moved);
    const got: Activity[] = [];
    const sub = client.subscribe({ taskId: task.id }, { onActivity: (a) => got.push(a) }, { since: seq });
    await within('task room', sub.ready);
    const c3 = (await ann.createComment(task.id, 'three')).data;
    await waitFor('comments', () => got.length >= 3);
    await sleep(200);
    assert.deepEqual(
      got.map((a) => (a as Extract<Activity, { type: 'comment.created' }>).data.comment.id),
      [c1.id, c2.id, c3.id],
    );
  });

  test('live collections stay exact over the event stream while their rooms come and go', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Collections')).data;
    const { client } = connect(server.baseUrl, ann, { transport: 'sse' });
    const tasks = client.liveTasks({ teamId: team.id, boardId: team.defaultBoardId });
    await within('tasks', tasks.ready);
    const made: Task[] = [];
    for (let i = 0; i < 5; i++) {
      made.push((await ann.createTask(team.id, { title: `c${i}` })).data);
      // Each opens and closes a comments collection: two new streams.
      const comments = client.liveComments({ taskId: made[i]!.id });
      await within('comments', comments.ready);
      comments.close();
    }
    await ann.updateTask(made[0]!.id, { title: 'c0 renamed' });
    await ann.deleteTask(made[1]!.id);
    await waitFor('the collection', () => {
      const titles = tasks.getSnapshot().items.map((t) => t.title);
      return titles.length === 4 && titles.includes('c0 renamed');
    });
    const onServer = (await ann.listTasks(team.id, { boardId: team.defaultBoardId })).data.items;
    assert.deepEqual(
      tasks.getSnapshot().items.map((t) => [t.id, t.version]),
      onServer.map((t) => [t.id, t.version]),
    );
  });
});

describe('refusals and failures on the event stream', { timeout: 90_000 }, () => {
  test('a stream whose scopes are all forbidden: the subscriptions end with forbidden (403)', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const secret = (await bob.createTeam('Secret')).data;
    const { client } = connect(server.baseUrl, ann, { transport: 'sse' });
    const errors: RealtimeError[] = [];
    const sub = client.subscribe({ teamId: secret.id }, { onError: (e) => errors.push(e) });
    const refused = await within('refused', sub.ready.catch((e: unknown) => e));
    assert.ok(refused instanceof RealtimeError);
    assert.equal(refused.code, 'forbidden');
    assert.equal(sub.state, 'ended');
    assert.equal(errors[0]?.code, 'forbidden');
    // The client stays up: a scope it may see joins.
    const mine = (await ann.createTeam('Mine')).data;
    const ok = client.subscribe({ teamId: mine.id });
    await within('allowed', ok.ready);
  });

  test('a refused token (401) is retried with a fresh one, then reported as the credentials being gone', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Token')).data;
    let failure: unknown = null;
    const { client } = connect(server.baseUrl, 'not-a-token', { transport: 'sse', onAuthFailure: (e) => (failure = e) });
    const sub = client.subscribe({ teamId: team.id });
    await waitFor('auth failure', () => failure !== null, 20_000);
    assert.equal(client.state, 'closed');
    const e = await sub.ready.catch((x: unknown) => x);
    assert.ok(e instanceof RealtimeError && e.code === 'unauthorized');
  });

  test('a browser-like EventSource (token in the URL, errors without a reason) works the same', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Browser')).data;
    const urls: string[] = [];
    const { client } = connect(server.baseUrl, ann, { transport: 'sse', EventSource: browserLikeEventSource(urls) });
    const got: Activity[] = [];
    const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) });
    await within('subscribed', sub.ready);
    assert.match(urls[0]!, /[?&]token=/, 'the token goes in the URL');
    const tasks = await writeTasks(ann, team.id, 3);
    await waitFor('deliveries', () => got.length >= 3);
    assertExactlyOnce(got, tasks, 'team');
    // A forbidden scope: the EventSource cannot tell why it failed; the client asks.
    const bob = await newUser(server, 'Bob');
    const secret = (await bob.createTeam('Not Ann’s')).data;
    const alone = connect(server.baseUrl, ann, { transport: 'sse', EventSource: browserLikeEventSource(urls) }).client;
    const refused = await within('refused', alone.subscribe({ teamId: secret.id }).ready.catch((e: unknown) => e));
    assert.ok(refused instanceof RealtimeError && refused.code === 'forbidden', String(refused));
  });

  test('a server restart in the middle of a stream: every activity once, in order (resumed from the last event id)', async () => {
    const restartable = await TestServer.start();
    try {
      const ann = await newUser(restartable, 'Ann');
      const team = (await ann.createTeam('Restart')).data;
      const { client, states } = connect(restartable.baseUrl, ann, { transport: 'sse', backoff: { minMs: 50, maxMs: 250 } });
      const got: Activity[] = [];
      const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a) });
      await within('subscribed', sub.ready);
      const writing = writeTasks(ann, team.id, 40, {
        pauseMs: 10,
        before: async (i) => {
          if (i === 15) await restartable.restart({ signal: 'SIGKILL', downMs: 300 });
        },
      });
      const tasks = await writing;
      await waitFor('every task', () => got.length >= 40, 30_000, () => ({ got: got.length, states: states.map((s) => s.state) }));
      await sleep(300);
      assertExactlyOnce(got, tasks, 'team');
      assert.ok(client.stats.connects >= 2, 'reconnected');
    } finally {
      await restartable.dispose();
    }
  });
});

describe('presence state', { timeout: 90_000 }, () => {
  for (const [annOn, beaOn] of [['sse', 'websocket'], ['websocket', 'sse']] as const) {
    test(`Ann on ${annOn}, Bea on ${beaOn}: editing, typing, kept past the server's expiry, cleared, and gone on leaving`, async () => {
      const ann = await newUser(server, 'Ann');
      const bea = await newUser(server, 'Bea');
      const team = (await ann.createTeam('Presence')).data;
      await ann.addMember(team.id, { email: bea.user.email, role: 'member' });
      const task = (await ann.createTask(team.id, { title: 'Shared' })).data;
      const a = connect(server.baseUrl, ann, { transport: annOn }).client;
      const b = connect(server.baseUrl, bea, { transport: beaOn }).client;
      const aSub = a.subscribe({ taskId: task.id });
      const bSub = b.subscribe({ taskId: task.id });
      await within('both in the room', Promise.all([aSub.ready, bSub.ready]));
      const annSeen = () => bSub.presence!.get(ann.user.id);
      const show = (v: PresenceViewer | undefined) => (v ? `${v.state}${v.field ? `:${v.field}` : ''}` : 'absent');
      await waitFor('Ann viewing', () => show(annSeen()) === 'viewing', 10_000, () => show(annSeen()));

      a.setPresence(task.id, 'editing', 'description');
      await waitFor('Ann editing the description', () => show(annSeen()) === 'editing:description', 10_000, () => show(annSeen()));
      // Not shown to herself as a change of someone else: her own list has her editing too only
      // if the server says so; what matters is Bea's view.
      a.setPresence(task.id, 'typing', 'comment');
      await waitFor('Ann typing a comment', () => show(annSeen()) === 'typing:comment', 10_000, () => show(annSeen()));
      // The server lets a state lapse after 2 s without a refresh; the client refreshes it.
      await sleep(5000);
      assert.equal(show(annSeen()), 'typing:comment', 'still typing after more than two expiries');
      assert.deepEqual(a.presenceOf(task.id), { state: 'typing', field: 'comment' });

      a.clearPresence(task.id);
      await waitFor('Ann viewing again', () => show(annSeen()) === 'viewing', 10_000, () => show(annSeen()));

      // A state held when Bea joins is in her snapshot.
      a.setPresence(task.id, 'editing', 'title');
      await waitFor('Ann editing the title', () => show(annSeen()) === 'editing:title');
      const c = connect(server.baseUrl, bea, { transport: beaOn }).client;
      const cSub = c.subscribe({ taskId: task.id });
      await within('third joined', cSub.ready);
      assert.equal(show(cSub.presence!.get(ann.user.id)), 'editing:title', 'the snapshot carries the state');

      // Leaving the room ends it (and Ann with it).
      aSub.unsubscribe();
      await waitFor('Ann gone', () => annSeen() === undefined, 10_000, () => show(annSeen()));
      assert.deepEqual(a.presenceOf(task.id), { state: 'viewing' }, 'the state went with the room');
    });
  }
});
