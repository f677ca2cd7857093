//! Resharding jobs from the operator's side, end to end: the real
//! `trellis admin move-slots | rebalance | reshard ...` commands and the
//! Admin RPCs against a real coordinator over a SQLite catalog, with real
//! shard processes. What is checked here is the job's life as the catalog
//! and the commands show it (refusals, listing, pause, resume, cancel,
//! `--wait`, a coordinator restart); moving data needs the shards' side of
//! the move and is tested where that lives.
//!
//! The target group's only replica is killed first, so no job here can
//! make progress whatever the shards implement: each stays at its first
//! step (the driver retries it with backoff), which keeps the story
//! deterministic.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_proto::error::{error_info, key};
use trellis_proto::v1 as pb;
use trellis_tests::cluster::CoordinatorStart;
use trellis_tests::harness::{Cluster, admin_ok, admin_refused, printed, run_trellis, trellis_bin};
use trellis_types::placement::assign_slots;

/// How long a change may take to show (the driver's next tick, a
/// restarted coordinator answering).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks while waiting for a change.
const POLL_PAUSE: Duration = Duration::from_millis(200);

fn trellis(args: &[&str]) -> Output {
    run_trellis(args)
}

/// `trellis admin reshard list --format json`, parsed.
fn jobs(addr: &str) -> Vec<Value> {
    let out = trellis(&[
        "admin", "reshard", "list", "--addr", addr, "--format", "json",
    ]);
    assert!(out.status.success(), "reshard list: {}", printed(&out));
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON {e}: {}", printed(&out)));
    json.as_array().expect("an array of jobs").clone()
}

fn job(addr: &str, id: u64) -> Value {
    jobs(addr)
        .into_iter()
        .find(|j| j["id"] == id)
        .unwrap_or_else(|| panic!("job {id} not listed"))
}

