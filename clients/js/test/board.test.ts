// The live board at `/`, end to end: two real Chromium browsers (Debian's package, driven by
// playwright-core) against a real server. One user creates and moves a task, the other sees it;
// both see each other looking at the task; a comment and an assignment cross over too. The time
// each change took to show up in the other browser is reported (t.diagnostic), screenshots go to
// TASKFORGE_ARTIFACTS (default clients/js/artifacts/). Then the failure modes: a gap (a server
// keeping its log 1 s, a browser cut off behind a proxy) while another browser edits, duplicated
// tabs of one login through several 6-second token lifetimes, a reload in a stream of writes, and a task
// opened before the previous one loaded. Each page is compared with a fresh HTTP read.
//
// Without Chromium (TASKFORGE_CHROMIUM, default /usr/bin/chromium) the browser test is skipped
// with a message, unless CI=true, where it fails.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { isDeepStrictEqual } from 'node:util';

import { API_PREFIX, ApiError, Session, refresh, type TaskStatus } from '@taskforge/client';
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';

import { readTasks } from './helpers/live.js';
import { PKG_ROOT, TestServer } from './helpers/server.js';
import { TcpProxy, newUser, sleep } from './helpers/util.js';

const CHROMIUM = process.env.TASKFORGE_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(process.env.TASKFORGE_ARTIFACTS ?? path.join(PKG_ROOT, 'artifacts'));
/** How long the other browser may take to show a change (the bound). */
const LIVE_MS = 10_000;
// As root in a container with no network: no sandbox, no GPU, and none of Chromium's own traffic.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const haveChromium = existsSync(CHROMIUM);
const browserSkip =
  haveChromium || process.env.CI === 'true' ? false : `no Chromium at ${CHROMIUM} (set TASKFORGE_CHROMIUM); skipped`;
if (browserSkip) console.log(`# board.test: ${browserSkip}`);

let server: TestServer;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server?.dispose();
});

test('the board is served at / with a strict content security policy, revalidated by ETag', async () => {
  const page = await fetch(`${server.baseUrl}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
  const csp = page.headers.get('content-security-policy') ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  const html = await page.text();
  assert.match(html, /<script type="module" src="\/assets\/board\/board\.js">/);

  const etag = page.headers.get('etag');
  assert.ok(etag, 'an ETag');
  const again = await fetch(`${server.baseUrl}/`, { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);

  // Every module the page loads is there, as JavaScript.
  for (const asset of ['/assets/board/board.js', '/assets/src/index.js', '/assets/src/realtime.js', '/board.css']) {
    const r = await fetch(`${server.baseUrl}${asset}`);
    assert.equal(r.status, 200, asset);
    assert.match(r.headers.get('content-type') ?? '', asset.endsWith('.css') ? /^text\/css/ : /^text\/javascript/, asset);
  }
  // Anything else is the API's problem+json 404, not a file.
  const missing = await fetch(`${server.baseUrl}/assets/nope.js`);
  assert.equal(missing.status, 404);
  assert.match(missing.headers.get('content-type') ?? '', /^application\/problem\+json/);
  const traversal = await fetch(`${server.baseUrl}/assets/../../Cargo.toml`);
  assert.notEqual(traversal.status, 200);
});

interface User {
  name: string;
  email: string;
  page: Page;
  context: BrowserContext;
  /** Uncaught exceptions and console errors of the page. */
  errors: string[];
  /** Uncaught exceptions only (a page whose network is cut logs console errors by design). */
  crashes: string[];
  /** WebSocket frames the page sent and received, as text. */
  sent: string[];
  received: string[];
  /** Event streams (`/realtime/sse`) the page opened. */
  streams: string[];
}

async function openBrowser(browsers: Browser[], name: string, baseUrl = server.baseUrl): Promise<User> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
  browsers.push(browser);
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  return openTab(context, name, `${name.toLowerCase()}-${randomUUID()}@example.com`, baseUrl);
}

/** A page in `context` (another tab of the same browser profile when the context is shared). */
async function openTab(
  context: BrowserContext,
  name: string,
  email: string,
  baseUrl = server.baseUrl,
  beforeLoad?: (page: Page) => Promise<unknown>,
): Promise<User> {
  const page = await context.newPage();
  page.setDefaultTimeout(LIVE_MS);
  const u: User = { name, email, page, context, errors: [], crashes: [], sent: [], received: [], streams: [] };
  page.on('pageerror', (e) => {
    u.errors.push(`${name}: page error: ${e.message}`);
    u.crashes.push(`${name}: page error: ${e.message}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error') u.errors.push(`${name}: console: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/realtime/sse' && r.method() === 'GET') u.streams.push(r.url());
  });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => u.sent.push(String(f.payload)));
    ws.on('framereceived', (f) => u.received.push(String(f.payload)));
  });
  await beforeLoad?.(page);
  await page.goto(`${baseUrl}/`);
  return u;
}

async function signUp(u: User): Promise<void> {
  const f = u.page.locator('#register-form');
  await f.getByLabel('Name').fill(u.name);
  await f.getByLabel('Email').fill(u.email);
  await f.getByLabel('Password').fill('correct horse battery');
  await f.getByRole('button', { name: 'Sign up' }).click();
  await u.page.locator('#me-name', { hasText: u.name }).waitFor();
  await u.page.locator('#conn', { hasText: 'live' }).waitFor();
}

function card(u: User, status: string, title: string): Locator {
  return u.page.locator(`section[data-status="${status}"] li.card`, { hasText: title });
}

/** Runs `act` in one browser and waits until `seen` shows in the other; answers the time taken. */
async function crossing(t: TestContext, what: string, act: () => Promise<void>, seen: Locator): Promise<number> {
  const started = performance.now();
  await act();
  await seen.waitFor({ timeout: LIVE_MS });
  const ms = performance.now() - started;
  t.diagnostic(`${what}: shown in the other browser after ${ms.toFixed(0)} ms`);
  return ms;
}

async function shoot(u: User, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await u.page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true });
}

for (const blocked of [false, true]) {
  const name = blocked
    ? 'two browsers behind a proxy that drops WebSocket upgrades: the pages fall back to the event stream, and everything below still crosses live'
    : 'two browsers: a task created and moved in one shows up live in the other, with presence, what each is doing, and comments';
  test(name, { skip: browserSkip, timeout: 150_000 }, (t) => twoBrowsers(t, blocked));
}

