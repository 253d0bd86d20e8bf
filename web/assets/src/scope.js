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
export function normalizeScope(scope) {
    const s = scope;
    const named = ['teamId', 'boardId', 'taskId'].filter((k) => s[k] !== undefined && s[k] !== null);
    const key = named[0];
    const id = key === undefined ? undefined : s[key];
    if (named.length !== 1 || key === undefined || typeof id !== 'string' || id === '') {
        throw new TypeError('a scope names exactly one of teamId, boardId or taskId');
    }
    return key === 'teamId' ? { teamId: id } : key === 'boardId' ? { boardId: id } : { taskId: id };
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
const TEAM_ROOM = new Set([
    'task.created',
    'task.deleted',
    'member.added',
    'member.updated',
    'member.removed',
    'team.updated',
    'board.created',
    'board.updated',
    'board.deleted',
]);
const BOARD_ROOM = new Set(['task.created', 'task.updated', 'task.deleted', 'task.assigned']);
const TASK_ROOM = new Set([
    'task.updated',
    'task.deleted',
    'task.assigned',
    'comment.created',
    'comment.updated',
    'comment.deleted',
]);
export function reaches(a, scope, previousBoardId) {
    if ('teamId' in scope)
        return TEAM_ROOM.has(a.type) && a.teamId === scope.teamId;
    if ('boardId' in scope) {
        if (!BOARD_ROOM.has(a.type))
            return false;
        return a.boardId === scope.boardId || previousBoardId === scope.boardId;
    }
    return TASK_ROOM.has(a.type) && a.taskId === scope.taskId;
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
