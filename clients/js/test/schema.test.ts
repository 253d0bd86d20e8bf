// The committed generated types must match what the live server publishes:
//  - src/generated/protocol.ts is exactly what the generator makes of the committed schema
//    snapshot (src/generated/asyncapi.json): nobody edited either by hand;
//  - the snapshot means the same as the live server's /asyncapi.json (descriptions aside: a
//    reworded doc comment in the server does not make the types wrong);
//  - the activity types and their required data fields are the live ones;
//  - the activities the server actually logs fit the generated union.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';

import {
  ACTIVITY_DATA_REQUIRED,
  ACTIVITY_TYPES,
  PRESENCE_TYPES,
  type Activity,
  type ActivityOf,
} from '@taskforge/client';
import { PKG_ROOT, TestServer } from './helpers/server.js';
import { newUser } from './helpers/util.js';

interface Generator {
  generate(doc: unknown): string;
  withoutDescriptions(doc: unknown): unknown;
  activityShapes(doc: unknown): { type: string; required: string[] }[];
  PRESENCE_TYPES: string[];
}

let server: TestServer;
let asyncapi: any;
let gen: Generator;

before(async () => {
  // Webhooks to a local receiver (for the webhook.* types), noticed at once.
  server = await TestServer.start({
    env: { TASKFORGE_WEBHOOK_ALLOW_PRIVATE: 'true', TASKFORGE_WEBHOOK_POLL_INTERVAL: '50ms' },
  });
  const res = await fetch(`${server.baseUrl}/asyncapi.json`);
  assert.equal(res.status, 200);
  asyncapi = await res.json();
  gen = (await import(pathToFileURL(path.join(PKG_ROOT, 'scripts', 'gen-types.mjs')).href)) as Generator;
});

after(async () => {
  await server?.dispose();
});

const regen = 'run `npm run gen -- <server url>` and commit src/generated/';

test('the activity types and their required data fields equal the server schema', { timeout: 30_000 }, () => {
  const shapes = gen.activityShapes(asyncapi);
  assert.deepEqual(
    shapes.map((s) => s.type),
    [...ACTIVITY_TYPES],
    `the server's activity types changed: ${regen}`,
  );
  for (const s of shapes) {
    assert.deepEqual(
      [...ACTIVITY_DATA_REQUIRED[s.type as keyof typeof ACTIVITY_DATA_REQUIRED]],
      s.required,
      `required data fields of ${s.type} changed: ${regen}`,
    );
  }
  const presence = asyncapi.components.schemas.PresenceActivity.properties.type;
  if (presence.enum) assert.deepEqual(presence.enum, [...PRESENCE_TYPES]);
  assert.deepEqual([...PRESENCE_TYPES], gen.PRESENCE_TYPES);
});

test('the committed types are generated from the committed schema, which matches the live one', { timeout: 30_000 }, async (t) => {
  const dir = path.join(PKG_ROOT, 'src', 'generated');
  const committedTypes = await readFile(path.join(dir, 'protocol.ts'), 'utf8');
  const committedSchema = JSON.parse(await readFile(path.join(dir, 'asyncapi.json'), 'utf8'));
  assert.equal(gen.generate(committedSchema), committedTypes, `protocol.ts does not match asyncapi.json: ${regen}`);
  assert.deepEqual(
    gen.withoutDescriptions(asyncapi),
    gen.withoutDescriptions(committedSchema),
    `the server's schema changed: ${regen}`,
  );
  if (JSON.stringify(asyncapi) !== JSON.stringify(committedSchema)) {
    t.diagnostic(`only descriptions differ from the live schema; ${regen} to refresh the doc comments`);
  }
});

