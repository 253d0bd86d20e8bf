// @taskforge/client/react: React (18+) hooks over the realtime client, its live collections and
// presence. A separate entry so that the main one never loads React.
//
// Every hook reads an external store through `useSyncExternalStore`, and acquires what it reads
// (a live collection, a task room) in that store's `subscribe` function, never during render: a
// render may be thrown away (concurrent rendering) and StrictMode mounts, unmounts and mounts
// again, so only what React subscribes is held, and its unsubscribe releases it. Live collections
// are shared per query and rooms per scope, so the acquire/release pairs are cheap and the
// mount/unmount/mount of StrictMode ends with exactly one handle.
//
// What the hooks return keeps its identity until something changed (the stores hand out cached,
// frozen snapshots): a component re-renders once per change and not on activity that does not
// concern it.

import { useMemo, useSyncExternalStore, type DependencyList } from 'react';

import type { Comment, Label, Member, Notification, Task } from './generated/protocol.js';
import type { Session } from './http.js';
import type { PresenceUser, PresenceViewer } from './presence.js';
import { openInbox, type Inbox, type InboxOptions, type InboxSnapshot } from './inbox.js';
import {
  openLiveComments,
  openLiveLabels,
  openLiveMembers,
  openLiveTasks,
  type LiveCollection,
  type LiveCommentsQuery,
  type LiveLabelsQuery,
  type LiveMembersQuery,
  type LiveOptions,
  type LiveSnapshot,
  type LiveTasksQuery,
} from './live.js';
import type { ConnectionState, RealtimeClient, StateChange, Subscription } from './realtime.js';

// ---- connection state ---------------------------------------------------------------------------

export interface ConnectionSnapshot {
  readonly state: ConnectionState;
  /**
   * The last state change (close code and reason, the delay before the next attempt,
   * `reconnected`). `{ state }` alone when the client changed state while no component listened.
   */
  readonly change: Readonly<StateChange>;
}

/** One store per client, shared by every component that shows its state. */
class ConnectionStore {
  private readonly rt: RealtimeClient;
  private readonly listeners = new Set<() => void>();
  private off: (() => void) | null = null;
  private snapshot: ConnectionSnapshot;

  constructor(rt: RealtimeClient) {
    this.rt = rt;
    this.snapshot = fromState(rt.state);
  }

  readonly subscribe = (onChange: () => void): (() => void) => {
    this.listeners.add(onChange);
    this.off ??= this.rt.onStateChange((change) => {
      this.snapshot = Object.freeze({ state: change.state, change: Object.freeze({ ...change }) });
      for (const fn of [...this.listeners]) fn();
    });
    return () => {
      this.listeners.delete(onChange);
      if (this.listeners.size === 0 && this.off) {
        this.off();
        this.off = null;
      }
    };
  };

  readonly getSnapshot = (): ConnectionSnapshot => {
    // Changes made while nobody listened are not lost: the client's own state decides.
    if (this.snapshot.state !== this.rt.state) this.snapshot = fromState(this.rt.state);
    return this.snapshot;
  };
}

function fromState(state: ConnectionState): ConnectionSnapshot {
  return Object.freeze({ state, change: Object.freeze({ state }) });
}

// Creating a store has no effect on the client (it listens only once subscribed), so it may
// happen during render.
const connectionStores = new WeakMap<RealtimeClient, ConnectionStore>();

/**
 * The client's connection state (`idle`, `connecting`, `open`, `reconnecting`, `closed`) and the
 * last `StateChange`. Re-renders on every change, including each new reconnect attempt's delay.
 */
