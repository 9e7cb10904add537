//! How one subscription wants its channel's events, when it asked for anything but all
//! of them as they are: a tags filter, or fossil deltas. Kept beside the subscriber in
//! the hub's index, so a channel whose subscribers ask for neither pays one branch per
//! recipient.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchboard_protocol::filter::{FilterError, FilterLimits, FilterNode, TagFilter};
use switchboard_protocol::Publication;

use crate::config::{LimitsConfig, NamespaceConfig};
use crate::event::{ChannelEvent, Codec, EventFrame, EventKind};

/// The one delta encoding there is.
pub const FOSSIL: &str = "fossil";

/// What a subscription asked of its channel's events.
#[derive(Debug)]
pub struct Delivery {
    /// Only publications whose tags pass (joins and leaves always do).
    filter: Option<TagFilter>,
    /// Publications as fossil deltas of the previous one.
    delta: Option<DeltaChain>,
}

/// Where a delta subscriber's chain stands: the offset of the last publication it was
/// sent (0: none, or one without offset), which the next delta must start from.
#[derive(Debug, Default)]
struct DeltaChain {
    last: AtomicU64,
}

/// Why a subscribe request's delivery options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The namespace does not allow tags filters (`allow_tags_filter`).
    #[error("tags filter not allowed in this namespace")]
    FilterNotAllowed,
    /// The filter is malformed or past the limits.
    #[error("invalid tags filter: {0}")]
    InvalidFilter(FilterError),
    /// A delta type other than `fossil`.
    #[error("unknown delta type {0:?}")]
    UnknownDelta(String),
}

/// What a subscribe request asks for, as the transport decoded it.
#[derive(Debug, Clone, Copy)]
pub struct Requested<'a> {
    /// The tags filter (`tf`).
    pub filter: Option<&'a FilterNode>,
    /// The delta type (`delta`), empty for none.
    pub delta: &'a str,
}

impl Delivery {
    /// The delivery a subscribe request asks for in namespace `ns`; `None` when it
    /// asks for nothing special or nothing it asked for is granted. Deltas are granted
    /// when the namespace allows fossil, the channel keeps history (`history`), the
    /// transport can carry them (`codec`) and no filter is set, as in Centrifugo;
    /// otherwise the subscriber gets full payloads and the reply says `delta: false`.
    ///
    /// # Errors
    /// A filter in a namespace without `allow_tags_filter`, an invalid filter, an
    /// unknown delta type.
    pub fn requested(
        req: Requested<'_>,
        ns: &NamespaceConfig,
        limits: &LimitsConfig,
        history: bool,
        codec: &Codec,
    ) -> Result<Option<Self>, DeliveryError> {
        if !req.delta.is_empty() && req.delta != FOSSIL {
            return Err(DeliveryError::UnknownDelta(req.delta.to_owned()));
        }
        let filter = match req.filter {
            None => None,
            Some(_) if !ns.allow_tags_filter => return Err(DeliveryError::FilterNotAllowed),
            Some(tf) => {
                let limits = FilterLimits {
                    max_depth: limits.tags_filter_max_depth,
                    max_size: limits.tags_filter_max_size,
                };
                Some(TagFilter::compile(tf, limits).map_err(DeliveryError::InvalidFilter)?)
            }
        };
        let delta = (req.delta == FOSSIL
            && filter.is_none()
            && history
            && codec.deltas.is_some()
            && ns.allowed_delta_types.iter().any(|t| t == FOSSIL))
        .then(DeltaChain::default);
        if filter.is_none() && delta.is_none() {
            return Ok(None);
        }
        Ok(Some(Self { filter, delta }))
    }

    /// Whether the subscriber takes deltas.
    pub fn takes_deltas(&self) -> bool {
        self.delta.is_some()
    }

    /// Continues the subscriber's chain from the publication at `offset`, the last one
    /// its subscribe reply carried: the next publication can be a delta of it.
    pub fn continue_after(&self, offset: u64) {
        if let Some(chain) = &self.delta {
            chain.last.store(offset, Ordering::Release);
        }
    }

    /// Whether the subscriber gets `event`.
    pub fn admits(&self, event: &ChannelEvent) -> bool {
        match &event.kind {
            EventKind::Publication(p) => self.admits_publication(p),
            EventKind::Join(_) | EventKind::Leave(_) => true,
        }
    }

    /// Whether the subscriber gets `p` (live or recovered).
    pub fn admits_publication(&self, p: &Publication) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.matches(p.tags.as_deref()))
    }

    /// The frame `event` goes to this subscriber in, when it is not the codec's shared
    /// one: a delta subscriber's publication. Call it as the frame is queued, in
    /// order: it moves the subscriber's chain.
    pub fn frame(&self, event: &ChannelEvent, codec: &Codec) -> Option<Arc<EventFrame>> {
        let chain = self.delta.as_ref()?;
        let EventKind::Publication(p) = &event.kind else {
            return None;
        };
        let before = chain.last.swap(p.offset, Ordering::AcqRel);
        let chained = before > 0 && before.checked_add(1) == Some(p.offset);
        event.delta_encoded(codec, chained)
    }
}
