'use strict';
// centrifuge-js's fallbacks for networks that break WebSocket: `http_stream` (JSON and
// the Protobuf build) and `sse` (with the `eventsource` package, as Node has no
// EventSource), each sending its commands to `/emulation`. Each connects with its
// personal channel, subscribes, gets a publication from the server API, publishes to a
// WebSocket client, reads presence, and recovers what it missed over a reconnect.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { EventSource } = require('eventsource');
const h = require('../lib/harness');

const { server, clients, api, publish } = h.serverPerFile();

const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

const CASES = [
  { transport: 'http_stream', protobuf: false },
  { transport: 'http_stream', protobuf: true },
  { transport: 'sse', protobuf: false },
];

/** A client that may use only `transport`, connected as `user`. */
async function connectOver({ transport, protobuf }, user) {
  const Sdk = protobuf ? h.CentrifugeProtobuf : h.Centrifuge;
  const client = new Sdk([{ transport, endpoint: `${server.httpUrl}/connection/${transport}` }], {
    token: h.connectionToken(user),
    emulationEndpoint: `${server.httpUrl}/emulation`,
    fetch,
    readableStream: ReadableStream,
    eventsource: EventSource,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    timeout: 3000,
    debug: Boolean(process.env.CENTRIFUGE_DEBUG),
  });
  clients.push(client);
  const personal = h.waitEvent(client, 'subscribed', {
    label: `${user}'s personal channel`,
    filter: (ctx) => ctx.channel === `user:${user}`,
  });
  const connected = h.waitEvent(client, 'connected', { label: `${user} connected over ${transport}` });
  client.connect();
  const ctx = await connected;
  await personal;
  return { client, ctx };
}

for (const c of CASES) {
  const name = `${c.transport}${c.protobuf ? ' (Protobuf)' : ''}`;
  const data = (value) => (c.protobuf ? encode(value) : value);
  const read = (value) => (c.protobuf ? decode(value) : value);

  test(`${name}: connects, subscribes, gets API publications, publishes, reads presence`, async () => {
    const room = `chat:stream-${c.transport}-${c.protobuf}`;
    const { client, ctx } = await connectOver(c, 'ann');
    assert.equal(ctx.transport, c.transport);
    const sub = await h.subscribe(client, room);

    const fromApi = h.waitEvent(sub, 'publication', { label: 'API publication' });
    await publish(room, { text: 'from the api' });
    assert.deepEqual(read((await fromApi).data), { text: 'from the api' });

    const { client: bob } = await h.connectUser(server, 'bob', clients);
    const bobSub = await h.subscribe(bob, room);
    const atBob = h.waitEvent(bobSub, 'publication', { label: 'bob gets ann\'s publication' });
    await sub.publish(data({ text: 'over the stream' }));
    const p = await atBob;
    assert.deepEqual(p.data, { text: 'over the stream' });
    assert.equal(p.info.user, 'ann');

    const stats = await sub.presenceStats();
    assert.deepEqual(stats, { numClients: 2, numUsers: 2 });
    const presence = await sub.presence();
    assert.deepEqual(Object.values(presence.clients).map((i) => i.user).sort(), ['ann', 'bob']);
  });

  test(`${name}: recovers publications missed over a reconnect`, { timeout: 30000 }, async () => {
    const room = `chat:stream-recover-${c.transport}-${c.protobuf}`;
    const { client } = await connectOver(c, 'carol');
    const sub = await h.subscribe(client, room);
    const got = [];
    sub.on('publication', (ctx) => got.push(read(ctx.data).n));
    const first = h.waitEvent(sub, 'publication', { label: 'first publication' });
    await publish(room, { n: 0 });
    await first;

    client.disconnect();
    for (let n = 1; n <= 10; n++) await publish(room, { n });
    const resubscribed = h.waitEvent(sub, 'subscribed', { label: 'resubscribed' });
    client.connect();
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true);
    const deadline = Date.now() + h.TIMEOUT;
    while (got.length < 11 && Date.now() < deadline) await h.sleep(20);
    assert.deepEqual(got, Array.from({ length: 11 }, (_, i) => i));
    const history = await sub.history({ limit: 20 });
    assert.equal(history.publications.length, 11);
  });
}

test('a server disconnect reaches an sse client with its code', async () => {
  const { client, ctx } = await connectOver(CASES[2], 'dave');
  const disconnected = h.waitEvent(client, 'disconnected', { label: 'disconnected' });
  await api('disconnect', { user: 'dave', client: ctx.client });
  const d = await disconnected;
  assert.equal(d.code, 3503);
});
