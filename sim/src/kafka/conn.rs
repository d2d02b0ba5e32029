//! Kafka connections over the simulated network: a small TCP.
//!
//! Kafka clients and brokers talk over byte streams; the simulator only moves datagrams
//! ([`Network`]: lost, duplicated, reordered, cut, clogged, dropped at a down node). This
//! module builds a connection with TCP's guarantees on top, so that Kafka traffic suffers
//! the world's faults the way TCP traffic would:
//!
//! * Frames of one direction carry sequence numbers; the receiver delivers them in order,
//!   drops duplicates and holds early ones. Every message carries a cumulative ack, and a
//!   timer retransmits what is not acknowledged (go-back-N, doubling timeout). Frames
//!   therefore arrive in order, exactly once, or the connection breaks.
//! * A connection breaks when its oldest unacknowledged frame stays unacknowledged for
//!   [`USER_TIMEOUT`], or nothing at all is heard from the peer for that long although
//!   keep-alive probes went out (a partition, a crashed or paused peer: "stalls, then
//!   breaks"); or when the peer answers with a reset (it restarted and no longer knows the
//!   connection, as a kernel answers RST).
//! * Opening waits for the server to acknowledge the SYN; closing the sending half sends an
//!   in-stream FIN (the peer reads end-of-stream after the last frame).
//!
//! Everything runs on the node's [`Clock`] and [`Spawner`] (no real time), and connections
//! are kept in ordered maps: a world's Kafka traffic is as deterministic as the rest of it.
//!
//! Who is who: clients are simulated nodes with ids from [`CLIENT_ID_MIN`] on, servers
//! below it. On a server, messages from clients are Kafka traffic and everything else is
//! the broker's own node-to-node traffic ([`ServerMux`] splits the two).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fjord::client::Connector;
use fjord::kafka::server::{
    serve_connection, ConnectionLimits, FrameConnection, FrameReader, FrameWriter, RequestHandler,
};
use fjord_replication::{BoxFuture, Clock, Envelope, Instant, Network, NodeId, Spawner};
use futures::channel::mpsc;

use crate::inbox::InboxNetwork;

/// Simulated nodes with ids from here on are clients (see `World::start_client`).
pub const CLIENT_ID_MIN: u32 = 1000;
/// Kafka port every simulated broker listens on.
pub const KAFKA_PORT: u16 = 9092;
/// Timer granularity of a connection: acks, retransmissions, probes.
const TICK: Duration = Duration::from_millis(50);
/// First retransmission timeout; doubled per retransmission up to [`RTO_MAX`].
const RTO_MIN: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(2);
/// Silence after which a side probes its peer.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(1);
/// Unacknowledged data or silence (despite probes) for this long breaks the connection.
pub const USER_TIMEOUT: Duration = Duration::from_secs(6);
/// Frames held out of order before the connection gives up.
const OUT_OF_ORDER_MAX: usize = 4096;

/// The host name a simulated broker advertises.
pub fn broker_host(node: NodeId) -> String {
    format!("broker-{}", node.0)
}

/// `broker-N:9092` → node N.
fn parse_addr(addr: &str) -> Option<NodeId> {
    let (host, port) = addr.rsplit_once(':')?;
    if port.parse::<u16>().ok()? != KAFKA_PORT {
        return None;
    }
    host.strip_prefix("broker-")?.parse().ok().map(NodeId)
}

// ---- wire format ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Opens the connection (sequence number 0 of the client's stream).
    Syn,
    Data,
    /// End of the sender's stream (in sequence).
    Fin,
    /// Carries only the ack.
    Ack,
    /// Asks the peer for an ack (keep-alive).
    Probe,
    /// The sender does not know the connection (or gave up on it).
    Rst,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Syn => 0,
            Kind::Data => 1,
            Kind::Fin => 2,
            Kind::Ack => 3,
            Kind::Probe => 4,
            Kind::Rst => 5,
        }
    }

    fn of(tag: u8) -> Option<Kind> {
        Some(match tag {
            0 => Kind::Syn,
            1 => Kind::Data,
            2 => Kind::Fin,
            3 => Kind::Ack,
            4 => Kind::Probe,
            5 => Kind::Rst,
            _ => return None,
        })
    }
}

const HEADER_BYTES: usize = 1 + 8 + 8 + 8;

