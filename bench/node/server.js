// The socket.io 4.8 peer of switchboard-bench: the same scenarios, served the idiomatic way.
//
// - WebSocket transport only (`/socket.io/?EIO=4&transport=websocket`), no compression.
// - `subscribe` event (with ack): joins a room. Rooms are socket.io's own adapter.
// - `POST /publish` `{"room": "...", "data": {...}}`: `io.to(room).emit("pub", data)`,
//   which encodes the packet once and writes it to every member.
// - With BENCH_SECRET set, the CONNECT packet's `auth.token` must be an HS256 JWT signed
//   with it and carrying a `sub` (checked with node's crypto, as a real app would).
// Listens on 127.0.0.1:$PORT and prints `listening <port>` once ready.
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 3000);
const secret = process.env.BENCH_SECRET || "";

function verifyHs256(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const expected = crypto
    .createHmac("sha256", secret)
    .update(parts[0] + "." + parts[1])
    .digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
  let claims;
  try {
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (!claims || typeof claims.sub !== "string" || claims.sub === "") return null;
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) return null;
  return claims;
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        res.writeHead(400).end();
        return;
      }
      io.to(String(body.room)).emit("pub", body.data);
      res.writeHead(200, { "content-type": "application/json" }).end('{"result":{}}');
    });
    return;
  }
  if (req.url === "/health") {
    res.writeHead(200).end("ok");
    return;
  }
  res.writeHead(404).end();
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  connectTimeout: 10000,
});

if (secret) {
  io.use((socket, next) => {
    const claims = verifyHs256(socket.handshake.auth && socket.handshake.auth.token);
    if (!claims) return next(new Error("unauthorized"));
    socket.data.user = claims.sub;
    next();
  });
}

io.on("connection", (socket) => {
  socket.on("subscribe", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack(true);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log("listening " + httpServer.address().port);
});
