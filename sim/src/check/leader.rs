//! Invariant: at most one leader per term (Raft's Election Safety).
//!
//! For every group and term, all leadership observations name the same node. Two nodes both
//! believing they lead the same term could both commit different entries at one index.

use std::collections::BTreeMap;

use crate::history::History;

pub fn check(h: &History) -> Vec<String> {
    let mut leader = BTreeMap::new();
    let mut out = Vec::new();
    for obs in &h.leaders {
        match leader.get(&(obs.group, obs.term)) {
            Some(first) if *first != obs.node => out.push(format!(
                "group {} term {} has two leaders: {first} and {} (at {:?})",
                obs.group, obs.term, obs.node, obs.at
            )),
            Some(_) => {}
            None => {
                leader.insert((obs.group, obs.term), obs.node);
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
    fn one_leader_per_term_passes() {
        let h = history()
            .leader(1, 0, 1)
            .leader(1, 0, 1)
            .leader(2, 0, 2)
            .leader(2, 1, 1)
            .done();
        assert!(check(&h).is_empty());
    }

    #[test]
    fn two_leaders_in_one_term_fail() {
        let h = history().leader(1, 0, 3).leader(2, 0, 3).done();
        let found = check(&h);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("n1 and n2"), "{found:?}");
    }
}
