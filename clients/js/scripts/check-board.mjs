// Fails when the board's compiled files in ../../web/assets (committed: the server embeds them)
// are not what `npm run build:board` makes of the current sources. Compiles into a temporary
// directory and compares file by file; changes nothing.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const committed = path.resolve(pkg, '..', '..', 'web', 'assets');
const fresh = mkdtempSync(path.join(tmpdir(), 'taskforge-board-'));

function files(dir, prefix = '') {
  let out = [];
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out = out.concat(files(full, `${prefix}${name}/`));
    else out.push(`${prefix}${name}`);
  }
  return out.sort();
}

try {
  const tsc = path.join(pkg, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(pkg, 'tsconfig.board.json'), '--outDir', fresh], {
    stdio: 'inherit',
  });
  const want = files(fresh);
  let have = [];
  try {
    have = files(committed);
  } catch {
    // no web/assets at all: every file is missing
  }
  const problems = [];
  for (const f of want) {
    if (!have.includes(f)) problems.push(`missing: web/assets/${f}`);
    else if (!readFileSync(path.join(fresh, f)).equals(readFileSync(path.join(committed, f)))) {
      problems.push(`stale: web/assets/${f}`);
    }
  }
  for (const f of have) if (!want.includes(f)) problems.push(`left over: web/assets/${f}`);
  if (problems.length > 0) {
    console.error(`The board's compiled files are out of date; run \`npm run build:board\` in clients/js and commit web/assets:\n  ${problems.join('\n  ')}`);
    process.exitCode = 1;
  } else {
    console.log(`web/assets is up to date (${want.length} files)`);
  }
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
