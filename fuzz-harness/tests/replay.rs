//! Replays every committed corpus and regression input of every fuzz target through the
//! same function the fuzzer runs (on the stable toolchain, in CI), plus each target's
//! built-in seeds. A crash the fuzzer found stays fixed once its input is under
//! fuzz/regressions/<target>/.
//!
//! `FJORD_FUZZ_WRITE_SEEDS=1 cargo nextest run -p fjord-fuzz-harness write_seed_corpora
//! --run-ignored only` (re)writes each target's seeds into fuzz/corpus/<target>/seed-N.

use std::path::{Path, PathBuf};

use fjord_fuzz_harness::{Target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &Target) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target.name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// `RUST_LOG=fjord=debug` shows what the broker and the cores did.
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn replay(kind: &str) -> usize {
    init_tracing();
    let mut count = 0;
    for target in TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).expect("readable input");
            eprintln!("{}: {}", target.name, file.display());
            (target.run)(&data);
            count += 1;
        }
    }
    count
}

#[test]
fn corpora_replay() {
    let count = replay("corpus");
    assert!(count > 0, "no corpus found under {}", fuzz_dir().display());
}

#[test]
fn regressions_replay() {
    replay("regressions");
}

#[test]
fn seeds_replay() {
    init_tracing();
    for target in TARGETS {
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has seeds", target.name);
        for seed in seeds {
            (target.run)(&seed);
        }
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for target in TARGETS {
        let file = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", target.name));
        assert!(file.is_file(), "{} missing", file.display());
    }
}

#[test]
#[ignore = "writes fuzz/corpus/<target>/seed-N; run by hand after changing an input format"]
fn write_seed_corpora() {
    if std::env::var_os("FJORD_FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target.name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (i, seed) in (target.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write seed");
        }
    }
}
