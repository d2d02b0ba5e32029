//! A broker (one node, and a three-node cluster) over real TCP, driven by raw Kafka
//! requests: topic creation, produce with acks=all / acks=1, fetch, list offsets, metadata.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord::client::conn::{ClientOptions, KafkaConnection};
use fjord::controller::ClusterDefaults;
use fjord::runtime::server::{start_node, NodeSpec, RunningNode};
use fjord::runtime::{TcpConnector, TokioClock, TokioSpawner};
use fjord_replication::NodeId;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

mod common;

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn cluster(n: u32, dir: &std::path::Path) -> Vec<RunningNode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut voters = BTreeMap::new();
    for id in 1..=n {
        voters.insert(NodeId(id), common::free_addr());
    }
    let defaults = ClusterDefaults {
        default_replication_factor: n.min(3) as i16,
        offsets_topic_replication_factor: n.min(3) as i16,
        offsets_topic_num_partitions: 3,
        ..ClusterDefaults::default()
    };
    let mut nodes = Vec::new();
    for id in 1..=n {
        let spec = NodeSpec {
            cluster_id: Some("test-cluster".into()),
            defaults: defaults.clone(),
            seed: u64::from(id),
            leader_balance_interval: Duration::from_secs(1),
            log_maintenance_interval: Duration::from_millis(200),
            ..NodeSpec::local(NodeId(id), dir.join(format!("n{id}")), voters.clone())
        };
        nodes.push(start_node(spec).await.expect("start"));
    }
    nodes
}

async fn connect(addr: SocketAddr) -> KafkaConnection {
    let connector = TcpConnector::default();
    KafkaConnection::connect(
        &connector,
        &addr.to_string(),
        Arc::new(TokioClock::new()),
        &TokioSpawner::current(),
        ClientOptions::default(),
    )
    .await
    .expect("connect")
}

