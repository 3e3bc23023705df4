//! The open-loop schedule's clock: ticks at a fixed period with microsecond
//! precision inside the async runtime.
//!
//! Tokio's timer rounds to milliseconds, which would send the events of
//! each millisecond in a burst at its end. On Linux a periodic timerfd
//! registered with the runtime wakes the task itself at each tick: armed
//! once for the whole run (no `timerfd_settime` per batch), no timer thread
//! and no hand-over between threads per event. Elsewhere the runtime's
//! timer is used.

pub(super) use imp::Pacer;

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    pub(in super::super) struct Pacer {
        timer: AsyncFd<OwnedFd>,
    }

    fn timespec(d: Duration) -> Timespec {
        Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        }
    }

    impl Pacer {
        /// A clock that ticks at `first` and every `period` after it (at
        /// least every nanosecond).
        pub(in super::super) fn new(first: Instant, period: Duration) -> io::Result<Pacer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // A zero `it_value` would disarm the timer: a first tick already
            // due is one nanosecond away.
            let wait = first
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1));
            let spec = Itimerspec {
                it_interval: timespec(period.max(Duration::from_nanos(1))),
                it_value: timespec(wait),
            };
            timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
            // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and never
            // handed out mutably, so it stays open and the same descriptor
            // for as long as it is registered.
            let timer = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(Pacer { timer })
        }

        /// Waits for the next tick; returns at once when ticks passed
        /// since the last call.
        pub(in super::super) async fn tick(&mut self) -> io::Result<()> {
            loop {
                let mut ready = self.timer.readable().await?;
                let mut expirations = [0u8; 8];
                match rustix::io::read(ready.get_inner(), &mut expirations) {
                    Ok(_) => return Ok(()),
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::time::{Duration, Instant};

    pub(in super::super) struct Pacer {
        interval: tokio::time::Interval,
    }

    impl Pacer {
        /// A clock that ticks at `first` and every `period` after it, to
        /// the runtime timer's millisecond.
        pub(in super::super) fn new(first: Instant, period: Duration) -> io::Result<Pacer> {
            let mut interval =
                tokio::time::interval_at(first.into(), period.max(Duration::from_millis(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            Ok(Pacer { interval })
        }

        /// Waits for the next tick.
        pub(in super::super) async fn tick(&mut self) -> io::Result<()> {
            self.interval.tick().await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn ticks_at_the_first_instant_then_every_period() {
        let first = Instant::now() + Duration::from_micros(300);
        let period = Duration::from_micros(200);
        let mut pacer = Pacer::new(first, period).unwrap();
        for k in 0..20u32 {
            pacer.tick().await.unwrap();
            let due = first + period * k;
            assert!(Instant::now() >= due, "tick {k} came before its time");
        }
    }

    #[tokio::test]
    async fn a_tick_that_passed_while_busy_is_taken_at_once() {
        let period = Duration::from_secs(1);
        let mut pacer = Pacer::new(Instant::now() + Duration::from_millis(1), period).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let before = Instant::now();
        pacer.tick().await.unwrap();
        assert!(
            before.elapsed() < period / 2,
            "the passed tick was not taken; the call waited for the next one"
        );
    }
}
