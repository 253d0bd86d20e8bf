// Live collections: a list read over HTTP and kept exact by the activity stream.
//
// Every collection works the same way:
//  1. It reads EVERY page of its list. The first page's `X-TaskForge-Seq` is the snapshot seq S;
//     right after that page it subscribes its room(s) with `since: S`, so the server replays
//     everything routed there after S, then goes on live.
//  2. Until all pages are in, activities are HELD. Then the pages become the data and the held
//     activities with seq > S are applied in seq order.
//  3. Live activities are applied as they come. When a room cannot be resumed (`onGap`) the same
//     load runs again: status 'refetching', live activities held, the reload replaces the data, the
//     held activities after the reload's S are applied.
//
// Why that is exact. Pages are keyset-paginated by id and each page is a consistent read at its own
// seq >= S (the server reads the seq and the rows in one read transaction). Every activity a
// collection applies replaces the whole state of one item (the payload carries the full task,
// comment or member) or removes it. So after step 2, each item's state is the one set by the last
// activity after S that touched it (all of them are replayed, from S on), and an item no activity
// after S touched did not change after S either, so every page shows it as it was at S, and keyset
// pagination cannot skip it (its key did not move). Applying a replayed change to a page that was
// read later is harmless for the same reason: the later changes follow in seq order and the last
// one wins. That argument needs no version, which is why comments and members (which have none)
// are exact too. Activities with seq <= S are already in the data: they are ignored, except
// deletions of tasks and comments, which are final (ids are never reused) and therefore safe to
// apply at any time. A member removal is not final (the user can be added back), so an old one is
// ignored like any other old activity.
//
// Tasks carry a `version` and a team-wide task collection listens to several rooms (below), whose
// deliveries interleave in no particular seq order. For tasks every upsert is therefore version
// checked: the highest version seen is kept per task, also for tasks that left the collection (a
// status change out of the filter, a move to another board), so that a stale copy arriving late
// through another room can never bring one back; deleted tasks keep a tombstone, so that neither a
// later page, a reload nor a late activity resurrects them.
//
// Rooms (the contract's routing table): a board's tasks come from the board room, which carries
// task.created/updated/deleted/assigned of that board, moves onto and off it included. The team
// room carries task.created/deleted but not task.updated/assigned, so a team-wide collection joins
// the team room (for board.created/deleted) AND every board room of the team: the boards are listed
// over HTTP after the first page, a board.created joins the new board's room with `since` = that
// activity's seq (nothing happened on the board before), and a board.deleted leaves it (only empty
// boards can be deleted, and every activity that emptied it also reached the team room or the room
// of the board a task moved to).
//
// Imports: a bulk import's `task.imported` names its tasks without carrying them; a task
// collection it reaches loads again (as after a gap), and that load shows them.
//
// Labels: deleting a label takes it off every task without a new task version or a task.updated;
// the team room's `label.deleted` says so, and every task collection (a board's too: it joins the
// team room for that) drops the id from the tasks it holds and from every copy it takes later (a
// page read before the deletion, an older activity arriving through another room). Label ids are
// never reused, so the deletion is final like a task's. A filtered collection then checks its
// filter again: a task filtered on that label leaves it.
//
// Filters (`filter.ts`): the pages are read with the filter's query parameters and every task the
// collection takes, from a page or an activity, is checked with the same filter as a predicate, so
// a task someone else edits into or out of the filter appears or disappears at once.

import {
  compareTasksBy,
  isTaskSort,
  normalizeTaskFilter,
  taskFilterParams,
  taskPredicate,
  type NormalizedTaskFilter,
  type TaskFilter,
  type TaskSort,
} from './filter.js';
import type { Activity, Board, Comment, Label, Member, Scope, Task } from './generated/protocol.js';
import { ApiError, isAuthFailure, type ApiResponse, type Page, type Session } from './http.js';
import { RealtimeError, type GapInfo, type RealtimeClient, type SubscribedInfo, type Subscription } from './realtime.js';

export type LiveStatus = 'loading' | 'live' | 'refetching' | 'error' | 'closed';

export interface LiveSnapshot<T> {
  /**
   * Sorted. Tasks: by `position`, then `createdAt`, then `id` (or by the query's `sort`, as the
   * server sorts). Comments and labels: by `createdAt`, then `id`. Members: by `joinedAt`, then
   * `user.id`.
   */
  readonly items: readonly T[];
  readonly status: LiveStatus;
  /** The error, with status 'error' (an `ApiError`, a `RealtimeError`, a network error); else null. */
  readonly error: unknown;
  /**
   * The highest seq the collection has accounted for: the snapshot seq of its last load, or the
   * seq of the last activity its rooms delivered (applied, or not relevant to it). Null before the
   * first load. A room only carries its own activities, so this reaches the team's latest seq only
   * when the last activity of the team was routed to the collection's rooms.
   */
  readonly seq: number | null;
}

export interface LiveCollection<T> {
  /** The current snapshot: the SAME object until something changed. */
  getSnapshot(): LiveSnapshot<T>;
  /** Called once per batch of changes (after a microtask), never with an unchanged snapshot. */
  subscribe(listener: (s: LiveSnapshot<T>) => void): () => void;
  /** The first load is done and the room(s) joined. Rejects if the collection errs or is closed first. */
  readonly ready: Promise<LiveSnapshot<T>>;
  get(id: string): T | undefined;
  /**
   * Releases this handle (its snapshot turns to status 'closed' with no items, its listeners are
   * dropped); the last handle of a shared collection leaves its rooms and stops it.
   */
  close(): void;
}

