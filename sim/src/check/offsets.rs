//! Invariant: an offset holds one value, forever, and a value sits at one offset.
//!
//! Every observation of a record — a write acknowledged at an offset, a record returned by a
//! read, a record of the final read — binds `(partition, offset)` to a value. Two
//! observations must never bind the same `(partition, offset)` to different values, nor the
//! same value to different positions. The final read of a partition must also be in strictly
//! increasing offset order. (Whether replicas' committed prefixes agree is
//! [`super::prefix_agreement`]'s business: they report hashes, not values.)

use std::collections::BTreeMap;

use std::fmt;

use crate::history::{History, Offset, OpId, Partition, ReaderId, Value};

/// Where an observation came from (formatted only when reporting a violation).
#[derive(Clone, Copy)]
enum Source {
    Ack(OpId),
    Read(OpId, ReaderId),
    Final,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ack(op) => write!(f, "the ack of {op:?}"),
            Source::Read(op, reader) => write!(f, "read {op:?} by {reader:?}"),
            Source::Final => write!(f, "the final read"),
        }
    }
}

#[derive(Default)]
struct Bindings {
    at: BTreeMap<(Partition, Offset), (Value, Source)>,
    of: BTreeMap<Value, ((Partition, Offset), Source)>,
    out: Vec<String>,
}

impl Bindings {
    fn bind(&mut self, partition: Partition, offset: Offset, value: Value, source: Source) {
        match self.at.get(&(partition, offset)) {
            Some((other, seen)) if *other != value => self.out.push(format!(
                "partition {partition} offset {offset} holds value {other} in {seen} but value \
                 {value} in {source}"
            )),
            Some(_) => {}
            None => {
                self.at.insert((partition, offset), (value, source));
            }
        }
        match self.of.get(&value) {
            Some((pos, seen)) if *pos != (partition, offset) => self.out.push(format!(
                "value {value} is at partition {} offset {} in {seen} but at partition \
                 {partition} offset {offset} in {source}",
                pos.0, pos.1
            )),
            Some(_) => {}
            None => {
                self.of.insert(value, ((partition, offset), source));
            }
        }
    }
}

pub fn check(h: &History) -> Vec<String> {
    let mut b = Bindings::default();
    for (op, partition, value, offset) in h.acked_writes() {
        b.bind(partition, offset, value, Source::Ack(op.id));
    }
    for (op, partition, reader, records) in h.ok_reads() {
        for (offset, value) in records {
            b.bind(partition, *offset, *value, Source::Read(op.id, reader));
        }
    }
    for (partition, records) in &h.final_reads {
        for (offset, value) in records {
            b.bind(*partition, *offset, *value, Source::Final);
        }
        for pair in records.windows(2) {
            if pair[1].0 <= pair[0].0 {
                b.out.push(format!(
                    "the final read of partition {partition} goes from offset {} to {}",
                    pair[0].0, pair[1].0
                ));
            }
        }
    }
    b.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn consistent_observations_pass() {
        let h = history()
            .write_ok(0, 1, 0)
            .write_ok(0, 2, 3)
            .read(0, 1, &[(0, 1)])
            .read(0, 2, &[(0, 1), (3, 2)])
            .final_read(0, &[(0, 1), (3, 2)])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn two_reads_disagreeing_on_an_offset_fail() {
        let h = history()
            .write_unknown(0, 1)
            .write_unknown(0, 2)
            .read(0, 1, &[(0, 1)])
            .read(0, 2, &[(0, 2)])
            .final_read(0, &[(0, 1), (1, 2)])
            .done();
        let found = check(&h);
        assert!(!found.is_empty());
        assert!(found[0].contains("offset 0 holds value 1"), "{found:?}");
    }

    #[test]
    fn an_ack_at_an_offset_the_final_read_gives_another_value_fails() {
        let h = history()
            .write_ok(0, 1, 5)
            .write_unknown(0, 2)
            .final_read(0, &[(5, 2), (6, 1)])
            .done();
        // Offset 5 is bound to values 1 and 2, and value 1 to offsets 5 and 6.
        assert_eq!(check(&h).len(), 2);
    }

    #[test]
    fn an_unordered_final_read_fails() {
        let h = history()
            .write_ok(0, 1, 1)
            .write_ok(0, 2, 0)
            .final_read(0, &[(1, 1), (0, 2)])
            .done();
        assert_eq!(check(&h).len(), 1);
    }
}
