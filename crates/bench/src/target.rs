//! The servers measured side by side, and how the tool starts, watches and stops them.
//!
//! Adding a target is one entry in [`TARGETS`]: a name, the server process to start, the
//! wire protocol its clients speak, and whether it is one process or several switchboard
//! nodes on a Redis the tool starts itself ([`Deployment`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::Proto;
use crate::procfs;

/// Which server process a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerKind {
    /// `switchboard serve` with a generated config; publishes through its server API.
    Switchboard,
    /// `bench-floor`: the bare tokio-tungstenite broadcast server.
    Floor,
    /// `node bench/node/server.js`: socket.io 4.8.
    SocketIo,
    /// `node bench/node/ws-server.js`: a plain `ws` server that broadcasts as the floor
    /// does, in Node.
    NodeWs,
    /// `sockudo --config <generated>`: the Rust Pusher-compatible server, one app.
    Sockudo,
}

/// How many server processes a target runs, and what they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    /// One process on its own (switchboard's memory engine, the floor, node).
    Single,
    /// `nodes` switchboard processes with `engine = "redis"` on one redis-server that
    /// the tool starts for the run. Connection `i` goes to node `i % nodes`;
    /// publications go through the first node.
    Redis { nodes: usize },
}

impl Cluster {
    /// Server processes of the target (Redis not counted).
    pub(crate) fn nodes(self) -> usize {
        match self {
            Cluster::Single => 1,
            Cluster::Redis { nodes } => nodes.max(1),
        }
    }
}

/// Which way the report's ratio column between switchboard and this target reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ratio {
    /// `switchboard ÷ target`: a peer that switchboard is measured against.
    SubjectOverTarget,
    /// `target ÷ switchboard`: a way of running switchboard, priced against the memory
    /// engine on one node (the Redis goals read "≤ 1.5× the memory engine").
    TargetOverSubject,
    /// `sibling ÷ target`: a peer of one of switchboard's transports (sockudo beside
    /// switchboard-pusher), shown when the sibling is in the run.
    SiblingOverTarget(&'static str),
}

/// A server and the protocol its load clients speak.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) server: ServerKind,
    pub(crate) proto: Proto,
    pub(crate) cluster: Cluster,
    pub(crate) ratio: Ratio,
}

/// Every known target, in report order (the first is the one compared to the others).
pub(crate) const TARGETS: &[Target] = &[
    Target {
        name: "switchboard",
        server: ServerKind::Switchboard,
        proto: Proto::Centrifuge,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "switchboard-sio",
        server: ServerKind::Switchboard,
        proto: Proto::SocketIo,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: PUSHER_TARGET,
        server: ServerKind::Switchboard,
        proto: Proto::Pusher,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "switchboard-protobuf",
        server: ServerKind::Switchboard,
        proto: Proto::CentrifugeProtobuf,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "switchboard-uni",
        server: ServerKind::Switchboard,
        proto: Proto::Uni,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "floor",
        server: ServerKind::Floor,
        proto: Proto::Floor,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "socketio",
        server: ServerKind::SocketIo,
        proto: Proto::SocketIo,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "node-ws",
        server: ServerKind::NodeWs,
        proto: Proto::Floor,
        cluster: Cluster::Single,
        ratio: Ratio::SubjectOverTarget,
    },
    Target {
        name: "sockudo",
        server: ServerKind::Sockudo,
        proto: Proto::Pusher,
        cluster: Cluster::Single,
        ratio: Ratio::SiblingOverTarget(PUSHER_TARGET),
    },
    Target {
        name: DEFLATE_TARGET,
        server: ServerKind::Switchboard,
        proto: Proto::Centrifuge,
        cluster: Cluster::Single,
        ratio: Ratio::TargetOverSubject,
    },
    Target {
        name: DELTA_TARGET,
        server: ServerKind::Switchboard,
        proto: Proto::CentrifugeDelta,
        cluster: Cluster::Single,
        ratio: Ratio::TargetOverSubject,
    },
    Target {
        name: REDIS_TARGET,
        server: ServerKind::Switchboard,
        proto: Proto::Centrifuge,
        cluster: Cluster::Redis { nodes: 1 },
        ratio: Ratio::TargetOverSubject,
    },
    Target {
        name: REDIS_2_NODES_TARGET,
        server: ServerKind::Switchboard,
        proto: Proto::Centrifuge,
        cluster: Cluster::Redis { nodes: 2 },
        ratio: Ratio::TargetOverSubject,
    },
    Target {
        name: REDIS_6_NODES_TARGET,
        server: ServerKind::Switchboard,
        proto: Proto::Centrifuge,
        cluster: Cluster::Redis { nodes: 6 },
        ratio: Ratio::TargetOverSubject,
    },
];

