//! Whole runs: determinism, bug injection, and the ways a seed fails.
#![cfg(madsim)]

use std::collections::BTreeSet;
use std::sync::Arc;

use fjord_replication::BoxFuture;
use fjord_sim::bugs::Bugs;
use fjord_sim::faults::FaultClass;
use fjord_sim::runner::{run, run_checked, Failure, RunOptions};
use fjord_sim::toy;
use fjord_sim::workload::{ClientEnv, NodeIo, Workload, WorkloadKind, WorldInfo};

fn toy(faults: Option<&[FaultClass]>, bugs: Bugs) -> RunOptions {
    RunOptions {
        workload: &toy::KIND,
        faults: faults.map(|f| f.iter().copied().collect()),
        bugs,
        print: None,
    }
}

#[test]
fn a_seed_replays_exactly_and_seeds_differ() {
    let opts = toy(None, Bugs::none());
    let a = run(11, &opts);
    let b = run(11, &opts);
    assert!(a.failure.is_none(), "{:?}", a.failure);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.sim_time, b.sim_time);
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.ops, b.ops);
    assert!(a.ops > 100, "clients ran: {} ops", a.ops);
    assert_ne!(run(12, &opts).trace_hash, a.trace_hash);
    let checked = run_checked(13, &opts, true);
    assert!(checked.failure.is_none(), "{:?}", checked.failure);
}

#[test]
fn the_toy_survives_its_faults_and_its_injected_bug_is_caught() {
    let faults = [FaultClass::Crash, FaultClass::PowerLoss];
    let clean = toy(Some(&faults), Bugs::none());
    let bugged = toy(Some(&faults), Bugs::of([toy::ACK_BEFORE_FSYNC]));
    let mut caught = None;
    for seed in 0..20 {
        let r = run(seed, &clean);
        assert!(
            r.failure.is_none(),
            "seed {seed}: {}",
            r.failure.expect("failed")
        );
        assert!(r.faults.get(&FaultClass::Crash).copied().unwrap_or(0) > 0);
        if let Some(Failure::Safety(v)) = run(seed, &bugged).failure {
            assert!(v.iter().any(|v| v.check == "lost-write"), "{v:?}");
            caught = Some(seed);
            break;
        }
    }
    assert!(
        caught.is_some(),
        "ack-before-fsync was not caught in 20 seeds"
    );
}

#[test]
fn repro_lines_carry_pinned_faults_and_bugs() {
    let opts = toy(
        Some(&[FaultClass::Crash, FaultClass::Clog]),
        Bugs::of([toy::ACK_BEFORE_FSYNC]),
    );
    assert_eq!(
        opts.repro(7, "toy"),
        "scripts/sim --seed 7 --faults crash,clog --inject-bug ack-before-fsync"
    );
    assert_eq!(
        toy(None, Bugs::none()).repro(7, "other"),
        "scripts/sim --seed 7 --workload toy"
    );
}

/// Nodes that do nothing, or panic; a liveness probe that never succeeds.
struct Broken {
    panic: bool,
}

impl Workload for Broken {
    fn node(&self, io: NodeIo) -> BoxFuture<'static, ()> {
        let panic = self.panic;
        Box::pin(async move {
            assert!(!panic, "node {} asserts", io.id);
            std::future::pending::<()>().await;
        })
    }
    fn clients(&self) -> usize {
        0
    }
    fn client(&self, _: ClientEnv) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn liveness(&self, _: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(std::future::pending())
    }
    fn final_reads(&self, _: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

const STUCK: WorkloadKind = WorkloadKind {
    name: "stuck",
    bugs: &[],
    faults: &[],
    build: |_: &WorldInfo| Arc::new(Broken { panic: false }),
};

const PANICKY: WorkloadKind = WorkloadKind {
    name: "panicky",
    bugs: &[],
    faults: &[],
    build: |_: &WorldInfo| Arc::new(Broken { panic: true }),
};

#[test]
fn no_progress_after_heal_fails_the_seed() {
    let r = run(
        1,
        &RunOptions {
            workload: &STUCK,
            faults: Some(BTreeSet::new()),
            bugs: Bugs::none(),
            print: None,
        },
    );
    assert!(
        matches!(r.failure, Some(Failure::Liveness(_))),
        "{:?}",
        r.failure
    );
}

#[test]
fn a_panic_in_a_node_fails_the_seed() {
    let r = run(
        1,
        &RunOptions {
            workload: &PANICKY,
            faults: Some(BTreeSet::new()),
            bugs: Bugs::none(),
            print: None,
        },
    );
    match r.failure {
        Some(Failure::Panic(m)) => assert!(
            m.contains("node n1 asserts") || m.contains("asserts"),
            "{m}"
        ),
        other => panic!("expected a panic failure, got {other:?}"),
    }
}
