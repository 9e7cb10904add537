'use strict';
// The switchboard console: a login, views fed live over switchboard's own client
// protocol (Centrifugo JSON, v2), and actions through the console's copy of the server
// API. Everything that comes from clients (channel names, user ids, data) is written
// with textContent, never parsed as HTML.

(() => {
  const $ = (id) => document.getElementById(id);
  const STATS = '_admin:stats';
  const TAIL_MAX = 100;
  const CHART_POINTS = 150;

  let csrf = '';
  let feed = null;
  const history = [];
  let channelsSeen = [];
  let watchedChannel = '';
  let watchedUser = '';

  // ---------------------------------------------------------------- HTTP
  async function request(path, body) {
    const init = { method: body === undefined ? 'GET' : 'POST', headers: {}, credentials: 'same-origin' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.headers['X-CSRF-Token'] = csrf;
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let json = {};
    try {
      json = await res.json();
    } catch {
      // An empty or non-JSON body: the status says enough.
    }
    if (res.status === 401 && path !== '/admin/api/login') showLogin();
    return { status: res.status, json };
  }

  /** Calls a server API method through the console; resolves with `{result}` or `{error}`. */
  async function call(method, body) {
    const { status, json } = await request(`/admin/api/call/${method}`, body);
    if (status !== 200 || json.error) {
      const e = json.error || {};
      return { error: typeof e === 'string' ? e : `${e.message || 'failed'}${e.code ? ` (${e.code})` : ''}` };
    }
    return { result: json.result };
  }

  function say(text, isError) {
    const s = $('action-status');
    s.textContent = text;
    s.classList.toggle('error', Boolean(isError));
  }

  // ---------------------------------------------------------------- protocol client
  /**
   * A minimal client of the Centrifugo JSON protocol: connect with a console token,
   * subscribe, answer pings, resubscribe after a reconnect.
   */
  class Feed {
    constructor() {
      this.ws = null;
      this.nextId = 1;
      this.pending = new Map();
      this.handlers = new Map();
      this.stopped = false;
      this.backoff = 500;
    }

    setState(text) {
      const el = $('feed-state');
      el.textContent = text;
      el.className = `state ${text === 'live' ? 'live' : 'offline'}`;
    }

    async start() {
      if (this.stopped) return;
      this.setState('connecting');
      const { status, json } = await request('/admin/api/token', {}).catch(() => ({ status: 0, json: {} }));
      if (this.stopped) return;
      if (status === 401) return;
      if (status !== 200 || !json.token) {
        this.retry();
        return;
      }
      const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/connection/websocket`;
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.onopen = async () => {
        const reply = await this.send({ connect: { token: json.token, name: 'switchboard-console' } });
        if (reply.error) {
          ws.close();
          return;
        }
        this.backoff = 500;
        this.setState('live');
        for (const channel of this.handlers.keys()) this.send({ subscribe: { channel } });
      };
      ws.onmessage = (event) => {
        for (const line of String(event.data).split('\n')) {
          if (line.trim()) this.receive(JSON.parse(line));
        }
      };
      ws.onclose = () => {
        for (const resolve of this.pending.values()) resolve({ error: { message: 'disconnected' } });
        this.pending.clear();
        if (this.ws === ws) this.ws = null;
        if (!this.stopped) {
          this.setState('offline');
          this.retry();
        }
      };
    }

    retry() {
      setTimeout(() => this.start(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 10000);
    }

    stop() {
      this.stopped = true;
      if (this.ws) this.ws.close();
    }

    send(command) {
      return new Promise((resolve) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          resolve({ error: { message: 'not connected' } });
          return;
        }
        const id = this.nextId++;
        this.pending.set(id, resolve);
        this.ws.send(JSON.stringify({ id, ...command }));
      });
    }

    receive(message) {
      if (message.id) {
        const resolve = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (resolve) resolve(message);
        return;
      }
      if (message.push) {
        const handler = this.handlers.get(message.push.channel);
        if (handler) handler(message.push);
        return;
      }
      // The server's ping: answer it.
      if (Object.keys(message).length === 0 && this.ws) this.ws.send('{}');
    }

    /** Subscribes now, or on connect when not connected (then resolves with `{}`). */
    async subscribe(channel, handler) {
      this.handlers.set(channel, handler);
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return {};
      return this.send({ subscribe: { channel } });
    }

    unsubscribe(channel) {
      if (!this.handlers.delete(channel)) return;
      this.send({ unsubscribe: { channel } });
    }
  }

  // ---------------------------------------------------------------- views
  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function uptime(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${seconds % 60}s`;
  }

  function onStats(push) {
    const stats = push.pub && push.pub.data;
    if (!stats) return;
    $('node-name').textContent = stats.node;
    const nodes = stats.nodes || [];
    const sum = (key) => nodes.reduce((n, node) => n + (node[key] || 0), 0);
    const totals = { clients: sum('num_clients'), users: sum('num_users'), subs: sum('num_subs') };
    $('total-clients').textContent = totals.clients;
    $('total-users').textContent = totals.users;
    $('total-channels').textContent = stats.num_channels;
    $('total-subs').textContent = totals.subs;
    const body = $('nodes').tBodies[0];
    body.replaceChildren();
    for (const node of nodes) {
      const row = body.insertRow();
      const self = node.name === stats.node;
      cell(row, self ? `${node.name} (this node)` : node.name);
      const healthy = self ? stats.ready : true;
      cell(row, healthy ? 'ready' : 'engine unavailable', healthy ? 'ok' : 'bad');
      cell(row, node.version);
      cell(row, uptime(node.uptime));
      cell(row, node.num_clients, 'num');
      cell(row, node.num_users, 'num');
      cell(row, node.num_channels, 'num');
      cell(row, node.num_subs, 'num');
    }
    if (stats.error) say(`Nodes unknown: ${stats.error.message}`, true);
    history.push({ t: stats.time, clients: totals.clients, users: totals.users });
    if (history.length > CHART_POINTS) history.shift();
    drawChart();
    channelsSeen = stats.channels || [];
    $('channels-note').textContent = `${stats.num_channels} channels with subscribers; the ${channelsSeen.length} with the most are listed.`;
    drawChannels();
  }

  function drawChart() {
    const svg = $('chart');
    // Drawn at the box's own width, so text and lines keep their proportions.
    const W = Math.round(svg.getBoundingClientRect().width) || 600;
    const H = 180;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    const PAD = 22;
    // An even top, so the three grid labels are whole numbers.
    const peak = Math.max(0, ...history.map((p) => Math.max(p.clients, p.users)));
    const max = Math.max(2, Math.ceil(peak / 2) * 2);
    const ns = 'http://www.w3.org/2000/svg';
    svg.replaceChildren();
    for (const frac of [0, 0.5, 1]) {
      const y = H - PAD - frac * (H - 2 * PAD);
      const line = document.createElementNS(ns, 'line');
      line.setAttribute('x1', '0');
      line.setAttribute('x2', String(W));
      line.setAttribute('y1', String(y));
      line.setAttribute('y2', String(y));
      line.setAttribute('class', 'grid-line');
      svg.appendChild(line);
      const label = document.createElementNS(ns, 'text');
      label.setAttribute('x', '4');
      label.setAttribute('y', String(y - 3));
      label.textContent = String(Math.round(max * frac));
      svg.appendChild(label);
    }
    const step = (W - 2 * PAD) / Math.max(1, CHART_POINTS - 1);
    for (const key of ['clients', 'users']) {
      const points = history.map((p, i) => `${PAD + i * step},${H - PAD - (p[key] / max) * (H - 2 * PAD)}`);
      const line = document.createElementNS(ns, 'polyline');
      line.setAttribute('points', points.join(' '));
      line.setAttribute('class', key);
      svg.appendChild(line);
    }
    const last = history[history.length - 1];
    svg.setAttribute('aria-label', last ? `Now ${last.clients} connections and ${last.users} users` : 'No data yet');
  }

  function drawChannels() {
    const filter = $('channel-filter').value.trim();
    const body = $('channels-table').tBodies[0];
    body.replaceChildren();
    for (const [name, count] of channelsSeen) {
      if (filter && !name.includes(filter)) continue;
      const row = body.insertRow();
      const td = row.insertCell();
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'linklike';
      open.textContent = name;
      open.addEventListener('click', () => {
        $('channel-name').value = name;
        location.hash = '#channel';
        watchChannel(name);
      });
      td.appendChild(open);
      cell(row, count, 'num');
    }
  }

  function addToTail(channel, pub, source) {
    const li = document.createElement('li');
    const meta = document.createElement('span');
    meta.className = 'meta';
    const who = pub.info && pub.info.user ? ` from ${pub.info.user}` : '';
    const offset = pub.offset ? ` #${pub.offset}` : '';
    meta.textContent = `${new Date().toLocaleTimeString()}${offset}${who}${source ? ` (${source})` : ''}`;
    const code = document.createElement('code');
    code.textContent = JSON.stringify(pub.data);
    li.append(meta, code);
    li.dataset.channel = channel;
    const tail = $('tail');
    tail.prepend(li);
    while (tail.children.length > TAIL_MAX) tail.lastElementChild.remove();
  }

  function onPresence(push) {
    const view = push.pub && push.pub.data;
    if (!view || view.channel !== watchedChannel) return;
    const body = $('presence-table').tBodies[0];
    body.replaceChildren();
    if (view.error) {
      $('presence-stats').textContent = view.error.code === 108 ? 'Presence is off in this namespace.' : `Presence unknown: ${view.error.message}`;
      return;
    }
    const stats = view.stats || {};
    $('presence-stats').textContent = `${stats.num_clients ?? 0} connections, ${stats.num_users ?? 0} users`;
    for (const [client, info] of Object.entries(view.presence || {})) {
      const row = body.insertRow();
      cell(row, info.user || '(anonymous)');
      cell(row, client);
    }
  }

  async function watchChannel(name) {
    if (!name || !feed) return;
    if (watchedChannel) {
      feed.unsubscribe(watchedChannel);
      feed.unsubscribe(`_admin:presence:${watchedChannel}`);
    }
    watchedChannel = name;
    $('tail').replaceChildren();
    $('presence-table').tBodies[0].replaceChildren();
    $('presence-stats').textContent = '';
    $('channel-title').textContent = `Channel ${name}`;
    const reply = await feed.subscribe(name, (push) => {
      if (push.pub) addToTail(name, push.pub);
    });
    if (reply.error) {
      say(`Can not watch ${name}: ${reply.error.message} (${reply.error.code})`, true);
      feed.unsubscribe(name);
      watchedChannel = '';
      $('channel-detail').hidden = true;
      return;
    }
    $('channel-detail').hidden = false;
    say(`Watching ${name}.`);
    await feed.subscribe(`_admin:presence:${name}`, onPresence);
    const recent = await call('history', { channel: name, limit: 10, reverse: true });
    if (recent.result && watchedChannel === name) {
      for (const pub of recent.result.publications.slice().reverse()) addToTail(name, pub, 'history');
    }
  }

  function onUser(push) {
    const view = push.pub && push.pub.data;
    if (!view || view.user !== watchedUser) return;
    const status = view.status || {};
    $('user-online').textContent = status.online ? 'online' : 'offline';
    $('user-count').textContent = status.connections ?? 0;
    $('user-last-seen').textContent = status.last_seen ? new Date(status.last_seen).toLocaleString() : '–';
    $('user-node').textContent = view.node;
    const body = $('user-connections').tBodies[0];
    body.replaceChildren();
    for (const c of view.connections) {
      const row = body.insertRow();
      cell(row, c.client);
      cell(row, c.channels.join(', '));
      cell(row, c.expires_at ? new Date(c.expires_at * 1000).toLocaleString() : 'never');
    }
  }

  async function watchUser(user) {
    if (!user || !feed) return;
    if (watchedUser) feed.unsubscribe(`_admin:user:${watchedUser}`);
    watchedUser = user;
    $('user-title').textContent = `User ${user}`;
    const reply = await feed.subscribe(`_admin:user:${user}`, onUser);
    if (reply.error) {
      say(`Can not show user ${user}: ${reply.error.message}`, true);
      feed.unsubscribe(`_admin:user:${user}`);
      watchedUser = '';
      $('user-detail').hidden = true;
      return;
    }
    $('user-detail').hidden = false;
  }

  function showView() {
    const view = (location.hash || '#overview').slice(1);
    const known = ['overview', 'channels', 'channel', 'user'];
    const current = known.includes(view) ? view : 'overview';
    for (const name of known) $(`view-${name}`).hidden = name !== current;
    if (current === 'overview') drawChart();
    for (const link of document.querySelectorAll('.tabs a')) {
      if (link.dataset.view === current) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
  }

  // ---------------------------------------------------------------- session
  function showLogin() {
    if (feed) feed.stop();
    feed = null;
    $('app').hidden = true;
    $('session-bar').hidden = true;
    $('login').hidden = false;
    $('password').focus();
  }

  function startApp(session) {
    csrf = session.csrf;
    $('login').hidden = true;
    $('app').hidden = false;
    $('session-bar').hidden = false;
    $('node-name').textContent = session.node;
    showView();
    feed = new Feed();
    feed.handlers.set(STATS, onStats);
    feed.start();
    if (watchedChannel) {
      const name = watchedChannel;
      watchedChannel = '';
      setTimeout(() => watchChannel(name), 0);
    }
  }

  async function login(event) {
    event.preventDefault();
    const error = $('login-error');
    error.textContent = '';
    const { status, json } = await request('/admin/api/login', { password: $('password').value });
    $('password').value = '';
    if (status === 200) {
      startApp(json);
      $('main').focus();
      return;
    }
    error.textContent = status === 429 ? 'Too many attempts: wait a minute.' : status === 401 ? 'Wrong password.' : `Login failed (${status}).`;
    $('password').focus();
  }

  async function logout() {
    await request('/admin/api/logout', {});
    showLogin();
  }

  async function publish(event) {
    event.preventDefault();
    let data;
    try {
      data = JSON.parse($('publish-data').value);
    } catch (err) {
      say(`Data is not JSON: ${err.message}`, true);
      return;
    }
    const r = await call('publish', { channel: watchedChannel, data });
    say(r.error ? `Publish failed: ${r.error}` : `Published to ${watchedChannel} (offset ${r.result.offset || 0}).`, Boolean(r.error));
  }

  async function removeHistory() {
    const r = await call('history_remove', { channel: watchedChannel });
    say(r.error ? `History not removed: ${r.error}` : `History of ${watchedChannel} removed.`, Boolean(r.error));
  }

  async function disconnectUser() {
    const r = await call('disconnect', { user: watchedUser });
    say(r.error ? `Disconnect failed: ${r.error}` : `Disconnected ${watchedUser}.`, Boolean(r.error));
  }

  async function unsubscribeUser(event) {
    event.preventDefault();
    const channel = $('unsubscribe-channel').value.trim();
    const r = await call('unsubscribe', { user: watchedUser, channel });
    say(r.error ? `Unsubscribe failed: ${r.error}` : `Unsubscribed ${watchedUser} from ${channel}.`, Boolean(r.error));
  }

  document.addEventListener('DOMContentLoaded', async () => {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    $('channel-form').addEventListener('submit', (e) => {
      e.preventDefault();
      watchChannel($('channel-name').value.trim());
    });
    $('user-form').addEventListener('submit', (e) => {
      e.preventDefault();
      watchUser($('user-id').value.trim());
    });
    $('publish-form').addEventListener('submit', publish);
    $('history-remove').addEventListener('click', removeHistory);
    $('disconnect-user').addEventListener('click', disconnectUser);
    $('unsubscribe-form').addEventListener('submit', unsubscribeUser);
    $('channel-filter').addEventListener('input', drawChannels);
    window.addEventListener('hashchange', showView);
    window.addEventListener('resize', drawChart);
    drawChart();
    const { status, json } = await request('/admin/api/session').catch(() => ({ status: 0, json: {} }));
    if (status === 200) startApp(json);
    else showLogin();
  });
})();
