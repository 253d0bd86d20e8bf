const isSeq = (v) => typeof v === 'number' && Number.isInteger(v) && v >= 0;
export function inboxEventOf(frame) {
    if (!frame || typeof frame !== 'object')
        return null;
    const f = frame;
    if (!isSeq(f.seq))
        return null;
    if (f.type === 'notification.created') {
        const n = f.notification;
        if (!n || typeof n !== 'object' || typeof n.id !== 'string' || !isSeq(n.seq))
            return null;
        return frame;
    }
    if (f.type === 'notification.read') {
        const idsOk = f.ids === null || f.ids === undefined || (Array.isArray(f.ids) && f.ids.every((i) => typeof i === 'string'));
        const uptoOk = f.upto === null || f.upto === undefined || isSeq(f.upto);
        if (!idsOk || !uptoOk || !isSeq(f.unreadCount))
            return null;
        return { type: 'notification.read', seq: f.seq, ids: f.ids ?? null, upto: f.upto ?? null, unreadCount: f.unreadCount };
    }
    return null;
}
