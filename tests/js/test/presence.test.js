'use strict';
// Scenario 3: presence and presence stats on chat:room1 with two users, one of them in
// two tabs; join and leave events as clients come and go.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients } = h.serverPerFile();

test('presence counts tabs and users; join and leave arrive', { timeout: 30000 }, async () => {
  const CH = 'chat:room1';
  const ann1 = await h.connectUser(server, 'ann', clients, { tokenOptions: { info: { tab: 1 } } });
  const watch = await h.subscribe(ann1.client, CH);

  const bobJoined = h.waitEvent(watch, 'join', { filter: (c) => c.info.user === 'bob', label: 'join of bob' });
  const bob = await h.connectUser(server, 'bob', clients);
  await h.subscribe(bob.client, CH);
  const join = await bobJoined;
  assert.equal(join.channel, CH);
  assert.equal(join.info.client, bob.clientId);

  const annTab2Joined = h.waitEvent(watch, 'join', {
    filter: (c) => c.info.user === 'ann' && c.info.client !== ann1.clientId,
    label: "join of ann's second tab",
  });
  const ann2 = await h.connectUser(server, 'ann', clients, { tokenOptions: { info: { tab: 2 } } });
  const ann2Sub = await h.subscribe(ann2.client, CH);
  const join2 = await annTab2Joined;
  assert.equal(join2.info.client, ann2.clientId);
  assert.deepEqual(join2.info.connInfo, { tab: 2 });

  const stats = await h.withTimeout(ann2Sub.presenceStats(), h.TIMEOUT, 'presence_stats reply');
  assert.deepEqual(stats, { numClients: 3, numUsers: 2 });

  const presence = await h.withTimeout(watch.presence(), h.TIMEOUT, 'presence reply');
  const byClient = Object.fromEntries(Object.entries(presence.clients).map(([id, info]) => [id, info.user]));
  assert.deepEqual(byClient, {
    [ann1.clientId]: 'ann',
    [ann2.clientId]: 'ann',
    [bob.clientId]: 'bob',
  });
  assert.deepEqual(presence.clients[ann1.clientId].connInfo, { tab: 1 });
  assert.equal(presence.clients[bob.clientId].client, bob.clientId);

  // Bob closes his connection: the others see him leave, and presence drops him.
  const bobLeft = h.waitEvent(watch, 'leave', { filter: (c) => c.info.user === 'bob', label: 'leave of bob' });
  bob.client.disconnect();
  const leave = await bobLeft;
  assert.equal(leave.channel, CH);
  assert.equal(leave.info.client, bob.clientId);
  const afterBob = await h.withTimeout(watch.presenceStats(), h.TIMEOUT, 'presence_stats reply');
  assert.deepEqual(afterBob, { numClients: 2, numUsers: 1 });

  // One of ann's tabs unsubscribes: ann is still present through the other one.
  const tabLeft = h.waitEvent(watch, 'leave', {
    filter: (c) => c.info.client === ann2.clientId,
    label: "leave of ann's second tab",
  });
  ann2Sub.unsubscribe();
  await tabLeft;
  const last = await h.withTimeout(watch.presenceStats(), h.TIMEOUT, 'presence_stats reply');
  assert.deepEqual(last, { numClients: 1, numUsers: 1 });
});
