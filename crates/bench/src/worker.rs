//! A client worker process: holds a slice of the connections (a process may open at
//! most 20,000 files here), obeys the coordinator's commands on stdin and reports JSON
//! lines on stdout.
//!
//! Commands: `connect`, `subscribe`, `measure` (reset counters), `stop` (report), `exit`.
//! [`Workers`] is the coordinator's side: it spawns them and gathers their lines.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Incoming, Proto};
use crate::delta::Chain;
use crate::histogram::{Histogram, SparseHistogram};
use crate::procfs;
use crate::scenario::Plan;

/// What a worker is asked to do, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub(crate) proto: Proto,
    /// Whether connections negotiate permessage-deflate.
    #[serde(default)]
    pub(crate) deflate: bool,
    /// The server's nodes: connection `i` goes to node `i % servers.len()`.
    pub(crate) servers: Vec<SocketAddr>,
    /// Global index of this worker's first connection.
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    pub(crate) sources: u8,
    /// HMAC secret to mint connection tokens with (none: the target checks none).
    pub(crate) secret: Option<String>,
    pub(crate) plan: Plan,
    /// Connects in flight at once.
    pub(crate) connect_concurrency: usize,
}

/// One line a worker prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub(crate) enum WorkerEvent {
    /// Tokens minted; waiting for `connect`.
    Ready,
    /// Every connect finished (or failed).
    Connected {
        ok: usize,
        failed: usize,
        /// Connect latency, µs.
        hist: SparseHistogram,
        first_error: Option<String>,
    },
    /// Every connection's subscriptions were answered.
    Subscribed { ok: usize, failed: usize },
    /// Running totals, a few times a second.
    Progress {
        connected: usize,
        delivered_total: u64,
        closed: usize,
    },
    /// The measurement, after `stop`.
    Result {
        /// Deliveries since `measure`.
        delivered: u64,
        /// Publish-to-delivery latency, µs.
        hist: SparseHistogram,
        /// Connections the server closed.
        closed: usize,
        /// Deliveries since `measure` that came as fossil deltas (switchboard-delta).
        #[serde(default)]
        deltas: u64,
        /// Deltas that could not be applied, since the start: each a publication lost.
        #[serde(default)]
        broken_deltas: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Subscribe,
}

#[derive(Default)]
struct Shared {
    delivered_total: AtomicU64,
    delivered: AtomicU64,
    /// Of `delivered`, those that came as deltas.
    deltas: AtomicU64,
    broken_deltas: AtomicU64,
    measuring: AtomicBool,
    /// Uncontended: the worker runs on one thread.
    latency: Mutex<Histogram>,
    connect_latency: Mutex<Histogram>,
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    subscribed: AtomicUsize,
    subscribe_failed: AtomicUsize,
    closed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn emit(ev: &WorkerEvent) {
    if let Ok(line) = serde_json::to_string(ev) {
        println!("{line}");
    }
}

/// Runs a worker until `exit` or the end of stdin.
pub(crate) fn main(spec: &str) -> anyhow::Result<()> {
    crate::procfs::raise_open_files_limit();
    let spec: WorkerSpec = serde_json::from_str(spec)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(spec))?;
    // Dropping thousands of sockets one by one is slow; the kernel closes them at exit.
    std::process::exit(0);
}

