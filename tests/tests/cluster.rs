//! A real cluster — coordinator and shard processes on loopback — driven
//! through the public `trellis.v1.Txn` API: a bank of accounts under
//! concurrent cross-group transfers, coordinator crashes at every step of
//! two-phase commit, idempotent retries, bad input, several coordinators over
//! one PostgreSQL catalog.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use trellis_proto::v1 as pb;
use trellis_proto::v1::txn_client::TxnClient;
use trellis_tests::harness::{Cluster, http_get, shard_client, txn_id};
use trellis_types::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

const ACCOUNTS: usize = 1000;
const INITIAL_BALANCE: i64 = 100;

fn account(i: usize) -> Vec<u8> {
    format!("acct:{i:04}").into_bytes()
}

fn put(key: &[u8], value: &[u8]) -> pb::Write {
    pb::Write {
        key: key.to_vec(),
        op: Some(pb::write::Op::Put(value.to_vec())),
    }
}

fn balance(item: &pb::Item) -> i64 {
    String::from_utf8_lossy(&item.value)
        .parse()
        .expect("balances are integers")
}

async fn get(client: &mut TxnClient<Channel>, keys: &[Vec<u8>]) -> Vec<pb::Item> {
    client
        .get(pb::GetRequest {
            keys: keys.to_vec(),
            consistency: None,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .items
}

/// Commits blind writes that must succeed (setup steps).
async fn must_commit(client: &mut TxnClient<Channel>, writes: Vec<pb::Write>) {
    let request = pb::CommitRequest {
        txn_id: txn_id(),
        reads: vec![],
        writes,
        durability: 0,
    };
    match commit(client, request).await {
        Ok(pb::commit_response::Outcome::Committed(_)) => {}
        other => panic!("setup commit failed: {other:?}"),
    }
}

async fn commit(
    client: &mut TxnClient<Channel>,
    request: pb::CommitRequest,
) -> Result<pb::commit_response::Outcome, tonic::Status> {
    client
        .commit(request)
        .await
        .map(|r| r.into_inner().outcome.expect("an outcome"))
}

/// Creates every account with the initial balance, 100 accounts per
/// transaction (most of them two-phase).
async fn open_accounts(client: &mut TxnClient<Channel>) {
    for chunk in (0..ACCOUNTS).collect::<Vec<_>>().chunks(100) {
        let request = pb::CommitRequest {
            txn_id: txn_id(),
            reads: vec![],
            writes: chunk
                .iter()
                .map(|i| put(&account(*i), INITIAL_BALANCE.to_string().as_bytes()))
                .collect(),
            durability: 0,
        };
        match commit(client, request).await.expect("opening accounts") {
            pb::commit_response::Outcome::Committed(_) => {}
            other => panic!("opening accounts aborted: {other:?}"),
        }
    }
}

/// What a committed transfer read and wrote: the checker's input.
#[derive(Clone, Debug)]
struct Transfer {
    /// (key, version read, version written)
    keys: Vec<(Vec<u8>, u64, u64)>,
}

/// Checks a history of committed transfers: per key, every version was
/// read-and-overwritten by at most one committed transaction (no lost
/// update), and each committed write's version is above the version it
/// read.
fn check_history(history: &[Transfer]) -> Result<(), String> {
    let mut consumed: HashMap<(Vec<u8>, u64), usize> = HashMap::new();
    for (i, t) in history.iter().enumerate() {
        for (key, read, written) in &t.keys {
            if written <= read {
                return Err(format!(
                    "transfer {i} wrote {key:?} at version {written}, not above the {read} it read"
                ));
            }
            if let Some(j) = consumed.insert((key.clone(), *read), i) {
                return Err(format!(
                    "lost update: transfers {j} and {i} both committed over version {read} of {}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }
    Ok(())
}

/// A bank of 1,000 accounts over 3 groups; 8 clients move money between
/// random accounts (most transfers cross groups, so two-phase) while a
/// reader takes read-only snapshots of all accounts. Every committed
/// snapshot sums to the total, the final total is conserved, every account
/// is readable, and the history of committed transfers has no lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_transfers_conserve_the_total() {
    const CLIENTS: usize = 8;
    const TRANSFERS_PER_CLIENT: usize = 60;
    let cluster = Cluster::start(3).await.expect("cluster");
    let mut client = cluster.txn(0).await.expect("client");
    open_accounts(&mut client).await;
    let total = ACCOUNTS as i64 * INITIAL_BALANCE;

    let history = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = client.clone();
        let history = history.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = 0;
            let mut aborted = 0;
            for n in 0..TRANSFERS_PER_CLIENT {
                let from = (c * 7919 + n * 104_729) % ACCOUNTS;
                let to = (from + 1 + (n * 31 + c) % (ACCOUNTS - 1)) % ACCOUNTS;
                let keys = vec![account(from), account(to)];
                let items = get(&mut client, &keys).await;
                let amount = 1 + (n % 5) as i64;
                let (a, b) = (balance(&items[0]), balance(&items[1]));
                if a < amount {
                    continue;
                }
                let request = pb::CommitRequest {
                    txn_id: txn_id(),
                    reads: items
                        .iter()
                        .map(|i| pb::Read {
                            key: i.key.clone(),
                            version: i.version,
                        })
                        .collect(),
                    writes: vec![
                        put(&keys[0], (a - amount).to_string().as_bytes()),
                        put(&keys[1], (b + amount).to_string().as_bytes()),
                    ],
                    durability: 0,
                };
                match commit(&mut client, request).await {
                    Ok(pb::commit_response::Outcome::Committed(c)) => {
                        committed += 1;
                        let written: BTreeMap<Vec<u8>, u64> =
                            c.written.into_iter().map(|i| (i.key, i.version)).collect();
                        history.lock().expect("history").push(Transfer {
                            keys: items
                                .iter()
                                .map(|i| (i.key.clone(), i.version, written[&i.key]))
                                .collect(),
                        });
                    }
                    Ok(pb::commit_response::Outcome::Aborted(a)) => {
                        assert!(
                            a.reason == pb::AbortReason::Conflict as i32
                                || a.reason == pb::AbortReason::Locked as i32,
                            "unexpected abort {a:?}"
                        );
                        aborted += 1;
                    }
                    Err(status) => panic!("transfer failed: {status:?}"),
                }
            }
            (committed, aborted)
        }));
    }
    // Meanwhile: read-only snapshots of every account must always sum up.
    let mut snapshots = 0;
    for _ in 0..5 {
        let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
        let items = get(&mut client, &keys).await;
        let request = pb::CommitRequest {
            txn_id: txn_id(),
            reads: items
                .iter()
                .map(|i| pb::Read {
                    key: i.key.clone(),
                    version: i.version,
                })
                .collect(),
            writes: vec![],
            durability: 0,
        };
        if let Ok(pb::commit_response::Outcome::Committed(_)) = commit(&mut client, request).await {
            snapshots += 1;
            assert_eq!(
                items.iter().map(balance).sum::<i64>(),
                total,
                "a validated snapshot must sum to the total"
            );
        }
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("client task").0;
    }
    assert!(
        committed > CLIENTS * TRANSFERS_PER_CLIENT / 4,
        "too few transfers committed: {committed}"
    );
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
    let items = get(&mut client, &keys).await;
    assert!(
        items.iter().all(|i| i.version > 0),
        "every account readable"
    );
    assert_eq!(
        items.iter().map(balance).sum::<i64>(),
        total,
        "total conserved"
    );
    let history = history.lock().expect("history").clone();
    check_history(&history).expect("history is serializable");
    // The coordinator counted the two-phase commits it made.
    let metrics = http_get(cluster.coordinator(0).field("metrics"), "/metrics").await;
    let two_phase: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("trellis_coordinator_commits_total{path=\"2pc\",outcome=\"committed\"} ")
        })
        .expect("2pc commit counter")
        .parse()
        .expect("a number");
    assert!(
        two_phase > 0,
        "transfers across groups went through two-phase commit"
    );
    eprintln!("{committed} transfers committed, {snapshots} snapshots validated");
}

