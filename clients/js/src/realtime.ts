// The realtime connection: one WebSocket to /realtime carrying every subscribed room.
//
// What it guarantees to each subscription's handlers: every activity the server routes to that
// room, exactly once and in seq order, across reconnects. It gets there by
//  - keeping a cursor (the last seq delivered) per room and resubscribing with `since: cursor`
//    after every reconnect, so the server replays what was missed;
//  - buffering what arrives for a room until its `subscribed` reply and delivering it in seq order
//    then (the replay of one room may interleave with live frames of another room, and those can
//    be the same activities);
//  - dropping anything at or below a cursor (duplicates are expected: the contract asks clients to
//    de-duplicate by (teamId, seq));
//  - when the server cannot resume (`resume_unavailable`), subscribing without `since` and telling
//    the app through `onGap` to refetch.
// Several subscriptions (handles) may share one room: the room is joined once on the server, keeps
// a short history of what it delivered, and each handle has its own cursor into it, so a handle
// that joins late with an older `since` is served from that history (or told about a gap).
// It also renews the access token on the live socket (an `auth` message) before it expires, and
// reconnects with jittered exponential backoff when the socket drops.
//
// The user's inbox (`{"type":"subscribe","inbox":true}`) is a stream of its own, beside the rooms:
// one per socket, with its own seq. It is resumed the same way (the highest seq delivered as
// `since`), buffered until its `subscribed` reply, and shared by every inbox subscription (handle)
// of the client, each with its own cursor; a handle that asks for an older `since` than the stream
// has delivered makes the client subscribe again from there ("subscribing again replaces the
// socket's position in the stream"), and every handle drops what it already had.

import type {
  Activity,
  ActivityOf,
  ActivityType,
  ClientFrame,
  Comment,
  Label,
  Member,
  PresenceActivity,
  Scope,
  ServerFrame,
  Task,
} from './generated/protocol.js';
import { PRESENCE_TYPES } from './generated/protocol.js';
import { Session, isAuthFailure, type AccessToken, type TokenSource } from './http.js';
import { openInbox, type Inbox, type InboxOptions } from './inbox.js';
import { inboxEventOf, type InboxClientFrame, type InboxEvent } from './inbox-types.js';
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
  type LiveTasksQuery,
} from './live.js';
import { PresenceState, type PresenceEntry, type PresenceField, type ViewerState } from './presence.js';
import { MoveTracker, normalizeScope, reaches, scopeKey, scopeOfFrame, type ScopeKey } from './scope.js';
import {
  FetchEventSource,
  formatEventId,
  parseEventId,
  sseUrl,
  tokenExpiry,
  type EventSourceConstructor,
  type EventSourceLike,
  type StreamErrorEvent,
  type StreamPosition,
} from './sse.js';
import { API_PREFIX, type FetchLike } from './http.js';

/**
 * The part of the WebSocket API the client uses. The browser's `WebSocket` and the `ws` package's
 * class both fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** How the client talks to the server: one WebSocket, or an event stream (SSE) and POSTs. */
export type Transport = 'websocket' | 'sse';

export type ConnectionState =
  /** `connect()` not called yet. */
  | 'idle'
  /** Opening the first socket. */
  | 'connecting'
  /** Authenticated; subscriptions are being (re)joined or are live. */
  | 'open'
  /** The socket dropped; waiting for the next attempt, or making it. */
  | 'reconnecting'
  /** `close()` was called, or the credentials are gone. */
  | 'closed';

export interface StateChange {
  state: ConnectionState;
  /** Close code and reason of the socket that dropped. */
  code?: number;
  reason?: string;
  /** Delay before the next attempt. */
  delayMs?: number;
  /** On 'open': true when this is not the first socket. Refetch `GET /me` then: deliveries to a
   * user's own sockets (assignments, memberships) are live only and are not replayed. */
  reconnected?: boolean;
  /** On 'open': the transport the connection uses. */
  transport?: Transport;
  /** On 'closed' by the client: why (`closed`: the app closed it; `unauthorized`: the
   * credentials are gone). */
  error?: RealtimeError;
}

/** An `error` frame, or a failure of the client itself. */
export class RealtimeError extends Error {
  readonly code: string;
  readonly scope: Scope | undefined;

  constructor(code: string, message: string, scope?: Scope) {
    super(`${code}: ${message}`);
    this.name = 'RealtimeError';
    this.code = code;
    this.scope = scope;
  }
}

export interface GapInfo {
  scope: Scope;
  /** The `since` the subscription could not be resumed from. */
  since: number;
  /** The seq the subscription now continues after. Refetch the scope's data over HTTP; apply
   * activities whose task `version` is newer than what the refetch returned. */
  seq: number;
  message: string;
}

export interface SubscribedInfo {
  scope: Scope;
  /** The room's seq at this join: everything after it will be delivered live. */
  seq: number;
  /** The `since` sent with the room's subscribe (null: none); for a subscription that joined a
   * room already live, the seq it resumed after. */
  since: number | null;
  /** How many activities the replay delivered to this subscription. */
  replayed: number;
  /** True from the second join of this subscription on (after a reconnect). */
  resumed: boolean;
}

/** A handler may return a promise: a rejection is reported to `onError`, never left unhandled. */
type Handler<A> = (a: A) => unknown;

/** Per-type handlers: `on: { 'task.created': (a) => a.data.task.title }`. */
export type TypedHandlers = { [T in ActivityType]?: Handler<ActivityOf<T>> };

export interface SubscriptionHandlers {
  /** Every activity routed to this scope, once, in seq order. */
  onActivity?: Handler<Activity>;
  /** The same, by type (called after `onActivity`). */
  on?: TypedHandlers;
  /** The server joined the room (again, after a reconnect). */
  onSubscribed?: Handler<SubscribedInfo>;
  /** The subscription could not be resumed: refetch the scope. Called once the room is joined. */
  onGap?: Handler<GapInfo>;
  /** The subscription ended for good: `forbidden`, `too_many_subscriptions`, `membership_revoked`. */
  onError?: Handler<RealtimeError>;
  /** Task scopes: `presence.joined` / `presence.left` (see also `subscription.presence`). */
  onPresence?: Handler<PresenceActivity>;
}

/** What `subscription.on(event, fn)` listens to, and what `fn` receives. */
export type SubscriptionEvents = { [T in ActivityType]: ActivityOf<T> } & {
  activity: Activity;
  subscribed: SubscribedInfo;
  gap: GapInfo;
  error: RealtimeError;
  presence: PresenceActivity;
};

export interface SubscribeOptions {
  /** Resume after this seq (e.g. the `X-TaskForge-Seq` of the snapshot the app holds). */
  since?: number;
  /**
   * The team a board or task scope belongs to. Over SSE a stream resumes per team, so a new
   * board or task subscription with `since` needs its team to resume exactly from there; without
   * it the client looks a task's team up over HTTP, and for a board reports a gap after the join
   * (the app refetches). Ignored for team scopes and over the WebSocket.
   */
  teamId?: string;
}

export type SubscriptionState = 'pending' | 'active' | 'ended';

/** How many delivered activities a room keeps for handles that join it late. */
const ROOM_HISTORY = 200;

/**
 * @internal One room on the server, shared by every subscription (handle) of its scope. The room
 * is what is joined, resumed and left; handles only read from it.
 */
class Room {
  readonly scope: Scope;
  readonly key: ScopeKey;
  readonly presence: PresenceState | undefined;
  readonly handles = new Set<Subscription>();
  status: SubscriptionState = 'pending';
  /** Joined at least once (a `subscribed` came): later subscribes resume from `cursor`. */
  joined = false;
  /** The last seq the room accounted for. */
  cursor: number | null = null;
  /** The `since` of the subscribe in flight. */
  sentSince: number | null = null;
  /** Activities received before the `subscribed` reply, by seq. */
  buffer = new Map<number, Activity>();
  /** Set while resubscribing after `resume_unavailable`. */
  gap: { since: number; message: string } | null = null;
  /** The room has delivered every activity routed to it with seq in (coveredFrom, cursor]
   * (null before its first join); a gap starts the coverage over. */
  coveredFrom: number | null = null;
  /** What the room delivered, oldest first: every routed activity with seq in
   * (historyStart, cursor]. Handles catch up from here. */
  history: Activity[] = [];
  historyStart = 0;
  /** `unavailable` answers in a row, for the retry backoff. */
  refusals = 0;
  retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** The team the scope belongs to, when known (SSE streams resume per team). */
  teamId: string | null;
  /** SSE: joined on a stream whose resume point covers it (no `since` of its own needed). */
  sseCovered = false;
  /** SSE: joining with a `since` the stream could not be told (the team is unknown): the join
   * reports a gap from there. */
  blindSince: number | null = null;
  /** SSE: looking the task's team up over HTTP; looked up once (found or not). */
  lookingUp = false;
  lookedUp = false;

  constructor(scope: Scope, reportError: (e: unknown) => void, teamId: string | null) {
    this.scope = scope;
    this.key = scopeKey(scope);
    this.presence = 'taskId' in scope ? new PresenceState(scope.taskId, reportError) : undefined;
    this.teamId = 'teamId' in scope ? scope.teamId : teamId;
  }

  record(a: Activity): void {
    this.cursor = a.seq;
    this.history.push(a);
  }

  /** Keeps the history bounded; what falls out moves `historyStart` up. */
  trim(): void {
    const excess = this.history.length - ROOM_HISTORY;
    if (excess <= 0) return;
    this.historyStart = this.history[excess - 1]!.seq;
    this.history.splice(0, excess);
  }
}

let nextSubscriptionId = 1;

/** One handle on a scope's room. Created by `RealtimeClient.subscribe`. */
export class Subscription {
  readonly scope: Scope;
  readonly key: ScopeKey;
  /** Resolves at this handle's first join; rejects if it ends first, or the client closes first
   * (`closed`) or loses its credentials (`unauthorized`). */
  readonly ready: Promise<SubscribedInfo>;

  /** @internal */ readonly id = nextSubscriptionId++;
  /** @internal */ readonly room: Room;
  /** @internal */ handlers: SubscriptionHandlers;
  /** @internal */ readonly listeners = new Map<keyof SubscriptionEvents, Set<(x: any) => unknown>>();
  /** @internal */ status: SubscriptionState = 'pending';
  /** @internal The last seq delivered to this handle (or its `since`); null before the first join. */
  cursor: number | null;
  /** @internal */ joins = 0;
  /** @internal */ resolveReady!: (info: SubscribedInfo) => void;
  /** @internal */ rejectReady!: (e: Error) => void;
  private readonly client: RealtimeClient;

  /** @internal */
  constructor(client: RealtimeClient, room: Room, handlers: SubscriptionHandlers, since: number | null) {
    this.client = client;
    this.room = room;
    this.scope = room.scope;
    this.key = room.key;
    this.handlers = handlers;
    this.cursor = since;
    this.ready = new Promise<SubscribedInfo>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // An app that never awaits `ready` must not get an unhandled rejection.
    this.ready.catch(() => {});
  }

  get state(): SubscriptionState {
    return this.status;
  }

  /** Task scopes: who is looking at the task (shared by every handle of the room). */
  get presence(): PresenceState | undefined {
    return this.room.presence;
  }

  /** The last seq this subscription has accounted for; resumes start after it. */
  get lastSeq(): number | null {
    return this.cursor;
  }

  /**
   * Calls `fn` on `event`: an activity type (`'task.created'`, narrowed), `'activity'` (every
   * one), `'subscribed'`, `'gap'`, `'error'` or `'presence'`. Returns a function that removes it.
   */
  on<E extends keyof SubscriptionEvents>(event: E, fn: Handler<SubscriptionEvents[E]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => {
      this.listeners.get(event)?.delete(fn);
    };
  }

  /** Releases this handle; the room is left when its last handle goes. */
  unsubscribe(): void {
    this.client.unsubscribe(this);
  }
}

export interface InboxSubscribedInfo {
  /** The inbox stream's latest seq at this join: everything after it is delivered live. */
  seq: number;
  /** The user's unread count at `seq`. */
  unreadCount: number;
  /** The `since` this subscription resumed after (null: none, it started at `seq`). */
  since: number | null;
  /** How many events the replay delivered to this subscription. */
  replayed: number;
  /** True from the second join on (after a reconnect). */
  resumed: boolean;
}

/** The inbox stream could not be resumed from `since`: the events in (since, seq] are not coming. */
export interface InboxGapInfo {
  since: number;
  /** The seq delivery continues after: refetch GET /me/notifications. */
  seq: number;
  message: string;
}

export interface InboxHandlers {
  /** Every event of the user's inbox stream after the subscription's `since`, once, in seq order. */
  onEvent?: Handler<InboxEvent>;
  /** The stream was joined (again, after a reconnect). */
  onSubscribed?: Handler<InboxSubscribedInfo>;
  /** The server refused the `since` (`resume_unavailable`: beyond its stream, e.g. a server whose
   * data was reset): the client joined without it; refetch. Called after `onSubscribed`. */
  onGap?: Handler<InboxGapInfo>;
  /** The subscription ended for good (refused by the server, or ended by it). */
  onError?: Handler<RealtimeError>;
}

/** What `inboxSubscription.on(event, fn)` listens to. */
export type InboxSubscriptionEvents = {
  event: InboxEvent;
  'notification.created': Extract<InboxEvent, { type: 'notification.created' }>;
  'notification.read': Extract<InboxEvent, { type: 'notification.read' }>;
  subscribed: InboxSubscribedInfo;
  gap: InboxGapInfo;
  error: RealtimeError;
};

