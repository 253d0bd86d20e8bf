const UUID_ONLY = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const OPEN = '(user:';
export function formatMention(user) {
    if (!user || typeof user.id !== 'string' || !UUID_ONLY.test(user.id)) {
        throw new TypeError('formatMention: user.id must be a UUID');
    }
    const name = String(user.displayName ?? '')
        .replace(/\[/g, '(')
        .replace(/\]/g, ')')
        .replace(/[\r\n]+/g, ' ');
    return `@[${name === '' ? 'user' : name}](user:${user.id.toLowerCase()})`;
}
function markupAt(text, at) {
    const start = at + 2;
    let i = start;
    while (i < text.length && text[i] !== '[' && text[i] !== ']' && text[i] !== '\n')
        i++;
    if (i >= text.length)
        return { next: text.length };
    if (text[i] !== ']' || i === start) {
        return { next: text[i] === '[' && text[i - 1] === '@' && i - 1 > at ? i - 1 : i };
    }
    const idStart = i + 1 + OPEN.length;
    const id = text.slice(idStart, idStart + 36);
    if (text.slice(i + 1, idStart) !== OPEN || text[idStart + 36] !== ')' || !UUID_ONLY.test(id)) {
        return { next: i + 1 };
    }
    return { name: text.slice(start, i), id, end: idStart + 37 };
}
export function parseMentions(text) {
    const src = String(text);
    const parts = [];
    let plainFrom = 0;
    let pos = 0;
    for (;;) {
        const at = src.indexOf('@[', pos);
        if (at < 0)
            break;
        const m = markupAt(src, at);
        if ('next' in m) {
            pos = Math.max(m.next, at + 1);
            continue;
        }
        if (at > plainFrom)
            parts.push({ kind: 'text', text: src.slice(plainFrom, at) });
        parts.push({ kind: 'mention', userId: m.id.toLowerCase(), name: m.name, raw: src.slice(at, m.end) });
        plainFrom = pos = m.end;
    }
    if (plainFrom < src.length)
        parts.push({ kind: 'text', text: src.slice(plainFrom) });
    return parts;
}
export function mentionedUserIds(text) {
    const ids = new Set();
    for (const p of parseMentions(text))
        if (p.kind === 'mention')
            ids.add(p.userId);
    return [...ids];
}
export function mentionsToPlainText(text, nameOf) {
    return parseMentions(text)
        .map((p) => (p.kind === 'text' ? p.text : `@${nameOf?.(p.userId) ?? p.name}`))
        .join('');
}