/// Six switchboard nodes on one Redis: 100,000 connections where one process may open
/// at most 20,000 files (about 16,700 connections a node).
pub(crate) const REDIS_6_NODES_TARGET: &str = "switchboard-redis-6nodes";

/// switchboard's Pusher transport, with pusher-protocol load clients.
pub(crate) const PUSHER_TARGET: &str = "switchboard-pusher";

/// switchboard with `websocket.compression` on, its clients negotiating
/// permessage-deflate: the price of compression, and the bytes it saves.
pub(crate) const DEFLATE_TARGET: &str = "switchboard-deflate";

/// switchboard with fossil deltas allowed in namespace `bench` (with the history they
/// need), its clients subscribing with `delta: "fossil"` and applying each delta: the
/// price of delta compression, and the bytes it saves.
pub(crate) const DELTA_TARGET: &str = "switchboard-delta";

/// switchboard with `engine = "redis"`, one node: the price of Redis mode.
pub(crate) const REDIS_TARGET: &str = "switchboard-redis";

/// Two switchboard nodes on one Redis, clients spread over both.
pub(crate) const REDIS_2_NODES_TARGET: &str = "switchboard-redis-2nodes";

/// What a switchboard target turns on beyond the bench's base configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// `websocket.compression`: permessage-deflate for the clients that offer it.
    pub(crate) deflate: bool,
    /// Namespace `bench` keeps history and allows fossil deltas.
    pub(crate) delta: bool,
}

impl Target {
    /// Whether the server compresses and the clients negotiate permessage-deflate.
    pub(crate) fn deflate(self) -> bool {
        self.name == DEFLATE_TARGET
    }

    /// The configuration the target's switchboard runs with.
    pub(crate) fn features(self) -> Features {
        Features {
            deflate: self.deflate(),
            delta: self.proto == Proto::CentrifugeDelta,
        }
    }
}

