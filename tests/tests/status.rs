//! `trellis status` tells the truth about processes that died: a killed
//! replica shows as `down` with no lag or lease made up for it, a killed
//! coordinator shows as `DEAD` and a restarted one replaces its old row,
//! every process's metrics address is shown and answers, and a primary
//! left alone never prints its lease as u64::MAX.
//!
//! Real processes on 127.0.0.1 (a coordinator and shard replicas started
//! directly, not through `trellis dev`, whose supervisor would restart
//! what we kill), read through the real `trellis status` command.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trellis_tests::harness::{Proc, http_get, trellis_bin};
use trellis_tests::replicated::{ReplicatedCluster, SETTLE_TIMEOUT};

/// Pause between two looks at the status while waiting for a change.
const POLL_PAUSE: Duration = Duration::from_millis(200);

/// Runs `trellis status --addr ADDR --format FORMAT`; its own deadline
/// bounds it. Returns stdout (the command must succeed).
fn status_cli(addr: &str, format: &str) -> String {
    let out = Command::new(trellis_bin())
        .args(["status", "--addr", addr, "--format", format])
        .output()
        .expect("run trellis status");
    assert!(
        out.status.success(),
        "trellis status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 status")
}

/// Both formats at one moment (near enough): the JSON parsed, and the table.
fn status_both(addr: &str) -> (Value, String) {
    let json = status_cli(addr, "json");
    let json = serde_json::from_str(&json).unwrap_or_else(|e| panic!("bad JSON {e}: {json}"));
    (json, status_cli(addr, "table"))
}

/// Polls both formats until `pred` holds on the JSON; panics with the last
/// output after [`SETTLE_TIMEOUT`].
async fn wait_status(addr: &str, what: &str, pred: impl Fn(&Value) -> bool) -> (Value, String) {
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (json, table) = status_both(addr);
        if pred(&json) {
            return (json, table);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {SETTLE_TIMEOUT:?}; last status:\n{table}\n{json:#}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// The JSON member at `addr` (group 1).
fn member<'a>(json: &'a Value, addr: &str) -> &'a Value {
    json["groups"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["address"] == addr)
        .unwrap_or_else(|| panic!("no member {addr} in {json:#}"))
}

/// The table row of the member at `addr`.
fn row<'a>(table: &'a str, addr: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.contains(addr))
        .unwrap_or_else(|| panic!("no row for {addr} in\n{table}"))
}

/// The cells of a table row (columns are separated by two spaces or more).
fn cells(row: &str) -> Vec<&str> {
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// A metrics address answers Prometheus text on /metrics.
async fn assert_serves_metrics(addr: &str) {
    assert!(!addr.is_empty(), "a metrics address is shown");
    let reply = http_get(addr, "/metrics").await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("# TYPE"),
        "GET http://{addr}/metrics: {reply}"
    );
}

