//! `log_recovery`: segment, index and metadata files opened through [`Log::open`].
//!
//! Two modes, picked by the first byte:
//!
//! * **raw files**: the input names files (segments, indexes, `log.meta`, leftovers of
//!   interrupted operations) and gives their bytes; the directory is opened as it is.
//! * **damaged log**: the input drives appends and syncs of a real [`Log`], then damages
//!   what is on disk (power loss, truncation, bit flips, zeroed ranges, removed files).
//!
//! Checked after every open: no panic (errors are fine); every batch the recovered log
//! serves passes its CRC; offsets increase; the recovery is idempotent (a second open cuts
//! nothing). In damaged mode also: every batch that was durable and lies before the first
//! damaged byte (in offset order) is served byte-identical, and a durable batch that is no
//! longer served was either refused as corrupt or reported ([`RecoveryReport::corruption`]):
//! durable data is never lost silently, nor replaced by other data at its offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fjord_log::testing::MemDisk;
use fjord_log::{
    build_batch, BatchHeader, BatchIter, BuildOptions, Compression, Disk, Log, LogConfig, LogError,
    OpenOptions, RecordSpec, RecoveryReport,
};

use crate::input::{Reader, Writer};

const DIR: &str = "topic-0";
/// Most files one raw input creates.
const RAW_FILES_MAX_COUNT: usize = 16;
/// Most appends (and damages) one damaged-log input performs.
const APPENDS_MAX_COUNT: usize = 96;
const DAMAGES_MAX_COUNT: usize = 4;

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(mode) = r.u8() else {
        return;
    };
    let config = config(r.u16().unwrap_or(0));
    let verify_all = mode & 2 != 0;
    if mode & 1 == 0 {
        raw_files(&mut r, config, verify_all);
    } else {
        damaged_log(&mut r, config, verify_all);
    }
}

/// Small segments (so logs have several) and a dense index.
fn config(selector: u16) -> LogConfig {
    LogConfig {
        segment_size_max_bytes: 128 + u64::from(selector % 4096),
        index_interval_bytes: 64 + u64::from(selector >> 12) * 64,
        ..LogConfig::for_tests()
    }
}

/// The file a raw entry names.
fn raw_name(kind: u8, base: u32) -> String {
    let base = u64::from(base);
    match kind % 8 {
        0 => format!("{base:020}.log"),
        1 => format!("{base:020}.index"),
        2 => format!("{base:020}.timeindex"),
        3 => "log.meta".into(),
        4 => "log.meta.tmp".into(),
        5 => format!("{base:020}.log.cleaned"),
        6 => format!("{base:020}.log.tmp"),
        _ => format!("{base}.log"),
    }
}

/// Writes (or replaces) a file durably.
fn write_file(disk: &MemDisk, path: &Path, bytes: &[u8]) {
    if disk.exists(path).expect("exists") {
        disk.remove(path).expect("remove");
    }
    let mut f = disk.create(path).expect("MemDisk creates files");
    f.write_at(0, bytes).expect("MemDisk writes");
    f.sync().expect("MemDisk syncs");
}

fn raw_files(r: &mut Reader<'_>, config: LogConfig, verify_all: bool) {
    let disk = MemDisk::new(0);
    let dir = PathBuf::from(DIR);
    disk.create_dir_all(&dir).expect("mkdir");
    for _ in 0..RAW_FILES_MAX_COUNT {
        let (Some(kind), Some(base)) = (r.u8(), r.u32()) else {
            break;
        };
        let Some(bytes) = r.blob() else {
            break;
        };
        write_file(&disk, &dir.join(raw_name(kind, base)), bytes);
    }
    disk.sync_dir(&dir).expect("sync dir");
    let disk: Arc<dyn Disk> = Arc::new(disk);
    // Raw files: nothing says whether the log existed.
    let options = OpenOptions {
        verify_all,
        existing: false,
    };
    let Some((log, report)) = open_checked(&disk, &dir, &config, options) else {
        return;
    };
    drop(log);
    let _ = report;
}

