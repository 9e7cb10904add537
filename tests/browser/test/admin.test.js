'use strict';
// The operator console at /admin in headless Chromium against the real switchboard
// binary: refusals without a session, a wrong password, login (by keyboard), a real
// client (centrifuge-js in Node) appearing live, publishing to it and disconnecting it
// from the page; screenshots of every view at desktop and phone sizes, light and dark,
// written to tests/browser/screenshots/ (not committed).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { after, before, test } = require('node:test');

const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const { POLL, WAIT, launchChromium, pageWaits } = require('../lib/browser');
const { mintToken, startServer } = require('../lib/switchboard');

const SECRET = 'switchboard-admin-test-secret';
const API_KEY = 'switchboard-admin-test-api-key';
const PASSWORD = 'console-password-for-tests';
const SCREENSHOTS = path.join(__dirname, '..', 'screenshots');
const SIZES = {
  desktop: { width: 1280, height: 800 },
  phone: { width: 390, height: 844 },
};

const CONFIG = `
token_hmac_secret = "${SECRET}"
api_key = "${API_KEY}"
shutdown_timeout = "2s"

[admin]
enabled = true
password = "${PASSWORD}"
stats_interval = "200ms"

[namespaces.room]
subscribe = ["*"]
publish = true
presence = true
join_leave = true
history_size = 50
history_ttl = "10m"
`;

let server;
let browser;
let page;
const clients = [];
const browserLog = [];
const { expectText, waitVisible } = pageWaits(diagnostics);

before(async () => {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  server = await startServer({ config: CONFIG, apiKey: API_KEY });
  browser = await launchChromium();
  page = await browser.context.newPage();
  page.on('console', (msg) => browserLog.push(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => browserLog.push(`page error: ${err.message}`));
  await page.setViewportSize(SIZES.desktop);
});

after(async () => {
  for (const c of clients) c.disconnect();
  if (browser) await browser.close();
  if (server) await server.stop();
});

async function diagnostics(p) {
  const body = await p
    .locator('body')
    .innerText({ timeout: 1000 })
    .catch(() => '(page unreadable)');
  const shot = path.join(SCREENSHOTS, 'failure.png');
  await p.screenshot({ path: shot, fullPage: true }).catch(() => {});
  return (
    `\n--- console page ---\n${body}` +
    `\n--- browser console ---\n${browserLog.join('\n') || '(empty)'}` +
    `\n--- last lines of switchboard log ---\n${server.logTail(30)}` +
    `\n(screenshot: ${shot})`
  );
}

/** Waits until `fn` (run in the page) is truthy. */
async function waitInPage(fn, arg, label) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT, polling: POLL });
  } catch (err) {
    throw new Error(`${label}: not within ${WAIT} ms${await diagnostics(page)}`, { cause: err });
  }
}

/** Resolves when `emitter` emits `event` (its first argument), rejects after WAIT ms. */
function once(emitter, event, label) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label}: no ${event} within ${WAIT} ms\n${server.logTail(30)}`)), WAIT);
    emitter.once(event, (ctx) => {
      clearTimeout(timer);
      resolve(ctx);
    });
  });
}

/** A real client: centrifuge-js in Node over the ws package, as `user`. */
async function connectClient(user) {
  const token = mintToken({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
  const client = new Centrifuge(server.wsUrl, { token, websocket: WebSocket, minReconnectDelay: 60000 });
  clients.push(client);
  const connected = once(client, 'connected', `${user} connected`);
  client.connect();
  await connected;
  return client;
}

async function screenshots(view) {
  for (const [size, viewport] of Object.entries(SIZES)) {
    await page.setViewportSize(viewport);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${view} at ${size}: the page is ${overflow}px wider than the viewport`);
    await page.screenshot({ path: path.join(SCREENSHOTS, `${view}-${size}.png`), fullPage: true });
  }
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${view}-phone-dark.png`), fullPage: true });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize(SIZES.desktop);
}

async function post(pathname, body, headers = {}) {
  const res = await fetch(`${server.httpUrl}${pathname}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  return res.status;
}

test('without a session the console API, its tokens and its channels are refused', async () => {
  const session = await fetch(`${server.httpUrl}/admin/api/session`, { signal: AbortSignal.timeout(5000) });
  assert.equal(session.status, 401);
  assert.equal(await post('/admin/api/call/info', {}), 401);
  assert.equal(await post('/admin/api/call/publish', { channel: 'room:x', data: {} }), 401);
  assert.equal(await post('/admin/api/token', {}), 401);
  assert.equal(await post('/admin/api/login', { password: 'nope' }), 401);

  // A user's connection can not watch the console's feed.
  const eve = await connectClient('eve');
  const sub = eve.newSubscription('_admin:stats');
  // A permanent subscribe error ends the subscription with the error's code.
  const refused = once(sub, 'unsubscribed', 'eve subscribing to _admin:stats');
  sub.subscribe();
  const ctx = await refused;
  assert.equal(ctx.code, 102, JSON.stringify(ctx));
  eve.disconnect();
});

