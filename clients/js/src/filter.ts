// Task filters and sorts as the server applies them to `GET /teams/{teamId}/tasks` (the contract's
// "Filters and sorts"), written out once for the client: the query parameters a filter sends, and
// the same filter as a predicate over a `Task`, so that a filtered live collection can tell whether
// a task it hears about (an edit by someone else, a label deleted) starts or stops matching without
// asking the server again. Both must agree with the server exactly: a task the predicate keeps that
// the server's list would not show (or the reverse) would differ from a reload.

import type { Priority, Task, TaskStatus } from './generated/protocol.js';

export const TASK_STATUSES: readonly TaskStatus[] = ['todo', 'in_progress', 'done', 'canceled'];
/** In the order `sort=priority` runs (ascending). */
export const PRIORITIES: readonly Priority[] = ['none', 'low', 'medium', 'high', 'urgent'];
export const TASK_SORT_KEYS = ['createdAt', 'updatedAt', 'dueDate', 'priority', 'position'] as const;

export type TaskSortKey = (typeof TASK_SORT_KEYS)[number];
/** A sort of the task list; a leading `-` reverses it. `createdAt` is the id order. */
export type TaskSort = TaskSortKey | `-${TaskSortKey}`;

/** At most this many `labelId`s in one filter (the server answers 400 past it). */
export const MAX_FILTER_LABELS = 20;
/** `q`: its first this many words are used, each up to this many characters. */
export const MAX_QUERY_WORDS = 10;
export const MAX_QUERY_WORD_CHARS = 50;
/** `q` is 1 to this many characters. */
export const MAX_QUERY_CHARS = 200;

/**
 * What a task list can be narrowed by; every field is optional and they combine with AND. The names
 * are the query parameters'.
 */
export interface TaskFilter {
  /** Tasks on that board. */
  boardId?: string;
  /** Any of these statuses. */
  status?: TaskStatus | readonly TaskStatus[];
  /** Any of these priorities. */
  priority?: Priority | readonly Priority[];
  /** That assignee; `'none'` for unassigned tasks. */
  assigneeUserId?: string;
  /** Tasks that carry ALL of these labels (at most 20). */
  labelId?: string | readonly string[];
  /** Due on or after that day (`YYYY-MM-DD`); tasks without a due date never match. */
  dueAfter?: string;
  /** Due on or before that day (`YYYY-MM-DD`); tasks without a due date never match. */
  dueBefore?: string;
  /** Every word of `q` begins a word of the title or the description (see `searchWords`). */
  q?: string;
}

/** A task list request: a filter, a sort and a page. */
export interface TaskListQuery extends TaskFilter {
  sort?: TaskSort;
  /** 1 to 200 (default 50). */
  limit?: number;
  /** `nextCursor` of the previous page; only valid with the same `sort`. */
  cursor?: string;
}

/** A filter with every field checked and in one canonical form (sets sorted, no duplicates). */
export interface NormalizedTaskFilter {
  boardId?: string;
  status?: TaskStatus[];
  priority?: Priority[];
  assigneeUserId?: string;
  labelId?: string[];
  dueAfter?: string;
  dueBefore?: string;
  q?: string;
}

// ---- words ----------------------------------------------------------------------------------------

// A word is a run of letters and digits: Unicode's Alphabetic property (letters, and the marks
// that are part of letters in many scripts) or a Number, which is what the server's
// `char::is_alphanumeric` takes as a word character.
const WORD = /[\p{Alphabetic}\p{N}]+/gu;

/** The words of a text, lower-cased (`toLowerCase`, as the server folds case). */
export function searchWords(text: string): string[] {
  return Array.from(text.matchAll(WORD), (m) => m[0].toLowerCase());
}

/**
 * The words of a `q` as the server uses them: each cut to its first 50 characters (after lower
 * casing), repeats dropped, the first 10 of what is left. Empty for a `q` without a letter or a
 * digit, which the server refuses.
 */
