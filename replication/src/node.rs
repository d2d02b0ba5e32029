//! The async half of the driver: one loop per node that feeds a [`MultiRaft`] from the
//! [`Network`], the [`Clock`] and a command channel, and ships its outbox.
//!
//! It is written against the IO traits only (no executor, no real time), so the very same
//! loop runs over Tokio and TCP in production and inside the simulator. Every round: wait for
//! one input, drain whatever else is ready without waiting (bounded), let `MultiRaft` do all
//! the IO at once (one fsync per dirty group per round: group commit), send one frame per
//! destination, then answer the proposals whose fate is now known.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_log::LogConfig;
use futures::channel::mpsc::{self, TryRecvError};
use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};

use crate::io::{Clock, IoWait, Network, FRAME_SIZE_MAX_BYTES};
use crate::multiraft::{
    decode_messages, encode_messages, DriverError, GroupEvent, GroupId, MultiRaft,
};
use crate::raft::{Membership, ProposeError, RaftError, RaftLog, Role, Status, StorageError, Term};
use crate::NodeId;

/// How many ready inputs one round takes before doing its IO.
const ROUND_INPUTS_MAX: usize = 1024;
/// Frames are cut well below the transport's limit.
const FRAME_TARGET_BYTES: usize = FRAME_SIZE_MAX_BYTES / 4;

/// When a proposal counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Durable on the leader (Kafka acks=1).
    Leader,
    /// Committed: durable on a quorum (Kafka acks=all).
    Quorum,
}

/// Why a proposal did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeFailure {
    /// Definitely not appended: this node is not the leader (or refuses proposals now).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Appended, but leadership changed before it was acknowledged: it may or may not end up
    /// committed.
    #[error("outcome unknown: leadership changed")]
    Indeterminate,
    /// The node stopped.
    #[error("node stopped")]
    Stopped,
}

/// Committed data read from a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedRead {
    pub bytes: Bytes,
    /// Offset after the last returned batch.
    pub next_offset: u64,
    pub log_start: u64,
    pub commit_end: u64,
}

