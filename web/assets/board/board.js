import { ApiError, RealtimeClient, Session, refresh, } from '../src/index.js';
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
    members: [],
    tasks: new Map(),
    teamSub: null,
    boardSub: null,
    taskSub: null,
    openTask: null,
};
function session() {
    if (!state.session)
        throw new Error('not logged in');
    return state.session;
}
function memberName(userId) {
    if (!userId)
        return 'unassigned';
    return state.members.find((m) => m.user.id === userId)?.user.displayName ?? 'former member';
}
function storeTokens(auth) {
    sessionStorage.setItem(REFRESH_KEY, auth.refreshToken);
}
async function start(s) {
    state.session = s;
    storeTokens({ user: s.user, accessToken: s.accessToken, refreshToken: s.refreshToken, expiresIn: 0 });
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
    state.rt?.close();
    Object.assign(state, {
        session: null, rt: null, teams: [], team: null, boards: [], board: null, members: [],
        teamSub: null, boardSub: null, taskSub: null, openTask: null,
    });
    state.tasks.clear();
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
    try {
        const auth = await refresh(location.origin, token);
        await start(new Session(location.origin, auth, { onTokens: storeTokens }));
    }
    catch {
        sessionStorage.removeItem(REFRESH_KEY);
    }
}
async function loadTeams(prefer = state.team?.id) {
    const me = await session().me();
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
async function openTeam(team) {
    state.teamSub?.unsubscribe();
    state.teamSub = null;
    state.team = team;
    state.boards = [];
    state.members = [];
    if (!team) {
        await openBoard(null);
        return;
    }
    select('team-select').value = team.id;
    state.teamSub = state.rt.subscribe({ teamId: team.id }, {
        on: {
            'board.created': () => guarded(loadBoards)(),
            'board.updated': () => guarded(loadBoards)(),
            'board.deleted': () => guarded(loadBoards)(),
            'member.added': () => guarded(loadMembers)(),
            'member.updated': () => guarded(loadMembers)(),
            'member.removed': () => guarded(loadMembers)(),
            'team.updated': () => guarded(() => loadTeams())(),
        },
        onGap: () => guarded(async () => { await loadMembers(); await loadBoards(); })(),
        onError: () => guarded(() => loadTeams())(),
    });
    await loadMembers();
    await loadBoards();
}
async function loadMembers() {
    const team = state.team;
    if (!team)
        return;
    const { items } = await allPages((cursor) => session().request('GET', `/teams/${team.id}/members`, { query: { limit: PAGE, cursor } }));
    state.members = items;
    $('member-list').textContent = items.map((m) => `${m.user.displayName} (${m.role})`).join(', ');
    renderAssignees();
    renderBoard();
}
async function loadBoards() {
    const team = state.team;
    if (!team)
        return;
    const { items } = await allPages((cursor) => session().listBoards(team.id, { limit: PAGE, ...(cursor ? { cursor } : {}) }));
    state.boards = items;
    const bs = select('board-select');
    bs.replaceChildren(...items.map((b) => h('option', { value: b.id }, b.name)));
    const keep = items.find((b) => b.id === state.board?.id);
    const next = keep ?? items.find((b) => b.id === team.defaultBoardId) ?? items[0] ?? null;
    if (next?.id !== state.board?.id)
        await openBoard(next);
    else
        bs.value = next?.id ?? '';
}
async function openBoard(board) {
    state.boardSub?.unsubscribe();
    state.boardSub = null;
    closeTask();
    state.board = board;
    state.tasks.clear();
    $('board').hidden = !board;
    if (!board || !state.team) {
        renderBoard();
        return;
    }
    select('board-select').value = board.id;
    const seq = await loadTasks();
    if (state.board?.id !== board.id)
        return;
    state.boardSub = state.rt.subscribe({ boardId: board.id }, { onActivity: applyBoardActivity, onGap: () => guarded(async () => { await loadTasks(); })() }, seq === null ? {} : { since: seq });
}
async function loadTasks() {
    const team = state.team;
    const board = state.board;
    if (!team || !board)
        return null;
    const { items, seq } = await allPages((cursor) => session().listTasks(team.id, { boardId: board.id, limit: PAGE, ...(cursor ? { cursor } : {}) }));
    state.tasks.clear();
    for (const t of items)
        state.tasks.set(t.id, t);
    renderBoard();
    return seq;
}
function upsert(task) {
    const known = state.tasks.get(task.id);
    if (known && known.version >= task.version)
        return;
    if (task.boardId !== state.board?.id)
        state.tasks.delete(task.id);
    else
        state.tasks.set(task.id, task);
}
function applyBoardActivity(a) {
    switch (a.type) {
        case 'task.created':
        case 'task.updated':
        case 'task.assigned':
            upsert(a.data.task);
            renderBoard(a.type === 'task.created' ? a.data.task.id : undefined);
            announce(`${memberName(a.actorUserId)}: ${a.type.replace('task.', '')} “${a.data.task.title}”`);
            if (state.openTask === a.data.task.id)
                fillTask(a.data.task);
            break;
        case 'task.deleted':
            state.tasks.delete(a.data.taskId);
            renderBoard();
            if (state.openTask === a.data.taskId)
                closeTask();
            break;
        default:
            break;
    }
}
function renderBoard(fresh) {
    const columns = $('columns');
    if (!state.board) {
        columns.replaceChildren();
        return;
    }
    const byStatus = new Map(STATUSES.map((s) => [s.id, []]));
    for (const t of state.tasks.values())
        byStatus.get(t.status)?.push(t);
    columns.replaceChildren(...STATUSES.map((s, i) => {
        const tasks = (byStatus.get(s.id) ?? []).sort((a, b) => a.position - b.position || a.createdAt.localeCompare(b.createdAt));
        const headingId = `col-${s.id}`;
        return h('section', { class: 'column', 'aria-labelledby': headingId, 'data-status': s.id }, h('h2', { id: headingId }, s.label, h('span', { 'aria-label': `${tasks.length} tasks` }, String(tasks.length))), h('ul', {}, ...tasks.map((t) => card(t, i, t.id === fresh))));
    }));
}
function card(t, column, fresh) {
    const open = h('button', { type: 'button', class: 'open' }, t.title);
    open.addEventListener('click', guarded(() => openTask(t.id)));
    const moves = h('div', { class: 'moves' });
    for (const step of [-1, 1]) {
        const target = STATUSES[column + step];
        if (!target)
            continue;
        const b = h('button', { type: 'button', 'aria-label': `Move “${t.title}” to ${target.label}` }, step < 0 ? `← ${target.label}` : `${target.label} →`);
        b.addEventListener('click', guarded(async () => {
            await session().updateTask(t.id, { status: target.id }, { ifMatch: t.version }).then((r) => upsert(r.data));
            renderBoard();
        }));
        moves.append(b);
    }
    return h('li', { class: fresh ? 'card fresh' : 'card', 'data-task-id': t.id }, open, h('div', { class: 'meta' }, h('span', {}, memberName(t.assigneeUserId)), t.priority === 'none' ? '' : h('span', { class: `prio-${t.priority}` }, t.priority), t.dueDate ? h('span', {}, `due ${t.dueDate}`) : ''), moves);
}
function renderAssignees() {
    const s = form('task-edit').elements.namedItem('assigneeUserId');
    const current = s.value;
    s.replaceChildren(h('option', { value: '' }, 'unassigned'), ...state.members.map((m) => h('option', { value: m.user.id }, m.user.displayName)));
    s.value = current;
}
function fillTask(t) {
    const f = form('task-edit');
    const set = (name, value) => {
        f.elements.namedItem(name).value = value;
    };
    set('title', t.title);
    set('description', t.description);
    set('status', t.status);
    set('priority', t.priority);
    set('assigneeUserId', t.assigneeUserId ?? '');
    $('task-panel-title').textContent = t.title;
    $('task-version').textContent = `version ${t.version}`;
    f.dataset.version = String(t.version);
}
async function openTask(taskId) {
    closeTask();
    const { data: task, seq } = await session().getTask(taskId);
    upsert(task);
    state.openTask = taskId;
    fillTask(task);
    $('comments').replaceChildren();
    $('task-panel').hidden = false;
    $('workspace').classList.add('with-panel');
    const { items, seq: commentsSeq } = await allPages((cursor) => session().listComments(taskId, { limit: PAGE, ...(cursor ? { cursor } : {}) }));
    if (state.openTask !== taskId)
        return;
    const seen = new Set();
    for (const c of items)
        addComment(c, seen);
    const since = Math.min(seq ?? 0, commentsSeq ?? 0);
    const sub = state.rt.subscribe({ taskId }, {
        on: {
            'comment.created': (a) => addComment(a.data.comment, seen),
            'comment.updated': (a) => addComment(a.data.comment, seen),
            'comment.deleted': (a) => document.getElementById(`comment-${a.data.commentId}`)?.remove(),
        },
        onGap: () => guarded(() => openTask(taskId))(),
        onError: () => closeTask(),
    }, since > 0 ? { since } : {});
    state.taskSub = sub;
    sub.presence?.onChange((viewers) => {
        $('viewers').replaceChildren(...viewers.map((v) => h('span', { class: 'viewer' }, v.displayName)));
    });
}
function addComment(c, seen) {
    const body = h('div', {}, c.body);
    const by = h('div', { class: 'by' }, `${memberName(c.authorUserId)} · ${new Date(c.createdAt).toLocaleString()}${c.editedAt ? ' · edited' : ''}`);
    const existing = document.getElementById(`comment-${c.id}`);
    if (existing)
        existing.replaceChildren(by, body);
    else
        $('comments').append(h('li', { id: `comment-${c.id}` }, by, body));
    seen.add(c.id);
}
function closeTask() {
    state.taskSub?.unsubscribe();
    state.taskSub = null;
    state.openTask = null;
    $('task-panel').hidden = true;
    $('viewers').replaceChildren();
    $('workspace').classList.remove('with-panel');
}
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
    on('login-form', async (f) => {
        await start(await Session.login(location.origin, { email: field(f, 'email'), password: field(f, 'password') }, { onTokens: storeTokens }));
        f.reset();
    });
    on('register-form', async (f) => {
        const body = { email: field(f, 'email'), password: field(f, 'password'), displayName: field(f, 'displayName') };
        await start(await Session.register(location.origin, body, { onTokens: storeTokens }));
        f.reset();
    });
    $('logout').addEventListener('click', () => logout());
    select('team-select').addEventListener('change', guarded(async () => {
        await openTeam(state.teams.find((t) => t.team.id === select('team-select').value)?.team ?? null);
    }));
    select('board-select').addEventListener('change', guarded(async () => {
        await openBoard(state.boards.find((b) => b.id === select('board-select').value) ?? null);
    }));
    on('team-form', async (f) => {
        const { data: team } = await session().createTeam(field(f, 'name'));
        f.reset();
        await loadTeams(team.id);
    });
    on('board-form', async (f) => {
        if (!state.team)
            throw new Error('pick a team first');
        const { data: board } = await session().createBoard(state.team.id, field(f, 'name'));
        f.reset();
        await loadBoards();
        await openBoard(state.boards.find((b) => b.id === board.id) ?? null);
    });
    on('member-form', async (f) => {
        if (!state.team)
            throw new Error('pick a team first');
        const role = field(f, 'role');
        await session().addMember(state.team.id, { email: field(f, 'email'), role });
        f.reset();
        await loadMembers();
    });
    on('task-form', async (f) => {
        if (!state.team || !state.board)
            throw new Error('pick a board first');
        const { data } = await session().createTask(state.team.id, { title: field(f, 'title'), boardId: state.board.id });
        f.reset();
        upsert(data);
        renderBoard(data.id);
    });
    on('task-edit', async (f) => {
        const id = state.openTask;
        if (!id)
            return;
        const assignee = field(f, 'assigneeUserId');
        const patch = {
            title: field(f, 'title'),
            description: field(f, 'description'),
            status: field(f, 'status'),
            priority: field(f, 'priority'),
            assigneeUserId: assignee === '' ? null : assignee,
        };
        const { data } = await session().updateTask(id, patch, { ifMatch: Number(f.dataset.version) });
        upsert(data);
        fillTask(data);
        renderBoard();
    });
    $('task-delete').addEventListener('click', guarded(async () => {
        const id = state.openTask;
        if (!id || !confirm('Delete this task?'))
            return;
        await session().deleteTask(id);
        state.tasks.delete(id);
        closeTask();
        renderBoard();
    }));
    $('task-close').addEventListener('click', () => closeTask());
    on('comment-form', async (f) => {
        if (!state.openTask)
            return;
        await session().createComment(state.openTask, field(f, 'body'));
        f.reset();
    });
    addEventListener('online', () => state.rt?.reconnect());
    void resume();
}
init();
