//! The k6-style load tester behind `trellis load`.
//!
//! A run drives one *target* (Trellis, etcd, PostgreSQL or Redis) with one
//! *workload* under one *execution model*, measures every iteration, and
//! ends with a k6-like summary, thresholds (exit code 99 when one is
//! crossed) and correctness checks (the bank total, the list-append
//! checker).
//!
//! # Layout
//!
//! - [`config`]: the flags and their checking into a [`config::Config`].
//! - [`schedule`]: when work is due — VUs over time (closed model) and
//!   arrival times (open model); pure functions of the elapsed time.
//! - [`workload`]: what one iteration asks for ([`workload::TxnSpec`]:
//!   keys to read, and the writes as a function of what was read).
//! - [`target`]: the [`target::Target`] trait and its four systems.
//! - [`runner`]: VUs, retries, histories, progress line, end checks.
//! - [`metrics`]: HdrHistogram latencies, counters, per-second timeline.
//! - [`threshold`]: parsing and evaluating `--threshold`.
//! - [`summary`]: the end-of-test summary (text and JSON).
//! - [`output`]: `--out json=FILE` (k6's Metric/Point lines).
//! - [`report`]: the self-contained HTML report.
//!
//! # What this crate never does
//!
//! - It never retries inside a target: every target runs one attempt, and
//!   the runner retries conflicts the same way for all of them.
//! - It never measures from when a late arrival actually started: in the
//!   open model latency starts at the scheduled time.
//! - It never asserts a wall-clock time in a test: schedulers take the time
//!   as an argument.
//! - It never calls a check passed that it could not run.

pub mod config;
pub mod metrics;
pub mod output;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod summary;
pub mod target;
pub mod threshold;
pub mod workload;

use std::process::ExitCode;

pub use config::Args;

/// Exit code when the run could not be made (cannot connect, cannot write
/// an output).
pub const EXIT_ERROR: u8 = 1;
/// Exit code for bad flags (as clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a correctness check failed (and no threshold was
/// crossed).
pub const EXIT_CHECK_FAILED: u8 = 98;
/// Exit code when a threshold was crossed, as in k6.
pub const EXIT_THRESHOLDS_CROSSED: u8 = 99;

/// Examples and reference shown after `trellis load --help`.
pub const HELP_EXAMPLES: &str = "\
Examples:
  trellis load --vus 64 --duration 30s                        # w1-rmw against 127.0.0.1:50051
  trellis load --addr 10.0.0.5:50051 --vus 64 --duration 30s  # another Trellis coordinator
  trellis load --workload w2-transfer --vus 64 --duration 30s --zipf 0.99
  trellis load --iterations 10000 --vus 16                    # 10,000 iterations shared by 16 VUs
  trellis load --stage 10s:50,30s:50,10s:0                    # ramp VUs up, hold, down
  trellis load --rate 2000 --duration 30s --max-vus 500       # open model: 2000 arrivals/s
  trellis load --rate 100 --stage 30s:3000,30s:3000           # ramping arrival rate
  trellis load --threshold 'txn_duration:p(99)<50ms' --threshold 'txn_failed:rate<0.01' --duration 30s
  trellis load --workload append --duration 20s --history h.txt   # checked by the list-append checker
  trellis load --workload bank --vus 16 --duration 20s         # checks that the total is conserved
  trellis load --addr etcd://127.0.0.1:2379,127.0.0.1:22379 --vus 64 --duration 30s
  trellis load --addr postgres://postgres@127.0.0.1:5432/test --vus 64 --duration 30s
  trellis load --addr postgres://postgres@127.0.0.1:5432/test --pg-mode occ --vus 64 --duration 30s
  trellis load --addr redis://127.0.0.1:6379 --vus 64 --duration 30s   # WAIT 1: needs a replica
  trellis load --duration 30s --out json=points.jsonl --summary-export summary.json --report report.html

Workloads (keys PREFIX:0000000042, PREFIX = --key-prefix or the workload's name):
  w1-rmw       read a counter, write it + 1, committed only if unchanged
  w2-transfer  move 1-5 between two accounts (two keys; on Trellis mostly a 2PC)
  w3-read      one strong single-key read
  ycsb-a|b|c|f YCSB mixes: 50/50 read/update, 95/5, read only, 50/50 read/read-modify-write
  append       Elle list-append: 1-4 micro-ops, append(k, unique v) or read(k); checked at the end
  bank         transfers between 8 accounts and full reads; the total must be conserved

Thresholds: METRIC[{TAG:VALUE}]:AGG OP BOUND, AGG one of avg min med max p(N) (txn_duration,
  in ms or with a unit: 50ms, 1s, 800us), rate (txn_failed, checks; 0.01 or 1%), count or rate
  (counters: txn_conflicts, txn_retries, txn_outcome_unknown, iterations, dropped_iterations),
  value/min/max (vus). Tags: path:1pc|2pc|read|write. OP one of < <= > >= == !=.

Metrics: txn_duration is each iteration from its start (open model: its scheduled start) to
  its outcome, retries included; txn_failed counts iterations that did not commit (including
  outcome unknown); txn_conflicts counts conflicted attempts; txn_retries attempts after the first.
  On Trellis, path 1pc/2pc is predicted from the written keys' groups in the cluster's slot map.

Targets: --addr HOST:PORT is a Trellis coordinator, as for every trellis command; a URL's
  scheme picks another system (trellis://, etcd://, postgres://, redis://). --target is the same flag.
  PostgreSQL: --pg-mode serializable (default) or occ (READ COMMITTED, writes conditional on the
  version read). Redis: WATCH/MULTI/EXEC, then WAIT 1 (a commit no replica acknowledged fails;
  --durability async sends no WAIT).

Exit codes: 0 all passed, 1 the run could not be made, 2 bad flags, 98 a check failed,
  99 a threshold was crossed.";

/// Runs `trellis load` with `args`: prints the summary on standard output
/// and returns the exit code.
pub fn main(args: Args) -> ExitCode {
    let mut config = match config::Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            // As clap says it for the flags it checks itself.
            eprintln!("error: {e}\n\nFor more information, try '--help'.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    config.command_line = summary::shell_line(std::env::args());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let report = config.report.clone();
    let quiet = config.quiet;
    if !quiet {
        eprintln!(
            "trellis load: {} against {}",
            config.workload.kind.name(),
            config.target_url
        );
    }
    let result = runtime.block_on(async move {
        let summary = runner::run(config.clone()).await?;
        Ok::<_, anyhow::Error>(summary)
    });
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    print!("{}", summary.render());
    if let Some(path) = report {
        let page = report::html("trellis load", &summary, &summary.timeline);
        if let Err(e) = std::fs::write(&path, page) {
            eprintln!("error: writing --report {}: {e}", path.display());
            return ExitCode::from(EXIT_ERROR);
        }
        // Said even with --quiet: it is where the result is.
        eprintln!("report written to {}", path.display());
    }
    if summary.thresholds_crossed() {
        for t in summary.thresholds.iter().filter(|t| !t.passed) {
            eprintln!(
                "threshold crossed: {} '{}' ({})",
                t.threshold.label(),
                t.threshold.expr,
                t.observed
            );
        }
        return ExitCode::from(EXIT_THRESHOLDS_CROSSED);
    }
    if summary.checks_failed() {
        for c in summary.checks.iter().filter(|c| !c.passed) {
            eprintln!("check failed: {}", c.name);
        }
        return ExitCode::from(EXIT_CHECK_FAILED);
    }
    ExitCode::SUCCESS
}
