//! Server API keys: where a request carries one, and a comparison that takes the same
//! time whichever byte differs.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The configured keys (several, so one can be rotated without downtime).
#[derive(Clone)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ApiKeys {
    // Never print the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.0.len())
    }
}

impl ApiKeys {
    /// Keys from configuration; empty ones are ignored.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            keys.into_iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        )
    }

    /// Whether no key is configured (then every request is refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the request carries one of the keys, in `X-API-Key: <key>` or
    /// `Authorization: apikey <key>`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        presented(headers).is_some_and(|k| self.matches(k.as_bytes()))
    }

    /// Compares against every key without stopping at the first match, each comparison
    /// in constant time for keys of equal length.
    fn matches(&self, presented: &[u8]) -> bool {
        if presented.is_empty() {
            return false;
        }
        let mut found = subtle::Choice::from(0);
        for key in &self.0 {
            found |= key.as_slice().ct_eq(presented);
        }
        found.into()
    }
}

/// The key a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok().map(str::trim);
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("apikey").then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn both_header_forms_and_several_keys() {
        let keys = ApiKeys::new(["", "old", "new"]);
        assert!(keys.admits(&headers(&[("x-api-key", "old")])));
        assert!(keys.admits(&headers(&[("x-api-key", "new")])));
        assert!(keys.admits(&headers(&[("authorization", "apikey new")])));
        assert!(keys.admits(&headers(&[("authorization", "ApiKey  old ")])));
        assert!(!keys.admits(&headers(&[("authorization", "Bearer new")])));
        assert!(!keys.admits(&headers(&[("x-api-key", "ne")])));
        assert!(!keys.admits(&headers(&[("x-api-key", "")])));
        assert!(!keys.admits(&headers(&[])));
        assert!(!ApiKeys::new([""]).admits(&headers(&[("x-api-key", "")])));
        assert!(!format!("{keys:?}").contains("old"));
    }
}
