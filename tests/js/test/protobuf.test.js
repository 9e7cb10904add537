'use strict';
// centrifuge-js's Protobuf build (`centrifuge/build/protobuf`) against the real server:
// it connects over the same /connection/websocket, shares channels with JSON clients,
// publishes, reads presence and history, and recovers what it missed on reconnect.
// Payloads are bytes in Protobuf; switchboard carries them as JSON text.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

const { server, clients } = h.serverPerFile();

function connectProtobuf(user) {
  return h.connectUser(server, user, clients, { options: { protobuf: true } });
}

test('the Protobuf SDK connects, with its personal channel subscribed by the server', async () => {
  const { client, ctx } = await connectProtobuf('ann');
  assert.ok(ctx.client, 'client id');
  assert.equal(client._codec.name(), 'protobuf');
  const sub = await h.subscribe(client, 'chat:pb-hello');
  const stats = await sub.presenceStats();
  assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
});

test('Protobuf and JSON clients share a channel both ways', async () => {
  const { client: ann } = await connectProtobuf('ann');
  const { client: bob } = await h.connectUser(server, 'bob', clients);
  const annSub = await h.subscribe(ann, 'chat:pb-shared');
  const bobSub = await h.subscribe(bob, 'chat:pb-shared');

  const atBob = h.waitEvent(bobSub, 'publication', { label: 'bob gets ann\'s publication' });
  const own = h.waitEvent(annSub, 'publication', { label: 'ann gets her own publication' });
  await annSub.publish(encode({ text: 'hi from protobuf' }));
  const p = await atBob;
  assert.deepEqual(p.data, { text: 'hi from protobuf' });
  assert.equal(p.info.user, 'ann');
  const mine = await own;
  assert.ok(mine.data instanceof Uint8Array);
  assert.deepEqual(decode(mine.data), { text: 'hi from protobuf' });

  const atAnn = h.waitEvent(annSub, 'publication', {
    label: 'ann gets bob\'s publication',
    filter: (ctx) => ctx.info && ctx.info.user === 'bob',
  });
  await bobSub.publish({ text: 'hi from json' });
  const q = await atAnn;
  assert.deepEqual(decode(q.data), { text: 'hi from json' });
  assert.ok(q.offset > 0);

  const history = await annSub.history({ limit: 10 });
  assert.deepEqual(history.publications.map((x) => decode(x.data).text), ['hi from protobuf', 'hi from json']);
  const presence = await annSub.presence();
  assert.deepEqual(Object.values(presence.clients).map((c) => c.user).sort(), ['ann', 'bob']);
});

test('a reconnecting Protobuf client recovers the publications it missed', { timeout: 30000 }, async () => {
  const { client: ann } = await connectProtobuf('ann');
  const { client: bob } = await h.connectUser(server, 'bob', clients);
  const annSub = await h.subscribe(ann, 'chat:pb-recover');
  const bobSub = await h.subscribe(bob, 'chat:pb-recover');
  const received = [];
  annSub.on('publication', (ctx) => received.push(decode(ctx.data).n));
  const first = h.waitEvent(annSub, 'publication', { label: 'first publication' });
  await bobSub.publish({ n: 0 });
  await first;

  ann.disconnect();
  for (let n = 1; n <= 20; n++) await bobSub.publish({ n });

  const resubscribed = h.waitEvent(annSub, 'subscribed', { label: 'resubscribed' });
  ann.connect();
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  const deadline = Date.now() + h.TIMEOUT;
  while (received.length < 21 && Date.now() < deadline) await h.sleep(20);
  assert.deepEqual(received, Array.from({ length: 21 }, (_, i) => i));
});
