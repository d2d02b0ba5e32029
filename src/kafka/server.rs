//! The per-connection Kafka request loop, independent of the transport and the executor.
//!
//! [`serve_connection`] reads frames, decodes them, runs up to `in_flight_requests_max`
//! requests of one connection concurrently and writes their responses strictly in request
//! order (Kafka clients match responses to requests by order, checking correlation ids).
//! It answers ApiVersions itself, so handlers never see it. Any frame it cannot decode
//! closes the connection, as Kafka does — except an ApiVersions of a version it does not
//! know, which it answers with UNSUPPORTED_VERSION and its own list in a v0 body, so that
//! the client retries with a version both know (KIP-511).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use fjord_replication::BoxFuture;
use futures::channel::mpsc;
use futures::stream::{FusedStream, FuturesOrdered};
use futures::{SinkExt, Stream, StreamExt};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use super::codec::{self, CodecError, DecodedRequest};
use super::versions;

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The receiving half of a connection carrying whole Kafka frames (size prefix removed).
pub trait FrameReader: Send + 'static {
    /// The next frame; `Ok(None)` once the peer closed the connection cleanly. A transport
    /// refuses frames over its size limit with an error (and closes).
    fn recv_frame(&mut self) -> BoxFuture<'_, io::Result<Option<Bytes>>>;
}

/// The sending half of a connection. Dropping it closes the connection's sending side.
pub trait FrameWriter: Send + 'static {
    /// Sends one frame (the transport adds the size prefix).
    fn send_frame(&mut self, frame: Bytes) -> BoxFuture<'_, io::Result<()>>;
}

/// A connection carrying Kafka frames: TCP in production (`fjord::runtime`), an in-memory
/// pair ([`memory_connection_pair`]) in tests, the simulator's network in the simulator.
/// It is split so that reading and writing can proceed independently.
pub trait FrameConnection: Send + 'static {
    /// Who is on the other end, for logs and [`RequestContext::peer`].
    fn peer(&self) -> String;
    fn split(self: Box<Self>) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>);
}

/// What a handler knows about the request beyond its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    pub connection_id: u64,
    pub peer: String,
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    /// From the client's ApiVersions v3+ request, if it sent one on this connection.
    pub client_software_name: Option<String>,
    pub client_software_version: Option<String>,
}

/// The broker logic behind the wire. Requests of one connection are handled concurrently
/// (up to the in-flight limit); their responses are sent in request order regardless of
/// which future completes first.
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers `request`. `None` sends nothing: only for Produce with acks=0, which Kafka
    /// never answers (any other request left unanswered stalls the client's connection).
    fn handle(
        &self,
        ctx: RequestContext,
        request: DecodedRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>>;
}

/// Limits on what one client may make the broker hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Requests of one connection being handled or waiting to be written; at the limit the
    /// connection is not read (TCP pushes back on the client).
    pub in_flight_requests_max: usize,
    /// Largest request frame a transport accepts; larger ones close the connection before
    /// anything is allocated for them.
    pub frame_size_max_bytes: usize,
    /// Open client connections per listener; more are closed on accept.
    pub connections_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            in_flight_requests_max: 64,
            // Kafka's socket.request.max.bytes default.
            frame_size_max_bytes: 100 * 1024 * 1024,
            connections_max: 4096,
        }
    }
}

/// Why [`serve_connection`] returned.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionClose {
    #[error("closed by the peer")]
    PeerClosed,
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

/// What the client told us about itself in ApiVersions.
#[derive(Default)]
struct ClientSoftware {
    name: Option<String>,
    version: Option<String>,
}

/// One in-flight request: completes with the encoded response, or `None` for no response.
type Pending = BoxFuture<'static, Result<Option<Bytes>, CodecError>>;

/// Serves one client connection until it closes or sends something undecodable. Logs the
/// open and the close (debug; warn for protocol errors).
pub async fn serve_connection(
    conn: Box<dyn FrameConnection>,
    handler: Arc<dyn RequestHandler>,
    limits: ConnectionLimits,
    connection_id: u64,
) -> ConnectionClose {
    assert!(limits.in_flight_requests_max > 0);
    let peer = conn.peer();
    tracing::debug!(connection_id, %peer, "kafka connection open");
    let close = run_connection(conn, handler, limits, connection_id, &peer).await;
    match &close {
        ConnectionClose::PeerClosed => {
            tracing::debug!(connection_id, %peer, "kafka connection closed by the client")
        }
        ConnectionClose::Io(e) => {
            tracing::debug!(connection_id, %peer, error = %e, "kafka connection closed: io error")
        }
        ConnectionClose::Codec(e) => {
            tracing::warn!(connection_id, %peer, error = %e, "kafka connection closed: bad request")
        }
    }
    close
}

