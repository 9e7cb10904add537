//! The coordinator: for each target, scenario and run it starts the server (or the nodes
//! and their Redis), spreads the connections over worker processes, walks them through
//! connect, subscribe and measure, drives publications, and reads the servers' memory
//! and CPU from /proc.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;
use crate::procfs;
use crate::publisher::{Drive, Endpoint, Publisher};
use crate::scenario::{room_channel, Plan, ScenarioKind, Sizes, BROADCAST_CHANNEL};
use crate::target::{Deployment, Programs, Target, SECRET};
use crate::worker::{WorkerEvent, WorkerSpec, Workers};

/// How a run is set up, beyond the scenario sizes.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) sizes: Sizes,
    /// Minimum number of worker processes (more are used past 9,000 connections each).
    pub(crate) workers: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    pub(crate) sources: u8,
    /// Connects in flight per worker.
    pub(crate) connect_concurrency: usize,
    pub(crate) programs: Programs,
    /// Where server logs go.
    pub(crate) log_dir: PathBuf,
    /// Ports the Redis targets' redis-server may take (any free port if none).
    pub(crate) redis_ports: Option<(u16, u16)>,
}

/// The most connections one worker holds (a process may open 20,000 files here).
const MAX_PER_WORKER: usize = 9_000;

/// What one run of one scenario against one target measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RunResult {
    pub(crate) target: String,
    pub(crate) scenario: String,
    pub(crate) run: usize,
    pub(crate) connections: usize,
    /// Server processes (switchboard nodes); memory and CPU are summed over them.
    #[serde(default)]
    pub(crate) nodes: usize,
    pub(crate) workers: usize,
    pub(crate) publisher: Option<String>,
    pub(crate) error: Option<String>,
    /// Why the target was not measured (its server is not installed here): not a
    /// failure.
    #[serde(default)]
    pub(crate) skipped: Option<String>,
    pub(crate) connect: ConnectStats,
    pub(crate) subscribe: Option<SubscribeStats>,
    pub(crate) memory: MemoryStats,
    pub(crate) measure: Option<Measure>,
    /// Connections the server closed during the run.
    pub(crate) closed: usize,
    /// How the measured deliveries came (targets whose clients take fossil deltas).
    #[serde(default)]
    pub(crate) deltas: Option<DeltaStats>,
}

/// The publications a delta target's clients received in the measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DeltaStats {
    /// Came as fossil deltas, applied to the previous payload.
    pub(crate) deltas: u64,
    /// Came in full (the first after subscribing, or one whose delta was not shorter).
    pub(crate) full: u64,
    /// Deltas the clients could not apply, over the whole run (warm-up included).
    pub(crate) broken: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConnectStats {
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    /// From the first connect to the last one answered.
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
    pub(crate) latency_ms: Latency,
    pub(crate) first_error: Option<String>,
    /// Connections the kernel dropped from a full listen queue meanwhile (each retried
    /// by the client after 1 s).
    pub(crate) listen_overflows: u64,
    /// Server CPU during the connects, in cores.
    pub(crate) server_cores: f64,
    /// The whole machine's busy CPU during the connects, in cores (other tenants
    /// included): a run near 2.0 competed for the cores.
    pub(crate) machine_busy_cores: f64,
    /// The Redis's CPU during the connects, in cores (Redis targets only).
    #[serde(default)]
    pub(crate) redis_cores: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SubscribeStats {
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    pub(crate) seconds: f64,
}

/// Server resident memory (VmRSS).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct MemoryStats {
    pub(crate) base_bytes: u64,
    pub(crate) connected_bytes: u64,
    pub(crate) subscribed_bytes: Option<u64>,
    pub(crate) end_bytes: u64,
    /// (connected - base) / connections.
    pub(crate) per_connection_bytes: f64,
    /// (subscribed - base) / connections.
    pub(crate) per_connection_subscribed_bytes: Option<f64>,
    /// The highest RSS of the server process (VmHWM) at the end of the run.
    #[serde(default)]
    pub(crate) peak_bytes: u64,
    /// peak / subscribed: how much fan-out grows memory over the subscribed idle state.
    #[serde(default)]
    pub(crate) peak_over_subscribed: Option<f64>,
    /// The Redis's VmRSS once every client is subscribed (Redis targets only).
    #[serde(default)]
    pub(crate) redis_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) samples: u64,
}

