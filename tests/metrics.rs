//! The Prometheus endpoint of an in-process broker: scraped over HTTP after producing,
//! consuming and committing, its numbers move.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fjord::client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use fjord::client::TopicPartition;
use fjord::client::{Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use fjord::controller::ClusterDefaults;
use fjord::runtime::server::{start_node, NodeSpec, RunningNode};
use fjord::runtime::{TcpConnector, TokioClock, TokioSpawner};
use fjord_replication::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

async fn single_node(dir: &std::path::Path) -> RunningNode {
    let rpc = common::free_addr();
    let spec = NodeSpec {
        cluster_id: Some("metrics-test".into()),
        defaults: ClusterDefaults {
            offsets_topic_replication_factor: 1,
            offsets_topic_num_partitions: 1,
            ..ClusterDefaults::default()
        },
        seed: 1,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..NodeSpec::local(
            NodeId(1),
            dir.join("n1"),
            BTreeMap::from([(NodeId(1), rpc)]),
        )
    };
    start_node(spec).await.expect("start")
}

/// `GET path` over HTTP/1.1; returns the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the series `name{labels}` (labels exactly as printed).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_numbers_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path()).await;
    let addr = node.metrics.as_ref().expect("metrics served").local_addr();
    let (status, _) = get(addr, "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let clock: Arc<dyn fjord_replication::Clock> = Arc::new(TokioClock::new());
    let client = Client::new(
        Arc::new(TcpConnector::default()),
        clock,
        Arc::new(TokioSpawner::current()),
        ClientConfig {
            bootstrap_servers: vec![node.kafka.local_addr().to_string()],
            ..ClientConfig::default()
        },
    );
    let producer = Producer::new(
        &client,
        ProducerConfig {
            acks: Acks::Leader,
            idempotence: false,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let send = |n: usize| {
        let futures: Vec<_> = (0..n)
            .map(|i| producer.send(ProducerRecord::new("m", format!("value {i}"))))
            .collect();
        async move {
            for f in futures {
                f.await.expect("acknowledged");
            }
        }
    };
    send(10).await;
    let first = scrape(addr).await;
    let node1 = "{node=\"1\"}";
    let part = "{node=\"1\",topic=\"m\",partition=\"0\"}";
    let produce = "{node=\"1\",api=\"Produce\"}";
    assert_eq!(
        value(&first, &format!("fjord_records_in_total{node1}")),
        Some(10.0)
    );
    assert!(value(&first, &format!("fjord_bytes_in_total{node1}")).unwrap() > 10.0 * 7.0);
    assert!(value(&first, &format!("fjord_requests_total{produce}")).unwrap() >= 1.0);
    assert!(
        value(
            &first,
            &format!("fjord_request_latency_seconds_count{produce}")
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(&first, &format!("fjord_active_controller{node1}")),
        Some(1.0)
    );
    assert!(value(&first, &format!("fjord_leader_partitions{node1}")).unwrap() >= 1.0);
    assert_eq!(
        value(&first, &format!("fjord_under_replicated_partitions{node1}")),
        Some(0.0)
    );
    assert_eq!(
        value(&first, &format!("fjord_partition_leader{part}")),
        Some(1.0)
    );
    assert_eq!(
        value(&first, &format!("fjord_partition_replicas{part}")),
        Some(1.0)
    );
    assert_eq!(
        value(&first, &format!("fjord_partition_in_sync_replicas{part}")),
        Some(1.0)
    );
    let hw1 = value(&first, &format!("fjord_partition_high_watermark{part}")).unwrap();
    // The new leader's no-op, then the records.
    assert!(hw1 >= 10.0, "{hw1}");
    assert!(value(&first, &format!("fjord_raft_term_changes_total{node1}")).unwrap() >= 1.0);
    assert!(
        value(
            &first,
            &format!("fjord_raft_leaderships_gained_total{node1}")
        )
        .unwrap()
            >= 1.0
    );

    send(5).await;
    let mut consumer = Consumer::new(
        &client,
        ConsumerConfig {
            group_id: Some("metrics-group".into()),
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            ..ConsumerConfig::default()
        },
    )
    .expect("consumer");
    let tp = TopicPartition::new("m", 0);
    consumer.assign([tp.clone()]).expect("assign");
    let mut read = 0;
    for _ in 0..100 {
        read += consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
        if read >= 15 {
            break;
        }
    }
    assert_eq!(read, 15);
    // Commit three records short of the end: the lag is 3.
    let position = consumer.position(&tp).expect("position");
    let mut committed = None;
    for _ in 0..100 {
        if consumer
            .commit_offsets(BTreeMap::from([(tp.clone(), position - 3)]))
            .await
            .is_ok()
        {
            committed = Some(position - 3);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let committed = committed.expect("committed");
    let second = scrape(addr).await;
    assert_eq!(
        value(&second, &format!("fjord_records_in_total{node1}")),
        Some(15.0)
    );
    let hw2 = value(&second, &format!("fjord_partition_high_watermark{part}")).unwrap();
    assert_eq!(hw2, hw1 + 5.0);
    assert_eq!(
        value(&second, &format!("fjord_partition_log_end_offset{part}")),
        Some(hw2)
    );
    let fetch = "{node=\"1\",api=\"Fetch\"}";
    assert!(value(&second, &format!("fjord_requests_total{fetch}")).unwrap() >= 1.0);
    assert!(value(&second, &format!("fjord_bytes_out_total{node1}")).unwrap() > 0.0);
    let group = "{node=\"1\",group=\"metrics-group\",topic=\"m\",partition=\"0\"}";
    assert_eq!(
        value(
            &second,
            &format!("fjord_consumer_group_committed_offset{group}")
        ),
        Some(committed as f64)
    );
    assert_eq!(
        value(&second, &format!("fjord_consumer_group_lag{group}")),
        Some(hw2 - committed as f64)
    );
    assert_eq!(hw2 - committed as f64, 3.0);
    let _ = consumer.close().await;
    producer.close().await;
    node.shutdown(Duration::from_secs(2)).await;
}
