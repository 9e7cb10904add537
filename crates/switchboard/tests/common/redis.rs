//! A real redis-server per test, on a free port, killed on drop; and configs of nodes
//! that share it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::config::EngineKind;
use switchboard::Config;

/// One redis-server process without persistence (a restart loses every key).
pub struct RedisServer {
    pub port: u16,
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
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                hold: None,
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
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

/// The test config on the Redis engine at `redis`, with a short presence lease so
/// crash tests take a second, not half a minute.
pub fn config(redis: &RedisServer) -> Config {
    let mut c = super::config();
    c.engine = EngineKind::Redis;
    c.redis.url = redis.url();
    c.presence_lease = Duration::from_millis(600);
    c
}

/// `n` nodes on `redis`, named `node-0`, `node-1`, ..., each ready.
pub async fn nodes(redis: &RedisServer, n: usize) -> Vec<super::TestServer> {
    nodes_with(redis, n, |_| {}).await
}

/// As [`nodes`], with `tweak` applied to each node's config.
pub async fn nodes_with(
    redis: &RedisServer,
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
