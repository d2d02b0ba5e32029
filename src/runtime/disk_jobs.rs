//! [`DiskJobs`] on threads: a round's fsyncs run concurrently, off the executor.

use fjord_replication::{DiskJob, DiskJobs};
use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs a round's disk jobs concurrently on threads of their own (the first on the calling
/// thread), and tells a multi-threaded Tokio runtime that the calling worker is about to
/// block (`block_in_place`), so its queued tasks — the network writers that carry the
/// appends the round just sent — move to another worker instead of waiting for the fsyncs.
///
/// Concurrent fdatasyncs of several files are served together by the device (one cache
/// flush covers them), so a node hosting several groups pays about one fsync per round
/// instead of one per group.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadDiskJobs;

impl DiskJobs for ThreadDiskJobs {
    fn run(&self, jobs: Vec<DiskJob<'_>>) {
        if jobs.is_empty() {
            return;
        }
        let run_all = move || {
            let mut jobs = jobs.into_iter();
            let first = jobs.next();
            std::thread::scope(|scope| {
                for job in jobs {
                    scope.spawn(job);
                }
                if let Some(job) = first {
                    job();
                }
            });
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run_all)
            }
            _ => run_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn run_counting(n: usize) -> usize {
        let count = AtomicUsize::new(0);
        let jobs: Vec<DiskJob<'_>> = (0..n)
            .map(|_| -> DiskJob<'_> {
                Box::new(|| {
                    count.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        ThreadDiskJobs.run(jobs);
        count.load(Ordering::Relaxed)
    }

    #[test]
    fn every_job_runs_outside_a_runtime() {
        assert_eq!(run_counting(0), 0);
        assert_eq!(run_counting(1), 1);
        assert_eq!(run_counting(5), 5);
    }

    #[tokio::test]
    async fn every_job_runs_on_a_current_thread_runtime() {
        assert_eq!(run_counting(3), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_runs_on_a_multi_thread_runtime() {
        assert_eq!(run_counting(3), 3);
    }
}
