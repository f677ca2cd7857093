//! Reads on backups over real processes (issue 21): one group of three
//! replicas. STALE reads are answered by backups within their bound, a
//! session reads its own writes even when they were ASYNC, a backup cut
//! from its primary stops serving once it can no longer prove the bound,
//! and bad bounds are refused.

use std::time::Duration;

use tokio::time::Instant;
use trellis_client::{Client, Consistency, Durability, Error};
use trellis_proto::shard::v1 as shard_pb;
use trellis_proto::v1;
use trellis_tests::harness::{channel, http_get};
use trellis_tests::replicated::ReplicatedCluster;

/// Keys written, then read many times.
const KEYS: usize = 20;
/// STALE reads of all the keys.
const READS: usize = 60;
/// The bound of those reads.
const BOUND: Duration = Duration::from_millis(500);
/// Write-then-read rounds of the read-your-writes check.
const RYW_ROUNDS: usize = 40;
/// Reads of the cut backup, at most, before it must have declined.
const CUT_READS_MAX: usize = 400;
/// Backups tried, at most, for one that is in sync and serves.
const PICK_ATTEMPTS_MAX: usize = 20;
/// The bound asked of the cut backup.
const CUT_BOUND_MS: u64 = 300;

fn key(i: usize) -> Vec<u8> {
    format!("stale/{i:03}").into_bytes()
}

async fn put(client: &Client, key: &[u8], value: &[u8], durability: Durability) {
    let txn = client.begin();
    txn.set_durability(durability);
    txn.put(key, value).expect("put");
    txn.commit().await.expect("commit");
}

