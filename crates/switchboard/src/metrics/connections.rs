//! Connections by transport and encoding: open now, opened, and closed by disconnect
//! code. Every transport has its slot, fixed at compile time, so counting is an index
//! and an atomic add, once when a connection opens and once when it closes.

use switchboard_protocol::Disconnect;

use super::{Counter, Gauge};

/// The wire a connection speaks: its transport and encoding (the `transport` and
/// `encoding` labels at `/metrics`, the `transport` field of the close log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The Centrifugo protocol over WebSocket, JSON.
    WebSocketJson,
    /// The Centrifugo protocol over WebSocket, Protobuf.
    WebSocketProtobuf,
    /// centrifuge-js's `http_stream`, JSON.
    HttpStreamJson,
    /// centrifuge-js's `http_stream`, Protobuf.
    HttpStreamProtobuf,
    /// centrifuge-js's `sse` (JSON only).
    Sse,
    /// The unidirectional WebSocket.
    UniWebSocket,
    /// The unidirectional server-sent events.
    UniSse,
    /// The unidirectional HTTP stream.
    UniHttpStream,
    /// Socket.IO on WebSocket (opened on it, or upgraded from long-polling).
    SocketIoWebSocket,
    /// Socket.IO on HTTP long-polling.
    SocketIoPolling,
    /// Pusher's protocol over WebSocket.
    Pusher,
}

impl Transport {
    /// Every transport, in the order `/metrics` lists them.
    pub const ALL: [Self; 11] = [
        Self::WebSocketJson,
        Self::WebSocketProtobuf,
        Self::HttpStreamJson,
        Self::HttpStreamProtobuf,
        Self::Sse,
        Self::UniWebSocket,
        Self::UniSse,
        Self::UniHttpStream,
        Self::SocketIoWebSocket,
        Self::SocketIoPolling,
        Self::Pusher,
    ];

    /// The `transport` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSocketJson | Self::WebSocketProtobuf => "websocket",
            Self::HttpStreamJson | Self::HttpStreamProtobuf => "http_stream",
            Self::Sse => "sse",
            Self::UniWebSocket => "uni_websocket",
            Self::UniSse => "uni_sse",
            Self::UniHttpStream => "uni_http_stream",
            Self::SocketIoWebSocket => "socketio_websocket",
            Self::SocketIoPolling => "socketio_polling",
            Self::Pusher => "pusher",
        }
    }

    /// The `encoding` label.
    pub fn encoding(self) -> &'static str {
        match self {
            Self::WebSocketProtobuf | Self::HttpStreamProtobuf => "protobuf",
            _ => "json",
        }
    }
}

/// Slots for closes: one per code of [`Disconnect::ALL`], and one for the others.
const CODES: usize = Disconnect::ALL.len() + 1;

/// One transport's counts.
#[derive(Debug, Default)]
struct Slot {
    open: Gauge,
    opened: Counter,
    /// By the position of the close code in [`Disconnect::ALL`] (the first with that
    /// code), the last for the others.
    closed: [Counter; CODES],
}

/// Connections by [`Transport`].
#[derive(Debug, Default)]
pub struct ConnectionCounters([Slot; Transport::ALL.len()]);

impl ConnectionCounters {
    /// Counts a connection opened on `transport`.
    pub fn opened(&self, transport: Transport) {
        let slot = &self.0[transport as usize];
        slot.open.inc();
        slot.opened.inc();
    }

    /// Counts a connection on `transport` closed with `reason`.
    pub fn closed(&self, transport: Transport, reason: Disconnect) {
        let slot = &self.0[transport as usize];
        slot.open.dec();
        let code = Disconnect::ALL
            .iter()
            .position(|d| d.code == reason.code)
            .unwrap_or(CODES - 1);
        slot.closed[code].inc();
    }

    /// Moves an open connection from one transport to another (a Socket.IO upgrade).
    pub fn moved(&self, from: Transport, to: Transport) {
        self.0[from as usize].open.dec();
        self.0[to as usize].open.inc();
    }

    /// Open connections, all transports together.
    pub fn open(&self) -> i64 {
        self.0.iter().map(|s| s.open.get()).sum()
    }

    /// `(transport, open, opened)` for every transport.
    pub fn snapshot(&self) -> impl Iterator<Item = (Transport, i64, u64)> + '_ {
        Transport::ALL
            .into_iter()
            .zip(&self.0)
            .map(|(t, s)| (t, s.open.get(), s.opened.get()))
    }

    /// `(transport, close code, closes)` for every code a connection closed with
    /// (`None`: a code outside [`Disconnect::ALL`]).
    pub fn closes(&self) -> impl Iterator<Item = (Transport, Option<u16>, u64)> + '_ {
        Transport::ALL
            .into_iter()
            .zip(&self.0)
            .flat_map(|(t, s)| {
                let codes = Disconnect::ALL.iter().map(|d| Some(d.code));
                codes
                    .chain([None])
                    .zip(&s.closed)
                    .map(move |(code, n)| (t, code, n.get()))
            })
            .filter(|(_, _, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_transport_and_close_code() {
        let c = ConnectionCounters::default();
        c.opened(Transport::SocketIoPolling);
        c.opened(Transport::Pusher);
        c.moved(Transport::SocketIoPolling, Transport::SocketIoWebSocket);
        c.closed(Transport::SocketIoWebSocket, Disconnect::TOKEN_REVOKED);
        let custom = Disconnect {
            code: 4444,
            reason: "custom",
        };
        c.closed(Transport::Pusher, custom);
        assert_eq!(c.open(), 0);
        let opened: Vec<_> = c.snapshot().filter(|s| s.2 > 0).collect();
        assert_eq!(
            opened,
            [
                (Transport::SocketIoPolling, 0, 1),
                (Transport::Pusher, 0, 1)
            ]
        );
        // Codes shared by two disconnects count once, under the code.
        let closes: Vec<_> = c.closes().collect();
        assert_eq!(
            closes,
            [
                (Transport::SocketIoWebSocket, Some(3500), 1),
                (Transport::Pusher, None, 1)
            ]
        );
    }
}
