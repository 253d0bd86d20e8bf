// Subscriptions against a live server: per-scope handlers get exactly their room's activities
// (and nothing of other teams), presence between two users, duplicate drops, refusals and
// revocation.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import {
  RealtimeError,
  type Activity,
  type PresenceChange,
  type PresenceUser,
  type Session,
  type Task,
} from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { closeAll, connect, newUser, waitFor, within } from './helpers/util.js';

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

afterEach(() => closeAll());

after(async () => {
  closeAll();
  await server?.dispose();
});

const summary = (a: Activity) => `${a.type}#${a.seq}`;

describe('per-scope handlers', { timeout: 60_000 }, () => {
  test('team, board and task scopes receive their own activities, in seq order, and no other team', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Core')).data;
    const other = (await bob.createTeam('Bob only')).data;
    const board2 = (await ann.createBoard(team.id, 'Second')).data;
    const watched = (await ann.createTask(team.id, { title: 'Watched' })).data;

    const { client } = connect(server.baseUrl, ann);
    const got = { team: [] as Activity[], board: [] as Activity[], task: [] as Activity[], titles: [] as string[] };
    const all: Activity[] = [];
    const teamSub = client.subscribe(
      { teamId: team.id },
      {
        onActivity: (a) => got.team.push(a),
        // Typed per-type handler: `a` is narrowed to task.created, so `a.data.task` is a Task.
        on: { 'task.created': (a) => got.titles.push(a.data.task.title) },
      },
    );
    const boardSub = client.subscribe({ boardId: board2.id }, { onActivity: (a) => got.board.push(a) });
    const taskSub = client.subscribe({ taskId: watched.id }, { onActivity: (a) => got.task.push(a) });
    await within('subscriptions', Promise.all([teamSub.ready, boardSub.ready, taskSub.ready]));

    // Ann can neither see nor subscribe to Bob's team, and gets nothing of it.
    const foreign = client.subscribe({ teamId: other.id }, { onActivity: (a) => all.push(a) });
    const refused = await foreign.ready.catch((e) => e);
    assert.ok(refused instanceof RealtimeError);
    assert.equal(refused.code, 'forbidden');
    assert.equal(foreign.state, 'ended');

    const onBoard2 = (await ann.createTask(team.id, { title: 'On board 2', boardId: board2.id })).data; // team, board2
    await ann.updateTask(watched.id, { priority: 'high' }); // task (its board is not watched)
    const comment = (await ann.createComment(watched.id, 'looks good')).data; // task
    await ann.updateTask(onBoard2.id, { status: 'done' }); // board2
    await bob.createTask(other.id, { title: 'Secret' }); // nothing for Ann
    await ann.deleteTask(onBoard2.id); // team, board2
    await ann.request('PATCH', `/teams/${team.id}`, { body: { name: 'Core 2' } }); // team

    await waitFor('all deliveries', () => got.team.length === 3 && got.board.length === 3 && got.task.length === 2, 10_000, () => ({
      team: got.team.map(summary),
      board: got.board.map(summary),
      task: got.task.map(summary),
    }));
    assert.deepEqual(got.team.map((a) => a.type), ['task.created', 'task.deleted', 'team.updated']);
    assert.deepEqual(got.board.map((a) => a.type), ['task.created', 'task.updated', 'task.deleted']);
    assert.deepEqual(got.task.map((a) => a.type), ['task.updated', 'comment.created']);
    assert.deepEqual(got.titles, ['On board 2']);
    assert.equal((got.task[1] as Extract<Activity, { type: 'comment.created' }>).data.comment.id, comment.id);
    for (const list of [got.team, got.board, got.task]) {
      for (const a of list) assert.equal(a.teamId, team.id);
      const seqs = list.map((a) => a.seq);
      assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y));
    }
    assert.equal(teamSub.lastSeq, got.team.at(-1)!.seq);
    assert.equal(all.length, 0);
  });

  test('unsubscribe stops deliveries; a scope can be subscribed again', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Core')).data;
    const { client } = connect(server.baseUrl, ann);
    const first: Activity[] = [];
    const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => first.push(a) });
    await within('subscribed', sub.ready);
    await ann.createTask(team.id, { title: 'one' });
    await waitFor('first delivery', () => first.length === 1);
    sub.unsubscribe();
    assert.equal(sub.state, 'ended');

    const second: Activity[] = [];
    const again = client.subscribe({ teamId: team.id }, { onActivity: (a) => second.push(a) });
    await within('subscribed again', again.ready);
    await ann.createTask(team.id, { title: 'two' });
    await waitFor('second delivery', () => second.length === 1);
    assert.equal(first.length, 1);
    assert.equal((second[0] as Extract<Activity, { type: 'task.created' }>).data.task.title, 'two');
  });

  test('a task moved between boards reaches both boards, its task.assigned included', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Core')).data;
    await ann.addMember(team.id, { userId: bob.user.id, role: 'member' });
    const board2 = (await ann.createBoard(team.id, 'Second')).data;
    const task = (await ann.createTask(team.id, { title: 'Mover' })).data;
    const { client } = connect(server.baseUrl, ann);
    const from: string[] = [];
    const to: string[] = [];
    const a = client.subscribe({ boardId: team.defaultBoardId }, { onActivity: (x) => from.push(x.type) });
    const b = client.subscribe({ boardId: board2.id }, { onActivity: (x) => to.push(x.type) });
    await within('subscribed', Promise.all([a.ready, b.ready]));
    await ann.updateTask(task.id, { boardId: board2.id, assigneeUserId: bob.user.id });
    await waitFor('both boards', () => from.length === 2 && to.length === 2, 10_000, () => ({ from, to }));
    assert.deepEqual(from, ['task.updated', 'task.assigned']);
    assert.deepEqual(to, ['task.updated', 'task.assigned']);
  });
});

