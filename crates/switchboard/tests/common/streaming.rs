//! Raw clients of the streaming endpoints with reqwest: a response read chunk by chunk
//! as JSON lines, server-sent events or length-delimited Protobuf, and the
//! `/emulation` requests of an emulated session.

use bytes::{Buf, BytesMut};
use prost::Message as _;
use serde_json::{json, Value};
use switchboard_protocol::protobuf::wire;

use super::{TestServer, TIMEOUT};

/// One streaming response, read as it arrives. Every read waits at most [`TIMEOUT`].
pub struct Stream {
    resp: reqwest::Response,
    buf: BytesMut,
    /// The stream ended.
    pub ended: bool,
}

impl Stream {
    /// Wraps a response; panics unless it is a 200.
    pub fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), 200, "{resp:?}");
        Self {
            resp,
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// A response header.
    pub fn header(&self, name: &str) -> String {
        self.resp
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// Reads one more chunk; false at the end of the stream.
    async fn more(&mut self) -> bool {
        let chunk = tokio::time::timeout(TIMEOUT, self.resp.chunk())
            .await
            .expect("stream read timeout");
        match chunk {
            Ok(Some(c)) => {
                self.buf.extend_from_slice(&c);
                true
            }
            _ => {
                self.ended = true;
                false
            }
        }
    }

    /// The next line, without its newline; `None` at the end of the stream.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Some(String::from_utf8_lossy(&line[..i]).trim_end().to_owned());
            }
            if !self.more().await {
                return None;
            }
        }
    }

    /// The next JSON line that is not empty; `None` at the end of the stream.
    pub async fn json(&mut self) -> Option<Value> {
        loop {
            let line = self.line().await?;
            if !line.is_empty() {
                return Some(serde_json::from_str(&line).expect("json line"));
            }
        }
    }

    /// The next JSON line that is not a ping (`{}`).
    pub async fn message(&mut self) -> Option<Value> {
        loop {
            let v = self.json().await?;
            if v.as_object().is_some_and(|o| !o.is_empty()) {
                return Some(v);
            }
        }
    }

    /// The next server-sent event's data, as JSON; `None` at the end of the stream.
    pub async fn event(&mut self) -> Option<Value> {
        loop {
            let line = self.line().await?;
            if let Some(data) = line.strip_prefix("data: ") {
                return Some(serde_json::from_str(data).expect("event data json"));
            }
        }
    }

    /// The next event that is not a ping.
    pub async fn event_message(&mut self) -> Option<Value> {
        loop {
            let v = self.event().await?;
            if v.as_object().is_some_and(|o| !o.is_empty()) {
                return Some(v);
            }
        }
    }

    /// The next length-delimited Protobuf `Reply`; `None` at the end of the stream.
    pub async fn reply(&mut self) -> Option<wire::Reply> {
        loop {
            let mut peek = &self.buf[..];
            if let Ok(len) = prost::encoding::decode_varint(&mut peek) {
                let prefix = self.buf.len() - peek.len();
                let len = usize::try_from(len).expect("length");
                if peek.len() >= len {
                    self.buf.advance(prefix);
                    let msg = self.buf.split_to(len);
                    return Some(wire::Reply::decode(msg.freeze()).expect("reply"));
                }
            }
            if !self.more().await {
                return None;
            }
        }
    }

    /// Waits for the end of the stream, skipping what comes before it.
    pub async fn until_end(&mut self) {
        self.buf.clear();
        while self.more().await {
            self.buf.clear();
        }
    }
}

/// A client of `server` with every wait bounded.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .build()
        .expect("client")
}

/// Opens `POST /connection/http_stream` with the JSON commands `first`.
pub async fn http_stream(server: &TestServer, first: &Value) -> Stream {
    let resp = http()
        .post(server.http_url("/connection/http_stream"))
        .header("Content-Type", "application/json")
        .body(first.to_string())
        .send()
        .await
        .expect("http_stream");
    Stream::new(resp)
}

/// A connect command with `token`.
pub fn connect(token: &str) -> Value {
    json!({"id": 1, "connect": {"token": token}})
}

/// `POST /emulation` with JSON `commands` (one per line) for `session` on `node`;
/// returns the status.
pub async fn emulate(server: &TestServer, node: &str, session: &str, commands: &[Value]) -> u16 {
    let data = commands
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let body = json!({"node": node, "session": session, "data": data});
    emulate_raw(server, "application/json", body.to_string().into_bytes()).await
}

/// `POST /emulation` with `body` of `content_type`; returns the status.
pub async fn emulate_raw(server: &TestServer, content_type: &str, body: Vec<u8>) -> u16 {
    http()
        .post(server.http_url("/emulation"))
        .header("Content-Type", content_type)
        .timeout(TIMEOUT)
        .body(body)
        .send()
        .await
        .expect("emulation")
        .status()
        .as_u16()
}
