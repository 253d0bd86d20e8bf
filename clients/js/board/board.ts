// The live board that `taskforge serve` serves at `/`: log in or sign up, pick a team and a
// board, see its tasks in columns by status, create / edit / move / assign tasks, comment, and see
// everyone's changes and who is looking at a task as they happen. The bell in the header is the
// user's inbox (`rt.inbox()`): notifications of mentions, assignments and followed tasks, live;
// typing `@` in a comment or a description offers the team's members and writes the mention markup.
// Cards show their labels as colored chips; the task panel toggles the team's labels on the task
// and creates new ones; the filter bar (words, labels, assignee, priority, due days) narrows the
// columns to a filtered live collection, so a task someone else edits into or out of the filter
// appears or disappears as it happens.
//
// It is built on this package (`../src`), compiled by `npm run build:board` into the server's
// `web/assets/` and embedded in the binary. What it must never do: keep state the server does not
// confirm, or put a token in a URL (the socket authenticates with its first message; where
// WebSockets are blocked the client falls back to the event stream, read over `fetch` with the
// token in a header).
//
// Its data are the package's live collections: the columns render from `rt.liveTasks` snapshots,
// the open task's comments from `rt.liveComments`, the member list from `rt.liveMembers`. They
// load every page, then follow the activity stream, and reload by themselves after a gap, so the
// board keeps no task map of its own. A change made here goes over HTTP and shows when its
// activity comes back through the collection (milliseconds later); the one exception is the open
// task's form, which takes the PATCH answer at once if its version is newer than what it shows.
//
// The open task's panel shows what the others there are doing ("Ann is editing the description",
// from presence state: this page tells the server when a field of the task gets the focus, while
// keys are pressed in it, and when it loses it). A change someone else saved while this user was
// editing the title or the description is never overwritten silently: saving asks first.

