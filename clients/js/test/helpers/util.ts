// Shared test helpers: bounded waits, users, clients and a TCP proxy that can cut the network.

import { randomUUID } from 'node:crypto';
import net from 'node:net';
import WebSocket from 'ws';

import {
  RealtimeClient,
  Session,
  type RealtimeOptions,
  type StateChange,
  type WebSocketConstructor,
} from '@taskforge/client';
import type { TestServer } from './server.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` until it holds; fails after `timeoutMs` with `what` and the last state. */
export async function waitFor(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  describe?: () => unknown,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) {
      const state = describe ? `\nstate: ${JSON.stringify(describe())}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state}`);
    }
    await sleep(20);
  }
}

/** `p`, or an error after `ms`. */
export async function within<T>(what: string, p: Promise<T>, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A new user with a unique email. */
export function newUser(server: TestServer, name: string): Promise<Session> {
  return Session.register(server.baseUrl, {
    email: `${name.toLowerCase()}-${randomUUID()}@example.com`,
    password: 'correct horse battery',
    displayName: name,
  });
}

/** Clients made by `connect`, closed by `closeAll` in each file's `after`. */
const clients = new Set<RealtimeClient>();

export interface TestClient {
  client: RealtimeClient;
  states: StateChange[];
  errors: unknown[];
}

/** A connected realtime client with the `ws` package and quick reconnects. */
export function connect(
  url: string,
  auth: RealtimeOptions['auth'],
  extra: Partial<RealtimeOptions> = {},
): TestClient {
  const states: StateChange[] = [];
  const errors: unknown[] = [];
  const client = new RealtimeClient({
    url,
    auth,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    backoff: { minMs: 50, maxMs: 1000 },
    onStateChange: (s) => states.push(s),
    onError: (e) => errors.push(e),
    ...extra,
  });
  clients.add(client);
  client.connect();
  return { client, states, errors };
}

export function closeAll(): void {
  for (const c of clients) c.close();
  clients.clear();
}

/**
 * A TCP proxy on 127.0.0.1 in front of the server: `cut()` drops every connection through it (a
 * network failure the server does not cause), `block()` refuses new ones until `unblock()`.
 * Connections are made to whatever port `targetPort()` names at the time (a restarted server).
 */
export class TcpProxy {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private blocked = false;
  private dropAfterMs: number | null = null;
  /** Connections that asked for a WebSocket upgrade and were dropped. */
  refusedUpgrades = 0;
  private refusingUpgrades = false;
  port = 0;
  connections = 0;

  private constructor(private readonly targetPort: () => number) {
    this.server = net.createServer((client) => this.accept(client));
  }

  static async start(targetPort: () => number): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetPort);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.port = (proxy.server.address() as net.AddressInfo).port;
    return proxy;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private accept(client: net.Socket): void {
    if (this.blocked) {
      client.destroy();
      return;
    }
    this.connections++;
    const upstream = net.connect(this.targetPort(), '127.0.0.1');
    if (this.dropAfterMs !== null) {
      // A server (or load balancer) that accepts and then drops every connection.
      const timer = setTimeout(() => {
        client.destroy();
        upstream.destroy();
      }, this.dropAfterMs);
      client.on('close', () => clearTimeout(timer));
    }
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        this.sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    client.on('close', () => this.pairs.delete(pair));
    if (this.refusingUpgrades) {
      // A proxy that lets HTTP through and drops any connection asking for a WebSocket.
      client.on('data', (chunk: Buffer) => {
        if (/\r\nupgrade:\s*websocket/i.test(chunk.toString('latin1'))) {
          this.refusedUpgrades++;
          client.destroy();
          upstream.destroy();
          return;
        }
        if (!upstream.write(chunk)) {
          client.pause();
          upstream.once('drain', () => client.resume());
        }
      });
    } else {
      client.pipe(upstream);
    }
    upstream.pipe(client);
  }

  /** From now on, drops new connections that ask for a WebSocket upgrade (HTTP goes through). */
  refuseUpgrades(on = true): void {
    this.refusingUpgrades = on;
  }

  /** Stops forwarding on the open connections without closing them: a half-open connection
   * that neither side can tell from a quiet one. New connections work as usual. */
  freeze(): void {
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
    this.pairs.clear();
  }

  /** From now on, drops every new connection `ms` after it was accepted (null: stop). */
  dropAfter(ms: number | null): void {
    this.dropAfterMs = ms;
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Refuses new connections; with `cut` (the default) also drops the open ones. */
  block(opts: { cut?: boolean } = {}): void {
    this.blocked = true;
    if (opts.cut ?? true) this.cut();
  }

  unblock(): void {
    this.blocked = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
