// @taskforge/client: HTTP helpers (http.ts), the realtime connection (realtime.ts), presence
// (presence.ts), scope routing (scope.ts), live collections (live.ts) and the protocol types
// generated from the server's AsyncAPI document (generated/protocol.ts).

export * from './generated/protocol.js';
export * from './http.js';
export * from './presence.js';
export * from './realtime.js';
export { MoveTracker, reaches, scopeId, scopeKey, scopeKind, type ScopeKey, type ScopeKind } from './scope.js';
export * from './live.js';
