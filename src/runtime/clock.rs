//! [`Clock`] on Tokio's timer and the system's wall clock.

use std::time::{Duration, UNIX_EPOCH};

use fjord_replication::{BoxFuture, Clock, Instant};

/// Real time: monotonic nanoseconds since construction, the system wall clock, Tokio sleeps.
///
/// `sleep` must be polled inside a Tokio runtime (it uses Tokio's timer).
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        // u64 nanoseconds last 584 years: saturate rather than wrap.
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Instant::from_nanos(nanos)
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the production clock is where wall-clock time enters"
    )]
    fn wall_clock_ms(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970: report it as negative milliseconds, as Kafka would.
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn now_is_monotonic_and_sleep_waits() {
        let clock = TokioClock::new();
        let a = clock.now();
        clock.sleep(Duration::from_millis(20)).await;
        let b = clock.now();
        assert!(b.saturating_duration_since(a) >= Duration::from_millis(20));
        // 2020-01-01 in ms: any sane machine clock is past it.
        assert!(clock.wall_clock_ms() > 1_577_836_800_000);
    }
}
