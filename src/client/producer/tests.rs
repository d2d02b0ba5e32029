//! The producer against in-memory brokers over the real connection loop (`serve_connection`),
//! in virtual time.

use std::sync::Arc;
use std::time::Duration;

use fjord_log::Compression;

use super::*;
use crate::client::cluster::ClientConfig;
use crate::client::partitioner::partition_for_key;
use crate::client::testkit::{Fault, MiniCluster, StubNetwork, TestEnv};

fn client_config(servers: &[&str]) -> ClientConfig {
    ClientConfig {
        bootstrap_servers: servers.iter().map(|s| s.to_string()).collect(),
        request_timeout: Duration::from_secs(1),
        seed: 11,
        ..ClientConfig::default()
    }
}

struct Setup {
    env: TestEnv,
    net: Arc<StubNetwork>,
    cluster: Arc<MiniCluster>,
    client: Client,
}

fn setup(brokers: &[(i32, &str)], topics: &[(&str, i32)]) -> Setup {
    let env = TestEnv::new();
    let net = StubNetwork::new(&env);
    let cluster = MiniCluster::start(&net, &env.clock, brokers, topics);
    let client = env.client(&net, client_config(&[brokers[0].1]));
    Setup {
        env,
        net,
        cluster,
        client,
    }
}

#[test]
fn keyed_records_land_on_murmur2_partitions_in_send_order() {
    let mut s = setup(&[(1, "b1:9092")], &[("orders", 3)]);
    let producer = Producer::new(&s.client, ProducerConfig::default()).expect("producer");
    let futures: Vec<_> = (0..60)
        .map(|i| {
            let key = format!("key-{}", i % 7);
            producer.send(ProducerRecord::new("orders", format!("v{i}")).with_key(key))
        })
        .collect();
    let results = s.env.run(futures::future::join_all(futures));
    for (i, r) in results.iter().enumerate() {
        let meta = r.as_ref().expect("acknowledged");
        let key = format!("key-{}", i % 7);
        assert_eq!(meta.partition, partition_for_key(key.as_bytes(), 3));
    }
    for p in 0..3 {
        let stored = s.cluster.values("orders", p);
        let expected: Vec<String> = (0..60)
            .filter(|i| partition_for_key(format!("key-{}", i % 7).as_bytes(), 3) == p)
            .map(|i| format!("v{i}"))
            .collect();
        let got: Vec<String> = stored
            .iter()
            .map(|(_, v)| String::from_utf8(v.clone().expect("value").to_vec()).expect("utf8"))
            .collect();
        assert_eq!(got, expected, "partition {p} in send order");
        let offsets: Vec<i64> = stored.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
    assert!(
        s.cluster.state().produce_requests <= 3,
        "records were batched: {} requests",
        s.cluster.state().produce_requests
    );
    assert_eq!(producer.producer_id(), Some((1000, 0)));
}

#[test]
fn a_timed_out_request_is_retried_with_its_sequence_and_written_once() {
    let mut s = setup(&[(1, "b1:9092")], &[("t", 1)]);
    s.cluster.state().faults.push_back(Fault::AppendThenHang);
    let producer = Producer::new(&s.client, ProducerConfig::default()).expect("producer");
    let meta = s
        .env
        .run(producer.send(ProducerRecord::new("t", "once").with_partition(0)))
        .expect("acknowledged after the retry");
    assert_eq!(
        meta.offset, 0,
        "the broker answered the retry with the original offset"
    );
    let stored = s.cluster.values("t", 0);
    assert_eq!(stored.len(), 1, "written exactly once: {stored:?}");
    assert_eq!(s.cluster.state().produce_requests, 2);
    assert!(
        s.net.connects.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the timed-out connection was replaced"
    );
}

#[test]
fn not_leader_refreshes_metadata_and_follows_the_new_leader() {
    let mut s = setup(&[(1, "b1:9092"), (2, "b2:9092")], &[("t", 2)]);
    let producer = Producer::new(&s.client, ProducerConfig::default()).expect("producer");
    s.env
        .run(producer.send(ProducerRecord::new("t", "a").with_partition(1)))
        .expect("first");
    let metadata_before = s.cluster.state().metadata_requests;
    // Leadership moves to broker 2; broker 1 now answers NOT_LEADER_OR_FOLLOWER.
    s.cluster.state().leader = 2;
    let meta = s
        .env
        .run(producer.send(ProducerRecord::new("t", "b").with_partition(1)))
        .expect("second, via the new leader");
    assert_eq!(meta.offset, 1);
    assert!(s.cluster.state().metadata_requests > metadata_before);
    assert_eq!(s.client.metadata().leader("t", 1), Some(2));
}

#[test]
fn records_never_answered_are_indeterminate_not_lost() {
    let mut s = setup(&[(1, "b1:9092")], &[("t", 1)]);
    for _ in 0..100 {
        s.cluster.state().faults.push_back(Fault::AppendThenHang);
    }
    let config = ProducerConfig {
        delivery_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&s.client, config).expect("producer");
    let result = s
        .env
        .run(producer.send(ProducerRecord::new("t", "x").with_partition(0)));
    let err = result.expect_err("never acknowledged");
    assert!(err.is_indeterminate(), "{err:?}");
    assert_eq!(
        s.cluster.values("t", 0).len(),
        1,
        "deduplicated across retries"
    );
}

#[test]
fn an_unreachable_leader_fails_definitely_after_the_delivery_timeout() {
    let mut s = setup(&[(1, "b1:9092"), (2, "b2:9092")], &[("t", 1)]);
    s.cluster.state().leader = 2;
    s.net.stop("b2:9092");
    let config = ProducerConfig {
        delivery_timeout: Duration::from_secs(3),
        idempotence: false,
        acks: Acks::Leader,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&s.client, config).expect("producer");
    let result = s
        .env
        .run(producer.send(ProducerRecord::new("t", "x").with_partition(0)));
    assert_eq!(result, Err(ProduceError::TimedOut));
}

#[test]
fn a_lost_producer_state_bumps_the_epoch() {
    let mut s = setup(&[(1, "b1:9092")], &[("t", 1)]);
    let producer = Producer::new(&s.client, ProducerConfig::default()).expect("producer");
    s.env
        .run(producer.send(ProducerRecord::new("t", "a").with_partition(0)))
        .expect("first");
    s.cluster.state().faults.push_back(Fault::Error(59));
    let meta = s
        .env
        .run(producer.send(ProducerRecord::new("t", "b").with_partition(0)))
        .expect("acknowledged under the new epoch");
    assert_eq!(meta.offset, 1);
    assert_eq!(producer.producer_id(), Some((1000, 1)));
    let log = s.cluster.state().logs[&("t".to_string(), 0)].clone();
    let header = fjord_log::BatchHeader::parse(&log[1].1).expect("header");
    assert_eq!((header.producer_epoch, header.base_sequence), (1, 0));
}

#[test]
fn a_topic_appearing_later_is_waited_for() {
    let mut s = setup(&[(1, "b1:9092")], &[("new", 1)]);
    s.cluster.state().hide_topics_for = 3;
    let producer = Producer::new(&s.client, ProducerConfig::default()).expect("producer");
    let meta = s
        .env
        .run(producer.send(ProducerRecord::new("new", "v")))
        .expect("sent once the topic exists");
    assert_eq!((meta.partition, meta.offset), (0, 0));
}

#[test]
fn every_compression_codec_produces_batches_the_log_decodes() {
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut s = setup(&[(1, "b1:9092")], &[("t", 1)]);
        let config = ProducerConfig {
            compression,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&s.client, config).expect("producer");
        let futures: Vec<_> = (0..20)
            .map(|i| {
                producer.send(
                    ProducerRecord::new("t", vec![b'x'; 100 + i])
                        .with_partition(0)
                        .with_header("h", Some(bytes::Bytes::from_static(b"v"))),
                )
            })
            .collect();
        for r in s.env.run(futures::future::join_all(futures)) {
            r.expect("acknowledged");
        }
        let log = s.cluster.state().logs[&("t".to_string(), 0)].clone();
        let header = fjord_log::BatchHeader::parse(&log[0].1).expect("header");
        assert_eq!(header.compression(), compression);
        let values = s.cluster.values("t", 0);
        assert_eq!(values.len(), 20, "{compression:?}");
        assert_eq!(values[3].1.as_deref(), Some(&[b'x'; 103][..]));
    }
}

