'use strict';
// Scenario 2: two clients on chat:room1; a publication from one reaches the other with
// the publisher's info, and lands in history.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients } = h.serverPerFile();

test('publication from one subscriber reaches the other with publisher info', { timeout: 20000 }, async () => {
  const { client: ann } = await h.connectUser(server, 'ann', clients);
  const { client: bob, clientId: bobId } = await h.connectUser(server, 'bob', clients, {
    tokenOptions: { info: { name: 'Bob' } },
  });
  const annSub = await h.subscribe(ann, 'chat:room1');
  const bobSub = await h.subscribe(bob, 'chat:room1');

  const atAnn = h.waitEvent(annSub, 'publication', { label: 'publication at ann' });
  const atBob = h.waitEvent(bobSub, 'publication', { label: 'own publication echoed to bob' });
  const result = await h.withTimeout(bobSub.publish({ text: 'hello', n: 1 }), h.TIMEOUT, 'publish reply');
  assert.deepEqual(result, {});

  const pub = await atAnn;
  assert.equal(pub.channel, 'chat:room1');
  assert.deepEqual(pub.data, { text: 'hello', n: 1 });
  assert.equal(pub.info.user, 'bob');
  assert.equal(pub.info.client, bobId);
  assert.deepEqual(pub.info.connInfo, { name: 'Bob' });
  assert.equal(typeof pub.offset, 'number');
  assert.ok(pub.offset >= 1, `offset ${pub.offset}`);
  // The publisher is a subscriber too, so it gets its own publication.
  assert.deepEqual((await atBob).data, { text: 'hello', n: 1 });

  const history = await h.withTimeout(annSub.history({ limit: 10 }), h.TIMEOUT, 'history reply');
  assert.equal(history.publications.length, 1);
  assert.deepEqual(history.publications[0].data, { text: 'hello', n: 1 });
  assert.equal(history.publications[0].offset, pub.offset);
  assert.equal(history.offset, pub.offset);
  assert.equal(typeof history.epoch, 'string');
});

test('publishing to a channel of a namespace without publish is refused with 103', { timeout: 20000 }, async () => {
  const { client: ann } = await h.connectUser(server, 'ann', clients);
  // user:ann is subscribed server-side, but the user namespace does not allow publishing.
  await assert.rejects(h.withTimeout(ann.publish('user:ann', { x: 1 }), h.TIMEOUT, 'publish reply'), (err) => {
    assert.equal(err.code, 103);
    return true;
  });
  assert.equal(ann.state, 'connected');
});