/// The value of the metric series `series` (name and labels) of a process.
async fn metric(proc: &trellis_tests::harness::Proc, series: &str) -> f64 {
    let metrics = http_get(proc.field("metrics"), "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_served_by_backups_within_their_bound_and_read_your_writes() {
    let cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    for k in &keys {
        put(&client, k, b"old", Durability::Sync).await;
        put(&client, k, k, Durability::Sync).await;
    }
    // Past the bound, "old" was overwritten longer ago than any STALE read
    // may look back: every read must return the newest values.
    tokio::time::sleep(BOUND + Duration::from_millis(100)).await;
    let mut from_backups = 0;
    for _ in 0..READS {
        let (items, sources) = client
            .get_from(&keys, Consistency::Stale(BOUND))
            .await
            .expect("stale read");
        for (k, item) in keys.iter().zip(&items) {
            assert_eq!(
                &item.value, k,
                "a STALE read returned a value overwritten past its bound"
            );
        }
        assert_eq!(sources.len(), 1, "{sources:?}");
        let source = &sources[0];
        assert!(source.staleness <= BOUND, "{source:?}");
        if source.backup {
            from_backups += 1;
        }
    }
    assert!(
        from_backups > 0,
        "no STALE read of {READS} was answered by a backup"
    );
    let primary = cluster.primary(1).await.expect("primary");
    let mut served_by_backups = 0.0;
    for r in 1..=cluster.replicas() {
        if r != primary {
            served_by_backups += metric(
                cluster.proc(1, r),
                "trellis_reads_total{consistency=\"stale\",role=\"backup\"}",
            )
            .await;
        }
    }
    assert!(
        served_by_backups >= f64::from(from_backups),
        "the backups count {served_by_backups} STALE reads, the client saw {from_backups}"
    );

    // The cluster status shows STALE reads per second on the backups,
    // while a reader keeps reading.
    let reader = {
        let client = client.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.get(&keys, Consistency::Stale(BOUND)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let status = cluster
        .wait_for("a backup showing STALE reads per second", |s| {
            s.groups[0]
                .members
                .iter()
                .any(|m| m.role == "backup" && m.stale_reads_per_second > 0.0)
        })
        .await;
    reader.abort();
    let status = status.expect("status");
    for m in &status.groups[0].members {
        assert!(m.stale_reads_per_second <= m.reads_per_second, "{m:?}");
        if m.role == "backup" {
            assert_eq!(
                m.stale_reads_per_second, m.reads_per_second,
                "a backup serves only STALE reads: {m:?}"
            );
        }
    }

    // Bad bounds: zero, and past the named maximum.
    for bound in [
        Duration::ZERO,
        trellis_types::limits::STALENESS_MAX + Duration::from_millis(1),
    ] {
        let err = client
            .get(&keys[..1], Consistency::Stale(bound))
            .await
            .expect_err("a bad bound must be refused");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("max_staleness_ms")),
            "{err:?}"
        );
    }
    // A session floor no commit of this cluster made (another cluster's
    // token, or a made-up one): refused, not waited for forever nor
    // silently read past.
    let mut txn = cluster.txn().await.expect("txn client");
    let status = txn
        .get(v1::GetRequest {
            keys: keys[..1].to_vec(),
            consistency: Some(v1::Consistency {
                level: v1::consistency::Level::Stale as i32,
                max_staleness_ms: BOUND.as_millis() as u64,
            }),
            floors: vec![v1::SessionFloor {
                group_id: 1,
                version: 1 << 60,
            }],
        })
        .await
        .expect_err("a floor from the future must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("session floor"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_cut_from_its_primary_stops_serving_stale_reads() {
    let cluster = ReplicatedCluster::start(1, 3, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    put(&client, b"cut/k", b"v", Durability::Sync).await;
    let read = shard_pb::ReadRequest {
        map_epoch: 0,
        keys: vec![b"cut/k".to_vec()],
        max_staleness_ms: CUT_BOUND_MS,
        floor_version: 0,
    };
    // Fresh: an in-sync backup serves. (On a loaded machine a backup may
    // drop out of the configuration for a moment and rejoin as a learner,
    // which serves nothing: take one that is in sync and serves.)
    let mut found = None;
    for _ in 0..PICK_ATTEMPTS_MAX {
        let status = cluster
            .wait_for("an in-sync backup", |s| {
                s.groups[0]
                    .members
                    .iter()
                    .any(|m| m.role == "backup" && m.in_sync)
            })
            .await
            .expect("status");
        let addr = status.groups[0]
            .members
            .iter()
            .find(|m| m.role == "backup" && m.in_sync)
            .map(|m| m.address.clone())
            .expect("found above");
        let mut shard = shard_pb::shard_client::ShardClient::new(
            channel(&addr).await.expect("channel to the backup"),
        );
        if let Ok(answer) = shard.read(read.clone()).await {
            let answer = answer.into_inner();
            assert_eq!(answer.results[0].value, b"v");
            assert!(answer.source.as_ref().is_some_and(|s| s.backup));
            found = Some((addr, shard));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (backup_addr, mut shard) = found.expect("no in-sync backup served a STALE read");
    let primary = cluster.primary(1).await.expect("primary");
    let backup = cluster.replica_at(1, &backup_addr).expect("one of ours");

    // Stop the coordinator too, so that nobody promotes the backup: it
    // stays a backup whose last safe point only ages.
    cluster.coordinator().signal(libc::SIGSTOP);
    cluster.proc(1, primary).signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut declined = None;
    for _ in 0..CUT_READS_MAX {
        match shard.read(read.clone()).await {
            Ok(answer) => {
                let source = answer.into_inner().source.expect("source");
                assert!(
                    source.staleness_ms <= CUT_BOUND_MS,
                    "served past its bound: {source:?}"
                );
            }
            Err(status) => {
                declined = Some(status);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = stopped.elapsed();
    cluster.proc(1, primary).signal(libc::SIGCONT);
    cluster.coordinator().signal(libc::SIGCONT);
    let status = declined.unwrap_or_else(|| {
        panic!("the cut backup still served after {CUT_READS_MAX} reads ({waited:?})")
    });
    let reason = trellis_proto::error::error_info(&status)
        .and_then(|info| shard_pb::ErrorReason::from_str_name(&info.reason));
    assert_eq!(reason, Some(shard_pb::ErrorReason::NotFresh), "{status:?}");
    assert!(
        metric(cluster.proc(1, backup), "trellis_stale_read_declines_total").await >= 1.0,
        "the decline is not counted"
    );
    // The client still gets its answer: from the primary.
    let (items, _) = client
        .get_from(
            &[b"cut/k".to_vec()],
            Consistency::Stale(Duration::from_millis(CUT_BOUND_MS)),
        )
        .await
        .expect("a STALE read falls back to the primary");
    assert_eq!(items[0].value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_async_writes_from_lagging_backups() {
    // Backups that apply every batch late (failpoint backup_apply_lag).
    let cluster = ReplicatedCluster::start_with_shard_env(
        1,
        3,
        &[("TRELLIS_FAILPOINTS", "backup_apply_lag")],
    )
    .await
    .expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    // An ASYNC commit is answered before any backup has it, yet the same
    // session's STALE read (with a bound long enough to allow the older
    // value) must see it.
    let session = client.new_session();
    let k = key(KEYS + 1);
    let mut from_backups = 0;
    for round in 0..RYW_ROUNDS {
        let value = format!("v{round}").into_bytes();
        put(&session, &k, &value, Durability::Async).await;
        let (items, sources) = session
            .get_from(
                std::slice::from_ref(&k),
                Consistency::Stale(Duration::from_secs(30)),
            )
            .await
            .expect("stale read");
        assert_eq!(
            items[0].value, value,
            "round {round}: a session's STALE read missed its own write ({sources:?})"
        );
        from_backups += sources.iter().filter(|s| s.backup).count();
    }
    assert!(from_backups > 0, "no read reached a backup");
}
