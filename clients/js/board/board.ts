// The live board that `taskforge serve` serves at `/`: log in or sign up, pick a team and a
// board, see its tasks in columns by status, create / edit / move / assign tasks, comment, and see
// everyone's changes and who is looking at a task as they happen.
//
// It is built on this package (`../src`), compiled by `npm run build:board` into the server's
// `web/assets/` and embedded in the binary. What it must never do: keep state the server does not
// confirm (every change goes over HTTP and is shown from the answer or from the activity that
// follows), or put a token in a URL (the socket authenticates with its first message).

import {
  ApiError,
  RealtimeClient,
  Session,
  refresh,
  type Activity,
  type AuthResponse,
  type Board,
  type Comment,
  type Member,
  type Page,
  type Priority,
  type Role,
  type Subscription,
  type Task,
  type TaskStatus,
  type Team,
} from '../src/index.js';

const STATUSES: { id: TaskStatus; label: string }[] = [
  { id: 'todo', label: 'To do' },
  { id: 'in_progress', label: 'In progress' },
  { id: 'done', label: 'Done' },
  { id: 'canceled', label: 'Canceled' },
];
const PRIORITIES: Priority[] = ['none', 'low', 'medium', 'high', 'urgent'];
const REFRESH_KEY = 'taskforge.refreshToken';
const PAGE = 100;

// ------------------------------------------------------------------ DOM helpers

function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el;
}
const form = (id: string) => $(id) as HTMLFormElement;
const select = (id: string) => $(id) as HTMLSelectElement;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<Record<string, string>> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) if (v !== undefined) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

function field(f: HTMLFormElement, name: string): string {
  const v = new FormData(f).get(name);
  return typeof v === 'string' ? v : '';
}

function notice(message: string | null): void {
  const el = $('notice');
  el.textContent = message ?? '';
  el.hidden = !message;
}

function announce(message: string): void {
  $('live').textContent = message;
}

function describe(e: unknown): string {
  if (e instanceof ApiError) return e.problem.detail ?? e.problem.title ?? `${e.status} ${e.code}`;
  return e instanceof Error ? e.message : String(e);
}

/** Runs a user action; any failure is shown, never thrown into the void. */
function guarded<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => void {
  return (...args) => {
    notice(null);
    fn(...args).catch((e: unknown) => notice(describe(e)));
  };
}

async function allPages<T>(fetchPage: (cursor?: string) => Promise<{ data: Page<T>; seq: number | null }>) {
  const first = await fetchPage();
  const items = [...first.data.items];
  let cursor = first.data.nextCursor;
  while (cursor) {
    const next = await fetchPage(cursor);
    items.push(...next.data.items);
    cursor = next.data.nextCursor;
  }
  // The first page's seq: replaying from there can only repeat what a later page already shows.
  return { items, seq: first.seq };
}

// ------------------------------------------------------------------ state

interface State {
  session: Session | null;
  rt: RealtimeClient | null;
  teams: { team: Team; role: Role }[];
  team: Team | null;
  boards: Board[];
  board: Board | null;
  members: Member[];
  tasks: Map<string, Task>;
  teamSub: Subscription | null;
  boardSub: Subscription | null;
  taskSub: Subscription | null;
  openTask: string | null;
}

