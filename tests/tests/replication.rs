//! Replication and failover over real processes: groups of three replicas,
//! a SYNC write load, and one replica killed, stopped or restarted. Every
//! acknowledged write must be there afterwards, writes must resume, and the
//! replica that was hit must come back in sync.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_proto::shard::v1 as shard_pb;
use trellis_proto::v1;
use trellis_tests::harness::{channel, http_get, txn_id};
use trellis_tests::netns::NetLab;
use trellis_tests::replicated::{
    CLIENT_NODE, COORD_NODE, ReplicatedCluster, SETTLE_TIMEOUT, lab_nodes, replica_node,
};

/// Concurrent writers of the load.
const WRITERS: usize = 4;
/// Keys read back per Get when checking.
const CHECK_BATCH: usize = 500;
/// Large values written while a backup is away, and their size: 8 MiB that
/// take about 4 s to catch up at the slowest pace allowed (2 MiB/s).
const CATCH_UP_BIG_VALUES: usize = 16;
const CATCH_UP_BIG_VALUE_BYTES: usize = 512 * 1024;

/// Acknowledged writes: (key, value).
type Acked = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

struct Load {
    stop: Arc<AtomicBool>,
    acked: Acked,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Writers committing fresh keys at SYNC durability: every third
    /// transaction writes two keys (usually two groups: two-phase commit).
    async fn start(addr: &str, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let channel = channel(addr).await.expect("coordinator channel");
            let mut client = v1::txn_client::TxnClient::new(channel);
            let stop = stop.clone();
            let acked = acked.clone();
            let tag = tag.to_string();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let keys: Vec<Vec<u8>> = if i.is_multiple_of(3) {
                        vec![
                            format!("{tag}/x/{w}/{i}").into_bytes(),
                            format!("{tag}/y/{w}/{i}").into_bytes(),
                        ]
                    } else {
                        vec![format!("{tag}/k/{w}/{i}").into_bytes()]
                    };
                    let value = format!("v{w}-{i}").into_bytes();
                    let request = v1::CommitRequest {
                        txn_id: txn_id(),
                        reads: vec![],
                        writes: keys
                            .iter()
                            .map(|k| v1::Write {
                                key: k.clone(),
                                op: Some(v1::write::Op::Put(value.clone())),
                            })
                            .collect(),
                        durability: v1::Durability::Sync as i32,
                    };
                    match client.commit(request).await {
                        Ok(response) => {
                            if let Some(v1::commit_response::Outcome::Committed(_)) =
                                response.into_inner().outcome
                            {
                                let mut acked = acked.lock().expect("acked");
                                for k in keys {
                                    acked.push((k, value.clone()));
                                }
                            }
                        }
                        // Unknown or refused: not acknowledged, so not
                        // checked; back off a little while the group heals.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        Load { stop, acked, tasks }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// Waits until `more` writes beyond `from` were acknowledged.
    async fn wait_progress(&self, from: usize, more: usize, what: &str) {
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        while self.count() < from + more {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: only {} of {more} more writes acknowledged within {SETTLE_TIMEOUT:?}",
                self.count() - from
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        Arc::try_unwrap(self.acked)
            .expect("writers stopped")
            .into_inner()
            .expect("acked")
    }
}

/// Every acknowledged write reads back (STRONG) with its value.
async fn check_acked(cluster: &ReplicatedCluster, acked: &[(Vec<u8>, Vec<u8>)]) {
    assert!(!acked.is_empty(), "the load acknowledged nothing");
    let mut client = cluster.txn().await.expect("txn client");
    for batch in acked.chunks(CHECK_BATCH) {
        let items = client
            .get(v1::GetRequest {
                keys: batch.iter().map(|(k, _)| k.clone()).collect(),
                consistency: None,
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner()
            .items;
        for ((key, value), item) in batch.iter().zip(items) {
            assert_eq!(
                (&item.value, item.version > 0),
                (value, true),
                "acknowledged write of {} lost",
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// Waits until group 1 has a serving primary other than `old`.
async fn wait_new_primary(cluster: &ReplicatedCluster, old: &str) -> v1::StatusResponse {
    new_primary(cluster, old).await.expect("failover")
}

/// Like [`wait_new_primary`], but a timeout is an error to handle.
async fn new_primary(cluster: &ReplicatedCluster, old: &str) -> anyhow::Result<v1::StatusResponse> {
    cluster
        .wait_for("a new primary in group 1", |s| {
            s.groups[0]
                .members
                .iter()
                .any(|m| m.role == "primary" && m.address != old && m.lease_ms > 0)
        })
        .await
}

/// Group `group` has all its replicas in sync, at the same LSN.
async fn wait_all_in_sync(cluster: &ReplicatedCluster, group: u32) -> v1::StatusResponse {
    let replicas = cluster.replicas() as usize;
    cluster
        .wait_for("every replica back in sync", |s| {
            let members = &s.groups[group as usize - 1].members;
            let primary_lsn = members
                .iter()
                .find(|m| m.role == "primary")
                .map(|m| m.last_lsn);
            members.len() == replicas
                && members.iter().all(|m| m.in_sync)
                && members.iter().filter(|m| m.role == "backup").count() == replicas - 1
                && members.iter().all(|m| Some(m.last_lsn) == primary_lsn)
        })
        .await
        .expect("group settles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_sync_load_loses_nothing() {
    let mut cluster = ReplicatedCluster::start(2, 3, &[]).await.expect("cluster");
    let load = Load::start(cluster.addr(), "kill").await;
    load.wait_progress(0, 100, "before the kill").await;

    let victim = cluster.primary(1).await.expect("primary");
    let victim_addr = cluster.proc(1, victim).field("grpc").to_string();
    cluster.kill9(1, victim);
    let at_kill = load.count();
    // Writes resume on a new primary (the load touches both groups).
    let status = wait_new_primary(&cluster, &victim_addr).await;
    assert!(
        status.groups[0]
            .members
            .iter()
            .all(|m| m.epoch != 1 || m.role != "primary")
    );
    load.wait_progress(at_kill, 200, "after the failover").await;
    let acked = load.stop().await;
    check_acked(&cluster, &acked).await;

    // The killed replica comes back as a backup and catches up.
    cluster.restart(1, victim).expect("restart");
    let status = wait_all_in_sync(&cluster, 1).await;
    let back = status.groups[0]
        .members
        .iter()
        .find(|m| m.address == victim_addr)
        .expect("member");
    assert_eq!(back.role, "backup", "{status:#?}");
    check_acked(&cluster, &acked).await;
}

/// A counter of a process's /metrics.
/// The value of the metric series `series` (a name, with its labels if it
/// has any) of `proc`, if it renders one.
async fn metric(proc: &trellis_tests::harness::Proc, series: &str) -> Option<f64> {
    let metrics = http_get(proc.field("metrics"), "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

async fn counter(proc: &trellis_tests::harness::Proc, name: &str) -> u64 {
    let metrics = http_get(proc.field("metrics"), "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no counter {name} in:\n{metrics}"))
}

/// How a backup killed for a while must catch up when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    /// The records it misses are still in the primary's log on disk.
    FromLog,
    /// The primary snapshotted and deleted that part of its log.
    BySnapshot,
}

/// Kills a backup under SYNC load; the primary takes it out of the
/// configuration and SYNC writes go on; the backup returns and catches up
/// `how`. A tiny in-memory feed (4 KiB) makes either way the only one.
async fn dead_backup_returns(how: CatchUp) {
    // Catch-up at the slowest pace allowed, so that it lasts long enough
    // (CATCH_UP_BIG_VALUES, seconds) for its progress to be seen.
    let mut args = vec![
        "--feed-bytes-max",
        "4096",
        "--segment-bytes",
        "4096",
        "--catch-up-bytes-per-sec",
        "2097152",
    ];
    if how == CatchUp::BySnapshot {
        // Snapshot often and keep no log after it.
        args.extend(["--snapshot-every-bytes", "16384", "--log-retain-bytes", "0"]);
    }
    let mut cluster = ReplicatedCluster::start(1, 3, &args)
        .await
        .expect("cluster");
    let load = Load::start(cluster.addr(), "backup").await;
    load.wait_progress(0, 50, "before the kill").await;
    let primary = cluster.primary(1).await.expect("primary");
    let victim = (1..=3).find(|r| *r != primary).expect("a backup");
    let victim_addr = cluster.proc(1, victim).field("grpc").to_string();
    cluster.kill9(1, victim);
    // The primary takes it out of the configuration; SYNC writes go on.
    cluster
        .wait_for("the dead backup out of the configuration", |s| {
            s.groups[0]
                .members
                .iter()
                .any(|m| m.address == victim_addr && !m.in_sync)
        })
        .await
        .expect("reconfiguration");
    let removed_at = load.count();
    load.wait_progress(removed_at, 300, "SYNC writes without the dead backup")
        .await;
    // Megabytes the returning backup must be sent, paced: its catch-up
    // shows in the status and the metrics while it goes on.
    let mut client = cluster.txn().await.expect("txn client");
    let mut big_acked = Vec::new();
    for i in 0..CATCH_UP_BIG_VALUES {
        let key = format!("big/{i}").into_bytes();
        let value = vec![b'0' + (i % 10) as u8; CATCH_UP_BIG_VALUE_BYTES];
        if commit_one(&mut client, &key, &value, v1::Durability::Sync).await {
            big_acked.push((key, value));
        }
    }
    assert!(!big_acked.is_empty(), "no big value was acknowledged");
    let primary_proc = cluster.proc(1, primary);
    if how == CatchUp::BySnapshot {
        // Two snapshots since the kill: the log the backup needs is gone.
        let before = counter(primary_proc, "trellis_shard_snapshots_total").await;
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        while counter(primary_proc, "trellis_shard_snapshots_total").await < before + 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the primary took no snapshots"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    cluster.restart(1, victim).expect("restart");
    let mode = match how {
        CatchUp::BySnapshot => "snapshot",
        CatchUp::FromLog => "log",
    };
    let series =
        format!("trellis_repl_catch_up_target{{backup=\"{victim_addr}\",mode=\"{mode}\"}}");
    let (mut in_status, mut in_metrics) = (false, false);
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    while !(in_status && in_metrics) {
        assert!(
            std::time::Instant::now() < deadline,
            "the {mode} catch-up of {victim_addr} was not reported (status: {in_status}, \
             metrics: {in_metrics})"
        );
        if let Ok(status) = cluster.status().await
            && let Some(m) = status.groups[0]
                .members
                .iter()
                .find(|m| m.address == victim_addr && m.catch_up == mode)
        {
            assert!(
                m.catch_up_total > 0 && m.catch_up_done <= m.catch_up_total,
                "catch-up progress out of range: {m:?}"
            );
            in_status = true;
        }
        let primary_proc = cluster.proc(1, primary);
        if metric(primary_proc, &series).await.is_some_and(|v| v > 0.0) {
            in_metrics = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_all_in_sync(&cluster, 1).await;
    cluster
        .wait_for("no catch-up reported once in sync", |s| {
            s.groups[0].members.iter().all(|m| m.catch_up.is_empty())
        })
        .await
        .expect("catch-up report cleared");
    let installs = counter(
        cluster.proc(1, victim),
        "trellis_repl_snapshot_installs_total",
    )
    .await;
    let primary = cluster.primary(1).await.expect("primary");
    let primary_proc = cluster.proc(1, primary);
    let from_log = counter(primary_proc, "trellis_repl_catch_up_log_records_total").await;
    // Either way the catch-up went through the primary's pacer.
    let paced = counter(primary_proc, "trellis_repl_catch_up_bytes_total").await;
    match how {
        CatchUp::BySnapshot => {
            assert!(installs >= 1, "caught up without a snapshot");
            assert!(
                paced > 0,
                "a snapshot was sent but no catch-up bytes counted"
            );
        }
        CatchUp::FromLog => {
            assert_eq!(installs, 0, "caught up by snapshot, not from the log");
            assert!(from_log > 0, "nothing was read from the log on disk");
        }
    }
    let acked = load.stop().await;
    check_acked(&cluster, &acked).await;
    // One at a time: a batch of them would pass gRPC's message limit.
    for pair in big_acked.chunks(1) {
        check_acked(&cluster, pair).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backup_is_removed_and_returns_by_snapshot() {
    dead_backup_returns(CatchUp::BySnapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backup_is_removed_and_returns_from_the_log_on_disk() {
    dead_backup_returns(CatchUp::FromLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_primary_is_fenced_and_rejoins() {
    let cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let load = Load::start(cluster.addr(), "stop").await;
    load.wait_progress(0, 50, "before the stop").await;
    let old = cluster.primary(1).await.expect("primary");
    let old_addr = cluster.proc(1, old).field("grpc").to_string();
    cluster.proc(1, old).signal(libc::SIGSTOP);
    wait_new_primary(&cluster, &old_addr).await;
    let at_failover = load.count();
    load.wait_progress(at_failover, 100, "writes on the new primary")
        .await;

    // Woken up, the old primary's lease has long lapsed: it must refuse to
    // read or write, before it has even heard of the new configuration.
    cluster.proc(1, old).signal(libc::SIGCONT);
    let mut direct = shard_pb::shard_client::ShardClient::new(
        channel(&old_addr)
            .await
            .expect("channel to the old primary"),
    );
    let read = direct
        .read(shard_pb::ReadRequest {
            map_epoch: 0,
            keys: vec![b"stop/k/0/1".to_vec()],
            ..Default::default()
        })
        .await
        .expect_err("a fenced primary must not serve a read");
    let write = direct
        .commit_local(shard_pb::CommitLocalRequest {
            durability: 2,
            map_epoch: 0,
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![shard_pb::WriteOp {
                key: b"stop/k/0/1".to_vec(),
                value: b"stale".to_vec(),
                delete: false,
            }],
        })
        .await
        .expect_err("a fenced primary must not take a write");
    for status in [read, write] {
        let reason = trellis_proto::error::error_info(&status)
            .and_then(|info| shard_pb::ErrorReason::from_str_name(&info.reason));
        assert_eq!(
            reason,
            Some(shard_pb::ErrorReason::NotPrimary),
            "{status:?}"
        );
    }

    let status = wait_all_in_sync(&cluster, 1).await;
    let back = status.groups[0]
        .members
        .iter()
        .find(|m| m.address == old_addr)
        .expect("member");
    assert_eq!(back.role, "backup");
    let acked = load.stop().await;
    check_acked(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_transfer_moves_the_primary_without_loss() {
    let cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let load = Load::start(cluster.addr(), "move").await;
    load.wait_progress(0, 50, "before the transfer").await;
    let old = cluster.primary(1).await.expect("primary");
    let target = (1..=3).find(|r| *r != old).expect("a backup");
    let target_addr = cluster.proc(1, target).field("grpc").to_string();
    let out = tokio::process::Command::new(trellis_tests::harness::trellis_bin())
        .args([
            "admin",
            "transfer-primary",
            "--addr",
            cluster.addr(),
            "--group",
            "1",
            "--to",
            &target_addr,
        ])
        .output()
        .await
        .expect("trellis admin runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("primary moved"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.primary(1).await.expect("primary"), target);
    let moved_at = load.count();
    load.wait_progress(moved_at, 100, "writes on the new primary")
        .await;
    let acked = load.stop().await;
    check_acked(&cluster, &acked).await;
    wait_all_in_sync(&cluster, 1).await;

    // Refused with a reason: a target that is not a member.
    let out = tokio::process::Command::new(trellis_tests::harness::trellis_bin())
        .args([
            "admin",
            "transfer-primary",
            "--addr",
            cluster.addr(),
            "--group",
            "1",
            "--to",
            "127.0.0.1:1",
        ])
        .output()
        .await
        .expect("trellis admin runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not an in-sync backup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rounds of the ASYNC demonstration (each: stop the backups, write ASYNC,
/// kill the primary, fail over).
const ASYNC_ROUNDS: u32 = 3;
/// ASYNC writes tried per round, and the time they may take: the primary
/// must die before it notices its backups are silent
/// (`BACKUP_SILENCE_MAX`, 500 ms) and takes them out of the configuration.
const ASYNC_WRITES: usize = 5;
const ASYNC_WINDOW: Duration = Duration::from_millis(200);
/// SYNC writes per round, acknowledged before the backups are stopped.
const SYNC_WRITES: usize = 10;

async fn commit_one(
    client: &mut v1::txn_client::TxnClient<tonic::transport::Channel>,
    key: &[u8],
    value: &[u8],
    durability: v1::Durability,
) -> bool {
    let request = v1::CommitRequest {
        txn_id: txn_id(),
        reads: vec![],
        writes: vec![v1::Write {
            key: key.to_vec(),
            op: Some(v1::write::Op::Put(value.to_vec())),
        }],
        durability: durability as i32,
    };
    matches!(
        client.commit(request).await.map(|r| r.into_inner().outcome),
        Ok(Some(v1::commit_response::Outcome::Committed(_)))
    )
}

/// ASYNC answers once the primary alone has a write, so a failover right
/// after can lose it — the at-risk window, shown here: the backups are
/// killed, a few ASYNC writes are acknowledged, the primary is killed, the
/// backups restart and one takes over without them. SYNC writes acknowledged before are
/// never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writes_can_be_lost_by_a_failover_sync_writes_never() {
    let mut cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let mut sync_acked = Vec::new();
    let mut async_acked_total = 0;
    let mut lost = 0;
    for round in 0..ASYNC_ROUNDS {
        wait_all_in_sync(&cluster, 1).await;
        let mut client = cluster.txn().await.expect("txn client");
        for i in 0..SYNC_WRITES {
            let key = format!("sync/{round}/{i}").into_bytes();
            let value = format!("s{round}-{i}").into_bytes();
            if commit_one(&mut client, &key, &value, v1::Durability::Sync).await {
                sync_acked.push((key, value));
            }
        }
        let primary = cluster.primary(1).await.expect("primary");
        let old_addr = cluster.proc(1, primary).field("grpc").to_string();
        let backups: Vec<u32> = (1..=3).filter(|r| *r != primary).collect();
        // Killed, not stopped: a stopped process's kernel would still take
        // the primary's records into its socket buffer and apply them after
        // SIGCONT.
        for b in &backups {
            cluster.kill9(1, *b);
        }
        let started = std::time::Instant::now();
        let mut async_acked = Vec::new();
        for i in 0..ASYNC_WRITES {
            if started.elapsed() >= ASYNC_WINDOW {
                break;
            }
            let key = format!("async/{round}/{i}").into_bytes();
            if commit_one(&mut client, &key, b"a", v1::Durability::Async).await {
                async_acked.push(key);
            }
        }
        // The primary shows what it alone holds.
        if !async_acked.is_empty() {
            let primary_proc = cluster.proc(1, primary);
            let records = metric(primary_proc, "trellis_repl_at_risk_records").await;
            assert!(
                records.is_some_and(|r| r >= async_acked.len() as f64),
                "{} ASYNC writes on the primary alone, at-risk records {records:?}",
                async_acked.len()
            );
            let seconds = metric(primary_proc, "trellis_repl_at_risk_seconds").await;
            assert!(
                seconds.is_some_and(|s| s > 0.0),
                "records at risk but at-risk seconds {seconds:?}"
            );
        }
        cluster.kill9(1, primary);
        for b in &backups {
            cluster.restart(1, *b).expect("restart a backup");
        }
        async_acked_total += async_acked.len();
        // A backup takes over — unless the primary had already taken the
        // silent backups out of the configuration (a slow machine), in
        // which case only the old primary may serve again.
        if new_primary(&cluster, &old_addr).await.is_ok() {
            let mut client = cluster.txn().await.expect("txn client");
            let items = client
                .get(v1::GetRequest {
                    keys: async_acked.clone(),
                    consistency: None,
                    ..Default::default()
                })
                .await
                .expect("get on the new primary")
                .into_inner()
                .items;
            let missing = items.iter().filter(|item| item.version == 0).count();
            eprintln!(
                "round {round}: {} ASYNC writes acknowledged, {missing} lost by the failover",
                async_acked.len()
            );
            lost += missing;
        } else {
            eprintln!(
                "round {round}: no failover (the backups were already out of the configuration)"
            );
        }
        cluster
            .restart(1, primary)
            .expect("restart the old primary");
    }
    wait_all_in_sync(&cluster, 1).await;
    check_acked(&cluster, &sync_acked).await;
    assert!(
        async_acked_total > 0,
        "no ASYNC write was acknowledged while the backups were down"
    );
    assert!(
        lost > 0,
        "{ASYNC_ROUNDS} failovers right after {async_acked_total} ASYNC writes lost none of them: \
         either the window was missed every round or ASYNC waits for backups"
    );
}

/// How long the partition test keeps probing every member directly while
/// the primary is cut off, and how often.
const SPLIT_PROBES: u32 = 20;
const SPLIT_PROBE_EVERY: Duration = Duration::from_millis(250);

fn node_refs(nodes: &[String]) -> Vec<&str> {
    nodes.iter().map(String::as_str).collect()
}

/// Members of `group` that serve a STRONG read when asked directly (a
/// member that is not a primary holding its lease must refuse).
async fn serving_members(cluster: &ReplicatedCluster, group: u32) -> Vec<String> {
    let mut serving = Vec::new();
    for r in 1..=cluster.replicas() {
        let addr = cluster.proc(group, r).field("grpc").to_string();
        let Ok(channel) = channel(&addr).await else {
            continue;
        };
        let mut direct = shard_pb::shard_client::ShardClient::new(channel);
        let read = direct
            .read(shard_pb::ReadRequest {
                map_epoch: 0,
                keys: vec![b"split/probe".to_vec()],
                ..Default::default()
            })
            .await;
        if read.is_ok() {
            serving.push(addr);
        }
    }
    serving
}

/// Which links of the primary a split test cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Both ways between the primary and each backup.
    FromBackups,
    /// Only the backups' packets to the primary: the backups still hear
    /// the primary's records and heartbeats, it hears no acknowledgement.
    AcksLost,
    /// Both ways from the backups and from the coordinator (the catalog).
    FromGroupAndCatalog,
}

/// A primary cut from its backups (`how`), over real processes in network
/// namespaces of their own. The clients still reach
/// every member directly. At no probe may two members serve; writes must
/// resume; after the cut heals every acknowledged SYNC write is there and
/// the group is whole with one primary. Returns the members seen serving
/// while cut, and the old primary's address.
fn split(tag: &str, how: Split) -> (std::collections::BTreeSet<String>, String) {
    let lab = NetLab::create(tag, &node_refs(&lab_nodes(1, 3))).expect("network namespaces");
    lab.run_in(CLIENT_NODE, || async {
        let cluster = ReplicatedCluster::start_in(&lab, 1, 3, &[])
            .await
            .expect("cluster");
        let load = Load::start(cluster.addr(), tag).await;
        load.wait_progress(0, 50, "before the cut").await;
        let old = cluster.primary(1).await.expect("primary");
        let old_addr = cluster.proc(1, old).field("grpc").to_string();
        let old_node = replica_node(1, old);
        for r in (1..=3).filter(|r| *r != old) {
            let backup = replica_node(1, r);
            match how {
                Split::AcksLost => lab.cut_oneway(&backup, &old_node),
                Split::FromBackups | Split::FromGroupAndCatalog => lab.cut(&old_node, &backup),
            }
            .expect("cut");
        }
        if how == Split::FromGroupAndCatalog {
            lab.cut(&old_node, COORD_NODE).expect("cut");
        }
        let at_cut = load.count();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..SPLIT_PROBES {
            let serving = serving_members(&cluster, 1).await;
            assert!(
                serving.len() <= 1,
                "split brain: {serving:?} all serve; cuts {:?}",
                lab.cuts()
            );
            seen.extend(serving);
            tokio::time::sleep(SPLIT_PROBE_EVERY).await;
        }
        load.wait_progress(at_cut, 100, "writes while the primary is cut off")
            .await;

        lab.heal_all().expect("heal");
        let status = wait_all_in_sync(&cluster, 1).await;
        assert_eq!(
            status.groups[0]
                .members
                .iter()
                .filter(|m| m.role == "primary")
                .count(),
            1,
            "{status:#?}"
        );
        let acked = load.stop().await;
        check_acked(&cluster, &acked).await;
        (seen, old_addr)
    })
    .expect("the test body runs in the client namespace")
}

/// Cut from its backups only, the primary still reaches the catalog: it
/// may drop them from the configuration and go on alone (they become
/// learners and must not serve), or they may replace it; never both.
#[test]
fn a_primary_cut_from_its_backups_never_leaves_two_serving() {
    let (seen, _) = split("split", Split::FromBackups);
    assert!(
        !seen.is_empty(),
        "no member served while the primary was cut"
    );
}

/// Cut from its backups and the coordinator, the primary cannot change the
/// configuration: its lease lapses and it refuses the clients that still
/// reach it, while a backup is promoted and serves.
#[test]
fn a_primary_cut_from_its_group_and_catalog_is_replaced_and_refuses_clients() {
    let (seen, old) = split("isolated", Split::FromGroupAndCatalog);
    assert!(
        seen.iter().any(|a| *a != old),
        "no backup took over while the primary was cut off: {seen:?}"
    );
}

/// One way only: the primary's records reach the backups, their
/// acknowledgements never come back. The primary must not count on them
/// (SYNC writes wait for them) and the backups, still hearing it, must not
/// promote themselves behind its back.
#[test]
fn a_primary_that_hears_no_acknowledgements_never_leaves_two_serving() {
    let (seen, _) = split("acks", Split::AcksLost);
    assert!(
        !seen.is_empty(),
        "no member served while the acks were lost"
    );
}
