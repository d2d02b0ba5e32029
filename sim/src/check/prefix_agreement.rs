//! Invariant: committed prefixes of all replicas agree (Raft's State Machine Safety).
//!
//! Replicas report the hash of their committed prefix of a partition up to an offset. Any two
//! reports for the same partition and offset — from different replicas, or from one replica
//! at different times (e.g. before and after a restart) — must carry the same hash: once
//! committed, a prefix never changes anywhere.

use std::collections::BTreeMap;

use crate::history::History;

pub fn check(h: &History) -> Vec<String> {
    let mut first = BTreeMap::new();
    let mut out = Vec::new();
    for obs in &h.prefixes {
        match first.get(&(obs.partition, obs.offset)) {
            Some((node, hash)) if *hash != obs.hash => out.push(format!(
                "committed prefix of partition {} up to offset {} differs: {node} reported \
                 {hash:#x}, {} reported {:#x} at {:?}",
                obs.partition, obs.offset, obs.node, obs.hash, obs.at
            )),
            Some(_) => {}
            None => {
                first.insert((obs.partition, obs.offset), (obs.node, obs.hash));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::history;

    #[test]
    fn agreeing_replicas_pass() {
        let h = history()
            .prefix(1, 0, 5, 0xaa)
            .prefix(2, 0, 5, 0xaa)
            .prefix(2, 0, 6, 0xbb)
            .prefix(3, 1, 5, 0xcc)
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn diverging_replicas_fail() {
        let h = history().prefix(1, 0, 5, 0xaa).prefix(3, 0, 5, 0xab).done();
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_replica_whose_committed_prefix_changed_fails() {
        let h = history().prefix(1, 0, 5, 0xaa).prefix(1, 0, 5, 0xbb).done();
        assert_eq!(check(&h).len(), 1);
    }
}
