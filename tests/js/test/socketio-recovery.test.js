'use strict';
// Connection-state recovery with the real socket.io-client (>= 4.6): after a reconnect
// within `socketio.recovery_window`, `socket.recovered` is true, the rooms joined through
// routes are there again, and the publications missed meanwhile arrive as their own
// events, in order, once — on the same node, and on another node of a Redis cluster.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const net = require('node:net');
const { io } = require('socket.io-client');
const h = require('../lib/harness');

const API_KEY = 'js-recovery-api-key';
const hasRedis = spawnSync('redis-server', ['--version']).status === 0;
if (!hasRedis) {
  console.error('\n*** SKIPPED: redis-server is not installed; cross-node recovery NOT tested. scripts/test.sh installs it. ***\n');
}

const RECOVERY = `api_key = "${API_KEY}"
${h.DEFAULT_CONFIG}
[socketio]
recovery_window = "1m"
recovery_max_publications = 20

[[socketio.routes]]
event = "room:join"
action = "subscribe"
channel = "chat:{0}"
`;

const sockets = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
});

function newSocket(url, user, options = {}) {
  const socket = io(url, {
    auth: { token: h.connectionToken(user) },
    transports: ['websocket'],
    reconnectionDelay: 300,
    reconnectionDelayMax: 600,
    ...options,
  });
  sockets.push(socket);
  return socket;
}

function call(socket, event, ...args) {
  return h.withTimeout(new Promise((resolve) => socket.emit(event, ...args, resolve)), h.TIMEOUT, `ack of ${event}`);
}

async function api(server, method, body) {
  const res = await fetch(`${server.httpUrl}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(json.result, JSON.stringify(json));
  return json.result;
}

function publish(server, channel, n) {
  return api(server, 'publish', { channel, data: { n }, tags: { event: 'message:new' } });
}

/** Collects `message:new` payloads' `n` with the offset socket.io-client records. */
function collect(socket) {
  const got = [];
  socket.on('message:new', (message, meta, offset) => {
    assert.equal(typeof offset, 'string', 'the offset is the last argument');
    got.push(`${meta.channel}#${message.n}`);
  });
  return got;
}

async function until(label, check) {
  const deadline = Date.now() + h.TIMEOUT;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await h.sleep(20);
  }
}

/** Waits until the server has closed the old connection (its presence is gone). */
function closedOnServer(server, channel) {
  return until('the server to see the close', async () => (await api(server, 'presence_stats', { channel })).num_clients === 0);
}

test('same node: missed publications of a route room and the user channel arrive in order, once, recovered', async (t) => {
  const server = await h.startServer({ config: RECOVERY });
  t.after(() => server.stop());
  const ann = newSocket(server.httpUrl, 'ann', { reconnection: false });
  const got = collect(ann);
  await h.waitEvent(ann, 'connect', { label: 'ann connects' });
  assert.deepEqual(await call(ann, 'room:join', 'r1'), { ok: true });
  await publish(server, 'chat:r1', 0);
  await until('the first message', () => got.length === 1);

  // The transport drops; the server sees the close; publications go on meanwhile.
  ann.io.engine.close();
  await closedOnServer(server, 'chat:r1');
  for (const n of [1, 2, 3]) await publish(server, 'chat:r1', n);
  await publish(server, 'user:ann', 4);
  await publish(server, 'chat:r1', 5);

  const firstId = ann.id;
  const back = h.waitEvent(ann, 'connect', { label: 'ann reconnects' });
  ann.connect();
  await back;
  assert.equal(ann.recovered, true, 'socket.recovered');
  assert.notEqual(ann.id, firstId, 'a new client id');
  await until('the missed messages', () => got.length >= 6);
  // Each channel's in order; the room is joined again: a live one arrives once, after.
  assert.deepEqual(got.filter((m) => m.startsWith('chat:')), ['chat:r1#0', 'chat:r1#1', 'chat:r1#2', 'chat:r1#3', 'chat:r1#5']);
  assert.deepEqual(got.filter((m) => m.startsWith('user:')), ['user:ann#4']);
  await publish(server, 'chat:r1', 6);
  await until('the live message', () => got.length === 7);
  assert.equal(got[6], 'chat:r1#6');

  // A second drop, this time with nothing missed: recovered again, nothing replayed.
  ann.io.engine.close();
  await closedOnServer(server, 'chat:r1');
  const again = h.waitEvent(ann, 'connect', { label: 'ann reconnects again' });
  ann.connect();
  await again;
  assert.equal(ann.recovered, true);
  await publish(server, 'chat:r1', 7);
  await until('the next live message', () => got.length === 8);
  assert.deepEqual(got.slice(6), ['chat:r1#6', 'chat:r1#7']);
});

