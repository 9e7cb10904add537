'use strict';
// permessage-deflate with the real clients: centrifuge-js (JSON and Protobuf) on Node's
// `ws`, which offers the extension by itself (perMessageDeflate: true). With
// `websocket.compression` on, the extension is negotiated and data arrives intact both
// ways (`ws` compresses what it sends from 1 KiB on); off, nothing is negotiated.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const NEGOTIATED = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover';

/** A `ws` WebSocket that remembers the upgrade answer and itself, for the assertions. */
function recording(sockets) {
  return class extends h.WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
      this.on('upgrade', (res) => {
        this.upgradeHeaders = res.headers;
      });
    }
  };
}

let on;
let off;
const clients = [];
before(async () => {
  on = await h.startServer({ config: `${h.DEFAULT_CONFIG}\n[websocket]\ncompression = true\n` });
  off = await h.startServer();
});
afterEach(() => h.closeAll(clients));
after(async () => {
  if (on) await on.stop();
  if (off) await off.stop();
});

/** A large payload: `ws` compresses messages from 1 KiB, the server from 128 bytes. */
const big = (who) => ({ who, text: `${who} says hello to the channel. `.repeat(100) });

for (const protobuf of [false, true]) {
  const name = protobuf ? 'Protobuf' : 'JSON';
  test(`${name}: deflate is negotiated and large publications arrive intact both ways`, async () => {
    const sockets = [];
    const options = { protobuf, websocket: recording(sockets) };
    const { client: ann } = await h.connectUser(on, 'ann', clients, { options });
    const { client: bob } = await h.connectUser(on, 'bob', clients, { options });
    for (const ws of sockets) {
      assert.equal(ws.upgradeHeaders['sec-websocket-extensions'], NEGOTIATED);
      assert.equal(ws.extensions, 'permessage-deflate');
    }
    const channel = `chat:deflate-${name}`;
    const annSub = await h.subscribe(ann, channel);
    const bobSub = await h.subscribe(bob, channel);
    const encode = (v) => (protobuf ? new TextEncoder().encode(JSON.stringify(v)) : v);
    const decode = (d) => (protobuf ? JSON.parse(new TextDecoder().decode(d)) : d);

    // Ann's publish goes compressed (ws: over 1 KiB); Bob's copy comes compressed.
    const received = h.waitEvent(bobSub, 'publication', { label: 'bob gets ann' });
    await h.withTimeout(annSub.publish(encode(big('ann'))), h.TIMEOUT, 'publish');
    assert.deepEqual(decode((await received).data), big('ann'));

    const back = h.waitEvent(annSub, 'publication', {
      filter: (ctx) => decode(ctx.data).who === 'bob',
      label: 'ann gets bob',
    });
    await h.withTimeout(bobSub.publish(encode(big('bob'))), h.TIMEOUT, 'publish');
    assert.deepEqual(decode((await back).data), big('bob'));
  });
}

test('with compression off, nothing is negotiated and clients work as before', async () => {
  const sockets = [];
  const { client } = await h.connectUser(off, 'ann', clients, {
    options: { websocket: recording(sockets) },
  });
  assert.equal(sockets[0].upgradeHeaders['sec-websocket-extensions'], undefined);
  assert.equal(sockets[0].extensions, '');
  const sub = await h.subscribe(client, 'chat:plain');
  const received = h.waitEvent(sub, 'publication', { label: 'own publication' });
  await h.withTimeout(sub.publish(big('ann')), h.TIMEOUT, 'publish');
  assert.deepEqual((await received).data, big('ann'));
});
