//! Adding and removing shard groups on a running cluster, end to end:
//! the real `trellis admin add-group` / `remove-group` commands against a
//! real coordinator over a SQLite catalog, real shard processes, and what
//! `trellis status` (table and JSON) shows; and a group drained with
//! `trellis admin drain-group --wait` (its data moving to the others) and
//! then removed. Only a group that owns no slots, and whose primary says
//! it anchors and holds no transaction, can be removed.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_tests::harness::{Cluster, Proc, admin_ok, admin_refused, printed, run_trellis};

/// How long a change may take to show (a shard registering, another
/// coordinator's next map refresh).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks while waiting for a change.
const POLL_PAUSE: Duration = Duration::from_millis(200);

fn trellis(args: &[&str]) -> Output {
    run_trellis(args)
}

/// `trellis status --format json`, parsed.
fn status_json(addr: &str) -> Value {
    let out = trellis(&["status", "--addr", addr, "--format", "json"]);
    assert!(out.status.success(), "trellis status: {}", printed(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON {e}: {}", printed(&out)))
}

/// `trellis status` as a table.
fn status_table(addr: &str) -> String {
    let out = trellis(&["status", "--addr", addr]);
    assert!(out.status.success(), "trellis status: {}", printed(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON group `group`, if the status lists it.
fn group(json: &Value, group: u64) -> Option<&Value> {
    json["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["group"] == group)
}

/// The ids of the groups the status lists.
fn group_ids(json: &Value) -> Vec<u64> {
    json["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["group"].as_u64().expect("group id"))
        .collect()
}

/// Polls the JSON status of `addr` until `pred` holds; panics with the
/// last one after [`SETTLE_TIMEOUT`].
async fn wait_status(addr: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let json = status_json(addr);
        if pred(&json) {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_TIMEOUT:?}; last status:\n{json:#}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Polls the log file at `path` until it contains `needle`.
async fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not in {} within {SETTLE_TIMEOUT:?}:\n{log}",
            path.display()
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Starts one replica of `group` registering with `coordinator`, data in
/// `dir/group-G`, its log (stderr, at info) appended to `log`.
fn start_shard(dir: &Path, group: u64, coordinator: &str, log: &Path) -> Proc {
    let data = dir.join(format!("group-{group}"));
    let data = data.to_str().expect("utf-8 temp path");
    let group = group.to_string();
    Proc::start_logged(
        &[
            "shard",
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--group",
            &group,
            "--coordinator",
            coordinator,
        ],
        &[("TRELLIS_LOG", "info"), ("NO_COLOR", "1")],
        Some(log),
    )
    .expect("start a shard")
}

/// Whether group `g` in the JSON status has a primary serving.
fn has_primary(json: &Value, g: u64) -> bool {
    group(json, g).is_some_and(|g| {
        g["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["role"] == "primary"))
    })
}

/// Story: a cluster of two groups grows a third with `trellis admin
/// add-group --group 3`. The new group shows at once with 0 slots and no
/// replica, and a second coordinator sees it on its next map refresh. A
/// replica started for group 3 registers and serves as its primary,
/// still with 0 slots (nothing moves yet), while the cluster keeps
/// serving. Adding a group that exists is refused, and so is removing a
/// group that owns slots, with the command to drain it first. Group 3,
/// owning nothing, is removed: the status no longer lists it, and a
/// replica of it started again is told to add the group first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_an_empty_group() {
    let mut cluster = Cluster::start(2).await.expect("cluster of two groups");
    let addr = cluster.addr(0).to_string();
    let before = status_json(&addr);
    assert_eq!(group_ids(&before), vec![1, 2], "{before:#}");
    let slots_of_2 = group(&before, 2).expect("group 2")["slots"].clone();
    assert!(slots_of_2.as_u64().is_some_and(|n| n > 0), "{before:#}");
    let second = cluster.add_coordinator(&[]).expect("a second coordinator");
    let second_addr = cluster.addr(second).to_string();

    // Add group 3: empty, shown at once here, and on the other
    // coordinator after its next refresh.
    let out = admin_ok(&["admin", "add-group", "--group", "3", "--addr", &addr]);
    assert!(
        out.contains("added group 3") && out.contains("trellis shard --group 3"),
        "{out}"
    );
    let json = status_json(&addr);
    assert_eq!(group_ids(&json), vec![1, 2, 3], "{json:#}");
    let three = group(&json, 3).expect("group 3");
    assert_eq!(three["slots"], 0, "a new group owns nothing: {json:#}");
    assert_eq!(three["members"][0]["role"], "unregistered", "{json:#}");
    assert_eq!(json["map_epoch"], before["map_epoch"], "no slot moved");
    wait_status(&second_addr, "the other coordinator sees group 3", |s| {
        group(s, 3).is_some()
    })
    .await;

    // A replica of group 3 registers and becomes its primary, with 0 slots.
    let log3 = cluster.dir().join("group-3.log");
    let shard3 = start_shard(cluster.dir(), 3, &addr, &log3);
    let json = wait_status(&addr, "group 3's replica serves", |s| has_primary(s, 3)).await;
    let three = group(&json, 3).expect("group 3");
    assert_eq!(three["slots"], 0, "{json:#}");
    assert_eq!(
        three["members"][0]["address"],
        shard3.field("grpc"),
        "{json:#}"
    );
    let table = status_table(&addr);
    let row = table
        .lines()
        .find(|l| l.contains(shard3.field("grpc")))
        .unwrap_or_else(|| panic!("no row for group 3's replica:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..2],
        ["3", "0"],
        "group 3 with 0 slots: {row}\n{table}"
    );

    // The cluster still serves: a key reads through the coordinator.
    let mut txn = cluster.txn(0).await.expect("txn client");
    txn.get(trellis_proto::v1::GetRequest {
        keys: vec![b"still-serving".to_vec()],
        consistency: None,
        ..Default::default()
    })
    .await
    .expect("a read after adding a group");

    // Refusals change nothing.
    for existing in ["3", "1"] {
        let err = admin_refused(&["admin", "add-group", "--group", existing, "--addr", &addr]);
        assert!(
            err.contains(&format!("group {existing} already exists")),
            "{err}"
        );
    }
    let err = admin_refused(&["admin", "remove-group", "--group", "2", "--addr", &addr]);
    assert!(
        err.contains("still owns") && err.contains("trellis admin drain-group --group 2"),
        "says to drain it first: {err}"
    );
    let err = admin_refused(&["admin", "remove-group", "--group", "9", "--addr", &addr]);
    assert!(err.contains("group 9 does not exist"), "{err}");
    let json = status_json(&addr);
    assert_eq!(group_ids(&json), vec![1, 2, 3], "{json:#}");
    assert_eq!(group(&json, 2).expect("group 2")["slots"], slots_of_2);

    // Group 3 owns nothing: it goes, on both coordinators.
    let out = admin_ok(&["admin", "remove-group", "--group", "3", "--addr", &addr]);
    assert!(out.contains("removed group 3"), "{out}");
    assert_eq!(group_ids(&status_json(&addr)), vec![1, 2]);
    wait_status(&second_addr, "the other coordinator forgets group 3", |s| {
        group(s, 3).is_none()
    })
    .await;

    // Its replica, restarted, is refused with the way back.
    shard3.kill9();
    let restarted_log = cluster.dir().join("group-3-again.log");
    let _again = start_shard(cluster.dir(), 3, &addr, &restarted_log);
    let log = wait_log(&restarted_log, "trellis admin add-group --group 3").await;
    assert!(log.contains("group 3 does not exist"), "{log}");
    assert_eq!(group_ids(&status_json(&addr)), vec![1, 2]);
    drop(cluster);
}

/// Story: a replica started for a group the catalog has never heard of is
/// refused, and its log says to run `trellis admin add-group --group 4`
/// first; it keeps retrying, so once the operator does, it registers and
/// serves as the new group's primary without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_an_unknown_group_is_told_to_add_it() {
    let cluster = Cluster::start(1).await.expect("cluster of one group");
    let addr = cluster.addr(0).to_string();
    let log = cluster.dir().join("group-4.log");
    let shard = start_shard(cluster.dir(), 4, &addr, &log);
    let text = wait_log(&log, "trellis admin add-group --group 4").await;
    assert!(text.contains("group 4 does not exist"), "{text}");
    assert_eq!(
        group_ids(&status_json(&addr)),
        vec![1],
        "nothing registered"
    );

    admin_ok(&["admin", "add-group", "--group", "4", "--addr", &addr]);
    let json = wait_status(&addr, "the waiting replica registers", |s| {
        has_primary(s, 4)
    })
    .await;
    let four = group(&json, 4).expect("group 4");
    assert_eq!(four["slots"], 0, "{json:#}");
    assert_eq!(
        four["members"][0]["address"],
        shard.field("grpc"),
        "{json:#}"
    );
}

/// Story: the group flags are checked like every other admin command's
/// before anything connects: out of range or missing is a usage error
/// (exit code 2) naming the flag; nothing listening is a run-time error
/// (exit code 1) naming the address.
#[test]
fn group_flags_are_checked() {
    for args in [
        &["admin", "add-group", "--group", "0"][..],
        &["admin", "add-group", "--group", "1025"],
        &["admin", "remove-group", "--group", "x"],
        &["admin", "remove-group"],
        &[
            "admin",
            "add-group",
            "--group",
            "2",
            "--addr",
            "http://127.0.0.1:1",
        ],
    ] {
        let out = trellis(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", printed(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--group") || err.contains("--addr"),
            "{args:?}: {err}"
        );
    }
    // A port nobody listens on (bound, then closed).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let err = admin_refused(&["admin", "add-group", "--group", "2", "--addr", &closed]);
    assert!(err.contains(&closed), "{err}");
    for command in ["add-group", "remove-group"] {
        let help = trellis(&["admin", command, "--help"]);
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("Examples:")
                && help.contains(&format!("trellis admin {command} --group 4")),
            "{help}"
        );
    }
}

/// A Txn commit that writes `key` = `value` (1PC or 2PC by the keys' groups).
fn put_request(writes: &[(&[u8], &[u8])]) -> trellis_proto::v1::CommitRequest {
    use trellis_proto::v1;
    v1::CommitRequest {
        txn_id: rand::random::<[u8; 16]>().to_vec(),
        writes: writes
            .iter()
            .map(|(k, v)| v1::Write {
                key: k.to_vec(),
                op: Some(v1::write::Op::Put(v.to_vec())),
            })
            .collect(),
        ..Default::default()
    }
}

/// Keys the drain test writes.
const DRAIN_KEYS: usize = 200;

/// Story: a cluster of two groups holds keys written by one- and
/// two-phase commits. `trellis admin drain-group --group 2 --wait` moves
/// every slot of group 2 to group 1 and exits 0 once done; every key then
/// reads back with its value and version through the coordinator, served
/// by group 1. With group 2's only replica killed, `remove-group` is
/// refused: nobody can say the group anchors no transaction. Once it runs
/// again, the group is removed (after its transaction records are
/// forgotten, which the finalizer does within seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_group_keeps_nothing_and_is_removed() {
    use trellis_proto::v1;
    let mut cluster = Cluster::start(2).await.expect("cluster of two groups");
    let addr = cluster.addr(0).to_string();
    let mut txn = cluster.txn(0).await.expect("txn client");
    let keys: Vec<Vec<u8>> = (0..DRAIN_KEYS)
        .map(|i| format!("drain-{i}").into_bytes())
        .collect();
    // One-phase writes, then pairs in one transaction (two-phase where the
    // pair spans both groups).
    for key in &keys[..DRAIN_KEYS / 2] {
        let out = txn
            .commit(put_request(&[(key, b"one")]))
            .await
            .expect("commit")
            .into_inner();
        assert!(
            matches!(
                out.outcome,
                Some(v1::commit_response::Outcome::Committed(_))
            ),
            "{out:?}"
        );
    }
    for pair in keys[DRAIN_KEYS / 2..].chunks(2) {
        let out = txn
            .commit(put_request(&[(&pair[0], b"two"), (&pair[1], b"two")]))
            .await
            .expect("commit")
            .into_inner();
        assert!(
            matches!(
                out.outcome,
                Some(v1::commit_response::Outcome::Committed(_))
            ),
            "{out:?}"
        );
    }
    let read = |items: Vec<v1::Item>| -> Vec<(Vec<u8>, Vec<u8>, u64)> {
        items
            .into_iter()
            .map(|i| (i.key, i.value, i.version))
            .collect()
    };
    let before = read(
        txn.get(v1::GetRequest {
            keys: keys.clone(),
            consistency: None,
            ..Default::default()
        })
        .await
        .expect("read before")
        .into_inner()
        .items,
    );
    assert!(
        before.iter().all(|(_, _, version)| *version > 0),
        "every key written"
    );

    let out = admin_ok(&[
        "admin",
        "drain-group",
        "--group",
        "2",
        "--wait",
        "--addr",
        &addr,
    ]);
    assert!(out.contains("done"), "{out}");
    let json = status_json(&addr);
    assert_eq!(group(&json, 2).expect("group 2")["slots"], 0, "{json:#}");
    assert_eq!(group(&json, 1).expect("group 1")["slots"], 4096, "{json:#}");
    let after = read(
        txn.get(v1::GetRequest {
            keys: keys.clone(),
            consistency: None,
            ..Default::default()
        })
        .await
        .expect("read after the drain")
        .into_inner()
        .items,
    );
    assert_eq!(after, before, "every key kept its value and version");
    // A write after the move gets a version above every imported one.
    let out = txn
        .commit(put_request(&[(&keys[0], b"after")]))
        .await
        .expect("commit after the drain")
        .into_inner();
    let Some(v1::commit_response::Outcome::Committed(done)) = out.outcome else {
        panic!("{out:?}");
    };
    let newest = before.iter().map(|(_, _, v)| *v).max().expect("keys");
    assert!(done.written[0].version > newest, "{done:?} above {newest}");

    // No primary of group 2 can answer: removal is refused.
    cluster.kill9_shard(2, 1);
    let err = admin_refused(&["admin", "remove-group", "--group", "2", "--addr", &addr]);
    assert!(err.contains("no primary of it answered"), "{err}");
    assert_eq!(group_ids(&status_json(&addr)), vec![1, 2]);

    // Back up, it anchors nothing once its records are forgotten: removed.
    cluster.restart_shard(2).await.expect("group 2 again");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let out = trellis(&["admin", "remove-group", "--group", "2", "--addr", &addr]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("transaction record") || err.contains("no primary of it answered"),
            "only transactions still held may delay the removal: {err}"
        );
        assert!(Instant::now() < deadline, "group 2 never removable: {err}");
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert_eq!(group_ids(&status_json(&addr)), vec![1]);
    drop(cluster);
}
