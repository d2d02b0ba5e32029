//! A client of the raft workload: finds leaders, writes unique values, reads committed
//! records, and records what it observed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fjord_replication::NodeId;
use futures::future::{select, Either};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::proto::{Answer, Reply, Request};
use crate::history::{Offset, Value};
use crate::workload::ClientEnv;

/// A request without a reply after this long is given up (its outcome is unknown).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Attempts of one write while every answer says it was not appended.
const WRITE_ATTEMPTS: usize = 8;
/// Pause before retrying when no leader is known.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(50);

/// How a write ended.
pub enum WriteOutcome {
    Written(Offset),
    /// Definitely not appended.
    Failed(String),
    /// May or may not have been appended.
    Unknown(String),
}

/// How a read ended.
pub enum ReadOutcome {
    Records {
        next: Offset,
        records: Vec<(Offset, Value)>,
    },
    /// The server refused (not the leader, or it could not read).
    Failed(String),
    Unknown(String),
}

pub struct Client {
    pub env: ClientEnv,
    /// Voters of each group.
    groups: Arc<Vec<Vec<NodeId>>>,
    leader: BTreeMap<u32, NodeId>,
    incarnation: BTreeMap<NodeId, u32>,
    next_req: u64,
    pub rng: ChaCha8Rng,
}

impl Client {
    pub fn new(env: ClientEnv, groups: Arc<Vec<Vec<NodeId>>>, rng: ChaCha8Rng) -> Self {
        Client {
            env,
            groups,
            leader: BTreeMap::new(),
            incarnation: BTreeMap::new(),
            next_req: 0,
            rng,
        }
    }

    /// The known leader of `group`, or a random voter.
    fn target(&mut self, group: u32) -> NodeId {
        if let Some(l) = self.leader.get(&group) {
            return *l;
        }
        *self.groups[group as usize]
            .choose(&mut self.rng)
            .expect("a group has voters")
    }

    fn hint(&mut self, group: u32, hint: Option<NodeId>, from: NodeId) {
        match hint.filter(|h| *h != from) {
            Some(h) => {
                self.leader.insert(group, h);
            }
            None => {
                self.leader.remove(&group);
            }
        }
    }

    /// Sends `make(req)` to `to` and waits for its reply; `None` on timeout.
    async fn call(&mut self, to: NodeId, make: impl FnOnce(u64) -> Request) -> Option<Reply> {
        self.next_req += 1;
        let req = self.next_req;
        self.env.network.send(to, make(req).encode());
        let network = self.env.network.clone();
        let reply = async {
            loop {
                let e = network.recv().await;
                if let Some(r) = Reply::decode(e.payload) {
                    if r.req == req && e.from == to {
                        return r;
                    }
                }
            }
        };
        let reply = match select(Box::pin(reply), self.env.clock.sleep(REQUEST_TIMEOUT)).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => return None,
        };
        self.incarnation.insert(to, reply.incarnation);
        Some(reply)
    }

    /// Writes `value` to `group` (acks=all).
    pub async fn write(&mut self, group: u32, value: Value) -> WriteOutcome {
        for _ in 0..WRITE_ATTEMPTS {
            let to = self.target(group);
            let Some(&incarnation) = self.incarnation.get(&to) else {
                if self.call(to, |req| Request::Hello { req }).await.is_none() {
                    self.leader.remove(&group);
                }
                continue;
            };
            let reply = self
                .call(to, |req| Request::Write {
                    req,
                    group,
                    incarnation,
                    value,
                })
                .await;
            let Some(reply) = reply else {
                self.leader.remove(&group);
                return WriteOutcome::Unknown(format!("no reply from {to}"));
            };
            match reply.answer {
                Answer::Written { offset } => {
                    self.leader.insert(group, to);
                    return WriteOutcome::Written(offset);
                }
                Answer::NotLeader { hint } => {
                    self.hint(group, hint, to);
                    if hint.is_none() {
                        self.env.clock.sleep(NO_LEADER_BACKOFF).await;
                    }
                }
                Answer::Stale => {} // The reply taught us the incarnation.
                Answer::Unknown => {
                    self.leader.remove(&group);
                    return WriteOutcome::Unknown(format!("{to} lost leadership"));
                }
                other => return WriteOutcome::Unknown(format!("unexpected answer {other:?}")),
            }
        }
        WriteOutcome::Failed("no leader accepted the write".to_string())
    }

    /// Reads `group`'s committed records from `from` (from the leader if `leader_only`, else
    /// from the believed leader or any voter).
    pub async fn read(&mut self, group: u32, from: Offset, leader_only: bool) -> ReadOutcome {
        let to = self.target(group);
        let reply = self
            .call(to, |req| Request::Read {
                req,
                group,
                from,
                leader_only,
            })
            .await;
        let Some(reply) = reply else {
            self.leader.remove(&group);
            return ReadOutcome::Unknown(format!("no reply from {to}"));
        };
        match reply.answer {
            Answer::Records { next, records } => ReadOutcome::Records { next, records },
            Answer::NotLeader { hint } => {
                self.hint(group, hint, to);
                ReadOutcome::Failed(format!("{to} is not the leader"))
            }
            Answer::ReadFailed => {
                // Try another replica next time.
                self.leader.remove(&group);
                ReadOutcome::Failed(format!("{to} could not read"))
            }
            other => ReadOutcome::Unknown(format!("unexpected answer {other:?}")),
        }
    }
}