/// Polls job `id` until `pred` holds.
async fn wait_job(addr: &str, id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let out = trellis(&[
            "admin", "reshard", "list", "--addr", addr, "--format", "json",
        ]);
        if out.status.success() {
            let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if let Some(j) = list
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == id))
                && pred(j)
            {
                return j.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_TIMEOUT:?}; last: {}",
            printed(&out)
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// `trellis status --format json`, parsed.
fn status_json(addr: &str) -> Value {
    let out = trellis(&["status", "--addr", addr, "--format", "json"]);
    assert!(out.status.success(), "trellis status: {}", printed(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON {e}: {}", printed(&out)))
}

/// The fields of a job that say where it stands (not its rate, which
/// changes with time).
fn progress(job: &Value) -> Vec<Value> {
    [
        "id",
        "state",
        "phase",
        "slots_done",
        "slots_total",
        "batches_done",
        "batches_total",
        "keys_copied",
        "bytes_copied",
        "from_group",
        "to_group",
        "batch_slots",
    ]
    .iter()
    .map(|f| job[*f].clone())
    .collect()
}

/// Story: in a cluster of two groups whose group 2 is down, an operator
/// tries to move slots of group 1 to group 2. Bad input is refused with a
/// message naming the problem (unknown group, same group, a slot group 1
/// does not own, a slot range that is not one), and nothing is created.
/// A good move creates job 1, which shows in `reshard list` and in
/// `trellis status` (table and JSON) at its first step; a second job over
/// one of its slots is refused as SLOTS_BUSY naming job 1, and a control
/// of a job that does not exist as UNKNOWN_JOB. The job is paused and
/// resumed (without --job: the only unfinished one). The coordinator is
/// restarted: the job is still listed with the same progress. Cancelled,
/// it leaves `trellis status`, cannot be resumed, and its slots are free
/// again: a new job over them is created, and its `--wait` ends with exit
/// code 1 saying it was cancelled once the operator cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_jobs_are_checked_listed_controlled_and_kept() {
    let mut cluster = Cluster::start(2).await.expect("cluster of two groups");
    let addr = cluster.addr(0).to_string();
    let ring = assign_slots(&[1, 2]);
    let of = |g: u64| -> Vec<String> {
        (0..ring.len())
            .filter(|s| ring[*s] == g)
            .take(2)
            .map(|s| s.to_string())
            .collect()
    };
    let (mine, theirs) = (of(1), of(2));
    let two_slots = mine.join(",");
    cluster.kill9_shard(2, 1);

    // Refusals: nothing is created.
    let err = admin_refused(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "9",
        "--slots",
        &mine[0],
        "--addr",
        &addr,
    ]);
    assert!(err.contains("group 9 is not in the catalog"), "{err}");
    let err = admin_refused(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "1",
        "--slots",
        &mine[0],
        "--addr",
        &addr,
    ]);
    assert!(err.contains("from group 1 to itself"), "{err}");
    let err = admin_refused(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "2",
        "--slots",
        &theirs[0],
        "--addr",
        &addr,
    ]);
    assert!(
        err.contains(&format!("slot {} is owned by group 2, not 1", theirs[0])),
        "{err}"
    );
    let err = admin_refused(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "2",
        "--slots",
        "0-x",
        "--addr",
        &addr,
    ]);
    assert!(err.contains("`x` is not a slot number"), "{err}");
    let err = admin_refused(&["admin", "drain-group", "--group", "7", "--addr", &addr]);
    assert!(err.contains("group 7 is not in the catalog"), "{err}");
    assert!(jobs(&addr).is_empty(), "refusals create no job");
    let out = admin_ok(&["admin", "rebalance", "--addr", &addr]);
    assert!(out.contains("nothing to move"), "the ring already: {out}");
    assert!(jobs(&addr).is_empty(), "an empty plan creates no job");

    // A good move: job 1, at its first step.
    let out = admin_ok(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "2",
        "--slots",
        &two_slots,
        "--addr",
        &addr,
    ]);
    assert!(
        out.contains("job 1: moving 2 slots in 1 batches") && out.contains("reshard list"),
        "{out}"
    );
    let listed = job(&addr, 1);
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["phase"], "import", "{listed}");
    assert_eq!(listed["slots_total"], 2, "{listed}");
    assert_eq!(listed["batches_total"], 1, "{listed}");
    assert_eq!(
        (listed["from_group"].clone(), listed["to_group"].clone()),
        (1.into(), 2.into())
    );
    let status = status_json(&addr);
    assert_eq!(status["reshard_jobs"][0]["id"], 1, "{status:#}");
    let table = admin_ok(&["status", "--addr", &addr]);
    assert!(
        table.contains("reshard jobs:") && table.contains("running"),
        "{table}"
    );

    // Overlapping and unknown: typed refusals.
    let err = admin_refused(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "2",
        "--slots",
        &mine[1],
        "--addr",
        &addr,
    ]);
    assert!(
        err.contains(&format!("slot {} is already moving in job 1", mine[1])),
        "{err}"
    );
    let mut admin = cluster.admin(0).await.expect("admin client");
    let busy = admin
        .move_slots(pb::MoveSlotsRequest {
            from_group: 1,
            to_group: 2,
            slots: mine[0].clone(),
        })
        .await
        .expect_err("busy");
    let info = error_info(&busy).expect("ErrorInfo");
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition);
    assert_eq!(info.reason, pb::ErrorReason::SlotsBusy.as_str_name());
    assert_eq!(info.metadata.get(key::JOB).map(String::as_str), Some("1"));
    let unknown = admin
        .control_reshard_job(pb::ControlReshardJobRequest {
            job_id: 99,
            action: pb::control_reshard_job_request::Action::Pause as i32,
        })
        .await
        .expect_err("no job 99");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(
        error_info(&unknown).expect("ErrorInfo").reason,
        pb::ErrorReason::UnknownJob.as_str_name()
    );
    let err = admin_refused(&["admin", "reshard", "pause", "--job", "99", "--addr", &addr]);
    assert!(err.contains("reshard job 99 does not exist"), "{err}");

    // Pause, then resume without naming the job.
    admin_ok(&["admin", "reshard", "pause", "--job", "1", "--addr", &addr]);
    wait_job(&addr, 1, "job 1 pauses", |j| j["state"] == "paused").await;
    let out = admin_ok(&["admin", "reshard", "resume", "--addr", &addr]);
    assert!(out.contains("job 1: running"), "{out}");

    // A restarted coordinator lists the job as it was.
    let before = progress(&job(&addr, 1));
    cluster.kill9_coordinator(0);
    cluster
        .start_coordinator(0, CoordinatorStart::new(false, &[]))
        .expect("restart the coordinator");
    let addr = cluster.addr(0).to_string();
    let after = wait_job(&addr, 1, "the restarted coordinator lists job 1", |_| true).await;
    assert_eq!(progress(&after), before, "{after}");

    // Cancel: gone from the status, not resumable, its slots free again.
    admin_ok(&["admin", "reshard", "cancel", "--job", "1", "--addr", &addr]);
    wait_job(&addr, 1, "job 1 is cancelled", |j| {
        j["state"] == "cancelled"
    })
    .await;
    let status = status_json(&addr);
    assert_eq!(status["reshard_jobs"], Value::Array(vec![]), "{status:#}");
    let err = admin_refused(&["admin", "reshard", "resume", "--job", "1", "--addr", &addr]);
    assert!(
        err.contains("job 1 is cancelled; it cannot be resumed"),
        "{err}"
    );

    // A new job over the same slots, watched with --wait, then cancelled.
    let waiting = Command::new(trellis_bin())
        .args([
            "admin",
            "move-slots",
            "--from",
            "1",
            "--to",
            "2",
            "--slots",
            &two_slots,
            "--wait",
            "--addr",
            &addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start move-slots --wait");
    wait_job(&addr, 2, "job 2 is created", |j| j["state"] == "running").await;
    admin_ok(&["admin", "reshard", "cancel", "--addr", &addr]);
    let out = tokio::time::timeout(
        SETTLE_TIMEOUT,
        tokio::task::spawn_blocking(move || waiting.wait_with_output()),
    )
    .await
    .expect("--wait ends once the job is cancelled")
    .expect("join")
    .expect("output");
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("job 2:") && stdout.contains("slots"),
        "progress lines: {}",
        printed(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("job 2 was cancelled"),
        "{}",
        printed(&out)
    );
}

/// Story: every resharding command's `--help` teaches: what a batch is,
/// that the pause is bounded, how to watch, pause and cancel a job.
#[test]
fn reshard_help_teaches() {
    for command in [
        &["admin", "rebalance", "--help"][..],
        &["admin", "move-slots", "--help"],
        &["admin", "drain-group", "--help"],
        &["admin", "reshard", "list", "--help"],
    ] {
        let out = trellis(command);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command:?}: {}", printed(&out));
        for needle in [
            "batches of at most 64 slots",
            "bounded",
            "trellis admin reshard list",
            "trellis admin reshard cancel --job N",
        ] {
            assert!(
                help.contains(needle),
                "{command:?} lacks `{needle}`:\n{help}"
            );
        }
    }
}
