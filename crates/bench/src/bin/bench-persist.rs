//! `bench-persist`: what persistence costs. Publications per second through the server
//! API into a channel with history, with persistence off, `flush` and `sync`, side by
//! side in one run (modes interleaved round by round, so the machine's noise hits them
//! alike), each on a fresh data directory.
//!
//! ```sh
//! cargo build --release -p switchboard -p switchboard-bench
//! target/release/bench-persist --seconds 10 --rounds 3 --concurrency 64
//! ```
//!
//! Every publisher is one keep-alive HTTP connection publishing in a loop (the next
//! request once the answer came), over `--channels` channels; in `sync` mode each answer
//! waits for the fsync, so concurrent publishers share commits.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

const API_KEY: &str = "bench-persist-key";

#[derive(Parser)]
#[command(
    name = "bench-persist",
    about = "Publications per second with and without persistence"
)]
struct Args {
    /// The switchboard binary.
    #[arg(long, default_value = "target/release/switchboard")]
    bin: PathBuf,
    /// Measured seconds per mode and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds (the table shows medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Channels published into (round-robin).
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Where data directories and configs go (a fresh one per mode and round).
    #[arg(long, default_value = "bench-results/persist")]
    work: PathBuf,
}

/// A persistence setting measured.
#[derive(Clone, Copy)]
enum Mode {
    Off,
    Flush,
    Sync,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Off, Mode::Flush, Mode::Sync];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off (memory only)",
            Mode::Flush => "flush (1 s)",
            Mode::Sync => "sync",
        }
    }

    fn toml(self, dir: &std::path::Path) -> String {
        let durability = match self {
            Mode::Off => return String::new(),
            Mode::Flush => "flush",
            Mode::Sync => "sync",
        };
        format!(
            "[persistence]\ndir = \"{}\"\ndurability = \"{durability}\"\n",
            dir.join("data").display()
        )
    }
}

/// One switchboard process, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(args: &Args, mode: Mode, dir: &std::path::Path) -> anyhow::Result<Server> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "api_key = \"{API_KEY}\"\ntoken_hmac_secret = \"bench\"\n\
             {}\n[namespaces.chat]\nsubscribe = [\"*\"]\nhistory_size = 100\nhistory_ttl = \"1h\"\n",
            mode.toml(dir)
        ),
    )?;
    let mut cmd = Command::new(&args.bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(name);
        }
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.bin.display()))?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("{}/ready", server.base))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("switchboard not ready at {}", server.base);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes from `concurrency` loops for `seconds`; returns publications per second.
async fn measure(args: &Args, base: &str) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for p in 0..args.concurrency {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let url = format!("{base}/api/publish");
        let channels = args.channels;
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < end {
                let body = format!(
                    "{{\"channel\":\"chat:{}\",\"data\":{{\"text\":\"a message of a typical chat size, about a hundred bytes long\",\"n\":{n}}}}}",
                    (p + n) % channels
                );
                n += 1;
                let ok = client
                    .post(&url)
                    .header("X-API-Key", API_KEY)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if Instant::now() >= measure_from && Instant::now() < end {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} publishes failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / args.seconds as f64)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 || args.concurrency == 0 || args.channels == 0 {
        bail!("--rounds, --concurrency and --channels must be at least 1");
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); Mode::ALL.len()];
    for round in 1..=args.rounds {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let dir = args.work.join(format!("round{round}-{i}"));
            let server = start(&args, mode, &dir).await?;
            let rate = measure(&args, &server.base).await?;
            drop(server);
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!(
                "round {round}: {:<18} {rate:>9.0} publications/s",
                mode.name()
            );
            results[i].push(rate);
        }
    }
    let off = median(&results[0]);
    println!(
        "| persistence | publications/s (median of {}) | vs off |",
        args.rounds
    );
    println!("|---|---:|---:|");
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let rate = median(&results[i]);
        println!("| {} | {rate:.0} | {:.2} |", mode.name(), rate / off);
    }
    Ok(())
}
