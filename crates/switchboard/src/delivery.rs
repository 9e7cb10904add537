//! How one subscription wants its channel's events, when it asked for anything but all
//! of them as they are: a tags filter. Kept beside the subscriber in the hub's index,
//! so a channel whose subscribers ask for nothing pays one branch per recipient.

use switchboard_protocol::filter::{FilterError, FilterLimits, FilterNode, TagFilter};
use switchboard_protocol::Publication;

use crate::config::{LimitsConfig, NamespaceConfig};
use crate::event::{ChannelEvent, EventKind};

/// What a subscription asked of its channel's events.
#[derive(Debug)]
pub struct Delivery {
    /// Only publications whose tags pass (joins and leaves always do).
    filter: Option<TagFilter>,
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
}

impl Delivery {
    /// The delivery a subscribe request asks for in namespace `ns`; `None` when it
    /// asks for nothing special.
    ///
    /// # Errors
    /// A filter in a namespace without `allow_tags_filter`, or one that is invalid.
    pub fn requested(
        tf: Option<&FilterNode>,
        ns: &NamespaceConfig,
        limits: &LimitsConfig,
    ) -> Result<Option<Self>, DeliveryError> {
        let Some(tf) = tf else {
            return Ok(None);
        };
        if !ns.allow_tags_filter {
            return Err(DeliveryError::FilterNotAllowed);
        }
        let limits = FilterLimits {
            max_depth: limits.tags_filter_max_depth,
            max_size: limits.tags_filter_max_size,
        };
        let filter = TagFilter::compile(tf, limits).map_err(DeliveryError::InvalidFilter)?;
        Ok(Some(Self {
            filter: Some(filter),
        }))
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
}
