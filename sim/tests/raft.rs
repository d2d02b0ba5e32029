//! The raft workload: fjord's replication layer survives the simulator's faults.
#![cfg(madsim)]

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