#[test]
fn the_history_checker_catches_a_lost_update() {
    let key = b"acct:0001".to_vec();
    let good = vec![
        Transfer {
            keys: vec![(key.clone(), 1, 5)],
        },
        Transfer {
            keys: vec![(key.clone(), 5, 9)],
        },
    ];
    assert!(check_history(&good).is_ok());
    let lost = vec![
        Transfer {
            keys: vec![(key.clone(), 1, 5)],
        },
        Transfer {
            keys: vec![(key.clone(), 1, 9)],
        },
    ];
    assert!(
        check_history(&lost)
            .expect_err("lost update")
            .contains("lost update")
    );
    let backwards = vec![Transfer {
        keys: vec![(key, 5, 5)],
    }];
    assert!(check_history(&backwards).is_err());
}

/// The `trellis.v1.ErrorReason` in a status's `google.rpc.ErrorInfo`.
fn reason(status: &tonic::Status) -> Option<pb::ErrorReason> {
    trellis_proto::error::error_info(status)
        .and_then(|info| pb::ErrorReason::from_str_name(&info.reason))
}

/// Two accounts in different groups, for a transfer that must use 2PC.
async fn cross_group_pair(cluster: &Cluster) -> (Vec<u8>, Vec<u8>) {
    // The coordinator routes by the consistent-hash ring: use the same ring
    // to pick keys of different groups.
    assert_eq!(cluster.groups(), 3);
    let groups = ring_group_of(3);
    let a = (0..ACCOUNTS)
        .map(account)
        .find(|k| groups(k) == 1)
        .expect("an account in group 1");
    let b = (0..ACCOUNTS)
        .map(account)
        .find(|k| groups(k) == 2)
        .expect("an account in group 2");
    (a, b)
}

