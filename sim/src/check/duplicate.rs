//! Invariant: every value is stored at most once.
//!
//! Clients write each value once (retries use new values), so a value may occupy at most one
//! record: in the final read of its partition, in any single read, and never in a partition it
//! was not written to. A duplicate means the system applied one write twice (e.g. a retried
//! replication message appended again).

use std::collections::BTreeMap;

use crate::history::{History, Offset, Partition, Value};

fn duplicates_in(records: &[(Offset, Value)]) -> Vec<(Value, Vec<Offset>)> {
    let mut at: BTreeMap<Value, Vec<Offset>> = BTreeMap::new();
    for (offset, value) in records {
        at.entry(*value).or_default().push(*offset);
    }
    at.into_iter()
        .filter(|(_, offsets)| offsets.len() > 1)
        .collect()
}

pub fn check(h: &History) -> Vec<String> {
    let mut out = Vec::new();
    for (partition, records) in &h.final_reads {
        for (value, offsets) in duplicates_in(records) {
            out.push(format!(
                "value {value} appears {} times in the final read of partition {partition}, \
                 at offsets {offsets:?}",
                offsets.len()
            ));
        }
    }
    for (op, partition, reader, records) in h.ok_reads() {
        for (value, offsets) in duplicates_in(records) {
            out.push(format!(
                "value {value} appears {} times in one read by {reader:?} ({:?}) of partition \
                 {partition}, at offsets {offsets:?}",
                offsets.len(),
                op.id
            ));
        }
    }
    let written = h.writes_by_value();
    let mut misplaced = |partition: Partition, value: Value, what: &str| {
        if let Some((target, _)) = written.get(&value) {
            if *target != partition {
                out.push(format!(
                    "value {value} written to partition {target} appears in {what} of \
                     partition {partition}"
                ));
            }
        }
    };
    for (partition, records) in &h.final_reads {
        for (_, value) in records {
            misplaced(*partition, *value, "the final read");
        }
    }
    for (_, partition, _, records) in h.ok_reads() {
        for (_, value) in records {
            misplaced(partition, *value, "a read");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn distinct_values_pass() {
        let h = history()
            .write_ok(0, 1, 0)
            .write_ok(1, 2, 0)
            .read(0, 1, &[(0, 1)])
            .final_read(0, &[(0, 1)])
            .final_read(1, &[(0, 2)])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_value_twice_in_the_final_read_fails() {
        let h = history()
            .write_ok(0, 1, 0)
            .final_read(0, &[(0, 1), (1, 1)])
            .done();
        let found = check(&h);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("[0, 1]"), "{found:?}");
    }

    #[test]
    fn a_value_twice_in_one_read_fails() {
        let h = history()
            .write_unknown(0, 1)
            .read(0, 1, &[(4, 1), (5, 1)])
            .final_read(0, &[(4, 1)])
            .done();
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_value_in_the_wrong_partition_fails() {
        let h = history()
            .write_unknown(0, 1)
            .final_read(0, &[])
            .final_read(1, &[(0, 1)])
            .done();
        assert_eq!(check(&h).len(), 1);
    }
}
