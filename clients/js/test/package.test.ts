// The built package: ESM with typings, nothing but relative imports (no runtime dependencies, no
// Node built-ins, so it loads in a browser as is), and a clear error where no WebSocket exists.

import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { RealtimeClient, realtimeUrl } from '@taskforge/client';
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
  for (const [name, version] of Object.entries(pkg.devDependencies as Record<string, string>)) {
    assert.match(version, /^\d+\.\d+\.\d+$/, `${name} is pinned`);
  }
});

test('dist/ imports only its own modules and uses no Node globals', () => {
  const js = files(path.join(PKG_ROOT, 'dist')).filter((f) => f.endsWith('.js'));
  assert.ok(js.length >= 5);
  for (const f of js) {
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+['"]([^'"]+)['"]/gm)) {
      assert.ok(m[1]!.startsWith('./') || m[1]!.startsWith('../'), `${path.basename(f)} imports ${m[1]}`);
    }
    assert.doesNotMatch(text, /\b(require\(|process\.|Buffer\.|from ['"]node:)/, path.basename(f));
  }
});

test('Node 20 has no global WebSocket: the client says to pass one', () => {
  if ('WebSocket' in globalThis) return; // Node 22+ has one
  assert.throws(
    () => new RealtimeClient({ url: 'http://127.0.0.1:1', auth: 'token' }),
    /no WebSocket implementation: pass \{ WebSocket \}/,
  );
});

test('socket URLs derive from the base URL', () => {
  assert.equal(realtimeUrl('http://127.0.0.1:8080'), 'ws://127.0.0.1:8080/realtime');
  assert.equal(realtimeUrl('https://example.com/tf/'), 'wss://example.com/tf/realtime');
  assert.equal(realtimeUrl('wss://example.com/realtime'), 'wss://example.com/realtime');
});