fn ring_group_of(groups: u64) -> impl Fn(&[u8]) -> u64 {
    let slots = trellis_types::placement::assign_slots(&(1..=groups).collect::<Vec<_>>());
    move |key: &[u8]| slots[trellis_types::slot_of(key) as usize]
}

async fn transfer_request(
    client: &mut TxnClient<Channel>,
    from: &[u8],
    to: &[u8],
    amount: i64,
) -> pb::CommitRequest {
    let items = get(client, &[from.to_vec(), to.to_vec()]).await;
    pb::CommitRequest {
        txn_id: txn_id(),
        reads: items
            .iter()
            .map(|i| pb::Read {
                key: i.key.clone(),
                version: i.version,
            })
            .collect(),
        writes: vec![
            put(from, (balance(&items[0]) - amount).to_string().as_bytes()),
            put(to, (balance(&items[1]) + amount).to_string().as_bytes()),
        ],
        durability: 0,
    }
}

async fn txn_state(client: &mut TxnClient<Channel>, txn: &[u8]) -> i32 {
    client
        .txn_status(pb::TxnStatusRequest {
            txn_id: txn.to_vec(),
        })
        .await
        .expect("txn status")
        .into_inner()
        .state
}

/// Waits (bounded) until no transaction is left prepared anywhere.
async fn wait_no_prepared(cluster: &Cluster) {
    for _ in 0..200 {
        if cluster.prepared_total().await.expect("status") == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prepared transactions were never resolved");
}

/// The coordinator dies (abort at a failpoint, as SIGKILL would) at each
/// step of two-phase commit; a fresh coordinator over the same catalog
/// takes over. Killed with one participant prepared and the other not: the
/// transaction aborts and its locks go. Killed once every participant
/// prepared (parallel commit: that is the commit point), after the decision,
/// or during finalize: it commits everywhere. No transfer is ever
/// half-applied, and TxnStatus agrees with the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_at_each_step_of_two_phase_commit() {
    for (failpoint, commits) in [
        ("during_prepare", false),
        ("after_prepare", true),
        ("after_decide", true),
        ("during_finalize", true),
    ] {
        let mut cluster = Cluster::start(3).await.expect("cluster");
        // A second coordinator that will crash at the failpoint.
        let doomed = cluster
            .add_coordinator(&[("TRELLIS_FAILPOINTS", failpoint)])
            .expect("coordinator");
        cluster.wait_registered(doomed).await.expect("registered");
        let mut healthy = cluster.txn(0).await.expect("client");
        let (a, b) = cross_group_pair(&cluster).await;
        must_commit(&mut healthy, vec![put(&a, b"100"), put(&b, b"100")]).await;

        let mut client = cluster.txn(doomed).await.expect("client");
        let request = transfer_request(&mut client, &a, &b, 30).await;
        let txn = request.txn_id.clone();
        let answer = commit(&mut client, request).await;
        match (failpoint, &answer) {
            // Died before answering: the client sees a transport error.
            ("during_prepare" | "after_prepare" | "after_decide", Err(_)) => {}
            // Finalize runs after the answer: the client saw the commit.
            ("during_finalize", Ok(pb::commit_response::Outcome::Committed(_))) => {}
            (_, other) => panic!("{failpoint}: unexpected answer {other:?}"),
        }
        let status = cluster.coordinator_mut(doomed).wait_exit_status();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{failpoint}: the coordinator died at the failpoint"
        );

        // A STRONG read right away meets the dead coordinator's locks (when
        // it left any), waits, resolves through the anchor, and never
        // returns a value that a decided commit overwrote. First through a
        // client that routes its own reads: it may not finalize at the
        // shards, so it has the survivor resolve (Txn.ResolveLock), well
        // before the survivor's sweeper would come by.
        let expected = if commits {
            vec![70, 130]
        } else {
            vec![100, 100]
        };
        let direct = trellis_client::Client::connect(cluster.addr(0))
            .await
            .expect("a routing client");
        assert_eq!(direct.route(), trellis_client::Route::Direct);
        let items = direct
            .get(&[a.clone(), b.clone()], trellis_client::Consistency::Strong)
            .await
            .expect("a direct read through the dead coordinator's locks");
        let balances: Vec<i64> = items
            .iter()
            .map(|i| {
                std::str::from_utf8(&i.value)
                    .expect("utf-8")
                    .parse()
                    .expect("a balance")
            })
            .collect();
        assert_eq!(
            balances, expected,
            "{failpoint}: direct read after the crash"
        );
        let items = get(&mut healthy, &[a.clone(), b.clone()]).await;
        assert_eq!(
            items.iter().map(balance).collect::<Vec<_>>(),
            expected,
            "{failpoint}: read right after the crash"
        );

        // The survivor's sweeper resolves what the dead one left.
        wait_no_prepared(&cluster).await;
        let items = get(&mut healthy, &[a.clone(), b.clone()]).await;
        let balances: Vec<i64> = items.iter().map(balance).collect();
        assert_eq!(
            balances, expected,
            "{failpoint}: transfer applied all or nothing"
        );
        let state = txn_state(&mut healthy, &txn).await;
        let want = if commits {
            pb::TxnState::Committed
        } else {
            pb::TxnState::Aborted
        };
        assert_eq!(
            state, want as i32,
            "{failpoint}: TxnStatus agrees with the data"
        );
        // Nothing stays locked: a new write to both keys goes through.
        let request = transfer_request(&mut healthy, &a, &b, 1).await;
        assert!(
            matches!(
                commit(&mut healthy, request).await,
                Ok(pb::commit_response::Outcome::Committed(_))
            ),
            "{failpoint}: keys are free again"
        );
        drop(cluster);
    }
}

