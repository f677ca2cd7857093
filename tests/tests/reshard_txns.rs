//! Transactions while their slots move, end to end, as an application sees
//! them through the Rust client's `run_txn`: a real coordinator, real
//! shard processes, real `trellis admin move-slots --wait` jobs.
//!
//! A two-phase commit planned before a cutover can meet a participant that
//! no longer owns its keys when its PREPARE arrives. The coordinator then
//! aborts that attempt with `SLOTS_MOVED` (nothing was committed), which
//! the client counts as retryable, so `run_txn` runs the body again under
//! the new map and the application never sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use trellis_client::Client;
use trellis_tests::harness::{Cluster, admin_ok, http_get, metric_sample};
use trellis_types::placement::assign_slots;
use trellis_types::slot_of;

/// Transfer tasks running at once, each between two accounts of its own
/// (one owned by group 1, one by group 2), so they never conflict with
/// each other and every abort they meet comes from the moves.
const TRANSFER_TASKS: usize = 6;
/// Each account's opening balance.
const OPENING: i64 = 1_000;
/// Most round trips of the accounts' slots (group 1 to 2 and back) before
/// the test gives up on seeing a two-phase commit meet a moved slot.
const MOVE_ROUNDS_MAX: usize = 15;
/// Round trips made at least, after the path was seen.
const MOVE_ROUNDS_MIN: usize = 2;
/// The coordinator's counter of commits aborted because slots moved.
const SLOTS_MOVED_SERIES: &str = "trellis_coordinator_aborts_total{reason=\"slots_moved\"}";

/// The first key named `{prefix}-{n}` whose slot `ring` gives to `group`.
fn key_in(ring: &[u64], group: u64, prefix: &str) -> Vec<u8> {
    (0..)
        .map(|n| format!("{prefix}-{n}").into_bytes())
        .find(|k| ring[slot_of(k) as usize] == group)
        .expect("a key in every group")
}

fn balance(value: Option<Vec<u8>>) -> trellis_client::Result<i64> {
    let text = String::from_utf8(value.unwrap_or_default()).unwrap_or_default();
    text.parse()
        .map_err(|_| trellis_client::Error::Application(format!("balance {text:?}")))
}

