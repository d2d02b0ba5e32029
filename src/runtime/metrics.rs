//! Prometheus metrics over HTTP: `GET /metrics` on the metrics listener answers with the
//! Prometheus text format (0.0.4), encoded by `prometheus-client` from each broker's
//! [`BrokerMetrics`] snapshot taken at scrape time. Every series carries a `node` label,
//! so one endpoint may serve several brokers (`fjord dev`).
//!
//! The responder is deliberately tiny: one request per connection (`Connection: close`),
//! request heads up to [`REQUEST_HEAD_MAX_BYTES`], a read timeout, a connection limit; only
//! `GET /metrics` (and `/`) is served.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::broker::metrics::{BrokerMetrics, Histogram};
use crate::broker::BrokerHandle;

/// Longest request head (request line and headers) read before answering 431.
pub const REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;
/// Scrape connections served at once; more wait in the accept queue.
pub const CONNECTIONS_MAX: usize = 16;
/// A client must send its request head within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A broker must produce its snapshot within this time (else its series are left out).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running metrics listener; dropping it stops it.
pub struct MetricsServerHandle {
    local_addr: SocketAddr,
    accept_task: AbortHandle,
}

impl MetricsServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServerHandle {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Serves the metrics of `brokers` on `listen`. Must be called inside a Tokio runtime.
pub async fn serve_metrics(
    listen: SocketAddr,
    brokers: Vec<BrokerHandle>,
) -> io::Result<MetricsServerHandle> {
    let listener = TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, "metrics listener open (GET /metrics)");
    let brokers = Arc::new(brokers);
    let accept_task = tokio::spawn(accept_loop(listener, brokers)).abort_handle();
    Ok(MetricsServerHandle {
        local_addr,
        accept_task,
    })
}

async fn accept_loop(listener: TcpListener, brokers: Arc<Vec<BrokerHandle>>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let brokers = Arc::clone(&brokers);
                    connections.spawn(async move {
                        if let Err(e) = serve_connection(stream, &brokers).await {
                            tracing::debug!(error = %e, "metrics connection failed");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    Malformed,
}

/// Routes a complete request head (up to the blank line).
fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Route::Malformed;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Malformed;
    }
    if method != "GET" && method != "HEAD" {
        return Route::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" | "/" => Route::Metrics,
        _ => Route::NotFound,
    }
}

/// The request head: bytes up to and including the first blank line, if it came in time.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = find_blank_line(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > REQUEST_HEAD_MAX_BYTES {
            return Ok(None);
        }
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "request head")),
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request head"));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn find_blank_line(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

async fn serve_connection(mut stream: TcpStream, brokers: &[BrokerHandle]) -> io::Result<()> {
    let (status, content_type, body) = match read_head(&mut stream).await? {
        None => (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
        ),
        Some(head) => match route(&head) {
            Route::Metrics => {
                let body = scrape(brokers).await;
                let head_only = head.starts_with(b"HEAD ");
                (
                    "200 OK",
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    if head_only { String::new() } else { body },
                )
            }
            Route::NotFound => ("404 Not Found", "text/plain", "try /metrics\n".into()),
            Route::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", String::new()),
            Route::Malformed => ("400 Bad Request", "text/plain", String::new()),
        },
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Snapshots every broker and encodes them.
pub async fn scrape(brokers: &[BrokerHandle]) -> String {
    let mut snapshots = Vec::new();
    for b in brokers {
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, b.metrics()).await {
            Ok(Some(m)) => snapshots.push(m),
            _ => tracing::warn!("a broker did not answer the metrics scrape"),
        }
    }
    encode(snapshots)
}

/// The Prometheus text of `snapshots`.
pub fn encode(snapshots: Vec<BrokerMetrics>) -> String {
    let mut registry = Registry::with_prefix("fjord");
    registry.register_collector(Box::new(Snapshots(snapshots)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!("metrics encoding failed: {e}");
    }
    out
}

#[derive(Debug)]
struct Snapshots(Vec<BrokerMetrics>);

type Labels = Vec<(&'static str, String)>;

fn node_label(m: &BrokerMetrics) -> Labels {
    vec![("node", m.node.node_id.0.to_string())]
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| key.to_string(), |k| format!("{k:?}"))
}

/// Encodes one family: `series` yields `(labels, value)` pairs.
fn family<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error>
where
    V: ValueKind,
{
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in series {
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge or counter value for [`family`].
trait ValueKind {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error>;
}

struct Gauge(i64);
struct Counter(u64);

impl ValueKind for Gauge {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new(self.0).encode(encoder)
    }
}

impl ValueKind for Counter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.0).encode(encoder)
    }
}

