//! The deterministic simulator from the command line: replay one seed, or
//! soak through many.
//!
//! ```sh
//! # replay a seed (a failing test prints this command)
//! cargo run -p trellis-tests --bin trellis-sim -- --seed 1234
//! # replay a seed that reshards (a third group, slots moving under faults)
//! cargo run -p trellis-tests --bin trellis-sim -- --seed 20000 --reshard --workload bank
//! # soak: seeds 0, 1, 2, ... until 10 minutes have passed or 5000 ran
//! cargo run --release -p trellis-tests --bin trellis-sim -- --soak --seeds 5000 --minutes 10
//! ```
//!
//! Every seed runs in a process of its own (a soak starts this binary once
//! per seed). A simulation is deterministic given the seed *and a fresh
//! process*: tokio numbers tasks from a process-wide counter and, when a
//! crashed host's runtime is dropped, drops its tasks — and so closes
//! their sockets — in an order that depends on those numbers. A second run
//! in the same process would close the same sockets in another order, and
//! the network would diverge from there. One seed per process makes a
//! soak's failing seed replay exactly as the soak saw it.
//!
//! Exit code: 0 when every seed passed, 1 when one failed (each failing
//! seed is printed with its replay command), 2 on bad flags or when the
//! simulator itself could not run.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_tests::sim::{SimConfig, replay_command, run};
use trellis_tests::workload::Workload;

/// Width of the soak's progress bar, in characters.
const PROGRESS_WIDTH: usize = 30;
/// How often the soak redraws its progress bar.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// The line a `--seed` run ends with, parsed by a soak and by the tests.
pub const RESULT_PREFIX: &str = "result:";

const HELP: &str = "\
trellis-sim: a whole Trellis cluster (coordinator, 2 shard groups of 3
replicas, catalog, clients) in one process under turmoil, driven by a seed,
under crashes, partitions, one-way cuts, message holds and disk faults; the
history is checked for strict serializability.

usage:
  trellis-sim --seed N [options]      run (replay) one seed
  trellis-sim --soak [options]        run many seeds, one process each

--seed N          run seed N; prints the fault log, counts and verdict and
                  writes the history to OUT/seed-N.history
--soak            run seeds START, START+1, ... each in its own process
--start N         first seed of a soak (default 0)
--seeds N         seeds in a soak (default 1000)
--minutes M       a soak stops starting seeds after M minutes (default 10)
--jobs J          seeds run at once in a soak (default: number of cores)
--workload W      list-append (default) or bank
--time S          simulated seconds of workload and faults (default 10)
--no-faults       no nemesis
--reshard         one more group, added empty; the coordinator runs the
                  reshard driver and an operator rebalances onto the new
                  group, then moves random slots between random groups
                  and drains group 2, under the faults; every job must
                  finish, some slot move, and group 2 be removed at the
                  end (also with --soak)
--out DIR         where histories go (default target/sim)
--quiet           with --seed: print only failures and the result line
--trace FILTER    with --seed: log to stderr, stamped with simulated time
                  (FILTER as RUST_LOG, e.g. info or trellis_shard=debug)
";

#[derive(Clone)]
struct Args {
    seed: Option<u64>,
    soak: bool,
    start: u64,
    seeds: u64,
    minutes: u64,
    jobs: usize,
    workload: Workload,
    time: Duration,
    faults: bool,
    reshard: bool,
    out: PathBuf,
    quiet: bool,
    trace: Option<String>,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        seed: None,
        soak: false,
        start: 0,
        seeds: 1000,
        minutes: 10,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        workload: Workload::ListAppend,
        time: Duration::from_secs(10),
        faults: true,
        reshard: false,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sim"),
        quiet: false,
        trace: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value (try --help)"))
        };
        fn number<T: std::str::FromStr>(flag: &str, v: String) -> anyhow::Result<T> {
            v.parse()
                .map_err(|_| anyhow::anyhow!("{flag} takes a number, not {v:?}"))
        }
        match flag.as_str() {
            "--seed" => args.seed = Some(number(&flag, value()?)?),
            "--soak" => args.soak = true,
            "--start" => args.start = number(&flag, value()?)?,
            "--seeds" => args.seeds = number(&flag, value()?)?,
            "--minutes" => args.minutes = number(&flag, value()?)?,
            "--jobs" => args.jobs = number::<usize>(&flag, value()?)?.max(1),
            "--time" => args.time = Duration::from_secs(number(&flag, value()?)?),
            "--no-faults" => args.faults = false,
            "--reshard" => args.reshard = true,
            "--quiet" => args.quiet = true,
            "--trace" => args.trace = Some(value()?),
            "--out" => args.out = PathBuf::from(value()?),
            "--workload" => {
                args.workload = match value()?.as_str() {
                    "list-append" => Workload::ListAppend,
                    "bank" => Workload::Bank,
                    other => anyhow::bail!("unknown workload {other:?}: list-append or bank"),
                }
            }
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other:?} (try --help)"),
        }
    }
    match (args.seed, args.soak) {
        (None, false) => {
            anyhow::bail!("give --seed N to run one seed, or --soak to run many (try --help)")
        }
        (Some(_), true) => anyhow::bail!("--seed and --soak exclude each other"),
        _ => Ok(args),
    }
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("trellis-sim: {err:#}");
            std::process::exit(2);
        }
    };
    let code = match args.seed {
        Some(seed) => one_seed(&args, seed),
        None => soak(args),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("trellis-sim: {err:#}");
            std::process::exit(2);
        }
    }
}

