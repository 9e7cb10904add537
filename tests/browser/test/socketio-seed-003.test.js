'use strict';
// Seed 003's frontend (page/socketio-seed-003.js: its useWebSocket hook and EarningsPage
// listeners, unchanged) in headless Chromium against switchboard with the shipped
// examples/socketio-seed-003.toml: the backend's emits as API publications render in
// the page, and after a dropped connection the page recovers what it missed.

const fs = require('node:fs');
const path = require('node:path');
const { after, before, test } = require('node:test');

const { NODE_MODULES, launchChromium, pageWaits, startStatic } = require('../lib/browser');
const { REPO, mintToken, startServer } = require('../lib/switchboard');

const SECRET = 'switchboard-browser-seed-003-secret';
const API_KEY = 'switchboard-browser-seed-003-api-key';
const EXAMPLE = fs.readFileSync(path.join(REPO, 'examples', 'socketio-seed-003.toml'), 'utf8');
const JS = 'text/javascript; charset=utf-8';
const STATIC = {
  '/': ['socketio-seed-003.html', 'text/html; charset=utf-8'],
  '/socketio-seed-003.js': ['socketio-seed-003.js', JS],
  '/socket.io.min.js': [path.join(NODE_MODULES, 'socket.io-client', 'dist', 'socket.io.min.js'), JS],
};

let server;
let staticServer;
let browser;
const browserLog = [];
const { expectText } = pageWaits(async (page) => {
  const body = await page.locator('body').innerText({ timeout: 1000 }).catch(() => '(page unreadable)');
  return `\n--- page ---\n${body}\n--- browser console ---\n${browserLog.join('\n')}\n--- switchboard log ---\n${server.logTail()}`;
});

before(async () => {
  staticServer = await startStatic(STATIC);
  const config = EXAMPLE.replace('token_hmac_secret = "change-me"', `token_hmac_secret = "${SECRET}"`)
    .replace('api_key = "change-me-too"', `api_key = "${API_KEY}"`);
  if (!config.includes(SECRET) || !config.includes(API_KEY)) throw new Error('the example sets both keys');
  server = await startServer({ config, apiKey: API_KEY });
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (staticServer) await new Promise((resolve) => staticServer.close(resolve));
  if (server) await server.stop();
});

const envelope = (event, data) => ({ event, timestamp: new Date().toISOString(), data });
const emitEarning = (userId, event, data) => server.api('publish', { channel: `earnings:${userId}`, data: envelope(event, data), tags: { event } });
const sendNotification = (userId, n) => server.api('publish', { channel: `notifications:${userId}`, data: envelope('notification', n), tags: { event: 'notification' } });

test('seed 003 in Chromium: earnings and notifications render; a dropped connection recovers', async (t) => {
  const page = await browser.context.newPage();
  t.after(() => page.close().catch(() => {}));
  page.on('console', (msg) => browserLog.push(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => browserLog.push(`page error: ${err.message}`));
  const token = mintToken({ sub: 'u-ann', exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
  const port = staticServer.address().port;
  await page.goto(`http://127.0.0.1:${port}/#${new URLSearchParams({ url: server.httpUrl, token })}`);
  await expectText(page, '#state', 'connected', 'connected');

  await emitEarning('u-ann', 'earnings:new', { id: 'e1', amount: 100 });
  await emitEarning('u-ann', 'earnings:updated', { id: 'e1', changes: { amount: 120 } });
  await sendNotification('u-ann', { title: 'Earning Created', message: 'New earning of $100 added to Upwork' });
  await expectText(page, '#earnings', '{"id":"e1","amount":120}', 'the updated earning');
  await expectText(page, '#notifications', 'Earning Created: New earning of $100 added to Upwork', 'the notification');

  // The connection drops; the backend goes on; the page reconnects by itself.
  await page.evaluate(() => window.dropConnection());
  await emitEarning('u-ann', 'earnings:new', { id: 'e2', amount: 20 });
  await emitEarning('u-ann', 'earnings:deleted', { id: 'e1' });
  await expectText(page, '#recovered', 'true', 'socket.recovered after the reconnect');
  await expectText(page, '#earnings', '{"id":"e2","amount":20}', 'the missed earnings, in order');
});
