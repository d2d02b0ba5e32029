//! Client-side partition assignors, run by the group leader: `range` and `roundrobin` as
//! the Java client computes them (so mixed groups agree), and `cooperative-sticky`
//! (KIP-429): balanced, keeps partitions where they are, and never hands a partition to a
//! new owner in the same rebalance its old owner still holds it — the old owner revokes it
//! first, then a second rebalance gives it away.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Buf;

use super::protocol::Subscription;
use crate::client::metadata::TopicPartition;

/// The assignors fjord implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AssignorKind {
    Range,
    RoundRobin,
    CooperativeSticky,
}

impl AssignorKind {
    /// The protocol name in JoinGroup (shared with the Java client and librdkafka).
    pub fn name(self) -> &'static str {
        match self {
            AssignorKind::Range => "range",
            AssignorKind::RoundRobin => "roundrobin",
            AssignorKind::CooperativeSticky => "cooperative-sticky",
        }
    }

    pub fn from_name(name: &str) -> Option<AssignorKind> {
        [
            AssignorKind::Range,
            AssignorKind::RoundRobin,
            AssignorKind::CooperativeSticky,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether the assignor supports the incremental (cooperative) rebalance protocol.
    pub fn is_cooperative(self) -> bool {
        self == AssignorKind::CooperativeSticky
    }
}

/// A group member as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub subscription: Subscription,
}

