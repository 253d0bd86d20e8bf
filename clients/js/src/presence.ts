// Who is looking at a task, and what they are doing there: the `presence` list of the task
// room's `subscribed` reply, then `presence.joined` / `presence.updated` / `presence.left` events.
// Presence is ephemeral (no seq, never replayed), so after a reconnect the state is rebuilt from
// the new `subscribed` snapshot rather than resumed.

import type { PresenceActivity } from './generated/protocol.js';

/** Who a viewer is (the part of a presence entry every server version sends). */
export interface PresenceUser {
  userId: string;
  displayName: string;
}

/** What a user does in a task room: looks at it, edits a field (it has the focus), or types in one. */
export type ViewerState = 'viewing' | 'editing' | 'typing';

/** The field a user edits or types in. */
export type PresenceField = 'title' | 'description' | 'comment';

/** A user in a task room: who, and what they are doing there (`field` when editing or typing). */
export interface PresenceViewer extends PresenceUser {
  state: ViewerState;
  field?: PresenceField;
}

/** An entry of a `subscribed` reply's `presence` list (a server without states sends none). */
export type PresenceEntry = PresenceUser & { state?: string | null; field?: string | null };

export type PresenceChange =
  /** A `subscribed` snapshot replaced the viewer list. */
  | { kind: 'snapshot' }
  | { kind: 'joined'; user: PresenceViewer }
  /** A viewer's state or field changed. */
  | { kind: 'updated'; user: PresenceViewer }
  | { kind: 'left'; user: PresenceViewer }
  /** The connection dropped: the list is what it was, but may be out of date until the next snapshot. */
  | { kind: 'stale' }
  /** The subscription ended: the list is empty. */
  | { kind: 'cleared' };

export type PresenceListener = (viewers: readonly PresenceViewer[], change: PresenceChange) => void;

const STATES = new Set(['viewing', 'editing', 'typing']);
const FIELDS = new Set(['title', 'description', 'comment']);

/** A viewer as the server describes one; an unknown state reads as `viewing`. */
function viewer(userId: string, displayName: string, state: unknown, field: unknown): PresenceViewer {
  const s = typeof state === 'string' && STATES.has(state) ? (state as ViewerState) : 'viewing';
  const f = s !== 'viewing' && typeof field === 'string' && FIELDS.has(field) ? (field as PresenceField) : undefined;
  return Object.freeze(f ? { userId, displayName, state: s, field: f } : { userId, displayName, state: s });
}

const NO_VIEWERS: readonly PresenceViewer[] = Object.freeze([]);

export class PresenceState {
  readonly taskId: string;
  private readonly users = new Map<string, PresenceViewer>();
  private readonly listeners = new Set<PresenceListener>();
  private isSynced = false;
  /** The `viewers` snapshot: replaced only when the list changes, so that it can be compared by
   * identity (React's useSyncExternalStore, memoized renders). */
  private snapshot: readonly PresenceViewer[] = NO_VIEWERS;
  private readonly reportError: (e: unknown) => void;

  /** Created by the realtime client for each task subscription. */
  constructor(taskId: string, reportError: (e: unknown) => void = (e) => console.error(e)) {
    this.taskId = taskId;
    this.reportError = reportError;
  }

  /**
   * The users on the task now (the caller included), in the order they arrived, each with what
   * they are doing (`state`, and `field` when editing or typing). A frozen array that keeps its
   * identity until the list changes (a snapshot that repeats the list, or a `stale` change, keeps
   * it too).
   */
  get viewers(): readonly PresenceViewer[] {
    return this.snapshot;
  }

  /** One viewer, if on the task. */
  get(userId: string): PresenceViewer | undefined {
    return this.users.get(userId);
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
  applySnapshot(users: readonly PresenceEntry[]): void {
    this.users.clear();
    for (const u of users) this.users.set(u.userId, viewer(u.userId, u.displayName, u.state, u.field));
    this.isSynced = true;
    this.emit({ kind: 'snapshot' });
  }

  /** @internal A `presence.joined` / `presence.updated` / `presence.left` event of this task. */
  applyEvent(a: PresenceActivity): void {
    const data = a.data as PresenceActivity['data'] & { state?: unknown; field?: unknown };
    const user = viewer(data.userId, data.displayName, data.state, data.field);
    const type: string = a.type;
    if (type === 'presence.joined') {
      this.users.set(user.userId, user);
      this.emit({ kind: 'joined', user });
    } else if (type === 'presence.updated') {
      const had = this.users.get(user.userId);
      if (had && had.state === user.state && had.field === user.field && had.displayName === user.displayName) return;
      // Keeps the user's place in the list.
      this.users.set(user.userId, user);
      this.emit(had ? { kind: 'updated', user } : { kind: 'joined', user });
    } else if (type === 'presence.left') {
      // Presence is per user: `left` comes when the user's last connection left the room.
      const had = this.users.get(user.userId);
      if (!had || !this.users.delete(user.userId)) return;
      this.emit({ kind: 'left', user: had });
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
  private refresh(): readonly PresenceViewer[] {
    const now = [...this.users.values()];
    const old = this.snapshot;
    const same =
      now.length === old.length &&
      now.every((u, i) => {
        const o = old[i]!;
        return u.userId === o.userId && u.displayName === o.displayName && u.state === o.state && u.field === o.field;
      });
    if (!same) this.snapshot = now.length === 0 ? NO_VIEWERS : Object.freeze(now);
    return this.snapshot;
  }
}
