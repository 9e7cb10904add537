'use strict';
// Several Pusher apps on one server: pusher-js clients of two apps (two keys), each
// app's `pusher` server library signing its own subscriptions and HTTP API calls, the
// same channel names in both, and centrifuge-js reaching an app's channels through its
// namespaces; subscription counts in the app that asks for them.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const PusherJs = require('pusher-js');
const PusherServer = require('pusher');
const { SECRET, closeAll, connectUser, startServer, subscribe, waitEvent, withTimeout, TIMEOUT } = require('../lib/harness');
const { nextEvent, pusherSubscribe, sendJson, startAuthServer } = require('../lib/pusher');

const FIRST = { appId: '1', key: 'first-key', secret: 'first-secret' };
const SHOP = { appId: '2', key: 'shop-key', secret: 'shop-secret' };

const CONFIG = `
token_hmac_secret = "${SECRET}"
shutdown_timeout = "2s"

# The first app: its channels keep their names (orders, private:chat).
[pusher]
app_id = "${FIRST.appId}"
key = "${FIRST.key}"
secret = "${FIRST.secret}"
subscription_count_interval = "50ms"

# The shop app: its channels live in the namespaces shop (orders is shop:orders),
# shop_private (private-chat is shop_private:chat), shop_presence and shop_user.
[pusher.apps.shop]
app_id = "${SHOP.appId}"
key = "${SHOP.key}"
secret = "${SHOP.secret}"
subscription_count = true

[namespaces.default]
subscribe = ["*"]

[namespaces.private]
publish = true

[namespaces.shop]
subscribe = ["*"]
publish = true

[namespaces.shop_private]
publish = true
`;

let server;
let auth;
const libs = {};
const pushers = [];
const clients = [];

/** One auth endpoint per app, at /<app id>/auth, signing with that app's library. */
function startAppsAuth() {
  return startAuthServer((req, params, res) => {
    const lib = libs[req.url.split('/')[1]];
    sendJson(res, lib.authorizeChannel(params.get('socket_id'), params.get('channel_name')));
  });
}

/** A connected pusher-js client of `app`. */
async function connectPusher(app) {
  const p = new PusherJs(app.key, {
    cluster: '',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    channelAuthorization: { endpoint: `${auth.url}/${app.appId}/auth`, transport: 'ajax' },
  });
  pushers.push(p);
  await withTimeout(
    new Promise((resolve) => p.connection.bind('connected', resolve)),
    TIMEOUT,
    `pusher-js of app ${app.appId} connected`,
  );
  return p;
}

/** Every `event` on `channel`, in order, as an array that fills up. */
function collect(channel, event) {
  const got = [];
  channel.bind(event, (data) => got.push(data));
  return got;
}

before(async () => {
  server = await startServer({ config: CONFIG });
  for (const app of [FIRST, SHOP]) {
    libs[app.appId] = new PusherServer({ ...app, host: '127.0.0.1', port: String(server.port), useTLS: false });
  }
  auth = await startAppsAuth();
});

afterEach(() => {
  for (const p of pushers.splice(0)) p.disconnect();
  closeAll(clients);
});

after(async () => {
  await auth.close();
  await server.stop();
});