test('more missed than recovery_max_publications: not recovered, the room still joined again', async (t) => {
  const server = await h.startServer({ config: RECOVERY });
  t.after(() => server.stop());
  const bob = newSocket(server.httpUrl, 'bob', { reconnection: false });
  const got = collect(bob);
  await h.waitEvent(bob, 'connect', { label: 'bob connects' });
  await call(bob, 'room:join', 'r2');
  bob.io.engine.close();
  await closedOnServer(server, 'chat:r2');
  for (let n = 0; n < 21; n++) await publish(server, 'chat:r2', n);
  const back = h.waitEvent(bob, 'connect', { label: 'bob reconnects' });
  bob.connect();
  await back;
  assert.equal(bob.recovered, false);
  await publish(server, 'chat:r2', 99);
  await until('the live message', () => got.length === 1);
  assert.deepEqual(got, ['chat:r2#99'], 'nothing replayed, the room is there');
});

// Two nodes on one redis-server behind a TCP balancer (see multinode.test.js): the
// connection drops, socket.io-client reconnects by itself through the balancer to the
// other node, which recovers from the state the first node kept in Redis.
let redis;
let nodes = [];
let balancer;


before(async () => {
  if (!hasRedis) return;
  const port = await h.freeRedisPort();
  redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const config = `engine = "redis"\n${RECOVERY}\n[redis]\nurl = "redis://127.0.0.1:${port}"\n`;
  // The first node waits for Redis to answer (/health) before the test goes on.
  await until('redis-server', () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  }));
  nodes = [await h.startServer({ config }), await h.startServer({ config })];
  balancer = await h.startBalancer(nodes[0].port);
});
after(async () => {
  for (const n of nodes) await n.stop('SIGKILL');
  if (balancer) await balancer.close();
  if (redis) redis.kill('SIGKILL');
});

test('another node: a client moved by the balancer recovers its room and what it missed', { skip: !hasRedis, timeout: 30000 }, async () => {
  const cy = newSocket(`http://127.0.0.1:${balancer.port}`, 'cy');
  const got = collect(cy);
  const firstNode = (await h.waitEvent(cy, 'connected', { label: 'cy connects to the first node' })).node;
  await call(cy, 'room:join', 'r3');
  await publish(nodes[1], 'chat:r3', 0);
  await until('the first message', () => got.length === 1);

  // The first node keeps running (it saves the state when it sees the close); the
  // balancer sends the reconnect to the second. Publications go on through it.
  const connectedAgain = h.waitEvent(cy, 'connected', { label: 'cy reconnects to the second node', timeout: 10000 });
  balancer.switchTo(nodes[1].port);
  for (const n of [1, 2, 3]) await publish(nodes[1], 'chat:r3', n);
  assert.notEqual((await connectedAgain).node, firstNode, 'on the other node');
  assert.equal(cy.recovered, true, 'socket.recovered');
  await publish(nodes[0], 'chat:r3', 4);
  await until('every message', () => got.length >= 5);
  await h.sleep(100);
  assert.deepEqual(got, ['chat:r3#0', 'chat:r3#1', 'chat:r3#2', 'chat:r3#3', 'chat:r3#4']);
});
