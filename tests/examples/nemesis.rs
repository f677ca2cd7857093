//! A longer nemesis run (a soak) than CI's, from the command line:
//!
//! ```sh
//! cargo run -p trellis-tests --example nemesis -- --time 600
//! cargo run -p trellis-tests --example nemesis -- --workload bank --seed 42 --time 120
//! cargo run -p trellis-tests --example nemesis -- --faults kill,partition --runs 5
//! ```
//!
//! Flags: `--time SECONDS` per run (default 60), `--seed N` (default: from
//! the clock, printed), `--runs N` (default 1; run k uses seed + k),
//! `--workload list-append|bank|both` (default both), `--clients N`
//! (default 6), `--faults` a comma list of `kill,pause,partition,black-hole,delay,failpoint,fsync-error,disk-full`
//! or `none` (default all but `disk-full`, which needs root: a tmpfs per
//! shard), `--interval MS` and `--hold MS` (default 1000),
//! `--keep` (keep every run's files, not only failed ones). A failed run keeps its history, verdict and logs under
//! `target/nemesis/`; the exit code is 1 if any run failed.
//!
//! `--replicated` runs groups of three replicas instead, every process in a
//! network namespace of its own, under the lab's faults (SIGKILL, SIGSTOP,
//! a replica cut from its group, the coordinator or everyone, one way or
//! both, SIGKILL of the coordinator; `--faults` only says whether there are any), held 2 s unless
//! `--hold` says otherwise. Needs root:
//!
//! ```sh
//! sudo cargo run -p trellis-tests --example nemesis -- --replicated --time 300
//! ```

use std::time::Duration;

use trellis_tests::lab_nemesis::{LAB_HOLD, run_replicated};
use trellis_tests::nemesis::FaultKind;
use trellis_tests::workload::{RunConfig, Workload, run};

struct Args {
    time: Duration,
    seed: u64,
    runs: u64,
    workloads: Vec<Workload>,
    clients: usize,
    kinds: Vec<FaultKind>,
    interval: Duration,
    hold: Option<Duration>,
    keep: bool,
    replicated: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        time: Duration::from_secs(60),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        runs: 1,
        workloads: vec![Workload::ListAppend, Workload::Bank],
        clients: 6,
        kinds: FaultKind::ALL.to_vec(),
        interval: Duration::from_secs(1),
        hold: None,
        keep: false,
        replicated: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--time" => args.time = Duration::from_secs(value()?.parse()?),
            "--seed" => args.seed = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            "--clients" => args.clients = value()?.parse()?,
            "--interval" => args.interval = Duration::from_millis(value()?.parse()?),
            "--hold" => args.hold = Some(Duration::from_millis(value()?.parse()?)),
            "--keep" => args.keep = true,
            "--replicated" => args.replicated = true,
            "--workload" => {
                args.workloads = match value()?.as_str() {
                    "list-append" => vec![Workload::ListAppend],
                    "bank" => vec![Workload::Bank],
                    "both" => vec![Workload::ListAppend, Workload::Bank],
                    other => anyhow::bail!("unknown workload {other:?}"),
                }
            }
            "--faults" => {
                let list = value()?;
                args.kinds = Vec::new();
                for name in list.split(',').filter(|s| !s.is_empty() && *s != "none") {
                    args.kinds.push(match name {
                        "kill" => FaultKind::Kill,
                        "pause" => FaultKind::Pause,
                        "partition" => FaultKind::Partition,
                        "black-hole" => FaultKind::BlackHole,
                        "delay" => FaultKind::Delay,
                        "failpoint" => FaultKind::Failpoint,
                        "disk-full" => FaultKind::DiskFull,
                        "fsync-error" => FaultKind::FsyncError,
                        other => anyhow::bail!("unknown fault {other:?}"),
                    });
                }
            }
            "-h" | "--help" => {
                println!(
                    "nemesis [--time S] [--seed N] [--runs N] [--workload list-append|bank|both] \
                     [--clients N] [--faults kill,pause,partition,black-hole,delay,failpoint,fsync-error,disk-full|none] \
                     [--interval MS] [--hold MS] [--keep] [--replicated]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let mut failed = Vec::new();
    for k in 0..args.runs {
        for &workload in &args.workloads {
            let seed = args.seed.wrapping_add(k);
            let mut config = RunConfig::new(workload, seed, args.time);
            config.clients = args.clients;
            config.kinds = args.kinds.clone();
            config.interval = args.interval;
            let result = if args.replicated {
                config.groups = 2;
                config.hold = args.hold.unwrap_or(LAB_HOLD);
                run_replicated(&config, "soak")?
            } else {
                config.hold = args.hold.unwrap_or(Duration::from_secs(1));
                runtime.block_on(run(&config))?
            };
            let prefix = if args.replicated { "replicated-" } else { "" };
            let name = format!("{prefix}{}-seed{seed}", workload.name());
            if result.passed() {
                println!("PASS {} seed={seed}", workload.name());
                if args.keep {
                    println!("  kept in {}", result.keep(&name)?.display());
                }
            } else {
                let kept = result.keep(&name)?;
                println!(
                    "FAIL {} seed={seed}: kept in {}\nstuck: {:?}, final read: {:?}, unexpected exits: {:?}\n{}",
                    workload.name(),
                    kept.display(),
                    result.stuck,
                    result.final_read_error,
                    result.unexpected_exits,
                    result.report
                );
                failed.push((workload.name(), seed));
            }
        }
    }
    if !failed.is_empty() {
        println!("failed runs: {failed:?}");
        std::process::exit(1);
    }
    Ok(())
}
