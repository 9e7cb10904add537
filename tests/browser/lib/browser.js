'use strict';
// What the browser tests share besides starting the server: Debian's Chromium launched
// headless through playwright-core, a static file server for the test pages and SDK
// bundles (on its own port, so the pages are cross-origin to switchboard), waits that
// fail with the page's, the browser's and the server's state, and the fixture of a test
// file that runs all three.

const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const { after, before } = require('node:test');

const { chromium } = require('playwright-core');

const { mintToken, startServer } = require('./switchboard');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
/** How long a wait for something in a page lasts. */
const WAIT = 10000;
/**
 * How often page.waitForFunction checks, in ms. Not Playwright's default (every animation
 * frame): Chromium throttles animation frames in tabs that are not in front, so a wait in
 * any page but the last one opened would only check about once a second.
 */
const POLL = 20;
const PAGE_DIR = path.join(__dirname, '..', 'page');
const NODE_MODULES = path.join(__dirname, '..', 'node_modules');

/**
 * Launches Chromium headless with a fresh temporary profile. The switches keep it off the
 * network except for the test's own 127.0.0.1 servers (this machine refuses everything
 * else). Resolves with `{ context, close }`; `close()` also removes the profile.
 */
async function launchChromium() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  }
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 60000,
      viewport: { width: 900, height: 600 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  } catch (err) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Serves `routes` ({ '/path': [file, content type] }; a relative file is under page/) with
 * node:http on 127.0.0.1:<free port>. Anything else is a 404. Resolves with the server.
 */
function startStatic(routes) {
  for (const [file] of Object.values(routes)) {
    const full = path.resolve(PAGE_DIR, file);
    if (!fs.existsSync(full)) throw new Error(`${full} not found: run npm ci in tests/browser`);
  }
  const srv = http.createServer((req, res) => {
    const entry = routes[new URL(req.url, 'http://x').pathname];
    if (req.method !== 'GET' || !entry) {
      res.writeHead(404).end();
      return;
    }
    const [file, type] = entry;
    const body = fs.readFileSync(path.resolve(PAGE_DIR, file));
    res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' }).end(body);
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

/**
 * Waits that fail with `diagnostics(page)` (an async function returning text to append to
 * the error: the page, the browser console, the server log...).
 */
function pageWaits(diagnostics) {
  return {
    /** Waits until the element at `selector` has exactly `text`. */
    async expectText(page, selector, text, label) {
      try {
        await page.waitForFunction(
          ([sel, want]) => document.querySelector(sel)?.textContent === want,
          [selector, text],
          { timeout: WAIT, polling: POLL },
        );
      } catch (err) {
        const got = await page
          .locator(selector)
          .textContent({ timeout: 1000 })
          .catch(() => '?');
        throw new Error(
          `${label}: ${selector} is ${JSON.stringify(got)}, want ${JSON.stringify(text)}${await diagnostics(page)}`,
          { cause: err },
        );
      }
    },
    /** Waits until `locator` in `page` is visible. */
    async waitVisible(page, locator, label) {
      try {
        await locator.waitFor({ state: 'visible', timeout: WAIT });
      } catch (err) {
        throw new Error(`${label}: not shown within ${WAIT} ms${await diagnostics(page)}`, { cause: err });
      }
    },
  };
}

/** The token secret and API key of the servers `browserSuite` starts. */
const SECRET = 'switchboard-browser-test-secret';
const API_KEY = 'switchboard-browser-test-api-key';

/**
 * The fixture of a test file whose pages, served from `routes` (see `startStatic`), talk
 * to one switchboard in one Chromium: all three start before the first test and stop
 * after the last. The server's config is a token secret, an API key, `settings` (more
 * top-level keys) and `tables` (namespaces and other sections). `server` is filled in
 * by the time a test runs (so a file can take it at its top); `log` collects the pages'
 * console lines and errors, for failure messages.
 */
function browserSuite({ routes, settings = '', tables = '' }) {
  const server = {};
  const log = [];
  let staticServer;
  let browser;
  before(async () => {
    staticServer = await startStatic(routes);
    const config = `token_hmac_secret = "${SECRET}"\napi_key = "${API_KEY}"\nshutdown_timeout = "2s"\n${settings}\n${tables}`;
    Object.assign(server, await startServer({ config, apiKey: API_KEY }));
    browser = await launchChromium();
  });
  after(async () => {
    if (browser) await browser.close();
    if (staticServer) await new Promise((resolve) => staticServer.close(resolve));
    if (server.stop) await server.stop();
  });
  return {
    server,
    log,
    /** The browser context, for what a test does beyond pages (a DevTools session). */
    context: () => browser.context,
    /** A new page for `user` (`page.user`), its console and errors going to `log`. */
    async newPage(user) {
      const page = await browser.context.newPage();
      page.user = user;
      page.on('console', (msg) => log.push(`[${user}] console.${msg.type()}: ${msg.text()}`));
      page.on('pageerror', (err) => log.push(`[${user}] page error: ${err.message}`));
      return page;
    },
    /** The address of `file` (a route; '' for the index) with `fragment`'s parameters. */
    pageUrl: (file, fragment) =>
      `http://127.0.0.1:${staticServer.address().port}/${file}#${new URLSearchParams(fragment)}`,
    /** A connection token for `sub`, valid for an hour, with more `claims`. */
    token: (sub, claims = {}) => mintToken({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims }, SECRET),
  };
}

module.exports = { CHROMIUM, NODE_MODULES, PAGE_DIR, POLL, WAIT, browserSuite, launchChromium, pageWaits, startStatic };