/// Opens the log; if that succeeds, checks everything it serves and that a second open
/// finds nothing to cut. `None` when the open failed (a typed error: fine).
fn open_checked(
    disk: &Arc<dyn Disk>,
    dir: &Path,
    config: &LogConfig,
    options: OpenOptions,
) -> Option<(Log, RecoveryReport)> {
    let (log, report) =
        match Log::open_with(Arc::clone(disk), dir.to_path_buf(), config.clone(), options) {
            Ok(opened) => opened,
            Err(LogError::Disk(e)) => panic!("MemDisk does not fail here: {e}"),
            Err(_) => return None,
        };
    assert!(log.log_start_offset() <= log.log_end_offset());
    assert_eq!(
        log.durable_end_offset(),
        log.log_end_offset(),
        "open syncs what it recovered"
    );
    let served = served_batches(&log);
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    drop(log);
    let existing = OpenOptions {
        verify_all: false,
        existing: true,
    };
    let (again, second) = Log::open_with(
        Arc::clone(disk),
        dir.to_path_buf(),
        config.clone(),
        existing,
    )
    .expect("a recovered log opens again");
    assert_eq!(
        (again.log_start_offset(), again.log_end_offset()),
        (start, end),
        "recovery is idempotent: {second:?}"
    );
    assert_eq!(
        second.truncated_at, None,
        "a second open cuts nothing: {second:?}"
    );
    assert_eq!(
        served_batches(&again),
        served,
        "a second open serves the same batches"
    );
    Some((again, report))
}

/// Every batch the log serves from its start, in order, until the end or the first batch it
/// refuses as corrupt. Each one passed its CRC and lies within the log.
fn served_batches(log: &Log) -> Vec<(u64, Bytes)> {
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    let mut out = Vec::new();
    let mut from = start;
    while from < end {
        let read = match log.read(from, 64 * 1024, u64::MAX) {
            Ok(read) => read,
            Err(LogError::Corrupt { .. }) => break,
            Err(e) => panic!("read at {from} of [{start}, {end}): {e}"),
        };
        if read.bytes.is_empty() {
            break;
        }
        let mut next = from;
        for item in BatchIter::new(&read.bytes) {
            let (header, bytes) = item.expect("served batches are whole");
            BatchHeader::validate(bytes).expect("served batches pass their CRC");
            assert!(header.next_offset() > next, "offsets increase");
            assert!(
                header.next_offset() <= end,
                "served batch [{}, {}) beyond the log end {end} (start {start})",
                header.base_offset,
                header.next_offset()
            );
            next = header.next_offset();
            out.push((header.base_offset, read.bytes.slice_ref(bytes)));
        }
        assert_eq!(next, read.next_offset);
        from = next;
    }
    out
}

/// A batch as it was appended, and where it sits on disk before the damage.
struct Placed {
    base: u64,
    bytes: Bytes,
    file: String,
    position: u64,
}

/// Bytes `[from, to)` of one file changed (flips, zeroes) or are gone (truncation,
/// removal: `to` = MAX).
#[derive(Debug)]
struct Damage {
    file: String,
    from: u64,
    to: u64,
}

