//! One client connection to a Kafka broker (fjord or any other), runtime-agnostic.
//!
//! [`KafkaConnection::connect`] dials through a [`Connector`], asks for the broker's API
//! versions, and from then on sends each request at the highest version both sides support.
//! Calls may overlap (pipelining): each takes the next correlation id and its place in the
//! queue of expected responses under one lock, so queue order is wire order; a reader task
//! hands each response to the oldest waiting call, checking its correlation id. A response
//! that does not match closes the connection (the stream is out of step).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes};
use fjord_replication::{BoxFuture, Clock, Spawner};
use futures::channel::oneshot;
use futures::future::{select, Either};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::{Request, StrBytes, VersionRange};

use crate::kafka::codec::{self, CodecError};
use crate::kafka::server::{FrameConnection, FrameReader, FrameWriter, UNSUPPORTED_VERSION};
use crate::kafka::versions;

/// Opens connections carrying Kafka frames: TCP in production (`fjord::runtime`), the
/// simulated network in the simulator.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr` (`host:port`).
    fn connect(&self, addr: &str) -> BoxFuture<'_, io::Result<Box<dyn FrameConnection>>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
    #[error("the broker does not serve {0:?}")]
    UnsupportedApi(ApiKey),
    #[error("no version of {api_key:?} in both {ours} (ours) and {theirs} (broker's)")]
    NoCommonVersion {
        api_key: ApiKey,
        ours: VersionRange,
        theirs: VersionRange,
    },
    #[error("ApiVersions failed with error code {0}")]
    ApiVersions(i16),
}

