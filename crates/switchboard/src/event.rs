//! What flows from the engine to sessions: channel events, encoded at most once per
//! wire codec and shared by reference count among all recipients.
//!
//! A codec is registered at startup ([`Codec::register`]) and gets one cache slot in
//! every event, so a transport adds its own encoding without editing the core.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use switchboard_protocol::{ClientInfo, Publication, SharedJson, SubscribeResult};
use tungstenite::Utf8Bytes;

/// A text frame: reference-counted UTF-8 bytes.
pub type TextFrame = Utf8Bytes;

/// A frame ready to write, text or binary: cheap to clone (reference-counted bytes), so
/// one encoded event is shared by all its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (JSON, Engine.IO packets).
    Text(TextFrame),
    /// A binary frame (Protobuf).
    Binary(Bytes),
    /// A text or binary message compressed with permessage-deflate (RFC 7692), for the
    /// WebSocket connections that negotiated it (see `transport::deflate`).
    Deflated {
        /// The compressed payload, as the frame carries it.
        payload: Bytes,
        /// Whether the message is binary (else text).
        binary: bool,
    },
}

impl Frame {
    /// A text frame of a static string.
    pub const fn from_static(s: &'static str) -> Self {
        Self::Text(TextFrame::from_static(s))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
            Self::Deflated { payload, .. } => payload.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes, whichever the kind (compressed ones as they go on the wire).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(t) => t.as_bytes(),
            Self::Binary(b) | Self::Deflated { payload: b, .. } => b,
        }
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Self {
        Self::Text(TextFrame::from(s))
    }
}

impl From<&'static str> for Frame {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl From<TextFrame> for Frame {
    fn from(t: TextFrame) -> Self {
        Self::Text(t)
    }
}

impl From<Vec<u8>> for Frame {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(Bytes::from(b))
    }
}

/// Cache slots in every event: more than the codecs switchboard registers, so a new
/// transport fits without touching this number. A codec registered beyond them still
/// works, encoding per recipient (logged once at registration).
const SLOTS: usize = 8;

/// Slots handed out so far.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

/// How a transport encodes channel events. A session carries its transport's codec, so
/// the hub hands it an encoded frame (encoded once per codec, shared by all).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Codec {
    // What encoding an event for a recipient reads comes first (see `Session`).
    /// Its cache slot in every event; `None` past [`SLOTS`].
    slot: Option<usize>,
    /// How this codec's frames are compressed, for connections that negotiated
    /// compression: once per event too, from the encoded frame ([`Codec::compressed`]).
    compress: Option<fn(&Frame, &crate::Config) -> Frame>,
    /// Encodes one event; the node's configuration may name events (Socket.IO's
    /// `[socketio.pushes]`), and is the same for every session that shares the frame.
    pub encode_event: fn(&ChannelEvent, &crate::Config) -> Frame,
    /// Whether a session is sent its own join and leave. Centrifugo clients are; a
    /// Pusher client is not (`member_added` announces others only).
    pub own_presence: bool,
    /// What it is called in logs.
    pub name: &'static str,
    /// How a publication is encoded for a subscriber that negotiated fossil deltas,
    /// with its payload (the publication's JSON text, or a delta of it: the flag);
    /// `None` when the payload can not go in this encoding. Codecs without it never
    /// negotiate deltas.
    pub deltas: Option<DeltaEncoder>,
}

/// Encodes a publication event with `payload` as its data, a delta when the flag says
/// so (see [`Codec::deltas`]).
pub type DeltaEncoder = fn(&ChannelEvent, &[u8], bool) -> Option<Frame>;

impl Codec {
    /// Registers a codec and gives it the next cache slot. Call it once per codec (a
    /// transport keeps the result in a `LazyLock`): each call takes a slot.
    pub fn register(
        name: &'static str,
        encode_event: fn(&ChannelEvent, &crate::Config) -> Frame,
    ) -> Self {
        let n = REGISTERED.fetch_add(1, Ordering::Relaxed);
        let slot = (n < SLOTS).then_some(n);
        if slot.is_none() {
            tracing::warn!(
                codec = name,
                "no event cache slot left: encoding per recipient"
            );
        }
        Self {
            name,
            slot,
            encode_event,
            own_presence: true,
            compress: None,
            deltas: None,
        }
    }

    /// This codec with its frames compressed by `compress` (permessage-deflate): each
    /// event is compressed once, from its encoded frame, and shared like it.
    pub const fn compressed(self, compress: fn(&Frame, &crate::Config) -> Frame) -> Self {
        Self {
            compress: Some(compress),
            ..self
        }
    }

    /// This codec, able to send fossil deltas with `encoder`.
    pub const fn with_deltas(self, encoder: DeltaEncoder) -> Self {
        Self {
            deltas: Some(encoder),
            ..self
        }
    }

