//! The `switchboard` binary as an operator runs it: configuration checks, the API
//! client commands against a real server, and output into a closed pipe.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// The binary with only `vars` in its environment (none of the caller's SWITCHBOARD_*).
fn switchboard(args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().envs(vars.iter().copied());
    cmd
}

fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    switchboard(args, vars).output().expect("run switchboard")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh file in a directory of its own, for a config.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_variables_are_errors_that_name_them() {
    let o = run(&["check-config"], &[("SWITCHBOARD_ENGIN", "redis")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o)
            .contains("unknown variable SWITCHBOARD_ENGIN (did you mean SWITCHBOARD_ENGINE?)"),
        "{}",
        stderr(&o)
    );
    // The `[redis]` shorthand (`SWITCHBOARD_REDIS_URL`) is checked like the rest.
    let o = run(
        &["check-config"],
        &[
            ("SWITCHBOARD_ENGINE", "redis"),
            ("SWITCHBOARD_REDIS_URL", "redis://10.0.0.1:6390"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("redis://10.0.0.1:6390"));
    let o = run(&["check-config"], &[("SWITCHBOARD_REDIS_URLL", "x")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("did you mean SWITCHBOARD_REDIS__URL?"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &["check-config"],
        &[("SWITCHBOARD_LIMITS__OUTBOX_SIZ", "5")],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("did you mean SWITCHBOARD_LIMITS__OUTBOX_SIZE?"),
        "{}",
        stderr(&o)
    );
    // A nested key written without its section.
    let o = run(&["check-config"], &[("SWITCHBOARD_OUTBOX_SIZE", "5")]);
    assert!(
        stderr(&o).contains("did you mean SWITCHBOARD_LIMITS__OUTBOX_SIZE?"),
        "{}",
        stderr(&o)
    );
    let o = run(&["check-config"], &[("SWITCHBOARD_LOG_FORMAT", "jsn")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(r#""text", "json""#), "{}", stderr(&o));
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let file = config_file("check", "[limits]\noutbox_size = 7\n");
    let o = run(
        &["check-config", "-c", file.to_str().unwrap()],
        &[
            ("SWITCHBOARD_TOKEN_HMAC_SECRET", "top-secret"),
            ("SWITCHBOARD_API_KEYS", r#"["key-1","key-2"]"#),
            ("SWITCHBOARD_CLIENT__PING_INTERVAL", "10s"),
            // Not configuration, and allowed.
            ("SWITCHBOARD_LOG", "debug"),
            ("SWITCHBOARD_BIN", "/x"),
            ("SWITCHBOARD_URL", "http://x"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for secret in ["top-secret", "key-1", "key-2"] {
        assert!(!out.contains(secret), "{out}");
    }
    let printed: toml::Value = toml::from_str(&out).expect("the output is TOML");
    assert_eq!(printed["token_hmac_secret"].as_str(), Some("<redacted>"));
    assert_eq!(printed["limits"]["outbox_size"].as_integer(), Some(7));
    assert_eq!(printed["client"]["ping_interval"].as_str(), Some("10s"));

    let bad = config_file("bad", "auto_subscribe = [\"nope:{sub}\"]\n");
    let o = run(&["check-config", "-c", bad.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("auto_subscribe"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[tokio::test]
async fn info_reaches_the_server_at_the_config_files_bind() {
    let server = start_default().await;
    let file = config_file(
        "info",
        &format!("bind = \"{}\"\napi_key = \"{API_KEY}\"\n", server.addr),
    );
    let o = tokio::task::spawn_blocking(move || run(&["info", "-c", file.to_str().unwrap()], &[]))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(info["nodes"].is_array(), "{info}");
}

/// A pipe whose reader is already gone, as `| head -c1` leaves it once head exits.
fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn true");
    let writer = reader.stdin.take().expect("stdin");
    reader.wait().expect("true exits");
    Stdio::from(writer)
}

#[tokio::test]
async fn commands_writing_into_a_closed_pipe_do_not_panic() {
    let server = start_default().await;
    let url = server.http_url("");
    let o = tokio::task::spawn_blocking(move || {
        let token = switchboard(
            &["token", "--user", "42"],
            &[("SWITCHBOARD_TOKEN_HMAC_SECRET", "s")],
        )
        .stdout(closed_pipe())
        .output()
        .expect("run token");
        let info = switchboard(
            &["info", "--url", &url],
            &[("SWITCHBOARD_API_KEY", API_KEY)],
        )
        .stdout(closed_pipe())
        .output()
        .expect("run info");
        let check = switchboard(&["check-config"], &[])
            .stdout(closed_pipe())
            .output()
            .expect("run check-config");
        [token, info, check]
    })
    .await
    .unwrap();
    for o in o {
        assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[tokio::test]
async fn a_config_built_in_code_is_checked_too() {
    let mut cfg = config();
    cfg.auto_subscribe = vec!["nope:{sub}".into()];
    let err = switchboard::Server::bind(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("auto_subscribe"), "{err}");
}

#[test]
fn check_config_loads_the_tls_files_named_by_variables() {
    let o = run(
        &["check-config"],
        &[
            ("SWITCHBOARD_TLS__CERT", "/nonexistent/cert.pem"),
            ("SWITCHBOARD_TLS__KEY", "/nonexistent/key.pem"),
            ("SWITCHBOARD_TLS__RELOAD_INTERVAL", "1m"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tls.cert (/nonexistent/cert.pem)"),
        "{}",
        stderr(&o)
    );
    let o = run(
        &["check-config"],
        &[("SWITCHBOARD_TLS__CERT", "/nonexistent/cert.pem")],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tls.cert and tls.key must be set together"),
        "{}",
        stderr(&o)
    );
}
