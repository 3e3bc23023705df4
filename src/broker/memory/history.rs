//! Retained history of the memory broker: one global ring of published
//! events, bounded by count, by bytes and by age, addressed by sequence
//! number.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{HistoryPurge, HistoryQuery};
use crate::event::Event;

/// Published events, oldest first, with their sequence numbers.
///
/// Sequence numbers start at 1 and grow by one per published event, also
/// while history is disabled, so they double as publish cursors.
#[derive(Debug)]
pub(super) struct History {
    entries: VecDeque<Stored>,
    next_seq: u64,
    /// Sum of the entries' footprints.
    bytes: usize,
    /// Entries evicted by the byte bound, ever.
    evicted_for_bytes: u64,
}

#[derive(Debug)]
struct Stored {
    seq: u64,
    stored_at: Instant,
    event: Arc<Event>,
    bytes: usize,
}

/// The bounds of history, from the broker config.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    /// Most entries; 0 keeps none.
    pub(super) max_events: usize,
    /// Most bytes of entries (by footprint); 0 = no byte bound.
    pub(super) max_bytes: usize,
    /// Longest an entry stays; zero = no age bound.
    pub(super) max_age: Duration,
}

impl Default for History {
    fn default() -> Self {
        History {
            entries: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            evicted_for_bytes: 0,
        }
    }
}

impl History {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes (by footprint) of the retained entries.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries evicted because history held `max_bytes`, since creation.
    pub(super) fn evicted_for_bytes(&self) -> u64 {
        self.evicted_for_bytes
    }

    /// Appends `events` (with their footprints, `sizes[i]` for
    /// `events[i]`) in order; returns the sequence number of the first.
    pub(super) fn append(
        &mut self,
        events: &[Arc<Event>],
        sizes: &[usize],
        now: Instant,
        retention: Retention,
    ) -> u64 {
        let first = self.next_seq;
        self.next_seq += events.len() as u64;
        if retention.max_events > 0 {
            // Only the newest `max_events` of a huge batch could survive.
            let skip = events.len().saturating_sub(retention.max_events);
            for ((seq, event), &bytes) in (first..).zip(events).zip(sizes).skip(skip) {
                self.bytes += bytes;
                self.entries.push_back(Stored {
                    seq,
                    stored_at: now,
                    event: event.clone(),
                    bytes,
                });
                // Evicting as we go keeps a huge batch from piling up first.
                self.evict_bytes(retention.max_bytes);
            }
        }
        self.evict(now, retention);
        first
    }

