//! Invariant: a consumer group's committed offsets never go backwards.
//!
//! The committed offset of `(group, partition)` is a register written by offset commits and
//! read by offset fetches. It may only hold what some commit wrote, and an acknowledged
//! commit is never undone except by a later write. Precisely, for every read `r` of the
//! register returning `v` (or nothing):
//!
//! * if a commit `c1` of offset `o1` was acknowledged before `r` was invoked and `v` is not
//!   `o1`, some commit `c2` of offset `v` (acknowledged, indeterminate or pending — not
//!   failed) must have been able to take effect after `c1`: `c2` was invoked before `r`
//!   completed and did not complete before `c1` was invoked. Otherwise the group went back
//!   from `o1` to an offset that `c1` had already overwritten — or to nothing at all: the
//!   coordinator lost or rolled back an acknowledged commit.
//! * `v`, when present, was written by some commit that did not fail.
//!
//! Commits of lower offsets are legitimate (a member that was fenced late, a consumer that
//! was assigned a partition from an older committed offset), which is why the invariant is
//! stated on what reads return, not on the sequence of commits.

use std::collections::BTreeMap;

use crate::history::{CommitOp, CommitOutcome, History, Offset, Partition};

pub fn check(h: &History) -> Vec<String> {
    let mut commits: BTreeMap<(&str, Partition), Vec<&CommitOp>> = BTreeMap::new();
    for c in &h.commits {
        commits
            .entry((c.group.as_str(), c.partition))
            .or_default()
            .push(c);
    }
    let mut out = Vec::new();
    for r in &h.committed_reads {
        let cs = commits
            .get(&(r.group.as_str(), r.partition))
            .map_or(&[][..], Vec::as_slice);
        let writers_of = |v: Offset| {
            cs.iter()
                .filter(move |c| c.offset == v && c.outcome != CommitOutcome::Failed)
                .filter(|c| c.invoked_at < r.completed_at)
        };
        if let Some(v) = r.offset {
            if writers_of(v).next().is_none() {
                out.push(format!(
                    "group {} partition {}: committed offset read as {v} by {} at {:?}, which no \
                     commit wrote",
                    r.group, r.partition, r.client, r.completed_at
                ));
                continue;
            }
        }
        // The acknowledged commit the read must not have gone back from, if any.
        let overwritten = cs
            .iter()
            .filter(|c1| c1.outcome == CommitOutcome::Acked)
            .filter(|c1| c1.completed_at.is_some_and(|done| done < r.invoked_at))
            .filter(|c1| Some(c1.offset) != r.offset)
            .filter(|c1| match r.offset {
                None => true,
                Some(v) => !writers_of(v).any(|c2| {
                    c2.completed_at
                        .is_none_or(|c2_done| c2_done > c1.invoked_at)
                }),
            })
            .max_by_key(|c1| c1.completed_at);
        if let Some(c1) = overwritten {
            let read = r.offset.map_or_else(
                || "nothing committed".to_string(),
                |v| format!("offset {v}"),
            );
            out.push(format!(
                "group {} partition {} went backwards: offset {} was acked to {} at {:?}, but {} \
                 read {read} at {:?} with no later commit of it",
                r.group,
                r.partition,
                c1.offset,
                c1.client,
                c1.completed_at.unwrap_or_default(),
                r.client,
                r.invoked_at
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;
    use CommitOutcome::*;

    #[test]
    fn reads_of_the_latest_commit_pass() {
        let h = history()
            .committed_read(0, None, 0, 5)
            .commit(0, 10, Acked, 10, Some(20))
            .committed_read(0, Some(10), 30, 35)
            .commit(0, 15, Acked, 40, Some(50))
            .committed_read(0, Some(15), 60, 65)
            .committed_read(1, None, 60, 65)
            .done();
        assert_eq!(check(&h), Vec::<String>::new());
    }

    #[test]
    fn a_concurrent_or_indeterminate_lower_commit_may_win() {
        let h = history()
            // A zombie member's commit of 5, overlapping the acked commit of 10.
            .commit(0, 5, Indeterminate, 10, None)
            .commit(0, 10, Acked, 12, Some(20))
            .committed_read(0, Some(5), 30, 35)
            // A later lower commit, acknowledged: the register legitimately holds 3.
            .commit(0, 3, Acked, 40, Some(45))
            .committed_read(0, Some(3), 50, 55)
            // A read concurrent with a commit may see either value.
            .commit(0, 20, Acked, 60, Some(80))
            .committed_read(0, Some(3), 65, 70)
            .done();
        assert_eq!(check(&h), Vec::<String>::new());
    }

    #[test]
    fn going_back_to_an_overwritten_offset_fails() {
        let h = history()
            .commit(0, 5, Acked, 0, Some(5))
            .commit(0, 10, Acked, 10, Some(20))
            .committed_read(0, Some(5), 30, 35)
            .done();
        let found = check(&h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("went backwards: offset 10"), "{found:?}");
    }

    #[test]
    fn losing_an_acked_commit_fails() {
        let h = history()
            .commit(0, 10, Acked, 10, Some(20))
            .committed_read(0, None, 30, 35)
            .done();
        let found = check(&h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("read nothing committed"), "{found:?}");
    }

    #[test]
    fn an_offset_nobody_committed_fails() {
        let h = history()
            .commit(0, 10, Failed, 10, Some(20))
            .committed_read(0, Some(10), 30, 35)
            .committed_read(0, Some(11), 30, 35)
            .done();
        assert_eq!(check(&h).len(), 2);
    }
}
