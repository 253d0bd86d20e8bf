// Mentions in comment bodies and task descriptions: `@[Display name](user:<userId>)`. The name is
// what the text shows; the id is what the server reads (a mention survives a rename). These helpers
// write one and split a text into plain parts and mentions, for an editor's autocomplete and for
// rendering a mention as `@Name`.

/** A piece of a text: plain text, or a mention. */
export type MentionPart =
  | { kind: 'text'; text: string }
  | {
      kind: 'mention';
      userId: string;
      /** The name written in the markup (as of when it was written). */
      name: string;
      /** The markup as it stands in the text. */
      raw: string;
    };

const UUID_ONLY = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const OPEN = '(user:';

/**
 * The markup of a mention of `user`. The server reads the name up to the first `]` and refuses a
 * name with `[` or a line break, so brackets become parentheses and line breaks spaces: any display
 * name gives one mention.
 */
export function formatMention(user: { id: string; displayName: string }): string {
  if (!user || typeof user.id !== 'string' || !UUID_ONLY.test(user.id)) {
    throw new TypeError('formatMention: user.id must be a UUID');
  }
  const name = String(user.displayName ?? '')
    .replace(/\[/g, '(')
    .replace(/\]/g, ')')
    .replace(/[\r\n]+/g, ' ');
  return `@[${name === '' ? 'user' : name}](user:${user.id.toLowerCase()})`;
}

/**
 * The markup that starts at `at` (where `text` holds `@[`): its name, id and end; otherwise where a
 * later markup may start. The same reading as the server's, in one pass over any text.
 */
function markupAt(text: string, at: number): { name: string; id: string; end: number } | { next: number } {
  const start = at + 2;
  let i = start;
  // The name runs to the first `]`, and may not hold a `[` or a line break.
  while (i < text.length && text[i] !== '[' && text[i] !== ']' && text[i] !== '\n') i++;
  if (i >= text.length) return { next: text.length };
  if (text[i] !== ']' || i === start) {
    // `@[x @[Ann](user:…)`: the next markup starts at the `@` before this `[`.
    return { next: text[i] === '[' && text[i - 1] === '@' && i - 1 > at ? i - 1 : i };
  }
  const idStart = i + 1 + OPEN.length;
  const id = text.slice(idStart, idStart + 36);
  if (text.slice(i + 1, idStart) !== OPEN || text[idStart + 36] !== ')' || !UUID_ONLY.test(id)) {
    return { next: i + 1 };
  }
  return { name: text.slice(start, i), id, end: idStart + 37 };
}

/**
 * Splits `text` into plain parts and mentions, in order, reading the markup as the server does
 * (`@[`, a non-empty name without `[`, `]` or line breaks, `](user:`, a UUID, `)`). Joining every
 * part's text (`raw` for mentions) gives `text` back. Adjacent plain text is one part; an empty
 * text gives no parts.
 */
export function parseMentions(text: string): MentionPart[] {
  const src = String(text);
  const parts: MentionPart[] = [];
  let plainFrom = 0;
  let pos = 0;
  for (;;) {
    const at = src.indexOf('@[', pos);
    if (at < 0) break;
    const m = markupAt(src, at);
    if ('next' in m) {
      pos = Math.max(m.next, at + 1);
      continue;
    }
    if (at > plainFrom) parts.push({ kind: 'text', text: src.slice(plainFrom, at) });
    parts.push({ kind: 'mention', userId: m.id.toLowerCase(), name: m.name, raw: src.slice(at, m.end) });
    plainFrom = pos = m.end;
  }
  if (plainFrom < src.length) parts.push({ kind: 'text', text: src.slice(plainFrom) });
  return parts;
}

/** The distinct user ids `text` mentions, in order of first mention. */
export function mentionedUserIds(text: string): string[] {
  const ids = new Set<string>();
  for (const p of parseMentions(text)) if (p.kind === 'mention') ids.add(p.userId);
  return [...ids];
}

/**
 * The text as a reader sees it: each mention as `@Name`. `nameOf` may give a current name for a
 * user id (a rename since the mention was written); by default the name in the markup is used.
 */
export function mentionsToPlainText(text: string, nameOf?: (userId: string) => string | undefined): string {
  return parseMentions(text)
    .map((p) => (p.kind === 'text' ? p.text : `@${nameOf?.(p.userId) ?? p.name}`))
    .join('');
}
