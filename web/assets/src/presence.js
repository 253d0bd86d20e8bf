const STATES = new Set(['viewing', 'editing', 'typing']);
const FIELDS = new Set(['title', 'description', 'comment']);
function viewer(userId, displayName, state, field) {
    const s = typeof state === 'string' && STATES.has(state) ? state : 'viewing';
    const f = s !== 'viewing' && typeof field === 'string' && FIELDS.has(field) ? field : undefined;
    return Object.freeze(f ? { userId, displayName, state: s, field: f } : { userId, displayName, state: s });
}
const NO_VIEWERS = Object.freeze([]);
export class PresenceState {
    taskId;
    users = new Map();
    listeners = new Set();
    isSynced = false;
    snapshot = NO_VIEWERS;
    reportError;
    constructor(taskId, reportError = (e) => console.error(e)) {
        this.taskId = taskId;
        this.reportError = reportError;
    }
    get viewers() {
        return this.snapshot;
    }
    get(userId) {
        return this.users.get(userId);
    }
    get userIds() {
        return [...this.users.keys()];
    }
    has(userId) {
        return this.users.has(userId);
    }
    get synced() {
        return this.isSynced;
    }
    onChange(listener) {
        this.listeners.add(listener);
        return () => this.listeners.delete(listener);
    }
    applySnapshot(users) {
        this.users.clear();
        for (const u of users)
            this.users.set(u.userId, viewer(u.userId, u.displayName, u.state, u.field));
        this.isSynced = true;
        this.emit({ kind: 'snapshot' });
    }
    applyEvent(a) {
        const data = a.data;
        const user = viewer(data.userId, data.displayName, data.state, data.field);
        const type = a.type;
        if (type === 'presence.joined') {
            this.users.set(user.userId, user);
            this.emit({ kind: 'joined', user });
        }
        else if (type === 'presence.updated') {
            const had = this.users.get(user.userId);
            if (had && had.state === user.state && had.field === user.field && had.displayName === user.displayName)
                return;
            this.users.set(user.userId, user);
            this.emit(had ? { kind: 'updated', user } : { kind: 'joined', user });
        }
        else if (type === 'presence.left') {
            const had = this.users.get(user.userId);
            if (!had || !this.users.delete(user.userId))
                return;
            this.emit({ kind: 'left', user: had });
        }
    }
    markStale() {
        if (!this.isSynced)
            return;
        this.isSynced = false;
        this.emit({ kind: 'stale' });
    }
    clear() {
        this.users.clear();
        this.isSynced = false;
        this.emit({ kind: 'cleared' });
    }
    emit(change) {
        const viewers = this.refresh();
        for (const l of this.listeners) {
            try {
                l(viewers, change);
            }
            catch (e) {
                this.reportError(e);
            }
        }
    }
    refresh() {
        const now = [...this.users.values()];
        const old = this.snapshot;
        const same = now.length === old.length &&
            now.every((u, i) => {
                const o = old[i];
                return u.userId === o.userId && u.displayName === o.displayName && u.state === o.state && u.field === o.field;
            });
        if (!same)
            this.snapshot = now.length === 0 ? NO_VIEWERS : Object.freeze(now);
        return this.snapshot;
    }
}
