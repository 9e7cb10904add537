//! A switchboard process: the real binary, started from a TOML config on a free port,
//! stopped with SIGTERM (graceful) or SIGKILL (a crash, also on drop).

use std::process::{Command, Stdio};
use std::time::Duration;

/// A switchboard process (the real binary), killed with SIGKILL on drop: what a
/// crashed node looks like to the others.
pub struct Process {
    child: std::process::Child,
    pub base: String,
    _dir: std::path::PathBuf,
}

impl Process {
    /// A node with the test secret and API key, a `chat` namespace (presence,
    /// join/leave, 100 publications of history for an hour) and `extra` TOML: top-level
    /// keys first, then tables.
    pub async fn start_toml(extra: &str) -> Process {
        let mut process = Self::spawn(extra, Stdio::null());
        process.wait_ready().await;
        process
    }

    /// Starts the binary with `extra` TOML (see [`Process::start_toml`]) without waiting
    /// for it; its stderr goes to `stderr`.
    pub fn spawn(extra: &str, stderr: impl Into<Stdio>) -> Process {
        use super::{API_KEY, SECRET};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("sb-node-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        // Top-level keys of `extra` must come before the first table.
        let tables_at = if extra.starts_with('[') {
            Some(0)
        } else {
            extra.find("\n[")
        };
        let (top, tables) = extra.split_at(tables_at.unwrap_or(extra.len()));
        std::fs::write(
            &file,
            format!(
                "token_hmac_secret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\n{top}\n\
                 [namespaces.chat]\nsubscribe = [\"*\"]\npresence = true\njoin_leave = true\n\
                 history_size = 100\nhistory_ttl = \"1h\"\n{tables}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        // Every SWITCHBOARD_* variable is a config key to the binary: pass only ours.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&file)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchboard");
        Process {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Waits (bounded) for a process that must not start: its exit status and stderr.
    pub fn refused(mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + super::TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "it started");
            std::thread::sleep(Duration::from_millis(25));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }

    async fn wait_ready(&mut self) {
        if self.try_ready().await.is_err() {
            let exit = self.child.try_wait().ok().flatten();
            panic!("switchboard exited before it was ready: {exit:?}");
        }
    }

    /// Waits (bounded) until `/ready` answers 200 (`Ok`) or the process exits (`Err`).
    pub async fn try_ready(&mut self) -> Result<(), ()> {
        let deadline = tokio::time::Instant::now() + super::TIMEOUT;
        loop {
            let status = reqwest::get(format!("{}/ready", self.base))
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 200 {
                return Ok(());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(());
            }
            assert!(tokio::time::Instant::now() < deadline, "node not ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!(
            "{}/connection/websocket",
            self.base.replacen("http", "ws", 1)
        )
    }

    /// SIGKILL: the process dies wherever it is.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the graceful shutdown to finish.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                assert!(exit.success(), "graceful shutdown exited with {exit}");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
