const UUID_ONLY = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const OPEN = '](user:';
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
export function parseMentions(text) {
    const src = String(text);
    const parts = [];
    let plainFrom = 0;
    let from = 0;
    for (;;) {
        const at = src.indexOf('@[', from);
        if (at < 0)
            break;
        const nameStart = at + 2;
        const end = src.indexOf(OPEN, nameStart);
        if (end < 0)
            break;
        from = nameStart;
        const name = src.slice(nameStart, end);
        if (name === '' || name.includes('[') || name.includes('\n'))
            continue;
        const idStart = end + OPEN.length;
        const id = src.slice(idStart, idStart + 36);
        if (!UUID_ONLY.test(id) || src[idStart + 36] !== ')')
            continue;
        const stop = idStart + 37;
        if (at > plainFrom)
            parts.push({ kind: 'text', text: src.slice(plainFrom, at) });
        parts.push({ kind: 'mention', userId: id.toLowerCase(), name, raw: src.slice(at, stop) });
        plainFrom = from = stop;
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