export interface LiveTasksQuery {
  teamId: string;
  /** Only this board's tasks (else the whole team's). */
  boardId?: string;
  /**
   * Only the tasks that match (the task list's filters: status, priority, assignee or `'none'`,
   * labels (all of), due days, words of `q`). Kept exact as tasks start and stop matching.
   */
  filter?: Omit<TaskFilter, 'boardId'>;
  /** The items' order, as the server's `sort` (default: position, then createdAt, then id). */
  sort?: TaskSort;
}

export interface LiveLabelsQuery {
  teamId: string;
}

export interface LiveCommentsQuery {
  taskId: string;
}

export interface LiveMembersQuery {
  teamId: string;
}

export interface LiveOptions {
  /**
   * Items per page (1 to 200, the server's maximum; default 200). Collections are shared per
   * query: the first open of a query decides.
   */
  pageSize?: number;
}

/** What a collection needs for HTTP: a `Session` fits. */
export type LiveHttp = Pick<Session, 'request'>;

/** Tasks of a team or of one board, optionally filtered by status and assignee. */
export function openLiveTasks(
  rt: RealtimeClient,
  session: LiveHttp,
  query: LiveTasksQuery,
  opts: LiveOptions = {},
): LiveCollection<Task> {
  const q = checkTasksQuery(query);
  const pageSize = checkPageSize(opts.pageSize);
  const key = `tasks:${q.teamId}:${q.boardId ?? '*'}:${q.sort ?? '*'}:${JSON.stringify(q.filter)}`;
  return open(rt, key, () => new LiveTasks(rt, session, pageSize, key, q));
}

/** A team's labels (its team room), oldest first. */
export function openLiveLabels(
  rt: RealtimeClient,
  session: LiveHttp,
  query: LiveLabelsQuery,
  opts: LiveOptions = {},
): LiveCollection<Label> {
  const teamId = checkId(query?.teamId, 'teamId');
  const pageSize = checkPageSize(opts.pageSize);
  const key = `labels:${teamId}`;
  return open(rt, key, () => new LiveLabels(rt, session, pageSize, key, teamId));
}

/**
 * A task's comments (its task room). When the task is deleted the collection ends: status
 * 'closed', no items (the task and its comments are gone).
 */
export function openLiveComments(
  rt: RealtimeClient,
  session: LiveHttp,
  query: LiveCommentsQuery,
  opts: LiveOptions = {},
): LiveCollection<Comment> {
  const taskId = checkId(query?.taskId, 'taskId');
  const pageSize = checkPageSize(opts.pageSize);
  const key = `comments:${taskId}`;
  return open(rt, key, () => new LiveComments(rt, session, pageSize, key, taskId));
}

/**
 * A team's members (its team room). Display names are as of the load or the member's last
 * activity: the server emits no activity when a user renames themself.
 */
export function openLiveMembers(
  rt: RealtimeClient,
  session: LiveHttp,
  query: LiveMembersQuery,
  opts: LiveOptions = {},
): LiveCollection<Member> {
  const teamId = checkId(query?.teamId, 'teamId');
  const pageSize = checkPageSize(opts.pageSize);
  const key = `members:${teamId}`;
  return open(rt, key, () => new LiveMembers(rt, session, pageSize, key, teamId));
}

// ---- input checks -------------------------------------------------------------------------------

function checkId(v: unknown, name: string): string {
  if (typeof v !== 'string' || v === '') throw new TypeError(`${name} must be a non-empty string`);
  return v;
}

function checkPageSize(v: unknown): number {
  if (v === undefined) return 200;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 200) {
    throw new TypeError('pageSize must be an integer from 1 to 200');
  }
  return v;
}

interface TasksQuery {
  teamId: string;
  boardId: string | undefined;
  /** Canonical (sets sorted): part of the sharing key. */
  filter: NormalizedTaskFilter;
  sort: TaskSort | undefined;
}

function checkTasksQuery(query: LiveTasksQuery): TasksQuery {
  if (!query || typeof query !== 'object') throw new TypeError('the query must be an object with a teamId');
  const teamId = checkId(query.teamId, 'teamId');
  const boardId = query.boardId === undefined ? undefined : checkId(query.boardId, 'boardId');
  const f = query.filter;
  if (f !== undefined && (f === null || typeof f !== 'object')) throw new TypeError('filter must be an object');
  if (f && 'boardId' in f) throw new TypeError('filter.boardId: give the board as the query\'s boardId');
  let filter: NormalizedTaskFilter;
  try {
    filter = normalizeTaskFilter(f);
  } catch (e) {
    throw new TypeError(`filter.${e instanceof Error ? e.message : String(e)}`);
  }
  if (query.sort !== undefined && !isTaskSort(query.sort)) throw new TypeError(`sort: not a sort of the task list: ${String(query.sort)}`);
  return { teamId, boardId, filter, sort: query.sort };
}

// ---- sharing ------------------------------------------------------------------------------------

const registry = new WeakMap<RealtimeClient, Map<string, LiveBase<unknown>>>();

