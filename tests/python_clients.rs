//! kafka-python and confluent-kafka (librdkafka) against a `fjord broker` process, through the
//! scripts in tests/clients/ (each exits non-zero with `FAIL: …` when a check fails): keyed
//! produce with acks=all read back, idempotent producers, a consumer group rebalancing when a
//! member leaves, committed offsets resumed after a consumer restart and a broker restart.

mod common;

use std::time::Duration;

use common::{clients_available, Cluster, Tool};

const SCRIPT_TIME_MAX: Duration = Duration::from_secs(120);

fn tool(client: &str) -> Tool {
    match client {
        "kafka-python" => Tool::KafkaPython,
        _ => Tool::ConfluentKafka,
    }
}

/// A broker with `topic` of `partitions` created, or None if the client is missing.
fn setup(test: &str, client: &str, topic: &str, partitions: u32) -> Option<Cluster> {
    if !clients_available(test, &[tool(client)]) {
        return None;
    }
    let cluster = Cluster::single();
    cluster.create_topic(topic, partitions, 1);
    Some(cluster)
}

fn keyed_produce(client: &str, idempotent: bool) {
    let test = format!("{client} keyed produce (idempotent: {idempotent})");
    let Some(cluster) = setup(&test, client, "keyed", 3) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    let mut args = vec![
        "--client",
        client,
        "--bootstrap",
        &bootstrap,
        "--topic",
        "keyed",
        "--partitions",
        "3",
        "--count",
        "2000",
    ];
    if idempotent {
        args.push("--idempotent");
    }
    let out = cluster.python("produce_consume.py", &args, SCRIPT_TIME_MAX);
    assert!(out.contains("OK produced=2000 read=2000"), "{out}");
}

fn group_rebalance(client: &str) {
    let test = format!("{client} group rebalance");
    let Some(cluster) = setup(&test, client, "grouped", 6) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    let out = cluster.python(
        "group.py",
        &[
            "--client",
            client,
            "--bootstrap",
            &bootstrap,
            "--topic",
            "grouped",
            "--partitions",
            "6",
            "--members",
            "3",
        ],
        SCRIPT_TIME_MAX,
    );
    assert!(out.contains("OK members=3 read=600"), "{out}");
}

/// Commits survive a consumer restart (a new consumer per step) and a broker restart
/// (`signal`: TERM for a graceful stop, KILL for a crash).
fn offsets_resume(client: &str, signal: &str) {
    let test = format!("{client} committed offsets resume");
    let Some(mut cluster) = setup(&test, client, "resumed", 1) else {
        return;
    };
    let state = cluster.dir.path().join("resume.json");
    let state = state.to_str().expect("utf-8 path").to_string();
    let step = |cluster: &Cluster, step: &str, take: &str| {
        let bootstrap = cluster.bootstrap();
        cluster.python(
            "resume.py",
            &[
                "--client",
                client,
                "--bootstrap",
                &bootstrap,
                "--topic",
                "resumed",
                "--state",
                &state,
                "--step",
                step,
                "--count",
                "100",
                "--take",
                take,
            ],
            SCRIPT_TIME_MAX,
        )
    };
    assert!(step(&cluster, "first", "30").contains("read v0..v29"));
    assert!(step(&cluster, "next", "30").contains("read v30..v59"));
    match signal {
        "KILL" => cluster.kill(1),
        _ => assert!(cluster.terminate(1).success(), "graceful stop"),
    }
    cluster.restart(1);
    assert!(step(&cluster, "next", "0").contains("read v60..v99"));
}

#[test]
fn kafka_python_keyed_produce_acks_all() {
    keyed_produce("kafka-python", false);
}

#[test]
fn confluent_keyed_produce_acks_all() {
    keyed_produce("confluent", false);
}

#[test]
fn kafka_python_idempotent_producer() {
    keyed_produce("kafka-python", true);
}

#[test]
fn confluent_idempotent_producer() {
    keyed_produce("confluent", true);
}

#[test]
fn kafka_python_group_rebalances_when_a_member_leaves() {
    group_rebalance("kafka-python");
}

#[test]
fn confluent_group_rebalances_when_a_member_leaves() {
    group_rebalance("confluent");
}

#[test]
fn kafka_python_offsets_resume_after_consumer_and_broker_restart() {
    offsets_resume("kafka-python", "TERM");
}

#[test]
fn confluent_offsets_resume_after_consumer_and_broker_crash() {
    offsets_resume("confluent", "KILL");
}
