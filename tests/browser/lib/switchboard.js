'use strict';
// The real switchboard binary as a child process (temporary TOML config, free port on
// 127.0.0.1, ready once GET /health answers 200), HS256 tokens minted with node:crypto,
// and a fetch-based client of the server HTTP API. A trimmed copy of tests/js/lib/harness.js
// so that this suite installs and runs on its own.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.SWITCHBOARD_BIN || path.join(REPO, 'target', 'debug', 'switchboard');

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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function readTail(file, lines) {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Signs `claims` as an HS256 JWT with `secret`. */
function mintToken(claims, secret) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const signingInput = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const signature = crypto.createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
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
 * Starts switchboard with `config` (TOML text) on a free port and waits for /health.
 * `apiKey` is the config's api_key, used by `server.api(method, body)`.
 */
async function startServer({ config, apiKey }) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`switchboard binary not found at ${BIN}: run \`cargo build -p switchboard\` or set SWITCHBOARD_BIN`);
  }
  const port = await freePort();
  const stamp = `${process.pid}-${port}-${Date.now()}`;
  const configPath = path.join(os.tmpdir(), `switchboard-browser-${stamp}.toml`);
  const logPath = path.join(os.tmpdir(), `switchboard-browser-${stamp}.log`);
  fs.writeFileSync(configPath, config);
  const log = fs.createWriteStream(logPath);
  const proc = spawn(BIN, ['serve', '--config', configPath], {
    env: serverEnv(port),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  if (process.env.SWITCHBOARD_TEST_LOGS) proc.stderr.pipe(process.stderr, { end: false });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const httpUrl = `http://127.0.0.1:${port}`;
  const server = {
    port,
    proc,
    logPath,
    httpUrl,
    wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
    /** The last lines of the server log, for failure messages. */
    logTail: (lines = 20) => readTail(logPath, lines),
    /** POST /api/<method> with the API key; resolves with `result`, throws on any error. */
    async api(method, body) {
      const res = await fetch(`${httpUrl}/api/${method}`, {
        method: 'POST',
        headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      let reply;
      try {
        reply = JSON.parse(text);
      } catch {
        reply = undefined;
      }
      if (res.status !== 200 || !reply || reply.error || !reply.result) {
        throw new Error(`API ${method} ${JSON.stringify(body)} answered ${res.status}: ${text}`);
      }
      return reply.result;
    },
    /** SIGTERM, then SIGKILL after `timeout` ms; removes the config (and the log unless kept). */
    async stop(timeout = 5000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), timeout);
        await exited;
        clearTimeout(timer);
      }
      running.delete(server);
      fs.rmSync(configPath, { force: true });
      if (!process.env.SWITCHBOARD_KEEP_LOGS) fs.rmSync(logPath, { force: true });
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
      throw new Error(`switchboard exited during startup (${JSON.stringify(await exited)}):\n${readTail(logPath, 20)}`);
    }
    try {
      const res = await fetch(`${httpUrl}/health`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      const tail = readTail(logPath, 20);
      await server.stop(0);
      throw new Error(`switchboard did not answer /health on port ${port} within 15 s:\n${tail}`);
    }
    await sleep(50);
  }
  return server;
}

module.exports = { BIN, REPO, freePort, mintToken, sleep, startServer };