async function twoBrowsers(t: TestContext, blockWebSockets: boolean): Promise<void> {
  assert.ok(haveChromium, `CI=true and no Chromium at ${CHROMIUM}: install Debian's chromium package`);
  const browsers: Browser[] = [];
  const users: User[] = [];
  const proxy = blockWebSockets ? await TcpProxy.start(() => server.port) : null;
  proxy?.refuseUpgrades();
  const base = proxy?.baseUrl ?? server.baseUrl;
  const suffix = blockWebSockets ? '-sse' : '';
  try {
    const ann = await openBrowser(browsers, 'Ann', base);
    const bea = await openBrowser(browsers, 'Bea', base);
    users.push(ann, bea);
    await signUp(bea);
    await signUp(ann);
    await bea.page.locator('#no-team').waitFor();

    // Ann makes a team and adds Bea; Bea's board appears without a reload (member.added reaches
    // her own socket).
    await ann.page.locator('summary', { hasText: 'Team settings' }).click();
    await ann.page.getByLabel('New team').fill('Launch');
    await ann.page.getByRole('button', { name: 'Create team' }).click();
    await ann.page.locator('#board-select option', { hasText: 'General' }).waitFor({ state: 'attached' });
    await ann.page.getByLabel('Add member by email').fill(bea.email);
    await crossing(
      t,
      'member added',
      () => ann.page.getByRole('button', { name: 'Add', exact: true }).click(),
      bea.page.locator('section[data-status="todo"]'),
    );
    assert.equal(await bea.page.locator('#team-select option:checked').textContent(), 'Launch');

    // Created in Ann's browser, shown in Bea's To do column.
    const title = 'Write the launch post';
    await ann.page.getByLabel('New task').fill(title);
    await crossing(t, 'task created', () => ann.page.getByRole('button', { name: 'Add task' }).click(), card(bea, 'todo', title));

    // Moved by Ann, shown in Bea's In progress column and gone from To do.
    await crossing(
      t,
      'task moved',
      () => card(ann, 'todo', title).getByRole('button', { name: `Move “${title}” to In progress` }).click(),
      card(bea, 'in_progress', title),
    );
    assert.equal(await card(bea, 'todo', title).count(), 0);

    // Both look at the task: each sees both names.
    await card(ann, 'in_progress', title).getByRole('button', { name: title, exact: true }).click();
    await card(bea, 'in_progress', title).getByRole('button', { name: title, exact: true }).click();
    for (const u of [ann, bea]) {
      for (const other of ['Ann', 'Bea']) {
        await u.page.locator('#viewers .viewer', { hasText: other }).waitFor();
      }
    }

    // What Bea does in the task shows in Ann's panel: editing, typing, then nothing once she leaves
    // the field. (Her own panel does not tell her what she is doing.)
    const activity = ann.page.locator('#activity');
    const description = bea.page.locator('#task-edit').getByLabel('Description');
    await crossing(t, 'editing the description', () => description.focus(), ann.page.locator('#activity', { hasText: 'Bea is editing the description' }));
    await description.press('End');
    await description.pressSequentially(' Draft');
    await activity.filter({ hasText: 'Bea is typing in the description' }).waitFor();
    const comment = bea.page.locator('#comment-form').getByLabel('Comment');
    await comment.click();
    await comment.pressSequentially('Almost');
    await activity.filter({ hasText: 'Bea is typing a comment' }).waitFor();
    await shoot(ann, `presence-ann${suffix}.png`);
    assert.equal(await bea.page.locator('#activity').textContent(), '', 'Bea is not told what she does herself');
    await comment.fill('');
    await bea.page.locator('#task-panel-title').click();
    await until('Ann to see Bea just viewing', async () => (await activity.textContent()) === '');
    // Bea's unsaved description is hers: reset it so that the save below is only the assignment.
    await description.fill((await description.inputValue()).replace(/ Draft$/, ''));

    // A comment from Ann appears under the task in Bea's panel.
    await ann.page.locator('#comment-form').getByLabel('Comment').fill('Draft is in the doc.');
    await crossing(
      t,
      'comment',
      () => ann.page.getByRole('button', { name: 'Comment', exact: true }).click(),
      bea.page.locator('#comments li', { hasText: 'Draft is in the doc.' }),
    );

    // Bea assigns the task to Ann; Ann's card says so.
    await bea.page.locator('#task-edit').getByLabel('Assignee').selectOption({ label: 'Ann' });
    await crossing(
      t,
      'assignment',
      () => bea.page.getByRole('button', { name: 'Save' }).click(),
      card(ann, 'in_progress', title).locator('.meta', { hasText: 'Ann' }),
    );

    // Two more tasks, one of them done, so that the screenshots show a board at work.
    for (const more of ['Book the venue', 'Pick a date']) {
      await ann.page.getByLabel('New task').fill(more);
      await ann.page.getByRole('button', { name: 'Add task' }).click();
      await card(bea, 'todo', more).waitFor();
    }
    await card(bea, 'todo', 'Pick a date').getByRole('button', { name: 'Move “Pick a date” to In progress' }).click();
    await card(ann, 'in_progress', 'Pick a date').waitFor();

    await shoot(ann, `board-ann${suffix}.png`);
    await shoot(bea, `board-bea${suffix}.png`);

    // Bea closes the task: Ann sees her leave.
    await bea.page.getByRole('button', { name: 'Close task' }).click();
    await ann.page.locator('#viewers .viewer', { hasText: 'Bea' }).waitFor({ state: 'detached' });
    assert.equal(await ann.page.locator('#viewers .viewer').count(), 1);

    if (blockWebSockets) {
      // Every socket the pages tried was dropped; what crossed went over the event stream.
      assert.ok(proxy!.refusedUpgrades >= 2, `the pages tried sockets (${proxy!.refusedUpgrades})`);
      for (const u of [ann, bea]) {
        assert.deepEqual(u.received, [], `${u.name} received no WebSocket frame`);
        assert.ok(u.streams.length > 0, `${u.name} opened the event stream`);
      }
      t.diagnostic(`event streams opened: Ann ${ann.streams.length}, Bea ${bea.streams.length}`);
    } else {
      for (const u of [ann, bea]) assert.ok(u.received.length > 0, `${u.name} is on the socket`);
    }
    // A dropped socket is logged by the browser as a console error: that one is expected.
    const errors = [...ann.errors, ...bea.errors].filter((e) => !(blockWebSockets && /WebSocket connection to .* failed/.test(e)));
    assert.deepEqual(errors, [], 'no script errors or CSP violations in either page');
  } catch (e) {
    // What each browser showed, and what its page logged, for the failure report.
    for (const u of users) await shoot(u, `failure-${u.name.toLowerCase()}${suffix}.png`).catch(() => {});
    const logged = users.flatMap((u) => u.errors);
    if (logged.length > 0 && e instanceof Error) e.message += `\npage errors:\n  ${logged.join('\n  ')}`;
    throw e;
  } finally {
    await Promise.all(browsers.map((b) => b.close().catch(() => {})));
    await proxy?.close();
  }
}

