//! The real `trellis shard` binary on 127.0.0.1:0: durability across SIGKILL,
//! prepared transactions surviving restarts, bad input, slot ownership,
//! clean shutdown and metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic::Code;
use trellis_proto::shard::v1 as pb;
use trellis_tests::harness::{Proc, http_get, shard_client, txn_id};
use trellis_types::limits::{KEY_BYTES_MAX, TXN_BYTES_MAX, TXN_KEYS_MAX, VALUE_BYTES_MAX};
use trellis_types::slot_of;

fn start_shard(dir: &std::path::Path, extra: &[&str]) -> Proc {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec![
        "shard",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Proc::start(&args).expect("shard starts")
}

fn put(key: &[u8], value: &[u8]) -> pb::WriteOp {
    pb::WriteOp {
        key: key.to_vec(),
        value: value.to_vec(),
        delete: false,
    }
}

async fn read(
    client: &mut pb::shard_client::ShardClient<tonic::transport::Channel>,
    keys: &[Vec<u8>],
) -> Vec<pb::ReadResult> {
    client
        .read(pb::ReadRequest {
            map_epoch: 1,
            keys: keys.to_vec(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .results
}

/// Writers commit three-key transactions (all three keys get the same
/// value) as fast as they can while the shard is SIGKILLed. After restart:
/// every acknowledged transaction is there, and no transaction is half
/// applied — the three keys of each writer always agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    const WRITERS: usize = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = start_shard(dir.path(), &[]);
    let client = shard_client(&shard).await.expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = client.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let keys: Vec<Vec<u8>> = ["a", "b", "c"]
                .iter()
                .map(|k| format!("w{w}:{k}").into_bytes())
                .collect();
            // (highest acknowledged i, highest attempted i)
            let (mut acked, mut attempted) = (0u64, 0u64);
            let mut versions = vec![0u64; 3];
            for i in 1.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                attempted = i;
                let value = i.to_string().into_bytes();
                let request = pb::CommitLocalRequest {
                    durability: 0,
                    map_epoch: 1,
                    txn_id: txn_id(),
                    reads: keys
                        .iter()
                        .zip(&versions)
                        .map(|(k, v)| pb::ReadVersion {
                            key: k.clone(),
                            version: *v,
                        })
                        .collect(),
                    writes: keys.iter().map(|k| put(k, &value)).collect(),
                };
                match client.commit_local(request).await {
                    Ok(response) => match response.into_inner().outcome {
                        Some(pb::commit_local_response::Outcome::Committed(written)) => {
                            versions = written.written.iter().map(|kv| kv.version).collect();
                            acked = i;
                        }
                        other => panic!("writer {w} owns its keys; refusal {other:?}"),
                    },
                    Err(_) => break, // the shard died under us
                }
            }
            (acked, attempted)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shard.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("writer task"));
    }
    let total_acked: u64 = results.iter().map(|r| r.0).sum();
    assert!(total_acked > 0, "no write was acknowledged before the kill");

    let shard = start_shard(dir.path(), &[]);
    let mut client = shard_client(&shard).await.expect("connect");
    for (w, (acked, attempted)) in results.iter().enumerate() {
        let keys: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .map(|k| format!("w{w}:{k}").into_bytes())
            .collect();
        let found = read(&mut client, &keys).await;
        let values: Vec<u64> = found
            .iter()
            .map(|r| {
                if r.version == 0 {
                    0
                } else {
                    String::from_utf8_lossy(&r.value).parse().expect("number")
                }
            })
            .collect();
        assert!(
            values.iter().all(|v| *v == values[0]),
            "writer {w}: half-applied transaction {values:?}"
        );
        assert!(
            values[0] >= *acked,
            "writer {w}: acknowledged {acked} but found {}",
            values[0]
        );
        assert!(
            values[0] <= *attempted,
            "writer {w}: found {} never attempted",
            values[0]
        );
    }
    assert!(shard.terminate(), "clean shutdown after recovery");
}

