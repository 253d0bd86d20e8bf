// Scopes (the rooms a client subscribes to) and the routing that decides which of them an activity
// reaches. One socket carries the frames of all its rooms without saying which room a frame came
// through, so the client decides from the activity itself which subscriptions it belongs to, by the
// server's routing table (ROUTING, generated from x-taskforge-routing in its AsyncAPI document).

import { ROUTING, type Activity, type ActivityType, type RoomKind, type Scope } from './generated/protocol.js';

export type { Scope };

/** The kinds of room a client subscribes to (`user` rooms are the server's own). */
export type ScopeKind = Exclude<RoomKind, 'user' | 'admins'>;

/** `team:<id>`, `board:<id>` or `task:<id>`: one subscription per key. */
export type ScopeKey = `${ScopeKind}:${string}`;

export function scopeKind(scope: Scope): ScopeKind {
  if ('teamId' in scope) return 'team';
  if ('boardId' in scope) return 'board';
  return 'task';
}

export function scopeId(scope: Scope): string {
  if ('teamId' in scope) return scope.teamId;
  if ('boardId' in scope) return scope.boardId;
  return scope.taskId;
}

export function scopeKey(scope: Scope): ScopeKey {
  return `${scopeKind(scope)}:${scopeId(scope)}`;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The scope the app passed, validated (exactly one of teamId, boardId, taskId, a string) and
 * copied without any other field.
 */
export function normalizeScope(scope: Scope): Scope {
  const s = scope as Record<string, unknown>;
  const named = (['teamId', 'boardId', 'taskId'] as const).filter((k) => s[k] !== undefined && s[k] !== null);
  const key = named[0];
  const id = key === undefined ? undefined : s[key];
  if (named.length !== 1 || key === undefined || typeof id !== 'string' || id === '') {
    throw new TypeError('a scope names exactly one of teamId, boardId or taskId');
  }
  // Ids are UUIDs, which the server echoes in lower case: a malformed one would never be answered
  // with its scope, and an upper-case one would not match the answer.
  if (!UUID.test(id)) throw new TypeError(`${key} must be a UUID, not ${JSON.stringify(id)}`);
  const lower = id.toLowerCase();
  return key === 'teamId' ? { teamId: lower } : key === 'boardId' ? { boardId: lower } : { taskId: lower };
}

/** The scope named by a server frame's `teamId` / `boardId` / `taskId` fields, if any. */
export function scopeOfFrame(frame: {
  teamId?: string | null;
  boardId?: string | null;
  taskId?: string | null;
}): Scope | null {
  if (frame.teamId) return { teamId: frame.teamId };
  if (frame.boardId) return { boardId: frame.boardId };
  if (frame.taskId) return { taskId: frame.taskId };
  return null;
}

/**
 * Whether activities of `type` reach rooms of `kind`, by the server's routing table (generated from
 * its AsyncAPI document). A type this client does not know (a newer server's) reaches none.
 */
function routedTo(type: string, kind: Exclude<RoomKind, 'user'>): boolean {
  return Object.prototype.hasOwnProperty.call(ROUTING, type) && ROUTING[type as ActivityType].includes(kind);
}

/**
 * Whether the server routes `a` to the room of `scope`. `previousBoardId` is the board a task left
 * when the activity is part of a move: moves reach both boards' rooms.
 */
export function reaches(a: Activity, scope: Scope, previousBoardId?: string): boolean {
  // The `admins` room is the owners and admins among a team scope's sockets: what the server
  // sends to it arrives on that team scope (other members never get it).
  if ('teamId' in scope) {
    return (routedTo(a.type, 'team') || routedTo(a.type, 'admins')) && a.teamId === scope.teamId;
  }
  if ('boardId' in scope) {
    if (!routedTo(a.type, 'board')) return false;
    // Board activities (board.*) carry boardId too but reach only the team room.
    return a.boardId === scope.boardId || previousBoardId === scope.boardId;
  }
  return routedTo(a.type, 'task') && a.taskId === scope.taskId;
}

/**
 * The board a task left, for the activities of a move. A `task.updated` states it in
 * `changes.boardId.from`. The `task.assigned` of the same PATCH (committed right after it, at
 * seq + 1) reaches both boards as well but does not carry the old board, so the caller remembers
 * the move (see `MoveTracker`).
 */
export class MoveTracker {
  // taskId -> the last move seen: its seq and the board left.
  private readonly moves = new Map<string, { teamId: string; seq: number; from: string }>();

  /** Records `a` if it is a move; returns the board left if `a` belongs to a move. */
  observe(a: Activity): string | undefined {
    if (!a.taskId) return undefined;
    if (a.type === 'task.updated') {
      const change = a.data.changes['boardId'];
      if (change && typeof change.from === 'string') {
        this.moves.set(a.taskId, { teamId: a.teamId, seq: a.seq, from: change.from });
        // Bounded: only the latest move of each task matters, and only for one seq.
        if (this.moves.size > 1000) this.moves.delete(this.moves.keys().next().value!);
        return change.from;
      }
      return undefined;
    }
    if (a.type === 'task.assigned') {
      const move = this.moves.get(a.taskId);
      if (move && move.teamId === a.teamId && move.seq === a.seq - 1) return move.from;
    }
    return undefined;
  }
}
