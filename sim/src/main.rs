//! `fjord-sim`: the simulator's command line (see the crate docs and README, "Simulator").

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "fjord-sim runs only when built with RUSTFLAGS=\"--cfg madsim\" \
         (CARGO_TARGET_DIR=target/sim).\nUse scripts/sim, e.g.: scripts/sim --seed 1"
    );
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(madsim)]
mod cli {
    use std::io::{IsTerminal, Write};

    use clap::Parser;
    use fjord_sim::bugs::Bugs;
    use fjord_sim::faults::parse_fault_list;
    use fjord_sim::runner::{self, Report, RunOptions, SweepOptions};
    use fjord_sim::WORKLOADS;

    /// fjord's deterministic simulator.
    #[derive(Parser)]
    #[command(name = "fjord-sim", group(clap::ArgGroup::new("what").required(true).args(["seed", "seeds"])))]
    struct Args {
        /// Replay one world and print its trace.
        #[arg(long)]
        seed: Option<u64>,
        /// Sweep this many seeds.
        #[arg(long)]
        seeds: Option<u64>,
        /// First seed of the sweep.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Worker threads for the sweep (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Pin the enabled fault classes: comma-separated names, or `none`.
        #[arg(long)]
        faults: Option<String>,
        /// Pin the number of server nodes (the seed picks 3 or 5 otherwise).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9))]
        nodes: Option<u32>,
        /// Switch on a deliberate bug in the system under test (repeatable).
        #[arg(long = "inject-bug", value_name = "NAME")]
        inject_bug: Vec<String>,
        /// Run every seed twice and compare trace hashes.
        #[arg(long)]
        check_determinism: bool,
        /// With --seed: -v prints DEBUG events, -vv TRACE.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
        /// The system under test.
        #[arg(long, default_value_t = WORKLOADS[0].name.to_string())]
        workload: String,
    }

    pub fn main() -> i32 {
        let args = Args::parse();
        let Some(workload) = WORKLOADS.iter().find(|w| w.name == args.workload) else {
            let names: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
            eprintln!(
                "unknown workload {:?} (known: {})",
                args.workload,
                names.join(", ")
            );
            return 2;
        };
        let faults = match args.faults.as_deref().map(parse_fault_list) {
            None => None,
            Some(Ok(f)) => {
                if let Some(bad) = f.iter().find(|c| !workload.faults.contains(c)) {
                    eprintln!(
                        "workload {} does not support fault class {bad}",
                        workload.name
                    );
                    return 2;
                }
                Some(f)
            }
            Some(Err(e)) => {
                eprintln!("{e}");
                return 2;
            }
        };
        if let Some(bad) = args
            .inject_bug
            .iter()
            .find(|b| !workload.bugs.contains(&b.as_str()))
        {
            eprintln!(
                "workload {} has no bug {bad:?} (known: {})",
                workload.name,
                workload.bugs.join(", ")
            );
            return 2;
        }
        let run = RunOptions {
            workload,
            faults,
            nodes: args.nodes.map(|n| n as usize),
            bugs: Bugs::of(args.inject_bug.iter().cloned()),
            print: None,
        };
        let default_workload = WORKLOADS[0].name;
        if let Some(seed) = args.seed {
            let opts = RunOptions {
                print: Some(match args.verbose {
                    0 => tracing::Level::INFO,
                    1 => tracing::Level::DEBUG,
                    _ => tracing::Level::TRACE,
                }),
                ..run
            };
            let report = runner::run_checked(seed, &opts, args.check_determinism);
            print_report(&report);
            return match &report.failure {
                None => 0,
                Some(f) => {
                    println!("FAILED: {f}");
                    println!("reproduce: {}", opts.repro(seed, default_workload));
                    1
                }
            };
        }
        let count = args.seeds.expect("clap requires --seed or --seeds");
        let jobs = args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let opts = SweepOptions {
            from: args.from,
            count,
            jobs,
            check_determinism: args.check_determinism,
            run,
        };
        sweep(&opts, default_workload)
    }

    fn print_report(r: &Report) {
        println!("seed {}: {}", r.seed, r.swarm);
        println!(
            "  {} after {:.3}s simulated in {:.3}s wall, {:.3}s CPU ({:.0}x), {} client ops, trace hash {:016x}",
            if r.failure.is_none() { "ok" } else { "FAILED" },
            r.sim_time.as_secs_f64(),
            r.wall_time.as_secs_f64(),
            r.cpu_time.as_secs_f64(),
            r.sim_time.as_secs_f64() / r.cpu_time.as_secs_f64().max(1e-9),
            r.ops,
            r.trace_hash
        );
        println!("  faults injected: {:?}", named(&r.faults));
    }

    fn named(
        faults: &std::collections::BTreeMap<fjord_sim::faults::FaultClass, u64>,
    ) -> Vec<String> {
        faults.iter().map(|(c, n)| format!("{c}={n}")).collect()
    }

    fn sweep(opts: &SweepOptions, default_workload: &str) -> i32 {
        let tty = std::io::stderr().is_terminal();
        #[allow(clippy::disallowed_methods)] // The sweep's own wall-clock speed.
        let started = std::time::Instant::now();
        let total = opts.count;
        let summary = runner::sweep(opts, |done, failures| {
            let step = (total / 10).max(1);
            if tty {
                let width = 40;
                let filled = (done * width / total.max(1)) as usize;
                eprint!(
                    "\r[{}{}] {done}/{total} seeds, {failures} failed",
                    "#".repeat(filled),
                    " ".repeat(width as usize - filled)
                );
                let _ = std::io::stderr().flush();
            } else if done % step == 0 || done == total {
                eprintln!("{done}/{total} seeds, {failures} failed");
            }
        });
        if tty {
            eprintln!();
        }
        let wall = started.elapsed().as_secs_f64();
        let sim = summary.sim_time.as_secs_f64();
        println!(
            "seeds run: {}, failures: {}{}",
            summary.seeds,
            summary.failures.len(),
            if opts.check_determinism {
                " (each seed run twice, determinism checked)"
            } else {
                ""
            }
        );
        println!(
            "simulated {sim:.1}s in {wall:.1}s wall: {:.0} simulated s per wall s; {:.0} per CPU s \
             ({:.1}s CPU), {} client ops",
            sim / wall.max(1e-9),
            sim / summary.cpu_time.as_secs_f64().max(1e-9),
            summary.cpu_time.as_secs_f64(),
            summary.ops
        );
        println!("faults injected: {}", named(&summary.faults).join(" "));
        for (seed, report) in &summary.failures {
            println!();
            println!(
                "seed {seed} FAILED: {}",
                report.failure.as_ref().expect("a failure")
            );
            println!("  world: {}", report.swarm);
            println!("  reproduce: {}", opts.run.repro(*seed, default_workload));
        }
        i32::from(!summary.failures.is_empty())
    }
}
