export const TASK_STATUSES = ['todo', 'in_progress', 'done', 'canceled'];
export const PRIORITIES = ['none', 'low', 'medium', 'high', 'urgent'];
export const TASK_SORT_KEYS = ['createdAt', 'updatedAt', 'dueDate', 'priority', 'position'];
export const MAX_FILTER_LABELS = 20;
export const MAX_QUERY_WORDS = 10;
export const MAX_QUERY_WORD_CHARS = 50;
export const MAX_QUERY_CHARS = 200;
const WORD = /[\p{Alphabetic}\p{N}]+/gu;
export function searchWords(text) {
    return Array.from(text.matchAll(WORD), (m) => m[0].toLowerCase());
}
export function queryWords(q) {
    const out = [];
    for (const w of searchWords(q)) {
        const chars = Array.from(w);
        const word = chars.length > MAX_QUERY_WORD_CHARS ? chars.slice(0, MAX_QUERY_WORD_CHARS).join('') : w;
        if (!out.includes(word))
            out.push(word);
        if (out.length === MAX_QUERY_WORDS)
            break;
    }
    return out;
}
export function textMatches(words, title, description) {
    if (words.length === 0)
        return true;
    const have = [...searchWords(title), ...searchWords(description)];
    return words.every((q) => have.some((w) => w.startsWith(q)));
}
const DAY = /^(\d{4})-(\d{2})-(\d{2})$/;
function isDay(v) {
    const m = DAY.exec(v);
    if (!m)
        return false;
    const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
    const date = new Date(Date.UTC(y, mo - 1, d));
    return date.getUTCFullYear() === y && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d;
}
function list(v) {
    if (v === undefined)
        return undefined;
    return Array.isArray(v) ? [...v] : [v];
}
function nonEmpty(v, name) {
    if (typeof v !== 'string' || v === '')
        throw new TypeError(`${name} must be a non-empty string`);
    return v;
}
export function normalizeTaskFilter(f) {
    if (f === undefined)
        return {};
    if (f === null || typeof f !== 'object')
        throw new TypeError('the filter must be an object');
    const out = {};
    if (f.boardId !== undefined)
        out.boardId = nonEmpty(f.boardId, 'boardId');
    const status = list(f.status);
    if (status !== undefined) {
        for (const s of status) {
            if (!TASK_STATUSES.includes(s))
                throw new TypeError(`status must be one of ${TASK_STATUSES.join(', ')}`);
        }
        if (status.length > 0)
            out.status = [...new Set(status)].sort((a, b) => TASK_STATUSES.indexOf(a) - TASK_STATUSES.indexOf(b));
    }
    const priority = list(f.priority);
    if (priority !== undefined) {
        for (const p of priority) {
            if (!PRIORITIES.includes(p))
                throw new TypeError(`priority must be one of ${PRIORITIES.join(', ')}`);
        }
        if (priority.length > 0)
            out.priority = [...new Set(priority)].sort((a, b) => PRIORITIES.indexOf(a) - PRIORITIES.indexOf(b));
    }
    if (f.assigneeUserId !== undefined)
        out.assigneeUserId = nonEmpty(f.assigneeUserId, 'assigneeUserId');
    const labels = list(f.labelId);
    if (labels !== undefined) {
        for (const l of labels)
            nonEmpty(l, 'labelId');
        if (labels.length > MAX_FILTER_LABELS)
            throw new TypeError(`labelId: at most ${MAX_FILTER_LABELS} labels`);
        if (labels.length > 0)
            out.labelId = [...new Set(labels)].sort();
    }
    for (const k of ['dueAfter', 'dueBefore']) {
        const v = f[k];
        if (v === undefined)
            continue;
        if (typeof v !== 'string' || !isDay(v))
            throw new TypeError(`${k} must be a day, YYYY-MM-DD`);
        out[k] = v;
    }
    if (out.dueAfter !== undefined && out.dueBefore !== undefined && out.dueAfter > out.dueBefore) {
        throw new TypeError('dueAfter must not be after dueBefore');
    }
    if (f.q !== undefined) {
        const n = typeof f.q === 'string' ? Array.from(f.q).length : 0;
        if (n < 1 || n > MAX_QUERY_CHARS)
            throw new TypeError(`q must be 1 to ${MAX_QUERY_CHARS} characters`);
        if (queryWords(f.q).length === 0)
            throw new TypeError('q must contain a letter or a digit');
        out.q = f.q;
    }
    return out;
}
export function taskFilterParams(f) {
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
export function taskPredicate(filter) {
    const f = normalizeTaskFilter(filter);
    const words = f.q === undefined ? [] : queryWords(f.q);
    const status = f.status && new Set(f.status);
    const priority = f.priority && new Set(f.priority);
    return (t) => {
        if (f.boardId !== undefined && t.boardId !== f.boardId)
            return false;
        if (status && !status.has(t.status))
            return false;
        if (priority && !priority.has(t.priority))
            return false;
        if (f.assigneeUserId !== undefined) {
            const a = t.assigneeUserId ?? null;
            if (f.assigneeUserId === 'none' ? a !== null : a !== f.assigneeUserId)
                return false;
        }
        if (f.labelId) {
            const has = t.labelIds ?? [];
            if (!f.labelId.every((l) => has.includes(l)))
                return false;
        }
        if (f.dueAfter !== undefined || f.dueBefore !== undefined) {
            const due = t.dueDate ?? null;
            if (due === null)
                return false;
            if (f.dueAfter !== undefined && due < f.dueAfter)
                return false;
            if (f.dueBefore !== undefined && due > f.dueBefore)
                return false;
        }
        if (f.q !== undefined && !textMatches(words, t.title, t.description))
            return false;
        return true;
    };
}
const RANK = { none: 0, low: 1, medium: 2, high: 3, urgent: 4 };
function cmp(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
}
export function isTaskSort(v) {
    if (typeof v !== 'string')
        return false;
    const key = v.startsWith('-') ? v.slice(1) : v;
    return TASK_SORT_KEYS.includes(key);
}
export function compareTasksBy(sort) {
    if (!isTaskSort(sort))
        throw new TypeError(`sort must be one of ${TASK_SORT_KEYS.join(', ')} (with - to reverse)`);
    const dir = sort.startsWith('-') ? -1 : 1;
    const key = (dir < 0 ? sort.slice(1) : sort);
    return (a, b) => {
        let c = 0;
        switch (key) {
            case 'createdAt':
                break;
            case 'updatedAt':
                c = cmp(a.updatedAt, b.updatedAt);
                break;
            case 'dueDate': {
                const x = a.dueDate ?? null;
                const y = b.dueDate ?? null;
                if (x === null || y === null) {
                    if (x !== y)
                        return x === null ? 1 : -1;
                }
                else {
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
