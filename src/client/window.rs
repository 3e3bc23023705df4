//! Event-time windows over a subscription: tumbling (`slide == size`) and
//! sliding (`slide < size`) windows over the events' own `time`, with the
//! same semantics as the Python SDK's `client.window`.
//!
//! Window `k` covers `[origin + k*slide, origin + k*slide + size)`, where
//! `origin` is the time of the first event seen, so windows line up with
//! the data rather than with the wall clock. An event belongs to every
//! window that covers its time. A window is emitted once the *watermark*
//! passes its end plus `lateness`; the watermark is the wall clock
//! ([`WindowClock::Wall`], for events stamped by the router or their
//! publisher) or the newest event time seen ([`WindowClock::Event`], for
//! replayed or back-dated events; open windows are then flushed after
//! `idle` without events). An event whose windows have all been emitted is
//! **late**: it is dropped, counted ([`Windows::late`]) and handed to the
//! [`Windows::on_late`] callback. Empty windows are skipped.
//!
//! Times are whole milliseconds. Memory holds the events of the open
//! windows: at most `size + lateness` of traffic (for [`WindowClock::Wall`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;

use super::{Received, Subscription};
use crate::event::Event;

/// A window's events, oldest first (by event time, then arrival).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Inclusive start.
    pub start: Timestamp,
    /// Exclusive end (`start + size`).
    pub end: Timestamp,
    /// The events whose time falls in `[start, end)`.
    pub events: Vec<Event>,
}

/// What the watermark follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowClock {
    /// The wall clock (the default).
    #[default]
    Wall,
    /// The newest event time seen; open windows are flushed after `idle`
    /// without events.
    Event,
}

/// A window's shape and when windows are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Width of each window; more than zero.
    pub size: Duration,
    /// Distance between window starts; more than zero and at most `size`
    /// (equal: tumbling windows).
    pub slide: Duration,
    /// How long after its end a window waits for late events. Default
    /// [`DEFAULT_LATENESS`].
    pub lateness: Duration,
    /// What the watermark follows. Default [`WindowClock::Wall`].
    pub clock: WindowClock,
    /// With [`WindowClock::Event`]: flush open windows after this long
    /// without events. Default: `size`.
    pub idle: Option<Duration>,
}

/// Default `lateness`: 200 ms.
pub const DEFAULT_LATENESS: Duration = Duration::from_millis(200);

impl WindowConfig {
    /// Back-to-back windows of `size`.
    pub fn tumbling(size: Duration) -> WindowConfig {
        WindowConfig::sliding(size, size)
    }

    /// Windows of `size` starting every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> WindowConfig {
        WindowConfig {
            size,
            slide,
            lateness: DEFAULT_LATENESS,
            clock: WindowClock::Wall,
            idle: None,
        }
    }
}

/// A window shape that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `size` or `slide` is under a millisecond.
    #[error("window size and slide must be at least 1 ms")]
    Empty,
    /// `slide` is larger than `size`, which would leave gaps.
    #[error("a window's slide must not exceed its size (no gaps)")]
    Gaps,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

/// The pure windowing logic: [`add`](Self::add) events,
/// [`advance`](Self::advance) the watermark to get the windows it closes,
/// [`flush`](Self::flush) to get the rest.
#[derive(Debug)]
pub struct WindowAssigner {
    size: i64,
    slide: i64,
    lateness: i64,
    origin: Option<i64>,
    newest: Option<i64>,
    late: u64,
    seq: u64,
    closed_below: Option<i64>,
    open: BTreeMap<i64, Vec<(i64, u64, Event)>>,
}

impl WindowAssigner {
    /// An assigner for windows of `size` every `slide`, waiting `lateness`
    /// past each window's end.
    ///
    /// # Errors
    /// [`WindowError`] when `size` or `slide` is under 1 ms or `slide >
    /// size`.
    pub fn new(
        size: Duration,
        slide: Duration,
        lateness: Duration,
    ) -> Result<WindowAssigner, WindowError> {
        let (size, slide) = (millis(size), millis(slide));
        if size <= 0 || slide <= 0 {
            return Err(WindowError::Empty);
        }
        if slide > size {
            return Err(WindowError::Gaps);
        }
        Ok(WindowAssigner {
            size,
            slide,
            lateness: millis(lateness),
            origin: None,
            newest: None,
            late: 0,
            seq: 0,
            closed_below: None,
            open: BTreeMap::new(),
        })
    }

