'use strict';
// A backend publishes through the server HTTP API to a user, a role and a room, and the
// messages show up in a real browser: the centrifuge-js browser bundle in headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core), against the real
// switchboard binary.

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');

const { NODE_MODULES, browserSuite, pageWaits } = require('../lib/browser');
const { REPO } = require('../lib/switchboard');

/** Screenshots for debugging (target/ is not committed): the first user's page, then others'. */
const SCREENSHOT = path.join(REPO, 'target', 'browser-test.png');
const screenshotPath = (user) => (user === 'alice' ? SCREENSHOT : path.join(REPO, 'target', `browser-test-${user}.png`));

// The IIFE build of the SDK (esbuild of src/browser.ts): sets globalThis.Centrifuge.
const BUNDLE = path.join(NODE_MODULES, 'centrifuge', 'dist', 'centrifuge.js');
const suite = browserSuite({
  // The test page and the SDK bundle.
  routes: {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
    '/centrifuge.js': [BUNDLE, 'text/javascript; charset=utf-8'],
  },
  settings: 'auto_subscribe = ["user:{sub}", "role:{roles}"]',
  tables: `
[namespaces.role]
subscribe = ["role:{roles}"]

[namespaces.room]
subscribe = ["*"]
presence = true
join_leave = true
`,
});
const { server } = suite;
const { expectText, waitVisible } = pageWaits(diagnostics);

/** Opens the test page for one user (token in the URL fragment) and waits until it is live. */
async function openClient(user, roles) {
  const page = await suite.newPage(user);
  const token = suite.token(user, roles ? { roles } : {});
  await page.goto(suite.pageUrl('', { ws: server.wsUrl, token, room: 'room:lobby' }));
  await expectText(page, '#state', 'connected', `${user} connected`);
  await expectText(page, '#room-state', 'subscribed', `${user} subscribed to room:lobby`);
  return page;
}

/** Waits for exactly one <li> of `channel` in `page` and checks its JSON against `data`. */
async function expectPublication(page, channel, data) {
  const items = page.locator(`#publications li[data-channel="${channel}"]`);
  await waitVisible(page, items.first(), `a publication on ${channel} in ${page.user}'s page`);
  assert.equal(await items.count(), 1, `exactly one publication on ${channel}`);
  assert.deepEqual(JSON.parse(await items.textContent()), data, `data shown for ${channel}`);
}

/** The channels of all publications shown in `page`, in order. */
function shownChannels(page) {
  return page.locator('#publications li').evaluateAll((lis) => lis.map((li) => li.dataset.channel));
}

async function diagnostics(page) {
  const body = await page
    .locator('body')
    .innerText({ timeout: 1000 })
    .catch(() => '(page unreadable)');
  const items = await page
    .locator('#publications li')
    .evaluateAll((lis) => lis.map((li) => `${li.dataset.channel} ${li.textContent}`).join('\n'))
    .catch(() => '(unreadable)');
  const shot = screenshotPath(page.user);
  await page.screenshot({ path: shot }).catch(() => {});
  return (
    `\n--- ${page.user}'s page ---\n${body}` +
    `\n--- publications shown (channel data) ---\n${items || '(none)'}` +
    `\n--- browser console ---\n${suite.log.join('\n') || '(empty)'}` +
    `\n--- last lines of switchboard log ---\n${server.logTail()}` +
    `\n(screenshot: ${shot})`
  );
}

test('API publishes to a user, a role and a room reach the right browser pages', async () => {
  const alice = await openClient('alice', ['admin']);
  const bob = await openClient('bob', ['viewer']);

  // The server-side subscriptions from auto_subscribe, as the browsers saw them.
  await expectText(alice, '#server-subs', 'role:admin user:alice', 'alice server-side channels');
  await expectText(bob, '#server-subs', 'role:viewer user:bob', 'bob server-side channels');
  // The backend sees both browsers in the room.
  assert.deepEqual(await server.api('presence_stats', { channel: 'room:lobby' }), { num_clients: 2, num_users: 2 });

  // What a backend's emitToUser / emitToRole / emitToRoom become (docs/api.md).
  const toAlice = { event: 'notification', data: { text: 'Your order shipped', order: 7 } };
  const toAdmins = { event: 'admin:alert', data: { text: 'Disk almost full', level: 'warn' } };
  const toLobby = { event: 'message:new', data: { text: 'Hello, lobby', from: 'backend' } };
  await server.api('publish', { channel: 'user:alice', data: toAlice });
  await server.api('publish', { channel: 'role:admin', data: toAdmins });
  await server.api('publish', { channel: 'room:lobby', data: toLobby });

  await expectPublication(alice, 'user:alice', toAlice);
  await expectPublication(alice, 'role:admin', toAdmins);
  await expectPublication(alice, 'room:lobby', toLobby);
  await expectPublication(bob, 'room:lobby', toLobby);

  // A last publication to each user: their connection delivers in order, so once it is
  // shown, anything else meant for them would have been shown before it.
  const last = { event: 'last', data: {} };
  await server.api('broadcast', { channels: ['user:alice', 'user:bob'], data: last });
  await waitVisible(alice, alice.locator('#publications li[data-channel="user:alice"]').nth(1), 'the last publication to alice');
  await expectPublication(bob, 'user:bob', last);

  assert.deepEqual(
    await shownChannels(bob),
    ['room:lobby', 'user:bob'],
    'bob (no admin role) sees the room, not alice nor the admins',
  );
  assert.deepEqual(
    (await shownChannels(alice)).sort(),
    ['role:admin', 'room:lobby', 'user:alice', 'user:alice'],
    'alice sees her own messages, the admins and the room, not bob',
  );
  assert.equal(await alice.locator('#errors').textContent(), '', 'no client errors in alice page');
  assert.equal(await bob.locator('#errors').textContent(), '', 'no client errors in bob page');

  await alice.screenshot({ path: screenshotPath('alice') });
  await bob.screenshot({ path: screenshotPath('bob') });
});
