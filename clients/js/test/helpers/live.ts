// Helpers for the live collection tests: full HTTP reads in the collections' documented order,
// and an HTTP layer the tests can step into between pages.

import type {
  ApiResponse,
  Comment,
  LiveHttp,
  Member,
  Page,
  RealtimeClient,
  RequestOptions,
  Session,
  Task,
  TaskStatus,
} from '@taskforge/client';

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The documented orders (written out again here: the test must not borrow the code it checks). */
export const byTaskOrder = (a: Task, b: Task) => a.position - b.position || cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
export const byCommentOrder = (a: Comment, b: Comment) => cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id);
export const byMemberOrder = (a: Member, b: Member) => cmp(a.joinedAt, b.joinedAt) || cmp(a.user.id, b.user.id);

async function readAll<T>(session: Session, path: string, query: Record<string, string | undefined> = {}): Promise<{ items: T[]; seq: number }> {
  const items: T[] = [];
  let cursor: string | undefined;
  let seq = -1;
  for (let i = 0; i < 1000; i++) {
    const page = await session.request<Page<T>>('GET', path, { query: { ...query, limit: 200, cursor } });
    if (seq < 0) seq = page.seq!;
    items.push(...page.data.items);
    cursor = page.data.nextCursor ?? undefined;
    if (!cursor) return { items, seq };
  }
  throw new Error(`${path}: more than 1000 pages`);
}

export interface TaskQuery {
  boardId?: string;
  status?: TaskStatus;
  assigneeUserId?: string;
}

export async function readTasks(session: Session, teamId: string, q: TaskQuery = {}): Promise<Task[]> {
  const { items } = await readAll<Task>(session, `/teams/${teamId}/tasks`, { ...q });
  return items.sort(byTaskOrder);
}

export async function readComments(session: Session, taskId: string): Promise<Comment[]> {
  return (await readAll<Comment>(session, `/tasks/${taskId}/comments`)).items.sort(byCommentOrder);
}

export async function readMembers(session: Session, teamId: string): Promise<Member[]> {
  return (await readAll<Member>(session, `/teams/${teamId}/members`)).items.sort(byMemberOrder);
}

/** The team's latest seq (writers paused: the seq of the last write). */
export async function latestSeq(session: Session, teamId: string): Promise<number> {
  return (await session.getTeam(teamId)).seq!;
}

export interface Call {
  method: string;
  path: string;
  cursor: string | undefined;
  /** The call's number, from 1. */
  n: number;
}

/**
 * A `LiveHttp` over a session that lets a test act around each request: `before` may throw (a
 * failed request), `after` runs with the answer in hand before the collection gets it (writes
 * made there happen between two pages).
 */
export class SteppedHttp implements LiveHttp {
  readonly calls: Call[] = [];
  readonly signals: AbortSignal[] = [];

  constructor(
    private readonly session: Session,
    private readonly hooks: {
      before?: (call: Call) => Promise<void> | void;
      after?: (call: Call, res: ApiResponse<unknown>) => Promise<void> | void;
    } = {},
  ) {}

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<ApiResponse<T>> {
    const cursor = opts.query?.cursor;
    const call: Call = { method, path, cursor: typeof cursor === 'string' ? cursor : undefined, n: this.calls.length + 1 };
    this.calls.push(call);
    if (opts.signal) this.signals.push(opts.signal);
    await this.hooks.before?.(call);
    const res = await this.session.request<T>(method, path, opts);
    await this.hooks.after?.(call, res);
    return res;
  }
}

/** Every room of `client` joined and delivered up to `seq` (for tests that must wait for a delivery). */
export function roomsPast(client: RealtimeClient, seq: number): boolean {
  const subs = client.subscriptions;
  return subs.length > 0 && subs.every((s) => s.state === 'active' && (s.lastSeq ?? -1) >= seq);
}
