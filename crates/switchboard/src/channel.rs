//! Channel names: `namespace:rest`, validated once at the edge.

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Empty or longer than the configured maximum.
    #[error("channel name length out of range")]
    Length,
    /// A character outside `[A-Za-z0-9_.:@=,;#/|+-]`.
    #[error("channel name has a forbidden character")]
    Character,
}

/// Whether `b` may appear in a namespace or channel name (besides `:` in the rest).
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.@=,;#/|+".contains(&b)
}

/// Checks a channel name.
///
/// # Errors
/// [`ChannelNameError`] for an empty, overlong or oddly spelled name.
pub fn validate(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    if name.is_empty() || name.len() > max_len {
        return Err(ChannelNameError::Length);
    }
    if !name.bytes().all(|b| is_name_byte(b) || b == b':') {
        return Err(ChannelNameError::Character);
    }
    Ok(())
}

/// The namespace of a channel: the part before the first `:`, or `default` when there is none.
pub fn namespace(name: &str) -> &str {
    match name.split_once(':') {
        Some((ns, _)) if !ns.is_empty() => ns,
        _ => "default",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate("conversation:42", 255).is_ok());
        assert!(validate("tenant:acme-corp.eu", 255).is_ok());
        assert_eq!(validate("", 255), Err(ChannelNameError::Length));
        assert_eq!(
            validate(&"a".repeat(256), 255),
            Err(ChannelNameError::Length)
        );
        assert_eq!(
            validate("chat:héllo", 255),
            Err(ChannelNameError::Character)
        );
        assert_eq!(validate("chat: x", 255), Err(ChannelNameError::Character));
        assert_eq!(namespace("chat:1:2"), "chat");
        assert_eq!(namespace("news"), "default");
        assert_eq!(namespace(":x"), "default");
    }
}