    /// Drops entries beyond the count or byte bound or older than `max_age`.
    pub(super) fn evict(&mut self, now: Instant, retention: Retention) {
        let excess = self.entries.len().saturating_sub(retention.max_events);
        for gone in self.entries.drain(..excess) {
            self.bytes -= gone.bytes;
        }
        self.evict_bytes(retention.max_bytes);
        if !retention.max_age.is_zero() {
            while self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.stored_at) >= retention.max_age)
            {
                self.pop_front();
            }
        }
    }

    fn evict_bytes(&mut self, max_bytes: usize) {
        while max_bytes > 0 && self.bytes > max_bytes && self.pop_front() {
            self.evicted_for_bytes += 1;
        }
    }

    fn pop_front(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(gone) => {
                self.bytes -= gone.bytes;
                true
            }
            None => false,
        }
    }

    /// Deletes the entries `purge` selects; returns how many.
    pub(super) fn purge(&mut self, purge: &HistoryPurge) -> u64 {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|e| {
            let gone = e.event.time < purge.before
                && purge.selector.as_ref().is_none_or(|s| s.matches(&e.event));
            if gone {
                freed += e.bytes;
            }
            !gone
        });
        self.bytes -= freed;
        (before - self.entries.len()) as u64
    }

    /// Up to `limit` retained events matching `query`, oldest first.
    /// `query.limit` is ignored: the caller resolves it into `limit`.
    pub(super) fn query(
        &mut self,
        query: &HistoryQuery,
        limit: usize,
        now: Instant,
        max_age: Duration,
    ) -> Vec<(u64, Arc<Event>)> {
        // Age eviction only; the other bounds hold since the last append.
        let age_only = Retention {
            max_events: usize::MAX,
            max_bytes: 0,
            max_age,
        };
        self.evict(now, age_only);
        let after = query
            .after
            .as_deref()
            .and_then(|cursor| cursor.parse::<u64>().ok())
            .unwrap_or(0);
        let start = self.entries.partition_point(|e| e.seq <= after);
        self.entries
            .range(start..)
            .filter(|e| {
                let event = &e.event;
                query.from.is_none_or(|from| event.time >= from)
                    && query.to.is_none_or(|to| event.time < to)
                    && query.selector.as_ref().is_none_or(|s| s.matches(event))
            })
            .take(limit)
            .map(|e| (e.seq, e.event.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    fn events(topics: &[&str]) -> Vec<Arc<Event>> {
        topics
            .iter()
            .map(|t| Arc::new(Event::new(*t, serde_json::Value::Null).unwrap()))
            .collect()
    }

    fn sizes(events: &[Arc<Event>]) -> Vec<usize> {
        events
            .iter()
            .map(|e| crate::broker::footprint::event_footprint(e))
            .collect()
    }

    fn keep(max_events: usize, max_age: Duration) -> Retention {
        Retention {
            max_events,
            max_bytes: 0,
            max_age,
        }
    }

    fn append(h: &mut History, events: Vec<Arc<Event>>, now: Instant, r: Retention) -> u64 {
        h.append(&events, &sizes(&events), now, r)
    }

    fn topics(found: &[(u64, Arc<Event>)]) -> Vec<&str> {
        found.iter().map(|(_, e)| e.topic.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_count_keeping_the_newest() {
        let mut h = History::default();
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(append(&mut h, events(&["a", "b"]), now, keep(3, hour)), 1);
        assert_eq!(
            append(&mut h, events(&["c", "d", "e", "f"]), now, keep(3, hour)),
            3
        );
        let found = h.query(&HistoryQuery::default(), 100, now, hour);
        assert_eq!(topics(&found), ["d", "e", "f"]);
        assert_eq!(found[0].0, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_age_and_zero_age_means_unbounded() {
        let mut h = History::default();
        let minute = Duration::from_secs(60);
        append(&mut h, events(&["old"]), Instant::now(), keep(100, minute));
        tokio::time::advance(Duration::from_secs(30)).await;
        append(&mut h, events(&["new"]), Instant::now(), keep(100, minute));
        tokio::time::advance(Duration::from_secs(31)).await;
        let now = Instant::now();
        assert_eq!(
            topics(&h.query(&HistoryQuery::default(), 100, now, Duration::ZERO)),
            ["old", "new"]
        );
        assert_eq!(
            topics(&h.query(&HistoryQuery::default(), 100, now, minute)),
            ["new"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_events_keeps_nothing_but_still_numbers_events() {
        let mut h = History::default();
        let now = Instant::now();
        assert_eq!(
            append(&mut h, events(&["a"]), now, keep(0, Duration::ZERO)),
            1
        );
        assert_eq!(
            append(&mut h, events(&["b"]), now, keep(0, Duration::ZERO)),
            2
        );
        assert_eq!(h.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_bytes_evicting_the_oldest_and_counting_them() {
        let mut h = History::default();
        let now = Instant::now();
        let big = |topic: &str| {
            Arc::new(Event::new(topic, serde_json::json!("x".repeat(10_000))).unwrap())
        };
        let one = crate::broker::footprint::event_footprint(&big("a"));
        let bound = Retention {
            max_events: 100,
            max_bytes: 3 * one,
            max_age: Duration::ZERO,
        };
        let batch = vec![big("a"), big("b"), big("c"), big("d"), big("e")];
        append(&mut h, batch, now, bound);
        assert!(h.bytes() <= 3 * one, "{} > {}", h.bytes(), 3 * one);
        assert_eq!(
            topics(&h.query(&HistoryQuery::default(), 100, now, Duration::ZERO)),
            ["c", "d", "e"]
        );
        assert_eq!(h.evicted_for_bytes(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn query_filters_by_cursor_selector_and_limit() {
        let mut h = History::default();
        let now = Instant::now();
        append(
            &mut h,
            events(&["a.x", "b.x", "a.y", "a.z"]),
            now,
            keep(100, Duration::ZERO),
        );
        let query = HistoryQuery {
            selector: Some(Selector::parse(&["a.*"], None).unwrap()),
            after: Some("1".into()),
            ..HistoryQuery::default()
        };
        assert_eq!(topics(&h.query(&query, 1, now, Duration::ZERO)), ["a.y"]);
        let bogus = HistoryQuery {
            after: Some("not-a-cursor".into()),
            ..HistoryQuery::default()
        };
        assert_eq!(h.query(&bogus, 100, now, Duration::ZERO).len(), 4);
    }
}
