// Live collections against a real server: paged loads lined up with the stream (writes between
// the pages included), live creates, updates, deletes, moves and filters, team-wide collections
// following the team's boards, comments, members, snapshot identity and batching, sharing,
// failures and bad input. The randomized run with network cuts and gaps is in live-random.test.ts.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import {
  ApiError,
  RealtimeError,
  openLiveComments,
  openLiveMembers,
  openLiveTasks,
  type LiveCollection,
  type LiveSnapshot,
  type LiveStatus,
  type Task,
} from '@taskforge/client';
import { SocketGate, SteppedHttp, latestSeq, readComments, readMembers, readTasks, roomsPast, type TaskQuery } from './helpers/live.js';
import { TestServer } from './helpers/server.js';
import { closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

afterEach(() => closeAll());

after(async () => {
  closeAll();
  await server?.dispose();
});

const titles = (c: LiveCollection<Task>) => c.getSnapshot().items.map((t) => t.title);

/** Waits until the collection shows exactly what a fresh HTTP read shows (bounded). */
async function converges(what: string, c: LiveCollection<Task>, read: () => Promise<Task[]>): Promise<void> {
  let expected: Task[] = [];
  await waitFor(
    what,
    async () => {
      expected = await read();
      try {
        assert.deepEqual(c.getSnapshot().items, expected);
        return true;
      } catch {
        return false;
      }
    },
    10_000,
    () => ({ got: titles(c), expected: expected.map((t) => t.title), status: c.getSnapshot().status }),
  );
}

describe('loading', { timeout: 60_000 }, () => {
  test('every page is read and lined up with the stream, with writes between the pages', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Pages')).data;
    const tasks: Task[] = [];
    for (let i = 0; i < 12; i++) tasks.push((await ann.createTask(team.id, { title: `t${i}` })).data);
    const { client } = connect(server.baseUrl, ann);

    let staleDeleted: string | undefined;
    const http = new SteppedHttp(ann, {
      after: async (call, res) => {
        if (!call.path.endsWith('/tasks')) return;
        if (call.cursor === undefined && call.n === 1) {
          // Between page 1 (the snapshot seq S) and page 2: the replay after S must carry these.
          await ann.updateTask(tasks[1]!.id, { title: 't1 renamed' }); // on page 1
          await ann.updateTask(tasks[7]!.id, { status: 'done' }); // on page 2
          await ann.deleteTask(tasks[3]!.id); // on page 1
          await ann.createTask(team.id, { title: 't12' }); // on the last page
        } else if (call.cursor !== undefined && staleDeleted === undefined) {
          // This page 2 was read; now its first task is deleted and the deletion delivered before
          // the page reaches the collection. The stale page must not bring the task back.
          const page = res.data as { items: Task[] };
          staleDeleted = page.items[0]!.id;
          await ann.deleteTask(staleDeleted);
          const seq = await latestSeq(ann, team.id);
          await waitFor('the deletion delivered', () => roomsPast(client, seq));
        }
      },
    });
    const live = openLiveTasks(client, http, { teamId: team.id }, { pageSize: 5 });
    const seen: LiveSnapshot<Task>[] = [];
    live.subscribe((s) => seen.push(s));
    const snap = await within('ready', live.ready);

    assert.equal(snap.status, 'live');
    const pages = http.calls.filter((c) => c.path.endsWith('/tasks'));
    assert.equal(pages.length, 3, 'three pages of 5');
    assert.ok(staleDeleted !== undefined && staleDeleted === tasks[5]!.id, 'page 2 started with t5');
    assert.equal(live.get(staleDeleted!), undefined, 'the deleted task stays deleted');
    assert.equal(live.get(tasks[3]!.id), undefined);
    assert.equal(live.get(tasks[1]!.id)?.title, 't1 renamed');
    assert.equal(live.get(tasks[7]!.id)?.status, 'done');
    assert.deepEqual(snap.items, await readTasks(ann, team.id));
    assert.deepEqual(
      snap.items.map((t) => t.title),
      ['t0', 't1 renamed', 't2', 't4', 't6', 't7', 't8', 't9', 't10', 't11', 't12'],
    );
    assert.ok(snap.seq !== null && snap.seq >= (await latestSeq(ann, team.id)));
    // The held activities were applied as one batch: at most a 'loading' snapshot then 'live'.
    assert.ok(seen.length >= 1 && seen.length <= 2, `listener calls: ${seen.map((s) => s.status).join(', ')}`);
    assert.equal(seen.at(-1), live.getSnapshot());
  });

  test('a query that cannot be read: status error, ready rejects, no room left behind', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await bob.createTeam('Not Ann’s')).data;
    const { client } = connect(server.baseUrl, ann);
    const live = openLiveTasks(client, ann, { teamId: team.id });
    const err = await within('ready rejects', live.ready.then(() => null, (e: unknown) => e));
    assert.ok(err instanceof ApiError && err.status === 404, String(err));
    assert.equal(live.getSnapshot().status, 'error');
    assert.equal(live.getSnapshot().error, err);
    assert.equal(client.subscriptions.length, 0);
  });

  test('failed loads are retried with backoff: status error, then live when a load works', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Flaky')).data;
    await ann.createTask(team.id, { title: 'one' });
    const { client } = connect(server.baseUrl, ann);
    let failing = 3;
    const http = new SteppedHttp(ann, {
      before: () => {
        if (failing > 0) {
          failing--;
          throw new TypeError('fetch failed');
        }
      },
    });
    const live = openLiveTasks(client, http, { teamId: team.id });
    const statuses: LiveStatus[] = [];
    live.subscribe((s) => statuses.push(s.status));
    const err = await within('ready rejects at the third failure', live.ready.then(() => null, (e: unknown) => e));
    assert.ok(err instanceof TypeError);
    assert.equal(live.getSnapshot().status, 'error');
    await waitFor('recovered', () => live.getSnapshot().status === 'live', 15_000, () => statuses);
    assert.deepEqual(titles(live), ['one']);
    assert.equal(live.getSnapshot().error, null);
    // 'loading' may come between: loaded, the room not joined yet.
    assert.match(statuses.join(), /^error,(loading,)?live$/);
    assert.equal(http.calls.filter((c) => c.path.endsWith('/tasks')).length, 4, 'three failed reads, then one that worked');
  });

  test('bad input is refused with a clear error', () => {
    const { client } = connect(server.baseUrl, 'no-token');
    const s = {} as never;
    assert.throws(() => openLiveTasks(client, s, {} as never), /teamId must be a non-empty string/);
    assert.throws(() => openLiveTasks(client, s, { teamId: 't', filter: { status: 'open' as never } }), /filter.status must be one of/);
    assert.throws(() => openLiveTasks(client, s, { teamId: 't', boardId: '' }), /boardId/);
    assert.throws(() => openLiveTasks(client, s, { teamId: 't' }, { pageSize: 500 }), /pageSize/);
    assert.throws(() => openLiveComments(client, s, { taskId: 42 as never }), /taskId/);
    assert.throws(() => openLiveMembers(client, s, null as never), /teamId/);
    assert.throws(() => openLiveMembers({} as never, s, { teamId: 't' }), /RealtimeClient/);
    assert.equal(client.subscriptions.length, 0);
  });
});

