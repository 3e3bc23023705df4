//! Retained history of the memory broker: one global ring of published
//! events, bounded by count and by age, addressed by sequence number.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::HistoryQuery;
use crate::event::Event;

/// Published events, oldest first, with their sequence numbers.
///
/// Sequence numbers start at 1 and grow by one per published event, also
/// while history is disabled, so they double as publish cursors.
#[derive(Debug)]
pub(super) struct History {
    entries: VecDeque<Stored>,
    next_seq: u64,
}

#[derive(Debug)]
struct Stored {
    seq: u64,
    stored_at: Instant,
    event: Arc<Event>,
}

impl Default for History {
    fn default() -> Self {
        History {
            entries: VecDeque::new(),
            next_seq: 1,
        }
    }
}

impl History {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends `events` in order; returns the sequence number of the first.
    pub(super) fn append(
        &mut self,
        events: &[Arc<Event>],
        now: Instant,
        max_events: usize,
        max_age: Duration,
    ) -> u64 {
        let first = self.next_seq;
        self.next_seq += events.len() as u64;
        if max_events > 0 {
            // Only the newest `max_events` of a huge batch could survive.
            let skip = events.len().saturating_sub(max_events);
            for (seq, event) in (first..).zip(events).skip(skip) {
                self.entries.push_back(Stored {
                    seq,
                    stored_at: now,
                    event: event.clone(),
                });
            }
        }
        self.evict(now, max_events, max_age);
        first
    }

    /// Drops entries beyond the count bound or older than `max_age`.
    pub(super) fn evict(&mut self, now: Instant, max_events: usize, max_age: Duration) {
        let excess = self.entries.len().saturating_sub(max_events);
        self.entries.drain(..excess);
        if !max_age.is_zero() {
            while self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.stored_at) >= max_age)
            {
                self.entries.pop_front();
            }
        }
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
        // Age eviction only; the count bound holds since the last append.
        self.evict(now, usize::MAX, max_age);
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

    fn topics(found: &[(u64, Arc<Event>)]) -> Vec<&str> {
        found.iter().map(|(_, e)| e.topic.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_count_keeping_the_newest() {
        let mut h = History::default();
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(h.append(&events(&["a", "b"]), now, 3, hour), 1);
        assert_eq!(h.append(&events(&["c", "d", "e", "f"]), now, 3, hour), 3);
        let found = h.query(&HistoryQuery::default(), 100, now, hour);
        assert_eq!(topics(&found), ["d", "e", "f"]);
        assert_eq!(found[0].0, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_age_and_zero_age_means_unbounded() {
        let mut h = History::default();
        let minute = Duration::from_secs(60);
        h.append(&events(&["old"]), Instant::now(), 100, minute);
        tokio::time::advance(Duration::from_secs(30)).await;
        h.append(&events(&["new"]), Instant::now(), 100, minute);
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
        assert_eq!(h.append(&events(&["a"]), now, 0, Duration::ZERO), 1);
        assert_eq!(h.append(&events(&["b"]), now, 0, Duration::ZERO), 2);
        assert_eq!(h.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn query_filters_by_cursor_selector_and_limit() {
        let mut h = History::default();
        let now = Instant::now();
        h.append(
            &events(&["a.x", "b.x", "a.y", "a.z"]),
            now,
            100,
            Duration::ZERO,
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
