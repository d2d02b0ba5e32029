//! Invariant: a write reported as failed never becomes visible.
//!
//! `Failed` means the system told the client the write did not (and will not) take effect;
//! clients may then report the error to a user who retries. Its value must therefore appear
//! neither in any read nor in a final read. (Timeouts are `Indeterminate`, not `Failed`.)

use std::collections::BTreeSet;

use crate::history::{History, OpKind, Outcome};

pub fn check(h: &History) -> Vec<String> {
    let failed: BTreeSet<_> = h
        .ops
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::Write { value, .. }, Outcome::Failed { .. }) => Some(*value),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (op, partition, reader, records) in h.ok_reads() {
        for (offset, value) in records.iter().filter(|r| failed.contains(&r.1)) {
            out.push(format!(
                "value {value} of a failed write was read by {reader:?} ({:?}) at partition \
                 {partition} offset {offset}",
                op.id
            ));
        }
    }
    for (partition, records) in &h.final_reads {
        for (offset, value) in records.iter().filter(|r| failed.contains(&r.1)) {
            out.push(format!(
                "value {value} of a failed write is in the final read of partition \
                 {partition} at offset {offset}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn failed_writes_that_stay_invisible_pass() {
        let h = history()
            .write_failed(0, 1)
            .write_ok(0, 2, 0)
            .read(0, 1, &[(0, 2)])
            .final_read(0, &[(0, 2)])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_failed_write_in_the_final_read_fails() {
        let h = history().write_failed(0, 1).final_read(0, &[(0, 1)]).done();
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_failed_write_seen_by_a_reader_fails() {
        let h = history()
            .write_failed(0, 1)
            .read(0, 7, &[(0, 1)])
            .final_read(0, &[])
            .done();
        assert_eq!(check(&h).len(), 1);
    }
}
