//! `SimNetwork`: the simulated network, one router for the whole world.
//!
//! Every message goes through [`SimNet`], a world-level router: `send` decides the message's
//! fate at once (drop, duplicate, latency) from the seeded network stream and puts it on one
//! timer queue; a single router task ([`SimNet::router`]) sleeps until the earliest due
//! message and hands it to the destination's inbox. Delivery therefore never depends on the
//! sender staying alive, and there is no task or timer per message.
//!
//! Faults, all composable (overlapping faults stack, [`SimNet::heal`] undoes them all):
//! * latency: `latency_min + exp(latency_mean_extra)`, scaled per link (some links are slow);
//! * loss and duplication per message (never on a node's link to itself);
//! * reordering: without it every link is FIFO; with it, links are not FIFO and some messages
//!   get a long extra delay;
//! * cut links ([`SimNet::cut`]): messages sent on, or due on, a cut link are dropped, which
//!   builds symmetric and one-way partitions, isolation and majority/minority splits;
//! * clogged links ([`SimNet::clog`]): messages are held (not dropped) and released in order
//!   when the link unclogs — the building block of swizzle-clogging;
//! * a down node (crashed) gets nothing: messages due to it are dropped. A paused node's inbox
//!   fills up like a socket buffer (bounded by [`INBOX_CAPACITY`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use fjord_replication::io::FRAME_SIZE_MAX_BYTES;
use fjord_replication::{BoxFuture, Envelope, Network, NodeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::faults::{NetParams, LATENCY_MAX};
use crate::time;

/// Messages a node's inbox holds before new ones are dropped (a full socket buffer).
pub const INBOX_CAPACITY: usize = 16 * 1024;
/// Messages a clogged link holds before new ones are dropped.
pub const CLOGGED_CAPACITY: usize = 16 * 1024;

/// What happened to the messages of a world, for reports and fault counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped_loss: u64,
    pub dropped_cut: u64,
    pub dropped_down: u64,
    pub dropped_full: u64,
    pub dropped_oversize: u64,
    pub duplicated: u64,
    pub delayed_reorder: u64,
    pub clogged: u64,
}

/// A message on the timer queue: the heap holds small keys, the envelopes sit in a slab.
type Due = Reverse<(Duration, u64, u32)>;

/// Envelopes in flight, by slot; freed slots are reused.
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Option<Envelope>>,
    free: Vec<u32>,
}

impl Slab {
    fn insert(&mut self, e: Envelope) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(e);
                i
            }
            None => {
                self.slots.push(Some(e));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 messages in flight")
            }
        }
    }

    fn take(&mut self, i: u32) -> Envelope {
        self.free.push(i);
        self.slots[i as usize].take().expect("a live slot")
    }
}

/// A cheap 64-bit hash of a payload for the delivery digest (not a quality hash: it only has
/// to differ when two runs diverge).
fn payload_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(K).rotate_left(29);
    }
    for b in chunks.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(K).rotate_left(29);
    }
    h
}

#[derive(Debug)]
struct Link {
    /// Number of active faults cutting this link.
    cut: u32,
    /// Number of active faults clogging this link, and what it holds meanwhile.
    clog: u32,
    held: VecDeque<Envelope>,
    /// Latency multiplier of this link.
    scale: f64,
    /// Latest delivery time scheduled on this link (FIFO when not reordering).
    last_at: Duration,
}

