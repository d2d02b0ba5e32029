//! Three `fjord broker` processes and a confluent-kafka idempotent producer (acks=all) running
//! throughout: the partition's leader is killed (SIGKILL) or stopped (SIGTERM) mid-stream.
//! Afterwards every acknowledged record is read back exactly once, at its acknowledged offset,
//! in the order sent; the stopped broker restarts and its replica reaches the same log end as
//! the others (read from each broker's metrics endpoint); committed offsets of a group are
//! fetched across the failure.
#![allow(
    clippy::disallowed_methods,
    reason = "these tests drive real processes and wait on real time"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{clients_available, clients_dir, run, wait_for, Cluster, ClusterOptions, Proc, Tool};
use fjord::controller::group_coordinator_partition;

const SCRIPT_TIME_MAX: Duration = Duration::from_secs(120);
/// Acknowledgements awaited in each phase (the producer sends 300 records a second).
const PHASE_ACKS: usize = 300;

/// The producer's outcome file, counted.
#[derive(Debug, Default)]
struct Outcome {
    acked: usize,
    errors: Vec<String>,
    fatal: Vec<String>,
    done: bool,
}

fn outcome(path: &std::path::Path) -> Outcome {
    let mut o = Outcome::default();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        match line.split_whitespace().next() {
            Some("ACK") => o.acked += 1,
            Some("ERR") => o.errors.push(line.to_string()),
            Some("FATAL") => o.fatal.push(line.to_string()),
            Some("DONE") => o.done = true,
            _ => {}
        }
    }
    o
}