function open<T>(rt: RealtimeClient, key: string, make: () => LiveBase<T>): LiveCollection<T> {
  if (!rt || typeof rt.subscribe !== 'function') throw new TypeError('rt must be a RealtimeClient');
  let byKey = registry.get(rt);
  if (!byKey) registry.set(rt, (byKey = new Map()));
  let base = byKey.get(key) as LiveBase<T> | undefined;
  if (!base || base.finished) {
    // A collection that ended (an error it cannot recover from, a deleted task) is not reused.
    base = make();
    byKey.set(key, base as LiveBase<unknown>);
    base.refs++;
    base.start();
  } else {
    base.refs++;
  }
  return new LiveHandle(base);
}

function unregister(rt: RealtimeClient, key: string, base: LiveBase<unknown>): void {
  const byKey = registry.get(rt);
  if (byKey?.get(key) === base) byKey.delete(key);
}

class LiveHandle<T> implements LiveCollection<T> {
  readonly ready: Promise<LiveSnapshot<T>>;
  private readonly base: LiveBase<T>;
  private readonly mine = new Set<(s: LiveSnapshot<T>) => void>();
  private closedSnapshot: LiveSnapshot<T> | null = null;
  private rejectReady!: (e: unknown) => void;
  private readyWatch: ((s: LiveSnapshot<T>) => void) | null = null;

  constructor(base: LiveBase<T>) {
    this.base = base;
    this.ready = new Promise<LiveSnapshot<T>>((resolve, reject) => {
      this.rejectReady = reject;
      // From the collection's state now, not from its first load: a handle opened on a collection
      // that failed once and recovered is ready (with today's snapshot).
      const now = base.getSnapshot();
      if (now.status === 'live') return resolve(now);
      if (now.status === 'error') return reject(now.error);
      const watch = (s: LiveSnapshot<T>) => {
        if (s.status === 'loading' || s.status === 'refetching') return;
        base.listeners.delete(watch);
        this.readyWatch = null;
        if (s.status === 'live') resolve(this.getSnapshot());
        else reject(s.error ?? new RealtimeError('closed', 'the live collection ended'));
      };
      this.readyWatch = watch;
      base.listeners.add(watch);
    });
    // An app that never awaits `ready` must not get an unhandled rejection.
    this.ready.catch(() => {});
  }

  getSnapshot(): LiveSnapshot<T> {
    return this.closedSnapshot ?? this.base.getSnapshot();
  }

  subscribe(listener: (s: LiveSnapshot<T>) => void): () => void {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function');
    if (this.closedSnapshot) return () => {};
    // A wrapper per call, so that subscribing one function twice gives two independent entries.
    const entry = (s: LiveSnapshot<T>) => listener(s);
    this.mine.add(entry);
    this.base.listeners.add(entry);
    return () => {
      this.mine.delete(entry);
      this.base.listeners.delete(entry);
    };
  }

  get(id: string): T | undefined {
    return this.closedSnapshot ? undefined : this.base.get(id);
  }

  close(): void {
    if (this.closedSnapshot) return;
    // A closed handle shows nothing; the collection may go on for other handles.
    const last = this.base.getSnapshot();
    this.closedSnapshot = Object.freeze({ items: Object.freeze([]), status: 'closed' as const, error: null, seq: last.seq });
    for (const l of this.mine) this.base.listeners.delete(l);
    this.mine.clear();
    if (this.readyWatch) this.base.listeners.delete(this.readyWatch);
    this.readyWatch = null;
    this.rejectReady(new RealtimeError('closed', 'the live collection was closed'));
    this.base.release();
  }
}

// ---- the engine ---------------------------------------------------------------------------------

/** After this many failed loads in a row the status turns 'error' (the retries go on). */
const ERROR_AFTER_FAILURES = 3;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;
/** Activities held during a (re)load at most; past it the newest are dropped and the load runs again. */
const MAX_HELD = 10_000;
/** Forgotten items (versions, tombstones) kept before pruning; past the hard cap a reload resets them. */
const GONE_PRUNE_AT = 1_000;
const GONE_HARD_CAP = 50_000;

/** Marks an error no retry can fix. */
class PermanentError extends Error {
  override readonly name = 'PermanentError';
}

function isPermanent(e: unknown): boolean {
  // The credentials are gone (including a refresh token another tab spent): log in again.
  if (e instanceof PermanentError || isAuthFailure(e)) return true;
  // 4xx: the request itself is refused (not found, forbidden, the credentials gone); a retry
  // gets the same answer. 408 and 429 are passing.
  return e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
}

function seqOf(r: ApiResponse<unknown>, path: string): number {
  if (r.seq === null || !Number.isInteger(r.seq) || r.seq < 0) {
    throw new PermanentError(`GET ${path} answered without a usable X-TaskForge-Seq`);
  }
  return r.seq;
}

/** What is known of an item that is not in the collection. */
interface Gone {
  /** Tasks: the version it left the collection at (Infinity once deleted). */
  version: number;
  deleted: boolean;
  /** The seq that told us. */
  seq: number;
}

interface Room {
  scope: Scope;
  key: string;
  sub: Subscription | null;
  joined: boolean;
  /** The seq this room has delivered up to (its `since`, then its activities and joins). */
  cursor: number;
  /** The `since` it was joined with. */
  since: number;
}

interface Loaded<T> {
  items: T[];
  seq: number;
}

abstract class LiveBase<T> {
  readonly key: string;
  readonly ready: Promise<LiveSnapshot<T>>;
  readonly listeners = new Set<(s: LiveSnapshot<T>) => void>();
  refs = 0;
  /** Closed, or failed for good: nothing runs any more. */
  finished = false;

