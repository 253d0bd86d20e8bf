// A real TaskForge server for the tests: its own process on a free 127.0.0.1 port, with a fresh
// SQLite database in a temporary directory. The binary comes from TASKFORGE_BIN, by default the
// debug build of the repository (../../target/debug/taskforge from clients/js), which CI builds
// with `cargo build` before the JS tests.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** clients/js (this file runs from build/helpers/). */
export const PKG_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export function serverBinary(): string {
  const configured = process.env.TASKFORGE_BIN;
  const bin = configured
    ? path.resolve(PKG_ROOT, configured)
    : path.resolve(PKG_ROOT, '..', '..', 'target', 'debug', 'taskforge');
  if (!existsSync(bin)) {
    throw new Error(
      `TaskForge server binary not found at ${bin}. Build it with \`cargo build\` at the repository ` +
        'root, or point TASKFORGE_BIN at a taskforge binary.',
    );
  }
  return bin;
}

const running = new Set<ChildProcess>();
// A test file that fails half-way must not leave servers behind.
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export interface ServerOptions {
  /** Extra TASKFORGE_* settings, e.g. { TASKFORGE_ACCESS_TOKEN_TTL: '6s' }. */
  env?: Record<string, string>;
}

export class TestServer {
  readonly dir: string;
  readonly secret = randomBytes(32).toString('hex');
  private readonly env: Record<string, string>;
  private child: ChildProcess | null = null;
  private log: string[] = [];
  port = 0;

  private constructor(dir: string, env: Record<string, string>) {
    this.dir = dir;
    this.env = env;
  }

  static async start(opts: ServerOptions = {}): Promise<TestServer> {
    const dir = await mkdtemp(path.join(tmpdir(), 'taskforge-js-'));
    const server = new TestServer(dir, opts.env ?? {});
    try {
      await server.spawn(0);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    return server;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The last lines the server wrote, for failure messages. */
  get recentLog(): string {
    return this.log.join('');
  }

  private environment(port: number): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    // Only this server's settings: nothing inherited may point it at another database or bus.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TASKFORGE_')) env[k] = v;
    return {
      ...env,
      TASKFORGE_LISTEN: `127.0.0.1:${port}`,
      TASKFORGE_DATABASE_URL: `sqlite://${path.join(this.dir, 'taskforge.db')}`,
      // A fixed secret (not --dev) so that tokens survive a restart of the process.
      TASKFORGE_JWT_SECRET: this.secret,
      TASKFORGE_DRAIN_TIMEOUT: '2s',
      TASKFORGE_LOG: 'warn',
      // Every test registers users and opens sockets from 127.0.0.1: no per-address limits.
      TASKFORGE_AUTH_LIMIT_PER_IP: '0',
      TASKFORGE_AUTH_LIMIT_PER_EMAIL: '0',
      TASKFORGE_CONNECT_LIMIT_PER_IP: '0',
      ...this.env,
    };
  }

  private async spawn(port: number): Promise<void> {
    const bin = serverBinary();
    // After a crash the port may be held for a moment: retry the same port a few times.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.spawnOnce(bin, port);
        return;
      } catch (e) {
        if (port === 0 || attempt >= 20) throw e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  private spawnOnce(bin: string, port: number): Promise<void> {
    const child = spawn(bin, ['serve'], { env: this.environment(port), stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    this.child = child;
    const keep = (chunk: Buffer) => {
      this.log.push(chunk.toString());
      if (this.log.length > 50) this.log.shift();
    };
    child.stderr!.on('data', keep);
    return new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`taskforge did not start within 20 s:\n${this.recentLog}`));
      }, 20_000);
      child.stdout!.on('data', (chunk: Buffer) => {
        keep(chunk);
        out += chunk.toString();
        const m = /taskforge listening on http:\/\/[^\s:]+:(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          this.port = Number(m[1]);
          resolve();
        }
      });
      child.once('exit', (code, signal) => {
        running.delete(child);
        clearTimeout(timer);
        reject(new Error(`taskforge exited (${code ?? signal}) before listening:\n${this.recentLog}`));
      });
    });
  }

  /** Stops the process: SIGTERM drains (sockets get 1001), SIGKILL is a crash. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    running.delete(child);
    this.child = null;
  }

  /** Stops the process and starts a new one on the same port, database and secret. */
  async restart(opts: { signal?: 'SIGTERM' | 'SIGKILL'; downMs?: number } = {}): Promise<void> {
    await this.stop(opts.signal ?? 'SIGKILL');
    if (opts.downMs) await new Promise((r) => setTimeout(r, opts.downMs));
    await this.spawn(this.port);
  }

  async dispose(): Promise<void> {
    await this.stop('SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
  }
}