struct Segment {
    kind: Kind,
    conn: u64,
    seq: u64,
    /// Every sequence number below this was received by the sender of the segment.
    ack: u64,
    payload: Bytes,
}

impl Segment {
    fn encode(kind: Kind, conn: u64, seq: u64, ack: u64, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_BYTES + payload.len());
        b.put_u8(kind.tag());
        b.put_u64(conn);
        b.put_u64(seq);
        b.put_u64(ack);
        b.put_slice(payload);
        b.freeze()
    }

    fn decode(mut b: Bytes) -> Option<Segment> {
        if b.len() < HEADER_BYTES {
            return None;
        }
        let kind = Kind::of(b.get_u8())?;
        let conn = b.get_u64();
        let seq = b.get_u64();
        let ack = b.get_u64();
        Some(Segment {
            kind,
            conn,
            seq,
            ack,
            payload: b,
        })
    }
}

// ---- one connection ----

/// What the reader gets next.
enum Delivered {
    Frame(Bytes),
    End,
}

struct State {
    conn: u64,
    peer: NodeId,
    network: Arc<dyn Network>,
    clock: Arc<dyn Clock>,
    /// Sending: next sequence number, frames not yet acknowledged (with their kind).
    next_seq: u64,
    unacked: VecDeque<(u64, Kind, Bytes)>,
    /// When the oldest unacknowledged frame was first sent (reset when the ack moves).
    unacked_since: Option<Instant>,
    last_transmit: Instant,
    rto: Duration,
    /// Receiving: next expected sequence number, early frames, frames for the reader.
    expected: u64,
    early: BTreeMap<u64, (Kind, Bytes)>,
    inbox: VecDeque<Delivered>,
    reader_waker: Option<Waker>,
    established_waker: Option<Waker>,
    ack_owed: bool,
    last_heard: Instant,
    last_probe: Instant,
    /// Whether our SYN (client) was acknowledged; servers are established at once.
    established: bool,
    /// Set once broken; the reason.
    broken: Option<String>,
    /// The local halves still alive.
    reader_alive: bool,
    writer_alive: bool,
    fin_received: bool,
}

impl State {
    fn new(
        conn: u64,
        peer: NodeId,
        network: Arc<dyn Network>,
        clock: Arc<dyn Clock>,
        established: bool,
    ) -> State {
        let now = clock.now();
        State {
            conn,
            peer,
            network,
            clock,
            next_seq: 0,
            unacked: VecDeque::new(),
            unacked_since: None,
            last_transmit: now,
            rto: RTO_MIN,
            expected: 0,
            early: BTreeMap::new(),
            inbox: VecDeque::new(),
            reader_waker: None,
            established_waker: None,
            ack_owed: false,
            last_heard: now,
            last_probe: now,
            established,
            broken: None,
            reader_alive: true,
            writer_alive: true,
            fin_received: false,
        }
    }

    fn send_raw(&mut self, kind: Kind, seq: u64, payload: &[u8]) {
        let bytes = Segment::encode(kind, self.conn, seq, self.expected, payload);
        self.network.send(self.peer, bytes);
        self.ack_owed = false;
    }

    /// Queues and sends a frame of our stream.
    fn send_in_sequence(&mut self, kind: Kind, payload: Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = self.clock.now();
        if self.unacked.is_empty() {
            self.unacked_since = Some(now);
            self.last_transmit = now;
        }
        self.send_raw(kind, seq, &payload);
        self.unacked.push_back((seq, kind, payload));
    }

    fn wake(&mut self) {
        if let Some(w) = self.reader_waker.take() {
            w.wake();
        }
        if let Some(w) = self.established_waker.take() {
            w.wake();
        }
    }

    fn break_with(&mut self, why: impl Into<String>, reset_peer: bool) {
        if self.broken.is_some() {
            return;
        }
        let why = why.into();
        tracing::debug!(conn = self.conn, peer = %self.peer, %why, "sim tcp: connection broken");
        if reset_peer {
            self.send_raw(Kind::Rst, 0, &[]);
        }
        self.broken = Some(why);
        self.unacked.clear();
        self.unacked_since = None;
        self.wake();
    }