  protected readonly rt: RealtimeClient;
  protected readonly http: LiveHttp;
  protected readonly pageSize: number;
  protected items = new Map<string, T>();
  protected readonly gone = new Map<string, Gone>();
  protected readonly rooms = new Map<string, Room>();
  /** The snapshot seq (first page) of the load the data comes from; -1 before the first. */
  protected baseSeq = -1;
  /** True while a (re)load runs: activities are held, except final deletions. */
  protected holding = true;

  private status: LiveStatus = 'loading';
  private error: unknown = null;
  private seq: number | null = null;
  private readonly held = new Map<number, Activity>();
  /** The highest seq dropped from a full hold buffer: the load must start after it. */
  private heldDropped = -1;
  /** The highest seq of the final deletions applied while holding (counted in `seq` at install). */
  private finalWhileHolding = -1;
  private loadGen = 0;
  private abort: AbortController | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  private everLive = false;
  private loaded = false;
  private snapshot: LiveSnapshot<T> | null = null;
  private lastNotified: LiveSnapshot<T> | null = null;
  private pruneAt = GONE_PRUNE_AT;
  private notifyQueued = false;
  private readySettled = false;
  private offState: (() => void) | null = null;
  private resolveReady!: (s: LiveSnapshot<T>) => void;
  private rejectReady!: (e: unknown) => void;

  constructor(rt: RealtimeClient, http: LiveHttp, pageSize: number, key: string) {
    this.rt = rt;
    this.http = http;
    this.pageSize = pageSize;
    this.key = key;
    this.ready = new Promise<LiveSnapshot<T>>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
  }

  /** Reads every page; joins the room(s) with `since` = the first page's seq right after it. */
  protected abstract fetchAll(signal: AbortSignal): Promise<Loaded<T>>;
  /** Applies one activity to `items` (and `gone`); true if `items` changed. */
  protected abstract apply(a: Activity): boolean;
  /** Deletions that are final (ids never come back): applied even while holding or when old. */
  protected abstract isFinal(a: Activity): boolean;
  protected abstract idOf(item: T): string;
  protected abstract compare(a: T, b: T): number;

  /** Whether a loaded item may replace what the collection knows (tasks: version checks). */
  protected accept(item: T): boolean {
    return !this.gone.get(this.idOf(item))?.deleted;
  }

  /**
   * What of a loaded item the collection takes: the item (possibly cleaned), or null when it does
   * not belong (tasks: outside the filter).
   */
  protected admit(item: T): T | null {
    return item;
  }

  /** Whether two copies of an item are known to be the same (tasks: same version). */
  protected same(_a: T, _b: T): boolean {
    return false;
  }

  /**
   * Whether an activity a room delivered is the collection's at all. One that is not is as if
   * the room had not carried it: no change, no new snapshot (a board's tasks hear the team room
   * only for label.deleted).
   */
  protected wants(_room: Room, _a: Activity): boolean {
    return true;
  }

  /** Activities that change rooms rather than data (board.created/deleted): handled on arrival. */
  protected onArrival(_a: Activity): void {}

  /**
   * An activity that names changes without carrying them (`task.imported`: ids only): the data
   * after it can only be read, so the collection loads again, as after a gap.
   */
  protected needsReload(_a: Activity): boolean {
    return false;
  }

  /** A room's subscription ended for good. Return true if the collection can do without it. */
  protected roomLost(_room: Room, _e: unknown): boolean {
    return false;
  }

  /** A failed load that no retry can fix. Return true if handled (e.g. the collection ended). */
  protected loadGone(_e: unknown, _loadedBefore: boolean): boolean {
    return false;
  }

  start(): void {
    // When the client gives up on the credentials, nothing more will arrive: say so rather than
    // show the last data as live.
    this.offState = this.rt.onStateChange((c) => {
      if (c.state === 'closed' && c.error?.code === 'unauthorized') this.fail(c.error);
    });
    this.startLoad();
  }

  get(id: string): T | undefined {
    return this.items.get(id);
  }

  getSnapshot(): LiveSnapshot<T> {
    if (!this.snapshot) {
      const items = Object.freeze([...this.items.values()].sort((a, b) => this.compare(a, b)));
      this.snapshot = Object.freeze({ items, status: this.status, error: this.error, seq: this.seq });
    }
    return this.snapshot;
  }

  release(): void {
    if (--this.refs > 0) return;
    this.end('closed', null);
  }

  // ---- rooms ----

  /** The team the collection's rooms belong to, when it is known up front (an SSE stream resumes
   * per team: see `SubscribeOptions.teamId`). */
  protected teamOf(): string | undefined {
    return undefined;
  }

  protected join(scope: Scope, since: number): void {
    if (this.finished) return;
    const key = 'teamId' in scope ? `team:${scope.teamId}` : 'boardId' in scope ? `board:${scope.boardId}` : `task:${scope.taskId}`;
    if (this.rooms.has(key)) return;
    const room: Room = { scope, key, sub: null, joined: false, cursor: since, since };
    this.rooms.set(key, room);
    const current = () => !this.finished && this.rooms.get(key) === room;
    let sub: Subscription;
    try {
      sub = this.rt.subscribe(
        scope,
        {
          onActivity: (a) => {
            if (current()) this.onRoomActivity(room, a);
          },
          onSubscribed: (info: SubscribedInfo) => {
            if (!current()) return;
            room.joined = true;
            room.cursor = Math.max(room.cursor, info.seq);
            this.settle();
          },
          onGap: (g: GapInfo) => {
            if (!current()) return;
            // The room skipped (g.since, g.seq]: reload everything, then go on after it.
            room.cursor = Math.max(room.cursor, g.seq);
            this.refetch();
          },
          onError: (e) => {
            if (current()) this.onRoomEnded(room, e);
          },
        },
        { since, ...(this.teamOf() ? { teamId: this.teamOf()! } : {}) },
      );
    } catch (e) {
      this.rooms.delete(key);
      this.fail(e);
      return;
    }
    room.sub = sub;
    sub.ready.catch((e: unknown) => {
      if (!current()) return;
      if (sub.state === 'ended') return this.onRoomEnded(room, e);
      // The room is not joined yet and the client says it will not be for now (e.g. closed):
      // a collection waiting for it is in error until the room is joined after all.
      if (!this.everLive) this.setError(e);
    });
  }