describe('live tasks', { timeout: 60_000 }, () => {
  test('creates, updates, deletes and moves onto and off a board', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Moves')).data;
    const boardA = team.defaultBoardId;
    const boardB = (await ann.createBoard(team.id, 'B')).data.id;
    // One client each (collections sharing a client and its rooms: see the randomized run).
    const onA = openLiveTasks(connect(server.baseUrl, ann).client, ann, { teamId: team.id, boardId: boardA });
    const all = openLiveTasks(connect(server.baseUrl, ann).client, ann, { teamId: team.id });
    await within('ready', Promise.all([onA.ready, all.ready]));
    const check = async (what: string) => {
      await converges(`${what} (board A)`, onA, () => readTasks(ann, team.id, { boardId: boardA }));
      await converges(`${what} (team)`, all, () => readTasks(ann, team.id));
    };

    const x = (await ann.createTask(team.id, { title: 'x' })).data;
    const y = (await ann.createTask(team.id, { title: 'y', boardId: boardB })).data;
    await check('created');
    assert.deepEqual(titles(onA), ['x']);
    assert.deepEqual(titles(all), ['x', 'y']);

    await ann.updateTask(x.id, { title: 'x2', priority: 'high' });
    await check('updated');
    assert.equal(onA.get(x.id)?.title, 'x2');

    await ann.updateTask(x.id, { boardId: boardB }); // off board A
    await ann.updateTask(y.id, { boardId: boardA }); // onto board A
    await check('moved');
    assert.deepEqual(titles(onA), ['y']);
    assert.equal(all.get(x.id)?.boardId, boardB);

    // task.updated reaches board rooms only: the team-wide collection hears it through board B's.
    await ann.updateTask(x.id, { title: 'x3' });
    await check('updated on board B');
    assert.equal(all.get(x.id)?.title, 'x3');

    await ann.deleteTask(y.id);
    await check('deleted');
    assert.deepEqual(titles(onA), []);
    assert.deepEqual(titles(all), ['x3']);
  });

  test('filters: tasks enter and leave as their status and assignee change', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Filters')).data;
    await ann.addMember(team.id, { userId: bob.user.id, role: 'member' });
    const q1: TaskQuery = { status: 'in_progress' };
    const q2: TaskQuery = { boardId: team.defaultBoardId, assigneeUserId: bob.user.id };
    const inProgress = openLiveTasks(connect(server.baseUrl, ann).client, ann, { teamId: team.id, filter: { status: 'in_progress' } });
    const bobs = openLiveTasks(connect(server.baseUrl, ann).client, ann, {
      teamId: team.id,
      boardId: team.defaultBoardId,
      filter: { assigneeUserId: bob.user.id },
    });
    await within('ready', Promise.all([inProgress.ready, bobs.ready]));
    const check = async (what: string) => {
      await converges(`${what} (in progress)`, inProgress, () => readTasks(ann, team.id, q1));
      await converges(`${what} (bob's)`, bobs, () => readTasks(ann, team.id, q2));
    };

    const t = (await ann.createTask(team.id, { title: 't' })).data;
    await check('created as todo');
    assert.deepEqual(titles(inProgress), []);

    await ann.updateTask(t.id, { status: 'in_progress' });
    await check('entered');
    assert.deepEqual(titles(inProgress), ['t']);

    await ann.updateTask(t.id, { title: 't2', assigneeUserId: bob.user.id });
    await check('assigned');
    assert.deepEqual(titles(inProgress), ['t2']);
    assert.deepEqual(titles(bobs), ['t2']);

    await ann.updateTask(t.id, { status: 'done' });
    await ann.updateTask(t.id, { assigneeUserId: null });
    await check('left');
    assert.deepEqual(titles(inProgress), []);
    assert.deepEqual(titles(bobs), []);

    // Created matching (with an assignee: task.created, then task.assigned at the same version).
    await ann.createTask(team.id, { title: 'u', status: 'in_progress', assigneeUserId: bob.user.id });
    await check('created matching');
    assert.deepEqual(titles(inProgress), ['u']);
    assert.deepEqual(titles(bobs), ['u']);
  });

  test('a stale copy arriving late through another room neither rolls a task back nor brings it back into a filter', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Late rooms')).data;
    const boardA = team.defaultBoardId;
    const gates = [new SocketGate(), new SocketGate()];
    const [c1, c2] = gates.map((g) => connect(server.baseUrl, ann, { WebSocket: g.socket() }).client);
    const all = openLiveTasks(c1!, ann, { teamId: team.id });
    const todo = openLiveTasks(c2!, ann, { teamId: team.id, filter: { status: 'todo' } });
    await within('ready', Promise.all([all.ready, todo.ready]));

    // After a reconnect the team room's resubscribe is held back, so that its replay comes after
    // the board room's: the board room delivers the task's creation and its update, the team
    // room then delivers the creation again (it carries no task.updated).
    for (const [i, c] of [c1!, c2!].entries()) {
      gates[i]!.holdOutgoing = (f) => f.includes('"subscribe"') && f.includes('"teamId"');
      c.reconnect();
    }
    await waitFor('team resubscribes held', () => gates.every((g) => g.heldOutgoing === 1));
    const t = (await ann.createTask(team.id, { title: 'v1', status: 'todo' })).data;
    await ann.updateTask(t.id, { title: 'v2', status: 'done' });
    const s2 = await latestSeq(ann, team.id);
    const boardPast = (c: typeof c1, seq: number) => c!.subscriptions.some((s) => s.key === `board:${boardA}` && s.state === 'active' && s.lastSeq! >= seq);
    await waitFor('the board rooms delivered both', () => boardPast(c1, s2) && boardPast(c2, s2));
    assert.equal(all.get(t.id)?.title, 'v2');
    assert.equal(todo.get(t.id), undefined, 'left the filter');

    for (const g of gates) g.releaseOutgoing();
    // The creation is seq s2 - 1 (the update, s2, does not reach the team room).
    await waitFor('the team rooms replayed the creation', () => roomsPast(c1!, s2 - 1) && roomsPast(c2!, s2 - 1));
    assert.equal(all.get(t.id)?.title, 'v2', 'not rolled back to v1');
    assert.equal(all.get(t.id)?.version, 2);
    assert.equal(todo.get(t.id), undefined, 'not back in the filter');
    assert.deepEqual(all.getSnapshot().items, await readTasks(ann, team.id));
    assert.deepEqual(todo.getSnapshot().items, await readTasks(ann, team.id, { status: 'todo' }));
  });

  test('a bulk import (one task.imported naming its tasks) reaches board and team-wide collections', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Import')).data;
    const boardA = team.defaultBoardId;
    const boardB = (await ann.createBoard(team.id, 'B')).data.id;
    const onA = openLiveTasks(connect(server.baseUrl, ann).client, ann, { teamId: team.id, boardId: boardA });
    const onB = openLiveTasks(connect(server.baseUrl, ann).client, ann, { teamId: team.id, boardId: boardB });
    const all = openLiveTasks(connect(server.baseUrl, ann).client, ann, { teamId: team.id });
    await within('ready', Promise.all([onA.ready, onB.ready, all.ready]));
    await ann.createTask(team.id, { title: 'before' });

    const tasks = Array.from({ length: 300 }, (_, i) => ({ title: `imported ${i}`, importKey: `row-${i}` }));
    const answer = await ann.importTasks(team.id, { boardId: boardA, tasks });
    assert.equal(answer.status, 201);
    assert.equal(answer.data.items.length, 300);
    await converges('imported (board A)', onA, () => readTasks(ann, team.id, { boardId: boardA }));
    await converges('imported (team)', all, () => readTasks(ann, team.id));
    assert.equal(onA.getSnapshot().items.length, 301);
    assert.equal(all.getSnapshot().items.length, 301);
    // Another board's collection is not about it: it stays as it was.
    assert.equal(onB.getSnapshot().items.length, 0);
    // Live goes on after the reload.
    await ann.createTask(team.id, { title: 'after' });
    await converges('after (board A)', onA, () => readTasks(ann, team.id, { boardId: boardA }));
    assert.equal(onA.getSnapshot().status, 'live');
  });

  test('a team-wide collection follows boards created and deleted after it opened', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Boards')).data;
    const { client } = connect(server.baseUrl, ann);
    const all = openLiveTasks(client, ann, { teamId: team.id });
    await within('ready', all.ready);
    assert.deepEqual(client.subscriptions.map((s) => s.key).sort(), [`board:${team.defaultBoardId}`, `team:${team.id}`]);

    const c = (await ann.createBoard(team.id, 'C')).data;
    const t = (await ann.createTask(team.id, { title: 'on C', boardId: c.id })).data;
    // Only board C's room carries this: the collection must have joined it.
    await ann.updateTask(t.id, { title: 'on C, renamed' });
    await converges('the new board followed', all, () => readTasks(ann, team.id));
    assert.deepEqual(titles(all), ['on C, renamed']);
    assert.ok(client.subscriptions.some((s) => s.key === `board:${c.id}`));

    await ann.deleteTask(t.id);
    await ann.request('DELETE', `/boards/${c.id}`);
    await waitFor('board C left', () => !client.subscriptions.some((s) => s.key === `board:${c.id}`));
    await converges('after the deletion', all, () => readTasks(ann, team.id));
    assert.equal(all.getSnapshot().status, 'live');
  });
});

