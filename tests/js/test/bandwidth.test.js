'use strict';
// What a subscription asks of its channel's events, with the real SDK: a `tagsFilter`
// (publication filtering by tags) gets only the publications whose tags pass it, live
// and on recovery; `delta: 'fossil'` gets deltas on the wire and full data in the app.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const { server, clients, publish } = h.serverPerFile({
  namespaces: `
[namespaces.market]
subscribe = ["*"]
history_size = 100
history_ttl = "1h"
allow_tags_filter = true

[namespaces.doc]
subscribe = ["*"]
history_size = 100
history_ttl = "1h"
allowed_delta_types = ["fossil"]
`,
});

/** Waits until `list` has `n` items (or the timeout), then returns a copy. */
async function collected(list, n) {
  const deadline = Date.now() + h.TIMEOUT;
  while (list.length < n && Date.now() < deadline) await h.sleep(20);
  return [...list];
}

const AAPL_OVER_100 = {
  op: 'and',
  nodes: [
    { key: 'ticker', cmp: 'eq', val: 'AAPL' },
    { key: 'price', cmp: 'gte', val: '100' },
  ],
};

const QUOTES = [
  { ticker: 'AAPL', price: '150.25' },
  { ticker: 'MSFT', price: '300' },
  { ticker: 'AAPL', price: '99.5' },
  undefined,
  { ticker: 'AAPL', price: '100' },
];

test('a tagsFilter subscription gets only matching publications, live and recovered', async () => {
  const { client: ann } = await h.connectUser(server, 'ann', clients);
  const filtered = await h.subscribe(ann, 'market:quotes', { tagsFilter: AAPL_OVER_100 });
  const plain = await h.subscribe(ann, 'market:all');
  const got = [];
  filtered.on('publication', (ctx) => got.push({ n: ctx.data.n, tags: ctx.tags }));
  const end = [];
  plain.on('publication', (ctx) => end.push(ctx.data.n));

  for (const [i, tags] of QUOTES.entries()) await publish('market:quotes', { n: i + 1 }, tags);
  // market:all is published after the quotes and delivered after them: the end.
  await publish('market:all', { n: 'end' });
  assert.deepEqual(await collected(end, 1), ['end']);
  assert.deepEqual(got, [
    { n: 1, tags: QUOTES[0] },
    { n: 5, tags: QUOTES[4] },
  ]);

  // Away while more is published: on reconnect the SDK recovers only what passes.
  ann.disconnect();
  for (const [i, tags] of QUOTES.entries()) await publish('market:quotes', { n: i + 11 }, tags);
  const resubscribed = h.waitEvent(filtered, 'subscribed', { label: 'resubscribed' });
  ann.connect();
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  assert.deepEqual((await collected(got, 4)).map((p) => p.n), [1, 5, 11, 15]);
});

test('an invalid tagsFilter is refused with 107 and the reason', async () => {
  const { client } = await h.connectUser(server, 'bob', clients);
  const sub = client.newSubscription('market:bad', {
    tagsFilter: { key: 'ticker', cmp: 'like', val: 'AA' },
  });
  // A permanent error: the SDK gives up and reports the server's code and message.
  const unsubscribed = h.waitEvent(sub, 'unsubscribed', { label: 'unsubscribed' });
  sub.subscribe();
  const ctx = await unsubscribed;
  assert.equal(ctx.code, 107);
  assert.equal(ctx.reason, 'invalid tags filter: unknown cmp "like"');
});

/** The `n`th version of a document: a few bytes change from one to the next. */
function documentVersion(n) {
  const rows = Array.from({ length: 40 }, (_, i) => ({ row: i, label: `item number ${i}`, rev: i === n % 40 ? n : 0 }));
  return { version: n, rows };
}

/** Versions 1 to `n` of the document. */
const versions = (n) => Array.from({ length: n }, (_, i) => documentVersion(i + 1));

/**
 * A `delta: 'fossil'` subscription of `user` (with the Protobuf build when `protobuf`)
 * to `doc:<user>`, subscribed; `got` collects the data the app gets.
 */
async function deltaSubscription(user, protobuf) {
  const { client } = await h.connectUser(server, user, clients, { options: { protobuf } });
  const channel = `doc:${user}`;
  const sub = await h.subscribe(client, channel, { delta: 'fossil' });
  const got = [];
  const decode = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
  sub.on('publication', (ctx) => got.push(decode(ctx.data)));
  return { client, sub, channel, got };
}

for (const protobuf of [false, true]) {
  const encoding = protobuf ? 'Protobuf' : 'JSON';
  test(`delta: 'fossil' (${encoding}) gets deltas on the wire and full data in the app`, async () => {
    const { sub, channel, got } = await deltaSubscription(protobuf ? 'pb' : 'js', protobuf);
    for (let n = 1; n <= 8; n++) await publish(channel, documentVersion(n));
    assert.deepEqual(await collected(got, 8), versions(8));
    const stats = sub.deltaStats();
    assert.equal(stats.numPublications, 8);
    assert.equal(stats.numFullPayloads, 1, 'the first publication is full');
    assert.equal(stats.numDeltaPayloads, 7, 'the rest come as deltas');
    assert.ok(stats.bytesReceived * 2 < stats.bytesDecoded, JSON.stringify(stats));
  });

  test(`delta: 'fossil' (${encoding}) recovers a chain of deltas that the live stream continues`, async () => {
    const { client, sub, channel, got } = await deltaSubscription(protobuf ? 'pb-away' : 'js-away', protobuf);
    for (let n = 1; n <= 2; n++) await publish(channel, documentVersion(n));
    await collected(got, 2);

    // Away while six more are published: on reconnect the SDK recovers them, the first
    // in full and the rest as deltas, and the live ones after them are deltas too.
    client.disconnect();
    for (let n = 3; n <= 8; n++) await publish(channel, documentVersion(n));
    const resubscribed = h.waitEvent(sub, 'subscribed', { label: 'resubscribed' });
    client.connect();
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true);
    for (let n = 9; n <= 10; n++) await publish(channel, documentVersion(n));
    assert.deepEqual(await collected(got, 10), versions(10));
    const stats = sub.deltaStats();
    assert.equal(stats.numPublications, 10);
    assert.equal(stats.numFullPayloads, 2, 'the first live and the first recovered are full');
    assert.equal(stats.numDeltaPayloads, 8, JSON.stringify(stats));
    assert.ok(stats.bytesReceived * 2 < stats.bytesDecoded, JSON.stringify(stats));
  });
}
