const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;
export class FetchEventSource {
    static CONNECTING = CONNECTING;
    static OPEN = OPEN;
    static CLOSED = CLOSED;
    url;
    readyState = CONNECTING;
    onopen = null;
    onmessage = null;
    onerror = null;
    oncomment = null;
    ctrl = new AbortController();
    constructor(url, init = {}) {
        this.url = url;
        const f = init.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
        if (!f)
            throw new Error('no global fetch: pass { fetch } in the options');
        void this.run(f, init.headers ?? {});
    }
    close() {
        if (this.readyState === CLOSED)
            return;
        this.readyState = CLOSED;
        this.ctrl.abort();
    }
    fail(ev) {
        if (this.readyState === CLOSED)
            return;
        this.readyState = CLOSED;
        this.ctrl.abort();
        this.onerror?.({ type: 'error', ...ev });
    }
    async run(f, headers) {
        let res;
        try {
            res = await f(this.url, {
                headers: { accept: 'text/event-stream', ...headers },
                cache: 'no-store',
                signal: this.ctrl.signal,
            });
        }
        catch (cause) {
            return this.fail({ cause });
        }
        if (this.readyState === CLOSED) {
            void res.body?.cancel().catch(() => { });
            return;
        }
        const type = res.headers.get('content-type') ?? '';
        if (res.status !== 200 || !type.startsWith('text/event-stream') || !res.body) {
            let code;
            try {
                const problem = (await res.json());
                if (typeof problem?.code === 'string')
                    code = problem.code;
            }
            catch {
            }
            return this.fail({ status: res.status, ...(code ? { code } : {}) });
        }
        this.readyState = OPEN;
        this.onopen?.({ type: 'open' });
        const parser = new EventStreamParser((data, lastEventId) => {
            if (this.readyState === OPEN)
                this.onmessage?.({ type: 'message', data, lastEventId });
        }, (text) => {
            if (this.readyState === OPEN)
                this.oncomment?.(text);
        });
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        try {
            for (;;) {
                const { done, value } = await reader.read();
                if (this.readyState === CLOSED)
                    return;
                if (done)
                    break;
                parser.push(decoder.decode(value, { stream: true }));
            }
        }
        catch (cause) {
            return this.fail({ ended: true, cause });
        }
        this.fail({ ended: true });
    }
}
export class EventStreamParser {
    onEvent;
    onComment;
    buffer = '';
    data = [];
    eventType = '';
    lastEventId = '';
    started = false;
    constructor(onEvent, onComment = () => { }) {
        this.onEvent = onEvent;
        this.onComment = onComment;
    }
    push(chunk) {
        this.buffer += chunk;
        if (!this.started && this.buffer.length > 0) {
            this.started = true;
            if (this.buffer.charCodeAt(0) === 0xfeff)
                this.buffer = this.buffer.slice(1);
        }
        let start = 0;
        for (let i = 0; i < this.buffer.length; i++) {
            const c = this.buffer[i];
            if (c !== '\n' && c !== '\r')
                continue;
            if (c === '\r') {
                if (i + 1 >= this.buffer.length)
                    break;
                this.line(this.buffer.slice(start, i));
                if (this.buffer[i + 1] === '\n')
                    i++;
            }
            else {
                this.line(this.buffer.slice(start, i));
            }
            start = i + 1;
        }
        this.buffer = this.buffer.slice(start);
    }
    line(line) {
        if (line === '')
            return this.dispatch();
        if (line.startsWith(':'))
            return this.onComment(line.slice(1).trimStart());
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' '))
            value = value.slice(1);
        switch (name) {
            case 'data':
                this.data.push(value);
                break;
            case 'event':
                this.eventType = value;
                break;
            case 'id':
                if (!value.includes('\0'))
                    this.lastEventId = value;
                break;
            default:
                break;
        }
    }
    dispatch() {
        const type = this.eventType;
        const data = this.data;
        this.eventType = '';
        this.data = [];
        if (data.length === 0)
            return;
        if (type !== '' && type !== 'message')
            return;
        this.onEvent(data.join('\n'), this.lastEventId);
    }
}
export function parseEventId(id) {
    const pos = new Map();
    for (const part of id.split(',')) {
        const at = part.lastIndexOf(':');
        if (at <= 0)
            continue;
        const seq = Number(part.slice(at + 1));
        if (Number.isSafeInteger(seq) && seq >= 0)
            pos.set(part.slice(0, at).trim().toLowerCase(), seq);
    }
    return pos;
}
export function formatEventId(pos) {
    return [...pos].map(([k, v]) => `${k}:${v}`).join(',');
}
export function tokenExpiry(token) {
    const parts = token.split('.');
    if (parts.length !== 3)
        return null;
    try {
        const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
        const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
        return typeof json.exp === 'number' ? json.exp * 1000 : null;
    }
    catch {
        return null;
    }
}
export function sseUrl(url) {
    const u = new URL(url);
    if (u.protocol === 'ws:')
        u.protocol = 'http:';
    else if (u.protocol === 'wss:')
        u.protocol = 'https:';
    const path = u.pathname.replace(/\/+$/, '');
    u.pathname = path.endsWith('/realtime') ? `${path}/sse` : `${path}/realtime/sse`;
    u.search = '';
    u.hash = '';
    return u.toString();
}
