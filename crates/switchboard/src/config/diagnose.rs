//! Configuration errors a person can act on: each names the key (or the
//! `SWITCHBOARD_*` variable) at fault and, for a typo, the nearest valid name.

use figment::error::Kind;

use super::Config;

/// Where a configuration error came from, as the message names it.
enum Origin {
    /// A `SWITCHBOARD_*` environment variable.
    Env,
    /// The file, a flag or the defaults.
    Key,
}

/// Turns every error figment collected into one line each.
pub(super) fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| describe_one(&e))
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_one(e: &figment::Error) -> String {
    let origin = match &e.metadata {
        Some(m) if m.name.contains("environment variable") => Origin::Env,
        _ => Origin::Key,
    };
    let source = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|s| format!(" in {s}"))
        .unwrap_or_default();
    // Figment's path is the failing key itself; for an unknown field it ends with it.
    let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
    match &e.kind {
        Kind::UnknownField(field, expected) => {
            let parent = match path.split_last() {
                Some((last, parent)) if last == field => parent,
                _ => &path[..],
            };
            let mut wrong = parent.to_vec();
            wrong.push(field);
            let candidates = candidates(parent, expected, &origin);
            let hint = nearest(&wrong.join("."), &candidates)
                .map(|best| format!(" (did you mean {}?)", name(&origin, &best)))
                .unwrap_or_default();
            match origin {
                Origin::Env => format!(
                    "unknown variable {}{hint}; variables name configuration keys, nested ones with __ (docs/config.md)",
                    name(&origin, &wrong.join("."))
                ),
                Origin::Key => format!("unknown key {}{source}{hint}", name(&origin, &wrong.join("."))),
            }
        }
        Kind::UnknownVariant(value, expected) => {
            let valid = expected
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let expected: Vec<String> = expected.iter().map(|v| (*v).to_owned()).collect();
            let hint = nearest(value, &expected)
                .map(|best| format!(" (did you mean {best:?}?)"))
                .unwrap_or_default();
            format!(
                "{}{source}: {value:?} is not one of {valid}{hint}",
                name(&origin, &path.join("."))
            )
        }
        kind if path.is_empty() => format!("{kind}{source}"),
        kind => format!("{}{source}: {kind}", name(&origin, &path.join("."))),
    }
}

/// How a dotted key is written where it came from.
fn name(origin: &Origin, dotted: &str) -> String {
    match origin {
        Origin::Env => format!(
            "SWITCHBOARD_{}",
            dotted.replace('.', "__").to_ascii_uppercase()
        ),
        Origin::Key => format!("`{dotted}`"),
    }
}

/// Dotted keys a misspelt key under `parent` may have meant: its siblings, and for a
/// variable at the top level also every nested key (`SWITCHBOARD_OUTBOX_SIZE` means
/// `SWITCHBOARD_LIMITS__OUTBOX_SIZE`).
fn candidates(parent: &[&str], expected: &[&str], origin: &Origin) -> Vec<String> {
    let prefix = |k: &str| {
        let mut p = parent.to_vec();
        p.push(k);
        p.join(".")
    };
    let mut out: Vec<String> = expected.iter().map(|k| prefix(k)).collect();
    if parent.is_empty() && matches!(origin, Origin::Env) {
        if let Ok(serde_json::Value::Object(top)) = serde_json::to_value(Config::default()) {
            for (section, value) in top {
                // Namespace names are the operator's; their keys are suggested in place.
                if section == "namespaces" {
                    continue;
                }
                if let serde_json::Value::Object(keys) = value {
                    out.extend(keys.keys().map(|k| format!("{section}.{k}")));
                }
            }
        }
    }
    out
}

/// The candidate `wrong` most plausibly meant: one ending in the same last segment,
/// else the closest within a few edits.
fn nearest(wrong: &str, candidates: &[String]) -> Option<String> {
    let last = wrong.rsplit('.').next().unwrap_or(wrong);
    if let Some(c) = candidates
        .iter()
        .find(|c| c.as_str() != wrong && c.rsplit('.').next() == Some(last))
    {
        return Some(c.clone());
    }
    let allowed = (wrong.len() / 3).max(2);
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(wrong, c), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn suggests_the_nearest_key() {
        let c = owned(&["bind", "log_format", "limits.outbox_size"]);
        assert_eq!(nearest("bindd", &c).as_deref(), Some("bind"));
        assert_eq!(nearest("log_fromat", &c).as_deref(), Some("log_format"));
        assert_eq!(
            nearest("outbox_size", &c).as_deref(),
            Some("limits.outbox_size")
        );
        assert_eq!(nearest("engine", &c), None);
    }

    #[test]
    fn variables_are_named_as_written() {
        assert_eq!(
            name(&Origin::Env, "limits.outbox_size"),
            "SWITCHBOARD_LIMITS__OUTBOX_SIZE"
        );
        assert_eq!(
            name(&Origin::Key, "limits.outbox_size"),
            "`limits.outbox_size`"
        );
    }
}
