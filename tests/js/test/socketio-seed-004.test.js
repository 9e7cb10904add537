'use strict';
// Seed 004's Socket.IO frontend, as its design notes write it, against switchboard with
// the shipped examples/socketio-seed-004.toml: the JWT in an Authorization header, rooms
// joined by the app's own events, typing to the others, online users and user status
// through callbacks, and a backend publication arriving as `message:new`.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const h = require('../lib/harness');

const API_KEY = 'js-seed-004-api-key';
const EXAMPLE = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'examples', 'socketio-seed-004.toml'), 'utf8');

let server;
let backend;
/** The RPC requests the app backend got. */
const rpcCalls = [];
const sockets = [];

/**
 * The seed's backend handlers for notification:read / notifications:read-all, as an RPC
 * proxy endpoint: mark read (recorded here), then tell the user's other devices.
 */
function startBackend() {
  backend = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', async () => {
      const call = JSON.parse(body);
      rpcCalls.push(call);
      const data = call.method === 'notification:read' ? call.data : {};
      await fetch(`${server.httpUrl}/api/publish`, {
        method: 'POST',
        headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
        body: JSON.stringify({ channel: `user:${call.user}`, data, tags: { event: call.method, exclude_client: call.client } }),
      });
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ result: { data: { ok: true } } }));
    });
  });
  return new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
}

before(async () => {
  await startBackend();
  const config = EXAMPLE.replace('token_hmac_secret = "change-me"', `token_hmac_secret = "${h.SECRET}"\napi_key = "${API_KEY}"`)
    .replace('http://127.0.0.1:3001/switchboard/rpc', `http://127.0.0.1:${backend.address().port}/switchboard/rpc`);
  assert.notEqual(config, EXAMPLE, 'the example sets token_hmac_secret');
  assert.ok(config.includes(`${backend.address().port}/switchboard/rpc`), 'the example names the RPC endpoint');
  server = await h.startServer({ config });
});
afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
});
after(async () => {
  if (server) await server.stop();
  if (backend) await new Promise((resolve) => backend.close(resolve));
});

/** The seed's own connect code: the token in `extraHeaders`, default transports. */
function seedSocket(user) {
  const socket = io(server.httpUrl, {
    extraHeaders: { Authorization: `Bearer ${h.connectionToken(user)}` },
  });
  sockets.push(socket);
  return socket;
}

function connected(socket, label) {
  return h.waitEvent(socket, 'connect', { label });
}

function once(socket, event, label) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${label || event}`)), h.TIMEOUT);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

/** Resolves with the callback's argument of `socket.emit(event, ...args, cb)`. */
function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no callback for ${event}`)), h.TIMEOUT);
    socket.emit(event, ...args, (answer) => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

test('seed 004 chat frontend: join, typing, online users, status, message:new', async () => {
  const ann = seedSocket('ann');
  const bob = seedSocket('bob');
  await Promise.all([connected(ann, 'ann'), connected(bob, 'bob')]);

  // The seed emits join without a callback; an online-users call after it is answered
  // after the join (events on one connection run in order).
  ann.emit('join:conversation', 'c1');
  bob.emit('join:conversation', 'c1');
  await call(bob, 'user:get-status', 'bob');
  assert.deepEqual(await call(ann, 'conversation:get-online-users', 'c1'), ['ann', 'bob']);

  // Typing reaches the others, never the sender.
  const annTyping = once(ann, 'typing:start', 'ann sees bob typing');
  let bobSawItself = false;
  bob.on('typing:start', () => { bobSawItself = true; });
  bob.emit('typing:start', { conversationId: 'c1' });
  assert.deepEqual((await annTyping)[0], { conversationId: 'c1', userId: 'bob' });
  const annStop = once(ann, 'typing:stop', 'ann sees bob stop');
  bob.emit('typing:stop', { conversationId: 'c1' });
  assert.deepEqual((await annStop)[0], { conversationId: 'c1', userId: 'bob' });
  assert.equal(bobSawItself, false);

  // Status through callbacks, in the seed's shapes.
  const one = await call(ann, 'user:get-status', 'bob');
  assert.equal(one.userId, 'bob');
  assert.equal(one.status, 'online');
  const many = await call(ann, 'users:get-status', ['bob', 'nobody']);
  assert.deepEqual(many.map((s) => [s.userId, s.status]), [['bob', 'online'], ['nobody', 'offline']]);

  // The backend's `io.to('conversation:c1').emit('message:new', message)`.
  const message = { id: 'm1', conversationId: 'c1', senderId: 'ann', content: 'hi' };
  const atBob = once(bob, 'message:new', 'bob gets message:new');
  const resp = await fetch(`${server.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: 'conversation:c1', data: message, tags: { event: 'message:new' } }),
  });
  assert.equal(resp.status, 200);
  assert.deepEqual((await atBob)[0], message);

  // Leaving: no more messages for bob (a status call after the leave is answered after it).
  bob.emit('leave:conversation', 'c1');
  await call(bob, 'user:get-status', 'ann');
  assert.deepEqual(await call(ann, 'conversation:get-online-users', 'c1'), ['ann']);
});

test('after a reconnect the rooms joined by join:conversation are there again', async () => {
  const ann = seedSocket('ann');
  await connected(ann, 'ann');
  ann.emit('join:conversation', 'c2');
  await call(ann, 'user:get-status', 'ann');
  // The transport drops; socket.io-client reconnects by itself and sends its pid.
  const back = connected(ann, 'ann reconnected');
  ann.io.engine.close();
  await back;
  assert.equal(ann.recovered, false, 'missed events are not replayed');
  await call(ann, 'user:get-status', 'ann');
  const atAnn = once(ann, 'message:new', 'ann gets message:new after the reconnect');
  const resp = await fetch(`${server.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: 'conversation:c2', data: { id: 'm2' }, tags: { event: 'message:new' } }),
  });
  assert.equal(resp.status, 200);
  assert.deepEqual((await atAnn)[0], { id: 'm2' });
});

test('seed 004 notifications and status: read sync between devices through the backend, user:status-changed', async () => {
  const phone = seedSocket('dee');
  await connected(phone, 'dee on her phone');
  // Anyone coming online is announced to everyone. The announcement is published while
  // the connect subscribes its channels, so dee may or may not see her own first.
  const changed = h.waitEvent(phone, 'user:status-changed', {
    filter: (status) => status.userId === 'eve',
    label: 'user:status-changed for eve',
  }).then((status) => [status]);
  const eve = seedSocket('eve');
  await connected(eve, 'eve');
  const [status] = await changed;
  assert.equal(status.userId, 'eve');
  assert.equal(status.status, 'online');

  const laptop = seedSocket('dee');
  await connected(laptop, 'dee on her laptop');
  const synced = once(laptop, 'notification:read', 'the read on the other device');
  let phoneGotIt = false;
  phone.on('notification:read', () => { phoneGotIt = true; });
  phone.emit('notification:read', 'n1');
  const [id, meta] = await synced;
  assert.equal(id, 'n1');
  assert.equal(meta.channel, 'user:dee');
  const all = once(laptop, 'notifications:read-all', 'read-all on the other device');
  phone.emit('notifications:read-all');
  await all;
  assert.deepEqual(rpcCalls.map((c) => [c.method, c.user, c.data]), [['notification:read', 'dee', 'n1'], ['notifications:read-all', 'dee', {}]]);
  await call(phone, 'user:get-status', 'dee');
  assert.equal(phoneGotIt, false, 'the device that read it is not told');
});