enum Event {
    Frame(Option<io::Result<Bytes>>),
    Done(Result<Option<Bytes>, CodecError>),
}

async fn run_connection(
    conn: Box<dyn FrameConnection>,
    handler: Arc<dyn RequestHandler>,
    limits: ConnectionLimits,
    connection_id: u64,
    peer: &str,
) -> ConnectionClose {
    let (reader, mut writer) = conn.split();
    let mut frames = frame_stream(reader);
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut software = ClientSoftware::default();
    loop {
        if frames.is_terminated() && in_flight.is_empty() {
            return ConnectionClose::PeerClosed;
        }
        let event = futures::future::poll_fn(|cx| {
            // Finished responses first: they free in-flight slots and memory.
            if let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                return Poll::Ready(Event::Done(done));
            }
            if in_flight.len() < limits.in_flight_requests_max && !frames.is_terminated() {
                if let Poll::Ready(frame) = frames.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Frame(frame));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done(Ok(Some(response))) => {
                if let Err(e) = writer.send_frame(response).await {
                    return e.into();
                }
            }
            Event::Done(Ok(None)) => {}
            Event::Done(Err(e)) => {
                tracing::error!(connection_id, %peer, error = %e, "response does not encode");
                return e.into();
            }
            // End of stream: finish what is in flight, then close.
            Event::Frame(None) => {}
            Event::Frame(Some(Err(e))) => return e.into(),
            Event::Frame(Some(Ok(frame))) => {
                let pending = match dispatch(frame, &handler, connection_id, peer, &mut software) {
                    Ok(pending) => pending,
                    Err(e) => return e.into(),
                };
                in_flight.push_back(pending);
            }
        }
    }
}

/// Decodes one request frame and starts its handling.
fn dispatch(
    frame: Bytes,
    handler: &Arc<dyn RequestHandler>,
    connection_id: u64,
    peer: &str,
    software: &mut ClientSoftware,
) -> Result<Pending, CodecError> {
    let request = match codec::decode_request(frame) {
        Ok(request) => request,
        Err(CodecError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            api_version,
            correlation_id,
        }) => {
            tracing::debug!(connection_id, %peer, api_version, "ApiVersions version unknown: answering v0 with UNSUPPORTED_VERSION");
            let response =
                ResponseKind::ApiVersions(versions::api_versions_response(UNSUPPORTED_VERSION));
            let frame = codec::encode_response(ApiKey::ApiVersions, 0, correlation_id, &response);
            return Ok(ready(frame.map(Some)));
        }
        Err(e) => return Err(e),
    };
    let (api_key, api_version, correlation_id) = (
        request.api_key,
        request.api_version,
        request.correlation_id(),
    );
    if let RequestKind::ApiVersions(body) = &request.body {
        if api_version >= 3 {
            software.name = Some(body.client_software_name.to_string());
            software.version = Some(body.client_software_version.to_string());
        }
        let response = ResponseKind::ApiVersions(versions::api_versions_response(0));
        let frame = codec::encode_response(api_key, api_version, correlation_id, &response);
        return Ok(ready(frame.map(Some)));
    }
    let ctx = RequestContext {
        connection_id,
        peer: peer.to_string(),
        api_key,
        api_version,
        correlation_id,
        client_id: request.header.client_id.as_ref().map(|c| c.to_string()),
        client_software_name: software.name.clone(),
        client_software_version: software.version.clone(),
    };
    let handling = handler.handle(ctx, request);
    Ok(Box::pin(async move {
        match handling.await {
            Some(response) => {
                codec::encode_response(api_key, api_version, correlation_id, &response).map(Some)
            }
            None => Ok(None),
        }
    }))
}

fn ready(result: Result<Option<Bytes>, CodecError>) -> Pending {
    Box::pin(futures::future::ready(result))
}

