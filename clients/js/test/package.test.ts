// The built package: ESM with typings, nothing but relative imports (no runtime dependencies, no
// Node built-ins, so it loads in a browser as is; React only in the separate `./react` entry), and
// a clear error where no WebSocket exists.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { RealtimeClient, realtimeUrl, sseUrl } from '@taskforge/client';
import { PKG_ROOT } from './helpers/server.js';

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)],
  );
}

test('package.json: ESM, typings, no runtime dependencies', () => {
  const pkg = JSON.parse(readFileSync(path.join(PKG_ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.exports['.'].types, './dist/index.d.ts');
  assert.ok(existsSync(path.join(PKG_ROOT, 'dist', 'index.d.ts')));
  // The React bindings: their own entry, React an optional peer (apps without React install nothing).
  assert.deepEqual(pkg.exports['./react'], { types: './dist/react.d.ts', import: './dist/react.js' });
  assert.ok(existsSync(path.join(PKG_ROOT, 'dist', 'react.d.ts')));
  assert.deepEqual(pkg.peerDependencies, { react: '>=18' });
  assert.deepEqual(pkg.peerDependenciesMeta, { react: { optional: true } });
  for (const [name, version] of Object.entries(pkg.devDependencies as Record<string, string>)) {
    assert.match(version, /^\d+\.\d+\.\d+$/, `${name} is pinned`);
  }
});

test('dist/ imports only its own modules (react.js: and react) and uses no Node globals', () => {
  const js = files(path.join(PKG_ROOT, 'dist')).filter((f) => f.endsWith('.js'));
  assert.ok(js.length >= 5);
  for (const f of js) {
    const text = readFileSync(f, 'utf8');
    const own = path.relative(path.join(PKG_ROOT, 'dist'), f) === 'react.js' ? ['react'] : [];
    for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+['"]([^'"]+)['"]/gm)) {
      const ok = m[1]!.startsWith('./') || m[1]!.startsWith('../') || own.includes(m[1]!);
      assert.ok(ok, `${path.basename(f)} imports ${m[1]}`);
    }
    assert.doesNotMatch(text, /\b(require\(|process\.|Buffer\.|from ['"]node:)/, path.basename(f));
  }
});

test("importing '@taskforge/client' does not load React; '@taskforge/client/react' does", () => {
  // A fresh process (this one may have loaded anything): which of React's files are loaded after
  // each import. ESM imports of CommonJS (React is) go through the CommonJS cache.
  const script = `
    import { createRequire } from 'node:module';
    const cache = createRequire(import.meta.url).cache;
    const react = () => Object.keys(cache).filter((f) => /[\\\\/]node_modules[\\\\/]react[\\\\/]/.test(f)).length;
    const main = await import('@taskforge/client');
    const afterMain = react();
    const bindings = await import('@taskforge/client/react');
    console.log(JSON.stringify({
      afterMain,
      afterReact: react(),
      main: typeof main.RealtimeClient,
      hook: typeof bindings.useLiveTasks,
    }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: PKG_ROOT, encoding: 'utf8' });
  const got = JSON.parse(out) as { afterMain: number; afterReact: number; main: string; hook: string };
  assert.equal(got.main, 'function');
  assert.equal(got.afterMain, 0, 'the main entry loaded React');
  // The check itself works: the React entry does load it.
  assert.equal(got.hook, 'function');
  assert.ok(got.afterReact > 0);
});

test('Node 20 has no global WebSocket: the socket asks for one, auto uses the event stream', () => {
  if ('WebSocket' in globalThis) return; // Node 22+ has one
  assert.throws(
    () => new RealtimeClient({ url: 'http://127.0.0.1:1', auth: 'token', transport: 'websocket' }),
    /no WebSocket implementation: pass \{ WebSocket \}/,
  );
  assert.equal(new RealtimeClient({ url: 'http://127.0.0.1:1', auth: 'token' }).transport, 'sse');
  assert.throws(() => new RealtimeClient({ url: 'http://127.0.0.1:1', auth: 'token', transport: 'carrier pigeon' as 'sse' }), /transport is/);
});

test('socket URLs derive from the base URL', () => {
  assert.equal(realtimeUrl('http://127.0.0.1:8080'), 'ws://127.0.0.1:8080/realtime');
  assert.equal(realtimeUrl('https://example.com/tf/'), 'wss://example.com/tf/realtime');
  assert.equal(realtimeUrl('wss://example.com/realtime'), 'wss://example.com/realtime');
});

test('event stream URLs derive from the base or socket URL', () => {
  assert.equal(sseUrl('http://127.0.0.1:8080'), 'http://127.0.0.1:8080/realtime/sse');
  assert.equal(sseUrl('https://example.com/tf/'), 'https://example.com/tf/realtime/sse');
  assert.equal(sseUrl('wss://example.com/realtime'), 'https://example.com/realtime/sse');
});
