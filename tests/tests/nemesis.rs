//! Safety under faults: a real cluster (2 coordinators, 3 shard groups, every
//! link behind a fault proxy) runs a workload from several concurrent
//! clients while a seeded nemesis kills and restarts processes, pauses them,
//! cuts, black-holes or delays their links, crashes coordinators at
//! two-phase-commit failpoints and fills shards' disks (a tmpfs each, when
//! run as root). Then everything is healed,
//! the sweepers resolve what was left in doubt, every key is read once more,
//! and the history goes to `trellis-checker`.
//!
//! The seed is printed; `TRELLIS_NEMESIS_SEED` replays a schedule and
//! `TRELLIS_NEMESIS_TIME` (seconds) lengthens it. A failed run keeps its
//! history, verdict and process logs under `target/nemesis/`. For a long
//! soak: `cargo run -p trellis-tests --example nemesis -- --time 600`.

use std::time::Duration;

use trellis_checker::{AnomalyClass, CycleKind, CycleVia, Verdict};
use trellis_tests::lab_nemesis::{LAB_HOLD, run_replicated};
use trellis_tests::nemesis::FaultKind;
use trellis_tests::workload::{ClientMode, RunConfig, RunResult, Workload, run};

/// The schedule's seed unless `TRELLIS_NEMESIS_SEED` says otherwise.
const SEED_DEFAULT: u64 = 20_261_128;
/// Seconds of workload per run unless `TRELLIS_NEMESIS_TIME` says otherwise.
const TIME_DEFAULT_S: u64 = 20;

/// Groups of the replicated runs (of three replicas each).
const LAB_GROUPS: u32 = 2;

/// One cluster at a time: this machine is small and the runs time faults.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn config(workload: Workload) -> RunConfig {
    let seed = env_u64("TRELLIS_NEMESIS_SEED").unwrap_or(SEED_DEFAULT);
    let time = Duration::from_secs(env_u64("TRELLIS_NEMESIS_TIME").unwrap_or(TIME_DEFAULT_S));
    let mut config = RunConfig::new(workload, seed, time);
    // Skipped (and said so) where a tmpfs cannot be mounted.
    config.kinds.push(FaultKind::DiskFull);
    config
}

fn must_pass(result: &RunResult, name: &str) {
    if !result.passed() {
        let kept = result.keep(name).expect("keeping the run's files");
        panic!(
            "{name}: the run failed (seed {seed}); history, verdict and logs kept in {kept}\n\
             stuck: {stuck:?}, final read: {final_read:?}, unexpected exits: {exits:?}\n{report}",
            seed = result.seed,
            kept = kept.display(),
            stuck = result.stuck,
            final_read = result.final_read_error,
            exits = result.unexpected_exits,
            report = result.report
        );
    }
}

/// List-append transactions over a few keys in different groups (most take
/// two-phase commit), every fault kind ~1 s apart: the checker finds no
/// dependency cycle (with real-time edges: strict serializability), no
/// aborted or intermediate read, no lost update, and the final read holds
/// every acknowledged append. No lock stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_is_strictly_serializable_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let result = run(&config(Workload::ListAppend)).await.expect("run");
    must_pass(&result, &format!("list-append-seed{}", result.seed));
    assert!(result.faults > 0, "the nemesis inflicted faults");
    assert!(result.counts[0] > 0, "some transactions committed");
}

/// Transfers between accounts and reads of all of them under the same
/// faults: every committed read sums to the opening total, none negative.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_keeps_its_total_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let result = run(&config(Workload::Bank)).await.expect("run");
    must_pass(&result, &format!("bank-seed{}", result.seed));
    assert!(result.faults > 0, "the nemesis inflicted faults");
    assert!(result.counts[0] > 0, "some transactions committed");
}

/// Groups of three replicas, every process in a network namespace of its
/// own, faults aimed at primaries half of the time: SIGKILL, SIGSTOP, a
/// replica cut from its group, from the coordinator or from everyone, and
/// one-way cuts (muted, deafened), held longer than a backup's grace period
/// so that failovers happen under the workload. The history must be
/// strictly serializable and the final read must hold every acknowledged
/// write. Needs root (network namespaces).
fn replicated_run(workload: Workload) {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let mut config = config(workload);
    config.groups = LAB_GROUPS;
    config.hold = LAB_HOLD;
    let tag = match workload {
        Workload::ListAppend => "nemla",
        Workload::Bank => "nembank",
    };
    let result = run_replicated(&config, tag).expect("replicated run (needs root)");
    let name = format!("replicated-{}-seed{}", workload.name(), result.seed);
    let kept = result.keep(&name).expect("keeping the run's files");
    eprintln!(
        "history, nemesis log and verdict kept in {}",
        kept.display()
    );
    must_pass(&result, &name);
    assert!(result.faults > 0, "the nemesis inflicted faults");
    assert!(result.counts[0] > 0, "some transactions committed");
}

#[test]
fn list_append_over_replicated_groups_survives_kills_pauses_and_cuts() {
    replicated_run(Workload::ListAppend);
}

#[test]
fn bank_over_replicated_groups_survives_kills_pauses_and_cuts() {
    replicated_run(Workload::Bank);
}

/// The pipeline can fail: clients that commit their read-modify-writes
/// without read versions (broken client usage, not a Trellis fault) lose
/// updates, and the same harness and checker say so — for list-append as
/// lost updates or cycles, for the bank as a wrong total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blind_writes_are_caught() {
    let _one = ONE_AT_A_TIME.lock().await;
    for workload in [Workload::ListAppend, Workload::Bank] {
        let mut config = config(workload);
        config.mode = ClientMode::BlindWrites;
        config.kinds = Vec::<FaultKind>::new();
        config.time = Duration::from_secs(5);
        let result = run(&config).await.expect("run");
        assert_eq!(
            result.report.verdict,
            Verdict::Invalid,
            "{}: blind writes must be caught\n{}",
            workload.name(),
            result.report
        );
        let classes = result.report.classes();
        let expected = match workload {
            Workload::ListAppend => {
                classes.contains(&AnomalyClass::LostUpdate)
                    || classes.contains(&AnomalyClass::Cycle(CycleKind::GSingle, CycleVia::Data))
                    || classes
                        .contains(&AnomalyClass::Cycle(CycleKind::GSingle, CycleVia::Realtime))
            }
            Workload::Bank => classes.contains(&AnomalyClass::WrongTotal),
        };
        assert!(
            expected,
            "{}: expected lost updates, got {classes:?}",
            workload.name()
        );
    }
}
