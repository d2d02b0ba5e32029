//! [`Network`] over TCP between nodes.
//!
//! Wire format, per frame: a `u32` big-endian length of what follows, a version byte
//! ([`WIRE_VERSION`]), a bincode-2 (serde) [`FrameHeader`], then the payload (the rest).
//! Every connection is one-way: the dialing node writes, the accepting node reads. Its first
//! frame is a [`FrameHeader::Hello`] naming the cluster, the dialer and the node it meant to
//! reach; a mismatch closes the connection, so two clusters on one host never talk and a peer
//! that moved never receives mail meant for another node.
//!
//! Each peer has one outbound connection fed by a bounded queue: a full queue drops (the
//! [`Network`] contract allows loss; Raft retries). A writer task drains whatever is queued
//! into one buffered write, reconnects with capped exponential backoff, and notices a
//! closed connection by reading its (otherwise silent) read half. Inbound connections each
//! get a reader task that pushes into one bounded inbox, consumed by [`Network::recv`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use fjord_replication::io::FRAME_SIZE_MAX_BYTES;
use fjord_replication::{BoxFuture, Envelope, Network, NodeId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// The version byte every frame starts with. A frame with another version closes the
/// connection: both ends of a cluster must speak the same internal protocol.
pub const WIRE_VERSION: u8 = 1;

/// Bytes a frame may carry besides its payload (version byte and header).
const FRAME_OVERHEAD_MAX_BYTES: usize = 1024;

/// Frames the writer drains from its queue into one write.
const WRITE_COALESCE_FRAMES_MAX: usize = 256;

/// Buffer sizes of the per-connection buffered reader and writer.
const SOCKET_BUFFER_BYTES: usize = 64 * 1024;

/// The bincode configuration of frame headers; the limit bounds what a header may claim.
fn header_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_limit::<FRAME_OVERHEAD_MAX_BYTES>()
}

/// What a frame says before its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameHeader {
    /// First frame of every connection; its payload is empty.
    Hello {
        cluster_id: String,
        from: NodeId,
        to: NodeId,
    },
    /// A message from the connection's dialer; the payload is the message.
    Message,
}

/// Tuning of a [`TcpNetwork`]. Every field has a working default.
#[derive(Clone, Debug)]
pub struct TcpNetworkOptions {
    /// Connections from another cluster id are refused.
    pub cluster_id: String,
    /// Messages queued per peer before `send` drops.
    pub peer_queue_capacity: usize,
    /// Messages received but not yet taken by `recv` before arrivals are dropped.
    pub inbox_capacity: usize,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    pub connect_timeout: Duration,
    /// How long an accepted connection may take to say hello.
    pub hello_timeout: Duration,
}

