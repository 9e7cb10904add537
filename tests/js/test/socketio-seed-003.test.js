'use strict';
// Seed 003's Socket.IO frontend, as its design notes write it (hooks/useWebSocket.ts and
// EarningsPage), against switchboard with the shipped examples/socketio-seed-003.toml:
// the JWT in `auth`, per-user rooms joined on connect, the backend's emits as API
// publications, a broadcast, a logout disconnect, and a reconnect that recovers.

const fs = require('node:fs');
const path = require('node:path');
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const h = require('../lib/harness');

const API_KEY = 'js-seed-003-api-key';
const EXAMPLE = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'examples', 'socketio-seed-003.toml'), 'utf8');

let server;
const sockets = [];
before(async () => {
  const config = EXAMPLE.replace('token_hmac_secret = "change-me"', `token_hmac_secret = "${h.SECRET}"`)
    .replace('api_key = "change-me-too"', `api_key = "${API_KEY}"`);
  assert.ok(config.includes(h.SECRET) && config.includes(API_KEY), 'the example sets both keys');
  server = await h.startServer({ config });
});
afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
});
after(() => server && server.stop());

/** The seed's `connect` of hooks/useWebSocket.ts, unchanged but for the URL. */
function seedSocket(token) {
  const socket = io(server.httpUrl, {
    auth: {
      token: token
    },
    reconnection: true,
    reconnectionDelay: 1000,
    reconnectionAttempts: 5
  });
  sockets.push(socket);
  return socket;
}

/** The listeners of the seed's EarningsPage, recording instead of rendering. */
function earningsPage(socket) {
  const page = { earnings: [], notifications: [] };
  socket.on('earnings:new', (response) => {
    page.earnings = [response.data, ...page.earnings];
  });
  socket.on('earnings:updated', (response) => {
    page.earnings = page.earnings.map((e) => (e.id === response.data.id ? { ...e, ...response.data.changes } : e));
  });
  socket.on('earnings:deleted', (response) => {
    page.earnings = page.earnings.filter((e) => e.id !== response.data.id);
  });
  socket.on('notification', (response) => {
    page.notifications.push(response.data);
  });
  return page;
}

/** The backend's helpers (src/websocket/events/*.ts), as switchboard API calls. */
async function api(method, body) {
  const res = await fetch(`${server.httpUrl}/api/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(json.result, JSON.stringify(json));
}
const envelope = (event, data) => ({ event, timestamp: new Date().toISOString(), data });
const emitEarning = (userId, event, data) => api('publish', { channel: `earnings:${userId}`, data: envelope(event, data), tags: { event } });
const sendNotification = (userId, n) => api('publish', { channel: `notifications:${userId}`, data: envelope('notification', n), tags: { event: 'notification' } });

async function until(label, check) {
  const deadline = Date.now() + h.TIMEOUT * 2;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await h.sleep(20);
  }
}

test('seed 003: earnings and notifications reach their user only; broadcasts reach all; logout disconnects', async () => {
  const ann = seedSocket(h.connectionToken('u-ann'));
  const bob = seedSocket(h.connectionToken('u-bob'));
  const annPage = earningsPage(ann);
  const bobPage = earningsPage(bob);
  await Promise.all([h.waitEvent(ann, 'connect', { label: 'ann' }), h.waitEvent(bob, 'connect', { label: 'bob' })]);

  await emitEarning('u-ann', 'earnings:new', { id: 'e1', userId: 'u-ann', amount: 100, hours: 8 });
  await emitEarning('u-ann', 'earnings:new', { id: 'e2', userId: 'u-ann', amount: 50, hours: 4 });
  await emitEarning('u-ann', 'earnings:updated', { id: 'e1', userId: 'u-ann', changes: { amount: 120, hours: 10 } });
  await emitEarning('u-ann', 'earnings:deleted', { id: 'e2' });
  await sendNotification('u-ann', { id: 'n1', title: 'Earning Created', message: 'New earning of $100 added to Upwork', type: 'success' });
  await until('ann\'s page', () => annPage.notifications.length === 1);
  assert.deepEqual(annPage.earnings, [{ id: 'e1', userId: 'u-ann', amount: 120, hours: 10 }]);
  assert.equal(annPage.notifications[0].title, 'Earning Created');

  // broadcastNotification: everyone.
  await api('publish', { channel: 'broadcast:all', data: envelope('notification', { id: 'n2', title: 'Server Maintenance' }), tags: { event: 'notification' } });
  await until('the broadcast at bob', () => bobPage.notifications.length === 1);
  await until('the broadcast at ann', () => annPage.notifications.length === 2);
  assert.deepEqual(bobPage.earnings, [], 'bob sees none of ann\'s earnings');
  assert.equal(bobPage.notifications[0].title, 'Server Maintenance');

  // disconnectUser(userId) on logout: no automatic reconnect.
  const gone = h.waitEvent(bob, 'disconnect', { label: 'bob disconnected' });
  await api('disconnect', { user: 'u-bob' });
  assert.equal(await gone, 'io server disconnect');
});

test('seed 003: a dropped connection reconnects by itself and recovers the earnings it missed', async () => {
  const ann = seedSocket(h.connectionToken('u-cy'));
  const page = earningsPage(ann);
  await h.waitEvent(ann, 'connect', { label: 'connected' });
  await emitEarning('u-cy', 'earnings:new', { id: 'e1', amount: 10 });
  await until('the first earning', () => page.earnings.length === 1);

  // The network drops; the backend goes on emitting; socket.io-client reconnects after
  // its reconnectionDelay.
  const back = h.waitEvent(ann, 'connect', { label: 'reconnected', timeout: 10000 });
  ann.io.engine.close();
  await emitEarning('u-cy', 'earnings:new', { id: 'e2', amount: 20 });
  await emitEarning('u-cy', 'earnings:updated', { id: 'e1', changes: { amount: 11 } });
  await sendNotification('u-cy', { id: 'n1', title: 'Earnings summary updated' });
  await back;
  assert.equal(ann.recovered, true, 'socket.recovered');
  await until('the missed events', () => page.notifications.length === 1);
  assert.deepEqual(page.earnings, [{ id: 'e2', amount: 20 }, { id: 'e1', amount: 11 }]);
});
