//! The open-loop schedule's clock: waits until an instant with
//! microsecond precision inside the async runtime.
//!
//! Tokio's timer rounds to milliseconds, which would send the events of
//! each millisecond in a burst at its end. On Linux a timerfd registered
//! with the runtime wakes the task itself at the due time, with no timer
//! thread and no hand-over between threads per event; elsewhere the
//! runtime's timer is used.

pub(super) use imp::Pacer;

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    pub(in super::super) struct Pacer {
        timer: AsyncFd<OwnedFd>,
    }

    impl Pacer {
        pub(in super::super) fn new() -> io::Result<Pacer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and never
            // handed out mutably, so it stays open and the same descriptor
            // for as long as it is registered.
            let timer = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(Pacer { timer })
        }

        /// Returns at `due` (at once when it has passed).
        pub(in super::super) async fn until(&mut self, due: Instant) -> io::Result<()> {
            let wait = due.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Ok(());
            }
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let spec = Itimerspec {
                it_interval: zero,
                it_value: Timespec {
                    tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(wait.subsec_nanos()),
                },
            };
            timerfd_settime(self.timer.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
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
    use std::time::Instant;

    pub(in super::super) struct Pacer;

    impl Pacer {
        pub(in super::super) fn new() -> io::Result<Pacer> {
            Ok(Pacer)
        }

        /// Returns at `due`, to the runtime timer's millisecond.
        pub(in super::super) async fn until(&mut self, due: Instant) -> io::Result<()> {
            tokio::time::sleep_until(due.into()).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn waits_until_the_due_instant_and_not_for_past_ones() {
        let mut pacer = Pacer::new().unwrap();
        for wait_us in [300u64, 50, 1_000] {
            let due = Instant::now() + Duration::from_micros(wait_us);
            pacer.until(due).await.unwrap();
            assert!(Instant::now() >= due, "returned before {wait_us} µs passed");
        }
        let past = Instant::now();
        pacer.until(past).await.unwrap();
        pacer.until(past - Duration::from_millis(1)).await.unwrap();
    }
}
