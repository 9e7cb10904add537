//! Token revocation: tokens revoked by id (`jti`), and users whose tokens issued
//! before a time (`iat`) are no longer valid, checked at every token verification and
//! applied at once to live connections and subscriptions.
//!
//! The records sit behind [`RevocationStore`] so that a multi-node engine can share
//! them (checked when a token is presented); [`MemoryRevocations`] keeps them in this
//! process. A [`Revocation`] travels to every node, which ends what it covers on its
//! live connections without reading the store.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::auth::{now_secs, TokenStamp};
use crate::engine::EngineError;

/// One revocation, as the server API made it and every node applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token whose `jti` is `id` (connection or subscription token).
    Token {
        /// The token's id.
        id: String,
    },
    /// `user`'s tokens issued before `issued_before`: all of them, or only the
    /// subscription tokens of `channel`.
    User {
        /// User id.
        user: String,
        /// Only this channel's subscription tokens, when set.
        channel: Option<String>,
        /// Unix seconds.
        issued_before: u64,
    },
}

impl Revocation {
    /// Whether this revocation refuses `token`, held by `user` as a connection token
    /// (`channel` `None`) or as the subscription token of `channel`.
    pub fn covers(&self, user: &str, channel: Option<&str>, token: &TokenStamp) -> bool {
        match self {
            Self::Token { id } => token.id.as_deref() == Some(id.as_str()),
            Self::User {
                user: u,
                channel: only,
                issued_before,
            } => {
                u == user
                    && (only.is_none() || only.as_deref() == channel)
                    // A token without `iat` can not show it was issued after the cut-off.
                    && token.issued_at.unwrap_or(0) < *issued_before
            }
        }
    }
}

/// Where revocation records live. Each record is kept until its `expire_at`.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Revokes the token whose `jti` is `id`.
    ///
    /// # Errors
    /// The backing store failed.
    async fn revoke_token(&self, id: &str, expire_at: u64) -> Result<(), EngineError>;

    /// Invalidates `user`'s tokens issued before `issued_before`: connection tokens and
    /// all subscription tokens, or only the subscription tokens of `channel`.
    ///
    /// # Errors
    /// The backing store failed.
    async fn invalidate_user_tokens(
        &self,
        user: &str,
        channel: Option<&str>,
        issued_before: u64,
        expire_at: u64,
    ) -> Result<(), EngineError>;

    /// Whether `token`, held by `user` (for `channel` when a subscription token), is
    /// revoked.
    ///
    /// # Errors
    /// The backing store failed.
    async fn is_revoked(
        &self,
        user: &str,
        channel: Option<&str>,
        token: &TokenStamp,
    ) -> Result<bool, EngineError>;
}

/// Revocation records in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    /// Short sections only, never across an await.
    inner: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    /// `jti` -> record expiry.
    tokens: HashMap<String, u64>,
    /// `(user, channel)` -> (issued_before, record expiry); channel `None`: every token.
    users: HashMap<(String, Option<String>), (u64, u64)>,
}

impl Records {
    fn purge(&mut self, now: u64) {
        self.tokens.retain(|_, exp| *exp > now);
        self.users.retain(|_, (_, exp)| *exp > now);
    }

    fn user_cutoff(&self, user: &str, channel: Option<&str>, now: u64) -> Option<u64> {
        let all = self.users.get(&(user.to_owned(), None));
        let one = channel.and_then(|c| self.users.get(&(user.to_owned(), Some(c.to_owned()))));
        all.into_iter()
            .chain(one)
            .filter(|(_, exp)| *exp > now)
            .map(|(before, _)| *before)
            .max()
    }
}