test('a wrong password is refused in the page; the right one, typed, logs in', async () => {
  await page.goto(`${server.httpUrl}/admin/`);
  await waitVisible(page, page.locator('#login-form'), 'the login form');
  await screenshots('login');
  await page.locator('#password').fill('not the password');
  await page.locator('#login-form button[type="submit"]').click();
  await expectText(page, '#login-error', 'Wrong password.', 'wrong password refused');
  assert.equal(await page.locator('#app').isHidden(), true);

  // By keyboard: the field has focus again after a failure.
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await expectText(page, '#feed-state', 'live', 'the console feed is live');
  await waitInPage(() => document.querySelectorAll('#nodes tbody tr').length === 1, null, 'one node listed');
  const cookies = await browser.context.cookies();
  const session = cookies.find((c) => c.name === 'switchboard_admin');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the page can not read it');
});

test('a client that connects appears live, and the views are keyboard-navigable', async () => {
  await expectText(page, '#total-clients', '0', 'no connections yet');
  const carol = await connectClient('carol');
  const room = carol.newSubscription('room:lobby');
  const subscribed = once(room, 'subscribed', 'carol subscribed');
  room.subscribe();
  await subscribed;
  await expectText(page, '#total-clients', '1', 'carol counted');
  await expectText(page, '#total-users', '1', 'one user');
  await waitInPage(() => document.querySelectorAll('#chart polyline')[0]?.getAttribute('points')?.split(' ').length > 1, null, 'the chart drawn');
  await screenshots('overview');

  // Tab to the Channels link, with a visible focus ring, and follow it.
  let onLink = false;
  for (let i = 0; i < 10 && !onLink; i++) {
    await page.keyboard.press('Tab');
    onLink = await page.evaluate(() => document.activeElement?.dataset?.view === 'channels');
  }
  assert.ok(onLink, 'the Channels link is reachable by Tab');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none', 'focus is visible');
  await page.keyboard.press('Enter');
  await waitVisible(page, page.locator('#view-channels'), 'the channels view');
  const row = page.locator('#channels-table tbody tr', { hasText: 'room:lobby' });
  await waitVisible(page, row, 'room:lobby listed');
  assert.equal((await row.locator('td').nth(1).textContent()).trim(), '1');
  await screenshots('channels');
  globalThis.carol = { client: carol, room };
});

test('publishing from the console reaches the real client and shows in the live tail', async () => {
  const { room } = globalThis.carol;
  await page.locator('#channels-table button', { hasText: 'room:lobby' }).click();
  await waitVisible(page, page.locator('#channel-detail'), 'the channel view');
  const presence = page.locator('#presence-table tbody tr', { hasText: 'carol' });
  await waitVisible(page, presence, 'carol in presence');

  const arrived = once(room, 'publication', 'the console publication at carol');
  await page.locator('#publish-data').fill('{"text": "hello carol", "n": 1}');
  await page.locator('#publish-form button[type="submit"]').click();
  const pub = await arrived;
  assert.deepEqual(pub.data, { text: 'hello carol', n: 1 });
  await waitVisible(page, page.locator('#tail li', { hasText: 'hello carol' }), 'the publication in the tail');

  // A client's own publication shows in the tail too, with its author.
  await room.publish({ text: 'hi console' });
  await waitVisible(page, page.locator('#tail li', { hasText: 'hi console' }), 'carol publication in the tail');
  assert.match(await page.locator('#tail li', { hasText: 'hi console' }).textContent(), /from carol/);
  // The console watches without joining: presence still has carol alone.
  assert.deepEqual(await server.api('presence_stats', { channel: 'room:lobby' }), { num_clients: 1, num_users: 1 });
  await screenshots('channel');
});

test('disconnecting a user from the console disconnects the real client', async () => {
  const { client } = globalThis.carol;
  // A new document (a hash change alone would not load one): the cookie keeps the login.
  await page.goto(`${server.httpUrl}/admin/#user`);
  await page.reload();
  await expectText(page, '#action-status', '', 'a fresh page');
  await expectText(page, '#feed-state', 'live', 'the feed after a reload (the session cookie)');
  await page.locator('#user-id').fill('carol');
  await page.locator('#user-form button[type="submit"]').click();
  await expectText(page, '#user-online', 'online', 'carol online');
  await waitInPage(() => document.querySelectorAll('#user-connections tbody tr').length === 1, null, 'carol connection listed');
  await screenshots('user');

  const disconnected = once(client, 'disconnected', 'carol disconnected');
  await page.locator('#disconnect-user').click();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3503, JSON.stringify(ctx));
  await expectText(page, '#action-status', 'Disconnected carol.', 'the outcome shown');
  await waitInPage(() => document.querySelectorAll('#user-connections tbody tr').length === 0, null, 'no connection left');
});

test('logging out ends the session', async () => {
  await page.locator('#logout').click();
  await waitVisible(page, page.locator('#login-form'), 'the login form again');
  const cookies = await browser.context.cookies();
  assert.equal(cookies.find((c) => c.name === 'switchboard_admin'), undefined, 'the cookie is cleared');
});