  protected leave(key: string): void {
    const room = this.rooms.get(key);
    if (!room) return;
    this.rooms.delete(key);
    room.sub?.unsubscribe();
    // A first load may have been waiting for this room only.
    this.settle();
  }

  private onRoomEnded(room: Room, e: unknown): void {
    this.rooms.delete(room.key);
    if (this.roomLost(room, e)) {
      this.settle();
      return;
    }
    this.fail(e);
  }

  private onRoomActivity(room: Room, a: Activity): void {
    room.cursor = Math.max(room.cursor, a.seq);
    if (!this.wants(room, a)) return;
    this.onArrival(a);
    if (this.finished) return;
    // The load reads after this activity committed: it shows what the activity names, and the
    // activity itself is then held and dropped as older than the load.
    if (!this.holding && a.seq > this.baseSeq && this.needsReload(a)) this.refetch();
    if (this.holding) {
      if (this.isFinal(a)) {
        this.applyOne(a);
        this.finalWhileHolding = Math.max(this.finalWhileHolding, a.seq);
      } else {
        this.hold(a);
      }
      return;
    }
    if (a.seq <= this.baseSeq && !this.isFinal(a)) return; // the load already shows it
    this.applyOne(a);
    this.pruneGone();
  }

  private applyOne(a: Activity): void {
    let changed = this.apply(a);
    if (this.finished) return;
    // While holding, only final deletions are applied, to data about to be replaced: the seq
    // moves with what is applied live (and with the load).
    if (!this.holding && (this.seq === null || a.seq > this.seq)) {
      this.seq = a.seq;
      changed = true;
    }
    if (changed) this.changed();
  }

  private hold(a: Activity): void {
    if (this.held.has(a.seq)) return; // the same activity through another room
    if (this.held.size >= MAX_HELD) {
      this.heldDropped = Math.max(this.heldDropped, a.seq);
      return;
    }
    this.held.set(a.seq, a);
  }

  // ---- loading ----

  private refetch(): void {
    if (this.finished) return;
    this.holding = true;
    this.failures = 0;
    if (this.status !== 'error') this.status = this.loaded ? 'refetching' : 'loading';
    this.changed();
    this.startLoad();
  }

  private startLoad(): void {
    if (this.finished) return;
    // A newer load replaces one in flight (a gap during a reload): the older answer is dropped.
    const gen = ++this.loadGen;
    this.abort?.abort();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ac = new AbortController();
    this.abort = ac;
    this.holding = true;
    this.fetchAll(ac.signal).then(
      (r) => {
        if (gen !== this.loadGen || this.finished) return;
        this.abort = null;
        this.install(r);
      },
      (e: unknown) => {
        if (gen !== this.loadGen || this.finished) return;
        this.abort = null;
        this.loadFailed(e);
      },
    );
  }

  private install(r: Loaded<T>): void {
    const s = r.seq;
    const reload = [...this.held.values()].some((a) => a.seq > s && this.needsReload(a));
    if (this.heldDropped > s || reload) {
      // Activities after this load were dropped from the full buffer, or one after it can only be
      // read: load again.
      for (const seq of [...this.held.keys()]) if (seq <= s) this.held.delete(seq);
      this.startLoad();
      return;
    }
    const items = new Map<string, T>();
    for (const loaded of r.items) {
      const id = this.idOf(loaded);
      const item = this.admit(loaded);
      if (item === null) {
        // Not in the collection; a newer copy we hold (that matched) is kept as below.
        if (!this.accept(loaded)) {
          const mine = this.items.get(id);
          if (mine !== undefined) items.set(id, mine);
        }
        continue;
      }
      if (this.accept(item)) {
        // An unchanged item keeps its object, so that views of it need not render again.
        const mine = this.items.get(id);
        items.set(id, mine !== undefined && this.same(mine, item) ? mine : item);
        this.gone.delete(id);
      } else {
        // A newer copy we already have wins over the page's (tasks only; `items` and `gone`
        // never hold the same id).
        const mine = this.items.get(id);
        if (mine !== undefined) items.set(id, mine);
      }
    }
    this.items = items;
    this.baseSeq = s;
    this.seq = Math.max(this.seq ?? s, s);
    this.holding = false;
    const held = [...this.held.values()].sort((x, y) => x.seq - y.seq);
    this.held.clear();
    this.heldDropped = -1;
    for (const a of held) {
      if (this.finished) return;
      if (a.seq > s) this.applyOne(a);
    }
    this.seq = Math.max(this.seq, this.finalWhileHolding);
    this.finalWhileHolding = -1;
    this.loaded = true;
    this.failures = 0;
    this.error = null;
    this.status = this.everLive ? 'live' : 'loading';
    this.pruneGone(true);
    this.changed();
    this.settle();
  }

