//! Wire types of the Centrifugo client protocol v2, in its JSON and Protobuf encodings.
//!
//! No I/O lives here, so the decoder can be fuzzed and unit-tested on its own.
//!
//! # Layout
//! - [`command`]: what a client sends (one JSON object per line, several per frame).
//! - [`reply`]: what the server sends back: replies to commands and pushes.
//! - [`protobuf`]: the same commands, replies and pushes in the Protobuf encoding.
//! - [`codes`]: the error and disconnect codes, one documented table.
//! - [`filter`]: publication filters by tags, as subscribe requests carry them.
//! - [`fossil`]: Fossil deltas, for subscriptions that negotiated `delta: "fossil"`.
//! - [`socketio`]: Engine.IO v4 / Socket.IO v5 packets, for the Socket.IO transport.
#![warn(missing_docs)]

pub mod codes;
pub mod command;
pub mod filter;
pub mod fossil;
pub mod protobuf;
pub mod reply;
pub mod socketio;

pub use codes::{Disconnect, ErrorCode, Unsubscribe};
pub use command::{decode_frame, Command, DecodeError, Request};
pub use reply::*;