describe('duplicates', { timeout: 60_000 }, () => {
  test('a replay that repeats what another room delivered is dropped per (teamId, seq)', async () => {
    const ann = await newUser(server, 'Ann');
    const team = (await ann.createTeam('Core')).data;
    const everything: Activity[] = [];
    const { client } = connect(server.baseUrl, ann, { onActivity: (a) => everything.push(a) });
    const teamGot: Activity[] = [];
    const teamSub = client.subscribe({ teamId: team.id }, { onActivity: (a) => teamGot.push(a) });
    await within('team subscribed', teamSub.ready);

    const created: Task[] = [];
    for (let i = 0; i < 3; i++) created.push((await ann.createTask(team.id, { title: `t${i}` })).data);
    await waitFor('live deliveries', () => teamGot.length === 3);

    // The board room resumes from seq 0: its replay repeats the three task.created the socket
    // already received through the team room.
    const boardGot: Activity[] = [];
    const boardSub = client.subscribe(
      { boardId: team.defaultBoardId },
      { onActivity: (a) => boardGot.push(a) },
      { since: 0 },
    );
    const info = await within('board subscribed', boardSub.ready);
    assert.equal(info.since, 0);
    assert.equal(info.replayed, 3);
    assert.deepEqual(boardGot.map((a) => a.seq), teamGot.map((a) => a.seq));
    assert.equal(client.stats.duplicates, 3);
    assert.equal(teamGot.length, 3, 'the team handler is not called again');
    assert.deepEqual(everything.map((a) => a.seq), [1, 2, 3], 'client-wide onActivity once per seq');

    // Live from now on: one frame, delivered to both scopes once.
    await ann.createTask(team.id, { title: 'live' });
    await waitFor('live to both', () => teamGot.length === 4 && boardGot.length === 4);
    assert.equal(everything.length, 4);
    assert.equal(client.stats.duplicates, 3);
  });
});