/// The same Commit sent twice at once, and again after the coordinator
/// restarts, commits exactly once and answers the same each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_is_idempotent_by_transaction_id() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let mut client = cluster.txn(0).await.expect("client");
    let (a, b) = cross_group_pair(&cluster).await;
    let single = (0..ACCOUNTS)
        .map(account)
        .find(|k| *k != a && *k != b)
        .expect("a third account");
    must_commit(
        &mut client,
        vec![put(&a, b"100"), put(&b, b"100"), put(&single, b"100")],
    )
    .await;

    // Two-phase: the transfer, twice concurrently.
    let transfer = transfer_request(&mut client, &a, &b, 10).await;
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (first, second) = tokio::join!(
        commit(&mut c1, transfer.clone()),
        commit(&mut c2, transfer.clone())
    );
    let first = first.expect("first");
    assert_eq!(
        Ok(first.clone()),
        second.map_err(|s| s.to_string()),
        "both answers agree"
    );
    assert!(matches!(first, pb::commit_response::Outcome::Committed(_)));
    // One-phase: an increment of one key, twice in a row.
    let items = get(&mut client, std::slice::from_ref(&single)).await;
    let increment = pb::CommitRequest {
        txn_id: txn_id(),
        reads: vec![pb::Read {
            key: single.clone(),
            version: items[0].version,
        }],
        writes: vec![put(&single, b"101")],
        durability: 0,
    };
    let one = commit(&mut client, increment.clone()).await.expect("1pc");
    assert_eq!(
        commit(&mut client, increment.clone())
            .await
            .expect("1pc retry"),
        one
    );

    // After a coordinator restart, the retries still answer the first outcome.
    cluster.coordinator(0).signal(libc::SIGKILL);
    cluster.restart_coordinator(0, &[]).await.expect("restart");
    let mut client = cluster.txn(0).await.expect("client");
    assert_eq!(
        commit(&mut client, transfer)
            .await
            .expect("2pc after restart"),
        first
    );
    assert_eq!(
        commit(&mut client, increment)
            .await
            .expect("1pc after restart"),
        one
    );
    let items = get(&mut client, &[a, b, single]).await;
    assert_eq!(
        items.iter().map(balance).collect::<Vec<_>>(),
        vec![90, 110, 101],
        "applied exactly once"
    );
}

