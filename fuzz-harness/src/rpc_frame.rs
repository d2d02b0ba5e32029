//! `rpc_frame`: bytes as internal node-to-node frames ([`NodeMessage`], bincode 2 with a
//! size limit) delivered to a booted single-node broker ([`SimBroker`]) from arbitrary peer
//! ids, through the broker's own message handling: Raft messages into its groups (the
//! metadata group it leads, the partitions it hosts), leadership gossip, controller
//! requests and responses.
//!
//! An entry whose peer byte has its top bit set carries the bytes of a whole inbound node
//! connection instead: length-prefixed frames with the wire version byte and a bincode
//! header, read by the production connection reader ([`InboundFrames`]: size limits, hello
//! naming cluster and node first); the messages it lets through are delivered from the
//! peer the hello named, whatever id that is.
//!
//! Checked: nothing panics and decoding allocates no more than the frame warrants (the
//! fuzzer's memory limit); a frame that decodes re-encodes to the same message (for both
//! [`NodeMessage`] and replication's own framing, [`decode_messages`]); the broker either
//! keeps running with its invariants intact or stops with a typed error (a peer that breaks
//! the Raft protocol stops it: see `RaftError::Protocol`).

use bytes::Bytes;
use fjord::broker::rpc::{ApiFailure, ControllerOp, ControllerReply, LeaderInfo, NodeMessage};
use fjord::runtime::{check_frame_len, frame_prefix, FrameHeader, InboundFrames};
use fjord_replication::io::FRAME_SIZE_MAX_BYTES;
use fjord_replication::multiraft::{decode_messages, encode_messages, GroupId};
use fjord_replication::raft::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, Message, VoteRequest, VoteResponse,
};
use fjord_replication::{Envelope, NodeId};

use crate::broker_sim::{SimBroker, CLUSTER_ID, NODE};
use crate::input::{Reader, Writer};

/// Frames one input may deliver.
const FRAMES_MAX_COUNT: usize = 16;

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut frames = Vec::new();
    while frames.len() < FRAMES_MAX_COUNT {
        let (Some(from), Some(wait)) = (r.u8(), r.u8()) else {
            break;
        };
        let Some(frame) = r.blob() else {
            break;
        };
        if from & 0x80 != 0 {
            for envelope in wire_messages(frame) {
                check_round_trip(&envelope.payload);
                frames.push((envelope.from, wait, envelope.payload));
            }
        } else {
            check_round_trip(frame);
            frames.push((
                NodeId(u32::from(from % 4) + 1),
                wait,
                Bytes::copy_from_slice(frame),
            ));
        }
    }
    frames.truncate(FRAMES_MAX_COUNT);
    if frames.is_empty() {
        return;
    }
    let mut sim = SimBroker::boot();
    for (from, wait, frame) in frames {
        sim.network.inject(from, frame);
        sim.run_until(u64::from(wait % 64) * 10, |_| false);
        if let Some(outcome) = sim.outcome() {
            // A typed error (a peer broke the protocol): a clean stop, not a crash.
            assert!(
                outcome.is_err(),
                "the broker stopped without being asked to"
            );
            return;
        }
        sim.check_invariants();
    }
}

/// The messages an inbound node connection carrying `stream` delivers, until its end or
/// the first frame that closes it.
fn wire_messages(mut stream: &[u8]) -> Vec<Envelope> {
    let mut connection = InboundFrames::new(NODE, CLUSTER_ID);
    let mut out = Vec::new();
    while stream.len() >= 4 && out.len() < FRAMES_MAX_COUNT {
        let len = u32::from_be_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        stream = &stream[4..];
        if check_frame_len(len).is_err() || stream.len() < len {
            break;
        }
        let (body, rest) = stream.split_at(len);
        stream = rest;
        match connection.frame(Bytes::copy_from_slice(body)) {
            Ok(Some(envelope)) => {
                assert_eq!(envelope.to, NODE);
                assert_eq!(Some(envelope.from), connection.peer());
                assert!(envelope.payload.len() <= FRAME_SIZE_MAX_BYTES);
                out.push(envelope);
            }
            Ok(None) => assert!(connection.peer().is_some(), "a hello names the peer"),
            Err(_) => break,
        }
    }
    out
}

/// `messages` as the bytes of a node connection from `from`: a hello, then one frame each.
fn wire_stream(from: NodeId, cluster_id: &str, messages: &[Bytes]) -> Vec<u8> {
    let hello = FrameHeader::Hello {
        cluster_id: cluster_id.to_string(),
        from,
        to: NODE,
    };
    let mut out = frame_prefix(&hello, 0).to_vec();
    for m in messages {
        out.extend_from_slice(&frame_prefix(&FrameHeader::Message, m.len()));
        out.extend_from_slice(m);
    }
    out
}

/// A frame that decodes re-encodes to the same message.
fn check_round_trip(frame: &[u8]) {
    if let Ok(msg) = NodeMessage::decode(frame) {
        let again = NodeMessage::decode(&msg.encode()).expect("an encoded message decodes");
        assert_eq!(again, msg);
    }
    if let Ok(msgs) = decode_messages(frame) {
        let frames = encode_messages(&msgs, usize::MAX);
        let again: Vec<_> = frames
            .iter()
            .flat_map(|f| decode_messages(f).expect("encoded messages decode"))
            .collect();
        assert_eq!(again, msgs);
    }
}

