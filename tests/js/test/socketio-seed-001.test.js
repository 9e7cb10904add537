'use strict';
// Seed 001's Socket.IO frontend against switchboard with the shipped
// examples/socketio-seed-001.toml. The seed's document shows the components that use its
// WebSocketContext (joinRoom / leaveRoom / emit / isConnected) and lists the events both
// ways; the context below is written from that list, as the seed's would be: the JWT in
// `auth`, `join_room` / `leave_room` with the room name, typing and presence emits, and
// listeners for every documented server event.

const fs = require('node:fs');
const path = require('node:path');
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const h = require('../lib/harness');

const API_KEY = 'js-seed-001-api-key';
const EXAMPLE = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'examples', 'socketio-seed-001.toml'), 'utf8');
/** The server events the seed's document lists ("Server to Client"). */
const SERVER_EVENTS = [
  'notification_received', 'notification_count_updated', 'work_order_updated',
  'work_order_assignment_update', 'repair_ticket_updated', 'user_online', 'user_offline',
  'user_typing_start', 'user_typing_stop', 'user_presence_update',
];

let server;
const contexts = [];
before(async () => {
  const config = EXAMPLE.replace('token_hmac_secret = "change-me"', `token_hmac_secret = "${h.SECRET}"`)
    .replace('api_key = "change-me-too"', `api_key = "${API_KEY}"`);
  assert.ok(config.includes(h.SECRET) && config.includes(API_KEY), 'the example sets both keys');
  server = await h.startServer({ config });
});
afterEach(() => {
  for (const c of contexts.splice(0)) c.socket.disconnect();
});
after(() => server && server.stop());

/** contexts/WebSocketContext.jsx without React: the connection, its helpers, and what arrived. */
function webSocketContext(user, roles) {
  const socket = io(server.httpUrl, { auth: { token: h.connectionToken(user, { roles }) } });
  const ctx = {
    socket,
    received: [],
    joinRoom: (room) => socket.emit('join_room', room),
    leaveRoom: (room) => socket.emit('leave_room', room),
    emit: (event, data) => socket.emit(event, data),
    /** Resolves with the payload of the next `event` that passes `filter`. */
    next(event, filter = () => true, timeout = h.TIMEOUT) {
      return h.waitEvent(socket, event, { filter, timeout, label: `${user}: ${event}` });
    },
  };
  for (const event of SERVER_EVENTS) socket.on(event, (data) => ctx.received.push({ event, data }));
  contexts.push(ctx);
  return ctx;
}

async function publish(channel, event, data) {
  const res = await fetch(`${server.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data, tags: { event } }),
  });
  const json = await res.json();
  assert.ok(json.result, JSON.stringify(json));
}

/** An event on another connection, after which everything sent before it has arrived. */
async function settle(ctx) {
  await h.withTimeout(ctx.socket.emitWithAck('ping', {}), h.TIMEOUT, 'ping');
}

test('seed 001: rooms, role and user notifications, who comes online, presence updates', async () => {
  const admin = webSocketContext('admin-1', ['admin']);
  await h.waitEvent(admin.socket, 'connect', { label: 'admin connects' });
  const techOnline = admin.next('user_online', (d) => d.userId === 'tech-1');
  const tech = webSocketContext('tech-1', ['technician']);
  await h.waitEvent(tech.socket, 'connect', { label: 'tech connects' });
  const online = await techOnline;
  assert.equal(online.status, 'online');

  // Both view work order 123; the backend's `io.to('work_order_123').emit(...)`.
  admin.joinRoom('work_order_123');
  tech.joinRoom('work_order_123');
  await Promise.all([settle(admin), settle(tech)]);
  const atTech = tech.next('work_order_updated');
  const atAdmin = admin.next('work_order_updated');
  await publish('rooms:work_order_123', 'work_order_updated', { id: 123, status: 'in_progress' });
  assert.deepEqual(await atTech, { id: 123, status: 'in_progress' });
  assert.deepEqual(await atAdmin, { id: 123, status: 'in_progress' });

  // user_{id} and admin_room.
  const notified = tech.next('notification_received');
  await publish('user:tech-1', 'notification_received', { id: 1, title: 'Assigned to WO 123' });
  assert.equal((await notified).title, 'Assigned to WO 123');
  const adminOnly = admin.next('repair_ticket_updated');
  await publish('role:admin', 'repair_ticket_updated', { id: 7 });
  assert.deepEqual(await adminOnly, { id: 7 });

  // user_presence goes to the others.
  const presence = admin.next('user_presence_update');
  tech.emit('user_presence', { status: 'away' });
  assert.deepEqual(await presence, { userId: 'tech-1', status: 'away' });

  // Leaving the room: no more updates for the tech.
  tech.leaveRoom('work_order_123');
  await settle(tech);
  const last = admin.next('work_order_updated');
  await publish('rooms:work_order_123', 'work_order_updated', { id: 123, status: 'done' });
  await last;
  await settle(tech);
  const techEvents = tech.received.map((r) => r.event);
  assert.deepEqual(techEvents.filter((e) => e === 'work_order_updated').length, 1, JSON.stringify(techEvents));
  assert.ok(!techEvents.includes('repair_ticket_updated'), 'admin_room is the admins\'');
  assert.ok(!techEvents.includes('user_presence_update'), 'not to the sender');

  // The tech closes the app: after the offline debounce, user_offline.
  const offline = admin.next('user_offline', (d) => d.userId === 'tech-1', 10000);
  tech.socket.disconnect();
  assert.equal((await offline).status, 'offline');
});

test('seed 001: typing in a work order form reaches the others; the server stops it after silence', { timeout: 30000 }, async () => {
  const ann = webSocketContext('ann', ['technician']);
  const bob = webSocketContext('bob', ['technician']);
  await Promise.all([h.waitEvent(ann.socket, 'connect'), h.waitEvent(bob.socket, 'connect')]);
  ann.joinRoom('work_order_9');
  bob.joinRoom('work_order_9');
  await Promise.all([settle(ann), settle(bob)]);

  const start = bob.next('user_typing_start');
  ann.emit('typing_start', { room: 'work_order_9' });
  assert.deepEqual(await start, { userId: 'ann', room: 'work_order_9' });
  const stop = bob.next('user_typing_stop');
  ann.emit('typing_stop', { room: 'work_order_9' });
  assert.deepEqual(await stop, { userId: 'ann', room: 'work_order_9', typing: false });

  // Typing, then silence (the tab closed mid-word): the server's own stop, same event.
  const again = bob.next('user_typing_start');
  ann.emit('typing_start', { room: 'work_order_9' });
  await again;
  const auto = await bob.next('user_typing_stop', () => true, 15000);
  assert.equal(auto.userId, 'ann');
  assert.equal(auto.channel, 'rooms:work_order_9');
  await settle(ann);
  // The typist's own signals skip it; the server's stop goes to the whole room.
  assert.deepEqual(ann.received.filter((r) => r.event.startsWith('user_typing')).map((r) => r.event), ['user_typing_stop']);
});