fn config(args: &Args, seed: u64) -> SimConfig {
    SimConfig {
        workload: args.workload,
        time: args.time,
        faults: args.faults,
        reshard: args.reshard,
        ..SimConfig::new(seed)
    }
}

/// Runs one seed in this process. Ends with the result line:
/// `result: seed=N passed=true|false fingerprint=HEX ok=N torn_tails=N
/// disk_restarts=N ... slots_moved=N feed_events=N feed_watches=N
/// feed_gaps=N`.
fn one_seed(args: &Args, seed: u64) -> anyhow::Result<i32> {
    if let Some(filter) = &args.trace {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
            .with_timer(SimulatedTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let started = Instant::now();
    let result = run(&config(args, seed))?;
    std::fs::create_dir_all(&args.out)?;
    let history = args.out.join(format!("seed-{seed}.history"));
    std::fs::write(&history, &result.history)?;
    let passed = result.passed();
    if !args.quiet {
        println!("faults:");
        for fault in &result.faults {
            println!("  {fault}");
        }
        println!(
            "seed {seed}: ok={} fail={} info={}, {:?} simulated in {:.1?}; \
             torn log tails recovered: {}, restarts after disk failures: {} ({} full); \
             catch-up: {} records from logs on disk, {} snapshots installed; \
             reads, writes and dials held by one-way cuts: {}; slots moved: {}; \
             change feed: {} events, {} transactions, {} watches, {} gaps",
            result.counts[0],
            result.counts[1],
            result.counts[2],
            result.sim_time,
            started.elapsed(),
            result.torn_tails,
            result.disk_restarts,
            result.full_disk_restarts,
            result.log_catch_up_records,
            result.snapshot_installs,
            result.one_way_holds,
            result.slots_moved,
            result.feed.events,
            result.feed.txns_seen,
            result.feed_watches,
            result.feed_gaps.len(),
        );
        if !result.reasons.is_empty() {
            print!("why operations did not commit:\n{}", result.reasons);
        }
        for why in &result.feed_breaks {
            println!("  feed: {why}");
        }
        println!("history: {}", history.display());
        if passed {
            println!("{}", result.report);
        }
    }
    if !passed {
        println!("{}", result.explain());
    }
    println!(
        "{RESULT_PREFIX} seed={seed} passed={passed} fingerprint={:016x} ok={} \
         torn_tails={} disk_restarts={} log_catch_up={} snapshot_installs={} one_way_holds={} \
         slots_moved={} feed_events={} feed_watches={} feed_gaps={}",
        result.fingerprint,
        result.counts[0],
        result.torn_tails,
        result.disk_restarts,
        result.log_catch_up_records,
        result.snapshot_installs,
        result.one_way_holds,
        result.slots_moved,
        result.feed.events,
        result.feed_watches,
        result.feed_gaps.len()
    );
    Ok(if passed { 0 } else { 1 })
}

/// Log timestamps in simulated time (the host's name is in the span).
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:>10.3?}", turmoil::sim_elapsed().unwrap_or_default())
    }
}