async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let spec = Arc::new(spec);
    let tokens: Vec<Option<String>> = (0..spec.count)
        .map(|k| {
            let i = spec.first + k;
            let channels = if spec.proto.subscribes_at_connect() {
                spec.plan.channels(i)
            } else {
                Vec::new()
            };
            spec.secret
                .as_ref()
                .map(|s| client::token(s, &format!("u{i}"), &channels).unwrap_or_default())
        })
        .collect();
    let shared = Arc::new(Shared::default());
    let (phase_tx, _) = watch::channel(Phase::Connect);
    emit(&WorkerEvent::Ready);

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tokens = Some(tokens);
    while let Some(cmd) = lines.next_line().await? {
        match cmd.trim() {
            "connect" => {
                let Some(tokens) = tokens.take() else {
                    continue;
                };
                let sem = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
                for (k, token) in tokens.into_iter().enumerate() {
                    tokio::spawn(connection(
                        spec.clone(),
                        shared.clone(),
                        spec.first + k,
                        token,
                        sem.clone(),
                        phase_tx.subscribe(),
                    ));
                }
                tokio::spawn(progress(shared.clone()));
                while shared.connected.load(Ordering::Relaxed)
                    + shared.connect_failed.load(Ordering::Relaxed)
                    < spec.count
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                emit(&WorkerEvent::Connected {
                    ok: shared.connected.load(Ordering::Relaxed),
                    failed: shared.connect_failed.load(Ordering::Relaxed),
                    hist: lock(&shared.connect_latency).to_sparse(),
                    first_error: lock(&shared.first_error).clone(),
                });
            }
            "subscribe" => {
                let _ = phase_tx.send(Phase::Subscribe);
                let target = shared.connected.load(Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(120);
                while shared.subscribed.load(Ordering::Relaxed)
                    + shared.subscribe_failed.load(Ordering::Relaxed)
                    < target
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                emit(&WorkerEvent::Subscribed {
                    ok: shared.subscribed.load(Ordering::Relaxed),
                    failed: target.saturating_sub(shared.subscribed.load(Ordering::Relaxed)),
                });
            }
            "measure" => {
                *lock(&shared.latency) = Histogram::default();
                shared.delivered.store(0, Ordering::Relaxed);
                shared.deltas.store(0, Ordering::Relaxed);
                shared.measuring.store(true, Ordering::Relaxed);
            }
            "stop" => {
                shared.measuring.store(false, Ordering::Relaxed);
                emit(&WorkerEvent::Result {
                    delivered: shared.delivered.load(Ordering::Relaxed),
                    hist: lock(&shared.latency).to_sparse(),
                    closed: shared.closed.load(Ordering::Relaxed),
                    deltas: shared.deltas.load(Ordering::Relaxed),
                    broken_deltas: shared.broken_deltas.load(Ordering::Relaxed),
                });
            }
            "exit" => break,
            _ => {}
        }
    }
    Ok(())
}

async fn progress(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last = (usize::MAX, u64::MAX, usize::MAX);
    loop {
        tick.tick().await;
        let now = (
            shared.connected.load(Ordering::Relaxed),
            shared.delivered_total.load(Ordering::Relaxed),
            shared.closed.load(Ordering::Relaxed),
        );
        if now != last {
            last = now;
            emit(&WorkerEvent::Progress {
                connected: now.0,
                delivered_total: now.1,
                closed: now.2,
            });
        }
    }
}

fn server_addr(spec: &WorkerSpec, i: usize) -> anyhow::Result<SocketAddr> {
    let n = spec.servers.len();
    if n == 0 {
        bail!("no server address");
    }
    Ok(spec.servers[i % n])
}

fn source_ip(spec: &WorkerSpec, i: usize) -> Ipv4Addr {
    let n = spec.sources.max(1) as usize;
    Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8)
}

