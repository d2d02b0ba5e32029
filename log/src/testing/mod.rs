//! Test support shared by fjord's crates (public, not `cfg(test)`: the simulator and the
//! replication tests use it): an in-memory [`Disk`](crate::Disk) with the full fault model and
//! a conformance suite every `Disk` implementation must pass.

pub mod conformance;
pub mod mem_disk;

pub use conformance::{run_all, run_crash_suite, CrashDisk};
pub use mem_disk::{MemDisk, MemDiskStats};

impl CrashDisk for MemDisk {
    fn crash(&self) {
        MemDisk::crash(self);
    }

    fn fail_all_syncs(&self, on: bool) -> bool {
        if on {
            self.fail_syncs(None, 1.0);
        } else {
            self.clear_sync_faults();
        }
        true
    }
}
