//! One channel's stream: an epoch, increasing offsets, and a bounded window of recent
//! publications (by count and by age) that recovery and the `history` command read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{HistoryResult, Publication, StreamPosition};
use tokio::time::Instant;

/// Limits of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Publications kept.
    pub size: usize,
    /// How long each is kept.
    pub ttl: Duration,
}

/// What to read from a stream.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only publications after this position (its epoch must match to get any).
    pub since: Option<StreamPosition>,
    /// At most this many; `None` for all that are kept.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// Create the stream with these options if it does not exist yet, so its epoch is
    /// fixed from the first subscriber on and a later recovery can match it.
    pub ensure: Option<HistoryOptions>,
}

/// A channel's stream.
#[derive(Debug)]
pub struct Stream {
    epoch: Arc<str>,
    /// Offset of the newest visible publication: what readers and positions see.
    top: u64,
    /// Highest offset handed out; above `top` while publications wait for the disk
    /// (see [`Stream::reserve`]).
    reserved: u64,
    items: VecDeque<(Publication, Instant)>,
    /// Publications given an offset but not visible yet, oldest first.
    pending: VecDeque<(Publication, Instant)>,
    /// When the stream was last written; an idle stream is dropped after its TTL.
    touched: Instant,
    bytes: usize,
}

impl Stream {
    /// A new stream with a fresh random epoch.
    pub fn new(now: Instant) -> Self {
        Self::restore(new_epoch().into(), 0, Vec::new(), now)
    }

    /// A stream as it was kept: its epoch, its top offset, and its publications (oldest
    /// first, with their expiry).
    pub fn restore(
        epoch: Arc<str>,
        top: u64,
        items: Vec<(Publication, Instant)>,
        now: Instant,
    ) -> Self {
        let bytes = items.iter().map(|(p, _)| approx_size(p)).sum();
        Self {
            epoch,
            top,
            reserved: top,
            items: items.into(),
            pending: VecDeque::new(),
            touched: now,
            bytes,
        }
    }

    /// Appends a publication, assigning the next offset, and trims to `opts`.
    /// Returns the publication's offset.
    pub fn append(
        &mut self,
        mut publication: Publication,
        opts: HistoryOptions,
        now: Instant,
    ) -> u64 {
        self.reserved += 1;
        publication.offset = self.reserved;
        self.push(publication, now + opts.ttl, opts, now);
        self.top
    }

    fn push(
        &mut self,
        publication: Publication,
        expires: Instant,
        opts: HistoryOptions,
        now: Instant,
    ) {
        self.expire(now);
        self.top = publication.offset;
        self.touched = now;
        self.bytes += approx_size(&publication);
        self.items.push_back((publication, expires));
        while self.items.len() > opts.size.max(1) {
            self.pop_front();
        }
    }

    /// Gives a publication the next offset without making it visible: readers and
    /// positions see it only after [`Stream::reveal_through`] (once it is on disk).
    /// Returns the offset.
    pub fn reserve(
        &mut self,
        mut publication: Publication,
        opts: HistoryOptions,
        now: Instant,
    ) -> u64 {
        self.reserved += 1;
        publication.offset = self.reserved;
        self.touched = now;
        self.pending.push_back((publication, now + opts.ttl));
        self.reserved
    }

    /// Makes every reserved publication up to `offset` visible, in offset order, handing
    /// each to `deliver`. Publications reserved before `offset` were written with or
    /// before it, so they are revealed too (by whichever publisher comes first).
    pub fn reveal_through(
        &mut self,
        offset: u64,
        opts: HistoryOptions,
        now: Instant,
        mut deliver: impl FnMut(&Publication),
    ) {
        while self
            .pending
            .front()
            .is_some_and(|(p, _)| p.offset <= offset)
        {
            let Some((publication, expires)) = self.pending.pop_front() else {
                break;
            };
            deliver(&publication);
            self.push(publication, expires, opts, now);
        }
    }

    /// Forgets a reserved publication that could not be written: its offset is skipped.
    pub fn discard(&mut self, offset: u64) {
        self.pending.retain(|(p, _)| p.offset != offset);
    }

    /// The lowest offset kept (`top + 1` when none is).
    pub fn first_offset(&self) -> u64 {
        self.items.front().map_or(self.top + 1, |(p, _)| p.offset)
    }

    /// The lowest offset kept once a publication at `offset` is appended under `opts`.
    pub fn first_offset_with(&self, offset: u64, opts: HistoryOptions) -> u64 {
        let size = u64::try_from(opts.size.max(1)).unwrap_or(u64::MAX);
        self.first_offset()
            .max((offset + 1).saturating_sub(size))
            .min(offset)
    }

    /// The stream's epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Offset of the newest visible publication.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The highest offset handed out, visible or not.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    fn pop_front(&mut self) {
        if let Some((p, _)) = self.items.pop_front() {
            self.bytes = self.bytes.saturating_sub(approx_size(&p));
        }
    }

    /// Drops publications older than their TTL.
    pub fn expire(&mut self, now: Instant) {
        while self.items.front().is_some_and(|(_, exp)| *exp <= now) {
            self.pop_front();
        }
    }

    /// Drops the oldest publication (memory cap eviction). False if empty.
    pub fn evict_oldest(&mut self) -> bool {
        let had = !self.items.is_empty();
        self.pop_front();
        had
    }

    /// Whether the stream saw no write for `ttl` and holds nothing.
    pub fn idle(&self, ttl: Duration, now: Instant) -> bool {
        self.items.is_empty() && self.pending.is_empty() && now.duration_since(self.touched) >= ttl
    }

    /// Current position.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.to_string(),
        }
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Expiry of the oldest kept publication: the eviction order under the memory cap.
    pub fn oldest_time(&self) -> Option<Instant> {
        self.items.front().map(|(_, exp)| *exp)
    }

    /// Reads publications.
    pub fn read(&mut self, query: &HistoryQuery, now: Instant) -> HistoryResult {
        self.expire(now);
        window(
            self.items.iter().map(|(p, _)| p),
            &self.epoch,
            self.top,
            query,
        )
    }
}

