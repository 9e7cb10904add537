//! A WebSocket client that speaks permessage-deflate (RFC 7692), written for the tests
//! on a bare TCP socket and flate2: tokio-tungstenite has no deflate support. It sees
//! what a browser would: the handshake's headers, and each frame's RSV1 bit.

use std::collections::HashMap;
use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Closed, TIMEOUT};

/// What Chrome and Firefox offer.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// One message received: its opcode, whether it came compressed, its bytes (inflated).
#[derive(Debug)]
pub struct Received {
    pub opcode: u8,
    pub compressed: bool,
    /// The payload as it was on the wire (compressed, if it was).
    pub wire_len: usize,
    pub data: Vec<u8>,
}

impl Received {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.data).expect("utf-8 text")
    }

    /// The JSON messages of a Centrifugo text frame (newline-delimited).
    pub fn json_lines(&self) -> Vec<Value> {
        self.text()
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

pub struct DeflateClient {
    tcp: TcpStream,
    /// The upgrade response's headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// Bytes read past what was parsed.
    buf: Vec<u8>,
}

impl DeflateClient {
    /// Opens `path` (with its query) on `addr`, offering `offer` in
    /// `Sec-WebSocket-Extensions` (none: no header); panics unless the server switches
    /// protocols.
    pub async fn open(addr: SocketAddr, path: &str, offer: Option<&str>) -> Self {
        let mut tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timeout")
            .expect("connect");
        let ext = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
        );
        tcp.write_all(req.as_bytes())
            .await
            .expect("write handshake");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
                .await
                .expect("handshake timeout")
                .expect("read handshake");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "not switched: {head}");
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        buf.drain(..end);
        Self { tcp, headers, buf }
    }

    /// The negotiated `Sec-WebSocket-Extensions`, if any.
    pub fn extensions(&self) -> Option<&str> {
        self.headers
            .get("sec-websocket-extensions")
            .map(String::as_str)
    }

    /// Sends a text message, compressed (RSV1 set) or not.
    pub async fn send_text(&mut self, text: &str, compress: bool) {
        self.send(0x1, text.as_bytes(), compress).await;
    }

    /// Sends one message of `opcode`, masked as a client must, in one frame.
    pub async fn send(&mut self, opcode: u8, data: &[u8], compress: bool) {
        let payload = if compress {
            deflate(data)
        } else {
            data.to_vec()
        };
        let frame = frame(opcode, compress, true, &payload);
        self.tcp.write_all(&frame).await.expect("send");
    }

    /// Sends raw bytes (hand-made frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("send");
    }

    /// Reads the next data message (pings are skipped), or how the connection closed.
    pub async fn recv(&mut self) -> Result<Received, Closed> {
        loop {
            let (fin, rsv1, opcode, payload) = self.read_frame().await?;
            assert!(fin, "the server fragments no message");
            match opcode {
                0x8 => {
                    let code = payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or(1005);
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                    return Err(Closed {
                        code,
                        reason: reason.into_owned(),
                    });
                }
                0x9 | 0xA => continue,
                _ => {
                    let wire_len = payload.len();
                    let data = if rsv1 { inflate(&payload) } else { payload };
                    return Ok(Received {
                        opcode,
                        compressed: rsv1,
                        wire_len,
                        data,
                    });
                }
            }
        }
    }

    /// Reads the next message whose JSON lines hold one with `key`, returning it too.
    pub async fn recv_json_with(&mut self, key: &str) -> (Received, Value) {
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|c| panic!("closed waiting for {key}: {c:?}"));
            if let Some(v) = m.json_lines().into_iter().find(|v| v.get(key).is_some()) {
                return (m, v);
            }
        }
    }

    /// Waits for the close frame, skipping messages.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(c) = self.recv().await {
                return c;
            }
        }
    }

    async fn fill(&mut self, n: usize) -> Result<(), Closed> {
        while self.buf.len() < n {
            let mut chunk = vec![0u8; 16 * 1024];
            let read = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut chunk))
                .await
                .expect("read timeout");
            match read {
                Ok(0) | Err(_) => {
                    return Err(Closed {
                        code: 0,
                        reason: "eof".into(),
                    })
                }
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        Ok(())
    }

    /// One frame from the server: fin, rsv1, opcode, payload.
    async fn read_frame(&mut self) -> Result<(bool, bool, u8, Vec<u8>), Closed> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "a server frame is not masked");
        let (len, head) = match b1 & 0x7f {
            126 => {
                self.fill(4).await?;
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                self.fill(10).await?;
                let mut l = [0u8; 8];
                l.copy_from_slice(&self.buf[2..10]);
                (usize::try_from(u64::from_be_bytes(l)).expect("length"), 10)
            }
            n => (usize::from(n), 2),
        };
        self.fill(head + len).await?;
        let payload = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Ok((b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f, payload))
    }
}

/// A client frame: masked (with a fixed key: the tests need no secrecy).
pub fn frame(opcode: u8, rsv1: bool, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 }];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// `data` as one permessage-deflate message: raw deflate, sync flush, tail dropped.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        let read = c.total_in() as usize;
        c.compress_vec(&data[read..], &mut out, FlushCompress::Sync)
            .expect("deflate");
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// One compressed message's bytes, inflated on their own (no context taken over).
pub fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(input.len() * 8 + 64);
    loop {
        let read = d.total_in() as usize;
        d.decompress_vec(&input[read..], &mut out, FlushDecompress::Sync)
            .expect("inflate");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    out
}