/// Story: a group of three replicas, all shown alive with their metrics
/// addresses (which answer). A backup is killed: once nobody has heard
/// from it within the bound, status shows it `down`, with the pid it had,
/// when it was last heard from, and `-`/null for lag instead of the
/// primary's stale or whole-LSN number. The other backup is killed too:
/// the primary, alone in its configuration, needs no lease, shown `none`
/// and `null`, never 18446744073709551615. The first backup restarts on
/// its data: alive again, with a new pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_members_show_as_down() {
    let mut cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let primary = cluster.primary(1).await.expect("primary");
    let backups: Vec<u32> = (1..=3).filter(|r| *r != primary).collect();

    // Everyone alive, each with the metrics address it printed, serving.
    let (json, table) = wait_status(&addr, "every member alive and heard now", |s| {
        s["groups"][0]["members"].as_array().is_some_and(|ms| {
            ms.iter()
                .all(|m| m["alive"] == true && m["last_heard_ms"] == 0)
        })
    })
    .await;
    for r in 1..=3 {
        let proc = cluster.proc(1, r);
        let m = member(&json, proc.field("grpc"));
        assert_eq!(m["pid"], proc.pid, "{json:#}");
        assert_eq!(m["metrics_addr"], proc.field("metrics"), "{json:#}");
        assert!(
            row(&table, proc.field("grpc")).contains(proc.field("metrics")),
            "{table}"
        );
        assert_serves_metrics(proc.field("metrics")).await;
    }
    let coordinator = &json["coordinators"][0];
    assert_eq!(coordinator["alive"], true, "{json:#}");
    assert_eq!(
        coordinator["metrics_addr"],
        cluster.coordinator().field("metrics"),
        "{json:#}"
    );
    assert!(
        table.contains(cluster.coordinator().field("metrics")),
        "{table}"
    );
    assert_serves_metrics(cluster.coordinator().field("metrics")).await;

    // A backup dies.
    let victim = cluster.proc(1, backups[0]);
    let (victim_addr, victim_pid) = (victim.field("grpc").to_string(), victim.pid);
    cluster.kill9(1, backups[0]);
    let (json, table) = wait_status(&addr, "the killed backup shown down", |s| {
        member(s, &victim_addr)["role"] == "down"
    })
    .await;
    eprintln!("a backup killed:\n{table}");
    let m = member(&json, &victim_addr);
    assert_eq!(m["alive"], false, "{json:#}");
    assert_eq!(m["pid"], victim_pid, "the last pid known: {json:#}");
    assert!(
        m["lag_records"].is_null() && m["lag_ms"].is_null(),
        "no fake lag: {json:#}"
    );
    assert!(m["lease_ms"].is_null(), "{json:#}");
    assert!(
        m["last_lsn"].is_null() && m["epoch"].is_null(),
        "only the member knows these: {json:#}"
    );
    assert!(
        m["last_heard_ms"].as_u64().is_some(),
        "how long ago it was last heard from: {json:#}"
    );
    let victim_row = cells(row(&table, &victim_addr));
    assert_eq!(victim_row[4], "down", "role column: {table}");
    assert_eq!(
        &victim_row[5..9],
        ["-", "-", "-", "-"],
        "epoch, lease, last lsn, lag: {table}"
    );
    assert!(
        !victim_row.iter().any(|c| c.contains("rec /")),
        "no lag for a dead member: {table}"
    );

    // The other backup dies: the primary is alone and needs no lease.
    cluster.kill9(1, backups[1]);
    cluster
        .wait_for("the primary alone in its configuration", |s| {
            s.groups[0]
                .members
                .iter()
                .any(|m| m.role == "primary" && m.lease_ms == u64::MAX)
        })
        .await
        .expect("the primary drops both silent backups");
    let (json, table) = status_both(&addr);
    eprintln!("both backups killed:\n{table}");
    let never = u64::MAX.to_string();
    assert!(
        !table.contains(&never) && !json.to_string().contains(&never),
        "u64::MAX printed:\n{table}\n{json:#}"
    );
    let primary_addr = cluster.proc(1, primary).field("grpc").to_string();
    assert!(
        member(&json, &primary_addr)["lease_ms"].is_null(),
        "{json:#}"
    );
    assert_eq!(
        cells(row(&table, &primary_addr))[6],
        "none",
        "lease column: {table}"
    );

    // The first backup comes back on its data and address: alive, new pid.
    cluster.restart(1, backups[0]).expect("restart the backup");
    let new_pid = cluster.proc(1, backups[0]).pid;
    let (json, _) = wait_status(&addr, "the restarted backup alive", |s| {
        member(s, &victim_addr)["alive"] == true
    })
    .await;
    assert_eq!(member(&json, &victim_addr)["pid"], new_pid, "{json:#}");
}

