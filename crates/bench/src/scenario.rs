//! The scenarios: how many connections, which channels each subscribes, how publications
//! are driven, and the presets (full size, `--quick`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One of the measured situations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ScenarioKind {
    /// Connections that subscribe (a personal and a group channel) and then sit idle.
    Idle,
    /// Every connection subscribes one channel; publications as fast as delivered.
    Broadcast,
    /// Rooms of a few users, each room one message per second: latency at steady load.
    Chat,
    /// Many connects at once, with HS256 token verification where the target has it.
    Connect,
}

impl ScenarioKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ScenarioKind::Idle => "idle",
            ScenarioKind::Broadcast => "broadcast",
            ScenarioKind::Chat => "chat",
            ScenarioKind::Connect => "connect",
        }
    }
}

/// The size of every scenario; `--quick` and the scale flags change it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sizes {
    /// Idle connections (2 subscriptions each).
    pub(crate) idle_connections: usize,
    /// Subscribers of the broadcast channel.
    pub(crate) broadcast_subscribers: usize,
    /// Chat rooms.
    pub(crate) chat_rooms: usize,
    /// Users per chat room.
    pub(crate) room_size: usize,
    /// Messages per second per chat room.
    pub(crate) room_rate: f64,
    /// Connects of the connect storm.
    pub(crate) connect_connections: usize,
    /// Payload size in bytes.
    pub(crate) payload: usize,
    /// Measured time of idle, broadcast and chat.
    #[serde(with = "secs")]
    pub(crate) duration: Duration,
    /// Publishing before the measurement starts (JIT warm-up, buffers).
    #[serde(with = "secs")]
    pub(crate) warmup: Duration,
    /// Pause before reading memory, so the servers settle.
    #[serde(with = "secs")]
    pub(crate) settle: Duration,
    /// Broadcast: publications in flight (published, not yet delivered to everyone).
    pub(crate) window: usize,
    /// Broadcast: publish requests in flight at once (within the window).
    #[serde(default = "default_publishers")]
    pub(crate) publishers: usize,
}

fn default_publishers() -> usize {
    4
}

impl Sizes {
    /// The sizes the targets are stated for.
    pub(crate) fn full() -> Self {
        Self {
            idle_connections: 15_000,
            broadcast_subscribers: 10_000,
            chat_rooms: 2_000,
            room_size: 5,
            room_rate: 1.0,
            connect_connections: 10_000,
            payload: 100,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            settle: Duration::from_secs(1),
            window: 64,
            publishers: default_publishers(),
        }
    }

    /// A tiny run for CI: it checks that everything works, not how fast.
    pub(crate) fn quick() -> Self {
        Self {
            idle_connections: 200,
            broadcast_subscribers: 200,
            chat_rooms: 40,
            connect_connections: 200,
            duration: Duration::from_secs(3),
            warmup: Duration::from_millis(500),
            settle: Duration::from_millis(200),
            ..Self::full()
        }
    }

    /// Multiplies every connection count by `factor` (rooms keep their size).
    pub(crate) fn scaled(mut self, factor: f64) -> Self {
        let s = |n: usize| ((n as f64 * factor).round() as usize).max(1);
        self.idle_connections = s(self.idle_connections);
        self.broadcast_subscribers = s(self.broadcast_subscribers);
        self.chat_rooms = s(self.chat_rooms);
        self.connect_connections = s(self.connect_connections);
        self
    }

    /// Connections of a scenario.
    pub(crate) fn connections(&self, kind: ScenarioKind) -> usize {
        match kind {
            ScenarioKind::Idle => self.idle_connections,
            ScenarioKind::Broadcast => self.broadcast_subscribers,
            ScenarioKind::Chat => self.chat_rooms * self.room_size,
            ScenarioKind::Connect => self.connect_connections,
        }
    }

    /// What each connection subscribes to.
    pub(crate) fn plan(&self, kind: ScenarioKind) -> Plan {
        match kind {
            ScenarioKind::Idle => Plan::Idle,
            ScenarioKind::Broadcast => Plan::Broadcast,
            ScenarioKind::Chat => Plan::Chat {
                room_size: self.room_size,
            },
            ScenarioKind::Connect => Plan::None,
        }
    }
}

/// The channels connection `i` subscribes to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Plan {
    /// None: connect only.
    None,
    /// A personal channel and one of 100 group channels.
    Idle,
    /// The one broadcast channel.
    Broadcast,
    /// Room `i / room_size`.
    Chat { room_size: usize },
}

/// The broadcast channel.
pub(crate) const BROADCAST_CHANNEL: &str = "bench:all";

/// The channel of chat room `r`.
pub(crate) fn room_channel(r: usize) -> String {
    format!("bench:room{r}")
}

impl Plan {
    pub(crate) fn channels(self, i: usize) -> Vec<String> {
        match self {
            Plan::None => Vec::new(),
            Plan::Idle => vec![format!("bench:u{i}"), format!("bench:g{}", i % 100)],
            Plan::Broadcast => vec![BROADCAST_CHANNEL.to_owned()],
            Plan::Chat { room_size } => vec![room_channel(i / room_size.max(1))],
        }
    }
}

/// Durations as fractional seconds in JSON.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?))
    }
}
