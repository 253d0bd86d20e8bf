// The client's routing table is generated, not copied: ROUTING (src/generated/protocol.ts) equals the
// live server's x-taskforge-routing, `reaches` follows ROUTING for every activity type and scope
// kind, and the generator refuses a routing table it cannot express.

import assert from 'node:assert/strict';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';

import { ACTIVITY_TYPES, ROUTING, reaches, type Activity, type RoomKind, type ScopeKind } from '@taskforge/client';
import { PKG_ROOT, TestServer } from './helpers/server.js';

interface Generator {
  generate(doc: unknown): string;
  routingTable(doc: unknown): { type: string; rooms: string[] }[];
  ROOM_KINDS: string[];
}

interface Routing {
  description: string;
  rooms: Record<string, string[]>;
}

let server: TestServer;
let asyncapi: { 'x-taskforge-routing': Routing };
let gen: Generator;

before(async () => {
  server = await TestServer.start();
  const res = await fetch(`${server.baseUrl}/asyncapi.json`);
  assert.equal(res.status, 200);
  asyncapi = (await res.json()) as typeof asyncapi;
  gen = (await import(pathToFileURL(path.join(PKG_ROOT, 'scripts', 'gen-types.mjs')).href)) as Generator;
});

after(async () => {
  await server?.dispose();
});

const regen = 'run `npm run gen -- <server url>` and commit src/generated/';

test('ROUTING equals the live server\'s x-taskforge-routing', { timeout: 30_000 }, () => {
  const live = asyncapi['x-taskforge-routing'];
  assert.ok(live && typeof live.rooms === 'object', '/asyncapi.json has x-taskforge-routing.rooms');
  assert.match(live.description, /seq \+ 1/, 'the description states the move rule');
  assert.deepEqual({ ...ROUTING }, live.rooms, `the server's routing table changed: ${regen}`);
  // Every activity type is routed somewhere, and only to the room kinds RoomKind names.
  assert.deepEqual(Object.keys(ROUTING).sort(), [...ACTIVITY_TYPES].sort());
  for (const type of ACTIVITY_TYPES) {
    assert.ok(ROUTING[type].length > 0, `${type} reaches no room`);
    for (const kind of ROUTING[type]) assert.ok(gen.ROOM_KINDS.includes(kind), `${type}: ${kind}`);
  }
});

test('reaches() follows ROUTING for every activity type and scope kind', () => {
  const ids = { teamId: 'team-1', boardId: 'board-1', taskId: 'task-1' };
  const kinds: ScopeKind[] = ['team', 'board', 'task'];
  for (const type of ACTIVITY_TYPES) {
    // Only the fields `reaches` reads: type and the routing ids.
    const a = { type, seq: 1, ...ids } as unknown as Activity;
    for (const kind of kinds) {
      const scope = kind === 'team' ? { teamId: ids.teamId } : kind === 'board' ? { boardId: ids.boardId } : { taskId: ids.taskId };
      const rooms = ROUTING[type] as readonly RoomKind[];
      // The admins room is the owners and admins among a team scope's sockets.
      const routed = rooms.includes(kind) || (kind === 'team' && rooms.includes('admins'));
      assert.equal(reaches(a, scope), routed, `${type} -> ${kind}`);
      // Another room of the same kind is never reached.
      const other = kind === 'team' ? { teamId: 'x' } : kind === 'board' ? { boardId: 'x' } : { taskId: 'x' };
      assert.equal(reaches(a, other), false, `${type} -> another ${kind}`);
    }
    // The board a task left is reached exactly when board rooms are.
    assert.equal(reaches(a, { boardId: 'left' }, 'left'), ROUTING[type].includes('board'), `${type} -> board left`);
  }
  // webhook.* reach the team scope (of its owners and admins) and no board or task scope.
  const created = { type: 'webhook.created', seq: 1, ...ids } as unknown as Activity;
  assert.deepEqual([...ROUTING['webhook.created']], ['admins']);
  assert.equal(reaches(created, { teamId: ids.teamId }), true);
  assert.equal(reaches(created, { boardId: ids.boardId }), false);
  // A type this client does not know (a newer server's) reaches nothing, rather than throwing.
  const unknown = { type: 'task.archived', seq: 1, ...ids } as unknown as Activity;
  assert.equal(reaches(unknown, { teamId: ids.teamId }), false);
  assert.equal(reaches(unknown, { taskId: ids.taskId }), false);
});

test('the generator refuses a routing table it cannot express', () => {
  const doc = structuredClone(asyncapi) as unknown as Record<string, unknown> & { 'x-taskforge-routing': Routing };
  assert.equal(gen.routingTable(doc).length, ACTIVITY_TYPES.length);
  const broken = (edit: (r: Routing) => void) => {
    const copy = structuredClone(doc);
    edit(copy['x-taskforge-routing']);
    return copy;
  };
  assert.throws(() => gen.generate({ ...doc, 'x-taskforge-routing': undefined }), /no x-taskforge-routing\.rooms object/);
  assert.throws(
    () => gen.generate(broken((r) => delete r.rooms['comment.created'])),
    /no list for "comment\.created"/,
  );
  assert.throws(
    () => gen.generate(broken((r) => (r.rooms['task.archived'] = ['team']))),
    /"task\.archived", which is not an activity type/,
  );
  assert.throws(
    () => gen.generate(broken((r) => (r.rooms['task.created'] = ['team', 'project']))),
    /unknown room kind "project"/,
  );
  assert.throws(
    () => gen.generate(broken((r) => (r.rooms['task.created'] = ['team', 'team']))),
    /lists "team" twice/,
  );
});
