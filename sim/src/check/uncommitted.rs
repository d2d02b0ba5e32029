//! Invariant: readers only ever see committed data.
//!
//! Precisely: a record `(offset, value)` returned by a successful read of partition `p` is
//! *uncommitted data exposed* if `value` is absent from the final read of `p` and the write of
//! `value` was not acknowledged, or if no client ever wrote `value`. A committed record is
//! never lost, so it is in the final read; a record that a reader saw and the system later
//! dropped was served before it was committed (e.g. a leader serving past its high
//! watermark). When the write *was* acknowledged, the loss is reported by
//! [`super::lost_write`] instead, so that one fault yields one report. A partition without a
//! final read gives no evidence either way.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{History, Outcome};

pub fn check(h: &History) -> Vec<String> {
    let writes = h.writes_by_value();
    let finals: BTreeMap<_, BTreeSet<_>> = h
        .final_reads
        .iter()
        .map(|(p, records)| (*p, records.iter().map(|r| r.1).collect()))
        .collect();
    let mut out = Vec::new();
    for (op, partition, reader, records) in h.ok_reads() {
        let Some(final_values) = finals.get(&partition) else {
            continue;
        };
        for (offset, value) in records {
            let what = match writes.get(value) {
                None => "a value no client wrote",
                Some((_, write)) if matches!(write.outcome, Outcome::Written { .. }) => continue,
                Some(_) if final_values.contains(value) => continue,
                Some(_) => "a value that is absent from the final read and was never acked",
            };
            out.push(format!(
                "{reader:?} read {what}: value {value} at partition {partition} offset {offset} \
                 ({:?})",
                op.id
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
    fn reads_of_surviving_values_pass() {
        let h = history()
            .write_unknown(0, 1)
            .write_ok(0, 2, 1)
            .read(0, 1, &[(0, 1), (1, 2)])
            .final_read(0, &[(0, 1), (1, 2)])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_read_value_that_later_vanished_fails() {
        let h = history()
            .write_unknown(0, 1)
            .read(0, 1, &[(0, 1)])
            .final_read(0, &[])
            .done();
        let found = check(&h);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("never acked"), "{found:?}");
    }

    #[test]
    fn an_acked_value_that_vanished_is_left_to_lost_write() {
        let h = history()
            .write_ok(0, 1, 0)
            .read(0, 1, &[(0, 1)])
            .final_read(0, &[])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_value_nobody_wrote_fails() {
        let h = history()
            .read(0, 1, &[(0, 99)])
            .final_read(0, &[(0, 99)])
            .done();
        assert_eq!(check(&h).len(), 1);
    }
}