/// Every kind of node message, as a peer of the booted broker would send it.
pub fn seeds() -> Vec<Vec<u8>> {
    let g = GroupId::METADATA;
    let noop = fjord_log::leader_change_batch(2, 2, 1_700_000_000_000);
    let raft = vec![
        (
            g,
            Message::PreVote(VoteRequest {
                term: 2,
                log_end: 5,
                last_term: 1,
                transfer: false,
            }),
        ),
        (
            g,
            Message::Vote(VoteRequest {
                term: 1,
                log_end: 0,
                last_term: 0,
                transfer: true,
            }),
        ),
        (
            g,
            Message::PreVoteResponse(VoteResponse {
                term: 2,
                granted: true,
            }),
        ),
        (
            g,
            Message::VoteResponse(VoteResponse {
                term: 1,
                granted: false,
            }),
        ),
        (
            g,
            Message::AppendResponse(AppendResponse {
                term: 1,
                match_end: Some(1),
                rejected_prev_end: 0,
                hint_end: 1,
                hint_term: 1,
            }),
        ),
        (
            g,
            Message::Heartbeat(Heartbeat {
                term: 0,
                commit_end: 1,
            }),
        ),
        (
            g,
            Message::HeartbeatResponse(HeartbeatResponse {
                term: 1,
                log_end: 3,
            }),
        ),
        (g, Message::TimeoutNow { term: 1 }),
        (
            GroupId::new(1, 0),
            Message::Append(AppendRequest {
                term: 2,
                prev_end: 0,
                prev_term: 0,
                commit_end: 1,
                leader_end: 1,
                batches: noop,
            }),
        ),
    ];
    let ops = vec![
        ControllerOp::RegisterBroker {
            id: NodeId(2),
            incarnation: 9,
            host: "127.0.0.1".into(),
            kafka_port: 9093,
            rack: Some("r1".into()),
            rpc_addr: "127.0.0.1:19093".into(),
        },
        ControllerOp::Heartbeat {
            id: NodeId(2),
            incarnation: 9,
        },
        ControllerOp::CreateTopic {
            name: "peer-topic".into(),
            partitions: 2,
            replication_factor: 1,
            configs: vec![("cleanup.policy".into(), "compact".into())],
            validate_only: false,
        },
        ControllerOp::CreatePartitions {
            name: "peer-topic".into(),
            count: 3,
            validate_only: false,
        },
        ControllerOp::DeleteTopic {
            name: "peer-topic".into(),
        },
        ControllerOp::AllocateProducerIds {
            broker: NodeId(2),
            count: 10,
        },
        ControllerOp::Records(Vec::new()),
    ];
    let mut messages: Vec<NodeMessage> = vec![
        NodeMessage::Raft(raft.clone()),
        NodeMessage::Leaders(vec![LeaderInfo {
            group: GroupId::new(1, 0),
            term: 3,
            leader: NodeId(2),
            isr: vec![NodeId(2), NODE],
        }]),
        NodeMessage::ControllerResponse {
            id: 1,
            result: Ok(ControllerReply::ProducerIds { first: 0, count: 5 }),
        },
        NodeMessage::ControllerResponse {
            id: 2,
            result: Err(ApiFailure {
                code: 7,
                message: "timeout".into(),
            }),
        },
    ];
    messages.extend(
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| NodeMessage::ControllerRequest { id: i as u64, op }),
    );
    let mut out: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| {
            let mut w = Writer::default();
            w.u8(1).u8(3).blob(&m.encode());
            w.out
        })
        .collect();
    // One input carrying all of them, from different peers, and replication's own framing.
    let mut w = Writer::default();
    for (i, m) in messages.iter().enumerate() {
        w.u8(i as u8).u8(2).blob(&m.encode());
    }
    for f in encode_messages(&raft, usize::MAX) {
        w.u8(2).u8(1).blob(&f);
    }
    out.push(w.out);
    // The same over the wire: from a peer, from an unknown node, for another cluster.
    let encoded: Vec<Bytes> = messages.iter().map(NodeMessage::encode).collect();
    for (from, cluster_id) in [(2, CLUSTER_ID), (9, CLUSTER_ID), (2, "other-cluster")] {
        let mut w = Writer::default();
        w.u8(0x80)
            .u8(2)
            .blob(&wire_stream(NodeId(from), cluster_id, &encoded));
        out.push(w.out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_streams_deliver_their_messages_only_to_the_named_cluster() {
        let messages: Vec<Bytes> = (0..3)
            .map(|_| NodeMessage::Leaders(Vec::new()).encode())
            .collect();
        let delivered = wire_messages(&wire_stream(NodeId(7), CLUSTER_ID, &messages));
        assert_eq!(delivered.len(), 3);
        assert!(delivered.iter().all(|e| e.from == NodeId(7)));
        assert_eq!(
            delivered
                .iter()
                .map(|e| e.payload.clone())
                .collect::<Vec<_>>(),
            messages
        );
        assert!(wire_messages(&wire_stream(NodeId(7), "other", &messages)).is_empty());
        // A message before the hello closes the connection.
        let stream = wire_stream(NodeId(7), CLUSTER_ID, &messages);
        let hello_len = 4 + u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        assert!(wire_messages(&stream[hello_len..]).is_empty());
    }
}
