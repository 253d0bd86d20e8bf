import { ROUTING } from './generated/protocol.js';
export function scopeKind(scope) {
    if ('teamId' in scope)
        return 'team';
    if ('boardId' in scope)
        return 'board';
    return 'task';
}
export function scopeId(scope) {
    if ('teamId' in scope)
        return scope.teamId;
    if ('boardId' in scope)
        return scope.boardId;
    return scope.taskId;
}
export function scopeKey(scope) {
    return `${scopeKind(scope)}:${scopeId(scope)}`;
}
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export function normalizeScope(scope) {
    const s = scope;
    const named = ['teamId', 'boardId', 'taskId'].filter((k) => s[k] !== undefined && s[k] !== null);
    const key = named[0];
    const id = key === undefined ? undefined : s[key];
    if (named.length !== 1 || key === undefined || typeof id !== 'string' || id === '') {
        throw new TypeError('a scope names exactly one of teamId, boardId or taskId');
    }
    if (!UUID.test(id))
        throw new TypeError(`${key} must be a UUID, not ${JSON.stringify(id)}`);
    const lower = id.toLowerCase();
    return key === 'teamId' ? { teamId: lower } : key === 'boardId' ? { boardId: lower } : { taskId: lower };
}
export function scopeOfFrame(frame) {
    if (frame.teamId)
        return { teamId: frame.teamId };
    if (frame.boardId)
        return { boardId: frame.boardId };
    if (frame.taskId)
        return { taskId: frame.taskId };
    return null;
}
function routedTo(type, kind) {
    return Object.prototype.hasOwnProperty.call(ROUTING, type) && ROUTING[type].includes(kind);
}
export function reaches(a, scope, previousBoardId) {
    if ('teamId' in scope) {
        return (routedTo(a.type, 'team') || routedTo(a.type, 'admins')) && a.teamId === scope.teamId;
    }
    if ('boardId' in scope) {
        if (!routedTo(a.type, 'board'))
            return false;
        return a.boardId === scope.boardId || previousBoardId === scope.boardId;
    }
    return routedTo(a.type, 'task') && a.taskId === scope.taskId;
}
export class MoveTracker {
    moves = new Map();
    observe(a) {
        if (!a.taskId)
            return undefined;
        if (a.type === 'task.updated') {
            const change = a.data.changes['boardId'];
            if (change && typeof change.from === 'string') {
                this.moves.set(a.taskId, { teamId: a.teamId, seq: a.seq, from: change.from });
                if (this.moves.size > 1000)
                    this.moves.delete(this.moves.keys().next().value);
                return change.from;
            }
            return undefined;
        }
        if (a.type === 'task.assigned') {
            const move = this.moves.get(a.taskId);
            if (move && move.teamId === a.teamId && move.seq === a.seq - 1)
                return move.from;
        }
        return undefined;
    }
}
