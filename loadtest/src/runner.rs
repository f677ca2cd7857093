//! Running a test: VUs, the two execution models, retries, histories, the
//! progress line, and the end-of-test checks.
//!
//! - **Closed model** (`--vus`, `--iterations`, `--stage`): each VU runs
//!   one iteration after another. A controller samples the
//!   [`VuSchedule`] every [`CONTROL_TICK`] and publishes how many VUs may
//!   run; a VU above that waits (ramping down lets a VU finish its
//!   iteration first). Latency runs from the iteration's start.
//! - **Open model** (`--rate`): arrivals come from the
//!   [`ArrivalSchedule`] whether or not earlier ones finished. Each takes a
//!   free VU (at most `--max-vus`); one that finds none is counted in
//!   `dropped_iterations` and not run. Latency runs from the arrival's
//!   *scheduled* time, so a target that falls behind is charged for the
//!   wait (no coordinated omission).
//!
//! Every iteration retries its transaction on conflict, identically for
//! every target: at most `--attempts` attempts with the client library's
//! backoff.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use trellis_checker::bank::{BankMop, BankOptions};
use trellis_checker::list_append::Model as CheckModel;
use trellis_checker::{Mop, Op as HistOp, OpKind, Verdict};

use crate::config::{Config, Model};
use crate::metrics::{Outcome, Recorder, Sample};
use crate::output::{Point, Points};
use crate::schedule::{ArrivalSchedule, VuSchedule};
use crate::summary::{Check, MetricRow, MetricValue, Summary};
use crate::target::{self, Target, TxnError, Values};
use crate::threshold::{self, Agg};
use crate::workload::{HistoryMops, TxnSpec, Workload, bank_sum};

/// How often the closed model's controller re-reads the VU schedule.
pub const CONTROL_TICK: Duration = Duration::from_millis(20);
/// How often the progress line is redrawn (and idle seconds are closed).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the progress loop wakes to see whether the run has stopped, so
/// the end of a run is not held up by a whole [`PROGRESS_INTERVAL`].
pub const PROGRESS_STOP_POLL: Duration = Duration::from_millis(200);
const _: () = assert!(PROGRESS_STOP_POLL.as_millis() <= PROGRESS_INTERVAL.as_millis());
/// How long iterations still running at the end may take to finish before
/// they are abandoned (k6's gracefulStop).
pub const GRACEFUL_STOP: Duration = Duration::from_secs(30);
/// Longest run of `--iterations` without `--duration`.
pub const ITERATIONS_DURATION_MAX: Duration = Duration::from_secs(600);
/// Most history operations kept in memory; past it new transactions are
/// no longer recorded (the ones in flight still complete) and the checker
/// sees a prefix of the run.
pub const HISTORY_OPS_MAX: usize = 2_000_000;
/// Most distinct error messages kept for the summary.
pub const ERROR_KINDS_MAX: usize = 16;
/// Attempts of the end-of-run bank read.
const FINAL_READ_ATTEMPTS: u32 = 20;

/// The history of a run: list-append or bank operations.
#[derive(Default)]
struct History {
    append: Mutex<Vec<HistOp<Mop>>>,
    bank: Mutex<Vec<HistOp<BankMop>>>,
    ops: AtomicUsize,
    truncated: AtomicBool,
}