/// Another execution of a transaction (a client's resend) already decided
/// COMMIT at the anchor, and a participant is down when this execution
/// tries to learn its version: the answer is OUTCOME_UNKNOWN, never
/// UNAVAILABLE — the transaction did commit, and UNAVAILABLE invites a
/// retry that would apply it twice. Found while building the nemesis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_commit_is_never_reported_unavailable() {
    use trellis_proto::shard::v1 as shard_pb;
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let mut client = cluster.txn(0).await.expect("client");
    let (a, b) = cross_group_pair(&cluster).await;
    must_commit(&mut client, vec![put(&a, b"100"), put(&b, b"100")]).await;
    let transfer = transfer_request(&mut client, &a, &b, 30).await;
    let group_of = ring_group_of(3);
    let anchor = group_of(a.as_slice().min(b.as_slice()));
    let participants = vec![group_of(&a), group_of(&b)];
    let map_epoch = cluster
        .admin(0)
        .await
        .expect("admin")
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .groups[0]
        .members[0]
        .map_epoch;

    // The first execution: prepared at both participants, COMMIT recorded
    // at the anchor, then its coordinator went silent.
    for group in &participants {
        let mine = |key: &Vec<u8>| group_of(key) == *group;
        let request = shard_pb::PrepareRequest {
            durability: 0,
            map_epoch,
            txn_id: transfer.txn_id.clone(),
            reads: transfer
                .reads
                .iter()
                .filter(|r| mine(&r.key))
                .map(|r| shard_pb::ReadVersion {
                    key: r.key.clone(),
                    version: r.version,
                })
                .collect(),
            writes: transfer
                .writes
                .iter()
                .filter(|w| mine(&w.key))
                .map(|w| shard_pb::WriteOp {
                    key: w.key.clone(),
                    value: match &w.op {
                        Some(pb::write::Op::Put(v)) => v.clone(),
                        _ => Vec::new(),
                    },
                    delete: false,
                })
                .collect(),
            anchor_group: anchor,
            participants: participants.clone(),
            exec: 1,
        };
        let shard = cluster.shard(*group as u32, 1).expect("shard");
        let vote = shard_client(shard)
            .await
            .expect("shard client")
            .prepare(request)
            .await
            .expect("prepare")
            .into_inner()
            .vote;
        assert!(
            matches!(vote, Some(shard_pb::prepare_response::Vote::Yes(_))),
            "{vote:?}"
        );
    }
    let anchor_shard = cluster.shard(anchor as u32, 1).expect("anchor");
    shard_client(anchor_shard)
        .await
        .expect("shard client")
        .decide(shard_pb::DecideRequest {
            durability: 0,
            txn_id: transfer.txn_id.clone(),
            decision: shard_pb::Decision::Commit as i32,
            participants: participants.clone(),
            exec: 1,
            fenced: false,
        })
        .await
        .expect("decide");

    // The other participant dies; the client's resend of the same Commit
    // cannot prepare there, wants abort, learns COMMIT at the anchor, and
    // cannot finalize the dead one to learn its version.
    let other = *participants.iter().find(|g| **g != anchor).expect("other");
    cluster.shards[other as usize - 1][0]
        .proc
        .take()
        .expect("other shard")
        .kill9();
    let answer = commit(&mut client, transfer.clone()).await;
    let status = answer.expect_err("the resend cannot finish");
    assert_eq!(
        reason(&status),
        Some(pb::ErrorReason::OutcomeUnknown),
        "a committed transaction is reported as unknown, not {status:?}"
    );
    // The ErrorInfo names the transaction to ask TxnStatus about.
    let info = trellis_proto::error::error_info(&status).expect("an ErrorInfo");
    assert_eq!(
        info.metadata[trellis_proto::error::key::TXN_ID],
        hex::encode(&transfer.txn_id)
    );

    // Back up, the sweeper finishes it: committed, once.
    cluster.restart_shard(other as u32).await.expect("restart");
    wait_no_prepared(&cluster).await;
    assert_eq!(
        txn_state(&mut client, &transfer.txn_id).await,
        pb::TxnState::Committed as i32
    );
    let items = get(&mut client, &[a, b]).await;
    assert_eq!(items.iter().map(balance).collect::<Vec<_>>(), vec![70, 130]);
}

