// The Node `ws` peer of switchboard-bench: the least a Node app can do, broadcasting the
// way bench-floor (crates/bench/src/bin/bench-floor.rs) does. No auth, no protocol.
//
// - WebSocket on any path: a text `subscribe ROOM` adds the connection to ROOM and is
//   answered `subscribed`; anything else is ignored.
// - `POST /publish?room=ROOM` (same port; the body is the payload): the payload is framed
//   once (`WebSocket.Sender.frame`, a text frame) and that frame written to every member
//   (`ws._sender.sendFrame`, as socket.io's adapter broadcasts since 4.6, after
//   websockets/ws#617); a member with more than MAX_BUFFERED bytes not yet written to
//   its socket is skipped (the floor drops a frame when a connection's queue is full).
//   Answers `{"delivered":N}`.
// - No compression; a 4096-deep listen queue, like the floor's.
// Listens on 127.0.0.1:$PORT and prints `listening <port>` once ready.
"use strict";

const http = require("node:http");
const { WebSocket, WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 3000);
const MAX_BUFFERED = 1 << 20;

/** room name -> Set of sockets */
const rooms = new Map();

function publish(room, payload) {
  const members = rooms.get(room);
  if (!members) return 0;
  const frame = WebSocket.Sender.frame(payload, {
    fin: true,
    rsv1: false,
    opcode: 1,
    mask: false,
    readOnly: false,
  });
  let delivered = 0;
  for (const ws of members) {
    if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > MAX_BUFFERED) continue;
    ws._sender.sendFrame(frame);
    delivered++;
  }
  return delivered;
}

const httpServer = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (req.method === "POST" && url.pathname === "/publish") {
    const room = url.searchParams.get("room") || "";
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const delivered = publish(room, Buffer.concat(chunks));
      res
        .writeHead(200, { "content-type": "application/json" })
        .end('{"delivered":' + delivered + "}");
    });
    return;
  }
  res.writeHead(404).end();
});

const wss = new WebSocketServer({
  server: httpServer,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 64 * 1024,
});

wss.on("connection", (ws) => {
  const joined = [];
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (!text.startsWith("subscribe ")) return;
    const name = text.slice("subscribe ".length);
    let members = rooms.get(name);
    if (!members) {
      members = new Set();
      rooms.set(name, members);
    }
    members.add(ws);
    joined.push(name);
    ws.send("subscribed");
  });
  ws.on("close", () => {
    for (const name of joined) {
      const members = rooms.get(name);
      if (!members) continue;
      members.delete(ws);
      if (members.size === 0) rooms.delete(name);
    }
  });
  ws.on("error", () => {});
});

httpServer.listen(port, "127.0.0.1", 4096, () => {
  console.log("listening " + httpServer.address().port);
});