/// Runs seeds one process each, `--jobs` at a time, with a progress bar.
fn soak(args: Args) -> anyhow::Result<i32> {
    let exe = std::env::current_exe()?;
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let next = Arc::new(AtomicU64::new(args.start));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let out_of_time = Arc::new(AtomicBool::new(false));
    let totals: Arc<[AtomicU64; 6]> = Arc::default();
    let end = args.start + args.seeds;
    let workers: Vec<_> = (0..args.jobs)
        .map(|_| {
            let (next, done, failed, out_of_time, args, exe) = (
                next.clone(),
                done.clone(),
                failed.clone(),
                out_of_time.clone(),
                args.clone(),
                exe.clone(),
            );
            let totals = totals.clone();
            std::thread::spawn(move || {
                loop {
                    if Instant::now() >= deadline {
                        out_of_time.store(true, Ordering::Relaxed);
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    if let Some(why) = run_child(&exe, &args, seed, &totals) {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((seed, why));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let total = args.seeds;
    // A terminal gets a bar redrawn in place; a log (CI) a line per tenth.
    let terminal = std::io::stderr().is_terminal();
    let mut reported = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(PROGRESS_EVERY);
        let n = done.load(Ordering::Relaxed);
        let bad = failed.lock().unwrap_or_else(|p| p.into_inner()).len();
        let status = format!(
            "{n}/{total} seeds, {bad} failed, {:.0?} elapsed",
            started.elapsed()
        );
        if terminal {
            let filled = (n as usize * PROGRESS_WIDTH / total.max(1) as usize).min(PROGRESS_WIDTH);
            eprint!(
                "\r[{}{}] {status} ",
                "#".repeat(filled),
                "-".repeat(PROGRESS_WIDTH - filled),
            );
            let _ = std::io::stderr().flush();
        } else if n * 10 / total.max(1) > reported {
            reported = n * 10 / total.max(1);
            eprintln!("trellis-sim: {status}");
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
    if terminal {
        eprintln!();
    }
    let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
    failed.sort_by_key(|(seed, _)| *seed);
    let n = done.load(Ordering::Relaxed);
    if out_of_time.load(Ordering::Relaxed) {
        println!("stopped by the {}-minute bound", args.minutes);
    }
    for (_, why) in failed.iter() {
        println!("{why}");
    }
    println!("{n} seeds run, {} failed", failed.len());
    let [torn, restarts, from_log, snapshots, held, moved] = &*totals;
    println!(
        "exercised in passing seeds: {} torn log tails cut, {} restarts after disk failures, \
         {} records caught up from logs on disk, {} snapshots installed, \
         {} reads, writes and dials held by one-way cuts, {} slots moved",
        torn.load(Ordering::Relaxed),
        restarts.load(Ordering::Relaxed),
        from_log.load(Ordering::Relaxed),
        snapshots.load(Ordering::Relaxed),
        held.load(Ordering::Relaxed),
        moved.load(Ordering::Relaxed)
    );
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// The number after `key` in the result line of a seed's output (0 if
/// absent).
fn result_field(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.starts_with("result:"))
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix(key))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs one seed in a child process; `None` when it passed, else why not.
/// Adds its torn tails, disk restarts, records caught up from logs on
/// disk and snapshots installed to the soak's totals.
fn run_child(
    exe: &std::path::Path,
    args: &Args,
    seed: u64,
    totals: &[AtomicU64; 6],
) -> Option<String> {
    let mut command = Command::new(exe);
    command
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--quiet")
        .arg("--time")
        .arg(args.time.as_secs().to_string())
        .arg("--workload")
        .arg(match args.workload {
            Workload::ListAppend => "list-append",
            Workload::Bank => "bank",
        })
        .arg("--out")
        .arg(&args.out)
        .stdin(Stdio::null());
    if !args.faults {
        command.arg("--no-faults");
    }
    if args.reshard {
        command.arg("--reshard");
    }
    match command.output() {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            for (key, total) in [
                ("torn_tails=", &totals[0]),
                ("disk_restarts=", &totals[1]),
                ("log_catch_up=", &totals[2]),
                ("snapshot_installs=", &totals[3]),
                ("one_way_holds=", &totals[4]),
                ("slots_moved=", &totals[5]),
            ] {
                total.fetch_add(result_field(&stdout, key), Ordering::Relaxed);
            }
            None
        }
        Ok(out) => Some(format!(
            "seed {seed} failed ({}):\n{}{}\nreplay: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            replay_command(&config(args, seed))
        )),
        Err(err) => Some(format!(
            "seed {seed}: could not start {}: {err}",
            exe.display()
        )),
    }
}
