'use strict';
// Shared fixture for the cross-language tests: the real switchboard binary as a child
// process, HS256 tokens minted with node:crypto, centrifuge-js clients, and waits that
// always time out so a bug fails fast instead of hanging.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const assert = require('node:assert/strict');
const { after, afterEach, before } = require('node:test');

const WebSocket = require('ws');
const { Centrifuge } = require('centrifuge');
// The SDK's Protobuf build: binary frames, the `centrifuge-protobuf` subprotocol.
const { Centrifuge: CentrifugeProtobuf } = require('centrifuge/build/protobuf');

/** HMAC secret shared by the server config and the tokens minted here. */
const SECRET = 'switchboard-js-test-secret';
/** The server API key of the servers `serverPerFile` starts. */
const API_KEY = 'js-api-key';
/** Default wait for one event or reply. */
const TIMEOUT = 5000;
const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.SWITCHBOARD_BIN || path.join(REPO, 'target', 'debug', 'switchboard');

/** The namespaces the scenarios use, on top of the built-in `user` namespace. */
const DEFAULT_CONFIG = `
token_hmac_secret = "${SECRET}"
shutdown_timeout = "2s"

[namespaces.chat]
subscribe = ["*"]
publish = true
presence = true
join_leave = true
history_size = 100
history_ttl = "1h"

[namespaces.observation]
subscribe = []
presence = true
`;

/** Servers still running, killed if the test process exits early. */
const running = new Set();
process.on('exit', () => {
  for (const s of running) s.proc.kill('SIGKILL');
});

/** A free TCP port on 127.0.0.1 (listen on port 0, read it, close). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether `port` on 127.0.0.1 can be listened on. */
function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/**
 * A free port for a redis-server the tests start: within `SWITCHBOARD_TEST_REDIS_PORTS`
 * (`18500-18599`, for shared machines) when set, else any.
 */
async function freeRedisPort() {
  const range = (process.env.SWITCHBOARD_TEST_REDIS_PORTS || '').split('-').map(Number);
  if (range.length !== 2 || !range.every(Number.isInteger)) return freePort();
  const [lo, hi] = range;
  const start = Math.floor(Math.random() * (hi - lo + 1));
  for (let i = 0; i <= hi - lo; i++) {
    const port = lo + ((start + i) % (hi - lo + 1));
    if (await portFree(port)) return port;
  }
  throw new Error(`no free port in ${process.env.SWITCHBOARD_TEST_REDIS_PORTS}`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Rejects with a message naming `label` unless `promise` settles within `ms`. */
function withTimeout(promise, ms, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}${logHint()}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The last lines of each running server's log, for error messages (logs go with the server). */
function logHint() {
  let hint = '';
  for (const s of running) {
    const tail = readTail(s.logPath, 15);
    hint += `\n--- last lines of switchboard log (port ${s.port}) ---\n${tail}`;
  }
  return hint;
}

function readTail(file, lines) {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Resolves with the first `event` on `emitter` whose context passes `filter`.
 * Register it before triggering the action that emits the event.
 */
function waitEvent(emitter, event, { filter = () => true, timeout = TIMEOUT, label } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`timed out after ${timeout} ms waiting for ${label || event}${logHint()}`));
    }, timeout);
    function on(ctx) {
      if (!filter(ctx)) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(ctx);
    }
    emitter.on(event, on);
  });
}

/** Records every `events` emission of `emitter` as `{ event, ctx }`, for later assertions. */
function record(emitter, events) {
  const seen = [];
  for (const event of events) emitter.on(event, (ctx) => seen.push({ event, ctx }));
  return seen;
}

function base64url(text) {
  return Buffer.from(text).toString('base64url');
}

/** Signs `claims` as an HS256 JWT. */
function mintToken(claims, secret = SECRET) {
  const signingInput = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  const signature = crypto.createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** A connection token for `sub`: `ttl` seconds (default 1 h), optional info/channels/roles/tenant. */
function connectionToken(sub, { ttl = 3600, info, channels, roles, tenant } = {}) {
  const claims = { sub, exp: nowSecs() + ttl };
  if (info !== undefined) claims.info = info;
  if (channels !== undefined) claims.channels = channels;
  if (roles !== undefined) claims.roles = roles;
  if (tenant !== undefined) claims.tenant = tenant;
  return mintToken(claims);
}

/** A subscription token granting `sub` the channel `channel`. */
function subscriptionToken(sub, channel, { ttl = 3600 } = {}) {
  return mintToken({ sub, channel, exp: nowSecs() + ttl });
}

/** The server's environment: ours without any SWITCHBOARD_* (the server rejects unknown keys). */
function serverEnv(port) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SWITCHBOARD_')) env[k] = v;
  }
  env.SWITCHBOARD_BIND = `127.0.0.1:${port}`;
  env.SWITCHBOARD_LOG = process.env.SWITCHBOARD_LOG || 'info';
  env.NO_COLOR = '1';
  return env;
}

/**
 * Starts the switchboard binary with `config` (TOML) on 127.0.0.1:`port` (a free one by
 * default) and waits until `GET /health` answers 200.
 */