#[async_trait]
impl RevocationStore for MemoryRevocations {
    async fn revoke_token(&self, id: &str, expire_at: u64) -> Result<(), EngineError> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.purge(now_secs());
        let exp = r.tokens.entry(id.to_owned()).or_default();
        *exp = (*exp).max(expire_at);
        Ok(())
    }

    async fn invalidate_user_tokens(
        &self,
        user: &str,
        channel: Option<&str>,
        issued_before: u64,
        expire_at: u64,
    ) -> Result<(), EngineError> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.purge(now_secs());
        let entry = r
            .users
            .entry((user.to_owned(), channel.map(str::to_owned)))
            .or_default();
        entry.0 = entry.0.max(issued_before);
        entry.1 = entry.1.max(expire_at);
        Ok(())
    }

    async fn is_revoked(
        &self,
        user: &str,
        channel: Option<&str>,
        token: &TokenStamp,
    ) -> Result<bool, EngineError> {
        let now = now_secs();
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = &token.id {
            if r.tokens.get(id).is_some_and(|exp| *exp > now) {
                return Ok(true);
            }
        }
        // A token without `iat` can not show it was issued after the cut-off.
        Ok(r.user_cutoff(user, channel, now)
            .is_some_and(|before| token.issued_at.unwrap_or(0) < before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(id: Option<&str>, iat: Option<u64>) -> TokenStamp {
        TokenStamp {
            id: id.map(str::to_owned),
            issued_at: iat,
        }
    }

    #[test]
    fn a_revocation_covers_what_the_store_would_refuse() {
        let by_id = Revocation::Token { id: "t1".into() };
        assert!(by_id.covers("u", None, &stamp(Some("t1"), Some(5))));
        assert!(by_id.covers("v", Some("c:1"), &stamp(Some("t1"), None)));
        assert!(!by_id.covers("u", None, &stamp(Some("t2"), None)));
        assert!(!by_id.covers("u", None, &stamp(None, None)));

        let user = Revocation::User {
            user: "u".into(),
            channel: None,
            issued_before: 100,
        };
        assert!(user.covers("u", None, &stamp(None, Some(99))));
        assert!(user.covers("u", Some("c:1"), &stamp(None, Some(99))));
        assert!(user.covers("u", None, &stamp(None, None)));
        assert!(!user.covers("u", None, &stamp(None, Some(100))));
        assert!(!user.covers("v", None, &stamp(None, Some(1))));

        let one = Revocation::User {
            user: "u".into(),
            channel: Some("c:1".into()),
            issued_before: 100,
        };
        assert!(one.covers("u", Some("c:1"), &stamp(None, Some(5))));
        assert!(!one.covers("u", Some("c:2"), &stamp(None, Some(5))));
        assert!(!one.covers("u", None, &stamp(None, Some(5))));
        let json = serde_json::to_string(&one).unwrap();
        assert_eq!(serde_json::from_str::<Revocation>(&json).unwrap(), one);
    }

    #[tokio::test]
    async fn revoked_ids_and_user_cutoffs_until_their_records_expire() {
        let store = MemoryRevocations::default();
        let now = now_secs();
        let later = now + 60;
        store.revoke_token("t1", later).await.unwrap();
        assert!(store
            .is_revoked("u", None, &stamp(Some("t1"), None))
            .await
            .unwrap());
        assert!(!store
            .is_revoked("u", None, &stamp(Some("t2"), None))
            .await
            .unwrap());
        store.revoke_token("old", now - 1).await.unwrap();
        assert!(!store
            .is_revoked("u", None, &stamp(Some("old"), None))
            .await
            .unwrap());

        store
            .invalidate_user_tokens("u", None, 100, later)
            .await
            .unwrap();
        assert!(store
            .is_revoked("u", None, &stamp(None, Some(99)))
            .await
            .unwrap());
        assert!(!store
            .is_revoked("u", None, &stamp(None, Some(100)))
            .await
            .unwrap());
        assert!(store
            .is_revoked("u", None, &stamp(None, None))
            .await
            .unwrap());
        assert!(!store
            .is_revoked("v", None, &stamp(None, Some(1)))
            .await
            .unwrap());
        // A user-wide cut-off covers subscription tokens too.
        assert!(store
            .is_revoked("u", Some("c:1"), &stamp(None, Some(5)))
            .await
            .unwrap());

        store
            .invalidate_user_tokens("w", Some("c:1"), 100, later)
            .await
            .unwrap();
        assert!(store
            .is_revoked("w", Some("c:1"), &stamp(None, Some(5)))
            .await
            .unwrap());
        assert!(!store
            .is_revoked("w", Some("c:2"), &stamp(None, Some(5)))
            .await
            .unwrap());
        assert!(!store
            .is_revoked("w", None, &stamp(None, Some(5)))
            .await
            .unwrap());
    }
}
