// The live board at `/`, end to end: two real Chromium browsers (Debian's package, driven by
// playwright-core) against a real server. One user creates and moves a task, the other sees it;
// both see each other looking at the task; a comment and an assignment cross over too. The time
// each change took to show up in the other browser is reported (t.diagnostic), screenshots go to
// TASKFORGE_ARTIFACTS (default clients/js/artifacts/).
//
// Without Chromium (TASKFORGE_CHROMIUM, default /usr/bin/chromium) the browser test is skipped
// with a message, unless CI=true, where it fails.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';

import { chromium, type Browser, type Locator, type Page } from 'playwright-core';

import { PKG_ROOT, TestServer } from './helpers/server.js';

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
  errors: string[];
}

async function openBrowser(browsers: Browser[], name: string): Promise<User> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
  browsers.push(browser);
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(LIVE_MS);
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`${name}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`${name}: console: ${m.text()}`);
  });
  await page.goto(`${server.baseUrl}/`);
  return { name, email: `${name.toLowerCase()}-${randomUUID()}@example.com`, page, errors };
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

test('two browsers: a task created and moved in one shows up live in the other, with presence and comments', { skip: browserSkip, timeout: 120_000 }, async (t) => {
  assert.ok(haveChromium, `CI=true and no Chromium at ${CHROMIUM}: install Debian's chromium package`);
  const browsers: Browser[] = [];
  const users: User[] = [];
  try {
    const ann = await openBrowser(browsers, 'Ann');
    const bea = await openBrowser(browsers, 'Bea');
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

    await shoot(ann, 'board-ann.png');
    await shoot(bea, 'board-bea.png');

    // Bea closes the task: Ann sees her leave.
    await bea.page.getByRole('button', { name: 'Close task' }).click();
    await ann.page.locator('#viewers .viewer', { hasText: 'Bea' }).waitFor({ state: 'detached' });
    assert.equal(await ann.page.locator('#viewers .viewer').count(), 1);

    assert.deepEqual([...ann.errors, ...bea.errors], [], 'no script errors or CSP violations in either page');
  } catch (e) {
    // What each browser showed, and what its page logged, for the failure report.
    for (const u of users) await shoot(u, `failure-${u.name.toLowerCase()}.png`).catch(() => {});
    const logged = users.flatMap((u) => u.errors);
    if (logged.length > 0 && e instanceof Error) e.message += `\npage errors:\n  ${logged.join('\n  ')}`;
    throw e;
  } finally {
    await Promise.all(browsers.map((b) => b.close().catch(() => {})));
  }
});