describe('snapshots and sharing', { timeout: 60_000 }, () => {
  test('the snapshot is the same object until something changes; listeners are called once per change and isolated', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Snapshots')).data;
    const first = (await ann.createTask(team.id, { title: 'first' })).data;
    const { client, errors } = connect(server.baseUrl, ann);
    const live = openLiveTasks(client, ann, { teamId: team.id, boardId: team.defaultBoardId });
    await within('ready', live.ready);

    const s1 = live.getSnapshot();
    assert.equal(live.getSnapshot(), s1);
    assert.ok(Object.isFrozen(s1) && Object.isFrozen(s1.items));
    const boom = new Error('listener bug');
    live.subscribe(() => {
      throw boom;
    });
    const got: LiveSnapshot<Task>[] = [];
    live.subscribe((s) => {
      got.push(s);
      assert.equal(s, live.getSnapshot());
    });
    await sleep(200);
    assert.equal(got.length, 0, 'nothing changed: no call');
    assert.equal(live.getSnapshot(), s1);

    await ann.createTask(team.id, { title: 'second' });
    await waitFor('a change', () => got.length === 1);
    const s2 = live.getSnapshot();
    assert.notEqual(s2, s1);
    assert.equal(got[0], s2);
    assert.deepEqual(s2.items.map((t) => t.title), ['first', 'second']);
    assert.equal(s2.items[0], s1.items[0], 'an unchanged task keeps its object');
    assert.equal(s2.items[0]!.id, first.id);
    assert.ok(s2.seq! > s1.seq!);
    assert.ok(errors.includes(boom), 'the throwing listener is reported to onError');

    await ann.updateTask(first.id, { title: 'first!' });
    await waitFor('another change', () => got.length === 2);
    assert.equal(got[1], live.getSnapshot());
    for (let i = 1; i < got.length; i++) assert.notEqual(got[i], got[i - 1], 'never the same snapshot twice');
  });

  test('two opens of one query share a collection; the last close leaves the room and stops', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Shared')).data;
    const { client } = connect(server.baseUrl, ann);
    const q = { teamId: team.id, boardId: team.defaultBoardId };
    const a = openLiveTasks(client, ann, q);
    const b = openLiveTasks(client, ann, { ...q, filter: {} });
    await within('ready', Promise.all([a.ready, b.ready]));
    // One collection: its board's room and the team's (for label.deleted), joined once.
    assert.equal(client.subscriptions.length, 2, 'the board room and the team room, once');
    assert.equal(a.getSnapshot(), b.getSnapshot());

    const gotB: string[][] = [];
    b.subscribe((s) => gotB.push(s.items.map((t) => t.title)));
    a.close();
    assert.equal(a.getSnapshot().status, 'closed');
    assert.deepEqual(a.getSnapshot().items, []);
    assert.equal(client.subscriptions.length, 2, 'b still holds the rooms');
    await ann.createTask(team.id, { title: 'after a closed' });
    await waitFor('b updated', () => gotB.length === 1);
    assert.deepEqual(gotB, [['after a closed']]);
    assert.equal(a.get(b.getSnapshot().items[0]!.id), undefined, 'a closed handle shows nothing');
    // A handle opened on a live collection: ready at once, with the current snapshot.
    const late = openLiveTasks(client, ann, q);
    assert.equal(await within('late ready', late.ready), b.getSnapshot());
    late.close();

    b.close();
    assert.equal(client.subscriptions.length, 0, 'the last close left the rooms');
    b.close(); // twice is harmless

    // A new open after the last close starts afresh.
    const c = openLiveTasks(client, ann, q);
    await within('ready again', c.ready);
    assert.deepEqual(titles(c), ['after a closed']);
    c.close();
  });

  test('closing before the load is done: ready rejects, the fetch is aborted, no retry runs', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Early close')).data;
    const { client } = connect(server.baseUrl, ann);
    // A server that never answers: the request waits for its abort signal.
    const hanging = new SteppedHttp(ann, {
      before: (call) =>
        new Promise<void>((_, reject) => {
          const signal = hanging.signals[call.n - 1]!;
          signal.addEventListener('abort', () => reject(signal.reason));
        }),
    });
    const live = openLiveTasks(client, hanging, { teamId: team.id });
    await waitFor('the first request', () => hanging.calls.length === 1);
    live.close();
    const err = await within('ready rejects', live.ready.then(() => null, (e: unknown) => e));
    assert.ok(err instanceof RealtimeError && err.code === 'closed', String(err));
    assert.equal(hanging.signals[0]!.aborted, true, 'the fetch was aborted');

    // A collection waiting to retry a failed load: closing it cancels the retry.
    const failing = new SteppedHttp(ann, {
      before: () => {
        throw new TypeError('fetch failed');
      },
    });
    const other = openLiveTasks(client, failing, { teamId: team.id, boardId: team.defaultBoardId });
    await waitFor('a failure', () => failing.calls.length === 1);
    other.close();
    await sleep(1500); // past the first retry delays
    assert.equal(failing.calls.length, 1, 'no retry after close');
    assert.equal(client.subscriptions.length, 0);
  });
});

