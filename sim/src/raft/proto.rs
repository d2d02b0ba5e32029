//! The raft workload's client protocol: one request or one reply per message.
//!
//! ```text
//! request  = tag:u8 req:u64 ...
//!   0 Hello                                   learn the server's incarnation
//!   1 Write  group:u32 incarnation:u32 value:u64
//!   2 Read   group:u32 from:u64 leader_only:u8
//! reply    = tag:u8 req:u64 incarnation:u32 ...
//!   0 Hello
//!   1 Written   offset:u64                     committed (acks=all) at offset
//!   2 NotLeader hint:u32 (0 = none)            definitely not appended
//!   3 Stale                                    addressed to another incarnation: not appended
//!   4 Unknown                                  appended, fate unknown (leadership changed)
//!   5 Records   next:u64 (offset:u64 value:u64)*
//!   6 ReadFailed
//! ```
//!
//! A write names the server incarnation it is meant for. A server applies a write only if it
//! is addressed to its own incarnation and it has not seen the request `(client, req)` before
//! in that incarnation: a message the network duplicated, or delivered to a later incarnation
//! of the server, is never appended twice.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fjord_replication::NodeId;

/// What a client asks a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello {
        req: u64,
    },
    Write {
        req: u64,
        group: u32,
        incarnation: u32,
        value: u64,
    },
    Read {
        req: u64,
        group: u32,
        from: u64,
        /// Only the group's leader may answer (final reads).
        leader_only: bool,
    },
}

/// What a server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Hello,
    Written { offset: u64 },
    NotLeader { hint: Option<NodeId> },
    Stale,
    Unknown,
    Records { next: u64, records: Vec<(u64, u64)> },
    ReadFailed,
}

/// A reply: to request `req`, from the server's incarnation `incarnation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub req: u64,
    pub incarnation: u32,
    pub answer: Answer,
}

impl Request {
    pub fn req(&self) -> u64 {
        match self {
            Request::Hello { req } | Request::Write { req, .. } | Request::Read { req, .. } => *req,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        match self {
            Request::Hello { req } => {
                b.put_u8(0);
                b.put_u64(*req);
            }
            Request::Write {
                req,
                group,
                incarnation,
                value,
            } => {
                b.put_u8(1);
                b.put_u64(*req);
                b.put_u32(*group);
                b.put_u32(*incarnation);
                b.put_u64(*value);
            }
            Request::Read {
                req,
                group,
                from,
                leader_only,
            } => {
                b.put_u8(2);
                b.put_u64(*req);
                b.put_u32(*group);
                b.put_u64(*from);
                b.put_u8(u8::from(*leader_only));
            }
        }
        b.freeze()
    }

    /// `None` for a malformed message.
    pub fn decode(mut b: Bytes) -> Option<Request> {
        if b.remaining() < 9 {
            return None;
        }
        let tag = b.get_u8();
        let req = b.get_u64();
        Some(match tag {
            0 => Request::Hello { req },
            1 if b.remaining() >= 16 => Request::Write {
                req,
                group: b.get_u32(),
                incarnation: b.get_u32(),
                value: b.get_u64(),
            },
            2 if b.remaining() >= 13 => Request::Read {
                req,
                group: b.get_u32(),
                from: b.get_u64(),
                leader_only: b.get_u8() != 0,
            },
            _ => return None,
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        let tag = match &self.answer {
            Answer::Hello => 0,
            Answer::Written { .. } => 1,
            Answer::NotLeader { .. } => 2,
            Answer::Stale => 3,
            Answer::Unknown => 4,
            Answer::Records { .. } => 5,
            Answer::ReadFailed => 6,
        };
        b.put_u8(tag);
        b.put_u64(self.req);
        b.put_u32(self.incarnation);
        match &self.answer {
            Answer::Written { offset } => b.put_u64(*offset),
            Answer::NotLeader { hint } => b.put_u32(hint.map_or(0, |n| n.0)),
            Answer::Records { next, records } => {
                b.put_u64(*next);
                for (o, v) in records {
                    b.put_u64(*o);
                    b.put_u64(*v);
                }
            }
            Answer::Hello | Answer::Stale | Answer::Unknown | Answer::ReadFailed => {}
        }
        b.freeze()
    }

    /// `None` for a malformed message.
    pub fn decode(mut b: Bytes) -> Option<Reply> {
        if b.remaining() < 13 {
            return None;
        }
        let tag = b.get_u8();
        let req = b.get_u64();
        let incarnation = b.get_u32();
        let answer = match tag {
            0 => Answer::Hello,
            1 if b.remaining() >= 8 => Answer::Written {
                offset: b.get_u64(),
            },
            2 if b.remaining() >= 4 => Answer::NotLeader {
                hint: Some(b.get_u32()).filter(|n| *n != 0).map(NodeId),
            },
            3 => Answer::Stale,
            4 => Answer::Unknown,
            5 if b.remaining() >= 8 && (b.remaining() - 8) % 16 == 0 => {
                let next = b.get_u64();
                let mut records = Vec::with_capacity(b.remaining() / 16);
                while b.remaining() >= 16 {
                    records.push((b.get_u64(), b.get_u64()));
                }
                Answer::Records { next, records }
            }
            6 => Answer::ReadFailed,
            _ => return None,
        };
        Some(Reply {
            req,
            incarnation,
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [
            Request::Hello { req: 1 },
            Request::Write {
                req: 2,
                group: 1,
                incarnation: 3,
                value: 99,
            },
            Request::Read {
                req: 3,
                group: 0,
                from: 17,
                leader_only: true,
            },
        ] {
            assert_eq!(Request::decode(r.encode()), Some(r));
        }
        for answer in [
            Answer::Hello,
            Answer::Written { offset: 5 },
            Answer::NotLeader { hint: None },
            Answer::NotLeader {
                hint: Some(NodeId(3)),
            },
            Answer::Stale,
            Answer::Unknown,
            Answer::Records {
                next: 9,
                records: vec![(1, 2), (7, 8)],
            },
            Answer::ReadFailed,
        ] {
            let r = Reply {
                req: 4,
                incarnation: 2,
                answer,
            };
            assert_eq!(Reply::decode(r.encode()), Some(r));
        }
        assert_eq!(Request::decode(Bytes::from_static(&[1, 0])), None);
        assert_eq!(Reply::decode(Bytes::from_static(&[9; 13])), None);
    }
}