    /// This codec, with sessions not sent their own join and leave.
    pub const fn without_own_presence(self) -> Self {
        Self {
            own_presence: false,
            ..self
        }
    }
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
    encoded: [OnceLock<Arc<EventFrame>>; SLOTS],
    /// Compressed frames per codec slot, allocated when a compressed codec first asks:
    /// most events never meet one.
    compressed: OnceLock<Box<[OnceLock<Arc<EventFrame>>; SLOTS]>>,
    /// The payload of the channel's previous publication, when the hub knows it (the
    /// channel has delta subscribers and this one follows it directly).
    base: OnceLock<SharedJson>,
    /// Frames for delta subscribers, made by the first one.
    deltas: OnceLock<Box<DeltaFrames>>,
}

/// A publication's frames for subscribers that negotiated fossil deltas: the delta is
/// computed once per publication, each frame encoded once per codec.
#[derive(Debug)]
struct DeltaFrames {
    /// The fossil delta from the previous publication's payload, when there is one and
    /// it is shorter than the payload.
    patch: Option<Vec<u8>>,
    full: [OnceLock<Option<Arc<EventFrame>>>; SLOTS],
    delta: [OnceLock<Option<Arc<EventFrame>>>; SLOTS],
}

impl ChannelEvent {
    /// Wraps an event for fan-out.
    pub fn new(channel: Arc<str>, kind: EventKind) -> Arc<Self> {
        Arc::new(Self {
            channel,
            kind,
            published: Instant::now(),
            encoded: Default::default(),
            compressed: OnceLock::new(),
            base: OnceLock::new(),
            deltas: OnceLock::new(),
        })
    }

    /// Records the payload of the channel's previous publication, which this one
    /// directly follows, so delta subscribers can be sent a delta of it.
    pub fn set_base(&self, base: SharedJson) {
        let _ = self.base.set(base);
    }

    /// The publication encoded with `codec` for a subscriber that negotiated deltas:
    /// a delta of the previous publication when `chained` (the subscriber's last one was
    /// that publication) and a delta is known and shorter, else the full payload in
    /// the delta form. `None` for joins and leaves, and codecs without deltas.
    pub fn delta_encoded(&self, codec: &Codec, chained: bool) -> Option<Arc<EventFrame>> {
        let encoder = codec.deltas?;
        let encode = |payload: &[u8], delta: bool| {
            encoder(self, payload, delta).map(|frame| self.shared(frame))
        };
        let EventKind::Publication(p) = &self.kind else {
            return None;
        };
        let full = p.data.get().as_bytes();
        let Some(slot) = codec.slot else {
            return encode(full, false);
        };
        let frames = self.deltas.get_or_init(|| {
            let patch = self
                .base
                .get()
                .map(|base| switchboard_protocol::fossil::create(base.get().as_bytes(), full))
                .filter(|patch| patch.len() < full.len());
            Box::new(DeltaFrames {
                patch,
                full: Default::default(),
                delta: Default::default(),
            })
        });
        if let (true, Some(patch)) = (chained, &frames.patch) {
            if let Some(f) = frames.delta[slot].get_or_init(|| encode(patch, true)) {
                return Some(f.clone());
            }
        }
        frames.full[slot]
            .get_or_init(|| encode(full, false))
            .clone()
    }

    /// The event encoded with `codec` (and compressed, for a compressed codec),
    /// encoding it on first use only.
    pub fn encoded(&self, codec: &Codec, config: &crate::Config) -> Arc<EventFrame> {
        if let Some(frame) = self.cached(codec, config) {
            return frame.clone();
        }
        let plain = || self.shared((codec.encode_event)(self, config));
        match codec.compress {
            None => plain(),
            Some(compress) => self.shared(compress(&plain().frame, config)),
        }
    }

    /// As [`ChannelEvent::encoded`], borrowed from the event's cache: `None` for a
    /// codec without a cache slot, whose frames are not kept.
    pub fn cached(&self, codec: &Codec, config: &crate::Config) -> Option<&Arc<EventFrame>> {
        let slot = codec.slot?;
        let plain =
            || self.encoded[slot].get_or_init(|| self.shared((codec.encode_event)(self, config)));
        Some(match codec.compress {
            None => plain(),
            Some(compress) => self.compressed.get_or_init(Default::default)[slot]
                .get_or_init(|| self.shared(compress(&plain().frame, config))),
        })
    }