test('every activity type the server logs fits the generated union', { timeout: 30_000 }, async () => {
  const ann = await newUser(server, 'Ann');
  const bob = await newUser(server, 'Bob');
  const team = (await ann.createTeam('Schema')).data;
  await ann.request('PATCH', `/teams/${team.id}`, { body: { name: 'Schema 2' } });
  await ann.addMember(team.id, { email: bob.user.email, role: 'member' });
  await ann.request('PATCH', `/teams/${team.id}/members/${bob.user.id}`, { body: { role: 'admin' } });
  const board = (await ann.createBoard(team.id, 'Second')).data;
  await ann.request('PATCH', `/boards/${board.id}`, { body: { name: 'Second 2' } });
  const task = (await ann.createTask(team.id, { title: 'T', assigneeUserId: bob.user.id })).data;
  await ann.updateTask(task.id, { boardId: board.id, assigneeUserId: null });
  const comment = (await ann.createComment(task.id, 'hi')).data;
  await ann.request('PATCH', `/comments/${comment.id}`, { body: { body: 'hello' } });
  await ann.request('DELETE', `/comments/${comment.id}`);
  const label = (await ann.createLabel(team.id, { name: 'Bug', color: '#d73a4a' })).data;
  await ann.updateLabel(label.id, { name: 'Bugs' });
  await ann.updateTask(task.id, { labelIds: [label.id] });
  await ann.deleteLabel(label.id);
  await ann.importTasks(team.id, { boardId: team.defaultBoardId, tasks: [{ title: 'imported', comments: [{ body: 'old' }] }] });
  await ann.deleteTask(task.id);
  await ann.request('DELETE', `/boards/${board.id}`);
  await ann.removeMember(team.id, bob.user.id);
  // webhook.created, .updated and .deleted by hand; .disabled by a receiver that answers 410 to
  // the first delivery of a webhook that asks for webhook.* (its own creation).
  const gone = createServer((_req, res) => {
    res.statusCode = 410;
    res.end();
  });
  await new Promise<void>((resolve) => gone.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(gone.address() as AddressInfo).port}/hook`;
  const hook = (await ann.request('POST', `/teams/${team.id}/webhooks`, { body: { url, events: ['webhook.*'] } })).data as { id: string };
  const other = (await ann.request('POST', `/teams/${team.id}/webhooks`, { body: { url, events: ['task.*'] } })).data as { id: string };
  await ann.request('PATCH', `/webhooks/${other.id}`, { body: { description: 'renamed' } });
  await ann.request('DELETE', `/webhooks/${other.id}`);

  const all = async (): Promise<Activity[]> => {
    const out: Activity[] = [];
    let cursor: string | undefined;
    do {
      const page = await ann.listActivity(team.id, { since: 0, ...(cursor ? { cursor } : {}) });
      out.push(...page.data.items);
      cursor = page.data.nextCursor ?? undefined;
    } while (cursor);
    return out;
  };
  let items = await all();
  for (let i = 0; i < 200 && !items.some((a) => a.type === 'webhook.disabled'); i++) {
    await new Promise((r) => setTimeout(r, 50));
    items = await all();
  }
  gone.close();
  assert.ok(hook.id, 'a webhook was created');

  assert.deepEqual(new Set(items.map((a) => a.type)), new Set(ACTIVITY_TYPES), `all ${ACTIVITY_TYPES.length} types were produced`);
  for (const a of items) {
    assert.equal(a.v, 1);
    assert.equal(a.teamId, team.id);
    for (const field of ACTIVITY_DATA_REQUIRED[a.type]) {
      assert.ok(field in (a.data as object), `${a.type} lacks data.${field}`);
    }
  }
  // The union narrows on `type` (a compile-time check as much as a runtime one).
  const moved = items.find((a): a is ActivityOf<'task.updated'> => a.type === 'task.updated')!;
  assert.deepEqual(moved.data.changes['boardId'], { from: team.defaultBoardId, to: board.id });
  const assigned = items.filter((a): a is ActivityOf<'task.assigned'> => a.type === 'task.assigned');
  assert.deepEqual(
    assigned.map((a) => [a.data.assigneeUserId, a.data.previousAssigneeUserId]),
    [
      [bob.user.id, null],
      [null, bob.user.id],
    ],
  );
});
