'use strict';
// The Pusher protocol in a real browser: pusher-js's browser bundle and Laravel Echo's
// in headless Chromium against the real switchboard binary, authorized by an auth
// endpoint that signs with the real `pusher` server library, which also triggers events.

const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const { after, before, test } = require('node:test');

const PusherServer = require('pusher');
const { NODE_MODULES, launchChromium, pageWaits, startStatic } = require('../lib/browser');
const { startServer } = require('../lib/switchboard');

const APP = { appId: '7', key: 'browser-app-key', secret: 'browser-app-secret' };
const CONFIG = `
shutdown_timeout = "2s"

[pusher]
app_id = "${APP.appId}"
key = "${APP.key}"
secret = "${APP.secret}"

[namespaces.default]
subscribe = ["*"]

[namespaces.private]
publish = true

[namespaces.presence]
publish = true
presence = true
join_leave = true
presence_per_user = true
`;

const JS = 'text/javascript; charset=utf-8';
const STATIC = {
  '/pusher.html': ['pusher.html', 'text/html; charset=utf-8'],
  '/pusher-app.js': ['pusher-app.js', JS],
  '/pusher.min.js': [path.join(NODE_MODULES, 'pusher-js', 'dist', 'web', 'pusher.min.js'), JS],
  '/echo.iife.js': [path.join(NODE_MODULES, 'laravel-echo', 'dist', 'echo.iife.js'), JS],
};

let server;
let staticServer;
let authServer;
let browser;
let backend;
const browserLog = [];
const { expectText } = pageWaits(async (page) => {
  const text = await page.locator('body').innerText({ timeout: 1000 }).catch(() => '?');
  return `\n--- page of ${page.user} ---\n${text}\n--- browser ---\n${browserLog.slice(-20).join('\n')}\n--- server ---\n${server.logTail()}`;
});

/** The app's auth endpoint, cross-origin to the pages: signs for the `user` form field. */
function startAuth(lib) {
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const p = new URLSearchParams(body);
      const channel = p.get('channel_name');
      const user = p.get('user');
      const answer = channel.startsWith('presence-')
        ? lib.authorizeChannel(p.get('socket_id'), channel, { user_id: user, user_info: { name: user } })
        : lib.authorizeChannel(p.get('socket_id'), channel);
      res
        .writeHead(200, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' })
        .end(JSON.stringify(answer));
    });
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

before(async () => {
  server = await startServer({ config: CONFIG, apiKey: '' });
  backend = new PusherServer({ ...APP, host: '127.0.0.1', port: String(server.port), useTLS: false });
  authServer = await startAuth(backend);
  staticServer = await startStatic(STATIC);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  for (const s of [staticServer, authServer]) if (s) await new Promise((r) => s.close(r));
  if (server) await server.stop();
});

async function openPage(t, user) {
  const page = await browser.context.newPage();
  page.user = user;
  page.on('console', (m) => browserLog.push(`[${user}] console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => browserLog.push(`[${user}] page error: ${e.message}`));
  t.after(() => page.close().catch(() => {}));
  const fragment = new URLSearchParams({
    key: APP.key,
    host: '127.0.0.1',
    port: String(server.port),
    auth: `http://127.0.0.1:${authServer.address().port}/broadcasting/auth`,
    user,
  });
  await page.goto(`http://127.0.0.1:${staticServer.address().port}/pusher.html#${fragment}`);
  await expectText(page, '#state', 'connected', `${user} connected`);
  await expectText(page, '#subscribed', 'chat.1,orders,room.1', `${user} subscribed`);
  return page;
}

test('Laravel Echo on pusher-js in Chromium: events, whispers and presence', async (t) => {
  const ann = await openPage(t, 'ann');
  const bob = await openPage(t, 'bob');
  await expectText(ann, '#members', 'ann,bob', 'ann sees bob join');
  await expectText(bob, '#members', 'ann,bob', 'bob sees both here');

  const res = await backend.trigger('orders', 'App\\Events\\OrderShipped', { order: 5 });
  assert.equal(res.status, 200);
  for (const page of [ann, bob]) {
    await expectText(page, '#events li[data-event="OrderShipped"]', '{"order":5}', `${page.user} gets the order`);
  }

  await bob.evaluate(() => window.whisper());
  await expectText(ann, '#events li[data-event="whisper"]', '{"from":"bob"}', 'ann gets the whisper');
  assert.equal(await bob.locator('#events li[data-event="whisper"]').count(), 0, 'not echoed to bob');

  await bob.close();
  await expectText(ann, '#members', 'ann', 'ann sees bob leave');
});
