#!/usr/bin/env node
// Generates src/generated/protocol.ts from the server's AsyncAPI document (GET /asyncapi.json),
// and saves the document itself as src/generated/asyncapi.json (so schema changes show in diffs
// and the schema test can tell a change of meaning from a change of wording).
//
//   npm run gen                          # from http://127.0.0.1:8080
//   npm run gen -- http://127.0.0.1:9000 # from another running server
//   npm run gen -- ./asyncapi.json       # from a saved copy
//   node scripts/gen-types.mjs ./asyncapi.json --out-dir /tmp/x   # write both files elsewhere
//
// protocol.ts also carries the server's routing table (`ROUTING`, from the document's root extension
// `x-taskforge-routing`), which src/scope.ts uses to tell which subscriptions an activity reaches.
//
// protocol.ts starts with three stamp lines: the SHA-256 of the asyncapi.json it was generated
// from, of this script, and of the rest of protocol.ts. `cargo test` (tests/it/client_artifacts.rs)
// recomputes them without Node, so a hand edit of either file or a generator change that was not
// followed by a regeneration fails there too.
//
// The generator is a small JSON Schema -> TypeScript converter that knows only the keywords the
// server's document uses ($ref, type, enum, const, oneOf, anyOf, allOf, properties, required,
// additionalProperties, items). It fails on anything else rather than guess, so a schema change
// that it cannot express is noticed. `generate()` is exported so that the schema test can run it
// against the live server and compare with the committed file.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/**
 * The presence event types. The server's `PresenceActivity.type` schema is a plain string (the
 * names live only in the contract), so the generator narrows it here; if the server ever adds an
 * `enum`, that enum is used instead and the schema test checks that it equals this list.
 */
export const PRESENCE_TYPES = ['presence.joined', 'presence.left'];

/**
 * The kinds of room of the server's routing table (`x-taskforge-routing`): the three a client
 * subscribes to, and `user` (one user's own sockets). The generator fails on any other kind: the
 * client's `reaches` would not know what to do with it.
 */
export const ROOM_KINDS = ['team', 'board', 'task', 'user', 'admins'];

const KNOWN_KEYWORDS = new Set([
  '$ref', 'type', 'enum', 'const', 'oneOf', 'anyOf', 'allOf', 'properties', 'required',
  'additionalProperties', 'propertyNames', 'items', 'description', 'format', 'minimum',
  'maximum', 'maxLength', 'minLength', 'title', 'default', 'examples', 'example',
]);

const REF_PREFIX = '#/components/schemas/';

/** Property names are emitted bare when they are identifiers, quoted otherwise. */
function propName(name) {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name) ? name : JSON.stringify(name);
}