test('two apps, the same channel names: each app gets its own events only', async () => {
  const first = await connectPusher(FIRST);
  const firstToo = await connectPusher(FIRST);
  const shop = await connectPusher(SHOP);
  const firstOrders = await pusherSubscribe(first, 'orders');
  const shopOrders = await pusherSubscribe(shop, 'orders');
  const firstChat = await pusherSubscribe(first, 'private-chat');
  const firstTooChat = await pusherSubscribe(firstToo, 'private-chat');
  const shopChat = await pusherSubscribe(shop, 'private-chat');

  // Each library triggers into its app's `orders` and `private-chat`.
  const got = {
    firstOrders: collect(firstOrders, 'e'),
    shopOrders: collect(shopOrders, 'e'),
    firstChat: collect(firstChat, 'e'),
    shopChat: collect(shopChat, 'e'),
  };
  const shopTyping = collect(shopChat, 'client-typing');
  for (const [app, lib] of [['first', libs[FIRST.appId]], ['shop', libs[SHOP.appId]]]) {
    const res = await lib.trigger(['orders', 'private-chat'], 'e', { app });
    assert.equal(res.status, 200);
  }
  // A client event in the first app's private-chat.
  const whisper = nextEvent(firstTooChat, 'client-typing');
  assert.ok(firstChat.trigger('client-typing', { who: 'first' }));
  assert.deepEqual((await whisper).data, { who: 'first' });

  // Markers after everything: once they arrive, whatever leaked would have too.
  const markers = [
    nextEvent(firstOrders, 'done'),
    nextEvent(shopOrders, 'done'),
    nextEvent(firstChat, 'done'),
    nextEvent(shopChat, 'done'),
  ];
  await libs[FIRST.appId].trigger(['orders', 'private-chat'], 'done', {});
  await libs[SHOP.appId].trigger(['orders', 'private-chat'], 'done', {});
  await Promise.all(markers);
  assert.deepEqual(got.firstOrders, [{ app: 'first' }]);
  assert.deepEqual(got.shopOrders, [{ app: 'shop' }]);
  assert.deepEqual(got.firstChat, [{ app: 'first' }]);
  assert.deepEqual(got.shopChat, [{ app: 'shop' }]);
  assert.deepEqual(shopTyping, [], "the first app's client event stays in the first app");

  // Each library lists its own app's channels.
  for (const [p, app, unique] of [[first, FIRST, 'first-only'], [shop, SHOP, 'shop-only']]) {
    await pusherSubscribe(p, unique);
    const listed = await (await libs[app.appId].get({ path: '/channels' })).json();
    assert.deepEqual(Object.keys(listed.channels).sort(), [unique, 'orders', 'private-chat'].sort());
  }
});

test("centrifuge-js reaches the shop app's channels through its namespace", async () => {
  const shop = await connectPusher(SHOP);
  const orders = await pusherSubscribe(shop, 'orders');
  const { client } = await connectUser(server, 'bob', clients);
  const sub = await subscribe(client, 'shop:orders');
  const atCentrifuge = waitEvent(sub, 'publication', { label: 'shop:orders at centrifuge-js' });
  const atPusher = nextEvent(orders, 'order-shipped');
  const res = await libs[SHOP.appId].trigger('orders', 'order-shipped', { id: 7 });
  assert.equal(res.status, 200);
  assert.deepEqual((await atCentrifuge).data, { id: 7 });
  assert.deepEqual((await atPusher).data, { id: 7 });
  // And back: centrifuge-js publishes into shop:orders, which the shop's pusher-js hears.
  const back = nextEvent(orders, 'publication');
  await sub.publish({ from: 'centrifuge' });
  assert.deepEqual((await back).data, { from: 'centrifuge' });
});

/** Resolves once `channel` hears the subscription count `n` (a newcomer may hear one twice). */
function countReaches(channel, n) {
  return withTimeout(
    new Promise((resolve) => {
      const on = (data) => {
        if (data.subscription_count !== n) return;
        channel.unbind('pusher:subscription_count', on);
        resolve();
      };
      channel.bind('pusher:subscription_count', on);
    }),
    TIMEOUT,
    `subscription count ${n} on ${channel.name}`,
  );
}

test('subscription counts: pusher-js hears pusher:subscription_count in the app that asks for them', async () => {
  const one = await connectPusher(SHOP);
  const two = await connectPusher(SHOP);
  const channel = one.subscribe('counted');
  await countReaches(channel, 1);
  const joined = countReaches(channel, 2);
  await pusherSubscribe(two, 'counted');
  await joined;
  assert.equal(channel.subscriptionCount, 2);
  const left = countReaches(channel, 1);
  two.unsubscribe('counted');
  await left;
  assert.equal(channel.subscriptionCount, 1);
});
