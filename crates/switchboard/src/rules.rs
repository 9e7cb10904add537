//! Channel permission rules: pure functions of an identity's claims and the config.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::Identity;
use crate::channel;
use crate::config::{Config, NamespaceConfig};

/// Why a channel operation was refused by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The name is not a valid channel name.
    #[error("invalid channel name")]
    InvalidName,
    /// The namespace is not configured.
    #[error("unknown channel")]
    UnknownChannel,
    /// The identity may not do this.
    #[error("permission denied")]
    PermissionDenied,
}

/// Compiled namespace rules and auto-subscribe templates.
#[derive(Debug)]
pub struct Rules {
    namespaces: HashMap<String, Arc<NamespaceConfig>>,
    auto_subscribe: Vec<String>,
    max_channel_length: usize,
}

impl Rules {
    /// Builds the rules from config.
    pub fn new(config: &Config) -> Self {
        Self {
            namespaces: config
                .namespaces
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            auto_subscribe: config.auto_subscribe.clone(),
            max_channel_length: config.limits.max_channel_length,
        }
    }

    /// The namespace config of a valid channel name.
    ///
    /// # Errors
    /// [`RuleError::InvalidName`] or [`RuleError::UnknownChannel`].
    pub fn namespace(&self, channel: &str) -> Result<&Arc<NamespaceConfig>, RuleError> {
        channel::validate(channel, self.max_channel_length).map_err(|_| RuleError::InvalidName)?;
        self.namespaces
            .get(channel::namespace(channel))
            .ok_or(RuleError::UnknownChannel)
    }

    /// May `id` subscribe to `channel`? `granted` says a valid subscription token for
    /// this channel and user came with the request.
    ///
    /// # Errors
    /// A [`RuleError`] saying why not.
    pub fn check_subscribe(
        &self,
        id: &Identity,
        channel: &str,
        granted: bool,
    ) -> Result<&Arc<NamespaceConfig>, RuleError> {
        let ns = self.namespace(channel)?;
        let role_admitted = ns.subscribe_roles.iter().any(|r| id.roles.contains(r));
        // A pattern in the token's `channels` claim grants every channel it covers.
        let pattern_granted = id
            .channels
            .iter()
            .any(|c| c.ends_with('*') && crate::auth::channel_matches(c, channel));
        if granted
            || role_admitted
            || pattern_granted
            || ns.subscribe.iter().any(|t| template_allows(t, channel, id))
        {
            Ok(ns)
        } else {
            Err(RuleError::PermissionDenied)
        }
    }

    /// May `id` publish into `channel` from the client, given whether it is subscribed?
    ///
    /// # Errors
    /// A [`RuleError`] saying why not.
    pub fn check_publish(
        &self,
        channel: &str,
        subscribed: bool,
    ) -> Result<&Arc<NamespaceConfig>, RuleError> {
        let ns = self.namespace(channel)?;
        if ns.publish && subscribed {
            Ok(ns)
        } else {
            Err(RuleError::PermissionDenied)
        }
    }

    /// Channels a connection joins on connect: auto-subscribe templates expanded with
    /// its claims, then the token's `channels` claim. Names that are invalid or in an
    /// unknown namespace are skipped (logged by the caller), duplicates removed.
    pub fn server_side_channels(&self, id: &Identity) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let candidates = self
            .auto_subscribe
            .iter()
            .flat_map(|t| expand(t, id))
            // Patterns (`device:acme.*`) are grants, not channels to join.
            .chain(id.channels.iter().filter(|c| !c.ends_with('*')).cloned());
        for ch in candidates {
            if self.namespace(&ch).is_ok() && !out.contains(&ch) {
                out.push(ch);
            }
        }
        out
    }
}

fn template_allows(template: &str, channel: &str, id: &Identity) -> bool {
    template == "*" || expand(template, id).iter().any(|c| c == channel)
}

/// The claims a template may name: `{sub}` (alias `{user}`), `{tenant}`, `{roles}`
/// (alias `{role}`).
pub const TEMPLATE_CLAIMS: &[&str] = &["sub", "user", "tenant", "roles", "role"];

/// Why a channel template can never expand the way its author meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{placeholder}` that is not one of [`TEMPLATE_CLAIMS`].
    #[error("{{{0}}} is not a claim (known: {{sub}}, {{user}}, {{tenant}}, {{roles}}, {{role}})")]
    UnknownClaim(String),
    /// A `{` without its `}`.
    #[error("unclosed {{")]
    Unclosed,
}

