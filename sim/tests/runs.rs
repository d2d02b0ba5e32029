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
use fjord_sim::WORKLOADS;

fn toy(faults: Option<&[FaultClass]>, bugs: Bugs) -> RunOptions {
    RunOptions {
        workload: &toy::KIND,
        faults: faults.map(|f| f.iter().copied().collect()),
        nodes: None,
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
fn the_toy_survives_crashes() {
    let opts = toy(
        Some(&[FaultClass::Crash, FaultClass::PowerLoss]),
        Bugs::none(),
    );
    for seed in 0..10 {
        let r = run(seed, &opts);
        assert!(
            r.failure.is_none(),
            "seed {seed}: {}",
            r.failure.expect("failed")
        );
        assert!(r.faults.get(&FaultClass::Crash).copied().unwrap_or(0) > 0);
    }
}

/// Every bug every registered workload can inject must make some seed fail within 200 seeds
/// of an ordinary sweep (random swarm, nothing pinned). The raft workload pins fault classes
/// per bug: its proof is in `tests/raft.rs`.
#[test]
fn every_injectable_bug_is_caught_within_200_seeds() {
    for workload in WORKLOADS
        .iter()
        .filter(|w| w.name != fjord_sim::raft::KIND.name)
    {
        for bug in workload.bugs {
            let opts = RunOptions {
                workload,
                faults: None,
                nodes: None,
                bugs: Bugs::of([*bug]),
                print: None,
            };
            let caught = (0..200).find_map(|seed| run(seed, &opts).failure.map(|f| (seed, f)));
            match caught {
                Some((seed, f)) => println!("{}: {bug} caught by seed {seed}: {f}", workload.name),
                None => panic!("{}: bug {bug} survived 200 seeds", workload.name),
            }
        }
    }
}

#[test]
fn repro_lines_carry_pinned_faults_and_bugs() {
    let mut opts = toy(
        Some(&[FaultClass::Crash, FaultClass::Clog]),
        Bugs::of([toy::ACK_BEFORE_FSYNC]),
    );
    opts.nodes = Some(3);
    assert_eq!(
        opts.repro(7, "toy"),
        "scripts/sim --seed 7 --nodes 3 --faults crash,clog --inject-bug ack-before-fsync"
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
            nodes: None,
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
            nodes: None,
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
