//! Error codes (replies to commands) and disconnect codes (WebSocket close codes).
//!
//! The numbers are Centrifugo's, so official clients react to them correctly: a
//! disconnect code below 3500 (or 4000..4499) makes them reconnect, 3500..3999 does not.
//! WebSocket-level violations close with RFC 6455's own codes (1002, 1007).

use serde::Serialize;

/// An error a command can get in its reply. The connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100: something broke on the server; the client is not at fault.
    Internal,
    /// 101: the request needs a valid token or identity.
    Unauthorized,
    /// 102: the channel's namespace is not configured, or the name is invalid.
    UnknownChannel,
    /// 103: the rules do not allow this client to do this.
    PermissionDenied,
    /// 104: the command or RPC method does not exist.
    MethodNotFound,
    /// 105: the client is already subscribed to the channel.
    AlreadySubscribed,
    /// 106: a configured limit was reached (channels per connection, ...).
    LimitExceeded,
    /// 107: the command is malformed or sent in the wrong order.
    BadRequest,
    /// 108: the feature is off for this channel (presence, history, inbox, ...).
    NotAvailable,
    /// 109: the token has expired; get a new one and retry.
    TokenExpired,
    /// 110: the connection or subscription has expired.
    Expired,
    /// 111: too many requests; slow down.
    TooManyRequests,
    /// 112: the stream position can not be recovered (or an inbox receipt names
    /// another epoch than the stream's).
    UnrecoverablePosition,
}

impl ErrorCode {
    /// The numeric code sent on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Internal => 100,
            Self::Unauthorized => 101,
            Self::UnknownChannel => 102,
            Self::PermissionDenied => 103,
            Self::MethodNotFound => 104,
            Self::AlreadySubscribed => 105,
            Self::LimitExceeded => 106,
            Self::BadRequest => 107,
            Self::NotAvailable => 108,
            Self::TokenExpired => 109,
            Self::Expired => 110,
            Self::TooManyRequests => 111,
            Self::UnrecoverablePosition => 112,
        }
    }

    /// The default message for this code.
    pub fn message(self) -> &'static str {
        match self {
            Self::Internal => "internal server error",
            Self::Unauthorized => "unauthorized",
            Self::UnknownChannel => "unknown channel",
            Self::PermissionDenied => "permission denied",
            Self::MethodNotFound => "method not found",
            Self::AlreadySubscribed => "already subscribed",
            Self::LimitExceeded => "limit exceeded",
            Self::BadRequest => "bad request",
            Self::NotAvailable => "not available",
            Self::TokenExpired => "token expired",
            Self::Expired => "expired",
            Self::TooManyRequests => "too many requests",
            Self::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Whether retrying the same command later may succeed.
    pub fn temporary(self) -> bool {
        matches!(self, Self::Internal | Self::TooManyRequests)
    }
}

/// Why the server ended a subscription: the code and reason of an `unsubscribe` push.
/// Official clients resubscribe after codes from 2500, and stay unsubscribed below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unsubscribe {
    /// The code.
    pub code: u32,
    /// A short human-readable reason.
    pub reason: &'static str,
}

impl Unsubscribe {
    /// 2000: the server API unsubscribed the user.
    pub const SERVER: Self = Self {
        code: 2000,
        reason: "server unsubscribe",
    };
    /// 2000: the subscription token was revoked (server API `revoke_token`,
    /// `invalidate_user_tokens`).
    pub const TOKEN_REVOKED: Self = Self {
        code: 2000,
        reason: "token revoked",
    };
    /// 2501: the app backend's sub_refresh proxy ended the subscription.
    pub const EXPIRED: Self = Self {
        code: 2501,
        reason: "subscription expired",
    };
}

/// Why the server closes a connection: the WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Disconnect {
    /// The close code.
    pub code: u16,
    /// A short human-readable reason (under 123 bytes, a WebSocket limit).
    pub reason: &'static str,
}