async fn connection(
    spec: Arc<WorkerSpec>,
    shared: Arc<Shared>,
    i: usize,
    token: Option<String>,
    sem: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) {
    let permit = sem.acquire_owned().await;
    let started = Instant::now();
    let opened = tokio::time::timeout(client::CONNECT_TIMEOUT, async {
        let mut ws = client::open(
            server_addr(&spec, i)?,
            source_ip(&spec, i),
            spec.proto,
            spec.deflate,
        )
        .await?;
        client::handshake(&mut ws, spec.proto, token.as_deref()).await?;
        anyhow::Ok(ws)
    })
    .await;
    drop(permit);
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.connect_failed.fetch_add(1, Ordering::Relaxed);
            lock(&shared.first_error).get_or_insert_with(|| format!("{e:#}"));
            return;
        }
        Err(_) => {
            shared.connect_failed.fetch_add(1, Ordering::Relaxed);
            lock(&shared.first_error).get_or_insert_with(|| "connect timed out".into());
            return;
        }
    };
    lock(&shared.connect_latency).record(started.elapsed().as_micros() as u64);
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let proto = spec.proto;
    let channels = spec.plan.channels(i);
    // Subscribe replies still awaited, and whether all were positive.
    let mut awaiting: Option<(usize, bool)> = None;
    let mut subscribed = false;
    let mut chain = Chain::default();
    loop {
        if !subscribed && awaiting.is_none() && *phase.borrow() == Phase::Subscribe {
            if channels.is_empty() || proto.subscribes_at_connect() {
                subscribed = true;
                shared.subscribed.fetch_add(1, Ordering::Relaxed);
            } else {
                awaiting = Some((channels.len(), true));
                for f in client::subscribe_frames(proto, &channels) {
                    if ws.send(f).await.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::select! {
            // Cancel-safe: a watch notification is not lost by dropping the future.
            changed = phase.changed(), if !subscribed && awaiting.is_none() => {
                if changed.is_err() {
                    return;
                }
            }
            // Cancel-safe: `next()` keeps no state of its own.
            msg = ws.next() => {
                let frame = match msg {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m.into_data(),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let mut pings = 0;
                client::classify(proto, &frame, &mut chain, |m| match m {
                    Incoming::Publication(sent) => {
                        on_publication(&shared, sent);
                    }
                    Incoming::DeltaPublication(sent) => {
                        if on_publication(&shared, sent) {
                            shared.deltas.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Incoming::BrokenDelta => {
                        shared.broken_deltas.fetch_add(1, Ordering::Relaxed);
                    }
                    Incoming::Ping => pings += 1,
                    Incoming::SubscribeReply { ok } => {
                        if let Some((left, all_ok)) = awaiting.as_mut() {
                            *left -= 1;
                            *all_ok &= ok;
                        }
                    }
                    Incoming::Other => {}
                });
                if let Some((0, all_ok)) = awaiting {
                    awaiting = None;
                    subscribed = true;
                    if all_ok {
                        shared.subscribed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.subscribe_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for _ in 0..pings {
                    if ws.send(client::pong(proto)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
    if awaiting.is_some() {
        shared.subscribe_failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a delivery; whether it fell in the measured window.
fn on_publication(shared: &Shared, sent_us: Option<u64>) -> bool {
    shared.delivered_total.fetch_add(1, Ordering::Relaxed);
    let measuring = shared.measuring.load(Ordering::Relaxed);
    if measuring {
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = sent_us {
            let now = client::now_us();
            lock(&shared.latency).record(now.saturating_sub(sent));
        }
    }
    measuring
}

/// The worker processes of one run.
pub(crate) struct Workers {
    procs: Vec<WorkerProc>,
    events: mpsc::UnboundedReceiver<(usize, Option<WorkerEvent>)>,
    connected: Arc<Vec<AtomicUsize>>,
    delivered: Arc<Vec<AtomicU64>>,
    closed: Arc<Vec<AtomicUsize>>,
}

struct WorkerProc {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    pid: u32,
}

impl Workers {
    pub(crate) async fn spawn(specs: Vec<WorkerSpec>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let n = specs.len();
        let connected: Arc<Vec<AtomicUsize>> =
            Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let delivered: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let closed: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let (tx, events) = mpsc::unbounded_channel();
        let mut procs = Vec::new();
        for (w, spec) in specs.into_iter().enumerate() {
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .arg(serde_json::to_string(&spec)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?;
            let pid = child.id().context("worker pid")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let (tx, connected, delivered, closed) = (
                tx.clone(),
                connected.clone(),
                delivered.clone(),
                closed.clone(),
            );
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<WorkerEvent>(&line) {
                        Ok(WorkerEvent::Progress {
                            connected: c,
                            delivered_total,
                            closed: x,
                        }) => {
                            connected[w].store(c, Ordering::Relaxed);
                            delivered[w].store(delivered_total, Ordering::Relaxed);
                            closed[w].store(x, Ordering::Relaxed);
                        }
                        Ok(ev) => {
                            let _ = tx.send((w, Some(ev)));
                        }
                        Err(_) => eprintln!("worker {w}: {line}"),
                    }
                }
                let _ = tx.send((w, None));
            });
            procs.push(WorkerProc { child, stdin, pid });
        }
        Ok(Self {
            procs,
            events,
            connected,
            delivered,
            closed,
        })
    }

    pub(crate) async fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
            p.stdin.flush().await?;
        }
        Ok(())
    }

    /// Waits for one event from every worker that `pick` accepts, ticking `tick` meanwhile.
    pub(crate) async fn collect<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(WorkerEvent) -> Option<T>,
        mut tick: impl FnMut(&Self),
    ) -> anyhow::Result<Vec<T>> {
        let mut got: Vec<Option<T>> = (0..self.procs.len()).map(|_| None).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        while got.iter().any(Option::is_none) {
            tokio::select! {
                // Cancel-safe: `recv` loses nothing when dropped.
                ev = self.events.recv() => match ev {
                    Some((w, Some(ev))) => {
                        if got[w].is_none() {
                            got[w] = pick(ev);
                        }
                    }
                    Some((w, None)) => bail!("worker {w} exited while waiting for {what}"),
                    None => bail!("workers gone while waiting for {what}"),
                },
                // Cancel-safe: a timer.
                _ = interval.tick() => tick(self),
                // Cancel-safe: a timer.
                () = tokio::time::sleep_until(deadline) => bail!("timed out waiting for {what}"),
            }
        }
        tick(self);
        Ok(got.into_iter().flatten().collect())
    }

    pub(crate) fn connected(&self) -> usize {
        self.connected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn closed(&self) -> usize {
        self.closed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.procs
            .iter()
            .map(|p| procfs::cpu_seconds(p.pid))
            .sum::<f64>()
            + procfs::cpu_seconds(std::process::id())
    }

    pub(crate) async fn shutdown(mut self) {
        let _ = self.send("exit").await;
        for p in &mut self.procs {
            if tokio::time::timeout(Duration::from_secs(5), p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
    }
}