describe('presence', { timeout: 60_000 }, () => {
  async function setup(): Promise<{ ann: Session; bob: Session; taskId: string }> {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Core')).data;
    await ann.addMember(team.id, { email: bob.user.email, role: 'member' });
    const task = (await ann.createTask(team.id, { title: 'Shared' })).data;
    return { ann, bob, taskId: task.id };
  }

  const names = (v: readonly PresenceUser[]) => v.map((u) => u.displayName).sort();

  test('viewers join and leave, from the snapshot and the events', async () => {
    const { ann, bob, taskId } = await setup();
    const annClient = connect(server.baseUrl, ann).client;
    const bobClient = connect(server.baseUrl, bob).client;

    const annSub = annClient.subscribe({ taskId });
    await within('ann subscribed', annSub.ready);
    const presence = annSub.presence!;
    assert.deepEqual(names(presence.viewers), ['Ann']);
    assert.equal(presence.synced, true);
    const changes: PresenceChange['kind'][] = [];
    presence.onChange((_, change) => changes.push(change.kind));

    const bobSub = bobClient.subscribe({ taskId });
    await within('bob subscribed', bobSub.ready);
    assert.deepEqual(names(bobSub.presence!.viewers), ['Ann', 'Bob']);
    await waitFor('bob joined', () => presence.has(bob.user.id));
    assert.deepEqual(names(presence.viewers), ['Ann', 'Bob']);

    bobSub.unsubscribe();
    await waitFor('bob left', () => !presence.has(bob.user.id));
    assert.deepEqual(names(presence.viewers), ['Ann']);

    // Leaving by disconnecting counts too.
    const again = bobClient.subscribe({ taskId });
    await within('bob back', again.ready);
    await waitFor('bob joined again', () => presence.has(bob.user.id));
    bobClient.close();
    await waitFor('bob gone', () => !presence.has(bob.user.id));
    assert.deepEqual(changes, ['joined', 'left', 'joined', 'left']);
  });

  test('presence is per user: a second socket of the same user is no new viewer', async () => {
    const { ann, bob, taskId } = await setup();
    const annSub = connect(server.baseUrl, ann).client.subscribe({ taskId });
    await within('ann subscribed', annSub.ready);
    const tab1 = connect(server.baseUrl, bob).client;
    const tab2 = connect(server.baseUrl, bob).client;
    const events: string[] = [];
    annSub.presence!.onChange((_, c) => events.push(c.kind));
    await within('tab 1', tab1.subscribe({ taskId }).ready);
    await within('tab 2', tab2.subscribe({ taskId }).ready);
    await waitFor('bob present', () => annSub.presence!.has(bob.user.id));
    tab1.close();
    // Bob is still there through tab 2: give a stray `left` time to arrive, then check.
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(annSub.presence!.has(bob.user.id));
    tab2.close();
    await waitFor('bob left', () => !annSub.presence!.has(bob.user.id));
    assert.deepEqual(events, ['joined', 'left']);
  });
});

describe('revocation', { timeout: 60_000 }, () => {
  test('a removed member gets member.removed, then the subscription ends with membership_revoked', async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Core')).data;
    await ann.addMember(team.id, { email: bob.user.email, role: 'member' });
    const bobAll: Activity[] = [];
    const { client } = connect(server.baseUrl, bob, { onActivity: (a) => bobAll.push(a) });
    const errors: RealtimeError[] = [];
    const got: Activity[] = [];
    const sub = client.subscribe({ teamId: team.id }, { onActivity: (a) => got.push(a), onError: (e) => errors.push(e) });
    await within('subscribed', sub.ready);
    await ann.removeMember(team.id, bob.user.id);
    await waitFor('revoked', () => errors.length === 1);
    assert.equal(errors[0]!.code, 'membership_revoked');
    assert.equal(sub.state, 'ended');
    assert.deepEqual(got.map((a) => a.type), ['member.removed']);
    await ann.createTask(team.id, { title: 'after' });
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(bobAll.map((a) => a.type), ['member.removed']);
  });

  test("the user's own deliveries (an assignment) reach the client-wide onActivity", async () => {
    const ann = await newUser(server, 'Ann');
    const bob = await newUser(server, 'Bob');
    const team = (await ann.createTeam('Core')).data;
    await ann.addMember(team.id, { email: bob.user.email, role: 'member' });
    const bobAll: Activity[] = [];
    const { client, states } = connect(server.baseUrl, bob, { onActivity: (a) => bobAll.push(a) });
    await waitFor('open', () => client.state === 'open');
    assert.deepEqual(states.map((s) => s.state), ['connecting', 'open']);
    const task = (await ann.createTask(team.id, { title: 'For Bob', assigneeUserId: bob.user.id })).data;
    // The fan-out of Bob's own member.added may still be under way when his socket joins (it
    // follows the HTTP answer): it can arrive too, before the assignment.
    await waitFor('assignment', () => bobAll.some((a) => a.type === 'task.assigned'), 10_000, () => bobAll.map((a) => a.type));
    assert.deepEqual(
      bobAll.map((a) => a.type).filter((t) => t !== 'member.added'),
      ['task.assigned'],
    );
    const a = bobAll.find((x) => x.type === 'task.assigned')!;
    if (a.type === 'task.assigned') assert.equal(a.data.task.id, task.id);
  });
});