/// A prepared transaction holds its locks across SIGKILL and restart, is
/// reported to readers as locked, and is resolved later: the anchor
/// decides, the participant finalizes, the lock goes.
#[tokio::test]
async fn prepared_transactions_survive_restart_and_resolve_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = start_shard(dir.path(), &["--group", "7"]);
    let mut client = shard_client(&shard).await.expect("connect");
    let committed = txn_id();
    let aborted = txn_id();
    for (txn, key) in [(&committed, b"pc".to_vec()), (&aborted, b"pa".to_vec())] {
        let vote = client
            .prepare(pb::PrepareRequest {
                durability: 0,
                map_epoch: 1,
                txn_id: txn.clone(),
                reads: vec![],
                writes: vec![put(&key, b"new")],
                anchor_group: 7,
                participants: vec![7, 8],
                exec: 1,
            })
            .await
            .expect("prepare")
            .into_inner();
        assert!(
            matches!(vote.vote, Some(pb::prepare_response::Vote::Yes(_))),
            "{vote:?}"
        );
    }
    shard.kill9();

    let shard = start_shard(dir.path(), &["--group", "7"]);
    let mut client = shard_client(&shard).await.expect("connect");
    let found = read(&mut client, &[b"pc".to_vec(), b"pa".to_vec()]).await;
    for result in &found {
        let lock = result.lock.as_ref().expect("lock survived the restart");
        assert_eq!(lock.anchor_group, 7);
        assert_eq!(result.version, 0, "a prepared write is not visible");
    }
    let listed = client
        .list_prepared(pb::ListPreparedRequest {
            older_than_ms: 0,
            limit: 10,
            records: false,
            slots: Vec::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.txns.len(), 2);

    // A 1PC write to a locked key is refused as LOCKED.
    let refused = client
        .commit_local(pb::CommitLocalRequest {
            durability: 0,
            map_epoch: 1,
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![put(b"pc", b"sneaky")],
        })
        .await
        .expect("commit")
        .into_inner();
    match refused.outcome {
        Some(pb::commit_local_response::Outcome::Refused(r)) => {
            assert_eq!(r.reason, pb::Refusal::Locked as i32);
            assert_eq!(r.keys, vec![b"pc".to_vec()]);
        }
        other => panic!("write to a locked key: {other:?}"),
    }

    // The anchor decides commit for one. The other is pending: prepared
    // here with nothing decided, it may have committed in parallel, so a
    // resolve does not presume abort, and an unfenced ABORT from another
    // execution is not recorded; once the resolver fenced the other
    // participant (not prepared there), its ABORT is.
    let decided = client
        .decide(pb::DecideRequest {
            durability: 0,
            txn_id: committed.clone(),
            decision: pb::Decision::Commit as i32,
            participants: vec![7, 8],
            exec: 1,
            fenced: false,
        })
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(decided.decision, pb::Decision::Commit as i32);
    let resolved = client
        .resolve(pb::ResolveRequest {
            txn_id: aborted.clone(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert!(resolved.pending, "{resolved:?}");
    assert_eq!(resolved.decision, pb::Decision::Unspecified as i32);
    assert_eq!(resolved.participants, vec![7, 8]);
    for (exec, fenced, want_fence) in [(2, false, true), (0, true, false)] {
        let answer = client
            .decide(pb::DecideRequest {
                durability: 0,
                txn_id: aborted.clone(),
                decision: pb::Decision::Abort as i32,
                participants: vec![7, 8],
                exec,
                fenced,
            })
            .await
            .expect("decide")
            .into_inner();
        assert_eq!(answer.fence_first, want_fence, "exec {exec}: {answer:?}");
        if !want_fence {
            assert_eq!(answer.decision, pb::Decision::Abort as i32);
        }
    }
    // A fence of a transaction never prepared here aborts it here for good:
    // its PREPARE, arriving late, is answered with that outcome.
    let unseen = txn_id();
    let fenced = client
        .fence(pb::FenceRequest {
            txn_id: unseen.clone(),
        })
        .await
        .expect("fence")
        .into_inner();
    assert!(
        matches!(&fenced.state, Some(pb::fence_response::State::Finalized(f)) if f.decision == pb::Decision::Abort as i32),
        "{fenced:?}"
    );
    let late_prepare = client
        .prepare(pb::PrepareRequest {
            durability: 0,
            map_epoch: 1,
            txn_id: unseen.clone(),
            reads: vec![],
            writes: vec![put(b"pu", b"late")],
            anchor_group: 8,
            participants: vec![7, 8],
            exec: 3,
        })
        .await
        .expect("late prepare")
        .into_inner();
    assert!(
        matches!(&late_prepare.vote, Some(pb::prepare_response::Vote::Finalized(f)) if f.decision == pb::Decision::Abort as i32),
        "a fenced transaction prepared after all: {late_prepare:?}"
    );
    // A late COMMIT decision loses to the recorded ABORT.
    let late = client
        .decide(pb::DecideRequest {
            durability: 0,
            txn_id: aborted.clone(),
            decision: pb::Decision::Commit as i32,
            participants: vec![7, 8],
            exec: 1,
            fenced: false,
        })
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(late.decision, pb::Decision::Abort as i32);

    for (txn, decision) in [
        (&committed, pb::Decision::Commit),
        (&aborted, pb::Decision::Abort),
    ] {
        client
            .finalize(pb::FinalizeRequest {
                txn_id: txn.clone(),
                decision: decision as i32,
            })
            .await
            .expect("finalize");
    }
    shard.kill9();
    let shard = start_shard(dir.path(), &["--group", "7"]);
    let mut client = shard_client(&shard).await.expect("connect");
    let found = read(&mut client, &[b"pc".to_vec(), b"pa".to_vec()]).await;
    assert!(
        found.iter().all(|r| r.lock.is_none()),
        "locks released durably"
    );
    assert_eq!(found[0].value, b"new");
    assert!(found[0].version > 0);
    assert_eq!(found[1].version, 0, "aborted write discarded");
    let status = client
        .shard_status(pb::ShardStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (status.prepared, status.txn_records, status.group_id),
        (0, 2, 7)
    );
    // Both records are listed for the sweeper (which forgets records no
    // participant has prepared any more), with their decisions.
    let listed = client
        .list_prepared(pb::ListPreparedRequest {
            older_than_ms: 0,
            limit: 10,
            records: true,
            slots: Vec::new(),
        })
        .await
        .expect("list records")
        .into_inner();
    assert!(listed.txns.is_empty());
    let mut records: Vec<(Vec<u8>, bool)> = listed
        .records
        .iter()
        .map(|r| (r.txn_id.clone(), r.commit))
        .collect();
    records.sort();
    let mut expected = vec![(committed.clone(), true), (aborted.clone(), false)];
    expected.sort();
    assert_eq!(records, expected);
    let named = listed.records.iter().find(|r| r.txn_id == committed);
    assert_eq!(named.expect("the commit").participants, vec![7, 8]);
}

/// The `trellis.shard.v1.ErrorReason` in a status's `google.rpc.ErrorInfo`.
fn reason(status: &tonic::Status) -> Option<pb::ErrorReason> {
    trellis_proto::error::error_info(status)
        .and_then(|info| pb::ErrorReason::from_str_name(&info.reason))
}

/// Every kind of bad input gets INVALID_ARGUMENT naming the limit, and the
/// shard keeps serving afterwards.
#[tokio::test]
async fn bad_input_is_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = start_shard(dir.path(), &[]);
    let mut client = shard_client(&shard).await.expect("connect");
    let commit = |writes: Vec<pb::WriteOp>, txn: Vec<u8>| pb::CommitLocalRequest {
        durability: 0,
        map_epoch: 1,
        txn_id: txn,
        reads: vec![],
        writes,
    };
    let big_value = vec![0u8; VALUE_BYTES_MAX + 1];
    let fat_value = vec![0u8; VALUE_BYTES_MAX];
    let many: Vec<pb::WriteOp> = (0..=TXN_KEYS_MAX)
        .map(|i| put(format!("k{i}").as_bytes(), b""))
        .collect();
    let fat: Vec<pb::WriteOp> = (0..(TXN_BYTES_MAX / VALUE_BYTES_MAX + 1))
        .map(|i| put(format!("f{i}").as_bytes(), &fat_value))
        .collect();
    let cases: Vec<(&str, pb::CommitLocalRequest, &str)> = vec![
        (
            "empty key",
            commit(vec![put(b"", b"v")], txn_id()),
            "empty key",
        ),
        (
            "long key",
            commit(vec![put(&vec![b'k'; KEY_BYTES_MAX + 1], b"v")], txn_id()),
            "KEY_BYTES_MAX",
        ),
        (
            "big value",
            commit(vec![put(b"k", &big_value)], txn_id()),
            "VALUE_BYTES_MAX",
        ),
        ("many keys", commit(many, txn_id()), "TXN_KEYS_MAX"),
        ("fat txn", commit(fat, txn_id()), "TXN_BYTES_MAX"),
        (
            "short txn id",
            commit(vec![put(b"k", b"v")], vec![1; 5]),
            "16 bytes",
        ),
        (
            "long txn id",
            commit(vec![put(b"k", b"v")], vec![1; 17]),
            "16 bytes",
        ),
        (
            "duplicate write",
            commit(vec![put(b"k", b"v"), put(b"k", b"w")], txn_id()),
            "twice",
        ),
        (
            "empty txn",
            commit(vec![], txn_id()),
            "no reads and no writes",
        ),
    ];
    for (name, request, expected) in cases {
        let status = client.commit_local(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{name}: message {:?} lacks {expected:?}",
            status.message()
        );
    }
    let status = client
        .finalize(pb::FinalizeRequest {
            txn_id: vec![0; 3],
            decision: pb::Decision::Commit as i32,
        })
        .await
        .expect_err("garbage txn id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .decide(pb::DecideRequest {
            durability: 0,
            txn_id: txn_id(),
            decision: 0,
            participants: vec![],
            exec: 1,
            fenced: false,
        })
        .await
        .expect_err("no decision");
    assert_eq!(status.code(), Code::InvalidArgument);
    // An unknown transaction id is not an error: Finalize says it is unknown.
    let unknown = client
        .finalize(pb::FinalizeRequest {
            txn_id: txn_id(),
            decision: pb::Decision::Commit as i32,
        })
        .await
        .expect("finalize of an unknown txn")
        .into_inner();
    assert!(matches!(
        unknown.outcome,
        Some(pb::finalize_response::Outcome::Unknown(_))
    ));

    // Still serving.
    let ok = client
        .commit_local(commit(vec![put(b"after", b"fine")], txn_id()))
        .await
        .expect("good request after bad ones")
        .into_inner();
    assert!(matches!(
        ok.outcome,
        Some(pb::commit_local_response::Outcome::Committed(_))
    ));
}

/// A shard started with a subset of slots refuses keys of other slots with
/// a distinct WRONG_SHARD error carrying its map epoch, and a request routed
/// with a newer map epoch than it knows with STALE_MAP.
#[tokio::test]
async fn slot_ownership_is_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = b"owned-key".to_vec();
    let slot = slot_of(&mine);
    let other = (0..10_000)
        .map(|i| format!("other-{i}").into_bytes())
        .find(|k| slot_of(k) != slot)
        .expect("a key of another slot");
    let slots = slot.to_string();
    let shard = start_shard(dir.path(), &["--slots", &slots, "--map-epoch", "3"]);
    let mut client = shard_client(&shard).await.expect("connect");
    let request = |key: &[u8], epoch| pb::CommitLocalRequest {
        durability: 0,
        map_epoch: epoch,
        txn_id: txn_id(),
        reads: vec![],
        writes: vec![put(key, b"v")],
    };
    client
        .commit_local(request(&mine, 3))
        .await
        .expect("owned slot");
    let status = client
        .commit_local(request(&other, 3))
        .await
        .expect_err("unowned slot");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), Some(pb::ErrorReason::WrongShard));
    let info = trellis_proto::error::error_info(&status).expect("an ErrorInfo");
    assert_eq!(info.metadata[trellis_proto::error::key::MAP_EPOCH], "3");
    assert_eq!(
        info.metadata[trellis_proto::error::key::KEY],
        hex::encode(&other)
    );
    let status = client
        .read(pb::ReadRequest {
            map_epoch: 3,
            keys: vec![other.clone()],
            ..Default::default()
        })
        .await
        .expect_err("reads are checked too");
    assert_eq!(reason(&status), Some(pb::ErrorReason::WrongShard));
    let status = client
        .commit_local(request(&mine, 4))
        .await
        .expect_err("newer epoch");
    assert_eq!(reason(&status), Some(pb::ErrorReason::StaleMap));
}

