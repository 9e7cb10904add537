'use strict';
// switchboard's Socket.IO transport in a real browser: the socket.io-client browser bundle
// in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), against
// the real switchboard binary. The pages come from a static server on another port, so
// Socket.IO's long-polling is cross-origin (CORS) as it is for most apps.

const assert = require('node:assert/strict');
const path = require('node:path');
const { after, before, test } = require('node:test');
const { isDeepStrictEqual } = require('node:util');

const { NODE_MODULES, POLL, WAIT, launchChromium, pageWaits, startStatic } = require('../lib/browser');
const { REPO, mintToken, sleep, startServer } = require('../lib/switchboard');

const SECRET = 'switchboard-browser-socketio-secret';
const API_KEY = 'switchboard-browser-socketio-api-key';
const ROOM = 'room:lobby';
/** The screenshot kept after a passing run (target/ is not committed). */
const SCREENSHOT = path.join(REPO, 'target', 'browser-socketio.png');
/** Screenshots taken when a check fails, one per user. */
const failureShot = (user) => path.join(REPO, 'target', `browser-socketio-${user}.png`);

// Every user gets user:<sub> (the default auto_subscribe); the room is open to everyone,
// publishing included, so both kinds of client can talk in it.
const CONFIG = `
token_hmac_secret = "${SECRET}"
api_key = "${API_KEY}"
shutdown_timeout = "2s"

[namespaces.room]
subscribe = ["*"]
publish = true
presence = true
join_leave = true
`;

// The prebuilt browser bundle of socket.io-client (sets globalThis.io), and the
// centrifuge-js one (globalThis.Centrifuge) for the page of the other protocol.
const SIO_BUNDLE = path.join(NODE_MODULES, 'socket.io-client', 'dist', 'socket.io.min.js');
const CENTRIFUGE_BUNDLE = path.join(NODE_MODULES, 'centrifuge', 'dist', 'centrifuge.js');
const JS = 'text/javascript; charset=utf-8';
const STATIC = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', JS],
  '/centrifuge.js': [CENTRIFUGE_BUNDLE, JS],
  '/socketio.html': ['socketio.html', 'text/html; charset=utf-8'],
  '/socketio-app.js': ['socketio-app.js', JS],
  '/socket.io.min.js': [SIO_BUNDLE, JS],
};

let server;
let staticServer;
let browser;
/** Browser console lines, page errors and failed requests, shown when a check fails. */
const browserLog = [];
const { expectText } = pageWaits(diagnostics);

before(async () => {
  staticServer = await startStatic(STATIC);
  // The pages' origin is listed: erin's page polls with credentials, which switchboard
  // allows only to listed origins (any other origin polls without credentials).
  const config = `allowed_origins = ["${staticUrl()}"]\n${CONFIG}`;
  server = await startServer({ config, apiKey: API_KEY });
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (staticServer) await new Promise((resolve) => staticServer.close(resolve));
  if (server) await server.stop();
});

