// The pieces of the Server-Sent Events transport that do not need the client's state: the
// EventSource interface the client drives, a reader of `text/event-stream` over `fetch` (the
// default, in browsers and Node alike), the stream's resume point (`id:`) as the client reads and
// writes it, and the expiry of a JWT access token.
//
// Why a reader of its own rather than the browser's EventSource: EventSource says nothing about
// why a stream failed (a 401 and a dropped network look the same), cannot send a header (so the
// token would go in the URL), hides the keepalive comments (so a dead connection is noticed only
// by a ping), and reconnects by itself with the URL it was given (an old token, old scopes). The
// client reconnects and resumes streams itself anyway. An EventSource class can still be passed
// (`RealtimeOptions.EventSource`): the client then puts the token in `?token=` and asks over
// `fetch` why a stream it could not open failed.

import type { FetchLike } from './http.js';

/** The part of the EventSource API the client uses (the browser's class fits). */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  /** Called with a MessageEvent-like `{ data, lastEventId }`. */
  onmessage: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  close(): void;
}

export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

/** What `FetchEventSource` passes to `onerror`: why the stream is over. */
export interface StreamErrorEvent {
  type: 'error';
  /** The HTTP status of a refused stream (not 200, or not an event stream). */
  status?: number;
  /** The problem's stable `code` of a refused stream, when its body said one. */
  code?: string;
  /** True when an open stream ended (the server closed it, or the connection dropped). */
  ended?: boolean;
  /** The network error, if any. */
  cause?: unknown;
}

export interface FetchEventSourceInit {
  /** Request headers, e.g. `authorization`. */
  headers?: Record<string, string>;
  /** Default: the global `fetch`. */
  fetch?: FetchLike;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;

/**
 * A `text/event-stream` reader over `fetch`, shaped like EventSource. One request, no automatic
 * reconnect: `onerror` comes once, when the stream is refused (with its `status`) or ends, and
 * `readyState` is then CLOSED. `oncomment` sees the comment lines (the server's keepalives).
 */
export class FetchEventSource implements EventSourceLike {
  static readonly CONNECTING = CONNECTING;
  static readonly OPEN = OPEN;
  static readonly CLOSED = CLOSED;

  readonly url: string;
  readyState = CONNECTING;
  onopen: ((ev: { type: 'open' }) => void) | null = null;
  onmessage: ((ev: { type: 'message'; data: string; lastEventId: string }) => void) | null = null;
  onerror: ((ev: StreamErrorEvent) => void) | null = null;
  oncomment: ((text: string) => void) | null = null;
  private readonly ctrl = new AbortController();

  constructor(url: string, init: FetchEventSourceInit = {}) {
    this.url = url;
    const f = init.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    if (!f) throw new Error('no global fetch: pass { fetch } in the options');
    void this.run(f, init.headers ?? {});
  }

  close(): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.ctrl.abort();
  }

  private fail(ev: Omit<StreamErrorEvent, 'type'>): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.ctrl.abort();
    this.onerror?.({ type: 'error', ...ev });
  }

  private async run(f: FetchLike, headers: Record<string, string>): Promise<void> {
    let res: Response;
    try {
      res = await f(this.url, {
        headers: { accept: 'text/event-stream', ...headers },
        cache: 'no-store',
        signal: this.ctrl.signal,
      });
    } catch (cause) {
      return this.fail({ cause });
    }
    if (this.readyState === CLOSED) {
      void res.body?.cancel().catch(() => {});
      return;
    }
    const type = res.headers.get('content-type') ?? '';
    if (res.status !== 200 || !type.startsWith('text/event-stream') || !res.body) {
      let code: string | undefined;
      try {
        const problem = (await res.json()) as { code?: unknown };
        if (typeof problem?.code === 'string') code = problem.code;
      } catch {
        // Not a problem+json body: the status says enough.
      }
      return this.fail({ status: res.status, ...(code ? { code } : {}) });
    }
    this.readyState = OPEN;
    this.onopen?.({ type: 'open' });
    const parser = new EventStreamParser(
      (data, lastEventId) => {
        if (this.readyState === OPEN) this.onmessage?.({ type: 'message', data, lastEventId });
      },
      (text) => {
        if (this.readyState === OPEN) this.oncomment?.(text);
      },
    );
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (this.readyState === CLOSED) return;
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch (cause) {
      return this.fail({ ended: true, cause });
    }
    this.fail({ ended: true });
  }
}

/**
 * The `text/event-stream` format (WHATWG HTML, "Server-sent events"): lines end in CRLF, LF or
 * CR; `data:` lines accumulate, `id:` sets the last event id (kept across events), a blank line
 * dispatches; lines starting with `:` are comments. Only events without `event:` (or with
 * `event: message`) are passed on, as EventSource's `onmessage` would see them.
 */
export class EventStreamParser {
  private buffer = '';
  private data: string[] = [];
  private eventType = '';
  private lastEventId = '';
  private started = false;

  constructor(
    private readonly onEvent: (data: string, lastEventId: string) => void,
    private readonly onComment: (text: string) => void = () => {},
  ) {}

  push(chunk: string): void {
    this.buffer += chunk;
    if (!this.started && this.buffer.length > 0) {
      this.started = true;
      if (this.buffer.charCodeAt(0) === 0xfeff) this.buffer = this.buffer.slice(1);
    }
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      if (c === '\r') {
        // A CR at the end of what arrived may be the first half of a CRLF: wait for the rest.
        if (i + 1 >= this.buffer.length) break;
        this.line(this.buffer.slice(start, i));
        if (this.buffer[i + 1] === '\n') i++;
      } else {
        this.line(this.buffer.slice(start, i));
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
  }

  private line(line: string): void {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return this.onComment(line.slice(1).trimStart());
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (name) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      default:
        // `retry` (the client schedules its own reconnects) and unknown fields.
        break;
    }
  }

  private dispatch(): void {
    const type = this.eventType;
    const data = this.data;
    this.eventType = '';
    this.data = [];
    if (data.length === 0) return;
    if (type !== '' && type !== 'message') return;
    this.onEvent(data.join('\n'), this.lastEventId);
  }
}

/** A stream's resume point: `<teamId>:<seq>` per team, and `inbox:<seq>`. */
export type StreamPosition = Map<string, number>;

/** Reads an `id:` value; parts that are not `<key>:<seq>` are skipped. */
export function parseEventId(id: string): StreamPosition {
  const pos: StreamPosition = new Map();
  for (const part of id.split(',')) {
    const at = part.lastIndexOf(':');
    if (at <= 0) continue;
    const seq = Number(part.slice(at + 1));
    if (Number.isSafeInteger(seq) && seq >= 0) pos.set(part.slice(0, at).trim().toLowerCase(), seq);
  }
  return pos;
}

/** Writes a resume point as the server's `id:` format. */
export function formatEventId(pos: StreamPosition): string {
  return [...pos].map(([k, v]) => `${k}:${v}`).join(',');
}

/** The `exp` of a JWT in ms since the epoch, or null when the token is not a readable JWT. */
export function tokenExpiry(token: string): number | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1]!.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))) as { exp?: unknown };
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** The SSE endpoint's URL for the client's base or socket URL: `wss://h/x/realtime` -> `https://h/x/realtime/sse`. */
export function sseUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  const path = u.pathname.replace(/\/+$/, '');
  u.pathname = path.endsWith('/realtime') ? `${path}/sse` : `${path}/realtime/sse`;
  u.search = '';
  u.hash = '';
  return u.toString();
}