function doc(description, pad) {
  if (!description) return '';
  const lines = String(description).trim().split('\n');
  if (lines.length === 1) return `${pad}/** ${lines[0].replace(/\*\//g, '*\\/')} */\n`;
  return `${pad}/**\n${lines.map((l) => `${pad} * ${l.replace(/\*\//g, '*\\/')}`.trimEnd()).join('\n')}\n${pad} */\n`;
}

function checkKeywords(schema, where) {
  for (const key of Object.keys(schema)) {
    if (!KNOWN_KEYWORDS.has(key)) {
      throw new Error(`gen-types: unsupported JSON Schema keyword "${key}" at ${where}`);
    }
  }
}

/** Converts one schema to a TypeScript type expression; `pad` is the current indentation. */
export function toTs(schema, pad = '', where = 'schema') {
  if (schema === true || (typeof schema === 'object' && schema && Object.keys(schema).length === 0)) {
    return 'unknown';
  }
  if (typeof schema !== 'object' || schema === null) {
    throw new Error(`gen-types: expected a schema object at ${where}`);
  }
  checkKeywords(schema, where);
  if (schema.$ref) {
    if (!schema.$ref.startsWith(REF_PREFIX)) {
      throw new Error(`gen-types: unsupported $ref ${schema.$ref} at ${where}`);
    }
    return schema.$ref.slice(REF_PREFIX.length);
  }
  if ('const' in schema) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(' | ');
  const inner = pad + '  ';
  if (schema.oneOf || schema.anyOf) {
    const parts = (schema.oneOf ?? schema.anyOf).map(
      (s, i) => toTs(s, inner, `${where}/${schema.oneOf ? 'oneOf' : 'anyOf'}/${i}`),
    );
    return `\n${parts.map((p) => `${inner}| ${p}`).join('\n')}`;
  }
  if (schema.allOf) {
    // Parts stay at the caller's indentation: an intersection reads as one object.
    const parts = schema.allOf.map((s, i) => {
      const t = toTs(s, pad, `${where}/allOf/${i}`);
      return t.startsWith('\n') ? `(${t}\n${pad})` : t;
    });
    return parts.length === 1 ? parts[0] : parts.join(' & ');
  }
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : ['object'];
  return types.map((t) => single(t, schema, pad, where)).join(' | ');
}

function single(type, schema, pad, where) {
  switch (type) {
    case 'string':
      return 'string';
    case 'integer':
    case 'number':
      return 'number';
    case 'boolean':
      return 'boolean';
    case 'null':
      return 'null';
    case 'array': {
      const item = toTs(schema.items ?? {}, pad, `${where}/items`);
      return /^[A-Za-z0-9_]+$/.test(item) ? `${item}[]` : `Array<${item}>`;
    }
    case 'object':
      return objectType(schema, pad, where);
    default:
      throw new Error(`gen-types: unsupported type "${type}" at ${where}`);
  }
}

function objectType(schema, pad, where) {
  const inner = pad + '  ';
  const required = new Set(schema.required ?? []);
  const props = Object.entries(schema.properties ?? {});
  const lines = props.map(([name, prop]) => {
    const t = toTs(prop, inner, `${where}/properties/${name}`);
    const optional = required.has(name) ? '' : '?';
    return `${doc(prop.description, inner)}${inner}${propName(name)}${optional}: ${t};`;
  });
  if (schema.additionalProperties !== undefined && schema.additionalProperties !== false) {
    const t = toTs(schema.additionalProperties === true ? {} : schema.additionalProperties, inner,
      `${where}/additionalProperties`);
    lines.push(`${inner}[key: string]: ${t};`);
  }
  if (lines.length === 0) return 'Record<string, never>';
  return `{\n${lines.join('\n')}\n${pad}}`;
}

/**
 * The document without its `description` texts: what the schema means, not how it is worded.
 * (A property named "description", like Task's, is kept: only the keyword goes.)
 */
export function withoutDescriptions(node, isPropertyMap = false) {
  if (Array.isArray(node)) return node.map((n) => withoutDescriptions(n));
  if (node === null || typeof node !== 'object') return node;
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    if (!isPropertyMap && key === 'description' && typeof value === 'string') continue;
    out[key] = withoutDescriptions(value, !isPropertyMap && key === 'properties');
  }
  return out;
}

/** The activity `type` strings and each one's required `data` fields, in document order. */
export function activityShapes(asyncapi) {
  const variants = asyncapi?.components?.schemas?.ActivityData?.oneOf;
  if (!Array.isArray(variants)) throw new Error('gen-types: no components.schemas.ActivityData.oneOf');
  return variants.map((v, i) => {
    const type = v.properties?.type?.enum;
    if (!Array.isArray(type) || type.length !== 1) {
      throw new Error(`gen-types: ActivityData.oneOf/${i} has no single-valued type enum`);
    }
    return { type: type[0], required: [...(v.properties?.data?.required ?? [])] };
  });
}

/**
 * The server's routing table (the root extension `x-taskforge-routing`): each activity type's room
 * kinds, in the order of `activityShapes`. Fails on a type missing from the table or unknown to the
 * schema, and on an unknown or repeated room kind.
 */
export function routingTable(asyncapi) {
  const rooms = asyncapi?.['x-taskforge-routing']?.rooms;
  if (rooms === null || typeof rooms !== 'object' || Array.isArray(rooms)) {
    throw new Error('gen-types: no x-taskforge-routing.rooms object');
  }
  const types = activityShapes(asyncapi).map((s) => s.type);
  for (const type of Object.keys(rooms)) {
    if (!types.includes(type)) {
      throw new Error(`gen-types: x-taskforge-routing.rooms names "${type}", which is not an activity type`);
    }
  }
  return types.map((type) => {
    const kinds = rooms[type];
    if (!Array.isArray(kinds)) throw new Error(`gen-types: x-taskforge-routing.rooms has no list for "${type}"`);
    kinds.forEach((kind, i) => {
      if (!ROOM_KINDS.includes(kind)) {
        throw new Error(`gen-types: x-taskforge-routing.rooms["${type}"] names an unknown room kind ${JSON.stringify(kind)}`);
      }
      if (kinds.indexOf(kind) !== i) {
        throw new Error(`gen-types: x-taskforge-routing.rooms["${type}"] lists "${kind}" twice`);
      }
    });
    return { type, rooms: [...kinds] };
  });
}

/** A text wrapped at `width` columns (for doc comments of long one-line descriptions). */
function wrap(text, width) {
  const lines = [];
  let line = '';
  for (const word of String(text).trim().split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines.join('\n');
}

/** The text of src/generated/asyncapi.json for a document: what the stamp's hash covers. */
export function snapshotText(asyncapi) {
  return `${JSON.stringify(asyncapi, null, 2)}\n`;
}

const sha256 = (data) => createHash('sha256').update(data).digest('hex');

/**
 * The stamp lines that head protocol.ts. The Rust test parses them: keep the `// sha256 of <what>: `
 * prefixes as they are.
 */
function stamp(asyncapi, body) {
  const self = readFileSync(fileURLToPath(import.meta.url));
  return [
    `// sha256 of src/generated/asyncapi.json: ${sha256(snapshotText(asyncapi))}`,
    `// sha256 of scripts/gen-types.mjs: ${sha256(self)}`,
    `// sha256 of the rest of this file: ${sha256(body)}`,
  ].join('\n') + '\n';
}

/** Returns the text of src/generated/protocol.ts for an AsyncAPI document. */
export function generate(asyncapi) {
  const body = generateBody(asyncapi);
  return stamp(asyncapi, body) + body;
}

function generateBody(asyncapi) {
  if (typeof asyncapi?.asyncapi !== 'string' || !asyncapi.asyncapi.startsWith('3.')) {
    throw new Error('gen-types: not an AsyncAPI 3 document');
  }
  // Work on a copy: the presence narrowing below must not leak into the caller's document.
  const schemas = structuredClone(asyncapi.components?.schemas ?? {});
  const presenceType = schemas.PresenceActivity?.properties?.type;
  if (presenceType && !presenceType.enum) presenceType.enum = PRESENCE_TYPES;

  const info = asyncapi.info ?? {};
  let out = '';
  out += '// Generated by scripts/gen-types.mjs from the server\'s GET /asyncapi.json\n';
  out += `// (AsyncAPI ${asyncapi.asyncapi}, "${info.title ?? ''}" ${info.version ?? ''}). Do not edit by hand:\n`;
  out += '// run `npm run gen` against a running server. test/schema.test.ts and `cargo test`\n';
  out += '// (client_artifacts) fail when this file no longer matches what the server publishes.\n';
  out += '/* eslint-disable */\n\n';

  for (const name of Object.keys(schemas).sort()) {
    const schema = schemas[name];
    const t = toTs(schema, '', `#/components/schemas/${name}`);
    out += doc(schema.description, '');
    out += `export type ${name} =${t.startsWith('\n') ? '' : ' '}${t};\n\n`;
  }

  const shapes = activityShapes(asyncapi);
  out += '/** Every logged activity type, in the order of the server\'s schema. */\n';
  out += `export const ACTIVITY_TYPES = [\n${shapes.map((s) => `  ${JSON.stringify(s.type)},`).join('\n')}\n] as const;\n\n`;
  out += 'export type ActivityType = (typeof ACTIVITY_TYPES)[number];\n\n';
  out += '/** The activity of one type, narrowed: `ActivityOf<"task.created">["data"]["task"]`. */\n';
  out += 'export type ActivityOf<T extends ActivityType> = Extract<Activity, { type: T }>;\n\n';
  out += '/** The required fields of each activity type\'s `data`, as the server\'s schema states them. */\n';
  out += 'export const ACTIVITY_DATA_REQUIRED: { readonly [T in ActivityType]: readonly string[] } = {\n';
  const list = (xs) => `[${xs.map((x) => JSON.stringify(x)).join(', ')}]`;
  out += shapes.map((s) => `  ${JSON.stringify(s.type)}: ${list(s.required)},`).join('\n');
  out += '\n};\n\n';
  const presence = schemas.PresenceActivity?.properties?.type?.enum ?? PRESENCE_TYPES;
  out += '/** The ephemeral presence event types (no seq, never replayed). */\n';
  out += `export const PRESENCE_TYPES = ${list(presence)} as const;\n\n`;
  out += 'export type PresenceType = (typeof PRESENCE_TYPES)[number];\n\n';
  const routing = routingTable(asyncapi);
  out += '/** A kind of room: `team`, `board` and `task` are scopes; `user` is one user\'s own sockets. */\n';
  out += `export type RoomKind = ${ROOM_KINDS.map((k) => JSON.stringify(k)).join(' | ')};\n\n`;
  out += doc(wrap(`The server's routing table (x-taskforge-routing). ${
    asyncapi['x-taskforge-routing'].description ?? ''}`, 96), '');
  out += 'export const ROUTING: { readonly [T in ActivityType]: readonly RoomKind[] } = {\n';
  out += routing.map((r) => `  ${JSON.stringify(r.type)}: ${list(r.rooms)},`).join('\n');
  out += '\n};\n';
  return out;
}

async function main() {
  const args = process.argv.slice(2);
  let outDir;
  const at = args.indexOf('--out-dir');
  if (at >= 0) {
    outDir = args[at + 1];
    if (!outDir) throw new Error('gen-types: --out-dir needs a directory');
    args.splice(at, 2);
  }
  const source = args[0] ?? process.env.TASKFORGE_URL ?? 'http://127.0.0.1:8080';
  let text;
  if (/^https?:\/\//.test(source)) {
    const url = new URL('/asyncapi.json', source);
    const res = await fetch(url);
    if (!res.ok) throw new Error(`GET ${url} answered ${res.status}`);
    text = await res.text();
  } else {
    text = await readFile(source, 'utf8');
  }
  const doc = JSON.parse(text);
  const here = path.dirname(fileURLToPath(import.meta.url));
  const dir = outDir ?? path.join(here, '..', 'src', 'generated');
  await mkdir(dir, { recursive: true });
  const types = path.join(dir, 'protocol.ts');
  const snapshot = path.join(dir, 'asyncapi.json');
  await writeFile(types, generate(doc));
  await writeFile(snapshot, snapshotText(doc));
  for (const f of [types, snapshot]) console.log(`wrote ${path.relative(process.cwd(), f)}`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
