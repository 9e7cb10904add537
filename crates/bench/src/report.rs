//! Results: per-run JSON, medians across runs, the Markdown table (with ratios to the
//! peers and the stated goals), the docs/benchmarks.md splice and SVG bar charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::coordinator::RunResult;
use crate::procfs::MachineInfo;
use crate::scenario::Sizes;
use crate::target::{self, Cluster, Ratio, REDIS_2_NODES_TARGET, REDIS_TARGET};

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) date: String,
    pub(crate) command: String,
    pub(crate) machine: MachineInfo,
    pub(crate) sizes: Sizes,
    pub(crate) runs_per_scenario: usize,
    pub(crate) targets: Vec<String>,
    pub(crate) runs: Vec<RunResult>,
}

/// Medians across runs: target -> scenario -> the fields of [`RunResult`].
pub(crate) type Medians = BTreeMap<String, BTreeMap<String, Value>>;

/// The median of each numeric field over the runs without error.
pub(crate) fn medians(runs: &[RunResult]) -> Medians {
    let mut groups: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| r.error.is_none() && r.skipped.is_none())
    {
        if let Ok(v) = serde_json::to_value(r) {
            groups
                .entry((r.target.clone(), r.scenario.clone()))
                .or_default()
                .push(v);
        }
    }
    let mut out = Medians::new();
    for ((target, scenario), values) in groups {
        out.entry(target)
            .or_default()
            .insert(scenario, median_value(&values));
    }
    out
}

