//! Unit tests of [`Log`] on [`MemDisk`] (and one on [`FileDisk`]).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::batch::{build_batch, leader_change_batch, BuildOptions, RecordSpec};
use crate::disk::FileDisk;
use crate::testing::MemDisk;

fn dir() -> PathBuf {
    PathBuf::from("topic-0")
}

fn open_with(disk: &MemDisk, config: LogConfig) -> (Log, RecoveryReport) {
    Log::open(Arc::new(disk.clone()), dir(), config).expect("open")
}

const VERIFY_ALL: OpenOptions = OpenOptions {
    verify_all: true,
    existing: true,
};

/// Opens with full verification (as after a checksum failure on read).
fn open_verify_all(disk: &MemDisk) -> (Log, RecoveryReport) {
    Log::open_with(
        Arc::new(disk.clone()),
        dir(),
        LogConfig::for_tests(),
        VERIFY_ALL,
    )
    .expect("open")
}

fn open(disk: &MemDisk) -> (Log, RecoveryReport) {
    open_with(disk, LogConfig::for_tests())
}

/// Makes batches big enough (~250 bytes) that the 4 KiB test segments roll often.
const PAD: &str = "................................................";

fn records(n: usize, ts: i64, tag: &str) -> Vec<RecordSpec> {
    (0..n)
        .map(|i| RecordSpec {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{tag}-{i}-{PAD}"))),
            headers: Vec::new(),
            timestamp_ms: ts + i as i64,
        })
        .collect()
}

fn batch(n: usize, ts: i64, tag: &str) -> BytesMut {
    BytesMut::from(&build_batch(&records(n, ts, tag), &BuildOptions::default()).expect("build")[..])
}

fn keyed(pairs: &[(&str, Option<&str>)], ts: i64) -> BytesMut {
    let specs: Vec<RecordSpec> = pairs
        .iter()
        .map(|(k, v)| RecordSpec {
            key: Some(Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
            timestamp_ms: ts,
        })
        .collect();
    BytesMut::from(&build_batch(&specs, &BuildOptions::default()).expect("build")[..])
}

/// Appends `count` batches of 3 records at epoch `epoch`; returns their stored bytes.
fn fill(log: &mut Log, count: usize, epoch: i32) -> Vec<Bytes> {
    (0..count)
        .map(|i| {
            let mut b = batch(3, 1_000 + i as i64, "v");
            log.append(&mut b, epoch).expect("append");
            b.freeze()
        })
        .collect()
}

/// Every batch from `from` on, via repeated reads.
fn read_all(log: &Log, from: u64) -> Vec<(BatchHeader, Bytes)> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, u64::MAX).expect("read");
        if r.bytes.is_empty() {
            break;
        }
        for item in BatchIter::new(&r.bytes) {
            let (h, b) = item.expect("valid batch");
            out.push((h, Bytes::copy_from_slice(b)));
        }
        next = r.next_offset;
    }
    out
}