/// Looks a target up by name.
pub(crate) fn find(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// Where the servers' programs are.
#[derive(Debug, Clone)]
pub(crate) struct Programs {
    pub(crate) switchboard: PathBuf,
    pub(crate) floor: PathBuf,
    pub(crate) node_dir: PathBuf,
    /// redis-server, for the Redis targets (found on `PATH` by default).
    pub(crate) redis_server: PathBuf,
    /// sockudo (`$SOCKUDO_BIN`, else found on `PATH`); none: the target is reported
    /// as not measured.
    pub(crate) sockudo: Option<PathBuf>,
}

impl Programs {
    /// Binaries next to this one (same cargo profile), the Node peer in the repository.
    pub(crate) fn beside_self() -> Self {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Self {
            switchboard: dir.join("switchboard"),
            floor: dir.join("bench-floor"),
            node_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/node"),
            redis_server: PathBuf::from("redis-server"),
            sockudo: std::env::var_os("SOCKUDO_BIN")
                .map(PathBuf::from)
                .or_else(|| on_path("sockudo")),
        }
    }

    /// Why `kind` can not run here (its program is not installed), if it can not:
    /// such a target is reported as not measured rather than as failed.
    pub(crate) fn missing(&self, kind: ServerKind) -> Option<String> {
        match kind {
            ServerKind::Sockudo => match &self.sockudo {
                None => Some(
                    "sockudo not found (cargo install sockudo --locked; then put it on PATH, \
                     set SOCKUDO_BIN or pass --sockudo-bin)"
                        .to_owned(),
                ),
                Some(p) if !p.is_file() => Some(format!("sockudo not found at {}", p.display())),
                Some(_) => None,
            },
            _ => None,
        }
    }
}

/// `program` in one of `PATH`'s directories.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Secrets shared by the tool and the servers it starts.
pub(crate) const SECRET: &str = "switchboard-bench-secret";
pub(crate) const API_KEY: &str = "switchboard-bench-api-key";

/// Where the switchboard nodes of a Redis target find their Redis.
#[derive(Debug, Clone)]
pub(crate) struct RedisLink {
    pub(crate) url: String,
    pub(crate) node_name: String,
}

/// A running server process.
pub(crate) struct ServerProcess {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free port in `first..=last`, or any free port when no range is given (a machine
/// shared by several users may hand each a range).
fn free_port_in(range: Option<(u16, u16)>) -> anyhow::Result<u16> {
    let Some((first, last)) = range else {
        return free_port();
    };
    // Start at a different place per process so parallel runs rarely collide.
    let span = u32::from(last.saturating_sub(first)) + 1;
    let offset = std::process::id() % span;
    for k in 0..span {
        let port = first + ((offset + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {first}-{last}")
}

fn switchboard_config(addr: SocketAddr, redis: Option<&RedisLink>, features: Features) -> String {
    let websocket = if features.deflate {
        "\n[websocket]\ncompression = true\n"
    } else {
        ""
    };
    // Deltas need history: a short one, enough to number the stream.
    let deltas = if features.delta {
        "history_size = 10\nhistory_ttl = \"60s\"\nallowed_delta_types = [\"fossil\"]\n"
    } else {
        ""
    };
    let engine = match redis {
        None => String::new(),
        Some(link) => format!(
            "engine = \"redis\"\nnode_name = \"{}\"\n\n[redis]\nurl = \"{}\"\nprefix = \"bench\"\n",
            link.node_name, link.url
        ),
    };
    format!(
        r#"# Generated by switchboard-bench.
bind = "{addr}"
token_hmac_secret = "{SECRET}"
api_key = "{API_KEY}"
auto_subscribe = []
{engine}
[limits]
# The WebSocket fallback publisher subscribes to every chat room and publishes
# thousands of times a second.
max_channels_per_connection = 100000
max_connections_per_user = 0
command_rate = 1000000
command_burst = 1000000

[namespaces.bench]
subscribe = ["*"]
publish = true
{deltas}
# The switchboard-pusher target's clients: public channels of namespace bench.
[pusher]
app_id = "{PUSHER_APP_ID}"
key = "{PUSHER_KEY}"
secret = "{PUSHER_SECRET}"
{websocket}"#
    )
}

/// sockudo's configuration: the Pusher app switchboard-pusher's clients expect (same id,
/// key and secret, a `bench` namespace so that `bench:…` names are valid), the memory
/// drivers of a single node, and no rate limits or metrics listener (sockudo's defaults
/// allow 20 connects a minute per address and bind a metrics port).
fn sockudo_config(addr: SocketAddr) -> String {
    format!(
        r#"# Generated by switchboard-bench.
host = "{ip}"
port = {port}
debug = false
mode = "production"

[app_manager]
driver = "memory"

[[app_manager.array.apps]]
id = "{PUSHER_APP_ID}"
key = "{PUSHER_KEY}"
secret = "{PUSHER_SECRET}"
enabled = true
enable_client_messages = false
max_connections = 0
max_client_events_per_second = 1000000

[[app_manager.array.apps.channel_namespaces]]
name = "bench"

[adapter]
driver = "local"

[cache]
driver = "memory"

[queue]
driver = "memory"

[metrics]
enabled = false

[rate_limiter]
enabled = false
"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// The Pusher app of the Pusher-protocol targets (switchboard's `[pusher]`, sockudo's app).
pub(crate) const PUSHER_APP_ID: &str = "bench";
pub(crate) const PUSHER_KEY: &str = "bench-key";
pub(crate) const PUSHER_SECRET: &str = "bench-secret";

/// Waits until `addr` accepts connections, failing early when `child` exits.
async fn wait_listening(
    child: &mut tokio::process::Child,
    what: &str,
    addr: SocketAddr,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start ({status}); see {}", log.display());
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr}; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_files(log: &Path) -> anyhow::Result<(std::fs::File, std::fs::File)> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    let err = out.try_clone()?;
    Ok((out, err))
}

impl ServerProcess {
    /// Starts the server of `kind` on a fresh port, logging to `log`, and waits until it
    /// accepts connections. `redis` makes a switchboard server a node of a Redis engine;
    /// `features` says what else its configuration turns on.
    pub(crate) async fn start(
        kind: ServerKind,
        programs: &Programs,
        log: &Path,
        redis: Option<&RedisLink>,
        features: Features,
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let (out, err) = log_files(log)?;
        let mut cmd = match kind {
            ServerKind::Switchboard => {
                let config = log.with_extension("toml");
                std::fs::write(&config, switchboard_config(addr, redis, features))?;
                let mut c = tokio::process::Command::new(&programs.switchboard);
                c.arg("serve").arg("--config").arg(&config);
                c.env("SWITCHBOARD_LOG", "warn");
                c
            }
            ServerKind::Floor => {
                let mut c = tokio::process::Command::new(&programs.floor);
                c.arg("--bind").arg(addr.to_string());
                c
            }
            ServerKind::SocketIo | ServerKind::NodeWs => {
                let (script, module) = match kind {
                    ServerKind::SocketIo => ("server.js", "socket.io"),
                    _ => ("ws-server.js", "ws"),
                };
                if !programs.node_dir.join("node_modules").join(module).exists() {
                    bail!(
                        "{}/node_modules is missing: run `npm ci` there (scripts/bench.sh does)",
                        programs.node_dir.display()
                    );
                }
                let mut c = tokio::process::Command::new("node");
                c.arg(script).current_dir(&programs.node_dir);
                c.env("PORT", addr.port().to_string());
                c.env("BENCH_SECRET", SECRET);
                c
            }
            ServerKind::Sockudo => {
                let Some(program) = &programs.sockudo else {
                    bail!("sockudo not found");
                };
                let config = log.with_extension("toml");
                std::fs::write(&config, sockudo_config(addr))?;
                let mut c = tokio::process::Command::new(program);
                c.arg("--config").arg(&config);
                // Its environment overrides the file: keep the bench's own values.
                c.env("HOST", addr.ip().to_string());
                c.env("PORT", addr.port().to_string());
                c.env("RUST_LOG", "warn");
                // It reads config/config.toml of its working directory first.
                if let Some(dir) = log.parent() {
                    c.current_dir(dir);
                }
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {kind:?}"))?;
        let pid = child.id().context("server pid")?;
        wait_listening(&mut child, &format!("{kind:?}"), addr, log).await?;
        Ok(Self { child, pid, addr })
    }

    /// Whether the server still runs.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the server (it closes its side of every connection first, so the TIME_WAIT
    /// states land on the server's port rather than on the clients' ephemeral ports).
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A redis-server started for one run: empty, no persistence, on loopback.
pub(crate) struct RedisProcess {
    server: ServerProcess,
}

impl RedisProcess {
    async fn start(program: &Path, ports: Option<(u16, u16)>, log: &Path) -> anyhow::Result<Self> {
        let port = free_port_in(ports)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (out, err) = log_files(log)?;
        let mut child = tokio::process::Command::new(program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (Debian: apt-get install redis-server)",
                    program.display()
                )
            })?;
        let pid = child.id().context("redis-server pid")?;
        wait_listening(&mut child, "redis-server", addr, log).await?;
        Ok(Self {
            server: ServerProcess { child, pid, addr },
        })
    }
}

/// The processes of one target for one run: its server, or its switchboard nodes and
/// their Redis.
pub(crate) struct Deployment {
    pub(crate) nodes: Vec<ServerProcess>,
    redis: Option<RedisProcess>,
}

impl Deployment {
    /// Starts `target`'s processes, logging to `log` (`log` with `-node1`, `-redis`, …
    /// for the further ones).
    pub(crate) async fn start(
        target: Target,
        programs: &Programs,
        log: &Path,
        redis_ports: Option<(u16, u16)>,
    ) -> anyhow::Result<Self> {
        let sibling = |suffix: &str| {
            let stem = log
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            log.with_file_name(format!("{stem}-{suffix}.log"))
        };
        let mut deployment = Self {
            nodes: Vec::new(),
            redis: None,
        };
        match target.cluster {
            Cluster::Single => {
                let server =
                    ServerProcess::start(target.server, programs, log, None, target.features())
                        .await?;
                deployment.nodes.push(server);
            }
            Cluster::Redis { nodes } => {
                let redis =
                    RedisProcess::start(&programs.redis_server, redis_ports, &sibling("redis"))
                        .await?;
                let url = format!("redis://{}", redis.server.addr);
                deployment.redis = Some(redis);
                for k in 0..nodes.max(1) {
                    let link = RedisLink {
                        url: url.clone(),
                        node_name: format!("bench-node{k}"),
                    };
                    let log = if k == 0 {
                        log.to_path_buf()
                    } else {
                        sibling(&format!("node{k}"))
                    };
                    let started = ServerProcess::start(
                        target.server,
                        programs,
                        &log,
                        Some(&link),
                        target.features(),
                    )
                    .await;
                    match started {
                        Ok(node) => deployment.nodes.push(node),
                        Err(e) => {
                            deployment.stop().await;
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(deployment)
    }

    /// The address clients and publishers reach each node at.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// CPU seconds of every node together (Redis not included).
    pub(crate) fn server_cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(|n| procfs::cpu_seconds(n.pid)).sum()
    }

    /// CPU seconds of the Redis, if the target has one.
    pub(crate) fn redis_cpu_seconds(&self) -> Option<f64> {
        self.redis
            .as_ref()
            .map(|r| procfs::cpu_seconds(r.server.pid))
    }

    /// VmRSS of every node together.
    pub(crate) fn rss_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| procfs::rss_bytes(n.pid)).sum()
    }

    /// VmHWM of every node together.
    pub(crate) fn peak_rss_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| procfs::peak_rss_bytes(n.pid))
            .sum()
    }

    /// Bytes the nodes' sockets sent so far (Redis not included), if `ss` can tell.
    pub(crate) fn bytes_sent(&self) -> Option<u64> {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.addr.port()).collect();
        crate::sockets::bytes_sent(&ports)
    }

    /// VmRSS of the Redis, if the target has one.
    pub(crate) fn redis_rss_bytes(&self) -> Option<u64> {
        self.redis.as_ref().map(|r| procfs::rss_bytes(r.server.pid))
    }

    /// Whether every process still runs.
    pub(crate) fn running(&mut self) -> bool {
        self.nodes.iter_mut().all(ServerProcess::running)
            && self.redis.as_mut().is_none_or(|r| r.server.running())
    }

    /// Stops the nodes, then their Redis.
    pub(crate) async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
        if let Some(redis) = self.redis {
            redis.server.stop().await;
        }
    }
}
