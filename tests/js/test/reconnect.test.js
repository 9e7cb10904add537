'use strict';
// Scenario 6: the server restarts; centrifuge-js sees 3001 "shutdown", reconnects to the
// new process on the same port and re-establishes its subscription.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const clients = [];
let server;
after(async () => {
  h.closeAll(clients);
  if (server) await server.stop();
});

test('client reconnects and resubscribes after a server restart', { timeout: 40000 }, async () => {
  server = await h.startServer();
  const port = server.port;
  const { client: ann, clientId: firstId } = await h.connectUser(server, 'ann', clients);
  const sub = await h.subscribe(ann, 'chat:room1');

  const connecting = h.waitEvent(ann, 'connecting', { label: 'connecting after shutdown' });
  const resubscribing = h.waitEvent(sub, 'subscribing', { label: 'subscription back to subscribing' });
  const exit = await server.stop('SIGTERM');
  assert.equal(exit.code, 0, `server exit ${JSON.stringify(exit)}`);
  const why = await connecting;
  assert.equal(why.code, 3001);
  assert.equal(why.reason, 'shutdown');
  await resubscribing;
  assert.equal(ann.state, 'connecting');

  // Let a few reconnect attempts fail against the closed port, then restart.
  await h.sleep(700);
  assert.equal(ann.state, 'connecting');
  const reconnected = h.waitEvent(ann, 'connected', { timeout: 10000, label: 'connected again' });
  const resubscribed = h.waitEvent(sub, 'subscribed', { timeout: 10000, label: 'subscribed again' });
  server = await h.startServer({ port });
  const again = await reconnected;
  assert.notEqual(again.client, firstId, 'a new connection on the new process');
  const resub = await resubscribed;
  assert.equal(resub.channel, 'chat:room1');
  // The in-memory history died with the old process: the client asked to recover and
  // the server must not claim it did.
  assert.equal(resub.wasRecovering, true);
  assert.equal(resub.recovered, false);
  assert.equal(sub.state, 'subscribed');

  // A publication made after the restart by another client reaches the resubscribed one.
  const { client: bob } = await h.connectUser(server, 'bob', clients);
  const bobSub = await h.subscribe(bob, 'chat:room1');
  const received = h.waitEvent(sub, 'publication', { label: 'publication after restart' });
  await h.withTimeout(bobSub.publish({ text: 'after restart' }), h.TIMEOUT, 'publish reply');
  const pub = await received;
  assert.deepEqual(pub.data, { text: 'after restart' });
  assert.equal(pub.info.user, 'bob');
});