impl Default for TcpNetworkOptions {
    fn default() -> Self {
        TcpNetworkOptions {
            cluster_id: "fjord".to_string(),
            peer_queue_capacity: 4096,
            inbox_capacity: 16 * 1024,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an inbound frame was refused; the connection is closed and this is logged.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("wire version {0}, expected {WIRE_VERSION}")]
    Version(u8),
    #[error("undecodable header: {0}")]
    Header(#[from] bincode::error::DecodeError),
    #[error("hello for cluster {cluster_id:?} node {to}, this is cluster {local_cluster:?} node {local}")]
    WrongDestination {
        cluster_id: String,
        to: NodeId,
        local_cluster: String,
        local: NodeId,
    },
    #[error("expected a hello frame first")]
    NoHello,
    #[error("hello timed out")]
    HelloTimeout,
}

/// The node-to-node transport of a production node. Dropping it stops every task it started
/// and closes its listener and connections.
pub struct TcpNetwork {
    local: NodeId,
    local_addr: SocketAddr,
    options: TcpNetworkOptions,
    inbox_tx: mpsc::Sender<Envelope>,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<Envelope>>,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    accept_task: AbortHandle,
}

/// The sending side of one peer: its queue and the writer task that drains it.
struct Peer {
    addr: SocketAddr,
    queue: mpsc::Sender<Bytes>,
    writer: AbortHandle,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl TcpNetwork {
    /// Binds `listen` (port 0 picks a free port: see [`TcpNetwork::local_addr`]) and starts
    /// the accept loop and one writer per peer. Must be called inside a Tokio runtime.
    pub async fn start(
        local: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> io::Result<Arc<TcpNetwork>> {
        Self::start_with(local, listen, peers, TcpNetworkOptions::default()).await
    }

    /// [`TcpNetwork::start`] with explicit options.
    pub async fn start_with(
        local: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpNetworkOptions,
    ) -> io::Result<Arc<TcpNetwork>> {
        assert!(options.peer_queue_capacity > 0 && options.inbox_capacity > 0);
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (inbox_tx, inbox_rx) = mpsc::channel(options.inbox_capacity);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            local,
            options.clone(),
            inbox_tx.clone(),
        ))
        .abort_handle();
        tracing::debug!(node = %local, %local_addr, "node network listening");
        let network = Arc::new(TcpNetwork {
            local,
            local_addr,
            options,
            inbox_tx,
            inbox_rx: tokio::sync::Mutex::new(inbox_rx),
            peers: Mutex::new(BTreeMap::new()),
            accept_task,
        });
        for (id, addr) in peers {
            network.set_peer(id, addr);
        }
        Ok(network)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds a peer or moves it to a new address (its queue and connection start afresh).
    /// Setting the local node is ignored: messages to oneself never touch the network.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.local {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        let (queue, rx) = mpsc::channel(self.options.peer_queue_capacity);
        let writer = tokio::spawn(peer_writer(self.local, id, addr, self.options.clone(), rx))
            .abort_handle();
        peers.insert(
            id,
            Peer {
                addr,
                queue,
                writer,
            },
        );
    }

    /// Forgets a peer: its queued messages are dropped and its connection closed.
    pub fn remove_peer(&self, id: NodeId) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.remove(&id);
    }
}

impl Drop for TcpNetwork {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every reader.
        self.accept_task.abort();
    }
}

impl Network for TcpNetwork {
    fn local_id(&self) -> NodeId {
        self.local
    }

    fn send(&self, to: NodeId, payload: Bytes) {
        if payload.len() > FRAME_SIZE_MAX_BYTES {
            tracing::warn!(from = %self.local, %to, len = payload.len(), "message over the frame size limit dropped");
            return;
        }
        if to == self.local {
            let envelope = Envelope {
                from: self.local,
                to,
                payload,
            };
            if self.inbox_tx.try_send(envelope).is_err() {
                tracing::debug!(node = %self.local, "inbox full: message to self dropped");
            }
            return;
        }
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.get(&to) {
            Some(peer) => {
                if peer.queue.try_send(payload).is_err() {
                    tracing::debug!(from = %self.local, %to, "peer queue full: message dropped");
                }
            }
            None => tracing::debug!(from = %self.local, %to, "unknown peer: message dropped"),
        }
    }

    fn set_peer_address(&self, id: NodeId, addr: &str) {
        match addr.parse::<SocketAddr>() {
            Ok(a) => {
                let known = self
                    .peers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&id)
                    .map(|p| p.addr);
                if known != Some(a) {
                    self.set_peer(id, a);
                }
            }
            Err(e) => tracing::warn!(node = %self.local, peer = %id, addr, "bad peer address: {e}"),
        }
    }

    fn recv(&self) -> BoxFuture<'_, Envelope> {
        Box::pin(async move {
            let mut inbox = self.inbox_rx.lock().await;
            match inbox.recv().await {
                Some(envelope) => envelope,
                // Unreachable while `self` holds a sender; never complete rather than panic.
                None => std::future::pending().await,
            }
        })
    }
}

/// The prefix of a frame: length, version byte, header. The payload follows.
pub fn frame_prefix(header: &FrameHeader, payload_len: usize) -> Bytes {
    let header_bytes = match bincode::serde::encode_to_vec(header, header_config()) {
        Ok(b) => b,
        // Our own headers are a few bytes: failing to encode one is a bug.
        Err(e) => panic!("frame header does not encode: {e}"),
    };
    let body_len = 1 + header_bytes.len() + payload_len;
    assert!(body_len <= FRAME_SIZE_MAX_BYTES + FRAME_OVERHEAD_MAX_BYTES);
    let mut prefix = Vec::with_capacity(5 + header_bytes.len());
    prefix.extend_from_slice(&(body_len as u32).to_be_bytes());
    prefix.push(WIRE_VERSION);
    prefix.extend_from_slice(&header_bytes);
    Bytes::from(prefix)
}

