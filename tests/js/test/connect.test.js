'use strict';
// Scenario 1: connect with a token; the server-side personal channel is reported on the
// Centrifuge instance, and publications on server-side channels arrive there too.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients } = h.serverPerFile();

test('connect with a token: connected fires and user:<sub> is subscribed server-side', { timeout: 20000 }, async () => {
  const client = h.newClient(server, { token: h.connectionToken('ann', { info: { name: 'Ann' } }) }, clients);
  const serverSubs = h.record(client, ['subscribed']);
  const connected = h.waitEvent(client, 'connected');
  const personal = h.waitEvent(client, 'subscribed', {
    filter: (ctx) => ctx.channel === 'user:ann',
    label: 'server-side subscribed event for user:ann',
  });
  client.connect();

  const ctx = await connected;
  assert.equal(typeof ctx.client, 'string');
  assert.ok(ctx.client.length > 0, 'server assigns a client id');
  assert.equal(ctx.transport, 'websocket');
  assert.equal(client.state, 'connected');

  const sub = await personal;
  assert.equal(sub.channel, 'user:ann');
  // The built-in user namespace keeps history, so the subscription is positioned.
  assert.equal(sub.recoverable, true);
  assert.equal(typeof sub.streamPosition.epoch, 'string');
  assert.deepEqual(
    serverSubs.map((e) => e.ctx.channel),
    ['user:ann'],
    'only the personal channel is subscribed server-side',
  );
});

test('channels claim adds server-side subscriptions whose publications reach the instance', { timeout: 20000 }, async () => {
  const ann = h.newClient(server, { token: h.connectionToken('ann', { channels: ['chat:lobby'] }) }, clients);
  const lobby = h.waitEvent(ann, 'subscribed', { filter: (ctx) => ctx.channel === 'chat:lobby', label: 'chat:lobby server-side' });
  const personal = h.waitEvent(ann, 'subscribed', { filter: (ctx) => ctx.channel === 'user:ann', label: 'user:ann server-side' });
  ann.connect();
  await Promise.all([lobby, personal]);

  const { client: bob } = await h.connectUser(server, 'bob', clients, { tokenOptions: { info: { name: 'Bob' } } });
  const bobSub = await h.subscribe(bob, 'chat:lobby');
  const received = h.waitEvent(ann, 'publication', {
    filter: (ctx) => ctx.channel === 'chat:lobby',
    label: 'publication on server-side chat:lobby',
  });
  await h.withTimeout(bobSub.publish({ text: 'hello lobby' }), h.TIMEOUT, 'publish reply');
  const pub = await received;
  assert.deepEqual(pub.data, { text: 'hello lobby' });
  assert.equal(pub.info.user, 'bob');
  assert.deepEqual(pub.info.connInfo, { name: 'Bob' });
});