/// Story: a second coordinator joins the catalog, then is killed: once its
/// heartbeat is older than the bound it shows as DEAD (not listed as if it
/// served). The first coordinator is killed and restarted on the same
/// catalog and address: its old row is replaced at start-up, so the
/// address is listed once, alive, with the new process's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_coordinators_show_as_dead_and_restarts_replace_rows() {
    let mut cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let catalog = format!("sqlite://{}", cluster.dir().join("catalog.db").display());
    let second = Proc::start(&[
        "coordinator",
        "--catalog",
        &catalog,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .expect("second coordinator");
    let second_addr = second.field("grpc").to_string();
    let coordinator_at = |s: &Value, at: &str| -> Vec<Value> {
        s["coordinators"]
            .as_array()
            .expect("coordinators")
            .iter()
            .filter(|c| c["address"] == at)
            .cloned()
            .collect()
    };
    let (json, _) = wait_status(&addr, "both coordinators alive", |s| {
        [addr.as_str(), second_addr.as_str()]
            .iter()
            .all(|at| coordinator_at(s, at).iter().any(|c| c["alive"] == true))
    })
    .await;
    assert_eq!(
        coordinator_at(&json, &second_addr)[0]["metrics_addr"],
        second.field("metrics"),
        "{json:#}"
    );

    second.kill9();
    let (json, table) = wait_status(&addr, "the killed coordinator shown dead", |s| {
        coordinator_at(s, &second_addr)
            .iter()
            .all(|c| c["alive"] == false)
    })
    .await;
    assert_eq!(coordinator_at(&json, &second_addr).len(), 1, "{json:#}");
    eprintln!("a coordinator killed:\n{table}");
    let dead_row = cells(row(&table, &second_addr));
    assert_eq!(dead_row[2], "DEAD", "state column: {table}");

    cluster
        .restart_coordinator()
        .expect("restart the coordinator");
    let new_id = format!("{addr}/{}", cluster.coordinator().pid);
    let (json, table) = wait_status(&addr, "one live coordinator at the address", |s| {
        let rows = coordinator_at(s, &addr);
        rows.len() == 1 && rows[0]["id"] == new_id.as_str() && rows[0]["alive"] == true
    })
    .await;
    assert_eq!(
        table.matches(&format!("{addr}/")).count(),
        1,
        "the old row is gone:\n{table}"
    );
    assert_eq!(
        coordinator_at(&json, &addr)[0]["metrics_addr"],
        cluster.coordinator().field("metrics"),
        "{json:#}"
    );
}

/// Story: the primary of a group of three is killed. Status shows it
/// `down` (its last pid, no lease, no numbers only it could give) while a
/// backup is promoted and shown as the serving primary; restarted on its
/// data, the old primary is alive again with a new pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_shows_down_while_a_backup_takes_over() {
    let mut cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let old = cluster.primary(1).await.expect("primary");
    let old_proc = cluster.proc(1, old);
    let (old_addr, old_pid) = (old_proc.field("grpc").to_string(), old_proc.pid);
    // The coordinator has heard from every member at least once.
    status_both(&addr);

    cluster.kill9(1, old);
    let (json, table) = wait_status(&addr, "old primary down, a new one serving", |s| {
        let members = s["groups"][0]["members"].as_array().expect("members");
        member(s, &old_addr)["role"] == "down"
            && members.iter().any(|m| {
                m["role"] == "primary" && m["alive"] == true && m["address"] != old_addr.as_str()
            })
    })
    .await;
    eprintln!("the primary killed:\n{table}");
    let m = member(&json, &old_addr);
    assert_eq!(m["alive"], false, "{json:#}");
    assert_eq!(m["pid"], old_pid, "the last pid known: {json:#}");
    assert!(
        m["lease_ms"].is_null() && m["lag_records"].is_null() && m["last_lsn"].is_null(),
        "{json:#}"
    );
    assert!(m["last_heard_ms"].as_u64().is_some(), "{json:#}");
    assert_eq!(cells(row(&table, &old_addr))[4], "down", "{table}");

    cluster.restart(1, old).expect("restart the old primary");
    let new_pid = cluster.proc(1, old).pid;
    let (json, _) = wait_status(&addr, "the old primary back", |s| {
        member(s, &old_addr)["alive"] == true
    })
    .await;
    assert_eq!(member(&json, &old_addr)["pid"], new_pid, "{json:#}");
}
