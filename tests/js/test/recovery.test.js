'use strict';
// History and recovery with the real SDK: a client that was away gets exactly what it
// missed, once and in order, on its own reconnect; its personal channel (a server-side
// subscription) too; typing signals are stopped by the server.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients, publish } = h.serverPerFile({
  namespaces: `
[namespaces.typing]
subscribe = ["*"]
publish = true
typing = true
typing_interval = "200ms"
typing_timeout = "500ms"
`,
});

test('a reconnecting client recovers all 100 missed publications once, in order', { timeout: 30000 }, async () => {
  const { client: ann } = await h.connectUser(server, 'ann', clients);
  const { client: bob } = await h.connectUser(server, 'bob', clients);
  const annSub = await h.subscribe(ann, 'chat:recover');
  const bobSub = await h.subscribe(bob, 'chat:recover');
  const received = [];
  annSub.on('publication', (ctx) => received.push(ctx.data.n));

  const first = h.waitEvent(annSub, 'publication', { label: 'first publication' });
  await bobSub.publish({ n: 0 });
  await first;

  ann.disconnect();
  for (let n = 1; n <= 100; n++) await bobSub.publish({ n });

  const resubscribed = h.waitEvent(annSub, 'subscribed', { label: 'resubscribed' });
  ann.connect();
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  const deadline = Date.now() + h.TIMEOUT;
  while (received.length < 101 && Date.now() < deadline) await h.sleep(20);
  assert.deepEqual(received, Array.from({ length: 101 }, (_, i) => i));

  // Live publications continue after the recovered ones, without duplicates.
  await bobSub.publish({ n: 101 });
  while (received.length < 102 && Date.now() < deadline + h.TIMEOUT) await h.sleep(20);
  await h.sleep(100);
  assert.deepEqual(received.slice(100), [100, 101]);
});

test('notifications sent while offline reach the personal channel on reconnect', { timeout: 30000 }, async () => {
  const { client: ann } = await h.connectUser(server, 'carol', clients);
  const got = [];
  ann.on('publication', (ctx) => {
    if (ctx.channel === 'user:carol') got.push(ctx.data.note);
  });
  const live = h.waitEvent(ann, 'publication', { label: 'live notification' });
  await publish('user:carol', { note: 'live' });
  await live;
  ann.disconnect();
  await publish('user:carol', { note: 'offline 1' });
  await publish('user:carol', { note: 'offline 2' });
  const back = h.waitEvent(ann, 'subscribed', { filter: (c) => c.channel === 'user:carol', label: 'personal channel back' });
  ann.connect();
  const ctx = await back;
  assert.equal(ctx.recovered, true);
  const deadline = Date.now() + h.TIMEOUT;
  while (got.length < 3 && Date.now() < deadline) await h.sleep(20);
  assert.deepEqual(got, ['live', 'offline 1', 'offline 2']);
});

test('typing signals are throttled and the server sends the stop', { timeout: 20000 }, async () => {
  const { client: ann } = await h.connectUser(server, 'ann', clients);
  const { client: bob } = await h.connectUser(server, 'bob', clients);
  const annSub = await h.subscribe(ann, 'typing:room');
  const bobSub = await h.subscribe(bob, 'typing:room');
  const seen = [];
  bobSub.on('publication', (ctx) => seen.push({ user: ctx.info.user, typing: ctx.data.typing }));
  for (let i = 0; i < 5; i++) await annSub.publish({ typing: true });
  await h.sleep(1000);
  assert.deepEqual(seen, [
    { user: 'ann', typing: true },
    { user: 'ann', typing: false },
  ]);
});
