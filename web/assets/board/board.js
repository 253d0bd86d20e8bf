import { ApiError, RealtimeClient, Session, formatMention, isAuthFailure, parseMentions, searchWords, tabRefreshCoordinator, } from '../src/index.js';
const STATUSES = [
    { id: 'todo', label: 'To do' },
    { id: 'in_progress', label: 'In progress' },
    { id: 'done', label: 'Done' },
    { id: 'canceled', label: 'Canceled' },
];
const PRIORITIES = ['none', 'low', 'medium', 'high', 'urgent'];
const REFRESH_KEY = 'taskforge.refreshToken';
const PAGE = 100;
function $(id) {
    const el = document.getElementById(id);
    if (!el)
        throw new Error(`#${id} is missing from index.html`);
    return el;
}
const form = (id) => $(id);
const select = (id) => $(id);
function h(tag, props = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props))
        if (v !== undefined)
            el.setAttribute(k, v);
    el.append(...children);
    return el;
}
function field(f, name) {
    const v = new FormData(f).get(name);
    return typeof v === 'string' ? v : '';
}
function notice(message) {
    const el = $('notice');
    el.textContent = message ?? '';
    el.hidden = !message;
}
function announce(message) {
    $('live').textContent = message;
}
function describe(e) {
    if (e instanceof ApiError)
        return e.problem.detail ?? e.problem.title ?? `${e.status} ${e.code}`;
    return e instanceof Error ? e.message : String(e);
}
function guarded(fn) {
    return (...args) => {
        notice(null);
        fn(...args).catch((e) => notice(describe(e)));
    };
}
async function allPages(fetchPage) {
    const first = await fetchPage();
    const items = [...first.data.items];
    let cursor = first.data.nextCursor;
    while (cursor) {
        const next = await fetchPage(cursor);
        items.push(...next.data.items);
        cursor = next.data.nextCursor;
    }
    return { items, seq: first.seq };
}
const state = {
    session: null,
    rt: null,
    teams: [],
    team: null,
    boards: [],
    board: null,
    teamSub: null,
    members: null,
    tasks: null,
    labels: null,
    filtered: null,
    filterKey: null,
    stopMembers: null,
    stopTasks: null,
    stopLabels: null,
    stopFiltered: null,
    shown: null,
    view: null,
    inbox: null,
    stopInbox: null,
    shownUnread: null,
};
const coordinator = tabRefreshCoordinator('taskforge-board-auth');
function session() {
    if (!state.session)
        throw new Error('not logged in');
    return state.session;
}
function memberName(userId) {
    if (!userId)
        return 'unassigned';
    const members = state.members;
    if (!members)
        return '…';
    const m = members.get(userId);
    if (m)
        return m.user.displayName;
    return members.getSnapshot().status === 'loading' ? '…' : 'former member';
}
function storeTokens(auth) {
    if (state.session && state.session.refreshToken === auth.refreshToken) {
        sessionStorage.setItem(REFRESH_KEY, auth.refreshToken);
    }
}
function sessionOptions() {
    return { coordinator, onTokens: storeTokens };
}
async function start(s) {
    state.session = s;
    sessionStorage.setItem(REFRESH_KEY, s.refreshToken);
    $('me-name').textContent = s.user.displayName;
    $('who').hidden = false;
    $('auth').hidden = true;
    $('workspace').hidden = false;
    const rt = new RealtimeClient({
        url: location.origin,
        auth: s,
        onStateChange: ({ state: st }) => {
            const el = $('conn');
            el.textContent = st === 'open' ? 'live' : st;
            el.className = `conn ${st}`;
        },
        onActivity: (a) => {
            if ((a.type === 'member.added' || a.type === 'member.removed') && involvesMe(a)) {
                guarded(() => loadTeams())();
            }
        },
        onAuthFailure: () => {
            notice('Your session has ended: log in again.');
            logout(false);
        },
        onError: (e) => console.warn('realtime:', e),
    });
    state.rt = rt;
    rt.connect();
    openInbox(rt);
    await loadTeams();
}
function involvesMe(a) {
    const me = state.session?.user.id;
    if (a.type === 'member.added')
        return a.data.member.user.id === me;
    if (a.type === 'member.removed')
        return a.data.userId === me;
    return false;
}
function logout(tellServer = true) {
    const s = state.session;
    closeTask();
    closeBoard();
    closeTeam();
    closeInbox();
    state.rt?.close();
    s?.close();
    Object.assign(state, { session: null, rt: null, teams: [], team: null, boards: [], board: null });
    sessionStorage.removeItem(REFRESH_KEY);
    if (tellServer && s)
        s.logout().catch(() => { });
    $('who').hidden = true;
    $('workspace').hidden = true;
    $('auth').hidden = false;
    $('conn').textContent = 'offline';
}
async function resume() {
    const token = sessionStorage.getItem(REFRESH_KEY);
    if (!token)
        return;
    let s;
    try {
        s = await Session.resume(location.origin, token, sessionOptions());
    }
    catch (e) {
        if (isAuthFailure(e))
            sessionStorage.removeItem(REFRESH_KEY);
        else
            notice(`Could not resume your session (${describe(e)}): reload to try again.`);
        return;
    }
    await start(s);
}
async function loadTeams(prefer = state.team?.id) {
    const s = session();
    const me = await s.me();
    if (state.session !== s)
        return;
    state.teams = me.data.teams;
    const ts = select('team-select');
    ts.replaceChildren(...state.teams.map((t) => h('option', { value: t.team.id }, t.team.name)));
    $('no-team').hidden = state.teams.length > 0;
    const next = (state.teams.find((t) => t.team.id === prefer) ?? state.teams[0])?.team ?? null;
    if (next?.id !== state.team?.id)
        await openTeam(next);
    else
        ts.value = next?.id ?? '';
}
function closeTeam() {
    state.teamSub?.unsubscribe();
    state.teamSub = null;
    state.stopMembers?.();
    state.stopMembers = null;
    state.members?.close();
    state.members = null;
    state.stopLabels?.();
    state.stopLabels = null;
    state.labels?.close();
    state.labels = null;
}
async function openTeam(team) {
    closeBoard();
    closeTeam();
    state.team = team;
    state.boards = [];
    $('member-list').textContent = '';
    if (!team) {
        openBoard(null);
        return;
    }
    const rt = state.rt;
    select('team-select').value = team.id;
    state.teamSub = rt.subscribe({ teamId: team.id }, {
        on: {
            'board.created': () => guarded(loadBoards)(),
            'board.updated': () => guarded(loadBoards)(),
            'board.deleted': () => guarded(loadBoards)(),
            'team.updated': () => guarded(() => loadTeams())(),
        },
        onGap: () => guarded(loadBoards)(),
        onError: () => guarded(() => loadTeams())(),
    });
    const members = rt.liveMembers({ teamId: team.id });
    state.members = members;
    state.stopMembers = members.subscribe((s) => {
        if (state.members === members)
            renderMembers(s);
    });
    renderMembers(members.getSnapshot());
    const labels = rt.liveLabels({ teamId: team.id });
    state.labels = labels;
    state.stopLabels = labels.subscribe((s) => {
        if (state.labels === labels)
            renderLabels(s);
    });
    form('filter-bar').reset();
    renderLabels(labels.getSnapshot());
    await loadBoards();
}
function renderMembers(s) {
    if (s.status === 'error')
        notice(`Members could not be loaded: ${describe(s.error)}`);
    $('member-list').textContent = s.items.map((m) => `${m.user.displayName} (${m.role})`).join(', ');
    renderAssignees(s.items);
    renderBoard();
}
async function loadBoards() {
    const team = state.team;
    if (!team)
        return;
    const { items } = await allPages((cursor) => session().listBoards(team.id, { limit: PAGE, ...(cursor ? { cursor } : {}) }));
    if (state.team?.id !== team.id)
        return;
    state.boards = items;
    const bs = select('board-select');
    bs.replaceChildren(...items.map((b) => h('option', { value: b.id }, b.name)));
    const keep = items.find((b) => b.id === state.board?.id);
    const next = keep ?? items.find((b) => b.id === team.defaultBoardId) ?? items[0] ?? null;
    if (next?.id !== state.board?.id)
        openBoard(next);
    else
        bs.value = next?.id ?? '';
}
function closeBoard() {
    closeTask();
    closeFiltered();
    state.filterKey = null;
    state.stopTasks?.();
    state.stopTasks = null;
    state.tasks?.close();
    state.tasks = null;
    state.shown = null;
    state.board = null;
}
function openBoard(board) {
    closeBoard();
    state.board = board;
    $('board').hidden = !board;
    if (!board || !state.team) {
        $('columns').replaceChildren();
        return;
    }
    select('board-select').value = board.id;
    const tasks = state.rt.liveTasks({ teamId: state.team.id, boardId: board.id });
    state.tasks = tasks;
    state.stopTasks = tasks.subscribe(() => {
        if (state.tasks !== tasks)
            return;
        renderBoard();
        followOpenTask();
    });
    applyFilter();
    renderBoard();
}
function renderBoard() {
    const shown = state.filtered ?? state.tasks;
    if (!shown)
        return;
    const s = shown.getSnapshot();
    renderFilterStatus(s);
    const columns = $('columns');
    $('board').dataset.live = s.status;
    columns.setAttribute('aria-busy', String(s.status === 'loading' || s.status === 'refetching'));
    if (s.status === 'error')
        notice(`Tasks could not be loaded: ${describe(s.error)} (retrying)`);
    if (s.status === 'loading' && s.items.length === 0) {
        columns.replaceChildren();
        return;
    }
    const before = state.shown;
    const byStatus = new Map(STATUSES.map((st) => [st.id, []]));
    for (const t of s.items)
        byStatus.get(t.status)?.push(t);
    columns.replaceChildren(...STATUSES.map((st, i) => {
        const tasks = byStatus.get(st.id) ?? [];
        const headingId = `col-${st.id}`;
        return h('section', { class: 'column', 'aria-labelledby': headingId, 'data-status': st.id }, h('h2', { id: headingId }, st.label, h('span', { 'aria-label': `${tasks.length} tasks` }, String(tasks.length))), h('ul', {}, ...tasks.map((t) => card(t, i, before !== null && !before.has(t.id)))));
    }));
    state.shown = new Map(s.items.map((t) => [t.id, t.status]));
    if (before)
        announceChanges(before, s.items);
}
function announceChanges(before, items) {
    const said = [];
    const label = (st) => STATUSES.find((x) => x.id === st)?.label ?? st;
    for (const t of items) {
        const was = before.get(t.id);
        if (was === undefined)
            said.push(`added “${t.title}”`);
        else if (was !== t.status)
            said.push(`“${t.title}” moved to ${label(t.status)}`);
    }
    const now = new Set(items.map((t) => t.id));
    const removed = [...before.keys()].filter((id) => !now.has(id)).length;
    if (removed > 0)
        said.push(`${removed} task${removed > 1 ? 's' : ''} removed`);
    if (said.length > 0)
        announce(said.slice(0, 5).join('; '));
}
function luminance(color) {
    const n = /^#[0-9a-f]{6}$/i.test(color) ? parseInt(color.slice(1), 16) : 0xe3ebff;
    const lin = (c) => {
        const v = c / 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * lin((n >> 16) & 255) + 0.7152 * lin((n >> 8) & 255) + 0.0722 * lin(n & 255);
}
const DARK_INK = '#1d2330';
function inkFor(color) {
    const l = luminance(color);
    return (l + 0.05) / (luminance(DARK_INK) + 0.05) >= 1.05 / (l + 0.05) ? DARK_INK : '#ffffff';
}
function chip(tag, l) {
    const el = h(tag, { class: 'chip', 'data-label-id': l.id }, l.name);
    el.style.setProperty('--label-color', l.color);
    el.style.setProperty('--label-ink', inkFor(l.color));
    return el;
}
function labelPicks(name, checked) {
    return (state.labels?.getSnapshot().items ?? []).map((l) => {
        const box = h('input', { type: 'checkbox', name, value: l.id });
        box.checked = checked.has(l.id);
        return h('label', { class: 'label-pick' }, box, chip('span', l));
    });
}
function labelGone(id) {
    const labels = state.labels;
    if (!labels)
        return false;
    const st = labels.getSnapshot().status;
    return (st === 'live' || st === 'refetching') && labels.get(id) === undefined;
}
function checkedValues(container, name) {
    return Array.from(container.querySelectorAll(`input[type=checkbox][name="${name}"]`))
        .filter((b) => b.checked)
        .map((b) => b.value);
}
function renderLabels(s) {
    if (s.status === 'error')
        notice(`Labels could not be loaded: ${describe(s.error)}`);
    const bar = $('filter-labels');
    const ticked = new Set(checkedValues(bar, 'labelId'));
    bar.querySelectorAll('.label-pick, .none').forEach((el) => el.remove());
    const picks = labelPicks('labelId', ticked);
    bar.append(...(picks.length > 0 ? picks : [h('span', { class: 'muted none' }, 'No labels yet')]));
    const view = state.view;
    if (view)
        renderTaskLabels(view, new Set([...formLabelIds(view), ...view.pendingLabels]));
    applyFilter();
    renderBoard();
}
function readFilter() {
    const f = form('filter-bar');
    const out = {};
    const q = field(f, 'q').trim();
    if (searchWords(q).length > 0)
        out.q = Array.from(q).slice(0, 200).join('');
    const assignee = field(f, 'assigneeUserId');
    if (assignee)
        out.assigneeUserId = assignee;
    const priority = field(f, 'priority');
    if (priority)
        out.priority = priority;
    const after = field(f, 'dueAfter');
    const before = field(f, 'dueBefore');
    const afterInput = f.elements.namedItem('dueAfter');
    const empty = after !== '' && before !== '' && after > before;
    afterInput.setCustomValidity(empty ? 'Due after must not be later than due before' : '');
    if (empty)
        afterInput.reportValidity();
    else {
        if (after)
            out.dueAfter = after;
        if (before)
            out.dueBefore = before;
    }
    const labels = checkedValues($('filter-labels'), 'labelId').filter((id) => !labelGone(id));
    if (labels.length > 0)
        out.labelId = labels.slice(0, 20);
    return out;
}
function closeFiltered() {
    state.stopFiltered?.();
    state.stopFiltered = null;
    state.filtered?.close();
    state.filtered = null;
}
function applyFilter() {
    const team = state.team;
    const board = state.board;
    if (!team || !board || !state.rt || !state.tasks)
        return;
    const filter = readFilter();
    const key = JSON.stringify(filter);
    if (key === state.filterKey)
        return;
    state.filterKey = key;
    closeFiltered();
    if (Object.keys(filter).length > 0) {
        const filtered = state.rt.liveTasks({ teamId: team.id, boardId: board.id, filter });
        state.filtered = filtered;
        state.stopFiltered = filtered.subscribe(() => {
            if (state.filtered === filtered)
                renderBoard();
        });
    }
    state.shown = null;
    renderBoard();
}
function renderFilterStatus(s) {
    const el = $('filter-status');
    if (!state.filtered) {
        el.textContent = '';
        return;
    }
    const total = state.tasks?.getSnapshot().items.length ?? 0;
    const text = s.status === 'loading' ? 'Filtering…' : `Showing ${s.items.length} of ${total} task${total === 1 ? '' : 's'}`;
    if (el.textContent !== text)
        el.textContent = text;
}
function card(t, column, fresh) {
    const open = h('button', { type: 'button', class: 'open' }, t.title);
    open.addEventListener('click', guarded(async () => openTask(t.id)));
    const moves = h('div', { class: 'moves' });
    for (const step of [-1, 1]) {
        const target = STATUSES[column + step];
        if (!target)
            continue;
        const b = h('button', { type: 'button', 'aria-label': `Move “${t.title}” to ${target.label}` }, step < 0 ? `← ${target.label}` : `${target.label} →`);
        b.addEventListener('click', guarded(async () => {
            await session().updateTask(t.id, { status: target.id }, { ifMatch: t.version });
        }));
        moves.append(b);
    }
    return h('li', { class: fresh ? 'card fresh' : 'card', 'data-task-id': t.id }, open, h('div', { class: 'meta' }, h('span', {}, memberName(t.assigneeUserId)), t.priority === 'none' ? '' : h('span', { class: `prio-${t.priority}` }, t.priority), t.dueDate ? h('span', {}, `due ${t.dueDate}`) : ''), cardLabels(t), moves);
}
function cardLabels(t) {
    const labels = (t.labelIds ?? []).map((id) => state.labels?.get(id)).filter((l) => l !== undefined);
    if (labels.length === 0)
        return '';
    return h('ul', { class: 'chips', 'aria-label': 'Labels' }, ...labels.map((l) => chip('li', l)));
}
function renderAssignees(members) {
    const s = form('task-edit').elements.namedItem('assigneeUserId');
    const current = s.value;
    s.replaceChildren(h('option', { value: '' }, 'unassigned'), ...members.map((m) => h('option', { value: m.user.id }, m.user.displayName)));
    s.value = current;
    const bar = form('filter-bar').elements.namedItem('assigneeUserId');
    const filtering = bar.value;
    bar.replaceChildren(h('option', { value: '' }, 'Anyone'), h('option', { value: 'none' }, 'Unassigned'), ...members.map((m) => h('option', { value: m.user.id }, m.user.displayName)));
    bar.value = filtering;
    if (bar.value !== filtering)
        applyFilter();
}
function fillTask(view, t) {
    const f = form('task-edit');
    const set = (name, value) => {
        f.elements.namedItem(name).value = value;
    };
    set('title', t.title);
    set('description', t.description);
    set('status', t.status);
    set('priority', t.priority);
    set('assigneeUserId', t.assigneeUserId ?? '');
    renderTaskLabels(view, new Set([...(t.labelIds ?? []), ...view.pendingLabels]));
    $('task-panel-title').textContent = t.title;
    $('task-version').textContent = `version ${t.version}`;
    f.dataset.version = String(t.version);
    view.shownVersion = t.version;
    view.base = t;
    view.latest = null;
    view.changedBy = null;
    $('conflict').hidden = true;
}
const EDIT_FIELDS = ['title', 'description', 'status', 'priority', 'assigneeUserId'];
function formValue(name) {
    const v = field(form('task-edit'), name);
    return name === 'assigneeUserId' && v === '' ? null : v;
}
function edits(view) {
    const base = view.base;
    const out = {};
    if (!base)
        return out;
    for (const name of EDIT_FIELDS) {
        const now = formValue(name);
        const was = name === 'assigneeUserId' ? (base.assigneeUserId ?? null) : base[name];
        if (now !== was)
            out[name] = now;
    }
    const labels = formLabelIds(view);
    if (labels.join() !== baseLabelIds(view).join())
        out.labelIds = labels;
    return out;
}
function baseLabelIds(view) {
    return (view.base?.labelIds ?? []).filter((id) => !labelGone(id)).sort();
}
function formLabelIds(view) {
    const list = $('task-label-list');
    const shown = new Set(Array.from(list.querySelectorAll('input[name=labelIds]'), (b) => b.value));
    const kept = (view.base?.labelIds ?? []).filter((id) => !shown.has(id) && !labelGone(id));
    return [...new Set([...checkedValues(list, 'labelIds'), ...kept])].sort();
}
function renderTaskLabels(view, checked) {
    if (state.view !== view)
        return;
    const picks = labelPicks('labelIds', checked);
    for (const p of picks) {
        const id = p.querySelector('input').value;
        view.pendingLabels.delete(id);
    }
    $('task-label-list').replaceChildren(...(picks.length > 0 ? picks : [h('span', { class: 'muted' }, 'None yet: create one')]));
}
function mergedLabels(view, newest, now) {
    const was = new Set(baseLabelIds(view));
    const want = new Set(now);
    const out = new Set((newest.labelIds ?? []).filter((id) => !labelGone(id) && !(was.has(id) && !want.has(id))));
    for (const id of want)
        if (!was.has(id))
            out.add(id);
    return [...out].sort();
}
function newestTask(view) {
    let t = view.base;
    for (const c of [view.latest, state.tasks?.get(view.taskId) ?? null]) {
        if (c && (!t || c.version > t.version))
            t = c;
    }
    return t;
}
function whoChanged(view) {
    const id = view.changedBy;
    if (!id)
        return 'Someone';
    if (id === state.session?.user.id)
        return 'You (in another window)';
    return memberName(id);
}
function showConflict(view, latest) {
    if (state.view !== view)
        return;
    view.latest = latest;
    $('conflict-text').textContent = `${whoChanged(view)} changed this task since you opened it (now version ${latest.version}): overwrite their change with yours, or reload it?`;
    $('conflict').hidden = false;
    $('conflict-overwrite').focus();
}
async function saveTask(view, overwrite, retried = false) {
    const patch = edits(view);
    if (Object.keys(patch).length === 0)
        return;
    const base = view.base;
    const newest = newestTask(view) ?? base;
    const moved = newest.version > base.version;
    const text = 'title' in patch || 'description' in patch;
    if (moved && text && !overwrite)
        return showConflict(view, newest);
    const body = { ...patch };
    if (patch.labelIds)
        body.labelIds = mergedLabels(view, newest, patch.labelIds);
    try {
        const { data } = await session().updateTask(view.taskId, body, { ifMatch: newest.version });
        if (state.view === view && data.version > view.shownVersion)
            fillTask(view, data);
    }
    catch (e) {
        if (!(e instanceof ApiError && e.status === 412) || retried)
            throw e;
        const { data: now } = await session().getTask(view.taskId);
        if (state.view !== view)
            return;
        if (now.version > (view.latest?.version ?? -1))
            view.latest = now;
        if (text)
            return showConflict(view, now);
        await saveTask(view, overwrite, true);
    }
}
function followOpenTask() {
    const view = state.view;
    const tasks = state.tasks;
    if (!view || !tasks)
        return;
    const t = tasks.get(view.taskId);
    if (t) {
        if (t.version <= view.shownVersion)
            return;
        if (Object.keys(edits(view)).length === 0) {
            fillTask(view, t);
        }
        else if (t.version > (view.latest?.version ?? -1)) {
            view.latest = t;
            $('task-version').textContent = `version ${view.shownVersion} (changed since: version ${t.version})`;
        }
        return;
    }
    const status = tasks.getSnapshot().status;
    if (status === 'live' || status === 'refetching')
        closeTask();
}
function openTask(taskId) {
    closeTask();
    const rt = state.rt;
    const task = state.tasks?.get(taskId);
    if (!rt || !task)
        throw new Error('That task is no longer on this board.');
    const view = {
        taskId,
        sub: null,
        comments: null,
        stops: [],
        shownVersion: -1,
        base: null,
        latest: null,
        changedBy: null,
        pendingLabels: new Set(),
    };
    state.view = view;
    const current = () => state.view === view;
    fillTask(view, task);
    $('comments').replaceChildren();
    $('viewers').replaceChildren();
    $('task-panel').hidden = false;
    $('workspace').classList.add('with-panel');
    const sub = rt.subscribe({ taskId }, {
        onError: (e) => {
            if (!current())
                return;
            closeTask();
            notice(describe(e));
        },
        onActivity: (a) => {
            if (!current() || (a.type !== 'task.updated' && a.type !== 'task.assigned'))
                return;
            if (a.data.task.id === taskId && view.base && a.data.task.version > view.base.version)
                view.changedBy = a.actorUserId;
        },
    });
    view.sub = sub;
    const presence = sub.presence;
    if (presence) {
        view.stops.push(presence.onChange((viewers) => {
            if (current())
                renderViewers(viewers);
        }));
        renderViewers(presence.viewers);
    }
    const comments = rt.liveComments({ taskId });
    view.comments = comments;
    view.stops.push(comments.subscribe((s) => {
        if (current())
            renderComments(view, s);
    }));
    renderComments(view, comments.getSnapshot());
}
const FIELD_NAMES = { title: 'the title', description: 'the description', comment: 'a comment' };
function doing(v) {
    if (v.state === 'viewing' || !v.field)
        return null;
    if (v.field === 'comment')
        return `${v.displayName} is ${v.state === 'typing' ? 'typing' : 'writing'} a comment`;
    return `${v.displayName} is ${v.state === 'typing' ? 'typing in' : 'editing'} ${FIELD_NAMES[v.field]}`;
}
function renderViewers(viewers) {
    $('viewers').replaceChildren(...viewers.map((v) => h('span', { class: 'viewer', 'data-user-id': v.userId, 'data-state': v.state }, v.displayName)));
    const me = state.session?.user.id;
    const lines = viewers.filter((v) => v.userId !== me).map(doing).filter((x) => x !== null);
    $('activity').textContent = lines.join('; ');
}
function renderComments(view, s) {
    if (s.status === 'closed') {
        closeTask();
        return;
    }
    if (s.status === 'error')
        notice(`Comments could not be loaded: ${describe(s.error)}`);
    const list = $('comments');
    list.dataset.live = s.status;
    list.dataset.taskId = view.taskId;
    list.replaceChildren(...s.items.map(commentItem));
}
function withMentions(text) {
    return parseMentions(text).map((p) => {
        if (p.kind === 'text')
            return p.text;
        const name = state.members?.get(p.userId)?.user.displayName ?? p.name;
        return h('span', { class: 'mention', 'data-user-id': p.userId }, `@${name}`);
    });
}
function commentItem(c) {
    const body = h('div', { class: 'body' }, ...withMentions(c.body));
    const by = h('div', { class: 'by' }, `${memberName(c.authorUserId)} · ${new Date(c.createdAt).toLocaleString()}${c.editedAt ? ' · edited' : ''}`);
    return h('li', { id: `comment-${c.id}` }, by, body);
}
function closeTask() {
    const view = state.view;
    state.view = null;
    if (view) {
        for (const stop of view.stops)
            stop();
        view.stops.length = 0;
        view.sub?.unsubscribe();
        view.comments?.close();
    }
    $('task-panel').hidden = true;
    $('viewers').replaceChildren();
    $('activity').textContent = '';
    $('conflict').hidden = true;
    $('comments').replaceChildren();
    $('task-label-list').replaceChildren();
    $('workspace').classList.remove('with-panel');
}
const REASONS = {
    assigned: 'assigned you',
    mentioned: 'mentioned you',
    commented: 'commented',
    status_changed: 'changed the status',
    task_deleted: 'deleted the task',
};
function openInbox(rt) {
    closeInbox();
    const inbox = rt.inbox({ pageSize: 20 });
    state.inbox = inbox;
    state.stopInbox = inbox.subscribe((s) => {
        if (state.inbox === inbox)
            renderInbox(s);
    });
    renderInbox(inbox.getSnapshot());
}
function closeInbox() {
    state.stopInbox?.();
    state.stopInbox = null;
    state.inbox?.close();
    state.inbox = null;
    state.shownUnread = null;
    showInbox(false);
    $('inbox-list').replaceChildren();
}
function showInbox(open) {
    $('inbox').hidden = !open;
    $('inbox-button').setAttribute('aria-expanded', String(open));
}
function renderInbox(s) {
    if (s.status === 'error')
        notice(`Notifications could not be loaded: ${describe(s.error)}`);
    const count = $('inbox-count');
    count.textContent = String(s.unreadCount);
    count.hidden = s.unreadCount === 0;
    const label = s.unreadCount === 0 ? 'Notifications' : `Notifications, ${s.unreadCount} unread`;
    $('inbox-button').setAttribute('aria-label', label);
    if (s.status !== 'loading' && state.shownUnread !== s.unreadCount) {
        if (state.shownUnread !== null) {
            $('inbox-announce').textContent = `${s.unreadCount} unread notification${s.unreadCount === 1 ? '' : 's'}`;
        }
        state.shownUnread = s.unreadCount;
    }
    const list = $('inbox-list');
    list.dataset.live = s.status;
    list.replaceChildren(...s.items.map(notificationItem));
    $('inbox-empty').hidden = s.items.length > 0 || s.status === 'loading';
    const more = $('inbox-more');
    more.hidden = !s.hasMore;
    more.disabled = s.loadingMore;
    $('inbox-read-all').disabled = s.unreadCount === 0;
}
function notificationItem(n) {
    const unread = n.readAt == null;
    const why = n.reasons.map((r) => REASONS[r] ?? r).join(', ');
    const open = h('button', { type: 'button', class: 'open-notification' }, h('span', { class: 'what' }, h('strong', {}, n.actorDisplayName), ` ${why} · `, h('span', { class: 'task' }, n.taskTitle)), n.excerpt ? h('span', { class: 'excerpt' }, ...withMentions(n.excerpt)) : '', h('span', { class: 'when' }, new Date(n.createdAt).toLocaleString(), unread ? h('span', { class: 'visually-hidden' }, ' (unread)') : ''));
    open.addEventListener('click', guarded(() => openNotification(n)));
    return h('li', { class: unread ? 'notification unread' : 'notification', 'data-id': n.id, 'data-seq': String(n.seq) }, open);
}
async function openNotification(n) {
    const inbox = state.inbox;
    const marking = n.readAt == null && inbox ? inbox.markRead(n.id) : Promise.resolve();
    showInbox(false);
    if (n.reasons.includes('task_deleted')) {
        await marking;
        notice(`“${n.taskTitle}” was deleted.`);
        return;
    }
    let task;
    try {
        task = (await session().getTask(n.taskId)).data;
    }
    catch (e) {
        await marking.catch(() => { });
        if (e instanceof ApiError && e.status === 404)
            throw new Error(`“${n.taskTitle}” no longer exists, or is not in a team of yours.`);
        throw e;
    }
    if (state.team?.id !== task.teamId) {
        if (!state.teams.some((t) => t.team.id === task.teamId))
            await loadTeams(task.teamId);
        const team = state.teams.find((t) => t.team.id === task.teamId)?.team;
        if (!team)
            throw new Error(`“${task.title}” is in a team you are not in.`);
        if (state.team?.id !== team.id)
            await openTeam(team);
    }
    if (state.board?.id !== task.boardId) {
        const board = state.boards.find((b) => b.id === task.boardId);
        if (!board)
            throw new Error(`The board of “${task.title}” is gone.`);
        openBoard(board);
    }
    const tasks = state.tasks;
    if (!tasks)
        throw new Error('That task is no longer on a board.');
    await tasks.ready;
    if (state.tasks === tasks)
        openTask(task.id);
    await marking;
}
function mentionCandidates(query) {
    const me = state.session?.user.id;
    const q = query.toLowerCase();
    const items = state.members?.getSnapshot().items ?? [];
    return items.filter((m) => m.user.id !== me && m.user.displayName.toLowerCase().includes(q)).slice(0, 8);
}
function attachMentions(area, listId) {
    const list = h('ul', { id: listId, class: 'mentions', role: 'listbox', 'aria-label': 'Mention a member' });
    list.hidden = true;
    (area.closest('label') ?? area).after(list);
    area.setAttribute('aria-autocomplete', 'list');
    area.setAttribute('aria-controls', listId);
    let matches = [];
    let active = 0;
    let at = -1;
    const close = () => {
        list.hidden = true;
        list.replaceChildren();
        matches = [];
        at = -1;
        area.removeAttribute('aria-activedescendant');
    };
    const render = () => {
        list.replaceChildren(...matches.map((m, i) => {
            const li = h('li', { id: `${listId}-${i}`, role: 'option', 'aria-selected': String(i === active), 'data-user-id': m.user.id }, m.user.displayName);
            li.addEventListener('mousedown', (ev) => ev.preventDefault());
            li.addEventListener('click', () => insert(i));
            return li;
        }));
        list.hidden = false;
        area.setAttribute('aria-activedescendant', `${listId}-${active}`);
    };
    const update = () => {
        const caret = area.selectionStart ?? 0;
        if (caret !== area.selectionEnd)
            return close();
        const m = /(^|\s)@([^\s@\[\]()]{0,30})$/.exec(area.value.slice(0, caret));
        if (!m)
            return close();
        const found = mentionCandidates(m[2]);
        if (found.length === 0)
            return close();
        const opened = at < 0;
        at = caret - m[2].length - 1;
        if (opened || matches.length !== found.length || found.some((f, i) => f.user.id !== matches[i]?.user.id))
            active = 0;
        matches = found;
        render();
        if (opened)
            announce(`${found.length} member${found.length === 1 ? '' : 's'} to mention: up and down to choose, Enter to insert`);
    };
    const insert = (i) => {
        const m = matches[i];
        if (!m || at < 0)
            return close();
        const caret = area.selectionStart ?? area.value.length;
        const markup = `${formatMention(m.user)} `;
        area.setRangeText(markup, at, caret, 'end');
        close();
        announce(`Mentioned ${m.user.displayName}`);
        area.focus();
    };
    area.addEventListener('input', update);
    area.addEventListener('click', update);
    area.addEventListener('blur', () => close());
    area.addEventListener('keydown', (ev) => {
        if (list.hidden || matches.length === 0)
            return;
        if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
            ev.preventDefault();
            active = (active + (ev.key === 'ArrowDown' ? 1 : matches.length - 1)) % matches.length;
            render();
        }
        else if (ev.key === 'Enter' || ev.key === 'Tab') {
            ev.preventDefault();
            insert(active);
        }
        else if (ev.key === 'Escape') {
            ev.preventDefault();
            close();
        }
    });
    area.addEventListener('keyup', (ev) => {
        if (ev.key === 'ArrowLeft' || ev.key === 'ArrowRight' || ev.key === 'Home' || ev.key === 'End')
            update();
    });
}
const TYPING_IDLE_MS = 3000;
function trackEditing(el, name) {
    let idle = null;
    const set = (st) => {
        const view = state.view;
        const rt = state.rt;
        if (!view || !rt)
            return;
        if (st === 'viewing')
            rt.setPresence(view.taskId, 'viewing');
        else
            rt.setPresence(view.taskId, st, name);
    };
    el.addEventListener('focus', () => set('editing'));
    el.addEventListener('input', () => {
        set('typing');
        if (idle)
            clearTimeout(idle);
        idle = setTimeout(() => {
            idle = null;
            if (document.activeElement === el)
                set('editing');
        }, TYPING_IDLE_MS);
    });
    el.addEventListener('blur', () => {
        if (idle)
            clearTimeout(idle);
        idle = null;
        setTimeout(() => {
            const active = document.activeElement;
            if (!(active instanceof HTMLElement) || !active.closest('#task-panel') || !TRACKED.has(active))
                set('viewing');
        }, 0);
    });
    TRACKED.add(el);
}
const TRACKED = new Set();
function on(id, handler) {
    const f = form(id);
    f.addEventListener('submit', (ev) => {
        ev.preventDefault();
        guarded(handler)(f);
    });
}
function init() {
    const statusSelect = form('task-edit').elements.namedItem('status');
    statusSelect.replaceChildren(...STATUSES.map((s) => h('option', { value: s.id }, s.label)));
    const prioSelect = form('task-edit').elements.namedItem('priority');
    prioSelect.replaceChildren(...PRIORITIES.map((p) => h('option', { value: p }, p)));
    const prioFilter = form('filter-bar').elements.namedItem('priority');
    prioFilter.append(...PRIORITIES.map((p) => h('option', { value: p }, p)));
    const bar = form('filter-bar');
    let typing = null;
    bar.addEventListener('submit', (ev) => ev.preventDefault());
    bar.addEventListener('input', (ev) => {
        if (typing)
            clearTimeout(typing);
        typing = null;
        if (ev.target.getAttribute('name') === 'q')
            typing = setTimeout(applyFilter, 250);
        else
            applyFilter();
    });
    bar.addEventListener('change', () => applyFilter());
    bar.addEventListener('reset', () => setTimeout(applyFilter, 0));
    on('label-form', async (f) => {
        const view = state.view;
        const team = state.team;
        if (!view || !team)
            return;
        const { data: label } = await session().createLabel(team.id, { name: field(f, 'name').trim(), color: field(f, 'color') });
        f.reset();
        if (state.view !== view)
            return;
        view.pendingLabels.add(label.id);
        renderTaskLabels(view, new Set([...formLabelIds(view), ...view.pendingLabels]));
        announce(`Label “${label.name}” created and ticked: save to put it on the task`);
    });
    on('login-form', async (f) => {
        await start(await Session.login(location.origin, { email: field(f, 'email'), password: field(f, 'password') }, sessionOptions()));
        f.reset();
    });
    on('register-form', async (f) => {
        const body = { email: field(f, 'email'), password: field(f, 'password'), displayName: field(f, 'displayName') };
        await start(await Session.register(location.origin, body, sessionOptions()));
        f.reset();
    });
    $('logout').addEventListener('click', () => logout());
    select('team-select').addEventListener('change', guarded(async () => {
        await openTeam(state.teams.find((t) => t.team.id === select('team-select').value)?.team ?? null);
    }));
    select('board-select').addEventListener('change', guarded(async () => {
        openBoard(state.boards.find((b) => b.id === select('board-select').value) ?? null);
    }));
    on('team-form', async (f) => {
        const { data: team } = await session().createTeam(field(f, 'name'));
        f.reset();
        await loadTeams(team.id);
    });
    on('board-form', async (f) => {
        const team = state.team;
        if (!team)
            throw new Error('pick a team first');
        const { data: board } = await session().createBoard(team.id, field(f, 'name'));
        f.reset();
        await loadBoards();
        if (state.team?.id === team.id)
            openBoard(state.boards.find((b) => b.id === board.id) ?? null);
    });
    on('member-form', async (f) => {
        if (!state.team)
            throw new Error('pick a team first');
        const role = field(f, 'role');
        await session().addMember(state.team.id, { email: field(f, 'email'), role });
        f.reset();
    });
    on('task-form', async (f) => {
        if (!state.team || !state.board)
            throw new Error('pick a board first');
        await session().createTask(state.team.id, { title: field(f, 'title'), boardId: state.board.id });
        f.reset();
    });
    on('task-edit', async () => {
        const view = state.view;
        if (view)
            await saveTask(view, false);
    });
    $('conflict-overwrite').addEventListener('click', guarded(async () => {
        const view = state.view;
        if (!view)
            return;
        $('conflict').hidden = true;
        await saveTask(view, true);
    }));
    $('conflict-reload').addEventListener('click', guarded(async () => {
        const view = state.view;
        if (!view)
            return;
        const { data } = await session().getTask(view.taskId);
        const newest = newestTask(view);
        if (state.view === view)
            fillTask(view, newest && newest.version > data.version ? newest : data);
    }));
    trackEditing(form('task-edit').elements.namedItem('title'), 'title');
    trackEditing(form('task-edit').elements.namedItem('description'), 'description');
    trackEditing(form('comment-form').elements.namedItem('body'), 'comment');
    $('task-delete').addEventListener('click', guarded(async () => {
        const view = state.view;
        if (!view || !confirm('Delete this task?'))
            return;
        await session().deleteTask(view.taskId);
        if (state.view === view)
            closeTask();
    }));
    $('task-close').addEventListener('click', () => closeTask());
    on('comment-form', async (f) => {
        const view = state.view;
        if (!view)
            return;
        await session().createComment(view.taskId, field(f, 'body'));
        if (state.view === view)
            f.reset();
    });
    $('inbox-button').addEventListener('click', () => showInbox($('inbox').hidden));
    $('inbox-close').addEventListener('click', () => {
        showInbox(false);
        $('inbox-button').focus();
    });
    $('inbox').addEventListener('keydown', (ev) => {
        if (ev.key === 'Escape') {
            showInbox(false);
            $('inbox-button').focus();
        }
    });
    $('inbox-read-all').addEventListener('click', guarded(async () => {
        await state.inbox?.markAllRead();
    }));
    $('inbox-more').addEventListener('click', guarded(async () => {
        await state.inbox?.loadMore();
    }));
    attachMentions(form('comment-form').elements.namedItem('body'), 'comment-mentions');
    attachMentions(form('task-edit').elements.namedItem('description'), 'description-mentions');
    addEventListener('online', () => state.rt?.reconnect());
    void resume();
}
init();