/**
 * @internal The user's inbox stream on the socket, shared by every inbox subscription (handle) of
 * the client.
 */
class InboxStream {
  readonly handles = new Set<InboxSubscription>();
  status: SubscriptionState = 'pending';
  /** The highest seq the stream accounted for (delivered, or a `subscribed` seq). */
  cursor: number | null = null;
  /** The unread count at `cursor`. */
  unread = 0;
  /** Events received before the `subscribed` reply, by seq. */
  buffer = new Map<number, InboxEvent>();
  /** A subscribe of this stream went out on the current socket (so leaving must tell the server). */
  onSocket = false;
  refusals = 0;
  retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Set while subscribing again without `since` after `resume_unavailable`. */
  gap: { since: number; message: string } | null = null;
  /** SSE: joined on a stream whose resume point covers it. */
  sseCovered = false;
  /** The `since` of the last subscribe (null: none). */
  wantSince: number | null = null;
}

/** One handle on the user's inbox stream. Created by `RealtimeClient.subscribeInbox`. */
export class InboxSubscription {
  /** Resolves at this handle's first join; rejects if it ends first, or the client closes first. */
  readonly ready: Promise<InboxSubscribedInfo>;

  /** @internal */ readonly stream: InboxStream;
  /** @internal */ readonly handlers: InboxHandlers;
  /** @internal */ readonly listeners = new Map<keyof InboxSubscriptionEvents, Set<(x: any) => unknown>>();
  /** @internal */ status: SubscriptionState = 'pending';
  /** @internal The last seq delivered to this handle (or its `since`); null before the first join. */
  cursor: number | null;
  /** @internal The cursor at the join in progress (what the `subscribed` info reports as `since`). */
  joinSince: number | null;
  /** @internal */ joins = 0;
  /** @internal */ resolveReady!: (info: InboxSubscribedInfo) => void;
  /** @internal */ rejectReady!: (e: Error) => void;
  private readonly client: RealtimeClient;

  /** @internal */
  constructor(client: RealtimeClient, stream: InboxStream, handlers: InboxHandlers, since: number | null) {
    this.client = client;
    this.stream = stream;
    this.handlers = handlers;
    this.cursor = since;
    this.joinSince = since;
    this.ready = new Promise<InboxSubscribedInfo>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
  }

  get state(): SubscriptionState {
    return this.status;
  }

  /** The highest seq of the inbox stream this subscription has accounted for. */
  get lastSeq(): number | null {
    return this.cursor;
  }

  /** Calls `fn` on `event` (`'event'`, an event type, `'subscribed'`, `'error'`); returns its remover. */
  on<E extends keyof InboxSubscriptionEvents>(event: E, fn: Handler<InboxSubscriptionEvents[E]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => {
      this.listeners.get(event)?.delete(fn);
    };
  }

  /** Releases this handle; the stream is left when its last handle goes. */
  unsubscribe(): void {
    this.client.unsubscribeInbox(this);
  }
}

export interface BackoffOptions {
  /** First delay (default 250 ms). */
  minMs?: number;
  /** Largest delay (default 30 s). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** A socket must stay authenticated this long before the attempt count starts over (default
   * 10 s): a server that accepts and drops at once is then retried ever more slowly. */
  resetAfterMs?: number;
}

export interface RealtimeOptions {
  /** The server's base URL (`https://host`) or the socket URL (`wss://host/realtime`). */
  url: string;
  /** Where access tokens come from: a `Session`, any `TokenSource`, or a fixed token. */
  auth: TokenSource | string;
  /** The HTTP session the live collections load snapshots with (default: `auth` if it is one). */
  session?: Session;
  /** A WebSocket class; defaults to the global one (browsers, Node 22+). In Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /**
   * `websocket`: only the socket (`/realtime`). `sse`: only the event stream
   * (`/realtime/sse`, with POSTs for what the client sends). `auto` (the default): the socket,
   * and the event stream from the moment the socket proves unusable (it failed to open twice in
   * a row, or did not open within `openTimeoutMs`, or dropped three times in a row before staying
   * up `backoff.resetAfterMs`: a proxy that blocks or cuts WebSockets). The choice holds for the
   * client's life, except that the socket is tried again now and then (`probeWebSocketMs`).
   */
  transport?: 'auto' | Transport;
  /**
   * An EventSource class for the event stream (e.g. the browser's). By default the client reads
   * the stream with its own reader over `fetch` (`FetchEventSource`), which sends the token in a
   * header, sees why a stream was refused and sees the keepalives. With an EventSource the token
   * goes in `?token=`.
   */
  EventSource?: EventSourceConstructor;
  /** The `fetch` of the event stream's reader and of its POSTs (default: the global one). */
  fetch?: FetchLike;
  /** `auto`: how long a socket may take to open before it counts as failed (default 5 s). */
  openTimeoutMs?: number;
  /** `auto`, on the event stream: try the socket again after this long, doubling up to 30 min
   * while it keeps failing (default 2 min; 0: never). A socket that opens takes over. */
  probeWebSocketMs?: number;
  backoff?: BackoffOptions;
  /** Send a `ping` after this much silence (default 25 s); reconnect if nothing comes back
   * within `heartbeatTimeoutMs` (default 10 s). Detects half-open connections. */
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  /** How long the server may take to answer the `auth` message, and the token source to hand
   * out a token (default 10 s). */
  authTimeoutMs?: number;
  /** Outgoing messages per second and burst. The server cuts sockets that exceed 100/s
   * (burst 200) by default; the client stays under half of that (50/s, burst 100). */
  sendRate?: { perSecond: number; burst: number };
  /** Every distinct activity the socket receives, once per (teamId, seq), including the user's
   * own deliveries (assignments, memberships) that no subscription covers. */
  onActivity?: Handler<Activity>;
  /** A subscription could not be resumed (also reported to the subscription's own `onGap`). */
  onGap?: Handler<GapInfo>;
  onStateChange?: Handler<StateChange>;
  /** The credentials are gone (the refresh was refused): log in again. The client is closed. */
  onAuthFailure?: (error: unknown) => void;
  /** Errors that are not fatal: handler exceptions and rejections, unexpected `error` frames,
   * failed token fetches. Defaults to `console.error`. */
  onError?: (error: unknown) => void;
  /** Random source for the jitter (tests). */
  random?: () => number;
}

/** Counters for monitoring and tests. */
export interface RealtimeStats {
  /** Sockets that authenticated. */
  connects: number;
  /** Activity frames received (duplicates included). */
  activityFrames: number;
  /** Frames whose (teamId, seq) had been received recently (see `onActivity`). */
  duplicates: number;
  /** Tokens replaced on a live socket. */
  renewals: number;
  /** `resume_unavailable` answers. */
  gaps: number;
  /** Messages the server refused with `rate_limited` (each is sent again). */
  rateLimited: number;
  /** (teamId, seq) pairs the de-duplication remembers now (bounded). */
  remembered: number;
  /** Inbox event frames received (duplicates included). */
  inboxEvents: number;
  /** Event streams opened (SSE: one per connection and per change of the scopes). */
  streams: number;
  /** Times the client moved from one transport to the other (`auto`). */
  transportSwitches: number;
}

type Outbound =
  | { kind: 'auth'; frame: ClientFrame; token: AccessToken }
  | { kind: 'subscribe' | 'unsubscribe'; frame: ClientFrame; key: ScopeKey; room: Room }
  | { kind: 'inbox' | 'inbox-unsub'; frame: InboxClientFrame; stream: InboxStream }
  | { kind: 'ping'; frame: ClientFrame }
  /** Not answered by the server (only refused, scoped to the task): never in `inflight`. */
  | { kind: 'presence'; frame: PresenceClientFrame };

/** What a user is doing in a task room, as the client sends it. */
export interface PresenceClientFrame {
  type: 'presence';
  taskId: string;
  state: ViewerState;
  field?: PresenceField;
}

const OPEN = 1;
/** Client-wide de-duplication: per team, the newest seqs received; and how many teams. A frame
 * repeated from further back than this (a replay over activities another room delivered long
 * ago) counts as new. */
const SEEN_PER_TEAM = 512;
const SEEN_TEAMS = 64;

/** The newest seqs received per team, bounded in both directions (see `SEEN_PER_TEAM`). */
class SeenWindow {
  private readonly teams = new Map<string, { seqs: Set<number> }>();

  /** Records (teamId, seq); false if it was already there. */
  mark(teamId: string, seq: number): boolean {
    let team = this.teams.get(teamId);
    if (team) {
      this.teams.delete(teamId); // re-inserted below: the map's order is least recently used first
    } else {
      team = { seqs: new Set() };
      if (this.teams.size >= SEEN_TEAMS) this.teams.delete(this.teams.keys().next().value!);
    }
    this.teams.set(teamId, team);
    if (team.seqs.has(seq)) return false;
    team.seqs.add(seq);
    if (team.seqs.size > SEEN_PER_TEAM) {
      // Forget the oldest half at once, so that this sort runs once per SEEN_PER_TEAM / 2 frames.
      const sorted = [...team.seqs].sort((x, y) => x - y);
      for (const s of sorted.slice(0, sorted.length - SEEN_PER_TEAM / 2)) team.seqs.delete(s);
    }
    return true;
  }

  /** How many seqs are remembered, over all teams (tests). */
  get size(): number {
    let n = 0;
    for (const t of this.teams.values()) n += t.seqs.size;
    return n;
  }
}

const INBOX_EVENTS = new Set(['notification.created', 'notification.read']);

/** The `error` codes before which the server ends an event stream. */
const STREAM_ENDERS = new Set(['slow_consumer', 'token_expired', 'unauthorized', 'rate_limited']);

const VIEWER_STATES = new Set<ViewerState>(['viewing', 'editing', 'typing']);
const PRESENCE_FIELDS = new Set<PresenceField>(['title', 'description', 'comment']);

/** An inbox event, or a reply or error that names the inbox (`inbox: true`). */
function isInboxFrame(frame: unknown): boolean {
  const f = frame as { type?: unknown; inbox?: unknown } | null;
  if (!f || typeof f !== 'object' || typeof f.type !== 'string') return false;
  return INBOX_EVENTS.has(f.type) || f.inbox === true;
}

function isPresence(a: Activity | PresenceActivity): a is PresenceActivity {
  // Every `presence.*` type (a server may add some: `presence.updated` came after the first).
  return (PRESENCE_TYPES as readonly string[]).includes(a.type) || String(a.type).startsWith('presence.');
}

function decode(data: unknown): string | null {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return new TextDecoder().decode(data as ArrayBuffer);
  }
  return null;
}

/** The socket URL for a base URL: `https://h/x` -> `wss://h/x/realtime`. */
export function realtimeUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (!u.pathname.endsWith('/realtime')) u.pathname = `${u.pathname.replace(/\/+$/, '')}/realtime`;
  return u.toString();
}

/** Caps a delay for setTimeout, which misbehaves past 2^31 - 1 ms. */
function timerDelay(ms: number): number {
  return Math.min(Math.max(0, ms), 2 ** 31 - 1);
}

/** `p`, or a rejection with `error` after `ms`. */
function withTimeout<T>(p: Promise<T>, ms: number, error: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(error()), timerDelay(ms));
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** One event stream of the SSE transport: a fixed set of scopes. */
interface SseConn {
  /** Local number (the server's id is `streamId`). */
  readonly n: number;
  readonly es: EventSourceLike;
  readonly url: string;
  /** Whether `es` is the client's own reader (the token is in a header, not in `url`). */
  readonly own: boolean;
  /** The server's id, from the `stream` event; POSTs go to it. */
  streamId: string | null;
  /** The resume point: what it was opened with, then the `id:` of the last event. */
  pos: StreamPosition;
  /** Rooms (and the inbox) of this stream not answered yet (`subscribed` or an error). */
  readonly waiting: Set<Room | InboxStream>;
  /** Task rooms joined on this stream (presence goes to a stream that has the room). */
  readonly joined: Set<Room>;
  /** The code of the `error` event before the server ended the stream. */
  endCode: string | null;
  /** Bounds the wait for the `stream` event. */
  timer: ReturnType<typeof setTimeout> | null;
}

export class RealtimeClient {
  private readonly url: string;
  private readonly tokens: TokenSource;
  private readonly WS: WebSocketConstructor | null;
  private readonly opts: RealtimeOptions;
  private readonly random: () => number;
  /** The HTTP session for live collections, if any. */
  readonly session: Session | undefined;

  private readonly rooms = new Map<ScopeKey, Room>();
  private inboxStream: InboxStream | null = null;
  private readonly seen = new SeenWindow();
  private readonly moves = new MoveTracker();
  private readonly stateListeners = new Set<Handler<StateChange>>();
  private readonly activityListeners = new Set<Handler<Activity>>();
  private readonly gapListeners = new Set<Handler<GapInfo>>();

  private stateValue: ConnectionState = 'idle';
  /** Why the client is closed (null while it is open or was never closed). */
  private closedBy: RealtimeError | null = null;
  private wantOpen = false;
  private ws: WebSocketLike | null = null;
  /** Identifies the current socket; callbacks of an older one are ignored. */
  private socketId = 0;
  private authed = false;
  private everAuthed = false;
  private attempt = 0;
  /** 4001 closes in a row: past a few, the credentials are not coming back. */
  private authRejects = 0;
  /** When the current socket authenticated (0: not yet). */
  private authedAt = 0;
  private forceRefresh = false;
  private currentToken: string | null = null;

