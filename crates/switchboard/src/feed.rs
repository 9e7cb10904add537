//! A busy channel's recent events, in shared chunks: a fan-out queues each recipient
//! a *run* of them (a chunk and a range of it) instead of one outbox item per event.
//!
//! Under a saturated fan-out, what a delivery cost most was the store of each queue
//! item into its recipient's queue buffer: one cache line per recipient that no read
//! ahead can bring in (it lies behind the queue's lock), and that the lock's release
//! waits for. A recipient whose newest queued item is a run of this channel's chunk,
//! ending just before the event, only has that run grow by one, in the outbox's own
//! lines, which the fan-out asks for ahead ([`crate::session::Session::warm`]). The
//! writer turns a run back into one item per event as it drains the outbox.
//!
//! A chunk holds [`CHUNK`] events and lives as long as some outbox still holds a run
//! of it: beyond the events its queue holds anyway, a slow reader keeps alive the rest
//! of the chunks its runs are in, less than a chunk before its oldest queued event and
//! one after its newest. Only channels with [`RUN_MIN`] local subscribers or more keep
//! a feed: a channel of a few (a user's own) would gain nothing and hold events longer.

use std::sync::{Arc, Mutex, OnceLock};

use crate::event::ChannelEvent;

/// Events per chunk.
pub const CHUNK: usize = 64;

/// Local subscribers a channel needs for its fan-outs to queue runs.
pub const RUN_MIN: usize = 16;

/// Consecutive events of one channel, shared by the runs that refer to them. Each slot
/// is set once, before any run refers to it.
#[derive(Debug)]
pub struct Chunk {
    events: [OnceLock<Arc<ChannelEvent>>; CHUNK],
}

impl Chunk {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            events: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    /// The event at `at`, once set.
    pub fn get(&self, at: u16) -> Option<&Arc<ChannelEvent>> {
        self.events.get(usize::from(at)).and_then(OnceLock::get)
    }
}

/// Where an event lies in its channel's feed: what a recipient's run is extended with.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The chunk.
    pub chunk: &'a Arc<Chunk>,
    /// The event's index in it.
    pub at: u16,
}

/// A channel's current chunk and the index of its next event. Broadcasts of one
/// channel come one at a time (see [`crate::hub::Hub::broadcast`]); the lock only
/// keeps that safe when they do not.
#[derive(Debug, Default)]
pub struct Feed {
    current: Mutex<Option<(Arc<Chunk>, u16)>>,
}

impl Feed {
    /// Appends `event`: its chunk (a new one after a full one) and index.
    pub fn append(&self, event: &Arc<ChannelEvent>) -> Option<(Arc<Chunk>, u16)> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (chunk, next) = match current.take() {
            Some((chunk, next)) if usize::from(next) < CHUNK => (chunk, next),
            _ => (Chunk::new(), 0),
        };
        let slot = chunk.events.get(usize::from(next))?;
        if slot.set(event.clone()).is_err() {
            // Unreachable: each index is handed out once. Without a place the event
            // still goes out, as one item per recipient.
            return None;
        }
        *current = Some((chunk.clone(), next + 1));
        Some((chunk, next))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::EventKind;

    /// A publication in `news` with offset `n` and payload `n`.
    pub(crate) fn event(n: u64) -> Arc<ChannelEvent> {
        let data = serde_json::value::RawValue::from_string(n.to_string()).expect("json");
        ChannelEvent::new(
            "news".into(),
            EventKind::Publication(switchboard_protocol::Publication {
                data: data.into(),
                info: None,
                offset: n,
                tags: None,
                exclude_client: None,
            }),
        )
    }

    #[test]
    fn appends_in_order_and_starts_a_chunk_when_full() {
        let feed = Feed::default();
        let mut chunks = Vec::new();
        for n in 0..(CHUNK as u64 + 3) {
            let (chunk, at) = feed.append(&event(n)).expect("placed");
            assert_eq!(usize::from(at), n as usize % CHUNK);
            let EventKind::Publication(p) = &chunk.get(at).expect("set").kind else {
                panic!("a publication");
            };
            assert_eq!(p.offset, n);
            if at == 0 {
                chunks.push(chunk);
            }
        }
        assert_eq!(chunks.len(), 2);
        assert!(!Arc::ptr_eq(&chunks[0], &chunks[1]));
        assert!(chunks[1].get(3).is_none(), "not yet appended");
    }
}