/// Selects what `query` asks for from a stream's kept publications (oldest first), at
/// position `epoch`/`top`: the one reading rule of every engine.
pub fn window<'a, I>(items: I, epoch: &str, top: u64, query: &HistoryQuery) -> HistoryResult
where
    I: DoubleEndedIterator<Item = &'a Publication> + Clone,
{
    let after = match &query.since {
        Some(pos) if pos.epoch == epoch => Some(pos.offset),
        // A position from another epoch says nothing about this stream.
        Some(_) => None,
        None => None,
    };
    let limit = query.limit.unwrap_or(usize::MAX);
    let iter = items.clone().filter(|p| after.is_none_or(|a| p.offset > a));
    let publications: Vec<Publication> = if query.reverse {
        // With `since` and reverse, Centrifugo pages backwards from the position.
        match &query.since {
            Some(pos) if pos.epoch == epoch => items
                .rev()
                .filter(|p| p.offset < pos.offset)
                .take(limit)
                .cloned()
                .collect(),
            _ => iter.rev().take(limit).cloned().collect(),
        }
    } else {
        iter.take(limit).cloned().collect()
    };
    HistoryResult {
        publications,
        epoch: epoch.to_owned(),
        offset: top,
    }
}

fn approx_size(p: &Publication) -> usize {
    // Payload plus the struct and bookkeeping; info and tags are small and shared.
    p.data.get().len() + 96
}

/// A random epoch string.
pub fn new_epoch() -> String {
    let n: u64 = rand::random();
    format!("{:08x}", n as u32)
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn publication(n: u32) -> Publication {
        Publication {
            data: Arc::from(RawValue::from_string(n.to_string()).unwrap()),
            info: None,
            offset: 0,
            tags: None,
            exclude_client: None,
        }
    }

    const OPTS: HistoryOptions = HistoryOptions {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn window_by_size_and_since() {
        let now = Instant::now();
        let mut s = Stream::new(now);
        for i in 1..=5 {
            assert_eq!(s.append(publication(i), OPTS, now), u64::from(i));
        }
        let epoch = s.position().epoch;
        let all = s.read(&HistoryQuery::default(), now);
        assert_eq!(
            all.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(all.offset, 5);
        let since = HistoryQuery {
            since: Some(StreamPosition { offset: 3, epoch }),
            ..Default::default()
        };
        let r = s.read(&since, now);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let rev = HistoryQuery {
            limit: Some(2),
            reverse: true,
            ..Default::default()
        };
        let r = s.read(&rev, now);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![5, 4]
        );
        let other_epoch = HistoryQuery {
            since: Some(StreamPosition {
                offset: 4,
                epoch: "nope".into(),
            }),
            ..Default::default()
        };
        assert_eq!(s.read(&other_epoch, now).publications.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn reserved_publications_show_only_once_revealed_and_in_order() {
        let now = Instant::now();
        let mut s = Stream::new(now);
        s.append(publication(1), OPTS, now);
        let two = s.reserve(publication(2), OPTS, now);
        let three = s.reserve(publication(3), OPTS, now);
        let four = s.reserve(publication(4), OPTS, now);
        assert_eq!((two, three, four), (2, 3, 4));
        assert_eq!(s.position().offset, 1, "nothing reserved is visible");
        assert_eq!(s.read(&HistoryQuery::default(), now).publications.len(), 1);
        assert_eq!(s.first_offset_with(4, OPTS), 2, "size 3 keeps 2..=4");
        assert!(
            !s.idle(Duration::ZERO, now),
            "a stream waiting for the disk stays"
        );
        // 3's writer answers first: 2 was written with or before it and shows too.
        let mut delivered = Vec::new();
        s.reveal_through(3, OPTS, now, |p| delivered.push(p.offset));
        s.reveal_through(2, OPTS, now, |p| delivered.push(p.offset));
        assert_eq!(delivered, vec![2, 3]);
        assert_eq!(s.position().offset, 3);
        // 4 failed: skipped, and the next offset is not reused.
        s.discard(4);
        assert_eq!(s.append(publication(5), OPTS, now), 5);
        let r = s.read(&HistoryQuery::default(), now);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![2, 3, 5]
        );
        assert_eq!(s.reserved(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_publications() {
        let mut s = Stream::new(Instant::now());
        s.append(publication(1), OPTS, Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        s.append(publication(2), OPTS, Instant::now());
        tokio::time::advance(Duration::from_secs(31)).await;
        let r = s.read(&HistoryQuery::default(), Instant::now());
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(r.offset, 2, "offsets survive expiry");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(s
            .read(&HistoryQuery::default(), Instant::now())
            .publications
            .is_empty());
        assert!(s.idle(OPTS.ttl, Instant::now()));
    }
}
