//! Three Raft nodes in one process over real TCP on 127.0.0.1, with FileDisk in temporary
//! directories: commit many entries, stop the leader, check that a new leader is elected and
//! that no committed entry is lost, restart the old leader and check that it catches up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord::runtime::{TcpNetwork, TokioClock};
use fjord_log::{Disk, FileDisk, LogConfig};
use fjord_replication::multiraft::{GroupId, MultiRaft, MultiRaftConfig};
use fjord_replication::node::{run_node, Acks, NodeLoopConfig, RaftNodeHandle};
use fjord_replication::raft::{Membership, Role};
use fjord_replication::{Clock, NodeId};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

mod common;

const GROUP: GroupId = GroupId {
    topic: 1,
    partition: 0,
};

fn entries() -> usize {
    std::env::var("RAFT_TCP_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

fn batch(i: usize) -> BytesMut {
    let b = fjord_log::build_batch(
        &[fjord_log::RecordSpec {
            key: None,
            value: Some(Bytes::from(format!("entry-{i:08}"))),
            headers: Vec::new(),
            timestamp_ms: 1,
        }],
        &Default::default(),
    )
    .expect("batch");
    BytesMut::from(&b[..])
}

struct Node {
    handle: RaftNodeHandle,
    task: JoinHandle<()>,
}

async fn start_node(
    id: NodeId,
    dir: &Path,
    listen: SocketAddr,
    peers: &BTreeMap<NodeId, SocketAddr>,
    create: bool,
) -> (Node, SocketAddr) {
    let disk: Arc<dyn Disk> = Arc::new(FileDisk::new(dir));
    let mut cfg = MultiRaftConfig::new(id, "", u64::from(id.0));
    cfg.raft.append_size_max_bytes = 256 * 1024;
    let mut multi = MultiRaft::open(cfg, disk).expect("open");
    if create {
        let voters = Membership::with_voters(peers.keys().copied());
        multi
            .create_group(GROUP, voters, LogConfig::default())
            .expect("create group");
    }
    // A restarted node rebinds its old port; the OS may need a moment to release it.
    let mut attempt = 0;
    let network = loop {
        match TcpNetwork::start(id, listen, BTreeMap::new()).await {
            Ok(n) => break n,
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!("rebind {listen}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {listen}: {e}"),
        }
    };
    let addr = network.local_addr();
    for (peer, a) in peers {
        if *peer != id {
            network.set_peer(*peer, *a);
        }
    }
    let (handle, rx) = RaftNodeHandle::channel();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let task = tokio::spawn(async move {
        run_node(clock, network, multi, rx, NodeLoopConfig::default())
            .await
            .expect("node loop");
    });
    (Node { handle, task }, addr)
}

async fn leader_among(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
    for _ in 0..500 {
        for (id, n) in nodes {
            if let Some(s) = n.handle.status(GROUP).await {
                if s.role == Role::Leader {
                    return *id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader elected");
}

/// Proposes `range` through the leader with a window of concurrent proposals; returns the
/// acknowledged `(base, end, i)`.
async fn propose_all(
    handle: &RaftNodeHandle,
    range: std::ops::Range<usize>,
) -> Vec<(u64, u64, usize)> {
    let window = 2000;
    let mut acked = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let mut next = range.start;
    while next < range.end || !inflight.is_empty() {
        while next < range.end && inflight.len() < window {
            let h = handle.clone();
            let i = next;
            inflight.push(async move { (i, h.propose(GROUP, batch(i), Acks::Quorum).await) });
            next += 1;
        }
        if let Some((i, result)) = inflight.next().await {
            match result {
                Ok((base, end)) => acked.push((base, end, i)),
                Err(e) => panic!("proposal {i} failed with a stable leader: {e}"),
            }
        }
    }
    acked
}

/// Every committed entry of the node, as `(offset, value)`.
async fn committed_values(handle: &RaftNodeHandle) -> BTreeMap<u64, Bytes> {
    let mut out = BTreeMap::new();
    let mut from = 0;
    loop {
        let read = handle
            .read_committed(GROUP, from, 1 << 20)
            .await
            .expect("read");
        if read.bytes.is_empty() {
            return out;
        }
        for item in fjord_log::BatchIter::new(&read.bytes) {
            let (header, bytes) = item.expect("valid batch");
            if header.is_control() {
                continue;
            }
            for r in fjord_log::decode_records(bytes).expect("records") {
                out.insert(r.offset, r.value.expect("value"));
            }
        }
        from = read.next_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tcp_survive_a_leader_stop() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    // Reserve ports first, so that every node knows its peers.
    // Below the ephemeral range, so that no other test's bind(0) or outgoing connection can
    // take a port between its reservation here and the node's bind.
    let addrs: BTreeMap<NodeId, std::net::SocketAddr> = ids
        .iter()
        .copied()
        .zip(common::free_ports(ids.len()))
        .map(|(id, port)| (id, std::net::SocketAddr::from(([127, 0, 0, 1], port))))
        .collect();
    let mut nodes = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let (node, _) = start_node(*id, dirs[i].path(), addrs[id], &addrs, true).await;
        nodes.insert(*id, node);
    }
    let leader = leader_among(&nodes).await;
    let n = entries();
    let acked = propose_all(&nodes[&leader].handle, 0..n / 2).await;
    assert_eq!(acked.len(), n / 2);

    // Stop the leader.
    let old = nodes.remove(&leader).unwrap();
    drop(old.handle);
    old.task.await.unwrap();
    let new_leader = leader_among(&nodes).await;
    assert_ne!(new_leader, leader);
    let mut acked2 = propose_all(&nodes[&new_leader].handle, n / 2..n).await;
    assert_eq!(acked2.len(), n - n / 2);
    acked2.extend(acked);

    // Nothing committed was lost: the new leader has every acknowledged entry, in place.
    let values = committed_values(&nodes[&new_leader].handle).await;
    for (base, _, i) in &acked2 {
        assert_eq!(
            values.get(base),
            Some(&Bytes::from(format!("entry-{i:08}"))),
            "acknowledged entry {i} at {base} lost"
        );
    }

    // The old leader restarts from its disk and catches up.
    let idx = ids.iter().position(|i| *i == leader).unwrap();
    let (restarted, _) = start_node(leader, dirs[idx].path(), addrs[&leader], &addrs, false).await;
    nodes.insert(leader, restarted);
    let target = nodes[&new_leader]
        .handle
        .status(GROUP)
        .await
        .unwrap()
        .commit_end;
    let mut caught_up = false;
    for _ in 0..1000 {
        let s = nodes[&leader].handle.status(GROUP).await.unwrap();
        if s.commit_end >= target {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "the restarted node did not catch up");
    let theirs = committed_values(&nodes[&leader].handle).await;
    for (base, _, i) in &acked2 {
        assert_eq!(
            theirs.get(base),
            Some(&Bytes::from(format!("entry-{i:08}"))),
            "restarted node lacks entry {i}"
        );
    }
}