/// The reader as a stream that ends after the first `None` or error.
fn frame_stream(
    reader: Box<dyn FrameReader>,
) -> futures::stream::Fuse<Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>> {
    let stream = futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.recv_frame().await {
            Ok(Some(frame)) => Some((Ok(frame), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    let boxed: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> = Box::pin(stream);
    boxed.fuse()
}

/// One end of an in-memory connection: frames are passed whole through bounded channels.
pub struct MemoryConnection {
    peer: String,
    rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
}

/// Two connected ends; each sees the other's `name` as its peer. `capacity` frames may be
/// buffered per direction before `send_frame` waits.
pub fn memory_connection_pair(
    capacity: usize,
    a_name: &str,
    b_name: &str,
) -> (MemoryConnection, MemoryConnection) {
    let (a_tx, b_rx) = mpsc::channel(capacity);
    let (b_tx, a_rx) = mpsc::channel(capacity);
    (
        MemoryConnection {
            peer: b_name.to_string(),
            rx: a_rx,
            tx: a_tx,
        },
        MemoryConnection {
            peer: a_name.to_string(),
            rx: b_rx,
            tx: b_tx,
        },
    )
}

struct MemoryReader(mpsc::Receiver<Bytes>);
struct MemoryWriter(mpsc::Sender<Bytes>);

impl FrameReader for MemoryReader {
    fn recv_frame(&mut self) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        Box::pin(async move { Ok(self.0.next().await) })
    }
}

impl FrameWriter for MemoryWriter {
    fn send_frame(&mut self, frame: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.0
                .send(frame)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "peer dropped"))
        })
    }
}