export function queryWords(q: string): string[] {
  const out: string[] = [];
  for (const w of searchWords(q)) {
    const chars = Array.from(w);
    const word = chars.length > MAX_QUERY_WORD_CHARS ? chars.slice(0, MAX_QUERY_WORD_CHARS).join('') : w;
    if (!out.includes(word)) out.push(word);
    if (out.length === MAX_QUERY_WORDS) break;
  }
  return out;
}

/** Whether every query word begins some word of the title or the description. */
export function textMatches(words: readonly string[], title: string, description: string): boolean {
  if (words.length === 0) return true;
  const have = [...searchWords(title), ...searchWords(description)];
  return words.every((q) => have.some((w) => w.startsWith(q)));
}

// ---- checks ---------------------------------------------------------------------------------------

const DAY = /^(\d{4})-(\d{2})-(\d{2})$/;

function isDay(v: string): boolean {
  const m = DAY.exec(v);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(y, mo - 1, d));
  return date.getUTCFullYear() === y && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d;
}

function list<T>(v: T | readonly T[] | undefined): T[] | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? [...(v as readonly T[])] : [v as T];
}

function nonEmpty(v: unknown, name: string): string {
  if (typeof v !== 'string' || v === '') throw new TypeError(`${name} must be a non-empty string`);
  return v;
}

/** Checks a filter and puts it in canonical form (throws `TypeError` naming the bad field). */
export function normalizeTaskFilter(f: TaskFilter | undefined): NormalizedTaskFilter {
  if (f === undefined) return {};
  if (f === null || typeof f !== 'object') throw new TypeError('the filter must be an object');
  const out: NormalizedTaskFilter = {};
  if (f.boardId !== undefined) out.boardId = nonEmpty(f.boardId, 'boardId');
  const status = list(f.status);
  if (status !== undefined) {
    for (const s of status) {
      if (!TASK_STATUSES.includes(s)) throw new TypeError(`status must be one of ${TASK_STATUSES.join(', ')}`);
    }
    // No value at all constrains nothing, as a parameter given zero times.
    if (status.length > 0) out.status = [...new Set(status)].sort((a, b) => TASK_STATUSES.indexOf(a) - TASK_STATUSES.indexOf(b));
  }
  const priority = list(f.priority);
  if (priority !== undefined) {
    for (const p of priority) {
      if (!PRIORITIES.includes(p)) throw new TypeError(`priority must be one of ${PRIORITIES.join(', ')}`);
    }
    if (priority.length > 0) out.priority = [...new Set(priority)].sort((a, b) => PRIORITIES.indexOf(a) - PRIORITIES.indexOf(b));
  }
  if (f.assigneeUserId !== undefined) out.assigneeUserId = nonEmpty(f.assigneeUserId, 'assigneeUserId');
  const labels = list(f.labelId);
  if (labels !== undefined) {
    for (const l of labels) nonEmpty(l, 'labelId');
    // Counted as given, as the server counts the parameter.
    if (labels.length > MAX_FILTER_LABELS) throw new TypeError(`labelId: at most ${MAX_FILTER_LABELS} labels`);
    if (labels.length > 0) out.labelId = [...new Set(labels)].sort();
  }
  for (const k of ['dueAfter', 'dueBefore'] as const) {
    const v = f[k];
    if (v === undefined) continue;
    if (typeof v !== 'string' || !isDay(v)) throw new TypeError(`${k} must be a day, YYYY-MM-DD`);
    out[k] = v;
  }
  if (out.dueAfter !== undefined && out.dueBefore !== undefined && out.dueAfter > out.dueBefore) {
    throw new TypeError('dueAfter must not be after dueBefore');
  }
  if (f.q !== undefined) {
    const n = typeof f.q === 'string' ? Array.from(f.q).length : 0;
    if (n < 1 || n > MAX_QUERY_CHARS) throw new TypeError(`q must be 1 to ${MAX_QUERY_CHARS} characters`);
    if (queryWords(f.q).length === 0) throw new TypeError('q must contain a letter or a digit');
    out.q = f.q;
  }
  return out;
}

