//! What the memory engine keeps on disk, behind the narrow [`Store`] trait: streams
//! (epoch, offsets, publications) and plain keyspaces (last-seen times), written by the
//! [`journal`] thread so no publisher or subscriber ever waits on a disk under a lock.
//!
//! The store is a write-behind copy of the engine's memory: it is read once, at start,
//! and only written afterwards. [`datafile`] implements it on `redb`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchboard_protocol::Publication;

pub mod datafile;
pub mod journal;

pub use crate::config::Durability;

/// A plain keyspace: keys and values its owner encodes, one table each.
///
/// Adding one (say, inbox positions) is a variant here with its table name; its owner
/// then writes with [`Change::Put`] / [`Change::Delete`] and reads it back at start from
/// [`Snapshot::records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyspace {
    /// User id -> last-seen time and its expiry ([`encode_seen`]).
    Seen,
    /// User id -> the user's inbox positions ([`crate::inbox::UserInbox`] as JSON).
    Inbox,
}

impl Keyspace {
    /// Every keyspace, so a store can create and read them all.
    pub const ALL: [Keyspace; 2] = [Keyspace::Seen, Keyspace::Inbox];

    /// The table's name in the data file: never change one, it is the stored data's key.
    pub fn table(self) -> &'static str {
        match self {
            Keyspace::Seen => "seen",
            Keyspace::Inbox => "inbox",
        }
    }
}

/// A stream's state as kept: enough to resume it in the same epoch with the same offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// The epoch clients' positions carry.
    pub epoch: Arc<str>,
    /// Offset of the newest publication.
    pub top: u64,
    /// Lowest offset kept; every publication below it is gone (size, TTL, memory cap).
    pub first: u64,
    /// The stream's `history_size` when written.
    pub size: usize,
    /// The stream's `history_ttl` in milliseconds when written.
    pub ttl_ms: u64,
}

/// One change of the engine's state, in the order the engine made them.
#[derive(Debug, Clone)]
pub enum Change {
    /// A stream now stands at `meta` (created, or trimmed to `meta.first`).
    Stream {
        /// Channel.
        channel: Arc<str>,
        /// Its state.
        meta: StreamMeta,
    },
    /// A publication entered a stream, which then stands at `meta`.
    Publication {
        /// Channel.
        channel: Arc<str>,
        /// The publication, with its offset.
        publication: Publication,
        /// When it expires (Unix milliseconds).
        expires_ms: u64,
        /// The stream's state after it.
        meta: StreamMeta,
    },
    /// The stream is gone (idle past its TTL, or `history_remove`).
    Drop {
        /// Channel.
        channel: Arc<str>,
    },
    /// A key of a plain keyspace has this value.
    Put {
        /// Keyspace.
        space: Keyspace,
        /// Key.
        key: Box<[u8]>,
        /// Value.
        value: Box<[u8]>,
    },
    /// A key of a plain keyspace is gone.
    Delete {
        /// Keyspace.
        space: Keyspace,
        /// Key.
        key: Box<[u8]>,
    },
}

/// A plain keyspace's keys and values, as read at start.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// A kept stream, as read at start.
#[derive(Debug)]
pub struct StoredStream {
    /// Channel.
    pub channel: Arc<str>,
    /// Its state.
    pub meta: StreamMeta,
    /// Its unexpired publications from `meta.first` on, oldest first, with their expiry
    /// (Unix milliseconds).
    pub publications: Vec<(Publication, u64)>,
}

/// Everything a store kept, read once at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Streams.
    pub streams: Vec<StoredStream>,
    /// Each plain keyspace's keys and values.
    pub records: HashMap<Keyspace, Records>,
    /// Whether the previous run stopped gracefully, having written everything it
    /// accepted (false after a crash or `kill -9`).
    pub clean: bool,
}

impl Snapshot {
    /// The keys and values of `space`.
    pub fn records(&mut self, space: Keyspace) -> Records {
        self.records.remove(&space).unwrap_or_default()
    }
}

/// Why persistence failed. The message names the file and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistError {
    /// The data directory or file can not be created, opened or written.
    #[error("{path}: {reason}")]
    Io {
        /// The directory or file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The data file is not one this version can read; it is left untouched.
    #[error("{path}: {reason}; move it away to start with empty state")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write failed: nothing more is written until a restart.
    #[error("persistence stopped after a failed write: {0}")]
    Stopped(String),
}

/// Where the engine's state is kept.
///
/// Called from one thread (the [`journal`]'s), never from the async runtime.
pub trait Store: Send + 'static {
    /// Reads everything kept, dropping what expired by `now_ms`, and marks the store in
    /// use so the next start can tell a crash from a graceful stop.
    ///
    /// # Errors
    /// [`PersistError`] when the store can not be read or written.
    fn load(&mut self, now_ms: u64) -> Result<Snapshot, PersistError>;

    /// Writes `changes`, in order, as one atomic transaction, on disk (synced) when it
    /// returns.
    ///
    /// # Errors
    /// [`PersistError`] when the write fails; none of `changes` is kept then.
    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError>;

    /// Marks a graceful stop: everything accepted was committed.
    ///
    /// # Errors
    /// [`PersistError`] when the mark can not be written.
    fn close(&mut self) -> Result<(), PersistError>;
}

/// Wall-clock Unix milliseconds: what expiries on disk are written in, since the
/// runtime's monotonic clock starts over with the process.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A last-seen record: the time and when it may be forgotten (both Unix milliseconds).
pub fn encode_seen(at_ms: u64, expires_ms: u64) -> Box<[u8]> {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&at_ms.to_be_bytes());
    out[8..].copy_from_slice(&expires_ms.to_be_bytes());
    Box::new(out)
}

/// The time and expiry of a last-seen record; `None` when it is not one.
pub fn decode_seen(value: &[u8]) -> Option<(u64, u64)> {
    let at = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let expires = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((at, expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_records_round_trip_and_short_ones_are_refused() {
        let v = encode_seen(1_700_000_000_123, 1_700_600_000_000);
        assert_eq!(
            decode_seen(&v),
            Some((1_700_000_000_123, 1_700_600_000_000))
        );
        assert_eq!(decode_seen(&v[..15]), None);
    }
}