impl FrameConnection for MemoryConnection {
    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>) {
        (
            Box::new(MemoryReader(self.rx)),
            Box::new(MemoryWriter(self.tx)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use futures::channel::oneshot;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use kafka_protocol::messages::{
        ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
        ProduceResponse, RequestHeader,
    };
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    /// Answers Metadata once the test opens its gate (keyed by correlation id), with the
    /// correlation id in `throttle_time_ms` to identify the answer; Produce with acks=0 gets
    /// no response, other Produce an empty one.
    #[derive(Default)]
    struct ToyHandler {
        gates: Mutex<BTreeMap<i32, oneshot::Receiver<()>>>,
        seen: Mutex<Vec<RequestContext>>,
    }

    impl ToyHandler {
        fn gate(&self, correlation_id: i32) -> oneshot::Sender<()> {
            let (tx, rx) = oneshot::channel();
            self.gates.lock().unwrap().insert(correlation_id, rx);
            tx
        }

        fn seen(&self) -> Vec<i32> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.correlation_id)
                .collect()
        }
    }

    impl RequestHandler for ToyHandler {
        fn handle(
            &self,
            ctx: RequestContext,
            request: DecodedRequest,
        ) -> BoxFuture<'static, Option<ResponseKind>> {
            self.seen.lock().unwrap().push(ctx.clone());
            let gate = self.gates.lock().unwrap().remove(&ctx.correlation_id);
            Box::pin(async move {
                match request.body {
                    RequestKind::Produce(p) if p.acks == 0 => None,
                    RequestKind::Produce(_) => {
                        Some(ResponseKind::Produce(ProduceResponse::default()))
                    }
                    _ => {
                        if let Some(gate) = gate {
                            let _ = gate.await;
                        }
                        Some(ResponseKind::Metadata(
                            MetadataResponse::default().with_throttle_time_ms(ctx.correlation_id),
                        ))
                    }
                }
            })
        }
    }

    struct Harness {
        pool: LocalPool,
        client_tx: mpsc::Sender<Bytes>,
        client_rx: mpsc::Receiver<Bytes>,
        handler: Arc<ToyHandler>,
        closed: Arc<Mutex<Option<String>>>,
    }

    fn harness(in_flight_requests_max: usize) -> Harness {
        let (client, server) = memory_connection_pair(16, "client", "server");
        let handler = Arc::new(ToyHandler::default());
        let closed = Arc::new(Mutex::new(None));
        let pool = LocalPool::new();
        let limits = ConnectionLimits {
            in_flight_requests_max,
            ..ConnectionLimits::default()
        };
        let (h, c) = (handler.clone() as Arc<dyn RequestHandler>, closed.clone());
        pool.spawner()
            .spawn_local(async move {
                let close = serve_connection(Box::new(server), h, limits, 1).await;
                *c.lock().unwrap() = Some(close.to_string());
            })
            .unwrap();
        Harness {
            pool,
            client_tx: client.tx,
            client_rx: client.rx,
            handler,
            closed,
        }
    }

    fn request(api_key: ApiKey, version: i16, correlation_id: i32, body: RequestKind) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("toy")));
        codec::encode_request(&header, &body).expect("encodes")
    }

    fn metadata(correlation_id: i32) -> Bytes {
        request(
            ApiKey::Metadata,
            12,
            correlation_id,
            RequestKind::Metadata(MetadataRequest::default()),
        )
    }

    impl Harness {
        fn send(&mut self, frame: Bytes) {
            self.client_tx.try_send(frame).expect("room in the channel");
            self.pool.run_until_stalled();
        }

        /// Responses written so far, as (correlation id, throttle_time_ms).
        fn metadata_responses(&mut self) -> Vec<(i32, i32)> {
            self.pool.run_until_stalled();
            let mut out = Vec::new();
            while let Ok(frame) = self.client_rx.try_recv() {
                let (header, body) =
                    codec::decode_response(ApiKey::Metadata, 12, frame).expect("decodes");
                let ResponseKind::Metadata(m) = body else {
                    panic!("not metadata: {body:?}")
                };
                out.push((header.correlation_id, m.throttle_time_ms));
            }
            out
        }

        fn closed(&mut self) -> Option<String> {
            self.pool.run_until_stalled();
            self.closed.lock().unwrap().clone()
        }
    }

    #[test]
    fn responses_go_out_in_request_order_whatever_order_handlers_finish_in() {
        let mut h = harness(8);
        let gates: Vec<_> = (1..=3).map(|c| h.handler.gate(c)).collect();
        for c in 1..=3 {
            h.send(metadata(c));
        }
        assert_eq!(h.handler.seen(), [1, 2, 3], "all three run concurrently");
        let mut gates = gates.into_iter();
        let (g1, g2, g3) = (
            gates.next().unwrap(),
            gates.next().unwrap(),
            gates.next().unwrap(),
        );
        g3.send(()).unwrap();
        g2.send(()).unwrap();
        assert_eq!(h.metadata_responses(), [], "3 and 2 wait for 1");
        g1.send(()).unwrap();
        assert_eq!(h.metadata_responses(), [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(h.closed(), None);
        drop(h.client_tx);
        h.pool.run_until_stalled();
        assert_eq!(
            h.closed.lock().unwrap().as_deref(),
            Some("closed by the peer")
        );
    }

    #[test]
    fn in_flight_limit_stops_reading() {
        let mut h = harness(2);
        let g1 = h.handler.gate(1);
        let _g2 = h.handler.gate(2);
        for c in 1..=3 {
            h.send(metadata(c));
        }
        assert_eq!(h.handler.seen(), [1, 2], "the third waits for a slot");
        g1.send(()).unwrap();
        assert_eq!(h.metadata_responses(), [(1, 1)]);
        assert_eq!(h.handler.seen(), [1, 2, 3]);
    }

    #[test]
    fn acks_zero_produce_gets_no_response_and_keeps_order() {
        let mut h = harness(8);
        let produce = |c, acks| {
            request(
                ApiKey::Produce,
                9,
                c,
                RequestKind::Produce(ProduceRequest::default().with_acks(acks)),
            )
        };
        h.send(produce(1, 0));
        h.send(metadata(2));
        h.send(produce(3, 0));
        h.send(metadata(4));
        assert_eq!(h.metadata_responses(), [(2, 2), (4, 4)]);
        h.send(produce(5, 1));
        let frame = h.client_rx.try_recv().expect("a produce response");
        let (header, _) = codec::decode_response(ApiKey::Produce, 9, frame).expect("decodes");
        assert_eq!(header.correlation_id, 5);
    }

    #[test]
    fn garbage_closes_the_connection_after_earlier_responses() {
        let mut h = harness(8);
        h.send(metadata(1));
        h.send(Bytes::from_static(&[
            0, 3, 0, 12, 0, 0, 0, 2, 0xff, 0xff, 0xff,
        ]));
        let closed = h.closed().expect("closed");
        assert!(
            closed.starts_with("codec: malformed Metadata v12"),
            "{closed}"
        );
        // The client sees the end of the stream (earlier answers may or may not have gone).
        let ended = loop {
            match h.client_rx.try_recv() {
                Ok(_) => continue,
                Err(e) => break e.is_closed(),
            }
        };
        assert!(ended, "server side dropped its writer");
    }

    #[test]
    fn unknown_api_key_closes_and_handler_never_runs() {
        let mut h = harness(8);
        h.send(Bytes::from_static(&[0x40, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(h.closed().as_deref(), Some("codec: unknown api key 16384"));
        assert!(h.handler.seen().is_empty());
    }

    #[test]
    fn api_versions_is_answered_by_the_server_and_records_client_software() {
        let mut h = harness(8);
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kcat"))
            .with_client_software_version(StrBytes::from_static_str("1.7.1"));
        h.send(request(
            ApiKey::ApiVersions,
            3,
            9,
            RequestKind::ApiVersions(body),
        ));
        let frame = h.client_rx.try_recv().expect("answered");
        let (header, body) = codec::decode_response(ApiKey::ApiVersions, 3, frame).unwrap();
        let ResponseKind::ApiVersions(v) = body else {
            panic!("{body:?}")
        };
        assert_eq!((header.correlation_id, v.error_code), (9, 0));
        assert_eq!(v.api_keys.len(), versions::SUPPORTED_APIS.len());
        assert!(
            h.handler.seen().is_empty(),
            "the handler never sees ApiVersions"
        );
        h.send(metadata(10));
        let ctx = h.handler.seen.lock().unwrap()[0].clone();
        assert_eq!(ctx.client_software_name.as_deref(), Some("kcat"));
        assert_eq!(ctx.client_software_version.as_deref(), Some("1.7.1"));
        assert_eq!(ctx.client_id.as_deref(), Some("toy"));
        assert_eq!((ctx.connection_id, ctx.peer.as_str()), (1, "client"));
    }

    #[test]
    fn unsupported_api_versions_version_is_answered_like_kafka() {
        let mut h = harness(8);
        // ApiVersions v127 from a future client: header fields after the prefix are unknown.
        h.send(Bytes::from_static(&[0, 18, 0, 127, 0, 0, 0, 4, 1, 2, 3]));
        let frame = h.client_rx.try_recv().expect("answered");
        let (header, body): (_, ApiVersionsResponse) =
            codec::decode_typed_response(ApiKey::ApiVersions, 0, frame).unwrap();
        assert_eq!(
            (header.correlation_id, body.error_code),
            (4, UNSUPPORTED_VERSION)
        );
        let own = body
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::ApiVersions as i16)
            .expect("lists ApiVersions");
        assert_eq!((own.min_version, own.max_version), (0, 4));
        assert_eq!(
            h.closed(),
            None,
            "the client may retry on the same connection"
        );
        // Other APIs at unsupported versions close the connection, as Kafka does.
        h.send(request(
            ApiKey::Metadata,
            12,
            5,
            RequestKind::Metadata(MetadataRequest::default()),
        ));
        let mut raw = metadata(6).to_vec();
        raw[2..4].copy_from_slice(&99i16.to_be_bytes());
        h.send(Bytes::from(raw));
        let closed = h.closed().expect("closed");
        assert!(closed.contains("version 99 of Metadata"), "{closed}");
    }

    /// Answers Metadata after the number of yields the test's list gives for its
    /// correlation id, so that handlers finish in an arbitrary order.
    struct DelayHandler {
        delays: Vec<u8>,
    }

    impl RequestHandler for DelayHandler {
        fn handle(
            &self,
            ctx: RequestContext,
            _request: DecodedRequest,
        ) -> BoxFuture<'static, Option<ResponseKind>> {
            let index = usize::try_from(ctx.correlation_id).unwrap();
            let delay = self.delays[index];
            Box::pin(async move {
                for _ in 0..delay {
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
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever order handlers finish in and whatever the limit, every request is
        /// answered once, in request order.
        #[test]
        fn responses_are_always_in_request_order(
            delays in proptest::collection::vec(0u8..20, 1..40),
            in_flight_requests_max in 1usize..8,
        ) {
            let (mut client, server) = memory_connection_pair(64, "client", "server");
            let handler = Arc::new(DelayHandler { delays: delays.clone() });
            let limits = ConnectionLimits { in_flight_requests_max, ..ConnectionLimits::default() };
            let mut pool = LocalPool::new();
            pool.spawner()
                .spawn_local(async move {
                    serve_connection(Box::new(server), handler, limits, 1).await;
                })
                .unwrap();
            let n = delays.len();
            let answers = pool.run_until(async move {
                for c in 0..n {
                    client.tx.send(metadata(c as i32)).await.unwrap();
                }
                drop(client.tx);
                let mut answers = Vec::new();
                while let Some(frame) = client.rx.next().await {
                    let (header, _) = codec::decode_response(ApiKey::Metadata, 12, frame).unwrap();
                    answers.push(header.correlation_id);
                }
                answers
            });
            let expected: Vec<i32> = (0..n as i32).collect();
            proptest::prop_assert_eq!(answers, expected);
        }
    }

    #[test]
    fn the_connection_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (_, server) = memory_connection_pair(1, "a", "b");
        let fut = serve_connection(
            Box::new(server),
            Arc::new(ToyHandler::default()),
            ConnectionLimits::default(),
            0,
        );
        assert_send(&fut);
    }
}