/// Checks that every placeholder in `template` names a known claim.
///
/// # Errors
/// The first placeholder that [`expand`] would silently turn into no channel at all.
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(TemplateError::Unclosed);
        };
        let claim = &rest[start + 1..start + len];
        if !TEMPLATE_CLAIMS.contains(&claim) {
            return Err(TemplateError::UnknownClaim(claim.to_owned()));
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

/// Expands `{sub}`, `{tenant}` and `{roles}` (one channel per role) in a template.
/// A placeholder whose claim is missing yields no channel at all.
pub fn expand(template: &str, id: &Identity) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        for s in &mut out {
            s.push_str(&rest[..start]);
        }
        let values: Vec<&str> = match &rest[start + 1..start + len] {
            "sub" | "user" => vec![&*id.user],
            "tenant" => id.tenant.as_deref().into_iter().collect(),
            "roles" | "role" => id.roles.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        let values: Vec<&str> = values.into_iter().filter(|v| !v.is_empty()).collect();
        out = out
            .iter()
            .flat_map(|prefix| values.iter().map(move |v| format!("{prefix}{v}")))
            .collect();
        rest = &rest[start + len + 1..];
    }
    for s in &mut out {
        s.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, roles: &[&str], tenant: Option<&str>) -> Identity {
        Identity {
            user: user.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            tenant: tenant.map(str::to_owned),
            ..Identity::default()
        }
    }

    fn rules(toml_ns: &[(&str, &[&str])], auto: &[&str]) -> Rules {
        let mut c = Config::default();
        for (name, subscribe) in toml_ns {
            c.namespaces.insert(
                name.to_string(),
                NamespaceConfig {
                    subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                    ..NamespaceConfig::default()
                },
            );
        }
        c.auto_subscribe = auto.iter().map(|s| s.to_string()).collect();
        Rules::new(&c)
    }

    #[test]
    fn a_role_rule_admits_every_channel_of_its_namespace() {
        let mut c = Config::default();
        c.namespaces.insert(
            "observation".into(),
            NamespaceConfig {
                subscribe_roles: vec!["admin".into()],
                ..NamespaceConfig::default()
            },
        );
        let r = Rules::new(&c);
        let admin = id("1", &["admin"], None);
        assert!(r.check_subscribe(&admin, "observation:9", false).is_ok());
        assert!(r
            .check_subscribe(&admin, "observation:any.thing", false)
            .is_ok());
        let tech = id("2", &["tech"], None);
        assert_eq!(
            r.check_subscribe(&tech, "observation:9", false)
                .unwrap_err(),
            RuleError::PermissionDenied
        );
        // Only in its own namespace.
        assert!(r.check_subscribe(&admin, "user:2", false).is_err());
    }

    #[test]
    fn channel_patterns_in_the_token_grant_and_are_not_joined() {
        let r = rules(&[("device", &[])], &["user:{sub}"]);
        let mut i = id("7", &[], None);
        i.channels = vec!["device:acme.*".into(), "device:solo".into()];
        assert!(r.check_subscribe(&i, "device:acme.3", false).is_ok());
        assert!(r.check_subscribe(&i, "device:other.3", false).is_err());
        assert!(
            r.check_subscribe(&i, "device:solo", false).is_err(),
            "a plain channel in the claim is joined on connect, not a grant"
        );
        assert_eq!(r.server_side_channels(&i), vec!["user:7", "device:solo"]);
    }

    #[test]
    fn expands_templates() {
        let i = id("42", &["admin", "tech"], Some("acme"));
        assert_eq!(expand("user:{sub}", &i), vec!["user:42"]);
        assert_eq!(expand("role:{roles}", &i), vec!["role:admin", "role:tech"]);
        assert_eq!(expand("tenant:{tenant}:role:{roles}", &i).len(), 2);
        assert!(expand("tenant:{tenant}", &id("1", &[], None)).is_empty());
        assert!(expand("x:{unknown}", &i).is_empty());
    }

    #[test]
    fn templates_naming_unknown_claims_are_refused() {
        assert_eq!(check_template("user:{sub}"), Ok(()));
        assert_eq!(check_template("t:{tenant}:r:{roles}"), Ok(()));
        assert_eq!(check_template("*"), Ok(()));
        assert_eq!(
            check_template("x:{bogus}"),
            Err(TemplateError::UnknownClaim("bogus".into()))
        );
        assert_eq!(check_template("x:{sub"), Err(TemplateError::Unclosed));
    }

    #[test]
    fn default_rules_are_safe() {
        let r = Rules::new(&Config::default());
        let me = id("42", &[], None);
        assert!(r.check_subscribe(&me, "user:42", false).is_ok());
        assert_eq!(
            r.check_subscribe(&me, "user:43", false).unwrap_err(),
            RuleError::PermissionDenied
        );
        assert_eq!(
            r.check_subscribe(&me, "chat:1", false).unwrap_err(),
            RuleError::UnknownChannel
        );
        assert_eq!(
            r.check_subscribe(&me, "bad name", false).unwrap_err(),
            RuleError::InvalidName
        );
        assert!(r.check_publish("user:42", true).is_err());
        assert_eq!(r.server_side_channels(&me), vec!["user:42"]);
    }

    #[test]
    fn role_tenant_any_and_token_rules() {
        let r = rules(
            &[
                ("role", &["role:{roles}"]),
                ("tenant", &["tenant:{tenant}"]),
                ("lobby", &["*"]),
                ("observation", &[]),
            ],
            &["user:{sub}", "role:{roles}", "tenant:{tenant}"],
        );
        let tech = id("7", &["tech"], Some("acme"));
        assert!(r.check_subscribe(&tech, "role:tech", false).is_ok());
        assert!(r.check_subscribe(&tech, "role:admin", false).is_err());
        assert!(r.check_subscribe(&tech, "tenant:acme", false).is_ok());
        assert!(r.check_subscribe(&tech, "tenant:other", false).is_err());
        assert!(r.check_subscribe(&tech, "lobby:x", false).is_ok());
        assert!(r.check_subscribe(&tech, "observation:9", false).is_err());
        assert!(r.check_subscribe(&tech, "observation:9", true).is_ok());
        assert_eq!(
            r.server_side_channels(&tech),
            vec!["user:7", "role:tech", "tenant:acme"]
        );
    }
}
