//! `trellis dev` grows and shrinks with its catalog, over real processes:
//! `trellis dev add-group` starts a new group into the running dev, a
//! restarted dev brings it back, and `trellis admin remove-group` makes dev
//! stop its replicas.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_tests::harness::{Proc, alive, trellis_bin, wait_gone};

/// How long dev may take to stop a removed group's replicas (it polls every
/// second, acts on two agreeing answers, and gives each 10 s after SIGTERM).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dev's children may take to exit after dev stops.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a command (add-group waits at most 90 s itself) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// `trellis dev --groups 2 --replicas 2` over `data`, its stderr appended
/// to `log`.
fn dev(data: &Path, log: &Path) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    Proc::start_logged(
        &[
            "dev",
            // Plaintext: the test's own clients carry no certificate
            // (dev's TLS, add-group included: dev_tls.rs).
            "--insecure",
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--groups",
            "2",
            "--replicas",
            "2",
        ],
        &[("TRELLIS_LOG", "info")],
        Some(log),
    )
    .expect("trellis dev starts")
}

/// Runs `trellis <args>` to its end (bounded), killing it by pid if it
/// overruns.
fn trellis(args: &[&str]) -> Output {
    let mut command = Command::new(trellis_bin());
    command.args(args);
    trellis_tests::harness::output_within(command, COMMAND_TIMEOUT)
}

/// `trellis status --format json` of the coordinator at `addr`.
fn status(addr: &str) -> Value {
    let out = trellis(&["status", "--addr", addr, "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status prints JSON")
}

/// The status of group `id`, if the cluster has it.
fn group(status: &Value, id: u64) -> Option<Value> {
    status["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["group"] == id)
        .cloned()
}

/// Pids of the members of group `id`.
fn pids(status: &Value, id: u64) -> Vec<u32> {
    group(status, id).expect("the group")["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["pid"].as_u64().expect("pid") as u32)
        .collect()
}

/// Pids of every member of every group.
fn all_pids(status: &Value) -> Vec<u32> {
    status["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["members"].as_array().expect("members").iter())
        .map(|m| m["pid"].as_u64().expect("pid") as u32)
        .collect()
}

fn has_primary(group: &Value) -> bool {
    group["members"]
        .as_array()
        .expect("members")
        .iter()
        .any(|m| m["role"] == "primary" && m["alive"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_add_group_grows_the_running_dev_and_remove_group_shrinks_it() {
    // Without a dev on the directory, add-group fails clearly and starts
    // nothing. Then: dev with 2 groups of 2; `trellis dev add-group` adds
    // group 3 and returns once it is served; status shows it with 0 slots
    // and a primary, Prometheus's targets list its replicas. SIGINT stops
    // dev and every child; a new dev (still --groups 2) brings group 3
    // back; `trellis admin remove-group --group 3` makes dev stop exactly
    // group 3's replicas.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    let log = dir.path().join("dev.log");

    let out = trellis(&["dev", "add-group", "--data-dir", data_arg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no trellis dev is running on"), "{stderr}");
    assert!(!data.exists(), "add-group creates nothing");

    let mut cluster = dev(&data, &log);
    let addr = cluster.field("grpc").to_string();
    let out = trellis(&["dev", "add-group", "--data-dir", data_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("group 3 is served: 2 of 2 replica(s) registered, 0 slots"),
        "{stdout}"
    );
    let status_now = status(&addr);
    let g3 = group(&status_now, 3).expect("group 3 is listed");
    assert_eq!(g3["slots"], 0, "{g3}");
    assert!(has_primary(&g3), "{g3}");
    let g3_pids = pids(&status_now, 3);
    assert_eq!(g3_pids.len(), 2, "{g3}");
    assert!(g3_pids.iter().all(|p| alive(*p)));
    let targets = std::fs::read_to_string(data.join("prometheus-targets.json"))
        .expect("dev writes the Prometheus targets");
    for replica in 1..=2 {
        assert!(
            targets.contains(&format!("\"group\": \"3\", \"replica\": \"{replica}\"")),
            "{targets}"
        );
    }
    let log_text = std::fs::read_to_string(&log).expect("dev's log");
    assert!(
        log_text.contains("group 3 is in the catalog: starting 2 replicas"),
        "{log_text}"
    );

    // A group that exists is refused, with the coordinator's message.
    let out = trellis(&["dev", "add-group", "--data-dir", data_arg, "--group", "3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group 3 already exists"),
        "{out:?}"
    );

    // SIGINT (Ctrl-C) stops dev and every child, group 3's too.
    let every = all_pids(&status_now);
    cluster.signal(libc::SIGINT);
    let exit = cluster.wait_exit_status().expect("dev exits on SIGINT");
    assert!(exit.success(), "{exit:?}");
    assert!(wait_gone(&every, ORPHAN_TIMEOUT), "every child stopped");
    assert!(
        !data.join("dev.ready").exists(),
        "dev removes its ready file"
    );

    // Started again with --groups 2: group 3 is back, served.
    let cluster = dev(&data, &log);
    let addr = cluster.field("grpc").to_string();
    let status_now = status(&addr);
    let g3 = group(&status_now, 3).expect("group 3 is back");
    assert!(has_primary(&g3), "{g3}");
    assert_eq!(g3["slots"], 0, "{g3}");
    let g3_pids = pids(&status_now, 3);
    let others: Vec<u32> = [1, 2].iter().flat_map(|g| pids(&status_now, *g)).collect();

    // remove-group: dev stops group 3's replicas, and only those.
    let out = trellis(&["admin", "remove-group", "--group", "3", "--addr", &addr]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_gone(&g3_pids, STOP_TIMEOUT),
        "group 3's replicas stopped"
    );
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log).expect("dev's log");
        if text.contains("group 3 is no longer in the catalog: stopping its replicas") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(others.iter().all(|p| alive(*p)), "groups 1 and 2 run on");
    let status_now = status(&addr);
    assert!(group(&status_now, 3).is_none(), "{status_now}");
    let targets = std::fs::read_to_string(data.join("prometheus-targets.json"))
        .expect("dev writes the Prometheus targets");
    assert!(!targets.contains("\"group\": \"3\""), "{targets}");
    assert!(alive(cluster.pid), "dev keeps running");
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}
