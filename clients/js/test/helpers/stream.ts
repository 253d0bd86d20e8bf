// A stream of writes that survives a server restart, and the exact list it produced.

import { ApiError, type Session, type Task } from '@taskforge/client';
import { sleep } from './util.js';

async function findByTitle(session: Session, teamId: string, title: string): Promise<Task | undefined> {
  let cursor: string | undefined;
  do {
    const page = await session.listTasks(teamId, { limit: 200, ...(cursor ? { cursor } : {}) });
    const hit = page.data.items.find((t) => t.title === title);
    if (hit) return hit;
    cursor = page.data.nextCursor ?? undefined;
  } while (cursor);
  return undefined;
}

/**
 * Creates `count` tasks one after another (titles `<prefix>-<i>`) and returns them in creation
 * order, which is seq order. A request that fails without an answer (the server is restarting)
 * may or may not have committed: before trying again, the writer looks the title up, so the
 * returned list is exactly what the server holds, each task taken from a 2xx response.
 */
export async function writeTasks(
  session: Session,
  teamId: string,
  count: number,
  opts: {
    prefix?: string;
    pauseMs?: number;
    boardId?: string;
    before?: (i: number) => void | Promise<void>;
    /** Counts the requests that failed without an answer. */
    stats?: { retries: number };
  } = {},
): Promise<Task[]> {
  const created: Task[] = [];
  const deadline = Date.now() + 60_000;
  for (let i = 0; i < count; i++) {
    await opts.before?.(i);
    const title = `${opts.prefix ?? 'w'}-${i}`;
    let uncertain = false;
    for (;;) {
      if (Date.now() > deadline) throw new Error(`writer gave up at ${title}`);
      try {
        if (uncertain) {
          const existing = await findByTitle(session, teamId, title);
          if (existing) {
            created.push(existing);
            break;
          }
          uncertain = false;
        }
        // One attempt per call: the failures are counted here (the session would retry a keyed
        // POST by itself), and an uncertain one is looked up before writing again.
        const res = await session.request<Task>('POST', `/teams/${teamId}/tasks`, {
          body: { title, ...(opts.boardId ? { boardId: opts.boardId } : {}) },
          retries: 0,
        });
        created.push(res.data);
        break;
      } catch (e) {
        if (e instanceof ApiError && e.status < 500) throw e;
        uncertain = true;
        if (opts.stats) opts.stats.retries++;
        await sleep(50);
      }
    }
    if (opts.pauseMs) await sleep(opts.pauseMs);
  }
  return created;
}
