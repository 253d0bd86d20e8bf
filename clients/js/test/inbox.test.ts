// The user's inbox against a live server: the list (newest first, paged), the unread count, marks
// by id and up to a seq, live delivery, two clients of one user, a resume after a cut connection
// (behind a TCP proxy), the shared low-level stream, following, a membership removal, and the
// mention markup. Every check compares with a fresh HTTP read of GET /me/notifications.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import WebSocket from 'ws';

import {
  Session,
  formatMention,
  mentionedUserIds,
  mentionsToPlainText,
  parseMentions,
  type Inbox,
  type InboxEvent,
  type InboxGapInfo,
  type InboxSnapshot,
  type InboxSubscribedInfo,
  type Notification,
  type NotificationPage,
  type WebSocketConstructor,
} from '@taskforge/client';
import { TestServer } from './helpers/server.js';
import { TcpProxy, closeAll, connect, newUser, sleep, waitFor, within } from './helpers/util.js';

let server: TestServer;
let proxy: TcpProxy;
const inboxes = new Set<Inbox>();

before(async () => {
  server = await TestServer.start();
  proxy = await TcpProxy.start(() => server.port);
});

afterEach(() => {
  for (const i of inboxes) i.close();
  inboxes.clear();
  closeAll();
  proxy.unblock();
});

after(async () => {
  closeAll();
  await proxy?.close();
  await server?.dispose();
});

const PASSWORD = 'correct horse battery';

const at = (s: Session) => formatMention({ id: s.user.id, displayName: s.user.displayName });

/** A team of `owner` with `members` in it (as members). */
async function teamOf(owner: Session, members: Session[], name = 'Inbox'): Promise<{ teamId: string; boardId: string }> {
  const team = (await owner.createTeam(name)).data;
  for (const m of members) await owner.addMember(team.id, { email: m.user.email, role: 'member' });
  return { teamId: team.id, boardId: team.defaultBoardId };
}

/** Every notification of the session's user, newest first, and the stream's seq and count. */
async function readInbox(s: Session): Promise<{ items: Notification[]; seq: number; unreadCount: number }> {
  const items: Notification[] = [];
  let cursor: string | undefined;
  let first: NotificationPage | undefined;
  for (let i = 0; i < 100; i++) {
    const page = (await s.listNotifications({ limit: 200, ...(cursor ? { cursor } : {}) })).data;
    first ??= page;
    items.push(...page.items);
    cursor = page.nextCursor ?? undefined;
    if (!cursor) return { items, seq: first.seq, unreadCount: first.unreadCount };
  }
  throw new Error('more than 100 pages of notifications');
}

/** What the test compares: id, seq and whether it is read. */
const shape = (items: readonly Notification[]) => items.map((n) => ({ id: n.id, seq: n.seq, read: n.readAt != null }));

/** Waits (bounded) until the inbox shows exactly the server's notifications and count. */
async function untilMatches(what: string, inbox: Inbox, s: Session, ms = 10_000): Promise<void> {
  let last: unknown;
  await waitFor(
    what,
    async () => {
      const server = await readInbox(s);
      const shown = inbox.getSnapshot();
      last = { shown: shape(shown.items), server: shape(server.items), count: [shown.unreadCount, server.unreadCount] };
      return shown.status === 'live' && shown.unreadCount === server.unreadCount && JSON.stringify(shape(shown.items)) === JSON.stringify(shape(server.items));
    },
    ms,
    () => last,
  );
}

function open(inbox: Inbox): Inbox {
  inboxes.add(inbox);
  return inbox;
}

/** A `ws` WebSocket that records every frame the client sends and receives. */
function recordingSocket(sent: Record<string, unknown>[], received?: Record<string, unknown>[]): WebSocketConstructor {
  class Recording extends WebSocket {
    constructor(url: string) {
      super(url);
      if (received) this.on('message', (data) => received.push(JSON.parse(String(data)) as Record<string, unknown>));
    }
    override send(data: string): void {
      sent.push(JSON.parse(data) as Record<string, unknown>);
      super.send(data);
    }
  }
  return Recording as unknown as WebSocketConstructor;
}

