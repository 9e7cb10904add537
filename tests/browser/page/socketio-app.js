'use strict';
// The Socket.IO client of the end-to-end test, written as an app would: the
// socket.io-client browser bundle (global `io`), a connection token in `auth`, one room.
// Parameters come in the URL fragment, so the token never reaches a server log:
//   socketio.html#url=http://127.0.0.1:8000&token=<JWT>&room=room:lobby[&transports=polling][&credentials=1]
// Without `transports` the client uses its default: long-polling, then the upgrade to
// WebSocket. This page is served from another port than switchboard, so long-polling is
// cross-origin and relies on the server's CORS headers.
(function () {
  const params = new URLSearchParams(location.hash.slice(1));
  const room = params.get('room') || 'room:lobby';
  const $ = (id) => document.getElementById(id);
  /** How long an acknowledgement may take. */
  const ACK_TIMEOUT = 5000;

  // One <li data-channel="..." data-transport="..."> per event, its text the data as JSON;
  // data-transport is the Engine.IO transport in use when it arrived.
  function item(list, channel, data) {
    const li = document.createElement('li');
    li.dataset.channel = channel;
    li.dataset.transport = socket.io.engine?.transport?.name;
    li.textContent = JSON.stringify(data);
    $(list).appendChild(li);
    return li;
  }
  function showError(where, err) {
    const text = err instanceof Error ? err.message : JSON.stringify(err);
    $('errors').textContent += `${where}: ${text}\n`;
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

  const options = { auth: { token }, reconnectionDelay: 100, reconnectionDelayMax: 1000 };
  if (params.get('transports')) options.transports = params.get('transports').split(',');
  // Cookies on cross-origin long-polling, as apps with cookie sessions do: the server must
  // answer with Access-Control-Allow-Credentials and the exact origin, or the browser
  // refuses the responses.
  if (params.get('credentials') === '1') options.withCredentials = true;
  const socket = io(params.get('url'), options);

  // The Engine.IO transport in use, and every transport this page has used, in order.
  const seen = [];
  function showTransport(name) {
    $('transport').textContent = name;
    if (seen[seen.length - 1] !== name) seen.push(name);
    $('transports-seen').textContent = seen.join(' ');
  }
  // The manager opens a new engine on every (re)connection.
  socket.io.on('open', () => {
    const engine = socket.io.engine;
    showTransport(engine.transport.name);
    engine.on('upgrade', (transport) => showTransport(transport.name));
  });

  socket.on('connect_error', (err) => {
    $('state').textContent = 'connect error';
    showError('connect_error', { message: err.message, data: err.data });
  });
  socket.on('disconnect', (reason) => {
    $('state').textContent = 'disconnected';
    $('room-state').textContent = 'unsubscribed';
    showError('disconnect', reason);
  });
  socket.on('server_disconnect', (ctx) => showError('server_disconnect', ctx));
  socket.on('error', (ctx) => showError('error event', ctx));

  // switchboard's connect result, right after Socket.IO's `connect`.
  socket.on('connected', (info) => {
    $('state').textContent = 'connected';
    $('client').textContent = info.client;
    $('server-subs').textContent = Object.keys(info.subs || {}).sort().join(' ') || '-';
    subscribeRoom();
  });

  $('room-label').textContent = room;
  async function subscribeRoom() {
    $('room-state').textContent = 'subscribing';
    try {
      const reply = await socket.timeout(ACK_TIMEOUT).emitWithAck('subscribe', room);
      if (reply.error) {
        $('room-state').textContent = `error ${reply.error.code}`;
        showError(`subscribe ${room}`, reply.error);
      } else {
        $('room-state').textContent = 'subscribed';
      }
    } catch (err) {
      $('room-state').textContent = 'no acknowledgement';
      showError(`subscribe ${room}`, err);
    }
  }

  // A publication tagged {"event": "message:new"} arrives as that event, its data first.
  socket.on('message:new', (data, meta) => {
    const li = item('messages', meta.channel, data);
    li.dataset.event = 'message:new';
    if (meta.offset !== undefined) li.dataset.offset = meta.offset;
  });
  // Any other publication in a subscribed channel (server-side or the room).
  socket.on('publication', (pub) => {
    const li = item('publications', pub.channel, pub.data);
    if (pub.info) li.dataset.user = pub.info.user;
  });

  // The form publishes `{text, from}` into the room (the namespace must allow publish).
  $('send').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('text').value;
    $('send-state').textContent = 'sending';
    try {
      const reply = await socket
        .timeout(ACK_TIMEOUT)
        .emitWithAck('publish', { channel: room, data: { text, from: claims.sub } });
      if (reply.error) throw new Error(`${reply.error.code} ${reply.error.message}`);
      $('send-state').textContent = `sent: ${text}`;
      $('text').value = '';
    } catch (err) {
      $('send-state').textContent = 'failed';
      showError('publish', err);
    }
  });

  window.switchboardTest = { socket };
})();
