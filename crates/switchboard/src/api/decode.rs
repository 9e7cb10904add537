//! Turning request bodies into checked commands: JSON objects only, integers as JSON
//! Schema counts them, and the limits the OpenAPI document promises (non-empty names,
//! lengths, ranges). A request that breaks its schema gets 400 as a whole.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;
use super::wire::*;

/// Every method of `POST /api/<method>` except `batch`, as the path names it.
pub const METHODS: [&str; 18] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "user_status",
    "revoke_token",
    "invalidate_user_tokens",
    "inbox_status",
    "inbox_read",
    "inbox_readers",
];

impl Command {
    /// Checks what the schema promises beyond types: required strings are not empty,
    /// lengths and ranges hold. A request that breaks its schema is refused whole (400).
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] naming the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        match self {
            Self::Publish(r) => {
                non_empty("channel", &r.channel)?;
                idempotency_key(r.idempotency_key.as_deref())
            }
            Self::Broadcast(r) => {
                if r.channels.is_empty() {
                    return Err(bad("channels must not be empty"));
                }
                idempotency_key(r.idempotency_key.as_deref())
            }
            Self::Subscribe(SubscribeRequest { user, channel, .. })
            | Self::Unsubscribe(UnsubscribeRequest { user, channel, .. }) => {
                non_empty("user", user)?;
                non_empty("channel", channel)
            }
            Self::Disconnect(r) => {
                non_empty("user", &r.user)?;
                if let Some(d) = &r.disconnect {
                    if !(4000..=4999).contains(&d.code) {
                        return Err(bad("disconnect.code must be in 4000..=4999"));
                    }
                    if d.reason.chars().count() > MAX_REASON_CHARS {
                        return Err(bad("disconnect.reason is longer than 123 characters"));
                    }
                }
                Ok(())
            }
            Self::Refresh(r) => non_empty("user", &r.user),
            Self::Presence(r) | Self::PresenceStats(r) | Self::HistoryRemove(r) => {
                non_empty("channel", &r.channel)
            }
            Self::History(r) => {
                non_empty("channel", &r.channel)?;
                if r.since
                    .as_ref()
                    .is_some_and(|s| i64::try_from(s.offset).is_err())
                {
                    return Err(bad("since.offset is out of range"));
                }
                Ok(())
            }
            Self::Channels(r) => {
                let len = r.pattern.as_deref().map_or(0, |p| p.chars().count());
                if len > MAX_PATTERN_CHARS {
                    return Err(bad("pattern is longer than 1024 characters"));
                }
                Ok(())
            }
            Self::Info(_) => Ok(()),
            Self::RevokeToken(r) => non_empty("uid", &r.uid),
            Self::InvalidateUserTokens(r) => {
                non_empty("user", &r.user)?;
                match &r.channel {
                    Some(c) => non_empty("channel", c),
                    None => Ok(()),
                }
            }
            Self::InboxStatus(r) => non_empty("user", &r.user),
            Self::InboxRead(r) => {
                non_empty("user", &r.user)?;
                non_empty("channel", &r.channel)
            }
            Self::InboxReaders(r) => non_empty("channel", &r.channel),
            Self::UserStatus(r) => {
                if r.users.len() > crate::session::MAX_STATUS_USERS {
                    return Err(bad("users holds more than 1000 ids"));
                }
                Ok(())
            }
        }
    }

    /// Decodes the body of `POST /api/<method>`.
    ///
    /// # Errors
    /// [`ApiError::MethodNotFound`] for an unknown method (`batch` included: it is not
    /// a command), [`ApiError::BadRequest`] for a body of the wrong shape.
    pub fn decode(method: &str, body: &[u8]) -> Result<Self, ApiError> {
        let command = match method {
            "publish" => Self::Publish(decode(body)?),
            "broadcast" => Self::Broadcast(decode(body)?),
            "subscribe" => Self::Subscribe(decode(body)?),
            "unsubscribe" => Self::Unsubscribe(decode(body)?),
            "disconnect" => Self::Disconnect(decode(body)?),
            "refresh" => Self::Refresh(decode(body)?),
            "presence" => Self::Presence(decode(body)?),
            "presence_stats" => Self::PresenceStats(decode(body)?),
            "history" => Self::History(decode(body)?),
            "history_remove" => Self::HistoryRemove(decode(body)?),
            "channels" => Self::Channels(decode(body)?),
            "info" => Self::Info(decode(body)?),
            "user_status" => Self::UserStatus(decode(body)?),
            "revoke_token" => Self::RevokeToken(decode(body)?),
            "invalidate_user_tokens" => Self::InvalidateUserTokens(decode(body)?),
            "inbox_status" => Self::InboxStatus(decode(body)?),
            "inbox_read" => Self::InboxRead(decode(body)?),
            "inbox_readers" => Self::InboxReaders(decode(body)?),
            _ => return Err(ApiError::MethodNotFound),
        };
        Ok(command)
    }
}

