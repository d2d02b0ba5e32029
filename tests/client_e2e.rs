//! fjord's own client (admin, producer, consumer, CLI commands) against an in-process
//! broker over real TCP. Every test is bounded in time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fjord::cli::{self, ConsumeArgs, ProduceArgs, TopicCommand};
use fjord::client::partitioner::partition_for_key;
use fjord::client::{
    Acks, Admin, AlterConfigOp, Client, ClientConfig, ConfigResource, Consumer, ConsumerConfig,
    NewTopic, OffsetReset, Producer, ProducerConfig, ProducerRecord, ResponseError, TopicPartition,
};
use fjord::controller::ClusterDefaults;
use fjord::runtime::server::{start_node, NodeSpec, RunningNode};
use fjord::runtime::{TcpConnector, TokioClock, TokioSpawner};
use fjord_log::Compression;
use fjord_replication::NodeId;

mod common;

/// Upper bound on any one test.
const TEST_TIME_MAX: Duration = Duration::from_secs(90);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIME_MAX, f)
        .await
        .expect("test exceeded its time bound")
}

async fn broker(dir: &std::path::Path) -> RunningNode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rpc = common::free_addr();
    let spec = NodeSpec {
        cluster_id: Some("client-e2e".into()),
        defaults: ClusterDefaults {
            default_replication_factor: 1,
            offsets_topic_replication_factor: 1,
            offsets_topic_num_partitions: 3,
            ..ClusterDefaults::default()
        },
        seed: 1,
        group: fjord::group::GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..fjord::group::GroupConfig::default()
        },
        ..NodeSpec::local(
            NodeId(1),
            dir.join("n1"),
            [(NodeId(1), rpc)].into_iter().collect(),
        )
    };
    start_node(spec).await.expect("broker starts")
}