impl Latency {
    fn from_us(h: &Histogram) -> Self {
        let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
        Self {
            p50: ms(h.quantile(0.5)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// The measured window of idle, broadcast and chat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Measure {
    pub(crate) seconds: f64,
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) delivered: u64,
    pub(crate) deliveries_per_second: f64,
    pub(crate) latency_ms: Latency,
    pub(crate) server_cpu_seconds: f64,
    /// Server CPU (user + system, all threads) per delivery, µs.
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    /// Server CPU in cores (1.0 = one core busy all the time).
    pub(crate) server_cores: f64,
    /// The load clients' and the coordinator's CPU, in cores.
    pub(crate) clients_cores: f64,
    /// The whole machine's busy CPU, in cores (the rest is other tenants).
    pub(crate) machine_busy_cores: f64,
    /// The Redis's CPU over the window (Redis targets only).
    #[serde(default)]
    pub(crate) redis_cpu_seconds: Option<f64>,
    /// The Redis's CPU per delivery, µs (Redis targets only).
    #[serde(default)]
    pub(crate) redis_cpu_us_per_delivery: Option<f64>,
    /// Servers' and Redis's CPU together per delivery, µs: the whole cost of a delivery
    /// (the server's alone for targets without Redis).
    #[serde(default)]
    pub(crate) total_cpu_us_per_delivery: Option<f64>,
    /// The Redis's CPU in cores (Redis targets only).
    #[serde(default)]
    pub(crate) redis_cores: Option<f64>,
    /// Bytes the server's sockets sent per delivery (TCP payload: WebSocket frames,
    /// compressed where the target compresses, and the API's answers to the publisher).
    #[serde(default)]
    pub(crate) server_bytes_per_delivery: Option<f64>,
}

fn bar(len: u64, msg: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// CPU counters at one instant.
struct CpuMark {
    at: Instant,
    /// Every node of the target together.
    server: f64,
    redis: Option<f64>,
    clients: f64,
    machine_busy: f64,
    /// Bytes the nodes' sockets sent so far (see [`crate::sockets`]).
    sent: Option<u64>,
}

impl CpuMark {
    fn take(servers: &Deployment, workers: &Workers) -> Self {
        Self {
            at: Instant::now(),
            server: servers.server_cpu_seconds(),
            redis: servers.redis_cpu_seconds(),
            clients: workers.cpu_seconds(),
            machine_busy: procfs::machine_cpu().0,
            sent: servers.bytes_sent(),
        }
    }
}

/// Runs one scenario once against one target.
pub(crate) async fn run_once(
    target: Target,
    kind: ScenarioKind,
    run: usize,
    setup: &Setup,
) -> RunResult {
    let mut result = RunResult {
        target: target.name.to_owned(),
        scenario: kind.name().to_owned(),
        run,
        connections: setup.sizes.connections(kind),
        nodes: target.cluster.nodes(),
        ..RunResult::default()
    };
    if let Some(why) = setup.programs.missing(target.server) {
        result.skipped = Some(why);
        return result;
    }
    if let Err(e) = run_inner(target, kind, run, setup, &mut result).await {
        result.error = Some(format!("{e:#}"));
    }
    result
}

async fn run_inner(
    target: Target,
    kind: ScenarioKind,
    run: usize,
    setup: &Setup,
    r: &mut RunResult,
) -> anyhow::Result<()> {
    let sizes = &setup.sizes;
    let label = format!("{} {} #{run}", target.name, kind.name());
    let log = setup
        .log_dir
        .join(format!("{}-{}-{run}.log", target.name, kind.name()));
    let mut servers = Deployment::start(target, &setup.programs, &log, setup.redis_ports).await?;
    tokio::time::sleep(sizes.settle).await;
    r.memory.base_bytes = servers.rss_bytes();
    let addrs = servers.addrs();

    let n = r.connections;
    let plan = sizes.plan(kind);
    let nworkers = setup.workers.max(n.div_ceil(MAX_PER_WORKER)).min(n.max(1));
    r.workers = nworkers;
    let secret = target.proto.uses_token().then(|| SECRET.to_owned());
    let specs: Vec<WorkerSpec> = (0..nworkers)
        .map(|w| {
            let first = n * w / nworkers;
            let last = n * (w + 1) / nworkers;
            WorkerSpec {
                proto: target.proto,
                deflate: target.deflate(),
                servers: addrs.clone(),
                first,
                count: last - first,
                sources: setup.sources,
                secret: secret.clone(),
                plan,
                connect_concurrency: setup.connect_concurrency,
            }
        })
        .collect();
    let mut workers = match Workers::spawn(specs).await {
        Ok(w) => w,
        Err(e) => {
            servers.stop().await;
            return Err(e);
        }
    };
    let outcome = drive(&mut servers, &mut workers, target, kind, &label, setup, r).await;
    workers.shutdown().await;
    servers.stop().await;
    outcome
}

async fn drive(
    servers: &mut Deployment,
    workers: &mut Workers,
    target: Target,
    kind: ScenarioKind,
    label: &str,
    setup: &Setup,
    r: &mut RunResult,
) -> anyhow::Result<()> {
    let sizes = &setup.sizes;
    let n = r.connections;
    let plan = sizes.plan(kind);
    workers
        .collect(
            "ready",
            Duration::from_secs(60),
            |ev| matches!(ev, WorkerEvent::Ready).then_some(()),
            |_| {},
        )
        .await?;

    // Connect.
    let pb = bar(n as u64, format!("{label}: connect"));
    let overflows = procfs::listen_overflows();
    let cpu_before = CpuMark::take(servers, workers);
    let started = Instant::now();
    workers.send("connect").await?;
    let connected = workers
        .collect(
            "connects",
            Duration::from_secs(300),
            |ev| match ev {
                WorkerEvent::Connected {
                    ok,
                    failed,
                    hist,
                    first_error,
                } => Some((ok, failed, hist, first_error)),
                _ => None,
            },
            |w| pb.set_position(w.connected() as u64),
        )
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    r.connect.listen_overflows = procfs::listen_overflows().saturating_sub(overflows);
    let cpu_after = CpuMark::take(servers, workers);
    r.connect.server_cores = (cpu_after.server - cpu_before.server) / seconds.max(1e-9);
    r.connect.redis_cores = cpu_after
        .redis
        .zip(cpu_before.redis)
        .map(|(a, b)| (a - b) / seconds.max(1e-9));
    r.connect.machine_busy_cores =
        (cpu_after.machine_busy - cpu_before.machine_busy) / seconds.max(1e-9);
    pb.finish_and_clear();
    let mut hist = Histogram::default();
    for (ok, failed, h, err) in connected {
        r.connect.ok += ok;
        r.connect.failed += failed;
        hist.merge(&h);
        if r.connect.first_error.is_none() {
            r.connect.first_error = err;
        }
    }
    r.connect.seconds = seconds;
    r.connect.per_second = r.connect.ok as f64 / seconds.max(1e-9);
    r.connect.latency_ms = Latency::from_us(&hist);
    if r.connect.ok == 0 {
        bail!(
            "no connection succeeded: {}",
            r.connect.first_error.clone().unwrap_or_default()
        );
    }
    tokio::time::sleep(sizes.settle).await;
    r.memory.connected_bytes = servers.rss_bytes();
    r.memory.per_connection_bytes =
        per_conn(r.memory.connected_bytes, r.memory.base_bytes, r.connect.ok);

    // Subscribe.
    if !matches!(plan, Plan::None) {
        let pb = bar(r.connect.ok as u64, format!("{label}: subscribe"));
        let started = Instant::now();
        workers.send("subscribe").await?;
        let subs = workers
            .collect(
                "subscriptions",
                Duration::from_secs(300),
                |ev| match ev {
                    WorkerEvent::Subscribed { ok, failed } => Some((ok, failed)),
                    _ => None,
                },
                |_| pb.tick(),
            )
            .await?;
        pb.finish_and_clear();
        let mut s = SubscribeStats {
            seconds: started.elapsed().as_secs_f64(),
            ..SubscribeStats::default()
        };
        for (ok, failed) in subs {
            s.ok += ok;
            s.failed += failed;
        }
        r.subscribe = Some(s);
        tokio::time::sleep(sizes.settle).await;
        let rss = servers.rss_bytes();
        r.memory.subscribed_bytes = Some(rss);
        r.memory.redis_bytes = servers.redis_rss_bytes();
        r.memory.per_connection_subscribed_bytes =
            Some(per_conn(rss, r.memory.base_bytes, r.connect.ok));
    }

    // Measure.
    match kind {
        ScenarioKind::Connect => {}
        ScenarioKind::Idle => {
            let pb = bar(sizes.duration.as_millis() as u64, format!("{label}: hold"));
            workers.send("measure").await?;
            let before = CpuMark::take(servers, workers);
            while before.at.elapsed() < sizes.duration {
                tokio::time::sleep(Duration::from_millis(100)).await;
                pb.set_position(before.at.elapsed().as_millis() as u64);
            }
            pb.finish_and_clear();
            let after = CpuMark::take(servers, workers);
            r.measure = Some(measure(&before, &after, 0, 0, 0, &Histogram::default()));
        }
        ScenarioKind::Broadcast | ScenarioKind::Chat => {
            let channels: Vec<String> = match kind {
                ScenarioKind::Chat => (0..sizes.chat_rooms).map(room_channel).collect(),
                _ => vec![BROADCAST_CHANNEL.to_owned()],
            };
            // Through the first node: with several, the others get the publications
            // only through Redis.
            let Some(&first) = servers.addrs().first() else {
                bail!("no server to publish through");
            };
            let publisher = Publisher::new(Endpoint::of(target), first, &channels).await?;
            r.publisher = Some(publisher.via().to_owned());
            let mut drive = Drive::new(
                publisher,
                kind,
                sizes,
                r.subscribe.as_ref().map_or(0, |s| s.ok),
            );
            let pb = bar(sizes.warmup.as_millis() as u64, format!("{label}: warm up"));
            drive.run(workers, sizes.warmup, &pb).await?;
            pb.finish_and_clear();
            workers.send("measure").await?;
            let before = CpuMark::take(servers, workers);
            let published_before = drive.published.load(Ordering::Relaxed);
            let pb = bar(
                sizes.duration.as_millis() as u64,
                format!("{label}: measure"),
            );
            drive.run(workers, sizes.duration, &pb).await?;
            workers.send("stop").await?;
            let after = CpuMark::take(servers, workers);
            pb.finish_and_clear();
            let results = workers
                .collect(
                    "results",
                    Duration::from_secs(60),
                    |ev| match ev {
                        WorkerEvent::Result {
                            delivered,
                            hist,
                            closed,
                            deltas,
                            broken_deltas,
                        } => Some((delivered, hist, closed, deltas, broken_deltas)),
                        _ => None,
                    },
                    |_| {},
                )
                .await?;
            let mut hist = Histogram::default();
            let mut delivered = 0;
            let mut deltas = DeltaStats::default();
            for (d, h, closed, patched, broken) in results {
                delivered += d;
                hist.merge(&h);
                r.closed += closed;
                deltas.deltas += patched;
                deltas.broken += broken;
            }
            deltas.full = delivered.saturating_sub(deltas.deltas);
            let published = drive.published.load(Ordering::Relaxed) - published_before;
            let errors = drive.errors.load(Ordering::Relaxed) + drive.publisher.errors();
            if delivered == 0 {
                bail!(
                    "no publication was delivered ({published} published, {errors} publish errors)"
                );
            }
            r.measure = Some(measure(
                &before, &after, published, errors, delivered, &hist,
            ));
            if target.features().delta {
                let (patched, broken) = (deltas.deltas, deltas.broken);
                r.deltas = Some(deltas);
                if broken > 0 {
                    bail!("{broken} fossil deltas could not be applied");
                }
                if patched == 0 {
                    bail!("no publication came as a fossil delta");
                }
            }
        }
    }
    r.closed = r.closed.max(workers.closed());
    r.memory.end_bytes = servers.rss_bytes();
    r.memory.peak_bytes = servers.peak_rss_bytes();
    if r.memory.redis_bytes.is_none() {
        r.memory.redis_bytes = servers.redis_rss_bytes();
    }
    r.memory.peak_over_subscribed = r
        .memory
        .subscribed_bytes
        .filter(|&b| b > 0)
        .map(|b| (r.memory.peak_bytes as f64 / b as f64 * 100.0).round() / 100.0);
    if !servers.running() {
        bail!("a server process exited during the run");
    }
    Ok(())
}

fn per_conn(rss: u64, base: u64, n: usize) -> f64 {
    (rss.saturating_sub(base) as f64 / n.max(1) as f64).round()
}

fn measure(
    before: &CpuMark,
    after: &CpuMark,
    published: u64,
    publish_errors: u64,
    delivered: u64,
    hist: &Histogram,
) -> Measure {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let server_cpu = after.server - before.server;
    let redis_cpu = after.redis.zip(before.redis).map(|(a, b)| a - b);
    let per_delivery = |cpu: f64| {
        (delivered > 0).then(|| (cpu * 1e6 / delivered as f64 * 1000.0).round() / 1000.0)
    };
    Measure {
        seconds,
        published,
        publish_errors,
        delivered,
        deliveries_per_second: (delivered as f64 / seconds).round(),
        latency_ms: Latency::from_us(hist),
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_delivery: per_delivery(server_cpu),
        redis_cpu_seconds: redis_cpu,
        redis_cpu_us_per_delivery: redis_cpu.and_then(per_delivery),
        total_cpu_us_per_delivery: per_delivery(server_cpu + redis_cpu.unwrap_or(0.0)),
        redis_cores: redis_cpu.map(|c| c / seconds),
        server_bytes_per_delivery: after
            .sent
            .zip(before.sent)
            .filter(|_| delivered > 0)
            .map(|(a, b)| (a.saturating_sub(b) as f64 / delivered as f64 * 10.0).round() / 10.0),
        server_cores: server_cpu / seconds,
        clients_cores: (after.clients - before.clients) / seconds,
        machine_busy_cores: (after.machine_busy - before.machine_busy) / seconds,
    }
}
