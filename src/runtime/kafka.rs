//! Kafka over TCP: the broker's listener and the client's connector.
//!
//! Frames are Kafka's: a 4-byte big-endian size, then the message. The size is checked
//! against `frame_size_max_bytes` before anything is allocated for the message; a larger
//! frame closes the connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fjord_replication::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

use crate::client::conn::Connector;
use crate::kafka::server::{
    serve_connection, ConnectionLimits, FrameConnection, FrameReader, FrameWriter, RequestHandler,
};

/// Buffer sizes of the per-connection buffered reader and writer.
const SOCKET_BUFFER_BYTES: usize = 64 * 1024;

/// A TCP connection carrying size-prefixed Kafka frames.
pub struct TcpFrameConnection {
    stream: TcpStream,
    peer: String,
    frame_size_max_bytes: usize,
}

impl TcpFrameConnection {
    /// Wraps a connected stream (and sets TCP_NODELAY: Kafka traffic is request/response).
    pub fn new(stream: TcpStream, frame_size_max_bytes: usize) -> Self {
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        TcpFrameConnection {
            stream,
            peer,
            frame_size_max_bytes,
        }
    }
}

struct TcpFrameReader {
    reader: BufReader<OwnedReadHalf>,
    frame_size_max_bytes: usize,
}

struct TcpFrameWriter {
    writer: BufWriter<OwnedWriteHalf>,
}

impl FrameConnection for TcpFrameConnection {
    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>) {
        let (read_half, write_half) = self.stream.into_split();
        (
            Box::new(TcpFrameReader {
                reader: BufReader::with_capacity(SOCKET_BUFFER_BYTES, read_half),
                frame_size_max_bytes: self.frame_size_max_bytes,
            }),
            Box::new(TcpFrameWriter {
                writer: BufWriter::with_capacity(SOCKET_BUFFER_BYTES, write_half),
            }),
        )
    }
}

impl FrameReader for TcpFrameReader {
    fn recv_frame(&mut self) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        Box::pin(async move {
            let mut size = [0u8; 4];
            match self.reader.read_exact(&mut size).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let size = i32::from_be_bytes(size);
            let len = usize::try_from(size).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("negative frame size {size}"),
                )
            })?;
            if len > self.frame_size_max_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "frame of {len} bytes exceeds the {} byte limit",
                        self.frame_size_max_bytes
                    ),
                ));
            }
            let mut frame = vec![0u8; len];
            self.reader.read_exact(&mut frame).await?;
            Ok(Some(Bytes::from(frame)))
        })
    }
}

impl FrameWriter for TcpFrameWriter {
    fn send_frame(&mut self, frame: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let size = i32::try_from(frame.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 2 GiB"))?;
            // Size and small frames go out in one write; large ones bypass the buffer.
            self.writer.write_all(&size.to_be_bytes()).await?;
            self.writer.write_all(&frame).await?;
            self.writer.flush().await
        })
    }
}

/// A running Kafka listener. Dropping it stops accepting and closes every connection.
pub struct KafkaServerHandle {
    local_addr: SocketAddr,
    accept_task: AbortHandle,
}

impl KafkaServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for KafkaServerHandle {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it aborts them all.
        self.accept_task.abort();
    }
}

/// Listens for Kafka clients on `listen` and serves each connection with `handler`.
/// Must be called inside a Tokio runtime.
pub async fn serve_kafka(
    listen: SocketAddr,
    handler: Arc<dyn RequestHandler>,
    limits: ConnectionLimits,
) -> io::Result<KafkaServerHandle> {
    serve_kafka_when(listen, handler, limits, futures::future::ready(())).await
}