  private loadFailed(e: unknown): void {
    if (isPermanent(e)) {
      if (this.loadGone(e, this.loaded)) return;
      return this.fail(e);
    }
    this.failures++;
    if (this.failures >= ERROR_AFTER_FAILURES) this.setError(e);
    const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (this.failures - 1));
    const delay = base / 2 + (Math.random() * base) / 2;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.startLoad();
    }, delay);
  }

  /** Goes 'live' once loaded and every room joined (the first time), and resolves `ready`. */
  private settle(): void {
    if (this.finished || this.holding || !this.loaded) return;
    if (!this.everLive) {
      for (const room of this.rooms.values()) if (!room.joined) return;
      this.everLive = true;
    }
    if (this.status !== 'live') {
      this.status = 'live';
      this.error = null;
      this.changed();
    }
    if (!this.readySettled) {
      this.readySettled = true;
      this.resolveReady(this.getSnapshot());
    }
  }

  /** Status 'error' that may still recover (a retry or a join that works later). */
  private setError(e: unknown): void {
    this.status = 'error';
    this.error = e;
    this.changed();
    if (!this.readySettled) {
      this.readySettled = true;
      this.rejectReady(e);
    }
  }

  /** Ends the collection for good with status 'error'. */
  protected fail(e: unknown): void {
    this.end('error', e);
  }

  /** Stops everything: rooms, the fetch in flight, timers. Listeners get the final snapshot. */
  protected end(status: 'closed' | 'error', e: unknown, clear = false): void {
    if (this.finished) return;
    this.finished = true;
    this.offState?.();
    this.offState = null;
    unregister(this.rt, this.key, this as LiveBase<unknown>);
    this.loadGen++;
    this.abort?.abort();
    this.abort = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const key of [...this.rooms.keys()]) this.leave(key);
    this.held.clear();
    if (clear) this.items = new Map();
    this.status = status;
    this.error = status === 'error' ? e : null;
    this.changed();
    if (!this.readySettled) {
      this.readySettled = true;
      this.rejectReady(status === 'error' ? e : new RealtimeError('closed', 'the live collection ended'));
    }
  }

  // ---- bookkeeping ----

  /**
   * Forgets what no delivery can contradict any more: an entry about seq e is needed only against
   * an older copy, which could come from a room that has not delivered past e yet, or from a load
   * in flight. None is possible once every room is past e (rooms deliver in seq order; a board
   * room joined later starts after its board.created, which is after anything pruned before it was
   * known) or once a load read after e is installed (older activities are then ignored).
   */
  private pruneGone(force = false): void {
    if (this.holding || (!force && this.gone.size <= this.pruneAt)) return;
    let floor = this.baseSeq;
    let min = Infinity;
    for (const room of this.rooms.values()) min = Math.min(min, room.cursor);
    if (min !== Infinity) floor = Math.max(floor, min);
    for (const [id, g] of this.gone) if (g.seq <= floor) this.gone.delete(id);
    // What could not go stays for a while: scan again only after as many more.
    this.pruneAt = Math.min(GONE_HARD_CAP, Math.max(GONE_PRUNE_AT, this.gone.size * 2));
    // A room that stays quiet holds the floor back: a reload lets everything older go.
    if (this.gone.size > GONE_HARD_CAP) this.refetch();
  }

  private changed(): void {
    this.snapshot = null;
    if (this.notifyQueued) return;
    this.notifyQueued = true;
    // One notification per burst: everything applied in this task is seen at once.
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.notifyQueued = false;
    const s = this.getSnapshot();
    if (s === this.lastNotified) return;
    this.lastNotified = s;
    for (const l of [...this.listeners]) {
      try {
        l(s);
      } catch (e) {
        this.rt.reportError(e);
      }
    }
  }

  /** Every page of a list; the first page's seq. */
  protected async readAll<X>(
    path: string,
    query: Record<string, string | readonly string[] | undefined>,
    signal: AbortSignal,
    afterFirst?: (seq: number) => Promise<void> | void,
  ): Promise<Loaded<X>> {
    const first = await this.http.request<Page<X>>('GET', path, { query: { ...query, limit: this.pageSize }, signal });
    const seq = seqOf(first, path);
    await afterFirst?.(seq);
    const items = [...first.data.items];
    let cursor = first.data.nextCursor;
    // Bounded: a cursor that does not move would loop forever.
    const seen = new Set<string>();
    while (cursor) {
      if (seen.has(cursor)) throw new PermanentError(`GET ${path}: the server repeated a page cursor`);
      seen.add(cursor);
      signal.throwIfAborted();
      const page = await this.http.request<Page<X>>('GET', path, {
        query: { ...query, limit: this.pageSize, cursor },
        signal,
      });
      items.push(...page.data.items);
      cursor = page.data.nextCursor;
    }
    return { items, seq };
  }
}

// ---- tasks ----------------------------------------------------------------------------------------

