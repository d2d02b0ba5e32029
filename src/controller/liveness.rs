//! Broker liveness, tracked by the active controller in memory (as KRaft's
//! `BrokerHeartbeatManager`): heartbeats come in, and `tick` proposes fencing brokers whose
//! session expired and unfencing fenced brokers that heartbeat again.

use std::collections::BTreeMap;

use fjord_replication::NodeId;

use super::{ApiError, MetadataImage, MetadataRecord, BROKERS_MAX_COUNT};

/// Kafka's `broker.session.timeout.ms`.
pub const BROKER_SESSION_TIMEOUT_DEFAULT_MS: u64 = 9_000;
/// Most (broker, incarnation) heartbeat entries kept between ticks: room for every broker
/// and a restarted process of each.
const HEARTBEAT_ENTRIES_MAX_COUNT: usize = 2 * BROKERS_MAX_COUNT;

/// When the controller last heard from one broker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contact {
    incarnation: u64,
    at_ms: u64,
}

/// Heartbeat bookkeeping of the active controller. A new leader starts a fresh one: every
/// unfenced broker then gets a full session from the first `tick` before it can be fenced,
/// so a controller failover fences nobody by itself. Only registered brokers matter: a
/// heartbeat counts for the registration whose incarnation it names.
#[derive(Debug, Clone)]
pub struct Liveness {
    session_timeout_ms: u64,
    /// Last heartbeat per broker process: `(id, incarnation)` → time.
    heartbeats: BTreeMap<(NodeId, u64), u64>,
    /// When `tick` first saw each registration: the start of its grace session.
    watched: BTreeMap<NodeId, Contact>,
    /// Fence (`true`) / unfence proposals not yet visible in the image, not repeated until
    /// a session timeout has passed (in case the proposal was lost).
    proposed: BTreeMap<NodeId, (u64, bool, u64)>,
}

impl Liveness {
    pub fn new(broker_session_timeout_ms: u64) -> Liveness {
        Liveness {
            session_timeout_ms: broker_session_timeout_ms,
            heartbeats: BTreeMap::new(),
            watched: BTreeMap::new(),
            proposed: BTreeMap::new(),
        }
    }

    /// A heartbeat from `id` running as `incarnation`. The local broker heartbeats too (the
    /// controller's own process is a broker). Beyond [`BROKERS_MAX_COUNT`] × 2 distinct
    /// processes between ticks, heartbeats of new ones are dropped.
    pub fn heartbeat(&mut self, id: NodeId, incarnation: u64, now_ms: u64) {
        let key = (id, incarnation);
        if self.heartbeats.len() >= HEARTBEAT_ENTRIES_MAX_COUNT
            && !self.heartbeats.contains_key(&key)
        {
            return;
        }
        self.heartbeats.insert(key, now_ms);
    }

    /// When `id`'s process `incarnation` last heartbeat.
    fn heard(&self, id: NodeId, incarnation: u64) -> Option<u64> {
        self.heartbeats.get(&(id, incarnation)).copied()
    }

    fn fresh(&self, at_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(at_ms) <= self.session_timeout_ms
    }

    /// KRaft's guard against two processes configured with the same broker id: registering
    /// `id` under another incarnation is DUPLICATE_BROKER_REGISTRATION while the registered
    /// incarnation is unfenced and heartbeat within the session timeout. A restarted broker
    /// retries until its previous session expires (or it was fenced).
    pub fn check_registration(
        &self,
        image: &MetadataImage,
        id: NodeId,
        incarnation: u64,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let Some(registered) = image.broker(id) else {
            return Ok(());
        };
        let alive = !registered.fenced
            && self
                .heard(id, registered.incarnation)
                .is_some_and(|at| self.fresh(at, now_ms));
        if registered.incarnation != incarnation && alive {
            return Err(ApiError::DuplicateBrokerRegistration(format!(
                "Another broker process is registered as broker {} and heartbeating.",
                id.0
            )));
        }
        Ok(())
    }

