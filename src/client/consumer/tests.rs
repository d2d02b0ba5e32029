//! The consumer against in-memory brokers (logs and a group coordinator) over the real
//! connection loop, in virtual time.

use std::sync::Arc;
use std::time::Duration;

use fjord_replication::Clock;

use super::*;
use crate::client::cluster::ClientConfig;
use crate::client::producer::{Producer, ProducerConfig, ProducerRecord};
use crate::client::testkit::{MiniCluster, StubNetwork, TestEnv};

struct Setup {
    env: TestEnv,
    net: Arc<StubNetwork>,
    cluster: Arc<MiniCluster>,
}

fn setup(topics: &[(&str, i32)]) -> Setup {
    let env = TestEnv::new();
    let net = StubNetwork::new(&env);
    let cluster = MiniCluster::start(&net, &env.clock, &[(1, "b1:9092")], topics);
    Setup { env, net, cluster }
}

impl Setup {
    fn client(&self, seed: u64) -> Client {
        self.env.client(
            &self.net,
            ClientConfig {
                bootstrap_servers: vec!["b1:9092".into()],
                request_timeout: Duration::from_secs(5),
                seed,
                ..ClientConfig::default()
            },
        )
    }

    /// Produces `values` to `topic`-`partition` through a fresh producer.
    fn produce(&mut self, topic: &str, partition: i32, values: &[String]) {
        let client = self.client(99);
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        let sends: Vec<_> = values
            .iter()
            .map(|v| producer.send(ProducerRecord::new(topic, v.clone()).with_partition(partition)))
            .collect();
        for r in self.env.run(futures::future::join_all(sends)) {
            r.expect("produced");
        }
    }

    /// Polls until `n` records arrived (or panics after `limit` of virtual time).
    fn poll_n(&mut self, consumer: &mut Consumer, n: usize) -> Vec<ConsumerRecord> {
        self.env.run_for(Duration::from_secs(120), async {
            let mut out = Vec::new();
            while out.len() < n {
                out.extend(consumer.poll(Duration::from_secs(1)).await.expect("poll"));
            }
            out
        })
    }
}

type Assigned = BTreeSet<TopicPartition>;

/// Polls two consumers in loops of their own (as two processes would) until `done` holds
/// for their assignments; `observe` sees every state in between.
fn run_both(
    env: &mut TestEnv,
    a: &mut Consumer,
    b: &mut Consumer,
    done: impl Fn(&Assigned, &Assigned) -> bool,
    mut observe: impl FnMut(&Assigned, &Assigned),
) {
    let state = std::cell::RefCell::new((a.assignment(), b.assignment()));
    let finished = |st: &(Assigned, Assigned)| done(&st.0, &st.1);
    env.run_for(Duration::from_secs(120), async {
        let run_a = async {
            while !finished(&state.borrow()) {
                a.poll(Duration::from_millis(200)).await.expect("a polls");
                state.borrow_mut().0 = a.assignment();
                let st = state.borrow();
                observe(&st.0, &st.1);
            }
        };
        let run_b = async {
            while !finished(&state.borrow()) {
                b.poll(Duration::from_millis(200)).await.expect("b polls");
                state.borrow_mut().1 = b.assignment();
            }
        };
        futures::join!(run_a, run_b);
    });
}

fn values(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("v{i}")).collect()
}

fn strings(records: &[ConsumerRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| fetcher::tests::value_str(&r.value))
        .collect()
}

fn config(group: Option<&str>) -> ConsumerConfig {
    ConsumerConfig {
        group_id: group.map(str::to_string),
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    }
}

