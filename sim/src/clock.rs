//! `SimClock`: a node's view of time, on madsim's virtual time, with offset and drift.
//!
//! Each node's monotonic clock starts at its own random origin (so that code comparing
//! [`Instant`]s of two nodes gets nonsense, as in production) and runs at `1 + drift` times
//! the simulated rate, with drift within `±drift_max_ppm` (see [`crate::faults`]). Changing
//! the drift re-anchors the clock at the current reading, so `now` never goes backwards. The
//! wall clock (`wall_clock_ms`) follows the same oscillator from a per-node epoch and may be
//! made to jump either way ([`SimClock::jump_wall`]): safety must never depend on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_replication::{BoxFuture, Clock, Instant};

use crate::time;

const PPM: i128 = 1_000_000;

#[derive(Debug)]
struct State {
    /// Simulated time and local reading at the last re-anchoring.
    anchor_sim: Duration,
    anchor_local_nanos: u64,
    drift_ppm: i32,
    /// Largest local reading handed out: `now` never returns less.
    last_nanos: u64,
    /// Wall clock (ms since the Unix epoch) at local reading zero.
    wall_epoch_ms: i64,
}

impl State {
    fn local_nanos(&mut self, sim: Duration) -> u64 {
        let elapsed = sim.saturating_sub(self.anchor_sim).as_nanos() as i128;
        let scaled = elapsed * (PPM + i128::from(self.drift_ppm)) / PPM;
        let local = self.anchor_local_nanos.saturating_add(scaled.max(0) as u64);
        self.last_nanos = self.last_nanos.max(local);
        self.last_nanos
    }
}

/// One node's clock. Cloning gives another handle to the same clock.
#[derive(Clone, Debug)]
pub struct SimClock {
    state: Arc<Mutex<State>>,
    time: time::Now,
}

impl SimClock {
    /// A clock whose monotonic reading is `origin` now and whose wall clock reads
    /// `wall_now_ms` now, running without drift.
    pub fn new(origin: Instant, wall_now_ms: i64) -> Self {
        let origin_nanos = origin.as_nanos();
        let now = time::Now::current();
        SimClock {
            state: Arc::new(Mutex::new(State {
                anchor_sim: now.get(),
                anchor_local_nanos: origin_nanos,
                drift_ppm: 0,
                last_nanos: origin_nanos,
                wall_epoch_ms: wall_now_ms - (origin_nanos / 1_000_000) as i64,
            })),
            time: now,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("clock state poisoned")
    }

    /// From now on, runs `ppm` parts per million fast (positive) or slow (negative).
    pub fn set_drift_ppm(&self, ppm: i32) {
        assert!(
            ppm.unsigned_abs() < 1_000_000,
            "drift {ppm}ppm would stop or reverse time"
        );
        let sim = self.time.get();
        let mut s = self.lock();
        let local = s.local_nanos(sim);
        s.anchor_sim = sim;
        s.anchor_local_nanos = local;
        s.drift_ppm = ppm;
    }

    pub fn drift_ppm(&self) -> i32 {
        self.lock().drift_ppm
    }

    /// Moves the wall clock by `delta_ms` (the monotonic clock is unaffected).
    pub fn jump_wall(&self, delta_ms: i64) {
        self.lock().wall_epoch_ms += delta_ms;
    }

    fn now_nanos(&self) -> u64 {
        let sim = self.time.get();
        self.lock().local_nanos(sim)
    }

    /// Simulated time it takes this clock to advance by `local` at the current drift
    /// (rounded up, so that the clock has advanced at least that much after it).
    fn sim_duration(&self, local: u64) -> Duration {
        let ppm = PPM + i128::from(self.drift_ppm());
        let sim = (i128::from(local) * PPM + ppm - 1) / ppm;
        Duration::from_nanos(sim as u64)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now_nanos())
    }

    fn wall_clock_ms(&self) -> i64 {
        let sim = self.time.get();
        let mut s = self.lock();
        let local_ms = (s.local_nanos(sim) / 1_000_000) as i64;
        s.wall_epoch_ms + local_ms
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let clock = self.clone();
        Box::pin(async move {
            if duration.is_zero() {
                time::sleep(Duration::ZERO).await;
                return;
            }
            let target = clock
                .now_nanos()
                .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
            loop {
                let now = clock.now_nanos();
                if now >= target {
                    return;
                }
                // The drift may change while we sleep: re-check and sleep the rest.
                time::sleep(clock.sim_duration(target - now)).await;
            }
        })
    }
}