/** The query parameters of a filter (repeatable ones as arrays). */
export function taskFilterParams(f: NormalizedTaskFilter): Record<string, string | string[] | undefined> {
  return {
    boardId: f.boardId,
    status: f.status,
    priority: f.priority,
    assigneeUserId: f.assigneeUserId,
    labelId: f.labelId,
    dueAfter: f.dueAfter,
    dueBefore: f.dueBefore,
    q: f.q,
  };
}

/** The filter as a predicate: true exactly when the server's list with this filter shows `t`. */
export function taskPredicate(filter: TaskFilter | NormalizedTaskFilter): (t: Task) => boolean {
  const f = normalizeTaskFilter(filter as TaskFilter);
  const words = f.q === undefined ? [] : queryWords(f.q);
  const status = f.status && new Set<string>(f.status);
  const priority = f.priority && new Set<string>(f.priority);
  return (t) => {
    if (f.boardId !== undefined && t.boardId !== f.boardId) return false;
    if (status && !status.has(t.status)) return false;
    if (priority && !priority.has(t.priority)) return false;
    if (f.assigneeUserId !== undefined) {
      const a = t.assigneeUserId ?? null;
      if (f.assigneeUserId === 'none' ? a !== null : a !== f.assigneeUserId) return false;
    }
    if (f.labelId) {
      const has = t.labelIds ?? [];
      if (!f.labelId.every((l) => has.includes(l))) return false;
    }
    if (f.dueAfter !== undefined || f.dueBefore !== undefined) {
      const due = t.dueDate ?? null;
      if (due === null) return false;
      // Days as YYYY-MM-DD compare as strings.
      if (f.dueAfter !== undefined && due < f.dueAfter) return false;
      if (f.dueBefore !== undefined && due > f.dueBefore) return false;
    }
    if (f.q !== undefined && !textMatches(words, t.title, t.description)) return false;
    return true;
  };
}

// ---- sorts ----------------------------------------------------------------------------------------

const RANK: Record<Priority, number> = { none: 0, low: 1, medium: 2, high: 3, urgent: 4 };

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function isTaskSort(v: unknown): v is TaskSort {
  if (typeof v !== 'string') return false;
  const key = v.startsWith('-') ? v.slice(1) : v;
  return (TASK_SORT_KEYS as readonly string[]).includes(key);
}

/**
 * The order of a sort, as the server pages it: `createdAt` is the id order (ids are UUIDv7),
 * `priority` runs none to urgent, `dueDate` puts tasks without one last in both directions, and
 * ties go by id in the sort's direction.
 */
export function compareTasksBy(sort: TaskSort): (a: Task, b: Task) => number {
  if (!isTaskSort(sort)) throw new TypeError(`sort must be one of ${TASK_SORT_KEYS.join(', ')} (with - to reverse)`);
  const dir = sort.startsWith('-') ? -1 : 1;
  const key = (dir < 0 ? sort.slice(1) : sort) as TaskSortKey;
  return (a, b) => {
    let c = 0;
    switch (key) {
      case 'createdAt':
        break;
      case 'updatedAt':
        // RFC 3339 UTC at millisecond precision: the strings sort as the times.
        c = cmp(a.updatedAt, b.updatedAt);
        break;
      case 'dueDate': {
        const x = a.dueDate ?? null;
        const y = b.dueDate ?? null;
        if (x === null || y === null) {
          if (x !== y) return x === null ? 1 : -1;
        } else {
          c = cmp(x, y);
        }
        break;
      }
      case 'priority':
        c = RANK[a.priority] - RANK[b.priority];
        break;
      case 'position':
        c = a.position - b.position;
        break;
    }
    return dir * (c || cmp(a.id, b.id));
  };
}
