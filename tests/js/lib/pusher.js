'use strict';
// pusher-js helpers shared by the Pusher suites: subscriptions and events that always
// time out, and a local HTTP server standing in for an app's auth endpoint.

const http = require('node:http');

const { withTimeout, TIMEOUT } = require('./harness');

/**
 * Serves an app's auth endpoint on 127.0.0.1: `handle(req, params, res)` answers each
 * form-encoded POST. Resolves with its `url` and `close()`.
 */
function startAuthServer(handle) {
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => handle(req, new URLSearchParams(body), res));
  });
  return new Promise((resolve) => {
    srv.listen(0, '127.0.0.1', () => {
      const url = `http://127.0.0.1:${srv.address().port}`;
      const close = () => {
        const closed = new Promise((r) => srv.close(r));
        // pusher-js's requests keep their connections alive: do not wait for them.
        srv.closeAllConnections();
        return closed;
      };
      resolve({ url, close });
    });
  });
}

/** Answers `res` with `answer` as JSON. */
function sendJson(res, answer) {
  res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(answer));
}

/** Subscribes and resolves with the channel once the server confirmed it. */
function pusherSubscribe(p, name) {
  const channel = p.subscribe(name);
  return withTimeout(
    new Promise((resolve, reject) => {
      channel.bind('pusher:subscription_succeeded', () => resolve(channel));
      channel.bind('pusher:subscription_error', (e) => reject(new Error(`${name}: ${JSON.stringify(e)}`)));
    }),
    TIMEOUT,
    `subscribed to ${name}`,
  );
}

/** Resolves with the next `event` on a pusher-js channel: its data and metadata. */
function nextEvent(channel, event) {
  return withTimeout(
    new Promise((resolve) => {
      const on = (data, meta) => {
        channel.unbind(event, on);
        resolve({ data, meta });
      };
      channel.bind(event, on);
    }),
    TIMEOUT,
    `${event} on ${channel.name}`,
  );
}

module.exports = { nextEvent, pusherSubscribe, sendJson, startAuthServer };
