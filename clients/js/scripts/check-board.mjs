// Fails when the board's compiled files in ../../web/assets (committed: the server embeds them)
// are not what `npm run build:board` makes of the current sources, or when their stamp
// (web/assets/SOURCES.sha256, see board-stamp.mjs) is not the one that build writes. Compiles into
// a temporary directory and compares file by file; changes nothing.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { ASSETS as committed, PKG as pkg, STAMP, files, stampText } from './board-stamp.mjs';

const fresh = mkdtempSync(path.join(tmpdir(), 'taskforge-board-'));

try {
  const tsc = path.join(pkg, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(pkg, 'tsconfig.board.json'), '--outDir', fresh], {
    stdio: 'inherit',
  });
  const want = files(fresh);
  // The stamp is not compiled output: it is checked on its own below.
  const have = files(committed).filter((f) => f !== STAMP);
  const problems = [];
  for (const f of want) {
    if (!have.includes(f)) problems.push(`missing: web/assets/${f}`);
    else if (!readFileSync(path.join(fresh, f)).equals(readFileSync(path.join(committed, f)))) {
      problems.push(`stale: web/assets/${f}`);
    }
  }
  for (const f of have) if (!want.includes(f)) problems.push(`left over: web/assets/${f}`);
  let stamp;
  try {
    stamp = readFileSync(path.join(committed, STAMP), 'utf8');
  } catch {
    problems.push(`missing: web/assets/${STAMP}`);
  }
  const wantStamp = stampText(fresh);
  if (stamp !== undefined && stamp !== wantStamp) {
    // Name what changed: the last word of a stamp line is its path (`typescript <version>` aside).
    const key = (line) => (line.startsWith('typescript ') ? 'the typescript version' : line.split(' ').pop());
    const differ = (a, b) => a.split('\n').filter((l) => l && !l.startsWith('#') && !b.split('\n').includes(l));
    const changed = [...new Set([...differ(stamp, wantStamp), ...differ(wantStamp, stamp)].map(key))];
    problems.push(`stale: web/assets/${STAMP} (changed since the build: ${changed.join(', ') || 'its comments'})`);
  }
  if (problems.length > 0) {
    console.error(`The board's compiled files are out of date; run \`npm run build:board\` in clients/js and commit web/assets:\n  ${problems.join('\n  ')}`);
    process.exitCode = 1;
  } else {
    console.log(`web/assets is up to date (${want.length} files and ${STAMP})`);
  }
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
