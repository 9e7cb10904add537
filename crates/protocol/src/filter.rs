//! Publication filters by tags: the `tf` tree of a subscribe request (centrifuge-js
//! `tagsFilter`, Centrifugo's `FilterNode`), checked once at subscribe time and then
//! evaluated against each publication's tags without allocating.
//!
//! A leaf compares one tag (`cmp`: `eq`, `neq`, `in`, `nin`, `ex`, `nex`, `sw`, `ew`,
//! `ct`, `gt`, `gte`, `lt`, `lte`); a branch (`op`: `and`, `or`, `not`) combines its
//! `nodes`. Numeric comparisons read both sides as decimals (`-12.50`); a tag that is
//! absent or not a decimal does not match.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;

/// A filter as the client sends it (JSON or Protobuf `FilterNode`).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FilterNode {
    /// `""` for a leaf, `and`, `or` or `not` for a branch.
    pub op: String,
    /// The tag a leaf compares.
    pub key: String,
    /// A leaf's comparison.
    pub cmp: String,
    /// A leaf's value (all comparisons but `in`, `nin`, `ex`, `nex`).
    pub val: String,
    /// A leaf's values (`in`, `nin`).
    pub vals: Vec<String>,
    /// A branch's children.
    pub nodes: Vec<FilterNode>,
}

/// How large a filter may be: deeper or larger trees are refused at subscribe time,
/// so evaluating one per publication stays cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Levels of nesting (a lone leaf is depth 1).
    pub max_depth: usize,
    /// Nodes plus the values of `in`/`nin` lists.
    pub max_size: usize,
}

/// Why a filter was refused. The text is safe to show the client: it describes the
/// client's own filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FilterError {}

/// A validated filter, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// All children match.
    And(Vec<TagFilter>),
    /// Some child matches.
    Or(Vec<TagFilter>),
    /// The child does not match.
    Not(Box<TagFilter>),
    /// A comparison of one tag.
    Leaf {
        /// The tag.
        key: String,
        /// The comparison.
        test: Test,
    },
}

/// A leaf's comparison, its operand parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// Present and equal.
    Eq(String),
    /// Absent or different.
    Neq(String),
    /// Present and one of (an absent tag reads as `""`, as Centrifugo does).
    In(Vec<String>),
    /// Not one of (an absent tag reads as `""`).
    NotIn(Vec<String>),
    /// Present.
    Exists,
    /// Absent.
    NotExists,
    /// Present and starts with.
    StartsWith(String),
    /// Present and ends with.
    EndsWith(String),
    /// Present and contains.
    Contains(String),
    /// Present, a decimal, and compares to the operand as wanted.
    Number {
        /// The operand (a valid decimal, checked at validation).
        operand: String,
        /// The orderings of `tag` against `operand` that match.
        accept: [bool; 3],
    },
}

impl TagFilter {
    /// Checks a client's filter against Centrifugo's rules and `limits`.
    ///
    /// # Errors
    /// [`FilterError`] naming the first problem: an unknown `op` or `cmp`, a leaf
    /// without `key`, a value missing or given where the comparison takes none, an
    /// empty `in`/`nin` list, a non-decimal operand of `gt`/`gte`/`lt`/`lte`, a
    /// branch without children (`not`: exactly one), or a tree past `limits`.
    pub fn compile(node: &FilterNode, limits: FilterLimits) -> Result<Self, FilterError> {
        let mut size = 0;
        compile(node, limits, 1, &mut size)
    }

    /// Whether a publication with `tags` passes.
    pub fn matches(&self, tags: Option<&BTreeMap<String, String>>) -> bool {
        match self {
            Self::And(nodes) => nodes.iter().all(|n| n.matches(tags)),
            Self::Or(nodes) => nodes.iter().any(|n| n.matches(tags)),
            Self::Not(node) => !node.matches(tags),
            Self::Leaf { key, test } => {
                let value = tags.and_then(|t| t.get(key)).map(String::as_str);
                test.matches(value)
            }
        }
    }
}

