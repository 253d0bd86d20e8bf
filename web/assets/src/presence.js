export class PresenceState {
    taskId;
    users = new Map();
    listeners = new Set();
    isSynced = false;
    reportError;
    constructor(taskId, reportError = (e) => console.error(e)) {
        this.taskId = taskId;
        this.reportError = reportError;
    }
    get viewers() {
        return [...this.users.values()];
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
            this.users.set(u.userId, { userId: u.userId, displayName: u.displayName });
        this.isSynced = true;
        this.emit({ kind: 'snapshot' });
    }
    applyEvent(a) {
        const user = { userId: a.data.userId, displayName: a.data.displayName };
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
        const viewers = this.viewers;
        for (const l of this.listeners) {
            try {
                l(viewers, change);
            }
            catch (e) {
                this.reportError(e);
            }
        }
    }
}
