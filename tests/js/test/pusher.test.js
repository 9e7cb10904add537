'use strict';
// The real pusher-js and Laravel Echo against the real binary, authorized by a tiny auth
// endpoint that signs with the real `pusher` server library, which also calls the HTTP
// API (trigger, triggerBatch, channels, users, terminateUserConnections); and channels
// shared with centrifuge-js.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const PusherJs = require('pusher-js');
const PusherServer = require('pusher');
const { SECRET, closeAll, connectUser, startServer, subscribe, waitEvent, withTimeout, TIMEOUT } = require('../lib/harness');
const { nextEvent, pusherSubscribe, sendJson, startAuthServer } = require('../lib/pusher');

const APP = { appId: '42', key: 'js-app-key', secret: 'js-app-secret' };
/** The app's key for end-to-end encrypted channels: the server never has it. */
const MASTER_KEY = Buffer.alloc(32, 7).toString('base64');
const API_KEY = 'js-api-key';

const CONFIG = `
token_hmac_secret = "${SECRET}"
api_key = "${API_KEY}"
shutdown_timeout = "2s"

[pusher]
app_id = "${APP.appId}"
key = "${APP.key}"
secret = "${APP.secret}"

# Public Pusher channels without a namespace (\`orders\`, \`lobby\`): the Pusher server
# libraries refuse names with a ':'. centrifuge-js publishes into them too.
[namespaces.default]
subscribe = ["*"]
publish = true
# Cache channels (\`cache-ticker\`) keep their last event in the channel's history.
history_size = 1
history_ttl = "1h"

[namespaces.chat]
subscribe = ["*"]
publish = true

# private-*: the auth endpoint decides; subscribers may send client events.
[namespaces.private]
publish = true

# presence-*: members per user, as Pusher counts them.
[namespaces.presence]
publish = true
presence = true
join_leave = true
presence_per_user = true
`;

/** Laravel Echo: its ES module (the package's CommonJS build does not load in Node 20). */
let Echo;
let server;
let backend;
let auth;
const pushers = [];
const clients = [];

/**
 * The app's auth endpoint: signs what the \`X-User\` header's user may do with the
 * \`pusher\` library, refuses \`private-forbidden\`.
 */
function startAppAuth(lib) {
  return startAuthServer((req, params, res) => {
    const socketId = params.get('socket_id');
    const channel = params.get('channel_name');
    const user = req.headers['x-user'] || 'anonymous';
    if (req.url === '/user-auth') {
      sendJson(res, lib.authenticateUser(socketId, { id: user, user_info: { name: user } }));
    } else if (channel === 'private-forbidden') {
      res.writeHead(403).end('forbidden');
    } else if (channel.startsWith('presence-')) {
      sendJson(res, lib.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: user } }));
    } else {
      sendJson(res, lib.authorizeChannel(socketId, channel));
    }
  });
}

/** pusher-js options for the local server, acting as \`user\` at the auth endpoint. */
function pusherOptions(user) {
  const headers = { 'X-User': user };
  return {
    cluster: '',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    channelAuthorization: { endpoint: `${auth.url}/broadcasting/auth`, transport: 'ajax', headers },
    userAuthentication: { endpoint: `${auth.url}/user-auth`, transport: 'ajax', headers },
  };
}

/** A connected pusher-js client acting as \`user\`. */
async function connectPusher(user) {
  const p = new PusherJs(APP.key, pusherOptions(user));
  pushers.push(p);
  await withTimeout(
    new Promise((resolve) => p.connection.bind('connected', resolve)),
    TIMEOUT,
    `pusher-js ${user} connected`,
  );
  return p;
}

before(async () => {
  ({ default: Echo } = await import('laravel-echo'));
  server = await startServer({ config: CONFIG });
  backend = new PusherServer({
    ...APP,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });
  auth = await startAppAuth(backend);
});

afterEach(() => {
  for (const p of pushers.splice(0)) p.disconnect();
  closeAll(clients);
});

after(async () => {
  await auth.close();
  await server.stop();
});