impl BatchRequest {
    /// Decodes and validates a `batch` body: one command breaking its schema refuses
    /// the whole batch, before any command runs.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`].
    pub fn decode(body: &[u8]) -> Result<Self, ApiError> {
        /// Commands as written: each is decoded like the body of its own method, so
        /// the same checks apply (objects only, no struct-as-array leniency).
        #[derive(Deserialize)]
        struct Raw {
            commands: Vec<BTreeMap<String, RawJson>>,
            #[serde(default)]
            parallel: bool,
        }
        let raw: Raw = decode(body)?;
        let mut commands = Vec::with_capacity(raw.commands.len());
        for (i, command) in raw.commands.into_iter().enumerate() {
            let in_command = |e: ApiError| bad(&format!("commands[{i}]: {}", reason(&e)));
            let mut entries = command.into_iter();
            let (Some((method, params)), None) = (entries.next(), entries.next()) else {
                return Err(in_command(bad("a command is an object with one key")));
            };
            let command = Command::decode(&method, params.get().as_bytes()).map_err(in_command)?;
            command.validate().map_err(in_command)?;
            commands.push(command);
        }
        Ok(Self {
            commands,
            parallel: raw.parallel,
        })
    }
}

/// Longest idempotency key, in characters (an entry stays under about a kilobyte).
pub const MAX_KEY_CHARS: usize = 128;
/// Longest `channels` pattern, in characters: matching costs pattern x name per channel.
pub const MAX_PATTERN_CHARS: usize = 1024;
/// Longest custom disconnect reason, in characters (it is then cut to 123 bytes).
pub const MAX_REASON_CHARS: usize = 123;

fn bad(why: &str) -> ApiError {
    ApiError::BadRequest(why.to_owned())
}

/// What is wrong, without the "bad request: " prefix.
fn reason(e: &ApiError) -> String {
    match e {
        ApiError::BadRequest(why) => why.clone(),
        ApiError::MethodNotFound => "unknown method".to_owned(),
        other => other.to_string(),
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(bad(&format!("{field} must not be empty")));
    }
    Ok(())
}

fn idempotency_key(key: Option<&str>) -> Result<(), ApiError> {
    if key.is_some_and(|k| k.chars().count() > MAX_KEY_CHARS) {
        return Err(bad("idempotency_key is longer than 128 characters"));
    }
    Ok(())
}

/// An integer field. JSON Schema counts `2.0` as the integer 2, and so do we; a
/// fraction, or a value out of the field's range, is an error.
pub(super) fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    let n = serde_json::Number::deserialize(d)?;
    let wide: Option<i128> = match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => Some(i.into()),
        (_, Some(u), _) => Some(u.into()),
        // Exactly representable integers only: |f| < 2^63 keeps the cast exact.
        (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 2f64.powi(63) => Some(f as i128),
        _ => None,
    };
    wide.and_then(|w| T::try_from(w).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer in range")))
}

/// A stream offset: an integer from 0 to 2^63 - 1, the range the schema gives
/// (`maximum` of a signed 64-bit integer), `2.0` counting as 2 like [`integer`].
pub(super) fn offset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v: i64 = integer(d)?;
    u64::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is not an offset")))
}

/// An optional integer field (`null` or absent: `None`).
pub(super) fn optional_integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    #[derive(Deserialize)]
    struct Wrapped<T: TryFrom<i128>>(#[serde(deserialize_with = "integer")] T);
    Ok(Option::<Wrapped<T>>::deserialize(d)?.map(|Wrapped(v)| v))
}