/// SIGTERM stops the shard cleanly (exit 0); its data is all there after a
/// restart; the metrics endpoint serves Prometheus text.
#[tokio::test]
async fn sigterm_is_clean_and_metrics_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = start_shard(dir.path(), &[]);
    let mut client = shard_client(&shard).await.expect("connect");
    let mut expected = HashMap::new();
    for i in 0..50u32 {
        let key = format!("k{i}").into_bytes();
        let response = client
            .commit_local(pb::CommitLocalRequest {
                durability: 0,
                map_epoch: 1,
                txn_id: txn_id(),
                reads: vec![],
                writes: vec![put(&key, &i.to_le_bytes())],
            })
            .await
            .expect("commit")
            .into_inner();
        let Some(pb::commit_local_response::Outcome::Committed(w)) = response.outcome else {
            panic!("refused")
        };
        expected.insert(key, w.written[0].version);
    }
    let metrics = http_get(shard.field("metrics"), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let appends: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trellis_wal_appends_total "))
        .expect("appends counter")
        .parse()
        .expect("number");
    assert_eq!(appends, 50);
    assert!(metrics.contains("trellis_wal_fsync_seconds_bucket"));
    assert!(
        http_get(shard.field("metrics"), "/nope")
            .await
            .starts_with("HTTP/1.1 404")
    );

    assert!(shard.terminate(), "SIGTERM exits with status 0");
    let shard = start_shard(dir.path(), &[]);
    let mut client = shard_client(&shard).await.expect("connect");
    let keys: Vec<Vec<u8>> = expected.keys().cloned().collect();
    for result in read(&mut client, &keys).await {
        assert_eq!(result.version, expected[&result.key]);
    }
}

