'use strict';
// permessage-deflate in a real browser: Chromium offers the extension by itself and,
// once negotiated, compresses every message it sends. With `websocket.compression` on,
// the centrifuge-js page connects, the handshake's answer (read through the DevTools
// protocol) carries the extension, a large API publication shows up intact, and what
// the page publishes through its form comes back.

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');

const { NODE_MODULES, browserSuite, pageWaits } = require('../lib/browser');

const NEGOTIATED = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover';

const suite = browserSuite({
  routes: {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
    '/centrifuge.js': [path.join(NODE_MODULES, 'centrifuge', 'dist', 'centrifuge.js'), 'text/javascript; charset=utf-8'],
  },
  tables: `
[websocket]
compression = true

[namespaces.room]
subscribe = ["*"]
publish = true
`,
});
const { server } = suite;
const { expectText, waitVisible } = pageWaits(async (page) => {
  return `\n--- browser console ---\n${suite.log.join('\n') || '(empty)'}` +
    `\n--- page ---\n${await page.locator('body').innerText({ timeout: 1000 }).catch(() => '')}` +
    `\n--- last lines of switchboard log ---\n${server.logTail()}`;
});

test('Chromium negotiates deflate; large publications and its own publishes arrive intact', async () => {
  const page = await suite.newPage('carol');
  // The upgrade answer's headers, as the browser got them.
  const cdp = await suite.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const handshakes = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.headers));

  await page.goto(suite.pageUrl('', { ws: server.wsUrl, token: suite.token('carol'), room: 'room:deflate' }));
  await expectText(page, '#state', 'connected', 'connected');
  await expectText(page, '#room-state', 'subscribed', 'subscribed to room:deflate');
  assert.equal(handshakes.length, 1, 'one WebSocket handshake');
  const headers = Object.fromEntries(Object.entries(handshakes[0]).map(([k, v]) => [k.toLowerCase(), v]));
  assert.equal(headers['sec-websocket-extensions'], NEGOTIATED);

  const big = { text: 'a long line the server compresses. '.repeat(80) };
  await server.api('publish', { channel: 'room:deflate', data: big });
  const items = page.locator('#publications li[data-channel="room:deflate"]');
  await waitVisible(page, items.first(), 'the large publication');
  assert.deepEqual(JSON.parse(await items.first().textContent()), big);

  // Chromium compresses what it sends: the server inflates the publish command.
  const text = 'from the browser, compressed on the way up. '.repeat(20).trim();
  await page.fill('#text', text);
  await page.click('#send button');
  await expectText(page, '#send-state', `sent: ${text}`, 'publish acknowledged');
  await waitVisible(page, items.nth(1), 'the page\'s own publication');
  assert.deepEqual(JSON.parse(await items.nth(1).textContent()), { text, from: 'carol' });
  assert.equal(await page.locator('#errors').textContent(), '', 'no client errors');
  await page.close();
});
