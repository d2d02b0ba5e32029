//! Safety checks over a recorded [`History`], one invariant per file.
//!
//! Each check is a plain function `fn(&History) -> Vec<String>` returning one message per
//! violation (empty = holds). To add one: write `check/<name>.rs` with a `check` function, a
//! doc comment stating the invariant precisely, and tests with hand-built histories that must
//! pass and ones that must fail; then list it in [`ALL`].
//!
//! Conventions shared by all checks: indeterminate and pending operations may or may not have
//! taken effect, so no check treats them as lost or as failed; the final reads are the truth
//! about what the system kept.

use crate::history::History;

pub mod committed_offsets;
pub mod duplicate;
pub mod failed_write;
pub mod leader;
pub mod lost_write;
pub mod monotonic;
pub mod offsets;
pub mod prefix_agreement;
pub mod uncommitted;

/// A check: one message per violation.
pub type CheckFn = fn(&History) -> Vec<String>;

/// Every check, by name.
pub const ALL: &[(&str, CheckFn)] = &[
    ("lost-write", lost_write::check),
    ("failed-write-visible", failed_write::check),
    ("duplicate", duplicate::check),
    ("inconsistent-offsets", offsets::check),
    ("non-monotonic-read", monotonic::check),
    ("uncommitted-read", uncommitted::check),
    ("two-leaders-in-term", leader::check),
    ("prefix-disagreement", prefix_agreement::check),
    ("committed-offset-regression", committed_offsets::check),
];

/// At most this many messages per check are kept in a report; the rest are counted.
pub const MESSAGES_PER_CHECK_MAX: usize = 5;

/// One violated invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The check's name in [`ALL`].
    pub check: &'static str,
    /// The first [`MESSAGES_PER_CHECK_MAX`] messages.
    pub messages: Vec<String>,
    /// How many violations the check found in total.
    pub count: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} violations)", self.check, self.count)?;
        for m in &self.messages {
            write!(f, "\n    {m}")?;
        }
        if self.count > self.messages.len() {
            write!(f, "\n    ... and {} more", self.count - self.messages.len())?;
        }
        Ok(())
    }
}

/// Runs `checks` over `history`; one [`Violation`] per check that failed.
pub fn run(history: &History, checks: &[(&'static str, CheckFn)]) -> Vec<Violation> {
    checks
        .iter()
        .filter_map(|(name, check)| {
            let mut messages = check(history);
            let count = messages.len();
            messages.truncate(MESSAGES_PER_CHECK_MAX);
            (count > 0).then_some(Violation {
                check: name,
                messages,
                count,
            })
        })
        .collect()
}

/// Runs every check in [`ALL`].
pub fn run_all(history: &History) -> Vec<Violation> {
    run(history, ALL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn a_clean_history_passes_every_check() {
        let h = history()
            .write_ok(0, 10, 0)
            .write_unknown(0, 11)
            .write_ok(0, 12, 2)
            .write_failed(0, 13)
            .read(0, 1, &[(0, 10), (2, 12)])
            .final_read(0, &[(0, 10), (1, 11), (2, 12)])
            .leader(1, 0, 1)
            .prefix(1, 0, 2, 99)
            .prefix(2, 0, 2, 99)
            .done();
        assert_eq!(run_all(&h), vec![]);
    }

    #[test]
    fn violations_are_capped_and_counted() {
        let mut b = history();
        for v in 0..8 {
            b.write_ok(0, v, v);
        }
        let h = b.final_read(0, &[]).done();
        let found = run_all(&h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].check, "lost-write");
        assert_eq!(found[0].count, 8);
        assert_eq!(found[0].messages.len(), MESSAGES_PER_CHECK_MAX);
        assert!(found[0].to_string().contains("and 3 more"));
    }
}
