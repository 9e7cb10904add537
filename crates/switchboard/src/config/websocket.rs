//! The `[websocket]` section: permessage-deflate compression (RFC 7692) on every
//! WebSocket endpoint, negotiated per connection and off by default.

use serde::{Deserialize, Serialize};

/// WebSocket options shared by every WebSocket endpoint (Centrifugo JSON and Protobuf,
/// `uni_websocket`, Socket.IO, Pusher).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Accept a client's permessage-deflate offer. Off: the extension is never
    /// negotiated and frames go out as they are.
    pub compression: bool,
    /// Deflate level, 1 (fastest) to 9 (smallest). A publication is compressed once for
    /// all its recipients, so a higher level costs per publication, not per delivery.
    pub compression_level: u32,
    /// Frames shorter than this many bytes go uncompressed: deflate saves little on
    /// them and costs the client an inflate per message.
    pub compression_min_size: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            compression: false,
            compression_level: 1,
            compression_min_size: 128,
        }
    }
}

impl WebSocketConfig {
    /// What is wrong with these values, if anything.
    pub(super) fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !(1..=9).contains(&self.compression_level) {
            errors.push("websocket.compression_level must be between 1 and 9".to_owned());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_must_be_one_to_nine() {
        assert!(WebSocketConfig::default().errors().is_empty());
        for level in [0, 10] {
            let c = WebSocketConfig {
                compression_level: level,
                ..WebSocketConfig::default()
            };
            assert_eq!(c.errors().len(), 1, "level {level}");
        }
    }
}
