'use strict';
// A Socket.IO peer for TaskForge benchmarks: the same task-creation endpoint and realtime
// contract, built the way a team would with Node, Socket.IO and the Redis adapter, so a load
// generator can drive both side by side. Deliberately plain: defaults everywhere, no persistence.

const http = require('node:http');
const { createHash, randomUUID } = require('node:crypto');
const jwt = require('jsonwebtoken');
const { Server } = require('socket.io');

const PORT = Number(process.env.PORT ?? 0);
const HOST = process.env.HOST || '127.0.0.1';
const JWT_SECRET = process.env.JWT_SECRET;
const JWT_ISSUER = process.env.JWT_ISSUER || 'taskforge';
const REDIS_URL = process.env.REDIS_URL;
const MAX_BODY = 64 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TASKS_PATH = /^\/api\/v1\/teams\/([^/]+)\/tasks$/;

if (!JWT_SECRET) {
  console.error('JWT_SECRET is required');
  process.exit(2);
}

// Returns the user id, or null for any invalid token (bad signature, issuer, nbf/exp, no sub).
function verifyToken(token) {
  if (typeof token !== 'string' || token === '') return null;
  try {
    const claims = jwt.verify(token, JWT_SECRET, { algorithms: ['HS256'], issuer: JWT_ISSUER });
    return typeof claims.sub === 'string' ? claims.sub : null;
  } catch {
    return null;
  }
}

// Derived from the team id rather than random so that every instance behind Redis reports the
// same board for a team; cached because it is asked on every write.
const boards = new Map();
function boardIdOf(teamId) {
  let id = boards.get(teamId);
  if (!id) {
    const h = createHash('sha1').update('board:' + teamId).digest('hex');
    id = `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
    boards.set(teamId, id);
  }
  return id;
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

// Reads the whole body, or resolves null once it passes MAX_BODY.
function readBody(req) {
  if (Number(req.headers['content-length']) > MAX_BODY) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        req.removeAllListeners('data');
        resolve(null);
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function main() {
  // Per-team seq. In one process a Map is exact; several instances share Redis' INCR.
  let nextSeq, currentSeq;
  const redisClients = [];
  let adapter;
  if (REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: REDIS_URL });
    const sub = pub.duplicate();
    for (const c of [pub, sub]) {
      // node-redis reconnects by itself; without a listener an 'error' would kill the process.
      c.on('error', (err) => console.error('redis:', err.message));
      redisClients.push(c);
    }
    await Promise.all([pub.connect(), sub.connect()]);
    adapter = createAdapter(pub, sub);
    // INCR then publish, as a team would: two instances writing to one team may publish their
    // seqs out of order, so a remote subscriber can see N+1 before N. TaskForge repairs this.
    const key = (teamId) => 'taskforge-peer:seq:' + teamId;
    nextSeq = (teamId) => pub.incr(key(teamId));
    currentSeq = async (teamId) => Number(await pub.get(key(teamId))) || 0;
  } else {
    const seqs = new Map();
    nextSeq = (teamId) => {
      const seq = (seqs.get(teamId) ?? 0) + 1;
      seqs.set(teamId, seq);
      return seq;
    };
    currentSeq = (teamId) => seqs.get(teamId) ?? 0;
  }

  const httpServer = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error('request failed:', err);
      if (!res.headersSent) sendJson(res, 500, { error: 'internal' });
      else res.destroy();
    });
  });

  // Defaults on purpose (pingInterval 25 s, pingTimeout 20 s, no permessage-deflate); the
  // browser bundle is not served because nothing here needs it.
  const io = new Server(httpServer, { serveClient: false, ...(adapter && { adapter }) });

  io.use((socket, next) => {
    const token = socket.handshake.auth?.token ?? socket.handshake.query?.token;
    const userId = verifyToken(token);
    if (!userId) return next(new Error('unauthorized'));
    socket.data.userId = userId;
    next();
  });

  io.on('connection', (socket) => {
    // No membership check: TaskForge looks the membership up in its database on every
    // subscribe, the peer lets any authenticated user in. This favours the peer.
    socket.on('subscribe', async (payload) => {
      if (typeof payload?.teamId !== 'string' || !UUID.test(payload.teamId)) {
        socket.emit('failed', { code: 'bad_request' });
        return;
      }
      const teamId = payload.teamId.toLowerCase(); // one room per team, however it is spelled
      socket.join('team:' + teamId);
      // Read after joining. Without Redis this is exact (nothing runs in between). With Redis a
      // write racing this subscribe may be both counted here and delivered, or delivered before
      // 'subscribed'; TaskForge orders the join within the team's seq, the peer does not.
      try {
        socket.emit('subscribed', { teamId, seq: await currentSeq(teamId) });
      } catch (err) {
        console.error('subscribe failed:', err.message);
        socket.emit('failed', { code: 'internal' });
      }
    });
  });

  async function handle(req, res) {
    const path = req.url.split('?', 1)[0];
    if (req.method === 'GET' && path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
      return;
    }
    const m = req.method === 'POST' && TASKS_PATH.exec(path);
    if (!m || !UUID.test(m[1])) {
      sendJson(res, 404, { error: 'not_found' });
      return;
    }
    const teamId = m[1].toLowerCase();

    const auth = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '');
    const userId = auth && verifyToken(auth[1]);
    if (!userId) {
      sendJson(res, 401, { error: 'unauthorized' });
      return;
    }

    const raw = await readBody(req);
    if (raw === null) {
      // The rest of the body is not read, so the connection cannot be reused.
      res.setHeader('connection', 'close');
      sendJson(res, 413, { error: 'payload_too_large' });
      return;
    }
    let body;
    try {
      body = JSON.parse(raw);
    } catch {
      sendJson(res, 400, { error: 'bad_request', message: 'invalid JSON' });
      return;
    }
    const title = body?.title;
    if (typeof title !== 'string' || title.trim() === '') {
      sendJson(res, 400, { error: 'bad_request', message: 'title is required' });
      return;
    }

    const seq = await nextSeq(teamId);
    const now = new Date().toISOString();
    const taskId = randomUUID();
    const boardId = boardIdOf(teamId);
    const task = {
      id: taskId, teamId, boardId, title, description: '', status: 'todo', priority: 'medium',
      assigneeUserId: null, dueDate: null, position: 1024, createdBy: userId,
      createdAt: now, updatedAt: now, version: 1,
    };
    // Key order matters: clients scan the frame text and expect the activity's seq after data,
    // as in TaskForge's frames.
    const activity = {
      id: randomUUID(), v: 1, type: 'task.created', data: { task }, teamId,
      actorUserId: userId, ts: now, seq, boardId, taskId,
    };
    // With the Redis adapter this also publishes to the other instances.
    io.to('team:' + teamId).emit('activity', activity);
    sendJson(res, 201, task);
  }

  let stopping = false;
  async function shutdown() {
    if (stopping) process.exit(0); // a second signal: do not wait any longer
    stopping = true;
    // Keep-alive connections from a load generator would otherwise hold the server open.
    setTimeout(() => process.exit(0), 3000).unref();
    const closing = io.close();
    httpServer.closeAllConnections();
    await closing;
    await Promise.allSettled(redisClients.map((c) => c.quit()));
    process.exit(0);
  }
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  httpServer.listen(PORT, HOST, () => {
    const { address, port } = httpServer.address();
    const host = address.includes(':') ? `[${address}]` : address;
    console.log(`socketio-peer listening on http://${host}:${port}`);
  });
}

main().catch((err) => {
  console.error('socketio-peer failed to start:', err);
  process.exit(1);
});