fn median_value(values: &[Value]) -> Value {
    let first = values[0].clone();
    match first {
        Value::Number(_) => {
            let mut nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            nums.sort_by(f64::total_cmp);
            let m = if nums.is_empty() {
                0.0
            } else if !nums.len().is_multiple_of(2) {
                nums[nums.len() / 2]
            } else {
                (nums[nums.len() / 2 - 1] + nums[nums.len() / 2]) / 2.0
            };
            serde_json::json!(m)
        }
        Value::Object(map) => Value::Object(
            map.keys()
                .map(|k| {
                    let sub: Vec<Value> = values
                        .iter()
                        .filter_map(|v| v.get(k).cloned())
                        .filter(|v| !v.is_null())
                        .collect();
                    let v = if sub.is_empty() {
                        Value::Null
                    } else {
                        median_value(&sub)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other,
    }
}

pub(crate) fn lookup(m: &Medians, target: &str, scenario: &str, path: &str) -> Option<f64> {
    let mut v = m.get(target)?.get(scenario)?;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    v.as_f64()
}

#[derive(Clone, Copy)]
enum Unit {
    PerSecond,
    Ms,
    Us,
    Bytes,
    Seconds,
    Cores,
    Count,
    Ratio,
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSecond => format!("{}/s", thousands(v)),
        Unit::Ms => format!("{v:.2} ms"),
        Unit::Us => format!("{v:.2} µs"),
        Unit::Bytes => {
            if v >= 1024.0 * 1024.0 {
                format!("{:.1} MiB", v / 1024.0 / 1024.0)
            } else if v >= 1024.0 {
                format!("{:.1} KiB", v / 1024.0)
            } else {
                format!("{} B", thousands(v))
            }
        }
        Unit::Seconds => format!("{v:.2} s"),
        Unit::Cores => format!("{v:.2}"),
        Unit::Count => thousands(v),
        Unit::Ratio => format!("{v:.2}×"),
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Looks up the subject's or a peer's value of the row's metric.
type Get<'a> = &'a dyn Fn(&str) -> Option<f64>;

struct Row {
    scenario: &'static str,
    metric: &'static str,
    path: &'static str,
    unit: Unit,
    goal: &'static str,
    /// Whether the subject (`switchboard`) meets the goal.
    check: Option<fn(Get<'_>, &Sizes) -> Option<bool>>,
}

const SUBJECT: &str = "switchboard";

/// The goal of Redis mode: a delivery costs at most this many times the memory engine's
/// (servers' and Redis's CPU together, on one node).
const REDIS_CPU_GOAL: f64 = 1.5;

fn redis_cpu_check(get: Get<'_>, _: &Sizes) -> Option<bool> {
    Some(get(REDIS_TARGET)? <= REDIS_CPU_GOAL * get(SUBJECT)?)
}

/// The chat goal holds for switchboard in memory and in Redis mode, on one node and
/// across two (each that the run measured).
fn chat_p99_check(get: Get<'_>, _: &Sizes) -> Option<bool> {
    let values: Vec<f64> = [SUBJECT, REDIS_TARGET, REDIS_2_NODES_TARGET]
        .iter()
        .filter_map(|t| get(t))
        .collect();
    (!values.is_empty()).then(|| values.iter().all(|&v| v <= 5.0))
}

const ROWS: &[Row] = &[
    Row {
        scenario: "broadcast",
        metric: "deliveries per second",
        path: "measure.deliveries_per_second",
        unit: Unit::PerSecond,
        goal: "≥ 0.9× floor, ≥ 8× socketio",
        check: Some(|get, _| {
            let s = get(SUBJECT)?;
            let floor = get("floor").map(|f| s >= 0.9 * f);
            let sio = get("socketio").map(|f| s >= 8.0 * f);
            match (floor, sio) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(true) && b.unwrap_or(true)),
            }
        }),
    },
    Row {
        scenario: "broadcast",
        metric: "server CPU per delivery",
        path: "measure.server_cpu_us_per_delivery",
        unit: Unit::Us,
        goal: "≤ 1.4 µs",
        check: Some(|get, _| Some(get(SUBJECT)? <= 1.4)),
    },
    Row {
        scenario: "broadcast",
        metric: "bytes sent per delivery",
        path: "measure.server_bytes_per_delivery",
        unit: Unit::Bytes,
        goal: "",
        check: None,
    },
    Row {
        scenario: "broadcast",
        metric: "peak RSS ÷ RSS before fan-out",
        path: "memory.peak_over_subscribed",
        unit: Unit::Ratio,
        goal: "≤ 1.5×",
        check: Some(|get, _| Some(get(SUBJECT)? <= 1.5)),
    },
    Row {
        scenario: "broadcast",
        metric: "server CPU (cores)",
        path: "measure.server_cores",
        unit: Unit::Cores,
        goal: "",
        check: None,
    },
    Row {
        scenario: "broadcast",
        metric: "load clients' CPU (cores)",
        path: "measure.clients_cores",
        unit: Unit::Cores,
        goal: "",
        check: None,
    },
    Row {
        scenario: "broadcast",
        metric: "latency p50 (saturated)",
        path: "measure.latency_ms.p50",
        unit: Unit::Ms,
        goal: "",
        check: None,
    },
    Row {
        scenario: "broadcast",
        metric: "latency p99 (saturated)",
        path: "measure.latency_ms.p99",
        unit: Unit::Ms,
        goal: "",
        check: None,
    },
    Row {
        scenario: "chat",
        metric: "latency p50",
        path: "measure.latency_ms.p50",
        unit: Unit::Ms,
        goal: "",
        check: None,
    },
    Row {
        scenario: "chat",
        metric: "latency p99",
        path: "measure.latency_ms.p99",
        unit: Unit::Ms,
        goal: "≤ 5 ms at 10,000 connections",
        check: Some(chat_p99_check),
    },
    Row {
        scenario: "chat",
        metric: "latency p99.9",
        path: "measure.latency_ms.p999",
        unit: Unit::Ms,
        goal: "",
        check: None,
    },
    Row {
        scenario: "chat",
        metric: "deliveries per second",
        path: "measure.deliveries_per_second",
        unit: Unit::PerSecond,
        goal: "",
        check: None,
    },
    Row {
        scenario: "chat",
        metric: "server CPU per delivery",
        path: "measure.server_cpu_us_per_delivery",
        unit: Unit::Us,
        goal: "",
        check: None,
    },
    Row {
        scenario: "idle",
        metric: "server memory per connection, no subscription",
        path: "memory.per_connection_bytes",
        unit: Unit::Bytes,
        goal: "",
        check: None,
    },
    Row {
        scenario: "idle",
        metric: "server memory per connection, 2 subscriptions",
        path: "memory.per_connection_subscribed_bytes",
        unit: Unit::Bytes,
        goal: "≤ 4 KiB",
        check: Some(|get, _| Some(get(SUBJECT)? <= 4096.0)),
    },
    Row {
        scenario: "idle",
        metric: "server CPU while idle (cores)",
        path: "measure.server_cores",
        unit: Unit::Cores,
        goal: "",
        check: None,
    },
    Row {
        scenario: "connect",
        metric: "connects per second",
        path: "connect.per_second",
        unit: Unit::PerSecond,
        goal: "10,000 in ≤ 1 s",
        check: Some(|get, _| Some(get(SUBJECT)? >= 10_000.0)),
    },
    Row {
        scenario: "connect",
        metric: "time for all connects",
        path: "connect.seconds",
        unit: Unit::Seconds,
        goal: "",
        check: None,
    },
    Row {
        scenario: "connect",
        metric: "listen-queue overflows (SYN retried after 1 s)",
        path: "connect.listen_overflows",
        unit: Unit::Count,
        goal: "",
        check: None,
    },
    Row {
        scenario: "connect",
        metric: "connect latency p99",
        path: "connect.latency_ms.p99",
        unit: Unit::Ms,
        goal: "",
        check: None,
    },
];

/// Rows shown only when a Redis target was measured: what Redis itself costs.
const REDIS_ROWS: &[Row] = &[
    Row {
        scenario: "broadcast",
        metric: "Redis CPU per delivery",
        path: "measure.redis_cpu_us_per_delivery",
        unit: Unit::Us,
        goal: "",
        check: None,
    },
    Row {
        scenario: "broadcast",
        metric: "servers + Redis CPU per delivery",
        path: "measure.total_cpu_us_per_delivery",
        unit: Unit::Us,
        goal: "switchboard-redis ≤ 1.5× switchboard",
        check: Some(redis_cpu_check),
    },
    Row {
        scenario: "broadcast",
        metric: "Redis CPU (cores)",
        path: "measure.redis_cores",
        unit: Unit::Cores,
        goal: "",
        check: None,
    },
    Row {
        scenario: "chat",
        metric: "Redis CPU per delivery",
        path: "measure.redis_cpu_us_per_delivery",
        unit: Unit::Us,
        goal: "",
        check: None,
    },
    Row {
        scenario: "chat",
        metric: "servers + Redis CPU per delivery",
        path: "measure.total_cpu_us_per_delivery",
        unit: Unit::Us,
        goal: "switchboard-redis ≤ 1.5× switchboard",
        check: Some(redis_cpu_check),
    },
    Row {
        scenario: "idle",
        metric: "Redis memory (RSS) with every client subscribed",
        path: "memory.redis_bytes",
        unit: Unit::Bytes,
        goal: "",
        check: None,
    },
    Row {
        scenario: "connect",
        metric: "Redis CPU during the connects (cores)",
        path: "connect.redis_cores",
        unit: Unit::Cores,
        goal: "",
        check: None,
    },
];

/// The rows of the table in order: each scenario's rows, then its Redis rows when a
/// Redis target was measured.
fn rows(with_redis: bool) -> Vec<&'static Row> {
    let mut out = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        out.push(row);
        let scenario_ends = ROWS
            .get(i + 1)
            .is_none_or(|next| next.scenario != row.scenario);
        if with_redis && scenario_ends {
            out.extend(REDIS_ROWS.iter().filter(|r| r.scenario == row.scenario));
        }
    }
    out
}

/// The target the ratio column of `peer` compares it with, and whether it reads
/// `base ÷ peer` (else `peer ÷ base`).
fn ratio_of(peer: &str) -> (&'static str, bool) {
    match target::find(peer).map_or(Ratio::SubjectOverTarget, |t| t.ratio) {
        Ratio::SubjectOverTarget => (SUBJECT, true),
        Ratio::TargetOverSubject => (SUBJECT, false),
        Ratio::SiblingOverTarget(sibling) => (sibling, true),
    }
}

fn ratio_header(peer: &str) -> String {
    match ratio_of(peer) {
        (base, true) => format!("{base} ÷ {peer}"),
        (base, false) => format!("{peer} ÷ {base}"),
    }
}

fn ratio_value(peer: &str, base: f64, value: f64) -> Option<f64> {
    let (num, den) = match ratio_of(peer) {
        (_, true) => (base, value),
        (_, false) => (value, base),
    };
    (den > 0.0).then(|| num / den)
}

/// The results table in Markdown.
pub(crate) fn table(report: &Report, m: &Medians) -> String {
    let targets = &report.targets;
    // A ratio column for each target whose base (switchboard, or its sibling) is in the run.
    let ratios: Vec<&String> = targets
        .iter()
        .filter(|t| {
            let (base, _) = ratio_of(t);
            t.as_str() != base && targets.iter().any(|x| x == base)
        })
        .collect();
    let with_redis = targets
        .iter()
        .any(|t| target::find(t).is_some_and(|t| matches!(t.cluster, Cluster::Redis { .. })));
    let mut out = String::new();
    let _ = write!(out, "| scenario | metric |");
    for t in targets {
        let _ = write!(out, " {t} |");
    }
    for p in &ratios {
        let _ = write!(out, " {} |", ratio_header(p));
    }
    let _ = writeln!(out, " goal | met |");
    let cols = 2 + targets.len() + ratios.len() + 2;
    let _ = writeln!(out, "|{}", "---|".repeat(cols));
    for row in rows(with_redis) {
        if !m.values().any(|s| s.contains_key(row.scenario)) {
            continue;
        }
        let get = |t: &str| lookup(m, t, row.scenario, row.path);
        if targets.iter().all(|t| get(t).is_none()) {
            continue;
        }
        let _ = write!(out, "| {} | {} |", row.scenario, row.metric);
        for t in targets {
            let cell = get(t).map_or_else(|| "–".to_owned(), |v| fmt_value(v, row.unit));
            let _ = write!(out, " {cell} |");
        }
        for p in &ratios {
            let cell = match (get(ratio_of(p).0), get(p)) {
                (Some(s), Some(v)) => {
                    ratio_value(p, s, v).map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
                }
                _ => "–".to_owned(),
            };
            let _ = write!(out, " {cell} |");
        }
        let met = row
            .check
            .and_then(|c| c(&get, &report.sizes))
            .map_or("", |ok| if ok { "yes" } else { "**no**" });
        let _ = writeln!(out, " {} | {met} |", row.goal);
    }
    let _ = writeln!(
        out,
        "\nMedians of {} run(s) per cell. Sizes: idle {} connections × 2 subscriptions; broadcast {} subscribers, {}-byte payloads; chat {} rooms × {} users at {} msg/s per room; connect storm {} connects; {} s measured after {} s warm-up.",
        report.runs_per_scenario,
        report.sizes.idle_connections,
        report.sizes.broadcast_subscribers,
        report.sizes.payload,
        report.sizes.chat_rooms,
        report.sizes.room_size,
        report.sizes.room_rate,
        report.sizes.connect_connections,
        report.sizes.duration.as_secs_f64(),
        report.sizes.warmup.as_secs_f64(),
    );
    let several: BTreeMap<&str, usize> = report
        .runs
        .iter()
        .filter(|r| r.nodes > 1)
        .map(|r| (r.target.as_str(), r.nodes))
        .collect();
    for (t, nodes) in several {
        let _ = writeln!(
            out,
            "\n{t}: {nodes} nodes on one Redis, connection i on node i mod {nodes}, publications through the first node; server memory and CPU are summed over the nodes."
        );
    }
    let skipped: BTreeMap<&str, &str> = report
        .runs
        .iter()
        .filter_map(|r| Some((r.target.as_str(), r.skipped.as_deref()?)))
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "\nNot measured:\n");
        for (t, why) in skipped {
            let _ = writeln!(out, "- {t}: {why}");
        }
    }
    let failed: Vec<&RunResult> = report.runs.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nRuns that failed (left out of the medians):\n");
        for r in failed {
            let _ = writeln!(
                out,
                "- {} {} #{}: {}",
                r.target,
                r.scenario,
                r.run,
                r.error.as_deref().unwrap_or("")
            );
        }
    }
    let troubled: Vec<&RunResult> = report
        .runs
        .iter()
        .filter(|r| {
            r.closed > 0
                || r.connect.failed > 0
                || r.subscribe.as_ref().is_some_and(|s| s.failed > 0)
        })
        .collect();
    if !troubled.is_empty() {
        let _ = writeln!(
            out,
            "\nRuns with failed connects or subscriptions, or connections closed by the server:\n"
        );
        for r in troubled {
            let _ = writeln!(
                out,
                "- {} {} #{}: {} connects failed ({}), {} subscriptions failed, {} closed",
                r.target,
                r.scenario,
                r.run,
                r.connect.failed,
                r.connect.first_error.as_deref().unwrap_or("-"),
                r.subscribe.as_ref().map_or(0, |s| s.failed),
                r.closed
            );
        }
    }
    let with_deltas: Vec<&RunResult> = report.runs.iter().filter(|r| r.deltas.is_some()).collect();
    if !with_deltas.is_empty() {
        let _ = writeln!(out, "\nFossil deltas, as the load clients received them:\n");
        for r in with_deltas {
            let d = r.deltas.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "- {} {} #{}: {} of {} measured deliveries as deltas, {} full; {} deltas could not be applied",
                r.target,
                r.scenario,
                r.run,
                thousands(d.deltas as f64),
                thousands((d.deltas + d.full) as f64),
                thousands(d.full as f64),
                d.broken
            );
        }
    }
    let publishers: BTreeMap<&str, &str> = report
        .runs
        .iter()
        .filter_map(|r| Some((r.target.as_str(), r.publisher.as_deref()?)))
        .collect();
    if !publishers.is_empty() {
        let _ = writeln!(out, "\nPublishing:");
        for (t, p) in publishers {
            let _ = writeln!(out, "- {t}: {p}");
        }
    }
    out
}