import {
  ApiError,
  RealtimeClient,
  Session,
  formatMention,
  isAuthFailure,
  parseMentions,
  searchWords,
  tabRefreshCoordinator,
  type Activity,
  type Inbox,
  type InboxSnapshot,
  type Notification,
  type NotificationReason,
  type AuthResponse,
  type Board,
  type Comment,
  type Label,
  type LiveCollection,
  type LiveSnapshot,
  type Member,
  type Page,
  type PresenceField,
  type PresenceViewer,
  type Priority,
  type Role,
  type SessionOptions,
  type Subscription,
  type Task,
  type TaskFilter,
  type TaskPatch,
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

/**
 * The open task: the handles it holds. Each open makes a new one and the next open (or a close)
 * releases it, so every callback checks `state.view === view` before it touches the panel: a late
 * answer for a task no longer open is dropped, never shown in another task's panel.
 */
interface TaskView {
  readonly taskId: string;
  /** The task room, for presence (it shares the room with the comments collection). */
  sub: Subscription | null;
  comments: LiveCollection<Comment> | null;
  /** Listener removals. */
  readonly stops: (() => void)[];
  /** The version the form shows: older copies (a late PATCH answer) never replace it. */
  shownVersion: number;
  /** The task as the form was filled: what the user's edits are measured against. */
  base: Task | null;
  /** A newer version that arrived while the user was editing (not put in the form). */
  latest: Task | null;
  /** Who saved the newest change after `base` (from the task room's activities). */
  changedBy: string | null;
  /** Labels this user created from the panel, to be ticked once the team's list shows them. */
  readonly pendingLabels: Set<string>;
}

interface State {
  session: Session | null;
  rt: RealtimeClient | null;
  teams: { team: Team; role: Role }[];
  team: Team | null;
  boards: Board[];
  board: Board | null;
  teamSub: Subscription | null;
  members: LiveCollection<Member> | null;
  tasks: LiveCollection<Task> | null;
  /** The team's labels. */
  labels: LiveCollection<Label> | null;
  /** The board's tasks that match the filter bar, while it filters (the columns show these). */
  filtered: LiveCollection<Task> | null;
  /** The filter `filtered` was opened with (JSON); null before a board is open. */
  filterKey: string | null;
  /** Listener removals of `members`, `tasks`, `labels` and `filtered`. */
  stopMembers: (() => void) | null;
  stopTasks: (() => void) | null;
  stopLabels: (() => void) | null;
  stopFiltered: (() => void) | null;
  /** The ids and statuses the columns showed last (null before the first render of a board). */
  shown: Map<string, TaskStatus> | null;
  view: TaskView | null;
  inbox: Inbox | null;
  stopInbox: (() => void) | null;
  /** The unread count the bell showed last (null before the first render). */
  shownUnread: number | null;
}

const state: State = {
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

/**
 * One per page. Duplicating a tab copies its sessionStorage, so two tabs can hold one refresh
 * token; refresh tokens rotate and presenting a spent one revokes the login in both. The
 * coordinator lets one tab's refresh serve the other (a lock shared by the origin's tabs, and an
 * announcement of each rotation that the other tab's Session adopts).
 */
const coordinator = tabRefreshCoordinator('taskforge-board-auth');

function session(): Session {
  if (!state.session) throw new Error('not logged in');
  return state.session;
}

function memberName(userId: string | null | undefined): string {
  if (!userId) return 'unassigned';
  const members = state.members;
  if (!members) return '…';
  const m = members.get(userId);
  if (m) return m.user.displayName;
  return members.getSnapshot().status === 'loading' ? '…' : 'former member';
}

// ------------------------------------------------------------------ auth

/** Persists the refresh token of the current login: every rotation, from this tab or another. */
function storeTokens(auth: AuthResponse): void {
  // A late rotation of a session already ended (logged out, replaced) must not come back.
  if (state.session && state.session.refreshToken === auth.refreshToken) {
    sessionStorage.setItem(REFRESH_KEY, auth.refreshToken);
  }
}

function sessionOptions(): SessionOptions {
  return { coordinator, onTokens: storeTokens };
}

async function start(s: Session): Promise<void> {
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
  openInbox(rt);
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
  closeTask();
  closeBoard();
  closeTeam();
  closeInbox();
  state.rt?.close();
  s?.close();
  Object.assign(state, { session: null, rt: null, teams: [], team: null, boards: [], board: null });
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
  let s: Session;
  try {
    // Through the coordinator: a duplicated tab resuming from the same copied token does not
    // spend it a second time.
    s = await Session.resume(location.origin, token, sessionOptions());
  } catch (e) {
    if (isAuthFailure(e)) sessionStorage.removeItem(REFRESH_KEY);
    else notice(`Could not resume your session (${describe(e)}): reload to try again.`);
    return;
  }
  await start(s);
}

// ------------------------------------------------------------------ teams, boards, members

/** Reloads the user's teams and opens `prefer` (by default the open one) or else the first. */
async function loadTeams(prefer: string | undefined = state.team?.id): Promise<void> {
  const s = session();
  const me = await s.me();
  if (state.session !== s) return; // logged out meanwhile
  state.teams = me.data.teams;
  const ts = select('team-select');
  ts.replaceChildren(...state.teams.map((t) => h('option', { value: t.team.id }, t.team.name)));
  $('no-team').hidden = state.teams.length > 0;
  const next = (state.teams.find((t) => t.team.id === prefer) ?? state.teams[0])?.team ?? null;
  if (next?.id !== state.team?.id) await openTeam(next);
  else ts.value = next?.id ?? '';
}

function closeTeam(): void {
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

async function openTeam(team: Team | null): Promise<void> {
  closeBoard();
  closeTeam();
  state.team = team;
  state.boards = [];
  $('member-list').textContent = '';
  if (!team) {
    openBoard(null);
    return;
  }
  const rt = state.rt!;
  select('team-select').value = team.id;
  // Boards are few and change rarely: reloaded on their activities.
  state.teamSub = rt.subscribe(
    { teamId: team.id },
    {
      on: {
        'board.created': () => guarded(loadBoards)(),
        'board.updated': () => guarded(loadBoards)(),
        'board.deleted': () => guarded(loadBoards)(),
        'team.updated': () => guarded(() => loadTeams())(),
      },
      onGap: () => guarded(loadBoards)(),
      onError: () => guarded(() => loadTeams())(),
    },
  );
  const members = rt.liveMembers({ teamId: team.id });
  state.members = members;
  state.stopMembers = members.subscribe((s) => {
    if (state.members === members) renderMembers(s);
  });
  renderMembers(members.getSnapshot());
  const labels = rt.liveLabels({ teamId: team.id });
  state.labels = labels;
  state.stopLabels = labels.subscribe((s) => {
    if (state.labels === labels) renderLabels(s);
  });
  // Another team's labels and members mean nothing here.
  form('filter-bar').reset();
  renderLabels(labels.getSnapshot());
  await loadBoards();
}

function renderMembers(s: LiveSnapshot<Member>): void {
  if (s.status === 'error') notice(`Members could not be loaded: ${describe(s.error)}`);
  $('member-list').textContent = s.items.map((m) => `${m.user.displayName} (${m.role})`).join(', ');
  renderAssignees(s.items);
  // Cards name their assignees.
  renderBoard();
}

async function loadBoards(): Promise<void> {
  const team = state.team;
  if (!team) return;
  const { items } = await allPages((cursor) => session().listBoards(team.id, { limit: PAGE, ...(cursor ? { cursor } : {}) }));
  if (state.team?.id !== team.id) return; // another team was picked meanwhile
  state.boards = items;
  const bs = select('board-select');
  bs.replaceChildren(...items.map((b) => h('option', { value: b.id }, b.name)));
  const keep = items.find((b) => b.id === state.board?.id);
  const next = keep ?? items.find((b) => b.id === team.defaultBoardId) ?? items[0] ?? null;
  if (next?.id !== state.board?.id) openBoard(next);
  else bs.value = next?.id ?? '';
}

// ------------------------------------------------------------------ the board

function closeBoard(): void {
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

function openBoard(board: Board | null): void {
  closeBoard();
  state.board = board;
  $('board').hidden = !board;
  if (!board || !state.team) {
    $('columns').replaceChildren();
    return;
  }
  select('board-select').value = board.id;
  const tasks = state.rt!.liveTasks({ teamId: state.team.id, boardId: board.id });
  state.tasks = tasks;
  state.stopTasks = tasks.subscribe(() => {
    if (state.tasks !== tasks) return;
    renderBoard();
    followOpenTask();
  });
  applyFilter();
  renderBoard();
}

/** The columns: the board's tasks, or those matching the filter bar while it filters. */
function renderBoard(): void {
  const shown = state.filtered ?? state.tasks;
  if (!shown) return;
  const s = shown.getSnapshot();
  renderFilterStatus(s);
  const columns = $('columns');
  // Loading, or reloading after a gap: the columns show what they had until the reload is in.
  $('board').dataset.live = s.status;
  columns.setAttribute('aria-busy', String(s.status === 'loading' || s.status === 'refetching'));
  if (s.status === 'error') notice(`Tasks could not be loaded: ${describe(s.error)} (retrying)`);
  if (s.status === 'loading' && s.items.length === 0) {
    columns.replaceChildren();
    return;
  }
  const before = state.shown;
  const byStatus = new Map<TaskStatus, Task[]>(STATUSES.map((st) => [st.id, []]));
  // Already sorted by the collection (position, then createdAt, then id).
  for (const t of s.items) byStatus.get(t.status)?.push(t);
  columns.replaceChildren(
    ...STATUSES.map((st, i) => {
      const tasks = byStatus.get(st.id) ?? [];
      const headingId = `col-${st.id}`;
      return h(
        'section',
        { class: 'column', 'aria-labelledby': headingId, 'data-status': st.id },
        h('h2', { id: headingId }, st.label, h('span', { 'aria-label': `${tasks.length} tasks` }, String(tasks.length))),
        h('ul', {}, ...tasks.map((t) => card(t, i, before !== null && !before.has(t.id)))),
      );
    }),
  );
  state.shown = new Map(s.items.map((t) => [t.id, t.status]));
  if (before) announceChanges(before, s.items);
}

/** Tells screen readers what changed since the last render. */
function announceChanges(before: Map<string, TaskStatus>, items: readonly Task[]): void {
  const said: string[] = [];
  const label = (st: TaskStatus) => STATUSES.find((x) => x.id === st)?.label ?? st;
  for (const t of items) {
    const was = before.get(t.id);
    if (was === undefined) said.push(`added “${t.title}”`);
    else if (was !== t.status) said.push(`“${t.title}” moved to ${label(t.status)}`);
  }
  const now = new Set(items.map((t) => t.id));
  const removed = [...before.keys()].filter((id) => !now.has(id)).length;
  if (removed > 0) said.push(`${removed} task${removed > 1 ? 's' : ''} removed`);
  if (said.length > 0) announce(said.slice(0, 5).join('; '));
}

// ------------------------------------------------------------------ labels and the filter bar

/** WCAG relative luminance of `#rrggbb`. */
function luminance(color: string): number {
  const n = /^#[0-9a-f]{6}$/i.test(color) ? parseInt(color.slice(1), 16) : 0xe3ebff;
  const lin = (c: number) => {
    const v = c / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin((n >> 16) & 255) + 0.7152 * lin((n >> 8) & 255) + 0.0722 * lin(n & 255);
}

const DARK_INK = '#1d2330';

/** The page's dark text or white on a label's color, whichever contrasts more. */
function inkFor(color: string): string {
  const l = luminance(color);
  return (l + 0.05) / (luminance(DARK_INK) + 0.05) >= 1.05 / (l + 0.05) ? DARK_INK : '#ffffff';
}

/** A label as a colored chip. The color goes through the CSSOM: the page's CSP allows no inline style. */
function chip<K extends 'li' | 'span'>(tag: K, l: Label): HTMLElementTagNameMap[K] {
  const el = h(tag, { class: 'chip', 'data-label-id': l.id }, l.name);
  el.style.setProperty('--label-color', l.color);
  el.style.setProperty('--label-ink', inkFor(l.color));
  return el;
}

/** A checkbox per label of the team, shown as its chip. */
function labelPicks(name: string, checked: ReadonlySet<string>): HTMLLabelElement[] {
  return (state.labels?.getSnapshot().items ?? []).map((l) => {
    const box = h('input', { type: 'checkbox', name, value: l.id });
    box.checked = checked.has(l.id);
    return h('label', { class: 'label-pick' }, box, chip('span', l));
  });
}

/** Whether the team's (loaded) labels no longer have this one: deleted. */
function labelGone(id: string): boolean {
  const labels = state.labels;
  if (!labels) return false;
  const st = labels.getSnapshot().status;
  return (st === 'live' || st === 'refetching') && labels.get(id) === undefined;
}

function checkedValues(container: HTMLElement, name: string): string[] {
  return Array.from(container.querySelectorAll<HTMLInputElement>(`input[type=checkbox][name="${name}"]`))
    .filter((b) => b.checked)
    .map((b) => b.value);
}

function renderLabels(s: LiveSnapshot<Label>): void {
  if (s.status === 'error') notice(`Labels could not be loaded: ${describe(s.error)}`);
  // The filter bar's picks keep what was ticked (a deleted label drops out of the filter).
  const bar = $('filter-labels');
  const ticked = new Set(checkedValues(bar, 'labelId'));
  bar.querySelectorAll('.label-pick, .none').forEach((el) => el.remove());
  const picks = labelPicks('labelId', ticked);
  bar.append(...(picks.length > 0 ? picks : [h('span', { class: 'muted none' }, 'No labels yet')]));
  const view = state.view;
  if (view) renderTaskLabels(view, new Set([...formLabelIds(view), ...view.pendingLabels]));
  applyFilter();
  // Cards show the labels' names and colors.
  renderBoard();
}

/** The filter bar as a task filter; empty when it filters nothing. */
function readFilter(): TaskFilter {
  const f = form('filter-bar');
  const out: TaskFilter = {};
  const q = field(f, 'q').trim();
  // A text without words would filter nothing: left out.
  if (searchWords(q).length > 0) out.q = Array.from(q).slice(0, 200).join('');
  const assignee = field(f, 'assigneeUserId');
  if (assignee) out.assigneeUserId = assignee;
  const priority = field(f, 'priority');
  if (priority) out.priority = priority as Priority;
  const after = field(f, 'dueAfter');
  const before = field(f, 'dueBefore');
  // A range that ends before it starts holds no day (the server refuses it): said at the field.
  const afterInput = f.elements.namedItem('dueAfter') as HTMLInputElement;
  const empty = after !== '' && before !== '' && after > before;
  afterInput.setCustomValidity(empty ? 'Due after must not be later than due before' : '');
  if (empty) afterInput.reportValidity();
  else {
    if (after) out.dueAfter = after;
    if (before) out.dueBefore = before;
  }
  const labels = checkedValues($('filter-labels'), 'labelId').filter((id) => !labelGone(id));
  if (labels.length > 0) out.labelId = labels.slice(0, 20);
  return out;
}

function closeFiltered(): void {
  state.stopFiltered?.();
  state.stopFiltered = null;
  state.filtered?.close();
  state.filtered = null;
}

/** Opens the filtered collection the filter bar asks for (or none), if that changed. */
function applyFilter(): void {
  const team = state.team;
  const board = state.board;
  if (!team || !board || !state.rt || !state.tasks) return;
  const filter = readFilter();
  const key = JSON.stringify(filter);
  if (key === state.filterKey) return;
  state.filterKey = key;
  closeFiltered();
  if (Object.keys(filter).length > 0) {
    const filtered = state.rt.liveTasks({ teamId: team.id, boardId: board.id, filter });
    state.filtered = filtered;
    state.stopFiltered = filtered.subscribe(() => {
      if (state.filtered === filtered) renderBoard();
    });
  }
  // Another filter is not a change on the board: nothing to announce, no card to flash.
  state.shown = null;
  renderBoard();
}

function renderFilterStatus(s: LiveSnapshot<Task>): void {
  const el = $('filter-status');
  if (!state.filtered) {
    el.textContent = '';
    return;
  }
  const total = state.tasks?.getSnapshot().items.length ?? 0;
  const text = s.status === 'loading' ? 'Filtering…' : `Showing ${s.items.length} of ${total} task${total === 1 ? '' : 's'}`;
  // A live region: only a change of what it says is announced.
  if (el.textContent !== text) el.textContent = text;
}

function card(t: Task, column: number, fresh: boolean): HTMLLIElement {
  const open = h('button', { type: 'button', class: 'open' }, t.title);
  open.addEventListener('click', guarded(async () => openTask(t.id)));
  const moves = h('div', { class: 'moves' });
  for (const step of [-1, 1]) {
    const target = STATUSES[column + step];
    if (!target) continue;
    const b = h('button', { type: 'button', 'aria-label': `Move “${t.title}” to ${target.label}` }, step < 0 ? `← ${target.label}` : `${target.label} →`);
    // The card moves when the activity comes back through the collection.
    b.addEventListener('click', guarded(async () => {
      await session().updateTask(t.id, { status: target.id }, { ifMatch: t.version });
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
    cardLabels(t),
    moves,
  );
}

function cardLabels(t: Task): HTMLUListElement | string {
  const labels = (t.labelIds ?? []).map((id) => state.labels?.get(id)).filter((l): l is Label => l !== undefined);
  if (labels.length === 0) return '';
  return h('ul', { class: 'chips', 'aria-label': 'Labels' }, ...labels.map((l) => chip('li', l)));
}

// ------------------------------------------------------------------ one task: edit, comments, presence

function renderAssignees(members: readonly Member[]): void {
  const s = form('task-edit').elements.namedItem('assigneeUserId') as HTMLSelectElement;
  const current = s.value;
  s.replaceChildren(
    h('option', { value: '' }, 'unassigned'),
    ...members.map((m) => h('option', { value: m.user.id }, m.user.displayName)),
  );
  s.value = current;
  const bar = form('filter-bar').elements.namedItem('assigneeUserId') as HTMLSelectElement;
  const filtering = bar.value;
  bar.replaceChildren(
    h('option', { value: '' }, 'Anyone'),
    h('option', { value: 'none' }, 'Unassigned'),
    ...members.map((m) => h('option', { value: m.user.id }, m.user.displayName)),
  );
  bar.value = filtering;
  // A member who left: the filter falls back to anyone.
  if (bar.value !== filtering) applyFilter();
}

function fillTask(view: TaskView, t: Task): void {
  const f = form('task-edit');
  const set = (name: string, value: string) => {
    (f.elements.namedItem(name) as HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement).value = value;
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

type EditField = 'title' | 'description' | 'status' | 'priority' | 'assigneeUserId';
const EDIT_FIELDS: EditField[] = ['title', 'description', 'status', 'priority', 'assigneeUserId'];

/** The form's value of a task field, as the task holds it. */
function formValue(name: EditField): string | null {
  const v = field(form('task-edit'), name);
  return name === 'assigneeUserId' && v === '' ? null : v;
}

type Edits = Partial<Record<EditField, string | null>> & { labelIds?: string[] };

/** The fields the user changed since the form was filled, with their new values. */
function edits(view: TaskView): Edits {
  const base = view.base;
  const out: Edits = {};
  if (!base) return out;
  for (const name of EDIT_FIELDS) {
    const now = formValue(name);
    const was = name === 'assigneeUserId' ? (base.assigneeUserId ?? null) : base[name];
    if (now !== was) out[name] = now;
  }
  const labels = formLabelIds(view);
  if (labels.join() !== baseLabelIds(view).join()) out.labelIds = labels;
  return out;
}

/** The task's labels as the form was filled, less those deleted since (a deletion moves no version). */
function baseLabelIds(view: TaskView): string[] {
  return (view.base?.labelIds ?? []).filter((id) => !labelGone(id)).sort();
}

/** The labels ticked in the panel, and those of the task it cannot show yet (labels loading). */
function formLabelIds(view: TaskView): string[] {
  const list = $('task-label-list');
  const shown = new Set(Array.from(list.querySelectorAll<HTMLInputElement>('input[name=labelIds]'), (b) => b.value));
  const kept = (view.base?.labelIds ?? []).filter((id) => !shown.has(id) && !labelGone(id));
  return [...new Set([...checkedValues(list, 'labelIds'), ...kept])].sort();
}

/** The panel's label picks, ticked as `checked` says; a label created here is ticked once shown. */
function renderTaskLabels(view: TaskView, checked: ReadonlySet<string>): void {
  if (state.view !== view) return;
  const picks = labelPicks('labelIds', checked);
  for (const p of picks) {
    const id = p.querySelector('input')!.value;
    view.pendingLabels.delete(id);
  }
  $('task-label-list').replaceChildren(...(picks.length > 0 ? picks : [h('span', { class: 'muted' }, 'None yet: create one')]));
}

/**
 * The label set to save on top of `newest`: what the user ticked and unticked since the form was
 * filled, applied to the newest labels, so that a label someone else added meanwhile stays.
 */
function mergedLabels(view: TaskView, newest: Task, now: string[]): string[] {
  const was = new Set(baseLabelIds(view));
  const want = new Set(now);
  const out = new Set((newest.labelIds ?? []).filter((id) => !labelGone(id) && !(was.has(id) && !want.has(id))));
  for (const id of want) if (!was.has(id)) out.add(id);
  return [...out].sort();
}

/** The newest copy of the open task this page knows. */
function newestTask(view: TaskView): Task | null {
  let t: Task | null = view.base;
  for (const c of [view.latest, state.tasks?.get(view.taskId) ?? null]) {
    if (c && (!t || c.version > t.version)) t = c;
  }
  return t;
}

function whoChanged(view: TaskView): string {
  const id = view.changedBy;
  if (!id) return 'Someone';
  if (id === state.session?.user.id) return 'You (in another window)';
  return memberName(id);
}

/** Asks before a save would overwrite someone else's change: overwrite, or reload the task. */
function showConflict(view: TaskView, latest: Task): void {
  if (state.view !== view) return;
  view.latest = latest;
  $('conflict-text').textContent = `${whoChanged(view)} changed this task since you opened it (now version ${latest.version}): overwrite their change with yours, or reload it?`;
  $('conflict').hidden = false;
  ($('conflict-overwrite') as HTMLButtonElement).focus();
}

/**
 * Saves what the user changed (only those fields). If the task moved on since the form was filled
 * and the title or the description was edited, asks first (unless `overwrite`); other fields go
 * on top of the newest version. A stale If-Match (someone saved in between) reads the task again
 * and decides again, once.
 */
async function saveTask(view: TaskView, overwrite: boolean, retried = false): Promise<void> {
  const patch = edits(view);
  if (Object.keys(patch).length === 0) return;
  const base = view.base!;
  const newest = newestTask(view) ?? base;
  const moved = newest.version > base.version;
  const text = 'title' in patch || 'description' in patch;
  if (moved && text && !overwrite) return showConflict(view, newest);
  const body: TaskPatch = { ...(patch as TaskPatch) };
  if (patch.labelIds) body.labelIds = mergedLabels(view, newest, patch.labelIds);
  try {
    const { data } = await session().updateTask(view.taskId, body, { ifMatch: newest.version });
    // Version-checked: the activity of a later change may have filled the form already.
    if (state.view === view && data.version > view.shownVersion) fillTask(view, data);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 412) || retried) throw e;
    const { data: now } = await session().getTask(view.taskId);
    if (state.view !== view) return;
    if (now.version > (view.latest?.version ?? -1)) view.latest = now;
    if (text) return showConflict(view, now);
    await saveTask(view, overwrite, true);
  }
}

/** Keeps the open task's form on the newest version; closes it when the task left the board. */
function followOpenTask(): void {
  const view = state.view;
  const tasks = state.tasks;
  if (!view || !tasks) return;
  const t = tasks.get(view.taskId);
  if (t) {
    if (t.version <= view.shownVersion) return;
    if (Object.keys(edits(view)).length === 0) {
      fillTask(view, t);
    } else if (t.version > (view.latest?.version ?? -1)) {
      // The user is editing: their draft stays; saving compares it with this.
      view.latest = t;
      $('task-version').textContent = `version ${view.shownVersion} (changed since: version ${t.version})`;
    }
    return;
  }
  const status = tasks.getSnapshot().status;
  // Gone from a loaded collection: deleted, or moved to another board.
  if (status === 'live' || status === 'refetching') closeTask();
}

/**
 * Opens a task: synchronous, so that nothing of it can outlive the next open. The previous task's
 * handles are released first; a late callback of any of them finds another view and does nothing.
 */
function openTask(taskId: string): void {
  closeTask();
  const rt = state.rt;
  const task = state.tasks?.get(taskId);
  if (!rt || !task) throw new Error('That task is no longer on this board.');
  const view: TaskView = {
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

  // Looking at the task is being in its room: that is what others see as presence.
  const sub = rt.subscribe(
    { taskId },
    {
      onError: (e) => {
        if (!current()) return;
        closeTask();
        notice(describe(e));
      },
      onActivity: (a) => {
        // Who saved the newest change: what the warning before an overwrite names.
        if (!current() || (a.type !== 'task.updated' && a.type !== 'task.assigned')) return;
        if (a.data.task.id === taskId && view.base && a.data.task.version > view.base.version) view.changedBy = a.actorUserId;
      },
    },
  );
  view.sub = sub;
  const presence = sub.presence;
  if (presence) {
    view.stops.push(presence.onChange((viewers) => {
      if (current()) renderViewers(viewers);
    }));
    renderViewers(presence.viewers);
  }

  const comments = rt.liveComments({ taskId });
  view.comments = comments;
  view.stops.push(comments.subscribe((s) => {
    if (current()) renderComments(view, s);
  }));
  renderComments(view, comments.getSnapshot());
}

const FIELD_NAMES: Record<PresenceField, string> = { title: 'the title', description: 'the description', comment: 'a comment' };

/** "Ann is editing the description", "Bea is typing a comment". */
function doing(v: PresenceViewer): string | null {
  if (v.state === 'viewing' || !v.field) return null;
  if (v.field === 'comment') return `${v.displayName} is ${v.state === 'typing' ? 'typing' : 'writing'} a comment`;
  return `${v.displayName} is ${v.state === 'typing' ? 'typing in' : 'editing'} ${FIELD_NAMES[v.field]}`;
}

function renderViewers(viewers: readonly PresenceViewer[]): void {
  $('viewers').replaceChildren(
    ...viewers.map((v) => h('span', { class: 'viewer', 'data-user-id': v.userId, 'data-state': v.state }, v.displayName)),
  );
  const me = state.session?.user.id;
  const lines = viewers.filter((v) => v.userId !== me).map(doing).filter((x): x is string => x !== null);
  $('activity').textContent = lines.join('; ');
}

function renderComments(view: TaskView, s: LiveSnapshot<Comment>): void {
  if (s.status === 'closed') {
    // The task was deleted (its comments collection ends with it).
    closeTask();
    return;
  }
  if (s.status === 'error') notice(`Comments could not be loaded: ${describe(s.error)}`);
  const list = $('comments');
  list.dataset.live = s.status;
  list.dataset.taskId = view.taskId;
  list.replaceChildren(...s.items.map(commentItem));
}

/** A text with each mention shown as `@Name` (the member's current name when known). */
function withMentions(text: string): (Node | string)[] {
  return parseMentions(text).map((p) => {
    if (p.kind === 'text') return p.text;
    const name = state.members?.get(p.userId)?.user.displayName ?? p.name;
    return h('span', { class: 'mention', 'data-user-id': p.userId }, `@${name}`);
  });
}

function commentItem(c: Comment): HTMLLIElement {
  const body = h('div', { class: 'body' }, ...withMentions(c.body));
  const by = h('div', { class: 'by' }, `${memberName(c.authorUserId)} · ${new Date(c.createdAt).toLocaleString()}${c.editedAt ? ' · edited' : ''}`);
  return h('li', { id: `comment-${c.id}` }, by, body);
}

/** Releases every handle of the open task and hides its panel. */
function closeTask(): void {
  const view = state.view;
  state.view = null;
  if (view) {
    for (const stop of view.stops) stop();
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

// ------------------------------------------------------------------ the inbox (the bell)

const REASONS: Record<NotificationReason, string> = {
  assigned: 'assigned you',
  mentioned: 'mentioned you',
  commented: 'commented',
  status_changed: 'changed the status',
  task_deleted: 'deleted the task',
};

function openInbox(rt: RealtimeClient): void {
  closeInbox();
  const inbox = rt.inbox({ pageSize: 20 });
  state.inbox = inbox;
  state.stopInbox = inbox.subscribe((s) => {
    if (state.inbox === inbox) renderInbox(s);
  });
  renderInbox(inbox.getSnapshot());
}

function closeInbox(): void {
  state.stopInbox?.();
  state.stopInbox = null;
  state.inbox?.close();
  state.inbox = null;
  state.shownUnread = null;
  showInbox(false);
  $('inbox-list').replaceChildren();
}

function showInbox(open: boolean): void {
  $('inbox').hidden = !open;
  $('inbox-button').setAttribute('aria-expanded', String(open));
}

function renderInbox(s: InboxSnapshot): void {
  if (s.status === 'error') notice(`Notifications could not be loaded: ${describe(s.error)}`);
  const count = $('inbox-count');
  count.textContent = String(s.unreadCount);
  count.hidden = s.unreadCount === 0;
  const label = s.unreadCount === 0 ? 'Notifications' : `Notifications, ${s.unreadCount} unread`;
  $('inbox-button').setAttribute('aria-label', label);
  // Said once per change of the count, not on every render.
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
  const more = $('inbox-more') as HTMLButtonElement;
  more.hidden = !s.hasMore;
  more.disabled = s.loadingMore;
  ($('inbox-read-all') as HTMLButtonElement).disabled = s.unreadCount === 0;
}

function notificationItem(n: Notification): HTMLLIElement {
  const unread = n.readAt == null;
  const why = n.reasons.map((r) => REASONS[r as NotificationReason] ?? r).join(', ');
  const open = h(
    'button',
    { type: 'button', class: 'open-notification' },
    h('span', { class: 'what' }, h('strong', {}, n.actorDisplayName), ` ${why} · `, h('span', { class: 'task' }, n.taskTitle)),
    n.excerpt ? h('span', { class: 'excerpt' }, ...withMentions(n.excerpt)) : '',
    h('span', { class: 'when' }, new Date(n.createdAt).toLocaleString(), unread ? h('span', { class: 'visually-hidden' }, ' (unread)') : ''),
  );
  open.addEventListener('click', guarded(() => openNotification(n)));
  return h('li', { class: unread ? 'notification unread' : 'notification', 'data-id': n.id, 'data-seq': String(n.seq) }, open);
}

/** Marks the notification read and opens its task (on its team and board, wherever it is now). */
async function openNotification(n: Notification): Promise<void> {
  const inbox = state.inbox;
  // The bell's count follows the answer (and the stream); a failure shows as a notice.
  const marking = n.readAt == null && inbox ? inbox.markRead(n.id) : Promise.resolve();
  showInbox(false);
  if (n.reasons.includes('task_deleted')) {
    await marking;
    notice(`“${n.taskTitle}” was deleted.`);
    return;
  }
  let task: Task;
  try {
    task = (await session().getTask(n.taskId)).data;
  } catch (e) {
    await marking.catch(() => {});
    if (e instanceof ApiError && e.status === 404) throw new Error(`“${n.taskTitle}” no longer exists, or is not in a team of yours.`);
    throw e;
  }
  if (state.team?.id !== task.teamId) {
    // The team list may predate the membership: loadTeams opens the task's team if it is there.
    if (!state.teams.some((t) => t.team.id === task.teamId)) await loadTeams(task.teamId);
    const team = state.teams.find((t) => t.team.id === task.teamId)?.team;
    if (!team) throw new Error(`“${task.title}” is in a team you are not in.`);
    if (state.team?.id !== team.id) await openTeam(team);
  }
  if (state.board?.id !== task.boardId) {
    const board = state.boards.find((b) => b.id === task.boardId);
    if (!board) throw new Error(`The board of “${task.title}” is gone.`);
    openBoard(board);
  }
  const tasks = state.tasks;
  if (!tasks) throw new Error('That task is no longer on a board.');
  await tasks.ready;
  if (state.tasks === tasks) openTask(task.id);
  await marking;
}

// ------------------------------------------------------------------ mentions: `@` in a textarea

/** Members whose name matches what follows the `@`, the user aside, at most 8. */
function mentionCandidates(query: string): Member[] {
  const me = state.session?.user.id;
  const q = query.toLowerCase();
  const items = state.members?.getSnapshot().items ?? [];
  return items.filter((m) => m.user.id !== me && m.user.displayName.toLowerCase().includes(q)).slice(0, 8);
}

/**
 * Typing `@` (at the start or after a space) in `area` opens a list of the team's members under
 * it; Up/Down choose, Enter or Tab (or a click) insert the mention markup, Escape closes.
 */
function attachMentions(area: HTMLTextAreaElement, listId: string): void {
  const list = h('ul', { id: listId, class: 'mentions', role: 'listbox', 'aria-label': 'Mention a member' });
  list.hidden = true;
  (area.closest('label') ?? area).after(list);
  area.setAttribute('aria-autocomplete', 'list');
  area.setAttribute('aria-controls', listId);
  let matches: Member[] = [];
  let active = 0;
  /** Where the `@` is, while the list is open. */
  let at = -1;

  const close = () => {
    list.hidden = true;
    list.replaceChildren();
    matches = [];
    at = -1;
    area.removeAttribute('aria-activedescendant');
  };
  const render = () => {
    list.replaceChildren(
      ...matches.map((m, i) => {
        const li = h('li', { id: `${listId}-${i}`, role: 'option', 'aria-selected': String(i === active), 'data-user-id': m.user.id }, m.user.displayName);
        // Keep the focus (and the caret) in the textarea.
        li.addEventListener('mousedown', (ev) => ev.preventDefault());
        li.addEventListener('click', () => insert(i));
        return li;
      }),
    );
    list.hidden = false;
    area.setAttribute('aria-activedescendant', `${listId}-${active}`);
  };
  const update = () => {
    const caret = area.selectionStart ?? 0;
    if (caret !== area.selectionEnd) return close();
    const m = /(^|\s)@([^\s@\[\]()]{0,30})$/.exec(area.value.slice(0, caret));
    if (!m) return close();
    const found = mentionCandidates(m[2]!);
    if (found.length === 0) return close();
    const opened = at < 0;
    at = caret - m[2]!.length - 1;
    if (opened || matches.length !== found.length || found.some((f, i) => f.user.id !== matches[i]?.user.id)) active = 0;
    matches = found;
    render();
    if (opened) announce(`${found.length} member${found.length === 1 ? '' : 's'} to mention: up and down to choose, Enter to insert`);
  };
  const insert = (i: number) => {
    const m = matches[i];
    if (!m || at < 0) return close();
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
    if (list.hidden || matches.length === 0) return;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      active = (active + (ev.key === 'ArrowDown' ? 1 : matches.length - 1)) % matches.length;
      render();
    } else if (ev.key === 'Enter' || ev.key === 'Tab') {
      ev.preventDefault();
      insert(active);
    } else if (ev.key === 'Escape') {
      ev.preventDefault();
      close();
    }
  });
  area.addEventListener('keyup', (ev) => {
    if (ev.key === 'ArrowLeft' || ev.key === 'ArrowRight' || ev.key === 'Home' || ev.key === 'End') update();
  });
}

// ------------------------------------------------------------------ presence state: what this user does in the task

/** How long after the last key press `typing` goes back to `editing`. */
const TYPING_IDLE_MS = 3000;

/**
 * Tells the others in the open task what this user does with `el`: `editing` while it has the
 * focus, `typing` while keys are pressed (the client sends a state only when it changes, and
 * keeps it alive while it holds), `viewing` when the focus leaves the task's fields.
 */
function trackEditing(el: HTMLInputElement | HTMLTextAreaElement, name: PresenceField): void {
  let idle: ReturnType<typeof setTimeout> | null = null;
  const set = (st: 'viewing' | 'editing' | 'typing') => {
    const view = state.view;
    const rt = state.rt;
    if (!view || !rt) return;
    if (st === 'viewing') rt.setPresence(view.taskId, 'viewing');
    else rt.setPresence(view.taskId, st, name);
  };
  el.addEventListener('focus', () => set('editing'));
  el.addEventListener('input', () => {
    set('typing');
    if (idle) clearTimeout(idle);
    idle = setTimeout(() => {
      idle = null;
      if (document.activeElement === el) set('editing');
    }, TYPING_IDLE_MS);
  });
  el.addEventListener('blur', () => {
    if (idle) clearTimeout(idle);
    idle = null;
    // Focus moving to another tracked field says `editing` itself right after.
    setTimeout(() => {
      const active = document.activeElement;
      if (!(active instanceof HTMLElement) || !active.closest('#task-panel') || !TRACKED.has(active)) set('viewing');
    }, 0);
  });
  TRACKED.add(el);
}
const TRACKED = new Set<Element>();

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
  const prioFilter = form('filter-bar').elements.namedItem('priority') as HTMLSelectElement;
  prioFilter.append(...PRIORITIES.map((p) => h('option', { value: p }, p)));

  // The filter bar: the columns follow it as it changes (typing waits for a pause).
  const bar = form('filter-bar');
  let typing: ReturnType<typeof setTimeout> | null = null;
  bar.addEventListener('submit', (ev) => ev.preventDefault());
  bar.addEventListener('input', (ev) => {
    if (typing) clearTimeout(typing);
    typing = null;
    if ((ev.target as Element).getAttribute('name') === 'q') typing = setTimeout(applyFilter, 250);
    else applyFilter();
  });
  bar.addEventListener('change', () => applyFilter());
  // The fields are cleared after the reset event.
  bar.addEventListener('reset', () => setTimeout(applyFilter, 0));

  on('label-form', async (f) => {
    const view = state.view;
    const team = state.team;
    if (!view || !team) return;
    const { data: label } = await session().createLabel(team.id, { name: field(f, 'name').trim(), color: field(f, 'color') });
    f.reset();
    if (state.view !== view) return;
    // Ticked on the task once the label shows (its label.created may come before or after this).
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
    if (!team) throw new Error('pick a team first');
    const { data: board } = await session().createBoard(team.id, field(f, 'name'));
    f.reset();
    await loadBoards();
    if (state.team?.id === team.id) openBoard(state.boards.find((b) => b.id === board.id) ?? null);
  });
  on('member-form', async (f) => {
    if (!state.team) throw new Error('pick a team first');
    const role = field(f, 'role') as Exclude<Role, 'owner'>;
    // The member list follows from the member.added activity.
    await session().addMember(state.team.id, { email: field(f, 'email'), role });
    f.reset();
  });
  on('task-form', async (f) => {
    if (!state.team || !state.board) throw new Error('pick a board first');
    // The card appears with the task.created activity.
    await session().createTask(state.team.id, { title: field(f, 'title'), boardId: state.board.id });
    f.reset();
  });
  on('task-edit', async () => {
    const view = state.view;
    if (view) await saveTask(view, false);
  });
  $('conflict-overwrite').addEventListener('click', guarded(async () => {
    const view = state.view;
    if (!view) return;
    $('conflict').hidden = true;
    await saveTask(view, true);
  }));
  $('conflict-reload').addEventListener('click', guarded(async () => {
    const view = state.view;
    if (!view) return;
    const { data } = await session().getTask(view.taskId);
    const newest = newestTask(view);
    if (state.view === view) fillTask(view, newest && newest.version > data.version ? newest : data);
  }));
  trackEditing(form('task-edit').elements.namedItem('title') as HTMLInputElement, 'title');
  trackEditing(form('task-edit').elements.namedItem('description') as HTMLTextAreaElement, 'description');
  trackEditing(form('comment-form').elements.namedItem('body') as HTMLTextAreaElement, 'comment');
  $('task-delete').addEventListener('click', guarded(async () => {
    const view = state.view;
    if (!view || !confirm('Delete this task?')) return;
    await session().deleteTask(view.taskId);
    if (state.view === view) closeTask();
  }));
  $('task-close').addEventListener('click', () => closeTask());
  on('comment-form', async (f) => {
    const view = state.view;
    if (!view) return;
    // The comment appears with its activity, in this task's collection only.
    await session().createComment(view.taskId, field(f, 'body'));
    if (state.view === view) f.reset();
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
  attachMentions(form('comment-form').elements.namedItem('body') as HTMLTextAreaElement, 'comment-mentions');
  attachMentions(form('task-edit').elements.namedItem('description') as HTMLTextAreaElement, 'description-mentions');
  addEventListener('online', () => state.rt?.reconnect());
  void resume();
}

init();
