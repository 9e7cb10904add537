'use strict';
// Scenario 7: a token-only namespace (`observation`, subscribe = []): a subscription
// getToken grants access; without a token, or with another user's token, it is 103.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients } = h.serverPerFile();

test('subscription getToken grants a token-only channel', { timeout: 20000 }, async () => {
  const { client } = await h.connectUser(server, 'ann', clients);
  const asked = [];
  const sub = await h.subscribe(client, 'observation:9', {
    getToken: async (ctx) => {
      asked.push(ctx.channel);
      return h.subscriptionToken('ann', ctx.channel);
    },
  });
  assert.equal(sub.state, 'subscribed');
  assert.deepEqual(asked, ['observation:9']);
  const stats = await h.withTimeout(sub.presenceStats(), h.TIMEOUT, 'presence_stats reply');
  assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
});

test('a static subscription token works too', { timeout: 20000 }, async () => {
  const { client } = await h.connectUser(server, 'ann', clients);
  const sub = await h.subscribe(client, 'observation:10', { token: h.subscriptionToken('ann', 'observation:10') });
  assert.equal(sub.state, 'subscribed');
});

async function refusedCode(client, channel, options) {
  const sub = client.newSubscription(channel, options);
  const unsubscribed = h.waitEvent(sub, 'unsubscribed', { label: `unsubscribed from ${channel}` });
  sub.subscribe();
  const ctx = await unsubscribed;
  assert.equal(sub.state, 'unsubscribed');
  return ctx.code;
}

test('without a subscription token the channel is refused with 103', { timeout: 20000 }, async () => {
  const { client } = await h.connectUser(server, 'ann', clients);
  const lost = h.record(client, ['disconnected', 'connecting']);
  assert.equal(await refusedCode(client, 'observation:9'), 103);
  // Another user's token, or a token for another channel, is no better.
  assert.equal(
    await refusedCode(client, 'observation:11', { getToken: async () => h.subscriptionToken('bob', 'observation:11') }),
    103,
  );
  assert.equal(
    await refusedCode(client, 'observation:12', { getToken: async () => h.subscriptionToken('ann', 'observation:13') }),
    103,
  );
  assert.equal(client.state, 'connected');
  assert.deepEqual(lost, []);
});

// The subscribe reply for a token with `exp` carries neither `expires` nor `ttl`, so the
// SDK never schedules a sub_refresh; the server then closes the whole connection with
// 3006 when the subscription token expires.
test(
  'an expiring subscription token is refreshed through getToken without dropping the connection',
  {
    timeout: 20000,
  },
  async () => {
    const { client } = await h.connectUser(server, 'ann', clients);
    const lost = h.record(client, ['disconnected', 'connecting']);
    const asked = [];
    const sub = await h.subscribe(client, 'observation:20', {
      getToken: async (ctx) => {
        asked.push(Date.now());
        return h.subscriptionToken('ann', ctx.channel, { ttl: asked.length === 1 ? 3 : 3600 });
      },
    });
    const events = h.record(sub, ['subscribing', 'unsubscribed', 'error']);
    await h.sleep(5000);
    assert.ok(asked.length >= 2, 'getToken was called again to refresh the subscription token');
    assert.equal(sub.state, 'subscribed');
    assert.deepEqual(events.map((e) => e.event), [], 'the subscription was never interrupted');
    assert.deepEqual(lost.map((e) => e.ctx.code), [], 'the connection was never dropped');
  },
);
