//! A wake-up signal for one background task, runtime-agnostic.
//!
//! Any number of `notify` calls before the task looks collapse into one wake-up; a
//! notification is never lost between the task's check and its sleep.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures::task::AtomicWaker;

#[derive(Default)]
pub(crate) struct Notify {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once `notify` was called since the last completion.
    pub(crate) fn notified(&self) -> impl Future<Output = ()> + '_ {
        futures::future::poll_fn(move |cx| {
            if self.pending.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.pending.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn notifications_collapse_and_are_not_lost() {
        let notify = Notify::default();
        assert!(notify.notified().now_or_never().is_none());
        notify.notify();
        notify.notify();
        assert!(notify.notified().now_or_never().is_some());
        assert!(notify.notified().now_or_never().is_none());
    }
}
