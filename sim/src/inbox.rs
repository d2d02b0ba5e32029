//! A node's network as one of its parts sees it: sends go straight to the node's network,
//! receives come from the part's own inbox, which the node's demultiplexer fills (the raft
//! workload's server loop and the kafka workload's broker both sit behind one).

use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use fjord_replication::{BoxFuture, Envelope, Network, NodeId};
use futures::channel::mpsc;
use futures::StreamExt;

pub struct InboxNetwork {
    inner: Arc<dyn Network>,
    rx: Mutex<mpsc::UnboundedReceiver<Envelope>>,
}

impl InboxNetwork {
    pub fn new(inner: Arc<dyn Network>, rx: mpsc::UnboundedReceiver<Envelope>) -> Self {
        InboxNetwork {
            inner,
            rx: Mutex::new(rx),
        }
    }
}

impl Network for InboxNetwork {
    fn local_id(&self) -> NodeId {
        self.inner.local_id()
    }

    fn send(&self, to: NodeId, payload: Bytes) {
        self.inner.send(to, payload);
    }

    fn recv(&self) -> BoxFuture<'_, Envelope> {
        Box::pin(std::future::poll_fn(move |cx| {
            match self.rx.lock().expect("inbox poisoned").poll_next_unpin(cx) {
                Poll::Ready(Some(env)) => Poll::Ready(env),
                // The demultiplexer is gone only when the node is stopping: nothing more
                // arrives.
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        }))
    }
}