/// A nested object field. serde would also take a struct written as an array
/// (`[4001, "x"]`); the schema says object, so only an object (or `null`) is accepted.
pub(super) fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => serde_json::from_value(serde_json::Value::Object(map))
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Decodes a request body: a JSON object (an empty body counts as `{}`).
///
/// # Errors
/// [`ApiError::BadRequest`] saying what is wrong, never echoing the body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::BadRequest(e.to_string()));
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(body: &str) -> Result<Command, ApiError> {
        let c = Command::decode("history", body.as_bytes())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn integers_as_json_schema_counts_them() {
        let limit = |body| match history(body) {
            Ok(Command::History(h)) => Ok(h.limit),
            Ok(_) => unreachable!("decoded as history"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(limit(r#"{"channel":"c","limit":2}"#), Ok(Some(2)));
        assert_eq!(limit(r#"{"channel":"c","limit":2.0}"#), Ok(Some(2)));
        assert_eq!(limit(r#"{"channel":"c","limit":null}"#), Ok(None));
        assert_eq!(limit(r#"{"channel":"c"}"#), Ok(None));
        assert!(limit(r#"{"channel":"c","limit":2.5}"#).is_err());
        assert!(limit(r#"{"channel":"c","limit":4294967296}"#).is_err());
        assert!(limit(r#"{"channel":"c","limit":"2"}"#).is_err());
    }

    #[test]
    fn offsets_are_integers_within_the_schemas_range() {
        #[derive(Deserialize)]
        struct Off(#[serde(deserialize_with = "offset")] u64);
        let read = |j: &str| serde_json::from_str::<Off>(j).map(|Off(v)| v);
        assert_eq!(read("168.0").unwrap(), 168);
        assert_eq!(read("9223372036854775807").unwrap(), i64::MAX as u64);
        assert!(read("9223372036854775808").is_err());
        assert!(read("-1").is_err());
        assert!(read("1.5").is_err());
    }

    #[test]
    fn large_integral_floats_are_read_exactly() {
        // Found by schemathesis: without serde_json's float_roundtrip this parsed as
        // ...584.8 and was refused as "not an integer".
        let c = Command::decode(
            "revoke_token",
            br#"{"uid":"t","expire_at":1988602809952585.0}"#,
        );
        assert!(matches!(c, Ok(Command::RevokeToken(r)) if r.expire_at == 1_988_602_809_952_585));
        let c = Command::decode("invalidate_user_tokens", br#"{"user":"u","channel":""}"#)
            .and_then(|c| c.validate());
        assert!(
            c.is_err(),
            "an empty channel is refused, not read as every channel"
        );
    }

    #[test]
    fn bodies_must_be_objects_and_nested_objects_too() {
        assert!(history("[]").is_err());
        assert!(history(" \t").is_err());
        assert!(history(r#"{"channel":"c","since":[]}"#).is_err());
        assert!(history(r#"{"channel":"c","since":{"offset":1,"epoch":"e"}}"#).is_ok());
        assert!(matches!(
            Command::decode("info", b""),
            Ok(Command::Info(InfoRequest {}))
        ));
        assert!(matches!(
            Command::decode("batch", b"{}"),
            Err(ApiError::MethodNotFound)
        ));
    }

    #[test]
    fn a_batch_is_checked_whole_before_anything_runs() {
        let ok =
            br#"{"commands":[{"publish":{"channel":"a","data":1}},{"info":{}}],"parallel":true}"#;
        let batch = BatchRequest::decode(ok).unwrap();
        assert_eq!(batch.commands.len(), 2);
        for (bad, why) in [
            (
                r#"{"commands":[{"info":{}},{"publish":{"channel":"","data":1}}]}"#,
                "commands[1]: channel must not be empty",
            ),
            (
                r#"{"commands":[{"nope":{}}]}"#,
                "commands[0]: unknown method",
            ),
            (
                r#"{"commands":[{"info":{},"channels":{}}]}"#,
                "commands[0]: a command is an object with one key",
            ),
        ] {
            let err = BatchRequest::decode(bad.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), format!("bad request: {why}"));
        }
    }
}