describe('the mention markup', () => {
  const ann = { id: '0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b', displayName: 'Ann' };
  const bea = { id: '0193A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A6C', displayName: 'Bea [ops]\nteam' };

  test('formatMention writes @[Name](user:<id>), with a name the server reads as one', () => {
    assert.equal(formatMention(ann), `@[Ann](user:${ann.id})`);
    // Brackets and line breaks would end or void the name: replaced. The id is lower-cased.
    assert.equal(formatMention(bea), '@[Bea (ops) team](user:0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a6c)');
    assert.equal(formatMention({ id: ann.id, displayName: '' }), `@[user](user:${ann.id})`);
    assert.throws(() => formatMention({ id: 'nope', displayName: 'x' }), TypeError);
  });

  test('parseMentions splits a text into text and mentions, and gives the text back', () => {
    const text = `Hi ${formatMention(ann)}, and ${formatMention(bea)}: see @[x](user:nope) and [y](user:${ann.id}).`;
    const parts = parseMentions(text);
    assert.deepEqual(
      parts.map((p) => (p.kind === 'text' ? p.text : `<${p.name}|${p.userId}>`)),
      ['Hi ', `<Ann|${ann.id}>`, ', and ', '<Bea (ops) team|0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a6c>', `: see @[x](user:nope) and [y](user:${ann.id}).`],
    );
    assert.equal(parts.map((p) => (p.kind === 'text' ? p.text : p.raw)).join(''), text);
    assert.deepEqual(parseMentions(''), []);
    assert.deepEqual(parseMentions('plain'), [{ kind: 'text', text: 'plain' }]);
  });

  test('parseMentions reads the markup as the server does', () => {
    const id = ann.id;
    // The name runs to the first `]`; one with `[` or a line break, or an empty one, is no mention.
    assert.deepEqual(mentionedUserIds(`@[Bob [old]](user:${id})`), []);
    assert.deepEqual(mentionedUserIds(`@[a\nb](user:${id})`), []);
    assert.deepEqual(mentionedUserIds(`@[a]b](user:${id})`), []);
    assert.deepEqual(mentionedUserIds(`@[](user:${id})`), []);
    // The id must be a UUID closed by `)`.
    assert.deepEqual(mentionedUserIds(`@[a](user:${id}`), []);
    assert.deepEqual(mentionedUserIds(`@[a](user:${id.slice(1)})`), []);
    // A failed `@[` does not swallow the mention after it; each user once, in order.
    assert.deepEqual(mentionedUserIds(`@[ @[Ann](user:${id}) @[Ann again](user:${id.toUpperCase()})`), [id]);
    assert.deepEqual(mentionedUserIds(`@[x @[Ann](user:${id})`), [id]);
    assert.deepEqual(mentionedUserIds(`@[x](user:nope)@[Ann](user:${id})`), [id]);
    // In one pass: texts that made a naive parser quadratic.
    assert.deepEqual(mentionedUserIds(`${'@[a'.repeat(100_000)}@[Ann](user:${id})`), [id]);
    assert.deepEqual(mentionedUserIds(`${'@['.repeat(100_000)}](user:`), []);
    assert.equal(mentionsToPlainText(`x ${formatMention(ann)} y`), 'x @Ann y');
    assert.equal(mentionsToPlainText(`x ${formatMention(ann)} y`, () => 'Annie'), 'x @Annie y');
  });
});

