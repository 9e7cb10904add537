//! Publishing for each target: switchboard's server API (`POST /api/publish`), the
//! socket.io peer's `POST /publish`, the floor's and the Node `ws` peer's
//! `POST /publish?room=`, Pusher's signed HTTP API (`POST /apps/<id>/events`) for the
//! Pusher-protocol targets (switchboard-pusher and sockudo alike); or, while switchboard
//! has no server API, a client connection publishing over WebSocket.
//! [`Drive`] paces publications for the broadcast and chat scenarios.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Proto, Ws};
use crate::scenario::{room_channel, ScenarioKind, Sizes, BROADCAST_CHANNEL};
use crate::target::{
    ServerKind, Target, API_KEY, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET, SECRET,
};
use crate::worker::Workers;

/// The HTTP endpoint a target publishes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// switchboard's `POST /api/publish`.
    ServerApi,
    /// The socket.io peer's `POST /publish` (`io.to(room).emit`).
    SocketIoTrigger,
    /// `POST /publish?room=` with the payload as the body (floor, Node `ws`).
    RoomTrigger,
    /// Pusher's `POST /apps/<app_id>/events`, signed with the app secret.
    PusherEvents,
}

impl Endpoint {
    /// How `target` is published to: Pusher-protocol targets through the Pusher API, so
    /// that switchboard-pusher and sockudo are driven the same way.
    pub(crate) fn of(target: Target) -> Self {
        match (target.server, target.proto) {
            (ServerKind::Sockudo, _) | (ServerKind::Switchboard, Proto::Pusher) => {
                Endpoint::PusherEvents
            }
            (ServerKind::Switchboard, _) => Endpoint::ServerApi,
            (ServerKind::SocketIo, _) => Endpoint::SocketIoTrigger,
            (ServerKind::Floor | ServerKind::NodeWs, _) => Endpoint::RoomTrigger,
        }
    }
}

/// Publishes bench payloads to one server. Cheap to clone; usable from many tasks.
#[derive(Clone)]
pub(crate) enum Publisher {
    /// An HTTP endpoint.
    Http {
        client: reqwest::Client,
        endpoint: Endpoint,
        base: String,
    },
    /// A switchboard client connection in the `bench` namespace (publish = true).
    Ws(Arc<WsPublisher>),
}

/// A client connection that publishes; a reader task answers pings and counts errors.
pub(crate) struct WsPublisher {
    sink: Arc<Mutex<SplitSink<Ws, Message>>>,
    next_id: AtomicU32,
    errors: Arc<AtomicU64>,
}

impl Publisher {
    /// Sets up publishing to `server`. For switchboard's server API, probes it and falls
    /// back to a WebSocket publisher subscribed to `ws_channels` when it is missing.
    pub(crate) async fn new(
        endpoint: Endpoint,
        server: SocketAddr,
        ws_channels: &[String],
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()?;
        let http = Publisher::Http {
            client,
            endpoint,
            base: format!("http://{server}"),
        };
        if endpoint != Endpoint::ServerApi {
            return Ok(http);
        }
        match http.try_publish("bench:probe", "{}").await {
            Ok(()) => Ok(http),
            Err(ProbeError::Missing) => Ok(Publisher::Ws(Arc::new(
                WsPublisher::connect(server, ws_channels).await?,
            ))),
            Err(ProbeError::Other(e)) => Err(e.context("switchboard server API")),
        }
    }

