// The inbox's wire types beside the generated ones (`Notification`, `NotificationCreatedFrame`,
// `NotificationReadFrame` in generated/protocol.ts): the HTTP page and mark-read answer, and the
// stream's events as the client hands them on (a `notification.read` with `ids` and `upto` always
// present, null when they do not apply).

import type { Notification } from './generated/protocol.js';

export type { Notification };

/** Why a notification was written (one notification may carry several): `Notification.reasons`. */
export type NotificationReason = 'assigned' | 'mentioned' | 'commented' | 'status_changed' | 'task_deleted';

/** GET /me/notifications. */
export interface NotificationPage {
  /** Newest first (descending `seq`). */
  items: Notification[];
  /** Pages towards older notifications; null on the last page. */
  nextCursor: string | null;
  /** The stream's latest seq when the page was read: subscribing with `since: seq` misses nothing. */
  seq: number;
  unreadCount: number;
}

export interface NotificationQuery {
  /** Only notifications with `seq > since`. */
  since?: number;
  /** Only unread ones. */
  unread?: boolean;
  /** 1 to 200 (default 50). */
  limit?: number;
  cursor?: string;
}

/** POST /me/notifications/read: by ids (at most 200), or every notification with `seq <= upto`. */
export type MarkReadRequest = { ids: string[] } | { upto: number };

/** The answer of POST /me/notifications/read. */
export interface MarkReadResult {
  /** The stream's latest seq (the mark's own seq when it changed anything). */
  seq: number;
  unreadCount: number;
}

/** `{"type":"notification.created"}`: a new notification, as it stands when sent (one replayed
 * after it was read has its `readAt`). */
export interface NotificationCreatedEvent {
  type: 'notification.created';
  seq: number;
  notification: Notification;
}

/** `{"type":"notification.read"}`: notifications marked read, by `ids` or `upto` a seq. */
export interface NotificationReadEvent {
  type: 'notification.read';
  seq: number;
  /** The ids marked (a mark by ids); null for a mark up to a seq. */
  ids: string[] | null;
  /** Every notification with `seq <= upto` (a mark up to a seq); null for a mark by ids. */
  upto: number | null;
  /** The user's unread count after this mark. */
  unreadCount: number;
}

/** An event of the user's inbox stream. */
export type InboxEvent = NotificationCreatedEvent | NotificationReadEvent;

/** The client's inbox frames. */
export type InboxClientFrame =
  | { type: 'subscribe'; inbox: true; since?: number }
  | { type: 'unsubscribe'; inbox: true };

/** The server's inbox replies (the events aside). */
export type InboxServerFrame =
  | { type: 'subscribed'; inbox: true; seq: number; unreadCount: number }
  | { type: 'unsubscribed'; inbox: true; reason?: string | null };

/** `GET /me` with the inbox's fields. */
export interface MeInbox {
  unreadNotifications?: number;
  inboxSeq?: number;
}

const isSeq = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/** The frame as an inbox event, or null when it is not a well-formed one. */
export function inboxEventOf(frame: unknown): InboxEvent | null {
  if (!frame || typeof frame !== 'object') return null;
  const f = frame as Record<string, unknown>;
  if (!isSeq(f.seq)) return null;
  if (f.type === 'notification.created') {
    const n = f.notification as Record<string, unknown> | null | undefined;
    if (!n || typeof n !== 'object' || typeof n.id !== 'string' || !isSeq(n.seq)) return null;
    return frame as NotificationCreatedEvent;
  }
  if (f.type === 'notification.read') {
    const idsOk = f.ids === null || f.ids === undefined || (Array.isArray(f.ids) && f.ids.every((i) => typeof i === 'string'));
    const uptoOk = f.upto === null || f.upto === undefined || isSeq(f.upto);
    if (!idsOk || !uptoOk || !isSeq(f.unreadCount)) return null;
    return { type: 'notification.read', seq: f.seq, ids: (f.ids as string[] | undefined) ?? null, upto: (f.upto as number | undefined) ?? null, unreadCount: f.unreadCount };
  }
  return null;
}
