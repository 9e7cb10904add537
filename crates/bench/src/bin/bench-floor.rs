//! `bench-floor`: the least a WebSocket broadcast server can do on this machine, as the
//! floor switchboard is measured against. No auth, no protocol, no features.
//!
//! - WebSocket on any path: a text `subscribe ROOM` adds the connection to ROOM and is
//!   answered `subscribed`; anything else is ignored.
//! - `POST /publish?room=ROOM` (same port; the body is the payload): the payload becomes
//!   one shared `Utf8Bytes` fanned out to every member through bounded per-connection
//!   queues (a full queue drops the frame); each writer drains its queue, then flushes
//!   once. Answers `{"delivered":N}`.
//! - 4 KiB read and write buffers per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const BUFFER_SIZE: usize = 4096;
const QUEUE: usize = 1024;
const BATCH: usize = 256;

type Room = HashMap<u64, mpsc::Sender<Utf8Bytes>>;

#[derive(Default)]
struct Floor {
    /// Held for a fan-out or a (un)subscribe, never across an await.
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

impl Floor {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, room: &str, payload: &Utf8Bytes) -> usize {
        let rooms = self.rooms();
        let Some(members) = rooms.get(room) else {
            return 0;
        };
        members
            .values()
            .filter(|tx| tx.try_send(payload.clone()).is_ok())
            .count()
    }
}

fn main() -> std::io::Result<()> {
    let mut bind: SocketAddr = ([127, 0, 0, 1], 8100).into();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => {
                bind = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| std::io::Error::other("--bind needs ADDR:PORT"))?;
            }
            _ => return Err(std::io::Error::other(format!("unknown argument {a}"))),
        }
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Runtime::new()?.block_on(serve(bind))
}

async fn serve(bind: SocketAddr) -> std::io::Result<()> {
    // A deep accept queue: tokio's default backlog (128) drops SYNs in a connect storm.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    let listener = socket.listen(4096)?;
    let floor = Arc::new(Floor::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, floor.clone()));
    }
}

async fn connection(stream: TcpStream, floor: Arc<Floor>) {
    let mut head = [0u8; 4];
    loop {
        match stream.peek(&mut head).await {
            Ok(n) if n >= 4 => break,
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::task::yield_now().await,
        }
    }
    if &head == b"POST" {
        let _ = http(stream, &floor).await;
    } else {
        websocket(stream, &floor).await;
    }
}

/// Keep-alive HTTP/1.1, just enough for `POST /publish?room=ROOM`.
async fn http(stream: TcpStream, floor: &Floor) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(BUFFER_SIZE, read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await?;
        let room = target
            .split_once("room=")
            .map_or("", |(_, r)| r.split('&').next().unwrap_or(""));
        let (status, reply) = match (target.starts_with("/publish"), String::from_utf8(body)) {
            (true, Ok(payload)) => {
                let n = floor.publish(room, &Utf8Bytes::from(payload));
                ("200 OK", format!("{{\"delivered\":{n}}}"))
            }
            _ => ("400 Bad Request", String::from("{}")),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        write.write_all(response.as_bytes()).await?;
    }
}

async fn websocket(stream: TcpStream, floor: &Floor) {
    let config = WebSocketConfig::default()
        .read_buffer_size(BUFFER_SIZE)
        .write_buffer_size(BUFFER_SIZE)
        .max_message_size(Some(65_536))
        .max_frame_size(Some(65_536));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let (mut sink, mut stream) = ws.split();
    let mut joined: Vec<String> = Vec::new();
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(t) => {
                    if let Some(room) = t.as_str().strip_prefix("subscribe ") {
                        floor
                            .rooms()
                            .entry(room.to_owned())
                            .or_default()
                            .insert(id, tx.clone());
                        joined.push(room.to_owned());
                        let _ = tx.try_send(Utf8Bytes::from_static("subscribed"));
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let writer = async {
        // Grown by `recv_many` on first use, not reserved per idle connection.
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            for m in batch.drain(..) {
                if sink.feed(Message::Text(m)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {},
        () = writer => {},
    }
    let mut rooms = floor.rooms();
    for room in joined {
        if let Some(members) = rooms.get_mut(&room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
}
