//! `switchboard-bench`: measures switchboard beside its peers (a bare Rust broadcast
//! floor, socket.io 4.8, a plain Node `ws` server, sockudo) in one run, on one machine.
//!
//! # Layout
//! - [`scenario`]: idle, broadcast, chat, connect storm; sizes and presets.
//! - [`target`]: the servers measured and how they are started (one process, or
//!   switchboard nodes on a Redis the tool starts).
//! - [`client`]: the load clients' wire protocols (Centrifugo JSON, Protobuf and
//!   unidirectional, Socket.IO, Pusher, floor); [`protobuf`]: the Protobuf messages they
//!   need.
//! - [`worker`]: a client worker process (the tool re-executes itself as `worker`),
//!   and the coordinator's handle on the workers of a run.
//! - [`coordinator`]: drives one run: connect, subscribe, publish, measure.
//! - [`publisher`]: server API / HTTP triggers / WebSocket publishing, and pacing.
//! - [`histogram`]: latency histograms merged across processes.
//! - [`procfs`]: server memory and CPU from /proc.
//! - [`report`]: JSON, medians, the Markdown table, the docs splice.
//! - [`chart`]: SVG bar charts.

mod chart;
mod client;
mod coordinator;
mod delta;
mod histogram;
mod procfs;
mod protobuf;
mod publisher;
mod report;
mod scenario;
mod sockets;
mod target;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::coordinator::Setup;
use crate::report::Report;
use crate::scenario::{ScenarioKind, Sizes};
use crate::target::Programs;

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Benchmark switchboard beside its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios against targets and write results.
    Run(Box<RunArgs>),
    /// Rebuild the table, docs and charts from a saved report.json.
    Report {
        /// A report.json written by `run`.
        #[arg(long, default_value = "bench-results/report.json")]
        from: PathBuf,
        /// Where report.json, summary.json and table.md are written.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// Internal: a client worker process (spec as JSON).
    #[command(hide = true)]
    Worker { spec: String },
}

#[derive(Args, Clone)]
struct Outputs {
    /// Splice the machine block and the table into this Markdown file.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Splice into the `<!-- bench:SECTION-machine -->` and `<!-- bench:SECTION-table -->`
    /// blocks of --doc instead of the main ones (e.g. `redis`, so that a run of the Redis
    /// targets leaves the main table alone).
    #[arg(long)]
    section: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Targets, comma-separated (known: switchboard, switchboard-sio, switchboard-pusher,
    /// switchboard-protobuf, switchboard-uni, switchboard-deflate, switchboard-delta, floor,
    /// socketio, node-ws,
    /// sockudo, switchboard-redis, switchboard-redis-2nodes, switchboard-redis-6nodes).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "switchboard,switchboard-sio,floor,socketio"
    )]
    targets: Vec<String>,
    /// Scenarios, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "idle,broadcast,chat,connect"
    )]
    scenarios: Vec<ScenarioKind>,
    /// Runs of each scenario and target (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tiny sizes for CI: 200 connections, 3 seconds, one run unless --runs is given.
    #[arg(long)]
    quick: bool,
    /// Multiply every connection count by this.
    #[arg(long)]
    scale: Option<f64>,
    /// Idle connections (2 subscriptions each).
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Subscribers of the broadcast channel.
    #[arg(long)]
    broadcast_subscribers: Option<usize>,
    /// Chat rooms.
    #[arg(long)]
    chat_rooms: Option<usize>,
    /// Users per chat room.
    #[arg(long)]
    room_size: Option<usize>,
    /// Connects in the connect storm.
    #[arg(long)]
    connect_connections: Option<usize>,
    /// Measured seconds of idle, broadcast and chat.
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds before measuring.
    #[arg(long)]
    warmup: Option<f64>,
    /// Broadcast publications in flight.
    #[arg(long)]
    window: Option<usize>,
    /// Broadcast publish requests in flight at once (default 4).
    #[arg(long)]
    publishers: Option<usize>,
    /// Payload size in bytes.
    #[arg(long)]
    payload: Option<usize>,
    /// Client worker processes (at least; more when one would exceed 9,000 connections).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N for the client sockets.
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Connects in flight per worker.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Fail when any run failed (CI), not only when every run did.
    #[arg(long)]
    strict: bool,
    /// Results directory.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[command(flatten)]
    outputs: Outputs,
    /// The switchboard binary (default: beside this one).
    #[arg(long)]
    switchboard_bin: Option<PathBuf>,
    /// The floor binary (default: beside this one).
    #[arg(long)]
    floor_bin: Option<PathBuf>,
    /// The Node peers' directory (default: bench/node of this repository).
    #[arg(long)]
    node_dir: Option<PathBuf>,
    /// The sockudo binary (default: $SOCKUDO_BIN, else `sockudo` on PATH; without it the
    /// sockudo target is reported as not measured).
    #[arg(long)]
    sockudo_bin: Option<PathBuf>,
    /// redis-server for the Redis targets (default: from PATH).
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// Ports the Redis targets' redis-server may listen on, FIRST-LAST (default: any free
    /// port).
    #[arg(long, value_parser = parse_port_range)]
    redis_ports: Option<(u16, u16)>,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FIRST-LAST, e.g. 19500-19999")?;
    let first: u16 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let last: u16 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if first == 0 || last < first {
        return Err(format!("{s}: not a range of ports"));
    }
    Ok((first, last))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Worker { spec } => worker::main(&spec),
        Cmd::Report { from, out, outputs } => {
            let text =
                std::fs::read_to_string(&from).with_context(|| from.display().to_string())?;
            let report: Report = serde_json::from_str(&text)?;
            write_outputs(&report, &out, &outputs)
        }
        Cmd::Run(args) => {
            procfs::raise_open_files_limit();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run(*args))
        }
    }
}

