//! `trellis dev` and `trellis status` as a person uses them: one command
//! starts a cluster of separate processes, status shows it, Ctrl-C/SIGTERM
//! stops every child, data survives a restart, and a killed `trellis dev`
//! leaves no orphans.

use std::process::Command;
use std::time::Duration;

use trellis_proto::v1 as pb;
use trellis_tests::harness::{Proc, alive, channel, trellis_bin, txn_id, wait_gone};

/// Children must exit this soon after their parent goes.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(15);

async fn member_pids(addr: &str) -> (Vec<u32>, pb::StatusResponse) {
    let mut admin = pb::admin_client::AdminClient::new(channel(addr).await.expect("connect"));
    let status = admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let mut pids: Vec<u32> = status
        .groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.pid))
        .collect();
    // Coordinators register as `address/pid`.
    let coordinator = status
        .coordinators
        .iter()
        .filter(|c| c.heartbeat_age_s < 10)
        .filter_map(|c| c.id.rsplit_once('/').and_then(|(_, pid)| pid.parse().ok()))
        .next_back()
        .expect("the dev coordinator is registered");
    pids.push(coordinator);
    (pids, status)
}

fn dev(dir: &std::path::Path) -> Proc {
    let dir = dir.to_str().expect("utf-8 path");
    Proc::start(&[
        "dev",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--groups",
        "3",
    ])
    .expect("trellis dev starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dev(dir.path());
    let addr = cluster.field("grpc").to_string();
    let (pids, status) = member_pids(&addr).await;
    assert_eq!(status.groups.len(), 3);
    assert!(
        status.groups.iter().all(|g| g.members[0].role == "primary"),
        "{status:?}"
    );
    assert_eq!(
        status.groups.iter().map(|g| g.slots_owned).sum::<u32>(),
        trellis_types::SLOTS
    );
    assert!(
        pids.iter().all(|p| alive(*p)),
        "every shard is its own live process"
    );

    // A write through the public API.
    let mut txn = pb::txn_client::TxnClient::new(channel(&addr).await.expect("connect"));
    let written = txn
        .commit(pb::CommitRequest {
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![pb::Write {
                key: b"hello".to_vec(),
                op: Some(pb::write::Op::Put(b"world".to_vec())),
            }],
            durability: 0,
        })
        .await
        .expect("commit")
        .into_inner();
    assert!(matches!(
        written.outcome,
        Some(pb::commit_response::Outcome::Committed(_))
    ));

    // `trellis status` in both formats.
    let table = Command::new(trellis_bin())
        .args(["status", "--addr", &addr])
        .output()
        .expect("status runs");
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("primary") && table.lines().count() >= 5,
        "{table}"
    );
    let json = Command::new(trellis_bin())
        .args(["status", "--addr", &addr, "--format", "json"])
        .output()
        .expect("status runs");
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.starts_with("{\"map_epoch\":1,") && json.contains("\"role\":\"primary\""),
        "{json}"
    );
    // Cannot connect: a clear error and a failing exit code.
    let down = Command::new(trellis_bin())
        .args(["status", "--addr", "127.0.0.1:1"])
        .output()
        .expect("status runs");
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("connecting to the coordinator"));

    // SIGTERM stops every child; the data stays.
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
    assert!(
        wait_gone(&pids, ORPHAN_TIMEOUT),
        "every child stopped with trellis dev"
    );

    let cluster = dev(dir.path());
    let addr = cluster.field("grpc").to_string();
    let mut txn = pb::txn_client::TxnClient::new(channel(&addr).await.expect("connect"));
    let items = txn
        .get(pb::GetRequest {
            keys: vec![b"hello".to_vec()],
            consistency: None,
        })
        .await
        .expect("get")
        .into_inner()
        .items;
    assert_eq!(items[0].value, b"world", "data kept between runs");

    // SIGKILL of trellis dev itself: the children notice and exit.
    let (pids, _) = member_pids(&addr).await;
    cluster.kill9();
    assert!(
        wait_gone(&pids, ORPHAN_TIMEOUT),
        "no orphans after trellis dev is killed"
    );
}

#[test]
fn dev_refuses_what_it_cannot_do() {
    let out = Command::new(trellis_bin())
        .args([
            "dev",
            "--replicas",
            "9",
            "--data-dir",
            "/nonexistent-never-created",
        ])
        .output()
        .expect("dev runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a group has 1 to 5 replicas"));
}
