//! A real redis-server (or a real 3-master Redis Cluster) per test, on free ports,
//! killed on drop; and configs of nodes that share it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::config::EngineKind;
use switchboard::Config;

/// One redis-server process without persistence (a restart loses every key).
pub struct RedisServer {
    pub port: u16,
    /// Extra arguments (cluster mode), and the directory it runs in.
    extra: Vec<String>,
    dir: Option<std::path::PathBuf>,
    child: Option<Child>,
    /// Holds the port while the server is down, so a parallel test's server can not
    /// take it (and the nodes reconnect to a stranger).
    hold: Option<TcpListener>,
}

/// Whether redis-server is installed; says loudly when it is not.
fn installed() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED: redis-server is not installed; the Redis engine is NOT tested. \
             scripts/test.sh installs it (apt-get install redis-server). ***\n"
        );
    }
    ok
}

/// Whether the installed redis-server has sharded pub/sub (Redis 7); says loudly when
/// it has not.
fn sharded_pubsub() -> bool {
    let version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let major = version
        .split_once("v=")
        .and_then(|(_, v)| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 7 {
        eprintln!(
            "\n*** SKIPPED: redis-server {version:?} predates Redis 7; the Redis Cluster \
             engine is NOT tested. ***\n"
        );
    }
    major >= 7
}

/// A port nobody listens on. `SWITCHBOARD_TEST_REDIS_PORTS=6390-6399` keeps the tests
/// within a range (shared machines); by default the kernel picks one.
fn free_port() -> u16 {
    if let Ok(range) = std::env::var("SWITCHBOARD_TEST_REDIS_PORTS") {
        if let Some((lo, hi)) = range.split_once('-') {
            let (lo, hi): (u16, u16) = (lo.parse().expect("port"), hi.parse().expect("port"));
            // Tests run in parallel: start at a random port of the range.
            let n = hi - lo + 1;
            let start = rand_index(n);
            for i in 0..n {
                let port = lo + (start + i) % n;
                if TcpListener::bind(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port)).is_err()
                {
                    return port;
                }
            }
            panic!("no free port in {range}");
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn rand_index(n: u16) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    ((nanos ^ std::process::id()) % u32::from(n)) as u16
}

impl RedisServer {
    /// Starts a redis-server, or returns `None` (after a loud message) when it is not
    /// installed.
    pub fn start() -> Option<Self> {
        if !installed() {
            return None;
        }
        Some(Self::start_with(&[], None))
    }

    fn start_with(extra: &[String], dir: Option<&std::path::Path>) -> Self {
        let cluster = extra.iter().any(|a| a == "--cluster-enabled");
        for _ in 0..5 {
            // A cluster node also listens on its bus port, port + 10000.
            let port = loop {
                let port = free_port();
                let bus_free = port
                    .checked_add(10000)
                    .is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok());
                if !cluster || bus_free {
                    break port;
                }
            };
            let mut server = RedisServer {
                port,
                extra: extra.to_vec(),
                dir: dir.map(|d| d.join(port.to_string())),
                child: None,
                hold: None,
            };
            if let Some(d) = &server.dir {
                std::fs::create_dir_all(d).expect("redis dir");
            }
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        let child = cmd
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                // Exited: the port was taken meanwhile.
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a redis-server that also serves TLS (on the returned port) with a
    /// certificate for `localhost` signed by a fresh CA, whose PEM is written to
    /// `dir/ca.pem`. Clients must present a certificate when `client_certs` (written
    /// to `dir/client.pem`, `dir/client.key`, signed by the same CA).
    pub fn start_tls(dir: &std::path::Path, client_certs: bool) -> Option<(Self, u16)> {
        if !installed() {
            return None;
        }
        std::fs::create_dir_all(dir).expect("tls dir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // OpenSSL (redis-server checking the client's certificate) does not find an
        // issuer with an empty name.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issue = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pem");
            path.to_string_lossy().into_owned()
        };
        let ca_pem = write("ca.pem", &ca.pem());
        let (cert, key) = issue("localhost");
        let (client_cert, client_key) = issue("switchboard");
        write("client.pem", &client_cert);
        write("client.key", &client_key);
        let tls_port = free_port();
        let extra: Vec<String> = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &write("server.pem", &cert),
            "--tls-key-file",
            &write("server.key", &key),
            "--tls-ca-cert-file",
            &ca_pem,
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        Some((Self::start_with(&extra, None), tls_port))
    }

    /// Kills the server (SIGKILL): every key is lost. The port stays reserved.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.hold.is_none() {
            self.hold = TcpListener::bind(("127.0.0.1", self.port)).ok();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.hold = None;
        assert!(self.spawn(), "redis-server did not restart");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters without replicas (`redis-server --cluster-enabled
/// yes` three times, the slots split in three, the nodes introduced to each other),
/// ready once every node reports `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the cluster, or returns `None` (after a loud message) when redis-server
    /// is not installed.
    pub fn start() -> Option<Self> {
        if !installed() || !sharded_pubsub() {
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sb-redis-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]
            .map(String::from)
            .to_vec();
        // The cluster bus listens on port + 10000: a server whose bus port was taken
        // meanwhile exits at once and start_with tries another port.
        let nodes: Vec<_> = (0..3)
            .map(|_| RedisServer::start_with(&extra, Some(&dir)))
            .collect();
        let cluster = RedisCluster { nodes, dir };
        cluster.form();
        Some(cluster)
    }

    fn form(&self) {
        let conns: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                ::redis::Client::open(n.url())
                    .and_then(|c| c.get_connection())
                    .expect("connect to a cluster node")
            })
            .collect();
        let per_node = 16384 / 3;
        for (i, mut conn) in conns.into_iter().enumerate() {
            let lo = i * per_node;
            let hi = if i == 2 { 16383 } else { lo + per_node - 1 };
            ::redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(lo)
                .arg(hi)
                .query::<()>(&mut conn)
                .expect("CLUSTER ADDSLOTSRANGE");
            if i > 0 {
                ::redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(self.nodes[0].port)
                    .query::<()>(&mut conn)
                    .expect("CLUSTER MEET");
            }
        }
        self.wait_ok();
    }

    /// Kills every node (SIGKILL: all data is lost); the ports stay reserved.
    pub fn kill(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every node again, empty but with its cluster configuration (node ids and
    /// slots, kept in `nodes.conf`), and waits for `cluster_state:ok`.
    pub fn restart(&mut self) {
        for n in &mut self.nodes {
            n.restart();
        }
        self.wait_ok();
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.nodes.iter().all(|n| {
            ::redis::Client::open(n.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| ::redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' URLs, comma-separated (as `redis.url` takes them).
    pub fn url(&self) -> String {
        let urls: Vec<_> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which Redis a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Topology {
    /// One redis-server.
    Standalone,
    /// A 3-master Redis Cluster.
    Cluster,
}

/// A running Redis of either topology.
pub enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    /// Starts one, or returns `None` when redis-server is not installed.
    pub fn start(topology: Topology) -> Option<Self> {
        Some(match topology {
            Topology::Standalone => Redis::Standalone(RedisServer::start()?),
            Topology::Cluster => Redis::Cluster(RedisCluster::start()?),
        })
    }

    /// `redis.url`.
    pub fn url(&self) -> String {
        match self {
            Redis::Standalone(s) => s.url(),
            Redis::Cluster(c) => c.url(),
        }
    }

    /// Kills it (every server of a cluster): all data is lost.
    pub fn kill(&mut self) {
        match self {
            Redis::Standalone(s) => s.kill(),
            Redis::Cluster(c) => c.kill(),
        }
    }

    /// Starts it again, empty, on the same ports.
    pub fn restart(&mut self) {
        match self {
            Redis::Standalone(s) => s.restart(),
            Redis::Cluster(c) => c.restart(),
        }
    }

    /// `redis.cluster`.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }

    /// Points a `[redis]` config at it; at one node of a cluster only, whose other
    /// nodes the engine must discover.
    pub fn configure(&self, c: &mut switchboard::config::RedisConfig) {
        c.url = match self {
            Redis::Standalone(s) => s.url(),
            Redis::Cluster(c) => c.nodes[0].url(),
        };
        c.cluster = self.is_cluster();
    }

    /// The fields of hash `key`, from whichever server holds it.
    pub async fn hash(&self, key: &str) -> std::collections::HashMap<String, String> {
        let servers = match self {
            Redis::Standalone(s) => std::slice::from_ref(s),
            Redis::Cluster(c) => c.nodes.as_slice(),
        };
        for s in servers {
            let client = ::redis::Client::open(s.url()).expect("redis url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to redis");
            // A cluster node not holding the key's slot answers MOVED.
            if let Ok(fields) = ::redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut conn)
                .await
            {
                return fields;
            }
        }
        panic!("no server holds {key}");
    }

    /// How many connections subscribe to pub/sub channel `name` (sharded channels on
    /// a cluster, summed over its nodes).
    pub async fn subscribers(&self, name: &str) -> u64 {
        let (servers, command) = match self {
            Redis::Standalone(s) => (std::slice::from_ref(s), "NUMSUB"),
            Redis::Cluster(c) => (c.nodes.as_slice(), "SHARDNUMSUB"),
        };
        let mut total = 0;
        for s in servers {
            let client = ::redis::Client::open(s.url()).expect("redis url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to redis");
            let (_, n): (String, u64) = ::redis::cmd("PUBSUB")
                .arg(command)
                .arg(name)
                .query_async(&mut conn)
                .await
                .expect("PUBSUB");
            total += n;
        }
        total
    }
}

/// The test config on the Redis engine at `redis`, with a short presence lease so
/// crash tests take a second, not half a minute.
pub fn config(redis: &impl Target) -> Config {
    let mut c = super::config();
    c.engine = EngineKind::Redis;
    redis.configure(&mut c.redis);
    c.presence_lease = Duration::from_millis(600);
    c
}

/// What a switchboard process can be pointed at: one redis-server or a cluster.
pub trait Target {
    /// The `[redis] url` value.
    fn url(&self) -> String;
    /// The `[redis] cluster` value.
    fn is_cluster(&self) -> bool;
    /// Points an in-process node's `[redis]` settings here.
    fn configure(&self, c: &mut switchboard::config::RedisConfig) {
        c.url = self.url();
        c.cluster = self.is_cluster();
    }
}

impl Target for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn is_cluster(&self) -> bool {
        false
    }
}

impl Target for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
    fn is_cluster(&self) -> bool {
        Redis::is_cluster(self)
    }
    fn configure(&self, c: &mut switchboard::config::RedisConfig) {
        Redis::configure(self, c)
    }
}

pub use super::process::Process;

impl Process {
    /// A node on `redis` with a `chat` namespace (presence, join/leave, history).
    pub async fn start(redis: &impl Target) -> Process {
        Self::start_with(redis, "").await
    }

    /// As [`Process::start`], with `extra` TOML appended (more tables).
    pub async fn start_with(redis: &impl Target, extra: &str) -> Process {
        Process::start_toml(&format!(
            "engine = \"redis\"\npresence_lease = \"600ms\"\n\
             [redis]\nurl = \"{}\"\ncluster = {}\n{extra}",
            redis.url(),
            redis.is_cluster(),
        ))
        .await
    }
}

/// `n` nodes on `redis`, named `node-0`, `node-1`, ..., each ready.
pub async fn nodes(redis: &impl Target, n: usize) -> Vec<super::TestServer> {
    nodes_with(redis, n, |_| {}).await
}

/// As [`nodes`], with `tweak` applied to each node's config.
pub async fn nodes_with(
    redis: &impl Target,
    n: usize,
    tweak: impl Fn(&mut Config),
) -> Vec<super::TestServer> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut c = config(redis);
        c.node_name = format!("node-{i}");
        tweak(&mut c);
        let server = super::start(c).await;
        wait_ready(&server.http_url("")).await;
        out.push(server);
    }
    out
}

/// Waits until `/ready` answers `want` (200 or 503).
pub async fn wait_status(base: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + super::TIMEOUT;
    loop {
        let status = reqwest::get(format!("{base}/ready"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {status}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `/ready` answers 200.
pub async fn wait_ready(base: &str) {
    wait_status(base, 200).await;
}
