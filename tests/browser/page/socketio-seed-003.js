'use strict';
// Seed 003's frontend as its design notes write it (hooks/useWebSocket.ts and the
// EarningsPage component), without React: the same `io()` options and the same listeners,
// with `setEarnings` and `showNotification` rendering into the page. Parameters in the URL
// fragment: #url=http://127.0.0.1:8000&token=<JWT>
(function () {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  const $ = (id) => document.getElementById(id);

  let earnings = [];
  function setEarnings(update) {
    earnings = update(earnings);
    $('earnings').replaceChildren(...earnings.map((e) => {
      const li = document.createElement('li');
      li.textContent = JSON.stringify(e);
      return li;
    }));
  }
  function showNotification(data) {
    const li = document.createElement('li');
    li.textContent = `${data.title}: ${data.message || ''}`;
    $('notifications').appendChild(li);
  }

  // --- hooks/useWebSocket.ts: connect() ---
  const socket = io(params.get('url') || 'http://localhost:3001', {
    auth: {
      token: token
    },
    reconnection: true,
    reconnectionDelay: 1000,
    reconnectionAttempts: 5
  });

  socket.on('connect', () => {
    console.log('WebSocket connected');
    $('state').textContent = 'connected';
    $('recovered').textContent = String(socket.recovered);
  });

  socket.on('disconnect', () => {
    console.log('WebSocket disconnected');
    $('state').textContent = 'disconnected';
  });

  // --- EarningsPage: the effect's listeners ---
  // Listen to new earnings
  socket.on('earnings:new', (response) => {
    setEarnings(prev => [response.data, ...prev]);
  });

  // Listen to earning updates
  socket.on('earnings:updated', (response) => {
    setEarnings(prev =>
      prev.map(e => e.id === response.data.id ? { ...e, ...response.data.changes } : e)
    );
  });

  // Listen to earning deletions
  socket.on('earnings:deleted', (response) => {
    setEarnings(prev => prev.filter(e => e.id !== response.data.id));
  });

  // Listen to notifications
  socket.on('notification', (response) => {
    showNotification(response.data);
  });

  // For the test: drop the connection as a network change would.
  window.dropConnection = () => socket.io.engine.close();
})();