/// How a client connection presents itself and how long it waits.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub client_id: String,
    /// Sent in ApiVersions v3+ (brokers log and report them).
    pub software_name: String,
    pub software_version: String,
    /// How long a call waits for its response. The connection stays open after a timeout:
    /// the late response is discarded when it comes, and later responses queue behind it
    /// (Kafka answers in order), so callers usually drop a connection that timed out.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: "fjord".to_string(),
            software_name: "fjord".to_string(),
            software_version: env!("CARGO_PKG_VERSION").to_string(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A call waiting for its response.
struct Waiting {
    correlation_id: i32,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// Calls waiting for responses, oldest first; `closed` once the reader stopped.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    closed: bool,
}

/// The sending side: whoever holds it assigns the next correlation id and writes.
struct Sender {
    /// `None` once [`KafkaConnection::close`] dropped it (which closes the transport).
    writer: Option<Box<dyn FrameWriter>>,
    next_correlation_id: i32,
}

/// One broker connection. Dropping it closes the connection.
pub struct KafkaConnection {
    sender: futures::lock::Mutex<Sender>,
    queue: Arc<Mutex<Queue>>,
    clock: Arc<dyn Clock>,
    options: ClientOptions,
    broker_versions: BTreeMap<i16, VersionRange>,
    peer: String,
}

impl KafkaConnection {
    /// Connects to `addr` and negotiates API versions. The response reader runs as a task
    /// on `spawner`; `clock` times out calls.
    pub async fn connect(
        connector: &dyn Connector,
        addr: &str,
        clock: Arc<dyn Clock>,
        spawner: &dyn Spawner,
        options: ClientOptions,
    ) -> Result<KafkaConnection, ClientError> {
        let conn = connector.connect(addr).await?;
        let peer = conn.peer();
        let (reader, writer) = conn.split();
        let queue = Arc::new(Mutex::new(Queue::default()));
        spawner.spawn(
            "kafka-client-reader",
            Box::pin(read_responses(reader, queue.clone())),
        );
        let mut connection = KafkaConnection {
            sender: futures::lock::Mutex::new(Sender {
                writer: Some(writer),
                next_correlation_id: 0,
            }),
            queue,
            clock,
            options,
            broker_versions: BTreeMap::new(),
            peer,
        };
        connection.broker_versions = connection.negotiate().await?;
        tracing::debug!(peer = %connection.peer, apis = connection.broker_versions.len(), "kafka client connection open");
        Ok(connection)
    }

    /// Asks the broker for its API versions, retrying once at the version its
    /// UNSUPPORTED_VERSION answer names (KIP-511).
    async fn negotiate(&self) -> Result<BTreeMap<i16, VersionRange>, ClientError> {
        let ours = versions::supported_range(ApiKey::ApiVersions)
            .unwrap_or(ApiKey::ApiVersions.valid_versions());
        let mut version = ours.max;
        loop {
            let body = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_string(
                    self.options.software_name.clone(),
                ))
                .with_client_software_version(StrBytes::from_string(
                    self.options.software_version.clone(),
                ));
            let frame = self
                .round_trip(ApiKey::ApiVersions, version, body.into(), true)
                .await?
                .ok_or(ClientError::Closed)?;
            // An error answer has a v0 body whatever version was asked (KIP-511); the
            // error code comes first in every version, after the 4-byte v0 header.
            let error_code = frame.get(4..6).map(|mut b| b.get_i16()).unwrap_or(0);
            if error_code == UNSUPPORTED_VERSION {
                let (_, response): (_, ApiVersionsResponse) =
                    codec::decode_typed_response(ApiKey::ApiVersions, 0, frame)?;
                let theirs = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map(|k| k.max_version)
                    .unwrap_or(0);
                let retry = theirs.min(ours.max);
                if retry >= version {
                    return Err(ClientError::ApiVersions(error_code));
                }
                version = retry;
                continue;
            }
            let (_, response): (_, ApiVersionsResponse) =
                codec::decode_typed_response(ApiKey::ApiVersions, version, frame)?;
            if response.error_code != 0 {
                return Err(ClientError::ApiVersions(response.error_code));
            }
            return Ok(response
                .api_keys
                .iter()
                .map(|k| {
                    let range = VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    };
                    (k.api_key, range)
                })
                .collect());
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The broker's advertised versions, by api key.
    pub fn broker_versions(&self) -> &BTreeMap<i16, VersionRange> {
        &self.broker_versions
    }

    /// The version a request of `api_key` is sent at: the highest both sides support. Ours is
    /// fjord's served range where it has one (what fjord is tested with), else the codec's.
    pub fn version_for(&self, api_key: ApiKey) -> Result<i16, ClientError> {
        let ours = versions::supported_range(api_key).unwrap_or(api_key.valid_versions());
        let theirs = *self
            .broker_versions
            .get(&(api_key as i16))
            .ok_or(ClientError::UnsupportedApi(api_key))?;
        let common = ours.intersect(&theirs);
        if common.is_empty() {
            return Err(ClientError::NoCommonVersion {
                api_key,
                ours,
                theirs,
            });
        }
        Ok(common.max)
    }

    /// Sends a typed request and waits for its typed response.
    pub async fn call<R>(&self, request: R) -> Result<R::Response, ClientError>
    where
        R: Request + Into<RequestKind>,
    {
        self.call_with_timeout(request, self.options.request_timeout)
            .await
    }

    /// [`KafkaConnection::call`] with its own timeout, for requests the broker may hold
    /// longer than usual (JoinGroup waits for the whole group to join).
    pub async fn call_with_timeout<R>(
        &self,
        request: R,
        timeout: Duration,
    ) -> Result<R::Response, ClientError>
    where
        R: Request + Into<RequestKind>,
    {
        let api_key = api_key_of::<R>()?;
        let version = self.version_for(api_key)?;
        let frame = self
            .round_trip_with_timeout(api_key, version, request.into(), true, timeout)
            .await?
            .ok_or(ClientError::Closed)?;
        let (_, response) = codec::decode_typed_response(api_key, version, frame)?;
        Ok(response)
    }

    /// Sends any served request and waits for its response.
    pub async fn call_kind(&self, request: RequestKind) -> Result<ResponseKind, ClientError> {
        let api_key = codec::request_api_key(&request)?;
        let version = self.version_for(api_key)?;
        let frame = self
            .round_trip(api_key, version, request, true)
            .await?
            .ok_or(ClientError::Closed)?;
        let (_, response) = codec::decode_response(api_key, version, frame)?;
        Ok(response)
    }

    /// Sends a request the broker does not answer (Produce with acks=0). Completes once the
    /// request is handed to the transport.
    pub async fn send_only<R>(&self, request: R) -> Result<(), ClientError>
    where
        R: Request + Into<RequestKind>,
    {
        let api_key = api_key_of::<R>()?;
        let version = self.version_for(api_key)?;
        self.round_trip(api_key, version, request.into(), false)
            .await
            .map(|_| ())
    }

    /// Whether the connection is known to be unusable (the broker hung up, or [`close`]
    /// was called). A connection that is not closed may still fail on the next call.
    ///
    /// [`close`]: KafkaConnection::close
    pub fn is_closed(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }

    /// Closes the connection: calls waiting for responses fail with `Closed`, later calls
    /// are refused, and the transport's sending side is dropped so that the broker closes
    /// its end too. Used after a timeout, when the response stream can no longer be
    /// trusted to arrive (the Java client does the same).
    pub async fn close(&self) {
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.closed = true;
            for waiting in q.waiting.drain(..) {
                let _ = waiting.reply.send(Err(ClientError::Closed));
            }
        }
        self.sender.lock().await.writer = None;
    }

    async fn round_trip(
        &self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
        expect_response: bool,
    ) -> Result<Option<Bytes>, ClientError> {
        let timeout = self.options.request_timeout;
        self.round_trip_with_timeout(api_key, version, body, expect_response, timeout)
            .await
    }

    /// Writes one request; if `expect_response`, waits up to `timeout` for the response
    /// frame. Cancelling during the write may leave a partial frame on the wire, which ends
    /// the connection.
    async fn round_trip_with_timeout(
        &self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
        expect_response: bool,
        timeout: Duration,
    ) -> Result<Option<Bytes>, ClientError> {
        let reply = {
            let mut sender = self.sender.lock().await;
            let correlation_id = sender.next_correlation_id;
            let header = RequestHeader::default()
                .with_request_api_key(api_key as i16)
                .with_request_api_version(version)
                .with_correlation_id(correlation_id)
                .with_client_id(Some(StrBytes::from_string(self.options.client_id.clone())));
            let frame = codec::encode_request(&header, &body)?;
            let reply = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.closed {
                    return Err(ClientError::Closed);
                }
                expect_response.then(|| {
                    let (tx, rx) = oneshot::channel();
                    queue.waiting.push_back(Waiting {
                        correlation_id,
                        reply: tx,
                    });
                    rx
                })
            };
            sender.next_correlation_id = correlation_id.wrapping_add(1);
            let Some(writer) = sender.writer.as_mut() else {
                return Err(ClientError::Closed);
            };
            writer.send_frame(frame).await?;
            reply
        };
        let Some(reply) = reply else {
            return Ok(None);
        };
        match select(reply, self.clock.sleep(timeout)).await {
            Either::Left((Ok(result), _)) => result.map(Some),
            Either::Left((Err(oneshot::Canceled), _)) => Err(ClientError::Closed),
            Either::Right(((), _)) => Err(ClientError::Timeout(timeout)),
        }
    }
}