/// The machine block of docs/benchmarks.md.
pub(crate) fn machine_block(report: &Report) -> String {
    let m = &report.machine;
    format!(
        "- Measured {date} on {cores} cores ({model}), {mem} GiB memory, Linux {kernel}, open-files limit {nofile}.\n- The machine is shared with other tenants and the load clients run on the same cores as the server: see the `machine_busy_cores` and `clients_cores` fields in bench-results/*.json.\n- Command: `{cmd}`\n",
        date = report.date,
        cores = m.cores,
        model = m.cpu_model,
        mem = m.memory_gib,
        kernel = m.kernel,
        nofile = m.open_files_limit,
        cmd = report.command,
    )
}

/// Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`.
pub(crate) fn splice(doc: &str, name: &str, content: &str) -> Option<String> {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let a = doc.find(&start)? + start.len();
    let b = doc[a..].find(&end)? + a;
    Some(format!(
        "{}\n{}\n{}",
        &doc[..a],
        content.trim_end(),
        &doc[b..]
    ))
}

/// Updates the generated parts of the benchmarks doc in place: the main machine block
/// and table, or those of `section` (`<!-- bench:SECTION-machine:start -->`, …).
pub(crate) fn update_doc(
    path: &Path,
    section: Option<&str>,
    report: &Report,
    table_md: &str,
) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let name = |block: &str| section.map_or_else(|| block.to_owned(), |s| format!("{s}-{block}"));
    let (machine, table) = (name("machine"), name("table"));
    let doc = splice(&doc, &machine, &machine_block(report))
        .with_context(|| format!("docs: missing <!-- bench:{machine}:start/end --> markers"))?;
    let doc = splice(&doc, &table, table_md)
        .with_context(|| format!("docs: missing <!-- bench:{table}:start/end --> markers"))?;
    std::fs::write(path, doc)?;
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD.
pub(crate) fn today() -> String {
    let days = (crate::client::now_us() / 86_400_000_000) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{DELTA_TARGET, PUSHER_TARGET};

    #[test]
    fn medians_of_numbers_and_objects() {
        let vals = vec![
            serde_json::json!({"a": 1, "b": {"c": 10}, "s": "x"}),
            serde_json::json!({"a": 3, "b": {"c": 30}, "s": "x"}),
            serde_json::json!({"a": 2, "b": {"c": 20}, "s": "x"}),
        ];
        let m = median_value(&vals);
        assert_eq!(m["a"], 2.0);
        assert_eq!(m["b"]["c"], 20.0);
        assert_eq!(m["s"], "x");
    }

    #[test]
    fn splices_between_markers() {
        let doc = "a\n<!-- bench:table:start -->\nold\n<!-- bench:table:end -->\nb";
        let out = splice(doc, "table", "new").unwrap();
        assert_eq!(
            out,
            "a\n<!-- bench:table:start -->\nnew\n<!-- bench:table:end -->\nb"
        );
        assert!(splice(doc, "machine", "x").is_none());
    }

    fn broadcast_run(target: &str, server_us: f64, redis_us: Option<f64>) -> RunResult {
        RunResult {
            target: target.to_owned(),
            scenario: "broadcast".to_owned(),
            run: 1,
            measure: Some(crate::coordinator::Measure {
                server_cpu_us_per_delivery: Some(server_us),
                redis_cpu_us_per_delivery: redis_us,
                total_cpu_us_per_delivery: Some(server_us + redis_us.unwrap_or(0.0)),
                ..Default::default()
            }),
            ..RunResult::default()
        }
    }

    fn report_of(runs: Vec<RunResult>) -> Report {
        let mut targets: Vec<String> = Vec::new();
        for r in &runs {
            if !targets.contains(&r.target) {
                targets.push(r.target.clone());
            }
        }
        Report {
            date: "2026-12-01".to_owned(),
            command: "test".to_owned(),
            machine: MachineInfo::read(),
            sizes: Sizes::quick(),
            runs_per_scenario: 1,
            targets,
            runs,
        }
    }

    fn row<'a>(table: &'a str, metric: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| broadcast | {metric} |")))
            .unwrap_or_else(|| panic!("no row {metric:?} in\n{table}"))
    }

    #[test]
    fn redis_targets_read_as_a_multiple_of_the_memory_engine() {
        let report = report_of(vec![
            broadcast_run(SUBJECT, 0.5, None),
            broadcast_run(REDIS_TARGET, 0.6, Some(0.3)),
            broadcast_run("floor", 0.25, None),
        ]);
        let t = table(&report, &medians(&report.runs));
        let header = t.lines().next().unwrap_or_default();
        assert!(
            header.contains("| switchboard-redis ÷ switchboard |"),
            "{header}"
        );
        assert!(header.contains("| switchboard ÷ floor |"), "{header}");
        // servers + Redis: 0.9 µs against 0.5 µs is 1.8×, over the 1.5× goal.
        let total = row(&t, "servers + Redis CPU per delivery");
        assert!(
            total.contains("| 0.90 µs |") && total.contains("| 1.80× |"),
            "{total}"
        );
        assert!(total.ends_with("| **no** |"), "{total}");
        assert!(row(&t, "Redis CPU per delivery").contains("| 0.30 µs |"));
        // The server's own CPU: switchboard ÷ floor is 2.00×.
        assert!(row(&t, "server CPU per delivery").contains("| 2.00× |"));
    }

    #[test]
    fn redis_rows_only_with_a_redis_target() {
        let report = report_of(vec![
            broadcast_run(SUBJECT, 0.5, None),
            broadcast_run("floor", 0.5, None),
        ]);
        let t = table(&report, &medians(&report.runs));
        assert!(!t.contains("Redis"), "{t}");
    }

    #[test]
    fn sockudo_is_compared_with_switchboard_pusher_and_a_missing_one_is_noted() {
        let mut missing = broadcast_run("node-ws", 0.0, None);
        missing.measure = None;
        missing.skipped = Some("node-ws not installed".to_owned());
        let report = report_of(vec![
            broadcast_run(SUBJECT, 0.5, None),
            broadcast_run(PUSHER_TARGET, 0.6, None),
            broadcast_run("sockudo", 1.2, None),
            missing,
        ]);
        let t = table(&report, &medians(&report.runs));
        let header = t.lines().next().unwrap_or_default();
        assert!(
            header.contains("| switchboard-pusher ÷ sockudo |"),
            "{header}"
        );
        assert!(!header.contains("switchboard ÷ sockudo"), "{header}");
        // switchboard ÷ switchboard-pusher 0.83×, then switchboard-pusher ÷ sockudo 0.50×.
        let cpu = row(&t, "server CPU per delivery");
        assert!(
            cpu.contains("| 0.83× |") && cpu.contains("| 0.50× |"),
            "{cpu}"
        );
        assert!(
            t.contains("Not measured:\n\n- node-ws: node-ws not installed"),
            "{t}"
        );
        assert!(!t.contains("Runs that failed"), "{t}");
    }

    #[test]
    fn delta_runs_say_how_their_deliveries_came() {
        let mut delta = broadcast_run(DELTA_TARGET, 0.6, None);
        delta.deltas = Some(crate::coordinator::DeltaStats {
            deltas: 990,
            full: 10,
            broken: 0,
        });
        let report = report_of(vec![broadcast_run(SUBJECT, 0.5, None), delta]);
        let t = table(&report, &medians(&report.runs));
        let header = t.lines().next().unwrap_or_default();
        assert!(
            header.contains("| switchboard-delta ÷ switchboard |"),
            "{header}"
        );
        assert!(
            t.contains(
                "- switchboard-delta broadcast #1: 990 of 1,000 measured deliveries as deltas, \
                 10 full; 0 deltas could not be applied"
            ),
            "{t}"
        );
    }

    #[test]
    fn sections_splice_their_own_blocks() {
        let dir = std::env::temp_dir().join(format!("bench-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("doc.md");
        let blocks = |name: &str| {
            format!("<!-- bench:{name}:start -->\nold {name}\n<!-- bench:{name}:end -->\n")
        };
        let doc = ["machine", "table", "redis-machine", "redis-table"]
            .map(blocks)
            .concat();
        std::fs::write(&path, doc).unwrap();
        let report = report_of(vec![broadcast_run(SUBJECT, 0.5, None)]);
        update_doc(&path, Some("redis"), &report, "NEW TABLE").unwrap();
        let out = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.contains("old machine") && out.contains("old table"),
            "{out}"
        );
        assert!(
            !out.contains("old redis-table") && out.contains("NEW TABLE"),
            "{out}"
        );
        assert!(!out.contains("old redis-machine"), "{out}");
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(fmt_value(3000.0, Unit::Bytes), "2.9 KiB");
        assert_eq!(fmt_value(900.0, Unit::Bytes), "900 B");
        assert_eq!(fmt_value(12_771_328.0, Unit::Bytes), "12.2 MiB");
        assert_eq!(today().len(), 10);
    }
}
