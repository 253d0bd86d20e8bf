// @taskforge/client: HTTP helpers (http.ts), the realtime connection (realtime.ts), presence
// (presence.ts), scope routing (scope.ts), live collections (live.ts), task filters and sorts
// (filter.ts), the user's inbox (inbox.ts, inbox-types.ts), mention markup (mentions.ts) and the
// protocol types generated from the server's AsyncAPI document (generated/protocol.ts).

export * from './generated/protocol.js';
export * from './http.js';
export * from './presence.js';
// The generated protocol has types of these names too (the wire's shapes); the client's own,
// which read older servers' snapshots as well, are the ones exported.
export { PresenceState, type PresenceEntry, type PresenceField } from './presence.js';
export * from './realtime.js';
export { EventStreamParser, FetchEventSource, formatEventId, parseEventId, sseUrl, tokenExpiry, type EventSourceConstructor, type EventSourceLike, type FetchEventSourceInit, type StreamErrorEvent, type StreamPosition } from './sse.js';
export { tabRefreshCoordinator, type RefreshCoordinator, type TabCoordinatorOptions } from './tabs.js';
export { MoveTracker, reaches, scopeId, scopeKey, scopeKind, type ScopeKey, type ScopeKind } from './scope.js';
export * from './live.js';
export * from './filter.js';
export * from './inbox-types.js';
export { openInbox, type Inbox, type InboxHttp, type InboxOptions, type InboxSnapshot, type InboxStatus } from './inbox.js';
export * from './mentions.js';
