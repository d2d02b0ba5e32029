//! What brokers say to each other over the [`Network`](fjord_replication::Network): Raft
//! traffic of every group, partition leadership gossip, and requests to the controller (the
//! metadata group's leader), all in one bincode-encoded enum per frame.

use bytes::Bytes;
use fjord_replication::multiraft::GroupId;
use fjord_replication::raft::{Message, Term};
use fjord_replication::NodeId;
use serde::{Deserialize, Serialize};

use crate::controller::{ConfigResource, MetadataRecord};

/// One partition's leadership as its leader announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub group: GroupId,
    pub term: Term,
    pub leader: NodeId,
    /// Replicas whose logs are caught up with the leader's commit (Kafka's ISR).
    pub isr: Vec<NodeId>,
}

/// An operation only the controller may perform; non-leaders forward it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerOp {
    RegisterBroker {
        id: NodeId,
        incarnation: u64,
        host: String,
        kafka_port: u16,
        rack: Option<String>,
        rpc_addr: String,
    },
    Heartbeat {
        id: NodeId,
        incarnation: u64,
    },
    CreateTopic {
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: Vec<(String, String)>,
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        validate_only: bool,
    },
    AlterConfigs {
        resource: ConfigResource,
        /// `(key, op, value)`: op 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT; `None` op: the
        /// legacy AlterConfigs (replace every key).
        changes: Vec<(String, Option<i8>, Option<String>)>,
        validate_only: bool,
    },
    AllocateProducerIds {
        broker: NodeId,
        count: u32,
    },
    /// Records decided by the caller (internal topics).
    Records(Vec<MetadataRecord>),
}

/// The controller's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerReply {
    Done,
    ProducerIds { first: i64, count: u32 },
}

/// A Kafka error code and message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFailure {
    pub code: i16,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeMessage {
    Raft(Vec<(GroupId, Message)>),
    Leaders(Vec<LeaderInfo>),
    ControllerRequest {
        id: u64,
        op: ControllerOp,
    },
    ControllerResponse {
        id: u64,
        result: Result<ControllerReply, ApiFailure>,
    },
}

/// Largest frame decoded (the transport enforces the same bound).
const DECODE_LIMIT_BYTES: usize = fjord_replication::io::FRAME_SIZE_MAX_BYTES;

impl NodeMessage {
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            bincode::serde::encode_to_vec(self, bincode::config::standard())
                .expect("node messages always encode"),
        )
    }

    /// Decodes a frame; garbage is an error, never a panic or an unbounded allocation.
    pub fn decode(frame: &[u8]) -> Result<Self, bincode::error::DecodeError> {
        let config = bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>();
        bincode::serde::decode_from_slice(frame, config).map(|(m, _)| m)
    }
}

/// Splits Raft messages for one destination into frames of about `target` bytes.
pub fn raft_frames(msgs: Vec<(GroupId, Message)>, target: usize) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0usize;
    for m in msgs {
        let approx = match &m.1 {
            Message::Append(a) => 64 + a.batches.len(),
            Message::InstallSnapshot(s) => 128 + s.data.len(),
            _ => 64,
        };
        if !chunk.is_empty() && size + approx > target {
            frames.push(NodeMessage::Raft(std::mem::take(&mut chunk)).encode());
            size = 0;
        }
        chunk.push(m);
        size += approx;
    }
    if !chunk.is_empty() {
        frames.push(NodeMessage::Raft(chunk).encode());
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_replication::raft::Heartbeat;

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let msgs = vec![
            NodeMessage::Raft(vec![(
                GroupId::new(3, 1),
                Message::Heartbeat(Heartbeat {
                    term: 4,
                    commit_end: 9,
                }),
            )]),
            NodeMessage::Leaders(vec![LeaderInfo {
                group: GroupId::new(3, 1),
                term: 4,
                leader: NodeId(2),
                isr: vec![NodeId(1), NodeId(2)],
            }]),
            NodeMessage::ControllerRequest {
                id: 7,
                op: ControllerOp::DeleteTopic { name: "t".into() },
            },
            NodeMessage::ControllerResponse {
                id: 7,
                result: Err(ApiFailure {
                    code: 3,
                    message: "unknown".into(),
                }),
            },
        ];
        for m in msgs {
            assert_eq!(NodeMessage::decode(&m.encode()).unwrap(), m);
        }
        assert!(NodeMessage::decode(&[9, 9, 9]).is_err());
        assert!(NodeMessage::decode(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
