//! The simulated IO on its own: network, clock and disk inside a bare madsim runtime.
#![cfg(madsim)]

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_log::{Disk, DiskError};
use fjord_replication::{Clock, Instant, Network, NodeId};
use fjord_sim::clock::SimClock;
use fjord_sim::disk::{SimDevice, SimDisk};
use fjord_sim::faults::{DiskParams, NetParams};
use fjord_sim::network::{SimEndpoint, SimNet};
use fjord_sim::seed::{stream, Salt};
use fjord_sim::time;

fn sim<F: Future>(seed: u64, f: F) -> F::Output {
    madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(f)
}

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);

fn params() -> NetParams {
    NetParams::healthy(Duration::from_millis(1), Duration::from_millis(2))
}

fn network(seed: u64, params: NetParams) -> Arc<SimNet> {
    let net = SimNet::new(stream(seed, Salt::Network), params);
    madsim::task::spawn(net.router());
    net
}

/// Everything `ep` receives within `within`, as strings.
async fn drain(ep: &SimEndpoint, within: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(e) = time::timeout(within, ep.recv()).await {
        got.push(String::from_utf8_lossy(&e.payload).into_owned());
    }
    got
}

fn msg(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn cut_links_drop_messages_until_healed() {
    sim(1, async {
        let net = network(1, params());
        let (a, b) = (net.bring_up(A, 0), net.bring_up(B, 0));
        a.send(B, msg("before"));
        assert_eq!(drain(&b, Duration::from_secs(1)).await, ["before"]);

        net.cut(A, B); // one way only
        a.send(B, msg("cut"));
        b.send(A, msg("back"));
        assert_eq!(
            drain(&b, Duration::from_secs(1)).await,
            Vec::<String>::new()
        );
        assert_eq!(drain(&a, Duration::from_secs(1)).await, ["back"]);

        // A message in flight when the link is cut is dropped too.
        a.send(B, msg("in flight"));
        net.cut(A, B);
        net.uncut(A, B); // one of two cuts undone: still cut
        assert_eq!(
            drain(&b, Duration::from_secs(1)).await,
            Vec::<String>::new()
        );

        net.heal(params());
        a.send(B, msg("after"));
        assert_eq!(drain(&b, Duration::from_secs(1)).await, ["after"]);
        assert_eq!(net.stats().dropped_cut, 2);
    });
}

#[test]
fn clogged_links_hold_messages_and_release_them_in_order() {
    sim(2, async {
        let net = network(2, params());
        let (a, b) = (net.bring_up(A, 0), net.bring_up(B, 0));
        net.clog(A, B);
        net.clog(A, B);
        let sent: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        for s in &sent {
            a.send(B, msg(s));
        }
        assert!(drain(&b, Duration::from_secs(2)).await.is_empty());
        net.unclog(A, B);
        assert!(
            drain(&b, Duration::from_secs(1)).await.is_empty(),
            "still clogged once"
        );
        net.unclog(A, B);
        assert_eq!(drain(&b, Duration::from_secs(1)).await, sent);
    });
}

#[test]
fn delivery_outlives_the_sender_but_not_the_receiver() {
    sim(3, async {
        let net = network(3, params());
        let (a, b) = (net.bring_up(A, 0), net.bring_up(B, 0));
        a.send(B, msg("last words"));
        net.take_down(A);
        assert_eq!(drain(&b, Duration::from_secs(1)).await, ["last words"]);

        // A crashed incarnation's endpoint sends nothing, even once the node is back.
        a.send(B, msg("zombie"));
        let a1 = net.bring_up(A, 1);
        a.send(B, msg("zombie again"));
        assert!(drain(&b, Duration::from_secs(1)).await.is_empty());

        // Messages due while the receiver is down are dropped; its next incarnation gets
        // only what arrives after it is up.
        a1.send(B, msg("lost"));
        net.take_down(B);
        time::sleep(Duration::from_secs(1)).await;
        let b1 = net.bring_up(B, 1);
        a1.send(B, msg("new"));
        assert_eq!(drain(&b1, Duration::from_secs(1)).await, ["new"]);
        assert!(net.stats().dropped_down >= 1);
    });
}

#[test]
fn links_are_fifo_unless_reordering() {
    let order = |reorder: f64| {
        sim(4, async move {
            let net = network(
                4,
                NetParams {
                    reorder,
                    ..params()
                },
            );
            let (a, b) = (net.bring_up(A, 0), net.bring_up(B, 0));
            for i in 0..200 {
                a.send(B, msg(&i.to_string()));
            }
            let got: Vec<u32> = drain(&b, Duration::from_secs(2))
                .await
                .iter()
                .map(|s| s.parse().expect("number"))
                .collect();
            assert_eq!(got.len(), 200);
            got
        })
    };
    assert_eq!(order(0.0), (0..200).collect::<Vec<_>>());
    assert_ne!(order(0.3), (0..200).collect::<Vec<_>>());
}

#[test]
fn loss_and_duplication_are_seeded_and_counted() {
    let run = |seed: u64| {
        sim(seed, async move {
            let net = network(
                seed,
                NetParams {
                    loss: 0.3,
                    duplicate: 0.3,
                    ..params()
                },
            );
            let (a, b) = (net.bring_up(A, 0), net.bring_up(B, 0));
            for i in 0..500 {
                a.send(B, msg(&i.to_string()));
            }
            // Messages to oneself are never lost or duplicated.
            for i in 0..50 {
                a.send(A, msg(&i.to_string()));
            }
            let got = drain(&b, Duration::from_secs(2)).await;
            assert_eq!(drain(&a, Duration::from_secs(1)).await.len(), 50);
            let s = net.stats();
            assert_eq!(s.sent, 550);
            assert_eq!(got.len() as u64, 500 - s.dropped_loss + s.duplicated);
            assert!(s.dropped_loss > 100 && s.duplicated > 50, "{s:?}");
            (got, net.digest())
        })
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn a_paused_receiver_gets_its_messages_on_resume() {
    let rt = madsim::runtime::Runtime::with_seed_and_config(7, madsim::Config::default());
    let handle = rt.handle().clone();
    let node = handle.create_node().name("b").build();
    let got = Arc::new(AtomicU32::new(0));
    rt.block_on(async {
        let net = network(7, params());
        let a = net.bring_up(A, 0);
        let b = net.bring_up(B, 0);
        let counter = got.clone();
        node.spawn(async move {
            loop {
                b.recv().await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        handle.pause(node.id());
        for _ in 0..10 {
            a.send(B, msg("x"));
        }
        time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            got.load(Ordering::Relaxed),
            0,
            "a paused node handles nothing"
        );
        handle.resume(node.id());
        time::sleep(Duration::from_millis(10)).await;
        assert_eq!(got.load(Ordering::Relaxed), 10);
    });
}

#[test]
fn clocks_drift_within_bounds_and_never_go_back() {
    sim(8, async {
        let clock = SimClock::new(Instant::from_nanos(5_000_000_000), 1_700_000_000_000);
        let t0 = clock.now();
        assert_eq!(t0, Instant::from_nanos(5_000_000_000));
        clock.set_drift_ppm(10_000);
        time::sleep(Duration::from_secs(10)).await;
        let fast = clock.now().saturating_duration_since(t0);
        assert!(
            (Duration::from_millis(10_099)..=Duration::from_millis(10_101)).contains(&fast),
            "{fast:?}"
        );
        clock.set_drift_ppm(-10_000);
        let t1 = clock.now();
        assert!(t1 >= t0);
        // `sleep` waits at least its duration on this (slow) clock.
        clock.sleep(Duration::from_secs(1)).await;
        assert!(clock.now().saturating_duration_since(t1) >= Duration::from_secs(1));
        let wall = clock.wall_clock_ms();
        clock.jump_wall(-60_000);
        assert!(clock.wall_clock_ms() <= wall - 59_000);
        assert!(
            clock.now() >= t1,
            "a wall jump leaves the monotonic clock alone"
        );
        // A zero sleep completes.
        clock.sleep(Duration::ZERO).await;
    });
}

fn device(seed: u64, sync_fail: f64) -> SimDevice {
    SimDevice::new(
        seed,
        stream(seed, Salt::Disk),
        DiskParams {
            op_latency_mean: Duration::from_micros(10),
            sync_latency_mean: Duration::from_millis(2),
            sync_fail,
        },
    )
}

fn view(device: &SimDevice, incarnation: u32, stops: &Arc<AtomicU32>) -> SimDisk {
    let stops = stops.clone();
    SimDisk::new(
        A,
        incarnation,
        device.clone(),
        Arc::new(move |_, _, _| {
            stops.fetch_add(1, Ordering::Relaxed);
        }),
    )
}

fn read_all(disk: &SimDisk, path: &Path) -> Vec<u8> {
    let f = disk.open(path).expect("open");
    let mut buf = vec![0; f.len() as usize];
    f.read_at(0, &mut buf).expect("read");
    buf
}

#[test]
fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
    let path = Path::new("/f");
    let mut lost = 0;
    for seed in 0..20 {
        sim(seed, async {
            let stops = Arc::new(AtomicU32::new(0));
            let dev = device(seed, 0.0);
            let disk = view(&dev, 0, &stops);
            let mut f = disk.create(path).expect("create");
            disk.sync_dir(Path::new("/")).expect("sync dir");
            f.write_at(0, b"durable").expect("write");
            f.sync().expect("sync");
            f.write_at(7, b"+pending").expect("write");
            // Latency is accounted, not blocked on: settle waits for the device.
            let before = time::now();
            disk.settle().await;
            assert!(time::now() > before);
            dev.crash();
            let after = read_all(&view(&dev, 1, &stops), path);
            assert!(after.starts_with(b"durable"), "{after:?}");
            if after.len() < 15 || &after[7..] != b"+pending" {
                lost += 1;
            }
            assert_eq!(stops.load(Ordering::Relaxed), 0);
        });
    }
    assert!(lost > 0, "a crash should sometimes lose unsynced writes");
}

#[test]
fn a_deferred_sync_takes_effect_when_the_device_completes_it() {
    let path = Path::new("/f");
    let mut lost = 0;
    for seed in 0..20 {
        sim(seed, async {
            let stops = Arc::new(AtomicU32::new(0));
            let dev = device(seed, 0.0);
            dev.defer_syncs();
            let disk = view(&dev, 0, &stops);
            let mut f = disk.create(path).expect("create");
            disk.sync_dir(Path::new("/")).expect("sync dir");
            f.write_at(0, b"durable").expect("write");
            f.sync().expect("sync");
            disk.settle().await;
            f.write_at(7, b"+synced").expect("write");
            f.sync().expect("sync");
            // Power fails before the device finished the second sync.
            dev.crash();
            let after = read_all(&view(&dev, 1, &stops), path);
            assert!(after.starts_with(b"durable"), "{after:?}");
            if after.len() < 14 || &after[7..] != b"+synced" {
                lost += 1;
            }
        });
    }
    assert!(
        lost > 0,
        "a crash before the device completes a sync may lose its writes"
    );
}

#[test]
fn a_failed_sync_stops_the_incarnation() {
    sim(9, async {
        let stops = Arc::new(AtomicU32::new(0));
        let dev = device(9, 1.0);
        let disk = view(&dev, 0, &stops);
        let mut f = disk.create(Path::new("/f")).expect("create");
        f.write_at(0, b"x").expect("write");
        assert!(f.sync().is_err());
        assert!(disk.is_stopped());
        assert_eq!(stops.load(Ordering::Relaxed), 1);
        // Nothing of this incarnation works any more: it must not carry on.
        assert!(matches!(
            disk.create(Path::new("/g")),
            Err(DiskError::Injected { .. })
        ));
        assert!(f.write_at(1, b"y").is_err());
        assert!(f.sync().is_err());
        assert_eq!(stops.load(Ordering::Relaxed), 1, "reported once");
        // After heal, the next incarnation syncs fine.
        dev.heal();
        dev.crash();
        let disk = view(&dev, 1, &stops);
        let mut f = disk.create(Path::new("/h")).expect("create");
        f.write_at(0, b"z").expect("write");
        f.sync().expect("sync after heal");
    });
}

/// Engine cost per message: three nodes keep 30 messages in flight between them for 100
/// simulated seconds. Run with `--ignored --nocapture` (release) to see the figure.
#[test]
#[ignore = "measurement, not a check"]
fn engine_speed() {
    let rt = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    let handle = rt.handle().clone();
    #[allow(clippy::disallowed_methods)] // Measures the engine's real speed.
    let started = std::time::Instant::now();
    let sent = rt.block_on(async {
        let net = network(1, params());
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        for (i, id) in ids.iter().enumerate() {
            let ep = net.bring_up(*id, 0);
            let next = ids[(i + 1) % 3];
            handle.create_node().build().spawn(async move {
                for _ in 0..10 {
                    ep.send(next, msg("ping"));
                }
                loop {
                    let e = ep.recv().await;
                    ep.send(next, e.payload);
                }
            });
        }
        time::sleep(Duration::from_secs(100)).await;
        net.stats().sent
    });
    let wall = started.elapsed();
    println!(
        "{sent} messages in 100 simulated s, {wall:?} wall: {:.0} ns per message, {:.0}x",
        wall.as_nanos() as f64 / sent as f64,
        100.0 / wall.as_secs_f64()
    );
}