impl Test {
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Exists, v) => v.is_some(),
            (Self::NotExists, v) => v.is_none(),
            (Self::Neq(want), v) => v != Some(want.as_str()),
            (Self::In(set), v) => set.iter().any(|s| s == v.unwrap_or("")),
            (Self::NotIn(set), v) => !set.iter().any(|s| s == v.unwrap_or("")),
            (_, None) => false,
            (Self::Eq(want), Some(v)) => v == want,
            (Self::StartsWith(p), Some(v)) => v.starts_with(p.as_str()),
            (Self::EndsWith(p), Some(v)) => v.ends_with(p.as_str()),
            (Self::Contains(p), Some(v)) => v.contains(p.as_str()),
            (Self::Number { operand, accept }, Some(v)) => compare_decimals(v, operand)
                .is_some_and(|o| match o {
                    Ordering::Less => accept[0],
                    Ordering::Equal => accept[1],
                    Ordering::Greater => accept[2],
                }),
        }
    }
}

fn compile(
    node: &FilterNode,
    limits: FilterLimits,
    depth: usize,
    size: &mut usize,
) -> Result<TagFilter, FilterError> {
    let err = |s: String| Err(FilterError(s));
    if depth > limits.max_depth {
        return err(format!("deeper than {} levels", limits.max_depth));
    }
    *size += 1 + node.vals.len();
    if *size > limits.max_size {
        return err(format!("larger than {} nodes and values", limits.max_size));
    }
    let children = |size: &mut usize| {
        node.nodes
            .iter()
            .map(|n| compile(n, limits, depth + 1, size))
            .collect::<Result<Vec<_>, _>>()
    };
    match node.op.as_str() {
        "and" | "or" => {
            if node.nodes.is_empty() {
                return err(format!("\"{}\" needs at least one node", node.op));
            }
            let nodes = children(size)?;
            Ok(if node.op == "and" {
                TagFilter::And(nodes)
            } else {
                TagFilter::Or(nodes)
            })
        }
        "not" => {
            if node.nodes.len() != 1 {
                return err("\"not\" needs exactly one node".to_owned());
            }
            let mut nodes = children(size)?;
            Ok(TagFilter::Not(Box::new(nodes.remove(0))))
        }
        "" => leaf(node),
        op => err(format!("unknown op \"{op}\"")),
    }
}

fn leaf(node: &FilterNode) -> Result<TagFilter, FilterError> {
    let err = |s: String| Err(FilterError(s));
    let cmp = node.cmp.as_str();
    if cmp.is_empty() {
        return err("a leaf needs \"cmp\"".to_owned());
    }
    if !node.nodes.is_empty() {
        return err("a leaf has no \"nodes\"".to_owned());
    }
    let single = || -> Result<String, FilterError> {
        if node.val.is_empty() {
            return Err(FilterError(format!("\"{cmp}\" needs \"val\"")));
        }
        if !node.vals.is_empty() {
            return Err(FilterError(format!("\"{cmp}\" takes no \"vals\"")));
        }
        Ok(node.val.clone())
    };
    let number = |accept: [bool; 3]| -> Result<Test, FilterError> {
        let operand = single()?;
        if compare_decimals(&operand, &operand).is_none() {
            return Err(FilterError(format!("\"{cmp}\" needs a decimal \"val\"")));
        }
        Ok(Test::Number { operand, accept })
    };
    let test = match cmp {
        "eq" => Test::Eq(single()?),
        "neq" => Test::Neq(single()?),
        "sw" => Test::StartsWith(single()?),
        "ew" => Test::EndsWith(single()?),
        "ct" => Test::Contains(single()?),
        "gt" => number([false, false, true])?,
        "gte" => number([false, true, true])?,
        "lt" => number([true, false, false])?,
        "lte" => number([true, true, false])?,
        "in" | "nin" => {
            if node.vals.is_empty() {
                return err(format!("\"{cmp}\" needs \"vals\""));
            }
            if !node.val.is_empty() {
                return err(format!("\"{cmp}\" takes no \"val\""));
            }
            if cmp == "in" {
                Test::In(node.vals.clone())
            } else {
                Test::NotIn(node.vals.clone())
            }
        }
        "ex" | "nex" => {
            if !node.val.is_empty() || !node.vals.is_empty() {
                return err(format!("\"{cmp}\" takes no \"val\" or \"vals\""));
            }
            if cmp == "ex" {
                Test::Exists
            } else {
                Test::NotExists
            }
        }
        other => return err(format!("unknown cmp \"{other}\"")),
    };
    if node.key.is_empty() {
        return err("a leaf needs \"key\"".to_owned());
    }
    Ok(TagFilter::Leaf {
        key: node.key.clone(),
        test,
    })
}