/// Bad input through the public API is refused with INVALID_ARGUMENT naming
/// the limit, and the coordinator keeps serving.
#[tokio::test]
async fn bad_input_is_refused_at_the_coordinator() {
    let cluster = Cluster::start(2).await.expect("cluster");
    let mut client = cluster.txn(0).await.expect("client");
    let commit_of = |writes: Vec<pb::Write>, txn: Vec<u8>| pb::CommitRequest {
        txn_id: txn,
        reads: vec![],
        writes,
        durability: 0,
    };
    let cases = vec![
        (
            "empty key",
            commit_of(vec![put(b"", b"v")], txn_id()),
            "empty key",
        ),
        (
            "long key",
            commit_of(vec![put(&vec![b'k'; KEY_BYTES_MAX + 1], b"v")], txn_id()),
            "KEY_BYTES_MAX",
        ),
        (
            "big value",
            commit_of(vec![put(b"k", &vec![0; VALUE_BYTES_MAX + 1])], txn_id()),
            "VALUE_BYTES_MAX",
        ),
        (
            "duplicate write",
            commit_of(vec![put(b"k", b"1"), put(b"k", b"2")], txn_id()),
            "twice",
        ),
        (
            "malformed txn id",
            commit_of(vec![put(b"k", b"1")], vec![7; 9]),
            "16 bytes",
        ),
        (
            "no op",
            commit_of(
                vec![pb::Write {
                    key: b"k".to_vec(),
                    op: None,
                }],
                txn_id(),
            ),
            "put a value or delete",
        ),
    ];
    for (name, request, expected) in cases {
        let status = commit(&mut client, request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{name}: {:?} lacks {expected:?}",
            status.message()
        );
        assert_eq!(
            reason(&status),
            Some(pb::ErrorReason::InvalidInput),
            "{name}"
        );
    }
    let status = client
        .get(pb::GetRequest {
            keys: vec![Vec::new()],
            consistency: None,
            ..Default::default()
        })
        .await
        .expect_err("empty key read");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .scan(pb::ScanRequest {
            prefix: vec![],
            limit: 1_000_000,
            consistency: None,
            ..Default::default()
        })
        .await
        .expect_err("limit");
    assert!(status.message().contains("SCAN_LIMIT_MAX"), "{status:?}");
    let status = client
        .txn_status(pb::TxnStatusRequest { txn_id: vec![1; 2] })
        .await
        .expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);
    // Still serving; an unknown transaction is UNKNOWN, never committed.
    assert_eq!(
        txn_state(&mut client, &txn_id()).await,
        pb::TxnState::Unknown as i32
    );
    let ok = commit(
        &mut client,
        commit_of(vec![put(b"after", b"fine")], txn_id()),
    )
    .await
    .expect("good request");
    assert!(matches!(ok, pb::commit_response::Outcome::Committed(_)));
    let (items, _) = {
        let r = client
            .scan(pb::ScanRequest {
                prefix: b"aft".to_vec(),
                limit: 10,
                consistency: None,
                ..Default::default()
            })
            .await
            .expect("scan")
            .into_inner();
        (r.items, r.truncated)
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].value, b"fine");
}

