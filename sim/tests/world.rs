//! Node lifecycle in a world: crash, restart, pause, power loss and fatal sync failures, with
//! a test workload whose nodes keep a counter on disk and echo messages.
#![cfg(madsim)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fjord_replication::{BoxFuture, NodeId};
use fjord_sim::bugs::Bugs;
use fjord_sim::faults::{FaultClass, Swarm};
use fjord_sim::time;
use fjord_sim::workload::{ClientEnv, NodeIo, Recorder, Workload};
use fjord_sim::world::{NodeState, World};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Started { node: u32, inc: u32, recovered: u64 },
    Tick { node: u32, inc: u32, n: u64 },
    Synced { node: u32, inc: u32, n: u64 },
    SyncFailed { node: u32, inc: u32 },
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Nodes count up every 10 ms, write the count to a file, sync every other count, and echo
/// every message back to its sender.
struct Counter {
    log: Log,
}

fn open_counter(io: &NodeIo) -> Result<(Box<dyn fjord_log::DiskFile>, u64), fjord_log::DiskError> {
    let path = Path::new("/counter");
    if io.disk.exists(path)? {
        let f = io.disk.open(path)?;
        let mut buf = [0u8; 8];
        let n = if f.len() >= 8 {
            f.read_at(0, &mut buf)?;
            u64::from_le_bytes(buf)
        } else {
            0
        };
        Ok((f, n))
    } else {
        let f = io.disk.create(path)?;
        io.disk.sync_dir(Path::new("/"))?;
        Ok((f, 0))
    }
}

impl Workload for Counter {
    fn node(&self, io: NodeIo) -> BoxFuture<'static, ()> {
        let log = self.log.clone();
        Box::pin(async move {
            let (node, inc) = (io.id.0, io.incarnation);
            let Ok((mut file, recovered)) = open_counter(&io) else {
                return;
            };
            log.lock().unwrap().push(Event::Started {
                node,
                inc,
                recovered,
            });
            let clock = io.clock.clone();
            let ticks = log.clone();
            io.spawner.spawn(
                "ticker",
                Box::pin(async move {
                    let mut n = recovered;
                    loop {
                        clock.sleep(Duration::from_millis(10)).await;
                        n += 1;
                        if file.write_at(0, &n.to_le_bytes()).is_err() {
                            return;
                        }
                        ticks.lock().unwrap().push(Event::Tick { node, inc, n });
                        if n % 2 == 0 {
                            if file.sync().is_err() {
                                ticks.lock().unwrap().push(Event::SyncFailed { node, inc });
                                return;
                            }
                            ticks.lock().unwrap().push(Event::Synced { node, inc, n });
                        }
                    }
                }),
            );
            loop {
                let e = io.network.recv().await;
                io.network.send(e.from, e.payload);
            }
        })
    }

    fn clients(&self) -> usize {
        0
    }

    fn client(&self, _: ClientEnv) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn liveness(&self, _: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn final_reads(&self, _: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

fn world(seed: u64, faults: &[FaultClass]) -> (Arc<World>, Log) {
    let pinned: BTreeSet<FaultClass> = faults.iter().copied().collect();
    let swarm = Swarm::pick(seed, &pinned, Some(&pinned));
    let log: Log = Arc::default();
    let workload = Arc::new(Counter { log: log.clone() });
    let world = World::new(swarm, Bugs::none(), Recorder::new(), workload);
    world.start();
    (world, log)
}

fn sim<F: std::future::Future>(seed: u64, f: F) -> F::Output {
    madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(f)
}

fn ticks(log: &Log, node: u32, inc: u32) -> Vec<u64> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|e| match *e {
            Event::Tick {
                node: n,
                inc: i,
                n: v,
            } if (n, i) == (node, inc) => Some(v),
            _ => None,
        })
        .collect()
}

fn started(log: &Log, node: u32, inc: u32) -> Option<u64> {
    log.lock().unwrap().iter().find_map(|e| match *e {
        Event::Started {
            node: n,
            inc: i,
            recovered,
        } if (n, i) == (node, inc) => Some(recovered),
        _ => None,
    })
}

#[test]
fn crash_drops_every_task_and_restart_recovers_what_was_synced() {
    for seed in 0..8 {
        sim(seed, async {
            let (world, log) = world(seed, &[]);
            time::sleep(Duration::from_millis(505)).await;
            world.crash(NodeId(1));
            assert_eq!(world.state(NodeId(1)), NodeState::Down);
            let before = ticks(&log, 1, 0);
            let synced = log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| match *e {
                    Event::Synced { node: 1, inc: 0, n } => Some(n),
                    _ => None,
                })
                .max()
                .expect("some syncs");
            time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                ticks(&log, 1, 0),
                before,
                "the crashed node's spawned task is gone"
            );
            assert!(
                ticks(&log, 2, 0).len() > before.len(),
                "other nodes carry on"
            );

            world.restart(NodeId(1));
            time::sleep(Duration::from_millis(100)).await;
            let recovered = started(&log, 1, 1).expect("incarnation 1 started");
            let last = *before.last().expect("ticked");
            assert!(
                (synced..=last).contains(&recovered),
                "recovered {recovered}, synced {synced}, written {last}"
            );
            assert!(!ticks(&log, 1, 1).is_empty(), "the new incarnation runs");
        });
    }
}