/// A decimal `[+-]digits[.digits]` split into sign, integer digits without leading
/// zeros and fraction digits without trailing zeros; `None` if it is not one.
fn decimal(s: &str) -> Option<(bool, &str, &str)> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    if rest.ends_with('.') {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    // Zero has no sign: "-0" equals "0".
    let negative = negative && !(int.is_empty() && frac.is_empty());
    Some((negative, int, frac))
}

/// Compares two decimals exactly, whatever their length; `None` if either is not one.
fn compare_decimals(a: &str, b: &str) -> Option<Ordering> {
    let (an, ai, af) = decimal(a)?;
    let (bn, bi, bf) = decimal(b)?;
    let magnitude = ai
        .len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(bi))
        .then_with(|| af.cmp(bf));
    Some(match (an, bn) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FilterLimits = FilterLimits {
        max_depth: 4,
        max_size: 16,
    };

    fn node(json: &str) -> FilterNode {
        serde_json::from_str(json).unwrap()
    }

    fn compiled(json: &str) -> TagFilter {
        TagFilter::compile(&node(json), LIMITS).unwrap()
    }

    fn refused(json: &str) -> String {
        TagFilter::compile(&node(json), LIMITS).unwrap_err().0
    }

    fn tags() -> BTreeMap<String, String> {
        [
            ("ticker", "AAPL"),
            ("source", "NASDAQ"),
            ("price", "150.25"),
            ("category", "tech"),
            ("volume", "1000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn centrifugo_documented_examples_match() {
        let t = tags();
        for f in [
            r#"{"key":"ticker","cmp":"eq","val":"AAPL"}"#,
            r#"{"key":"source","cmp":"neq","val":"TEST"}"#,
            r#"{"key":"category","cmp":"in","vals":["tech","finance"]}"#,
            r#"{"key":"ticker","cmp":"nin","vals":["MSFT","GOOGL"]}"#,
            r#"{"key":"price","cmp":"ex"}"#,
            r#"{"key":"internal_id","cmp":"nex"}"#,
            r#"{"key":"ticker","cmp":"sw","val":"AA"}"#,
            r#"{"key":"source","cmp":"ew","val":"DAQ"}"#,
            r#"{"key":"category","cmp":"ct","val":"ec"}"#,
            r#"{"key":"price","cmp":"gt","val":"100"}"#,
            r#"{"key":"volume","cmp":"gte","val":"1000"}"#,
            r#"{"key":"price","cmp":"lt","val":"200"}"#,
            r#"{"key":"volume","cmp":"lte","val":"1000"}"#,
            r#"{"op":"and","nodes":[{"key":"ticker","cmp":"eq","val":"AAPL"},{"key":"category","cmp":"eq","val":"tech"}]}"#,
            r#"{"op":"or","nodes":[{"key":"ticker","cmp":"eq","val":"MSFT"},{"key":"category","cmp":"eq","val":"tech"}]}"#,
            r#"{"op":"not","nodes":[{"key":"source","cmp":"eq","val":"NYSE"}]}"#,
        ] {
            assert!(compiled(f).matches(Some(&t)), "{f}");
        }
    }

    #[test]
    fn mismatches_and_absent_tags() {
        let t = tags();
        for f in [
            r#"{"key":"ticker","cmp":"eq","val":"MSFT"}"#,
            r#"{"key":"ticker","cmp":"neq","val":"AAPL"}"#,
            r#"{"key":"missing","cmp":"eq","val":"x"}"#,
            r#"{"key":"missing","cmp":"sw","val":"x"}"#,
            r#"{"key":"missing","cmp":"gt","val":"0"}"#,
            r#"{"key":"ticker","cmp":"gt","val":"0"}"#,
            r#"{"key":"price","cmp":"gt","val":"150.25"}"#,
            r#"{"key":"price","cmp":"lt","val":"150.250"}"#,
            r#"{"key":"category","cmp":"nin","vals":["tech"]}"#,
            r#"{"op":"and","nodes":[{"key":"ticker","cmp":"eq","val":"AAPL"},{"key":"category","cmp":"eq","val":"food"}]}"#,
            r#"{"op":"not","nodes":[{"key":"price","cmp":"ex"}]}"#,
        ] {
            assert!(!compiled(f).matches(Some(&t)), "{f}");
        }
        // A publication without tags: only what asks for absence passes.
        assert!(compiled(r#"{"key":"k","cmp":"nex"}"#).matches(None));
        assert!(compiled(r#"{"key":"k","cmp":"neq","val":"v"}"#).matches(None));
        assert!(!compiled(r#"{"key":"k","cmp":"eq","val":"v"}"#).matches(None));
    }

    #[test]
    fn decimals_compare_exactly() {
        use Ordering::*;
        for (a, b, want) in [
            ("1", "1.0", Equal),
            ("-0", "0", Equal),
            ("007.50", "7.5", Equal),
            ("0.5", "0.25", Greater),
            ("-2", "-10", Greater),
            ("-1", "1", Less),
            (
                "12345678901234567890123",
                "12345678901234567890122.999",
                Greater,
            ),
            (".5", "0.5", Equal),
        ] {
            assert_eq!(compare_decimals(a, b), Some(want), "{a} vs {b}");
        }
        for bad in ["", "-", ".", "1.", "1e3", "0x10", "1.2.3", "abc", "+-1"] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn invalid_filters_are_refused_with_the_reason() {
        for (f, why) in [
            (r#"{"key":"k"}"#, "a leaf needs \"cmp\""),
            (
                r#"{"key":"k","cmp":"like","val":"x"}"#,
                "unknown cmp \"like\"",
            ),
            (r#"{"op":"xor","nodes":[]}"#, "unknown op \"xor\""),
            (r#"{"cmp":"eq","val":"x"}"#, "a leaf needs \"key\""),
            (r#"{"key":"k","cmp":"eq"}"#, "\"eq\" needs \"val\""),
            (
                r#"{"key":"k","cmp":"eq","val":"x","vals":["y"]}"#,
                "\"eq\" takes no \"vals\"",
            ),
            (
                r#"{"key":"k","cmp":"in","vals":[]}"#,
                "\"in\" needs \"vals\"",
            ),
            (
                r#"{"key":"k","cmp":"nin","val":"x","vals":["y"]}"#,
                "\"nin\" takes no \"val\"",
            ),
            (
                r#"{"key":"k","cmp":"ex","val":"x"}"#,
                "\"ex\" takes no \"val\" or \"vals\"",
            ),
            (
                r#"{"key":"k","cmp":"gt","val":"ten"}"#,
                "\"gt\" needs a decimal \"val\"",
            ),
            (r#"{"op":"and"}"#, "\"and\" needs at least one node"),
            (
                r#"{"op":"not","nodes":[{"key":"a","cmp":"ex"},{"key":"b","cmp":"ex"}]}"#,
                "\"not\" needs exactly one node",
            ),
            (
                r#"{"key":"k","cmp":"ex","nodes":[{"key":"b","cmp":"ex"}]}"#,
                "a leaf has no \"nodes\"",
            ),
        ] {
            assert_eq!(refused(f), why, "{f}");
        }
    }

    #[test]
    fn limits_bound_depth_and_size() {
        let leaf = r#"{"key":"k","cmp":"ex"}"#;
        let nest = |levels: usize| {
            (0..levels).fold(leaf.to_owned(), |inner, _| {
                format!(r#"{{"op":"not","nodes":[{inner}]}}"#)
            })
        };
        assert!(TagFilter::compile(&node(&nest(3)), LIMITS).is_ok());
        assert_eq!(refused(&nest(4)), "deeper than 4 levels");
        let vals: Vec<String> = (0..15).map(|i| format!("\"{i}\"")).collect();
        let wide = format!(r#"{{"key":"k","cmp":"in","vals":[{}]}}"#, vals.join(","));
        assert!(TagFilter::compile(&node(&wide), LIMITS).is_ok());
        let vals: Vec<String> = (0..16).map(|i| format!("\"{i}\"")).collect();
        let wider = format!(r#"{{"key":"k","cmp":"in","vals":[{}]}}"#, vals.join(","));
        assert_eq!(refused(&wider), "larger than 16 nodes and values");
    }
}
