//! The leader's view of one follower's log.

use std::collections::VecDeque;

/// How the leader currently feeds a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Where the logs diverge is unknown: one append at a time until one is accepted.
    Probe,
    /// The logs agree up to `match_end`: appends are pipelined, bounded by the in-flight limit.
    Replicate,
    /// The follower needs entries below the leader's log start: a snapshot is on its way.
    Snapshot,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The follower's log durably agrees with ours below this offset.
    pub match_end: u64,
    /// The `prev_end` of the next append.
    pub next_end: u64,
    pub state: ProgressState,
    /// In `Probe`/`Snapshot`: a probe (or snapshot) is outstanding.
    pub probe_sent: bool,
    /// In `Replicate`: end offsets of the appends in flight, oldest first.
    pub inflight: VecDeque<u64>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Ticks since `match_end` last advanced (detects lost pipelined appends).
    pub ticks_since_progress: u32,
}

impl Progress {
    pub fn new(next_end: u64) -> Self {
        Progress {
            match_end: 0,
            next_end,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            ticks_since_progress: 0,
        }
    }

    pub fn become_probe(&mut self, next_end: u64) {
        self.state = ProgressState::Probe;
        self.next_end = next_end.max(self.match_end);
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_end = self.next_end.max(self.match_end);
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = true;
        self.inflight.clear();
    }

    /// Records an acknowledged match; returns whether it moved forward.
    pub fn on_match(&mut self, end: u64) -> bool {
        let advanced = end > self.match_end;
        if advanced {
            self.match_end = end;
            self.ticks_since_progress = 0;
        }
        self.next_end = self.next_end.max(end);
        while self.inflight.front().is_some_and(|&e| e <= end) {
            self.inflight.pop_front();
        }
        advanced
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, inflight_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < inflight_max,
            ProgressState::Snapshot => false,
        }
    }
}