test('saving the description over a change someone else made asks first: overwrite, or reload', { skip: browserSkip, timeout: 120_000 }, async () => {
  await withBrowsers('conflict', async (browsers, users) => {
    const ann = await openBrowser(browsers, 'Ann');
    const bea = await openBrowser(browsers, 'Bea');
    users.push(ann, bea);
    await signUp(ann);
    await signUp(bea);
    const { owner, teamId, boardId } = await teamWith(server, 'Conflicts', [ann, bea]);
    const task = (await owner.createTask(teamId, { title: 'Spec', boardId, description: 'v1' })).data;
    for (const u of [ann, bea]) {
      await cardExact(u, 'todo', 'Spec').getByRole('button', { name: 'Spec', exact: true }).click();
      await u.page.locator('#task-panel-title', { hasText: 'Spec' }).waitFor();
    }
    const form = (u: User) => u.page.locator('#task-edit');

    // Bea starts on the description; Ann renames the task and saves.
    await form(bea).getByLabel('Description').fill('v2 by Bea');
    await form(ann).getByLabel('Title').fill('Spec (final)');
    await ann.page.getByRole('button', { name: 'Save' }).click();
    await cardExact(bea, 'todo', 'Spec (final)').waitFor();
    // Bea's draft is still hers: the new version did not replace what she typed.
    assert.equal(await form(bea).getByLabel('Description').inputValue(), 'v2 by Bea');

    // Saving asks instead of overwriting.
    await bea.page.getByRole('button', { name: 'Save' }).click();
    const warning = bea.page.locator('#conflict');
    await warning.waitFor();
    assert.match((await warning.textContent()) ?? '', /Ann changed this task since you opened it/);
    await shoot(bea, 'conflict-bea.png');
    assert.equal((await owner.getTask(task.id)).data.description, 'v1', 'nothing was saved yet');

    // Overwrite: her description goes on top of Ann's version; Ann's title stays.
    await warning.getByRole('button', { name: 'Overwrite' }).click();
    await warning.waitFor({ state: 'hidden' });
    await until('Bea\'s description saved', async () => (await owner.getTask(task.id)).data.description === 'v2 by Bea');
    const saved = (await owner.getTask(task.id)).data;
    assert.equal(saved.title, 'Spec (final)', "Ann's title was kept");
    await until('Ann\'s form to show it', async () => (await form(ann).getByLabel('Description').inputValue()) === 'v2 by Bea');

    // Again the other way round, and this time Ann reloads: her draft goes, Bea's text shows.
    await form(ann).getByLabel('Description').fill('v3 by Ann');
    await form(bea).getByLabel('Description').fill('v3 by Bea');
    await bea.page.getByRole('button', { name: 'Save' }).click();
    await until('Bea\'s save', async () => (await owner.getTask(task.id)).data.description === 'v3 by Bea');
    await ann.page.getByRole('button', { name: 'Save' }).click();
    await ann.page.locator('#conflict', { hasText: 'Bea changed this task since you opened it' }).waitFor();
    await ann.page.locator('#conflict').getByRole('button', { name: 'Reload' }).click();
    await ann.page.locator('#conflict').waitFor({ state: 'hidden' });
    assert.equal(await form(ann).getByLabel('Description').inputValue(), 'v3 by Bea');
    assert.equal((await owner.getTask(task.id)).data.description, 'v3 by Bea', 'the reload saved nothing');

    // A change of another field only (the status) goes on top of the newest version silently.
    await form(bea).getByLabel('Priority').selectOption('high');
    await owner.updateTask(task.id, { title: 'Spec (final, really)' });
    await cardExact(bea, 'todo', 'Spec (final, really)').waitFor();
    await bea.page.getByRole('button', { name: 'Save' }).click();
    await until('the priority saved', async () => (await owner.getTask(task.id)).data.priority === 'high');
    assert.equal(await bea.page.locator('#conflict').isHidden(), true);
    assert.equal((await owner.getTask(task.id)).data.title, 'Spec (final, really)');
    assert.deepEqual([...ann.errors, ...bea.errors], [], 'no script errors in either page');
  });
});

// ------------------------------------------------------------------ failure modes
//
// The tests below each reproduce one way the board used to go wrong: a gap whose refetch lost
// changes and brought deleted tasks back, two tabs of one login revoking each other, a reload in
// the middle of a stream of writes, and a task opened before the previous one had loaded.

const STATUS_ORDER: TaskStatus[] = ['todo', 'in_progress', 'done', 'canceled'];
const LABEL: Record<TaskStatus, string> = { todo: 'To do', in_progress: 'In progress', done: 'Done', canceled: 'Canceled' };
const REFRESH_KEY = 'taskforge.refreshToken';

type Columns = Record<TaskStatus, string[]>;

/** The titles each column of the page shows, top to bottom. */
async function shownColumns(u: User): Promise<Columns> {
  return u.page.evaluate((order) => {
    const out: Record<string, string[]> = {};
    for (const s of order) {
      const col = document.querySelector(`section[data-status="${s}"]`);
      out[s] = col ? Array.from(col.querySelectorAll('li.card button.open'), (b) => b.textContent ?? '') : [];
    }
    return out as Columns;
  }, STATUS_ORDER);
}

/** The board's titles per column from a fresh HTTP read, in the board's documented order. */
async function serverColumns(reader: Session, teamId: string, boardId: string): Promise<Columns> {
  const out: Columns = { todo: [], in_progress: [], done: [], canceled: [] };
  for (const t of await readTasks(reader, teamId, { boardId })) out[t.status].push(t.title);
  return out;
}