    /// Puts `event` (at its `time`) in every open window covering it.
    /// Returns it back when it is late (all its windows were emitted); it
    /// is then counted in [`late`](Self::late).
    pub fn add(&mut self, event: Event) -> Result<(), Box<Event>> {
        let t = event.time.as_millisecond();
        let origin = *self.origin.get_or_insert(t);
        self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        let rel = t - origin;
        let last = rel.div_euclid(self.slide);
        let mut first = (rel - self.size).div_euclid(self.slide) + 1;
        if let Some(closed) = self.closed_below {
            first = first.max(closed);
        }
        if first > last {
            self.late += 1;
            return Err(Box::new(event));
        }
        self.seq += 1;
        for k in first..last {
            self.open
                .entry(k)
                .or_default()
                .push((t, self.seq, event.clone()));
        }
        self.open
            .entry(last)
            .or_default()
            .push((t, self.seq, event));
        Ok(())
    }

    fn window(&mut self, k: i64) -> Option<Window> {
        let origin = self.origin?;
        let mut events = self.open.remove(&k)?;
        events.sort_by_key(|(t, seq, _)| (*t, *seq));
        let start = origin + k * self.slide;
        Some(Window {
            start: at(start),
            end: at(start + self.size),
            events: events.into_iter().map(|(_, _, e)| e).collect(),
        })
    }

    /// Emits (and closes) every window whose end plus `lateness` is at or
    /// before `watermark`, oldest first.
    pub fn advance(&mut self, watermark: Timestamp) -> Vec<Window> {
        let Some(origin) = self.origin else {
            return Vec::new();
        };
        let limit = watermark.as_millisecond() - self.lateness;
        let close_below = (limit - origin - self.size).div_euclid(self.slide) + 1;
        if self.closed_below.is_none_or(|c| close_below > c) {
            self.closed_below = Some(close_below);
        }
        let due: Vec<i64> = self.open.range(..close_below).map(|(k, _)| *k).collect();
        due.into_iter().filter_map(|k| self.window(k)).collect()
    }

    /// Emits every open window, oldest first; later events for them are
    /// late.
    pub fn flush(&mut self) -> Vec<Window> {
        let Some(&newest) = self.open.keys().next_back() else {
            return Vec::new();
        };
        self.closed_below = Some(newest + 1);
        let due: Vec<i64> = self.open.keys().copied().collect();
        due.into_iter().filter_map(|k| self.window(k)).collect()
    }

    /// When the oldest open window may be emitted (its end plus
    /// `lateness`), if any is open.
    pub fn next_end(&self) -> Option<Timestamp> {
        let (origin, first) = (self.origin?, *self.open.keys().next()?);
        Some(at(origin + first * self.slide + self.size + self.lateness))
    }

    /// The newest event time seen.
    pub fn newest(&self) -> Option<Timestamp> {
        self.newest.map(at)
    }

    /// Late events dropped so far.
    pub fn late(&self) -> u64 {
        self.late
    }
}

/// The callback given late events.
type LateReport = Box<dyn FnMut(&Event) + Send>;

/// Windows over a [`Subscription`]'s events; see the [module docs](self).
///
/// Deliveries are acked as they are windowed (for a durable subscription
/// that is at-most-once per window: a crash loses the open windows).
pub struct Windows {
    events: Subscription,
    assigner: WindowAssigner,
    clock: WindowClock,
    idle: Duration,
    ready: VecDeque<Window>,
    on_late: Option<LateReport>,
    ended: bool,
}

