#!/usr/bin/env node
// The stamp of the board's compiled files: web/assets/SOURCES.sha256 lists the SHA-256 of every
// input of `tsc -p tsconfig.board.json` (the .ts files under board/ and src/, both tsconfigs), the
// TypeScript version package-lock.json pins, and the SHA-256 of every file it wrote. `cargo test`
// (tests/it/client_artifacts.rs) recomputes the hashes without Node and names what changed;
// `npm run check:board` checks the stamp along with the files.
//
//   node scripts/board-stamp.mjs   # (run by `npm run build:board`) writes the stamp for web/assets
//
// The Rust test parses this format: `typescript <version>`, then `input <sha256> <path>` and
// `output <sha256> <path>` lines (paths from the repository root), `#` lines are comments.

import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const STAMP = 'SOURCES.sha256';
export const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ASSETS = path.resolve(PKG, '..', '..', 'web', 'assets');

/** Relative paths of the files under `dir`, sorted; `[]` when it does not exist. */
export function files(dir, prefix = '') {
  let names;
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  let out = [];
  for (const name of names) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out = out.concat(files(full, `${prefix}${name}/`));
    else out.push(`${prefix}${name}`);
  }
  return out.sort();
}

/** What tsc compiles under tsconfig.board.json's `include` (board, src). */
const isSource = (f) => /\.(ts|tsx|mts|cts)$/.test(f);

/** Paths (relative to this package) of everything the board's compilation reads. */
export function inputs() {
  const sources = ['board', 'src'].flatMap((d) => files(path.join(PKG, d), `${d}/`).filter(isSource));
  return ['tsconfig.board.json', 'tsconfig.json', ...sources].sort();
}

export function typescriptVersion() {
  const lock = JSON.parse(readFileSync(path.join(PKG, 'package-lock.json'), 'utf8'));
  const version = lock.packages?.['node_modules/typescript']?.version;
  if (!version) throw new Error('board-stamp: package-lock.json pins no node_modules/typescript');
  return version;
}

const sha256 = (file) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** The stamp's text for the current sources and the compiled files in `outDir`. */
export function stampText(outDir = ASSETS) {
  let out = '# What `npm run build:board` (clients/js) compiled web/assets from, and what it wrote.\n';
  out += '# Written by clients/js/scripts/board-stamp.mjs; checked by `npm run check:board` and\n';
  out += '# `cargo test` (client_artifacts). Do not edit by hand.\n';
  out += `typescript ${typescriptVersion()}\n`;
  for (const f of inputs()) out += `input ${sha256(path.join(PKG, f))} clients/js/${f}\n`;
  for (const f of files(outDir)) {
    if (f !== STAMP) out += `output ${sha256(path.join(outDir, f))} web/assets/${f}\n`;
  }
  return out;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(path.join(ASSETS, STAMP), stampText(ASSETS));
  console.log(`wrote web/assets/${STAMP}`);
}