fn damaged_log(r: &mut Reader<'_>, config: LogConfig, verify_all: bool) {
    let mem = MemDisk::new(u64::from(r.u8().unwrap_or(0)));
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = PathBuf::from(DIR);
    let (mut log, _) = Log::open(Arc::clone(&disk), dir.clone(), config.clone()).expect("new log");
    let mut written: Vec<(u64, Bytes)> = Vec::new();
    let mut epoch = 0i32;
    for i in 0..APPENDS_MAX_COUNT {
        let Some(op) = r.u8() else {
            break;
        };
        if op == 0xff {
            break; // Damages follow.
        }
        epoch += i32::from(op >> 7);
        let records: Vec<RecordSpec> = (0..=(op & 3))
            .map(|k| RecordSpec {
                key: (op & 0x20 != 0).then(|| Bytes::from(format!("k{}", k % 2))),
                value: Some(Bytes::from(vec![
                    i as u8;
                    usize::from(op >> 3 & 3) * 40
                        + usize::from(k)
                ])),
                headers: Vec::new(),
                timestamp_ms: 1_000 + i as i64,
            })
            .collect();
        let opts = BuildOptions {
            compression: if op & 0x40 != 0 {
                Compression::Gzip
            } else {
                Compression::None
            },
            ..BuildOptions::default()
        };
        let mut batch = build_batch(&records, &opts).expect("valid batch").to_vec();
        let info = log
            .append(&mut batch, epoch)
            .expect("append to a MemDisk log");
        written.push((info.base_offset, Bytes::from(batch)));
        if op & 4 != 0 {
            log.sync().expect("sync");
        }
    }
    let durable_end = log.durable_end_offset();
    drop(log);
    // Power loss: what was not synced may go. Durable batches stay where they were written.
    mem.crash();
    let durable: Vec<(u64, Bytes)> = written
        .into_iter()
        .filter(|(_, bytes)| {
            BatchHeader::parse(bytes).expect("own batch").next_offset() <= durable_end
        })
        .collect();
    let placed = place(&durable, &disk, &dir);
    let mut damages = Vec::new();
    for _ in 0..DAMAGES_MAX_COUNT {
        let (Some(kind), Some(pick), Some(at)) = (r.u8(), r.u8(), r.u32()) else {
            break;
        };
        let mut files = disk.list(&dir).expect("list");
        files.sort();
        if files.is_empty() {
            break;
        }
        let file = files[usize::from(pick) % files.len()].clone();
        let path = dir.join(&file);
        let mut f = disk.open(&path).expect("listed file opens");
        let len = f.len();
        let at = if len == 0 { 0 } else { u64::from(at) % len };
        match kind % 8 {
            0 => {
                drop(f);
                disk.remove(&path).expect("remove");
                disk.sync_dir(&dir).expect("sync dir");
                damages.push(Damage {
                    file,
                    from: 0,
                    to: u64::MAX,
                });
            }
            1 | 2 => {
                f.set_len(at).expect("truncate");
                f.sync().expect("sync");
                damages.push(Damage {
                    file,
                    from: at,
                    to: u64::MAX,
                });
            }
            3 | 4 => {
                let width = u64::from(r.u8().unwrap_or(1)) % 32 + 1;
                let to = (at + width).min(len);
                f.write_at(at, &vec![0; (to - at) as usize]).expect("zero");
                f.sync().expect("sync");
                damages.push(Damage { file, from: at, to });
            }
            _ => {
                if len == 0 {
                    continue;
                }
                let mut byte = [0u8];
                f.read_at(at, &mut byte).expect("read");
                byte[0] ^= 1 << (r.u8().unwrap_or(0) % 8);
                f.write_at(at, &byte).expect("flip");
                f.sync().expect("sync");
                damages.push(Damage {
                    file,
                    from: at,
                    to: at + 1,
                });
            }
        }
    }
    // The log was created (its first open completed) before the damage.
    let options = OpenOptions {
        verify_all,
        existing: true,
    };
    let Some((log, report)) = open_checked(&disk, &dir, &config, options) else {
        assert!(
            !damages.is_empty(),
            "a log that lost only unsynced writes opens"
        );
        return;
    };
    check_durable(&log, &report, &placed, &damages);
}

/// Where each durable batch sits in the segment files after the power loss (before any
/// damage). Every durable batch must be there: a power loss keeps what was synced.
fn place(durable: &[(u64, Bytes)], disk: &Arc<dyn Disk>, dir: &Path) -> Vec<Placed> {
    let mut found: BTreeMap<u64, (String, u64, Bytes)> = BTreeMap::new();
    for file in disk.list(dir).expect("list") {
        if fjord_log::segment::parse_log_name(&file).is_none() {
            continue;
        }
        let f = disk.open(&dir.join(&file)).expect("open segment");
        let mut bytes = vec![0; f.len() as usize];
        f.read_at(0, &mut bytes).expect("read segment");
        // Segments hold batches in the stored form: turn each back into the Kafka form.
        let mut position = 0usize;
        while let Ok(header) = fjord_log::batch::unseal_first(&mut bytes[position..]) {
            let end = position + header.total_size();
            found.insert(
                header.base_offset,
                (
                    file.clone(),
                    position as u64,
                    Bytes::copy_from_slice(&bytes[position..end]),
                ),
            );
            position = end;
        }
    }
    durable
        .iter()
        .map(|(base, bytes)| {
            let (file, position, on_disk) = found
                .remove(base)
                .unwrap_or_else(|| panic!("durable batch at {base} lost by a power loss"));
            assert_eq!(
                &on_disk, bytes,
                "durable batch at {base} changed by a power loss"
            );
            Placed {
                base: *base,
                bytes: bytes.clone(),
                file,
                position,
            }
        })
        .collect()
}

impl Placed {
    fn touched_by(&self, d: &Damage) -> bool {
        let end = self.position + self.bytes.len() as u64;
        d.file == self.file && d.from < end && d.to > self.position
    }
}

