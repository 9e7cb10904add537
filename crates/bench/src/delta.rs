//! The load clients' side of fossil delta compression (the switchboard-delta target): a
//! connection keeps its channel's last payload and applies each delta to it, so that it
//! reads every publication's real payload, as an SDK does.

use std::borrow::Cow;

use serde::Deserialize;
use switchboard_protocol::fossil;

/// What a connection needs to read delta publications: the payload of the last
/// publication it received, the base of the next delta. A delta-target connection
/// subscribes one channel, so one payload is enough.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    previous: Vec<u8>,
}

/// One publication, as a delta subscriber reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// The payload came in full.
    Full(Option<u64>),
    /// The payload came as a delta, applied.
    Delta(Option<u64>),
    /// A delta that could not be applied (malformed, or not a delta of the payload held)
    /// or a push that is not a publication of the delta form.
    Broken,
}

/// The parts of `{"push":{"channel":…,"pub":{"data":"…","delta":true}}}` read here.
#[derive(Deserialize)]
struct PushLine<'a> {
    #[serde(borrow)]
    push: Push<'a>,
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(borrow, rename = "pub")]
    publication: Publication<'a>,
}

#[derive(Deserialize)]
struct Publication<'a> {
    /// The payload's JSON text or the delta, as a JSON string: borrowed unless escaped.
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(default)]
    delta: bool,
}

impl Chain {
    /// Reads the publication push `line`, returning its send time (the `"t"` of the real
    /// payload, see [`crate::client::sent_at`]).
    pub(crate) fn read(&mut self, line: &str) -> Read {
        let Ok(PushLine { push }) = serde_json::from_str::<PushLine<'_>>(line) else {
            return Read::Broken;
        };
        let data = push.publication.data.as_bytes();
        if push.publication.delta {
            match fossil::apply(&self.previous, data) {
                Ok(payload) => {
                    self.previous = payload;
                    Read::Delta(crate::client::sent_at(&self.previous))
                }
                Err(_) => Read::Broken,
            }
        } else {
            self.previous.clear();
            self.previous.extend_from_slice(data);
            Read::Full(crate::client::sent_at(&self.previous))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::client::{classify, payload, subscribe_frames, Incoming, Proto};

    /// The fossil delta from `from` to `to`, as the server makes it.
    fn patch(from: &str, to: &str) -> Vec<u8> {
        fossil::create(from.as_bytes(), to.as_bytes())
    }

    /// A push as switchboard sends it to a delta subscriber.
    fn push(data: &[u8], delta: bool) -> String {
        let data = serde_json::to_string(std::str::from_utf8(data).unwrap()).unwrap();
        let flag = if delta { r#","delta":true"# } else { "" };
        format!(r#"{{"push":{{"channel":"bench:all","pub":{{"data":{data},"offset":7{flag}}}}}}}"#)
    }

    /// The size of the delta between two consecutive `size`-byte bench payloads.
    fn patch_of_size(size: usize) -> usize {
        let first = payload(1_700_000_000_000_000, 1, size);
        let second = payload(1_700_000_000_000_420, 2, size);
        patch(&first, &second).len()
    }

    #[test]
    fn applies_deltas_to_the_previous_payload() {
        let first = payload(1_700_000_000_000_000, 1, 100);
        let second = payload(1_700_000_000_000_420, 2, 100);
        let patch = fossil::create(first.as_bytes(), second.as_bytes());
        // The bench payload is constant filler after a timestamp and a sequence
        // number: consecutive payloads share all but a few bytes, at any size
        // (docs/benchmarks.md, "Delta compression").
        assert!(patch.len() <= 40, "{} bytes", patch.len());
        let large = patch_of_size(1000);
        assert!(large <= 40, "{large} bytes");
        let mut chain = Chain::default();
        assert_eq!(
            chain.read(&push(first.as_bytes(), false)),
            Read::Full(Some(1_700_000_000_000_000))
        );
        assert_eq!(
            chain.read(&push(&patch, true)),
            Read::Delta(Some(1_700_000_000_000_420))
        );
        assert_eq!(chain.previous, second.as_bytes());
    }

    #[test]
    fn a_delta_of_another_payload_is_broken() {
        let first = payload(1, 1, 100);
        let second = payload(2, 2, 100);
        let patch = fossil::create(first.as_bytes(), second.as_bytes());
        let mut chain = Chain::default();
        // Nothing held yet: the delta's copies read past an empty base.
        assert_eq!(chain.read(&push(&patch, true)), Read::Broken);
        // A base other than the delta's: its copies read past it.
        chain.read(&push(payload(3, 3, 50).as_bytes(), false));
        assert_eq!(chain.read(&push(&patch, true)), Read::Broken);
        assert_eq!(chain.read("{\"push\":{}}"), Read::Broken);
    }

    #[test]
    fn delta_subscribers_need_the_delta_negotiated_and_read_payloads_through_the_chain() {
        assert_eq!(
            subscribe_frames(Proto::CentrifugeDelta, &["a".into()]),
            vec![Message::text(
                r#"{"id":2,"subscribe":{"channel":"a","delta":"fossil"}}"#
            )]
        );
        let first = payload(100, 1, 100);
        let second = payload(200, 2, 100);
        let patch = String::from_utf8(patch(&first, &second)).unwrap();
        let push = |data: &str, flag: &str| {
            format!(
                r#"{{"push":{{"channel":"bench:all","pub":{{"data":{},"offset":3{flag}}}}}}}"#,
                serde_json::to_string(data).unwrap()
            )
        };
        let frame = [
            r#"{"id":2,"subscribe":{"offset":2,"epoch":"e"}}"#.to_owned(),
            r#"{"id":3,"subscribe":{"offset":2,"epoch":"e","delta":true}}"#.to_owned(),
            push(&first, ""),
            push(&patch, r#","delta":true"#),
            push(&payload(300, 3, 50), ""),
            push(&patch, r#","delta":true"#),
            "{}".to_owned(),
        ]
        .join("\n");
        let mut seen = Vec::new();
        classify(
            Proto::CentrifugeDelta,
            frame.as_bytes(),
            &mut Chain::default(),
            |i| seen.push(i),
        );
        assert_eq!(
            seen,
            vec![
                Incoming::SubscribeReply { ok: false },
                Incoming::SubscribeReply { ok: true },
                Incoming::Publication(Some(100)),
                Incoming::DeltaPublication(Some(200)),
                Incoming::Publication(Some(300)),
                // A delta of another payload than the one held.
                Incoming::BrokenDelta,
                Incoming::Ping,
            ]
        );
    }
}