/// Checks a frame's length prefix, before its body is allocated.
pub fn check_frame_len(len: usize) -> Result<(), FrameError> {
    let max = FRAME_SIZE_MAX_BYTES + FRAME_OVERHEAD_MAX_BYTES;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(())
}

/// Splits a frame's body (what follows the length prefix) into its header and payload.
fn decode_frame_body(body: Bytes) -> Result<(FrameHeader, Bytes), FrameError> {
    match body.first() {
        None => return Err(FrameError::Empty),
        Some(&v) if v != WIRE_VERSION => return Err(FrameError::Version(v)),
        Some(_) => {}
    }
    let (header, used): (FrameHeader, usize) =
        bincode::serde::decode_from_slice(&body[1..], header_config())?;
    Ok((header, body.slice(1 + used..)))
}

/// The sans-IO reading side of one inbound connection: the first frame must be a hello
/// naming this cluster and node, every later one a message no larger than
/// [`FRAME_SIZE_MAX_BYTES`]. Any error closes the connection.
pub struct InboundFrames {
    local: NodeId,
    cluster_id: String,
    /// The dialer, once its hello arrived.
    peer: Option<NodeId>,
}

impl InboundFrames {
    pub fn new(local: NodeId, cluster_id: impl Into<String>) -> Self {
        InboundFrames {
            local,
            cluster_id: cluster_id.into(),
            peer: None,
        }
    }

    /// The dialer, once its hello arrived.
    pub fn peer(&self) -> Option<NodeId> {
        self.peer
    }

    /// Takes one frame body (after its length prefix, which [`check_frame_len`] accepted):
    /// the message it carries, or `None` for the hello.
    pub fn frame(&mut self, body: Bytes) -> Result<Option<Envelope>, FrameError> {
        let (header, payload) = decode_frame_body(body)?;
        match (header, self.peer) {
            (
                FrameHeader::Hello {
                    cluster_id,
                    from,
                    to,
                },
                None,
            ) => {
                if cluster_id != self.cluster_id || to != self.local {
                    return Err(FrameError::WrongDestination {
                        cluster_id,
                        to,
                        local_cluster: self.cluster_id.clone(),
                        local: self.local,
                    });
                }
                self.peer = Some(from);
                Ok(None)
            }
            (FrameHeader::Message, Some(from)) => {
                if payload.len() > FRAME_SIZE_MAX_BYTES {
                    return Err(FrameError::TooLarge {
                        len: payload.len(),
                        max: FRAME_SIZE_MAX_BYTES,
                    });
                }
                Ok(Some(Envelope {
                    from,
                    to: self.local,
                    payload,
                }))
            }
            (FrameHeader::Message, None) | (FrameHeader::Hello { .. }, Some(_)) => {
                Err(FrameError::NoHello)
            }
        }
    }
}

/// Reads one frame's body: `Ok(None)` on a clean end of stream between frames. The length
/// is checked before the body is allocated.
async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Bytes>, FrameError> {
    let mut len_bytes = [0u8; 4];
    match reader.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    check_frame_len(len)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

async fn accept_loop(
    listener: TcpListener,
    local: NodeId,
    options: TcpNetworkOptions,
    inbox: mpsc::Sender<Envelope>,
) {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer_addr)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(node = %local, %peer_addr, "node connection accepted");
                    readers.spawn(inbound_connection(stream, peer_addr, local, options.clone(), inbox.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(node = %local, error = %e, "accept failed");
                    tokio::time::sleep(options.reconnect_backoff_min).await;
                }
            },
            // Reap finished readers so the set does not grow without bound.
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

async fn inbound_connection(
    stream: TcpStream,
    peer_addr: SocketAddr,
    local: NodeId,
    options: TcpNetworkOptions,
    inbox: mpsc::Sender<Envelope>,
) {
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, stream);
    match read_inbound(&mut reader, local, &options, &inbox).await {
        Ok(()) => tracing::debug!(node = %local, %peer_addr, "node connection closed by peer"),
        Err(e) => {
            tracing::warn!(node = %local, %peer_addr, error = %e, "node connection closed")
        }
    }
}