#[test]
fn append_assigns_offsets_and_reads_return_the_stored_bytes() {
    let disk = MemDisk::new(1);
    let (mut log, report) = open(&disk);
    assert!(report.meta_missing);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    let mut b = batch(3, 10, "a");
    let info = log.append(&mut b, 5).expect("append");
    assert_eq!(
        (info.base_offset, info.last_offset, info.records_count),
        (0, 2, 3)
    );
    assert_eq!(info.max_timestamp, 12);
    let mut c = batch(2, 20, "b");
    let info = log.append(&mut c, 5).expect("append");
    assert_eq!((info.base_offset, info.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(log.durable_end_offset(), 0);
    let r = log.read(0, 1 << 20, u64::MAX).expect("read");
    assert_eq!(r.bytes.len(), b.len() + c.len());
    assert_eq!(&r.bytes[..b.len()], &b[..]);
    assert_eq!(&r.bytes[b.len()..], &c[..]);
    assert_eq!((r.first_offset, r.next_offset), (0, 5));
    let h = BatchHeader::validate(&c).expect("valid");
    assert_eq!((h.base_offset, h.partition_leader_epoch), (3, 5));
    assert_eq!(log.sync().expect("sync"), 5);
    assert_eq!(log.durable_end_offset(), 5);
}

#[test]
fn read_follows_kafka_fetch_rules() {
    let disk = MemDisk::new(2);
    let (mut log, _) = open(&disk);
    let stored = fill(&mut log, 4, 1);
    // From inside a batch: the whole containing batch.
    let r = log.read(4, 1 << 20, u64::MAX).expect("read");
    assert_eq!(r.first_offset, 3);
    assert_eq!(&r.bytes[..stored[1].len()], &stored[1][..]);
    // max_bytes smaller than a batch still returns the first batch, and only it.
    let r = log.read(0, 1, u64::MAX).expect("read");
    assert_eq!(r.bytes, stored[0]);
    assert_eq!(r.next_offset, 3);
    // Exactly two batches fit.
    let r = log
        .read(0, stored[0].len() + stored[1].len(), u64::MAX)
        .expect("read");
    assert_eq!(r.next_offset, 6);
    // The upper bound (high watermark) excludes batches starting at or after it.
    let r = log.read(0, 1 << 20, 6).expect("read");
    assert_eq!(r.next_offset, 6);
    let r = log.read(6, 1 << 20, 6).expect("read");
    assert!(r.bytes.is_empty());
    assert_eq!(r.next_offset, 6);
    // At the end: empty; beyond: an error.
    assert!(log.read(12, 100, u64::MAX).expect("read").bytes.is_empty());
    assert!(matches!(
        log.read(13, 100, u64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn segments_roll_by_size_and_every_offset_is_found() {
    let disk = MemDisk::new(3);
    let (mut log, _) = open(&disk);
    let stored = fill(&mut log, 60, 1);
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    for offset in 0..log.log_end_offset() {
        let r = log.read(offset, 1, u64::MAX).expect("read");
        let i = (offset / 3) as usize;
        assert_eq!(r.bytes, stored[i], "offset {offset}");
    }
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 60);
    for (i, (h, b)) in all.iter().enumerate() {
        assert_eq!(h.base_offset, 3 * i as u64);
        assert_eq!(b, &stored[i]);
    }
    // Rolling made the closed segments durable.
    assert!(log.durable_end_offset() >= log.active().base_offset);
}

#[test]
fn reopen_restores_everything_and_uses_the_index_files() {
    let disk = MemDisk::new(4);
    let (mut log, _) = open(&disk);
    let stored = fill(&mut log, 40, 2);
    let mut lc = BytesMut::from(&leader_change_batch(3, 1, 5_000)[..]);
    log.append(&mut lc, 3).expect("append");
    log.sync().expect("sync");
    let end = log.log_end_offset();
    drop(log);
    let (log, report) = open(&disk);
    assert_eq!(report.truncated_at, None);
    assert_eq!(report.corruption, None);
    assert_eq!(report.indexes_rebuilt, 0);
    assert!(report.segments > 2);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.durable_end_offset(), end);
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 41);
    for (i, b) in stored.iter().enumerate() {
        assert_eq!(&all[i].1, b);
    }
    assert!(all[40].0.is_control());
    assert_eq!(log.epoch_at(0), Some(2));
    assert_eq!(log.epoch_at(end - 1), Some(3));
    assert_eq!(log.epoch_end_offset(2), Some((2, 120)));
}

#[test]
fn lost_or_corrupt_index_files_are_rebuilt() {
    let disk = MemDisk::new(5);
    let (mut log, _) = open(&disk);
    let stored = fill(&mut log, 40, 1);
    log.checkpoint().expect("checkpoint");
    drop(log);
    let names = disk.file_names();
    let index = names
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "index"))
        .expect("an index file");
    disk.remove(index).expect("remove");
    let time = names
        .iter()
        .rev()
        .find(|p| p.extension().is_some_and(|e| e == "timeindex"))
        .expect("a time index");
    // Index files are never synced (they are rebuilt when lost): garble the visible content.
    disk.open(time)
        .expect("open")
        .write_at(0, b"garbage")
        .expect("write");
    let (log, report) = open(&disk);
    assert_eq!(report.indexes_rebuilt, 2);
    assert_eq!(report.corruption, None);
    let all = read_all(&log, 0);
    assert_eq!(all.len(), stored.len());
    drop(log);
    let (_, report) = open(&disk);
    assert_eq!(report.indexes_rebuilt, 0, "rewritten on the previous open");
}

#[test]
fn a_crash_keeps_synced_batches_and_cuts_a_torn_tail() {
    for seed in 0..40 {
        let disk = MemDisk::new(seed);
        let (mut log, _) = open(&disk);
        let durable = fill(&mut log, 5, 1);
        log.sync().expect("sync");
        fill(&mut log, 3, 1);
        disk.crash();
        let (log, report) = open(&disk);
        assert!(log.log_end_offset() >= 15, "seed {seed}");
        let all = read_all(&log, 0);
        for (i, b) in durable.iter().enumerate() {
            assert_eq!(&all[i].1, b, "seed {seed}");
        }
        if let Some(at) = report.truncated_at {
            assert!(at >= 15, "seed {seed}: cut below the durable end");
            assert_eq!(at, log.log_end_offset());
        }
        assert_eq!(log.durable_end_offset(), log.log_end_offset());
    }
}

#[test]
fn corruption_is_never_served_and_is_reported() {
    let disk = MemDisk::new(6);
    let (mut log, _) = open(&disk);
    fill(&mut log, 10, 1);
    log.sync().expect("sync");
    let seg = dir().join(file_name(log.active().base_offset, LOG_EXT));
    let active_base = log.active().base_offset;
    let first_len = log
        .read(active_base, 1, u64::MAX)
        .expect("read")
        .bytes
        .len() as u64;
    // Flip a bit inside the first batch of the active segment (inside the CRC range).
    disk.corrupt(&seg, 30, first_len - 30).expect("corrupted");
    assert!(matches!(
        log.read(active_base, 1 << 20, u64::MAX),
        Err(LogError::Corrupt { offset }) if offset == active_base
    ));
    drop(log);
    let (log, report) = open(&disk);
    assert_eq!(report.corruption, Some(active_base));
    assert_eq!(report.truncated_at, Some(active_base));
    assert_eq!(log.log_end_offset(), active_base);
    // A corrupt batch in a closed, trusted segment is caught by the read.
    let disk = MemDisk::new(7);
    let (mut log, _) = open(&disk);
    fill(&mut log, 30, 1);
    log.sync().expect("sync");
    let first = dir().join(file_name(0, LOG_EXT));
    disk.corrupt(&first, 30, 40).expect("corrupted");
    drop(log);
    let (log, report) = open(&disk);
    assert_eq!(
        report.corruption, None,
        "trusted segments are not re-read on open"
    );
    assert!(matches!(
        log.read(0, 1 << 20, u64::MAX),
        Err(LogError::Corrupt { offset: 0 })
    ));
    drop(log);
    // Opening with full verification finds it, cuts the log there and reports it.
    let (log, report) = open_verify_all(&disk);
    assert_eq!(report.corruption, Some(0));
    assert_eq!(log.log_end_offset(), 0);
    assert!(log
        .read(0, 1 << 20, u64::MAX)
        .expect("read")
        .bytes
        .is_empty());
}

#[test]
fn a_bad_last_batch_found_by_full_verification_is_corruption_not_a_torn_tail() {
    let disk = MemDisk::new(9);
    let (mut log, _) = open_with(
        &disk,
        LogConfig {
            segment_size_max_bytes: 1 << 20,
            ..LogConfig::for_tests()
        },
    );
    let stored = fill(&mut log, 3, 1);
    log.checkpoint().expect("checkpoint");
    // The recovery point below the last batch, as when the batches were synced after the
    // last metadata write.
    let m = LogMeta {
        log_start: 0,
        recovery_point: 0,
        epochs: log.epochs.clone(),
        segments: None,
    };
    meta::write(&disk, &dir(), &m).expect("meta");
    drop(log);
    let seg = dir().join(file_name(0, LOG_EXT));
    let pos = (stored[0].len() + stored[1].len()) as u64;
    disk.corrupt(&seg, pos + 30, 10).expect("corrupted");
    // A plain open cannot tell bit rot in the last batch from a torn write...
    let last = BatchHeader::parse(&stored[2]).expect("header").base_offset;
    let (log, report) = open(&disk);
    drop(log);
    assert_eq!(report.corruption, None);
    assert_eq!(report.truncated_at, Some(last));
    // ...but a full verification (asked for after a checksum failure on read) must report
    // the loss: the replica may have acknowledged that batch.
    let disk = MemDisk::new(9);
    let (mut log, _) = open_with(
        &disk,
        LogConfig {
            segment_size_max_bytes: 1 << 20,
            ..LogConfig::for_tests()
        },
    );
    let stored = fill(&mut log, 3, 1);
    log.checkpoint().expect("checkpoint");
    meta::write(&disk, &dir(), &m).expect("meta");
    drop(log);
    let pos = (stored[0].len() + stored[1].len()) as u64;
    disk.corrupt(&seg, pos + 30, 10).expect("corrupted");
    let (log, report) = open_verify_all(&disk);
    assert_eq!(report.corruption, Some(last));
    assert_eq!(log.log_end_offset(), last);
}

#[test]
fn corruption_followed_by_valid_batches_is_reported_not_silently_cut() {
    let disk = MemDisk::new(8);
    let (mut log, _) = open_with(
        &disk,
        LogConfig {
            segment_size_max_bytes: 1 << 20,
            ..LogConfig::for_tests()
        },
    );
    let stored = fill(&mut log, 6, 1);
    log.checkpoint().expect("checkpoint");
    // Make the recovery point stale (as after a crash) by rewriting the metadata by hand.
    let m = LogMeta {
        log_start: 0,
        recovery_point: 0,
        epochs: log.epochs.clone(),
        segments: None,
    };
    meta::write(&disk, &dir(), &m).expect("meta");
    drop(log);
    let seg = dir().join(file_name(0, LOG_EXT));
    let pos = (stored[0].len() + stored[1].len()) as u64;
    disk.corrupt(&seg, pos + 30, 10).expect("corrupted");
    let (log, report) = open(&disk);
    assert_eq!(report.corruption, Some(6));
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn truncate_from_cuts_at_batch_boundaries_durably() {
    let disk = MemDisk::new(9);
    let (mut log, _) = open(&disk);
    fill(&mut log, 10, 1);
    fill(&mut log, 10, 2);
    fill(&mut log, 10, 4);
    log.sync().expect("sync");
    assert!(matches!(
        log.truncate_from(31),
        Err(LogError::NotBatchBoundary { offset: 31 })
    ));
    assert!(matches!(
        log.truncate_from(91),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    log.truncate_from(90).expect("no-op at the end");
    log.truncate_from(45).expect("truncate");
    assert_eq!(log.log_end_offset(), 45);
    assert_eq!(log.last_epoch(), Some(2));
    assert_eq!(log.epoch_end_offset(4), Some((2, 45)));
    assert_eq!(log.epoch_at(44), Some(2));
    assert_eq!(log.epoch_at(45), None);
    // New appends go on from there, with a new epoch.
    fill(&mut log, 2, 5);
    assert_eq!(log.epoch_at(45), Some(5));
    log.sync().expect("sync");
    disk.crash();
    let (log, _) = open(&disk);
    assert_eq!(log.log_end_offset(), 51);
    assert_eq!(log.epoch_at(44), Some(2));
    assert_eq!(log.epoch_at(45), Some(5));
    assert_eq!(log.epoch_end_offset(4), Some((2, 45)));
    assert_eq!(read_all(&log, 0).len(), 17);
}

#[test]
fn truncation_survives_a_crash_without_a_later_sync() {
    for seed in 0..20 {
        let disk = MemDisk::new(seed);
        let (mut log, _) = open(&disk);
        fill(&mut log, 30, 1);
        log.sync().expect("sync");
        log.truncate_from(12).expect("truncate");
        disk.crash();
        let (log, _) = open(&disk);
        assert_eq!(log.log_end_offset(), 12, "seed {seed}");
    }
}

#[test]
fn delete_prefix_moves_the_start_and_keeps_the_epoch_before_it() {
    let disk = MemDisk::new(10);
    let (mut log, _) = open(&disk);
    fill(&mut log, 20, 1);
    fill(&mut log, 20, 3);
    let before = log.segment_count();
    log.delete_prefix(61).expect("delete");
    assert_eq!(log.log_start_offset(), 61);
    assert!(log.segment_count() < before);
    assert!(matches!(
        log.read(59, 10, u64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let r = log.read(61, 1, u64::MAX).expect("read");
    assert_eq!(r.first_offset, 60, "the batch containing the start");
    assert_eq!(log.epoch_at(60), Some(3));
    assert_eq!(log.epoch_at(59), None, "below log_start - 1");
    log.delete_prefix(60).expect("never moves back");
    assert_eq!(log.log_start_offset(), 61);
    assert!(log.delete_prefix(1000).is_err());
    disk.crash();
    let (log, _) = open(&disk);
    assert_eq!(log.log_start_offset(), 61);
    assert_eq!(log.epoch_at(60), Some(3));
    assert_eq!(
        log.epoch_end_offset(1),
        None,
        "epoch 1 ended before log_start - 1"
    );
    assert_eq!(log.epoch_end_offset(3), Some((3, log.log_end_offset())));
}

#[test]
fn reset_empties_the_log_and_remembers_the_epoch_before_it() {
    let disk = MemDisk::new(11);
    let (mut log, _) = open(&disk);
    fill(&mut log, 20, 1);
    log.reset(500, 7).expect("reset");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    assert_eq!(log.epoch_at(499), Some(7));
    assert_eq!(log.last_epoch(), Some(7));
    assert_eq!(log.segment_count(), 1);
    disk.crash();
    let (mut log, report) = open(&disk);
    assert_eq!(report.corruption, None);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    assert_eq!(log.epoch_at(499), Some(7));
    let mut b = batch(2, 1, "x");
    assert_eq!(log.append(&mut b, 7).expect("append").base_offset, 500);
    assert_eq!(log.epoch_at(501), Some(7));
    assert!(matches!(
        log.append(&mut batch(1, 1, "y"), 6),
        Err(LogError::Epoch(_))
    ));
}

#[test]
fn replicated_appends_accept_gaps_and_reject_regressions() {
    let leader_disk = MemDisk::new(12);
    let (mut leader, _) = open(&leader_disk);
    let stored = fill(&mut leader, 6, 2);
    let disk = MemDisk::new(13);
    let (mut follower, _) = open(&disk);
    let all: Vec<u8> = stored.iter().flat_map(|b| b.iter().copied()).collect();
    let info = follower
        .append_replicated(&all[..stored[0].len() * 2])
        .expect("append");
    assert_eq!(
        (info.base_offset, info.last_offset, info.records_count),
        (0, 5, 6)
    );
    // A gap (batches 2 and 3 compacted away upstream) is fine.
    let tail: Vec<u8> = stored[4..].iter().flat_map(|b| b.iter().copied()).collect();
    follower.append_replicated(&tail).expect("gap");
    assert_eq!(follower.log_end_offset(), 18);
    let r = follower.read(7, 100, u64::MAX).expect("read in the gap");
    assert_eq!(r.first_offset, 12);
    // Regressions, bad CRCs and empty input are refused and change nothing.
    assert!(matches!(
        follower.append_replicated(&stored[5]),
        Err(LogError::OffsetRegression { .. })
    ));
    let mut old_epoch = BytesMut::from(&stored[5][..]);
    set_base_offset(&mut old_epoch, 18).expect("set");
    set_partition_leader_epoch(&mut old_epoch, 1).expect("set");
    assert!(matches!(
        follower.append_replicated(&old_epoch),
        Err(LogError::Epoch(_))
    ));
    let mut bad = BytesMut::from(&stored[5][..]);
    set_base_offset(&mut bad, 18).expect("set");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut good_then_bad = stored[5].to_vec();
    set_base_offset(&mut good_then_bad, 18).expect("set");
    good_then_bad.extend_from_slice(&bad);
    assert!(matches!(
        follower.append_replicated(&good_then_bad),
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        follower.append_replicated(&[]),
        Err(LogError::EmptyAppend)
    ));
    assert_eq!(follower.log_end_offset(), 18);
}

#[test]
fn appends_reject_bad_batches_with_typed_errors() {
    let disk = MemDisk::new(14);
    let (mut log, _) = open(&disk);
    let mut garbage = vec![0u8; 100];
    assert!(matches!(
        log.append(&mut garbage, 1),
        Err(LogError::InvalidBatch(_))
    ));
    let mut short = vec![0u8; 10];
    assert!(matches!(
        log.append(&mut short, 1),
        Err(LogError::InvalidBatch(_))
    ));
    let mut two = batch(2, 0, "a").to_vec();
    two.extend_from_slice(&batch(2, 0, "b"));
    assert!(matches!(
        log.append(&mut two, 1),
        Err(LogError::InvalidBatch(BatchError::TrailingBytes { .. }))
    ));
    let mut huge = batch(1, 0, "a").to_vec();
    huge[8..12].copy_from_slice(&(64i32 << 20).to_be_bytes());
    assert!(matches!(
        log.append(&mut huge, 1),
        Err(LogError::InvalidBatch(BatchError::LengthOutOfRange { .. }))
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn a_failed_sync_fails_the_log_until_reopened() {
    let disk = MemDisk::new(15);
    let (mut log, _) = open(&disk);
    fill(&mut log, 2, 1);
    log.sync().expect("sync");
    fill(&mut log, 2, 1);
    disk.fail_syncs(None, 1.0);
    assert!(matches!(log.sync(), Err(LogError::Disk(_))));
    assert!(log.is_failed());
    disk.clear_sync_faults();
    assert!(
        matches!(log.sync(), Err(LogError::Failed(_))),
        "never retried"
    );
    assert!(matches!(
        log.append(&mut batch(1, 0, "x"), 1),
        Err(LogError::Failed(_))
    ));
    assert_eq!(log.durable_end_offset(), 6);
    drop(log);
    let (log, _) = open(&disk);
    assert!(log.log_end_offset() >= 6);
    assert!(!log.is_failed());
}

#[test]
fn no_space_fails_the_append() {
    let disk = MemDisk::new(16);
    let (mut log, _) = open(&disk);
    fill(&mut log, 2, 1);
    disk.set_space_limit(Some(300));
    assert!(matches!(
        log.append(&mut batch(3, 0, "x"), 1),
        Err(LogError::Disk(DiskError::NoSpace(_)))
    ));
    assert!(log.is_failed());
}

#[test]
fn retention_deletes_old_closed_segments_below_the_bound() {
    let disk = MemDisk::new(17);
    let config = LogConfig {
        retention_ms: Some(10_000),
        ..LogConfig::for_tests()
    };
    let (mut log, _) = open_with(&disk, config.clone());
    for i in 0..60 {
        let mut b = batch(3, i * 1_000, "v");
        log.append(&mut b, 1).expect("append");
    }
    let segments = log.segment_count();
    // Nothing may go above the bound.
    let stats = log.enforce_retention(1_000_000, 0).expect("retention");
    assert_eq!(stats.segments_deleted, 0);
    let stats = log.enforce_retention(40_000, 1000).expect("retention");
    assert!(stats.segments_deleted > 0);
    assert_eq!(stats.log_start_offset, log.log_start_offset());
    // Batch i has timestamps around i * 1000: the segment holding batch 29 is young enough.
    assert!(
        log.log_start_offset() <= 29 * 3,
        "{}",
        log.log_start_offset()
    );
    // Far in the future: everything but the active segment goes.
    let stats = log
        .enforce_retention(10_000_000, u64::MAX)
        .expect("retention");
    assert_eq!(log.segment_count(), 1);
    assert!(stats.segments_deleted > 0 && segments > stats.segments_deleted);
    // By size.
    let disk = MemDisk::new(18);
    let (mut log, _) = open_with(
        &disk,
        LogConfig {
            retention_bytes: Some(10_000),
            ..LogConfig::for_tests()
        },
    );
    fill(&mut log, 200, 1);
    log.enforce_retention(0, u64::MAX).expect("retention");
    assert!(log.size_bytes() >= 10_000);
    assert!(log.size_bytes() < 10_000 + LogConfig::for_tests().segment_size_max_bytes + 500);
    // A compact-only policy deletes nothing.
    let mut config = config;
    config.cleanup_policy = CleanupPolicy::Compact;
    log.set_config(config).expect("config");
    assert_eq!(
        log.enforce_retention(i64::MAX, u64::MAX)
            .expect("ret")
            .segments_deleted,
        0
    );
}

#[test]
fn roll_by_age() {
    let disk = MemDisk::new(19);
    let (mut log, _) = open(&disk);
    assert!(
        !log.roll_if_needed(1_000_000).expect("roll"),
        "empty segments never roll"
    );
    fill(&mut log, 1, 1);
    assert!(!log.roll_if_needed(1_000 + 59_000).expect("roll"));
    assert!(log.roll_if_needed(1_002 + 60_000).expect("roll"));
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.durable_end_offset(), 3);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let disk = MemDisk::new(20);
    let (mut log, _) = open(&disk);
    for i in 0..50 {
        let mut b = batch(4, i * 10, "v");
        log.append(&mut b, 1).expect("append");
    }
    // Batch i holds timestamps 10i..10i+3 at offsets 4i..4i+3.
    assert_eq!(log.offset_for_timestamp(0).expect("ts"), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(123).expect("ts"), Some((51, 123)));
    assert_eq!(log.offset_for_timestamp(125).expect("ts"), Some((52, 130)));
    assert_eq!(log.offset_for_timestamp(493).expect("ts"), Some((199, 493)));
    assert_eq!(log.offset_for_timestamp(494).expect("ts"), None);
    log.delete_prefix(50).expect("delete");
    assert_eq!(log.offset_for_timestamp(0).expect("ts"), Some((50, 122)));
}

#[test]
fn file_disk_smoke() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk: Arc<dyn Disk> = Arc::new(FileDisk::new(tmp.path()));
    let (mut log, _) = Log::open(Arc::clone(&disk), dir(), LogConfig::for_tests()).expect("open");
    let mut stored = Vec::new();
    for i in 0..30 {
        let mut b = batch(3, i, "f");
        log.append(&mut b, 1).expect("append");
        stored.push(b.freeze());
    }
    log.sync().expect("sync");
    drop(log);
    let (log, report) = Log::open(disk, dir(), LogConfig::for_tests()).expect("reopen");
    assert_eq!(report.corruption, None);
    assert_eq!(report.truncated_at, None);
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 30);
    for (i, b) in stored.iter().enumerate() {
        assert_eq!(&all[i].1, b);
    }
}

#[test]
fn lost_metadata_rebuilds_from_the_segments() {
    let disk = MemDisk::new(21);
    let (mut log, _) = open(&disk);
    fill(&mut log, 20, 1);
    fill(&mut log, 20, 2);
    log.checkpoint().expect("checkpoint");
    drop(log);
    disk.remove(&dir().join("log.meta")).expect("remove");
    let (log, report) = open(&disk);
    assert!(report.meta_missing);
    // Segments may have gone with it: reported, though everything found is kept.
    assert_eq!(report.corruption, Some(0));
    assert_eq!(report.batches_verified, 40);
    assert_eq!(log.log_end_offset(), 120);
    assert_eq!(log.epoch_at(59), Some(1));
    assert_eq!(log.epoch_at(60), Some(2));
}

#[test]
fn compaction_keeps_the_latest_value_of_every_key_and_the_offsets() {
    let disk = MemDisk::new(22);
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: 100,
        ..LogConfig::for_tests()
    };
    let (mut log, _) = open_with(&disk, config);
    let mut lc = BytesMut::from(&leader_change_batch(1, 0, 0)[..]);
    log.append(&mut lc, 1).expect("append");
    for round in 0..30 {
        let v1 = format!("a{round}");
        let v2 = format!("b{round}");
        let pairs = [
            ("a", Some(v1.as_str())),
            ("b", Some(v2.as_str())),
            ("gone", Some("x")),
        ];
        log.append(&mut keyed(&pairs, round), 1).expect("append");
    }
    log.append(&mut keyed(&[("gone", None)], 1_000), 1)
        .expect("tombstone");
    for _ in 0..40 {
        log.append(&mut keyed(&[("c", Some("c"))], 2_000), 1)
            .expect("append");
    }
    let end = log.log_end_offset();
    let before = read_all(&log, 0);
    let stats = log.compact(1_050, end).expect("compact");
    assert!(stats.segments_cleaned > 0, "{stats:?}");
    assert!(stats.bytes_after < stats.bytes_before);
    let after = read_all(&log, 0);
    assert!(after[0].0.is_control(), "control batches stay");
    let mut values = BTreeMap::new();
    for (h, b) in &after {
        assert!(before
            .iter()
            .any(|(o, _)| o.base_offset == h.base_offset && o.last_offset() == h.last_offset()));
        if h.is_control() {
            continue;
        }
        for r in decode_records(b).expect("decode") {
            values.insert(r.key.clone().expect("key"), (r.offset, r.value.clone()));
        }
    }
    assert_eq!(values[&Bytes::from("a")].1, Some(Bytes::from("a29")));
    assert_eq!(values[&Bytes::from("b")].1, Some(Bytes::from("b29")));
    assert_eq!(
        values[&Bytes::from("gone")].1,
        None,
        "tombstone younger than the horizon"
    );
    assert_eq!(log.log_end_offset(), end);
    // Later, the tombstone expires.
    log.compact(2_000, end).expect("compact");
    let after: Vec<_> = read_all(&log, 0);
    let gone = after.iter().filter(|(h, _)| !h.is_control()).any(|(_, b)| {
        decode_records(b)
            .expect("decode")
            .iter()
            .any(|r| r.key.as_deref() == Some(b"gone"))
    });
    assert!(!gone);
    drop(log);
    let (log, report) = open(&disk);
    assert_eq!(report.corruption, None);
    assert_eq!(log.log_end_offset(), end);
}

/// A compacted topic's log, fully durable: keys `k0..k7` overwritten in rounds, some
/// tombstones, a control batch, an idempotent producer's batches; small segments.
fn compacted_log(seed: u64) -> (MemDisk, Log) {
    let disk = MemDisk::new(seed);
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: 500,
        segment_size_max_bytes: 1024,
        ..LogConfig::for_tests()
    };
    let (mut log, _) = open_with(&disk, config);
    let mut lc = BytesMut::from(&leader_change_batch(1, 0, 0)[..]);
    log.append(&mut lc, 1).expect("append");
    for round in 0..30i64 {
        let specs: Vec<RecordSpec> = (0..3)
            .map(|i| {
                let key = (round * 3 + i) % 8;
                let tombstone = (round + i) % 5 == 0;
                RecordSpec {
                    key: Some(Bytes::from(format!("k{key}"))),
                    value: (!tombstone).then(|| Bytes::from(format!("v{round}-{i}"))),
                    headers: Vec::new(),
                    timestamp_ms: round * 100,
                }
            })
            .collect();
        let opts = BuildOptions {
            producer_id: if round % 4 == 0 { 7 } else { -1 },
            producer_epoch: if round % 4 == 0 { 0 } else { -1 },
            base_sequence: if round % 4 == 0 { round as i32 } else { -1 },
            ..BuildOptions::default()
        };
        let mut b = BytesMut::from(&build_batch(&specs, &opts).expect("build")[..]);
        log.append(&mut b, 1 + (round / 10) as i32).expect("append");
    }
    log.checkpoint().expect("checkpoint");
    (disk, log)
}

/// offset -> (key, value, timestamp) of every record, and the batch ranges.
type Snapshot = (
    BTreeMap<u64, (Option<Bytes>, Option<Bytes>, i64)>,
    Vec<(u64, u64)>,
);

fn snapshot(log: &Log) -> Snapshot {
    let mut records = BTreeMap::new();
    let mut ranges = Vec::new();
    for (h, b) in read_all(log, log.log_start_offset()) {
        ranges.push((h.base_offset, h.last_offset()));
        for r in decode_records(&b).expect("decode") {
            records.insert(r.offset, (r.key, r.value, r.timestamp_ms));
        }
    }
    (records, ranges)
}

/// The latest record per key.
fn latest(
    records: &BTreeMap<u64, (Option<Bytes>, Option<Bytes>, i64)>,
) -> BTreeMap<Bytes, (u64, Option<Bytes>, i64)> {
    let mut out = BTreeMap::new();
    for (offset, (key, value, ts)) in records {
        if let Some(k) = key {
            out.insert(k.clone(), (*offset, value.clone(), *ts));
        }
    }
    out
}

/// Checks that `after` is a legal compaction of `before` at `now_ms` with the log's
/// tombstone retention: every record present is the original one, batch ranges are the
/// original ones, every key's latest record is still there (an expired tombstone may go).
fn check_compacted(
    before: &Snapshot,
    after: &Snapshot,
    now_ms: i64,
    delete_retention_ms: i64,
    context: &str,
) {
    for (offset, record) in &after.0 {
        assert_eq!(
            before.0.get(offset),
            Some(record),
            "{context}: record {offset} changed"
        );
    }
    for range in &after.1 {
        assert!(
            before.1.contains(range),
            "{context}: batch range {range:?} is new"
        );
    }
    let (old, new) = (latest(&before.0), latest(&after.0));
    for (key, (offset, value, ts)) in &old {
        let expired_tombstone = value.is_none() && *ts < now_ms - delete_retention_ms;
        match new.get(key) {
            Some(found) => assert_eq!(
                found,
                &(*offset, value.clone(), *ts),
                "{context}: key {key:?}"
            ),
            None => assert!(expired_tombstone, "{context}: key {key:?} lost"),
        }
    }
    // Control batches and the last batch survive.
    assert_eq!(
        after.1.first(),
        before.1.first(),
        "{context}: control batch"
    );
    assert_eq!(after.1.last(), before.1.last(), "{context}: last batch");
}

#[test]
fn compaction_is_crash_safe_at_every_disk_step() {
    let now_ms = 1_000;
    let (_, mut reference) = compacted_log(1);
    let before = snapshot(&reference);
    let end = reference.log_end_offset();
    let stats = reference.compact(now_ms, end).expect("compact");
    assert!(stats.segments_cleaned >= 2, "{stats:?}");
    assert!(stats.batches_removed > 0, "{stats:?}");
    check_compacted(&before, &snapshot(&reference), now_ms, 500, "uninterrupted");
    let mut steps = 0;
    for step in 1.. {
        let (disk, mut log) = compacted_log(1);
        assert_eq!(snapshot(&log), before);
        disk.crash_at_mutation(Some(disk.stats().mutations + step));
        let finished = log.compact(now_ms, end).is_ok();
        disk.crash_at_mutation(None);
        drop(log);
        disk.crash();
        let (mut log, report) = open(&disk);
        let context = format!("crash at step {step}");
        assert_eq!(report.corruption, None, "{context}");
        assert_eq!(log.log_end_offset(), end, "{context}");
        let after = snapshot(&log);
        check_compacted(&before, &after, now_ms, 500, &context);
        // Compaction resumes after the crash and converges to the same content.
        log.set_config(reference.config().clone()).expect("config");
        log.compact(now_ms, end).expect("compact again");
        check_compacted(&before, &snapshot(&log), now_ms, 500, &context);
        assert_eq!(
            latest(&snapshot(&log).0),
            latest(&snapshot(&reference).0),
            "{context}"
        );
        steps = step;
        if finished {
            break;
        }
    }
    assert!(steps > 10, "compaction took only {steps} disk steps");
}

#[test]
fn logs_and_disks_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Log>();
    send_sync::<MemDisk>();
    send_sync::<FileDisk>();
}

/// Rot in a batch header's base offset or length (both outside the CRC) is corruption to a
/// read, never "nothing there": a Raft leader whose read of entries it holds came back
/// empty sent empty appends forever (found by the simulator's kafka workload, `scripts/sim
/// --seed 43 --workload kafka`).
#[test]
fn header_rot_outside_the_crc_is_reported_by_reads() {
    // (byte range within the batch to flip a bit in, what it damages)
    for (at, len, what) in [(0u64, 4u64, "base offset"), (8, 2, "batch length")] {
        for seed in 0..8 {
            let disk = MemDisk::new(100 + seed);
            let (mut log, _) = open(&disk);
            fill(&mut log, 3, 1);
            log.sync().expect("sync");
            let base = log.active().base_offset;
            let seg = dir().join(file_name(base, LOG_EXT));
            let batches = read_all(&log, base);
            assert!(batches.len() >= 2, "two batches in the active segment");
            // Damage the first batch of the active segment, read from the second.
            let second = batches[1].0.base_offset;
            disk.corrupt(&seg, at, len).expect("corrupted");
            let end = log.log_end_offset();
            let first = log.read(base, 1 << 20, end);
            assert!(
                matches!(first, Err(LogError::Corrupt { .. })),
                "{what} rot, seed {seed}: {first:?}"
            );
            let from_second = log.read(second, 1 << 20, end);
            if what == "batch length" {
                assert!(
                    matches!(&from_second, Err(LogError::Corrupt { .. }))
                        || from_second.as_ref().is_ok_and(|r| r.first_offset == second),
                    "{what} rot, seed {seed}: {from_second:?}"
                );
            }
        }
    }
}

#[test]
fn a_lost_segment_file_is_reported_and_nothing_after_it_is_served() {
    for lost in [0usize, 2] {
        let disk = MemDisk::new(40 + lost as u64);
        let (mut log, _) = open(&disk);
        let stored = fill(&mut log, 100, 1);
        log.sync().expect("sync");
        let bases: Vec<u64> = log.segments.keys().copied().collect();
        assert!(bases.len() > 3, "{bases:?}");
        drop(log);
        disk.remove(&dir().join(file_name(bases[lost], LOG_EXT)))
            .expect("remove");
        disk.sync_dir(&dir()).expect("sync dir");
        let (log, report) = open(&disk);
        let kept_end = if lost == 0 { 0 } else { bases[lost] };
        assert_eq!(report.corruption, Some(kept_end), "segment {lost}");
        assert_eq!(log.log_end_offset(), kept_end);
        let all = read_all(&log, log.log_start_offset());
        assert_eq!(all.len(), (kept_end / 3) as usize);
        for (i, (_, b)) in all.iter().enumerate() {
            assert_eq!(b, &stored[i]);
        }
    }
}

#[test]
fn a_crash_while_removing_segments_is_no_loss() {
    for step in 1..=12 {
        let disk = MemDisk::new(50 + step);
        let (mut log, _) = open(&disk);
        fill(&mut log, 40, 1);
        log.sync().expect("sync");
        let end = log.log_end_offset();
        disk.crash_at_mutation(Some(disk.stats().mutations + step));
        let op = match step % 3 {
            0 => log.reset(end + 10, 2),
            1 => log.truncate_from(30),
            _ => log.delete_prefix(60),
        };
        disk.crash_at_mutation(None);
        drop(log);
        disk.crash();
        let (_, report) = open(&disk);
        assert_eq!(report.corruption, None, "step {step} ({op:?})");
    }
}

/// Flips bit `bit` of the byte at `at` of `path`, durably.
fn flip_bit(disk: &MemDisk, path: &std::path::Path, at: u64, bit: u32) {
    let mut file = disk.open(path).expect("open");
    let mut byte = [0u8];
    file.read_at(at, &mut byte).expect("read");
    byte[0] ^= 1 << bit;
    file.write_at(at, &byte).expect("write");
    file.sync().expect("sync");
}

/// Every bit Kafka's CRC leaves out (base offset, length, leader epoch, magic) is covered by
/// the stored form's checksum: a flip there is never served as a batch at other offsets or
/// in another epoch, whether the log is open, reopened, or fully verified. (Before the stored
/// form, such flips moved batches or changed their Raft term unnoticed: simulator seeds
/// `--workload raft` 62/101/196, `--workload kafka` 403, and fuzz/open/log_recovery.)
#[test]
fn every_bit_outside_kafkas_crc_is_covered_by_the_stored_checksum() {
    let config = LogConfig {
        segment_size_max_bytes: 1 << 20,
        ..LogConfig::for_tests()
    };
    for bit_index in 0..17 * 8 {
        for verify_all in [false, true] {
            let (at, bit) = (bit_index / 8, (bit_index % 8) as u32);
            let context = format!("byte {at} bit {bit}, verify_all {verify_all}");
            let disk = MemDisk::new(200 + bit_index);
            let (mut log, _) = open_with(&disk, config.clone());
            let mut stored = fill(&mut log, 2, 1);
            stored.extend(fill(&mut log, 3, 2));
            log.checkpoint().expect("checkpoint");
            let headers: Vec<BatchHeader> = stored
                .iter()
                .map(|b| BatchHeader::validate(b).expect("valid"))
                .collect();
            let damaged = headers[2].base_offset;
            let position = (stored[0].len() + stored[1].len()) as u64;
            flip_bit(
                &disk,
                &dir().join(file_name(0, LOG_EXT)),
                position + at,
                bit,
            );
            // The open log refuses the damaged batch and serves the ones before it.
            assert!(
                matches!(
                    log.read(damaged, 1 << 20, u64::MAX),
                    Err(LogError::Corrupt { .. })
                ),
                "{context}"
            );
            let before = log.read(0, 1 << 20, u64::MAX).expect("read");
            assert_eq!(before.next_offset, damaged, "{context}");
            assert_eq!(
                &before.bytes[..],
                &[&stored[0][..], &stored[1][..]].concat()[..],
                "{context}"
            );
            drop(log);
            // Reopened: the damaged batch lies below the recovery point, so it is reported,
            // and whatever is served is what was written at that offset.
            let (log, report) = Log::open_with(
                Arc::new(disk.clone()),
                dir(),
                config.clone(),
                OpenOptions {
                    verify_all,
                    existing: true,
                },
            )
            .expect("open");
            assert_eq!(report.corruption, Some(damaged), "{context}");
            assert_eq!(log.log_end_offset(), damaged, "{context}");
            assert_eq!(log.last_epoch(), Some(1), "{context}");
            let served = read_all(&log, 0);
            assert_eq!(served.len(), 2, "{context}");
            for (i, (_, bytes)) in served.iter().enumerate() {
                assert_eq!(bytes, &stored[i], "{context}");
            }
        }
    }
}

/// A log whose files are all gone (`log.meta` included) looks like a new one; a caller that
/// knows it existed says so and gets the loss reported (found by fuzzing:
/// `every-file-of-a-log-removed`).
#[test]
fn a_log_known_to_exist_whose_files_are_gone_is_reported() {
    let disk = MemDisk::new(60);
    let (mut log, _) = open(&disk);
    fill(&mut log, 5, 1);
    log.checkpoint().expect("checkpoint");
    drop(log);
    for name in disk.list(&dir()).expect("list") {
        disk.remove(&dir().join(name)).expect("remove");
    }
    disk.sync_dir(&dir()).expect("sync dir");
    let existing = OpenOptions {
        verify_all: false,
        existing: true,
    };
    let (log, report) = Log::open_with(
        Arc::new(disk.clone()),
        dir(),
        LogConfig::for_tests(),
        existing,
    )
    .expect("open");
    assert_eq!(report.corruption, Some(0));
    assert!(report.meta_missing);
    assert_eq!(log.log_end_offset(), 0);
    drop(log);
    // Once opened (and `log.meta` rewritten), it is a log like any other.
    let (_, report) = Log::open_with(
        Arc::new(disk.clone()),
        dir(),
        LogConfig::for_tests(),
        existing,
    )
    .expect("open");
    assert_eq!(report.corruption, None);
    // A new log is not a loss.
    let fresh = MemDisk::new(61);
    let (_, report) = open(&fresh);
    assert_eq!(report.corruption, None);
}

/// A closed segment that got shorter at rest, with its index files gone too, is a loss:
/// `log.meta` lists each segment's durable size (found by fuzzing:
/// `trusted-segment-emptied-and-its-index-damaged`).
#[test]
fn a_trusted_segment_that_got_shorter_is_reported() {
    for (case, keep_batches) in [(0u64, 0usize), (1, 2)] {
        let disk = MemDisk::new(70 + case);
        let (mut log, _) = open(&disk);
        let stored = fill(&mut log, 60, 1);
        log.checkpoint().expect("checkpoint");
        let bases: Vec<u64> = log.segments.keys().copied().collect();
        assert!(bases.len() > 3, "{bases:?}");
        let victim = bases[1];
        drop(log);
        let seg = dir().join(file_name(victim, LOG_EXT));
        let kept: u64 = stored
            .iter()
            .filter(|b| {
                let h = BatchHeader::validate(b).expect("valid");
                h.base_offset >= victim
            })
            .take(keep_batches)
            .map(|b| b.len() as u64)
            .sum();
        let mut file = disk.open(&seg).expect("open");
        file.set_len(kept).expect("truncate");
        file.sync().expect("sync");
        for ext in [INDEX_EXT, TIME_INDEX_EXT] {
            disk.remove(&dir().join(file_name(victim, ext)))
                .expect("remove index");
        }
        disk.sync_dir(&dir()).expect("sync dir");
        let (log, report) = open(&disk);
        let end = victim + 3 * keep_batches as u64;
        assert_eq!(report.corruption, Some(end), "case {case}");
        assert_eq!(log.log_end_offset(), end, "case {case}");
        let served = read_all(&log, 0);
        assert_eq!(served.len(), (end / 3) as usize, "case {case}");
        for (i, (_, bytes)) in served.iter().enumerate() {
            assert_eq!(bytes, &stored[i], "case {case}");
        }
    }
}

/// Truncating a whole segment away and starting a new one under the same name must not
/// look like a shortened segment after a crash (the simulator's raft workload, seed 23:
/// a follower truncated its whole log, crashed, and reported a loss on restart).
#[test]
fn a_segment_re_created_after_truncation_is_not_a_loss() {
    for (seed, cut) in [(80u64, 0u64), (81, 30)] {
        let disk = MemDisk::new(seed);
        let (mut log, _) = open(&disk);
        fill(&mut log, 40, 1);
        log.checkpoint().expect("checkpoint");
        let base = log
            .segments
            .range(..=cut)
            .next_back()
            .map(|(b, _)| *b)
            .expect("a segment");
        // Truncate at a segment's base: that segment goes and, at 0, is created again.
        log.truncate_from(base).expect("truncate");
        let mut b = batch(3, 5_000, "new");
        log.append(&mut b, 2).expect("append");
        drop(log);
        disk.crash();
        let (log, report) = open(&disk);
        assert_eq!(report.corruption, None, "cut at {base}");
        assert!(log.log_end_offset() >= base, "cut at {base}");
    }
}
