//! An in-memory [`RaftLog`] with a crash model, for the core's tests and the `raft_step` fuzz
//! target (fuzz-harness/): everything not synced is lost on [`MemLog::crash`] (including
//! truncations, which may resurrect old entries). Its own checks are assertions: it trusts
//! the core to hand it only well-formed batches at the right offsets.

use bytes::{Bytes, BytesMut};

use super::message::Term;
use super::storage::{RaftLog, StorageError};
use fjord_log::batch::BatchHeader;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub base: u64,
    pub end: u64,
    pub term: Term,
    pub bytes: Bytes,
}

#[derive(Clone, Debug, Default)]
struct State {
    start: u64,
    start_term: Term,
    entries: Vec<Entry>,
    snapshot: Bytes,
}

#[derive(Clone, Debug, Default)]
pub struct MemLog {
    live: State,
    durable: State,
    /// Whether `durable` equals `live`.
    synced: bool,
}

impl MemLog {
    pub fn new() -> Self {
        MemLog {
            synced: true,
            ..Default::default()
        }
    }

    /// Power loss: only what was synced survives.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
        self.synced = true;
    }

    pub fn entries(&self) -> &[Entry] {
        &self.live.entries
    }

    fn entry_index_holding(&self, offset: u64) -> Option<usize> {
        let i = self.live.entries.partition_point(|e| e.end <= offset);
        (i < self.live.entries.len()).then_some(i)
    }
}

impl RaftLog for MemLog {
    fn start_offset(&self) -> u64 {
        self.live.start
    }

    fn end_offset(&self) -> u64 {
        self.live.entries.last().map_or(self.live.start, |e| e.end)
    }

    fn durable_end(&self) -> u64 {
        if self.synced {
            return self.end_offset();
        }
        // The longest prefix on which live and durable agree.
        let mut end = self.live.start.min(self.durable.start);
        if self.live.start != self.durable.start {
            return end;
        }
        end = self.live.start;
        for (a, b) in self.live.entries.iter().zip(&self.durable.entries) {
            if a != b {
                break;
            }
            end = a.end;
        }
        end
    }

    fn term_at(&self, offset: u64) -> Option<Term> {
        let s = &self.live;
        if offset + 1 == s.start {
            return Some(s.start_term);
        }
        if offset < s.start || offset >= self.end_offset() {
            return None;
        }
        // The term of the last batch starting at or before `offset` (gaps take the term of
        // the batch before them, as Kafka's epoch cache does).
        let i = s.entries.partition_point(|e| e.base <= offset);
        if i == 0 {
            Some(s.start_term)
        } else {
            Some(s.entries[i - 1].term)
        }
    }

    fn term_end(&self, term: Term) -> Option<(Term, u64)> {
        let s = &self.live;
        let i = s.entries.partition_point(|e| e.term <= term);
        if i == 0 {
            return (s.start_term <= term).then(|| {
                (
                    s.start_term,
                    s.entries.first().map_or(self.end_offset(), |e| e.base),
                )
            });
        }
        let t = s.entries[i - 1].term;
        let end = s.entries.get(i).map_or(self.end_offset(), |e| e.base);
        Some((t, end))
    }

    fn read(&self, from: u64, max_bytes: usize) -> Result<Bytes, StorageError> {
        let Some(i) = self.entry_index_holding(from) else {
            return Ok(Bytes::new());
        };
        let mut out = BytesMut::new();
        for e in &self.live.entries[i..] {
            if !out.is_empty() && out.len() + e.bytes.len() > max_bytes {
                break;
            }
            out.extend_from_slice(&e.bytes);
        }
        Ok(out.freeze())
    }

    fn append_leader(
        &mut self,
        mut batch: BytesMut,
        term: Term,
    ) -> Result<(u64, u64), StorageError> {
        let base = self.end_offset();
        fjord_log::batch::set_base_offset(&mut batch, base).expect("a whole batch");
        fjord_log::batch::set_partition_leader_epoch(&mut batch, term as i32)
            .expect("a whole batch");
        let header = BatchHeader::parse(&batch).map_err(|e| StorageError::new(e.to_string()))?;
        let end = header.last_offset() + 1;
        self.live.entries.push(Entry {
            base,
            end,
            term,
            bytes: batch.freeze(),
        });
        self.synced = false;
        Ok((base, end))
    }

    fn append_follower(&mut self, batch: &[u8]) -> Result<(), StorageError> {
        let header = BatchHeader::parse(batch).map_err(|e| StorageError::new(e.to_string()))?;
        assert!(
            header.base_offset >= self.end_offset(),
            "append below the end"
        );
        let term = header.partition_leader_epoch as Term;
        assert!(
            term >= self
                .term_at(self.end_offset().saturating_sub(1))
                .unwrap_or(0)
        );
        self.live.entries.push(Entry {
            base: header.base_offset,
            end: header.last_offset() + 1,
            term,
            bytes: Bytes::copy_from_slice(batch),
        });
        self.synced = false;
        Ok(())
    }

    fn truncate_from(&mut self, offset: u64) -> Result<u64, StorageError> {
        if let Some(i) = self.entry_index_holding(offset) {
            self.live.entries.truncate(i);
            self.synced = false;
        }
        Ok(self.end_offset())
    }

    fn install_snapshot(
        &mut self,
        start: u64,
        start_term: Term,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.live = State {
            start,
            start_term,
            entries: Vec::new(),
            snapshot: data,
        };
        self.synced = false;
        Ok(())
    }

    fn snapshot_data(&self) -> Bytes {
        self.live.snapshot.clone()
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.durable = self.live.clone();
        self.synced = true;
        Ok(())
    }
}

impl MemLog {
    /// Disk corruption cut the log: everything from the entry holding `offset` on is gone,
    /// durable or not.
    pub fn lose_from(&mut self, offset: u64) {
        for state in [&mut self.live, &mut self.durable] {
            let i = state.entries.partition_point(|e| e.end <= offset);
            state.entries.truncate(i);
        }
    }

    /// Deletes entries below `offset` (retention), keeping the term just below the new start.
    pub fn delete_prefix(&mut self, offset: u64) {
        let i = self.live.entries.partition_point(|e| e.end <= offset);
        if i == 0 {
            return;
        }
        let new_start = self.live.entries[i - 1].end;
        self.live.start_term = self.live.entries[i - 1].term;
        self.live.start = new_start;
        self.live.entries.drain(..i);
        self.synced = false;
    }
}
