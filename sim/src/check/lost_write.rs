//! Invariant: every acknowledged write survives.
//!
//! A write whose outcome is `Written` (acked, acks=all) must appear in the final read of its
//! partition. Where it appears is [`super::offsets`]'s business; that it appears at all is
//! this check's. A partition with an acknowledged write but no final read is a violation too
//! (the workload could not prove the write survived).

use std::collections::{BTreeMap, BTreeSet};

use crate::history::History;

pub fn check(h: &History) -> Vec<String> {
    let finals: BTreeMap<_, BTreeSet<_>> = h
        .final_reads
        .iter()
        .map(|(p, records)| (*p, records.iter().map(|r| r.1).collect()))
        .collect();
    let mut out = Vec::new();
    for (op, partition, value, offset) in h.acked_writes() {
        match finals.get(&partition) {
            None => out.push(format!(
                "write {:?} of value {value} to partition {partition} was acked at offset \
                 {offset} but the partition has no final read",
                op.id
            )),
            Some(values) if !values.contains(&value) => out.push(format!(
                "lost write: value {value} acked at partition {partition} offset {offset} \
                 ({:?} by {}, acked at {:?}) is absent from the final read",
                op.id,
                op.client,
                op.completed_at.unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn acked_writes_present_pass() {
        let h = history()
            .write_ok(0, 1, 0)
            .write_ok(1, 2, 0)
            .final_read(0, &[(0, 1)])
            .final_read(1, &[(0, 2)])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn indeterminate_and_failed_writes_may_be_absent() {
        let h = history()
            .write_unknown(0, 1)
            .write_failed(0, 2)
            .final_read(0, &[])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn an_acked_write_missing_from_the_final_read_fails() {
        let h = history()
            .write_ok(0, 1, 0)
            .write_ok(0, 2, 1)
            .final_read(0, &[(0, 1)])
            .done();
        let found = check(&h);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("value 2"), "{found:?}");
    }

    #[test]
    fn an_acked_write_to_a_partition_without_final_read_fails() {
        let h = history().write_ok(3, 1, 0).done();
        assert_eq!(check(&h).len(), 1);
    }
}
