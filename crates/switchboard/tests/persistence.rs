//! Persistence of the memory engine with the real binary: publish through the server
//! API, stop the process gracefully (SIGTERM) or kill it (SIGKILL), start it again on
//! the same data directory, and check history, epochs, recovery and last-seen times.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::process::Process;
use common::{api_at, token, Client};
use futures_util::future::join_all;
use serde_json::{json, Value};
use switchboard::engine::persistence::datafile::{DataFile, FILE_NAME};

/// A fresh data directory under the system's temp dir, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sb-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The `[persistence]` table for this directory, with `more` keys.
    fn toml(&self, more: &str) -> String {
        format!("[persistence]\ndir = \"{}\"\n{more}\n", self.0.display())
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn publish(base: &str, channel: &str, data: Value) -> Value {
    let r = api_at(base, "publish", json!({"channel": channel, "data": data})).await;
    assert!(r.get("error").is_none(), "publish: {r}");
    r["result"].clone()
}

async fn history(base: &str, channel: &str) -> Value {
    let r = api_at(base, "history", json!({"channel": channel, "limit": -1})).await;
    assert!(r.get("error").is_none(), "history: {r}");
    r["result"].clone()
}

fn offsets_and_data(h: &Value) -> Vec<(u64, Value)> {
    h["publications"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Subscribes `channel` on a fresh connection with a recovery position.
async fn recover(ws_url: &str, user: &str, channel: &str, offset: u64, epoch: &str) -> Value {
    let mut c = Client::connect_url(ws_url, &token(user)).await;
    let r = c
        .request(json!({"subscribe": {"channel": channel, "recover": true, "offset": offset, "epoch": epoch}}))
        .await;
    c.close().await;
    r["subscribe"].clone()
}

#[tokio::test]
async fn sync_kill_9_loses_no_acknowledged_publication_and_keeps_the_epoch() {
    let data = DataDir::new("sync-kill");
    let toml = data.toml("durability = \"sync\"");
    let mut node = Process::start_toml(&toml).await;

    // A client sees the first ten, then goes away with its position.
    let mut ann = Client::connect_url(&node.ws_url(), &token("ann")).await;
    let sub = ann.subscribe("chat:room").await;
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    for i in 1..=10 {
        publish(&node.base, "chat:room", json!(i)).await;
    }
    for i in 1..=10u64 {
        let p = ann.next_pub("chat:room").await;
        assert_eq!(p["offset"], json!(i), "{p}");
    }
    ann.close().await;
    // Forty more, concurrently in groups, so publishes share commits; every one is
    // answered, so every one is on disk.
    for group in 0..4 {
        let base = node.base.clone();
        let publishes = (1..=10).map(|i| {
            let base = base.clone();
            async move { publish(&base, "chat:room", json!(10 + group * 10 + i)).await }
        });
        for r in join_all(publishes).await {
            assert_eq!(r["epoch"], json!(epoch), "{r}");
        }
    }
    node.kill();

    let node = Process::start_toml(&toml).await;
    let h = history(&node.base, "chat:room").await;
    assert_eq!(h["epoch"], json!(epoch), "same epoch after kill -9");
    assert_eq!(h["offset"], json!(50));
    let kept = offsets_and_data(&h);
    assert_eq!(kept.len(), 50, "{h}");
    let mut data_seen: Vec<u64> = kept.iter().map(|(_, d)| d.as_u64().unwrap()).collect();
    data_seen.sort_unstable();
    assert_eq!(data_seen, (1..=50).collect::<Vec<_>>());
    assert!(kept
        .iter()
        .enumerate()
        .all(|(i, (o, _))| *o == i as u64 + 1));

    // The client comes back with its position and gets exactly what it missed.
    let s = recover(&node.ws_url(), "ann", "chat:room", 10, &epoch).await;
    assert_eq!(s["recovered"], json!(true), "{s}");
    let pubs = s["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 40, "{s}");
    assert_eq!(pubs[0]["offset"], json!(11));
    assert_eq!(pubs[39]["offset"], json!(50));

    // The stream goes on where it stopped.
    let r = publish(&node.base, "chat:room", json!("after")).await;
    assert_eq!(r["offset"], json!(51));
    assert_eq!(r["epoch"], json!(epoch));
}

#[tokio::test]
async fn graceful_restart_keeps_history_epoch_and_last_seen_in_flush_mode() {
    let data = DataDir::new("graceful");
    let toml = data.toml("durability = \"flush\"");
    let mut node = Process::start_toml(&toml).await;
    let bob = Client::connect_url(&node.ws_url(), &token("bob")).await;
    bob.close().await;
    let mut epoch = String::new();
    for i in 1..=20 {
        let r = publish(&node.base, "chat:g", json!(i)).await;
        epoch = r["epoch"].as_str().unwrap().to_owned();
    }
    let seen = |r: &Value| r["result"]["statuses"][0]["last_seen"].as_u64().unwrap();
    let before = common::eventually_value(|| {
        let base = node.base.clone();
        async move {
            let r = api_at(&base, "user_status", json!({"users": ["bob"]})).await;
            // The disconnect is recorded after the socket closed.
            (r["result"]["statuses"][0]["connections"] == json!(0)).then_some(r)
        }
    })
    .await;
    node.terminate().await;

    let node = Process::start_toml(&toml).await;
    let h = history(&node.base, "chat:g").await;
    assert_eq!(h["epoch"], json!(epoch));
    let kept = offsets_and_data(&h);
    assert_eq!(kept, (1..=20u64).map(|i| (i, json!(i))).collect::<Vec<_>>());
    let s = recover(&node.ws_url(), "ann", "chat:g", 15, &epoch).await;
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert_eq!(s["publications"].as_array().unwrap().len(), 5);
    let after = api_at(&node.base, "user_status", json!({"users": ["bob"]})).await;
    // Before: the latest of the node's own record and the engine's, which may fall on
    // either side of a second boundary; after: the engine's, read back from disk.
    let (before, after_ms) = (seen(&before), seen(&after));
    assert!(after_ms > 0, "last_seen survives: {after}");
    assert!(
        after_ms <= before && before - after_ms <= 1000,
        "{before} vs {after}"
    );
}

/// Read state follows a user across a restart: the inbox positions are in the data file
/// with the histories they point into.
#[tokio::test]
async fn a_restart_keeps_each_users_read_position_and_unread_count() {
    let data = DataDir::new("inbox");
    let toml = data.toml("durability = \"sync\"");
    let mut node = Process::start_toml(&toml).await;
    for i in 1..=5 {
        publish(&node.base, "user:ann", json!(i)).await;
    }
    let r = api_at(
        &node.base,
        "inbox_read",
        json!({"user": "ann", "channel": "user:ann", "offset": 3}),
    )
    .await;
    assert_eq!(r["result"]["read"], json!(3), "{r}");
    let status = |base: String| async move {
        let r = api_at(&base, "inbox_status", json!({"user": "ann"})).await;
        let ch = r["result"]["channels"][0].clone();
        (
            ch["channel"].clone(),
            ch["read"].clone(),
            ch["unread"].clone(),
        )
    };
    let before = status(node.base.clone()).await;
    assert_eq!(before, (json!("user:ann"), json!(3), json!(2)));
    node.terminate().await;

    let node = Process::start_toml(&toml).await;
    assert_eq!(
        status(node.base.clone()).await,
        before,
        "kept across the restart"
    );
    // A fresh session of ann gets what is past her delivered position (a read implies
    // delivered): 4 and 5.
    let phone = Client::connect_url(&node.ws_url(), &token("ann")).await;
    let subs = &phone.connect_reply["connect"]["subs"]["user:ann"];
    let offsets: Vec<u64> = subs["publications"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(offsets, vec![4, 5], "{subs}");
    phone.close().await;
}

#[tokio::test]
async fn flush_crash_keeps_a_prefix_within_max_pending_and_changes_the_epoch() {
    let data = DataDir::new("flush-kill");
    // The interval never elapses here: only max_pending makes the journal write, so
    // at most 4 accepted publications can be missing after the crash.
    let toml = data.toml("durability = \"flush\"\nflush_interval = \"1h\"\nmax_pending = 4");
    let mut node = Process::start_toml(&toml).await;
    let mut epoch = String::new();
    for i in 1..=20 {
        let r = publish(&node.base, "chat:f", json!(i)).await;
        epoch = r["epoch"].as_str().unwrap().to_owned();
    }
    node.kill();

    let node = Process::start_toml(&toml).await;
    let h = history(&node.base, "chat:f").await;
    let kept = offsets_and_data(&h);
    assert!(kept.len() >= 16, "lost more than max_pending: {h}");
    assert_eq!(
        kept,
        (1..=kept.len() as u64)
            .map(|i| (i, json!(i)))
            .collect::<Vec<_>>(),
        "what is kept is a prefix"
    );
    // Clients may have seen what was lost: their positions are refused, not trusted.
    assert_ne!(h["epoch"], json!(epoch), "{h}");
    let s = recover(&node.ws_url(), "ann", "chat:f", 10, &epoch).await;
    assert_eq!(s.get("recovered"), None, "{s}");
}

#[tokio::test]
async fn size_and_ttl_limits_are_enforced_on_disk() {
    let data = DataDir::new("limits");
    let toml = data.toml("durability = \"sync\"")
        + "[namespaces.short]\nsubscribe = [\"*\"]\nhistory_size = 5\nhistory_ttl = \"1h\"\n\
           [namespaces.brief]\nsubscribe = [\"*\"]\nhistory_size = 100\nhistory_ttl = \"1s\"\n";
    let mut node = Process::start_toml(&toml).await;
    for i in 1..=20 {
        publish(&node.base, "short:s", json!(i)).await;
    }
    for i in 1..=3 {
        publish(&node.base, "brief:b", json!(i)).await;
    }
    // Reading after the TTL expires them, on disk too.
    common::eventually_value(|| {
        let base = node.base.clone();
        async move {
            let h = history(&base, "brief:b").await;
            offsets_and_data(&h).is_empty().then_some(())
        }
    })
    .await;
    node.terminate().await;

    let file = DataFile::open(data.path()).unwrap();
    assert_eq!(file.offsets("short:s").unwrap(), vec![16, 17, 18, 19, 20]);
    assert_eq!(file.offsets("brief:b").unwrap(), Vec::<u64>::new());
    drop(file);
    let node = Process::start_toml(&toml).await;
    let h = history(&node.base, "brief:b").await;
    assert_eq!(h["offset"], json!(3), "offsets survive expiry: {h}");
}

#[tokio::test]
async fn a_corrupt_file_or_an_unusable_directory_stops_the_start_with_a_clear_error() {
    let data = DataDir::new("corrupt");
    std::fs::create_dir_all(data.path()).unwrap();
    let file = data.path().join(FILE_NAME);
    std::fs::write(&file, vec![0x5a; 64 * 1024]).unwrap();
    let (status, stderr) = Process::spawn(&data.toml(""), Stdio::piped()).refused();
    assert!(!status.success());
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("move it away"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The file is left as it was, for whoever wants to look at it.
    assert_eq!(std::fs::read(&file).unwrap(), vec![0x5a; 64 * 1024]);

    let plain = data.path().join("plain-file");
    std::fs::write(&plain, b"x").unwrap();
    let toml = format!(
        "[persistence]\ndir = \"{}\"\n",
        plain.join("data").display()
    );
    let (status, stderr) = Process::spawn(&toml, Stdio::piped()).refused();
    assert!(!status.success());
    assert!(stderr.contains("data directory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_file_cut_short_by_a_crash_recovers_what_was_committed_or_is_refused() {
    let data = DataDir::new("truncated");
    let toml = data.toml("durability = \"sync\"");
    let mut node = Process::start_toml(&toml).await;
    for i in 1..=30 {
        publish(&node.base, "chat:t", json!(i)).await;
    }
    node.kill();
    let file = data.path().join(FILE_NAME);
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let mut attempt = Process::spawn(&toml, Stdio::piped());
    match attempt.try_ready().await {
        Ok(()) => {
            // Started: what it serves is a prefix of what was written.
            let h = history(&attempt.base, "chat:t").await;
            let kept = offsets_and_data(&h);
            assert_eq!(
                kept,
                (1..=kept.len() as u64)
                    .map(|i| (i, json!(i)))
                    .collect::<Vec<_>>()
            );
        }
        Err(()) => {
            let (status, stderr) = attempt.refused();
            assert!(!status.success());
            assert!(stderr.contains(&file.display().to_string()), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}
