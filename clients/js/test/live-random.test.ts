// Live collections under gaps and network failures, on a server that keeps its activity log for
// 1 second, behind a TCP proxy that can cut or block the collections' connections (socket and HTTP).
//  - A focused gap: the reload holds what arrives meanwhile, applies it after, and a page read
//    before a deletion does not bring the task back.
//  - THE randomized run: writers create, update, move and delete tasks, comment and change the
//    team while the collections' network is cut (reconnect and resume) or blocked past the
//    retention (resume_unavailable, gap, reload). At every quiet point each collection must equal
//    a fresh HTTP read.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, afterEach, before, test } from 'node:test';

import {
  ApiError,
  Session,
  openLiveComments,
  openLiveMembers,
  openLiveTasks,
  type Comment,
  type LiveCollection,
  type LiveStatus,
  type Member,
  type RealtimeClient,
  type Task,
  type TaskStatus,
} from '@taskforge/client';
import { SocketGate, SteppedHttp, latestSeq, readComments, readMembers, readTasks, roomsPast, type TaskQuery } from './helpers/live.js';
import { TestServer } from './helpers/server.js';
import { TcpProxy, closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;

before(async () => {
  server = await TestServer.start({ env: { TASKFORGE_LOG_RETENTION: '1s' } });
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => {
  proxy.unblock();
  closeAll();
});

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

/** A user whose HTTP goes through the proxy (the collections' side of the network). */
function viaProxy(name: string): Promise<Session> {
  return Session.register(proxy.baseUrl, {
    email: `${name.toLowerCase()}-${randomUUID()}@example.com`,
    password: 'correct horse battery',
    displayName: name,
  });
}

/**
 * Blocks the proxy until a resume from `seq` fails: the log has dropped an activity after it
 * (something must have been written after `seq`; an empty log resumes from the latest seq).
 */
async function blockPastRetention(session: Session, teamId: string, seq: number): Promise<void> {
  proxy.block();
  await waitFor(
    'the log to drop the cursor',
    async () => {
      try {
        await session.listActivity(teamId, { since: seq });
        return false;
      } catch (e) {
        if (e instanceof ApiError && e.code === 'resume_unavailable') return true;
        throw e;
      }
    },
    20_000,
  );
}

test('a gap: the reload holds live activities and applies them after; a stale page cannot resurrect a task', { timeout: 90_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('Gap')).data;
  const rita = await viaProxy('Rita');
  await ann.addMember(team.id, { userId: rita.user.id, role: 'member' });
  const tasks: Task[] = [];
  for (let i = 0; i < 8; i++) tasks.push((await ann.createTask(team.id, { title: `t${i}` })).data);

  const { client } = connect(proxy.baseUrl, rita);
  let reloading = false;
  let staleDeleted: string | undefined;
  let heldUpdate: string | undefined;
  const http = new SteppedHttp(rita, {
    after: async (call, res) => {
      if (!reloading || !call.path.endsWith('/tasks')) return;
      const items = (res.data as { items: Task[] }).items;
      if (call.cursor === undefined && heldUpdate === undefined) {
        // After the reload's first page (its seq S): these arrive live while the reload runs.
        heldUpdate = items[0]!.id;
        await ann.updateTask(heldUpdate, { title: 'changed during the reload', status: 'done' });
        await ann.createTask(team.id, { title: 'created during the reload' });
      } else if (call.cursor !== undefined && staleDeleted === undefined) {
        // This page was read; its first task is deleted and the deletion delivered before the
        // page reaches the collection.
        staleDeleted = items[0]!.id;
        await ann.deleteTask(staleDeleted);
        const seq = await latestSeq(ann, team.id);
        await waitFor('the deletion delivered', () => roomsPast(client, seq), 20_000);
      }
    },
  });
  const live = openLiveTasks(client, http, { teamId: team.id, boardId: team.defaultBoardId }, { pageSize: 3 });
  const statuses: LiveStatus[] = [];
  live.subscribe((s) => statuses.push(s.status));
  await within('ready', live.ready);
  const cursor = await latestSeq(ann, team.id);
  const untouched = live.get(tasks[7]!.id);
  assert.ok(untouched);

  // Missed while away: an update, a deletion, a creation.
  proxy.block();
  await ann.updateTask(tasks[1]!.id, { title: 't1 while away' });
  await ann.deleteTask(tasks[2]!.id);
  await ann.createTask(team.id, { title: 'created while away' });
  await blockPastRetention(ann, team.id, cursor);
  reloading = true;
  proxy.unblock();

  await waitFor('the reload', () => statuses.includes('refetching') && live.getSnapshot().status === 'live' && staleDeleted !== undefined, 30_000, () => statuses);
  assert.ok(client.stats.gaps >= 1, 'the server could not resume');
  await waitFor('caught up', async () => live.getSnapshot().seq! >= (await latestSeq(ann, team.id)), 10_000);
  const expected = await readTasks(ann, team.id, { boardId: team.defaultBoardId });
  assert.deepEqual(live.getSnapshot().items, expected);
  assert.equal(live.get(staleDeleted!), undefined, 'the task deleted after its page was read stays deleted');
  assert.equal(live.get(heldUpdate!)?.title, 'changed during the reload', 'the held update was applied');
  assert.ok(expected.some((t) => t.title === 'created during the reload'));
  assert.ok(expected.some((t) => t.title === 't1 while away') && !expected.some((t) => t.id === tasks[2]!.id));
  assert.equal(live.get(tasks[7]!.id), untouched, 'an unchanged task keeps its object across the reload');
});

test('after a reload, activities the reload already shows are not applied again (no step back)', { timeout: 90_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const team = (await ann.createTeam('No step back')).data;
  const rita = await viaProxy('Rita');
  await ann.addMember(team.id, { userId: rita.user.id, role: 'member' });
  const task = (await ann.createTask(team.id, { title: 'discussed' })).data;
  const comment = (await ann.createComment(task.id, 'original')).data;

  const gate = new SocketGate();
  const { client } = connect(proxy.baseUrl, rita, { WebSocket: gate.socket() });
  let reloading = false;
  let edited = false;
  const http = new SteppedHttp(rita, {
    before: async () => {
      if (!reloading || edited) return;
      edited = true;
      // Just before the reload reads: two edits, whose frames are held until the reload is in.
      gate.holdIncoming();
      await ann.request('PATCH', `/comments/${comment.id}`, { body: { body: 'v1' } });
      await ann.request('PATCH', `/comments/${comment.id}`, { body: { body: 'v2' } });
    },
  });
  const live = openLiveComments(client, http, { taskId: task.id });
  const seen: string[] = [];
  live.subscribe((s) => seen.push(`${s.status}:${s.items.find((c) => c.id === comment.id)?.body}`));
  await within('ready', live.ready);
  const cursor = await latestSeq(ann, team.id);

  proxy.block();
  await ann.createComment(task.id, 'while away');
  await blockPastRetention(ann, team.id, cursor);
  reloading = true;
  proxy.unblock();

  await waitFor('the reload', () => edited && live.getSnapshot().status === 'live' && live.get(comment.id)?.body === 'v2', 30_000, () => seen);
  const seq = await latestSeq(ann, team.id);
  await waitFor('the edits held', () => gate.heldIncoming >= 2);
  await gate.releaseIncoming();
  await waitFor('the edits delivered', () => roomsPast(client, seq));
  assert.deepEqual(live.getSnapshot().items, await readComments(ann, task.id));
  const sinceReload = seen.slice(seen.indexOf('live:v2'));
  assert.ok(!sinceReload.includes('live:v1'), `stepped back to v1: ${seen.join(' ')}`);
});

// ---- the randomized run ----------------------------------------------------------------------------

/** mulberry32: small, seedable, good enough to pick operations. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const STATUSES: TaskStatus[] = ['todo', 'in_progress', 'done', 'canceled'];
const ROUNDS = 6;

interface Watched<T> {
  name: string;
  live: LiveCollection<T>;
  client: RealtimeClient;
  read: () => Promise<T[]>;
  statuses: LiveStatus[];
}

test('randomized: collections stay exact through cuts, gaps and reloads while writers write', { timeout: 240_000 }, async (t) => {
  const seed = Number(process.env.LIVE_SEED ?? Math.floor(Math.random() * 2 ** 31));
  t.diagnostic(`seed ${seed} (LIVE_SEED=${seed} repeats the choices)`);
  const rand = prng(seed);
  const pick = <X>(xs: readonly X[]): X => xs[Math.floor(rand() * xs.length)]!;
  const chance = (p: number) => rand() < p;

  // The team: three writers (owner, admin, member), the reader (through the proxy), a member
  // whose role the quiet points flip, and users that writers add and remove.
  const ann = await newUser(server, 'Ann');
  const bob = await newUser(server, 'Bob');
  const cat = await newUser(server, 'Cat');
  const syd = await newUser(server, 'Syd');
  const pool = [await newUser(server, 'Dan'), await newUser(server, 'Eve'), await newUser(server, 'Fay')];
  const rita = await viaProxy('Rita');
  const team = (await ann.createTeam('Random')).data;
  await ann.addMember(team.id, { userId: bob.user.id, role: 'admin' });
  await ann.addMember(team.id, { userId: cat.user.id, role: 'member' });
  await ann.addMember(team.id, { userId: rita.user.id, role: 'member' });
  await ann.addMember(team.id, { userId: syd.user.id, role: 'member' });
  const boardA = team.defaultBoardId;
  const boardB = (await ann.createBoard(team.id, 'B')).data.id;
  const boards = [boardA, boardB];
  const assignees = [ann.user.id, bob.user.id, cat.user.id, rita.user.id, null];
  // Sentinels match every filter below; only the quiet points touch them.
  const sentinel = {
    [boardA]: (await ann.createTask(team.id, { title: 'sentinel A', boardId: boardA, assigneeUserId: cat.user.id })).data.id,
    [boardB]: (await ann.createTask(team.id, { title: 'sentinel B', boardId: boardB, assigneeUserId: cat.user.id })).data.id,
  };
  const discussion = (await ann.createTask(team.id, { title: 'discussion' })).data.id;
  const sentinelComment = (await ann.createComment(discussion, 'sentinel')).data.id;

  // What the writers know (races between them are expected: 404s are ignored).
  const taskIds: string[] = [];
  const comments: { id: string; author: Session }[] = [];
  const inTeam = new Map<string, boolean>(pool.map((u) => [u.user.id, false]));
  let n = 0;
  const newTask = async (w: Session) => {
    const task = (
      await w.createTask(team.id, {
        title: `task ${n++}`,
        boardId: pick(boards),
        status: pick(STATUSES),
        assigneeUserId: pick(assignees),
      })
    ).data;
    taskIds.push(task.id);
  };
  for (let i = 0; i < 30; i++) await newTask(pick([ann, bob, cat]));
  for (let i = 0; i < 5; i++) comments.push({ id: (await cat.createComment(discussion, `c${i}`)).data.id, author: cat });

  const ops: [number, (w: Session) => Promise<unknown>][] = [
    [20, newTask],
    [
      30,
      async (w) => {
        const patch: Record<string, unknown> = {};
        if (chance(0.6)) patch.status = pick(STATUSES);
        if (chance(0.4)) patch.title = `title ${n++}`;
        if (chance(0.4) || Object.keys(patch).length === 0) patch.assigneeUserId = pick(assignees);
        if (taskIds.length) await w.updateTask(pick(taskIds), patch);
      },
    ],
    [
      15,
      async (w) => {
        if (!taskIds.length) return;
        const id = pick(taskIds);
        await w.updateTask(id, { boardId: pick(boards), ...(chance(0.3) ? { status: pick(STATUSES) } : {}) });
      },
    ],
    [
      10,
      async (w) => {
        if (!taskIds.length) return;
        const id = taskIds.splice(Math.floor(rand() * taskIds.length), 1)[0]!;
        await w.deleteTask(id);
      },
    ],
    [
      12,
      async (w) => {
        const on = chance(0.7) || !taskIds.length ? discussion : pick(taskIds);
        const c = (await w.createComment(on, `comment ${n++}`)).data;
        if (on === discussion) comments.push({ id: c.id, author: w });
      },
    ],
    [
      6,
      async (w) => {
        const mine = comments.filter((c) => c.author === w);
        if (mine.length) await w.request('PATCH', `/comments/${pick(mine).id}`, { body: { body: `edited ${n++}` } });
      },
    ],
    [
      4,
      async (w) => {
        // Owner and admin may delete anyone's comment; a member only their own.
        const allowed = w === cat ? comments.filter((c) => c.author === w) : comments;
        if (!allowed.length) return;
        const c = pick(allowed);
        comments.splice(comments.indexOf(c), 1);
        await w.request('DELETE', `/comments/${c.id}`);
      },
    ],
    [
      5,
      async (w) => {
        if (w === cat) return; // members cannot change the team
        const u = pick(pool);
        if (inTeam.get(u.user.id)) {
          inTeam.set(u.user.id, false);
          await w.removeMember(team.id, u.user.id);
        } else {
          inTeam.set(u.user.id, true);
          await w.addMember(team.id, { userId: u.user.id, role: pick(['member', 'viewer'] as const) });
        }
      },
    ],
  ];
  const totalWeight = ops.reduce((s, [wt]) => s + wt, 0);
  const pickOp = () => {
    let x = rand() * totalWeight;
    for (const [wt, op] of ops) if ((x -= wt) < 0) return op;
    return ops[0]![1];
  };

  // The collections. Some share a client, and with it rooms: the team-wide collection and the
  // members both join the team room, the 'todo' one and Cat's both join board B's.
  const watched: Watched<unknown>[] = [];
  const newClient = () => connect(proxy.baseUrl, rita, { onError: () => {} }).client;
  function watch<T>(
    name: string,
    open: (rt: RealtimeClient) => LiveCollection<T>,
    read: () => Promise<T[]>,
    client = newClient(),
  ): LiveCollection<T> {
    const live = open(client);
    const w: Watched<T> = { name, live, client, read, statuses: [] };
    live.subscribe((s) => {
      if (w.statuses.at(-1) !== s.status) w.statuses.push(s.status);
    });
    watched.push(w as Watched<unknown>);
    return live;
  }
  const tasksOf = (q: TaskQuery) => () => readTasks(ann, team.id, q);
  const onA = watch('board A', (rt) => openLiveTasks(rt, rita, { teamId: team.id, boardId: boardA }, { pageSize: 7 }), tasksOf({ boardId: boardA }));
  const shared = [newClient(), newClient()] as const;
  const all = watch('team', (rt) => openLiveTasks(rt, rita, { teamId: team.id }, { pageSize: 7 }), tasksOf({}), shared[0]);
  const todo = watch('team, todo', (rt) => openLiveTasks(rt, rita, { teamId: team.id, filter: { status: 'todo' } }, { pageSize: 7 }), tasksOf({ status: 'todo' }), shared[1]);
  const catsOnB = watch(
    'board B, Cat’s',
    (rt) => openLiveTasks(rt, rita, { teamId: team.id, boardId: boardB, filter: { assigneeUserId: cat.user.id } }, { pageSize: 7 }),
    tasksOf({ boardId: boardB, assigneeUserId: cat.user.id }),
    shared[1],
  );
  const discussed = watch<Comment>('comments', (rt) => openLiveComments(rt, rita, { taskId: discussion }, { pageSize: 3 }), () => readComments(ann, discussion));
  const members = watch<Member>('members', (rt) => openLiveMembers(rt, rita, { teamId: team.id }, { pageSize: 3 }), () => readMembers(ann, team.id), shared[0]);
  await within('every collection ready', Promise.all(watched.map((w) => w.live.ready)), 60_000);

  const failures: unknown[] = [];
  let writing = false;
  let writes = 0;
  async function writer(w: Session): Promise<void> {
    while (writing) {
      try {
        await pickOp()(w);
        writes++;
      } catch (e) {
        // Another writer got there first (deleted the task or comment, changed the team).
        if (!(e instanceof ApiError && (e.status === 404 || e.status === 409))) failures.push(e);
      }
      await sleep(rand() * 25);
    }
  }

  const syncBy = new Map<string, () => boolean>();
  let quietPoints = 0;
  try {
    for (let round = 0; round < ROUNDS; round++) {
      writing = true;
      const writers = [ann, bob, cat].map((w) => writer(w));
      await sleep(200 + rand() * 400);
      if (round % 2 === 0) {
        // Away for longer than the log keeps: every room resumes with resume_unavailable.
        const cursor = await latestSeq(ann, team.id);
        await blockPastRetention(ann, team.id, cursor);
        if (chance(0.5)) await sleep(rand() * 500);
        proxy.unblock();
        if (chance(0.6)) {
          // Cut the network again while a reload runs: its requests fail and are retried (and
          // the status turns 'error' if that goes on), until the network is back.
          for (let i = 0; i < 300 && !watched.some((w) => w.live.getSnapshot().status === 'refetching'); i++) await sleep(5);
          proxy.block();
          await sleep(1000 + rand() * 1500);
          proxy.unblock();
        }
      } else {
        // Short cuts: reconnect and resume (or a gap, when a room's cursor is older than the log).
        for (let i = 0, cuts = 1 + Math.floor(rand() * 3); i < cuts; i++) {
          proxy.cut();
          await sleep(100 + rand() * 400);
        }
      }
      // Writers go on while the collections reconnect and reload.
      await sleep(300 + rand() * 700);
      writing = false;
      await Promise.all(writers);
      assert.deepEqual(failures, [], 'writers failed');

      // Quiet point. A room carries only its own activities, so each collection is brought up to
      // date by a last write that reaches its room(s): the sentinel tasks (a board room delivers
      // in seq order, so seeing the new title means everything before it on that board was
      // delivered, or a later reload read it), the sentinel comment and a member's role. The
      // single-room collections are then at the seq of that write.
      const token = `sync ${round}`;
      await ann.updateTask(sentinel[boardA]!, { title: `${token} A` });
      const seqA = await latestSeq(ann, team.id);
      await ann.updateTask(sentinel[boardB]!, { title: `${token} B` });
      const seqB = await latestSeq(ann, team.id);
      await ann.request('PATCH', `/comments/${sentinelComment}`, { body: { body: token } });
      const seqC = await latestSeq(ann, team.id);
      // Syd starts as a member: the role flips every round (the same role would emit nothing).
      await ann.request('PATCH', `/teams/${team.id}/members/${syd.user.id}`, { body: { role: round % 2 ? 'member' : 'viewer' } });
      const seqM = await latestSeq(ann, team.id);
      const titled = (c: LiveCollection<Task>, board: string) => c.get(sentinel[board]!)?.title === `${token} ${board === boardA ? 'A' : 'B'}`;
      const at = (c: LiveCollection<unknown>, seq: number) => (c.getSnapshot().seq ?? -1) >= seq;
      syncBy.set('board A', () => titled(onA, boardA) && at(onA, seqA));
      syncBy.set('team', () => titled(all, boardA) && titled(all, boardB));
      syncBy.set('team, todo', () => titled(todo, boardA) && titled(todo, boardB));
      syncBy.set('board B, Cat’s', () => titled(catsOnB, boardB) && at(catsOnB, seqB));
      syncBy.set('comments', () => at(discussed, seqC) && discussed.get(sentinelComment)?.body === token);
      syncBy.set('members', () => at(members, seqM) && members.get(syd.user.id)?.role === (round % 2 ? 'member' : 'viewer'));
      await waitFor(
        `round ${round}: every collection live and caught up`,
        () => watched.every((w) => w.live.getSnapshot().status === 'live' && syncBy.get(w.name)!()),
        60_000,
        () => ({
          latest: seqM,
          collections: watched.map((w) => ({
            name: w.name,
            status: w.live.getSnapshot().status,
            seq: w.live.getSnapshot().seq,
            synced: syncBy.get(w.name)!(),
            client: w.client.state,
            rooms: w.client.subscriptions.map((s) => `${s.key.split(':')[0]} ${s.state} ${s.lastSeq}`),
          })),
        }),
      );
      for (const w of watched) {
        const expected = await w.read();
        assert.deepEqual(w.live.getSnapshot().items, expected, `round ${round}: ${w.name} equals a fresh read`);
      }
      quietPoints++;
    }
  } catch (e) {
    writing = false;
    proxy.unblock();
    t.diagnostic(`failed with seed ${seed}`);
    if (e instanceof Error) e.message = `[seed ${seed}] ${e.message}`;
    throw e;
  }

  const clients = [...new Set(watched.map((w) => w.client))];
  const gaps = clients.reduce((s, c) => s + c.stats.gaps, 0);
  const reconnects = clients.reduce((s, c) => s + c.stats.connects - 1, 0);
  const reloads = watched.reduce((s, w) => s + w.statuses.filter((x) => x === 'refetching').length, 0);
  const errors = watched.reduce((s, w) => s + w.statuses.filter((x) => x === 'error').length, 0);
  const summary = `seed ${seed}: ${quietPoints} quiet points, ${writes} writes, ${reconnects} reconnects, ${gaps} gaps, ${reloads} reloads, ${errors} error spells`;
  t.diagnostic(summary);
  console.log(summary);
  assert.equal(quietPoints, ROUNDS);
  assert.ok(reconnects >= 1, 'at least one reconnect');
  assert.ok(gaps >= 1, 'at least one gap');
  for (const w of watched) w.live.close();
  for (const w of watched) assert.equal(w.client.subscriptions.length, 0, `${w.name}: rooms left at close`);
});
