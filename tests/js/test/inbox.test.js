'use strict';
// The inbox with the real SDKs: a user who closed the app gets what they missed on a
// FRESH client (no stream position of its own) — centrifuge-js as recovered
// publications of the server-side personal channel, socket.io-client as the
// publications' own events — exactly once, in order; a read on one device reaches the
// user's other device over either protocol; history_size and history_ttl bound it, and
// a client that missed more is told.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const h = require('../lib/harness');

const { server, clients, api } = h.serverPerFile({
  settings: 'auto_subscribe = ["user:{sub}", "brief:{sub}"]',
  namespaces: `
[namespaces.user]
subscribe = ["user:{sub}"]
history_size = 60
history_ttl = "1h"
inbox = true

[namespaces.brief]
subscribe = ["brief:{sub}"]
history_size = 10
history_ttl = "300ms"
inbox = true
`,
});
const sockets = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
});

async function until(what, done) {
  const deadline = Date.now() + h.TIMEOUT;
  while (!done()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await h.sleep(20);
  }
}

/** Waits until the server has released every connection of `user`. */
async function released(user) {
  const deadline = Date.now() + h.TIMEOUT;
  for (;;) {
    const { statuses } = await api('user_status', { users: [user] });
    if (statuses[0].connections === 0) return;
    assert.ok(Date.now() < deadline, `${user} still connected`);
    await h.sleep(20);
  }
}

/** A user's first session, closed: the user has an inbox from here on. */
async function visitOnce(user) {
  const { client } = await h.connectUser(server, user, clients);
  client.disconnect();
  await released(user);
}

/** A fresh centrifuge-js client (never connected: no positions) recording the user's
 * personal-channel publications and `subscribed` contexts from its first connect. */
function freshClient(user, channel = `user:${user}`) {
  const client = h.newClient(server, { token: h.connectionToken(user) }, clients);
  const got = [];
  client.on('publication', (ctx) => {
    if (ctx.channel === channel) got.push(ctx.data.n);
  });
  const subscribed = h.waitEvent(client, 'subscribed', {
    filter: (ctx) => ctx.channel === channel,
    label: `${user} subscribed to ${channel}`,
  });
  client.connect();
  return { client, got, subscribed };
}

function freshSocket(user) {
  const socket = io(server.httpUrl, { auth: { token: h.connectionToken(user) }, transports: ['websocket'] });
  sockets.push(socket);
  const got = [];
  socket.on('publication', (p) => {
    if (p.channel === `user:${user}`) got.push(p.data.n);
  });
  const connected = h.waitEvent(socket, 'connected', { label: `${user} connected` });
  return { socket, got, connected };
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

test('centrifuge-js: closed, 50 published, a fresh client gets exactly the 50 in order, once', async () => {
  await visitOnce('ann');
  for (const n of range(0, 50)) await api('publish', { channel: 'user:ann', data: { n } });

  const b = freshClient('ann');
  const ctx = await b.subscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  await until('the 50', () => b.got.length >= 50);
  await api('publish', { channel: 'user:ann', data: { n: 50 } });
  await until('the live one', () => b.got.length >= 51);
  await h.sleep(100);
  assert.deepEqual(b.got, range(0, 51), 'in order, no duplicate, live after the missed');
  b.client.disconnect();
  await released('ann');

  // Handed out once: another fresh client has nothing to catch up.
  const c = freshClient('ann');
  const again = await c.subscribed;
  assert.equal(again.recovered, true);
  await h.sleep(200);
  assert.deepEqual(c.got, []);
});

test('socket.io-client: closed, 50 published, a fresh socket gets the 50 as events in order, once', async () => {
  await visitOnce('bob');
  for (const n of range(0, 50)) await api('publish', { channel: 'user:bob', data: { n } });

  const s = freshSocket('bob');
  const connected = await s.connected;
  assert.equal(connected.subs['user:bob'].recovered, true, JSON.stringify(connected));
  await until('the 50', () => s.got.length >= 50);
  await h.sleep(100);
  assert.deepEqual(s.got, range(0, 50));
  s.socket.disconnect();
  await released('bob');

  const t = freshSocket('bob');
  await t.connected;
  await h.sleep(200);
  assert.deepEqual(t.got, [], 'nothing twice');
});

test('read on one device: the other device is told, over both protocols', async () => {
  const { client: laptop } = await h.connectUser(server, 'carol', clients);
  const phone = freshSocket('carol');
  await phone.connected;
  for (const n of range(0, 3)) await api('publish', { channel: 'user:carol', data: { n } });
  await until('the phone got them', () => phone.got.length >= 3);

  // Socket.IO phone reads: the centrifuge-js laptop gets a `message` push.
  const told = h.waitEvent(laptop, 'message', {
    filter: (ctx) => ctx.data.type === 'inbox.read',
    label: 'laptop told',
  });
  const ack = await new Promise((resolve) => {
    phone.socket.emit('inbox:read', { channel: 'user:carol', offset: 2 }, resolve);
  });
  assert.equal(ack.result.read, 2, JSON.stringify(ack));
  const push = await told;
  assert.deepEqual(
    { channel: push.data.channel, read: push.data.read },
    { channel: 'user:carol', read: 2 },
  );

  // The laptop reads the rest (RPC): the phone gets `inbox:read`.
  const phoneTold = h.waitEvent(phone.socket, 'inbox:read', { label: 'phone told' });
  const { data } = await laptop.rpc('inbox.read', { channel: 'user:carol', offset: 3 });
  assert.equal(data.read, 3);
  const update = await phoneTold;
  assert.deepEqual({ channel: update.channel, read: update.read }, { channel: 'user:carol', read: 3 });
  const { channels } = await api('inbox_status', { user: 'carol', channels: ['user:carol'] });
  assert.equal(channels[0].unread, 0);
});

test('limits: more missed than history_size, or past history_ttl, is reported, not hidden', async () => {
  await visitOnce('dave');
  for (const n of range(0, 65)) await api('publish', { channel: 'user:dave', data: { n } });
  for (const n of range(0, 3)) await api('publish', { channel: 'brief:dave', data: { n } });
  // brief keeps publications for 300 ms.
  await h.sleep(500);

  const c = freshClient('dave');
  const brief = h.waitEvent(c.client, 'subscribed', { filter: (ctx) => ctx.channel === 'brief:dave' });
  const ctx = await c.subscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, false, '65 missed, 60 kept');
  const briefCtx = await brief;
  assert.equal(briefCtx.wasRecovering, true);
  assert.equal(briefCtx.recovered, false, 'expired');
  c.client.disconnect();
  await released('dave');

  // Socket.IO: told in `connected`; what history still holds arrives as events.
  await visitOnce('erin');
  for (const n of range(0, 65)) await api('publish', { channel: 'user:erin', data: { n } });
  const s = freshSocket('erin');
  const connected = await s.connected;
  const sub = connected.subs['user:erin'];
  assert.equal(sub.was_recovering, true, JSON.stringify(sub));
  assert.equal(sub.recovered, undefined, JSON.stringify(sub));
  await until('the kept 60', () => s.got.length >= 60);
  await h.sleep(100);
  assert.deepEqual(s.got, range(5, 65));
});