test('pusher-js gets public events from the pusher library and centrifuge-js, and centrifuge-js gets theirs', async () => {
  const p = await connectPusher('ann');
  const channel = await pusherSubscribe(p, 'lobby');
  const { client } = await connectUser(server, 'bob', clients);
  const sub = await subscribe(client, 'lobby');

  const fromLibrary = nextEvent(channel, 'order-shipped');
  const atCentrifuge = waitEvent(sub, 'publication', { label: 'trigger at centrifuge-js' });
  const res = await backend.trigger('lobby', 'order-shipped', { id: 7 });
  assert.equal(res.status, 200);
  assert.deepEqual((await fromLibrary).data, { id: 7 });
  const pub = await atCentrifuge;
  assert.deepEqual(pub.data, { id: 7 }, 'a JSON payload, not a string');
  assert.equal(pub.tags.event, 'order-shipped');

  // centrifuge-js publishes: an untagged publication is the event "publication".
  const fromCentrifuge = nextEvent(channel, 'publication');
  await sub.publish({ text: 'hi' });
  assert.deepEqual((await fromCentrifuge).data, { text: 'hi' });

  // The Centrifugo server API's publish with an event tag, and the library's batch.
  const tagged = nextEvent(channel, 'note');
  const apiRes = await fetch(`${server.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY },
    body: JSON.stringify({ channel: 'lobby', data: 'plain', tags: { event: 'note' } }),
  });
  assert.equal(apiRes.status, 200);
  assert.equal((await tagged).data, 'plain');
  const batched = nextEvent(channel, 'batched');
  const batch = await backend.triggerBatch([
    { channel: 'lobby', name: 'batched', data: 'one' },
    { channel: 'orders', name: 'batched', data: 'other' },
  ]);
  assert.equal(batch.status, 200);
  assert.equal((await batched).data, 'one');
});

test('private channels: the auth endpoint signs, client events reach the others, socket_id is skipped', async () => {
  const ann = await connectPusher('ann');
  const bob = await connectPusher('bob');
  const a = await pusherSubscribe(ann, 'private-chat.1');
  const b = await pusherSubscribe(bob, 'private-chat.1');

  const whisper = nextEvent(b, 'client-typing');
  let echoed = false;
  a.bind('client-typing', () => (echoed = true));
  assert.ok(a.trigger('client-typing', { who: 'ann' }));
  assert.deepEqual((await whisper).data, { who: 'ann' });

  // The library's trigger with Bob's socket_id: only Ann gets it.
  let bobGot = false;
  b.bind('news', () => (bobGot = true));
  const annGets = nextEvent(a, 'news');
  await backend.trigger('private-chat.1', 'news', 'x', { socket_id: bob.connection.socket_id });
  assert.equal((await annGets).data, 'x');
  // A later event to both shows Bob's connection is live and in order.
  const bobLater = nextEvent(b, 'later');
  await backend.trigger('private-chat.1', 'later', '1');
  await bobLater;
  assert.equal(bobGot, false, 'excluded by socket_id');
  assert.equal(echoed, false, 'a client event is not echoed to its sender');

  await assert.rejects(pusherSubscribe(ann, 'private-forbidden'), /AuthError|403/);
});

test('encrypted channels: pusher-js decrypts what the pusher library encrypted, the server relays ciphertext', async () => {
  // pusher-js's Node build is its encryption build (tweetnacl inside, as
  // pusher-js/with-encryption for browsers); the auth endpoint adds the channel's
  // shared_secret, derived from the master key the server never sees.
  const p = await connectPusher('ann');
  const relayed = [];
  p.connection.bind('message', (m) => m.channel === 'private-encrypted-vault' && relayed.push(m));
  const vault = await pusherSubscribe(p, 'private-encrypted-vault');
  const secret = nextEvent(vault, 'secret');
  const res = await backend.trigger('private-encrypted-vault', 'secret', { note: 'plaintext-marker' });
  assert.equal(res.status, 200);
  assert.deepEqual((await secret).data, { note: 'plaintext-marker' });
  const sent = relayed.find((m) => m.event === 'secret');
  assert.ok(sent, 'the event came through the connection');
  const sealed = typeof sent.data === 'string' ? JSON.parse(sent.data) : sent.data;
  assert.ok(sealed.ciphertext && sealed.nonce, JSON.stringify(sent));
  assert.ok(!JSON.stringify(sent).includes('plaintext-marker'), 'only ciphertext on the wire');
});

test('cache channels: pusher:cache_miss while empty, then a new subscriber gets the last event at once', async () => {
  const ann = await connectPusher('ann');
  const annTicker = ann.subscribe('cache-ticker');
  await withTimeout(
    new Promise((resolve) => annTicker.bind('pusher:cache_miss', resolve)),
    TIMEOUT,
    'pusher:cache_miss',
  );
  const res = await backend.trigger('cache-ticker', 'tick', { n: 1 });
  assert.equal(res.status, 200);
  const bob = await connectPusher('bob');
  const tick = nextEvent(bob.subscribe('cache-ticker'), 'tick');
  assert.deepEqual((await tick).data, { n: 1 });
});

test('presence: members, member_added and member_removed, and the channels and users the library reads', async () => {
  const ann = await connectPusher('ann');
  const room = await pusherSubscribe(ann, 'presence-room.1');
  assert.equal(room.members.count, 1);
  assert.deepEqual(room.members.me, { id: 'ann', info: { name: 'ann' } });

  const added = nextEvent(room, 'pusher:member_added');
  const bob = await connectPusher('bob');
  const bobRoom = await pusherSubscribe(bob, 'presence-room.1');
  assert.deepEqual((await added).data, { id: 'bob', info: { name: 'bob' } });
  assert.equal(bobRoom.members.count, 2);
  const ids = [];
  bobRoom.members.each((m) => ids.push(m.id));
  assert.deepEqual(ids.sort(), ['ann', 'bob']);

  const users = await (await backend.get({ path: '/channels/presence-room.1/users' })).json();
  assert.deepEqual(users, { users: [{ id: 'ann' }, { id: 'bob' }] });
  const channels = await (
    await backend.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })
  ).json();
  assert.deepEqual(channels, { channels: { 'presence-room.1': { user_count: 2 } } });
  const one = await (
    await backend.get({ path: '/channels/presence-room.1', params: { info: 'subscription_count,user_count' } })
  ).json();
  assert.deepEqual(one, { occupied: true, subscription_count: 2, user_count: 2 });

  const removed = nextEvent(room, 'pusher:member_removed');
  bob.disconnect();
  assert.deepEqual((await removed).data, { id: 'bob', info: { name: 'bob' } });
  assert.equal(room.members.count, 1);
});

test('signin, the user channel and terminateUserConnections', async () => {
  const p = await connectPusher('uma');
  const signedIn = withTimeout(
    new Promise((resolve) =>
      p.connection.bind('message', (m) => m.event === 'pusher:signin_success' && resolve(m)),
    ),
    TIMEOUT,
    'signin_success',
  );
  p.signin();
  await signedIn;
  // pusher-js subscribes #server-to-user-<id> itself; sendToUser reaches it.
  const notice = withTimeout(new Promise((resolve) => p.user.bind('notice', resolve)), TIMEOUT, 'sendToUser');
  // The subscription may still be on its way: send until it lands.
  const timer = setInterval(() => backend.sendToUser('uma', 'notice', { n: 1 }), 100);
  try {
    assert.deepEqual(await notice, { n: 1 });
  } finally {
    clearInterval(timer);
  }
  const closed = withTimeout(
    new Promise((resolve) => p.connection.bind('error', resolve)),
    TIMEOUT,
    'terminated',
  );
  const res = await backend.terminateUserConnections('uma');
  assert.equal(res.status, 200);
  const error = await closed;
  assert.equal(error.data?.code ?? error.error?.data?.code, 4009, JSON.stringify(error));
});

test('laravel-echo with the pusher broadcaster: listen, private whisper, presence here/joining/leaving', async () => {
  const echo = (user) => {
    const e = new Echo({
      broadcaster: 'pusher',
      Pusher: PusherJs,
      key: APP.key,
      cluster: '',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      authEndpoint: `${auth.url}/broadcasting/auth`,
      auth: { headers: { 'X-User': user } },
    });
    pushers.push(e.connector.pusher);
    return e;
  };
  const ann = echo('ann');
  const bob = echo('bob');

  // Echo.listen('OrderShipped') is App\Events\OrderShipped, as Laravel broadcasts it.
  const shipped = new Promise((resolve) => ann.channel('orders').listen('OrderShipped', resolve));
  await withTimeout(
    new Promise((resolve) => ann.channel('orders').subscribed(resolve)),
    TIMEOUT,
    'echo subscribed to orders',
  );
  await backend.trigger('orders', 'App\\Events\\OrderShipped', { order: 1 });
  assert.deepEqual(await withTimeout(shipped, TIMEOUT, 'OrderShipped'), { order: 1 });

  const here = new Promise((resolve) => ann.join('room.2').here(resolve));
  assert.deepEqual(await withTimeout(here, TIMEOUT, 'here'), [{ name: 'ann' }]);
  const joining = new Promise((resolve) => ann.join('room.2').joining(resolve));
  const bobHere = new Promise((resolve) => bob.join('room.2').here(resolve));
  assert.deepEqual(await withTimeout(joining, TIMEOUT, 'joining'), { name: 'bob' });
  assert.equal((await withTimeout(bobHere, TIMEOUT, 'bob here')).length, 2);

  const whisper = new Promise((resolve) => ann.join('room.2').listenForWhisper('typing', resolve));
  bob.join('room.2').whisper('typing', { who: 'bob' });
  assert.deepEqual(await withTimeout(whisper, TIMEOUT, 'whisper'), { who: 'bob' });

  const leaving = new Promise((resolve) => ann.join('room.2').leaving(resolve));
  bob.leave('room.2');
  assert.deepEqual(await withTimeout(leaving, TIMEOUT, 'leaving'), { name: 'bob' });
});
