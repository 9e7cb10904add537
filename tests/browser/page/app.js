'use strict';
// The browser client of the end-to-end test, written as an app would: the centrifuge-js
// browser bundle (global `Centrifuge`), a connection token, one room subscription.
// Parameters come in the URL fragment, so the token never reaches a server log:
//   index.html#ws=ws://127.0.0.1:8000/connection/websocket&token=<JWT>&room=room:lobby
// With `transport=http_stream` or `transport=sse` and `http=http://127.0.0.1:8000` it
// uses only that fallback transport (and `/emulation`) instead of WebSocket. The same
// script runs in protobuf.html with the SDK's Protobuf build, whose payloads are bytes.
(function () {
  const params = new URLSearchParams(location.hash.slice(1));
  const room = params.get('room') || 'room:lobby';
  const $ = (id) => document.getElementById(id);

  // One <li data-channel="..."> per publication, its text the data as JSON; data-user is
  // the publishing user for client publications (the server's `info`).
  function show(ctx) {
    const li = document.createElement('li');
    li.dataset.channel = ctx.channel;
    if (ctx.info) li.dataset.user = ctx.info.user;
    const data = ctx.data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(ctx.data)) : ctx.data;
    li.textContent = JSON.stringify(data);
    $('publications').appendChild(li);
  }
  function showError(where, err) {
    $('errors').textContent += `${where}: ${JSON.stringify(err)}\n`;
  }

  const token = params.get('token');
  let claims = {};
  // For display only: the token's `sub` claim (the server checks the signature).
  try {
    claims = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    $('user').textContent = `${claims.sub} (roles: ${(claims.roles || []).join(', ') || 'none'})`;
  } catch (err) {
    showError('token', String(err));
  }

  const transport = params.get('transport');
  const http = params.get('http');
  const options = { token, minReconnectDelay: 100, maxReconnectDelay: 1000 };
  let endpoint = params.get('ws');
  if (transport && transport !== 'websocket') {
    endpoint = [{ transport, endpoint: `${http}/connection/${transport}` }];
    options.emulationEndpoint = `${http}/emulation`;
  }
  const client = new Centrifuge(endpoint, options);
  const protobuf = client._codec && client._codec.name() === 'protobuf';
  const payload = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
  const serverSubs = new Set();
  const renderServerSubs = () => {
    $('server-subs').textContent = [...serverSubs].sort().join(' ') || '-';
  };

  client.on('state', (ctx) => {
    $('state').textContent = ctx.newState;
  });
  client.on('connected', (ctx) => {
    $('client').textContent = ctx.client;
    $('transport').textContent = ctx.transport;
  });
  client.on('error', (ctx) => showError('client', ctx.error));
  client.on('disconnected', (ctx) => showError('disconnected', ctx));
  // Server-side subscriptions (auto_subscribe: user:{sub}, role:{roles}) arrive on the
  // Centrifuge instance itself, not on a Subscription object.
  client.on('subscribed', (ctx) => {
    serverSubs.add(ctx.channel);
    renderServerSubs();
  });
  client.on('unsubscribed', (ctx) => {
    serverSubs.delete(ctx.channel);
    renderServerSubs();
  });
  client.on('publication', show);

  // A client-side subscription to the room.
  $('room-label').textContent = room;
  const sub = client.newSubscription(room);
  sub.on('state', (ctx) => {
    $('room-state').textContent = ctx.newState;
  });
  sub.on('publication', show);
  sub.on('error', (ctx) => showError(room, ctx.error));
  sub.subscribe();
  client.connect();

  // The form publishes `{text, from}` into the room (the namespace must allow publish).
  $('send').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('text').value;
    $('send-state').textContent = 'sending';
    sub.publish(payload({ text, from: claims.sub })).then(
      () => {
        $('send-state').textContent = `sent: ${text}`;
        $('text').value = '';
      },
      (err) => {
        $('send-state').textContent = 'failed';
        showError('publish', err);
      },
    );
  });

  window.switchboardTest = { client, sub };
})();
