//! The load clients' wire protocols: switchboard's Centrifugo JSON (also with fossil
//! deltas, see [`crate::delta`]) and Protobuf, a minimal
//! Socket.IO v5 (Engine.IO v4, WebSocket only), Pusher's protocol 7 and the floor's bare
//! text protocol.
//!
//! Clients only do what the scenarios need: authenticate, subscribe, answer pings, and
//! spot publications and their send timestamp without parsing the whole frame.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use switchboard::transport::deflate::Io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::delta::{self, Chain};
use crate::protobuf;

/// A client WebSocket over plain TCP; read through switchboard's inflater when the
/// connection negotiated permessage-deflate (tungstenite has no extension support).
pub(crate) type Ws = WebSocketStream<Io<TcpStream>>;

/// Largest message a load client reads (compressed or inflated).
const MAX_MESSAGE: usize = 1 << 20;

/// A wire protocol the load clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Proto {
    /// Centrifugo client protocol v2, JSON, at `/connection/websocket`.
    Centrifuge,
    /// The same, subscribing with `delta: "fossil"`: publications come as fossil deltas
    /// of the previous one, which the client applies ([`crate::delta::Chain`]).
    CentrifugeDelta,
    /// Centrifugo client protocol v2, Protobuf (`cf_protocol=protobuf`), binary frames.
    CentrifugeProtobuf,
    /// Centrifugo's unidirectional WebSocket (`/connection/uni_websocket`): the connect
    /// request is the only message sent; channels come from the token's `channels`.
    Uni,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport only.
    SocketIo,
    /// The floor server's text protocol: `subscribe ROOM`, then raw payloads.
    Floor,
    /// Pusher's protocol 7 at `/app/<key>`, public channels (no auth).
    Pusher,
}

impl Proto {
    /// The path of the WebSocket endpoint.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Proto::Centrifuge | Proto::CentrifugeDelta => "/connection/websocket",
            Proto::CentrifugeProtobuf => "/connection/websocket?cf_protocol=protobuf",
            Proto::Uni => "/connection/uni_websocket",
            Proto::SocketIo => "/socket.io/?EIO=4&transport=websocket",
            Proto::Floor => "/",
            Proto::Pusher => PUSHER_PATH,
        }
    }

    /// Whether connects carry an HS256 token (the floor's and Pusher's public channels
    /// take none).
    pub(crate) fn uses_token(self) -> bool {
        matches!(
            self,
            Proto::Centrifuge
                | Proto::CentrifugeDelta
                | Proto::CentrifugeProtobuf
                | Proto::SocketIo
                | Proto::Uni
        )
    }

    /// Whether the connection's channels are named in its token and subscribed at
    /// connect, so there is nothing to send to subscribe.
    pub(crate) fn subscribes_at_connect(self) -> bool {
        self == Proto::Uni
    }
}

/// Where Pusher clients connect: the bench config's app key, protocol 7.
const PUSHER_PATH: &str = "/app/bench-key?protocol=7&client=bench&version=1";

/// What one incoming message (or line of a multi-line frame) means to a load client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A server ping that must be answered with [`pong`].
    Ping,
    /// A publication, with the send time (Unix µs) found in its payload.
    Publication(Option<u64>),
    /// A publication that came as a fossil delta, applied: its payload's send time.
    DeltaPublication(Option<u64>),
    /// A delta that could not be applied: the client lost the publication.
    BrokenDelta,
    /// The answer to a subscribe request.
    SubscribeReply { ok: bool },
    /// Anything else.
    Other,
}

/// Client buffers as small as the servers': the clients hold thousands of sockets too.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Opens a WebSocket to `server` from source address `source` (bound before connecting,
/// so connections spread over several loopback addresses and their port ranges),
/// negotiating permessage-deflate when `deflate`.
pub(crate) async fn open(
    server: SocketAddr,
    source: Ipv4Addr,
    proto: Proto,
    deflate: bool,
) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(server).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    if deflate {
        return open_deflating(server, stream, proto).await;
    }
    let request = format!("ws://{server}{}", proto.path()).into_client_request()?;
    let io = Io::new(stream, false, MAX_MESSAGE);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(ws_config()))
        .await
        .context("websocket handshake")?;
    Ok(ws)
}

/// The handshake done here, offering permessage-deflate as a browser does: what the
/// server sends past its answer is already frames, and goes to the inflater.
async fn open_deflating(
    server: SocketAddr,
    mut stream: TcpStream,
    proto: Proto,
) -> anyhow::Result<Ws> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {server}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        proto.path(),
        generate_key()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut read = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if read.len() > 16 * 1024 || stream.read_buf(&mut read).await? == 0 {
            bail!("no handshake answer");
        }
    };
    let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101") {
        bail!("handshake refused: {}", head.lines().next().unwrap_or(""));
    }
    if !head.contains("\r\nsec-websocket-extensions: permessage-deflate") {
        bail!("the server did not negotiate permessage-deflate");
    }
    let frames = read.split_off(end);
    let io = Io::inflating(stream, MAX_MESSAGE, frames);
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(ws_config())).await)
}