async fn read_inbound<R: AsyncRead + Unpin>(
    reader: &mut R,
    local: NodeId,
    options: &TcpNetworkOptions,
    inbox: &mpsc::Sender<Envelope>,
) -> Result<(), FrameError> {
    let mut frames = InboundFrames::new(local, options.cluster_id.clone());
    let hello = tokio::time::timeout(options.hello_timeout, read_frame_body(reader))
        .await
        .map_err(|_| FrameError::HelloTimeout)??;
    let Some(hello) = hello else {
        return Ok(());
    };
    if frames.frame(hello)?.is_some() {
        return Err(FrameError::NoHello);
    }
    tracing::debug!(node = %local, peer = ?frames.peer(), "node connection identified");
    while let Some(body) = read_frame_body(reader).await? {
        if let Some(envelope) = frames.frame(body)? {
            if inbox.try_send(envelope).is_err() {
                tracing::debug!(node = %local, peer = ?frames.peer(), "inbox full: message dropped");
            }
        }
    }
    Ok(())
}

/// Owns the outbound connection to one peer for as long as the peer is configured.
async fn peer_writer(
    local: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    options: TcpNetworkOptions,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let hello = FrameHeader::Hello {
        cluster_id: options.cluster_id.clone(),
        from: local,
        to: peer,
    };
    let mut backoff = options.reconnect_backoff_min;
    loop {
        let stream = match tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(node = %local, %peer, %addr, error = %e, ?backoff, "connect failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.reconnect_backoff_max);
                continue;
            }
            Err(_) => {
                tracing::debug!(node = %local, %peer, %addr, ?backoff, "connect timed out");
                backoff = (backoff * 2).min(options.reconnect_backoff_max);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracing::debug!(node = %local, %peer, %addr, "node connection open");
        let (read_half, write_half) = stream.into_split();
        let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, write_half);
        match write_connection(
            &mut writer,
            read_half,
            &hello,
            &mut queue,
            &mut backoff,
            &options,
        )
        .await
        {
            Ok(()) => return, // the queue closed: the peer was removed
            Err(e) => {
                tracing::debug!(node = %local, %peer, %addr, error = %e, "node connection lost");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(options.reconnect_backoff_max);
    }
}

/// Writes the hello, then drains the queue until the connection fails (`Err`) or the queue
/// closes (`Ok`). Resets `backoff` once the hello is written.
async fn write_connection(
    writer: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut read_half: OwnedReadHalf,
    hello: &FrameHeader,
    queue: &mut mpsc::Receiver<Bytes>,
    backoff: &mut Duration,
    options: &TcpNetworkOptions,
) -> io::Result<()> {
    writer.write_all(&frame_prefix(hello, 0)).await?;
    writer.flush().await?;
    *backoff = options.reconnect_backoff_min;
    let message_prefix = frame_prefix(&FrameHeader::Message, 0);
    let mut batch = Vec::with_capacity(WRITE_COALESCE_FRAMES_MAX);
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, WRITE_COALESCE_FRAMES_MAX) => {
                if received == 0 {
                    return Ok(());
                }
            }
            // The peer never writes on this connection: readable means closed or broken.
            read = read_half.read(&mut probe) => {
                return Err(match read {
                    Ok(0) => io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection"),
                    Ok(_) => io::Error::new(io::ErrorKind::InvalidData, "peer wrote on a one-way connection"),
                    Err(e) => e,
                });
            }
        }
        for payload in batch.drain(..) {
            // Only the length differs between message prefixes.
            let body_len = message_prefix.len() - 4 + payload.len();
            writer.write_all(&(body_len as u32).to_be_bytes()).await?;
            writer.write_all(&message_prefix[4..]).await?;
            writer.write_all(&payload).await?;
        }
        writer.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// Receives until `pred` holds for the collected envelopes, within a deadline.
    async fn recv_until(
        net: &TcpNetwork,
        deadline: Duration,
        mut pred: impl FnMut(&[Envelope]) -> bool,
    ) -> Vec<Envelope> {
        let mut got = Vec::new();
        let result = tokio::time::timeout(deadline, async {
            while !pred(&got) {
                got.push(net.recv().await);
            }
        })
        .await;
        assert!(result.is_ok(), "timed out after {} messages", got.len());
        got
    }

    async fn cluster(n: u32) -> Vec<Arc<TcpNetwork>> {
        let mut nets = Vec::new();
        for i in 0..n {
            nets.push(
                TcpNetwork::start(NodeId(i), localhost(), BTreeMap::new())
                    .await
                    .expect("start"),
            );
        }
        for a in &nets {
            for b in &nets {
                a.set_peer(b.local_id(), b.local_addr());
            }
        }
        nets
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_exchange_many_messages_in_order_per_link() {
        let nets = cluster(3).await;
        let per_link: u32 = 2000;
        for i in 0..per_link {
            for a in &nets {
                for b in &nets {
                    let payload = format!("{}>{}#{i}", a.local_id(), b.local_id());
                    a.send(b.local_id(), Bytes::from(payload));
                }
            }
            if i % 500 == 0 {
                // Let writers drain so the bounded queues do not drop.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for b in &nets {
            let got = recv_until(b, Duration::from_secs(10), |g| {
                g.len() == 3 * per_link as usize
            })
            .await;
            // Over one TCP connection the order of each sender is kept.
            let mut next = BTreeMap::new();
            for e in got {
                assert_eq!(e.to, b.local_id());
                let seq = next.entry(e.from).or_insert(0u32);
                let expect = format!("{}>{}#{}", e.from, e.to, *seq);
                assert_eq!(e.payload, Bytes::from(expect));
                *seq += 1;
            }
            assert!(next.values().all(|&n| n == per_link), "{next:?}");
        }
    }

    #[tokio::test]
    async fn restarted_peer_on_the_same_port_is_reconnected() {
        let a = TcpNetwork::start(NodeId(1), localhost(), BTreeMap::new())
            .await
            .expect("start");
        let b = TcpNetwork::start(NodeId(2), localhost(), BTreeMap::new())
            .await
            .expect("start");
        let b_addr = b.local_addr();
        a.set_peer(NodeId(2), b_addr);
        a.send(NodeId(2), Bytes::from_static(b"before"));
        let got = recv_until(&b, Duration::from_secs(5), |g| !g.is_empty()).await;
        assert_eq!(got[0].payload, Bytes::from_static(b"before"));

        drop(b);
        // The old listener closes once its aborted task is dropped: retry the bind briefly.
        let b = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match TcpNetwork::start(NodeId(2), b_addr, BTreeMap::new()).await {
                    Ok(b) => return b,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .expect("restart on the same port");
        // Messages sent while the peer is down may be lost: keep sending until one lands.
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                a.send(NodeId(2), Bytes::from_static(b"after"));
                if let Ok(e) = tokio::time::timeout(Duration::from_millis(50), b.recv()).await {
                    return e;
                }
            }
        })
        .await;
        let envelope = result.expect("reconnected within the deadline");
        assert_eq!(envelope.from, NodeId(1));
        assert_eq!(envelope.payload, Bytes::from_static(b"after"));
    }

    #[tokio::test]
    async fn sending_to_self_short_circuits_and_unknown_peers_drop() {
        let a = TcpNetwork::start(NodeId(1), localhost(), BTreeMap::new())
            .await
            .expect("start");
        a.send(NodeId(9), Bytes::from_static(b"nobody"));
        a.send(NodeId(1), Bytes::from_static(b"me"));
        let e = tokio::time::timeout(Duration::from_secs(1), a.recv())
            .await
            .expect("delivered");
        assert_eq!((e.from, e.to), (NodeId(1), NodeId(1)));
        assert_eq!(e.payload, Bytes::from_static(b"me"));
    }

    /// A raw connection that says hello as node 7 of cluster "fjord" to `to`.
    async fn raw_hello(addr: SocketAddr, cluster_id: &str, to: NodeId) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let hello = FrameHeader::Hello {
            cluster_id: cluster_id.to_string(),
            from: NodeId(7),
            to,
        };
        s.write_all(&frame_prefix(&hello, 0)).await.expect("hello");
        s
    }

    /// Completes once the other end closed the connection.
    async fn closed_by_peer(s: &mut TcpStream) {
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "connection was not closed");
    }

    #[tokio::test]
    async fn oversize_frame_closes_the_connection_before_allocating() {
        let b = TcpNetwork::start(NodeId(2), localhost(), BTreeMap::new())
            .await
            .expect("start");
        let mut s = raw_hello(b.local_addr(), "fjord", NodeId(2)).await;
        // Declares 4 GiB - 1 and sends nothing more: the reader must not wait for it.
        s.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        closed_by_peer(&mut s).await;
        // The node still works.
        b.send(NodeId(2), Bytes::from_static(b"ok"));
        let e = tokio::time::timeout(Duration::from_secs(1), b.recv())
            .await
            .expect("alive");
        assert_eq!(e.payload, Bytes::from_static(b"ok"));
    }

    #[tokio::test]
    async fn garbage_and_wrong_cluster_close_the_connection() {
        let b = TcpNetwork::start(NodeId(2), localhost(), BTreeMap::new())
            .await
            .expect("start");
        // Garbage: a plausible length, then a wrong version byte.
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        s.write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
            .await
            .expect("write");
        closed_by_peer(&mut s).await;
        // A header that does not decode.
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        s.write_all(&[0, 0, 0, 3, WIRE_VERSION, 0xff, 0xff])
            .await
            .expect("write");
        closed_by_peer(&mut s).await;
        // Another cluster, and the right cluster but another node.
        let mut s = raw_hello(b.local_addr(), "other", NodeId(2)).await;
        closed_by_peer(&mut s).await;
        let mut s = raw_hello(b.local_addr(), "fjord", NodeId(3)).await;
        closed_by_peer(&mut s).await;
        // A valid peer still gets through.
        let mut s = raw_hello(b.local_addr(), "fjord", NodeId(2)).await;
        s.write_all(&frame_prefix(&FrameHeader::Message, 2))
            .await
            .expect("prefix");
        s.write_all(b"hi").await.expect("payload");
        let e = tokio::time::timeout(Duration::from_secs(2), b.recv())
            .await
            .expect("delivered");
        assert_eq!((e.from, e.payload), (NodeId(7), Bytes::from_static(b"hi")));
    }

    #[tokio::test]
    async fn full_peer_queue_drops_and_queued_messages_flow_once_connected() {
        let options = TcpNetworkOptions {
            peer_queue_capacity: 4,
            reconnect_backoff_max: Duration::from_millis(50),
            ..TcpNetworkOptions::default()
        };
        // An address nobody listens on yet: the writer keeps failing to connect.
        let free = TcpListener::bind(localhost()).await.expect("bind");
        let b_addr = free.local_addr().expect("addr");
        drop(free);
        let a = TcpNetwork::start_with(
            NodeId(1),
            localhost(),
            BTreeMap::from([(NodeId(2), b_addr)]),
            options,
        )
        .await
        .expect("start");
        for i in 0..100 {
            a.send(NodeId(2), Bytes::from(format!("m{i}")));
        }
        let b = TcpNetwork::start(NodeId(2), b_addr, BTreeMap::new())
            .await
            .expect("start");
        let got = recv_until(&b, Duration::from_secs(5), |g| g.len() == 4).await;
        let payloads: Vec<_> = got.into_iter().map(|e| e.payload).collect();
        assert_eq!(payloads, ["m0", "m1", "m2", "m3"].map(Bytes::from));
        let more = tokio::time::timeout(Duration::from_millis(100), b.recv()).await;
        assert!(more.is_err(), "only the queued messages arrive: {more:?}");
    }
}
