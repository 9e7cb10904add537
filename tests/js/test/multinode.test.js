'use strict';
// Two switchboard nodes on one real redis-server (engine = "redis") behind a tiny TCP
// load balancer: the real centrifuge-js client, moved to the other node when its node is
// killed (SIGKILL), recovers what it missed (`recovered: true`).

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const net = require('node:net');
const h = require('../lib/harness');

const API_KEY = 'js-api-key';
const hasRedis = spawnSync('redis-server', ['--version']).status === 0;
if (!hasRedis) {
  console.error('\n*** SKIPPED: redis-server is not installed; multi-node tests NOT run. scripts/test.sh installs it. ***\n');
}

let redis;
let redisPort;
let nodes = [];
let balancer;
const clients = [];


async function waitRedis(port) {
  const deadline = Date.now() + h.TIMEOUT;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.write('PING\r\n');
      });
      s.on('data', (d) => {
        s.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error('redis-server did not start');
    await h.sleep(20);
  }
}

before(async () => {
  if (!hasRedis) return;
  redisPort = await h.freePort();
  redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await waitRedis(redisPort);
  const config = `engine = "redis"\npresence_lease = "1s"\napi_key = "${API_KEY}"\n${h.DEFAULT_CONFIG}
[redis]
url = "redis://127.0.0.1:${redisPort}"
`;
  nodes = [await h.startServer({ config }), await h.startServer({ config })];
  balancer = await h.startBalancer(nodes[0].port);
});
afterEach(() => h.closeAll(clients));
after(async () => {
  for (const n of nodes) await n.stop('SIGKILL');
  if (balancer) await balancer.close();
  if (redis) redis.kill('SIGKILL');
});

async function apiPublish(node, channel, data) {
  const res = await fetch(`${node.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify({ channel, data }),
  });
  const body = await res.json();
  assert.ok(body.result, JSON.stringify(body));
}

test('a client whose node is killed reconnects to another node and recovers what it missed', { skip: !hasRedis, timeout: 30000 }, async () => {
  const viaBalancer = { wsUrl: `ws://127.0.0.1:${balancer.port}/connection/websocket` };
  const { client: ann } = await h.connectUser(viaBalancer, 'ann', clients);
  const sub = await h.subscribe(ann, 'chat:failover', { recoverable: true });
  const received = [];
  sub.on('publication', (ctx) => received.push(ctx.data.n));

  const first = h.waitEvent(sub, 'publication', { label: 'first publication' });
  await apiPublish(nodes[1], 'chat:failover', { n: 0 });
  await first;

  // The node dies; the balancer sends the reconnect to the survivor. Publications made
  // meanwhile through the survivor are in the shared history.
  const resubscribed = h.waitEvent(sub, 'subscribed', { label: 'resubscribed on the other node', timeout: 10000 });
  await nodes[0].stop('SIGKILL');
  for (let n = 1; n <= 5; n++) await apiPublish(nodes[1], 'chat:failover', { n });
  balancer.switchTo(nodes[1].port);
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  const deadline = Date.now() + h.TIMEOUT;
  while (received.length < 6 && Date.now() < deadline) await h.sleep(20);
  assert.deepEqual(received, [0, 1, 2, 3, 4, 5]);
});