  private queue: Outbound[] = [];
  /** Sent and not yet answered, oldest first. The server answers every message once, in order. */
  private inflight: Outbound[] = [];
  private bucket = { tokens: 0, at: 0 };
  private lastHeard = 0;
  private pingSentAt = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private authTimer: ReturnType<typeof setTimeout> | null = null;
  private renewTimer: ReturnType<typeof setTimeout> | null = null;
  private pumpTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  /** Timers of messages refused with `rate_limited`, waiting to be sent again. */
  private readonly resendTimers = new Set<ReturnType<typeof setTimeout>>();

  // ---- transport choice
  private readonly transportOption: 'auto' | Transport;
  /** The transport of the current (or next) connection. */
  private mode: Transport;
  /** `auto`: sockets in a row that failed to open, and that dropped before staying up. */
  private wsFailedOpens = 0;
  private wsShortCloses = 0;
  /** The server answered HTTP after sockets failed to open; and a socket failed after that. */
  private wsHttpUp = false;
  private wsFailedWhileUp = false;
  /** The current socket fired `open`. */
  private wsOpened = false;
  private openTimer: ReturnType<typeof setTimeout> | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private probeDelayMs = 0;
  private probeSocket: WebSocketLike | null = null;

  // ---- the SSE transport
  private readonly sseBase: string;
  private readonly ES: EventSourceConstructor | null;
  private readonly fetchImpl: FetchLike | null;
  /** The token of the current SSE connection (null: not connected over SSE). */
  private sseToken: AccessToken | null = null;
  /** The stream being opened or open, and the one it replaces (kept until the new one has
   * joined every scope, so that presence does not flicker). */
  private sse: SseConn | null = null;
  private sseOld: SseConn | null = null;
  private sseCount = 0;
  private reopenTimer: ReturnType<typeof setTimeout> | null = null;
  private retireTimer: ReturnType<typeof setTimeout> | null = null;
  /** The resume point of the last stream, kept across reconnects. */
  private ssePos: StreamPosition = new Map();
  /** The `auth` POSTed on the stream, until `authenticated` answers it. */
  private sseRenewal: AccessToken | null = null;

  // ---- presence state
  /** The state this client holds per task room (editing or typing; viewing is not held). */
  private readonly presenceHeld = new Map<string, { state: ViewerState; field?: PresenceField }>();
  private presenceTimer: ReturnType<typeof setInterval> | null = null;

  private readonly counters: Omit<RealtimeStats, 'remembered'> = {
    connects: 0,
    activityFrames: 0,
    duplicates: 0,
    renewals: 0,
    gaps: 0,
    rateLimited: 0,
    inboxEvents: 0,
    streams: 0,
    transportSwitches: 0,
  };

