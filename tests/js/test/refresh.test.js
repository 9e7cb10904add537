'use strict';
// Scenario 5: connection token expiry. centrifuge-js with getToken refreshes and stays
// connected; a raw WebSocket client that refreshes in time stays up, one that never
// refreshes is closed with 3005.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let server;
const clients = [];
before(async () => {
  // A short grace after exp keeps the "never refreshes" case quick. The SDK refreshes
  // `ttl` seconds after the connect reply, and `ttl` is whole seconds counted from the
  // server's clock rounded down, so its refresh lands up to 1 s after exp (plus the
  // getToken round trip): a 1 s grace lost that race when the connect came late in a second.
  server = await h.startServer({ config: `${h.DEFAULT_CONFIG}\n[client]\nexpired_close_delay = "3s"\n` });
});
afterEach(() => h.closeAll(clients));
after(() => server && server.stop());

/** A centrifuge-js client for `ann` with a 3-second token and a getToken callback. */
function expiringClient() {
  const calls = [];
  const client = h.newClient(
    server,
    {
      token: h.connectionToken('ann', { ttl: 3 }),
      getToken: async () => {
        calls.push(Date.now());
        return h.connectionToken('ann', { ttl: 3600 });
      },
    },
    clients,
  );
  return { client, calls };
}

// centrifuge-js (like every official SDK) sends `refresh` exactly `ttl` seconds after the
// connect reply; the server waits `client.expired_close_delay` after `exp` before closing
// with 3005, so the refresh lands and the connection is never dropped.
/** Past the first 3-second token's close: exp (3 s, up to 1 s early by rounding), 3 s grace. */
const PAST_FIRST_TOKEN_MS = 7000;
test(
  'getToken refreshes an expiring token in place: the connection is never dropped',
  {
    timeout: 20000,
  },
  async () => {
    const started = Date.now();
    const { client, calls } = expiringClient();
    const connected = h.waitEvent(client, 'connected');
    client.connect();
    await connected;
    const afterConnect = h.record(client, ['connected', 'connecting', 'disconnected', 'error']);

    await h.sleep(Math.max(0, PAST_FIRST_TOKEN_MS - (Date.now() - started)));

    assert.ok(calls.length >= 1, 'getToken was called to refresh the token');
    assert.equal(client.state, 'connected');
    assert.deepEqual(
      afterConnect.map((e) => ({ event: e.event, code: e.ctx.code, reason: e.ctx.reason })),
      [],
      'the connection was never dropped',
    );
  },
);

test('an expiring connection is still connected after its token expired, via getToken', { timeout: 20000 }, async () => {
  const started = Date.now();
  const { client, calls } = expiringClient();
  const connected = h.waitEvent(client, 'connected');
  client.connect();
  await connected;

  await h.sleep(Math.max(0, PAST_FIRST_TOKEN_MS - (Date.now() - started)));

  assert.ok(calls.length >= 1, 'getToken was called');
  assert.ok(calls[0] - started >= 2000, `getToken called ${calls[0] - started} ms after start, not before the token was due`);
  assert.equal(client.state, 'connected');
  // The connection (whichever it is now) works.
  const sub = await h.subscribe(client, 'chat:refresh');
  const stats = await h.withTimeout(sub.presenceStats(), h.TIMEOUT, 'presence_stats reply');
  assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
});

/** A raw protocol client over `ws`: JSON commands out, replies and pushes collected. */
async function rawClient() {
  const ws = new h.WebSocket(server.wsUrl);
  const frames = [];
  const waiters = [];
  ws.on('message', (data) => {
    for (const line of data.toString().split('\n')) {
      if (line.trim() === '') continue;
      const msg = JSON.parse(line);
      // Answer pings so only the expiry can close the connection.
      if (Object.keys(msg).length === 0) ws.send('{}');
      frames.push(msg);
      for (const w of waiters.splice(0)) w();
    }
  });
  const closed = new Promise((resolve) => {
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString(), at: Date.now() }));
  });
  await h.withTimeout(
    new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    }),
    h.TIMEOUT,
    'websocket open',
  );
  const reply = async (id) => {
    const deadline = Date.now() + h.TIMEOUT;
    for (;;) {
      const f = frames.find((x) => x.id === id);
      if (f) return f;
      if (Date.now() > deadline) throw new Error(`no reply ${id}: ${JSON.stringify(frames)}`);
      await new Promise((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
  };
  return { ws, frames, closed, reply };
}

test('a raw client that never refreshes is closed with 3005 after its token expires', { timeout: 20000 }, async () => {
  const { ws, closed, reply } = await rawClient();
  const sentAt = Date.now();
  ws.send(JSON.stringify({ id: 1, connect: { token: h.connectionToken('raw', { ttl: 2 }) } }));
  const connect = await reply(1);
  assert.ok(connect.connect, `connect reply: ${JSON.stringify(connect)}`);
  assert.equal(connect.connect.expires, true);
  assert.ok(connect.connect.ttl >= 1 && connect.connect.ttl <= 2, `ttl ${connect.connect.ttl}`);

  const { code, reason, at } = await h.withTimeout(closed, 10000, 'close after token expiry');
  assert.equal(code, 3005);
  assert.equal(reason, 'connection expired');
  // Not before exp (more than 1 s after minting) plus the 3 s grace.
  const elapsed = at - sentAt;
  assert.ok(elapsed >= 3900, `closed ${elapsed} ms after connect, before exp + grace`);
});

test('a raw client that refreshes before expiry stays connected', { timeout: 20000 }, async () => {
  const { ws, closed, reply } = await rawClient();
  let closedEarly = null;
  closed.then((c) => {
    closedEarly = c;
  });
  const started = Date.now();
  ws.send(JSON.stringify({ id: 1, connect: { token: h.connectionToken('raw', { ttl: 3 }) } }));
  assert.ok((await reply(1)).connect);
  await h.sleep(800);
  ws.send(JSON.stringify({ id: 2, refresh: { token: h.connectionToken('raw', { ttl: 3600 }) } }));
  const refreshed = await reply(2);
  assert.ok(refreshed.refresh, `refresh reply: ${JSON.stringify(refreshed)}`);
  assert.equal(refreshed.refresh.expires, true);
  assert.ok(refreshed.refresh.ttl > 3500, `ttl ${refreshed.refresh.ttl}`);

  await h.sleep(Math.max(0, PAST_FIRST_TOKEN_MS - (Date.now() - started)));
  assert.equal(closedEarly, null, 'still open past the first token expiry');
  ws.send(JSON.stringify({ id: 3, ping: {} }));
  assert.deepEqual(await reply(3), { id: 3, ping: {} }, 'the connection still answers commands');
  ws.close();
});
