//! The actor's half of the broker's metrics: a snapshot of its state (see
//! [`crate::broker::metrics`]).

use std::collections::BTreeMap;

use fjord_replication::multiraft::GroupId;
use fjord_replication::raft::Role;

use super::Node;
use crate::broker::metrics::{GroupOffsetMetrics, NodeMetrics, PartitionMetrics};

impl Node {
    pub(super) fn node_metrics(&self) -> NodeMetrics {
        let names: BTreeMap<u32, &str> = self
            .image
            .topics()
            .iter()
            .map(|(name, t)| (t.topic_id, name.as_str()))
            .collect();
        let mut partitions = Vec::new();
        for g in self.multi.group_ids() {
            if g == GroupId::METADATA {
                continue;
            }
            let (Some(r), Some(topic)) = (self.multi.group(g), names.get(&g.topic)) else {
                continue;
            };
            let leader = r.role() == Role::Leader;
            partitions.push(PartitionMetrics {
                topic: (*topic).to_string(),
                partition: g.partition as i32,
                leader,
                term: r.term(),
                log_start: r.log().log().log_start_offset(),
                log_end: r.log().log().log_end_offset(),
                high_watermark: r.commit_end(),
                replicas: r.membership().voters.len(),
                in_sync: if leader {
                    self.isr_of(g).map(|isr| isr.len())
                } else {
                    None
                },
            });
        }
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let group_offsets = self
            .coordinators
            .committed_offsets()
            .into_iter()
            .map(|(group, topic, partition, committed)| {
                let lag = self
                    .group_of(&topic, partition)
                    .and_then(|g| self.multi.group(g))
                    .map(|r| (r.commit_end() as i64 - committed).max(0));
                GroupOffsetMetrics {
                    group,
                    topic,
                    partition,
                    committed,
                    lag,
                }
            })
            .collect();
        NodeMetrics {
            node_id: self.id(),
            active_controller: self.multi.is_leader(GroupId::METADATA),
            partitions,
            group_offsets,
            raft: self.raft_counters.clone(),
        }
    }
}