fn sizes(args: &RunArgs) -> Sizes {
    let mut s = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(f) = args.scale {
        s = s.scaled(f);
    }
    let set = |slot: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut s.idle_connections, args.idle_connections);
    set(&mut s.broadcast_subscribers, args.broadcast_subscribers);
    set(&mut s.chat_rooms, args.chat_rooms);
    set(&mut s.room_size, args.room_size);
    set(&mut s.connect_connections, args.connect_connections);
    set(&mut s.window, args.window);
    set(&mut s.publishers, args.publishers);
    set(&mut s.payload, args.payload);
    if let Some(d) = args.duration {
        s.duration = Duration::from_secs_f64(d);
    }
    if let Some(d) = args.warmup {
        s.warmup = Duration::from_secs_f64(d);
    }
    s
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for name in &args.targets {
        let Some(t) = target::find(name) else {
            bail!(
                "unknown target {name:?}; known: {}",
                target::TARGETS
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        targets.push(t);
    }
    let mut programs = Programs::beside_self();
    if let Some(p) = &args.switchboard_bin {
        programs.switchboard = p.clone();
    }
    if let Some(p) = &args.floor_bin {
        programs.floor = p.clone();
    }
    if let Some(p) = &args.node_dir {
        programs.node_dir = p.clone();
    }
    if let Some(p) = &args.redis_server {
        programs.redis_server = p.clone();
    }
    if let Some(p) = &args.sockudo_bin {
        programs.sockudo = Some(p.clone());
    }
    let runs = if args.quick && !std::env::args().any(|a| a.starts_with("--runs")) {
        1
    } else {
        args.runs.max(1)
    };
    std::fs::create_dir_all(&args.out)?;
    let setup = Setup {
        sizes: sizes(&args),
        workers: args.workers.max(1),
        sources: args.sources.max(1),
        connect_concurrency: args.connect_concurrency,
        programs,
        log_dir: args.out.join("logs"),
        redis_ports: args.redis_ports,
    };
    let command = std::iter::once("switchboard-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut report = Report {
        date: report::today(),
        command,
        machine: procfs::MachineInfo::read(),
        sizes: setup.sizes.clone(),
        runs_per_scenario: runs,
        targets: targets.iter().map(|t| t.name.to_owned()).collect(),
        runs: Vec::new(),
    };
    // Targets interleave within each run, so the machine's noise hits them alike, and
    // each run starts one target later: no target always follows the same one (the
    // teardown of a peer's 15,000 connections, say).
    for run in 1..=runs {
        for &kind in &args.scenarios {
            for k in 0..targets.len() {
                let t = targets[(k + run - 1) % targets.len()];
                let r = coordinator::run_once(t, kind, run, &setup).await;
                eprintln!("{}", one_line(&r));
                let path = args
                    .out
                    .join(format!("{}-{}-{run}.json", t.name, kind.name()));
                std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
                report.runs.push(r);
            }
        }
    }
    write_outputs(&report, &args.out, &args.outputs)?;
    let failed = report.runs.iter().filter(|r| r.error.is_some()).count();
    let measured = report.runs.iter().filter(|r| r.skipped.is_none()).count();
    if failed > 0 && failed == measured {
        bail!("every run failed");
    }
    if args.strict && failed > 0 {
        bail!("{failed} of {} runs failed", report.runs.len());
    }
    Ok(())
}

fn one_line(r: &coordinator::RunResult) -> String {
    if let Some(why) = &r.skipped {
        return format!(
            "{} {} #{}: not measured: {why}",
            r.target, r.scenario, r.run
        );
    }
    if let Some(e) = &r.error {
        return format!("{} {} #{}: FAILED: {e}", r.target, r.scenario, r.run);
    }
    let mut s = format!(
        "{} {} #{}: {} connected in {:.2}s ({:.0}/s, machine {:.2} cores), rss/conn {:.0} B",
        r.target,
        r.scenario,
        r.run,
        r.connect.ok,
        r.connect.seconds,
        r.connect.per_second,
        r.connect.machine_busy_cores,
        r.memory.per_connection_bytes
    );
    if let Some(b) = r.memory.per_connection_subscribed_bytes {
        s += &format!(" ({b:.0} B subscribed)");
    }
    if let Some(m) = &r.measure {
        if m.delivered > 0 {
            s += &format!(
                ", {:.0} deliveries/s, p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, {:.2} µs CPU/delivery",
                m.deliveries_per_second,
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.latency_ms.p999,
                m.server_cpu_us_per_delivery.unwrap_or(0.0)
            );
            if let Some(redis) = m.redis_cpu_us_per_delivery {
                s += &format!(" + {redis:.2} µs Redis");
            }
            if let Some(bytes) = m.server_bytes_per_delivery {
                s += &format!(", {bytes:.0} B sent/delivery");
            }
            if let Some(d) = &r.deltas {
                s += &format!(" ({} as deltas, {} full)", d.deltas, d.full);
            }
        }
        s += &format!(
            ", server {:.2} cores, clients {:.2}, machine {:.2}",
            m.server_cores, m.clients_cores, m.machine_busy_cores
        );
        if let Some(redis) = m.redis_cores {
            s += &format!(", Redis {redis:.2} cores");
        }
    }
    if r.connect.listen_overflows > 0 {
        s += &format!(", {} listen-queue overflows", r.connect.listen_overflows);
    }
    if r.closed > 0 {
        s += &format!(", {} closed by server", r.closed);
    }
    s
}

fn write_outputs(report: &Report, dir: &std::path::Path, outputs: &Outputs) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let medians = report::medians(&report.runs);
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&medians)?,
    )?;
    let table = report::table(report, &medians);
    std::fs::write(dir.join("table.md"), &table)?;
    println!("{table}");
    if let Some(doc) = &outputs.doc {
        report::update_doc(doc, outputs.section.as_deref(), report, &table)?;
    }
    if let Some(charts) = &outputs.charts {
        chart::write_charts(charts, report, &medians)?;
    }
    Ok(())
}