function compareTasks(a: Task, b: Task): number {
  return a.position - b.position || cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

class LiveTasks extends LiveBase<Task> {
  private readonly q: TasksQuery;
  private readonly predicate: (t: Task) => boolean;
  private readonly order: (a: Task, b: Task) => number;
  /**
   * Labels deleted while the collection ran: taken off every copy of a task it takes. Grows with
   * the deletions only (a team has at most 200 labels at a time; ids are never reused).
   */
  private readonly deletedLabels = new Set<string>();

  constructor(rt: RealtimeClient, http: LiveHttp, pageSize: number, key: string, q: TasksQuery) {
    super(rt, http, pageSize, key);
    this.q = q;
    this.predicate = taskPredicate(q.filter);
    this.order = q.sort === undefined ? compareTasks : compareTasksBy(q.sort);
  }

  protected idOf(t: Task): string {
    return t.id;
  }

  protected compare(a: Task, b: Task): number {
    return this.order(a, b);
  }

  protected override teamOf(): string {
    return this.q.teamId;
  }

  private matches(t: Task): boolean {
    const q = this.q;
    return t.teamId === q.teamId && (q.boardId === undefined || t.boardId === q.boardId) && this.predicate(t);
  }

  /** The task without the labels deleted meanwhile (the same object when it carries none). */
  private withoutDeleted(t: Task): Task {
    const ids = t.labelIds;
    if (!ids || this.deletedLabels.size === 0 || !ids.some((id) => this.deletedLabels.has(id))) return t;
    return { ...t, labelIds: ids.filter((id) => !this.deletedLabels.has(id)) };
  }

  /** The highest version known of a task (in the collection or not); -1 if none. */
  private known(id: string): number {
    const g = this.gone.get(id);
    if (g) return g.version;
    return this.items.get(id)?.version ?? -1;
  }

  protected override accept(t: Task): boolean {
    const g = this.gone.get(t.id);
    if (g) return t.version > g.version;
    const mine = this.items.get(t.id);
    return mine === undefined || t.version >= mine.version;
  }

  protected override admit(t: Task): Task | null {
    const clean = this.withoutDeleted(t);
    // The server filtered the page already; checking again keeps a server that ignores a filter
    // parameter (an older one) from showing what the collection would drop at the next edit.
    return this.matches(clean) ? clean : null;
  }

  protected isFinal(a: Activity): boolean {
    return a.type === 'task.deleted' || a.type === 'label.deleted';
  }

  protected override same(a: Task, b: Task): boolean {
    return a.version === b.version && sameLabels(a.labelIds, b.labelIds);
  }

  protected async fetchAll(signal: AbortSignal): Promise<Loaded<Task>> {
    const q = this.q;
    const path = `/teams/${q.teamId}/tasks`;
    const query = { ...taskFilterParams(q.filter), boardId: q.boardId };
    return this.readAll<Task>(path, query, signal, async (seq) => {
      // The team room: label.deleted (and, team-wide, board.created/deleted).
      this.join({ teamId: q.teamId }, seq);
      if (q.boardId !== undefined) {
        this.join({ boardId: q.boardId }, seq);
        return;
      }
      // Team-wide: every board's room too.
      const boards = await this.readAll<Board>(`/teams/${q.teamId}/boards`, {}, signal);
      if (this.finished || signal.aborted) return;
      const ids = new Set(boards.items.map((b) => b.id));
      for (const id of ids) this.join({ boardId: id }, seq);
      // A board room the listing does not show was deleted, unless it was joined after the
      // listing was read (from a board.created the listing predates).
      for (const room of [...this.rooms.values()]) {
        if ('boardId' in room.scope && !ids.has(room.scope.boardId) && room.since <= boards.seq) this.leave(room.key);
      }
    });
  }

  protected override wants(room: Room, a: Activity): boolean {
    // A board's collection: the team room's task.created/deleted of this board come through the
    // board room as well, the rest of the team room is not about its tasks.
    return this.q.boardId === undefined || !('teamId' in room.scope) || a.type === 'label.deleted';
  }

  protected override onArrival(a: Activity): void {
    if (this.q.boardId !== undefined) return;
    if (a.type === 'board.created') {
      // The board did not exist before this seq: its room replays everything since.
      if (a.seq > this.baseSeq || this.holding) this.join({ boardId: a.data.board.id }, a.seq);
    } else if (a.type === 'board.deleted') {
      this.leave(`board:${a.data.boardId}`);
    }
  }

  protected override needsReload(a: Activity): boolean {
    // A bulk import names its tasks, it does not carry them (a thousand would be one huge frame).
    return a.type === 'task.imported' && (this.q.boardId === undefined || a.data.boardId === this.q.boardId);
  }

  protected override roomLost(room: Room, e: unknown): boolean {
    // Team-wide: a board deleted before its room was joined answers `forbidden`; the team room
    // reports a lost membership itself.
    return this.q.boardId === undefined && 'boardId' in room.scope && e instanceof RealtimeError && e.code === 'forbidden';
  }

  protected apply(a: Activity): boolean {
    switch (a.type) {
      case 'task.created':
      case 'task.updated':
      case 'task.assigned':
        return this.upsert(a.data.task, a.seq);
      case 'task.deleted': {
        const had = this.items.delete(a.data.taskId);
        this.gone.set(a.data.taskId, { version: Infinity, deleted: true, seq: a.seq });
        return had;
      }
      case 'label.deleted':
        return this.dropLabel(a.data.labelId, a.seq);
      default:
        return false;
    }
  }

  private upsert(t: Task, seq: number): boolean {
    if (t.teamId !== this.q.teamId || t.version <= this.known(t.id)) return false; // stale, or deleted
    const clean = this.withoutDeleted(t);
    if (this.matches(clean)) {
      this.items.set(t.id, clean);
      this.gone.delete(t.id);
      return true;
    }
    // Left the collection (or never was in it): remember the version, so that an older copy that
    // still matched cannot come back.
    this.gone.set(t.id, { version: t.version, deleted: false, seq });
    return this.items.delete(t.id);
  }

  /** A label was deleted: off every task held; those filtered on it leave (at the same version). */
  private dropLabel(labelId: string, seq: number): boolean {
    if (this.deletedLabels.has(labelId)) return false;
    this.deletedLabels.add(labelId);
    let changed = false;
    for (const [id, t] of [...this.items]) {
      const clean = this.withoutDeleted(t);
      if (clean === t) continue;
      changed = true;
      if (this.matches(clean)) {
        this.items.set(id, clean);
      } else {
        this.items.delete(id);
        this.gone.set(id, { version: t.version, deleted: false, seq });
      }
    }
    return changed;
  }
}

function sameLabels(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  const x = a ?? [];
  const y = b ?? [];
  return x.length === y.length && x.every((id, i) => id === y[i]);
}

// ---- comments -------------------------------------------------------------------------------------

class LiveComments extends LiveBase<Comment> {
  private readonly taskId: string;

  constructor(rt: RealtimeClient, http: LiveHttp, pageSize: number, key: string, taskId: string) {
    super(rt, http, pageSize, key);
    this.taskId = taskId;
  }

  protected idOf(c: Comment): string {
    return c.id;
  }

  protected compare(a: Comment, b: Comment): number {
    return cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
  }

  protected isFinal(a: Activity): boolean {
    return a.type === 'comment.deleted' || a.type === 'task.deleted';
  }

  protected fetchAll(signal: AbortSignal): Promise<Loaded<Comment>> {
    return this.readAll<Comment>(`/tasks/${this.taskId}/comments`, {}, signal, (seq) => {
      this.join({ taskId: this.taskId }, seq);
    });
  }

  protected override loadGone(e: unknown, loadedBefore: boolean): boolean {
    // The task vanished while the room could not be resumed (its task.deleted was in the gap).
    if (loadedBefore && e instanceof ApiError && e.status === 404) {
      this.end('closed', null, true);
      return true;
    }
    return false;
  }

  protected apply(a: Activity): boolean {
    switch (a.type) {
      case 'comment.created':
      case 'comment.updated': {
        const c = a.data.comment;
        if (c.taskId !== this.taskId || this.gone.has(c.id)) return false;
        this.items.set(c.id, c);
        return true;
      }
      case 'comment.deleted': {
        const had = this.items.delete(a.data.commentId);
        this.gone.set(a.data.commentId, { version: Infinity, deleted: true, seq: a.seq });
        return had;
      }
      case 'task.deleted':
        if (a.data.taskId === this.taskId) this.end('closed', null, true);
        return true;
      default:
        return false;
    }
  }
}

// ---- members --------------------------------------------------------------------------------------

class LiveMembers extends LiveBase<Member> {
  private readonly teamId: string;

  constructor(rt: RealtimeClient, http: LiveHttp, pageSize: number, key: string, teamId: string) {
    super(rt, http, pageSize, key);
    this.teamId = teamId;
  }

  protected override teamOf(): string {
    return this.teamId;
  }

  protected idOf(m: Member): string {
    return m.user.id;
  }

  protected compare(a: Member, b: Member): number {
    return cmp(a.joinedAt, b.joinedAt) || cmp(a.user.id, b.user.id);
  }

  protected isFinal(_a: Activity): boolean {
    // A removed member can be added again: a removal is applied in seq order like the rest.
    return false;
  }

  protected fetchAll(signal: AbortSignal): Promise<Loaded<Member>> {
    return this.readAll<Member>(`/teams/${this.teamId}/members`, {}, signal, (seq) => {
      this.join({ teamId: this.teamId }, seq);
    });
  }

  protected apply(a: Activity): boolean {
    switch (a.type) {
      case 'member.added':
      case 'member.updated':
        if (a.data.member.teamId !== this.teamId) return false;
        this.items.set(a.data.member.user.id, a.data.member);
        return true;
      case 'member.removed':
        return this.items.delete(a.data.userId);
      default:
        return false;
    }
  }
}

// ---- labels ---------------------------------------------------------------------------------------

class LiveLabels extends LiveBase<Label> {
  private readonly teamId: string;

  constructor(rt: RealtimeClient, http: LiveHttp, pageSize: number, key: string, teamId: string) {
    super(rt, http, pageSize, key);
    this.teamId = teamId;
  }

  protected override teamOf(): string {
    return this.teamId;
  }

  protected idOf(l: Label): string {
    return l.id;
  }

  protected compare(a: Label, b: Label): number {
    return cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
  }

  protected isFinal(a: Activity): boolean {
    // Label ids are never reused.
    return a.type === 'label.deleted';
  }

  protected fetchAll(signal: AbortSignal): Promise<Loaded<Label>> {
    return this.readAll<Label>(`/teams/${this.teamId}/labels`, {}, signal, (seq) => {
      this.join({ teamId: this.teamId }, seq);
    });
  }

  protected apply(a: Activity): boolean {
    switch (a.type) {
      case 'label.created':
      case 'label.updated': {
        const l = a.data.label;
        if (l.teamId !== this.teamId || this.gone.has(l.id)) return false;
        this.items.set(l.id, l);
        return true;
      }
      case 'label.deleted': {
        const had = this.items.delete(a.data.labelId);
        this.gone.set(a.data.labelId, { version: Infinity, deleted: true, seq: a.seq });
        return had;
      }
      default:
        return false;
    }
  }
}