fn keyed_batch(pairs: &[(&str, Option<&str>)], timestamp_ms: i64) -> Bytes {
    let records: Vec<_> = pairs
        .iter()
        .map(|(k, v)| fjord_log::RecordSpec {
            key: Some(Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
            timestamp_ms,
        })
        .collect();
    fjord_log::build_batch(&records, &Default::default()).expect("batch")
}

async fn create_topic(
    conn: &KafkaConnection,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let mut t = CreatableTopic::default();
    t.name = topic_name(name);
    t.num_partitions = partitions;
    t.replication_factor = -1;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_string(k.to_string());
            c.value = Some(StrBytes::from_string(v.to_string()));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 5000;
    eventually("topic created", || async {
        let resp = conn.call(req.clone()).await.ok()?;
        let code = resp.topics[0].error_code;
        assert!(
            code == 0 || code == 36 || code == 41 || code == 38,
            "create failed: {code}"
        );
        (code == 0 || code == 36).then_some(())
    })
    .await;
    eventually("leader", || leader_of(conn, name)).await;
}

/// Every record of a partition as `(offset, key, value)`.
async fn read_all(conn: &KafkaConnection, topic: &str) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (err, hw, records) = fetch(conn, topic, offset).await;
        assert_eq!(err, 0);
        if records.is_empty() {
            if offset >= hw {
                return out;
            }
            offset += 1;
            continue;
        }
        for item in fjord_log::BatchIter::new(&records) {
            let (h, b) = item.expect("batch");
            offset = offset.max(h.next_offset() as i64);
            if h.is_control() {
                continue;
            }
            for r in fjord_log::decode_records(b).expect("records") {
                out.push((
                    r.offset as i64,
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).to_string(),
                    r.value.map(|v| String::from_utf8_lossy(&v).to_string()),
                ));
            }
        }
    }
}

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<_> = values
        .iter()
        .map(|v| fjord_log::RecordSpec {
            key: None,
            value: Some(Bytes::from(v.to_string())),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    fjord_log::build_batch(&records, &Default::default()).expect("batch")
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The leader broker id of `topic`/0 from a Metadata request.
async fn leader_of(conn: &KafkaConnection, topic: &str) -> Option<i32> {
    let mut req = MetadataRequest::default();
    let mut t = MetadataRequestTopic::default();
    t.name = Some(topic_name(topic));
    req.topics = Some(vec![t]);
    let resp = conn.call(req).await.ok()?;
    let t = resp.topics.first()?;
    let p = t.partitions.first()?;
    (t.error_code == 0 && p.error_code == 0 && p.leader_id.0 >= 0).then_some(p.leader_id.0)
}

async fn produce(conn: &KafkaConnection, topic: &str, acks: i16, records: Bytes) -> (i16, i64) {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 10_000;
    req.topic_data = vec![t];
    let resp = conn.call(req).await.expect("produce");
    let r = &resp.responses[0].partition_responses[0];
    (r.error_code, r.base_offset)
}

async fn fetch(conn: &KafkaConnection, topic: &str, offset: i64) -> (i16, i64, Bytes) {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    p.current_leader_epoch = -1;
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 100;
    req.min_bytes = 1;
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    let resp = conn.call(req).await.expect("fetch");
    let d = &resp.responses[0].partitions[0];
    (
        d.error_code,
        d.high_watermark,
        d.records.clone().unwrap_or_default(),
    )
}

fn values(records: &Bytes) -> Vec<String> {
    let mut out = Vec::new();
    for item in fjord_log::BatchIter::new(records) {
        let (h, b) = item.expect("batch");
        if h.is_control() {
            continue;
        }
        for r in fjord_log::decode_records(b).expect("records") {
            out.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_broker_produce_fetch_list_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(1, dir.path()).await;
    let conn = connect(nodes[0].kafka.local_addr()).await;
    // Auto-creation through Metadata, as producers do.
    eventually("leader", || leader_of(&conn, "events")).await;
    // Offset 0 holds the first leader's no-op (a control batch consumers skip).
    let (err, first) = produce(&conn, "events", -1, batch(&["a", "b", "c"])).await;
    assert_eq!((err, first), (0, 1));
    let (err, base) = produce(&conn, "events", 1, batch(&["d"])).await;
    assert_eq!((err, base), (0, first + 3));
    let (err, hw, records) = fetch(&conn, "events", 0).await;
    assert_eq!(err, 0);
    assert_eq!(hw, first + 4);
    assert_eq!(values(&records), ["a", "b", "c", "d"]);
    // A fetch from the middle of a batch returns the whole batch (clients skip).
    let (_, _, records) = fetch(&conn, "events", first + 1).await;
    assert_eq!(values(&records)[0], "a");
    // Out of range.
    let (err, _, _) = fetch(&conn, "events", 99).await;
    assert_eq!(err, 1);
    // ListOffsets: earliest and latest.
    for (ts, want) in [(-2i64, 0i64), (-1, first + 4)] {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = 0;
        p.timestamp = ts;
        p.current_leader_epoch = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name("events");
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp = conn.call(req).await.expect("list offsets");
        let r = &resp.topics[0].partitions[0];
        assert_eq!((r.error_code, r.offset), (0, want), "timestamp {ts}");
    }
    // CreateTopics of an existing topic: TOPIC_ALREADY_EXISTS (36).
    let mut t = CreatableTopic::default();
    t.name = topic_name("events");
    t.num_partitions = 1;
    t.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 5000;
    let resp = conn.call(req).await.expect("create topics");
    assert_eq!(resp.topics[0].error_code, 36);
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_replicate_and_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let conns =
        futures::future::join_all(nodes.iter().map(|n| connect(n.kafka.local_addr()))).await;
    let mut t = CreatableTopic::default();
    t.name = topic_name("replicated");
    t.num_partitions = 1;
    t.replication_factor = 3;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 5000;
    let created = eventually("topic created", || async {
        let resp = conns[1].call(req.clone()).await.ok()?;
        let code = resp.topics[0].error_code;
        (code == 0 || code == 36).then_some(code)
    })
    .await;
    assert!(created == 0 || created == 36);
    let leader = eventually("leader", || leader_of(&conns[0], "replicated")).await;
    let leader_conn = &conns[(leader - 1) as usize];
    let follower_conn = &conns[(leader % 3) as usize];
    // A non-leader refuses with NOT_LEADER_OR_FOLLOWER (6).
    let (err, _) = produce(follower_conn, "replicated", -1, batch(&["x"])).await;
    assert_eq!(err, 6);
    let mut last = -1;
    for i in 0..20 {
        let (err, base) = produce(leader_conn, "replicated", -1, batch(&[&format!("v{i}")])).await;
        assert_eq!(err, 0);
        assert!(base > last, "offsets increase");
        last = base;
    }
    let (err, hw, records) = fetch(leader_conn, "replicated", 0).await;
    assert_eq!((err, hw), (0, last + 1));
    assert_eq!(values(&records).len(), 20);
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_move_to_their_preferred_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let conn = connect(nodes[0].kafka.local_addr()).await;
    let mut t = CreatableTopic::default();
    t.name = topic_name("spread");
    t.num_partitions = 6;
    t.replication_factor = 3;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 5000;
    eventually("topic created", || async {
        let resp = conn.call(req.clone()).await.ok()?;
        let code = resp.topics[0].error_code;
        (code == 0 || code == 36).then_some(())
    })
    .await;
    // Every partition ends up led by the first replica of its assignment, which the
    // controller rotates across brokers.
    let leaders = eventually("preferred leaders", || async {
        let mut m = MetadataRequest::default();
        let mut mt = MetadataRequestTopic::default();
        mt.name = Some(topic_name("spread"));
        m.topics = Some(vec![mt]);
        let resp = conn.call(m).await.ok()?;
        let parts = &resp.topics.first()?.partitions;
        let ok = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.error_code == 0 && Some(&p.leader_id) == p.replica_nodes.first());
        ok.then(|| parts.iter().map(|p| p.leader_id.0).collect::<Vec<_>>())
    })
    .await;
    let distinct: std::collections::BTreeSet<_> = leaders.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "leaders spread over the brokers: {leaders:?}"
    );
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_and_compaction_keeps_the_latest_value() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(1, dir.path()).await;
    let conn = connect(nodes[0].kafka.local_addr()).await;
    // Retention by time: records a day old, small segments.
    create_topic(
        &conn,
        "old",
        1,
        &[("retention.ms", "3600000"), ("segment.bytes", "1024")],
    )
    .await;
    let day_ago = 1_700_000_000_000i64;
    for i in 0..30 {
        let (err, _) = produce(
            &conn,
            "old",
            -1,
            keyed_batch(
                &[(
                    "k",
                    Some(&format!("old-{i:02}-..............................")),
                )],
                day_ago,
            ),
        )
        .await;
        assert_eq!(err, 0);
    }
    let earliest = eventually("retention", || async {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = 0;
        p.timestamp = -2;
        p.current_leader_epoch = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name("old");
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp = conn.call(req).await.ok()?;
        let start = resp.topics[0].partitions[0].offset;
        // A pass during the produce loop deletes the segments closed by then; the next
        // pass (every 200 ms) the rest.
        (start > 10).then_some(start)
    })
    .await;
    assert!(
        earliest > 10,
        "old closed segments were deleted (log start {earliest})"
    );
    // Compaction: only the latest value per key survives in closed segments; tombstones go.
    create_topic(
        &conn,
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "1024"),
            ("delete.retention.ms", "0"),
        ],
    )
    .await;
    let now_ish = 4_000_000_000_000i64;
    for round in 0..10 {
        for key in ["a", "b", "c"] {
            let value = format!("{key}-{round}-..................");
            let (err, _) = produce(
                &conn,
                "compacted",
                -1,
                keyed_batch(&[(key, Some(&value))], now_ish),
            )
            .await;
            assert_eq!(err, 0);
        }
    }
    let (err, _) = produce(&conn, "compacted", -1, keyed_batch(&[("c", None)], now_ish)).await;
    assert_eq!(err, 0);
    // Pad so that every record above lands in closed segments.
    for i in 0..20 {
        let (err, _) = produce(
            &conn,
            "compacted",
            -1,
            keyed_batch(
                &[("pad", Some(&format!("pad-{i}-.........................")))],
                now_ish,
            ),
        )
        .await;
        assert_eq!(err, 0);
    }
    let records = eventually("compaction", || async {
        let all = read_all(&conn, "compacted").await;
        let a = all.iter().filter(|r| r.1 == "a").count();
        (a == 1).then_some(all)
    })
    .await;
    let latest = |k: &str| {
        records
            .iter()
            .filter(|r| r.1 == k)
            .map(|r| r.2.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(latest("a"), [Some("a-9-..................".to_string())]);
    assert_eq!(latest("b"), [Some("b-9-..................".to_string())]);
    assert!(
        latest("c").iter().all(|v| v.is_none()),
        "c is deleted: {:?}",
        latest("c")
    );
    // Offsets are kept (gaps are fine) and increase.
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

/// Broker ids in a Metadata answer.
async fn listed_brokers(conn: &KafkaConnection) -> Option<Vec<i32>> {
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![]);
    let resp = conn.call(req).await.ok()?;
    Some(resp.brokers.iter().map(|b| b.node_id.0).collect())
}

/// A restarted broker serves clients only once it is registered and unfenced again, so every
/// Metadata answer it gives lists it. (It used to answer at once: for about a heartbeat its
/// new registration was fenced and Metadata listed no broker while FindCoordinator named it;
/// librdkafka then dropped the coordinator and its consumer never completed a SyncGroup.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_lists_itself_in_every_metadata_answer() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = common::free_addr();
    let spec = NodeSpec {
        cluster_id: Some("restart".into()),
        defaults: ClusterDefaults {
            offsets_topic_replication_factor: 1,
            offsets_topic_num_partitions: 1,
            ..ClusterDefaults::default()
        },
        seed: 1,
        ..NodeSpec::local(
            NodeId(1),
            dir.path().join("n1"),
            BTreeMap::from([(NodeId(1), rpc)]),
        )
    };
    for run in 0..2 {
        // The previous run's tasks let go of its node-to-node port shortly after shutdown.
        let node = eventually("node restarted", || {
            let spec = NodeSpec {
                seed: run,
                ..spec.clone()
            };
            async move { start_node(spec).await.ok() }
        })
        .await;
        let conn = connect(node.kafka.local_addr()).await;
        for _ in 0..100 {
            let brokers = tokio::time::timeout(Duration::from_secs(20), listed_brokers(&conn))
                .await
                .expect("answered once serving")
                .expect("metadata");
            assert_eq!(brokers, vec![1], "run {run}: brokers listed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.shutdown(Duration::from_secs(2)).await;
    }
}
