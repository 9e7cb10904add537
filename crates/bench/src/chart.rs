//! SVG bar charts of the medians, drawn by hand (no plotting dependency).

use std::fmt::Write as _;
use std::path::Path;

use crate::report::{lookup, Medians, Report};

const COLORS: &[&str] = &["#1f6feb", "#8c959f", "#d1242f", "#2da44e", "#bf8700"];

/// A grouped bar chart: one group per category, one bar per series.
pub(crate) fn bar_chart(
    title: &str,
    unit: &str,
    categories: &[&str],
    series: &[(String, Vec<Option<f64>>)],
    goal: Option<(f64, &str)>,
) -> String {
    let (w, h) = (720.0, 380.0);
    let (left, right, top, bottom) = (70.0, 20.0, 50.0, 70.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(goal.map_or(0.0, |g| g.0), f64::max)
        .max(1e-9);
    let nice = nice_ceiling(max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        w / 2.0,
        xml(title)
    );
    for i in 0..=4 {
        let v = nice * i as f64 / 4.0;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#d0d7de"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        xml(unit)
    );
    let groups = categories.len().max(1) as f64;
    let group_w = plot_w / groups;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (gi, cat) in categories.iter().enumerate() {
        let gx = left + group_w * gi as f64 + group_w * 0.1;
        for (si, (_, values)) in series.iter().enumerate() {
            let Some(v) = values.get(gi).copied().flatten() else {
                continue;
            };
            let bh = plot_h * v / nice;
            let x = gx + bar_w * si as f64;
            let y = top + plot_h - bh;
            let color = COLORS[si % COLORS.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                bar_w - 2.0,
                x + bar_w / 2.0,
                y - 3.0,
                short(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + group_w * 0.4,
            top + plot_h + 18.0,
            xml(cat)
        );
    }
    if let Some((g, label)) = goal {
        let y = top + plot_h - plot_h * g / nice;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#2da44e" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#2da44e">{}</text>"##,
            w - right,
            w - right - 4.0,
            y - 4.0,
            xml(label)
        );
    }
    for (si, (name, _)) in series.iter().enumerate() {
        let x = left + 140.0 * si as f64;
        let y = h - 22.0;
        let color = COLORS[si % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{y}">{}</text>"#,
            y - 10.0,
            x + 16.0,
            xml(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the charts of the report into `dir`.
pub(crate) fn write_charts(dir: &Path, report: &Report, m: &Medians) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let series = |scenario: &str, paths: &[&str]| -> Vec<(String, Vec<Option<f64>>)> {
        report
            .targets
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    paths.iter().map(|p| lookup(m, t, scenario, p)).collect(),
                )
            })
            .collect()
    };
    let charts = [
        (
            "broadcast.svg",
            "Broadcast: deliveries per second (higher is better)",
            "deliveries/s",
            vec!["deliveries/s"],
            series("broadcast", &["measure.deliveries_per_second"]),
            None,
        ),
        (
            "chat-latency.svg",
            "Chat: publish-to-delivery latency (lower is better)",
            "ms",
            vec!["p50", "p99", "p99.9"],
            series(
                "chat",
                &[
                    "measure.latency_ms.p50",
                    "measure.latency_ms.p99",
                    "measure.latency_ms.p999",
                ],
            ),
            Some((5.0, "goal for p99: 5 ms")),
        ),
        (
            "memory.svg",
            "Idle: server memory per connection (lower is better)",
            "bytes",
            vec!["connected", "2 subscriptions"],
            series(
                "idle",
                &[
                    "memory.per_connection_bytes",
                    "memory.per_connection_subscribed_bytes",
                ],
            ),
            Some((4096.0, "goal with 2 subscriptions: 4 KiB")),
        ),
        (
            "connect.svg",
            "Connect storm: connects per second (higher is better)",
            "connects/s",
            vec!["connects/s"],
            series("connect", &["connect.per_second"]),
            Some((10_000.0, "goal: 10,000 in 1 s")),
        ),
    ];
    for (file, title, unit, cats, data, goal) in charts {
        if data.iter().all(|(_, v)| v.iter().all(Option::is_none)) {
            continue;
        }
        std::fs::write(dir.join(file), bar_chart(title, unit, &cats, &data, goal))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_and_goal() {
        let svg = bar_chart(
            "t",
            "u",
            &["a"],
            &[("x".into(), vec![Some(1.0)])],
            Some((2.0, "g")),
        );
        assert!(svg.starts_with("<svg") && svg.contains("stroke-dasharray"));
        assert_eq!(short(0.0), "0");
        assert_eq!(short(13_700.0), "13.7k");
    }
}
