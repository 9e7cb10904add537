//! Connection-state recovery as `socket.io` ≥ 4.6 does it, over channel history.
//!
//! Each publication of a channel with history goes out with an offset as its last
//! argument (`"<offset>:<channel hash>"`); `socket.io-client` sends the last one it saw
//! back in its next `CONNECT`, with the private id (`pid`) of the connection. The
//! writer remembers the order in which it wrote publications ([`Tracker`]), so that one
//! offset tells where the client stopped in every channel. A closed connection's state
//! is kept on every node ([`Kept`], through `Node::keep`) for the reconnect, which
//! replays each channel's gap from its history.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use switchboard_protocol::{StreamPosition, SubscribeResult};

/// A stable 64-bit FNV-1a hash of a channel name: the same on every node and release,
/// so an offset written by one node is understood by another.
fn channel_hash(channel: &str) -> u64 {
    channel.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Appends the offset argument of a publication to its encoded event (`42[...]`).
pub(super) fn push_offset(frame: &mut String, channel: &str, offset: u64) {
    if frame.pop() == Some(']') {
        let _ = write!(frame, ",\"{offset}:{:016x}\"]", channel_hash(channel));
    }
}

/// The wall clock in Unix milliseconds: nodes compare it to tell whether a kept state
/// is still in its window.
pub(super) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A publication's identity: its channel's hash and its offset.
type Written = (u64, u64);

fn parse_offset(s: &str) -> Option<Written> {
    let (offset, hash) = s.split_once(':')?;
    if hash.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(hash, 16).ok()?, offset.parse().ok()?))
}

/// The offset argument at the end of an encoded event, if it has one.
fn frame_offset(frame: &str) -> Option<Written> {
    let body = frame.strip_suffix("\"]")?;
    let start = body.rfind('"')?;
    if !body[..start].ends_with(',') {
        return None;
    }
    parse_offset(&body[start + 1..])
}

/// A channel the connection joined, and where its stream stood then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Joined {
    pub(super) channel: String,
    /// Empty for a channel without history: re-joined, never replayed.
    pub(super) epoch: String,
    pub(super) offset: u64,
    /// Joined through an event route (else: a server-side subscription).
    pub(super) route: bool,
}

/// What one connection joined and, in order, the publications its writer wrote.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    joined: Vec<Joined>,
    /// The last offset written per channel hash.
    written: HashMap<u64, u64>,
    /// The last publications written, oldest first.
    ring: VecDeque<Written>,
    /// The ring lost its oldest entries.
    dropped: bool,
}

impl Tracker {
    /// Records a channel joined, with its subscribe result.
    pub(super) fn joined(&mut self, channel: &str, result: &SubscribeResult, route: bool) {
        self.left(channel);
        self.joined.push(Joined {
            channel: channel.to_owned(),
            epoch: if result.recoverable {
                result.epoch.clone()
            } else {
                String::new()
            },
            offset: result.offset,
            route,
        });
    }

    /// Forgets a channel left.
    pub(super) fn left(&mut self, channel: &str) {
        self.joined.retain(|j| j.channel != channel);
    }

    /// Notes a frame the writer wrote: a publication with an offset joins the ring of
    /// at most `cap` entries.
    pub(super) fn wrote(&mut self, frame: &str, cap: usize) {
        let Some((hash, offset)) = frame_offset(frame) else {
            return;
        };
        self.written.insert(hash, offset);
        if self.ring.len() >= cap {
            self.ring.pop_front();
            self.dropped = true;
        }
        self.ring.push_back((hash, offset));
    }

    /// Whether a closed connection has anything to come back to: a channel joined
    /// through a route, or with `recovery` any channel with history.
    pub(super) fn worth_keeping(&self, recovery: bool) -> bool {
        self.joined
            .iter()
            .any(|j| j.route || (recovery && !j.epoch.is_empty()))
    }

    /// The state to keep for the reconnect.
    pub(super) fn keep(&mut self, user: &str, client: &str, closed_at: u64) -> Kept {
        Kept {
            user: user.to_owned(),
            client: client.to_owned(),
            closed_at,
            joined: std::mem::take(&mut self.joined),
            written: self.written.drain().collect(),
            ring: self.ring.drain(..).collect(),
            dropped: self.dropped,
        }
    }
}