async function startServer({ config = DEFAULT_CONFIG, port } = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`switchboard binary not found at ${BIN}: run \`cargo build -p switchboard\` or set SWITCHBOARD_BIN`);
  }
  port = port || (await freePort());
  const stamp = `${process.pid}-${port}-${Date.now()}`;
  const configPath = path.join(os.tmpdir(), `switchboard-js-${stamp}.toml`);
  const logPath = path.join(os.tmpdir(), `switchboard-js-${stamp}.log`);
  fs.writeFileSync(configPath, config);
  const log = fs.createWriteStream(logPath);
  const proc = spawn(BIN, ['serve', '--config', configPath], {
    env: serverEnv(port),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  if (process.env.SWITCHBOARD_TEST_LOGS) {
    proc.stderr.pipe(process.stderr, { end: false });
  }
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const server = {
    port,
    proc,
    logPath,
    configPath,
    exited,
    wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
    httpUrl: `http://127.0.0.1:${port}`,
    /** Sends `signal` and waits for the process to exit (SIGKILL after `timeout`). */
    async stop(signal = 'SIGTERM', timeout = 10000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill(signal);
        const timer = setTimeout(() => proc.kill('SIGKILL'), timeout);
        await exited;
        clearTimeout(timer);
      }
      running.delete(server);
      fs.rmSync(configPath, { force: true });
      if (!process.env.SWITCHBOARD_KEEP_LOGS) fs.rmSync(logPath, { force: true });
      return exited;
    },
  };
  running.add(server);
  let gone = false;
  exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + 15000;
  for (;;) {
    if (gone) {
      running.delete(server);
      const status = JSON.stringify(await exited);
      throw new Error(`switchboard exited during startup (${status}):\n${readTail(logPath, 20)}`);
    }
    try {
      const res = await fetch(`${server.httpUrl}/health`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      const tail = readTail(logPath, 20);
      await server.stop('SIGKILL');
      throw new Error(`switchboard did not answer /health on port ${port} within 15 s:\n${tail}`);
    }
    await sleep(50);
  }
  return server;
}

/**
 * A centrifuge-js client for `server` (not yet connected), with short reconnect delays;
 * with `protobuf: true`, the SDK's Protobuf build. Keep it in `clients` so `closeAll`
 * disconnects it.
 */
function newClient(server, options = {}, clients) {
  const { protobuf, ...rest } = options;
  const Sdk = protobuf ? CentrifugeProtobuf : Centrifuge;
  const client = new Sdk(server.wsUrl, {
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    timeout: 3000,
    debug: Boolean(process.env.CENTRIFUGE_DEBUG),
    ...rest,
  });
  if (clients) clients.push(client);
  return client;
}

/** Connects a client for `user` and resolves once `connected` fired, with its context. */
async function connectUser(server, user, clients, { tokenOptions, options } = {}) {
  const client = newClient(server, { token: connectionToken(user, tokenOptions), ...options }, clients);
  const connected = waitEvent(client, 'connected', { label: `${user} connected` });
  client.connect();
  const ctx = await connected;
  return { client, clientId: ctx.client, ctx };
}

/** Subscribes `client` to `channel` and resolves once the subscription is `subscribed`. */
async function subscribe(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const subscribed = waitEvent(sub, 'subscribed', { label: `subscribed to ${channel}` });
  sub.subscribe();
  await subscribed;
  return sub;
}

/**
 * The fixture of a test file that runs one server for all its tests: started before the
 * first with an API key, `settings` (top-level TOML keys), DEFAULT_CONFIG and
 * `namespaces` (more tables), stopped after the last. `server` is filled in by the
 * time a test runs (so a file can take it at its top); the clients kept in `clients`
 * are disconnected after each test. `api` calls a server API method and returns its
 * `result`; `publish` publishes through it.
 */
function serverPerFile({ settings = '', namespaces = '' } = {}) {
  const server = {};
  const clients = [];
  before(async () => {
    const config = `api_key = "${API_KEY}"\n${settings}\n${DEFAULT_CONFIG}\n${namespaces}`;
    Object.assign(server, await startServer({ config }));
  });
  afterEach(() => closeAll(clients));
  after(() => server.stop && server.stop());

  async function api(method, params) {
    const res = await fetch(`${server.httpUrl}/api/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: JSON.stringify(params),
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(body.result, JSON.stringify(body));
    return body.result;
  }
  const publish = (channel, data, tags) => api('publish', { channel, data, tags });
  return { server, clients, api, publish };
}

/**
 * The `skip` option of a test that fails because of a known server bug: skipped, so the
 * suite stays green, unless RUN_KNOWN_BUGS is set (to check a fix).
 */
function knownBug(reason) {
  return process.env.RUN_KNOWN_BUGS ? false : `server bug: ${reason}`;
}

function closeAll(clients) {
  for (const c of clients.splice(0)) c.disconnect();
}

/** Forwards every connection to `target.port`; `switchTo` moves new ones and drops the old. */
function startBalancer(port) {
  const sockets = new Set();
  const target = { port };
  const server = net.createServer((down) => {
    const up = net.connect(target.port, '127.0.0.1');
    sockets.add(down);
    sockets.add(up);
    down.pipe(up);
    up.pipe(down);
    const close = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    down.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        switchTo(port) {
          target.port = port;
          for (const s of sockets) s.destroy();
        },
        close: () => new Promise((r) => server.close(r)),
      });
    });
  });
}

module.exports = {
  API_KEY,
  BIN,
  DEFAULT_CONFIG,
  SECRET,
  TIMEOUT,
  WebSocket,
  Centrifuge,
  CentrifugeProtobuf,
  closeAll,
  connectUser,
  connectionToken,
  freePort,
  freeRedisPort,
  knownBug,
  mintToken,
  newClient,
  nowSecs,
  record,
  serverPerFile,
  sleep,
  startBalancer,
  startServer,
  subscribe,
  subscriptionToken,
  waitEvent,
  withTimeout,
};