/// [`serve_kafka`], but connections are accepted only once `ready` completes: the port is
/// bound at once (it can be advertised, clients' connections wait in the backlog), and no
/// request is answered before the broker can answer it truthfully.
pub async fn serve_kafka_when(
    listen: SocketAddr,
    handler: Arc<dyn RequestHandler>,
    limits: ConnectionLimits,
    ready: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<KafkaServerHandle> {
    let listener = TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, "kafka listener open");
    let accept_task = tokio::spawn(async move {
        ready.await;
        accept_loop(listener, handler, limits).await
    })
    .abort_handle();
    Ok(KafkaServerHandle {
        local_addr,
        accept_task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn RequestHandler>,
    limits: ConnectionLimits,
) {
    let mut connections = JoinSet::new();
    let next_connection_id = AtomicU64::new(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer_addr)) => {
                    if connections.len() >= limits.connections_max {
                        tracing::warn!(%peer_addr, connections_max = limits.connections_max, "kafka connection refused: too many connections");
                        drop(stream);
                        continue;
                    }
                    let id = next_connection_id.fetch_add(1, Ordering::Relaxed);
                    let conn = Box::new(TcpFrameConnection::new(stream, limits.frame_size_max_bytes));
                    connections.spawn(serve_connection(conn, handler.clone(), limits, id));
                }
                Err(e) => {
                    // E.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!(error = %e, "kafka accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Dials brokers over TCP for [`crate::client::conn::KafkaConnection`].
#[derive(Clone, Debug)]
pub struct TcpConnector {
    /// Largest response frame accepted (a Fetch response can be large).
    pub frame_size_max_bytes: usize,
}

impl Default for TcpConnector {
    fn default() -> Self {
        TcpConnector {
            frame_size_max_bytes: ConnectionLimits::default().frame_size_max_bytes,
        }
    }
}

impl Connector for TcpConnector {
    fn connect(&self, addr: &str) -> BoxFuture<'_, io::Result<Box<dyn FrameConnection>>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = TcpStream::connect(addr.as_str()).await?;
            let conn = TcpFrameConnection::new(stream, self.frame_size_max_bytes);
            Ok(Box::new(conn) as Box<dyn FrameConnection>)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        ApiKey, BrokerId, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
        RequestKind, ResponseKind, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::client::conn::{ClientError, ClientOptions, KafkaConnection};
    use crate::kafka::codec::DecodedRequest;
    use crate::kafka::server::RequestContext;
    use crate::runtime::{TokioClock, TokioSpawner};

    /// Answers Metadata with one broker (this listener) and the topics asked for (none when
    /// asked for all), each with one partition; Produce with success (acks=0: nothing);
    /// Metadata for the topic "never" never; anything else by dropping the connection.
    struct ToyBroker {
        port: std::sync::OnceLock<u16>,
    }

    impl RequestHandler for ToyBroker {
        fn handle(
            &self,
            ctx: RequestContext,
            request: DecodedRequest,
        ) -> BoxFuture<'static, Option<ResponseKind>> {
            let port = self.port.get().copied().unwrap_or(0);
            tracing::info!(api = ?ctx.api_key, version = ctx.api_version, client = ?ctx.client_software_name, "toy broker request");
            Box::pin(async move {
                match request.body {
                    RequestKind::Produce(p) if p.acks == 0 => None,
                    RequestKind::Metadata(m) if asks_for_never(&m) => std::future::pending().await,
                    RequestKind::Metadata(m) => {
                        let broker = MetadataResponseBroker::default()
                            .with_node_id(BrokerId(1))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(i32::from(port));
                        // Named topics exist with one partition led by broker 1.
                        let topics = m
                            .topics
                            .iter()
                            .flatten()
                            .map(|t| {
                                let partition = MetadataResponsePartition::default()
                                    .with_leader_id(BrokerId(1))
                                    .with_replica_nodes(vec![BrokerId(1)])
                                    .with_isr_nodes(vec![BrokerId(1)]);
                                MetadataResponseTopic::default()
                                    .with_name(t.name.clone())
                                    .with_partitions(vec![partition])
                            })
                            .collect();
                        Some(ResponseKind::Metadata(
                            MetadataResponse::default()
                                .with_brokers(vec![broker])
                                .with_topics(topics)
                                .with_cluster_id(Some(StrBytes::from_static_str("toy-cluster")))
                                .with_controller_id(BrokerId(1)),
                        ))
                    }
                    // Every batch lands at offset 0: enough for a producer to finish.
                    RequestKind::Produce(p) => {
                        let responses = p
                            .topic_data
                            .iter()
                            .map(|t| {
                                let partitions = t
                                    .partition_data
                                    .iter()
                                    .map(|d| {
                                        PartitionProduceResponse::default().with_index(d.index)
                                    })
                                    .collect();
                                TopicProduceResponse::default()
                                    .with_name(t.name.clone())
                                    .with_partition_responses(partitions)
                            })
                            .collect();
                        Some(ResponseKind::Produce(
                            ProduceResponse::default().with_responses(responses),
                        ))
                    }
                    other => panic!("toy broker got {other:?}"),
                }
            })
        }
    }

    fn asks_for_never(m: &MetadataRequest) -> bool {
        m.topics
            .iter()
            .flatten()
            .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "never"))
    }

    fn never_answered() -> MetadataRequest {
        let topic = MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("never"))));
        MetadataRequest::default().with_topics(Some(vec![topic]))
    }

    async fn toy_server(limits: ConnectionLimits) -> KafkaServerHandle {
        let broker = Arc::new(ToyBroker {
            port: std::sync::OnceLock::new(),
        });
        let handle = serve_kafka(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            broker.clone(),
            limits,
        )
        .await
        .expect("listen");
        let _ = broker.port.set(handle.local_addr().port());
        handle
    }

    async fn client(addr: SocketAddr, timeout: Duration) -> Result<KafkaConnection, ClientError> {
        KafkaConnection::connect(
            &TcpConnector::default(),
            &addr.to_string(),
            Arc::new(TokioClock::new()),
            &TokioSpawner::current(),
            ClientOptions {
                request_timeout: timeout,
                ..ClientOptions::default()
            },
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_and_listener_talk_over_tcp_with_pipelining() {
        let server = toy_server(ConnectionLimits::default()).await;
        let conn = client(server.local_addr(), Duration::from_secs(5))
            .await
            .expect("connect");
        assert_eq!(conn.version_for(ApiKey::Metadata).unwrap(), 13);
        let calls = (0..50).map(|_| conn.call(MetadataRequest::default()));
        let results =
            tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(calls))
                .await
                .expect("in time");
        for r in results {
            let m = r.expect("answered");
            assert_eq!(m.brokers[0].port, i32::from(server.local_addr().port()));
        }
        conn.send_only(ProduceRequest::default().with_acks(0))
            .await
            .expect("sent");
        let m = conn
            .call(MetadataRequest::default())
            .await
            .expect("answered");
        assert_eq!(m.cluster_id.as_deref(), Some("toy-cluster"));
    }

    #[tokio::test]
    async fn a_call_times_out_on_the_real_clock() {
        let server = toy_server(ConnectionLimits::default()).await;
        let conn = client(server.local_addr(), Duration::from_millis(100))
            .await
            .expect("connect");
        let result = conn.call(never_answered()).await;
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
    }

    #[tokio::test]
    async fn oversize_and_negative_frames_close_the_connection() {
        let limits = ConnectionLimits {
            frame_size_max_bytes: 1024,
            ..ConnectionLimits::default()
        };
        let server = toy_server(limits).await;
        for size in [1025i32, -1, i32::MAX] {
            let mut s = TcpStream::connect(server.local_addr())
                .await
                .expect("connect");
            s.write_all(&size.to_be_bytes()).await.expect("write");
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
                .await
                .expect("closed in time");
            assert!(matches!(read, Ok(0) | Err(_)), "size {size}: {read:?}");
        }
        // The listener still serves.
        let conn = client(server.local_addr(), Duration::from_secs(5))
            .await
            .expect("connect");
        conn.call(MetadataRequest::default())
            .await
            .expect("answered");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let limits = ConnectionLimits {
            connections_max: 1,
            ..ConnectionLimits::default()
        };
        let server = toy_server(limits).await;
        let first = client(server.local_addr(), Duration::from_secs(5))
            .await
            .expect("connect");
        let second = client(server.local_addr(), Duration::from_secs(5)).await;
        assert!(
            matches!(second, Err(ClientError::Closed | ClientError::Io(_))),
            "{:?}",
            second.err()
        );
        drop(first);
        // Once the first is gone, a new one is let in (the slot frees when its task ends).
        let again = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(c) = client(server.local_addr(), Duration::from_secs(5)).await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("admitted again");
        again
            .call(MetadataRequest::default())
            .await
            .expect("answered");
    }

    #[tokio::test]
    async fn dropping_the_server_closes_client_connections() {
        let server = toy_server(ConnectionLimits::default()).await;
        let conn = client(server.local_addr(), Duration::from_secs(5))
            .await
            .expect("connect");
        drop(server);
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match conn.call(MetadataRequest::default()).await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("noticed in time");
        assert!(
            matches!(result, ClientError::Closed | ClientError::Io(_)),
            "{result}"
        );
    }

    /// Serves the toy broker until killed, for real clients:
    /// `FJORD_KAFKA_TOY_PORT=19092 cargo test -p fjord toy_broker_for_real_clients -- --ignored --nocapture`
    /// then `kcat -b 127.0.0.1:19092 -L`. Without the variable it checks kcat itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs kcat installed (apt-get install kcat)"]
    async fn toy_broker_for_real_clients() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("fjord=debug")
            .with_test_writer()
            .try_init();
        if let Ok(port) = std::env::var("FJORD_KAFKA_TOY_PORT") {
            let port: u16 = port.parse().expect("port");
            let broker = Arc::new(ToyBroker {
                port: std::sync::OnceLock::from(port),
            });
            let _server = serve_kafka(
                SocketAddr::from(([127, 0, 0, 1], port)),
                broker,
                ConnectionLimits::default(),
            )
            .await
            .expect("listen");
            std::future::pending::<()>().await;
        }
        let server = toy_server(ConnectionLimits::default()).await;
        let broker = format!("127.0.0.1:{}", server.local_addr().port());
        let kcat = tokio::task::spawn_blocking(move || {
            std::process::Command::new("kcat")
                .args(["-b", &broker, "-L", "-m", "5", "-d", "protocol"])
                .output()
        });
        let output = tokio::time::timeout(Duration::from_secs(20), kcat)
            .await
            .expect("kcat finished")
            .expect("joined")
            .expect("kcat runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}\n{stderr}");
        assert!(output.status.success(), "kcat failed");
        assert!(stdout.contains("1 brokers:"), "{stdout}");
        assert!(stdout.contains("0 topics:"), "{stdout}");
    }
}