describe('comments and members', { timeout: 60_000 }, () => {
  test('comments: paged load, live create, edit and delete; the task deleted closes the collection', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Comments')).data;
    const task = (await ann.createTask(team.id, { title: 'discussed' })).data;
    for (let i = 0; i < 5; i++) await ann.createComment(task.id, `c${i}`);
    const { client } = connect(server.baseUrl, ann);
    const http = new SteppedHttp(ann);
    const live = openLiveComments(client, http, { taskId: task.id }, { pageSize: 2 });
    const snap = await within('ready', live.ready);
    assert.equal(http.calls.length, 3, 'pages of 2');
    assert.deepEqual(snap.items, await readComments(ann, task.id));

    const added = (await ann.createComment(task.id, 'c5')).data;
    const edited = await ann.request<{ id: string }>('PATCH', `/comments/${snap.items[1]!.id}`, { body: { body: 'c1 edited' } });
    await ann.request('DELETE', `/comments/${snap.items[0]!.id}`);
    let expected = await readComments(ann, task.id);
    await waitFor('live changes', () => live.getSnapshot().items.length === 5 && live.get(added.id) !== undefined && live.get(edited.data.id)?.body === 'c1 edited');
    expected = await readComments(ann, task.id);
    assert.deepEqual(live.getSnapshot().items, expected);
    assert.deepEqual(expected.map((c) => c.body), ['c1 edited', 'c2', 'c3', 'c4', 'c5']);

    await ann.deleteTask(task.id);
    await waitFor('closed', () => live.getSnapshot().status === 'closed');
    assert.deepEqual(live.getSnapshot().items, []);
    assert.equal(live.getSnapshot().error, null);
    assert.equal(client.subscriptions.length, 0, 'the task room was left');
    live.close();
  });

  test('members: paged load, added, role changed, removed', async () => {
    const ann = await newUser(server, 'Ann');
    const others = [await newUser(server, 'Bob'), await newUser(server, 'Cat'), await newUser(server, 'Dan')];
    const team = (await ann.createTeam('Members')).data;
    for (const u of others.slice(0, 2)) await ann.addMember(team.id, { userId: u.user.id, role: 'member' });
    const { client } = connect(server.baseUrl, ann);
    const http = new SteppedHttp(ann);
    const live = openLiveMembers(client, http, { teamId: team.id }, { pageSize: 2 });
    const snap = await within('ready', live.ready);
    assert.equal(http.calls.length, 2, 'pages of 2');
    assert.deepEqual(snap.items, await readMembers(ann, team.id));
    assert.deepEqual(snap.items.map((m) => m.user.displayName), ['Ann', 'Bob', 'Cat']);

    await ann.addMember(team.id, { userId: others[2]!.user.id, role: 'viewer' });
    await ann.request('PATCH', `/teams/${team.id}/members/${others[0]!.user.id}`, { body: { role: 'admin' } });
    await ann.removeMember(team.id, others[1]!.user.id);
    await waitFor('live changes', () => live.getSnapshot().items.map((m) => `${m.user.displayName}:${m.role}`).join() === 'Ann:owner,Bob:admin,Dan:viewer');
    assert.deepEqual(live.getSnapshot().items, await readMembers(ann, team.id));
    // Added back: a removal is not final.
    await ann.addMember(team.id, { userId: others[1]!.user.id, role: 'member' });
    await waitFor('re-added', () => live.get(others[1]!.user.id) !== undefined);
    assert.deepEqual(live.getSnapshot().items, await readMembers(ann, team.id));
  });
});