#[test]
fn an_assigned_consumer_reads_in_order_and_seeks() {
    let mut s = setup(&[("t", 1)]);
    s.produce("t", 0, &values(0..10));
    let client = s.client(1);
    let mut c = Consumer::new(&client, config(None)).expect("consumer");
    c.assign([TopicPartition::new("t", 0)]).expect("assign");
    let records = s.poll_n(&mut c, 10);
    assert_eq!(strings(&records), values(0..10));
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..10).collect::<Vec<i64>>()
    );
    assert_eq!(c.position(&TopicPartition::new("t", 0)), Some(10));
    assert_eq!(c.high_watermark(&TopicPartition::new("t", 0)), Some(10));
    // The stored batch starts at 0; from 5 the records before are skipped.
    c.seek(&TopicPartition::new("t", 0), 5).expect("seek");
    assert_eq!(strings(&s.poll_n(&mut c, 5)), values(5..10));
    // Nothing new: an empty poll after max_wait.
    let start = s.env.now();
    let empty = s.env.run(c.poll(Duration::from_secs(2))).expect("poll");
    assert!(empty.is_empty());
    assert!(s.env.now().saturating_duration_since(start) >= Duration::from_secs(2));
    let commit = s.env.run(c.commit_sync());
    assert!(
        matches!(commit, Err(Error::InvalidArgument(_))),
        "no group: {commit:?}"
    );
}

#[test]
fn latest_starts_at_the_end_and_out_of_range_resets() {
    let mut s = setup(&[("t", 1)]);
    s.produce("t", 0, &values(0..3));
    let client = s.client(1);
    let mut c = Consumer::new(
        &client,
        ConsumerConfig {
            auto_offset_reset: OffsetReset::Latest,
            ..config(None)
        },
    )
    .expect("consumer");
    c.assign([TopicPartition::new("t", 0)]).expect("assign");
    assert!(s
        .env
        .run(c.poll(Duration::from_secs(1)))
        .expect("poll")
        .is_empty());
    assert_eq!(c.position(&TopicPartition::new("t", 0)), Some(3));
    s.produce("t", 0, &values(3..5));
    assert_eq!(strings(&s.poll_n(&mut c, 2)), values(3..5));
    // Beyond the end: OFFSET_OUT_OF_RANGE, reset to latest.
    c.seek(&TopicPartition::new("t", 0), 100).expect("seek");
    assert!(s
        .env
        .run(c.poll(Duration::from_secs(1)))
        .expect("poll")
        .is_empty());
    assert_eq!(c.position(&TopicPartition::new("t", 0)), Some(5));
    // No reset policy: an error.
    let mut strict = Consumer::new(
        &client,
        ConsumerConfig {
            auto_offset_reset: OffsetReset::None,
            ..config(None)
        },
    )
    .expect("consumer");
    strict
        .assign([TopicPartition::new("t", 0)])
        .expect("assign");
    let result = s.env.run(strict.poll(Duration::from_secs(1)));
    assert!(
        matches!(result, Err(Error::NoOffsetForPartition { .. })),
        "{result:?}"
    );
}

#[test]
fn a_group_member_commits_and_a_restarted_member_resumes() {
    let mut s = setup(&[("t", 2)]);
    s.produce("t", 0, &values(0..4));
    s.produce("t", 1, &values(4..6));
    let client = s.client(1);
    let mut c = Consumer::new(&client, config(Some("g"))).expect("consumer");
    c.subscribe(["t"]).expect("subscribe");
    let records = s.poll_n(&mut c, 6);
    assert_eq!(records.len(), 6);
    assert_eq!(c.assignment().len(), 2);
    let (generation, member) = c.membership().expect("joined");
    assert_eq!(generation, 1);
    assert!(
        member.starts_with("member-"),
        "member id came from MEMBER_ID_REQUIRED"
    );
    s.env.run(c.commit_sync()).expect("committed");
    assert_eq!(
        s.cluster.state().groups["g"].offsets[&("t".to_string(), 0)],
        4
    );
    assert_eq!(
        s.cluster.state().groups["g"].offsets[&("t".to_string(), 1)],
        2
    );
    s.env.run(c.close()).expect("closed");

    s.produce("t", 0, &values(6..8));
    let client = s.client(2);
    let mut again = Consumer::new(&client, config(Some("g"))).expect("consumer");
    again.subscribe(["t"]).expect("subscribe");
    let records = s.poll_n(&mut again, 2);
    assert_eq!(
        strings(&records),
        values(6..8),
        "resumed after the committed offsets"
    );
    let committed = s
        .env
        .run(again.committed(&[TopicPartition::new("t", 0), TopicPartition::new("t", 1)]))
        .expect("committed");
    assert_eq!(committed[&TopicPartition::new("t", 0)], Some(4));
}

