//! Deliberate bugs the system under test can switch on at run time (`--inject-bug NAME`).
//!
//! The simulator's worth is measured by the bugs it catches: each injected bug must make some
//! seed fail within a bounded sweep. The harness only carries the names; the workload lists
//! the names its system understands ([`crate::workload::Workload::bugs`], under `--cfg
//! madsim`) and hands the [`Bugs`] value to its nodes, whose code tests `bugs.is_on(NAME)`
//! at the place the bug lives.

use std::collections::BTreeSet;
use std::fmt;

/// A set of switched-on bug names. Empty in every normal run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bugs(BTreeSet<String>);

impl Bugs {
    /// No bug switched on.
    pub fn none() -> Self {
        Bugs::default()
    }

    /// These bugs switched on.
    pub fn of<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Bugs(names.into_iter().map(Into::into).collect())
    }

    /// Whether bug `name` is switched on.
    pub fn is_on(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    /// The switched-on names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Bugs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.names().collect();
        write!(f, "{}", names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bugs_are_off_unless_named() {
        assert!(!Bugs::none().is_on("ack-before-fsync"));
        let bugs = Bugs::of(["ack-before-fsync", "vote-not-persisted"]);
        assert!(bugs.is_on("ack-before-fsync"));
        assert!(!bugs.is_on("ack-before-quorum"));
        assert_eq!(bugs.to_string(), "ack-before-fsync,vote-not-persisted");
    }
}