impl History {
    fn push(&self, process: u64, kind: OpKind, time_ns: u64, mops: HistoryMops) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        match mops {
            HistoryMops::Append(txn) => lock(&self.append).push(HistOp {
                process,
                kind,
                txn,
                time_ns,
            }),
            HistoryMops::Bank(txn) => lock(&self.bank).push(HistOp {
                process,
                kind,
                txn,
                time_ns,
            }),
        }
    }

    /// Records an invocation, unless the history is full.
    fn invoke(&self, process: u64, time_ns: u64, mops: Option<HistoryMops>) -> bool {
        let Some(mops) = mops else { return false };
        if self.ops.load(Ordering::Relaxed) >= HISTORY_OPS_MAX {
            self.truncated.store(true, Ordering::Relaxed);
            return false;
        }
        self.push(process, OpKind::Invoke, time_ns, mops);
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A VU's own state.
struct Vu {
    rng: StdRng,
    /// Its history process; a new one after an unknown outcome (the old
    /// one may still be "running" that transaction).
    process: u64,
}

/// What every VU shares.
struct Ctx {
    target: Arc<dyn Target>,
    workload: Workload,
    recorder: Recorder,
    history: History,
    points: Option<Points>,
    next_conn: AtomicUsize,
    attempts_max: u32,
    start: Instant,
    start_wall: SystemTime,
    /// Processes are numbered `vu + k × stride`.
    process_stride: u64,
    errors: Mutex<BTreeMap<String, u64>>,
    seed: u64,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn note_error(&self, err: &TxnError) {
        // Keys and ids differ per error; digits are masked so one kind of
        // error is counted once.
        let text: String = err
            .to_string()
            .chars()
            .take(160)
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let mut errors = lock(&self.errors);
        if let Some(n) = errors.get_mut(&text) {
            *n += 1;
        } else if errors.len() < ERROR_KINDS_MAX {
            errors.insert(text, 1);
        }
    }

    async fn iteration(&self, vu: &mut Vu, started: Instant) {
        let mut spec = self.workload.next(&mut vu.rng);
        let path = self.target.path(&spec);
        let mut conflicts = 0u32;
        let mut attempt = 1u32;
        let outcome = loop {
            let recorded = self
                .history
                .invoke(vu.process, self.now_ns(), spec.history(None));
            let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
            let result = self.target.execute(conn, &spec).await;
            let (kind, outcome) = match &result {
                Ok(_) => (OpKind::Ok, Some(Outcome::Committed)),
                Err(TxnError::Conflict(_)) => (OpKind::Fail, None),
                Err(TxnError::Failed(_)) => (OpKind::Fail, Some(Outcome::Failed)),
                Err(TxnError::Unknown(_)) => (OpKind::Info, Some(Outcome::Unknown)),
            };
            if recorded {
                let mops = match &result {
                    Ok(values) => spec.history(Some(values)),
                    Err(_) => spec.history(None),
                };
                if let Some(mops) = mops {
                    self.history.push(vu.process, kind, self.now_ns(), mops);
                }
            }
            if let Err(err) = &result {
                self.note_error(err);
            }
            if kind == OpKind::Info {
                vu.process += self.process_stride;
            }
            match outcome {
                Some(outcome) => break outcome,
                None => {
                    conflicts += 1;
                    if attempt >= self.attempts_max {
                        break Outcome::Failed;
                    }
                    tokio::time::sleep(trellis_client::backoff(attempt)).await;
                    attempt += 1;
                    self.workload.refresh(&mut spec);
                }
            }
        };
        let latency = started.elapsed();
        self.recorder.record(Sample {
            latency,
            path,
            outcome,
            conflicts,
            retries: attempt - 1,
        });
        if let Some(points) = &self.points {
            let time = self.start_wall + self.start.elapsed();
            let outcome_tag = match outcome {
                Outcome::Committed => "committed",
                Outcome::Failed => "failed",
                Outcome::Unknown => "unknown",
            };
            let tags = vec![
                ("workload", self.workload.kind.name().to_string()),
                ("path", path.tag().to_string()),
                ("outcome", outcome_tag.to_string()),
            ];
            let point = |metric, value| Point {
                metric,
                time,
                value,
                tags: tags.clone(),
            };
            points
                .send(point("txn_duration", latency.as_secs_f64() * 1000.0))
                .await;
            points.send(point("iterations", 1.0)).await;
            points
                .send(point(
                    "txn_failed",
                    if outcome == Outcome::Committed {
                        0.0
                    } else {
                        1.0
                    },
                ))
                .await;
            if conflicts > 0 {
                points
                    .send(point("txn_conflicts", f64::from(conflicts)))
                    .await;
            }
            if attempt > 1 {
                points
                    .send(point("txn_retries", f64::from(attempt - 1)))
                    .await;
            }
        }
    }

    /// Runs `spec` until it commits (conflicts retried), for setup and the
    /// final read.
    async fn run_to_commit(&self, spec: &TxnSpec) -> Result<Values, TxnError> {
        let mut attempt = 1;
        loop {
            match self.target.execute(0, spec).await {
                Err(TxnError::Conflict(_)) if attempt < FINAL_READ_ATTEMPTS => {
                    tokio::time::sleep(trellis_client::backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Runs the test `config` describes and returns its summary (thresholds
/// evaluated, checks run, outputs written).
pub async fn run(config: Config) -> anyhow::Result<Summary> {
    let target = target::connect(&config.target_url, &config.target_options).await?;
    run_with(config, target).await
}

/// [`run`] against a target already connected.
pub async fn run_with(config: Config, target: Arc<dyn Target>) -> anyhow::Result<Summary> {
    let workload = config.workload.build();
    let started = std::time::SystemTime::now();
    let start = Instant::now();
    let points = match &config.out_json {
        Some(path) => Some(crate::output::start(path)?),
        None => None,
    };
    let (max_vus, model_text) = match &config.model {
        Model::Closed {
            schedule,
            iterations,
            max_duration,
        } => (
            schedule.peak(),
            match iterations {
                Some(n) => format!(
                    "closed: {n} iterations shared by {} VUs (at most {})",
                    schedule.peak(),
                    crate::summary::format_elapsed(*max_duration)
                ),
                None => format!(
                    "closed: up to {} VUs over {}",
                    schedule.peak(),
                    crate::summary::format_elapsed(schedule.ramp.total())
                ),
            },
        ),
        Model::Open { ramp, max_vus } => (
            *max_vus,
            format!(
                "open: arrival rate up to {}/s over {}, at most {max_vus} VUs",
                ramp.peak(),
                crate::summary::format_elapsed(ramp.total())
            ),
        ),
    };
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        workload,
        recorder: Recorder::new(start),
        history: History::default(),
        points: points.as_ref().map(|(p, _)| p.clone()),
        next_conn: AtomicUsize::new(0),
        attempts_max: config.attempts_max,
        start,
        start_wall: SystemTime::now(),
        process_stride: max_vus.max(1),
        errors: Mutex::new(BTreeMap::new()),
        seed: config.seed,
    });
    if let Some(setup) = ctx.workload.setup() {
        ctx.run_to_commit(&setup)
            .await
            .map_err(|e| anyhow::anyhow!("writing the opening balances: {e}"))?;
    }
    let show_progress = !config.quiet && std::io::stderr().is_terminal();
    let progress_stop = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress_loop(
        ctx.clone(),
        progress_stop.clone(),
        show_progress,
        max_vus,
    ));
    let run_start = Instant::now();
    match &config.model {
        Model::Closed {
            schedule,
            iterations,
            max_duration,
        } => run_closed(&ctx, schedule, *iterations, *max_duration).await,
        Model::Open { ramp, max_vus } => {
            run_open(&ctx, ArrivalSchedule::new(ramp.clone()), *max_vus).await
        }
    }
    let elapsed = run_start.elapsed();
    progress_stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    if show_progress {
        eprintln!();
    }
    ctx.recorder.set_vus(0, max_vus);

    let checks = end_checks(&ctx, &config).await?;
    let percentiles: Vec<f64> = config
        .thresholds
        .iter()
        .filter_map(|t| match t.agg {
            Agg::P(p) if ![50.0, 90.0, 95.0, 99.0, 100.0].contains(&p) => Some(p),
            _ => None,
        })
        .collect();
    let mut metrics = ctx.recorder.rows(elapsed, &percentiles);
    if !checks.is_empty() {
        let passed = checks.iter().filter(|c| c.passed).count() as u64;
        let at = metrics
            .iter()
            .position(|m| m.name == "iterations")
            .unwrap_or(metrics.len());
        metrics.insert(
            at,
            MetricRow::new(
                "checks",
                None,
                MetricValue::Rate {
                    trues: passed,
                    total: checks.len() as u64,
                },
            ),
        );
    }
    let mut info = vec![
        ("target".to_string(), target.describe()),
        (
            "workload".to_string(),
            format!(
                "{} over {} keys ({}, values {} B, prefix {})",
                ctx.workload.kind.name(),
                ctx.workload.keys,
                match config.workload.zipf {
                    Some(theta) => format!("zipf {theta}"),
                    None => "uniform".into(),
                },
                ctx.workload.value_size,
                ctx.workload.prefix
            ),
        ),
        ("model".to_string(), model_text),
    ];
    for (i, (text, count)) in lock(&ctx.errors).iter().enumerate() {
        let label = if i == 0 { "errors" } else { "" };
        info.push((label.to_string(), format!("{count} × {text}")));
    }
    let mut summary = Summary {
        info,
        elapsed,
        metrics,
        thresholds: Vec::new(),
        checks,
        timeline: ctx.recorder.timeline(),
        started: Some(started),
        command: config.command_line.clone(),
    };
    summary.thresholds = config
        .thresholds
        .iter()
        .map(|t| threshold::evaluate(t, &summary))
        .collect();

    if let Some((p, handle)) = points {
        p.finish().await;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the --out writer panicked"))??;
    }
    if let Some(path) = &config.summary_export {
        std::fs::write(path, format!("{:#}\n", summary.to_json()))
            .map_err(|e| anyhow::anyhow!("writing --summary-export {}: {e}", path.display()))?;
    }
    Ok(summary)
}

/// The progress line, and closing idle seconds of the timeline.
async fn progress_loop(ctx: Arc<Ctx>, stop: Arc<AtomicBool>, show: bool, max_vus: u64) {
    let mut last = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(PROGRESS_STOP_POLL).await;
        if last.0.elapsed() < PROGRESS_INTERVAL && !stop.load(Ordering::Relaxed) {
            continue;
        }
        ctx.recorder.tick();
        let (iterations, failed, dropped, vus) = ctx.recorder.progress();
        let rate = (iterations - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), iterations);
        if let Some(points) = &ctx.points {
            points
                .send(Point {
                    metric: "vus",
                    time: ctx.start_wall + ctx.start.elapsed(),
                    value: vus as f64,
                    tags: vec![("workload", ctx.workload.kind.name().to_string())],
                })
                .await;
        }
        if show {
            eprint!(
                "\r\x1b[2Krunning ({}), {vus:>3}/{max_vus} VUs, {} complete and {failed} failed iterations, {dropped} dropped, {rate:.1} it/s",
                crate::summary::format_elapsed(ctx.start.elapsed()),
                iterations - failed,
            );
        }
    }
}

async fn run_closed(
    ctx: &Arc<Ctx>,
    schedule: &VuSchedule,
    iterations: Option<u64>,
    max_duration: Duration,
) {
    let start = Instant::now();
    let peak = schedule.peak();
    // (VUs allowed to run, stopped)
    let (tx, rx) = watch::channel((schedule.vus_at(Duration::ZERO), false));
    let tickets = iterations.map(|n| Arc::new(AtomicU64::new(n)));
    let mut vus = Vec::with_capacity(peak as usize);
    for id in 0..peak {
        let ctx = ctx.clone();
        let mut rx = rx.clone();
        let tickets = tickets.clone();
        vus.push(tokio::spawn(async move {
            let mut vu = Vu {
                rng: StdRng::seed_from_u64(ctx.workload_seed(id)),
                process: id,
            };
            loop {
                let stopped = match rx
                    .wait_for(|(allowed, stopped)| *stopped || id < *allowed)
                    .await
                {
                    Ok(state) => state.1,
                    Err(_) => true,
                };
                if stopped {
                    break;
                }
                if let Some(t) = &tickets
                    && t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                ctx.iteration(&mut vu, Instant::now()).await;
            }
        }));
    }
    let end = match iterations {
        Some(_) => max_duration,
        None => schedule.ramp.total(),
    };
    loop {
        let t = start.elapsed();
        let allowed = schedule.vus_at(t).min(peak);
        tx.send_if_modified(|state| {
            let changed = state.0 != allowed;
            state.0 = allowed;
            changed
        });
        ctx.recorder.set_vus(allowed, peak);
        let tickets_done = tickets
            .as_ref()
            .is_some_and(|t| t.load(Ordering::Relaxed) == 0);
        if t >= end || tickets_done || vus.iter().all(|h| h.is_finished()) {
            break;
        }
        tokio::time::sleep(CONTROL_TICK).await;
    }
    tx.send_modify(|state| state.1 = true);
    finish(vus).await;
}

async fn run_open(ctx: &Arc<Ctx>, mut schedule: ArrivalSchedule, max_vus: u64) {
    let start = tokio::time::Instant::now();
    let free: Arc<Mutex<Vec<Vu>>> = Arc::new(Mutex::new(
        (0..max_vus)
            .rev()
            .map(|id| Vu {
                rng: StdRng::seed_from_u64(ctx.workload_seed(id)),
                process: id,
            })
            .collect(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(at) = schedule.next_arrival() {
        let due = start + at;
        tokio::time::sleep_until(due).await;
        while tasks.try_join_next().is_some() {}
        let vu = lock(&free).pop();
        match vu {
            None => {
                ctx.recorder.dropped();
                if let Some(points) = &ctx.points {
                    points
                        .send(Point {
                            metric: "dropped_iterations",
                            time: ctx.start_wall + ctx.start.elapsed(),
                            value: 1.0,
                            tags: vec![("workload", ctx.workload.kind.name().to_string())],
                        })
                        .await;
                }
            }
            Some(mut vu) => {
                let (ctx, free) = (ctx.clone(), free.clone());
                tasks.spawn(async move {
                    ctx.iteration(&mut vu, due.into_std()).await;
                    lock(&free).push(vu);
                });
            }
        }
        let busy = max_vus - lock(&free).len() as u64;
        ctx.recorder.set_vus(busy, max_vus);
    }
    let deadline = tokio::time::Instant::now() + GRACEFUL_STOP;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
}

/// Waits up to [`GRACEFUL_STOP`] for VUs to finish their iteration, then
/// abandons the rest.
async fn finish(vus: Vec<tokio::task::JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + GRACEFUL_STOP;
    for handle in vus {
        let abort = handle.abort_handle();
        if tokio::time::timeout_at(deadline, handle).await.is_err() {
            abort.abort();
        }
    }
}

impl Ctx {
    /// The random stream of VU `vu`: a function of `--seed` and the VU.
    fn workload_seed(&self, vu: u64) -> u64 {
        self.seed ^ vu.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// The end-of-test checks: the bank's final total and history checks.
async fn end_checks(ctx: &Ctx, config: &Config) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let truncated = ctx.history.truncated.load(Ordering::Relaxed);
    let note = if truncated {
        format!(
            " (history capped at HISTORY_OPS_MAX = {HISTORY_OPS_MAX} operations: the checker saw a prefix)"
        )
    } else {
        String::new()
    };
    match ctx.workload.kind {
        crate::workload::Kind::Bank => {
            let total = ctx.workload.bank_total();
            let read = ctx.workload.bank_read();
            let check = match ctx.run_to_commit(&read).await {
                Ok(values) => match bank_sum(&values) {
                    Ok(sum) => Check {
                        name: "bank: the final read sums to the opening total".into(),
                        passed: sum == total,
                        detail: format!(
                            "{sum} over {} accounts, expected {total}",
                            ctx.workload.keys
                        ),
                    },
                    Err(e) => Check {
                        name: "bank: the final read sums to the opening total".into(),
                        passed: false,
                        detail: e,
                    },
                },
                Err(e) => Check {
                    name: "bank: the final read sums to the opening total".into(),
                    passed: false,
                    detail: format!("the final read failed: {e}"),
                },
            };
            checks.push(check);
            let ops = std::mem::take(&mut *lock(&ctx.history.bank));
            let options = BankOptions {
                accounts: (0..ctx.workload.keys).collect(),
                total,
                forbid_negative: false,
            };
            if let Some(path) = &config.history {
                trellis_checker::format::save(path, &ops)
                    .map_err(|e| anyhow::anyhow!("writing --history {}: {e}", path.display()))?;
            }
            checks.push(checker_check(
                "bank: every committed read sums to the total (checker)",
                trellis_checker::bank::check(&ops, &options),
                &note,
            ));
        }
        crate::workload::Kind::Append => {
            let ops = std::mem::take(&mut *lock(&ctx.history.append));
            if let Some(path) = &config.history {
                trellis_checker::format::save(path, &ops)
                    .map_err(|e| anyhow::anyhow!("writing --history {}: {e}", path.display()))?;
            }
            checks.push(checker_check(
                "list-append: strict serializable (checker)",
                trellis_checker::list_append::check(&ops, CheckModel::StrictSerializable),
                &note,
            ));
        }
        _ => {}
    }
    Ok(checks)
}

/// Lines of a report shown under a check.
const REPORT_LINES_SHOWN: usize = 12;

fn checker_check(
    name: &str,
    report: Result<trellis_checker::Report, trellis_checker::HistoryError>,
    note: &str,
) -> Check {
    match report {
        Ok(report) => {
            let text = report.to_string();
            let mut lines: Vec<&str> = text.lines().take(REPORT_LINES_SHOWN).collect();
            let more = text.lines().count().saturating_sub(REPORT_LINES_SHOWN);
            let more_line = format!("({more} more lines)");
            if more > 0 {
                lines.push(&more_line);
            }
            Check {
                name: name.to_string(),
                passed: report.verdict != Verdict::Invalid,
                detail: format!("{}{note}", lines.join("\n")),
            }
        }
        Err(e) => Check {
            name: name.to_string(),
            passed: false,
            detail: format!("the history is malformed: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use clap::Parser;
    use futures::future::BoxFuture;

    /// A target that conflicts on the first `conflicts` attempts of every
    /// transaction (told apart by their first key) and then commits.
    struct Flaky {
        conflicts: u32,
        attempts: Mutex<std::collections::HashMap<Vec<u8>, u32>>,
        executed: AtomicU64,
    }

    impl Target for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }

        fn execute<'a>(
            &'a self,
            _conn: usize,
            spec: &'a TxnSpec,
        ) -> BoxFuture<'a, Result<Values, TxnError>> {
            Box::pin(async move {
                self.executed.fetch_add(1, Ordering::Relaxed);
                let key = spec
                    .write_keys()
                    .first()
                    .map(|k| k.to_vec())
                    .unwrap_or_default();
                let mut attempts = lock(&self.attempts);
                let n = attempts.entry(key).or_insert(0);
                *n += 1;
                if *n <= self.conflicts {
                    return Err(TxnError::Conflict("injected".into()));
                }
                *n = 0;
                Ok(vec![None; spec.reads.len()])
            })
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn config(flags: &str) -> Config {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(flags.split_whitespace()))
            .expect("flags parse");
        Config::from_args(&cli.args).expect("flags are valid")
    }

    fn counter(summary: &Summary, name: &str) -> u64 {
        match summary.metric(name, None) {
            Some(MetricValue::Counter { count, .. }) => *count,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflicts_are_retried_and_counted_the_same_for_every_target() {
        // One VU, so each transaction's attempts are consecutive.
        let target = Arc::new(Flaky {
            conflicts: 2,
            attempts: Mutex::default(),
            executed: AtomicU64::new(0),
        });
        let summary = run_with(
            config("--iterations 20 --vus 1 --keys 1000000 --attempts 5 -q --seed 7"),
            target.clone(),
        )
        .await
        .expect("runs");
        assert_eq!(counter(&summary, "iterations"), 20);
        assert_eq!(counter(&summary, "txn_conflicts"), 40);
        assert_eq!(counter(&summary, "txn_retries"), 40);
        assert_eq!(target.executed.load(Ordering::Relaxed), 60);
        assert_eq!(
            summary.metric("txn_failed", None),
            Some(&MetricValue::Rate {
                trues: 0,
                total: 20
            })
        );
        // With fewer attempts than conflicts, every iteration fails after
        // exactly --attempts tries.
        let target = Arc::new(Flaky {
            conflicts: 10,
            attempts: Mutex::default(),
            executed: AtomicU64::new(0),
        });
        let summary = run_with(
            config("--iterations 5 --vus 1 --keys 1000000 --attempts 3 -q --seed 7"),
            target.clone(),
        )
        .await
        .expect("runs");
        assert_eq!(target.executed.load(Ordering::Relaxed), 15);
        assert_eq!(
            summary.metric("txn_failed", None),
            Some(&MetricValue::Rate { trues: 5, total: 5 })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn iterations_are_shared_by_the_vus_exactly() {
        let target = Arc::new(Flaky {
            conflicts: 0,
            attempts: Mutex::default(),
            executed: AtomicU64::new(0),
        });
        let summary = run_with(config("--iterations 137 --vus 8 -q"), target.clone())
            .await
            .expect("runs");
        assert_eq!(counter(&summary, "iterations"), 137);
        assert_eq!(target.executed.load(Ordering::Relaxed), 137);
        assert_eq!(counter(&summary, "dropped_iterations"), 0);
    }

    #[test]
    fn history_stops_recording_new_transactions_when_full() {
        let history = History::default();
        history.ops.store(HISTORY_OPS_MAX, Ordering::Relaxed);
        let mops = Some(HistoryMops::Append(vec![Mop::Read {
            key: 1,
            value: None,
        }]));
        assert!(!history.invoke(1, 0, mops));
        assert!(history.truncated.load(Ordering::Relaxed));
        history.ops.store(0, Ordering::Relaxed);
        let mops = Some(HistoryMops::Append(vec![Mop::Read {
            key: 1,
            value: None,
        }]));
        assert!(history.invoke(1, 0, mops));
        assert_eq!(lock(&history.append).len(), 1);
    }
}
