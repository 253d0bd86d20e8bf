// The React bindings (@taskforge/client/react) against a live server, rendered with
// react-test-renderer on a concurrent root (the one where StrictMode mounts, unmounts and mounts
// effects again). Mounting, updating and unmounting go through `act`; what the server pushes
// renders on its own, as in an app, and the tests wait for it (bounded).

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { StrictMode, createElement as h, useLayoutEffect, type ReactElement } from 'react';
import TestRenderer, { type ReactTestRenderer, type TestRendererOptions } from 'react-test-renderer';
import WebSocket from 'ws';

import {
  RealtimeClient,
  formatMention,
  type Comment,
  type Member,
  type PresenceUser,
  type Session,
  type Task,
  type WebSocketConstructor,
} from '@taskforge/client';
import {
  useConnectionState,
  useInbox,
  useLiveComments,
  useLiveMembers,
  useLiveTasks,
  usePresence,
  type ConnectionSnapshot,
  type InboxState,
  type LiveSnapshot,
} from '@taskforge/client/react';
import type { LiveTasksQuery } from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { TcpProxy, closeAll, connect, newUser, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;
const renderers = new Set<ReactTestRenderer>();

before(async () => {
  server = await TestServer.start();
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => {
  for (const r of renderers) inAct(() => r.unmount());
  renderers.clear();
  closeAll();
});

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

// React checks this flag when it schedules work: on inside `act` (which flushes everything before
// it returns), off outside it, where updates from the server render by themselves.
const reactEnv = globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean };
reactEnv.IS_REACT_ACT_ENVIRONMENT = false;

function inAct(fn: () => void): void {
  reactEnv.IS_REACT_ACT_ENVIRONMENT = true;
  try {
    TestRenderer.act(() => {
      fn();
    });
  } finally {
    reactEnv.IS_REACT_ACT_ENVIRONMENT = false;
  }
}

/** Renders `el` on a concurrent root. */
function mount(el: ReactElement): ReactTestRenderer {
  const opts: TestRendererOptions & { unstable_isConcurrent: boolean } = {
    createNodeMock: () => null,
    unstable_isConcurrent: true,
  };
  let r: ReactTestRenderer | undefined;
  inAct(() => {
    r = TestRenderer.create(el, opts);
  });
  renderers.add(r!);
  return r!;
}

/** Lets the microtasks and timers due now run (the hooks release what they held then). */
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

/** Unmounts `r`; the hooks release what they held a microtask later (see react.ts). */
async function unmount(r: ReactTestRenderer): Promise<void> {
  inAct(() => r.unmount());
  renderers.delete(r);
  await tick();
}

/** Calls `fn` with the value after every commit of the component (not on renders React drops). */
function useCommitted<T>(value: T, fn: (v: T) => void): void {
  useLayoutEffect(() => {
    fn(value);
  });
}

/** Consecutive repeats removed: a reconnect may announce `reconnecting` once per attempt. */
const collapse = (xs: string[]) => xs.filter((x, i) => i === 0 || xs[i - 1] !== x);
const names = (v: readonly PresenceUser[]) => v.map((u) => u.displayName).sort();
const titles = (s: LiveSnapshot<Task>) => s.items.map((t) => t.title);

describe('useConnectionState', { timeout: 60_000 }, () => {
  test('shows connecting, open, reconnecting when the network is cut, then open again', async () => {
    const ann = await newUser(server, 'Ann');
    const rt = new RealtimeClient({
      url: proxy.baseUrl,
      auth: ann,
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      backoff: { minMs: 50, maxMs: 500 },
      onError: () => {},
    });
    const committed: ConnectionSnapshot[] = [];
    function Status() {
      const s = useConnectionState(rt);
      useCommitted(s, (v) => committed.push(v));
      return h('span', null, s.state);
    }
    const last = () => committed.at(-1)!;
    try {
      const r = mount(h(Status));
      assert.deepEqual(r.toJSON(), { type: 'span', props: {}, children: ['idle'] });
      inAct(() => rt.connect());
      assert.equal(last().state, 'connecting');
      await waitFor('open', () => last().state === 'open', 10_000, () => committed.map((c) => c.state));
      assert.equal(last().change.reconnected, false);

      proxy.cut();
      await waitFor('reconnecting', () => last().state === 'reconnecting');
      assert.equal(typeof last().change.delayMs, 'number', 'the StateChange of the drop comes with it');
      await waitFor('open again', () => last().state === 'open', 10_000, () => committed.map((c) => c.state));
      assert.equal(last().change.reconnected, true);
      assert.deepEqual(collapse(committed.map((c) => c.state)), ['idle', 'connecting', 'open', 'reconnecting', 'open']);
      assert.deepEqual(r.toJSON(), { type: 'span', props: {}, children: ['open'] });

      // Unmounted, the component stops listening: closing the client commits nothing more.
      await unmount(r);
      const n = committed.length;
      rt.close();
      await new Promise((res) => setTimeout(res, 100));
      assert.equal(committed.length, n);

      // A component mounted later starts from the client's state, without a change seen.
      const again: ConnectionSnapshot[] = [];
      function Later() {
        const s = useConnectionState(rt);
        useCommitted(s, (v) => again.push(v));
        return null;
      }
      mount(h(Later));
      assert.deepEqual(again.map((s) => s.state), ['closed']);
      assert.deepEqual(again[0]!.change, { state: 'closed' });
    } finally {
      rt.close();
    }
  });
});

/** A team with Ann (owner) and Bob, and one task. */
async function teamWithTask(): Promise<{ ann: Session; bob: Session; teamId: string; boardId: string; task: Task }> {
  const ann = await newUser(server, 'Ann');
  const bob = await newUser(server, 'Bob');
  const team = (await ann.createTeam('Core')).data;
  await ann.addMember(team.id, { email: bob.user.email, role: 'member' });
  const task = (await ann.createTask(team.id, { title: 'Shared' })).data;
  return { ann, bob, teamId: team.id, boardId: team.defaultBoardId, task };
}

describe('usePresence', { timeout: 60_000 }, () => {
  test('shows a second user arriving and leaving; no new array without a change; released on unmount', async () => {
    const { ann, bob, task } = await teamWithTask();
    const rt = connect(server.baseUrl, ann).client;
    const committed: (readonly PresenceUser[])[] = [];
    function Viewers({ taskId }: { taskId: string | null }) {
      const viewers = usePresence(rt, taskId);
      useCommitted(viewers, (v) => committed.push(v));
      return h('ul', null, viewers.map((v) => h('li', { key: v.userId }, v.displayName)));
    }
    const r = mount(h(Viewers, { taskId: task.id }));
    const last = () => names(committed.at(-1)!);
    await waitFor('Ann sees herself', () => last().join() === 'Ann', 10_000, () => committed.map(names));
    assert.equal(rt.subscriptions.length, 1);

    const bobRt = connect(server.baseUrl, bob).client;
    const bobSub = bobRt.subscribe({ taskId: task.id });
    await waitFor('Bob arrives', () => last().join() === 'Ann,Bob', 10_000, () => committed.map(names));

    // Activity in the task room that changes nobody's presence renders nothing.
    const n = committed.length;
    const seen = new Promise<void>((resolve) => rt.subscriptions[0]!.on('comment.created', () => resolve()));
    await ann.createComment(task.id, 'hello');
    await within('the comment reaches Ann', seen);
    assert.equal(committed.length, n);

    bobSub.unsubscribe();
    await waitFor('Bob leaves', () => last().join() === 'Ann', 10_000, () => committed.map(names));
    assert.ok(Object.isFrozen(committed.at(-1)));
    assert.deepEqual(
      r.root.findAllByType('li').map((li) => li.children),
      [['Ann']],
    );

    // taskId -> null releases the room; unmounting leaves nothing behind.
    inAct(() => r.update(h(Viewers, { taskId: null })));
    await tick();
    assert.deepEqual(committed.at(-1), []);
    assert.equal(rt.subscriptions.length, 0);
    inAct(() => r.update(h(Viewers, { taskId: task.id })));
    await waitFor('back on the task', () => last().join() === 'Ann');
    await unmount(r);
    assert.equal(rt.subscriptions.length, 0);
  });

  test('under StrictMode: one task-room handle while mounted, none after', async () => {
    const { ann, task } = await teamWithTask();
    const rt = connect(server.baseUrl, ann).client;
    let shown: readonly PresenceUser[] = [];
    function Viewers() {
      shown = usePresence(rt, task.id);
      return null;
    }
    const r = mount(h(StrictMode, null, h(Viewers)));
    assert.equal(rt.subscriptions.length, 1);
    await waitFor('joined', () => names(shown).join() === 'Ann');
    assert.equal(rt.subscriptions.length, 1);
    assert.equal(rt.subscriptions[0]!.state, 'active');
    await unmount(r);
    assert.equal(rt.subscriptions.length, 0);
  });
});

describe('live hooks', { timeout: 90_000 }, () => {
  test("useLiveTasks renders the server's tasks and each change once, and nothing on unrelated activity", async () => {
    const { ann, bob, teamId, boardId, task } = await teamWithTask();
    await ann.createTask(teamId, { title: 'Second' });
    const rt = connect(server.baseUrl, ann).client;

    const tasks: LiveSnapshot<Task>[] = [];
    const comments: LiveSnapshot<Comment>[] = [];
    const members: LiveSnapshot<Member>[] = [];
    let viewers: readonly PresenceUser[] = [];
    function Tasks() {
      // A new query object on every render: the hook keys it by value.
      const s = useLiveTasks(rt, { teamId, boardId });
      useCommitted(s, (v) => tasks.push(v));
      return h('ul', null, s.items.map((t) => h('li', { key: t.id }, t.title)));
    }
    // Siblings on the same client whose rooms carry activity the task list does not show.
    function Side() {
      const c = useLiveComments(rt, { taskId: task.id });
      const m = useLiveMembers(rt, { teamId });
      viewers = usePresence(rt, task.id);
      useCommitted(c, (v) => comments.push(v));
      useCommitted(m, (v) => members.push(v));
      return null;
    }
    const r = mount(h('div', null, h(Tasks), h(Side)));
    const last = () => tasks.at(-1)!;
    await waitFor('tasks live', () => last().status === 'live', 10_000, () => tasks.map((s) => s.status));
    await waitFor('siblings live', () => comments.at(-1)!.status === 'live' && members.at(-1)!.status === 'live');
    await waitFor('Ann present', () => viewers.length === 1);
    const onServer = (await ann.listTasks(teamId)).data.items;
    assert.deepEqual(new Set(titles(last())), new Set(onServer.map((t) => t.title)));
    assert.equal(last().items.length, 2);
    assert.deepEqual(
      r.root.findAllByType('li').map((li) => li.children[0]),
      titles(last()),
    );

    // One change, one commit.
    let n = tasks.length;
    await ann.createTask(teamId, { title: 'Third' });
    await waitFor('Third shown', () => titles(last()).includes('Third'));
    // Unrelated activity through the same socket: a comment (task room), a member (team room),
    // a viewer (presence). Once the siblings show all of it, the task list has had every chance
    // to render again, and must not have.
    await ann.createComment(task.id, 'first!');
    const carol = await newUser(server, 'Carol');
    await ann.addMember(teamId, { email: carol.user.email, role: 'member' });
    const bobRt = connect(server.baseUrl, bob).client;
    bobRt.subscribe({ taskId: task.id });
    await waitFor(
      'the siblings saw it all',
      () => comments.at(-1)!.items.length === 1 && members.at(-1)!.items.length === 3 && viewers.length === 2,
      10_000,
    );
    assert.equal(tasks.length, n + 1, 'one commit for Third, none for the rest');

    // An update to a shown task: one more commit.
    n = tasks.length;
    await ann.updateTask(task.id, { title: 'Shared (renamed)' });
    await waitFor('rename shown', () => titles(last()).includes('Shared (renamed)'));
    await ann.createComment(task.id, 'second');
    await waitFor('second comment', () => comments.at(-1)!.items.length === 2);
    assert.equal(tasks.length, n + 1);
    assert.equal(last().status, 'live');
    await unmount(r);
    assert.equal(rt.subscriptions.length, 0);
  });

  test('under StrictMode useLiveTasks leaves one subscription per room after mount and none after unmount', async () => {
    const { ann, teamId, boardId } = await teamWithTask();
    const rt = connect(server.baseUrl, ann).client;
    let shown: LiveSnapshot<Task> | null = null;
    function Tasks() {
      shown = useLiveTasks(rt, { teamId, boardId });
      return null;
    }
    const r = mount(h(StrictMode, null, h(Tasks)));
    await waitFor('live', () => shown?.status === 'live', 10_000, () => shown?.status);
    const subs = rt.subscriptions;
    // The board's room, and the team's for label.deleted.
    assert.deepEqual(
      subs.map((s) => [s.key, s.state]).sort(),
      [[`board:${boardId}`, 'active'], [`team:${teamId}`, 'active']],
    );
    // The collection that survived the double mount is the working one.
    await ann.createTask(teamId, { title: 'After mount' });
    await waitFor('live change', () => shown!.items.some((t) => t.title === 'After mount'));
    await unmount(r);
    assert.equal(rt.subscriptions.length, 0);
  });

  test('the query is keyed by value: an equal query keeps the collection, another one replaces it', async () => {
    const { ann, teamId, boardId } = await teamWithTask();
    const board2 = (await ann.createBoard(teamId, 'Second')).data;
    await ann.createTask(teamId, { title: 'On board 2', boardId: board2.id });
    const rt = connect(server.baseUrl, ann).client;
    let shown: LiveSnapshot<Task> | null = null;
    function Tasks({ query }: { query: LiveTasksQuery | null }) {
      shown = useLiveTasks(rt, query);
      return null;
    }
    const r = mount(h(Tasks, { query: { teamId, boardId } }));
    await waitFor('live', () => shown?.status === 'live');
    const subs = [...rt.subscriptions];
    assert.equal(subs.length, 2, 'the board room and the team room');
    inAct(() => r.update(h(Tasks, { query: { boardId, teamId } })));
    assert.deepEqual(rt.subscriptions, subs, 'same handles: nothing reopened');
    assert.equal(shown!.status, 'live');

    inAct(() => r.update(h(Tasks, { query: { teamId, boardId: board2.id } })));
    await waitFor('board 2 live', () => shown?.status === 'live' && shown.items.length === 1);
    assert.deepEqual(titles(shown!), ['On board 2']);
    assert.deepEqual(rt.subscriptions.map((s) => s.key).sort(), [`board:${board2.id}`, `team:${teamId}`]);

    inAct(() => r.update(h(Tasks, { query: null })));
    await tick();
    assert.equal(shown!.status, 'closed');
    assert.equal(rt.subscriptions.length, 0);
    await unmount(r);
  });

  test('a client without a session shows status error, saying so', async () => {
    const rt = new RealtimeClient({ url: 'http://127.0.0.1:1', auth: 'token', WebSocket: WebSocket as unknown as WebSocketConstructor });
    let shown: LiveSnapshot<Task> | null = null;
    function Tasks({ teamId }: { teamId: string }) {
      shown = useLiveTasks(rt, { teamId });
      return null;
    }
    const r = mount(h(Tasks, { teamId: 'x' }));
    assert.equal(shown!.status, 'error');
    assert.match(String(shown!.error), /session/);
    await unmount(r);
    assert.equal(rt.subscriptions.length, 0);
    rt.close();
  });
});

describe('useInbox', { timeout: 60_000 }, () => {
  test('under StrictMode: the unread count and items live, markRead through the hook, one stream handle, none after unmount', async () => {
    const { ann, bob, task } = await teamWithTask();
    const rt = connect(server.baseUrl, bob).client;
    const committed: InboxState[] = [];
    function Bell() {
      const inbox = useInbox(rt);
      useCommitted(inbox, (v) => committed.push(v));
      return h('span', null, String(inbox.unreadCount));
    }
    const r = mount(h(StrictMode, null, h(Bell)));
    const last = () => committed.at(-1)!;
    await waitFor('live', () => last().status === 'live', 10_000, () => committed.map((c) => c.status));
    assert.equal(last().unreadCount, 0);
    assert.equal(rt.inboxSubscriptions.length, 1);

    await ann.createComment(task.id, `look ${formatMention({ id: bob.user.id, displayName: 'Bob' })}`);
    await waitFor('the mention shows', () => last().unreadCount === 1 && last().items.length === 1);
    assert.deepEqual(r.toJSON(), { type: 'span', props: {}, children: ['1'] });
    assert.ok(Object.isFrozen(last()));
    // Activity that owes Bob nothing (his own comment, a task he does not follow) renders
    // nothing: the next mention is the next commit.
    const n = committed.length;
    await bob.createComment(task.id, 'Bob himself');
    await ann.createTask(task.teamId, { title: 'Not for Bob' });
    await ann.createComment(task.id, `again ${formatMention({ id: bob.user.id, displayName: 'Bob' })}`);
    await waitFor('the second mention shows', () => last().unreadCount === 2);
    assert.equal(committed.length, n + 1);

    await last().markRead(last().items[0]!.id);
    await waitFor('read', () => last().unreadCount === 1 && last().items[0]!.readAt != null);
    assert.deepEqual(r.toJSON(), { type: 'span', props: {}, children: ['1'] });
    await unmount(r);
    assert.equal(rt.inboxSubscriptions.length, 0);
  });
});