#[test]
fn two_eager_members_split_the_partitions_and_reclaim_them_on_leave() {
    let mut s = setup(&[("t", 4)]);
    let ca = s.client(1);
    let cb = s.client(2);
    let range = ConsumerConfig {
        assignors: vec![AssignorKind::Range],
        ..config(Some("g"))
    };
    let mut a = Consumer::new(&ca, range.clone()).expect("a");
    let mut b = Consumer::new(&cb, range).expect("b");
    a.subscribe(["t"]).expect("subscribe");
    b.subscribe(["t"]).expect("subscribe");
    s.env.run(a.poll(Duration::from_secs(1))).expect("poll");
    assert_eq!(a.assignment().len(), 4);
    // b joins; a learns of the rebalance from a heartbeat and rejoins.
    run_both(
        &mut s.env,
        &mut a,
        &mut b,
        |a, b| a.len() == 2 && b.len() == 2,
        |_, _| {},
    );
    let mut all = a.assignment();
    all.extend(b.assignment());
    assert_eq!(all.len(), 4, "disjoint and complete");
    assert_eq!(s.cluster.state().groups["g"].protocol, "range");
    // b leaves; a takes everything back.
    s.env.run(b.close()).expect("b closed");
    s.env.run_for(Duration::from_secs(60), async {
        while a.assignment().len() != 4 {
            a.poll(Duration::from_secs(1)).await.expect("a");
        }
    });
    s.produce("t", 3, &values(0..2));
    assert_eq!(strings(&s.poll_n(&mut a, 2)), values(0..2));
}

#[test]
fn cooperative_members_hand_over_partitions_incrementally() {
    let mut s = setup(&[("t", 4)]);
    let ca = s.client(1);
    let cb = s.client(2);
    let cooperative = ConsumerConfig {
        assignors: vec![AssignorKind::CooperativeSticky],
        ..config(Some("g"))
    };
    let mut a = Consumer::new(&ca, cooperative.clone()).expect("a");
    let mut b = Consumer::new(&cb, cooperative).expect("b");
    a.subscribe(["t"]).expect("subscribe");
    b.subscribe(["t"]).expect("subscribe");
    s.env.run(a.poll(Duration::from_secs(1))).expect("poll");
    let before = a.assignment();
    assert_eq!(before.len(), 4);
    let mut a_sizes = Vec::new();
    run_both(
        &mut s.env,
        &mut a,
        &mut b,
        |a, b| a.len() == 2 && b.len() == 2,
        |a_now, b_now| {
            a_sizes.push(a_now.len());
            assert!(a_now.is_subset(&before), "a only ever gives up partitions");
            assert!(a_now.is_disjoint(b_now), "no partition is owned twice");
        },
    );
    assert!(
        !a_sizes.contains(&0),
        "a never revoked everything: {a_sizes:?}"
    );
    let rebalances = s.cluster.state().groups["g"].rebalances;
    assert!(rebalances >= 3, "join, revoke, hand over: {rebalances}");
    assert_eq!(s.cluster.state().groups["g"].protocol, "cooperative-sticky");
}

#[test]
fn a_member_that_stops_polling_leaves_the_group() {
    let mut s = setup(&[("t", 2)]);
    let client = s.client(1);
    let mut c = Consumer::new(
        &client,
        ConsumerConfig {
            max_poll_interval: Duration::from_secs(30),
            ..config(Some("g"))
        },
    )
    .expect("consumer");
    c.subscribe(["t"]).expect("subscribe");
    s.env.run(c.poll(Duration::from_secs(1))).expect("poll");
    assert!(c.membership().is_some());
    assert_eq!(s.cluster.state().groups["g"].members_count(), 1);
    // No poll for longer than max_poll_interval: the heartbeat task leaves.
    s.env.run(s.env.clock.sleep(Duration::from_secs(40)));
    assert_eq!(s.cluster.state().groups["g"].members_count(), 0);
    assert!(c.membership().is_none());
    // The next poll rejoins.
    s.env.run(c.poll(Duration::from_secs(1))).expect("poll");
    assert_eq!(s.cluster.state().groups["g"].members_count(), 1);
    assert_eq!(c.assignment().len(), 2);
}
