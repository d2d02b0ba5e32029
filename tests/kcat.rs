//! kcat (librdkafka) against a `fjord broker` process: keyed produce with acks=all read back
//! in order, and a balanced consumer group (`-G`) whose two members split the partitions and
//! hand them over when one leaves.
#![allow(
    clippy::disallowed_methods,
    reason = "these tests drive real processes and wait on real time"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{clients_available, run, wait_for, Cluster, Proc, Tool};

const KCAT_TIME_MAX: Duration = Duration::from_secs(60);

/// `kcat -P` of `lines` ("key:value") with acks=all.
fn produce(cluster: &Cluster, topic: &str, lines: &[String], dir: &Path) {
    let input = dir.join(format!("{topic}.input"));
    std::fs::write(&input, lines.join("\n") + "\n").expect("write input");
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", &cluster.bootstrap(), "-t", topic, "-P", "-K", ":"])
        .args(["-X", "acks=all", "-l"])
        .arg(&input);
    run("kcat -P", cmd, KCAT_TIME_MAX);
}

/// One consumed record: partition, offset, key, value.
type Rec = (i32, i64, String, String);

fn parse(line: &str) -> Option<Rec> {
    let mut f = line.strip_prefix("MSG ")?.splitn(4, ' ');
    Some((
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.to_string(),
        f.next()?.to_string(),
    ))
}

#[test]
fn kcat_produce_and_consume() {
    if !clients_available("kcat_produce_and_consume", &[Tool::Kcat]) {
        return;
    }
    let cluster = Cluster::single();
    cluster.create_topic("kc", 3, 1);
    let lines: Vec<String> = (0..300).map(|i| format!("k{}:v{i}", i % 10)).collect();
    produce(&cluster, "kc", &lines, cluster.dir.path());

    let mut cmd = Command::new("kcat");
    cmd.args([
        "-b",
        &cluster.bootstrap(),
        "-t",
        "kc",
        "-C",
        "-o",
        "beginning",
        "-e",
    ])
    .args(["-q", "-f", "MSG %p %o %k %s\\n"]);
    let out = run("kcat -C", cmd, KCAT_TIME_MAX);
    let recs: Vec<Rec> = out.lines().filter_map(parse).collect();
    assert_eq!(recs.len(), 300, "records read back:\n{out}");

    // Every value once; a key always in one partition; per partition, offsets rise and
    // each key's values come in the order they were sent.
    let values: BTreeSet<&str> = recs.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(values.len(), 300, "a value read twice");
    let mut key_partition: BTreeMap<&str, i32> = BTreeMap::new();
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_value: BTreeMap<&str, u32> = BTreeMap::new();
    for (p, o, k, v) in &recs {
        assert_eq!(
            *key_partition.entry(k).or_insert(*p),
            *p,
            "key {k} in two partitions"
        );
        let n: u32 = v[1..].parse().expect("value vN");
        assert_eq!(format!("k{}", n % 10), *k, "value {v} under key {k}");
        if let Some(prev) = last_offset.insert(*p, *o) {
            assert!(*o > prev, "partition {p}: offset {o} after {prev}");
        }
        if let Some(prev) = last_value.insert(k, n) {
            assert!(n > prev, "key {k}: v{n} after v{prev}");
        }
    }
    assert!(last_offset.len() > 1, "ten keys all in one partition");
}

/// A `kcat -G` member: its records (stdout) and rebalance notices (stderr).
struct Member {
    proc: Proc,
    out: std::path::PathBuf,
}

impl Member {
    fn start(cluster: &Cluster, name: &str, topic: &str) -> Member {
        let out = cluster.dir.path().join(format!("{name}.out"));
        let err = cluster.dir.path().join(format!("{name}.err"));
        let mut cmd = Command::new("kcat");
        cmd.args(["-b", &cluster.bootstrap(), "-G", "kg-group", "-u"])
            .args(["-X", "auto.offset.reset=earliest"])
            .args(["-X", "heartbeat.interval.ms=500"])
            .args(["-X", "session.timeout.ms=6000"])
            .args(["-f", "MSG %p %o %k %s\\n", topic]);
        Member {
            proc: Proc::spawn_split(name, cmd, &out, &err),
            out,
        }
    }

    fn records(&self) -> Vec<Rec> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(parse)
            .collect()
    }

    /// The partitions of the last rebalance notice, if it assigned some.
    fn assigned(&self) -> Option<BTreeSet<i32>> {
        let log = self.proc.output();
        let last = log.lines().rfind(|l| l.contains("rebalanced"))?;
        let list = last.split("assigned:").nth(1)?;
        Some(
            list.split(',')
                .filter_map(|p| {
                    p.split('[')
                        .nth(1)?
                        .trim_end_matches(']')
                        .trim()
                        .parse()
                        .ok()
                })
                .collect(),
        )
    }
}

#[test]
fn kcat_balanced_group_splits_partitions() {
    if !clients_available("kcat_balanced_group_splits_partitions", &[Tool::Kcat]) {
        return;
    }
    let cluster = Cluster::single();
    cluster.create_topic("kg", 4, 1);
    let a = Member::start(&cluster, "a", "kg");
    let b = Member::start(&cluster, "b", "kg");
    let all: BTreeSet<i32> = (0..4).collect();
    let (pa, pb) = wait_for(
        "two members with two partitions each",
        KCAT_TIME_MAX,
        || {
            let (pa, pb) = (a.assigned()?, b.assigned()?);
            (pa.len() == 2
                && pb.len() == 2
                && pa.union(&pb).copied().collect::<BTreeSet<_>>() == all)
                .then_some((pa, pb))
        },
    );

    let lines: Vec<String> = (0..200).map(|i| format!("k{i}:v{i}")).collect();
    produce(&cluster, "kg", &lines, cluster.dir.path());
    wait_for("200 records consumed", KCAT_TIME_MAX, || {
        (a.records().len() + b.records().len() >= 200).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ra, rb) = (a.records(), b.records());
    assert!(
        ra.iter().all(|r| pa.contains(&r.0)),
        "a read outside {pa:?}: {ra:?}"
    );
    assert!(
        rb.iter().all(|r| pb.contains(&r.0)),
        "b read outside {pb:?}: {rb:?}"
    );
    assert!(!ra.is_empty() && !rb.is_empty(), "one member read nothing");
    let mut values: Vec<&str> = ra.iter().chain(&rb).map(|r| r.3.as_str()).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(ra.len() + rb.len(), 200, "records read twice");
    assert_eq!(values.len(), 200);

    // b leaves (SIGTERM: kcat commits and leaves the group): a takes every partition and
    // reads what comes next, nothing of it twice and none of the first 200 again.
    let mut b = b;
    b.proc.signal("TERM");
    b.proc
        .wait(Duration::from_secs(20))
        .expect("kcat -G stops on SIGTERM");
    wait_for("a owns every partition", KCAT_TIME_MAX, || {
        (a.assigned()? == all).then_some(())
    });
    let before = a.records().len();
    let more: Vec<String> = (200..300).map(|i| format!("k{i}:v{i}")).collect();
    produce(&cluster, "kg", &more, cluster.dir.path());
    wait_for("100 more records consumed by a", KCAT_TIME_MAX, || {
        (a.records().len() >= before + 100).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let later: Vec<Rec> = a.records().split_off(before);
    let mut values: Vec<u32> = later.iter().map(|r| r.3[1..].parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (200..300).collect::<Vec<_>>(), "after the handover");
}