const state: State = {
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

function session(): Session {
  if (!state.session) throw new Error('not logged in');
  return state.session;
}

function memberName(userId: string | null | undefined): string {
  if (!userId) return 'unassigned';
  return state.members.find((m) => m.user.id === userId)?.user.displayName ?? 'former member';
}

// ------------------------------------------------------------------ auth

function storeTokens(auth: AuthResponse): void {
  sessionStorage.setItem(REFRESH_KEY, auth.refreshToken);
}

async function start(s: Session): Promise<void> {
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
    // Deliveries to this user's own sockets: being added to or removed from a team.
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

function involvesMe(a: Activity): boolean {
  const me = state.session?.user.id;
  if (a.type === 'member.added') return a.data.member.user.id === me;
  if (a.type === 'member.removed') return a.data.userId === me;
  return false;
}

function logout(tellServer = true): void {
  const s = state.session;
  state.rt?.close();
  Object.assign(state, {
    session: null, rt: null, teams: [], team: null, boards: [], board: null, members: [],
    teamSub: null, boardSub: null, taskSub: null, openTask: null,
  });
  state.tasks.clear();
  sessionStorage.removeItem(REFRESH_KEY);
  if (tellServer && s) s.logout().catch(() => {});
  $('who').hidden = true;
  $('workspace').hidden = true;
  $('auth').hidden = false;
  $('conn').textContent = 'offline';
}

async function resume(): Promise<void> {
  const token = sessionStorage.getItem(REFRESH_KEY);
  if (!token) return;
  try {
    const auth = await refresh(location.origin, token);
    await start(new Session(location.origin, auth, { onTokens: storeTokens }));
  } catch {
    sessionStorage.removeItem(REFRESH_KEY);
  }
}

// ------------------------------------------------------------------ teams, boards, members

/** Reloads the user's teams and opens `prefer` (by default the open one) or else the first. */
async function loadTeams(prefer: string | undefined = state.team?.id): Promise<void> {
  const me = await session().me();
  state.teams = me.data.teams;
  const ts = select('team-select');
  ts.replaceChildren(...state.teams.map((t) => h('option', { value: t.team.id }, t.team.name)));
  $('no-team').hidden = state.teams.length > 0;
  const next = (state.teams.find((t) => t.team.id === prefer) ?? state.teams[0])?.team ?? null;
  if (next?.id !== state.team?.id) await openTeam(next);
  else ts.value = next?.id ?? '';
}

async function openTeam(team: Team | null): Promise<void> {
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
  state.teamSub = state.rt!.subscribe(
    { teamId: team.id },
    {
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
    },
  );
  await loadMembers();
  await loadBoards();
}

async function loadMembers(): Promise<void> {
  const team = state.team;
  if (!team) return;
  const { items } = await allPages((cursor) =>
    session().request<Page<Member>>('GET', `/teams/${team.id}/members`, { query: { limit: PAGE, cursor } }),
  );
  state.members = items;
  $('member-list').textContent = items.map((m) => `${m.user.displayName} (${m.role})`).join(', ');
  renderAssignees();
  renderBoard();
}

async function loadBoards(): Promise<void> {
  const team = state.team;
  if (!team) return;
  const { items } = await allPages((cursor) => session().listBoards(team.id, { limit: PAGE, ...(cursor ? { cursor } : {}) }));
  state.boards = items;
  const bs = select('board-select');
  bs.replaceChildren(...items.map((b) => h('option', { value: b.id }, b.name)));
  const keep = items.find((b) => b.id === state.board?.id);
  const next = keep ?? items.find((b) => b.id === team.defaultBoardId) ?? items[0] ?? null;
  if (next?.id !== state.board?.id) await openBoard(next);
  else bs.value = next?.id ?? '';
}

// ------------------------------------------------------------------ the board

async function openBoard(board: Board | null): Promise<void> {
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
  if (state.board?.id !== board.id) return; // another board was picked meanwhile
  state.boardSub = state.rt!.subscribe(
    { boardId: board.id },
    { onActivity: applyBoardActivity, onGap: () => guarded(async () => { await loadTasks(); })() },
    seq === null ? {} : { since: seq },
  );
}

/** Reloads the open board's tasks; answers the seq they were read at. */
async function loadTasks(): Promise<number | null> {
  const team = state.team;
  const board = state.board;
  if (!team || !board) return null;
  const { items, seq } = await allPages((cursor) =>
    session().listTasks(team.id, { boardId: board.id, limit: PAGE, ...(cursor ? { cursor } : {}) }),
  );
  state.tasks.clear();
  for (const t of items) state.tasks.set(t.id, t);
  renderBoard();
  return seq;
}

/** Keeps the newest version of a task; one that left the board is dropped. */
function upsert(task: Task): void {
  const known = state.tasks.get(task.id);
  if (known && known.version >= task.version) return;
  if (task.boardId !== state.board?.id) state.tasks.delete(task.id);
  else state.tasks.set(task.id, task);
}

function applyBoardActivity(a: Activity): void {
  switch (a.type) {
    case 'task.created':
    case 'task.updated':
    case 'task.assigned':
      upsert(a.data.task);
      renderBoard(a.type === 'task.created' ? a.data.task.id : undefined);
      announce(`${memberName(a.actorUserId)}: ${a.type.replace('task.', '')} “${a.data.task.title}”`);
      if (state.openTask === a.data.task.id) fillTask(a.data.task);
      break;
    case 'task.deleted':
      state.tasks.delete(a.data.taskId);
      renderBoard();
      if (state.openTask === a.data.taskId) closeTask();
      break;
    default:
      break;
  }
}

function renderBoard(fresh?: string): void {
  const columns = $('columns');
  if (!state.board) {
    columns.replaceChildren();
    return;
  }
  const byStatus = new Map<TaskStatus, Task[]>(STATUSES.map((s) => [s.id, []]));
  for (const t of state.tasks.values()) byStatus.get(t.status)?.push(t);
  columns.replaceChildren(
    ...STATUSES.map((s, i) => {
      const tasks = (byStatus.get(s.id) ?? []).sort((a, b) => a.position - b.position || a.createdAt.localeCompare(b.createdAt));
      const headingId = `col-${s.id}`;
      return h(
        'section',
        { class: 'column', 'aria-labelledby': headingId, 'data-status': s.id },
        h('h2', { id: headingId }, s.label, h('span', { 'aria-label': `${tasks.length} tasks` }, String(tasks.length))),
        h('ul', {}, ...tasks.map((t) => card(t, i, t.id === fresh))),
      );
    }),
  );
}

function card(t: Task, column: number, fresh: boolean): HTMLLIElement {
  const open = h('button', { type: 'button', class: 'open' }, t.title);
  open.addEventListener('click', guarded(() => openTask(t.id)));
  const moves = h('div', { class: 'moves' });
  for (const step of [-1, 1]) {
    const target = STATUSES[column + step];
    if (!target) continue;
    const b = h('button', { type: 'button', 'aria-label': `Move “${t.title}” to ${target.label}` }, step < 0 ? `← ${target.label}` : `${target.label} →`);
    b.addEventListener('click', guarded(async () => {
      await session().updateTask(t.id, { status: target.id }, { ifMatch: t.version }).then((r) => upsert(r.data));
      renderBoard();
    }));
    moves.append(b);
  }
  return h(
    'li',
    { class: fresh ? 'card fresh' : 'card', 'data-task-id': t.id },
    open,
    h('div', { class: 'meta' },
      h('span', {}, memberName(t.assigneeUserId)),
      t.priority === 'none' ? '' : h('span', { class: `prio-${t.priority}` }, t.priority),
      t.dueDate ? h('span', {}, `due ${t.dueDate}`) : ''),
    moves,
  );
}

// ------------------------------------------------------------------ one task: edit, comments, presence

function renderAssignees(): void {
  const s = form('task-edit').elements.namedItem('assigneeUserId') as HTMLSelectElement;
  const current = s.value;
  s.replaceChildren(
    h('option', { value: '' }, 'unassigned'),
    ...state.members.map((m) => h('option', { value: m.user.id }, m.user.displayName)),
  );
  s.value = current;
}

function fillTask(t: Task): void {
  const f = form('task-edit');
  const set = (name: string, value: string) => {
    (f.elements.namedItem(name) as HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement).value = value;
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

async function openTask(taskId: string): Promise<void> {
  closeTask();
  const { data: task, seq } = await session().getTask(taskId);
  upsert(task);
  state.openTask = taskId;
  fillTask(task);
  $('comments').replaceChildren();
  $('task-panel').hidden = false;
  $('workspace').classList.add('with-panel');
  const { items, seq: commentsSeq } = await allPages((cursor) =>
    session().listComments(taskId, { limit: PAGE, ...(cursor ? { cursor } : {}) }),
  );
  if (state.openTask !== taskId) return;
  const seen = new Set<string>();
  for (const c of items) addComment(c, seen);
  const since = Math.min(seq ?? 0, commentsSeq ?? 0);
  const sub = state.rt!.subscribe(
    { taskId },
    {
      on: {
        'comment.created': (a) => addComment(a.data.comment, seen),
        'comment.updated': (a) => addComment(a.data.comment, seen),
        'comment.deleted': (a) => document.getElementById(`comment-${a.data.commentId}`)?.remove(),
      },
      onGap: () => guarded(() => openTask(taskId))(),
      onError: () => closeTask(),
    },
    since > 0 ? { since } : {},
  );
  state.taskSub = sub;
  sub.presence?.onChange((viewers) => {
    $('viewers').replaceChildren(...viewers.map((v) => h('span', { class: 'viewer' }, v.displayName)));
  });
}

function addComment(c: Comment, seen: Set<string>): void {
  const body = h('div', {}, c.body);
  const by = h('div', { class: 'by' }, `${memberName(c.authorUserId)} · ${new Date(c.createdAt).toLocaleString()}${c.editedAt ? ' · edited' : ''}`);
  const existing = document.getElementById(`comment-${c.id}`);
  if (existing) existing.replaceChildren(by, body);
  else $('comments').append(h('li', { id: `comment-${c.id}` }, by, body));
  seen.add(c.id);
}

function closeTask(): void {
  state.taskSub?.unsubscribe();
  state.taskSub = null;
  state.openTask = null;
  $('task-panel').hidden = true;
  $('viewers').replaceChildren();
  $('workspace').classList.remove('with-panel');
}

// ------------------------------------------------------------------ wiring

function on(id: string, handler: (f: HTMLFormElement) => Promise<void>): void {
  const f = form(id);
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    guarded(handler)(f);
  });
}

function init(): void {
  const statusSelect = form('task-edit').elements.namedItem('status') as HTMLSelectElement;
  statusSelect.replaceChildren(...STATUSES.map((s) => h('option', { value: s.id }, s.label)));
  const prioSelect = form('task-edit').elements.namedItem('priority') as HTMLSelectElement;
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
    if (!state.team) throw new Error('pick a team first');
    const { data: board } = await session().createBoard(state.team.id, field(f, 'name'));
    f.reset();
    await loadBoards();
    await openBoard(state.boards.find((b) => b.id === board.id) ?? null);
  });
  on('member-form', async (f) => {
    if (!state.team) throw new Error('pick a team first');
    const role = field(f, 'role') as Exclude<Role, 'owner'>;
    await session().addMember(state.team.id, { email: field(f, 'email'), role });
    f.reset();
    await loadMembers();
  });
  on('task-form', async (f) => {
    if (!state.team || !state.board) throw new Error('pick a board first');
    const { data } = await session().createTask(state.team.id, { title: field(f, 'title'), boardId: state.board.id });
    f.reset();
    upsert(data);
    renderBoard(data.id);
  });
  on('task-edit', async (f) => {
    const id = state.openTask;
    if (!id) return;
    const assignee = field(f, 'assigneeUserId');
    const patch = {
      title: field(f, 'title'),
      description: field(f, 'description'),
      status: field(f, 'status') as TaskStatus,
      priority: field(f, 'priority') as Priority,
      assigneeUserId: assignee === '' ? null : assignee,
    };
    const { data } = await session().updateTask(id, patch, { ifMatch: Number(f.dataset.version) });
    upsert(data);
    fillTask(data);
    renderBoard();
  });
  $('task-delete').addEventListener('click', guarded(async () => {
    const id = state.openTask;
    if (!id || !confirm('Delete this task?')) return;
    await session().deleteTask(id);
    state.tasks.delete(id);
    closeTask();
    renderBoard();
  }));
  $('task-close').addEventListener('click', () => closeTask());
  on('comment-form', async (f) => {
    if (!state.openTask) return;
    await session().createComment(state.openTask, field(f, 'body'));
    f.reset();
  });
  addEventListener('online', () => state.rt?.reconnect());
  void resume();
}

init();
