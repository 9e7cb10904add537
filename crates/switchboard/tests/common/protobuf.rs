//! A raw Protobuf protocol client: length-delimited `Command`s out, `Reply`s in, with
//! the types prost generates from the vendored `client.proto`.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use switchboard_protocol::protobuf::wire::{self, Command, Reply};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{Closed, TestServer, Ws, TIMEOUT};

/// A Protobuf client of `/connection/websocket`.
pub struct ProtoClient {
    ws: Ws,
    next_id: u32,
    /// Replies read while waiting for something else.
    backlog: VecDeque<Reply>,
    /// Replies of a frame not yet returned by `read`.
    incoming: VecDeque<Reply>,
    /// The negotiated subprotocol, if any.
    pub subprotocol: Option<String>,
}

/// Length-delimited encoding of `commands`, as one binary frame.
pub fn frame(commands: &[Command]) -> Vec<u8> {
    let mut buf = Vec::new();
    for c in commands {
        c.encode_length_delimited(&mut buf).expect("encode");
    }
    buf
}

/// Bytes of a JSON value, as Protobuf payloads carry it.
pub fn json_bytes(v: &serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// A payload's JSON value.
pub fn json_of(data: &[u8]) -> serde_json::Value {
    serde_json::from_slice(data).expect("payload is JSON")
}

impl ProtoClient {
    /// Opens `/connection/websocket?cf_protocol=protobuf`, as the SDKs' non-WebSocket
    /// transports and centrifuge-python ask for Protobuf.
    pub async fn open(server: &TestServer) -> Self {
        Self::open_request(format!("{}?cf_protocol=protobuf", server.ws_url())).await
    }

    /// Opens `/connection/websocket` offering the `centrifuge-protobuf` subprotocol, as
    /// centrifuge-js's Protobuf build does over WebSocket.
    pub async fn open_subprotocol(server: &TestServer) -> Self {
        let mut req = server.ws_url().into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "centrifuge-protobuf".parse().expect("header"),
        );
        Self::open_request(req).await
    }

    async fn open_request(req: impl IntoClientRequest + Unpin) -> Self {
        let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("open timeout")
            .expect("open");
        let subprotocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            ws,
            next_id: 0,
            backlog: VecDeque::new(),
            incoming: VecDeque::new(),
            subprotocol,
        }
    }

    /// Opens a socket and connects with `token`; panics unless the connect succeeds.
    pub async fn connect(server: &TestServer, token: &str) -> (Self, wire::ConnectResult) {
        let mut c = Self::open(server).await;
        let reply = c
            .request(Command {
                connect: Some(wire::ConnectRequest {
                    token: token.into(),
                    name: "test".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        let result = reply
            .connect
            .unwrap_or_else(|| panic!("connect failed: {:?}", reply.error));
        (c, result)
    }

    /// Sends one binary frame as it is.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    /// Sends a raw WebSocket message.
    pub async fn send_message(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Sends `cmd` with a fresh id and returns the reply with that id, keeping pushes
    /// that arrive meanwhile in the backlog.
    pub async fn request(&mut self, mut cmd: Command) -> Reply {
        self.next_id += 1;
        let id = self.next_id;
        cmd.id = id;
        self.send_binary(frame(&[cmd])).await;
        self.reply_to(id).await
    }

    /// The reply to command `id`.
    pub async fn reply_to(&mut self, id: u32) -> Reply {
        if let Some(pos) = self.backlog.iter().position(|r| r.id == id) {
            return self.backlog.remove(pos).expect("present");
        }
        loop {
            let r = self
                .read()
                .await
                .unwrap_or_else(|c| panic!("closed waiting for reply {id}: {c:?}"));
            if r.id == id {
                return r;
            }
            self.backlog.push_back(r);
        }
    }

    /// Reads the next reply (several may share a frame), or how the socket closed.
    /// Other frames than binary ones fail the test: the server must send only binary.
    pub async fn read(&mut self) -> Result<Reply, Closed> {
        if let Some(r) = self.incoming_take() {
            return Ok(r);
        }
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("read timeout");
            match msg {
                Some(Ok(Message::Binary(mut b))) => {
                    while b.has_remaining() {
                        let r = Reply::decode_length_delimited(&mut b).expect("a reply");
                        self.incoming.push_back(r);
                    }
                    if let Some(r) = self.incoming_take() {
                        return Ok(r);
                    }
                }
                Some(Ok(Message::Text(t))) => panic!("text frame on a Protobuf connection: {t}"),
                Some(Ok(Message::Close(frame))) => return Err(Closed::from_frame(frame)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Closed {
                        code: 0,
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(Closed {
                        code: 0,
                        reason: "eof".into(),
                    })
                }
            }
        }
    }

    fn incoming_take(&mut self) -> Option<Reply> {
        self.incoming.pop_front()
    }

    /// The next push (skipping pings and replies), from the backlog first.
    pub async fn next_push(&mut self) -> wire::Push {
        loop {
            let r = match self.backlog.pop_front() {
                Some(r) => r,
                None => self
                    .read()
                    .await
                    .unwrap_or_else(|c| panic!("closed waiting for push: {c:?}")),
            };
            if let Some(p) = r.push {
                return p;
            }
        }
    }

    /// The next publication in `channel`, skipping other pushes.
    pub async fn next_pub(&mut self, channel: &str) -> wire::Publication {
        loop {
            let p = self.next_push().await;
            if p.channel == channel {
                if let Some(publication) = p.r#pub {
                    return publication;
                }
            }
        }
    }

    /// Waits until the server closes the socket; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(c) = self.read().await {
                return c;
            }
        }
    }

    /// Closes the WebSocket, as a client that is done does.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