impl Disconnect {
    /// 1002 (RFC 6455): a WebSocket protocol violation (reserved bits set, an unmasked or
    /// fragmented control frame, a bad close frame, an unexpected continuation).
    pub const PROTOCOL_ERROR: Self = Self::new(1002, "protocol error");
    /// 1007 (RFC 6455): a text message that is not valid UTF-8.
    pub const INVALID_PAYLOAD: Self = Self::new(1007, "invalid payload data");
    /// 3000: closed without advice from the server.
    pub const CONNECTION_CLOSED: Self = Self::new(3000, "connection closed");
    /// 3001: the server is shutting down; reconnect (to another node).
    pub const SHUTDOWN: Self = Self::new(3001, "shutdown");
    /// 3004: internal server error; reconnect.
    pub const SERVER_ERROR: Self = Self::new(3004, "internal server error");
    /// 3005: the connection token expired and was not refreshed; reconnect with a new token.
    pub const EXPIRED: Self = Self::new(3005, "connection expired");
    /// 3006: a subscription token expired and was not refreshed.
    pub const SUB_EXPIRED: Self = Self::new(3006, "subscription expired");
    /// 3008: the client did not read fast enough and its outbox filled up.
    pub const SLOW: Self = Self::new(3008, "slow");
    /// 3009: writing to the connection failed.
    pub const WRITE_ERROR: Self = Self::new(3009, "write error");
    /// 3010: the client's position in a stream is wrong; reconnect to recover.
    pub const INSUFFICIENT_STATE: Self = Self::new(3010, "insufficient state");
    /// 3011: the server asked the client to reconnect.
    pub const FORCE_RECONNECT: Self = Self::new(3011, "force reconnect");
    /// 3012: no pong to the server's ping in time.
    pub const NO_PONG: Self = Self::new(3012, "no pong");
    /// 3013: too many commands per second, persistently.
    pub const TOO_MANY_REQUESTS: Self = Self::new(3013, "too many requests");
    /// 3500: the connection token is invalid; do not reconnect with it.
    pub const INVALID_TOKEN: Self = Self::new(3500, "invalid token");
    /// 3500: the connection token was revoked (server API `revoke_token` or
    /// `invalidate_user_tokens`); do not reconnect with it.
    pub const TOKEN_REVOKED: Self = Self::new(3500, "token revoked");
    /// 3501: malformed frames, wrong command order or persistent protocol errors.
    pub const BAD_REQUEST: Self = Self::new(3501, "bad request");
    /// 3502: no connect command within the allowed time.
    pub const STALE: Self = Self::new(3502, "stale");
    /// 3503: the server disconnected the client and asks it not to reconnect.
    pub const FORCE_NO_RECONNECT: Self = Self::new(3503, "force disconnect");
    /// 3504: the user has too many connections.
    pub const CONNECTION_LIMIT: Self = Self::new(3504, "connection limit");
    /// 3505: the connection asked for too many channels.
    pub const CHANNEL_LIMIT: Self = Self::new(3505, "channel limit");
    /// 3506: a frame larger than the configured maximum message size.
    pub const MESSAGE_TOO_LARGE: Self = Self::new(3506, "message size limit exceeded");
    /// 3507: a unidirectional connection's connect was refused with "permission
    /// denied" (error 103 has no reply to go in there).
    pub const PERMISSION_DENIED: Self = Self::new(3507, "permission denied");

    /// Pusher 4001: the app key in `/app/<key>` is not the configured one (Pusher
    /// clients only; pusher-js does not reconnect after 4000-4099).
    pub const PUSHER_APP_UNKNOWN: Self = Self::new(4001, "app key not found");
    /// Pusher 4006: the `protocol` query parameter is not a number.
    pub const PUSHER_BAD_PROTOCOL: Self = Self::new(4006, "invalid version string format");
    /// Pusher 4007: a protocol version other than 5, 6 or 7.
    pub const PUSHER_UNSUPPORTED_PROTOCOL: Self = Self::new(4007, "unsupported protocol version");
    /// Pusher 4008: no `protocol` query parameter.
    pub const PUSHER_NO_PROTOCOL: Self = Self::new(4008, "no protocol version supplied");
    /// Pusher 4009: what a Pusher client is closed with instead of 3500-3999 (invalid
    /// credentials, a forced disconnect, a limit); the reason stays switchboard's.
    pub const PUSHER_REFUSED: Self = Self::new(4009, "connection is unauthorized");
    /// Pusher 4100: instead of 3008 (slow), 3013 (too many requests) and 3004 (server
    /// error): pusher-js reconnects after a pause.
    pub const PUSHER_BACKOFF: Self = Self::new(4100, "over capacity");
    /// Pusher 4200: instead of the other codes below 3500 (shutdown, forced
    /// reconnect, expiry): pusher-js reconnects at once.
    pub const PUSHER_RECONNECT: Self = Self::new(4200, "generic reconnect immediately");
    /// Pusher 4201: instead of 3012, no pong in time.
    pub const PUSHER_NO_PONG: Self = Self::new(4201, "pong reply not received");

    /// Every disconnect above, in code order: what metrics count code by code (a custom
    /// code from the server API's `disconnect` is none of them).
    pub const ALL: [Self; 30] = [
        Self::PROTOCOL_ERROR,
        Self::INVALID_PAYLOAD,
        Self::CONNECTION_CLOSED,
        Self::SHUTDOWN,
        Self::SERVER_ERROR,
        Self::EXPIRED,
        Self::SUB_EXPIRED,
        Self::SLOW,
        Self::WRITE_ERROR,
        Self::INSUFFICIENT_STATE,
        Self::FORCE_RECONNECT,
        Self::NO_PONG,
        Self::TOO_MANY_REQUESTS,
        Self::INVALID_TOKEN,
        Self::TOKEN_REVOKED,
        Self::BAD_REQUEST,
        Self::STALE,
        Self::FORCE_NO_RECONNECT,
        Self::CONNECTION_LIMIT,
        Self::CHANNEL_LIMIT,
        Self::MESSAGE_TOO_LARGE,
        Self::PERMISSION_DENIED,
        Self::PUSHER_APP_UNKNOWN,
        Self::PUSHER_BAD_PROTOCOL,
        Self::PUSHER_UNSUPPORTED_PROTOCOL,
        Self::PUSHER_NO_PROTOCOL,
        Self::PUSHER_REFUSED,
        Self::PUSHER_BACKOFF,
        Self::PUSHER_RECONNECT,
        Self::PUSHER_NO_PONG,
    ];

    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// Whether an official client reconnects after this code.
    pub fn reconnect(self) -> bool {
        self.code < 3500 || (4000..4500).contains(&self.code) || self.code >= 5000
    }
}
