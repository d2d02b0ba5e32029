//! `fjord bench` end to end, scaled down: every scenario runs and counts what it sent.

use std::time::Duration;

use fjord::runtime::bench::{run, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_runs_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BenchOptions {
        records: 20_000,
        partitions: 2,
        batch_size_bytes: 64 * 1024,
        half_rate_duration: Duration::from_millis(500),
        raw_duration: Duration::from_millis(100),
        dir: Some(dir.path().to_path_buf()),
        ..BenchOptions::default()
    };
    let report = run(&opts).await.expect("bench runs");
    assert!(report.raw_per_batch.records > 0 && report.raw_per_mib.bytes > 0);
    for scenario in [&report.single, &report.cluster] {
        let s = scenario.as_ref().expect("scenario ran");
        assert_eq!((s.peak.records, s.peak.failures), (20_000, 0));
        assert!(!s.peak.latencies.is_empty());
        assert!(s.consume.records >= 20_000, "{}", s.consume.records);
    }
    let cluster = report.cluster.as_ref().expect("cluster ran");
    let (half, e2e) = cluster.half.as_ref().expect("half-rate run");
    assert_eq!(half.failures, 0);
    assert!(half.records > 0 && e2e.records > 0 && !e2e.latencies.is_empty());
    assert!(report.single.as_ref().is_some_and(|s| s.half.is_none()));
}