    /// A segment for this connection arrived.
    fn on_segment(&mut self, seg: Segment) {
        if self.broken.is_some() {
            return;
        }
        let now = self.clock.now();
        self.last_heard = now;
        if seg.kind == Kind::Rst {
            self.break_with("reset by the peer", false);
            return;
        }
        // The cumulative ack.
        let before = self.unacked.len();
        while self.unacked.front().is_some_and(|(s, _, _)| *s < seg.ack) {
            self.unacked.pop_front();
        }
        if self.unacked.len() != before {
            self.rto = RTO_MIN;
            self.unacked_since = (!self.unacked.is_empty()).then_some(now);
            self.last_transmit = now;
            if !self.established && seg.ack >= 1 {
                self.established = true;
                self.wake();
            }
        }
        match seg.kind {
            Kind::Probe => self.ack_owed = true,
            Kind::Ack | Kind::Rst => {}
            Kind::Syn | Kind::Data | Kind::Fin => {
                self.ack_owed = true;
                if seg.seq >= self.expected {
                    if self.early.len() >= OUT_OF_ORDER_MAX && seg.seq != self.expected {
                        self.break_with("too many frames out of order", true);
                        return;
                    }
                    self.early.insert(seg.seq, (seg.kind, seg.payload));
                }
                while let Some((kind, payload)) = self.early.remove(&self.expected) {
                    self.expected += 1;
                    match kind {
                        Kind::Data => self.inbox.push_back(Delivered::Frame(payload)),
                        Kind::Fin => {
                            self.fin_received = true;
                            self.inbox.push_back(Delivered::End);
                        }
                        _ => {}
                    }
                }
                if !self.inbox.is_empty() {
                    self.wake();
                }
                if seg.kind == Kind::Syn {
                    // Answer the handshake at once.
                    self.send_raw(Kind::Ack, 0, &[]);
                }
            }
        }
    }

    /// Timer work; false once the connection is finished and can be forgotten.
    fn tick(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let now = self.clock.now();
        if let Some(since) = self.unacked_since {
            if now.saturating_duration_since(since) >= USER_TIMEOUT {
                self.break_with("data unacknowledged for the user timeout", true);
                return false;
            }
            if now.saturating_duration_since(self.last_transmit) >= self.rto {
                let frames: Vec<_> = self.unacked.iter().cloned().collect();
                for (seq, kind, payload) in frames {
                    self.send_raw(kind, seq, &payload);
                }
                self.last_transmit = now;
                self.rto = (self.rto * 2).min(RTO_MAX);
            }
        }
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= USER_TIMEOUT {
            self.break_with("peer silent for the user timeout", true);
            return false;
        }
        if silent >= KEEPALIVE_IDLE
            && now.saturating_duration_since(self.last_probe) >= KEEPALIVE_IDLE
        {
            self.last_probe = now;
            self.send_raw(Kind::Probe, 0, &[]);
        }
        if self.ack_owed {
            self.send_raw(Kind::Ack, 0, &[]);
        }
        // Done once neither half is used and our FIN is through (or nothing is pending).
        let finished = !self.reader_alive && !self.writer_alive && self.unacked.is_empty();
        !finished
    }
}

/// One end of a simulated connection; the endpoint routes segments to it.
struct Conn {
    state: Mutex<State>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("connection state poisoned")
    }
}

/// Runs a connection's timer until it is finished, then forgets it.
async fn timer(conn: Arc<Conn>, registry: Weak<Registry>, key: (NodeId, u64)) {
    let clock = conn.lock().clock.clone();
    loop {
        clock.sleep(TICK).await;
        if !conn.lock().tick() {
            break;
        }
    }
    if let Some(r) = registry.upgrade() {
        r.lock().expect("registry poisoned").remove(&key);
    }
}

struct SimReader {
    conn: Arc<Conn>,
}

struct SimWriter {
    conn: Arc<Conn>,
}

impl FrameReader for SimReader {
    fn recv_frame(&mut self) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        Box::pin(std::future::poll_fn(move |cx| {
            let mut s = self.conn.lock();
            if let Some(why) = &s.broken {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    why.clone(),
                )));
            }
            match s.inbox.pop_front() {
                Some(Delivered::Frame(f)) => Poll::Ready(Ok(Some(f))),
                Some(Delivered::End) => {
                    s.inbox.push_front(Delivered::End);
                    Poll::Ready(Ok(None))
                }
                None => {
                    s.reader_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }))
    }
}

impl Drop for SimReader {
    fn drop(&mut self) {
        self.conn.lock().reader_alive = false;
    }
}