  constructor(opts: RealtimeOptions) {
    this.opts = opts;
    this.url = realtimeUrl(opts.url);
    const auth = opts.auth;
    this.tokens = typeof auth === 'string' ? { getAccessToken: async () => ({ token: auth }) } : auth;
    this.session = opts.session ?? (auth instanceof Session ? auth : undefined);
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    const transport = opts.transport ?? 'auto';
    if (transport !== 'auto' && transport !== 'websocket' && transport !== 'sse') {
      throw new TypeError(`transport is 'auto', 'websocket' or 'sse', not ${JSON.stringify(transport)}`);
    }
    this.transportOption = transport;
    if (!WS && transport === 'websocket') {
      throw new Error('no WebSocket implementation: pass { WebSocket } (e.g. the "ws" package in Node 20)');
    }
    this.WS = WS ?? null;
    this.sseBase = sseUrl(opts.url);
    this.ES = opts.EventSource ?? null;
    const f = opts.fetch ?? (typeof globalThis.fetch === 'function' ? globalThis.fetch.bind(globalThis) : null);
    this.fetchImpl = f;
    this.mode = transport === 'sse' || !WS ? 'sse' : 'websocket';
    if (this.mode === 'sse' && !this.ES && !f) {
      throw new Error('no WebSocket and no fetch: pass { WebSocket } or { fetch } (or { EventSource })');
    }
    this.random = opts.random ?? Math.random;
    this.bucket.tokens = this.sendRate.burst;
    this.bucket.at = Date.now();
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The transport of the current connection (or of the next one while reconnecting). */
  get transport(): Transport {
    return this.mode;
  }

  get stats(): Readonly<RealtimeStats> {
    return { ...this.counters, remembered: this.seen.size };
  }

  /** The live subscriptions (handles). */
  get subscriptions(): Subscription[] {
    return [...this.rooms.values()].flatMap((r) => [...r.handles]);
  }

  /** The live inbox subscriptions (handles on the user's inbox stream). */
  get inboxSubscriptions(): InboxSubscription[] {
    return [...(this.inboxStream?.handles ?? [])];
  }

  /** Calls `fn` on every connection state change; returns a function that removes it. */
  onStateChange(fn: Handler<StateChange>): () => void {
    this.stateListeners.add(fn);
    return () => this.stateListeners.delete(fn);
  }

  /** Calls `fn` with every distinct activity the socket receives (see the `onActivity` option). */
  onActivity(fn: Handler<Activity>): () => void {
    this.activityListeners.add(fn);
    return () => this.activityListeners.delete(fn);
  }

  /** Calls `fn` whenever a subscription could not be resumed. */
  onGap(fn: Handler<GapInfo>): () => void {
    this.gapListeners.add(fn);
    return () => this.gapListeners.delete(fn);
  }

  private get sendRate(): { perSecond: number; burst: number } {
    return this.opts.sendRate ?? { perSecond: 50, burst: 100 };
  }

  /** Opens the socket (and keeps it open until `close()`). */
  connect(): void {
    if (this.wantOpen) return;
    this.wantOpen = true;
    this.closedBy = null;
    this.attempt = 0;
    this.authRejects = 0;
    this.ensurePresenceTimer();
    void this.open();
  }

  /**
   * Closes the socket and stops reconnecting. Subscriptions and their cursors are kept: a later
   * `connect()` resumes them where they stopped. Subscriptions not joined yet see their `ready`
   * rejected (`closed`).
   */
  close(): void {
    this.shutDown(new RealtimeError('closed', 'the client was closed'));
  }

  private shutDown(reason: RealtimeError): void {
    this.wantOpen = false;
    this.closedBy = reason;
    this.clearTimer('reconnectTimer');
    this.stopProbe();
    this.ensurePresenceTimer();
    this.socketId++;
    const ws = this.ws;
    this.teardown();
    if (ws) this.detachAndClose(ws, 1000, 'client closed');
    for (const room of this.rooms.values()) for (const h of room.handles) h.rejectReady(reason);
    for (const h of this.inboxStream?.handles ?? []) h.rejectReady(reason);
    this.setState({ state: 'closed', error: reason });
  }

  /**
   * Drops the current socket and reconnects now, or cuts a backoff wait short (e.g. when the app
   * learns that the network is back).
   */
  reconnect(): void {
    if (!this.wantOpen) return;
    if (this.ws || this.sseToken) {
      this.dropSocket(4000, 'reconnect requested', false);
    }
    if (this.reconnectTimer) {
      this.clearTimer('reconnectTimer');
      void this.open();
    }
  }

  /**
   * Subscribes to a team, board or task. Subscriptions of one scope share the server's room: each
   * gets every activity after its own `since` (or after it joined), or an `onGap`.
   */
  subscribe(scope: Scope, handlers: SubscriptionHandlers = {}, opts: SubscribeOptions = {}): Subscription {
    const plain = normalizeScope(scope);
    const key = scopeKey(plain);
    if (opts.since !== undefined && !(Number.isInteger(opts.since) && opts.since >= 0)) {
      throw new TypeError('since is a seq: an integer, 0 or more');
    }
    const teamHint = typeof opts.teamId === 'string' && opts.teamId !== '' ? opts.teamId.toLowerCase() : null;
    let room = this.rooms.get(key);
    const fresh = !room;
    if (!room) {
      room = new Room(plain, (e) => this.reportError(e), teamHint);
      this.rooms.set(key, room);
    } else if (room.teamId === null && teamHint) {
      room.teamId = teamHint;
    }
    const sub = new Subscription(this, room, handlers, opts.since ?? null);
    room.handles.add(sub);
    // Made on a closed client: kept (a later `connect()` joins it), but `ready` says why not now.
    if (this.closedBy) sub.rejectReady(this.closedBy);
    if (fresh) {
      if (this.canSubscribe()) this.sendSubscribe(room);
    } else if (room.status === 'active') {
      // The room is live: this handle starts from its history, once the caller has had the
      // chance to attach listeners to what `subscribe` returns.
      if (sub.cursor === null) sub.cursor = room.cursor;
      queueMicrotask(() => {
        if (sub.status === 'pending' && room.status === 'active' && this.isCurrent(room)) {
          this.catchUp(sub, room, sub.cursor);
        }
      });
    }
    return sub;
  }

  /** Releases a subscription (same as `subscription.unsubscribe()`). */
  unsubscribe(sub: Subscription): void {
    if (sub.status === 'ended') return;
    sub.status = 'ended';
    sub.rejectReady(new RealtimeError('unsubscribed', 'the subscription ended', sub.scope));
    const room = sub.room;
    room.handles.delete(sub);
    if (room.handles.size === 0 && this.isCurrent(room)) this.leave(room);
  }

  /** Leaves a room whose last handle went. */
  private leave(room: Room): void {
    if ('taskId' in room.scope) this.presenceHeld.delete(room.scope.taskId);
    if (this.mode === 'sse') {
      // The stream's scopes are fixed: a new stream without this room replaces it.
      this.endRoom(room, null);
      this.requestReopen();
      return;
    }
    const queued = this.queue.findIndex((o) => o.kind === 'subscribe' && o.room === room);
    this.endRoom(room, null);
    if (queued >= 0) {
      this.queue.splice(queued, 1); // never sent: nothing to undo on the server
    } else if (this.authed) {
      this.enqueue({ kind: 'unsubscribe', key: room.key, room, frame: { type: 'unsubscribe', ...room.scope } });
    }
  }

  /**
   * Subscribes to the user's inbox stream (no room: it is the user's own). With `since`, the
   * events after that seq are replayed first (the `seq` of GET /me/notifications is the one to
   * pass); without it, delivery starts at the join. Handles share the stream; each gets every
   * event after its own `since` once, in seq order, across reconnects.
   */
  subscribeInbox(handlers: InboxHandlers = {}, opts: SubscribeOptions = {}): InboxSubscription {
    if (opts.since !== undefined && !(Number.isInteger(opts.since) && opts.since >= 0)) {
      throw new TypeError('since is a seq: an integer, 0 or more');
    }
    let stream = this.inboxStream;
    const fresh = !stream;
    if (!stream) stream = this.inboxStream = new InboxStream();
    const sub = new InboxSubscription(this, stream, handlers, opts.since ?? null);
    stream.handles.add(sub);
    if (this.closedBy) sub.rejectReady(this.closedBy);
    if (fresh) {
      if (this.canSubscribe()) this.sendInboxSubscribe(stream);
      return sub;
    }
    const joined = stream;
    if (stream.status === 'active' && (sub.cursor === null || sub.cursor >= (stream.cursor ?? 0))) {
      // The stream is live and this handle wants nothing older: it starts now, once the caller
      // could attach listeners to what this returns.
      if (sub.cursor === null) sub.cursor = stream.cursor;
      queueMicrotask(() => {
        if (sub.status === 'pending' && joined.status === 'active' && this.inboxStream === joined) {
          this.inboxCatchUp(sub, [], joined.cursor ?? 0, joined.unread);
        }
      });
    } else if (this.canSubscribe() && sub.cursor !== null && (stream.status === 'active' || this.inboxSubscribesOut(stream))) {
      // Older than what the stream delivered or asked for: ask again from there; the handles that
      // are further along drop what they already had.
      this.sendInboxSubscribe(stream);
    }
    return sub;
  }

  /** Releases an inbox subscription (same as `sub.unsubscribe()`). */
  unsubscribeInbox(sub: InboxSubscription): void {
    if (sub.status === 'ended') return;
    sub.status = 'ended';
    sub.rejectReady(new RealtimeError('unsubscribed', 'the inbox subscription ended'));
    const stream = sub.stream;
    stream.handles.delete(sub);
    if (stream.handles.size > 0 || this.inboxStream !== stream) return;
    const wasOnSocket = stream.onSocket;
    // Subscribes still queued were never sent: nothing to undo for them.
    this.queue = this.queue.filter((o) => !(o.kind === 'inbox' && o.stream === stream));
    this.endInbox(stream, null);
    if (this.mode === 'sse') {
      this.requestReopen();
      return;
    }
    if (this.authed && wasOnSocket) {
      this.enqueue({ kind: 'inbox-unsub', stream, frame: { type: 'unsubscribe', inbox: true } });
    }
  }

  /**
   * The user's inbox, kept exact: the newest page of GET /me/notifications, then the stream
   * applied (see `inbox.ts`). Shared per client; `close()` releases one handle.
   */
  inbox(opts?: InboxOptions): Inbox {
    return openInbox(this, this.http(), opts);
  }

  /**
   * A team's or a board's tasks, kept exact: every page loaded, then the stream applied (see
   * `live.ts`). Collections of the same query are shared; `close()` releases one handle.
   */
  liveTasks(query: LiveTasksQuery, opts?: LiveOptions): LiveCollection<Task> {
    return openLiveTasks(this, this.http(), query, opts);
  }

  /** A task's comments, kept exact. */
  liveComments(query: LiveCommentsQuery, opts?: LiveOptions): LiveCollection<Comment> {
    return openLiveComments(this, this.http(), query, opts);
  }

  /** A team's members, kept exact. */
  liveMembers(query: LiveMembersQuery, opts?: LiveOptions): LiveCollection<Member> {
    return openLiveMembers(this, this.http(), query, opts);
  }

  /** A team's labels, kept exact (oldest first). */
  liveLabels(query: LiveLabelsQuery, opts?: LiveOptions): LiveCollection<Label> {
    return openLiveLabels(this, this.http(), query, opts);
  }

  private http(): Session {
    if (!this.session) {
      throw new TypeError('live collections load over HTTP: pass a Session as `auth` or as `session`');
    }
    return this.session;
  }

  /** @internal */
  reportError(e: unknown): void {
    if (this.opts.onError) {
      try {
        this.opts.onError(e);
        return;
      } catch (inner) {
        e = inner;
      }
    }
    console.error('[taskforge realtime]', e);
  }

  // ---- connection lifecycle -------------------------------------------------------------

  private setState(change: StateChange): void {
    this.stateValue = change.state;
    if (this.opts.onStateChange) this.safe(this.opts.onStateChange, change);
    for (const fn of [...this.stateListeners]) this.safe(fn, change);
  }

  private async open(): Promise<void> {
    const id = ++this.socketId;
    if (!this.everAuthed) this.setState({ state: 'connecting' });
    let token: AccessToken;
    try {
      // Bounded: a token source whose refresh never answers must not stop the reconnects.
      token = await withTimeout(
        this.tokens.getAccessToken(this.forceRefresh ? { forceRefresh: true } : {}),
        this.opts.authTimeoutMs ?? 10_000,
        () => new RealtimeError('timeout', 'the token source did not answer in time'),
      );
      this.forceRefresh = false;
    } catch (e) {
      if (id !== this.socketId || !this.wantOpen) return;
      if (isAuthFailure(e)) return this.failAuth(e);
      this.reportError(e);
      return this.scheduleReconnect({});
    }
    if (id !== this.socketId || !this.wantOpen) return;
    if (this.mode === 'websocket' && this.transportOption === 'auto' && this.wsFailedOpens >= 2) {
      // Sockets that do not open while the server answers HTTP: something on the way blocks
      // WebSockets. While the server is down nothing answers, and the socket stays; once it
      // answers, the socket gets one more try (a server back from a restart takes it).
      const reachable = await this.serverAnswers();
      if (id !== this.socketId || !this.wantOpen) return;
      if (reachable && this.wsFailedWhileUp) this.switchTransport('sse');
      else this.wsHttpUp = reachable;
    }
    if (this.mode === 'sse' || !this.WS) return this.openSse(token);
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url);
    } catch (e) {
      this.reportError(e);
      if (this.transportOption === 'auto') this.wsFailedOpens++;
      return this.scheduleReconnect({});
    }
    this.ws = ws;
    this.wsOpened = false;
    // A socket whose opening hangs (a proxy that swallows the upgrade) counts as failed.
    this.openTimer = setTimeout(() => {
      this.openTimer = null;
      if (id === this.socketId && !this.wsOpened) this.dropSocket(4000, 'the socket did not open in time');
    }, this.opts.openTimeoutMs ?? 5000);
    // The token goes in the first message rather than in `?token=`: browsers cannot set headers,
    // and URLs end up in logs. The `authenticated` reply also tells when the server cuts us off.
    ws.onopen = () => {
      if (id !== this.socketId) return;
      this.wsOpened = true;
      this.wsFailedOpens = 0;
      this.wsHttpUp = this.wsFailedWhileUp = false;
      this.clearTimer('openTimer');
      this.lastHeard = Date.now();
      this.send({ kind: 'auth', token, frame: { type: 'auth', token: token.token } });
      this.authTimer = setTimeout(() => {
        if (id === this.socketId && !this.authed) this.dropSocket(4000, 'no answer to auth');
      }, this.opts.authTimeoutMs ?? 10_000);
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (id === this.socketId) this.onMessage(ev.data);
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      this.onSocketClosed(id, ev.code ?? 1006, ev.reason ?? '');
    };
    ws.onerror = () => {
      // A close event follows every error; the reconnect is decided there.
    };
  }

  private onSocketClosed(id: number, code: number, reason: string, countFailure = true): void {
    if (id !== this.socketId) return;
    const authedAt = this.authedAt;
    const wasWs = this.ws !== null;
    const opened = this.wsOpened;
    this.teardown();
    if (wasWs && countFailure && this.wantOpen) this.noteSocketFailure(opened, authedAt, code);
    // The attempt count starts over only after a socket that stayed up a while: a server that
    // accepts and drops at once is retried ever more slowly, not every few hundred ms.
    if (authedAt > 0 && Date.now() - authedAt >= (this.opts.backoff?.resetAfterMs ?? 10_000)) this.attempt = 0;
    if (!this.wantOpen) {
      this.setState({ state: 'closed', code, reason });
      return;
    }
    if (code === 4001) {
      // unauthorized or token_expired: the next attempt presents a newly refreshed token. A token
      // the server refuses at once, again and again, will not get better: give up after a few.
      // "At once" includes a close right after `authenticated`: the server accepts a token up to
      // its clock leeway past `exp` and then cuts the socket immediately. A socket that lived a
      // while and then expired starts a new count.
      this.forceRefresh = true;
      const atOnce = authedAt === 0 || Date.now() - authedAt < 1000;
      this.authRejects = atOnce ? this.authRejects + 1 : 1;
      if (this.authRejects > 3) {
        return this.failAuth(new RealtimeError('unauthorized', `the server refused the token ${this.authRejects} times`));
      }
    } else {
      this.authRejects = 0;
    }
    this.scheduleReconnect({ code, reason });
  }

  /** Forgets the socket and everything tied to it; subscriptions wait to be joined again. */
  private teardown(): void {
    this.ws = null;
    this.wsOpened = false;
    this.authed = false;
    this.authedAt = 0;
    this.queue = [];
    this.inflight = [];
    this.currentToken = null;
    this.closeSse();
    for (const t of ['authTimer', 'renewTimer', 'pumpTimer', 'openTimer'] as const) this.clearTimer(t);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    for (const t of this.resendTimers) clearTimeout(t);
    this.resendTimers.clear();
    for (const room of this.rooms.values()) {
      room.status = 'pending';
      room.buffer.clear();
      if (room.retryTimer) clearTimeout(room.retryTimer);
      room.retryTimer = null;
      room.presence?.markStale();
      for (const h of room.handles) h.status = 'pending';
    }
    const stream = this.inboxStream;
    if (stream) {
      stream.status = 'pending';
      stream.buffer.clear();
      stream.onSocket = false;
      if (stream.retryTimer) clearTimeout(stream.retryTimer);
      stream.retryTimer = null;
      for (const h of stream.handles) h.status = 'pending';
    }
  }

  private scheduleReconnect(info: { code?: number; reason?: string }): void {
    this.clearTimer('reconnectTimer');
    const b = this.opts.backoff ?? {};
    const min = b.minMs ?? 250;
    const max = b.maxMs ?? 30_000;
    const base = Math.min(max, min * (b.factor ?? 2) ** this.attempt);
    this.attempt++;
    // "Equal jitter": half fixed, half random, so that clients cut off together (a server restart)
    // do not come back together, and no delay collapses to zero.
    const delayMs = Math.round(base / 2 + (this.random() * base) / 2);
    this.setState({ state: 'reconnecting', delayMs, ...info });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.wantOpen) void this.open();
    }, delayMs);
  }

  /** Abandons the current socket (or event stream) at once, without waiting for a close
   * handshake, and reconnects. `countFailure`: whether it counts against the socket (`auto`). */
  private dropSocket(code: number, reason: string, countFailure = true): void {
    const ws = this.ws;
    if (ws) this.detachAndClose(ws, code, reason, true);
    this.onSocketClosed(this.socketId, code, reason, countFailure);
  }

  private detachAndClose(ws: WebSocketLike, code: number, reason: string, abandon = false): void {
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      // A socket given up on (no answer to ping) would wait for a close handshake that never
      // comes: the `ws` package can drop it at once. Browsers have no such call.
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (abandon && typeof terminate === 'function') terminate.call(ws);
      else ws.close(code, reason);
    } catch {
      // Already closed or closing.
    }
  }

  private failAuth(error: unknown): void {
    this.shutDown(new RealtimeError('unauthorized', `the credentials are gone: ${String(error)}`));
    const onAuthFailure = this.opts.onAuthFailure;
    if (onAuthFailure) this.safe(onAuthFailure, error);
    else this.reportError(error);
  }

  private clearTimer(
    name: 'reconnectTimer' | 'authTimer' | 'renewTimer' | 'pumpTimer' | 'openTimer' | 'reopenTimer' | 'retireTimer' | 'probeTimer',
  ): void {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
  }


  // ---- the transport choice ------------------------------------------------------------------

  /**
   * `auto`: a socket closed. It counts against the socket if it never opened (decided at the next
   * attempt, after asking whether the server answers HTTP), or if it dropped abnormally before
   * staying up `resetAfterMs`: three of those in a row and the client moves to the event stream.
   */
  private noteSocketFailure(opened: boolean, authedAt: number, code: number): void {
    if (this.transportOption !== 'auto' || this.mode !== 'websocket') return;
    const stableMs = this.opts.backoff?.resetAfterMs ?? 10_000;
    if (authedAt > 0 && Date.now() - authedAt >= stableMs) {
      this.wsFailedOpens = 0;
      this.wsShortCloses = 0;
      this.probeDelayMs = 0;
      return;
    }
    if (!opened) {
      this.wsFailedOpens++;
      if (this.wsHttpUp) this.wsFailedWhileUp = true;
      return;
    }
    // A server going away (1001) or closing on purpose (1000, its 4xxx codes) is not a blocked
    // socket; our own 4000 is (no answer to `auth`).
    const abnormal = code === 4000 || (code < 4000 && code !== 1000 && code !== 1001);
    if (abnormal && ++this.wsShortCloses >= 3) this.switchTransport('sse');
  }

  /** Whether the server answers a plain HTTP request (`/healthz`), bounded by `openTimeoutMs`. */
  private async serverAnswers(): Promise<boolean> {
    const f = this.fetchImpl;
    if (!f) return true; // cannot tell: the event stream's own failures will say
    const url = `${this.sseBase.replace(/\/realtime\/sse$/, '')}/healthz`;
    const ctrl = new AbortController();
    try {
      const res = await withTimeout(
        f(url, { signal: ctrl.signal, cache: 'no-store' }),
        this.opts.openTimeoutMs ?? 5000,
        () => new RealtimeError('timeout', 'no answer'),
      );
      void res.body?.cancel().catch(() => {});
      return true;
    } catch {
      ctrl.abort();
      return false;
    }
  }

  /** Moves to the other transport for the next connection. */
  private switchTransport(to: Transport): void {
    if (this.mode === to) return;
    this.mode = to;
    this.counters.transportSwitches++;
    this.wsFailedOpens = 0;
    this.wsShortCloses = 0;
    this.wsHttpUp = this.wsFailedWhileUp = false;
    // Resume points do not carry over: every room resumes from its own cursor.
    this.ssePos = new Map();
    for (const room of this.rooms.values()) room.sseCovered = false;
    if (this.inboxStream) this.inboxStream.sseCovered = false;
    if (to === 'sse') this.scheduleProbe();
    else this.stopProbe();
  }

  private scheduleProbe(): void {
    const first = this.opts.probeWebSocketMs ?? 120_000;
    if (!(first > 0) || this.transportOption !== 'auto' || !this.WS || !this.wantOpen) return;
    this.probeDelayMs = this.probeDelayMs > 0 ? Math.min(30 * 60_000, this.probeDelayMs * 2) : first;
    this.clearTimer('probeTimer');
    this.probeTimer = setTimeout(() => this.probe(), timerDelay(this.probeDelayMs));
  }

  private stopProbe(): void {
    this.clearTimer('probeTimer');
    const ws = this.probeSocket;
    this.probeSocket = null;
    if (ws) this.detachAndClose(ws, 1000, 'probe over');
  }

  /** On the event stream by fallback: does a socket open now? If so it takes over. */
  private probe(): void {
    this.probeTimer = null;
    if (!this.wantOpen || this.mode !== 'sse' || !this.WS) return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url);
    } catch {
      return this.scheduleProbe();
    }
    this.probeSocket = ws;
    const done = (ok: boolean) => {
      if (this.probeSocket !== ws) return;
      clearTimeout(timer);
      this.probeSocket = null;
      this.detachAndClose(ws, 1000, 'probe over');
      if (!ok) return this.scheduleProbe();
      if (!this.wantOpen || this.mode !== 'sse') return;
      this.switchTransport('websocket');
      this.reconnect();
    };
    const timer = setTimeout(() => done(false), this.opts.openTimeoutMs ?? 5000);
    ws.onopen = () => done(true);
    ws.onclose = () => done(false);
    ws.onerror = () => {};
  }

  // ---- the SSE transport ---------------------------------------------------------------------
  //
  // A stream carries a fixed set of scopes, so subscribing or leaving opens a new stream with the
  // new set, resuming from the `id:` of the last event the current one delivered (passed as
  // `lastEventId`): each team of the stream replays after its seq there, so nothing is lost, and
  // the rooms' cursors drop what they already had. A room that has not been on a stream yet
  // needs its own `since`: the resume point is lowered to it for its team (the rooms already on
  // the stream then see a replay of what they had, and drop it). The new stream is opened before
  // the old one is closed, and the old one closes once the new one has joined every scope: the
  // user stays in the task rooms throughout (presence does not flicker). Only the newest stream
  // is read; the one it replaces is ignored.

  /** Whether a subscribe can go out now (or into the stream being opened). */
  private canSubscribe(): boolean {
    return this.mode === 'sse' ? this.sseToken !== null : this.authed;
  }

  private hasSseScopes(): boolean {
    for (const room of this.rooms.values()) if (room.status !== 'ended') return true;
    return this.inboxStream !== null && this.inboxStream.status !== 'ended';
  }

  private openSse(token: AccessToken): void {
    this.sseToken = token;
    this.currentToken = token.token;
    if (!this.hasSseScopes()) {
      // Nothing to listen to: no stream until something is subscribed.
      this.onSseAuthed();
      return;
    }
    for (const room of [...this.rooms.values()]) this.sendSubscribe(room);
    if (this.inboxStream) this.sendInboxSubscribe(this.inboxStream);
  }

  /** The connection is up (the first stream started, or there is nothing to stream). */
  private onSseAuthed(): void {
    if (this.authed) return;
    const token = this.sseToken;
    this.authed = true;
    this.authedAt = Date.now();
    this.counters.connects++;
    const reconnected = this.everAuthed;
    this.everAuthed = true;
    this.startHeartbeat();
    this.setState({ state: 'open', reconnected, transport: 'sse' });
    if (token) {
      const exp = tokenExpiry(token.token);
      this.scheduleRenewal(token, exp === null ? '' : new Date(exp).toISOString());
    }
  }

  /** Opens a stream with the current scopes soon (the changes of one task make one stream). */
  private requestReopen(): void {
    if (this.mode !== 'sse' || !this.sseToken || this.reopenTimer) return;
    const id = this.socketId;
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = null;
      if (id === this.socketId && this.sseToken && this.mode === 'sse') this.openStream();
    }, 5);
  }

  private openStream(): void {
    const rooms = [...this.rooms.values()].filter((r) => r.status !== 'ended');
    const inbox = this.inboxStream && this.inboxStream.status !== 'ended' ? this.inboxStream : null;
    if (rooms.length === 0 && !inbox) {
      this.closeConn(this.sse);
      this.closeConn(this.sseOld);
      this.sse = this.sseOld = null;
      this.onSseAuthed();
      return;
    }
    // A task room new to the streams with a `since`: its team first (the resume point is per team).
    const unknown = rooms.filter(
      (r) => r.status === 'pending' && !r.sseCovered && !r.teamId && r.sentSince !== null && 'taskId' in r.scope && !r.lookedUp && !r.lookingUp,
    );
    if (unknown.length > 0 || rooms.some((r) => r.lookingUp)) {
      for (const r of unknown) this.lookUpTeam(r);
      return; // the lookups open the stream when they are done
    }

    // The resume point: the current stream's, lowered for rooms new to it.
    const base = this.ssePos;
    const pos: StreamPosition = new Map();
    for (const [k, v] of base) if (k !== 'inbox') pos.set(k, v);
    const lower = (k: string, v: number) => pos.set(k, Math.min(pos.get(k) ?? v, v));
    for (const room of rooms) {
      room.blindSince = null;
      if (room.status !== 'pending') continue;
      if (room.sseCovered) {
        // Resumed by the stream's point; one that lacks the team (it never said) goes by the room.
        if (room.teamId && !base.has(room.teamId) && room.cursor !== null) lower(room.teamId, room.cursor);
        continue;
      }
      const since = room.sentSince;
      if (since === null) continue;
      if (room.teamId) lower(room.teamId, since);
      else room.blindSince = since; // a board of an unknown team: a gap after the join
    }
    if (inbox) {
      if (inbox.status === 'pending') {
        const covered = inbox.sseCovered ? base.get('inbox') : undefined;
        const want = inbox.gap ? undefined : (inbox.wantSince ?? undefined);
        const at = [covered, want].filter((x): x is number => x !== undefined);
        if (at.length > 0 && !inbox.gap) pos.set('inbox', Math.min(...at));
      } else if (base.has('inbox')) {
        pos.set('inbox', base.get('inbox')!);
      }
    }

    const u = new URL(this.sseBase);
    for (const room of rooms) {
      const [k, v] = Object.entries(room.scope)[0]!;
      u.searchParams.append(k, v);
    }
    if (inbox) u.searchParams.set('inbox', 'true');
    if (pos.size > 0) u.searchParams.set('lastEventId', formatEventId(pos));
    const own = !this.ES;
    const token = this.currentToken ?? this.sseToken?.token ?? '';
    if (!own) u.searchParams.set('token', token);
    const url = u.toString();
    let es: EventSourceLike;
    try {
      es = own
        ? new FetchEventSource(url, {
            headers: { authorization: `Bearer ${token}` },
            ...(this.fetchImpl ? { fetch: this.fetchImpl } : {}),
          })
        : new this.ES!(url);
    } catch (e) {
      this.reportError(e);
      return this.dropSocket(1006, 'could not open the event stream', false);
    }
    this.counters.streams++;
    const conn: SseConn = {
      n: ++this.sseCount,
      es,
      url,
      own,
      streamId: null,
      pos,
      waiting: new Set<Room | InboxStream>([...rooms, ...(inbox ? [inbox] : [])]),
      joined: new Set(),
      endCode: null,
      timer: null,
    };
    const prev = this.sse;
    if (prev && prev.streamId !== null) {
      // Kept until the new one has joined everything (bounded).
      this.closeConn(this.sseOld);
      this.sseOld = prev;
      this.clearTimer('retireTimer');
      this.retireTimer = setTimeout(() => this.retireOld(), 10_000);
    } else {
      this.closeConn(prev);
    }
    this.sse = conn;
    this.ssePos = pos;
    es.onmessage = (ev: { data: string; lastEventId?: string }) => this.onSseMessage(conn, ev);
    es.onerror = (ev) => this.onSseError(conn, ev as Partial<StreamErrorEvent>);
    if (es instanceof FetchEventSource) {
      es.oncomment = () => {
        if (this.sse === conn) this.lastHeard = Date.now();
      };
    }
    conn.timer = setTimeout(() => {
      conn.timer = null;
      if (this.sse === conn && conn.streamId === null) this.dropSocket(4000, 'the event stream did not start in time');
    }, this.opts.authTimeoutMs ?? 10_000);
  }

  /** Finds a task's team over HTTP (the stream's resume point is per team). */
  private lookUpTeam(room: Room): void {
    if (!('taskId' in room.scope)) return;
    const taskId = room.scope.taskId;
    room.lookingUp = true;
    const id = this.socketId;
    const finish = (teamId: string | null) => {
      room.lookingUp = false;
      room.lookedUp = true; // not found (or no answer): joined with a gap reported after it
      if (teamId && !room.teamId) room.teamId = teamId.toLowerCase();
      if (id === this.socketId) this.requestReopen();
    };
    const read = async (): Promise<string | null> => {
      if (this.session) return (await this.session.getTask(taskId)).data.teamId;
      const f = this.fetchImpl;
      if (!f) return null;
      const base = this.sseBase.replace(/\/realtime\/sse$/, '');
      const res = await withTimeout(
        f(`${base}${API_PREFIX}/tasks/${taskId}`, {
          headers: { authorization: `Bearer ${this.currentToken ?? ''}`, accept: 'application/json' },
        }),
        this.opts.authTimeoutMs ?? 10_000,
        () => new RealtimeError('timeout', 'no answer'),
      );
      if (!res.ok) return null;
      const body = (await res.json()) as { teamId?: unknown };
      return typeof body.teamId === 'string' ? body.teamId : null;
    };
    read().then(finish, () => finish(null));
  }

  private onSseMessage(conn: SseConn, ev: { data: string; lastEventId?: string }): void {
    // The stream it replaces repeats what this one resumes: only the newest is read.
    if (conn !== this.sse) return;
    this.lastHeard = Date.now();
    if (ev.lastEventId) {
      conn.pos = parseEventId(ev.lastEventId);
      this.ssePos = conn.pos;
    }
    let frame: { type?: unknown; [k: string]: unknown };
    try {
      frame = JSON.parse(ev.data) as typeof frame;
    } catch (e) {
      this.reportError(new RealtimeError('bad_frame', `unreadable event from the server: ${String(e)}`));
      return;
    }
    if (frame.type === 'stream') {
      conn.streamId = typeof frame.streamId === 'string' ? frame.streamId : '';
      if (conn.timer) clearTimeout(conn.timer);
      conn.timer = null;
      this.onSseAuthed();
      this.maybeRetire();
      return;
    }
    this.onFrame(frame as unknown as ServerFrame);
  }

  private onSseError(conn: SseConn, ev: Partial<StreamErrorEvent>): void {
    if (conn === this.sseOld) {
      this.closeConn(conn);
      this.sseOld = null;
      return;
    }
    if (conn !== this.sse) return;
    if (conn.own || conn.streamId !== null) return this.onStreamFailed(conn, ev.status, ev.code);
    // An EventSource says nothing about why it could not open: ask.
    conn.es.onerror = null;
    conn.es.close();
    void this.statusOf(conn.url).then((status) => {
      if (this.sse === conn) this.onStreamFailed(conn, status === 200 ? undefined : status, undefined);
    });
  }

  /** The status a GET of `url` answers (undefined: no answer). */
  private async statusOf(url: string): Promise<number | undefined> {
    const f = this.fetchImpl;
    if (!f) return undefined;
    const ctrl = new AbortController();
    try {
      const res = await withTimeout(f(url, { signal: ctrl.signal, headers: { accept: 'text/event-stream' } }), 5000, () => new Error('timeout'));
      ctrl.abort();
      return res.status;
    } catch {
      ctrl.abort();
      return undefined;
    }
  }

  /** The current stream was refused (`status`) or ended (no status). */
  private onStreamFailed(conn: SseConn, status: number | undefined, code: string | undefined): void {
    if (status === undefined) {
      const c = conn.endCode;
      const closeCode = c === 'token_expired' || c === 'unauthorized' ? 4001 : c === 'slow_consumer' ? 4008 : c === 'rate_limited' ? 4029 : 1006;
      return this.dropSocket(closeCode, c ?? 'the event stream ended', false);
    }
    if (status === 401) return this.dropSocket(4001, 'the event stream refused the token', false);
    if (status === 404 && this.transportOption === 'auto' && this.WS) {
      // A server without the event stream: back to the socket.
      this.switchTransport('websocket');
      return this.dropSocket(1006, 'the server has no event stream', false);
    }
    if (status === 403 || status === 400) {
      // 403: every scope of the stream is forbidden, as the socket answers each with `forbidden`.
      // 400 (e.g. too many scopes, a scope of a deleted room): the scopes new to the streams go.
      const fresh = [...conn.waiting].filter((x): x is Room => x instanceof Room && !x.sseCovered && x.status === 'pending');
      const ending = status === 403 ? [...conn.waiting].filter((x): x is Room => x instanceof Room) : fresh;
      if (ending.length === 0) {
        this.reportError(new RealtimeError(code ?? 'bad_request', `the event stream was refused (${status})`));
        return this.dropSocket(1006, `the event stream was refused (${status})`, false);
      }
      this.closeConn(conn);
      this.sse = null;
      const errorCode = status === 403 ? 'forbidden' : (code ?? 'bad_request');
      for (const room of ending) {
        if (room.status !== 'ended') this.endRoom(room, new RealtimeError(errorCode, `the server refused the stream (${status})`, room.scope));
      }
      this.onSseAuthed(); // the token was good
      this.requestReopen();
      return;
    }
    if (status === 429) return this.dropSocket(4029, 'rate limited', false);
    return this.dropSocket(1006, `the event stream was refused (${status})`, false);
  }

  private closeConn(conn: SseConn | null): void {
    if (!conn) return;
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    conn.es.onmessage = null;
    conn.es.onerror = null;
    try {
      conn.es.close();
    } catch {
      // Already closed.
    }
  }

  /** Closes every stream of the connection (the resume point is kept for the next one). */
  private closeSse(): void {
    this.closeConn(this.sse);
    this.closeConn(this.sseOld);
    this.sse = this.sseOld = null;
    this.sseToken = null;
    this.sseRenewal = null;
    for (const t of ['reopenTimer', 'retireTimer'] as const) this.clearTimer(t);
  }

  /** The new stream has answered every scope: the old one can go. */
  private maybeRetire(): void {
    const conn = this.sse;
    if (!this.sseOld || !conn || conn.streamId === null || conn.waiting.size > 0) return;
    this.clearTimer('retireTimer');
    // Presence states sent to the new stream take effect within the server's flush tick.
    if (this.presenceHeld.size === 0) return this.retireOld();
    this.retireTimer = setTimeout(() => this.retireOld(), 400);
  }

  private retireOld(): void {
    this.retireTimer = null;
    this.closeConn(this.sseOld);
    this.sseOld = null;
  }

  /** A room's `subscribed` on the stream. */
  private onSseSubscribed(key: ScopeKey, frame: { seq: number; presence?: readonly PresenceEntry[] | null }): void {
    const room = this.rooms.get(key);
    if (!room || room.status === 'ended') return;
    const conn = this.sse;
    conn?.waiting.delete(room);
    if (conn && 'taskId' in room.scope) conn.joined.add(room);
    if (room.status === 'pending') {
      if (room.blindSince !== null) {
        // Resumed from a point that may be after its `since`: the app refetches.
        this.counters.gaps++;
        room.gap = { since: room.blindSince, message: 'the stream could not resume this scope from its since (its team is unknown)' };
        room.sentSince = null;
        room.blindSince = null;
      }
      this.joinRoom(room, frame);
    } else {
      // Already live: the new stream replayed only what the room had not seen.
      if (room.presence) room.presence.applySnapshot(frame.presence ?? []);
      room.cursor = Math.max(room.cursor ?? frame.seq, frame.seq);
    }
    room.sseCovered = true;
    this.resendPresence(room);
    this.maybeRetire();
  }

  /** An `error` naming a room, on the stream. */
  private onSseScopeError(key: ScopeKey, error: RealtimeError): void {
    const room = this.rooms.get(key);
    if (!room || room.status === 'ended') return; // e.g. the `forbidden` after a revocation
    const conn = this.sse;
    switch (error.code) {
      case 'resume_unavailable':
        // The server subscribes the team's scopes fresh: their `subscribed` follows; the room
        // reports the gap then.
        this.counters.gaps++;
        room.gap = { since: room.status === 'pending' ? (room.sentSince ?? room.cursor ?? 0) : (room.cursor ?? 0), message: error.message };
        room.status = 'pending';
        room.sentSince = null;
        room.buffer.clear();
        room.sseCovered = false;
        for (const h of room.handles) if (h.status === 'active') h.status = 'pending';
        return;
      case 'bad_request':
      case 'forbidden':
      case 'too_many_subscriptions':
        if (error.code === 'bad_request' && room.status === 'active') {
          this.reportError(error); // a presence message refused
          return;
        }
        conn?.waiting.delete(room);
        this.endRoom(room, error);
        this.maybeRetire();
        return;
      default: {
        // `unavailable`: a new stream with it, later, backing off while the refusals go on. It
        // missed what the stream delivered meanwhile: it resumes from its own cursor.
        conn?.waiting.delete(room);
        room.status = 'pending';
        room.buffer.clear();
        room.sseCovered = false;
        this.retryRefused(room, () => this.isCurrent(room) && this.sendSubscribe(room));
        this.maybeRetire();
      }
    }
  }

  /** An `error` naming the inbox, on the stream. */
  private onSseInboxError(error: RealtimeError): void {
    const stream = this.inboxStream;
    if (!stream || stream.status === 'ended') return;
    const conn = this.sse;
    if (error.code === 'resume_unavailable') {
      this.counters.gaps++;
      const wanted = [...stream.handles].map((h) => h.cursor).filter((c): c is number => c !== null);
      stream.gap = { since: wanted.length > 0 ? Math.min(...wanted) : 0, message: error.message };
      stream.status = 'pending';
      stream.buffer.clear();
      stream.sseCovered = false;
      return; // subscribed fresh: `subscribed` follows
    }
    conn?.waiting.delete(stream);
    if (error.code !== 'unavailable') {
      this.endInbox(stream, error);
    } else {
      stream.status = 'pending';
      stream.sseCovered = false;
      this.retryRefused(stream, () => this.inboxStream === stream && this.sendInboxSubscribe(stream));
    }
    this.maybeRetire();
  }

  /** The answer to an `auth` POSTed on the stream. */
  private onSseAuthenticated(expiresAt: string): void {
    const token = this.sseRenewal;
    this.sseRenewal = null;
    if (token) {
      this.sseToken = token;
      this.currentToken = token.token;
    }
    this.counters.renewals++;
    this.authRejects = 0;
    this.scheduleRenewal(token ?? this.sseToken ?? undefined, expiresAt);
  }

  /** What the socket would send, over SSE: `auth`, `ping` and `presence` are POSTed to the stream. */
  private postSse(o: Outbound): void {
    if (o.kind !== 'auth' && o.kind !== 'ping' && o.kind !== 'presence') return; // scopes: a new stream
    const conn = this.sse;
    const id = this.socketId;
    if (o.kind === 'auth') {
      if (!conn || conn.streamId === null || !this.fetchImpl) {
        // No stream to tell (or no way to POST): the next stream opens with the new token.
        this.sseToken = o.token;
        this.currentToken = o.token.token;
        this.counters.renewals++;
        const exp = tokenExpiry(o.token.token);
        this.scheduleRenewal(o.token, exp === null ? '' : new Date(exp).toISOString());
        if (conn) this.requestReopen();
        return;
      }
      this.sseRenewal = o.token;
    }
    if (!conn || conn.streamId === null) return;
    const token = o.kind === 'auth' ? o.token.token : (this.currentToken ?? '');
    void this.post(conn, o.frame, token).then((status) => {
      if (status === 202 || id !== this.socketId) return;
      if (o.kind === 'auth') {
        // Not taken: try again soon; if the token runs out first, the stream ends and the
        // reconnect brings a fresh one.
        this.sseRenewal = null;
        this.clearTimer('renewTimer');
        this.renewTimer = setTimeout(() => void this.renew(id), 1000 + this.random() * 1000);
      } else if (o.kind === 'presence' && status === 400) {
        this.reportError(new RealtimeError('bad_request', `the server refused a presence message for task ${o.frame.taskId}`));
      }
    });
  }

  /** POSTs one client message to a stream; answers the status (0: no answer). */
  private async post(conn: SseConn, frame: unknown, token: string): Promise<number> {
    const f = this.fetchImpl;
    if (!f || conn.streamId === null) return 0;
    try {
      const res = await withTimeout(
        f(`${this.sseBase}/${encodeURIComponent(conn.streamId)}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify(frame),
        }),
        this.opts.authTimeoutMs ?? 10_000,
        () => new RealtimeError('timeout', 'no answer'),
      );
      void res.body?.cancel().catch(() => {});
      return res.status;
    } catch {
      return 0;
    }
  }

  // ---- presence state ------------------------------------------------------------------------

  /**
   * Tells the others in a task room what this user is doing there: `viewing` (the default, what
   * being in the room means), `editing` a field, or `typing` in one (`field` is required then).
   * Sent over whichever transport is in use once the task room is joined (the app subscribes to
   * it, e.g. with `rt.subscribe({ taskId })` or a comments collection), and again every 2 s while
   * it holds, so that the server does not let it lapse back to `viewing`. Setting the state it
   * already holds sends nothing. Leaving the room clears it (the server forgets it with the room).
   */
  setPresence(taskId: string, state: ViewerState, field?: PresenceField): void {
    const scope = normalizeScope({ taskId }) as { taskId: string };
    if (!VIEWER_STATES.has(state)) throw new TypeError(`state is 'viewing', 'editing' or 'typing', not ${JSON.stringify(state)}`);
    if (state !== 'viewing' && (field === undefined || !PRESENCE_FIELDS.has(field))) {
      throw new TypeError(`${state} needs a field: 'title', 'description' or 'comment'`);
    }
    const id = scope.taskId;
    const held = this.presenceHeld.get(id);
    if (state === 'viewing') {
      if (!held) return;
      this.presenceHeld.delete(id);
      this.sendPresence(id, { state });
    } else {
      if (held && held.state === state && held.field === field) return;
      const next = { state, field: field! };
      this.presenceHeld.set(id, next);
      this.sendPresence(id, next);
    }
    this.ensurePresenceTimer();
  }

  /** Back to `viewing` (same as `setPresence(taskId, 'viewing')`). */
  clearPresence(taskId: string): void {
    this.setPresence(taskId, 'viewing');
  }

  /** The state this client holds in a task room (`viewing` when none). */
  presenceOf(taskId: string): { state: ViewerState; field?: PresenceField } {
    return this.presenceHeld.get(taskId.toLowerCase()) ?? { state: 'viewing' };
  }

  private sendPresence(taskId: string, p: { state: ViewerState; field?: PresenceField }): void {
    const room = this.rooms.get(`task:${taskId}`);
    if (!room || room.status !== 'active') return; // sent when the room is joined
    const frame: PresenceClientFrame =
      p.state === 'viewing' || p.field === undefined ? { type: 'presence', taskId, state: p.state } : { type: 'presence', taskId, state: p.state, field: p.field };
    if (this.mode === 'sse' && !this.ws) {
      // To a stream that has joined the room (the new one may not have yet: it gets it then).
      if (this.sse && this.sse.streamId !== null && this.sse.joined.has(room)) this.postSse({ kind: 'presence', frame });
      return;
    }
    if (this.authed) this.enqueue({ kind: 'presence', frame });
  }

  /** The room was joined (again): the state it holds goes to the server. */
  private resendPresence(room: Room): void {
    if (!('taskId' in room.scope)) return;
    const held = this.presenceHeld.get(room.scope.taskId);
    if (held) this.sendPresence(room.scope.taskId, held);
  }

  private ensurePresenceTimer(): void {
    if (this.presenceHeld.size === 0 || !this.wantOpen) {
      if (this.presenceTimer) clearInterval(this.presenceTimer);
      this.presenceTimer = null;
      return;
    }
    if (this.presenceTimer) return;
    this.presenceTimer = setInterval(() => {
      for (const [taskId, held] of this.presenceHeld) this.sendPresence(taskId, held);
    }, 2000);
  }

  // ---- authentication and token renewal ----------------------------------------------------

  private onAuthenticated(entry: Outbound | undefined, expiresAt: string): void {
    const token = entry?.kind === 'auth' ? entry.token : undefined;
    if (token) this.currentToken = token.token;
    if (!this.authed) {
      this.authed = true;
      this.clearTimer('authTimer');
      this.authedAt = Date.now();
      this.counters.connects++;
      const reconnected = this.everAuthed;
      this.everAuthed = true;
      this.startHeartbeat();
      this.setState({ state: 'open', reconnected, transport: 'websocket' });
      for (const room of [...this.rooms.values()]) this.sendSubscribe(room);
      if (this.inboxStream) this.sendInboxSubscribe(this.inboxStream);
    } else {
      this.counters.renewals++;
      this.authRejects = 0;
    }
    this.scheduleRenewal(token, expiresAt);
  }

  /**
   * The server closes the socket (4001 token_expired) the moment its token expires, so a fresh
   * token is sent with `auth` on the live socket before then.
   */
  private scheduleRenewal(token: AccessToken | undefined, expiresAt: string): void {
    this.clearTimer('renewTimer');
    let at = token?.refreshAt;
    if (at === undefined) {
      // A token source that cannot tell: go by the server's clock, with a generous margin.
      const exp = Date.parse(expiresAt);
      if (Number.isNaN(exp)) return;
      at = exp - Math.min(60_000, Math.max(0, exp - Date.now()) / 4);
    }
    const id = this.socketId;
    // A floor, so that a token source whose refreshAt is already past cannot spin this loop.
    this.renewTimer = setTimeout(() => void this.renew(id), timerDelay(Math.max(250, at - Date.now())));
  }

  private async renew(id: number): Promise<void> {
    this.renewTimer = null;
    if (id !== this.socketId || !this.authed) return;
    try {
      let token = await this.tokens.getAccessToken();
      // Same token: the source thinks it is still good, but our schedule says renew now.
      if (token.token === this.currentToken) token = await this.tokens.getAccessToken({ forceRefresh: true });
      if (id !== this.socketId || !this.authed) return;
      if (token.token === this.currentToken) {
        // The source has nothing newer (a fixed token): nothing to send; look again later.
        this.renewTimer = setTimeout(() => void this.renew(id), 5000 + this.random() * 5000);
        return;
      }
      this.enqueue({ kind: 'auth', token, frame: { type: 'auth', token: token.token } }, true);
    } catch (e) {
      if (id !== this.socketId) return;
      if (isAuthFailure(e)) return this.failAuth(e);
      this.reportError(e);
      // Passing failure (network): try again soon. If the token runs out first, the server closes
      // with 4001 and the reconnect fetches a new one.
      this.renewTimer = setTimeout(() => void this.renew(id), 1000 + this.random() * 1000);
    }
  }

  // ---- sending ------------------------------------------------------------------------------

  private enqueue(o: Outbound, front = false): void {
    if (this.mode === 'sse' && !this.ws) {
      this.postSse(o);
      return;
    }
    if (front) this.queue.unshift(o);
    else this.queue.push(o);
    this.pump();
  }

  /** Sends queued messages at the configured rate (a token bucket), once authenticated. */
  private pump(): void {
    if (!this.authed || !this.ws || this.pumpTimer) return;
    const { perSecond, burst } = this.sendRate;
    const now = Date.now();
    this.bucket.tokens = Math.min(burst, this.bucket.tokens + ((now - this.bucket.at) / 1000) * perSecond);
    this.bucket.at = now;
    while (this.queue.length > 0 && this.bucket.tokens >= 1) {
      this.bucket.tokens -= 1;
      this.send(this.queue.shift()!);
    }
    if (this.queue.length > 0) {
      const wait = Math.ceil(((1 - this.bucket.tokens) / perSecond) * 1000);
      this.pumpTimer = setTimeout(() => {
        this.pumpTimer = null;
        this.pump();
      }, wait);
    }
  }

  private send(o: Outbound): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    try {
      ws.send(JSON.stringify(o.frame));
      if (o.kind !== 'presence') this.inflight.push(o);
      if (o.kind === 'inbox') o.stream.onSocket = true;
    } catch (e) {
      this.reportError(e);
    }
  }

  /** Removes and returns the oldest unanswered message matching `pred`. */
  private takeInflight(pred: (o: Outbound) => boolean): Outbound | undefined {
    const i = this.inflight.findIndex(pred);
    return i < 0 ? undefined : this.inflight.splice(i, 1)[0];
  }

  private startHeartbeat(): void {
    const interval = this.opts.heartbeatIntervalMs ?? 25_000;
    const timeout = this.opts.heartbeatTimeoutMs ?? 10_000;
    this.pingSentAt = 0;
    const id = this.socketId;
    this.heartbeatTimer = setInterval(() => {
      if (id !== this.socketId || !this.authed) return;
      const now = Date.now();
      if (this.mode === 'sse' && !(this.sse && this.sse.streamId !== null)) {
        // No stream (nothing subscribed), or a new one starting (its own timer bounds that).
        this.lastHeard = now;
        this.pingSentAt = 0;
        return;
      }
      if (this.pingSentAt > this.lastHeard && now - this.pingSentAt >= timeout) {
        this.dropSocket(4000, 'no answer to ping');
      } else if (this.pingSentAt <= this.lastHeard && now - this.lastHeard >= interval) {
        this.pingSentAt = now;
        this.enqueue({ kind: 'ping', frame: { type: 'ping' } }, true);
      }
    }, Math.max(50, Math.min(interval, timeout) / 2));
  }

  // ---- subscriptions ------------------------------------------------------------------------

  private sendSubscribe(room: Room): void {
    if (room.retryTimer) clearTimeout(room.retryTimer);
    room.retryTimer = null;
    room.status = 'pending';
    room.buffer.clear();
    // A room joined before resumes from its cursor; after `resume_unavailable` it joins without
    // `since`; a new room replays from the oldest `since` its handles asked for.
    if (room.gap) room.sentSince = null;
    else if (room.joined) room.sentSince = room.cursor;
    else {
      const wanted = [...room.handles].map((h) => h.cursor).filter((c): c is number => c !== null);
      room.sentSince = wanted.length > 0 ? Math.min(...wanted) : null;
    }
    if (this.mode === 'sse') {
      // A stream's scopes are fixed: a new stream with this room replaces it.
      this.requestReopen();
      return;
    }
    const frame: ClientFrame =
      room.sentSince === null
        ? { type: 'subscribe', ...room.scope }
        : { type: 'subscribe', ...room.scope, since: room.sentSince };
    this.enqueue({ kind: 'subscribe', key: room.key, room, frame });
  }

  /** The room is gone for good (left, refused or revoked): so are its handles. */
  private endRoom(room: Room, error: RealtimeError | null): void {
    room.status = 'ended';
    if ('taskId' in room.scope && this.rooms.get(room.key) === room) {
      this.presenceHeld.delete(room.scope.taskId);
      this.ensurePresenceTimer();
    }
    if (this.rooms.get(room.key) === room) this.rooms.delete(room.key);
    if (room.retryTimer) clearTimeout(room.retryTimer);
    room.retryTimer = null;
    room.buffer.clear();
    room.history = [];
    room.presence?.clear();
    for (const h of [...room.handles]) {
      h.status = 'ended';
      h.rejectReady(error ?? new RealtimeError('unsubscribed', 'the subscription ended', h.scope));
      if (error) this.emit(h, 'error', error, h.handlers.onError);
    }
    room.handles.clear();
  }

  /** Whether `room` is still the client's room for its scope. */
  private isCurrent(room: Room | undefined): room is Room {
    return !!room && room.status !== 'ended' && this.rooms.get(room.key) === room;
  }

  /**
   * Brings a handle up to its room: delivers the room's history after the handle's cursor, or,
   * when the history does not reach back that far, reports a gap and moves the cursor to the room's.
   */
  private catchUp(h: Subscription, room: Room, since: number | null): void {
    let gap: GapInfo | null = null;
    let replayed = 0;
    const roomSeq = room.cursor ?? 0;
    if (h.cursor === null) {
      h.cursor = roomSeq;
    } else if (h.cursor < room.historyStart || room.gap) {
      // Behind the history, or the server could not resume the room at all (a `since` outside
      // its log, older or ahead): refetch, and continue after the room's seq.
      gap = {
        scope: room.scope,
        since: h.cursor,
        seq: roomSeq,
        message: room.gap?.message ?? 'the activities after this seq are no longer available to this client',
      };
      h.cursor = roomSeq;
    }
    h.status = 'active';
    for (const a of room.history) {
      if (h.status !== 'active') return; // a handler unsubscribed
      if (a.seq > h.cursor) {
        this.deliver(h, a);
        replayed++;
      }
    }
    const info: SubscribedInfo = { scope: room.scope, seq: roomSeq, since, replayed, resumed: h.joins > 0 };
    h.joins++;
    h.resolveReady(info);
    this.emit(h, 'subscribed', info, h.handlers.onSubscribed);
    if (gap && h.status === 'active') {
      this.emit(h, 'gap', gap, h.handlers.onGap);
      if (this.opts.onGap) this.safe(this.opts.onGap, gap);
      for (const fn of [...this.gapListeners]) this.safe(fn, gap);
    }
  }

  // ---- the inbox stream --------------------------------------------------------------------

  private sendInboxSubscribe(stream: InboxStream): void {
    if (stream.retryTimer) clearTimeout(stream.retryTimer);
    stream.retryTimer = null;
    stream.status = 'pending';
    // From the oldest cursor a handle holds: a handle without one starts at the join; after
    // `resume_unavailable`, every handle does.
    const wanted = [...stream.handles].map((h) => h.cursor).filter((c): c is number => c !== null);
    const since = wanted.length > 0 && !stream.gap ? Math.min(...wanted) : null;
    for (const h of stream.handles) if (h.status === 'pending') h.joinSince = h.cursor;
    stream.wantSince = since;
    if (this.mode === 'sse') {
      this.requestReopen();
      return;
    }
    const frame: InboxClientFrame = since === null ? { type: 'subscribe', inbox: true } : { type: 'subscribe', inbox: true, since };
    this.enqueue({ kind: 'inbox', stream, frame });
  }

  /** Whether a subscribe of `stream` is queued, unanswered or due for a retry. */
  private inboxSubscribesOut(stream: InboxStream): boolean {
    const mine = (o: Outbound) => o.kind === 'inbox' && o.stream === stream;
    return stream.retryTimer !== null || this.inflight.some(mine) || this.queue.some(mine);
  }

  /** The stream is gone (left, refused or ended by the server): so are its handles. */
  private endInbox(stream: InboxStream, error: RealtimeError | null): void {
    stream.status = 'ended';
    if (this.inboxStream === stream) this.inboxStream = null;
    if (stream.retryTimer) clearTimeout(stream.retryTimer);
    stream.retryTimer = null;
    stream.buffer.clear();
    for (const h of [...stream.handles]) {
      h.status = 'ended';
      h.rejectReady(error ?? new RealtimeError('unsubscribed', 'the inbox subscription ended'));
      if (error) this.emitInbox(h, 'error', error, h.handlers.onError);
    }
    stream.handles.clear();
  }

  /** Brings a handle up to the stream: `events` (sorted) after its cursor, then `subscribed`. */
  private inboxCatchUp(h: InboxSubscription, events: InboxEvent[], seq: number, unreadCount: number): void {
    const wasPending = h.status === 'pending';
    if (h.cursor === null) h.cursor = seq;
    h.status = 'active';
    let replayed = 0;
    for (const ev of events) {
      if (h.status !== 'active') return; // a handler unsubscribed
      if (ev.seq > h.cursor) {
        this.deliverInbox(h, ev);
        replayed++;
      }
    }
    if (!wasPending) return; // a live handle: the join was for another handle's older `since`
    const info: InboxSubscribedInfo = { seq, unreadCount, since: h.joinSince, replayed, resumed: h.joins > 0 };
    h.joins++;
    h.joinSince = h.cursor;
    h.resolveReady(info);
    this.emitInbox(h, 'subscribed', info, h.handlers.onSubscribed);
  }

  private onInboxSubscribed(frame: { [k: string]: unknown }): void {
    if (this.mode === 'sse') {
      const stream = this.inboxStream;
      if (!stream || stream.status === 'ended') return;
      this.sse?.waiting.delete(stream);
      stream.sseCovered = true;
      if (stream.status === 'pending' && !this.inboxSubscribesOut(stream)) this.inboxJoined(stream, frame);
      this.maybeRetire();
      return;
    }
    const entry = this.takeInflight((o) => o.kind === 'inbox');
    const stream = entry?.kind === 'inbox' ? entry.stream : undefined;
    if (!stream || stream !== this.inboxStream || stream.status === 'ended') return;
    // Another subscribe of the stream is still to be answered: its replay comes next, and the
    // handles are brought up once, after it.
    if (this.inboxSubscribesOut(stream)) return;
    this.inboxJoined(stream, frame);
  }

  /** The inbox stream was joined: its buffered replay goes to the handles, then `subscribed`. */
  private inboxJoined(stream: InboxStream, frame: { [k: string]: unknown }): void {
    const seq = typeof frame.seq === 'number' ? frame.seq : (stream.cursor ?? 0);
    stream.status = 'active';
    stream.refusals = 0;
    const events = [...stream.buffer.values()].sort((x, y) => x.seq - y.seq);
    stream.buffer.clear();
    const gap = stream.gap;
    stream.gap = null;
    // Rejoined without `since`: the stream starts over at this seq, whatever it held before (a
    // server whose stream restarted numbers from 1 again).
    stream.cursor = gap ? seq : Math.max(stream.cursor ?? 0, seq, events.at(-1)?.seq ?? 0);
    // The replay comes before `subscribed`, whose seq is the latest: its count is the current one.
    if (typeof frame.unreadCount === 'number') stream.unread = frame.unreadCount;
    for (const h of [...stream.handles]) {
      if (h.status === 'ended' || this.inboxStream !== stream) continue;
      const behind = gap ? h.cursor : null;
      if (gap) {
        h.cursor = seq;
        if (h.status === 'active') h.status = 'pending'; // told of the join and the gap below
      }
      this.inboxCatchUp(h, gap ? [] : events, seq, stream.unread);
      if (gap && h.status === 'active') {
        const info: InboxGapInfo = { since: behind ?? gap.since, seq, message: gap.message };
        this.emitInbox(h, 'gap', info, h.handlers.onGap);
      }
    }
  }

  private onInboxEvent(frame: unknown): void {
    this.counters.inboxEvents++;
    const ev = inboxEventOf(frame);
    if (!ev) {
      this.reportError(new RealtimeError('bad_frame', `malformed inbox frame from the server: ${JSON.stringify(frame).slice(0, 160)}`));
      return;
    }
    const stream = this.inboxStream;
    if (!stream || stream.status === 'ended') return;
    if (stream.status === 'pending') {
      // The replay of a (re)subscribe, or a live event it will repeat: `subscribed` delivers the
      // lot in seq order.
      stream.buffer.set(ev.seq, ev);
      return;
    }
    if (stream.cursor !== null && ev.seq <= stream.cursor) return;
    stream.cursor = ev.seq;
    stream.unread = ev.type === 'notification.read' ? ev.unreadCount : stream.unread + 1;
    for (const h of [...stream.handles]) {
      if (h.status === 'active' && h.cursor !== null && ev.seq > h.cursor) this.deliverInbox(h, ev);
    }
  }

  private deliverInbox(h: InboxSubscription, ev: InboxEvent): void {
    h.cursor = ev.seq;
    this.emitInbox(h, 'event', ev, h.handlers.onEvent);
    this.emitInbox(h, ev.type, ev as never, undefined);
  }

  private emitInbox<E extends keyof InboxSubscriptionEvents>(
    h: InboxSubscription,
    event: E,
    arg: InboxSubscriptionEvents[E],
    handler: Handler<InboxSubscriptionEvents[E]> | undefined,
  ): void {
    if (h.status === 'ended' && event !== 'error') return;
    if (handler) this.safe(handler, arg);
    const listeners = h.listeners.get(event);
    if (!listeners) return;
    for (const fn of [...listeners]) {
      if (h.status === 'ended' && event !== 'error') return;
      if (listeners.has(fn)) this.safe(fn as Handler<InboxSubscriptionEvents[E]>, arg);
    }
  }

  /** The server refused an inbox subscribe. */
  private onInboxRefused(stream: InboxStream, error: RealtimeError): void {
    if (stream !== this.inboxStream || stream.status === 'ended') return;
    if (error.code === 'resume_unavailable') {
      // As for rooms: join without `since` first, then tell the handles to refetch.
      this.counters.gaps++;
      const wanted = [...stream.handles].map((h) => h.cursor).filter((c): c is number => c !== null);
      stream.gap = { since: wanted.length > 0 ? Math.min(...wanted) : 0, message: error.message };
      this.sendInboxSubscribe(stream);
      return;
    }
    if (error.code !== 'unavailable') {
      this.endInbox(stream, error);
      return;
    }
    // Passing: try again, backing off while the refusals go on.
    stream.status = 'pending';
    this.retryRefused(stream, () => this.authed && this.inboxStream === stream && this.sendInboxSubscribe(stream));
  }

  // ---- receiving ----------------------------------------------------------------------------

  private onMessage(data: unknown): void {
    this.lastHeard = Date.now();
    const text = decode(data);
    let frame: ServerFrame;
    try {
      if (text === null) throw new Error('binary frame');
      frame = JSON.parse(text) as ServerFrame;
    } catch (e) {
      this.reportError(new RealtimeError('bad_frame', `unreadable frame from the server: ${String(e)}`));
      return;
    }
    this.onFrame(frame);
  }

  /** A frame of the socket or an event of the stream (the same JSON on both). */
  private onFrame(frame: ServerFrame): void {
    if (isInboxFrame(frame)) return this.onInboxFrame(frame as unknown as { type: string; [k: string]: unknown });
    switch (frame.type) {
      case 'activity':
        return this.onActivityFrame(frame.activity);
      case 'subscribed':
        return this.onSubscribed(frame);
      case 'unsubscribed':
        return this.onUnsubscribed(frame);
      case 'error':
        return this.onErrorFrame(frame);
      case 'authenticated':
        if (this.mode === 'sse') return this.onSseAuthenticated(frame.expiresAt);
        return this.onAuthenticated(this.takeInflight((o) => o.kind === 'auth'), frame.expiresAt);
      case 'pong':
        this.takeInflight((o) => o.kind === 'ping');
        return;
      default:
        // Unknown frame types are ignored: the server may add some.
        return;
    }
  }

  /** The inbox's frames: its events, and the replies and errors that say `inbox: true`. */
  private onInboxFrame(frame: { type: string; [k: string]: unknown }): void {
    switch (frame.type) {
      case 'notification.created':
      case 'notification.read':
        return this.onInboxEvent(frame);
      case 'subscribed':
        return this.onInboxSubscribed(frame);
      case 'unsubscribed': {
        if (!frame.reason) {
          this.takeInflight((o) => o.kind === 'inbox-unsub');
          return;
        }
        const stream = this.inboxStream;
        if (stream) this.endInbox(stream, new RealtimeError(String(frame.reason), 'the server ended the inbox subscription'));
        return;
      }
      case 'error': {
        const error = new RealtimeError(String(frame.code ?? 'error'), String(frame.message ?? ''));
        if (error.code === 'rate_limited' || error.code === 'slow_consumer') return this.onConnectionError(error);
        if (this.mode === 'sse') return this.onSseInboxError(error);
        const entry = this.takeInflight((o) => o.kind === 'inbox' || o.kind === 'inbox-unsub');
        if (entry?.kind === 'inbox') this.onInboxRefused(entry.stream, error);
        else this.reportError(error);
        return;
      }
    }
  }

  private onActivityFrame(a: Activity | PresenceActivity): void {
    if (isPresence(a)) {
      const room = this.rooms.get(`task:${a.data.taskId}`);
      if (room && room.teamId === null && a.teamId) room.teamId = a.teamId;
      if (room && room.status === 'active') {
        room.presence?.applyEvent(a);
        for (const h of [...room.handles]) {
          if (h.status === 'active') this.emit(h, 'presence', a, h.handlers.onPresence);
        }
      }
      return;
    }
    this.counters.activityFrames++;
    const previousBoard = this.moves.observe(a);
    if (this.seen.mark(a.teamId, a.seq) && !this.deliveredBefore(a, previousBoard)) {
      if (this.opts.onActivity) this.safe(this.opts.onActivity, a);
      for (const fn of [...this.activityListeners]) this.safe(fn, a);
    } else {
      this.counters.duplicates++;
    }

    for (const room of [...this.rooms.values()]) {
      if (room.status === 'ended' || !reaches(a, room.scope, previousBoard)) continue;
      if (room.teamId === null) room.teamId = a.teamId;
      if (room.status === 'pending') {
        // Before `subscribed`: this is the room's replay, or a live frame of another room that the
        // replay will repeat. Keep it; `subscribed` delivers the lot in seq order. Without `since`
        // the room starts at the `subscribed` seq, and all of these predate it.
        if (room.sentSince !== null && a.seq > room.sentSince) room.buffer.set(a.seq, a);
        continue;
      }
      if (room.cursor !== null && a.seq <= room.cursor) continue;
      room.record(a);
      for (const h of [...room.handles]) {
        if (h.status === 'active' && h.cursor !== null && a.seq > h.cursor) this.deliver(h, a);
      }
      room.trim();
    }
  }

  /** Whether a room already delivered `a` (older than what the seen window remembers). */
  private deliveredBefore(a: Activity, previousBoard: string | undefined): boolean {
    for (const room of this.rooms.values()) {
      if (room.status !== 'active' || room.coveredFrom === null || room.cursor === null) continue;
      if (a.seq > room.coveredFrom && a.seq <= room.cursor && reaches(a, room.scope, previousBoard)) return true;
    }
    return false;
  }

  private deliver(h: Subscription, a: Activity): void {
    h.cursor = a.seq;
    this.emit(h, 'activity', a, h.handlers.onActivity);
    const typed = h.handlers.on?.[a.type] as Handler<Activity> | undefined;
    this.emit(h, a.type, a as never, typed);
  }

  /** Calls a handle's handler for `event`, then its listeners. */
  private emit<E extends keyof SubscriptionEvents>(
    h: Subscription,
    event: E,
    arg: SubscriptionEvents[E],
    handler: Handler<SubscriptionEvents[E]> | undefined,
  ): void {
    if (h.status === 'ended' && event !== 'error') return;
    if (handler) this.safe(handler, arg);
    const listeners = h.listeners.get(event);
    if (!listeners) return;
    for (const fn of [...listeners]) {
      if (h.status === 'ended' && event !== 'error') return;
      if (listeners.has(fn)) this.safe(fn as Handler<SubscriptionEvents[E]>, arg);
    }
  }

  private onSubscribed(frame: Extract<ServerFrame, { type: 'subscribed' }>): void {
    if ('inbox' in frame) return; // the inbox stream is not a room
    const scope = scopeOfFrame(frame);
    if (!scope) return;
    const key = scopeKey(scope);
    if (this.mode === 'sse') return this.onSseSubscribed(key, frame);
    const entry = this.takeInflight((o) => o.kind === 'subscribe' && o.key === key);
    const room = entry?.kind === 'subscribe' ? entry.room : undefined;
    if (!this.isCurrent(room)) return; // answered after the app unsubscribed
    this.joinRoom(room, frame);
    this.resendPresence(room);
  }

  /** A room's `subscribed`: its buffered replay goes to the handles (or its gap), then `subscribed`. */
  private joinRoom(room: Room, frame: { seq: number; presence?: readonly PresenceEntry[] | null }): void {
    const since = room.sentSince;
    room.status = 'active';
    room.refusals = 0;
    if (since === null) {
      // Joined from now (first join without `since`, or after `resume_unavailable`): the history
      // starts here, and handles behind it have a gap.
      room.history = [];
      room.historyStart = frame.seq;
      room.cursor = frame.seq;
      room.coveredFrom = frame.seq;
    } else {
      if (!room.joined) {
        room.history = [];
        room.historyStart = since;
        room.cursor = since;
        room.coveredFrom = since;
      }
      for (const a of [...room.buffer.values()].sort((x, y) => x.seq - y.seq)) {
        if (room.cursor === null || a.seq > room.cursor) room.record(a);
      }
      room.cursor = Math.max(room.cursor ?? frame.seq, frame.seq);
    }
    room.buffer.clear();
    room.joined = true;
    if (room.presence) room.presence.applySnapshot(frame.presence ?? []);
    for (const h of [...room.handles]) {
      if (h.status === 'ended' || !this.isCurrent(room)) continue;
      this.catchUp(h, room, since);
    }
    room.gap = null;
    if (this.isCurrent(room)) room.trim();
  }

  private onUnsubscribed(frame: Extract<ServerFrame, { type: 'unsubscribed' }>): void {
    if ('inbox' in frame) return; // the inbox stream is not a room
    const scope = scopeOfFrame(frame);
    if (!scope) return;
    const key = scopeKey(scope);
    if (!frame.reason) {
      this.takeInflight((o) => o.kind === 'unsubscribe' && o.key === key);
      return;
    }
    // Server-initiated (membership_revoked): the room is gone for good.
    const room = this.rooms.get(key);
    if (room) this.endRoom(room, new RealtimeError(frame.reason, 'the server ended this subscription', scope));
  }

  private onErrorFrame(frame: Extract<ServerFrame, { type: 'error' }>): void {
    const scope = scopeOfFrame(frame);
    const error = new RealtimeError(frame.code, frame.message, scope ?? undefined);
    if (!scope) return this.onConnectionError(error);
    const key = scopeKey(scope);
    if (this.mode === 'sse') return this.onSseScopeError(key, error);
    const entry = this.takeInflight((o) => (o.kind === 'subscribe' || o.kind === 'unsubscribe') && o.key === key);
    if (entry?.kind !== 'subscribe') {
      if (entry) this.reportError(error);
      return;
    }
    const room = entry.room;
    if (!this.isCurrent(room)) return;
    switch (frame.code) {
      case 'resume_unavailable':
        // The contract's order: subscribe without `since` first, then refetch. `onGap` fires when
        // the room is joined again, with the seq the app's refetch lines up with.
        this.counters.gaps++;
        room.gap = { since: room.sentSince ?? 0, message: frame.message };
        this.sendSubscribe(room);
        return;
      case 'forbidden':
      case 'too_many_subscriptions':
      case 'bad_request':
        this.endRoom(room, error);
        return;
      default: {
        // `unavailable` (the team is busy, or the server could not check) or a code this client
        // does not know: retry the same subscribe, backing off while the refusals go on.
        room.status = 'pending';
        this.retryRefused(room, () => this.authed && this.isCurrent(room) && this.sendSubscribe(room));
      }
    }
  }

  /**
   * Sends a refused subscribe (`unavailable`) again later, backing off while the refusals go on;
   * `resend` runs only if the connection is still the one it was refused on, and itself checks
   * that the subscription is still wanted.
   */
  private retryRefused(target: { refusals: number; retryTimer: ReturnType<typeof setTimeout> | null }, resend: () => unknown): void {
    const id = this.socketId;
    const b = this.opts.backoff ?? {};
    const base = Math.min(b.maxMs ?? 30_000, (b.minMs ?? 250) * 2 ** (target.refusals + 1));
    target.refusals++;
    if (target.retryTimer) clearTimeout(target.retryTimer);
    target.retryTimer = setTimeout(() => {
      target.retryTimer = null;
      if (id === this.socketId) resend();
    }, Math.round(base / 2 + (this.random() * base) / 2));
  }

  /** An `error` frame that names no scope. */
  private onConnectionError(error: RealtimeError): void {
    if (this.mode === 'sse' && !this.ws) {
      // Over SSE such an error comes right before the server ends the stream: the end decides.
      if (this.sse) this.sse.endCode = error.code;
      if (error.code === 'rate_limited') this.counters.rateLimited++;
      if (!STREAM_ENDERS.has(error.code)) this.reportError(error);
      return;
    }
    switch (error.code) {
      case 'rate_limited': {
        // The refused message is the oldest unanswered one: send it again a little later.
        const refused = this.takeInflight(() => true);
        this.counters.rateLimited++;
        const id = this.socketId;
        if (refused && refused.kind !== 'ping') {
          const timer = setTimeout(() => {
            this.resendTimers.delete(timer);
            if (id !== this.socketId || !this.authed) return;
            if (refused.kind === 'subscribe' && !this.isCurrent(refused.room)) return;
            // A refused unsubscribe whose scope was subscribed again meanwhile: the new room is the
            // server's room now (the refusal left the socket in it), and leaving would silence it.
            if (refused.kind === 'unsubscribe' && this.rooms.has(refused.key)) return;
            if (refused.kind === 'inbox' && this.inboxStream !== refused.stream) return;
            if (refused.kind === 'inbox-unsub' && this.inboxStream !== null) return;
            this.enqueue(refused, refused.kind === 'auth');
          }, 1000 + this.random() * 1000);
          this.resendTimers.add(timer);
        }
        return;
      }
      case 'slow_consumer':
        return; // the server closes with 4008 next; the reconnect resumes every scope
      case 'unauthorized':
      case 'token_expired':
        this.takeInflight((o) => o.kind === 'auth');
        return; // 4001 follows; the reconnect presents a refreshed token
      default: {
        // The oldest unanswered message was refused without naming a scope (a malformed one).
        const refused = this.takeInflight(() => true);
        if (refused?.kind === 'subscribe' && this.isCurrent(refused.room)) this.endRoom(refused.room, error);
        else if (refused?.kind === 'inbox') this.onInboxRefused(refused.stream, error);
        else this.reportError(error);
      }
    }
  }

  /** Runs app code; an exception there, or a rejected promise it returns, must not break the
   * stream: both go to `onError`. */
  private safe<A>(fn: Handler<A>, arg: A): void {
    try {
      const result = fn(arg);
      if (result && typeof (result as Promise<unknown>).then === 'function') {
        (result as Promise<unknown>).then(undefined, (e: unknown) => this.reportError(e));
      }
    } catch (e) {
      this.reportError(e);
    }
  }
}