/// A node's mailbox for one incarnation.
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    queue: VecDeque<Envelope>,
    waiting: Vec<Waker>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().expect("inbox poisoned")
    }

    /// False if the inbox is full.
    fn push(&self, envelope: Envelope) -> bool {
        let mut s = self.lock();
        if s.queue.len() >= INBOX_CAPACITY {
            return false;
        }
        s.queue.push_back(envelope);
        for w in s.waiting.drain(..) {
            w.wake();
        }
        true
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Envelope> {
        let mut s = self.lock();
        if let Some(e) = s.queue.pop_front() {
            return Poll::Ready(e);
        }
        if !s.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            s.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[derive(Debug)]
struct Endpoint {
    incarnation: u32,
    /// `None` while the node is down.
    inbox: Option<Arc<Inbox>>,
}

#[derive(Debug)]
struct State {
    rng: ChaCha8Rng,
    params: NetParams,
    seq: u64,
    queue: BinaryHeap<Due>,
    in_flight: Slab,
    endpoints: BTreeMap<NodeId, Endpoint>,
    links: BTreeMap<(NodeId, NodeId), Link>,
    /// The router's waker, and the deadline its timer is armed for.
    router: Option<Waker>,
    armed: Option<Duration>,
    stats: NetStats,
    /// Hash of every delivery (time, endpoints, payload): part of the world's trace hash.
    digest: u64,
}

impl State {
    fn link(&mut self, from: NodeId, to: NodeId) -> &mut Link {
        let rng = &mut self.rng;
        self.links.entry((from, to)).or_insert_with(|| Link {
            cut: 0,
            clog: 0,
            held: VecDeque::new(),
            // Most links are alike; some are up to 4x slower.
            scale: if from == to {
                0.1
            } else if rng.gen_bool(0.2) {
                rng.gen_range(1.0..4.0)
            } else {
                rng.gen_range(0.8..1.2)
            },
            last_at: Duration::ZERO,
        })
    }

    fn latency(&mut self, from: NodeId, to: NodeId) -> Duration {
        let min = self.params.latency_min.as_secs_f64();
        let mean = self.params.latency_mean_extra.as_secs_f64();
        let u: f64 = self.rng.gen();
        let extra = -mean * (1.0 - u).ln();
        let scale = self.link(from, to).scale;
        let mut secs = (min + extra) * scale;
        if self.params.reorder > 0.0 && self.rng.gen_bool(self.params.reorder) {
            secs += self.rng.gen_range(0.0..=(min + 10.0 * mean));
            self.stats.delayed_reorder += 1;
        }
        Duration::from_secs_f64(secs).min(LATENCY_MAX)
    }

    /// Puts `envelope` on the timer queue; true if it is due before the router's armed time.
    fn schedule(&mut self, envelope: Envelope, now: Duration) -> bool {
        let (from, to) = (envelope.from, envelope.to);
        let mut at = now + self.latency(from, to);
        if self.params.reorder == 0.0 {
            let link = self.link(from, to);
            at = at.max(link.last_at);
            link.last_at = at;
        }
        self.seq += 1;
        let seq = self.seq;
        let slot = self.in_flight.insert(envelope);
        self.queue.push(Reverse((at, seq, slot)));
        self.armed.is_none_or(|armed| at < armed)
    }

    fn wake_router(&mut self) {
        if let Some(w) = &self.router {
            w.wake_by_ref();
        }
    }

    /// Hands every message due at `now` to its destination.
    fn deliver_due(&mut self, now: Duration) {
        while self.queue.peek().is_some_and(|m| m.0 .0 <= now) {
            let Some(Reverse((at, _, slot))) = self.queue.pop() else {
                break;
            };
            let e = self.in_flight.take(slot);
            let link = self.link(e.from, e.to);
            if link.cut > 0 {
                self.stats.dropped_cut += 1;
                continue;
            }
            if link.clog > 0 {
                if link.held.len() < CLOGGED_CAPACITY {
                    link.held.push_back(e);
                    self.stats.clogged += 1;
                } else {
                    self.stats.dropped_full += 1;
                }
                continue;
            }
            let Some(inbox) = self.endpoints.get(&e.to).and_then(|ep| ep.inbox.clone()) else {
                self.stats.dropped_down += 1;
                continue;
            };
            let key =
                (at.as_nanos() as u64) ^ (u64::from(e.from.0) << 48) ^ (u64::from(e.to.0) << 32);
            self.digest = (self.digest.rotate_left(5) ^ key ^ payload_hash(&e.payload))
                .wrapping_mul(0x2545_f491_4f6c_dd1d);
            if inbox.push(e) {
                self.stats.delivered += 1;
            } else {
                self.stats.dropped_full += 1;
            }
        }
    }
}

/// The world's network. Shared (`Arc`) by the router, every endpoint and the fault scheduler.
#[derive(Debug)]
pub struct SimNet {
    state: Mutex<State>,
    now: time::Now,
}

impl SimNet {
    /// A network with `params`, drawing from `rng` (the world's network stream).
    pub fn new(rng: ChaCha8Rng, params: NetParams) -> Arc<Self> {
        Arc::new(SimNet {
            state: Mutex::new(State {
                rng,
                params,
                seq: 0,
                queue: BinaryHeap::new(),
                in_flight: Slab::default(),
                endpoints: BTreeMap::new(),
                links: BTreeMap::new(),
                router: None,
                armed: None,
                stats: NetStats::default(),
                digest: 0,
            }),
            now: time::Now::current(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("network state poisoned")
    }

    /// The router: run it as one task on a node that never crashes, for the whole world.
    pub fn router(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        Router {
            net: self.clone(),
            sleep: None,
        }
    }

    /// Brings `node` up as incarnation `incarnation` with an empty inbox; returns its
    /// endpoint. Messages due to the node from now on are delivered to this incarnation.
    pub fn bring_up(self: &Arc<Self>, node: NodeId, incarnation: u32) -> Arc<SimEndpoint> {
        let inbox = Arc::new(Inbox::default());
        self.lock().endpoints.insert(
            node,
            Endpoint {
                incarnation,
                inbox: Some(inbox.clone()),
            },
        );
        Arc::new(SimEndpoint {
            net: self.clone(),
            id: node,
            incarnation,
            inbox,
        })
    }

    /// Takes `node` down (crash): its inbox is dropped, messages to it are dropped, and sends
    /// from its old endpoint are ignored.
    pub fn take_down(&self, node: NodeId) {
        if let Some(ep) = self.lock().endpoints.get_mut(&node) {
            ep.inbox = None;
        }
    }

    /// Whether `node` is up as `incarnation`.
    pub fn is_up(&self, node: NodeId, incarnation: u32) -> bool {
        self.lock()
            .endpoints
            .get(&node)
            .is_some_and(|ep| ep.incarnation == incarnation && ep.inbox.is_some())
    }

    fn send(&self, from: NodeId, incarnation: u32, to: NodeId, payload: Bytes) {
        let now = self.now.get();
        let mut s = self.lock();
        let live = s
            .endpoints
            .get(&from)
            .is_some_and(|ep| ep.incarnation == incarnation && ep.inbox.is_some());
        if !live {
            // A zombie endpoint of a crashed incarnation: the process is gone.
            return;
        }
        s.stats.sent += 1;
        if payload.len() > FRAME_SIZE_MAX_BYTES {
            s.stats.dropped_oversize += 1;
            tracing::warn!(%from, %to, len = payload.len(), "oversized message dropped");
            return;
        }
        if s.link(from, to).cut > 0 {
            s.stats.dropped_cut += 1;
            return;
        }
        let (loss, duplicate) = (s.params.loss, s.params.duplicate);
        if from != to && loss > 0.0 && s.rng.gen_bool(loss) {
            s.stats.dropped_loss += 1;
            return;
        }
        let copies = if from != to && duplicate > 0.0 && s.rng.gen_bool(duplicate) {
            s.stats.duplicated += 1;
            2
        } else {
            1
        };
        let envelope = Envelope { from, to, payload };
        let mut wake = false;
        for _ in 1..copies {
            wake |= s.schedule(envelope.clone(), now);
        }
        wake |= s.schedule(envelope, now);
        if wake {
            s.wake_router();
        }
    }

    /// Adds a fault cutting the directed link `from → to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().link(from, to).cut += 1;
    }

    /// Removes one fault cutting `from → to` (no-op if none is left).
    pub fn uncut(&self, from: NodeId, to: NodeId) {
        let mut s = self.lock();
        let link = s.link(from, to);
        link.cut = link.cut.saturating_sub(1);
    }

    /// Adds a fault clogging `from → to`: its messages are held until it unclogs.
    pub fn clog(&self, from: NodeId, to: NodeId) {
        self.lock().link(from, to).clog += 1;
    }

    /// Removes one fault clogging `from → to`; when none is left, the held messages leave in
    /// their original order, each with a fresh latency.
    pub fn unclog(&self, from: NodeId, to: NodeId) {
        let now = self.now.get();
        let mut s = self.lock();
        let link = s.link(from, to);
        link.clog = link.clog.saturating_sub(1);
        if link.clog == 0 {
            let held = std::mem::take(&mut link.held);
            let mut wake = false;
            for e in held {
                wake |= s.schedule(e, now);
            }
            if wake {
                s.wake_router();
            }
        }
    }

    /// Removes every cut and clog (releasing held messages) and applies `params`.
    pub fn heal(&self, params: NetParams) {
        let links: Vec<_> = {
            let mut s = self.lock();
            s.params = params;
            for link in s.links.values_mut() {
                link.cut = 0;
            }
            s.links
                .iter()
                .filter(|(_, l)| l.clog > 0)
                .map(|(k, _)| *k)
                .collect()
        };
        for (from, to) in links {
            let clogs = self.lock().link(from, to).clog;
            for _ in 0..clogs {
                self.unclog(from, to);
            }
        }
    }

    pub fn params(&self) -> NetParams {
        self.lock().params.clone()
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats.clone()
    }

    /// Hash of every delivery so far.
    pub fn digest(&self) -> u64 {
        self.lock().digest
    }
}

type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The router task: a hand-written future so that it re-arms its single timer only when the
/// earliest deadline changes.
struct Router {
    net: Arc<SimNet>,
    /// The armed timer and its deadline.
    sleep: Option<(Duration, Timer)>,
}

impl Future for Router {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let next = {
                let mut s = self.net.lock();
                s.deliver_due(self.net.now.get());
                if s.router.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                    s.router = Some(cx.waker().clone());
                }
                let next = s.queue.peek().map(|m| m.0 .0);
                s.armed = next;
                next
            };
            let Some(at) = next else {
                self.sleep = None;
                return Poll::Pending;
            };
            if self.sleep.as_ref().is_some_and(|(armed, _)| *armed == at) {
                // The timer for this deadline is registered already.
                return Poll::Pending;
            }
            let mut sleep: Timer = Box::pin(time::sleep_until(at));
            if sleep.as_mut().poll(cx).is_pending() {
                self.sleep = Some((at, sleep));
                return Poll::Pending;
            }
        }
    }
}

/// One node incarnation's view of the network: implements [`Network`].
#[derive(Debug)]
pub struct SimEndpoint {
    net: Arc<SimNet>,
    id: NodeId,
    incarnation: u32,
    inbox: Arc<Inbox>,
}

impl Network for SimEndpoint {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn send(&self, to: NodeId, payload: Bytes) {
        self.net.send(self.id, self.incarnation, to, payload);
    }

    fn recv(&self) -> BoxFuture<'_, Envelope> {
        Box::pin(std::future::poll_fn(|cx| self.inbox.poll_recv(cx)))
    }
}