/// Durable batches before the first damaged one are served intact; later ones are served
/// intact (byte-identical: the stored form's checksum covers every byte, base offset and
/// epoch included), refused as corrupt, or gone with the loss reported.
fn check_durable(log: &Log, report: &RecoveryReport, placed: &[Placed], damages: &[Damage]) {
    let first_touched = placed
        .iter()
        .position(|p| damages.iter().any(|d| p.touched_by(d)));
    for (i, p) in placed.iter().enumerate() {
        let before_damage = first_touched.is_none_or(|t| i < t);
        let served = match log.read(p.base, 1, u64::MAX) {
            Ok(read) => BatchIter::new(&read.bytes)
                .next()
                .and_then(Result::ok)
                .filter(|(h, _)| h.base_offset <= p.base && p.base <= h.last_offset())
                .map(|(_, b)| read.bytes.slice_ref(b)),
            Err(LogError::Corrupt { .. }) => {
                assert!(
                    !before_damage,
                    "durable batch at {} before any damage refused as corrupt ({damages:?})",
                    p.base
                );
                continue;
            }
            Err(LogError::OffsetOutOfRange { .. }) => None,
            Err(e) => panic!("read at {}: {e}", p.base),
        };
        match served {
            Some(bytes) if before_damage => assert_eq!(
                bytes, p.bytes,
                "durable batch at {} before any damage changed ({damages:?})",
                p.base
            ),
            Some(bytes) => assert_eq!(
                bytes, p.bytes,
                "another batch served at durable offset {} ({damages:?}, {report:?})",
                p.base
            ),
            None => {
                assert!(
                    !before_damage,
                    "durable batch at {} before any damage lost ({damages:?}, {report:?})",
                    p.base
                );
                assert!(
                    report.corruption.is_some(),
                    "durable batch at {} lost silently ({damages:?}, {report:?})",
                    p.base
                );
            }
        }
    }
}

/// Seed inputs: valid logs written through [`Log`] and dumped as raw files, and scripts of
/// appends and damages.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Raw: a log of several segments with closed indexes, as written.
    for (selector, batches) in [(200u16, 12usize), (900, 30), (4000, 5)] {
        let disk = MemDisk::new(1);
        let dir = PathBuf::from(DIR);
        let config = config(selector);
        let arc: Arc<dyn Disk> = Arc::new(disk.clone());
        let (mut log, _) = Log::open(Arc::clone(&arc), dir.clone(), config).expect("open");
        for i in 0..batches {
            let records: Vec<RecordSpec> = (0..=i % 3)
                .map(|k| RecordSpec {
                    key: Some(Bytes::from(format!("key-{}", (i + k) % 4))),
                    value: Some(Bytes::from(format!("value-{i}-{k}"))),
                    headers: Vec::new(),
                    timestamp_ms: 1_700_000_000_000 + i as i64,
                })
                .collect();
            let mut batch = build_batch(&records, &BuildOptions::default())
                .expect("batch")
                .to_vec();
            log.append(&mut batch, (i / 7) as i32).expect("append");
        }
        log.sync().expect("sync");
        drop(log);
        let mut w = Writer::default();
        w.u8(0).u16(selector);
        let mut files = arc.list(&dir).expect("list");
        files.sort();
        for file in files {
            let f = arc.open(&dir.join(&file)).expect("open");
            let mut bytes = vec![0; f.len() as usize];
            f.read_at(0, &mut bytes).expect("read");
            let (kind, base) = match file.split_once('.') {
                Some((base, "log")) => (0, base),
                Some((base, "index")) => (1, base),
                Some((base, "timeindex")) => (2, base),
                _ => (3, "0"),
            };
            w.u8(kind)
                .u32(base.parse().expect("segment base"))
                .blob(&bytes);
        }
        out.push(w.out);
    }
    // Damaged: appends with syncs, then a flip, a truncation, a removal.
    for damage in [
        [5u8, 1, 200, 0, 0, 0, 3],
        [1, 0, 150, 0, 0, 0, 0],
        [0, 2, 0, 0, 0, 0, 0],
    ] {
        let mut w = Writer::default();
        w.u8(1).u16(300).u8(9);
        for i in 0..20u8 {
            w.u8((i % 4) | if i % 3 == 0 { 4 } else { 0 } | (i % 2) << 3 | (i / 10) << 7);
        }
        w.u8(0xff);
        for b in damage {
            w.u8(b);
        }
        out.push(w.out);
    }
    out
}
