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

    use proptest::prelude::*;

    use crate::controller::ConfigResource;

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9.\\-]{0,12}"
    }

    fn raft_message() -> impl Strategy<Value = Message> {
        use fjord_replication::raft::{AppendRequest, VoteRequest};
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(term, commit_end)| Message::Heartbeat(Heartbeat { term, commit_end })),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(term, log_end, transfer)| {
                Message::Vote(VoteRequest {
                    term,
                    log_end,
                    last_term: term / 2,
                    transfer,
                })
            }),
            (any::<[u64; 5]>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(f, b)| {
                Message::Append(AppendRequest {
                    term: f[0],
                    prev_end: f[1],
                    prev_term: f[2],
                    commit_end: f[3],
                    leader_end: f[4],
                    batches: Bytes::from(b),
                })
            }),
        ]
    }

    fn controller_op() -> impl Strategy<Value = ControllerOp> {
        let resource = prop_oneof![
            text().prop_map(ConfigResource::Topic),
            any::<u32>().prop_map(|n| ConfigResource::Broker(NodeId(n))),
            Just(ConfigResource::Cluster),
        ];
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                text(),
                any::<u16>(),
                prop::option::of(text()),
                text()
            )
                .prop_map(|(id, incarnation, host, kafka_port, rack, rpc_addr)| {
                    ControllerOp::RegisterBroker {
                        id: NodeId(id),
                        incarnation,
                        host,
                        kafka_port,
                        rack,
                        rpc_addr,
                    }
                }),
            (any::<u32>(), any::<u64>()).prop_map(|(id, incarnation)| ControllerOp::Heartbeat {
                id: NodeId(id),
                incarnation
            }),
            (
                text(),
                any::<i32>(),
                any::<i16>(),
                prop::collection::vec((text(), text()), 0..3),
                any::<bool>()
            )
                .prop_map(
                    |(name, partitions, replication_factor, configs, validate_only)| {
                        ControllerOp::CreateTopic {
                            name,
                            partitions,
                            replication_factor,
                            configs,
                            validate_only,
                        }
                    }
                ),
            text().prop_map(|name| ControllerOp::DeleteTopic { name }),
            (text(), any::<i32>(), any::<bool>()).prop_map(|(name, count, validate_only)| {
                ControllerOp::CreatePartitions {
                    name,
                    count,
                    validate_only,
                }
            }),
            (
                resource,
                prop::collection::vec(
                    (text(), any::<Option<i8>>(), prop::option::of(text())),
                    0..3
                ),
                any::<bool>()
            )
                .prop_map(|(resource, changes, validate_only)| {
                    ControllerOp::AlterConfigs {
                        resource,
                        changes,
                        validate_only,
                    }
                }),
            (any::<u32>(), any::<u32>()).prop_map(|(b, count)| {
                ControllerOp::AllocateProducerIds {
                    broker: NodeId(b),
                    count,
                }
            }),
            Just(ControllerOp::Records(Vec::new())),
        ]
    }

    /// Every kind of node message (metadata records aside: see the controller's own
    /// record tests) with arbitrary field values.
    fn node_message() -> impl Strategy<Value = NodeMessage> {
        let group = (any::<u32>(), any::<u32>()).prop_map(|(t, p)| GroupId::new(t, p));
        let leader = (
            group.clone(),
            any::<u64>(),
            any::<u32>(),
            prop::collection::vec(any::<u32>(), 0..4),
        )
            .prop_map(|(group, term, leader, isr)| LeaderInfo {
                group,
                term,
                leader: NodeId(leader),
                isr: isr.into_iter().map(NodeId).collect(),
            });
        let reply = prop_oneof![
            Just(Ok(ControllerReply::Done)),
            (any::<i64>(), any::<u32>())
                .prop_map(|(first, count)| Ok(ControllerReply::ProducerIds { first, count })),
            (any::<i16>(), text()).prop_map(|(code, message)| Err(ApiFailure { code, message })),
        ];
        prop_oneof![
            prop::collection::vec((group, raft_message()), 0..6).prop_map(NodeMessage::Raft),
            prop::collection::vec(leader, 0..4).prop_map(NodeMessage::Leaders),
            (any::<u64>(), controller_op())
                .prop_map(|(id, op)| NodeMessage::ControllerRequest { id, op }),
            (any::<u64>(), reply)
                .prop_map(|(id, result)| NodeMessage::ControllerResponse { id, result }),
        ]
    }

    proptest! {
        #[test]
        fn node_messages_round_trip(m in node_message()) {
            prop_assert_eq!(NodeMessage::decode(&m.encode()).expect("decodes"), m);
        }

        /// Cut or garbled frames are errors or other messages, never a panic.
        #[test]
        fn damaged_frames_never_panic(
            m in node_message(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let mut frame = m.encode().to_vec();
            let at = flip.0.index(frame.len());
            frame[at] ^= flip.1;
            frame.truncate(cut.index(frame.len() + 1));
            let _ = NodeMessage::decode(&frame);
        }
    }
}
