//! Simulated time: reading madsim's virtual clock and sleeping on it exactly.
//!
//! madsim's own `sleep` rounds every sleep up to at least 1 ms (as Tokio does); the simulator
//! needs exact sub-millisecond timers for network latencies and drifting clocks, so it resets
//! the deadline of madsim's `Sleep` to the exact instant.
//!
//! madsim's `Sleep` also registers a new timer (a boxed callback holding a waker clone) on
//! *every* poll while it is pending, and madsim never cancels a timer: a sleep polled again
//! and again by a busy task (a `select!` loop's tick, a `timeout` around a request) filled
//! the timer heap with duplicates that all fire at its deadline (waking the task once, so
//! they cost only time). [`sleep`] registers once per waker ([`Sleep`]): same schedule,
//! same trace.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use madsim::time::TimeHandle;

/// Simulated time since the world started.
pub fn now() -> Duration {
    TimeHandle::current().elapsed()
}

/// A handle on the simulated clock, cheaper than [`now`] on hot paths (no thread-local
/// lookup and handle clone per reading).
#[derive(Clone)]
pub struct Now(TimeHandle);

impl Now {
    /// The current runtime's clock.
    pub fn current() -> Self {
        Now(TimeHandle::current())
    }

    /// Simulated time since the world started.
    pub fn get(&self) -> Duration {
        self.0.elapsed()
    }
}

impl std::fmt::Debug for Now {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Now({:?})", self.get())
    }
}

/// Completes once `duration` of simulated time has passed (exactly; a zero duration yields
/// to other tasks once, so that a loop of zero sleeps cannot starve the executor).
pub async fn sleep(duration: Duration) {
    if duration.is_zero() {
        YieldNow { yielded: false }.await;
        return;
    }
    let handle = TimeHandle::current();
    let deadline = handle.now_instant() + duration;
    let mut inner = handle.sleep_until(deadline);
    Pin::new(&mut inner).reset(deadline);
    Sleep {
        inner,
        registered: None,
    }
    .await
}

/// madsim's `Sleep`, registering its timer once per waker (see the module docs).
struct Sleep {
    inner: madsim::time::Sleep,
    /// The waker the registered timer will wake.
    registered: Option<Waker>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.is_elapsed() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            // The timer registered on an earlier poll wakes this same task.
            return Poll::Pending;
        }
        self.registered = Some(cx.waker().clone());
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// Completes at simulated time `at` (since the world started), or at once if it has passed.
pub async fn sleep_until(at: Duration) {
    let now = now();
    if at > now {
        sleep(at - now).await;
    }
}

/// Lets every other ready task run once.
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs `future` for at most `limit` of simulated time; `None` if it did not finish.
pub async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    use futures::future::{select, Either};
    let future = pin!(future);
    let deadline = pin!(sleep(limit));
    match select(future, deadline).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(((), _)) => None,
    }
}