impl FrameWriter for SimWriter {
    fn send_frame(&mut self, frame: Bytes) -> BoxFuture<'_, io::Result<()>> {
        let mut s = self.conn.lock();
        let result = match &s.broken {
            Some(why) => Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())),
            None => {
                s.send_in_sequence(Kind::Data, frame);
                Ok(())
            }
        };
        Box::pin(std::future::ready(result))
    }
}

impl Drop for SimWriter {
    fn drop(&mut self) {
        let mut s = self.conn.lock();
        s.writer_alive = false;
        if s.broken.is_none() {
            s.send_in_sequence(Kind::Fin, Bytes::new());
        }
    }
}

struct SimConnection {
    conn: Arc<Conn>,
    peer: String,
}

impl FrameConnection for SimConnection {
    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameReader>, Box<dyn FrameWriter>) {
        (
            Box::new(SimReader {
                conn: self.conn.clone(),
            }),
            Box::new(SimWriter { conn: self.conn }),
        )
    }
}

// ---- endpoints ----

type Registry = Mutex<BTreeMap<(NodeId, u64), Arc<Conn>>>;

/// What a node needs to run connections.
struct Io {
    network: Arc<dyn Network>,
    clock: Arc<dyn Clock>,
    spawner: Arc<dyn Spawner>,
}

fn reset(network: &dyn Network, to: NodeId, conn: u64) {
    network.send(to, Segment::encode(Kind::Rst, conn, 0, 0, &[]));
}

/// Routes one Kafka segment to its connection. `accept` opens server-side connections.
fn route(
    io: &Io,
    registry: &Arc<Registry>,
    env: Envelope,
    accept: Option<&dyn Fn(Box<dyn FrameConnection>, u64)>,
) {
    let Some(seg) = Segment::decode(env.payload) else {
        return;
    };
    let key = (env.from, seg.conn);
    let known = registry
        .lock()
        .expect("registry poisoned")
        .get(&key)
        .cloned();
    let conn = match (known, accept) {
        (Some(conn), _) => conn,
        (None, Some(accept)) if seg.kind == Kind::Syn && seg.seq == 0 => {
            let state = State::new(
                seg.conn,
                env.from,
                io.network.clone(),
                io.clock.clone(),
                true,
            );
            let conn = Arc::new(Conn {
                state: Mutex::new(state),
            });
            registry
                .lock()
                .expect("registry poisoned")
                .insert(key, conn.clone());
            io.spawner.spawn(
                "sim-tcp-timer",
                Box::pin(timer(conn.clone(), Arc::downgrade(registry), key)),
            );
            accept(
                Box::new(SimConnection {
                    conn: conn.clone(),
                    peer: format!("{}:{}", env.from, seg.conn),
                }),
                seg.conn,
            );
            conn
        }
        (None, _) => {
            if seg.kind != Kind::Rst {
                reset(io.network.as_ref(), env.from, seg.conn);
            }
            return;
        }
    };
    conn.lock().on_segment(seg);
}

/// A client node's side: dials brokers ([`Connector`]) and routes their segments. Create
/// one per client node; it owns the node's network inbox.
pub struct SimConnector {
    io: Io,
    registry: Arc<Registry>,
    next_conn: Mutex<u64>,
}

impl SimConnector {
    /// Starts the router task on `spawner`.
    pub fn start(
        network: Arc<dyn Network>,
        clock: Arc<dyn Clock>,
        spawner: Arc<dyn Spawner>,
    ) -> Arc<SimConnector> {
        let connector = Arc::new(SimConnector {
            io: Io {
                network,
                clock,
                spawner: spawner.clone(),
            },
            registry: Arc::default(),
            next_conn: Mutex::new(0),
        });
        let weak = Arc::downgrade(&connector);
        let network = connector.io.network.clone();
        spawner.spawn(
            "sim-tcp-client-router",
            Box::pin(async move {
                loop {
                    let env = network.recv().await;
                    let Some(c) = weak.upgrade() else {
                        return;
                    };
                    route(&c.io, &c.registry, env, None);
                }
            }),
        );
        connector
    }
}

