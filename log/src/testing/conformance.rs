//! A conformance suite every [`Disk`] implementation must pass.
//!
//! [`run_all`] checks the plain contract (what a disk does without faults); [`run_crash_suite`]
//! checks the fault model of [`crate::disk`] on disks that can simulate power loss
//! ([`CrashDisk`]): synced data survives, unsynced data may not but never turns into bytes
//! nobody wrote, directory entries need `sync_dir`, surviving directory operations form a
//! prefix, renames are atomic, handles die with the crash, a failed `sync` poisons its handle.
//! Each test gets a fresh disk from `make`, and panics (with the test's name) on a violation.

use std::path::Path;
use std::sync::Arc;

use crate::disk::{Disk, DiskError, DiskFile};

/// A disk that can lose power: the simulator's and [`super::MemDisk`].
pub trait CrashDisk: Disk {
    /// Power loss as described in [`crate::disk`]: pending writes and unsynced directory
    /// operations may be lost or torn; every open handle dies.
    fn crash(&self);

    /// Makes every later `sync` fail (`on`) or stops doing so (`!on`), if this disk can inject
    /// sync failures; returns whether it can (the default cannot).
    fn fail_all_syncs(&self, on: bool) -> bool {
        let _ = on;
        false
    }
}

/// A named plain-contract test.
type PlainTest = (&'static str, fn(&dyn Disk));
/// A named fault-model test.
type CrashTest = (&'static str, fn(&dyn CrashDisk));

/// Runs the plain (fault-free) contract tests, each on a fresh disk from `make`.
pub fn run_all(make: &dyn Fn() -> Arc<dyn Disk>) {
    let tests: &[PlainTest] = &[
        ("write_read_roundtrip", write_read_roundtrip),
        ("write_past_end_fills_zeros", write_past_end_fills_zeros),
        (
            "set_len_truncates_and_extends",
            set_len_truncates_and_extends,
        ),
        ("read_past_end_is_short_read", read_past_end_is_short_read),
        ("create_and_open_errors", create_and_open_errors),
        ("handles_share_content", handles_share_content),
        ("list_and_exists", list_and_exists),
        ("rename_replaces_target", rename_replaces_target),
        ("remove_file", remove_file),
        ("syncs_keep_content", syncs_keep_content),
    ];
    for (name, test) in tests {
        let disk = make();
        eprintln!("disk conformance: {name}");
        test(disk.as_ref());
    }
}

/// Runs the fault-model tests, each on a fresh disk from `make`.
pub fn run_crash_suite(make: &dyn Fn() -> Arc<dyn CrashDisk>) {
    let tests: &[CrashTest] = &[
        ("synced_data_survives_crash", synced_data_survives_crash),
        (
            "unsynced_writes_leave_only_written_bytes",
            unsynced_writes_leave_only_written_bytes,
        ),
        ("dir_entries_need_sync_dir", dir_entries_need_sync_dir),
        (
            "surviving_dir_ops_form_a_prefix",
            surviving_dir_ops_form_a_prefix,
        ),
        ("rename_is_atomic", rename_is_atomic),
        ("handles_die_on_crash", handles_die_on_crash),
        ("failed_sync_poisons_handle", failed_sync_poisons_handle),
    ];
    for (name, test) in tests {
        let disk = make();
        eprintln!("disk crash conformance: {name}");
        test(disk.as_ref());
    }
}

fn read_all<D: Disk + ?Sized>(disk: &D, path: &str) -> Vec<u8> {
    let file = disk.open(Path::new(path)).expect("open");
    let mut buf = vec![0; usize::try_from(file.len()).expect("test files are small")];
    file.read_at(0, &mut buf).expect("read");
    buf
}

fn new_file<D: Disk + ?Sized>(disk: &D, path: &str, content: &[u8]) -> Box<dyn DiskFile> {
    let mut file = disk.create(Path::new(path)).expect("create");
    file.write_at(0, content).expect("write");
    file
}

/// A file whose content and entry are durable.
fn durable_file<D: Disk + ?Sized>(disk: &D, dir: &str, path: &str, content: &[u8]) {
    let mut file = new_file(disk, path, content);
    file.sync().expect("sync");
    disk.sync_dir(Path::new(dir)).expect("sync_dir");
}

fn write_read_roundtrip(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    let mut file = new_file(disk, "d/f", b"hello world");
    assert_eq!(file.len(), 11);
    file.write_at(6, b"there").expect("overwrite");
    let mut buf = [0; 11];
    file.read_at(0, &mut buf).expect("read");
    assert_eq!(&buf, b"hello there");
    let mut mid = [0; 3];
    file.read_at(2, &mut mid).expect("read middle");
    assert_eq!(&mid, b"llo");
    file.read_at(11, &mut []).expect("empty read at end");
}

fn write_past_end_fills_zeros(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    let mut file = new_file(disk, "d/f", b"ab");
    file.write_at(5, b"cd").expect("write past end");
    assert_eq!(file.len(), 7);
    assert_eq!(read_all(disk, "d/f"), b"ab\0\0\0cd");
}

fn set_len_truncates_and_extends(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    let mut file = new_file(disk, "d/f", b"abcdef");
    file.set_len(3).expect("truncate");
    assert_eq!(file.len(), 3);
    assert_eq!(read_all(disk, "d/f"), b"abc");
    file.set_len(5).expect("extend");
    assert_eq!(read_all(disk, "d/f"), b"abc\0\0");
    assert!(!file.is_empty());
    file.set_len(0).expect("empty");
    assert!(file.is_empty());
}

fn read_past_end_is_short_read(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    let file = new_file(disk, "d/f", b"abc");
    let mut buf = [0; 4];
    let err = file.read_at(0, &mut buf).expect_err("read past end");
    assert!(matches!(err, DiskError::ShortRead { .. }), "{err:?}");
    let err = file.read_at(10, &mut buf[..1]).expect_err("read after end");
    assert!(matches!(err, DiskError::ShortRead { .. }), "{err:?}");
}

fn create_and_open_errors(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    new_file(disk, "d/f", b"x");
    let err = disk.create(Path::new("d/f")).expect_err("create existing");
    assert!(matches!(err, DiskError::AlreadyExists(_)), "{err:?}");
    let err = disk.open(Path::new("d/missing")).expect_err("open missing");
    assert!(matches!(err, DiskError::NotFound(_)), "{err:?}");
    let err = disk
        .create(Path::new("nodir/f"))
        .expect_err("create in missing dir");
    assert!(matches!(err, DiskError::NotFound(_)), "{err:?}");
    assert!(
        disk.open(Path::new("d")).is_err(),
        "opening a directory as a file"
    );
}

fn handles_share_content(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    let mut a = new_file(disk, "d/f", b"one");
    let mut b = disk.open(Path::new("d/f")).expect("open");
    b.write_at(3, b"two").expect("write via b");
    assert_eq!(a.len(), 6);
    let mut buf = [0; 6];
    a.read_at(0, &mut buf).expect("read via a");
    assert_eq!(&buf, b"onetwo");
    a.set_len(2).expect("truncate via a");
    assert_eq!(b.len(), 2);
}

fn list_and_exists(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("top/sub")).expect("mkdir");
    disk.create_dir_all(Path::new("top/sub"))
        .expect("mkdir again is fine");
    for name in ["b", "a", "c.log"] {
        new_file(disk, &format!("top/{name}"), b"");
    }
    assert_eq!(
        disk.list(Path::new("top")).expect("list"),
        vec!["a", "b", "c.log", "sub"]
    );
    assert!(disk.list(Path::new("top/sub")).expect("list").is_empty());
    assert!(disk.exists(Path::new("top")).expect("exists"));
    assert!(disk.exists(Path::new("top/sub")).expect("exists"));
    assert!(disk.exists(Path::new("top/a")).expect("exists"));
    assert!(!disk.exists(Path::new("top/zz")).expect("exists"));
    assert!(disk.list(Path::new("nowhere")).is_err());
}

fn rename_replaces_target(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    new_file(disk, "d/old", b"old");
    new_file(disk, "d/new", b"new content");
    disk.rename(Path::new("d/new"), Path::new("d/old"))
        .expect("rename");
    assert_eq!(read_all(disk, "d/old"), b"new content");
    assert!(!disk.exists(Path::new("d/new")).expect("exists"));
    assert_eq!(disk.list(Path::new("d")).expect("list"), vec!["old"]);
    let err = disk
        .rename(Path::new("d/missing"), Path::new("d/x"))
        .expect_err("rename missing");
    assert!(matches!(err, DiskError::NotFound(_)), "{err:?}");
}

fn remove_file(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    new_file(disk, "d/f", b"x");
    disk.remove(Path::new("d/f")).expect("remove");
    assert!(!disk.exists(Path::new("d/f")).expect("exists"));
    let err = disk.remove(Path::new("d/f")).expect_err("remove twice");
    assert!(matches!(err, DiskError::NotFound(_)), "{err:?}");
    new_file(disk, "d/f", b"again");
    assert_eq!(read_all(disk, "d/f"), b"again");
}

fn syncs_keep_content(disk: &dyn Disk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    let mut file = new_file(disk, "d/f", b"abc");
    file.sync().expect("sync");
    file.write_at(3, b"def").expect("write");
    file.sync().expect("sync again");
    disk.sync_dir(Path::new("d")).expect("sync_dir");
    disk.sync_dir(Path::new("")).expect("sync root");
    assert_eq!(read_all(disk, "d/f"), b"abcdef");
}

fn synced_data_survives_crash(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    durable_file(disk, "d", "d/f", b"durable bytes");
    let mut file = disk.open(Path::new("d/f")).expect("open");
    file.write_at(13, b" and more").expect("append");
    file.set_len(20).expect("set_len");
    file.sync().expect("sync");
    disk.crash();
    assert_eq!(read_all(disk, "d/f"), b"durable bytes and mo");
}

fn unsynced_writes_leave_only_written_bytes(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    let base = b"0123456789".repeat(4);
    durable_file(disk, "d", "d/f", &base);
    for round in 0..8u8 {
        let before = read_all(disk, "d/f");
        let mut file = disk.open(Path::new("d/f")).expect("open");
        let new = vec![b'a' + round; 16];
        file.write_at(u64::from(round) * 3, &new).expect("write");
        file.write_at(50, &new).expect("write past end");
        disk.crash();
        let after = read_all(disk, "d/f");
        assert!(after.len() >= before.len().min(40), "round {round}");
        for (i, byte) in after.iter().enumerate() {
            let old = before.get(i).copied();
            let allowed = Some(*byte) == old || *byte == b'a' + round || *byte == 0;
            assert!(allowed, "round {round}: byte {i} is {byte}, was {old:?}");
        }
        // Make this round's outcome the base of the next one.
        let mut file = disk.open(Path::new("d/f")).expect("open");
        file.sync().expect("sync");
    }
}

fn dir_entries_need_sync_dir(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    durable_file(disk, "d", "d/kept", b"k");
    let mut file = new_file(disk, "d/maybe", b"m");
    file.sync().expect("sync data but not the entry");
    disk.remove(Path::new("d/kept")).expect("remove");
    disk.crash();
    // Neither the create nor the remove is durable, so both may be undone; if the created
    // entry survived, its synced content survived with it.
    if disk.exists(Path::new("d/maybe")).expect("exists") {
        assert_eq!(read_all(disk, "d/maybe"), b"m");
    }
    if disk.exists(Path::new("d/kept")).expect("exists") {
        assert_eq!(read_all(disk, "d/kept"), b"k");
    }
    // Once synced, entry operations survive.
    if !disk.exists(Path::new("d/maybe")).expect("exists") {
        durable_file(disk, "d", "d/maybe", b"m");
    }
    if disk.exists(Path::new("d/kept")).expect("exists") {
        disk.remove(Path::new("d/kept")).expect("remove");
    }
    disk.sync_dir(Path::new("d")).expect("sync_dir");
    disk.crash();
    assert_eq!(read_all(disk, "d/maybe"), b"m");
    assert!(!disk.exists(Path::new("d/kept")).expect("exists"));
}

fn surviving_dir_ops_form_a_prefix(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    disk.sync_dir(Path::new("d")).expect("sync d");
    for round in 0..8 {
        let names: Vec<String> = (0..5).map(|i| format!("r{round}-{i}")).collect();
        for name in &names {
            new_file(disk, &format!("d/{name}"), b"");
        }
        disk.crash();
        let present: Vec<bool> = names
            .iter()
            .map(|n| disk.exists(&Path::new("d").join(n)).expect("exists"))
            .collect();
        let survivors = present.iter().take_while(|p| **p).count();
        assert!(
            present[survivors..].iter().all(|p| !p),
            "round {round}: surviving creates are not a prefix: {present:?}"
        );
    }
}

fn rename_is_atomic(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    durable_file(disk, "d", "d/target", b"old version");
    for round in 0..8 {
        let new = format!("new version {round}");
        let mut tmp = new_file(disk, "d/target.tmp", new.as_bytes());
        tmp.sync().expect("sync tmp");
        disk.rename(Path::new("d/target.tmp"), Path::new("d/target"))
            .expect("rename");
        disk.crash();
        let content = read_all(disk, "d/target");
        assert!(
            content == b"old version" || content == new.as_bytes(),
            "round {round}: target holds {content:?}"
        );
        if disk.exists(Path::new("d/target.tmp")).expect("exists") {
            disk.remove(Path::new("d/target.tmp")).expect("remove tmp");
        }
        // Back to the old version, durably, for the next round.
        durable_file(disk, "d", "d/target.tmp", b"old version");
        disk.rename(Path::new("d/target.tmp"), Path::new("d/target"))
            .expect("rename");
        disk.sync_dir(Path::new("d")).expect("sync_dir");
    }
    let new = b"final";
    let mut tmp = new_file(disk, "d/target.tmp", new);
    tmp.sync().expect("sync tmp");
    disk.rename(Path::new("d/target.tmp"), Path::new("d/target"))
        .expect("rename");
    disk.sync_dir(Path::new("d")).expect("sync_dir");
    disk.crash();
    assert_eq!(read_all(disk, "d/target"), new);
}

fn handles_die_on_crash(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    durable_file(disk, "d", "d/f", b"abc");
    let mut file = disk.open(Path::new("d/f")).expect("open");
    disk.crash();
    let mut buf = [0; 1];
    assert!(file.read_at(0, &mut buf).is_err(), "read on a dead handle");
    assert!(file.write_at(0, b"x").is_err(), "write on a dead handle");
    assert!(file.sync().is_err(), "sync on a dead handle");
    // The disk itself is usable again.
    let mut again = disk.open(Path::new("d/f")).expect("reopen");
    again.write_at(3, b"d").expect("write");
    again.sync().expect("sync");
    assert_eq!(read_all(disk, "d/f"), b"abcd");
}

fn failed_sync_poisons_handle(disk: &dyn CrashDisk) {
    disk.create_dir_all(Path::new("d")).expect("mkdir");
    disk.sync_dir(Path::new("")).expect("sync root");
    durable_file(disk, "d", "d/f", b"abc");
    let mut file = disk.open(Path::new("d/f")).expect("open");
    file.write_at(3, b"def").expect("write");
    if !disk.fail_all_syncs(true) {
        return;
    }
    assert!(file.sync().is_err(), "injected sync failure");
    disk.fail_all_syncs(false);
    let err = file
        .sync()
        .expect_err("retrying a failed sync must not succeed");
    assert!(matches!(err, DiskError::Poisoned(_)), "{err:?}");
    let err = file.write_at(0, b"x").expect_err("write after failed sync");
    assert!(matches!(err, DiskError::Poisoned(_)), "{err:?}");
    let mut buf = [0; 1];
    let err = file
        .read_at(0, &mut buf)
        .expect_err("read after failed sync");
    assert!(matches!(err, DiskError::Poisoned(_)), "{err:?}");
    // The durable prefix is intact; the failed write survived whole, torn or not at all.
    let content = read_all(disk, "d/f");
    assert!(
        (3..=6).contains(&content.len()) && content[..] == b"abcdef"[..content.len()],
        "{content:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::FileDisk;
    use crate::testing::MemDisk;

    #[test]
    fn file_disk_passes_the_plain_suite() {
        let dirs = std::sync::Mutex::new(Vec::new());
        run_all(&|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let disk = Arc::new(FileDisk::new(dir.path()));
            dirs.lock().expect("lock").push(dir);
            disk
        });
    }

    #[test]
    fn mem_disk_passes_the_plain_suite() {
        run_all(&|| Arc::new(MemDisk::new(7)));
    }

    #[test]
    fn mem_disk_passes_the_crash_suite_for_many_seeds() {
        for seed in 0..32 {
            run_crash_suite(&|| Arc::new(MemDisk::new(seed)));
        }
    }
}
