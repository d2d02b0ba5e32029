//! Test doubles for driving node loops deterministically (public, not `cfg(test)`: the
//! replication and broker tests both use them, as `fjord_log::testing` serves `MemDisk`).
//!
//! With a [`FrozenClock`] and a [`ManualNetwork`], a loop such as
//! [`run_node`](crate::node::run_node) only runs when the test hands it a message or a
//! command, so a single-threaded executor polled until it stalls (e.g.
//! `futures::executor::LocalPool::run_until_stalled`) shows exactly what one input does.
//! Neither reads a real clock or starts a thread.

use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;

use crate::io::{BoxFuture, Clock, Envelope, Instant, Network, NodeId};

/// A [`Clock`] whose time never passes: `now` is always [`Instant::ZERO`], the wall clock
/// reads 0 and `sleep` never completes, so timers (ticks, timeouts) never fire.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrozenClock;

impl Clock for FrozenClock {
    fn now(&self) -> Instant {
        Instant::ZERO
    }

    fn wall_clock_ms(&self) -> i64 {
        0
    }

    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

/// A [`Network`] whose inbox the test fills through the sender of `inbox`; what the loop
/// sends is dropped. `recv` stays pending while the inbox is empty, and forever once its
/// sender is gone.
#[derive(Debug)]
pub struct ManualNetwork {
    local_id: NodeId,
    inbox: Mutex<mpsc::UnboundedReceiver<Envelope>>,
}

impl ManualNetwork {
    /// The endpoint of node `local_id`, receiving what is sent into `inbox`.
    pub fn new(local_id: NodeId, inbox: mpsc::UnboundedReceiver<Envelope>) -> Self {
        ManualNetwork {
            local_id,
            inbox: Mutex::new(inbox),
        }
    }
}

impl Network for ManualNetwork {
    fn local_id(&self) -> NodeId {
        self.local_id
    }

    fn send(&self, _: NodeId, _: Bytes) {}

    fn recv(&self) -> BoxFuture<'_, Envelope> {
        Box::pin(std::future::poll_fn(move |cx| {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            match inbox.poll_next_unpin(cx) {
                Poll::Ready(Some(env)) => Poll::Ready(env),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        }))
    }
}