/// A failing `fdatasync` (an injected EIO) stops the shard: the write that
/// hit it is not acknowledged, and the process exits with an error instead
/// of limping on (fail-stop). Restarted without the fault, it has every
/// write acknowledged before, and takes writes again.
#[tokio::test]
async fn a_failed_fsync_stops_the_shard_and_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8 path").to_string();
    let commit = |key: &str| pb::CommitLocalRequest {
        durability: 0,
        map_epoch: 1,
        txn_id: txn_id(),
        reads: vec![],
        writes: vec![put(key.as_bytes(), b"v")],
    };
    // Some acknowledged writes first.
    let shard = start_shard(dir.path(), &[]);
    let mut client = shard_client(&shard).await.expect("connect");
    for i in 0..10 {
        client
            .commit_local(commit(&format!("before{i}")))
            .await
            .expect("commit");
    }
    assert!(shard.terminate(), "SIGTERM exits with status 0");

    let args = [
        "shard",
        "--data-dir",
        path.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let mut sick =
        Proc::start_env(&args, &[("TRELLIS_FAILPOINTS", "wal_sync_error")]).expect("shard starts");
    let mut client = shard_client(&sick).await.expect("connect");
    let refused = client.commit_local(commit("during")).await;
    assert!(
        !matches!(
            refused.as_ref().map(|r| &r.get_ref().outcome),
            Ok(Some(pb::commit_local_response::Outcome::Committed(_)))
        ),
        "a write whose fsync failed was acknowledged: {refused:?}"
    );
    let status = sick.wait_exit_status().expect("the shard exits by itself");
    assert!(
        !status.success(),
        "a shard whose log failed exited with {status}"
    );

    let shard = start_shard(dir.path(), &[]);
    let mut client = shard_client(&shard).await.expect("connect");
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("before{i}").into_bytes()).collect();
    for result in read(&mut client, &keys).await {
        assert!(
            result.version > 0,
            "{:?} lost",
            String::from_utf8_lossy(&result.key)
        );
    }
    let after = client.commit_local(commit("after")).await.expect("commit");
    assert!(matches!(
        after.into_inner().outcome,
        Some(pb::commit_local_response::Outcome::Committed(_))
    ));
}