/** Waits (bounded) until the page's columns are the server's; fails with both when they are not. */
async function untilColumnsMatch(what: string, u: User, reader: Session, teamId: string, boardId: string, ms = 15_000): Promise<Columns> {
  const deadline = Date.now() + ms;
  let last: { shown: Columns; server: Columns } | undefined;
  for (;;) {
    const [shown, want] = await Promise.all([shownColumns(u), serverColumns(reader, teamId, boardId)]);
    if (isDeepStrictEqual(shown, want)) return want;
    last = { shown, server: want };
    if (Date.now() > deadline) {
      assert.deepEqual(last.shown, last.server, `${what}: ${u.name}'s columns are not the server's after ${ms} ms`);
    }
    await sleep(100);
  }
}

/** Polls `cond` (bounded) until it holds. */
async function until(what: string, cond: () => boolean | Promise<boolean>, ms = LIVE_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** The card titled exactly `title` in column `status`. */
function cardExact(u: User, status: TaskStatus, title: string): Locator {
  return u.page
    .locator(`section[data-status="${status}"] li.card`)
    .filter({ has: u.page.getByRole('button', { name: title, exact: true }) });
}

/** The title of the first card of a column, or null when it is empty. */
async function firstTitle(u: User, status: TaskStatus): Promise<string | null> {
  const first = u.page.locator(`section[data-status="${status}"] li.card button.open`).first();
  return (await first.count()) > 0 ? await first.textContent() : null;
}

/** A team owned by a user of the test (for fresh HTTP reads), with the browser users in it. */
async function teamWith(srv: TestServer, name: string, users: User[]): Promise<{ owner: Session; teamId: string; boardId: string }> {
  const owner = await newUser(srv, 'Owner');
  const team = (await owner.createTeam(name)).data;
  for (const u of users) {
    await owner.addMember(team.id, { email: u.email, role: 'member' });
    // Added to a team: the board opens it without a reload (member.added reaches the user).
    await u.page.locator('#team-select option:checked', { hasText: name }).waitFor({ state: 'attached' });
    await u.page.locator('section[data-status="todo"]').waitFor();
  }
  return { owner, teamId: team.id, boardId: team.defaultBoardId };
}

/** Runs `body` with a list for its browsers; on failure, screenshots and page errors; closes them. */
async function withBrowsers(prefix: string, body: (browsers: Browser[], users: User[]) => Promise<void>): Promise<void> {
  assert.ok(haveChromium, `CI=true and no Chromium at ${CHROMIUM}: install Debian's chromium package`);
  const browsers: Browser[] = [];
  const users: User[] = [];
  try {
    await body(browsers, users);
  } catch (e) {
    for (const [i, u] of users.entries()) await shoot(u, `failure-${prefix}-${i}-${u.name.toLowerCase()}.png`).catch(() => {});
    const logged = users.flatMap((u) => u.errors);
    if (logged.length > 0 && e instanceof Error) e.message += `\npage errors:\n  ${logged.slice(0, 30).join('\n  ')}`;
    throw e;
  } finally {
    await Promise.all(browsers.map((b) => b.close().catch(() => {})));
  }
}

/** A board user's edits through the page, each waited for in that page, round after round. */
class Writer {
  iterations = 0;
  readonly deleted: string[] = [];
  private stopped = false;
  private ended = false;
  private failure: unknown = null;
  private readonly done: Promise<void>;

  constructor(private readonly u: User, private readonly prefix: string) {
    u.page.on('dialog', (d) => void d.accept());
    this.done = this.run();
  }

  /** One round: a create, a move, an edit, another move and a delete. */
  private async round(i: number): Promise<void> {
    const u = this.u;
    const title = `${this.prefix} ${i}`;
    await u.page.getByLabel('New task').fill(title);
    await u.page.getByRole('button', { name: 'Add task' }).click();
    await cardExact(u, 'todo', title).waitFor();

    await this.move('todo', 'in_progress');

    const edit = await firstTitle(u, 'in_progress');
    if (edit !== null) {
      await cardExact(u, 'in_progress', edit).getByRole('button', { name: edit, exact: true }).click();
      await u.page.locator('#task-panel-title', { hasText: edit }).waitFor();
      const edited = `${edit} (edited)`;
      await u.page.locator('#task-edit').getByLabel('Title').fill(edited);
      await u.page.locator('#task-edit').getByLabel('Priority').selectOption('high');
      await u.page.getByRole('button', { name: 'Save' }).click();
      await cardExact(u, 'in_progress', edited).waitFor();
      await u.page.getByRole('button', { name: 'Close task' }).click();
    }

    await this.move('in_progress', 'done');

    const gone = await firstTitle(u, 'done');
    if (gone !== null) {
      await cardExact(u, 'done', gone).getByRole('button', { name: gone, exact: true }).click();
      await u.page.locator('#task-panel-title', { hasText: gone }).waitFor();
      await u.page.getByRole('button', { name: 'Delete' }).click();
      await cardExact(u, 'done', gone).waitFor({ state: 'detached' });
      this.deleted.push(gone);
    }
  }

  private async move(from: TaskStatus, to: TaskStatus): Promise<void> {
    const title = await firstTitle(this.u, from);
    if (title === null) return;
    await cardExact(this.u, from, title).getByRole('button', { name: `Move “${title}” to ${LABEL[to]}` }).click();
    await cardExact(this.u, to, title).waitFor();
  }

  private async run(): Promise<void> {
    try {
      while (!this.stopped) {
        await this.round(this.iterations);
        this.iterations++;
      }
    } catch (e) {
      this.failure = e;
    } finally {
      this.ended = true;
    }
  }

  /** Waits until `n` more rounds are done (bounded). */
  async rounds(n: number, ms = 60_000): Promise<void> {
    const target = this.iterations + n;
    await until(`${n} more writer rounds`, () => this.iterations >= target || this.ended, ms);
    if (this.failure) throw this.failure;
    if (this.iterations < target) throw new Error('the writer stopped early');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
    if (this.failure) throw this.failure;
  }
}

test('a mention typed with the autocomplete reaches the other browser\'s bell live, survives a reload, and opens the task', { skip: browserSkip, timeout: 120_000 }, async (t) => {
  await withBrowsers('inbox', async (browsers, users) => {
    const ann = await openBrowser(browsers, 'Ann');
    const bea = await openBrowser(browsers, 'Bea');
    users.push(ann, bea);
    await signUp(ann);
    await signUp(bea);
    const { owner, teamId, boardId } = await teamWith(server, 'Mentions', [ann, bea]);
    const task = (await owner.createTask(teamId, { title: 'Review the copy', boardId })).data;
    await cardExact(ann, 'todo', 'Review the copy').waitFor();
    await bea.page.locator('#inbox-count').waitFor({ state: 'hidden' });

    // Ann opens the task and types a comment with `@Be`: the list offers Bea; Enter inserts her.
    await cardExact(ann, 'todo', 'Review the copy').getByRole('button', { name: 'Review the copy', exact: true }).click();
    await ann.page.locator('#task-panel-title', { hasText: 'Review the copy' }).waitFor();
    const box = ann.page.locator('#comment-form').getByLabel('Comment');
    await box.click();
    await box.pressSequentially('Could you read this, @Be');
    const option = ann.page.locator('#comment-mentions [role="option"]', { hasText: 'Bea' });
    await option.waitFor();
    assert.equal(await option.getAttribute('aria-selected'), 'true');
    assert.equal(await ann.page.locator('#comment-mentions [role="option"]').count(), 1, 'only the matching member (and not Ann herself)');
    await shoot(ann, 'mention-ann.png');
    await box.press('Enter');
    await ann.page.locator('#comment-mentions').waitFor({ state: 'hidden' });
    await box.pressSequentially('before Friday?');
    const typed = await box.inputValue();
    assert.match(typed, /^Could you read this, @\[Bea\]\(user:[0-9a-f-]{36}\) before Friday\?$/, 'the markup was inserted');

    await crossing(
      t,
      'mention to bell',
      () => ann.page.getByRole('button', { name: 'Comment', exact: true }).click(),
      bea.page.locator('#inbox-count', { hasText: '1' }),
    );
    // Ann's panel renders the mention as @Bea, not as markup.
    const shown = ann.page.locator('#comments li .body', { hasText: 'Could you read this' });
    await shown.waitFor();
    assert.equal(await shown.textContent(), 'Could you read this, @Bea before Friday?');
    assert.equal(await shown.locator('.mention').textContent(), '@Bea');
    assert.equal(await bea.page.getByRole('button', { name: 'Notifications, 1 unread' }).count(), 1);

    // The bell's list: who, why, the task, the excerpt; unread.
    await bea.page.locator('#inbox-button').click();
    const item = bea.page.locator('#inbox-list li.notification', { hasText: 'Review the copy' });
    await item.waitFor();
    assert.equal(await item.getAttribute('class'), 'notification unread');
    const text = (await item.textContent()) ?? '';
    assert.match(text, /Ann mentioned you/);
    assert.match(text, /Could you read this, @Bea before Friday\?/);
    await shoot(bea, 'inbox-bea.png');

    // A reload keeps it: the count and the item come from the server.
    await bea.page.reload();
    await bea.page.locator('#me-name', { hasText: 'Bea' }).waitFor();
    await bea.page.locator('#inbox-count', { hasText: '1' }).waitFor();
    await bea.page.locator('#inbox-button').click();
    const again = bea.page.locator('#inbox-list li.notification.unread', { hasText: 'Review the copy' });
    await again.waitFor();

    // Clicking it opens the task and lowers the count.
    await again.getByRole('button').click();
    await bea.page.locator('#task-panel-title', { hasText: 'Review the copy' }).waitFor();
    await bea.page.locator('#comments li', { hasText: 'Could you read this' }).waitFor();
    await bea.page.locator('#inbox-count').waitFor({ state: 'hidden' });
    assert.equal(await bea.page.getByRole('button', { name: 'Notifications', exact: true }).count(), 1);
    await bea.page.locator('#inbox-button').click();
    await bea.page.locator('#inbox-list li.notification:not(.unread)', { hasText: 'Review the copy' }).waitFor();
    // Read on the server too (a login of its own: the page's refresh token stays the page's).
    const beaHttp = await Session.login(server.baseUrl, { email: bea.email, password: 'correct horse battery' });
    assert.equal((await beaHttp.me()).data.unreadNotifications, 0);
    const [read] = (await beaHttp.listNotifications()).data.items;
    assert.equal(read?.taskId, task.id);
    assert.ok(read?.readAt, "read on the server");
    assert.deepEqual([...ann.errors, ...bea.errors], [], 'no script errors in either page');
  });
});

test('a gap while another browser edits: after the reconnect the columns are the server\'s, changes during the refetch included', { skip: browserSkip, timeout: 240_000 }, async (t) => {
  // A server that keeps its activity log for 1 s: a client away longer cannot resume.
  const gapServer = await TestServer.start({ env: { TASKFORGE_LOG_RETENTION: '1s' } });
  const proxy = await TcpProxy.start(() => gapServer.port);
  try {
    await withBrowsers('gap', async (browsers, users) => {
      // Ann reaches the server through a proxy of her own; Bea directly.
      const ann = await openBrowser(browsers, 'Ann', proxy.baseUrl);
      const bea = await openBrowser(browsers, 'Bea', gapServer.baseUrl);
      users.push(ann, bea);
      await signUp(ann);
      await signUp(bea);
      const { owner, teamId, boardId } = await teamWith(gapServer, 'Gaps', [ann, bea]);
      for (let i = 0; i < 6; i++) await owner.createTask(teamId, { title: `seed ${i}`, boardId });
      await untilColumnsMatch('before the cut', ann, owner, teamId, boardId);

      // Ann's reload of the tasks after the gap is answered from the server at once, but handed
      // to her page only once her socket has brought the writes made after that read: the
      // reload must not lose them, nor undo a deletion among them.
      let holdNext = false;
      let reread = false;
      let served = false;
      await ann.page.route(
        (url) => url.pathname === `${API_PREFIX}/teams/${teamId}/tasks`,
        async (route) => {
          if (!holdNext) return route.continue();
          holdNext = false;
          reread = true;
          try {
            const response = await route.fetch();
            const mark = ann.received.length;
            // Bounded below the client's 15 s request timeout.
            await until('a deletion and an update to reach Ann during her refetch', () => {
              const s = ann.received.slice(mark).join('\n');
              return s.includes('"task.deleted"') && s.includes('"task.updated"');
            }, 12_000).catch((e: unknown) => t.diagnostic(`refetch handed over without the writes: ${String(e)}`));
            await route.fulfill({ response });
          } catch (e) {
            t.diagnostic(`held refetch failed: ${String(e)}`);
            await route.abort().catch(() => {});
          }
          served = true;
        },
      );

      const before = (await owner.getTeam(teamId)).seq!;
      proxy.block();
      await ann.page.locator('#conn', { hasText: 'live' }).waitFor({ state: 'detached' });
      const writer = new Writer(bea, 'w');
      await writer.rounds(1);
      // Until the log no longer holds what Ann missed.
      await until('the log to drop the activities Ann missed', async () => {
        try {
          await owner.listActivity(teamId, { since: before });
          return false;
        } catch (e) {
          if (e instanceof ApiError && e.status === 410) return true;
          throw e;
        }
      }, 20_000);
      holdNext = true;
      proxy.unblock();

      // The reconnect waits out the socket's backoff (at most 30 s).
      await until('Ann to reload the tasks after the gap', () => reread, 60_000);
      await until('the held refetch to be handed over', () => served, 30_000);
      // Bea keeps writing after Ann's reload too.
      await writer.rounds(1);
      await writer.stop();
      t.diagnostic(`Bea's writer made ${writer.iterations} rounds; deleted: ${writer.deleted.join(', ')}`);

      const want = await untilColumnsMatch('after the gap', ann, owner, teamId, boardId);
      const shown = Object.values(want).flat();
      for (const d of writer.deleted) assert.ok(!shown.includes(d), `deleted task “${d}” is back`);
      await untilColumnsMatch('the writer', bea, owner, teamId, boardId);
      assert.ok(writer.deleted.length >= 2, 'deletions happened during the test');
      await ann.page.locator('#conn', { hasText: 'live' }).waitFor();
      assert.deepEqual([...ann.crashes, ...bea.crashes], [], 'no uncaught errors in either page');
    });
  } finally {
    await proxy.close();
    await gapServer.dispose();
  }
});

test('duplicated tabs of one login, one of them from a token already rotated, stay logged in across token refreshes and live', { skip: browserSkip, timeout: 180_000 }, async (t) => {
  const TTL_S = 6;
  const ttlServer = await TestServer.start({ env: { TASKFORGE_ACCESS_TOKEN_TTL: `${TTL_S}s` } });
  try {
    await withBrowsers('tabs', async (browsers, users) => {
      const first = await openBrowser(browsers, 'Ann', ttlServer.baseUrl);
      users.push(first);
      await signUp(first);
      const { owner, teamId, boardId } = await teamWith(ttlServer, 'Tabs', [first]);
      const stored = (u: User) => u.page.evaluate((k) => sessionStorage.getItem(k), REFRESH_KEY);

      // Duplicating a tab copies its sessionStorage, the refresh token included.
      const duplicate = async (name: string, token: string) => {
        const tab = await openTab(first.context, name, first.email, ttlServer.baseUrl, (page) =>
          page.addInitScript(
            ([k, v]) => {
              if (sessionStorage.getItem(k) === null) sessionStorage.setItem(k, v);
            },
            [REFRESH_KEY, token] as const,
          ),
        );
        users.push(tab);
        await tab.page.locator('#me-name', { hasText: 'Ann' }).waitFor();
        await tab.page.locator('section[data-status="todo"]').waitFor();
        return tab;
      };
      const copied = await stored(first);
      assert.ok(copied, 'the first tab stored its refresh token');
      // The second tab resumes from the copy: whichever tab refreshes it first, the other adopts.
      const second = await duplicate('Ann (2nd tab)', copied);
      // The third from the same copy, once it has been rotated: it was not listening when that
      // was announced, and must neither present the spent token nor give up.
      await until('the copied token to be rotated', async () => (await stored(first)) !== copied, 3 * TTL_S * 1000);
      const third = await duplicate('Ann (3rd tab)', copied);

      // Several token lifetimes (the sessions refresh once three quarters of one have passed).
      const tabs = [first, second, third];
      const tokens = tabs.map(() => new Set<string>());
      const started = Date.now();
      for (let i = 0; Date.now() - started < 4 * TTL_S * 1000; i++) {
        const title = `tick ${i}`;
        await owner.createTask(teamId, { title, boardId });
        for (const [n, tab] of tabs.entries()) {
          await cardExact(tab, 'todo', title).waitFor({ timeout: LIVE_MS });
          const token = await stored(tab);
          assert.ok(token, `${tab.name} still holds a refresh token after “${title}”`);
          tokens[n]!.add(token);
          assert.equal(await tab.page.locator('#auth').isHidden(), true, `${tab.name} is still logged in after “${title}”`);
        }
        await sleep(2000);
      }
      t.diagnostic(`refresh tokens seen per tab: ${tokens.map((s) => s.size).join(', ')}`);
      for (const [n, tab] of tabs.entries()) {
        assert.ok(tokens[n]!.size >= 3, `${tab.name} rotated its refresh token through several cycles`);
        await tab.page.locator('#conn', { hasText: 'live' }).waitFor();
        assert.equal(await tab.page.locator('#notice').isHidden(), true, `${tab.name} shows no notice`);
        await untilColumnsMatch(tab.name, tab, owner, teamId, boardId);
      }
      // The login is still valid on the server: the last stored token refreshes (last step: this
      // spends the tabs' token).
      const last = await stored(third);
      assert.ok(last);
      assert.equal((await refresh(ttlServer.baseUrl, last)).user.email, first.email, 'the login was not revoked');
      assert.deepEqual(users.flatMap((u) => u.errors), [], 'no script errors in any tab');
    });
  } finally {
    await ttlServer.dispose();
  }
});

test('a reload while another browser keeps creating tasks: the board shows exactly the server\'s tasks and stays live', { skip: browserSkip, timeout: 180_000 }, async (t) => {
  await withBrowsers('reload', async (browsers, users) => {
    const ann = await openBrowser(browsers, 'Ann');
    const bea = await openBrowser(browsers, 'Bea');
    users.push(ann, bea);
    await signUp(ann);
    await signUp(bea);
    const { owner, teamId, boardId } = await teamWith(server, 'Reloads', [ann, bea]);

    // Bea creates tasks one after the other, as fast as her page answers.
    let created = 0;
    let stop = false;
    let failure: unknown = null;
    const writing = (async () => {
      try {
        while (!stop) {
          await bea.page.getByLabel('New task').fill(`r ${created}`);
          await bea.page.getByRole('button', { name: 'Add task' }).click();
          // The form is reset once the server has answered.
          await until('the form to clear', async () => (await bea.page.getByLabel('New task').inputValue()) === '');
          created++;
        }
      } catch (e) {
        failure = e;
      }
    })();
    const written = async (n: number, what: string) => {
      await until(what, () => created >= n || failure !== null, 60_000);
      if (failure) throw failure;
    };
    await written(5, 'a few tasks before the reload');
    const atReload = created;
    await ann.page.reload();
    await ann.page.locator('#me-name', { hasText: 'Ann' }).waitFor();
    await ann.page.locator('section[data-status="todo"]').waitFor();
    await written(atReload + 8, 'more tasks after the reload');
    stop = true;
    await writing;
    if (failure) throw failure;
    t.diagnostic(`${created} tasks created, ${atReload} of them before the reload`);

    const want = await untilColumnsMatch('after the reload', ann, owner, teamId, boardId);
    assert.equal(want.todo.length, created, 'every created task is on the server');
    // And it keeps up.
    await bea.page.getByLabel('New task').fill('after the stream');
    await bea.page.getByRole('button', { name: 'Add task' }).click();
    await cardExact(ann, 'todo', 'after the stream').waitFor();
    await untilColumnsMatch('live after the reload', ann, owner, teamId, boardId);
    assert.deepEqual([...ann.crashes, ...bea.crashes], [], 'no uncaught errors in either page');
  });
});

test('opening task A then at once task B: this user does not stay on A, and A\'s comments stay out of B\'s panel', { skip: browserSkip, timeout: 120_000 }, async () => {
  await withBrowsers('switch', async (browsers, users) => {
    const ann = await openBrowser(browsers, 'Ann');
    const bea = await openBrowser(browsers, 'Bea');
    users.push(ann, bea);
    await signUp(ann);
    await signUp(bea);
    const { owner, teamId, boardId } = await teamWith(server, 'Switch', [ann, bea]);
    const a = (await owner.createTask(teamId, { title: 'Alpha', boardId })).data;
    const b = (await owner.createTask(teamId, { title: 'Beta', boardId })).data;
    await owner.createComment(b.id, 'a comment of Beta');
    for (const u of [ann, bea]) await cardExact(u, 'todo', 'Beta').waitFor();

    // Bea looks at A.
    await cardExact(bea, 'todo', 'Alpha').getByRole('button', { name: 'Alpha', exact: true }).click();
    await bea.page.locator('#viewers .viewer', { hasText: 'Bea' }).waitFor();

    // Ann's loading of B is slow: its answers wait (bounded) until her page has asked to join
    // A's room, as it would when A loads faster than B.
    const sentBefore = ann.sent.length;
    const joinedA = () => ann.sent.slice(sentBefore).some((f) => f.includes('"subscribe"') && f.includes(`"taskId":"${a.id}"`));
    await ann.page.route(
      (url) => url.pathname.startsWith(`${API_PREFIX}/tasks/${b.id}`),
      async (route) => {
        await until('Ann to join A', joinedA, 3000).catch(() => {});
        await route.continue();
      },
    );
    // Both clicks in one go: B is opened before A has loaded.
    await ann.page.evaluate(([idA, idB]) => {
      for (const id of [idA, idB]) {
        const open = document.querySelector<HTMLButtonElement>(`li.card[data-task-id="${id}"] button.open`);
        if (!open) throw new Error(`no card ${id}`);
        open.click();
      }
    }, [a.id, b.id] as const);

    // B is open: its title, its comment, and Ann among its viewers.
    await ann.page.locator('#task-panel-title', { hasText: 'Beta' }).waitFor();
    await ann.page.locator('#comments li', { hasText: 'a comment of Beta' }).waitFor();
    await ann.page.locator('#viewers .viewer', { hasText: 'Ann' }).waitFor();

    // Bea, on A, does not see Ann there (after at most the time the news takes), and never again.
    const annOnA = bea.page.locator('#viewers .viewer', { hasText: 'Ann' });
    await annOnA.waitFor({ state: 'detached', timeout: LIVE_MS });
    const watchUntil = Date.now() + 2000;
    while (Date.now() < watchUntil) {
      assert.equal(await annOnA.count(), 0, 'Ann shows as a viewer of A while she has B open');
      await sleep(100);
    }

    // A comment on A reaches Bea's panel but not Ann's; a later one on B reaches Ann's.
    await bea.page.locator('#comment-form').getByLabel('Comment').fill('only on Alpha');
    await bea.page.getByRole('button', { name: 'Comment', exact: true }).click();
    await bea.page.locator('#comments li', { hasText: 'only on Alpha' }).waitFor();
    await owner.createComment(b.id, 'later on Beta');
    await ann.page.locator('#comments li', { hasText: 'later on Beta' }).waitFor();
    assert.equal(await ann.page.locator('#comments li', { hasText: 'only on Alpha' }).count(), 0, "A's comment is in B's panel");
    assert.deepEqual(
      await ann.page.locator('#comments li').evaluateAll((lis) => lis.map((li) => li.lastElementChild?.textContent)),
      ['a comment of Beta', 'later on Beta'],
    );
    assert.deepEqual(await ann.page.locator('#viewers .viewer').allTextContents(), ['Ann'], 'only Ann is on B');
    assert.equal(await annOnA.count(), 0);
    assert.equal(await ann.page.locator('#task-panel-title').textContent(), 'Beta');
    assert.deepEqual([...ann.errors, ...bea.errors], [], 'no script errors in either page');
  });
});

// ------------------------------------------------------------------ labels and the filter bar

/** Every card title the page shows, sorted. */
async function shownTitles(u: User): Promise<string[]> {
  return (await u.page.locator('li.card button.open').allTextContents()).sort();
}

async function untilTitles(what: string, u: User, want: string[]): Promise<void> {
  const sorted = [...want].sort();
  let last: string[] = [];
  await until(`${what} (want ${sorted.join(', ')}; shown ${last.join(', ')})`, async () => {
    last = await shownTitles(u);
    return isDeepStrictEqual(last, sorted);
  }).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}; last shown: ${last.join(', ') || 'nothing'}`);
  });
}

test('labels and the filter bar: chips on cards, the panel adds labels, the filter narrows, and another user\'s edits move tasks into and out of the filtered view live', { skip: browserSkip, timeout: 150_000 }, async (t) => {
  await withBrowsers('labels', async (browsers, users) => {
    const ann = await openBrowser(browsers, 'Ann');
    users.push(ann);
    await signUp(ann);
    const { owner, teamId, boardId } = await teamWith(server, 'Labelled', [ann]);
    const bug = (await owner.createLabel(teamId, { name: 'Bug', color: '#d73a4a' })).data;
    const deploy = (await owner.createTask(teamId, { title: 'Deploy failed', boardId, labelIds: [bug.id], priority: 'high' })).data;
    const docs = (await owner.createTask(teamId, { title: 'Write docs', boardId })).data;
    const login = (await owner.createTask(teamId, { title: 'Fix login', boardId })).data;
    const page = ann.page;

    // The chip: the label's name on its color, with text that contrasts.
    const bugChip = cardExact(ann, 'todo', 'Deploy failed').locator('.chip', { hasText: 'Bug' });
    await bugChip.waitFor();
    // Polled: a live update may replace the card between finding the chip and reading its style,
    // and a node out of the document has no computed style.
    const painted = ['rgb(215, 58, 74)', 'rgb(255, 255, 255)'];
    let colors: string[] = [];
    await until('the Bug chip in its colors', async () => {
      colors = await bugChip.evaluate((el) => [getComputedStyle(el).backgroundColor, getComputedStyle(el).color]);
      return isDeepStrictEqual(colors, painted);
    }).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}; last read: ${colors.join(', ') || 'nothing'}`);
    });
    assert.equal(await cardExact(ann, 'todo', 'Write docs').locator('.chip').count(), 0);

    // The panel: a new label (name and color) is created and ticked, Bug ticked too, then saved.
    await cardExact(ann, 'todo', 'Write docs').getByRole('button', { name: 'Write docs', exact: true }).click();
    const panel = page.locator('#task-panel');
    await panel.locator('#task-panel-title', { hasText: 'Write docs' }).waitFor();
    await panel.getByLabel('New label').fill('Docs');
    await panel.getByLabel('Color').fill('#1d76db');
    await panel.getByRole('button', { name: 'Create label' }).click();
    const docsBox = panel.getByRole('checkbox', { name: 'Docs' });
    await docsBox.waitFor();
    assert.equal(await docsBox.isChecked(), true, 'the new label is ticked');
    const docsLabel = (await owner.listLabels(teamId)).data.items.find((l) => l.name === 'Docs');
    assert.equal(docsLabel?.color, '#1d76db');
    await panel.getByRole('checkbox', { name: 'Bug' }).check();
    await panel.getByRole('button', { name: 'Save' }).click();
    const both = [bug.id, docsLabel!.id].sort();
    await until('the labels saved', async () => isDeepStrictEqual((await owner.getTask(docs.id)).data.labelIds, both));
    await cardExact(ann, 'todo', 'Write docs').locator('.chip', { hasText: 'Docs' }).waitFor();
    await shoot(ann, 'labels-ann.png');
    await panel.getByRole('button', { name: 'Close task' }).click();

    // The filter bar narrows: words of titles (prefixes), then labels, then priority.
    const bar = page.locator('#filter-bar');
    await bar.getByLabel('Search').fill('dep FAI');
    await untilTitles('search narrows', ann, ['Deploy failed']);
    await page.locator('#filter-status', { hasText: 'Showing 1 of 3 tasks' }).waitFor();

    // Another user renames tasks: one starts matching, one stops, live.
    await owner.updateTask(login.id, { title: 'Deploy: login fails' });
    await untilTitles('a task that starts matching appears', ann, ['Deploy failed', 'Deploy: login fails']);
    await owner.updateTask(deploy.id, { title: 'Release failed' });
    await untilTitles('a task that stops matching vanishes', ann, ['Deploy: login fails']);
    await shoot(ann, 'filter-search-ann.png');

    // Labels: only tasks with Bug; the other user takes it off one, then deletes the label.
    await bar.getByRole('button', { name: 'Clear filters' }).click();
    await untilTitles('cleared', ann, ['Release failed', 'Write docs', 'Deploy: login fails']);
    assert.equal(await page.locator('#filter-status').textContent(), '');
    await bar.getByRole('checkbox', { name: 'Bug' }).check();
    await untilTitles('Bug only', ann, ['Release failed', 'Write docs']);
    const docsNow = (await owner.getTask(docs.id)).data;
    await owner.updateTask(docs.id, { labelIds: [docsLabel!.id] }, { ifMatch: docsNow.version });
    await untilTitles('Bug taken off Write docs', ann, ['Release failed']);
    await owner.updateTask(login.id, { labelIds: [bug.id] });
    await untilTitles('Bug put on the login task', ann, ['Release failed', 'Deploy: login fails']);

    // Priority, combined with the label: the other user's priority change moves a task out.
    await bar.getByLabel('Priority').selectOption('high');
    await untilTitles('Bug and high', ann, ['Release failed']);
    await owner.updateTask(deploy.id, { priority: 'low' });
    await untilTitles('no longer high', ann, []);
    await bar.getByLabel('Priority').selectOption('');
    await untilTitles('Bug again', ann, ['Release failed', 'Deploy: login fails']);

    // The label deleted by the other user: off the filter (which then narrows nothing) and the cards.
    await owner.deleteLabel(bug.id);
    await until('the Bug pick gone', async () => (await bar.getByRole('checkbox', { name: 'Bug' }).count()) === 0);
    await untilTitles('the filter is gone with its label', ann, ['Release failed', 'Write docs', 'Deploy: login fails']);
    assert.equal(await page.locator('li.card .chip', { hasText: 'Bug' }).count(), 0, 'no Bug chip left');

    // Assignee: "unassigned" and a member (the server filters these only once it takes `none`).
    await bar.getByLabel('Assignee').selectOption({ label: 'Ann' });
    await untilTitles('assigned to Ann: none yet', ann, []);
    const annId = (await owner.request<{ items: { user: { id: string; email: string } }[] }>('GET', `/teams/${teamId}/members`)).data.items.find((m) => m.user.email === ann.email)!.user.id;
    await owner.updateTask(docs.id, { assigneeUserId: annId });
    await untilTitles('assigned to Ann', ann, ['Write docs']);
    const probe = await owner.listTasks(teamId, { assigneeUserId: 'none' }).then(() => true, () => false);
    if (probe) {
      await bar.getByLabel('Assignee').selectOption({ label: 'Unassigned' });
      await untilTitles('unassigned', ann, ['Release failed', 'Deploy: login fails']);
      await owner.updateTask(login.id, { assigneeUserId: annId });
      await untilTitles('assigned away', ann, ['Release failed']);
    } else {
      t.diagnostic('this server does not take assigneeUserId=none yet: the unassigned filter is not exercised');
    }
    await bar.getByRole('button', { name: 'Clear filters' }).click();
    await untilColumnsMatch('cleared at the end', ann, owner, teamId, boardId);
    assert.deepEqual(ann.errors, [], 'no script errors');
  });
});
