//! [`Spawner`] onto a Tokio runtime.

use fjord_replication::{BoxFuture, Spawner};
use tracing::Instrument;

/// Spawns onto the Tokio runtime it was created in, from any thread.
#[derive(Clone, Debug)]
pub struct TokioSpawner {
    handle: tokio::runtime::Handle,
}

impl TokioSpawner {
    /// The spawner of the runtime this is called from. Panics outside a Tokio runtime.
    pub fn current() -> Self {
        TokioSpawner {
            handle: tokio::runtime::Handle::current(),
        }
    }

    pub fn new(handle: tokio::runtime::Handle) -> Self {
        TokioSpawner { handle }
    }
}

impl Spawner for TokioSpawner {
    fn spawn(&self, name: &'static str, task: BoxFuture<'static, ()>) {
        self.handle
            .spawn(task.instrument(tracing::debug_span!("task", name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_task_runs() {
        let (tx, rx) = futures::channel::oneshot::channel();
        TokioSpawner::current().spawn(
            "test",
            Box::pin(async move {
                let _ = tx.send(7);
            }),
        );
        assert_eq!(rx.await, Ok(7));
    }
}