/// A closed connection's state, kept for its reconnect.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Kept {
    pub(super) user: String,
    /// Its client id: publications that skipped it (`exclude_client`) are not replayed.
    pub(super) client: String,
    /// Unix milliseconds.
    pub(super) closed_at: u64,
    pub(super) joined: Vec<Joined>,
    written: Vec<Written>,
    ring: Vec<Written>,
    dropped: bool,
}

impl Kept {
    /// Where the client stopped in each joined channel with history, from the last
    /// offset it saw (`None` if it saw none). `None` when that can not be known: more
    /// was written after it than the writer remembers.
    pub(super) fn positions(&self, last: Option<&str>) -> Option<HashMap<&str, StreamPosition>> {
        // The client got everything written up to its last offset, in order (one
        // outbox, one writer), and nothing after it.
        let found = last
            .and_then(parse_offset)
            .and_then(|w| self.ring.iter().rposition(|e| *e == w));
        let after = match found {
            Some(i) => &self.ring[i + 1..],
            // Not in the ring: an offset of an earlier connection (the client got none
            // of this one's), unless the ring forgot where it was.
            None if !self.dropped => &self.ring[..],
            None => return None,
        };
        let written: HashMap<u64, u64> = self.written.iter().copied().collect();
        let positions = self
            .joined
            .iter()
            .filter(|j| !j.epoch.is_empty())
            .map(|j| {
                let hash = channel_hash(&j.channel);
                // A channel's offsets follow each other: the first one the client
                // missed says where it stopped.
                let offset = after
                    .iter()
                    .find(|(h, o)| *h == hash && *o > j.offset)
                    .map_or_else(
                        || written.get(&hash).copied().unwrap_or(0).max(j.offset),
                        |(_, o)| o - 1,
                    );
                let position = StreamPosition {
                    offset,
                    epoch: j.epoch.clone(),
                };
                (j.channel.as_str(), position)
            })
            .collect();
        Some(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribed(offset: u64) -> SubscribeResult {
        SubscribeResult {
            recoverable: true,
            epoch: "e".into(),
            offset,
            ..SubscribeResult::default()
        }
    }

    fn frame(channel: &str, offset: u64) -> String {
        let mut f = format!("42[\"m\",{{\"channel\":\"{channel}\"}}]");
        push_offset(&mut f, channel, offset);
        f
    }

    fn token(channel: &str, offset: u64) -> String {
        format!("{offset}:{:016x}", channel_hash(channel))
    }

    #[test]
    fn offsets_are_appended_and_read_back() {
        let f = frame("a:1", 7);
        assert_eq!(
            f,
            format!("42[\"m\",{{\"channel\":\"a:1\"}},\"{}\"]", token("a:1", 7))
        );
        assert_eq!(frame_offset(&f), Some((channel_hash("a:1"), 7)));
        assert_eq!(frame_offset("42[\"m\",\"hello\"]"), None);
        assert_eq!(frame_offset("43[{\"ok\":true}]"), None);
    }

    #[test]
    fn each_channel_resumes_after_what_the_client_saw() {
        let mut t = Tracker::default();
        t.joined("a", &subscribed(10), true);
        t.joined("b", &subscribed(3), false);
        t.joined("plain", &SubscribeResult::default(), true);
        for (ch, o) in [("a", 11), ("b", 4), ("a", 12), ("b", 5), ("a", 13)] {
            t.wrote(&frame(ch, o), 100);
        }
        let kept = t.keep("u", "c", 0);
        // The client saw up to b:4; a:12, b:5, a:13 were lost on the way.
        let p = kept.positions(Some(&token("b", 4))).unwrap();
        assert_eq!(p["a"].offset, 11);
        assert_eq!(p["b"].offset, 4);
        assert!(!p.contains_key("plain"));
        // It saw everything.
        let p = kept.positions(Some(&token("a", 13))).unwrap();
        assert_eq!((p["a"].offset, p["b"].offset), (13, 5));
        // It saw nothing of this connection.
        let p = kept.positions(None).unwrap();
        assert_eq!((p["a"].offset, p["b"].offset), (10, 3));
    }

    #[test]
    fn a_forgotten_position_is_not_guessed() {
        let mut t = Tracker::default();
        t.joined("a", &subscribed(0), true);
        for o in 1..=5 {
            t.wrote(&frame("a", o), 3);
        }
        let kept = t.keep("u", "c", 0);
        assert!(kept.positions(Some(&token("a", 1))).is_none());
        assert!(kept.positions(None).is_none());
        assert_eq!(kept.positions(Some(&token("a", 3))).unwrap()["a"].offset, 3);
    }
}