#[test]
fn acks_zero_completes_once_sent() {
    let mut s = setup(&[(1, "b1:9092")], &[("t", 1)]);
    let config = ProducerConfig {
        acks: Acks::None,
        idempotence: false,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&s.client, config).expect("producer");
    let meta = s
        .env
        .run(producer.send(ProducerRecord::new("t", "fire").with_partition(0)))
        .expect("sent");
    assert_eq!(meta.offset, -1);
    s.env.settle();
    assert_eq!(s.cluster.values("t", 0).len(), 1);
}

#[test]
fn flush_and_close_wait_for_everything() {
    let mut s = setup(&[(1, "b1:9092")], &[("t", 2)]);
    let config = ProducerConfig {
        linger: Duration::from_secs(10),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&s.client, config).expect("producer");
    let pending: Vec<_> = (0..10)
        .map(|i| producer.send(ProducerRecord::new("t", format!("{i}"))))
        .collect();
    let start = s.env.now();
    s.env.run(producer.flush());
    assert!(
        s.env.now().saturating_duration_since(start) < Duration::from_secs(1),
        "flush does not wait for the linger"
    );
    assert_eq!(producer.pending_records(), 0);
    for r in s.env.run(futures::future::join_all(pending)) {
        r.expect("acknowledged");
    }
    let late = producer.clone();
    s.env.run(producer.close());
    let refused = s.env.run(late.send(ProducerRecord::new("t", "late")));
    assert_eq!(refused, Err(ProduceError::Closed));
}

#[test]
fn invalid_configurations_are_refused() {
    let s = setup(&[(1, "b1:9092")], &[("t", 1)]);
    for config in [
        ProducerConfig {
            acks: Acks::Leader,
            ..ProducerConfig::default()
        },
        ProducerConfig {
            max_in_flight_per_connection: 6,
            ..ProducerConfig::default()
        },
        ProducerConfig {
            max_in_flight_per_connection: 0,
            idempotence: false,
            ..ProducerConfig::default()
        },
    ] {
        assert!(matches!(
            Producer::new(&s.client, config),
            Err(Error::InvalidArgument(_))
        ));
    }
}