    /// How publications are sent, for the report.
    pub(crate) fn via(&self) -> &'static str {
        match self {
            Publisher::Http { endpoint, .. } => match endpoint {
                Endpoint::ServerApi => "server API (POST /api/publish)",
                Endpoint::SocketIoTrigger => "HTTP trigger (POST /publish -> io.to(room).emit)",
                Endpoint::RoomTrigger => "HTTP trigger (POST /publish?room=)",
                Endpoint::PusherEvents => "Pusher HTTP API (signed POST /apps/<id>/events)",
            },
            Publisher::Ws(_) => "client publish over WebSocket (server API missing)",
        }
    }

    /// Publishes `payload` (a JSON object) to `channel`.
    ///
    /// # Errors
    /// The server refused or could not be reached.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> anyhow::Result<()> {
        match self {
            Publisher::Http { .. } => {
                self.try_publish(channel, payload)
                    .await
                    .map_err(|e| match e {
                        ProbeError::Missing => anyhow::anyhow!("publish endpoint missing"),
                        ProbeError::Other(e) => e,
                    })
            }
            Publisher::Ws(ws) => ws.publish(channel, payload).await,
        }
    }

    /// Errors the server answered to WebSocket publications.
    pub(crate) fn errors(&self) -> u64 {
        match self {
            Publisher::Http { .. } => 0,
            Publisher::Ws(ws) => ws.errors.load(Ordering::Relaxed),
        }
    }

    async fn try_publish(&self, channel: &str, payload: &str) -> Result<(), ProbeError> {
        let Publisher::Http {
            client,
            endpoint,
            base,
        } = self
        else {
            return Err(ProbeError::Missing);
        };
        let request = match endpoint {
            Endpoint::ServerApi => client
                .post(format!("{base}/api/publish"))
                .header("X-API-Key", API_KEY)
                .body(format!(r#"{{"channel":"{channel}","data":{payload}}}"#)),
            Endpoint::SocketIoTrigger => client
                .post(format!("{base}/publish"))
                .body(format!(r#"{{"room":"{channel}","data":{payload}}}"#)),
            Endpoint::RoomTrigger => client
                .post(format!("{base}/publish?room={channel}"))
                .body(payload.to_owned()),
            Endpoint::PusherEvents => {
                // Pusher's `data` is a string: the payload, JSON-encoded once more.
                let data =
                    serde_json::to_string(payload).map_err(|e| ProbeError::Other(e.into()))?;
                let body =
                    format!(r#"{{"name":"publication","channel":"{channel}","data":{data}}}"#);
                let path = format!("/apps/{PUSHER_APP_ID}/events");
                let now = client::now_us() / 1_000_000;
                let query = pusher_query(PUSHER_KEY, PUSHER_SECRET, &path, &body, now);
                client.post(format!("{base}{path}?{query}")).body(body)
            }
        };
        let response = request
            .header("content-type", "application/json")
            .send()
            .await
            .map_err(|e| ProbeError::Other(e.into()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND
            || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
        {
            return Err(ProbeError::Missing);
        }
        let body = response
            .text()
            .await
            .map_err(|e| ProbeError::Other(e.into()))?;
        if !status.is_success() || body.contains(r#""error""#) {
            return Err(ProbeError::Other(anyhow::anyhow!("{status}: {body}")));
        }
        Ok(())
    }
}

enum ProbeError {
    Missing,
    Other(anyhow::Error),
}

/// The signed query string of a Pusher HTTP API `POST`: `auth_signature` is the
/// HMAC-SHA256 (app secret) of `POST\nPATH\nQUERY`, the query's parameters sorted.
fn pusher_query(key: &str, secret: &str, path: &str, body: &str, unix_seconds: u64) -> String {
    use hmac::{Hmac, Mac};
    use md5::{Digest, Md5};
    let query = format!(
        "auth_key={key}&auth_timestamp={unix_seconds}&auth_version=1.0&body_md5={}",
        hex(&Md5::digest(body.as_bytes()))
    );
    let signature = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(format!("POST\n{path}\n{query}").as_bytes());
            hex(&mac.finalize().into_bytes())
        })
        .unwrap_or_default();
    format!("{query}&auth_signature={signature}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl WsPublisher {
    async fn connect(server: SocketAddr, channels: &[String]) -> anyhow::Result<Self> {
        let mut ws = client::open(server, [127, 0, 0, 1].into(), Proto::Centrifuge, false).await?;
        let token = client::token(SECRET, "bench-publisher", &[])?;
        client::handshake(&mut ws, Proto::Centrifuge, Some(&token)).await?;
        // Client publishing needs a subscription; subscribe in batches of 500.
        let mut id = 1u32;
        for chunk in channels.chunks(500) {
            let frame = chunk
                .iter()
                .map(|c| {
                    id += 1;
                    format!(r#"{{"id":{id},"subscribe":{{"channel":"{c}"}}}}"#)
                })
                .collect::<Vec<_>>()
                .join("\n");
            ws.send(Message::text(frame)).await?;
            let mut left = chunk.len();
            while left > 0 {
                let Some(msg) = ws.next().await else {
                    bail!("publisher closed while subscribing")
                };
                if let Message::Text(t) = msg.context("publisher subscribe")? {
                    for line in t.as_str().lines() {
                        if line.starts_with(r#"{"id":"#) {
                            if !line.contains(r#""subscribe":"#) {
                                bail!("publisher subscribe refused: {line}");
                            }
                            left -= 1;
                        } else if line == "{}" {
                            ws.send(Message::text("{}")).await?;
                        }
                    }
                }
            }
        }
        let (sink, mut stream) = ws.split();
        let sink = Arc::new(Mutex::new(sink));
        let errors = Arc::new(AtomicU64::new(0));
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let counted = errors.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    for line in t.as_str().lines() {
                        if line == "{}" {
                            let _ = pong_tx.send(());
                        } else if line.starts_with(r#"{"id":"#) && line.contains(r#""error""#) {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        // Pings are rare (25 s); answer them through the shared sink.
        let pong_sink = sink.clone();
        tokio::spawn(async move {
            while pong_rx.recv().await.is_some() {
                let _ = pong_sink.lock().await.send(Message::text("{}")).await;
            }
        });
        Ok(Self {
            sink,
            next_id: AtomicU32::new(id + 1),
            errors,
        })
    }

    async fn publish(&self, channel: &str, payload: &str) -> anyhow::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cmd = format!(r#"{{"id":{id},"publish":{{"channel":"{channel}","data":{payload}}}}}"#);
        self.sink.lock().await.send(Message::text(cmd)).await?;
        Ok(())
    }
}

/// Drives publications: broadcast as fast as they are delivered (a window of
/// publications in flight), chat on a fixed schedule.
pub(crate) struct Drive {
    pub(crate) publisher: Publisher,
    kind: ScenarioKind,
    sizes: Sizes,
    subscribers: u64,
    pub(crate) published: Arc<AtomicU64>,
    pub(crate) errors: Arc<AtomicU64>,
    /// Deliveries expected for what was published (subscribers at publish time).
    expected: Arc<AtomicU64>,
    seq: u64,
    in_flight: Arc<Semaphore>,
    concurrency: u32,
}

impl Drive {
    pub(crate) fn new(
        publisher: Publisher,
        kind: ScenarioKind,
        sizes: &Sizes,
        subscribers: usize,
    ) -> Self {
        let concurrency = match kind {
            ScenarioKind::Chat => 256,
            _ => u32::try_from(sizes.publishers.max(1)).unwrap_or(u32::MAX),
        };
        Self {
            publisher,
            kind,
            sizes: sizes.clone(),
            subscribers: subscribers as u64,
            published: Arc::default(),
            errors: Arc::default(),
            expected: Arc::default(),
            seq: 0,
            in_flight: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
        }
    }

    /// Publishes one payload, waiting while too many publications are in flight.
    async fn publish_one(&mut self, channel: String, deliveries: u64) {
        self.seq += 1;
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        // Stamped once a permit is held: waiting for one is not delivery latency.
        let payload = client::payload(client::now_us(), self.seq, self.sizes.payload);
        self.expected.fetch_add(deliveries, Ordering::Relaxed);
        self.published.fetch_add(1, Ordering::Relaxed);
        let publisher = self.publisher.clone();
        let errors = self.errors.clone();
        tokio::spawn(async move {
            if publisher.publish(&channel, &payload).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }

    pub(crate) async fn run(
        &mut self,
        workers: &Workers,
        duration: Duration,
        pb: &ProgressBar,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let end = start + duration;
        let window = self.sizes.window as u64 * self.subscribers.max(1);
        let rooms = self.sizes.chat_rooms.max(1);
        let rate = self.sizes.chat_rooms as f64 * self.sizes.room_rate;
        let mut chat_sent = 0u64;
        let mut last_progress = (workers.delivered(), Instant::now());
        while Instant::now() < end {
            pb.set_position(start.elapsed().as_millis() as u64);
            match self.kind {
                ScenarioKind::Chat => {
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    while chat_sent < due {
                        let room = (self.seq as usize) % rooms;
                        self.publish_one(room_channel(room), self.sizes.room_size as u64)
                            .await;
                        chat_sent += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                _ => {
                    let delivered = workers.delivered();
                    if delivered != last_progress.0 {
                        last_progress = (delivered, Instant::now());
                    }
                    let expected = self.expected.load(Ordering::Relaxed);
                    // A stall (a subscriber gone, deliveries lost) must not stop the
                    // run: after a second without progress, publish anyway.
                    let stalled = last_progress.1.elapsed() > Duration::from_secs(1);
                    if expected.saturating_sub(delivered) >= window && !stalled {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    if stalled {
                        last_progress.1 = Instant::now();
                    }
                    let live = self.subscribers.saturating_sub(workers.closed() as u64);
                    self.publish_one(BROADCAST_CHANNEL.to_owned(), live).await;
                }
            }
        }
        // Let the publications in flight finish.
        let _all = self.in_flight.acquire_many(self.concurrency).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_requests_are_signed_as_pushers_reference_shows() {
        // The example of Pusher's "Generating authentication signatures" reference.
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = pusher_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "/apps/3/events",
            body,
            1_353_088_179,
        );
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