/// Java's `MemberInfo` order: static members (by instance id) first, then by member id.
fn sorted(members: &[Member]) -> Vec<&Member> {
    let mut out: Vec<&Member> = members.iter().collect();
    out.sort_by(|a, b| {
        let key = |m: &&Member| {
            (
                m.group_instance_id.is_none(),
                m.group_instance_id.clone(),
                m.member_id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// Assigns the partitions of `partitions_per_topic` (topic → partition count) to
/// `members`. Every member gets an entry (maybe empty); topics nobody subscribes to or that
/// do not exist are ignored.
pub fn assign(
    kind: AssignorKind,
    members: &[Member],
    partitions_per_topic: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> = members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect();
    match kind {
        AssignorKind::Range => range(members, partitions_per_topic, &mut out),
        AssignorKind::RoundRobin => round_robin(members, partitions_per_topic, &mut out),
        AssignorKind::CooperativeSticky => {
            for (member, set) in cooperative_sticky(members, partitions_per_topic) {
                out.insert(member, set.into_iter().collect());
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn subscribes(m: &Member, topic: &str) -> bool {
    m.subscription.topics.iter().any(|t| t == topic)
}

/// Java's `RangeAssignor`: per topic, consecutive ranges to the members subscribed to it in
/// member order, the first `partitions % members` getting one more.
fn range(
    members: &[Member],
    partitions_per_topic: &BTreeMap<String, i32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let members = sorted(members);
    for (topic, &count) in partitions_per_topic {
        let consumers: Vec<&&Member> = members.iter().filter(|m| subscribes(m, topic)).collect();
        if consumers.is_empty() || count <= 0 {
            continue;
        }
        let n = consumers.len() as i32;
        let (per, extra) = (count / n, count % n);
        for (i, m) in consumers.iter().enumerate() {
            let i = i as i32;
            let start = per * i + i.min(extra);
            let len = per + i32::from(i < extra);
            let Some(list) = out.get_mut(&m.member_id) else {
                continue;
            };
            list.extend((start..start + len).map(|p| TopicPartition::new(topic.clone(), p)));
        }
    }
}

/// Java's `RoundRobinAssignor`: all partitions sorted by topic and index dealt out in member
/// order, skipping members not subscribed to the partition's topic.
fn round_robin(
    members: &[Member],
    partitions_per_topic: &BTreeMap<String, i32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let members = sorted(members);
    if members.is_empty() {
        return;
    }
    let mut next = 0usize;
    for tp in all_partitions(members.iter().copied(), partitions_per_topic) {
        let Some(offset) =
            (0..members.len()).find(|k| subscribes(members[(next + k) % members.len()], &tp.topic))
        else {
            continue;
        };
        let m = members[(next + offset) % members.len()];
        next = (next + offset + 1) % members.len();
        if let Some(list) = out.get_mut(&m.member_id) {
            list.push(tp);
        }
    }
}

/// Every existing partition of a topic some member subscribes to, sorted.
fn all_partitions<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    partitions_per_topic: &BTreeMap<String, i32>,
) -> BTreeSet<TopicPartition> {
    let topics: BTreeSet<&str> = members
        .into_iter()
        .flat_map(|m| m.subscription.topics.iter().map(String::as_str))
        .collect();
    topics
        .into_iter()
        .filter_map(|t| partitions_per_topic.get_key_value(t))
        .flat_map(|(t, &n)| (0..n.max(0)).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect()
}

/// The partitions a member owns and the generation it owned them in, from its
/// subscription: the v1+ fields, or else its user data (Java's cooperative-sticky puts the
/// generation there as an int32; the older sticky format holds owned partitions and the
/// generation).
fn ownership(s: &Subscription) -> (Vec<TopicPartition>, i32) {
    let from_user_data = s
        .user_data
        .as_ref()
        .and_then(|u| decode_sticky_user_data(u));
    let owned = if !s.owned_partitions.is_empty() {
        s.owned_partitions.clone()
    } else {
        from_user_data
            .as_ref()
            .map(|(owned, _)| owned.clone())
            .unwrap_or_default()
    };
    let generation = if s.generation_id >= 0 {
        s.generation_id
    } else {
        match (&s.user_data, &from_user_data) {
            (Some(u), _) if u.len() == 4 => i32::from_be_bytes([u[0], u[1], u[2], u[3]]),
            (_, Some((_, generation))) => *generation,
            _ => -1,
        }
    };
    (owned, generation)
}

/// `StickyAssignorUserData` v0/v1: `[topic: string, partitions: [int32]]` and, in v1, a
/// trailing `generation: int32`. `None` unless the bytes are exactly that.
fn decode_sticky_user_data(bytes: &[u8]) -> Option<(Vec<TopicPartition>, i32)> {
    let mut buf = bytes;
    let topics = buf.try_get_i32().ok()?;
    if topics < 0 || topics as usize > buf.remaining() {
        return None;
    }
    let mut owned = Vec::new();
    for _ in 0..topics {
        let len = usize::try_from(buf.try_get_i16().ok()?).ok()?;
        if buf.remaining() < len {
            return None;
        }
        let topic = std::str::from_utf8(&buf[..len]).ok()?.to_string();
        buf.advance(len);
        let count = buf.try_get_i32().ok()?;
        if count < 0 || count as usize * 4 > buf.remaining() {
            return None;
        }
        for _ in 0..count {
            owned.push(TopicPartition::new(topic.clone(), buf.try_get_i32().ok()?));
        }
    }
    let generation = match buf.remaining() {
        0 => -1,
        4 => buf.get_i32(),
        _ => return None,
    };
    Some((owned, generation))
}

/// Balanced, sticky assignment with cooperative hand-over.
fn cooperative_sticky(
    members: &[Member],
    partitions_per_topic: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let members = sorted(members);
    let all = all_partitions(members.iter().copied(), partitions_per_topic);
    let topics: Vec<BTreeSet<&str>> = members
        .iter()
        .map(|m| m.subscription.topics.iter().map(String::as_str).collect())
        .collect();
    let eligible = |i: usize, tp: &TopicPartition| topics[i].contains(tp.topic.as_str());

    // The previous owner of each partition: the claimant of the highest generation; two
    // claims of the same generation cancel out (the partition is treated as unowned).
    let mut claims: BTreeMap<TopicPartition, Vec<(i32, usize)>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        let (owned, generation) = ownership(&m.subscription);
        for tp in owned {
            if all.contains(&tp) && eligible(i, &tp) {
                claims.entry(tp).or_default().push((generation, i));
            }
        }
    }
    let mut owner: BTreeMap<TopicPartition, usize> = BTreeMap::new();
    for (tp, mut cs) in claims {
        cs.sort();
        cs.dedup_by_key(|c| c.1);
        let Some(&(best, i)) = cs.last() else {
            continue;
        };
        if cs.iter().filter(|c| c.0 == best).count() == 1 {
            owner.insert(tp, i);
        }
    }
    let mut assignment: Vec<BTreeSet<TopicPartition>> = vec![BTreeSet::new(); members.len()];
    for (tp, &i) in &owner {
        assignment[i].insert(tp.clone());
    }

    // Same subscriptions everywhere: trim to the quotas (⌈P/M⌉ for P mod M members, ⌊P/M⌋
    // for the rest), letting the members that hold most keep the larger quota.
    let homogeneous = topics.windows(2).all(|w| w[0] == w[1]);
    if homogeneous && !members.is_empty() {
        let (min_quota, mut max_slots) = (all.len() / members.len(), all.len() % members.len());
        let max_quota = min_quota + usize::from(max_slots > 0);
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(assignment[i].len()), i));
        for i in order {
            let allowed = if assignment[i].len() >= max_quota && max_slots > 0 {
                max_slots -= 1;
                max_quota
            } else {
                min_quota
            };
            while assignment[i].len() > allowed {
                assignment[i].pop_last();
            }
        }
    }

    // Unassigned partitions go to the least loaded eligible member.
    let assigned: BTreeSet<TopicPartition> = assignment.iter().flatten().cloned().collect();
    for tp in all.difference(&assigned) {
        let target = (0..members.len())
            .filter(|&i| eligible(i, tp))
            .min_by_key(|&i| (assignment[i].len(), i));
        if let Some(i) = target {
            assignment[i].insert(tp.clone());
        }
    }

    // Different subscriptions: move partitions from heavier to lighter eligible members
    // until no move narrows a gap of two or more.
    if !homogeneous {
        let moves_max = all.len() * members.len().max(1);
        for _ in 0..moves_max {
            let mut by_load: Vec<usize> = (0..members.len()).collect();
            by_load.sort_by_key(|&i| (std::cmp::Reverse(assignment[i].len()), i));
            let found = by_load.iter().find_map(|&from| {
                by_load.iter().rev().find_map(|&to| {
                    if assignment[to].len() + 1 >= assignment[from].len() {
                        return None;
                    }
                    assignment[from]
                        .iter()
                        .rev()
                        .find(|tp| eligible(to, tp))
                        .map(|tp| (from, to, tp.clone()))
                })
            });
            let Some((from, to, tp)) = found else {
                break;
            };
            assignment[from].remove(&tp);
            assignment[to].insert(tp);
        }
    }

    // Cooperative: a partition changing owner is left unassigned this round; its owner
    // revokes it, and the follow-up rebalance assigns it.
    for (i, set) in assignment.iter_mut().enumerate() {
        set.retain(|tp| owner.get(tp).is_none_or(|&o| o == i));
    }
    members
        .iter()
        .zip(assignment)
        .map(|(m, set)| (m.member_id.clone(), set))
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member {
            member_id: id.to_string(),
            group_instance_id: None,
            subscription: Subscription {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                ..Subscription::default()
            },
        }
    }

    fn owning(mut m: Member, owned: &[TopicPartition], generation: i32) -> Member {
        m.subscription.owned_partitions = owned.to_vec();
        m.subscription.generation_id = generation;
        m
    }

    fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    fn counts(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_matches_the_java_example() {
        // RangeAssignor javadoc: C0 gets t0p0 t0p1 t1p0 t1p1, C1 gets t0p2 t1p2.
        let members = [member("C1", &["t0", "t1"]), member("C0", &["t0", "t1"])];
        let a = assign(
            AssignorKind::Range,
            &members,
            &counts(&[("t0", 3), ("t1", 3)]),
        );
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn roundrobin_matches_the_java_example() {
        // RoundRobinAssignor javadoc: C0 gets t0p0 t0p2 t1p1, C1 gets t0p1 t1p0 t1p2.
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let a = assign(
            AssignorKind::RoundRobin,
            &members,
            &counts(&[("t0", 3), ("t1", 3)]),
        );
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 1), ("t1", 0), ("t1", 2)]));
        // Unequal subscriptions (javadoc): C0 t0; C1 t0,t1; C2 t0,t1,t2 with 1, 2, 3
        // partitions: C0 [t0p0], C1 [t1p0], C2 [t1p1, t2p0, t2p1, t2p2].
        let members = [
            member("C0", &["t0"]),
            member("C1", &["t0", "t1"]),
            member("C2", &["t0", "t1", "t2"]),
        ];
        let a = assign(
            AssignorKind::RoundRobin,
            &members,
            &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]),
        );
        assert_eq!(a["C0"], tps(&[("t0", 0)]));
        assert_eq!(a["C1"], tps(&[("t1", 0)]));
        assert_eq!(a["C2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
    }

    fn sizes(a: &BTreeMap<String, Vec<TopicPartition>>) -> Vec<usize> {
        a.values().map(Vec::len).collect()
    }

    fn assert_exact_cover(a: &BTreeMap<String, Vec<TopicPartition>>, total: usize) {
        let all: BTreeSet<&TopicPartition> = a.values().flatten().collect();
        assert_eq!(
            all.len(),
            a.values().map(Vec::len).sum::<usize>(),
            "no partition twice"
        );
        assert_eq!(all.len(), total, "every partition assigned");
    }

    #[test]
    fn sticky_from_scratch_is_balanced() {
        let members: Vec<Member> = ["a", "b", "c"]
            .iter()
            .map(|id| member(id, &["t", "u"]))
            .collect();
        let a = assign(
            AssignorKind::CooperativeSticky,
            &members,
            &counts(&[("t", 7), ("u", 3)]),
        );
        assert_exact_cover(&a, 10);
        let mut s = sizes(&a);
        s.sort();
        assert_eq!(s, [3, 3, 4]);
    }

    #[test]
    fn sticky_keeps_a_stable_group_unchanged() {
        let topics = counts(&[("t", 6)]);
        let first = assign(
            AssignorKind::CooperativeSticky,
            &[member("a", &["t"]), member("b", &["t"])],
            &topics,
        );
        let again = assign(
            AssignorKind::CooperativeSticky,
            &[
                owning(member("a", &["t"]), &first["a"], 1),
                owning(member("b", &["t"]), &first["b"], 1),
            ],
            &topics,
        );
        assert_eq!(again, first);
    }

    #[test]
    fn cooperative_join_revokes_only_what_moves_then_hands_it_over() {
        let topics = counts(&[("t", 6)]);
        let a_owned = tps(&[("t", 0), ("t", 1), ("t", 2)]);
        let b_owned = tps(&[("t", 3), ("t", 4), ("t", 5)]);
        // c joins a group where a and b own three partitions each.
        let round1 = assign(
            AssignorKind::CooperativeSticky,
            &[
                owning(member("a", &["t"]), &a_owned, 3),
                owning(member("b", &["t"]), &b_owned, 3),
                member("c", &["t"]),
            ],
            &topics,
        );
        // Each old member keeps two of its own (revoking one); c gets nothing yet.
        assert_eq!(round1["a"].len(), 2);
        assert_eq!(round1["b"].len(), 2);
        assert!(round1["a"].iter().all(|tp| a_owned.contains(tp)));
        assert!(round1["b"].iter().all(|tp| b_owned.contains(tp)));
        assert!(round1["c"].is_empty(), "nothing moves in the first round");
        // Second round: a and b own only what they kept.
        let round2 = assign(
            AssignorKind::CooperativeSticky,
            &[
                owning(member("a", &["t"]), &round1["a"], 4),
                owning(member("b", &["t"]), &round1["b"], 4),
                member("c", &["t"]),
            ],
            &topics,
        );
        assert_eq!(round2["a"], round1["a"], "sticky");
        assert_eq!(round2["b"], round1["b"], "sticky");
        assert_eq!(round2["c"].len(), 2);
        assert_exact_cover(&round2, 6);
    }

    #[test]
    fn a_leaving_member_partitions_are_spread_without_revoking_others() {
        let topics = counts(&[("t", 6)]);
        let a = assign(
            AssignorKind::CooperativeSticky,
            &[
                owning(member("a", &["t"]), &tps(&[("t", 0), ("t", 1)]), 2),
                owning(member("b", &["t"]), &tps(&[("t", 2), ("t", 3)]), 2),
            ],
            &topics,
        );
        assert_exact_cover(&a, 6);
        assert!(a["a"].starts_with(&tps(&[("t", 0), ("t", 1)])));
        assert!(a["b"].starts_with(&tps(&[("t", 2), ("t", 3)])));
        assert_eq!(sizes(&a), [3, 3]);
    }

    #[test]
    fn sticky_respects_different_subscriptions_and_balances() {
        let members = [
            member("a", &["t"]),
            member("b", &["t", "u"]),
            member("c", &["u"]),
        ];
        let a = assign(
            AssignorKind::CooperativeSticky,
            &members,
            &counts(&[("t", 4), ("u", 4)]),
        );
        assert_exact_cover(&a, 8);
        assert!(a["a"].iter().all(|tp| tp.topic == "t"));
        assert!(a["c"].iter().all(|tp| tp.topic == "u"));
        let s = sizes(&a);
        assert!(
            s.iter().max().unwrap() - s.iter().min().unwrap() <= 1,
            "{s:?}"
        );
    }

    #[test]
    fn conflicting_claims_go_to_the_newest_generation() {
        let topics = counts(&[("t", 2)]);
        let both = tps(&[("t", 0), ("t", 1)]);
        let a = assign(
            AssignorKind::CooperativeSticky,
            &[
                owning(member("old", &["t"]), &both, 1),
                owning(member("new", &["t"]), &both, 2),
            ],
            &topics,
        );
        // "new" owned both in the latest generation: it keeps one and revokes one; "old"
        // gets nothing this round.
        assert_eq!(a["new"].len(), 1);
        assert!(a["old"].is_empty());
    }

    #[test]
    fn ownership_is_read_from_user_data_when_the_subscription_lacks_it() {
        // Java's CooperativeStickyAssignor before subscription v2: generation as int32.
        let s = Subscription {
            topics: vec!["t".into()],
            user_data: Some(Bytes::copy_from_slice(&7i32.to_be_bytes())),
            owned_partitions: tps(&[("t", 1)]),
            generation_id: -1,
            rack_id: None,
        };
        assert_eq!(ownership(&s), (tps(&[("t", 1)]), 7));
        // StickyAssignorUserData v1: [("t", [0, 2])], generation 5.
        let mut ud = Vec::new();
        ud.extend_from_slice(&1i32.to_be_bytes());
        ud.extend_from_slice(&1i16.to_be_bytes());
        ud.extend_from_slice(b"t");
        ud.extend_from_slice(&2i32.to_be_bytes());
        ud.extend_from_slice(&0i32.to_be_bytes());
        ud.extend_from_slice(&2i32.to_be_bytes());
        ud.extend_from_slice(&5i32.to_be_bytes());
        let s = Subscription {
            topics: vec!["t".into()],
            user_data: Some(Bytes::from(ud)),
            ..Subscription::default()
        };
        assert_eq!(ownership(&s), (tps(&[("t", 0), ("t", 2)]), 5));
        assert_eq!(decode_sticky_user_data(&[0, 0, 0, 9]), None);
    }

    #[test]
    fn names_round_trip() {
        for k in [
            AssignorKind::Range,
            AssignorKind::RoundRobin,
            AssignorKind::CooperativeSticky,
        ] {
            assert_eq!(AssignorKind::from_name(k.name()), Some(k));
        }
        assert_eq!(AssignorKind::from_name("sticky"), None);
    }
}