/// A client of `node`, once the broker has registered with the controller.
async fn client(node: &RunningNode) -> Client {
    let client = Client::new(
        Arc::new(TcpConnector::default()),
        Arc::new(TokioClock::new()),
        Arc::new(TokioSpawner::current()),
        ClientConfig {
            bootstrap_servers: vec![node.kafka.local_addr().to_string()],
            request_timeout: Duration::from_secs(10),
            seed: 7,
            ..ClientConfig::default()
        },
    );
    let admin = Admin::new(&client);
    bounded(async {
        while admin.describe_cluster().await.map_or(true, |c| {
            c.brokers.is_empty() || !c.fenced_brokers.is_empty()
        }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    client
}

/// Creates `name` and waits until every partition has a leader.
async fn create_topic(client: &Client, name: &str, partitions: i32) {
    let admin = Admin::new(client);
    for (_, r) in admin
        .create_topics(&[NewTopic::new(name, partitions, 1)])
        .await
        .expect("create")
    {
        r.expect("created");
    }
    loop {
        let topics = admin
            .describe_topics(&[name.to_string()])
            .await
            .expect("describe");
        if topics[0].available_partitions().len() == partitions as usize {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_topics_and_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = broker(dir.path()).await;
    let client = client(&node).await;
    bounded(async {
        let admin = Admin::new(&client);
        let mut topic = NewTopic::new("configured", 2, 1);
        topic.configs.insert("retention.ms".into(), "60000".into());
        let created = admin.create_topics(&[topic.clone()]).await.expect("create");
        assert!(created[0].1.is_ok(), "{created:?}");
        let again = admin.create_topics(&[topic]).await.expect("create again");
        assert!(matches!(
            again[0].1,
            Err(fjord::client::Error::Broker {
                code: ResponseError::TopicAlreadyExists,
                ..
            })
        ));
        assert!(admin
            .list_topics(false)
            .await
            .expect("list")
            .contains(&"configured".to_string()));
        let described = admin
            .describe_topics(&["configured".into(), "missing".into()])
            .await
            .expect("describe");
        let by_name: BTreeMap<&str, _> = described.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(by_name["configured"].partitions.len(), 2);
        assert_eq!(by_name["configured"].partitions[&0].replicas, vec![1]);
        assert_eq!(
            by_name["missing"].error,
            Some(ResponseError::UnknownTopicOrPartition)
        );

        let resource = ConfigResource::Topic("configured".into());
        admin
            .alter_configs(
                &resource,
                &[AlterConfigOp::Set("retention.ms".into(), "1000".into())],
            )
            .await
            .expect("alter");
        let configs = admin
            .describe_configs(std::slice::from_ref(&resource))
            .await
            .expect("describe configs");
        let entries = configs[&resource].as_ref().expect("entries");
        let retention = entries
            .iter()
            .find(|e| e.name == "retention.ms")
            .expect("retention.ms listed");
        assert_eq!(retention.value.as_deref(), Some("1000"));

        let cluster = admin.describe_cluster().await.expect("cluster");
        assert_eq!(cluster.cluster_id, "client-e2e");
        assert_eq!(cluster.brokers.len(), 1);
        assert_eq!(
            cluster.brokers[0].port,
            node.kafka.local_addr().port() as i32
        );

        let deleted = admin
            .delete_topics(&["configured".into()])
            .await
            .expect("delete");
        assert!(deleted[0].1.is_ok(), "{deleted:?}");
        assert!(!admin
            .list_topics(false)
            .await
            .expect("list")
            .contains(&"configured".to_string()));
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_round_trip_in_partition_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = broker(dir.path()).await;
    let client = client(&node).await;
    bounded(async {
        create_topic(&client, "events", 3).await;
        let producer = Producer::new(
            &client,
            ProducerConfig {
                compression: Compression::Zstd,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        let count = 3000;
        let sends: Vec<_> = (0..count)
            .map(|i| {
                producer.send(
                    ProducerRecord::new("events", format!("value-{i}"))
                        .with_key(format!("key-{}", i % 17)),
                )
            })
            .collect();
        let acks = futures::future::join_all(sends).await;
        let mut expected: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
        for (i, ack) in acks.into_iter().enumerate() {
            let meta = ack.expect("acknowledged");
            let key = format!("key-{}", i % 17);
            assert_eq!(meta.partition, partition_for_key(key.as_bytes(), 3));
            expected
                .entry(meta.partition)
                .or_default()
                .push((meta.offset, format!("value-{i}")));
        }
        assert!(producer.producer_id().is_some(), "idempotent by default");
        producer.close().await;

        let mut consumer = Consumer::new(
            &client,
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                ..ConsumerConfig::default()
            },
        )
        .expect("consumer");
        consumer
            .assign((0..3).map(|p| TopicPartition::new("events", p)))
            .expect("assign");
        let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
        let mut total = 0;
        while total < count {
            for r in consumer.poll(Duration::from_secs(1)).await.expect("poll") {
                let value = String::from_utf8(r.value.expect("value").to_vec()).expect("utf8");
                got.entry(r.partition).or_default().push((r.offset, value));
                total += 1;
            }
        }
        assert_eq!(
            got, expected,
            "every record once, at its acknowledged offset, in order"
        );
        // Nothing more arrives.
        assert!(consumer
            .poll(Duration::from_millis(300))
            .await
            .expect("poll")
            .is_empty());
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_one_and_zero_producers_deliver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = broker(dir.path()).await;
    let client = client(&node).await;
    bounded(async {
        create_topic(&client, "plain", 1).await;
        for acks in [Acks::Leader, Acks::None] {
            let producer = Producer::new(
                &client,
                ProducerConfig {
                    acks,
                    idempotence: false,
                    ..ProducerConfig::default()
                },
            )
            .expect("producer");
            let sends: Vec<_> = (0..50)
                .map(|i| producer.send(ProducerRecord::new("plain", format!("{acks:?}-{i}"))))
                .collect();
            for r in futures::future::join_all(sends).await {
                r.expect("sent");
            }
            producer.close().await;
        }
        let mut consumer = Consumer::new(
            &client,
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                ..ConsumerConfig::default()
            },
        )
        .expect("consumer");
        consumer
            .assign([TopicPartition::new("plain", 0)])
            .expect("assign");
        let mut values = Vec::new();
        while values.len() < 100 {
            for r in consumer.poll(Duration::from_secs(1)).await.expect("poll") {
                values.push(String::from_utf8(r.value.expect("v").to_vec()).expect("utf8"));
            }
        }
        assert_eq!(values[0], "Leader-0");
        assert_eq!(values[99], "None-49");
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_produce_and_consume_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = broker(dir.path()).await;
    let client = client(&node).await;
    bounded(async {
        let mut out = Vec::new();
        cli::topic(
            &client,
            TopicCommand::Create {
                name: "lines".into(),
                partitions: Some(2),
                replication_factor: Some(1),
                configs: vec![("cleanup.policy".into(), "delete".into())],
                if_not_exists: false,
            },
            &mut out,
        )
        .await
        .expect("create");
        assert_eq!(String::from_utf8_lossy(&out), "Created topic lines.\n");

        let lines: Vec<std::io::Result<String>> = (0..100)
            .map(|i| Ok(format!("k{}:line {i}", i % 5)))
            .collect();
        let args = ProduceArgs {
            topic: "lines".into(),
            key: None,
            key_separator: Some(":".into()),
            partition: None,
            acks: Acks::All,
            compression: Compression::Gzip,
            linger_ms: 5,
            batch_size: 16 * 1024,
            no_idempotence: false,
        };
        let mut err = Vec::new();
        let summary = cli::produce(&client, &args, futures::stream::iter(lines), &mut err)
            .await
            .expect("produce");
        assert_eq!((summary.acknowledged, summary.failed), (100, 0));
        assert!(err.is_empty());

        let args = ConsumeArgs {
            topic: "lines".into(),
            group: None,
            from_beginning: true,
            max_messages: Some(100),
            timeout_ms: Some(20_000),
            print_key: true,
            verbose: false,
            assignors: Vec::new(),
        };
        let mut out = Vec::new();
        let printed = cli::consume(&client, &args, &mut out, futures::future::pending())
            .await
            .expect("consume");
        assert_eq!(printed, 100);
        let text = String::from_utf8(out).expect("utf8");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let mut expected: Vec<String> = (0..100).map(|i| format!("k{}\tline {i}", i % 5)).collect();
        expected.sort_unstable();
        assert_eq!(lines, expected);

        // With nothing new, --timeout-ms ends the command.
        let args = ConsumeArgs {
            from_beginning: false,
            max_messages: None,
            timeout_ms: Some(500),
            ..args
        };
        let printed = cli::consume(&client, &args, &mut Vec::new(), futures::future::pending())
            .await
            .expect("consume");
        assert_eq!(printed, 0);

        let mut out = Vec::new();
        cli::topic(
            &client,
            TopicCommand::Describe {
                names: vec!["lines".into()],
            },
            &mut out,
        )
        .await
        .expect("describe");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.starts_with("Topic: lines\tPartitionCount: 2"),
            "{text}"
        );
        assert!(text.contains("cleanup.policy=delete"), "{text}");
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;
}

/// Polls `consumer` until it has `n` records; returns their values.
async fn poll_values(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut values = Vec::new();
    while values.len() < n {
        for r in consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
        {
            values.push(String::from_utf8(r.value.expect("value").to_vec()).expect("utf8"));
        }
    }
    values
}

fn group_config(group: &str, assignors: Vec<fjord::client::AssignorKind>) -> ConsumerConfig {
    ConsumerConfig {
        group_id: Some(group.to_string()),
        auto_offset_reset: OffsetReset::Earliest,
        heartbeat_interval: Duration::from_millis(300),
        session_timeout: Duration::from_secs(10),
        assignors,
        ..ConsumerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rebalances_between_two_members_and_back() {
    use fjord::client::AssignorKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = broker(dir.path()).await;
    let client_a = client(&node).await;
    let client_b = client(&node).await;
    bounded(async {
        create_topic(&client_a, "shared", 4).await;
        for assignors in [
            vec![AssignorKind::Range],
            vec![AssignorKind::CooperativeSticky],
        ] {
            let group = format!("g-{}", assignors[0].name());
            let mut a =
                Consumer::new(&client_a, group_config(&group, assignors.clone())).expect("a");
            let mut b = Consumer::new(&client_b, group_config(&group, assignors)).expect("b");
            a.subscribe(["shared"]).expect("subscribe");
            b.subscribe(["shared"]).expect("subscribe");
            while a.assignment().len() != 4 {
                a.poll(Duration::from_millis(200)).await.expect("a");
            }
            // b joins: both poll (as two processes would) until the partitions are split.
            let done = std::sync::atomic::AtomicBool::new(false);
            let state = std::sync::Mutex::new((a.assignment(), b.assignment()));
            let run_a = async {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    a.poll(Duration::from_millis(200)).await.expect("a polls");
                    let mut st = state.lock().unwrap();
                    st.0 = a.assignment();
                    assert!(st.0.is_disjoint(&st.1), "a partition owned twice: {st:?}");
                }
            };
            let run_b = async {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    b.poll(Duration::from_millis(200)).await.expect("b polls");
                    let mut st = state.lock().unwrap();
                    st.1 = b.assignment();
                    if st.0.len() == 2 && st.1.len() == 2 && st.0.is_disjoint(&st.1) {
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            };
            futures::join!(run_a, run_b);
            let (ga, _) = a.membership().expect("a joined");
            let (gb, _) = b.membership().expect("b joined");
            assert_eq!(ga, gb, "same generation");
            // b leaves; a gets everything back.
            b.close().await.expect("b leaves");
            while a.assignment().len() != 4 {
                a.poll(Duration::from_millis(200)).await.expect("a");
            }
            a.close().await.expect("a leaves");
        }
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_are_resumed_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = broker(dir.path()).await;
    let client = client(&node).await;
    bounded(async {
        create_topic(&client, "resume", 2).await;
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        let send_all = |range: std::ops::Range<usize>| {
            let sends: Vec<_> = range
                .map(|i| producer.send(ProducerRecord::new("resume", format!("r{i}"))))
                .collect();
            futures::future::join_all(sends)
        };
        for r in send_all(0..40).await {
            r.expect("sent");
        }
        let config = ConsumerConfig {
            enable_auto_commit: false,
            ..group_config("resumer", vec![fjord::client::AssignorKind::Range])
        };
        let mut first = Consumer::new(&client, config.clone()).expect("consumer");
        first.subscribe(["resume"]).expect("subscribe");
        let mut seen = poll_values(&mut first, 40).await;
        first.commit_sync().await.expect("commit");
        first.close().await.expect("close");

        for r in send_all(40..60).await {
            r.expect("sent");
        }
        let mut second = Consumer::new(&client, config).expect("consumer");
        second.subscribe(["resume"]).expect("subscribe");
        let rest = poll_values(&mut second, 20).await;
        let committed = second
            .committed(&[
                TopicPartition::new("resume", 0),
                TopicPartition::new("resume", 1),
            ])
            .await
            .expect("committed");
        let total: i64 = committed.values().map(|o| o.expect("committed")).sum();
        assert!(total >= 40, "{committed:?}");
        seen.extend(rest);
        seen.sort();
        let mut expected: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
        expected.sort();
        assert_eq!(
            seen, expected,
            "the restarted member resumed where the first committed"
        );
        assert!(second
            .poll(Duration::from_millis(300))
            .await
            .expect("poll")
            .is_empty());
        second.close().await.expect("close");
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;
}