fn failover(test: &str, signal: &str) {
    if !clients_available(test, &[Tool::ConfluentKafka]) {
        return;
    }
    let mut cluster = Cluster::start(&ClusterOptions {
        brokers: 3,
        replication_factor: 3,
        offsets_partitions: 3,
    });
    cluster.create_topic("stream", 1, 3);
    cluster.create_topic("progress", 1, 3);
    let dir = cluster.dir.path().to_path_buf();
    let leader = cluster.leader("stream", 0);
    // The group's coordinator is the leader of its __consumer_offsets partition: pick a group
    // coordinated by the broker that fails, if it leads any, so OffsetFetch fails over too.
    // A first FindCoordinator has __consumer_offsets created.
    let warm_up = format!(
        "import sys; sys.path.insert(0, {dir:?}); import fjordtest as ft; \
         ft.committed('confluent', {bootstrap:?}, 'warm-up', 'progress', 1)",
        dir = clients_dir().to_str().expect("utf-8"),
        bootstrap = cluster.bootstrap(),
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &warm_up]);
    run("find a group coordinator", cmd, SCRIPT_TIME_MAX);
    let coordinators: Vec<i32> =
        wait_for("__consumer_offsets led", Duration::from_secs(30), || {
            let leaders: Vec<i32> = cluster
                .partitions("__consumer_offsets")?
                .iter()
                .map(|p| p.leader)
                .collect();
            (leaders.len() == 3 && leaders.iter().all(|l| *l > 0)).then_some(leaders)
        });
    let coordinator_of = |group: &str| {
        let p = group_coordinator_partition(group, coordinators.len() as u32);
        coordinators[p as usize]
    };
    let group = (0..100)
        .map(|i| format!("progress-{i}"))
        .find(|g| coordinator_of(g) == leader as i32)
        .unwrap_or_else(|| "progress-0".to_string());
    let coordinator_fails = coordinator_of(&group) == leader as i32;
    let state = dir
        .join("progress.json")
        .to_str()
        .expect("utf-8")
        .to_string();
    let resume = |cluster: &Cluster, step: &str, take: &str| {
        let bootstrap = cluster.bootstrap();
        cluster.python(
            "resume.py",
            &[
                "--client",
                "confluent",
                "--bootstrap",
                &bootstrap,
                "--topic",
                "progress",
                "--group",
                &group,
                "--state",
                &state,
                "--step",
                step,
                "--count",
                "60",
                "--take",
                take,
            ],
            SCRIPT_TIME_MAX,
        )
    };
    // The group commits before the failure, and fetches its commit after it.
    resume(&cluster, "first", "20");

    let acks = dir.join("acks.txt");
    let stop = dir.join("stop");
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join("failover_produce.py"))
        .args(["--bootstrap", &cluster.bootstrap_all(), "--topic", "stream"])
        .arg("--out")
        .arg(&acks)
        .arg("--stop-file")
        .arg(&stop)
        .args(["--max-seconds", "150", "--rate", "300"]);
    let mut producer = Proc::spawn("failover_produce.py", cmd, &dir.join("producer.log"));
    let phase = |what: &str, from: usize| {
        wait_for(
            &format!("{PHASE_ACKS} more acknowledgements {what}"),
            Duration::from_secs(60),
            || (outcome(&acks).acked >= from + PHASE_ACKS).then_some(()),
        );
    };

    phase("before the failure", 0);
    let before = outcome(&acks).acked;
    match signal {
        "KILL" => cluster.kill(leader),
        _ => {
            let status = cluster.terminate(leader);
            assert!(status.success(), "broker {leader} stopped with {status}");
        }
    }
    eprintln!(
        "{test}: broker {leader} ({signal}) led stream-0; __consumer_offsets leaders \
         {coordinators:?}; group {group} coordinated by it: {coordinator_fails}; \
         {before} acknowledged before"
    );
    phase("after the failure", before);
    let new_leader = cluster.leader("stream", 0);
    assert_ne!(new_leader, leader, "leadership moved");
    // OffsetFetch from whichever broker coordinates the group now.
    resume(&cluster, "next", "20");

    cluster.restart(leader);
    let restarted = outcome(&acks).acked;
    phase("after the restart", restarted);
    std::fs::write(&stop, b"").expect("stop file");
    let out = producer.expect_success(Duration::from_secs(120));
    let result = outcome(&acks);
    eprintln!("{test}: {}", out.trim());
    assert!(result.done, "producer finished: {out}");
    assert!(
        result.fatal.is_empty(),
        "fatal producer errors: {:?}",
        result.fatal
    );
    assert!(
        result.errors.is_empty(),
        "delivery errors surfaced to the client ({} of them): {:?}",
        result.errors.len(),
        &result.errors[..result.errors.len().min(10)]
    );

    let bootstrap = cluster.bootstrap();
    let verified = cluster.python(
        "verify_log.py",
        &[
            "--bootstrap",
            &bootstrap,
            "--topic",
            "stream",
            "--acks",
            acks.to_str().expect("utf-8"),
        ],
        SCRIPT_TIME_MAX,
    );
    assert!(verified.starts_with("OK"), "{verified}");
    if !coordinator_fails {
        // The partition's leader coordinated no group: fail the group's coordinator too, so
        // that OffsetFetch is answered by a new coordinator.
        let p = group_coordinator_partition(&group, coordinators.len() as u32) as i32;
        let coordinator = cluster.leader("__consumer_offsets", p);
        match signal {
            "KILL" => cluster.kill(coordinator),
            _ => assert!(cluster.terminate(coordinator).success()),
        }
        eprintln!("{test}: group {group}'s coordinator {coordinator} ({signal})");
        resume(&cluster, "next", "10");
        cluster.restart(coordinator);
    }
    resume(&cluster, "next", "0");

    // The restarted replica catches up: every broker reports the same log end and high
    // watermark for the partition.
    let ends = wait_for(
        &format!("broker {leader}'s replica catches up"),
        Duration::from_secs(60),
        || {
            let mut ends = Vec::new();
            for id in 1..=3 {
                let end =
                    cluster.partition_metric(id, "fjord_partition_log_end_offset", "stream", 0)?;
                let hw =
                    cluster.partition_metric(id, "fjord_partition_high_watermark", "stream", 0)?;
                ends.push((end, hw));
            }
            let first = ends[0];
            (first.0 > 0 && ends.iter().all(|e| *e == first && e.0 == e.1)).then_some(ends)
        },
    );
    eprintln!("{test}: (log end, high watermark) per broker: {ends:?}");
    drop(producer);
}

#[test]
fn leader_killed_during_acks_all_produce() {
    failover("leader_killed_during_acks_all_produce", "KILL");
}

#[test]
fn leader_stopped_gracefully_during_acks_all_produce() {
    failover("leader_stopped_gracefully_during_acks_all_produce", "TERM");
}
