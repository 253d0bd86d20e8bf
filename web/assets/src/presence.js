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
            this.users.set(u.userId, Object.freeze({ userId: u.userId, displayName: u.displayName }));
        this.isSynced = true;
        this.emit({ kind: 'snapshot' });
    }
    applyEvent(a) {
        const user = Object.freeze({ userId: a.data.userId, displayName: a.data.displayName });
        if (a.type === 'presence.joined') {
            this.users.set(user.userId, user);
            this.emit({ kind: 'joined', user });
        }
        else {
            if (!this.users.delete(user.userId))
                return;
            this.emit({ kind: 'left', user });
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
            now.every((u, i) => u.userId === old[i].userId && u.displayName === old[i].displayName);
        if (!same)
            this.snapshot = now.length === 0 ? NO_VIEWERS : Object.freeze(now);
        return this.snapshot;
    }
}