impl std::fmt::Debug for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows")
            .field("assigner", &self.assigner)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Windows {
    /// Windows of `config`'s shape over `events`.
    ///
    /// # Errors
    /// [`WindowError`] for a shape that cannot work.
    pub fn new(events: Subscription, config: WindowConfig) -> Result<Windows, WindowError> {
        Ok(Windows {
            events,
            assigner: WindowAssigner::new(config.size, config.slide, config.lateness)?,
            clock: config.clock,
            idle: config.idle.unwrap_or(config.size),
            ready: VecDeque::new(),
            on_late: None,
            ended: false,
        })
    }

    /// Calls `report` with each late event as it is dropped.
    #[must_use]
    pub fn on_late(mut self, report: impl FnMut(&Event) + Send + 'static) -> Windows {
        self.on_late = Some(Box::new(report));
        self
    }

    /// Late events dropped so far.
    pub fn late(&self) -> u64 {
        self.assigner.late()
    }

    /// The next window; `None` once the subscription ended and every open
    /// window was emitted.
    ///
    /// # Cancel safety
    /// Cancel safe: events already taken stay in their windows.
    pub async fn next(&mut self) -> Option<Window> {
        loop {
            if let Some(window) = self.ready.pop_front() {
                return Some(window);
            }
            if self.ended {
                return None;
            }
            let wait = self.wait();
            tokio::select! {
                received = self.events.recv() => match received {
                    Some(received) => self.take(received).await,
                    None => {
                        self.ended = true;
                        self.ready.extend(self.assigner.flush());
                    }
                },
                () = sleep_for(wait) => self.tick(),
            }
        }
    }

    /// How long until windows may be due without another event.
    fn wait(&self) -> Option<Duration> {
        let next_end = self.assigner.next_end()?;
        match self.clock {
            WindowClock::Wall => {
                let ms = next_end.as_millisecond() - Timestamp::now().as_millisecond();
                Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
            }
            WindowClock::Event => Some(self.idle),
        }
    }

    async fn take(&mut self, received: Received) {
        if let Err(e) = received.ack().await {
            tracing::debug!(error = %e, "could not ack a windowed event");
        }
        if let Err(late) = self.assigner.add(received.event) {
            tracing::debug!(event = %late.id, "dropping a late event");
            if let Some(report) = &mut self.on_late {
                report(&late);
            }
        }
        if self.clock == WindowClock::Event
            && let Some(newest) = self.assigner.newest()
        {
            self.ready.extend(self.assigner.advance(newest));
        }
    }

    fn tick(&mut self) {
        let due = match self.clock {
            WindowClock::Wall => self.assigner.advance(Timestamp::now()),
            WindowClock::Event => self.assigner.flush(),
        };
        self.ready.extend(due);
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_at(ms: i64, n: usize) -> Event {
        let mut e = Event::new("metrics.cpu", json!({"n": n})).unwrap();
        e.time = Timestamp::from_millisecond(ms).unwrap();
        e
    }

    fn ns(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e.payload["n"].as_u64().unwrap())
            .collect()
    }

    /// Brute force: after a watermark of `w`, window `k` (relative to
    /// `origin`) is emitted once `origin + k*slide + size + lateness <= w`;
    /// an event is late when every window covering it was emitted before
    /// it arrived. Returns the emitted windows (start, event ns) and the
    /// late count, for events arriving in order with the watermark at the
    /// newest event time seen (the event clock), then a flush.
    fn reference(
        times: &[i64],
        size: i64,
        slide: i64,
        lateness: i64,
    ) -> (Vec<(i64, Vec<u64>)>, u64) {
        let origin = times[0];
        let mut emitted: Vec<i64> = Vec::new();
        let mut members: BTreeMap<i64, Vec<(i64, usize)>> = BTreeMap::new();
        let mut out = Vec::new();
        let mut late = 0;
        let mut newest = i64::MIN;
        let max_k = 200;
        let mut closed_below = i64::MIN;
        for (n, &t) in times.iter().enumerate() {
            newest = newest.max(t);
            let covering: Vec<i64> = (-max_k..max_k)
                .filter(|k| {
                    let start = origin + k * slide;
                    start <= t && t < start + size
                })
                .collect();
            let open: Vec<i64> = covering
                .into_iter()
                .filter(|k| *k >= closed_below)
                .collect();
            if open.is_empty() {
                late += 1;
            } else {
                for k in open {
                    members.entry(k).or_default().push((t, n));
                }
            }
            for k in -max_k..max_k {
                if origin + k * slide + size + lateness <= newest {
                    closed_below = closed_below.max(k + 1);
                }
            }
            let due: Vec<i64> = members
                .keys()
                .copied()
                .filter(|k| *k < closed_below)
                .collect();
            for k in due {
                let mut m = members.remove(&k).unwrap();
                m.sort();
                out.push((
                    origin + k * slide,
                    m.iter().map(|(_, n)| *n as u64).collect(),
                ));
                emitted.push(k);
            }
        }
        for (k, mut m) in members {
            m.sort();
            out.push((
                origin + k * slide,
                m.iter().map(|(_, n)| *n as u64).collect(),
            ));
        }
        (out, late)
    }

    fn run(times: &[i64], size: i64, slide: i64, lateness: i64) -> (Vec<(i64, Vec<u64>)>, u64) {
        let ms = |v: i64| Duration::from_millis(v as u64);
        let mut a = WindowAssigner::new(ms(size), ms(slide), ms(lateness)).unwrap();
        let mut out = Vec::new();
        let push = |ws: Vec<Window>, out: &mut Vec<(i64, Vec<u64>)>| {
            for w in ws {
                assert_eq!(w.end.as_millisecond() - w.start.as_millisecond(), size);
                assert!(!w.events.is_empty(), "empty windows are skipped");
                out.push((w.start.as_millisecond(), ns(&w.events)));
            }
        };
        for (n, &t) in times.iter().enumerate() {
            let _ = a.add(event_at(t, n));
            let newest = a.newest().unwrap();
            push(a.advance(newest), &mut out);
        }
        push(a.flush(), &mut out);
        (out, a.late())
    }

    #[test]
    fn windows_match_a_brute_force_reference_on_random_out_of_order_events() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        let mut saw_late = false;
        let mut saw_overlap = false;
        for case in 0..300 {
            let size = rng.random_range(1..=6) * 100;
            let slide = if case % 2 == 0 {
                size
            } else {
                rng.random_range(1..=size / 100) * 100
            };
            let lateness = rng.random_range(0..=3) * 50;
            let mut t = 1_700_000_000_000_i64 + rng.random_range(0..1000);
            let times: Vec<i64> = (0..rng.random_range(1..40))
                .map(|_| {
                    t += rng.random_range(0..150);
                    t - rng.random_range(0..400)
                })
                .collect();
            let got = run(&times, size, slide, lateness);
            let want = reference(&times, size, slide, lateness);
            assert_eq!(
                got, want,
                "size {size} slide {slide} lateness {lateness} times {times:?}"
            );
            saw_late |= got.1 > 0;
            saw_overlap |=
                slide < size && got.0.iter().map(|w| w.1.len()).sum::<usize>() > times.len();
        }
        assert!(
            saw_late && saw_overlap,
            "the cases cover late events and overlapping windows"
        );
    }

    #[test]
    fn tumbling_windows_line_up_with_the_first_event_and_drop_late_ones() {
        let ms = Duration::from_millis;
        let mut a = WindowAssigner::new(ms(1000), ms(1000), ms(0)).unwrap();
        let base = 1_700_000_000_500;
        a.add(event_at(base, 0)).unwrap();
        a.add(event_at(base + 999, 1)).unwrap();
        a.add(event_at(base + 1000, 2)).unwrap();
        let closed = a.advance(Timestamp::from_millisecond(base + 1000).unwrap());
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start.as_millisecond(), base);
        assert_eq!(ns(&closed[0].events), vec![0, 1]);
        assert!(
            a.add(event_at(base + 10, 3)).is_err(),
            "its window was emitted"
        );
        assert_eq!(a.late(), 1);
        assert_eq!(ns(&a.flush()[0].events), vec![2]);
    }

    #[test]
    fn shapes_that_cannot_work_are_refused() {
        let ms = Duration::from_millis;
        assert_eq!(
            WindowAssigner::new(ms(0), ms(0), ms(0)).unwrap_err(),
            WindowError::Empty
        );
        assert_eq!(
            WindowAssigner::new(ms(10), ms(20), ms(0)).unwrap_err(),
            WindowError::Gaps
        );
    }
}