#[test]
fn a_paused_node_freezes_and_resumes_in_the_same_incarnation() {
    sim(1, async {
        let (world, log) = world(1, &[]);
        time::sleep(Duration::from_millis(200)).await;
        world.pause(NodeId(2));
        let frozen = ticks(&log, 2, 0).len();
        time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ticks(&log, 2, 0).len(), frozen);
        world.resume(NodeId(2));
        time::sleep(Duration::from_millis(200)).await;
        assert!(ticks(&log, 2, 0).len() > frozen);
        assert_eq!(started(&log, 2, 1), None, "resumed, not restarted");
    });
}

#[test]
fn power_loss_and_the_network() {
    sim(2, async {
        let (world, _log) = world(2, &[]);
        let (client, _task) = world.start_client(0, |env| {
            Box::pin(async move {
                for round in 0u8.. {
                    for s in &env.servers {
                        env.network.send(*s, Bytes::from(vec![round]));
                    }
                    time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        // Echoes reach the client only while the servers are up.
        time::sleep(Duration::from_millis(500)).await;
        let delivered = world.net.stats().delivered;
        assert!(delivered > 0);
        for n in world.servers.clone() {
            world.crash(n);
        }
        time::sleep(Duration::from_millis(50)).await;
        let down = world.net.stats();
        time::sleep(Duration::from_secs(1)).await;
        let still_down = world.net.stats();
        assert_eq!(still_down.delivered, down.delivered, "nobody to deliver to");
        assert!(still_down.dropped_down > down.dropped_down);
        for n in world.servers.clone() {
            world.restart(n);
        }
        time::sleep(Duration::from_millis(500)).await;
        assert!(world.net.stats().delivered > still_down.delivered);
        world.stop_client(&client);
    });
}

#[test]
fn a_failed_sync_crashes_and_restarts_the_node() {
    sim(3, async {
        let (world, log) = world(3, &[]);
        time::sleep(Duration::from_millis(100)).await;
        world.device(NodeId(1)).mem.fail_syncs(None, 1.0);
        time::sleep(Duration::from_secs(2)).await;
        let events = log.lock().unwrap().clone();
        let failed = events
            .iter()
            .position(|e| *e == Event::SyncFailed { node: 1, inc: 0 })
            .expect("the first sync fails");
        assert!(
            !events[failed..].iter().any(|e| matches!(
                e,
                Event::Tick {
                    node: 1,
                    inc: 0,
                    ..
                }
            )),
            "the incarnation never continues after a failed sync"
        );
        assert!(started(&log, 1, 1).is_some(), "the node was restarted");
        assert!(world.fault_counts()[&FaultClass::SyncFail] >= 2);
    });
}

/// Every fault class, pinned alone, is injected (and counted) during a fault phase, and heal
/// brings every node back up with a healthy network.
#[test]
fn every_fault_class_is_injected_and_healed() {
    for class in FaultClass::ALL {
        sim(5, async move {
            let (world, _log) = world(5, &[class]);
            let (client, _task) = world.start_client(0, |env| {
                Box::pin(async move {
                    loop {
                        for s in &env.servers {
                            env.network.send(*s, Bytes::from_static(b"ping"));
                        }
                        time::sleep(Duration::from_millis(10)).await;
                    }
                })
            });
            // Long enough for the rarest class (power loss, mean gap up to a minute).
            fjord_sim::scheduler::fault_phase(&world, Duration::from_secs(300)).await;
            world.stop_client(&client);
            let counts = world.fault_counts();
            assert!(
                counts.get(&class).copied().unwrap_or(0) > 0,
                "{class} never injected: {counts:?}"
            );
            assert!(
                counts.keys().all(|c| *c == class),
                "only {class} is enabled: {counts:?}"
            );
            fjord_sim::scheduler::heal(&world);
            time::sleep(Duration::from_millis(100)).await;
            for n in world.servers.clone() {
                assert_eq!(world.state(n), NodeState::Up, "{class}: {n} after heal");
            }
            // The network is healthy again: every server echoes a ping.
            let (probe, task) = world.start_client(1, |env| {
                Box::pin(async move {
                    let mut echoed = BTreeSet::new();
                    while echoed.len() < env.servers.len() {
                        for s in &env.servers {
                            env.network.send(*s, Bytes::from_static(b"probe"));
                        }
                        if let Some(e) =
                            time::timeout(Duration::from_millis(100), env.network.recv()).await
                        {
                            echoed.insert(e.from);
                        }
                    }
                })
            });
            assert!(
                time::timeout(Duration::from_secs(5), task).await.is_some(),
                "{class}: servers unreachable after heal"
            );
            world.stop_client(&probe);
        });
    }
}

#[test]
fn node_clocks_start_close_in_wall_time_and_apart_in_monotonic_time() {
    use fjord_replication::Clock;
    for seed in 0..8 {
        sim(seed, async move {
            let (world, _log) = world(seed, &[]);
            let walls: Vec<i64> = world
                .servers
                .iter()
                .map(|n| world.clock(*n).wall_clock_ms())
                .collect();
            let (lo, hi) = (walls.iter().min().unwrap(), walls.iter().max().unwrap());
            assert!(hi - lo <= 1000, "wall clocks {walls:?}");
            assert!(*lo > 1_704_000_000_000, "a plausible date: {lo}");
            let origins: BTreeSet<_> = world
                .servers
                .iter()
                .map(|n| world.clock(*n).now())
                .collect();
            assert_eq!(
                origins.len(),
                world.servers.len(),
                "monotonic origins differ"
            );
        });
    }
}
