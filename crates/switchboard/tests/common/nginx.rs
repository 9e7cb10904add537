//! A real nginx in front of the server, running a configuration from `docs/nginx/` as
//! written (addresses and paths replaced), killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use super::TIMEOUT;

/// The example `docs/nginx/<file>`, with `replacements` made; each must be found (the
/// example and the tests must not drift apart).
pub fn example(file: &str, replacements: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/nginx")
        .join(file);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "{file} no longer has {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// A free port on 127.0.0.1 (released for nginx to bind).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One nginx process.
pub struct Nginx {
    child: tokio::process::Child,
}

impl Nginx {
    /// Runs `site` (an `http { }` block's content listening on `listen`) with every
    /// file inside `dir`; waits until it listens. `None` (after a SKIPPED line) when
    /// nginx is not installed.
    pub async fn start(site: &str, dir: &Path, listen: SocketAddr) -> Option<Nginx> {
        // Debian puts nginx in /usr/sbin, which a user's PATH may lack.
        let Some(bin) = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|bin| std::process::Command::new(bin).arg("-v").output().is_ok())
        else {
            eprintln!("SKIPPED: nginx is not installed (scripts/test.sh installs it from Debian)");
            return None;
        };
        std::fs::write(dir.join("site.conf"), site).expect("write");
        // One process (no master), so killing it leaves no worker behind; every path
        // inside the prefix directory.
        let main = "pid nginx.pid;\nmaster_process off;\nevents { worker_connections 64; }\n\
            http {\n  access_log off;\n  client_body_temp_path tmp-body;\n  proxy_temp_path tmp-proxy;\n\
            fastcgi_temp_path tmp-fastcgi;\n  uwsgi_temp_path tmp-uwsgi;\n  scgi_temp_path tmp-scgi;\n\
            include site.conf;\n}\n";
        std::fs::write(dir.join("nginx.conf"), main).expect("write");
        let prefix = format!("{}/", dir.display());
        let mut child = tokio::process::Command::new(bin)
            .args(["-p", &prefix, "-c", "nginx.conf", "-e", "stderr"])
            .args(["-g", "daemon off;"])
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while TcpStream::connect(listen).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {listen}"
            );
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nginx exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Nginx { child })
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