export function useConnectionState(rt: RealtimeClient): ConnectionSnapshot {
  checkClient(rt);
  let store = connectionStores.get(rt);
  if (!store) connectionStores.set(rt, (store = new ConnectionStore(rt)));
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

// ---- live collections ---------------------------------------------------------------------------

const LOADING: LiveSnapshot<never> = Object.freeze({
  items: Object.freeze([]),
  status: 'loading',
  error: null,
  seq: null,
});

/** What the live hooks return for a `null` query: nothing open. */
const NOTHING: LiveSnapshot<never> = Object.freeze({
  items: Object.freeze([]),
  status: 'closed',
  error: null,
  seq: null,
});

/** One hook instance's collection: opened by React's subscribe, closed by its unsubscribe. */
class LiveStore<T> {
  private readonly open: () => LiveCollection<T>;
  private collection: LiveCollection<T> | null = null;
  /** What `getSnapshot` returns without an open collection: before the first subscribe, or an
   * error from `open` itself. */
  private idle: LiveSnapshot<T> = LOADING;

  constructor(open: () => LiveCollection<T>) {
    this.open = open;
  }

  readonly subscribe = (onChange: () => void): (() => void) => {
    let collection: LiveCollection<T>;
    try {
      collection = this.open();
    } catch (e) {
      // A bad query (or a client without a session) is reported like any failure of the
      // collection: status 'error', with the TypeError that says what is wrong.
      this.idle = Object.freeze({ items: Object.freeze([]), status: 'error', error: e, seq: null });
      onChange();
      return () => {};
    }
    this.collection = collection;
    const off = collection.subscribe(() => onChange());
    return () => {
      off();
      if (this.collection === collection) {
        this.collection = null;
        this.idle = LOADING;
      }
      // Released a microtask later: StrictMode unmounts and mounts again at once, and the second
      // mount then shares the collection instead of loading it again.
      queueMicrotask(() => collection.close());
    };
  };

  readonly getSnapshot = (): LiveSnapshot<T> => this.collection?.getSnapshot() ?? this.idle;
}

/**
 * The snapshot of a live collection that `open` opens, kept open while the component is mounted
 * and reopened when `deps` change (like `useEffect`'s). `{status: 'loading', items: []}` until the
 * collection is open. Any `LiveCollection` fits, e.g. `() => openLiveTasks(rt, session, query)`.
 */
export function useLive<T>(open: () => LiveCollection<T>, deps: DependencyList): LiveSnapshot<T> {
  if (typeof open !== 'function') throw new TypeError('useLive: open must be a function returning a LiveCollection');
  // `open` is taken from the render that changed `deps`, as with useEffect.
  const store = useMemo(() => new LiveStore(open), deps);
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

/** A hook over `useLive` for a query that may be null (nothing to show yet). */
function useLiveQuery<Q, T>(
  query: Q | null,
  key: (q: Q) => unknown[],
  open: (session: Session, q: Q) => LiveCollection<T>,
  rt: RealtimeClient,
  opts: LiveOptions | undefined,
): LiveSnapshot<T> {
  checkClient(rt);
  // Keyed by the query's value, not its identity: `{ teamId }` written inline in a component is a
  // new object on every render and must not reopen anything.
  const id = query === null || query === undefined ? null : JSON.stringify([...key(query), opts?.pageSize ?? null]);
  const snapshot = useLive<T>(() => (query === null || query === undefined ? nothing<T>() : open(sessionOf(rt), query)), [rt, id]);
  // Without a query there is nothing to load: 'closed' from the first render on, not 'loading'.
  return id === null ? NOTHING : snapshot;
}

/**
 * The tasks of a team, or of one board, optionally filtered (see `openLiveTasks`). Pass `null` to
 * show nothing (status 'closed').
 */
export function useLiveTasks(rt: RealtimeClient, query: LiveTasksQuery | null, opts?: LiveOptions): LiveSnapshot<Task> {
  return useLiveQuery(
    query,
    (q) => [q.teamId, q.boardId ?? null, q.filter ?? null, q.sort ?? null],
    (session, q) => openLiveTasks(rt, session, q, opts),
    rt,
    opts,
  );
}

/** A task's comments (see `openLiveComments`). Pass `null` to show nothing. */
export function useLiveComments(
  rt: RealtimeClient,
  query: LiveCommentsQuery | null,
  opts?: LiveOptions,
): LiveSnapshot<Comment> {
  return useLiveQuery(query, (q) => [q.taskId], (session, q) => openLiveComments(rt, session, q, opts), rt, opts);
}

/** A team's members (see `openLiveMembers`). Pass `null` to show nothing. */
export function useLiveMembers(
  rt: RealtimeClient,
  query: LiveMembersQuery | null,
  opts?: LiveOptions,
): LiveSnapshot<Member> {
  return useLiveQuery(query, (q) => [q.teamId], (session, q) => openLiveMembers(rt, session, q, opts), rt, opts);
}

/** A team's labels (see `openLiveLabels`). Pass `null` to show nothing. */
export function useLiveLabels(rt: RealtimeClient, query: LiveLabelsQuery | null, opts?: LiveOptions): LiveSnapshot<Label> {
  return useLiveQuery(query, (q) => [q.teamId], (session, q) => openLiveLabels(rt, session, q, opts), rt, opts);
}

/** A collection that holds nothing and never changes (the `null` query). */
function nothing<T>(): LiveCollection<T> {
  const snapshot: LiveSnapshot<T> = NOTHING;
  return {
    getSnapshot: () => snapshot,
    subscribe: () => () => {},
    ready: Promise.resolve(snapshot),
    get: () => undefined,
    close: () => {},
  };
}

function sessionOf(rt: RealtimeClient): Session {
  const session = rt.session;
  if (!session) {
    throw new TypeError(
      'the live hooks load over HTTP with the client\'s session: create the RealtimeClient with a Session as `auth`, or pass `session`',
    );
  }
  return session;
}

// ---- the inbox ----------------------------------------------------------------------------------

/** What `useInbox` returns: the inbox's snapshot and its actions. */
export interface InboxState extends InboxSnapshot {
  /** Loads the next older page. */
  loadMore(): Promise<void>;
  markRead(ids: string | readonly string[]): Promise<void>;
  markAllRead(): Promise<void>;
}

const INBOX_LOADING: InboxSnapshot = Object.freeze({
  items: Object.freeze([]),
  unreadCount: 0,
  status: 'loading',
  error: null,
  seq: null,
  hasMore: false,
  loadingMore: false,
});

/** One hook instance's inbox handle: opened by React's subscribe, closed by its unsubscribe. */
class InboxStore {
  private readonly rt: RealtimeClient;
  private readonly opts: InboxOptions | undefined;
  private inbox: Inbox | null = null;
  private idle: InboxSnapshot = INBOX_LOADING;
  /** The state handed out for the last snapshot: a new object only when the snapshot changed. */
  private last: { snapshot: InboxSnapshot; state: InboxState } | null = null;

  constructor(rt: RealtimeClient, opts: InboxOptions | undefined) {
    this.rt = rt;
    this.opts = opts;
  }

  readonly subscribe = (onChange: () => void): (() => void) => {
    let inbox: Inbox;
    try {
      inbox = openInbox(this.rt, sessionOf(this.rt), this.opts);
    } catch (e) {
      this.idle = Object.freeze({ ...INBOX_LOADING, status: 'error' as const, error: e });
      onChange();
      return () => {};
    }
    this.inbox = inbox;
    const off = inbox.subscribe(() => onChange());
    // The inbox is shared: it may be loaded already.
    onChange();
    return () => {
      off();
      if (this.inbox === inbox) {
        this.inbox = null;
        this.idle = INBOX_LOADING;
      }
      // A microtask later, so that StrictMode's unmount-and-mount shares the inbox.
      queueMicrotask(() => inbox.close());
    };
  };

  private readonly act = <A extends unknown[]>(fn: (inbox: Inbox, ...args: A) => Promise<void>) =>
    (...args: A): Promise<void> => {
      const inbox = this.inbox;
      if (!inbox) return Promise.reject(new Error('useInbox: the inbox is not open (the component is not mounted)'));
      return fn(inbox, ...args);
    };

  private readonly actions = {
    loadMore: this.act((inbox) => inbox.loadMore()),
    markRead: this.act((inbox, ids: string | readonly string[]) => inbox.markRead(ids)),
    markAllRead: this.act((inbox) => inbox.markAllRead()),
  };

  readonly getSnapshot = (): InboxState => {
    const snapshot = this.inbox?.getSnapshot() ?? this.idle;
    if (this.last?.snapshot !== snapshot) {
      this.last = { snapshot, state: Object.freeze({ ...snapshot, ...this.actions }) };
    }
    return this.last.state;
  };
}

/**
 * The user's inbox (see `rt.inbox()`) while the component is mounted: its items (newest first),
 * unread count and status, and `loadMore`, `markRead(ids)`, `markAllRead()`. The returned object
 * keeps its identity until the inbox changed. Needs a client with a `Session`.
 */
export function useInbox(rt: RealtimeClient, opts?: InboxOptions): InboxState {
  checkClient(rt);
  const store = useMemo(() => new InboxStore(rt, opts), [rt, opts?.pageSize ?? null]);
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

// ---- presence -----------------------------------------------------------------------------------

const NO_VIEWERS: readonly PresenceViewer[] = Object.freeze([]);

/** One hook instance's task room: subscribed by React's subscribe, released by its unsubscribe. */
class PresenceStore {
  private readonly rt: RealtimeClient;
  private readonly taskId: string | null;
  private sub: Subscription | null = null;

  constructor(rt: RealtimeClient, taskId: string | null) {
    this.rt = rt;
    this.taskId = taskId;
  }

  readonly subscribe = (onChange: () => void): (() => void) => {
    if (this.taskId === null) return () => {};
    // A handle on the task room: shared with any other subscription of the task (a live comments
    // collection, another component), which keeps the room when this one goes.
    const sub = this.rt.subscribe({ taskId: this.taskId });
    this.sub = sub;
    const off = sub.presence?.onChange(() => onChange());
    // The room may be live already (shared): its viewers are there at once.
    onChange();
    return () => {
      off?.();
      if (this.sub === sub) this.sub = null;
      // A microtask later, so that StrictMode's unmount-and-mount does not leave and rejoin the
      // room (which others would see as this user leaving and coming back).
      queueMicrotask(() => sub.unsubscribe());
    };
  };

  readonly getSnapshot = (): readonly PresenceViewer[] => this.sub?.presence?.viewers ?? NO_VIEWERS;
}

/**
 * Who is looking at the task (the caller included) and what each is doing there (`state`:
 * `viewing`, `editing` or `typing`, with the `field`), while the component is mounted: subscribes
 * the task's room and releases it on unmount or when `taskId` changes. A frozen array that keeps
 * its identity until the list changes; empty for `null`, and until the room is joined. Whether the
 * list is current (it is not while reconnecting) is `subscription.presence.synced`, or
 * `useConnectionState(rt).state === 'open'`.
 */
export function usePresence(rt: RealtimeClient, taskId: string | null): readonly PresenceViewer[] {
  checkClient(rt);
  if (taskId !== null && (typeof taskId !== 'string' || taskId === '')) {
    throw new TypeError('usePresence: taskId must be a non-empty string or null');
  }
  const store = useMemo(() => new PresenceStore(rt, taskId), [rt, taskId]);
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

function checkClient(rt: RealtimeClient): void {
  if (!rt || typeof rt.subscribe !== 'function' || typeof rt.onStateChange !== 'function') {
    throw new TypeError('expected a RealtimeClient');
  }
}

export type { ConnectionState, InboxSnapshot, LiveCollection, LiveSnapshot, Notification, PresenceUser, PresenceViewer, StateChange };
