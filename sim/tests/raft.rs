//! The raft workload: fjord's replication layer survives the simulator's faults.
#![cfg(madsim)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fjord_sim::bugs::Bugs;
use fjord_sim::faults::FaultClass;
use fjord_sim::raft;
use fjord_sim::runner::{run, RunOptions};

fn opts(faults: Option<&[FaultClass]>, bugs: Bugs) -> RunOptions {
    RunOptions {
        workload: &raft::KIND,
        faults: faults.map(|f| f.iter().copied().collect()),
        nodes: None,
        bugs,
        print: None,
    }
}

#[test]
fn worlds_pass_and_replay_exactly() {
    let o = opts(None, Bugs::none());
    for seed in 0..6 {
        let r = run(seed, &o);
        assert!(
            r.failure.is_none(),
            "seed {seed}: {}",
            r.failure.expect("failed")
        );
        assert!(r.ops > 50, "seed {seed}: clients ran: {} ops", r.ops);
    }
    assert_eq!(run(3, &o).trace_hash, run(3, &o).trace_hash);
}

/// Each bug the raft workload can inject, with the fault classes that expose it: crashes
/// for durability bugs, leader churn (leaders struck right after they win, voters flapping)
/// for election and commitment bugs.
const BUG_FAULTS: &[(&str, &[FaultClass])] = &[
    (
        raft::ACK_BEFORE_FSYNC,
        &[FaultClass::Crash, FaultClass::PowerLoss],
    ),
    (
        raft::ACK_BEFORE_QUORUM,
        &[FaultClass::Crash, FaultClass::Partition],
    ),
    (
        raft::VOTE_NOT_PERSISTED,
        &[FaultClass::LeaderChurn, FaultClass::Flap],
    ),
    (raft::NO_TRUNCATE_ON_CONFLICT, &[FaultClass::LeaderChurn]),
    (raft::COMMIT_OLD_TERM_BY_COUNT, &[FaultClass::LeaderChurn]),
];

/// The first seed below `limit` that fails, searched on two threads that stop as soon as
/// one seed fails.
fn first_failure(o: &RunOptions, limit: u64) -> Option<(u64, String)> {
    let next = AtomicU64::new(0);
    let found = Mutex::new(None::<(u64, String)>);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            #[allow(clippy::disallowed_methods)] // Test workers: each runs whole worlds.
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                let done = found
                    .lock()
                    .expect("found poisoned")
                    .as_ref()
                    .is_some_and(|(s, _)| *s < seed);
                if seed >= limit || done {
                    break;
                }
                if let Some(f) = run(seed, o).failure {
                    let mut found = found.lock().expect("found poisoned");
                    if found.as_ref().is_none_or(|(s, _)| seed < *s) {
                        *found = Some((seed, f.to_string()));
                    }
                }
            });
        }
    });
    found.into_inner().expect("found poisoned")
}

/// Every injectable bug of the raft workload makes a seed fail within 200 seeds (with its
/// fault classes pinned) — and the failure is a safety check, not a crash of the harness.
#[test]
fn every_injectable_bug_is_caught_within_200_seeds() {
    assert_eq!(
        BUG_FAULTS.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
        raft::KIND.bugs,
        "every bug has its fault classes"
    );
    for (bug, faults) in BUG_FAULTS {
        let o = opts(Some(faults), Bugs::of([*bug]));
        match first_failure(&o, 200) {
            Some((seed, f)) => {
                println!("{bug} caught by seed {seed}: {f}");
                assert!(f.starts_with("safety"), "{bug}: seed {seed}: {f}");
            }
            None => panic!("bug {bug} survived 200 seeds"),
        }
    }
}