#[allow(
    clippy::disallowed_types,
    reason = "prometheus-client's exemplar map type; always None here"
)]
fn encode_histogram(encoder: &mut MetricEncoder, h: &Histogram) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::exemplar::Exemplar;
    let buckets: Vec<(f64, u64)> = h
        .buckets()
        .map(|(bound, n)| (bound.map_or(f64::INFINITY, |us| us as f64 / 1e6), n))
        .collect();
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_us() as f64 / 1e6,
        h.count(),
        &buckets,
        None::<&std::collections::HashMap<usize, Exemplar<_, f64>>>,
    )
}

impl Collector for Snapshots {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = &self.0;
        let per_node = |f: &dyn Fn(&BrokerMetrics) -> i64| -> Vec<(Labels, Gauge)> {
            all.iter().map(|m| (node_label(m), Gauge(f(m)))).collect()
        };
        let per_node_counter = |f: &dyn Fn(&BrokerMetrics) -> u64| -> Vec<(Labels, Counter)> {
            all.iter().map(|m| (node_label(m), Counter(f(m)))).collect()
        };
        // Requests.
        family(
            &mut e,
            "requests",
            "Kafka requests answered, by API.",
            MetricType::Counter,
            all.iter().flat_map(|m| {
                m.requests.apis.iter().map(move |(k, a)| {
                    let mut l = node_label(m);
                    l.push(("api", api_name(*k)));
                    (l, Counter(a.requests))
                })
            }),
        )?;
        {
            let mut h = e.encode_descriptor(
                "request_latency",
                "Time from a decoded request reaching the broker to its response, by API (long-polling fetches include their wait).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for m in all {
                for (k, a) in &m.requests.apis {
                    let mut l = node_label(m);
                    l.push(("api", api_name(*k)));
                    encode_histogram(&mut h.encode_family(&l)?, &a.latency)?;
                }
            }
        }
        family(
            &mut e,
            "bytes_in",
            "Record batch bytes received in Produce requests.",
            MetricType::Counter,
            per_node_counter(&|m| m.requests.bytes_in),
        )?;
        family(
            &mut e,
            "records_in",
            "Records received in Produce requests.",
            MetricType::Counter,
            per_node_counter(&|m| m.requests.records_in),
        )?;
        family(
            &mut e,
            "bytes_out",
            "Record batch bytes sent in Fetch responses.",
            MetricType::Counter,
            per_node_counter(&|m| m.requests.bytes_out),
        )?;
        // Node state.
        family(
            &mut e,
            "active_controller",
            "1 if this node leads the metadata (controller) group.",
            MetricType::Gauge,
            per_node(&|m| i64::from(m.node.active_controller)),
        )?;
        family(
            &mut e,
            "partitions",
            "Partition replicas hosted by this node.",
            MetricType::Gauge,
            per_node(&|m| m.node.partitions.len() as i64),
        )?;
        family(
            &mut e,
            "leader_partitions",
            "Partitions this node leads.",
            MetricType::Gauge,
            per_node(&|m| m.node.leader_count() as i64),
        )?;
        family(
            &mut e,
            "under_replicated_partitions",
            "Partitions led here with fewer in-sync replicas than replicas.",
            MetricType::Gauge,
            per_node(&|m| m.node.under_replicated_count() as i64),
        )?;
        family(
            &mut e,
            "raft_term_changes",
            "Times a local Raft group's term advanced (elections).",
            MetricType::Counter,
            per_node_counter(&|m| m.node.raft.term_changes),
        )?;
        family(
            &mut e,
            "raft_leaderships_gained",
            "Times a local Raft group's member here became leader.",
            MetricType::Counter,
            per_node_counter(&|m| m.node.raft.leaderships_gained),
        )?;
        // Partitions.
        let partition_gauge =
            |f: &dyn Fn(&crate::broker::metrics::PartitionMetrics) -> Option<i64>| {
                all.iter()
                    .flat_map(|m| {
                        m.node.partitions.iter().filter_map(move |p| {
                            let mut l = node_label(m);
                            l.push(("topic", p.topic.clone()));
                            l.push(("partition", p.partition.to_string()));
                            f(p).map(|v| (l, Gauge(v)))
                        })
                    })
                    .collect::<Vec<_>>()
            };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        family(
            &mut e,
            "partition_log_start_offset",
            "First offset of the local replica's log.",
            MetricType::Gauge,
            partition_gauge(&|p| Some(as_i64(p.log_start))),
        )?;
        family(
            &mut e,
            "partition_log_end_offset",
            "End offset of the local replica's log (committed or not).",
            MetricType::Gauge,
            partition_gauge(&|p| Some(as_i64(p.log_end))),
        )?;
        family(
            &mut e,
            "partition_high_watermark",
            "High watermark (Raft commit end) as the local replica knows it; the leader's is authoritative.",
            MetricType::Gauge,
            partition_gauge(&|p| Some(as_i64(p.high_watermark))),
        )?;
        family(
            &mut e,
            "partition_leader",
            "1 if this node leads the partition.",
            MetricType::Gauge,
            partition_gauge(&|p| Some(i64::from(p.leader))),
        )?;
        family(
            &mut e,
            "partition_leader_epoch",
            "The local replica's Raft term (Kafka leader epoch).",
            MetricType::Gauge,
            partition_gauge(&|p| Some(as_i64(p.term))),
        )?;
        family(
            &mut e,
            "partition_replicas",
            "Voting replicas of the partition.",
            MetricType::Gauge,
            partition_gauge(&|p| Some(p.replicas as i64)),
        )?;
        family(
            &mut e,
            "partition_in_sync_replicas",
            "Replicas caught up with the high watermark (reported by the leader).",
            MetricType::Gauge,
            partition_gauge(&|p| p.in_sync.map(|n| n as i64)),
        )?;
        family(
            &mut e,
            "partition_under_replicated",
            "1 if the partition has fewer in-sync replicas than replicas (reported by the leader).",
            MetricType::Gauge,
            partition_gauge(&|p| p.in_sync.map(|_| i64::from(p.under_replicated()))),
        )?;
        // Consumer groups.
        let group_gauge =
            |f: &dyn Fn(&crate::broker::metrics::GroupOffsetMetrics) -> Option<i64>| {
                all.iter()
                    .flat_map(|m| {
                        m.node.group_offsets.iter().filter_map(move |g| {
                            let mut l = node_label(m);
                            l.push(("group", g.group.clone()));
                            l.push(("topic", g.topic.clone()));
                            l.push(("partition", g.partition.to_string()));
                            f(g).map(|v| (l, Gauge(v)))
                        })
                    })
                    .collect::<Vec<_>>()
            };
        family(
            &mut e,
            "consumer_group_committed_offset",
            "Committed offset of a consumer group coordinated by this node.",
            MetricType::Gauge,
            group_gauge(&|g| Some(g.committed)),
        )?;
        family(
            &mut e,
            "consumer_group_lag",
            "High watermark minus committed offset, for groups coordinated here and partitions hosted here.",
            MetricType::Gauge,
            group_gauge(&|g| g.lag),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"garbage\r\n\r\n"), Route::Malformed);
        assert_eq!(route(b"GET /metrics SPDY\r\n\r\n"), Route::Malformed);
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn encodes_every_family_with_node_labels() {
        use crate::broker::metrics::{
            ApiMetrics, GroupOffsetMetrics, NodeMetrics, PartitionMetrics, RequestMetrics,
        };
        let mut latency = Histogram::default();
        latency.observe(Duration::from_micros(700));
        let mut requests = RequestMetrics {
            bytes_in: 1000,
            records_in: 10,
            bytes_out: 500,
            ..RequestMetrics::default()
        };
        requests.apis.insert(
            0,
            ApiMetrics {
                requests: 3,
                latency,
            },
        );
        let m = BrokerMetrics {
            node: NodeMetrics {
                node_id: fjord_replication::NodeId(2),
                active_controller: true,
                partitions: vec![PartitionMetrics {
                    topic: "t".into(),
                    partition: 1,
                    leader: true,
                    term: 4,
                    log_start: 0,
                    log_end: 12,
                    high_watermark: 11,
                    replicas: 3,
                    in_sync: Some(2),
                }],
                group_offsets: vec![GroupOffsetMetrics {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 1,
                    committed: 5,
                    lag: Some(6),
                }],
                raft: Default::default(),
            },
            requests,
        };
        let text = encode(vec![m]);
        for line in [
            "fjord_requests_total{node=\"2\",api=\"Produce\"} 3",
            "fjord_request_latency_seconds_bucket{node=\"2\",api=\"Produce\",le=\"0.001\"} 1",
            "fjord_request_latency_seconds_count{node=\"2\",api=\"Produce\"} 1",
            "fjord_bytes_in_total{node=\"2\"} 1000",
            "fjord_records_in_total{node=\"2\"} 10",
            "fjord_bytes_out_total{node=\"2\"} 500",
            "fjord_active_controller{node=\"2\"} 1",
            "fjord_leader_partitions{node=\"2\"} 1",
            "fjord_under_replicated_partitions{node=\"2\"} 1",
            "fjord_partition_high_watermark{node=\"2\",topic=\"t\",partition=\"1\"} 11",
            "fjord_partition_in_sync_replicas{node=\"2\",topic=\"t\",partition=\"1\"} 2",
            "fjord_consumer_group_lag{node=\"2\",group=\"g\",topic=\"t\",partition=\"1\"} 6",
            "fjord_raft_term_changes_total{node=\"2\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
