'use strict';
// Scenario 4: refused subscriptions end in the `unsubscribed` state with the server's
// error code, and the connection stays up.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients } = h.serverPerFile();

/** Subscribes to `channel`, expecting a refusal; returns the `unsubscribed` context. */
async function refused(client, channel) {
  const sub = client.newSubscription(channel);
  const events = h.record(sub, ['subscribed', 'error']);
  const unsubscribed = h.waitEvent(sub, 'unsubscribed', { label: `unsubscribed from ${channel}` });
  sub.subscribe();
  const ctx = await unsubscribed;
  assert.equal(sub.state, 'unsubscribed');
  // ready() on a refused subscription rejects instead of hanging.
  await assert.rejects(h.withTimeout(sub.ready(1000), 2000, 'ready()'), (err) => {
    assert.equal(err.code, 7, 'centrifuge-js errorCodes.subscriptionUnsubscribed');
    return true;
  });
  assert.deepEqual(events, [], 'a permanent error is not retried or reported as temporary');
  client.removeSubscription(sub);
  return ctx;
}

test("subscribing to another user's personal channel is refused with 103", { timeout: 20000 }, async () => {
  const { client } = await h.connectUser(server, 'ann', clients);
  const lost = h.record(client, ['disconnected', 'connecting']);
  const ctx = await refused(client, 'user:someoneelse');
  assert.equal(ctx.code, 103);
  assert.equal(ctx.reason, 'permission denied');

  // The connection stays up and keeps working.
  assert.equal(client.state, 'connected');
  const ok = await h.subscribe(client, 'chat:ok');
  assert.equal(ok.state, 'subscribed');
  assert.deepEqual(lost, [], 'no disconnect or reconnect happened');
});

test('subscribing to an unknown namespace is refused with 102', { timeout: 20000 }, async () => {
  const { client } = await h.connectUser(server, 'ann', clients);
  const lost = h.record(client, ['disconnected', 'connecting']);
  const ctx = await refused(client, 'secret:1');
  assert.equal(ctx.code, 102);
  assert.equal(ctx.reason, 'unknown channel');

  assert.equal(client.state, 'connected');
  const ok = await h.subscribe(client, 'chat:ok');
  assert.equal(ok.state, 'subscribed');
  assert.deepEqual(lost, [], 'no disconnect or reconnect happened');
});
