export * from './generated/protocol.js';
export * from './http.js';
export * from './presence.js';
export * from './realtime.js';
export { MoveTracker, reaches, scopeId, scopeKey, scopeKind } from './scope.js';
export * from './live.js';
