'use strict';
// The centrifuge-js browser bundle's fallbacks for networks that break WebSocket, in
// headless Chromium: `http_stream` (fetch streaming, commands by POST /emulation) and
// `sse` (the browser's EventSource), cross-origin from the page's own server; and the
// SDK's Protobuf bundle (`dist/centrifuge.protobuf.js`) over WebSocket and over
// `http_stream`. Each page connects with its server-side channel, subscribes to a room,
// gets API publications and publishes to the room.

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');

const { NODE_MODULES, browserSuite, pageWaits } = require('../lib/browser');

const suite = browserSuite({
  routes: {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/protobuf.html': ['protobuf.html', 'text/html; charset=utf-8'],
    '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
    '/centrifuge.js': [path.join(NODE_MODULES, 'centrifuge', 'dist', 'centrifuge.js'), 'text/javascript; charset=utf-8'],
    '/centrifuge.protobuf.js': [
      path.join(NODE_MODULES, 'centrifuge', 'dist', 'centrifuge.protobuf.js'),
      'text/javascript; charset=utf-8',
    ],
  },
  tables: `
[namespaces.room]
subscribe = ["*"]
publish = true
presence = true
history_size = 10
history_ttl = "1h"
`,
});
const { server } = suite;
const { expectText, waitVisible } = pageWaits(diagnostics);

async function diagnostics(page) {
  const body = await page
    .locator('body')
    .innerText({ timeout: 1000 })
    .catch(() => '(page unreadable)');
  return (
    `\n--- ${page.user}'s page ---\n${body}` +
    `\n--- browser console ---\n${suite.log.join('\n') || '(empty)'}` +
    `\n--- last lines of switchboard log ---\n${server.logTail()}`
  );
}

/** Opens the page as `user` over `transport` (`websocket`, `http_stream`, `sse`). */
async function openClient(user, { transport, protobuf, room }) {
  const page = await suite.newPage(user);
  const fragment = { ws: server.wsUrl, http: server.httpUrl, transport, token: suite.token(user), room };
  await page.goto(suite.pageUrl(protobuf ? 'protobuf.html' : '', fragment));
  await expectText(page, '#state', 'connected', `${user} connected`);
  await expectText(page, '#transport', transport, `${user} on ${transport}`);
  await expectText(page, '#server-subs', `user:${user}`, `${user}'s server-side channel`);
  await expectText(page, '#room-state', 'subscribed', `${user} subscribed to ${room}`);
  return page;
}

async function expectPublication(page, channel, data, nth = 0) {
  const item = page.locator(`#publications li[data-channel="${channel}"]`).nth(nth);
  await waitVisible(page, item, `publication ${nth} on ${channel} in ${page.user}'s page`);
  assert.deepEqual(JSON.parse(await item.textContent()), data);
}

const CASES = [
  { transport: 'http_stream', protobuf: false },
  { transport: 'sse', protobuf: false },
  { transport: 'http_stream', protobuf: true },
  { transport: 'websocket', protobuf: true },
];

for (const c of CASES) {
  const name = `${c.transport}${c.protobuf ? ' with the Protobuf bundle' : ''}`;
  test(`${name}: connects, gets API publications and publishes to the room`, async () => {
    const room = `room:${c.transport}-${c.protobuf ? 'pb' : 'json'}`;
    const user = `${c.transport.replace('_', '')}${c.protobuf ? 'pb' : ''}`;
    const page = await openClient(user, { ...c, room });

    await server.api('publish', { channel: `user:${user}`, data: { note: 'personal' } });
    await expectPublication(page, `user:${user}`, { note: 'personal' });
    await server.api('publish', { channel: room, data: { text: 'from the api' } });
    await expectPublication(page, room, { text: 'from the api' });

    // The page's form publishes into the room: the command goes up (by /emulation on
    // the fallbacks), the publication comes back down the stream.
    await page.fill('#text', 'from the browser');
    await page.click('#send button');
    await expectText(page, '#send-state', 'sent: from the browser', 'publish acknowledged');
    await expectPublication(page, room, { text: 'from the browser', from: user }, 1);
    const history = await server.api('history', { channel: room, limit: 10 });
    assert.equal(history.publications.length, 2);
    assert.equal(await page.locator('#errors').textContent(), '', 'no client errors');
    await page.close();
  });
}