impl Connector for SimConnector {
    fn connect(&self, addr: &str) -> BoxFuture<'_, io::Result<Box<dyn FrameConnection>>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let peer = parse_addr(&addr).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no broker at {addr}"))
            })?;
            let id = {
                let mut next = self.next_conn.lock().expect("counter poisoned");
                *next += 1;
                (u64::from(self.io.network.local_id().0) << 32) | *next
            };
            let mut state = State::new(
                id,
                peer,
                self.io.network.clone(),
                self.io.clock.clone(),
                false,
            );
            state.send_in_sequence(Kind::Syn, Bytes::new());
            let conn = Arc::new(Conn {
                state: Mutex::new(state),
            });
            let key = (peer, id);
            self.registry
                .lock()
                .expect("registry poisoned")
                .insert(key, conn.clone());
            self.io.spawner.spawn(
                "sim-tcp-timer",
                Box::pin(timer(conn.clone(), Arc::downgrade(&self.registry), key)),
            );
            // The handshake: wait for the SYN's ack (or the connection breaking).
            let established = std::future::poll_fn(|cx| {
                let mut s = conn.lock();
                if let Some(why) = &s.broken {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        why.clone(),
                    )));
                }
                if s.established {
                    return Poll::Ready(Ok(()));
                }
                s.established_waker = Some(cx.waker().clone());
                Poll::Pending
            });
            let guard = AbandonOnDrop(Some(conn.clone()));
            established.await?;
            std::mem::forget(guard);
            let c: Box<dyn FrameConnection> = Box::new(SimConnection { conn, peer: addr });
            Ok(c)
        })
    }
}

/// Resets a connection whose opening was abandoned (the connect future dropped).
struct AbandonOnDrop(Option<Arc<Conn>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            let mut s = conn.lock();
            s.reader_alive = false;
            s.writer_alive = false;
            s.break_with("connect abandoned", true);
        }
    }
}

/// A server node's network, split: the broker's node-to-node traffic goes to
/// [`ServerMux::broker_network`], Kafka segments from clients to connections served by the
/// broker's [`RequestHandler`].
pub struct ServerMux {
    io: Io,
    registry: Arc<Registry>,
    broker_tx: mpsc::UnboundedSender<Envelope>,
    broker_rx: Mutex<Option<mpsc::UnboundedReceiver<Envelope>>>,
}

impl ServerMux {
    pub fn new(
        network: Arc<dyn Network>,
        clock: Arc<dyn Clock>,
        spawner: Arc<dyn Spawner>,
    ) -> Arc<ServerMux> {
        let (broker_tx, broker_rx) = mpsc::unbounded();
        Arc::new(ServerMux {
            io: Io {
                network,
                clock,
                spawner,
            },
            registry: Arc::default(),
            broker_tx,
            broker_rx: Mutex::new(Some(broker_rx)),
        })
    }

    /// The broker's node-to-node network (call once).
    pub fn broker_network(&self) -> Arc<dyn Network> {
        let rx = self
            .broker_rx
            .lock()
            .expect("mux poisoned")
            .take()
            .expect("broker network taken once");
        // The broker's view of the node's network: node-to-node traffic only.
        Arc::new(InboxNetwork::new(self.io.network.clone(), rx))
    }

    /// Routes the node's inbox until the node stops, serving Kafka connections with
    /// `handler`.
    pub async fn run(self: Arc<Self>, handler: Arc<dyn RequestHandler>) {
        let spawner = self.io.spawner.clone();
        let accept = move |conn: Box<dyn FrameConnection>, id: u64| {
            let handler = handler.clone();
            spawner.spawn(
                "kafka-connection",
                Box::pin(async move {
                    serve_connection(conn, handler, ConnectionLimits::default(), id).await;
                }),
            );
        };
        loop {
            let env = self.io.network.recv().await;
            if env.from.0 >= CLIENT_ID_MIN {
                route(&self.io, &self.registry, env, Some(&accept));
            } else if self.broker_tx.unbounded_send(env).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let addr = format!("{}:{KAFKA_PORT}", broker_host(NodeId(3)));
        assert_eq!(parse_addr(&addr), Some(NodeId(3)));
        assert_eq!(parse_addr("broker-3:1"), None);
        assert_eq!(parse_addr("localhost:9092"), None);
    }

    #[test]
    fn segments_round_trip() {
        let b = Segment::encode(Kind::Data, 7, 9, 11, b"frame");
        let s = Segment::decode(b).expect("decodes");
        assert_eq!(
            (s.kind, s.conn, s.seq, s.ack, &s.payload[..]),
            (Kind::Data, 7, 9, 11, &b"frame"[..])
        );
        assert!(Segment::decode(Bytes::from_static(&[9; HEADER_BYTES])).is_none());
    }
}
