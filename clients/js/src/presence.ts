// Who is looking at a task: the `presence` list of the task room's `subscribed` reply, then
// `presence.joined` / `presence.left` events. Presence is ephemeral (no seq, never replayed), so
// after a reconnect the state is rebuilt from the new `subscribed` snapshot rather than resumed.

import type { PresenceActivity, PresenceUser } from './generated/protocol.js';

export type { PresenceUser };

export type PresenceChange =
  /** A `subscribed` snapshot replaced the viewer list. */
  | { kind: 'snapshot' }
  | { kind: 'joined'; user: PresenceUser }
  | { kind: 'left'; user: PresenceUser }
  /** The socket dropped: the list is what it was, but may be out of date until the next snapshot. */
  | { kind: 'stale' }
  /** The subscription ended: the list is empty. */
  | { kind: 'cleared' };

export type PresenceListener = (viewers: readonly PresenceUser[], change: PresenceChange) => void;

const NO_VIEWERS: readonly PresenceUser[] = Object.freeze([]);

export class PresenceState {
  readonly taskId: string;
  private readonly users = new Map<string, PresenceUser>();
  private readonly listeners = new Set<PresenceListener>();
  private isSynced = false;
  /** The `viewers` snapshot: replaced only when the list changes, so that it can be compared by
   * identity (React's useSyncExternalStore, memoized renders). */
  private snapshot: readonly PresenceUser[] = NO_VIEWERS;
  private readonly reportError: (e: unknown) => void;

  /** Created by the realtime client for each task subscription. */
  constructor(taskId: string, reportError: (e: unknown) => void = (e) => console.error(e)) {
    this.taskId = taskId;
    this.reportError = reportError;
  }

  /**
   * The users on the task now (the caller included), in the order they arrived. A frozen array
   * that keeps its identity until the list changes (a snapshot that repeats the list, or a `stale`
   * change, keeps it too).
   */
  get viewers(): readonly PresenceUser[] {
    return this.snapshot;
  }

  /** The viewers' user ids. */
  get userIds(): string[] {
    return [...this.users.keys()];
  }

  has(userId: string): boolean {
    return this.users.has(userId);
  }

  /** False until the first snapshot, and while reconnecting. */
  get synced(): boolean {
    return this.isSynced;
  }

  /** Calls `listener` on every change; returns a function that removes it. */
  onChange(listener: PresenceListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** @internal The `presence` list of a `subscribed` reply. */
  applySnapshot(users: readonly PresenceUser[]): void {
    this.users.clear();
    for (const u of users) this.users.set(u.userId, Object.freeze({ userId: u.userId, displayName: u.displayName }));
    this.isSynced = true;
    this.emit({ kind: 'snapshot' });
  }

  /** @internal A `presence.joined` / `presence.left` event of this task. */
  applyEvent(a: PresenceActivity): void {
    const user = Object.freeze({ userId: a.data.userId, displayName: a.data.displayName });
    if (a.type === 'presence.joined') {
      this.users.set(user.userId, user);
      this.emit({ kind: 'joined', user });
    } else {
      // Presence is per user: `left` comes when the user's last socket left the room.
      if (!this.users.delete(user.userId)) return;
      this.emit({ kind: 'left', user });
    }
  }

  /** @internal The socket dropped. */
  markStale(): void {
    if (!this.isSynced) return;
    this.isSynced = false;
    this.emit({ kind: 'stale' });
  }

  /** @internal The subscription ended. */
  clear(): void {
    this.users.clear();
    this.isSynced = false;
    this.emit({ kind: 'cleared' });
  }

  private emit(change: PresenceChange): void {
    const viewers = this.refresh();
    for (const l of this.listeners) {
      try {
        l(viewers, change);
      } catch (e) {
        this.reportError(e);
      }
    }
  }

  /** Brings the `viewers` snapshot up to date; a new array only if the list differs. */
  private refresh(): readonly PresenceUser[] {
    const now = [...this.users.values()];
    const old = this.snapshot;
    const same =
      now.length === old.length &&
      now.every((u, i) => u.userId === old[i]!.userId && u.displayName === old[i]!.displayName);
    if (!same) this.snapshot = now.length === 0 ? NO_VIEWERS : Object.freeze(now);
    return this.snapshot;
  }
}