describe('the inbox', { timeout: 90_000 }, () => {
  test('a mention notifies; the list is newest first and pages; the count is the server\'s', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Launch post' })).data;
    for (let i = 0; i < 5; i++) await ann.createComment(task.id, `note ${i} for ${at(bea)}`);

    const me = (await bea.me()).data;
    assert.equal(me.unreadNotifications, 5);
    assert.equal(typeof me.inboxSeq, 'number');

    const { client } = connect(server.baseUrl, bea);
    const inbox = open(client.inbox({ pageSize: 2 }));
    const first = await within('ready', inbox.ready);
    assert.equal(first.items.length, 2);
    assert.equal(first.unreadCount, 5);
    assert.equal(first.hasMore, true);
    await inbox.loadMore();
    await inbox.loadMore();
    const all = inbox.getSnapshot();
    assert.equal(all.hasMore, false);
    assert.equal(all.items.length, 5);
    const seqs = all.items.map((n) => n.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), 'newest first');
    await untilMatches('the paged list', inbox, bea);
    const newest = all.items[0]!;
    assert.equal(newest.actorDisplayName, 'Ann');
    assert.equal(newest.actorUserId, ann.user.id);
    assert.equal(newest.taskId, task.id);
    assert.equal(newest.teamId, teamId);
    assert.equal(newest.taskTitle, 'Launch post');
    assert.equal(newest.activityType, 'comment.created');
    assert.ok(newest.reasons.includes('mentioned'), `reasons: ${newest.reasons.join(', ')}`);
    assert.ok(newest.commentId, 'a comment notification names its comment');
    assert.equal(newest.readAt, null);
    assert.match(newest.excerpt ?? '', /note 4 for/);
    // Ann is the actor of all of it: nothing for her.
    assert.equal((await readInbox(ann)).items.length, 0);
  });

  test('live: created and read events; markRead by id and markAllRead', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Live' })).data;
    const { client, errors } = connect(server.baseUrl, bea);
    const inbox = open(client.inbox());
    const changes: InboxSnapshot[] = [];
    inbox.on('change', (s) => void changes.push(s));
    await within('ready', inbox.ready);
    assert.equal(inbox.unreadCount, 0);
    assert.equal(inbox.items.length, 0);

    // Assigned at creation, then mentioned: two notifications, live.
    await ann.createTask(teamId, { title: 'Yours', assigneeUserId: bea.user.id });
    await ann.createComment(task.id, `ping ${at(bea)}`);
    await waitFor('two live notifications', () => inbox.items.length === 2 && inbox.unreadCount === 2, 10_000, () => inbox.getSnapshot());
    assert.deepEqual(inbox.items.map((n) => n.taskTitle), ['Live', 'Yours']);
    assert.deepEqual(inbox.items[1]!.reasons, ['assigned']);
    await untilMatches('after two', inbox, bea);

    await inbox.markRead(inbox.items[1]!.id);
    // The answer already counts it; the stream's event says the same.
    assert.equal(inbox.unreadCount, 1);
    assert.ok(inbox.items[1]!.readAt);
    await untilMatches('after a mark by id', inbox, bea);

    await ann.createComment(task.id, `again ${at(bea)}`);
    await waitFor('a third', () => inbox.items.length === 3 && inbox.unreadCount === 2);
    await inbox.markAllRead();
    assert.equal(inbox.unreadCount, 0);
    assert.ok(inbox.items.every((n) => n.readAt != null));
    await untilMatches('after mark all', inbox, bea);
    assert.equal((await bea.me()).data.unreadNotifications, 0);
    // Snapshots kept their identity between changes, and there were several.
    assert.ok(changes.length >= 4);
    assert.deepEqual(errors, []);
  });

  test('a mark in one client of the user updates the other client at once', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const bea2 = await Session.login(server.baseUrl, { email: bea.user.email, password: PASSWORD });
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Two tabs' })).data;
    for (let i = 0; i < 3; i++) await ann.createComment(task.id, `${i} ${at(bea)}`);

    const one = open(connect(server.baseUrl, bea).client.inbox());
    const two = open(connect(server.baseUrl, bea2).client.inbox());
    await within('both ready', Promise.all([one.ready, two.ready]));
    assert.equal(one.unreadCount, 3);
    assert.equal(two.unreadCount, 3);

    const target = one.items[1]!;
    await one.markRead([target.id]);
    await waitFor('the other client to see the mark', () => two.unreadCount === 2 && two.get(target.id)?.readAt != null, 10_000, () => two.getSnapshot());
    assert.deepEqual(two.items.filter((n) => n.readAt == null).map((n) => n.id), one.items.filter((n) => n.readAt == null).map((n) => n.id));

    await two.markAllRead();
    await waitFor('the first client to see mark all', () => one.unreadCount === 0 && one.items.every((n) => n.readAt != null), 10_000, () => one.getSnapshot());
    await untilMatches('client one', one, bea);
    await untilMatches('client two', two, bea2);
  });

  test('a cut connection: the client resubscribes with the highest seq seen and gets exactly what it missed', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const beaDirect = await Session.login(server.baseUrl, { email: bea.user.email, password: PASSWORD });
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Cut' })).data;
    await ann.createComment(task.id, `before ${at(bea)}`);

    // Bea's client goes through the proxy; the writes and her other client do not.
    const sent: Record<string, unknown>[] = [];
    const { client, errors } = connect(proxy.baseUrl, bea, { WebSocket: recordingSocket(sent) });
    const inbox = open(client.inbox());
    // A raw handle on the same stream, from now: every event once, in seq order.
    const events: InboxEvent[] = [];
    const joins: InboxSubscribedInfo[] = [];
    const raw = client.subscribeInbox({ onEvent: (e) => void events.push(e), onSubscribed: (i) => void joins.push(i) });
    await within('ready', Promise.all([inbox.ready, raw.ready]));
    await ann.createComment(task.id, `live ${at(bea)}`);
    await waitFor('the live one', () => inbox.items.length === 2 && events.length === 1);
    const seen = inbox.getSnapshot().seq!;
    assert.equal(raw.lastSeq, seen);

    proxy.block();
    await waitFor('the client to notice', () => client.state === 'reconnecting');
    // While it is away: three notifications and a mark-read from Bea's other client.
    for (let i = 0; i < 3; i++) await ann.createComment(task.id, `away ${i} ${at(bea)}`);
    const away = (await beaDirect.listNotifications({ since: seen })).data;
    assert.equal(away.items.length, 3);
    await beaDirect.markNotificationsRead({ ids: [away.items[2]!.id] });
    const subscribesBefore = sent.filter((f) => f.type === 'subscribe' && f.inbox === true).length;
    proxy.unblock();

    await untilMatches('after the resume', inbox, bea, 20_000);
    const resubscribes = sent.filter((f) => f.type === 'subscribe' && f.inbox === true).slice(subscribesBefore);
    assert.equal(resubscribes.length, 1, 'one inbox subscribe for the stream after the reconnect');
    assert.equal(resubscribes[0]!.since, seen, 'resumed after the highest seq seen');
    const resumed = joins.at(-1)!;
    assert.equal(resumed.resumed, true);
    assert.equal(resumed.since, seen);
    assert.equal(resumed.replayed, 4, 'three creations and one mark');
    // Exactly once, in seq order, across the cut.
    const seqs = events.map((e) => e.seq);
    assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b));
    const liveOne = inbox.items.find((n) => n.excerpt?.startsWith('live'));
    assert.ok(liveOne);
    assert.deepEqual(
      events.flatMap((e) => (e.type === 'notification.created' ? [e.notification.id] : [])),
      [liveOne.id, ...[...away.items].reverse().map((n) => n.id)],
      'the live one, then the three made while away, oldest first',
    );
    const read = events.find((e) => e.type === 'notification.read');
    assert.ok(read && read.type === 'notification.read');
    assert.deepEqual(read.ids, [away.items[2]!.id]);
    assert.equal(inbox.unreadCount, 4);
    assert.deepEqual(errors, []);
  });

  test('handles share the stream: one with an older since is replayed to, the others get nothing twice', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Shared' })).data;
    const start = (await bea.listNotifications({ limit: 1 })).data.seq;
    const sent: Record<string, unknown>[] = [];
    const { client } = connect(server.baseUrl, bea, { WebSocket: recordingSocket(sent) });
    const a: InboxEvent[] = [];
    const first = client.subscribeInbox({ onEvent: (e) => void a.push(e) }, { since: start });
    await within('first', first.ready);
    for (let i = 0; i < 3; i++) await ann.createComment(task.id, `${i} ${at(bea)}`);
    await waitFor('three live', () => a.length === 3);

    const b: InboxEvent[] = [];
    const second = client.subscribeInbox({ onEvent: (e) => void b.push(e) }, { since: a[0]!.seq });
    const info = await within('second', second.ready);
    assert.equal(info.replayed, 2);
    assert.deepEqual(b.map((e) => e.seq), a.slice(1).map((e) => e.seq), 'exactly what came after its since');
    assert.equal(sent.filter((f) => f.type === 'subscribe' && f.inbox === true).length, 2, 'asked the server again');
    const c: InboxEvent[] = [];
    const third = client.subscribeInbox({ onEvent: (e) => void c.push(e) });
    await within('third', third.ready);
    assert.equal(sent.filter((f) => f.type === 'subscribe' && f.inbox === true).length, 2, 'from now: no new subscribe');

    await ann.createComment(task.id, `last ${at(bea)}`);
    await waitFor('everyone got the last', () => a.length === 4 && b.length === 3 && c.length === 1);
    await sleep(200);
    assert.deepEqual(a.map((e) => e.seq), [...new Set(a.map((e) => e.seq))], 'nothing twice for the first');
    first.unsubscribe();
    second.unsubscribe();
    assert.equal(sent.filter((f) => f.type === 'unsubscribe').length, 0, 'the stream is still in use');
    third.unsubscribe();
    await waitFor('the stream is left', () => sent.filter((f) => f.type === 'unsubscribe' && f.inbox === true).length === 1);
  });

  test('a since beyond the stream: the server refuses it, the client joins without it and reports a gap', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Gap' })).data;
    await ann.createComment(task.id, `first ${at(bea)}`);
    const latest = (await bea.me()).data.inboxSeq!;
    const sent: Record<string, unknown>[] = [];
    const { client, errors } = connect(server.baseUrl, bea, { WebSocket: recordingSocket(sent) });
    const events: InboxEvent[] = [];
    const gaps: InboxGapInfo[] = [];
    const sub = client.subscribeInbox({ onEvent: (e) => void events.push(e), onGap: (g) => void gaps.push(g) }, { since: latest + 1000 });
    const info = await within('joined', sub.ready);
    await waitFor('the gap', () => gaps.length === 1);
    assert.deepEqual(gaps[0], { since: latest + 1000, seq: latest, message: gaps[0]!.message });
    assert.match(gaps[0]!.message, /resume_unavailable/);
    assert.equal(info.seq, latest);
    assert.deepEqual(
      sent.filter((f) => f.inbox === true).map((f) => f.since ?? null),
      [latest + 1000, null],
      'asked with the since, then without',
    );
    assert.equal(client.stats.gaps, 1);
    await ann.createComment(task.id, `next ${at(bea)}`);
    await waitFor('live after the gap', () => events.length === 1);
    assert.equal(events[0]!.seq, latest + 1);
    assert.deepEqual(errors, []);
  });

  test('following: explicit follow and unfollow, and what each brings', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const { teamId } = await teamOf(ann, [bea]);
    const task = (await ann.createTask(teamId, { title: 'Followed' })).data;
    assert.equal((await bea.getTask(task.id)).data.following, false);
    assert.equal((await ann.getTask(task.id)).data.following, true, 'the creator follows');

    await bea.followTask(task.id);
    await bea.followTask(task.id); // idempotent
    assert.equal((await bea.getTask(task.id)).data.following, true);
    const inbox = open(connect(server.baseUrl, bea).client.inbox());
    await within('ready', inbox.ready);
    await ann.createComment(task.id, 'a plain comment');
    await waitFor('a commented notification', () => inbox.items.length === 1);
    assert.deepEqual(inbox.items[0]!.reasons, ['commented']);
    await ann.updateTask(task.id, { status: 'in_progress' });
    await waitFor('a status notification', () => inbox.items.length === 2);
    assert.deepEqual(inbox.items[0]!.reasons, ['status_changed']);

    await bea.unfollowTask(task.id);
    assert.equal((await bea.getTask(task.id)).data.following, false);
    await ann.createComment(task.id, 'not for Bea');
    // Being assigned still notifies: it is the next (and only) notification.
    await ann.updateTask(task.id, { assigneeUserId: bea.user.id });
    await waitFor('an assignment notification', () => inbox.items.length === 3);
    assert.deepEqual(inbox.items[0]!.reasons, ['assigned']);
    await untilMatches('after following', inbox, bea);
    // 404 for a task the user cannot see.
    const carl = await newUser(server, 'Carl');
    await assert.rejects(carl.followTask(task.id), (e: { status?: number }) => e.status === 404);
  });

  test('removed from the team, its notifications leave the list and the count; added back, they return', async () => {
    const ann = await newUser(server, 'Ann');
    const bea = await newUser(server, 'Bea');
    const { teamId } = await teamOf(ann, [bea], 'Leaving');
    const other = await teamOf(ann, [bea], 'Staying');
    const task = (await ann.createTask(teamId, { title: 'In Leaving' })).data;
    const kept = (await ann.createTask(other.teamId, { title: 'In Staying' })).data;
    await ann.createComment(task.id, `one ${at(bea)}`);
    await ann.createComment(kept.id, `two ${at(bea)}`);
    const inbox = open(connect(server.baseUrl, bea).client.inbox());
    await within('ready', inbox.ready);
    assert.equal(inbox.unreadCount, 2);

    await ann.removeMember(teamId, bea.user.id);
    await waitFor('the team\'s notification to leave', () => inbox.items.length === 1 && inbox.unreadCount === 1, 10_000, () => inbox.getSnapshot());
    assert.equal(inbox.items[0]!.taskTitle, 'In Staying');
    await untilMatches('after the removal', inbox, bea);

    await ann.addMember(teamId, { email: bea.user.email, role: 'member' });
    await waitFor('it to return', () => inbox.items.length === 2 && inbox.unreadCount === 2, 10_000, () => inbox.getSnapshot());
    await untilMatches('after adding back', inbox, bea);
  });

  test('a client without a Session cannot open an inbox; a closed handle shows nothing', async () => {
    const bea = await newUser(server, 'Bea');
    const { client } = connect(server.baseUrl, bea.accessToken);
    assert.throws(() => client.inbox(), /pass a Session/);
    const { client: withSession } = connect(server.baseUrl, bea);
    assert.throws(() => withSession.inbox({ pageSize: 0 }), /pageSize/);
    const a = open(withSession.inbox());
    const b = open(withSession.inbox());
    await within('ready', Promise.all([a.ready, b.ready]));
    a.close();
    assert.equal(a.status, 'closed');
    assert.deepEqual(a.items, []);
    await assert.rejects(a.markAllRead(), /closed/);
    assert.equal(b.status, 'live', 'the other handle goes on');
  });
});