/// The PostgreSQL catalog URL for tests, or why there is none.
fn postgres_url() -> Option<String> {
    let base = std::env::var("TRELLIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().expect("addr"),
        Duration::from_secs(2),
    )
    .is_ok()
        || std::env::var("TRELLIS_TEST_POSTGRES_URL").is_ok();
    if !reachable {
        assert!(
            std::env::var("CI").is_err(),
            "PostgreSQL must be reachable in CI at {base}"
        );
        eprintln!(
            "SKIPPED: PostgreSQL is not reachable at {base}; the shared-catalog test needs it"
        );
        return None;
    }
    Some(base)
}

/// Two coordinators share one PostgreSQL catalog: shards registered through
/// one are found by the other; transfers through both conserve the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_share_a_postgres_catalog() {
    let Some(base) = postgres_url() else { return };
    // A fresh schema per run, so runs never see each other's clusters.
    let schema = format!("t_{}", hex_id());
    let url = format!("{base}?options=-c%20search_path%3D{schema}");
    let create = tokio::process::Command::new("psql")
        .args([base.as_str(), "-c", &format!("CREATE SCHEMA {schema}")])
        .output()
        .await;
    if !create.as_ref().is_ok_and(|o| o.status.success()) {
        panic!("cannot create schema {schema}: {create:?}");
    }
    let mut cluster = Cluster::start_with(tempfile::tempdir().expect("tempdir"), url, 3, &[])
        .await
        .expect("cluster");
    let second = cluster.add_coordinator(&[]).expect("second coordinator");
    cluster
        .wait_registered(second)
        .await
        .expect("second sees every shard");
    let mut one = cluster.txn(0).await.expect("client");
    let mut two = cluster.txn(second).await.expect("client");
    let keys: Vec<Vec<u8>> = (0..20).map(account).collect();
    let setup = pb::CommitRequest {
        txn_id: txn_id(),
        reads: vec![],
        writes: keys.iter().map(|k| put(k, b"100")).collect(),
        durability: 0,
    };
    assert!(matches!(
        commit(&mut one, setup).await,
        Ok(pb::commit_response::Outcome::Committed(_))
    ));
    let mut tasks = Vec::new();
    for (c, client) in [one.clone(), two.clone(), one.clone(), two.clone()]
        .into_iter()
        .enumerate()
    {
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut committed = 0;
            for n in 0..25 {
                let (from, to) = ((c + n) % keys.len(), (c * 3 + n * 7 + 1) % keys.len());
                if from == to {
                    continue;
                }
                let request = transfer_request(&mut client, &keys[from], &keys[to], 1).await;
                if let Ok(pb::commit_response::Outcome::Committed(_)) =
                    commit(&mut client, request).await
                {
                    committed += 1;
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("task");
    }
    assert!(committed > 0);
    let through_one: i64 = get(&mut one, &keys).await.iter().map(balance).sum();
    let through_two: i64 = get(&mut two, &keys).await.iter().map(balance).sum();
    assert_eq!(
        (through_one, through_two),
        (2000, 2000),
        "total conserved, seen the same through both"
    );
    drop(cluster);
    let _ = tokio::process::Command::new("psql")
        .args([
            base.as_str(),
            "-c",
            &format!("DROP SCHEMA {schema} CASCADE"),
        ])
        .output()
        .await;
}

fn hex_id() -> String {
    txn_id()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A read-only transaction over two groups commits only while every read
/// is current: a write to one of its keys in between aborts it as a
/// conflict naming the key; with fresh versions it commits and leaves no
/// read hold behind (a writer goes straight through afterwards).
#[tokio::test]
async fn read_only_validation_across_groups() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let mut client = cluster.txn(0).await.expect("client");
    let (a, b) = cross_group_pair(&cluster).await;
    must_commit(&mut client, vec![put(&a, b"1"), put(&b, b"1")]).await;
    let read_only = |items: &[pb::Item]| pb::CommitRequest {
        txn_id: txn_id(),
        reads: items
            .iter()
            .map(|i| pb::Read {
                key: i.key.clone(),
                version: i.version,
            })
            .collect(),
        writes: vec![],
        durability: 0,
    };
    let seen = get(&mut client, &[a.clone(), b.clone()]).await;
    must_commit(&mut client, vec![put(&b, b"2")]).await;
    match commit(&mut client, read_only(&seen)).await.expect("commit") {
        pb::commit_response::Outcome::Aborted(abort) => {
            assert_eq!(abort.reason, pb::AbortReason::Conflict as i32);
            assert_eq!(abort.keys, vec![b.clone()]);
        }
        other => panic!("a stale read-only transaction committed: {other:?}"),
    }
    let fresh = get(&mut client, &[a.clone(), b.clone()]).await;
    assert!(matches!(
        commit(&mut client, read_only(&fresh)).await,
        Ok(pb::commit_response::Outcome::Committed(_))
    ));
    let after = pb::CommitRequest {
        txn_id: txn_id(),
        reads: vec![],
        writes: vec![put(&a, b"3")],
        durability: 0,
    };
    assert!(
        matches!(
            commit(&mut client, after).await,
            Ok(pb::commit_response::Outcome::Committed(_))
        ),
        "read holds were released"
    );
}

/// Story: two transactions over groups 1 and 2 (anchor 1) whose
/// coordinator vanished right after sending its PREPAREs. The first
/// prepared at both — a parallel commit whose client may have been told
/// COMMITTED — the second only at group 1. Nothing is decided or
/// finalized anywhere, so what the groups remember alone would say
/// UNKNOWN. TxnStatus settles each at its anchor instead, long before the
/// sweeper would (it takes only transactions older than 2 s): the first is
/// COMMITTED (asked of the coordinator) and its writes are then visible;
/// the second ABORTED (asked by the Rust client, which routes by itself
/// and has a coordinator decide), and group 2, fenced, refuses its
/// PREPARE for good. Asking again gives the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_status_settles_a_transaction_nobody_decided() {
    use trellis_proto::shard::v1 as spb;
    let cluster = Cluster::start(3).await.expect("cluster");
    let mut coordinator = cluster.txn(0).await.expect("txn client");
    let (a, b) = cross_group_pair(&cluster).await;

    let committed = txn_id();
    for (group, key) in [(1, &a), (2, &b)] {
        let vote = cluster
            .abandoned_prepare(group, &committed, key, b"first", 1, vec![1, 2])
            .await
            .expect("prepare");
        assert!(
            matches!(vote.vote, Some(spb::prepare_response::Vote::Yes(_))),
            "{vote:?}"
        );
    }
    for _ in 0..2 {
        assert_eq!(
            txn_state(&mut coordinator, &committed).await,
            pb::TxnState::Committed as i32,
            "prepared at every participant: committed"
        );
    }
    let items = get(&mut coordinator, &[a.clone(), b.clone()]).await;
    assert!(
        items.iter().all(|i| i.value == b"first"),
        "the settled commit is visible: {items:?}"
    );

    let aborted = txn_id();
    let vote = cluster
        .abandoned_prepare(1, &aborted, &a, b"second", 1, vec![1, 2])
        .await
        .expect("prepare");
    assert!(
        matches!(vote.vote, Some(spb::prepare_response::Vote::Yes(_))),
        "{vote:?}"
    );
    let client = trellis_client::Client::connect(cluster.addr(0))
        .await
        .expect("client");
    let id: trellis_client::TxnId = aborted.as_slice().try_into().expect("a transaction id");
    for _ in 0..2 {
        assert_eq!(
            client.txn_status(id).await.expect("txn status"),
            trellis_client::TxnState::Aborted,
            "group 2 never prepared it: aborted"
        );
    }
    let late = cluster
        .abandoned_prepare(2, &aborted, &b, b"second", 1, vec![1, 2])
        .await
        .expect("prepare");
    assert!(
        matches!(&late.vote, Some(spb::prepare_response::Vote::Finalized(f)) if f.decision == spb::Decision::Abort as i32),
        "group 2 was fenced: {late:?}"
    );
    let items = get(&mut coordinator, &[a.clone(), b.clone()]).await;
    assert!(
        items.iter().all(|i| i.value == b"first"),
        "the aborted write left no trace: {items:?}"
    );
    wait_no_prepared(&cluster).await;
}