fn api_key_of<R: Request>() -> Result<ApiKey, ClientError> {
    ApiKey::try_from(R::KEY).map_err(|()| ClientError::Codec(CodecError::UnknownApiKey(R::KEY)))
}

/// Hands each response to the oldest waiting call until the connection ends, then fails
/// every call still waiting.
async fn read_responses(mut reader: Box<dyn FrameReader>, queue: Arc<Mutex<Queue>>) {
    let end = loop {
        let frame = match reader.recv_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break ClientError::Closed,
            Err(e) => break ClientError::Io(e),
        };
        // Every response header starts with the correlation id.
        let got = frame.get(..4).map(|mut b| b.get_i32());
        let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(waiting) = q.waiting.pop_front() else {
            tracing::warn!("kafka client: response with no request waiting");
            break ClientError::Closed;
        };
        if got != Some(waiting.correlation_id) {
            let error = CodecError::CorrelationMismatch {
                expected: waiting.correlation_id,
                got: got.unwrap_or(-1),
            };
            tracing::warn!(error = %error, "kafka client: closing the connection");
            let _ = waiting.reply.send(Err(error.into()));
            break ClientError::Closed;
        }
        // The caller may have timed out and gone: then the response is dropped.
        let _ = waiting.reply.send(Ok(frame));
    };
    tracing::debug!(reason = %end, "kafka client connection closed");
    let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
    q.closed = true;
    for waiting in q.waiting.drain(..) {
        let _ = waiting.reply.send(Err(ClientError::Closed));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use fjord_replication::Instant;
    use futures::channel::mpsc;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use futures::StreamExt;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse, ProduceRequest};

    use super::*;
    use crate::kafka::codec::DecodedRequest;
    use crate::kafka::server::{
        memory_connection_pair, serve_connection, ConnectionLimits, RequestContext, RequestHandler,
    };

    /// Hands spawned tasks to the test's LocalPool.
    struct ChannelSpawner(mpsc::UnboundedSender<BoxFuture<'static, ()>>);

    impl Spawner for ChannelSpawner {
        fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
            let _ = self.0.unbounded_send(task);
        }
    }

    /// Sleeps never end until `expire` is set; then they end at once.
    #[derive(Default)]
    struct TestClock {
        expire: AtomicBool,
    }

    impl Clock for TestClock {
        fn now(&self) -> Instant {
            Instant::ZERO
        }
        fn wall_clock_ms(&self) -> i64 {
            0
        }
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            if self.expire.load(Ordering::SeqCst) {
                Box::pin(futures::future::ready(()))
            } else {
                Box::pin(futures::future::pending())
            }
        }
    }

    /// Metadata: answered after `(10 - correlation id)` yields (later requests finish
    /// first), with the correlation id in `throttle_time_ms`; correlation id 99 never.
    /// Produce acks=0: no answer.
    struct SlowHandler;

    impl RequestHandler for SlowHandler {
        fn handle(
            &self,
            ctx: RequestContext,
            request: DecodedRequest,
        ) -> BoxFuture<'static, Option<ResponseKind>> {
            Box::pin(async move {
                if let RequestKind::Produce(p) = &request.body {
                    assert_eq!(p.acks, 0);
                    return None;
                }
                if ctx.correlation_id == 99 {
                    futures::future::pending::<()>().await;
                }
                for _ in 0..(10 - ctx.correlation_id).max(0) {
                    yield_now().await;
                }
                Some(ResponseKind::Metadata(
                    MetadataResponse::default().with_throttle_time_ms(ctx.correlation_id),
                ))
            })
        }
    }

    async fn yield_now() {
        let mut yielded = false;
        futures::future::poll_fn(|cx| {
            if yielded {
                std::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Connects to a fresh in-memory `serve_connection` per call.
    struct MemoryConnector {
        spawner: Arc<ChannelSpawner>,
    }

    impl Connector for MemoryConnector {
        fn connect(&self, addr: &str) -> BoxFuture<'_, io::Result<Box<dyn FrameConnection>>> {
            let (client, server) = memory_connection_pair(8, "client", addr);
            self.spawner.spawn(
                "server",
                Box::pin(async move {
                    let handler: Arc<dyn RequestHandler> = Arc::new(SlowHandler);
                    serve_connection(Box::new(server), handler, ConnectionLimits::default(), 1)
                        .await;
                }),
            );
            Box::pin(futures::future::ready(Ok(
                Box::new(client) as Box<dyn FrameConnection>
            )))
        }
    }

    struct Env {
        pool: LocalPool,
        spawner: Arc<ChannelSpawner>,
        clock: Arc<TestClock>,
    }

    fn env() -> Env {
        let pool = LocalPool::new();
        let (tx, mut rx) = mpsc::unbounded();
        let local = pool.spawner();
        pool.spawner()
            .spawn_local(async move {
                while let Some(task) = rx.next().await {
                    local.spawn_local(task).expect("pool alive");
                }
            })
            .expect("pool alive");
        Env {
            pool,
            spawner: Arc::new(ChannelSpawner(tx)),
            clock: Arc::new(TestClock::default()),
        }
    }

    impl Env {
        fn connect(&mut self, connector: &dyn Connector) -> Result<KafkaConnection, ClientError> {
            let clock: Arc<dyn Clock> = self.clock.clone();
            let spawner = self.spawner.clone();
            self.pool.run_until(KafkaConnection::connect(
                connector,
                "broker:9092",
                clock,
                spawner.as_ref(),
                ClientOptions::default(),
            ))
        }
    }

    #[test]
    fn negotiates_versions_and_pipelines_calls_in_order() {
        let mut env = env();
        let connector = MemoryConnector {
            spawner: env.spawner.clone(),
        };
        let conn = env.connect(&connector).expect("connects");
        assert_eq!(conn.peer(), "broker:9092");
        assert_eq!(conn.version_for(ApiKey::Metadata).unwrap(), 13);
        assert_eq!(conn.version_for(ApiKey::Produce).unwrap(), 12);
        assert!(matches!(
            conn.version_for(ApiKey::SaslHandshake),
            Err(ClientError::UnsupportedApi(ApiKey::SaslHandshake))
        ));
        // ApiVersions took correlation id 0; these take 1, 2, 3 and finish in reverse.
        let calls = (0..3).map(|_| conn.call(MetadataRequest::default()));
        let results = env.pool.run_until(futures::future::join_all(calls));
        let throttles: Vec<i32> = results
            .into_iter()
            .map(|r| r.expect("answered").throttle_time_ms)
            .collect();
        assert_eq!(throttles, [1, 2, 3]);
        let any = env
            .pool
            .run_until(conn.call_kind(RequestKind::Metadata(MetadataRequest::default())))
            .expect("answered");
        assert!(matches!(any, ResponseKind::Metadata(m) if m.throttle_time_ms == 4));
    }

    #[test]
    fn send_only_expects_nothing_and_later_calls_still_match() {
        let mut env = env();
        let connector = MemoryConnector {
            spawner: env.spawner.clone(),
        };
        let conn = env.connect(&connector).expect("connects");
        env.pool
            .run_until(conn.send_only(ProduceRequest::default().with_acks(0)))
            .expect("sent");
        let m = env
            .pool
            .run_until(conn.call(MetadataRequest::default()))
            .expect("answered");
        assert_eq!(m.throttle_time_ms, 2);
    }

    #[test]
    fn a_call_times_out_through_the_clock() {
        let mut env = env();
        let connector = MemoryConnector {
            spawner: env.spawner.clone(),
        };
        let conn = env.connect(&connector).expect("connects");
        // Skip to correlation id 99, which the handler never answers.
        for _ in 1..99 {
            env.pool
                .run_until(conn.send_only(ProduceRequest::default().with_acks(0)))
                .expect("sent");
        }
        env.clock.expire.store(true, Ordering::SeqCst);
        let result = env.pool.run_until(conn.call(MetadataRequest::default()));
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
    }

    /// A broker that only knows ApiVersions up to v2 and answers v3+ the KIP-511 way.
    struct OldBrokerConnector {
        spawner: Arc<ChannelSpawner>,
    }

    impl Connector for OldBrokerConnector {
        fn connect(&self, addr: &str) -> BoxFuture<'_, io::Result<Box<dyn FrameConnection>>> {
            let (client, server) = memory_connection_pair(8, "client", addr);
            self.spawner.spawn(
                "old-broker",
                Box::pin(async move {
                    let (mut reader, mut writer) =
                        (Box::new(server) as Box<dyn FrameConnection>).split();
                    while let Ok(Some(frame)) = reader.recv_frame().await {
                        let version = i16::from_be_bytes([frame[2], frame[3]]);
                        let correlation_id =
                            i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                        let (error, reply_version) = if version > 2 {
                            (UNSUPPORTED_VERSION, 0)
                        } else {
                            (0, version)
                        };
                        let body = versions::api_versions_response(error);
                        let response = codec::encode_response(
                            ApiKey::ApiVersions,
                            reply_version,
                            correlation_id,
                            &ResponseKind::ApiVersions(body),
                        )
                        .expect("encodes");
                        // The real table says ApiVersions max 4: rewrite as an old broker's 2.
                        let response = if error != 0 {
                            let mut decoded: ApiVersionsResponse =
                                codec::decode_typed_response(ApiKey::ApiVersions, 0, response)
                                    .expect("decodes")
                                    .1;
                            for k in &mut decoded.api_keys {
                                if k.api_key == ApiKey::ApiVersions as i16 {
                                    k.max_version = 2;
                                }
                            }
                            codec::encode_response(
                                ApiKey::ApiVersions,
                                0,
                                correlation_id,
                                &ResponseKind::ApiVersions(decoded),
                            )
                            .expect("encodes")
                        } else {
                            response
                        };
                        if writer.send_frame(response).await.is_err() {
                            return;
                        }
                    }
                }),
            );
            Box::pin(futures::future::ready(Ok(
                Box::new(client) as Box<dyn FrameConnection>
            )))
        }
    }

    #[test]
    fn unsupported_api_versions_answer_makes_the_client_retry_lower() {
        let mut env = env();
        let connector = OldBrokerConnector {
            spawner: env.spawner.clone(),
        };
        let conn = env.connect(&connector).expect("connects after retrying");
        assert_eq!(conn.version_for(ApiKey::Fetch).unwrap(), 12);
    }

    #[test]
    fn calls_fail_with_closed_once_the_broker_hangs_up() {
        let mut env = env();
        let connector = MemoryConnector {
            spawner: env.spawner.clone(),
        };
        let conn = env.connect(&connector).expect("connects");
        // Queue a call whose frame the server cannot decode: the server closes the
        // connection, and the waiting call learns of it.
        let result = env.pool.run_until(async {
            let mut sender = conn.sender.lock().await;
            let (tx, rx) = oneshot::channel();
            conn.queue.lock().unwrap().waiting.push_back(Waiting {
                correlation_id: 1,
                reply: tx,
            });
            sender
                .writer
                .as_mut()
                .expect("open")
                .send_frame(Bytes::from_static(&[0x40, 0, 0, 0, 0, 0, 0, 1]))
                .await
                .expect("sent");
            drop(sender);
            rx.await.expect("answered")
        });
        assert!(matches!(result, Err(ClientError::Closed)), "{result:?}");
        let after = env.pool.run_until(conn.call(MetadataRequest::default()));
        assert!(matches!(after, Err(ClientError::Closed)), "{after:?}");
    }
}
