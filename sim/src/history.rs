//! What a run observed: the input of every check in [`crate::check`].
//!
//! Any workload fills a [`History`] (in the simulator, through `workload::Recorder`): client
//! operations with their invocation and outcome, the final read of every partition after the
//! cluster healed, and what replicas said about themselves (leadership per term, hashes of
//! committed prefixes). The model is a Kafka-like log: clients write unique values to
//! partitions and get back the offset the value was assigned; readers read `(offset, value)`
//! records in order.
//!
//! An operation whose outcome is unknown (a timeout, a connection that broke, a client that
//! was stopped while waiting) is *indeterminate*: it may or may not have taken effect, and no
//! check may count it as lost or as failed.

use std::time::Duration;

use fjord_replication::NodeId;

/// A partition (or any independently ordered log) of the system under test.
pub type Partition = u32;
/// A position in a partition. Offsets of one partition need not be dense (control records and
/// compaction leave gaps).
pub type Offset = u64;
/// A value a client wrote. Workloads write each value at most once, so a value identifies
/// its write.
pub type Value = u64;

/// Identifies one operation in a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// A reader session: a consumer that reads one partition forward. Its reads must see
/// strictly increasing offsets; a consumer that seeks back starts a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReaderId(pub u64);

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Append `value` to `partition` (acks=all).
    Write { partition: Partition, value: Value },
    /// Read `partition` from offset `from` on, as part of reader session `reader`.
    Read {
        partition: Partition,
        reader: ReaderId,
        from: Offset,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Invoked and never completed: treated as indeterminate.
    Pending,
    /// Unknown whether it took effect (timeout, broken connection).
    Indeterminate { reason: String },
    /// Definitely did not take effect (the system said so before doing anything).
    Failed { reason: String },
    /// A write was acknowledged at `offset`.
    Written { offset: Offset },
    /// A read returned these records, in the order returned.
    Read { records: Vec<(Offset, Value)> },
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: OpId,
    /// The client (node) that issued it.
    pub client: NodeId,
    /// Simulated time of the invocation.
    pub invoked_at: Duration,
    /// Simulated time of the completion, if it completed.
    pub completed_at: Option<Duration>,
    pub kind: OpKind,
    pub outcome: Outcome,
}

/// A node said it was the leader of `group` in `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderObservation {
    pub at: Duration,
    pub node: NodeId,
    /// A Raft group (a partition, or the metadata group).
    pub group: u32,
    pub term: u64,
}

/// A replica's committed prefix of `partition`, up to and including `offset`, hashes to
/// `hash`. The workload defines the hash; replicas must agree on it wherever they report the
/// same offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixObservation {
    pub at: Duration,
    pub node: NodeId,
    pub partition: Partition,
    pub offset: Offset,
    pub hash: u64,
}

/// How an offset commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Invoked and never completed: treated as indeterminate.
    Pending,
    /// The group coordinator acknowledged it.
    Acked,
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Indeterminate,
}

/// A client committed `offset` (the next offset to consume) of `partition` for `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOp {
    pub client: NodeId,
    pub group: String,
    pub partition: Partition,
    pub offset: Offset,
    pub invoked_at: Duration,
    pub completed_at: Option<Duration>,
    pub outcome: CommitOutcome,
}

/// A client read `group`'s committed offset of `partition`: `None` means nothing committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedRead {
    pub client: NodeId,
    pub group: String,
    pub partition: Partition,
    pub invoked_at: Duration,
    pub completed_at: Duration,
    pub offset: Option<Offset>,
}

/// Everything one run recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Client operations, in invocation order.
    pub ops: Vec<Op>,
    /// After heal: every partition read from the start to its end, `(offset, value)` in log
    /// order. A partition the workload wrote to but could not read finally is absent.
    pub final_reads: std::collections::BTreeMap<Partition, Vec<(Offset, Value)>>,
    pub leaders: Vec<LeaderObservation>,
    pub prefixes: Vec<PrefixObservation>,
    /// Offset commits of consumer groups, in invocation order.
    pub commits: Vec<CommitOp>,
    /// Committed offsets as clients read them back (Kafka's OffsetFetch).
    pub committed_reads: Vec<CommittedRead>,
}

impl History {
    /// Acknowledged writes: `(op, partition, value, offset)`.
    pub fn acked_writes(&self) -> impl Iterator<Item = (&Op, Partition, Value, Offset)> {
        self.ops
            .iter()
            .filter_map(|op| match (&op.kind, &op.outcome) {
                (OpKind::Write { partition, value }, Outcome::Written { offset }) => {
                    Some((op, *partition, *value, *offset))
                }
                _ => None,
            })
    }