/// Requests to a node's loop.
pub enum Command {
    Propose {
        group: GroupId,
        batch: BytesMut,
        acks: Acks,
        reply: oneshot::Sender<Result<(u64, u64), ProposeFailure>>,
    },
    CreateGroup {
        group: GroupId,
        membership: Membership,
        config: LogConfig,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Status {
        group: GroupId,
        reply: oneshot::Sender<Option<Status>>,
    },
    ReadCommitted {
        group: GroupId,
        from: u64,
        max_bytes: usize,
        reply: oneshot::Sender<Result<CommittedRead, String>>,
    },
    TransferLeadership {
        group: GroupId,
        to: NodeId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    ChangeMembership {
        group: GroupId,
        membership: Membership,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// A cloneable handle to a running node loop.
#[derive(Clone)]
pub struct RaftNodeHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl RaftNodeHandle {
    /// A handle and the receiver the loop reads.
    pub fn channel() -> (RaftNodeHandle, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded();
        (RaftNodeHandle { tx }, rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.unbounded_send(make(reply)).ok()?;
        rx.await.ok()
    }

    pub async fn propose(
        &self,
        group: GroupId,
        batch: BytesMut,
        acks: Acks,
    ) -> Result<(u64, u64), ProposeFailure> {
        self.ask(|reply| Command::Propose {
            group,
            batch,
            acks,
            reply,
        })
        .await
        .unwrap_or(Err(ProposeFailure::Stopped))
    }

    pub async fn create_group(
        &self,
        group: GroupId,
        membership: Membership,
        config: LogConfig,
    ) -> Result<(), String> {
        self.ask(|reply| Command::CreateGroup {
            group,
            membership,
            config,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("node stopped".into()))
    }

    pub async fn status(&self, group: GroupId) -> Option<Status> {
        self.ask(|reply| Command::Status { group, reply })
            .await
            .flatten()
    }

    /// Committed batches from `from`, as this replica has them.
    pub async fn read_committed(
        &self,
        group: GroupId,
        from: u64,
        max_bytes: usize,
    ) -> Result<CommittedRead, String> {
        self.ask(|reply| Command::ReadCommitted {
            group,
            from,
            max_bytes,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("node stopped".into()))
    }

    pub async fn transfer_leadership(&self, group: GroupId, to: NodeId) -> Result<(), String> {
        self.ask(|reply| Command::TransferLeadership { group, to, reply })
            .await
            .unwrap_or_else(|| Err("node stopped".into()))
    }

    pub async fn change_membership(
        &self,
        group: GroupId,
        membership: Membership,
    ) -> Result<(), String> {
        self.ask(|reply| Command::ChangeMembership {
            group,
            membership,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("node stopped".into()))
    }
}

struct Waiter {
    term: Term,
    base: u64,
    end: u64,
    acks: Acks,
    reply: oneshot::Sender<Result<(u64, u64), ProposeFailure>>,
}

/// Settings of the loop.
#[derive(Clone)]
pub struct NodeLoopConfig {
    /// Interval between Raft ticks (the cores count timeouts in ticks).
    pub tick: Duration,
    /// Injected bug (simulator only): acks=all proposals are answered once appended on the
    /// leader, before a quorum has them.
    pub ack_before_quorum: bool,
    /// Awaited after each round's disk IO, before its messages and answers go out (the
    /// simulator's device latency; `None` in production).
    pub io_wait: Option<IoWait>,
    /// Called at the end of every round with the node's state and the round's events
    /// (observers: the simulator records leaderships and committed prefixes with it). It
    /// must not block.
    pub observer: Option<Observer>,
}

/// See [`NodeLoopConfig::observer`].
pub type Observer = Arc<dyn Fn(&MultiRaft, &[GroupEvent]) + Send + Sync>;

impl Default for NodeLoopConfig {
    fn default() -> Self {
        NodeLoopConfig {
            tick: Duration::from_millis(10),
            ack_before_quorum: false,
            io_wait: None,
            observer: None,
        }
    }
}

/// Runs a node until its command channel closes (then `Ok`) or its storage fails (then the
/// error: the node must stop and recover from its disk).
pub async fn run_node(
    clock: Arc<dyn Clock>,
    network: Arc<dyn Network>,
    mut multi: MultiRaft,
    mut commands: mpsc::UnboundedReceiver<Command>,
    cfg: NodeLoopConfig,
) -> Result<(), DriverError> {
    let mut waiters: BTreeMap<GroupId, Vec<Waiter>> = BTreeMap::new();
    let net = Arc::clone(&network);
    let mut recv = net.recv().fuse();
    let mut tick = clock.sleep(cfg.tick).fuse();
    let result = loop {
        let mut inputs = 0usize;
        // Set when the command channel turns out closed while draining: the round finishes
        // (its inputs are processed and sent like any other), then the loop stops.
        let mut closed = false;
        futures::select_biased! {
            env = recv => {
                recv = net.recv().fuse();
                deliver(&mut multi, env.from, &env.payload)?;
                inputs += 1;
            }
            cmd = commands.next() => match cmd {
                Some(cmd) => {
                    handle_command(&mut multi, &mut waiters, cmd)?;
                    inputs += 1;
                }
                None => break Ok(()),
            },
            () = tick => {
                tick = clock.sleep(cfg.tick).fuse();
                multi.tick(clock.wall_clock_ms())?;
            }
        }
        // Take whatever else is ready, without waiting.
        while inputs < ROUND_INPUTS_MAX {
            if let Some(env) = (&mut recv).now_or_never() {
                recv = net.recv().fuse();
                deliver(&mut multi, env.from, &env.payload)?;
            } else {
                match commands.try_recv() {
                    Ok(cmd) => handle_command(&mut multi, &mut waiters, cmd)?,
                    Err(TryRecvError::Empty) => break,
                    // The end of the channel is reported once: `try_recv` has now fused
                    // the receiver, and `select_biased!` skips a terminated branch, so
                    // `commands.next()` never yields this `None` again. Ignoring it here
                    // left the loop running forever after its last handle was dropped
                    // (still leading and heartbeating, so its peers never elected anew).
                    Err(TryRecvError::Closed) => {
                        closed = true;
                        break;
                    }
                }
            }
            inputs += 1;
        }
        // Answer what the inputs already decided before the fsyncs of newer entries.
        resolve_waiters(&multi, &mut waiters, cfg.ack_before_quorum);
        let sent = multi.process_sending(|to, msgs| {
            for frame in encode_messages(&msgs, FRAME_TARGET_BYTES) {
                network.send(to, frame);
            }
        });
        if let Err(e) = sent {
            break Err(e);
        }
        if let Some(wait) = &cfg.io_wait {
            wait().await;
        }
        for (to, msgs) in multi.take_outbox() {
            for frame in encode_messages(&msgs, FRAME_TARGET_BYTES) {
                network.send(to, frame);
            }
        }
        let events = multi.take_events();
        if let Some(observe) = &cfg.observer {
            observe(&multi, &events);
        }
        resolve_waiters(&multi, &mut waiters, cfg.ack_before_quorum);
        if closed {
            break Ok(());
        }
    };
    for (_, ws) in std::mem::take(&mut waiters) {
        for w in ws {
            let _ = w.reply.send(Err(ProposeFailure::Indeterminate));
        }
    }
    result
}

fn deliver(multi: &mut MultiRaft, from: NodeId, payload: &[u8]) -> Result<(), DriverError> {
    match decode_messages(payload) {
        Ok(msgs) => {
            for (group, msg) in msgs {
                multi.step(from, group, msg)?;
            }
        }
        Err(e) => tracing::warn!(node = %multi.node(), %from, "undecodable frame dropped: {e}"),
    }
    Ok(())
}

fn handle_command(
    multi: &mut MultiRaft,
    waiters: &mut BTreeMap<GroupId, Vec<Waiter>>,
    cmd: Command,
) -> Result<(), DriverError> {
    match cmd {
        Command::Propose {
            group,
            batch,
            acks,
            reply,
        } => match multi.propose(group, batch) {
            Ok((base, end)) => {
                let term = multi.group(group).map_or(0, |r| r.term());
                waiters.entry(group).or_default().push(Waiter {
                    term,
                    base,
                    end,
                    acks,
                    reply,
                });
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = reply.send(Err(ProposeFailure::NotLeader { leader }));
            }
            Err(ProposeError::Raft(source)) => {
                let _ = reply.send(Err(ProposeFailure::Indeterminate));
                return Err(DriverError::Raft { group, source });
            }
            Err(_) => {
                let leader = multi.group(group).and_then(|r| r.leader());
                let _ = reply.send(Err(ProposeFailure::NotLeader { leader }));
            }
        },
        Command::CreateGroup {
            group,
            membership,
            config,
            reply,
        } => {
            multi.create_group(group, membership, config)?;
            let _ = reply.send(Ok(()));
        }
        Command::Status { group, reply } => {
            let _ = reply.send(multi.group(group).map(|r| r.status()));
        }
        Command::ReadCommitted {
            group,
            from,
            max_bytes,
            reply,
        } => {
            let result = match multi.group(group) {
                None => Err(format!("no group {group} here")),
                Some(r) => {
                    let log = r.log().log();
                    let commit_end = r.commit_end();
                    match log.read(from.max(log.log_start_offset()), max_bytes, commit_end) {
                        Ok(read) => Ok(CommittedRead {
                            bytes: read.bytes,
                            next_offset: read.next_offset,
                            log_start: log.log_start_offset(),
                            commit_end,
                        }),
                        Err(e @ fjord_log::LogError::Corrupt { .. }) => {
                            // Committed data failed its checksum: like a corrupt read on the
                            // replication path, the log is verified whole at restart (this
                            // member then repairs from its peers). Serving around the hole
                            // would stall every reader of this replica forever.
                            let _ = reply.send(Err(e.to_string()));
                            multi.mark_for_verification(group);
                            return Err(DriverError::Raft {
                                group,
                                source: RaftError::Storage(StorageError {
                                    corrupt: true,
                                    message: e.to_string(),
                                }),
                            });
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            let _ = reply.send(result);
        }
        Command::TransferLeadership { group, to, reply } => {
            let result = match multi.group_mut(group) {
                None => Err(format!("no group {group} here")),
                Some(r) => r.transfer_leadership(to).map_err(|e| e.to_string()),
            };
            let _ = reply.send(result);
        }
        Command::ChangeMembership {
            group,
            membership,
            reply,
        } => {
            let result = match multi.group_mut(group) {
                None => Err(format!("no group {group} here")),
                Some(r) => r
                    .propose_membership(membership)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            let _ = reply.send(result);
        }
    }
    Ok(())
}

/// Answers the proposals whose outcome is known: committed (or durable on the leader for
/// `Acks::Leader`) while still in the term they were appended in — success; the term moved
/// on — indeterminate.
fn resolve_waiters(
    multi: &MultiRaft,
    waiters: &mut BTreeMap<GroupId, Vec<Waiter>>,
    ack_before_quorum: bool,
) {
    waiters.retain(|group, ws| {
        let pending = std::mem::take(ws);
        for w in pending {
            match outcome(multi, *group, &w, ack_before_quorum) {
                Some(result) => {
                    let _ = w.reply.send(result);
                }
                None => ws.push(w),
            }
        }
        !ws.is_empty()
    });
}

fn outcome(
    multi: &MultiRaft,
    group: GroupId,
    w: &Waiter,
    ack_before_quorum: bool,
) -> Option<Result<(u64, u64), ProposeFailure>> {
    let Some(r) = multi.group(group) else {
        return Some(Err(ProposeFailure::Indeterminate));
    };
    let log = r.log();
    let ours = log.term_at(w.end - 1) == Some(w.term);
    let done = match w.acks {
        // The injected bug answers acks=all as soon as the leader has appended.
        Acks::Quorum if ack_before_quorum => ours,
        Acks::Quorum => r.commit_end() >= w.end && ours,
        Acks::Leader => {
            (log.durable_end() >= w.end || r.commit_end() >= w.end) && ours && r.term() == w.term
        }
    };
    if done {
        return Some(Ok((w.base, w.end)));
    }
    if r.term() != w.term || r.role() != Role::Leader {
        return Some(Err(ProposeFailure::Indeterminate));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use fjord_log::testing::MemDisk;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;

    use super::*;
    use crate::io::Envelope;
    use crate::multiraft::MultiRaftConfig;
    use crate::testing::{FrozenClock, ManualNetwork};

    /// Runs a node loop on a single-threaded executor until nothing can make progress;
    /// returns whether the loop ended, with `Ok`.
    fn runs_to_completion(
        inbox: mpsc::UnboundedReceiver<Envelope>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        let multi = MultiRaft::open(
            MultiRaftConfig::new(NodeId(1), "", 1),
            Arc::new(MemDisk::new(1)),
        )
        .expect("open");
        let network = Arc::new(ManualNetwork::new(NodeId(1), inbox));
        let ended = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&ended);
        let mut pool = LocalPool::new();
        pool.spawner()
            .spawn_local(async move {
                let result = run_node(
                    Arc::new(FrozenClock),
                    network,
                    multi,
                    commands,
                    NodeLoopConfig::default(),
                )
                .await;
                *slot.lock().expect("slot") = Some(result.is_ok());
            })
            .expect("spawn");
        pool.run_until_stalled();
        let ended = ended.lock().expect("slot").take();
        ended == Some(true)
    }

    fn garbage_frame() -> Envelope {
        Envelope {
            from: NodeId(2),
            to: NodeId(1),
            payload: Bytes::from_static(b"not a frame"),
        }
    }

    #[test]
    fn stops_when_its_last_handle_is_dropped() {
        let (_net_tx, inbox) = mpsc::unbounded();
        let (handle, commands) = RaftNodeHandle::channel();
        drop(handle);
        assert!(runs_to_completion(inbox, commands));
    }

    /// The round that takes a message from the network drains the command channel with
    /// `try_recv`: that is where it finds the channel closed, and the only place it can.
    #[test]
    fn stops_when_the_handle_is_dropped_while_a_message_is_ready() {
        let (net_tx, inbox) = mpsc::unbounded();
        net_tx.unbounded_send(garbage_frame()).expect("queued");
        let (handle, commands) = RaftNodeHandle::channel();
        drop(handle);
        assert!(
            runs_to_completion(inbox, commands),
            "the loop outlived its command channel"
        );
    }

    /// A command and then the end of the channel: the command is answered (its round
    /// completes), then the loop stops.
    #[test]
    fn answers_the_last_command_then_stops() {
        let (_net_tx, inbox) = mpsc::unbounded();
        let (handle, commands) = RaftNodeHandle::channel();
        let (reply, mut answer) = oneshot::channel();
        handle
            .tx
            .unbounded_send(Command::Status {
                group: GroupId::new(1, 0),
                reply,
            })
            .expect("queued");
        drop(handle);
        assert!(
            runs_to_completion(inbox, commands),
            "the loop outlived its command channel"
        );
        // No such group here: the loop answered `None`.
        assert_eq!(answer.try_recv(), Ok(Some(None)));
    }
}