/// Reads the next text message, answering pings meanwhile.
async fn next_text(ws: &mut Ws, proto: Proto) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                if classify_one(proto, t) == Incoming::Ping {
                    ws.send(pong(proto)).await?;
                    continue;
                }
                return Ok(t.to_owned());
            }
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

/// Authenticates a freshly opened socket (`token` is an HS256 JWT, when the target
/// checks one).
pub(crate) async fn handshake(
    ws: &mut Ws,
    proto: Proto,
    token: Option<&str>,
) -> anyhow::Result<()> {
    match proto {
        Proto::Centrifuge | Proto::CentrifugeDelta => {
            let token = token.unwrap_or("");
            ws.send(Message::text(format!(
                r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#
            )))
            .await?;
            loop {
                let text = next_text(ws, proto).await?;
                for line in text.lines() {
                    if line.starts_with(r#"{"id":1,"#) {
                        if line.contains(r#""connect":"#) {
                            return Ok(());
                        }
                        bail!("connect refused: {line}");
                    }
                }
            }
        }
        Proto::SocketIo => {
            let open = next_text(ws, proto).await?;
            if !open.starts_with('0') {
                bail!("expected an Engine.IO open packet, got {open}");
            }
            let connect = match token {
                Some(t) => format!(r#"40{{"token":"{t}"}}"#),
                None => "40".to_owned(),
            };
            ws.send(Message::text(connect)).await?;
            loop {
                let text = next_text(ws, proto).await?;
                if text.starts_with("40") {
                    return Ok(());
                }
                if text.starts_with("44") {
                    bail!("connect refused: {text}");
                }
            }
        }
        Proto::CentrifugeProtobuf => {
            ws.send(Message::binary(protobuf::connect(token.unwrap_or(""))))
                .await?;
            loop {
                let frame = match ws.next().await {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("closed"),
                };
                let mut answer = None;
                let mut pings = 0;
                protobuf::replies(&frame, |r| match r {
                    protobuf::Reply::Ping => pings += 1,
                    protobuf::Reply::Answer { id: 1, result } => answer = Some(result),
                    _ => {}
                });
                for _ in 0..pings {
                    ws.send(pong(proto)).await?;
                }
                match answer {
                    Some(Some(protobuf::Reply::CONNECT)) => return Ok(()),
                    Some(_) => bail!("connect refused"),
                    None => {}
                }
            }
        }
        Proto::Uni => {
            let token = token.unwrap_or("");
            ws.send(Message::text(format!(r#"{{"token":"{token}"}}"#)))
                .await?;
            let first = next_text(ws, proto).await?;
            if !first.starts_with(r#"{"connect":"#) {
                bail!("expected a connect push, got {first}");
            }
            Ok(())
        }
        Proto::Floor => Ok(()),
        Proto::Pusher => {
            let hello = next_text(ws, proto).await?;
            if !hello.starts_with(r#"{"event":"pusher:connection_established""#) {
                bail!("expected pusher:connection_established, got {hello}");
            }
            Ok(())
        }
    }
}

/// The messages that subscribe to `channels`; each channel is answered by one
/// [`Incoming::SubscribeReply`].
pub(crate) fn subscribe_frames(proto: Proto, channels: &[String]) -> Vec<Message> {
    if proto == Proto::CentrifugeProtobuf {
        return vec![Message::binary(protobuf::subscribe(channels))];
    }
    let texts = match proto {
        // One frame of newline-delimited commands; ids after the connect's 1.
        Proto::Centrifuge | Proto::CentrifugeDelta => {
            let delta = match proto {
                Proto::CentrifugeDelta => r#","delta":"fossil""#,
                _ => "",
            };
            vec![channels
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        r#"{{"id":{},"subscribe":{{"channel":"{c}"{delta}}}}}"#,
                        i + 2
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")]
        }
        // An event with an acknowledgement id.
        Proto::SocketIo => channels
            .iter()
            .enumerate()
            .map(|(i, c)| format!(r#"42{i}["subscribe","{c}"]"#))
            .collect(),
        Proto::Floor => channels.iter().map(|c| format!("subscribe {c}")).collect(),
        Proto::Pusher => channels
            .iter()
            .map(|c| format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{c}"}}}}"#))
            .collect(),
        Proto::CentrifugeProtobuf | Proto::Uni => Vec::new(),
    };
    texts.into_iter().map(Message::text).collect()
}

/// The answer to a server ping.
pub(crate) fn pong(proto: Proto) -> Message {
    match proto {
        Proto::Centrifuge | Proto::CentrifugeDelta | Proto::Uni => Message::text("{}"),
        Proto::CentrifugeProtobuf => Message::binary(protobuf::PONG),
        Proto::SocketIo => Message::text("3"),
        Proto::Floor => Message::text(""),
        Proto::Pusher => Message::text(r#"{"event":"pusher:pong","data":"{}"}"#),
    }
}

/// Calls `f` for each message in a frame (Centrifugo frames may hold several, as lines
/// or length-delimited replies). `chain` is the connection's delta state, used by
/// [`Proto::CentrifugeDelta`] only.
pub(crate) fn classify(proto: Proto, frame: &[u8], chain: &mut Chain, mut f: impl FnMut(Incoming)) {
    if proto == Proto::CentrifugeProtobuf {
        protobuf::replies(frame, |r| {
            f(match r {
                protobuf::Reply::Ping => Incoming::Ping,
                protobuf::Reply::Publication(p) => Incoming::Publication(sent_at(p)),
                protobuf::Reply::Answer { result, .. } => Incoming::SubscribeReply {
                    ok: result == Some(protobuf::Reply::SUBSCRIBE),
                },
                protobuf::Reply::Other => Incoming::Other,
            });
        });
        return;
    }
    let Ok(frame) = std::str::from_utf8(frame) else {
        return;
    };
    let mut one = |m: &str| {
        f(if proto == Proto::CentrifugeDelta {
            classify_delta(m, chain)
        } else {
            classify_one(proto, m)
        });
    };
    if matches!(
        proto,
        Proto::Centrifuge | Proto::CentrifugeDelta | Proto::Uni
    ) && frame.contains('\n')
    {
        for line in frame.split('\n').filter(|l| !l.is_empty()) {
            one(line);
        }
    } else {
        one(frame);
    }
}

/// A message to a delta subscriber: its publications are applied to the chain.
fn classify_delta(m: &str, chain: &mut Chain) -> Incoming {
    if m.starts_with(r#"{"push":"#) && m.contains(r#""pub":{"#) {
        return match chain.read(m) {
            delta::Read::Full(sent) => Incoming::Publication(sent),
            delta::Read::Delta(sent) => Incoming::DeltaPublication(sent),
            delta::Read::Broken => Incoming::BrokenDelta,
        };
    }
    match classify_one(Proto::Centrifuge, m) {
        // Negotiated only when the reply says so: else the target measures nothing.
        Incoming::SubscribeReply { ok } => Incoming::SubscribeReply {
            ok: ok && m.contains(r#""delta":true"#),
        },
        incoming => incoming,
    }
}

fn classify_one(proto: Proto, m: &str) -> Incoming {
    match proto {
        // Binary: see `classify`.
        Proto::CentrifugeProtobuf => Incoming::Other,
        // Pushes without the `{"push":…}` envelope; pings (`{}`) want no answer.
        Proto::Uni => {
            if m.starts_with(r#"{"channel":"#) && m.contains(r#""pub":{"#) {
                Incoming::Publication(sent_at(m.as_bytes()))
            } else {
                Incoming::Other
            }
        }
        // Publications to delta subscribers: see `classify_delta`.
        Proto::Centrifuge | Proto::CentrifugeDelta => {
            if m == "{}" {
                Incoming::Ping
            } else if m.starts_with(r#"{"push":"#) {
                if m.contains(r#""pub":{"#) {
                    Incoming::Publication(sent_at(m.as_bytes()))
                } else {
                    Incoming::Other
                }
            } else if m.starts_with(r#"{"id":"#) {
                Incoming::SubscribeReply {
                    ok: m.contains(r#""subscribe":"#),
                }
            } else {
                Incoming::Other
            }
        }
        Proto::SocketIo => {
            if m == "2" {
                Incoming::Ping
            } else if m.starts_with(r#"42["pub","#) || m.starts_with(r#"42["publication","#) {
                Incoming::Publication(sent_at(m.as_bytes()))
            } else if m.starts_with("43") {
                // socket.io's peer acks `true`; switchboard acks `{"result":…}` or `{"error":…}`.
                Incoming::SubscribeReply {
                    ok: !m.contains(r#"[{"error":"#),
                }
            } else {
                Incoming::Other
            }
        }
        Proto::Pusher => {
            if m.starts_with(r#"{"event":"pusher:ping""#) {
                Incoming::Ping
            } else if m.starts_with(r#"{"event":"publication""#) {
                Incoming::Publication(sent_at(m.as_bytes()))
            } else if m.starts_with(r#"{"event":"pusher_internal:subscription_succeeded""#) {
                Incoming::SubscribeReply { ok: true }
            } else if m.starts_with(r#"{"event":"pusher:subscription_error""#) {
                Incoming::SubscribeReply { ok: false }
            } else {
                Incoming::Other
            }
        }
        Proto::Floor => {
            if m == "subscribed" {
                Incoming::SubscribeReply { ok: true }
            } else if m.starts_with('{') {
                Incoming::Publication(sent_at(m.as_bytes()))
            } else {
                Incoming::Other
            }
        }
    }
}

/// The `"t":<micros>` field of a bench payload, found without parsing the JSON (also
/// inside a JSON-encoded string, as Pusher's `data` carries it: `\"t\":`, and in a
/// Protobuf publication's `data` bytes).
pub(crate) fn sent_at(m: &[u8]) -> Option<u64> {
    let find = |needle: &[u8]| {
        m.windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + needle.len())
    };
    let i = find(br#""t":"#).or_else(|| find(br#"\"t\":"#))?;
    let digits = m[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&m[i..i + digits]).ok()?.parse().ok()
}

/// A bench payload of about `size` bytes: `{"t":<send µs>,"s":<seq>,"p":"xxx…"}`.
pub(crate) fn payload(sent_us: u64, seq: u64, size: usize) -> String {
    let mut p = format!(r#"{{"t":{sent_us},"s":{seq},"p":""#);
    let pad = size.saturating_sub(p.len() + 2);
    p.extend(std::iter::repeat_n('x', pad));
    p.push_str("\"}");
    p
}

/// Microseconds since the Unix epoch (the clock every process on the machine shares).
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Claims of the connection tokens the load clients present (what `switchboard token`
/// mints: a `sub` and an expiry; `channels` to subscribe on connect, for [`Proto::Uni`]).
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
}

/// An HS256 connection token for user `sub`, valid for an hour, subscribing `channels`
/// on connect.
pub(crate) fn token(secret: &str, sub: &str, channels: &[String]) -> anyhow::Result<String> {
    let claims = Claims {
        sub,
        exp: now_us() / 1_000_000 + 3600,
        channels,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// How long a connect (socket, WebSocket and protocol handshake) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size_and_timestamp() {
        let p = payload(1_700_000_000_000_000, 42, 100);
        assert_eq!(p.len(), 100);
        serde_json::from_str::<serde_json::Value>(&p).unwrap();
        assert_eq!(sent_at(p.as_bytes()), Some(1_700_000_000_000_000));
    }

    #[test]
    fn classifies_each_protocol() {
        let mut seen = Vec::new();
        let frame = "{}\n{\"push\":{\"channel\":\"b\",\"pub\":{\"data\":{\"t\":5,\"s\":1},\"offset\":1}}}\n{\"id\":2,\"subscribe\":{}}\n{\"id\":3,\"error\":{\"code\":103}}";
        classify(
            Proto::Centrifuge,
            frame.as_bytes(),
            &mut Chain::default(),
            |i| {
                seen.push(i);
            },
        );
        assert_eq!(
            seen,
            vec![
                Incoming::Ping,
                Incoming::Publication(Some(5)),
                Incoming::SubscribeReply { ok: true },
                Incoming::SubscribeReply { ok: false },
            ]
        );
        assert_eq!(classify_one(Proto::SocketIo, "2"), Incoming::Ping);
        assert_eq!(
            classify_one(Proto::SocketIo, r#"42["pub",{"t":7,"s":1}]"#),
            Incoming::Publication(Some(7))
        );
        assert_eq!(
            classify_one(Proto::SocketIo, "430[true]"),
            Incoming::SubscribeReply { ok: true }
        );
        assert_eq!(
            classify_one(Proto::Floor, r#"{"t":9}"#),
            Incoming::Publication(Some(9))
        );
        assert_eq!(
            classify_one(Proto::Uni, r#"{"channel":"b","pub":{"data":{"t":13}}}"#),
            Incoming::Publication(Some(13))
        );
        assert_eq!(classify_one(Proto::Uni, "{}"), Incoming::Other);
        assert_eq!(
            classify_one(
                Proto::Pusher,
                r#"{"event":"publication","channel":"b","data":"{\"t\":11,\"s\":1}"}"#
            ),
            Incoming::Publication(Some(11))
        );
        assert_eq!(
            classify_one(Proto::Pusher, r#"{"event":"pusher:ping","data":"{}"}"#),
            Incoming::Ping
        );
        assert_eq!(
            classify_one(
                Proto::Pusher,
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"b","data":"{}"}"#
            ),
            Incoming::SubscribeReply { ok: true }
        );
        assert_eq!(
            subscribe_frames(Proto::Centrifuge, &["a".into(), "b".into()]),
            vec![Message::text("{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":3,\"subscribe\":{\"channel\":\"b\"}}")]
        );
    }
}