/// Story: six clients move money between two accounts each, one account
/// in each group, so nearly every transfer is a two-phase commit. Meanwhile
/// the slots of the group-1 accounts move to group 2 and back, again and
/// again, until the coordinator has aborted at least one attempt because
/// its slots moved (`trellis_coordinator_aborts_total{reason="slots_moved"}`;
/// the test fails if that never happens in MOVE_ROUNDS_MAX round trips, as
/// it would then prove nothing). No transfer may fail: each attempt that
/// met a moved slot was run again by `run_txn`. Every pair of accounts
/// still holds its opening total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_transfers_keep_committing_while_their_slots_move() {
    let cluster = Cluster::start(2).await.expect("cluster of two groups");
    let addr = cluster.addr(0).to_string();
    let metrics = cluster.coordinator(0).field("metrics").to_string();
    let client = Client::connect(&addr).await.expect("client");
    let ring = assign_slots(&[1, 2]);
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..TRANSFER_TASKS)
        .map(|i| {
            (
                key_in(&ring, 1, &format!("move-a{i}")),
                key_in(&ring, 2, &format!("move-b{i}")),
            )
        })
        .collect();
    let opening = OPENING.to_string();
    client
        .run_txn(|txn| {
            let (pairs, opening) = (pairs.clone(), opening.clone());
            async move {
                for (a, b) in &pairs {
                    txn.put(a, opening.as_bytes())?;
                    txn.put(b, opening.as_bytes())?;
                }
                Ok(())
            }
        })
        .await
        .expect("open the accounts");

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<tokio::task::JoinHandle<trellis_client::Result<()>>> = pairs
        .iter()
        .cloned()
        .map(|(a, b)| {
            let (client, stop, committed) = (client.clone(), stop.clone(), committed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client
                        .run_txn(|txn| {
                            let (a, b) = (a.clone(), b.clone());
                            async move {
                                let from = balance(txn.get(&a).await?)?;
                                let to = balance(txn.get(&b).await?)?;
                                txn.put(&a, (from - 1).to_string().as_bytes())?;
                                txn.put(&b, (to + 1).to_string().as_bytes())?;
                                Ok(())
                            }
                        })
                        .await?;
                    committed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();

    // The group-1 accounts' slots, to group 2 and back.
    let mut slots: Vec<u32> = pairs.iter().map(|(a, _)| slot_of(a)).collect();
    slots.sort_unstable();
    slots.dedup();
    let slots: Vec<String> = slots.iter().map(u32::to_string).collect();
    let slots = slots.join(",");
    let mut rounds = 0;
    let mut moved_aborts = 0.0;
    while rounds < MOVE_ROUNDS_MAX && (rounds < MOVE_ROUNDS_MIN || moved_aborts == 0.0) {
        for (from, to) in [("1", "2"), ("2", "1")] {
            let out = admin_ok(&[
                "admin",
                "move-slots",
                "--from",
                from,
                "--to",
                to,
                "--slots",
                &slots,
                "--wait",
                "--addr",
                &addr,
            ]);
            assert!(out.contains("done"), "{out}");
        }
        rounds += 1;
        let page = http_get(&metrics, "/metrics").await;
        moved_aborts = metric_sample(&page, SLOTS_MOVED_SERIES).unwrap_or(0.0);
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "a transfer stopped during round {rounds}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await
            .expect("transfer task")
            .expect("no transfer may fail while slots move");
    }
    assert!(
        moved_aborts > 0.0,
        "no two-phase commit met a moved slot in {rounds} round trips \
         ({} transfers): the path under test never ran",
        committed.load(Ordering::Relaxed)
    );
    for (a, b) in &pairs {
        let items = client
            .get(&[a.clone(), b.clone()], Default::default())
            .await
            .expect("read the accounts");
        let total: i64 = items
            .into_iter()
            .map(|i| balance(Some(i.value)).expect("a balance"))
            .sum();
        assert_eq!(total, 2 * OPENING, "the pair {a:?}/{b:?} kept its total");
    }
    drop(cluster);
}

/// The coordinator's counter of prepared transactions its reshard driver
/// settled to drain a frozen batch.
const DRAIN_SETTLED_SERIES: &str = "trellis_reshard_drain_settled_total";

/// Story: a two-phase commit prepared a write at group 1 and its
/// coordinator vanished before deciding (the PREPARE is sent to the shard
/// directly, and nobody ever finalizes it), so its lock sits on a key
/// whose slot then moves to group 2. The cutover cannot drain while the
/// lock is there; the driver settles the transaction at its anchor rather
/// than wait for the sweeper (which takes only transactions older than
/// `IN_DOUBT_AGE`) — `trellis_reshard_drain_settled_total` counts it. The
/// move completes, the undecided write was aborted, and group 2 serves the
/// key's committed value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_settles_an_abandoned_prepare_that_holds_a_moving_slot() {
    use trellis_proto::shard::v1 as spb;

    let cluster = Cluster::start(2).await.expect("cluster of two groups");
    let addr = cluster.addr(0).to_string();
    let metrics = cluster.coordinator(0).field("metrics").to_string();
    let client = Client::connect(&addr).await.expect("client");
    let ring = assign_slots(&[1, 2]);
    let key = key_in(&ring, 1, "stuck");
    client
        .run_txn(|txn| {
            let key = key.clone();
            async move { txn.put(&key, b"committed") }
        })
        .await
        .expect("the committed value");

    let txn = trellis_tests::harness::txn_id();
    let vote = cluster
        .abandoned_prepare(1, &txn, &key, b"never decided", 2, vec![1, 2])
        .await
        .expect("prepare");
    assert!(
        matches!(vote.vote, Some(spb::prepare_response::Vote::Yes(_))),
        "{vote:?}"
    );

    let out = admin_ok(&[
        "admin",
        "move-slots",
        "--from",
        "1",
        "--to",
        "2",
        "--slots",
        &slot_of(&key).to_string(),
        "--wait",
        "--addr",
        &addr,
    ]);
    assert!(out.contains("done"), "{out}");

    let page = http_get(&metrics, "/metrics").await;
    let settled = metric_sample(&page, DRAIN_SETTLED_SERIES).unwrap_or(0.0);
    assert!(
        settled >= 1.0,
        "the driver settled no prepared transaction ({DRAIN_SETTLED_SERIES} = {settled})"
    );
    let mut txns = cluster.txn(0).await.expect("txn client");
    let state = txns
        .txn_status(trellis_proto::v1::TxnStatusRequest { txn_id: txn })
        .await
        .expect("txn status")
        .into_inner()
        .state;
    assert_ne!(
        state,
        trellis_proto::v1::TxnState::Committed as i32,
        "an undecided transaction was settled as committed"
    );
    let items = client
        .get(std::slice::from_ref(&key), Default::default())
        .await
        .expect("read the moved key");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        items[0].value,
        b"committed".to_vec(),
        "group 2 serves the committed value"
    );
    drop(cluster);
}