    /// The fence / unfence records to propose now, by broker id. A broker is fenced when
    /// nothing was heard from its registered incarnation for longer than the session timeout
    /// (counting from the first tick that saw it), and unfenced when it is fenced and its
    /// registered incarnation heartbeat within the session timeout.
    pub fn tick(&mut self, image: &MetadataImage, now_ms: u64) -> Vec<MetadataRecord> {
        let brokers = image.brokers();
        let timeout = self.session_timeout_ms;
        // Keep heartbeats of registered incarnations, and recent ones of other processes of
        // registered ids (a restart whose registration is not applied yet).
        self.heartbeats.retain(|(id, incarnation), at| {
            brokers.get(id).is_some_and(|b| {
                b.incarnation == *incarnation || now_ms.saturating_sub(*at) <= timeout
            })
        });
        self.watched.retain(|id, _| brokers.contains_key(id));
        self.proposed.retain(|id, _| brokers.contains_key(id));
        let mut out = Vec::new();
        for (id, broker) in brokers {
            let registered = broker.incarnation;
            let watched = self
                .watched
                .entry(*id)
                .and_modify(|c| {
                    if c.incarnation != registered {
                        *c = Contact {
                            incarnation: registered,
                            at_ms: now_ms,
                        };
                    }
                })
                .or_insert(Contact {
                    incarnation: registered,
                    at_ms: now_ms,
                })
                .at_ms;
            let heard = self.heard(*id, registered);
            let fresh = |at: u64| now_ms.saturating_sub(at) <= timeout;
            let fence = match broker.fenced {
                false if !fresh(heard.unwrap_or(0).max(watched)) => true,
                true if heard.is_some_and(fresh) => false,
                _ => {
                    self.proposed.remove(id);
                    continue;
                }
            };
            if let Some(&(incarnation, target, at)) = self.proposed.get(id) {
                if incarnation == registered && target == fence && fresh(at) {
                    continue;
                }
            }
            self.proposed.insert(*id, (registered, fence, now_ms));
            out.push(if fence {
                MetadataRecord::FenceBroker { id: *id }
            } else {
                MetadataRecord::UnfenceBroker { id: *id }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ApplyOutcome;

    const TIMEOUT: u64 = 1000;

    fn register(image: &mut MetadataImage, id: u32, incarnation: u64) {
        let r = MetadataRecord::RegisterBroker {
            id: NodeId(id),
            incarnation,
            host: "h".into(),
            kafka_port: 9092,
            rack: None,
            rpc_addr: "h:1".into(),
        };
        assert_eq!(image.apply(&r, 1), ApplyOutcome::Applied);
    }

    fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for r in records {
            assert_eq!(image.apply(r, 1), ApplyOutcome::Applied, "{r:?}");
        }
    }

    #[test]
    fn a_registered_broker_is_unfenced_by_its_heartbeat() {
        let mut image = MetadataImage::new();
        let mut live = Liveness::new(TIMEOUT);
        register(&mut image, 1, 7);
        assert!(live.tick(&image, 0).is_empty(), "no heartbeat yet");
        live.heartbeat(NodeId(1), 6, 10);
        assert!(
            live.tick(&image, 10).is_empty(),
            "another incarnation's heartbeat"
        );
        live.heartbeat(NodeId(1), 7, 20);
        let records = live.tick(&image, 20);
        assert_eq!(
            records,
            vec![MetadataRecord::UnfenceBroker { id: NodeId(1) }]
        );
        assert!(
            live.tick(&image, 30).is_empty(),
            "not repeated while in flight"
        );
        apply_all(&mut image, &records);
        assert!(live.tick(&image, 40).is_empty());
    }

    #[test]
    fn a_silent_broker_is_fenced_after_the_session_timeout() {
        let mut image = MetadataImage::new();
        let mut live = Liveness::new(TIMEOUT);
        register(&mut image, 1, 1);
        register(&mut image, 2, 1);
        live.heartbeat(NodeId(1), 1, 0);
        live.heartbeat(NodeId(2), 1, 0);
        let records = live.tick(&image, 0);
        assert_eq!(records.len(), 2);
        apply_all(&mut image, &records);
        live.heartbeat(NodeId(1), 1, 900);
        assert!(
            live.tick(&image, TIMEOUT).is_empty(),
            "exactly at the timeout"
        );
        assert_eq!(
            live.tick(&image, TIMEOUT + 1),
            vec![MetadataRecord::FenceBroker { id: NodeId(2) }]
        );
        assert!(live.tick(&image, TIMEOUT + 2).is_empty(), "in flight");
        // Lost proposal: repeated after another session timeout.
        assert_eq!(
            live.tick(&image, 2 * TIMEOUT + 2),
            vec![
                MetadataRecord::FenceBroker { id: NodeId(1) },
                MetadataRecord::FenceBroker { id: NodeId(2) }
            ]
        );
        apply_all(
            &mut image,
            &[
                MetadataRecord::FenceBroker { id: NodeId(1) },
                MetadataRecord::FenceBroker { id: NodeId(2) },
            ],
        );
        live.heartbeat(NodeId(2), 1, 3000);
        assert_eq!(
            live.tick(&image, 3000),
            vec![MetadataRecord::UnfenceBroker { id: NodeId(2) }]
        );
    }

    #[test]
    fn a_new_controller_gives_every_broker_a_full_session() {
        let mut image = MetadataImage::new();
        register(&mut image, 1, 1);
        apply_all(
            &mut image,
            &[MetadataRecord::UnfenceBroker { id: NodeId(1) }],
        );
        let mut live = Liveness::new(TIMEOUT);
        assert!(live.tick(&image, 50_000).is_empty());
        assert!(live.tick(&image, 50_000 + TIMEOUT).is_empty());
        assert_eq!(
            live.tick(&image, 50_001 + TIMEOUT),
            vec![MetadataRecord::FenceBroker { id: NodeId(1) }]
        );
    }

    #[test]
    fn a_restarted_broker_is_judged_by_its_new_incarnation() {
        let mut image = MetadataImage::new();
        let mut live = Liveness::new(TIMEOUT);
        register(&mut image, 1, 1);
        live.heartbeat(NodeId(1), 1, 0);
        let records = live.tick(&image, 0);
        apply_all(&mut image, &records);
        assert!(!image.brokers()[&NodeId(1)].fenced);
        // Restart: the old process's heartbeats stop, the new one registers (fenced).
        live.heartbeat(NodeId(1), 2, 500);
        register(&mut image, 1, 2);
        assert!(image.brokers()[&NodeId(1)].fenced);
        assert_eq!(
            live.tick(&image, 600),
            vec![MetadataRecord::UnfenceBroker { id: NodeId(1) }]
        );
    }

    #[test]
    fn unknown_ids_are_forgotten_and_bounded() {
        let mut image = MetadataImage::new();
        register(&mut image, 0, 1);
        let mut live = Liveness::new(TIMEOUT);
        for id in 0..(HEARTBEAT_ENTRIES_MAX_COUNT as u32 + 10) {
            live.heartbeat(NodeId(id), 1, 0);
        }
        assert_eq!(live.heartbeats.len(), HEARTBEAT_ENTRIES_MAX_COUNT);
        live.heartbeat(NodeId(0), 2, 0);
        assert_eq!(
            live.heartbeats.len(),
            HEARTBEAT_ENTRIES_MAX_COUNT,
            "full: dropped"
        );
        assert_eq!(
            live.tick(&image, 0),
            vec![MetadataRecord::UnfenceBroker { id: NodeId(0) }]
        );
        let kept = |live: &Liveness| live.heartbeats.keys().copied().collect::<Vec<_>>();
        assert_eq!(kept(&live), [(NodeId(0), 1)]);
        live.heartbeat(NodeId(0), 2, 0);
        assert!(
            live.tick(&image, 0).is_empty(),
            "the unfencing is in flight"
        );
        assert_eq!(kept(&live), [(NodeId(0), 1), (NodeId(0), 2)]);
        // The other process of broker 0 is forgotten once its heartbeat is stale.
        assert!(live.tick(&image, TIMEOUT + 1).is_empty());
        assert_eq!(kept(&live), [(NodeId(0), 1)]);
    }

    #[test]
    fn a_second_process_with_a_live_id_cannot_register() {
        let mut image = MetadataImage::new();
        let mut live = Liveness::new(TIMEOUT);
        assert_eq!(live.check_registration(&image, NodeId(1), 1, 0), Ok(()));
        register(&mut image, 1, 1);
        // Registered but fenced (never heartbeat): a new process may take over.
        assert_eq!(live.check_registration(&image, NodeId(1), 2, 0), Ok(()));
        live.heartbeat(NodeId(1), 1, 0);
        let records = live.tick(&image, 0);
        apply_all(&mut image, &records);
        // A second process heartbeating under its own incarnation does not help it.
        live.heartbeat(NodeId(1), 2, 100);
        let duplicate = live.check_registration(&image, NodeId(1), 2, 100);
        assert_eq!(duplicate.map_err(|e| e.code()), Err(101));
        assert_eq!(live.check_registration(&image, NodeId(1), 1, 100), Ok(()));
        // Once the registered process's session has expired, the new one may register.
        assert_eq!(
            live.check_registration(&image, NodeId(1), 2, TIMEOUT + 1),
            Ok(())
        );
    }
}
