//! Online resharding under load and faults, with real processes on
//! 127.0.0.1 (`trellis_tests::reshard_nemesis`): two replicated groups grow
//! by an empty third, the schedule rebalances onto it, moves random slots
//! between groups and drains group 2 while bank and list-append clients
//! run, with a primary killed while a batch copies, one while a batch cuts
//! over (the schedule waits for those phases) and the driving coordinator
//! killed. Every job must finish, slots must really have moved, group 2
//! must be removed at the end, both aimed kills must have landed, and the
//! history must pass the checker (no lost or duplicated transfer, no stale
//! read, no cycle).
//!
//! `TRELLIS_NEMESIS_SEED` replays a schedule; a failed run keeps its
//! history, verdict and logs under `target/nemesis/`.

use std::time::Duration;

use trellis_tests::reshard_nemesis::{DRAINED_GROUP, ReshardCluster};
use trellis_tests::workload::{RunConfig, RunResult, Workload, run_on};

/// The schedule's seed unless `TRELLIS_NEMESIS_SEED` says otherwise.
const SEED_DEFAULT: u64 = 20_261_206;
/// Seconds of workload per run.
const TIME: Duration = Duration::from_secs(20);
/// Groups at the start (a third is added empty), replicas per group.
const GROUPS: u32 = 2;
const REPLICAS: u32 = 2;
/// Time between two steps of the schedule, and how long a kill lasts.
const INTERVAL: Duration = Duration::from_millis(1500);
const HOLD: Duration = Duration::from_millis(1500);

/// One cluster at a time: this machine is small and the runs time faults.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed() -> u64 {
    std::env::var("TRELLIS_NEMESIS_SEED")
        .ok()
        .map(|v| v.parse().expect("TRELLIS_NEMESIS_SEED is a number"))
        .unwrap_or(SEED_DEFAULT)
}

async fn run(workload: Workload, name: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = ReshardCluster::start(GROUPS, REPLICAS)
        .await
        .expect("cluster");
    let mut config = RunConfig::new(workload, seed(), TIME);
    config.coordinators = 1;
    config.groups = GROUPS + 1;
    config.interval = INTERVAL;
    config.hold = HOLD;
    let temp = tempfile::Builder::new()
        .prefix(&format!("trellis-reshard-{name}-"))
        .tempdir()
        .expect("run directory");
    let result = run_on(&config, &mut cluster, temp).await.expect("run");
    let answers = cluster.answers.lock().expect("answers").clone();
    let jobs = cluster.jobs().await.expect("jobs");
    must_pass(&result, name, &answers);

    // Slots really moved: the added group owns some, and some job moved
    // slots to the end.
    let slots = cluster.slots().await.expect("slot map");
    let third = slots
        .iter()
        .filter(|g| **g == u64::from(GROUPS + 1))
        .count();
    assert!(
        third > 0,
        "{name}: group {} owns no slot after the run; admin answers: {answers:#?}; jobs: {jobs:#?}",
        GROUPS + 1
    );
    assert!(
        cluster.removed(),
        "{name}: group {DRAINED_GROUP} was not removed; admin answers: {answers:#?}"
    );
    assert!(
        !slots.contains(&u64::from(DRAINED_GROUP)),
        "{name}: the drained group owns slots"
    );
    let moved: u32 = jobs
        .iter()
        .filter(|j| j.state == "done")
        .map(|j| j.slots_done)
        .sum();
    assert!(moved > 0, "{name}: no job finished moving slots: {jobs:#?}");
    let (copy, cutover) = cluster.aimed.lock().expect("aimed").clone();
    // The schedule's first kills wait for a batch in those phases (the
    // rebalance onto the empty group runs for seconds by then).
    assert!(
        !copy.is_empty() && !cutover.is_empty(),
        "{name}: a primary must be killed during a copy and during a cutover; \
         during a copy: {copy:?}; during a cutover: {cutover:?}; jobs: {jobs:#?}"
    );
    eprintln!(
        "{name}: {moved} slots moved by {} finished jobs; group {} owns {third}; {:?} ok/fail/info; \
         kills during a copy: {copy:#?}; during a cutover: {cutover:#?}; admin answers: {answers:#?}",
        jobs.iter().filter(|j| j.state == "done").count(),
        GROUPS + 1,
        result.counts
    );
}

fn must_pass(result: &RunResult, name: &str, answers: &[String]) {
    if !result.passed() {
        let kept = result.keep(name).expect("keeping the run's files");
        panic!(
            "{name}: the run failed (seed {seed}); history, verdict and logs kept in {kept}\n\
             stuck: {stuck:?}, final read: {final_read:?}, unexpected exits: {exits:?}\n\
             admin answers: {answers:#?}\n{report}",
            seed = result.seed,
            kept = kept.display(),
            stuck = result.stuck,
            final_read = result.final_read_error,
            exits = result.unexpected_exits,
            report = result.report
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_transfers_survive_slots_moving_under_faults() {
    run(Workload::Bank, "reshard-bank").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_appends_survive_slots_moving_under_faults() {
    run(Workload::ListAppend, "reshard-list-append").await;
}