    /// Successful reads: `(op, partition, reader, records)`.
    pub fn ok_reads(&self) -> impl Iterator<Item = (&Op, Partition, ReaderId, &[(Offset, Value)])> {
        self.ops
            .iter()
            .filter_map(|op| match (&op.kind, &op.outcome) {
                (
                    OpKind::Read {
                        partition, reader, ..
                    },
                    Outcome::Read { records },
                ) => Some((op, *partition, *reader, records.as_slice())),
                _ => None,
            })
    }

    /// Every write the history knows of, whatever its outcome: value → (partition, op).
    pub fn writes_by_value(&self) -> std::collections::BTreeMap<Value, (Partition, &Op)> {
        self.ops
            .iter()
            .filter_map(|op| match op.kind {
                OpKind::Write { partition, value } => Some((value, (partition, op))),
                OpKind::Read { .. } => None,
            })
            .collect()
    }
}

/// Helpers to build histories by hand (checker tests, examples).
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// A history under construction; operations get consecutive ids and times.
    #[derive(Default)]
    pub struct Builder {
        pub h: History,
    }

    impl Builder {
        fn push(&mut self, kind: OpKind, outcome: Outcome) -> &mut Self {
            let n = self.h.ops.len() as u64;
            self.h.ops.push(Op {
                id: OpId(n),
                client: NodeId(1000),
                invoked_at: Duration::from_millis(n * 10),
                completed_at: Some(Duration::from_millis(n * 10 + 5)),
                kind,
                outcome,
            });
            self
        }

        pub fn write_ok(
            &mut self,
            partition: Partition,
            value: Value,
            offset: Offset,
        ) -> &mut Self {
            self.push(
                OpKind::Write { partition, value },
                Outcome::Written { offset },
            )
        }

        pub fn write_unknown(&mut self, partition: Partition, value: Value) -> &mut Self {
            self.push(
                OpKind::Write { partition, value },
                Outcome::Indeterminate {
                    reason: "timeout".into(),
                },
            )
        }

        pub fn write_failed(&mut self, partition: Partition, value: Value) -> &mut Self {
            self.push(
                OpKind::Write { partition, value },
                Outcome::Failed {
                    reason: "not leader".into(),
                },
            )
        }

        pub fn read(
            &mut self,
            partition: Partition,
            reader: u64,
            records: &[(Offset, Value)],
        ) -> &mut Self {
            let from = records.first().map_or(0, |r| r.0);
            self.push(
                OpKind::Read {
                    partition,
                    reader: ReaderId(reader),
                    from,
                },
                Outcome::Read {
                    records: records.to_vec(),
                },
            )
        }

        pub fn final_read(
            &mut self,
            partition: Partition,
            records: &[(Offset, Value)],
        ) -> &mut Self {
            self.h.final_reads.insert(partition, records.to_vec());
            self
        }

        pub fn leader(&mut self, node: u32, group: u32, term: u64) -> &mut Self {
            self.h.leaders.push(LeaderObservation {
                at: Duration::ZERO,
                node: NodeId(node),
                group,
                term,
            });
            self
        }

        pub fn prefix(
            &mut self,
            node: u32,
            partition: Partition,
            offset: Offset,
            hash: u64,
        ) -> &mut Self {
            self.h.prefixes.push(PrefixObservation {
                at: Duration::ZERO,
                node: NodeId(node),
                partition,
                offset,
                hash,
            });
            self
        }

        /// A commit of group "g" invoked at `invoked_ms`, completed at `completed_ms`.
        pub fn commit(
            &mut self,
            partition: Partition,
            offset: Offset,
            outcome: CommitOutcome,
            invoked_ms: u64,
            completed_ms: Option<u64>,
        ) -> &mut Self {
            self.h.commits.push(CommitOp {
                client: NodeId(1000),
                group: "g".into(),
                partition,
                offset,
                invoked_at: Duration::from_millis(invoked_ms),
                completed_at: completed_ms.map(Duration::from_millis),
                outcome,
            });
            self
        }

        /// Group "g"'s committed offset of `partition` read as `offset`.
        pub fn committed_read(
            &mut self,
            partition: Partition,
            offset: Option<Offset>,
            invoked_ms: u64,
            completed_ms: u64,
        ) -> &mut Self {
            self.h.committed_reads.push(CommittedRead {
                client: NodeId(1001),
                group: "g".into(),
                partition,
                invoked_at: Duration::from_millis(invoked_ms),
                completed_at: Duration::from_millis(completed_ms),
                offset,
            });
            self
        }

        pub fn done(&mut self) -> History {
            std::mem::take(&mut self.h)
        }
    }

    pub fn history() -> Builder {
        Builder::default()
    }
}
