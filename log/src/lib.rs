//! fjord-log: one partition's log on disk.
//!
//! The log stores Kafka RecordBatch v2 bytes exactly as producers sent them (only the base
//! offset and partition leader epoch, which sit outside the CRC, are rewritten), in segment
//! files behind the [`Disk`] trait whose fault model is documented in [`disk`].

pub mod batch;
pub mod disk;
pub mod epoch;
pub mod log;
mod meta;
pub mod segment;
pub mod testing;

pub use batch::{
    build_batch, decode_records, leader_change_batch, BatchError, BatchHeader, BatchIter,
    BuildOptions, Compression, DecodedRecord, RecordSpec,
};
pub use disk::{Disk, DiskError, DiskFile, FileDisk};
pub use epoch::{EpochEntry, EpochError};
pub use log::{
    AppendInfo, CleanupPolicy, CompactionStats, Log, LogConfig, LogError, OpenOptions, ReadResult,
    RecoveryReport, RetentionStats,
};
