'use strict';
// A Laravel Echo app on the pusher-js browser bundle (globals `Pusher` and `Echo`): a
// public channel, a private one with whispers, a presence room. Its options come in the
// URL fragment: key, ws host and port, the auth endpoint, and the user it acts as.

const opts = new URLSearchParams(location.hash.slice(1));
const user = opts.get('user');
const $ = (id) => document.getElementById(id);
$('user').textContent = user;

const echo = new Echo.default({
  broadcaster: 'pusher',
  key: opts.get('key'),
  cluster: '',
  wsHost: opts.get('host'),
  wsPort: Number(opts.get('port')),
  forceTLS: false,
  enabledTransports: ['ws'],
  authEndpoint: opts.get('auth'),
  // A form parameter, not a header: the cross-origin POST needs no preflight.
  auth: { params: { user } },
});
const connection = echo.connector.pusher.connection;
connection.bind('state_change', ({ current }) => {
  $('state').textContent = current;
  $('socket').textContent = echo.socketId() || '-';
});
connection.bind('error', (e) => ($('errors').textContent += `${JSON.stringify(e)}\n`));

const subscribed = new Set();
const markSubscribed = (name) => () => {
  subscribed.add(name);
  $('subscribed').textContent = [...subscribed].sort().join(',');
};
const show = (event) => (data) => {
  const li = document.createElement('li');
  li.dataset.event = event;
  li.textContent = JSON.stringify(data);
  $('events').appendChild(li);
};

echo.channel('orders').subscribed(markSubscribed('orders')).listen('OrderShipped', show('OrderShipped'));
echo
  .private('chat.1')
  .subscribed(markSubscribed('chat.1'))
  .listenForWhisper('typing', show('whisper'))
  .error((e) => ($('errors').textContent += `chat.1: ${JSON.stringify(e)}\n`));

const members = new Map();
const showMembers = () => ($('members').textContent = [...members.keys()].sort().join(','));
echo
  .join('room.1')
  .here((users) => {
    for (const u of users) members.set(u.name, u);
    showMembers();
    markSubscribed('room.1')();
  })
  .joining((u) => {
    members.set(u.name, u);
    showMembers();
  })
  .leaving((u) => {
    members.delete(u.name);
    showMembers();
  });

/** Called by the test: whispers into chat.1. */
window.whisper = () => echo.private('chat.1').whisper('typing', { from: user });