function connectionToken(sub) {
  return mintToken({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
}

/** A new tab for `user` that logs what the browser says, and closes when test `t` ends. */
async function newPage(t, user, kind) {
  const page = await browser.context.newPage();
  page.user = user;
  page.kind = kind;
  /** The Socket.IO requests this page made: "GET polling", "POST polling", "WS websocket". */
  page.sioRequests = [];
  page.on('console', (msg) => browserLog.push(`[${user}] console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => browserLog.push(`[${user}] page error: ${err.message}`));
  page.on('requestfailed', (req) => {
    // Closing the tab aborts the pending long-poll: not worth a line.
    if (!page.isClosed()) browserLog.push(`[${user}] request failed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`);
  });
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (url.pathname === '/socket.io/') page.sioRequests.push(`${req.method()} ${url.searchParams.get('transport')}`);
  });
  page.on('websocket', (ws) => {
    const url = new URL(ws.url());
    if (url.pathname === '/socket.io/') page.sioRequests.push(`WS ${url.searchParams.get('transport')}`);
  });
  t.after(() => page.close().catch(() => {}));
  return page;
}

const staticUrl = () => `http://127.0.0.1:${staticServer.address().port}`;

/**
 * Opens the Socket.IO page for `user` (options in the URL fragment: `transports` restricts
 * the client's transports, `credentials` sets withCredentials) and waits until it is
 * connected and subscribed to the room.
 */
async function openSocketIo(t, user, { transports, credentials } = {}) {
  const page = await newPage(t, user, 'socket.io');
  const fragment = new URLSearchParams({ url: server.httpUrl, token: connectionToken(user), room: ROOM });
  if (transports) fragment.set('transports', transports);
  if (credentials) fragment.set('credentials', '1');
  await page.goto(`${staticUrl()}/socketio.html#${fragment}`);
  await expectText(page, '#state', 'connected', `${user} connected over Socket.IO`);
  await expectText(page, '#room-state', 'subscribed', `${user} subscribed to ${ROOM} over Socket.IO`);
  return page;
}

/** Opens the centrifuge-js page (the one of publish.test.js) for `user`, connected and in the room. */
async function openCentrifuge(t, user) {
  const page = await newPage(t, user, 'centrifuge-js');
  const fragment = new URLSearchParams({ ws: server.wsUrl, token: connectionToken(user), room: ROOM });
  await page.goto(`${staticUrl()}/#${fragment}`);
  await expectText(page, '#state', 'connected', `${user} connected with centrifuge-js`);
  await expectText(page, '#room-state', 'subscribed', `${user} subscribed to ${ROOM} with centrifuge-js`);
  return page;
}

/** Types `text` into the page's form and sends it; waits for the server's acknowledgement. */
async function send(page, text) {
  // As a user would, and because Playwright's click waits on animation frames, which
  // Chromium throttles in background tabs.
  await page.bringToFront();
  await page.locator('#text').fill(text, { timeout: WAIT });
  await page.locator('#send button').click({ timeout: WAIT });
  await expectText(page, '#send-state', `sent: ${text}`, `${page.user} published ${JSON.stringify(text)}`);
}

/** The data of the <li> items matching `selector`, parsed, in order. */
function shown(page, selector) {
  return page.locator(selector).evaluateAll((lis) => lis.map((li) => JSON.parse(li.textContent)));
}

/**
 * Waits until an <li> matching `selector` shows `data` (key order aside), then checks that
 * it is shown exactly once.
 */
async function expectItem(page, selector, data, label) {
  try {
    await page.waitForFunction(
      ([sel, want]) => {
        const canon = (v) =>
          JSON.stringify(v, (_, x) =>
            x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x,
          );
        return [...document.querySelectorAll(sel)].some((li) => canon(JSON.parse(li.textContent)) === canon(want));
      },
      [selector, data],
      { timeout: WAIT, polling: POLL },
    );
  } catch (err) {
    throw new Error(
      `${label}: ${selector} showing ${JSON.stringify(data)} not in ${page.user}'s page within ${WAIT} ms${await diagnostics(page)}`,
      { cause: err },
    );
  }
  const matches = (await shown(page, selector)).filter((d) => isDeepStrictEqual(d, data));
  assert.equal(matches.length, 1, `${label}: shown once in ${page.user}'s page, not ${matches.length} times`);
}

/** Polls `fn` until it resolves with something deep-equal to `want`, for at most WAIT ms. */
async function eventually(fn, want, label) {
  const deadline = Date.now() + WAIT;
  let got;
  for (;;) {
    got = await fn();
    if (isDeepStrictEqual(got, want)) return;
    if (Date.now() > deadline) break;
    await sleep(100);
  }
  assert.fail(`${label}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}\n${server.logTail()}`);
}

async function diagnostics(page) {
  const body = await page
    .locator('body')
    .innerText({ timeout: 1000 })
    .catch(() => '(page unreadable)');
  const shot = failureShot(page.user);
  await page.screenshot({ path: shot, timeout: 5000 }).catch(() => {});
  return (
    `\n--- ${page.user}'s ${page.kind} page ---\n${body}` +
    `\n--- its Socket.IO requests ---\n${page.sioRequests.join('\n') || '(none)'}` +
    `\n--- browser console ---\n${browserLog.join('\n') || '(empty)'}` +
    `\n--- last lines of switchboard log ---\n${server.logTail()}` +
    `\n(screenshot: ${shot})`
  );
}

/** The server API publish of a Socket.IO app's emit: `tags.event` names the event. */
function emit(channel, event, data) {
  return server.api('publish', { channel, data, tags: { event } });
}

async function expectNoErrors(page) {
  const errors = await page.locator('#errors').textContent({ timeout: WAIT });
  assert.equal(errors, '', `no client errors in ${page.user}'s page${errors ? await diagnostics(page) : ''}`);
}

test('a Socket.IO page connects cross-origin by long-polling and upgrades to WebSocket', async (t) => {
  // The backend publishes to alice without pause while her page loads, connects and
  // upgrades, so that messages reach her over long-polling, during the upgrade and over
  // the WebSocket.
  let sent = 0;
  let publishing = true;
  let publishError;
  const publisher = (async () => {
    while (publishing) {
      await emit('user:alice', 'message:new', { n: sent });
      sent += 1;
      await sleep(2);
    }
  })().catch((err) => {
    publishError = err;
  });
  let alice;
  try {
    alice = await openSocketIo(t, 'alice');
    await expectText(alice, '#transport', 'websocket', 'alice upgraded to WebSocket');
    await sleep(100);
  } finally {
    publishing = false;
    await publisher;
  }
  if (publishError) throw publishError;
  assert.ok(sent > 0, 'the backend published while alice connected');
  await expectText(alice, '#transports-seen', 'polling websocket', 'alice first polled, then upgraded');
  await expectText(alice, '#server-subs', 'user:alice', "alice's server-side channel");
  // The connected event's client id is the Socket.IO id (docs/socketio.md).
  const [client, socketId] = await Promise.all([
    alice.locator('#client').textContent({ timeout: WAIT }),
    alice.evaluate(() => window.switchboardTest.socket.id),
  ]);
  assert.equal(client, socketId, 'connected.client is socket.id');
  // The browser really long-polled (GET and POST, cross-origin) and then opened the WebSocket.
  for (const request of ['GET polling', 'POST polling', 'WS websocket']) {
    assert.ok(alice.sioRequests.includes(request), `alice's page made a ${request} request: ${alice.sioRequests.join(', ')}`);
  }

  // user:alice is a server-side subscription from the connect on: the page shows every
  // message published since some point, once each, in order, up to the last.
  await expectItem(alice, '#messages li', { n: sent - 1 }, `the last of ${sent} messages to alice`);
  const got = await shown(alice, '#messages li');
  const first = got[0].n;
  assert.deepEqual(
    got,
    Array.from({ length: sent - first }, (_, i) => ({ n: first + i })),
    `messages ${first}..${sent - 1} to alice, each once, in order`,
  );
  // Usually the first few arrived by long-polling (each <li> says which transport it came
  // by), but that depends on timing, so it is not checked.
  await expectNoErrors(alice);
});

test('a backend emit to user:<sub> reaches that user as message:new, and no one else', async (t) => {
  const alice = await openSocketIo(t, 'alice');
  const bob = await openSocketIo(t, 'bob');
  await expectText(alice, '#transport', 'websocket', 'alice upgraded to WebSocket');
  await expectText(bob, '#transport', 'websocket', 'bob upgraded to WebSocket');

  const hello = { id: 7, text: 'Hi Alice', from: 'backend' };
  await emit('user:alice', 'message:new', hello);
  await expectItem(alice, '#messages li[data-channel="user:alice"][data-event="message:new"]', hello, 'message:new to alice');

  // An event name Socket.IO reserves cannot pass for a connect: it arrives as a publication.
  const reserved = { text: 'not a real connect' };
  await emit('user:alice', 'connect', reserved);
  await expectItem(alice, '#publications li[data-channel="user:alice"]', reserved, 'a publication tagged "connect"');

  // bob's connection delivers in order: once this shows, anything for bob before it has.
  const last = { id: 8, text: 'Hi Bob' };
  await emit('user:bob', 'message:new', last);
  await expectItem(bob, '#messages li[data-channel="user:bob"]', last, 'message:new to bob');

  assert.deepEqual(await shown(bob, '#messages li'), [last], "bob sees his message, not alice's");
  assert.deepEqual(await shown(bob, '#publications li'), [], 'bob got no publications');
  assert.deepEqual(await shown(alice, '#messages li'), [hello], 'alice sees hers once, as message:new only');
  assert.deepEqual(await shown(alice, '#publications li'), [reserved], 'a tagged publication is not also a publication event');
  await expectText(alice, '#state', 'connected', 'alice still connected');
  await expectNoErrors(alice);
  await expectNoErrors(bob);
});

test('Socket.IO and centrifuge-js pages talk in one room', async (t) => {
  const carol = await openCentrifuge(t, 'carol');
  const dave = await openSocketIo(t, 'dave');
  await expectText(dave, '#transport', 'websocket', 'dave upgraded to WebSocket');
  await eventually(
    () => server.api('presence_stats', { channel: ROOM }),
    { num_clients: 2, num_users: 2 },
    `presence of ${ROOM}: carol (centrifuge-js) and dave (Socket.IO)`,
  );

  // Typed in the Socket.IO page: carol's centrifuge-js page shows it, from dave.
  const fromDave = { text: 'Hello from Socket.IO', from: 'dave' };
  await send(dave, fromDave.text);
  await expectItem(carol, `#publications li[data-channel="${ROOM}"][data-user="dave"]`, fromDave, "dave's message in carol's page");
  await expectItem(dave, `#publications li[data-channel="${ROOM}"][data-user="dave"]`, fromDave, "dave's own message in his page");

  // Typed in the centrifuge-js page: dave's Socket.IO page shows it, from carol.
  const fromCarol = { text: 'Hello from centrifuge-js', from: 'carol' };
  await send(carol, fromCarol.text);
  await expectItem(dave, `#publications li[data-channel="${ROOM}"][data-user="carol"]`, fromCarol, "carol's message in dave's page");
  await expectItem(carol, `#publications li[data-channel="${ROOM}"][data-user="carol"]`, fromCarol, "carol's own message in her page");

  // A backend emit to the room: an event for Socket.IO, a publication for centrifuge-js.
  const news = { text: 'Backend says hi to the lobby' };
  await emit(ROOM, 'message:new', news);
  await expectItem(dave, `#messages li[data-channel="${ROOM}"]`, news, 'the backend emit in dave\'s page');
  await expectItem(carol, `#publications li[data-channel="${ROOM}"]`, news, "the backend emit in carol's page");

  assert.deepEqual(await shown(dave, '#publications li'), [fromDave, fromCarol], "dave's publications, in order");
  assert.deepEqual(await shown(carol, '#publications li'), [fromDave, fromCarol, news], "carol's publications, in order");
  await expectNoErrors(dave);
  await expectNoErrors(carol);
  await dave.screenshot({ path: SCREENSHOT });
});

test('a Socket.IO page restricted to long-polling works end to end (cross-origin, CORS)', async (t) => {
  // With credentials, as an app with cookie sessions: the strictest CORS case.
  const erin = await openSocketIo(t, 'erin', { transports: 'polling', credentials: true });
  const frank = await openCentrifuge(t, 'frank');

  // In quick succession: several may share one poll response.
  const burst = Array.from({ length: 5 }, (_, n) => ({ n, text: `poll ${n}` }));
  for (const data of burst) await emit('user:erin', 'message:new', data);
  await expectItem(erin, '#messages li', burst[burst.length - 1], `the last of ${burst.length} messages to erin`);
  assert.deepEqual(await shown(erin, '#messages li'), burst, 'each message once, in order');

  // An untagged publication in the room, then one from the page (a POST) to frank.
  const roomNews = { text: 'Room news for pollers' };
  await server.api('publish', { channel: ROOM, data: roomNews });
  await expectItem(erin, `#publications li[data-channel="${ROOM}"]`, roomNews, 'a room publication in erin\'s page');
  const fromErin = { text: 'Sent over long-polling', from: 'erin' };
  await send(erin, fromErin.text);
  await expectItem(frank, `#publications li[data-channel="${ROOM}"][data-user="erin"]`, fromErin, "erin's message in frank's page");
  await expectItem(erin, `#publications li[data-channel="${ROOM}"][data-user="erin"]`, fromErin, "erin's own message in her page");
  const fromFrank = { text: 'Reply over WebSocket', from: 'frank' };
  await send(frank, fromFrank.text);
  await expectItem(erin, `#publications li[data-channel="${ROOM}"][data-user="frank"]`, fromFrank, "frank's message in erin's page");

  // It never left long-polling, and it did poll cross-origin.
  assert.equal(await erin.locator('#transports-seen').textContent({ timeout: WAIT }), 'polling', 'erin only ever long-polled');
  assert.ok(!erin.sioRequests.some((r) => r.startsWith('WS')), `no WebSocket from erin's page: ${erin.sioRequests.join(', ')}`);
  assert.ok(erin.sioRequests.includes('POST polling'), `erin's page POSTed: ${erin.sioRequests.join(', ')}`);
  assert.ok(
    erin.sioRequests.filter((r) => r === 'GET polling').length >= 3,
    `erin's page polled repeatedly: ${erin.sioRequests.join(', ')}`,
  );
  await expectText(erin, '#state', 'connected', 'erin still connected');
  await expectNoErrors(erin);
  await expectNoErrors(frank);
});
