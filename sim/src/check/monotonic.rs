//! Invariant: one reader session sees strictly increasing offsets.
//!
//! A reader session ([`crate::history::ReaderId`]) consumes one partition forward: within a
//! read and across its successive successful reads (in invocation order), offsets strictly
//! increase, and every record of a read is at or after the offset the read asked for. Going
//! back or repeating an offset means the system served a stale or rewritten log.

use std::collections::BTreeMap;

use crate::history::{History, OpKind, Outcome};

pub fn check(h: &History) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = BTreeMap::new();
    for op in &h.ops {
        let (
            OpKind::Read {
                partition,
                reader,
                from,
            },
            Outcome::Read { records },
        ) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        let key = (*reader, *partition);
        for (offset, _) in records {
            if offset < from {
                out.push(format!(
                    "{reader:?} asked partition {partition} for offsets from {from} but got \
                     offset {offset} ({:?})",
                    op.id
                ));
            }
            if let Some(prev) = last.get(&key) {
                if offset <= prev {
                    out.push(format!(
                        "{reader:?} saw partition {partition} offset {offset} after offset \
                         {prev} ({:?})",
                        op.id
                    ));
                }
            }
            last.insert(key, *offset);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn forward_reads_pass() {
        let h = history()
            .read(0, 1, &[(0, 10), (2, 12)])
            .read(0, 1, &[])
            .read(0, 1, &[(3, 13)])
            .read(0, 2, &[(0, 10)])
            .read(1, 1, &[(0, 20)])
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn going_back_across_reads_fails() {
        let h = history()
            .read(0, 1, &[(0, 10), (2, 12)])
            .read(0, 1, &[(1, 11)])
            .done();
        let found = check(&h);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("offset 1 after offset 2"), "{found:?}");
    }

    #[test]
    fn a_repeated_offset_within_a_read_fails() {
        let h = history().read(0, 1, &[(0, 10), (0, 10)]).done();
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn records_before_the_requested_offset_fail() {
        let mut b = history();
        b.read(0, 1, &[(5, 10)]);
        if let OpKind::Read { from, .. } = &mut b.h.ops[0].kind {
            *from = 6;
        }
        assert_eq!(check(&b.done()).len(), 1);
    }
}