    /// `frame`, as this event's frame shared by its recipients.
    fn shared(&self, frame: Frame) -> Arc<EventFrame> {
        Arc::new(EventFrame {
            frame,
            published: self.published,
        })
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
    /// The user's read position in an inbox channel moved (on another connection, or
    /// through the server API).
    InboxRead {
        /// Channel.
        channel: Arc<str>,
        /// The positions after the read.
        marks: crate::inbox::Marks,
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

/// A channel event's frame for one codec, shared by all its recipients: an outbox
/// queues it as one pointer, so a slot stays 16 bytes however the frame is held.
#[derive(Debug)]
pub struct EventFrame {
    /// The encoded frame.
    pub frame: Frame,
    /// When this node created the event, for the latency metric.
    pub published: Instant,
}

/// One item in a session's outbox: 16 bytes, so the queue a fan-out burst leaves
/// behind stays small.
#[derive(Debug)]
pub enum Outgoing {
    /// A channel event, encoded for the session's protocol.
    Event(Arc<EventFrame>),
    /// A frame the transport already encoded (a command reply, a ping); boxed like
    /// `Control`, as a reply already allocates its own bytes.
    Frame(Box<Frame>),
    /// A session-level push (boxed: rare, and it keeps outbox slots small).
    Control(Box<Control>),
}

const _: () = assert!(std::mem::size_of::<Outgoing>() == 16);

impl Outgoing {
    /// A frame the transport encoded.
    pub fn frame(frame: impl Into<Frame>) -> Self {
        Self::Frame(Box::new(frame.into()))
    }

    /// Its frame, unless it is a control push (which the writer encodes).
    pub fn as_frame(&self) -> Option<&Frame> {
        match self {
            Self::Event(e) => Some(&e.frame),
            Self::Frame(f) => Some(f),
            Self::Control(_) => None,
        }
    }

    /// Its frame to write, or the control push to encode.
    pub fn into_frame(self) -> Result<Frame, Box<Control>> {
        match self {
            Self::Event(e) => Ok(e.frame.clone()),
            Self::Frame(f) => Ok(*f),
            Self::Control(c) => Err(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::LazyLock;

    use super::*;

    static TEXT_CALLS: AtomicUsize = AtomicUsize::new(0);
    static BINARY_CALLS: AtomicUsize = AtomicUsize::new(0);
    static TEXT: LazyLock<Codec> = LazyLock::new(|| {
        Codec::register("text", |_, _| {
            TEXT_CALLS.fetch_add(1, Ordering::Relaxed);
            Frame::from_static("t")
        })
    });
    static BINARY: LazyLock<Codec> = LazyLock::new(|| {
        Codec::register("binary", |_, _| {
            BINARY_CALLS.fetch_add(1, Ordering::Relaxed);
            Frame::from(vec![1])
        })
    });

    #[test]
    fn an_event_is_encoded_once_per_codec_and_shared() {
        let config = crate::Config::default();
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        let ev = ChannelEvent::new("chat:1".into(), EventKind::Join(info));
        for _ in 0..3 {
            assert_eq!(ev.encoded(&TEXT, &config).frame, Frame::from_static("t"));
            assert_eq!(ev.encoded(&BINARY, &config).frame, Frame::from(vec![1]));
        }
        assert_eq!(TEXT_CALLS.load(Ordering::Relaxed), 1);
        assert_eq!(BINARY_CALLS.load(Ordering::Relaxed), 1);
        // The shared frame is the same allocation, not a copy.
        let (a, b) = (ev.encoded(&BINARY, &config), ev.encoded(&BINARY, &config));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.published, ev.published);
    }

    static COMPRESS_CALLS: AtomicUsize = AtomicUsize::new(0);
    /// A codec with a slot of its own on the test's event, whatever other tests
    /// registered.
    const PLAIN: Codec = Codec {
        name: "plain",
        slot: Some(SLOTS - 1),
        encode_event: |_, _| Frame::from_static("t"),
        own_presence: true,
        compress: None,
        deltas: None,
    };

    #[test]
    fn a_compressed_codec_compresses_once_per_event_and_shares_it() {
        let config = crate::Config::default();
        let compressed = PLAIN.compressed(|frame, _| {
            COMPRESS_CALLS.fetch_add(1, Ordering::Relaxed);
            Frame::Deflated {
                payload: Bytes::copy_from_slice(frame.as_bytes()),
                binary: false,
            }
        });
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        let ev = ChannelEvent::new("chat:1".into(), EventKind::Join(info));
        let frames: Vec<_> = (0..3).map(|_| ev.encoded(&compressed, &config)).collect();
        assert_eq!(COMPRESS_CALLS.load(Ordering::Relaxed), 1);
        assert!(matches!(&frames[0].frame, Frame::Deflated { payload, .. } if payload == "t"));
        assert!(Arc::ptr_eq(&frames[0], &frames[2]));
        // The plain codec still gets the plain frame.
        assert_eq!(ev.encoded(&PLAIN, &config).frame, Frame::from_static("t"));
    }

    #[test]
    fn a_codec_past_the_slots_still_encodes_per_recipient() {
        let codec = Codec {
            name: "late",
            slot: None,
            encode_event: |_, _| Frame::from_static("late"),
            own_presence: true,
            compress: None,
            deltas: None,
        };
        let ev = ChannelEvent::new(
            "chat:1".into(),
            EventKind::Leave(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: None,
                chan_info: None,
            }),
        );
        let config = crate::Config::default();
        assert_eq!(
            ev.encoded(&codec, &config).frame,
            Frame::from_static("late")
        );
    }
}
