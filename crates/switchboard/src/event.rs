//! What flows from the engine to sessions: channel events, encoded at most once per
//! wire protocol and shared by reference count among all recipients.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use switchboard_protocol::{ClientInfo, Publication, SubscribeResult};

/// A text frame ready to write: cheap to clone (reference-counted bytes).
pub type TextFrame = Utf8Bytes;

/// The wire protocols that can encode events; each owns one cache slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Centrifugo client protocol v2, JSON.
    CentrifugeJson = 0,
    /// Socket.IO v5 over Engine.IO v4.
    SocketIo = 1,
}

const PROTOCOLS: usize = 2;

/// How a transport encodes channel events. A session carries its transport's codec, so
/// the hub hands it an encoded frame (encoded once per protocol, shared by all).
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// The cache slot of this protocol.
    pub protocol: Protocol,
    /// Encodes one event; the node's configuration may name events (Socket.IO's
    /// `[socketio.pushes]`), and is the same for every session that shares the frame.
    pub encode_event: fn(&ChannelEvent, &crate::Config) -> String,
}

/// What happened in a channel.
#[derive(Debug)]
pub enum EventKind {
    /// A publication.
    Publication(Publication),
    /// A client joined (presence).
    Join(ClientInfo),
    /// A client left (presence).
    Leave(ClientInfo),
}

/// One event in one channel, delivered to every local subscriber.
#[derive(Debug)]
pub struct ChannelEvent {
    /// Channel name.
    pub channel: Arc<str>,
    /// The event.
    pub kind: EventKind,
    /// When this node created the event (published it, or received it from the engine):
    /// the start of the publish-to-delivery latency metric.
    pub published: Instant,
    encoded: [OnceLock<TextFrame>; PROTOCOLS],
}

impl ChannelEvent {
    /// Wraps an event for fan-out.
    pub fn new(channel: Arc<str>, kind: EventKind) -> Arc<Self> {
        Arc::new(Self {
            channel,
            kind,
            published: Instant::now(),
            encoded: Default::default(),
        })
    }

    /// The event encoded with `codec`, encoding it on first use only.
    pub fn encoded(&self, codec: Codec, config: &crate::Config) -> TextFrame {
        self.encoded[codec.protocol as usize]
            .get_or_init(|| TextFrame::from((codec.encode_event)(self, config)))
            .clone()
    }

    /// The publication offset, 0 for joins and leaves.
    pub fn offset(&self) -> u64 {
        match &self.kind {
            EventKind::Publication(p) => p.offset,
            _ => 0,
        }
    }
}

/// A push from the core to one session that the transport encodes.
#[derive(Debug)]
pub enum Control {
    /// The server subscribed the session to a channel.
    Subscribed {
        /// Channel.
        channel: Arc<str>,
        /// Subscription state.
        result: SubscribeResult,
    },
    /// The server changed when the connection expires.
    Refresh {
        /// Whether it expires at all.
        expires: bool,
        /// Seconds left.
        ttl: u32,
    },
    /// The server unsubscribed the session from a channel.
    Unsubscribed {
        /// Channel.
        channel: Arc<str>,
        /// Unsubscribe code (2000: by the server).
        code: u32,
        /// Reason.
        reason: &'static str,
    },
}

/// One item in a session's outbox.
#[derive(Debug)]
pub enum Outgoing {
    /// A channel event, encoded for the session's protocol.
    Event {
        /// The shared encoded frame.
        frame: TextFrame,
        /// When this node created the event, for the latency metric.
        published: Instant,
    },
    /// A frame the transport already encoded (a command reply, a ping).
    Frame(TextFrame),
    /// A session-level push (boxed: rare, and it keeps outbox slots small).
    Control(Box<Control>),
}
