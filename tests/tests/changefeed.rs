//! The change feed over real processes (issue 22): `Changefeed.Watch`
//! gives every committed transaction once per group it wrote in, in
//! position order with versions rising, never an aborted one, through a
//! primary's SIGKILL; a cursor (kept in the catalog) resumes exactly after
//! what was handled, also on a backup restored by snapshot and promoted;
//! bad cursors and ranges are refused, and so is a cursor of another
//! cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use trellis_client::{Client, ClusterId, Cursor, Error, FeedEvent, FeedMessage, TxnState};
use trellis_tests::harness::{printed, run_trellis};
use trellis_tests::replicated::ReplicatedCluster;

/// Concurrent writers.
const WRITERS: usize = 3;
/// How long the writers run before and after the kill.
const LOAD_PHASE: Duration = Duration::from_secs(3);
/// How long the feed may take to deliver everything after the load.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Transactions written before the resume test's first watch, and after.
const RESUME_FIRST: usize = 20;
const RESUME_MORE: usize = 10;

/// A transaction's writes: key → (value, version).
type Writes = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// What the writers know of their transactions.
#[derive(Default)]
struct Ledger {
    /// Acknowledged: id → its writes.
    committed: HashMap<[u8; 16], Writes>,
    /// Refused with an abort: never in the feed.
    aborted: BTreeSet<[u8; 16]>,
    /// Outcome not known to the writer: id → keys.
    uncertain: HashMap<[u8; 16], Vec<Vec<u8>>>,
}

/// Writers of fresh keys (every third transaction writes three keys, so
/// usually two or three groups: two-phase commit), and now and then a
/// transaction made to abort on a conflict.
fn start_writers(
    addr: String,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let addr = addr.clone();
            let stop = stop.clone();
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let client = Client::connect(&addr).await.expect("writer client");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if i.is_multiple_of(10) {
                        doomed(&client, w, i, &ledger).await;
                        continue;
                    }
                    let keys: Vec<Vec<u8>> = if i.is_multiple_of(3) {
                        (0..3)
                            .map(|k| format!("feed/m/{w}/{i}/{k}").into_bytes())
                            .collect()
                    } else {
                        vec![format!("feed/s/{w}/{i}").into_bytes()]
                    };
                    let txn = client.begin();
                    for k in &keys {
                        txn.put(k, format!("v{i}").as_bytes()).expect("put");
                    }
                    let id = txn.id();
                    match txn.commit().await {
                        Ok(c) => {
                            let written = acked(c, format!("v{i}").as_bytes());
                            ledger.lock().expect("lock").committed.insert(id, written);
                        }
                        Err(e) if is_abort(&e) => {
                            ledger.lock().expect("lock").aborted.insert(id);
                        }
                        Err(_) => {
                            ledger.lock().expect("lock").uncertain.insert(id, keys);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// An acknowledged commit's writes (all of `value`) with their versions.
fn acked(c: trellis_client::Committed, value: &[u8]) -> Writes {
    c.written
        .into_iter()
        .map(|item| (item.key, (value.to_vec(), item.version)))
        .collect()
}

fn is_abort(e: &Error) -> bool {
    matches!(
        e,
        Error::Conflict { .. }
            | Error::Locked { .. }
            | Error::ResolvedAbort { .. }
            | Error::ParticipantUnavailable { .. }
            | Error::SlotsMoved { .. }
    )
}

/// A transaction that reads a key, loses it to another commit, and so
/// aborts with a conflict; it also writes a key of its own, which must
/// never reach the feed.
async fn doomed(client: &Client, w: usize, i: u64, ledger: &Mutex<Ledger>) {
    let hot = format!("feed/hot/{w}").into_bytes();
    let loser = client.begin();
    if loser.get(&hot).await.is_err() {
        return;
    }
    loser
        .put(format!("feed/lost/{w}/{i}").as_bytes(), b"never")
        .expect("put");
    let winner = client.begin();
    winner.put(&hot, format!("{i}").as_bytes()).expect("put");
    let winner_id = winner.id();
    match winner.commit().await {
        Ok(c) => {
            let written = acked(c, format!("{i}").as_bytes());
            ledger
                .lock()
                .expect("lock")
                .committed
                .insert(winner_id, written);
        }
        Err(_) => {
            ledger
                .lock()
                .expect("lock")
                .uncertain
                .insert(winner_id, vec![hot.clone()]);
            return;
        }
    }
    loser.put(&hot, b"loser").expect("put");
    let id = loser.id();
    match loser.commit().await {
        Err(e) if is_abort(&e) => {
            ledger.lock().expect("lock").aborted.insert(id);
        }
        Ok(_) => panic!("a transaction whose read was overwritten committed"),
        Err(_) => {
            ledger
                .lock()
                .expect("lock")
                .uncertain
                .insert(id, vec![hot.clone()]);
        }
    }
}

/// Everything a watch handed out, in order.
#[derive(Default)]
struct Seen {
    messages: Vec<FeedMessage>,
}

impl Seen {
    fn events(&self) -> impl Iterator<Item = &FeedEvent> {
        self.messages.iter().filter_map(|m| match m {
            FeedMessage::Event(e) => Some(e),
            FeedMessage::Resolved { .. } | FeedMessage::Scan { .. } => None,
        })
    }
}

fn id_of(event: &FeedEvent) -> [u8; 16] {
    event.txn_id.as_slice().try_into().expect("16-byte txn id")
}

/// Every group's messages obey the feed's order: events' positions and
/// versions rise, and no event is at or below a position already resolved.
fn check_order(seen: &Seen) {
    let mut resolved: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for m in &seen.messages {
        match m {
            FeedMessage::Event(e) => {
                let r = resolved.get(&e.group).copied().unwrap_or(0);
                assert!(
                    e.position > r,
                    "group {}: event at {} after resolved {r}",
                    e.group,
                    e.position
                );
                if let Some(&(position, version)) = last.get(&e.group) {
                    assert!(
                        e.position > position && e.version > version,
                        "group {}: event ({}, v{}) after ({position}, v{version})",
                        e.group,
                        e.position,
                        e.version
                    );
                }
                last.insert(e.group, (e.position, e.version));
            }
            FeedMessage::Resolved {
                group, position, ..
            } => {
                let r = resolved.entry(*group).or_insert(0);
                assert!(*position >= *r, "group {group}: resolved went back");
                *r = *position;
            }
            FeedMessage::Scan { group, .. } => panic!("group {group}: a scan nobody asked for"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_gives_every_committed_transaction_once_in_order_through_a_failover() {
    let mut cluster = ReplicatedCluster::start(3, 2, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let watcher = Client::connect(&addr).await.expect("watch client");
    let mut watch = watcher
        .watch(b"feed/", b"feed0", None)
        .await
        .expect("watch");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match watch.next().await {
                    Ok(Some(m)) => seen.lock().expect("lock").messages.push(m),
                    Ok(None) => panic!("the watch ended"),
                    Err(e) => panic!("the watch failed: {e}"),
                }
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let writers = start_writers(addr.clone(), stop.clone(), ledger.clone());
    tokio::time::sleep(LOAD_PHASE).await;
    let primary = cluster.primary(1).await.expect("primary of group 1");
    cluster.kill9(1, primary);
    tokio::time::sleep(LOAD_PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // What the writers could not tell: ask.
    let uncertain: Vec<([u8; 16], Vec<Vec<u8>>)> =
        ledger.lock().expect("lock").uncertain.drain().collect();
    let checker = Client::connect(&addr).await.expect("client");
    let mut maybe = BTreeSet::new();
    for (id, _keys) in uncertain {
        match checker.txn_status(id).await.expect("txn status") {
            TxnState::Aborted => {
                ledger.lock().expect("lock").aborted.insert(id);
            }
            TxnState::Committed | TxnState::Unknown => {
                maybe.insert(id);
            }
        }
    }
    let ledger = std::mem::take(&mut *ledger.lock().expect("lock"));
    assert!(
        ledger.committed.len() > 20 && !ledger.aborted.is_empty(),
        "the load did too little to check: {} committed, {} aborted",
        ledger.committed.len(),
        ledger.aborted.len()
    );

    // Every acknowledged write reaches the feed.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let missing = {
            let seen = seen.lock().expect("lock");
            let mut got: HashMap<[u8; 16], usize> = HashMap::new();
            for e in seen.events() {
                *got.entry(id_of(e)).or_default() += e.changes.len();
            }
            ledger
                .committed
                .iter()
                .filter(|(id, writes)| got.get(*id).copied().unwrap_or(0) < writes.len())
                .count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged transactions never reached the feed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reader.abort();

    let seen = seen.lock().expect("lock");
    check_order(&seen);
    let mut by_txn: HashMap<[u8; 16], Vec<&FeedEvent>> = HashMap::new();
    for e in seen.events() {
        by_txn.entry(id_of(e)).or_default().push(e);
    }
    for (id, events) in &by_txn {
        let groups: BTreeSet<u64> = events.iter().map(|e| e.group).collect();
        assert_eq!(
            groups.len(),
            events.len(),
            "transaction {} appears twice in one group",
            hex::encode(id)
        );
        assert!(
            !ledger.aborted.contains(id),
            "aborted transaction {} is in the feed",
            hex::encode(id)
        );
        if events.len() > 1 || !events[0].participants.is_empty() {
            for e in events {
                assert!(
                    e.participants.contains(&e.group),
                    "a 2PC event's participants {:?} lack its group {}",
                    e.participants,
                    e.group
                );
            }
        }
        match ledger.committed.get(id) {
            Some(writes) => {
                let mut changed = BTreeMap::new();
                for e in events {
                    for c in &e.changes {
                        let value = c.value.clone().expect("the load deletes nothing");
                        assert!(
                            changed.insert(c.key.clone(), (value, e.version)).is_none(),
                            "a key twice in one transaction's events"
                        );
                    }
                }
                assert_eq!(
                    &changed,
                    writes,
                    "transaction {}: the feed's writes differ from the acknowledged ones",
                    hex::encode(id)
                );
            }
            None => assert!(
                maybe.contains(id),
                "transaction {} is in the feed but no writer committed it",
                hex::encode(id)
            ),
        }
    }
}

async fn put(client: &Client, key: &str, value: &str) -> [u8; 16] {
    let txn = client.begin();
    txn.put(key.as_bytes(), value.as_bytes()).expect("put");
    let id = txn.id();
    txn.commit().await.expect("commit");
    id
}

/// Reads events until `count` were handed out.
async fn take_events(watch: &mut trellis_client::Watch, count: usize) -> Vec<FeedEvent> {
    let mut out = Vec::new();
    while out.len() < count {
        let next = tokio::time::timeout(DRAIN_TIMEOUT, watch.next())
            .await
            .expect("the feed went quiet")
            .expect("watch")
            .expect("the watch ended");
        if let FeedMessage::Event(e) = next {
            out.push(e);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_cursor_resumes_exactly_after_what_was_handled() {
    let cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    let mut ids = Vec::new();
    for i in 0..RESUME_FIRST {
        ids.push(put(&client, &format!("r/{i:03}"), &format!("{i}")).await);
    }
    // From the log's beginning: the writes so far, in order.
    let this = cluster_id(&cluster).await;
    let start = Cursor::new(this, [(1, 0)]);
    let mut watch = client.watch(b"r/", b"", Some(&start)).await.expect("watch");
    let first = take_events(&mut watch, RESUME_FIRST / 2).await;
    assert!(
        first.iter().all(|e| e.cluster == this.get()),
        "every event names the cluster"
    );
    assert_eq!(
        first.iter().map(id_of).collect::<Vec<_>>(),
        ids[..RESUME_FIRST / 2],
        "the feed from the beginning gives the commits in order"
    );
    client
        .save_cursor("resume-test", watch.cursor().expect("no scan: a cursor"))
        .await
        .expect("save cursor");
    drop(watch);
    // The status lists the feed, its cursor and how far behind it is: the
    // group's log holds the ten commits the watch did not hand out.
    let status = cluster.status().await.expect("status");
    let feed = status
        .feeds
        .iter()
        .find(|f| f.feed == "resume-test")
        .expect("the status lists the saved feed");
    assert_eq!(feed.lag.len(), 1, "{feed:?}");
    assert!(
        feed.lag[0].records >= (RESUME_FIRST / 2) as u64,
        "{feed:?}: lag below the transactions not handed out"
    );
    for i in RESUME_FIRST..RESUME_FIRST + RESUME_MORE {
        ids.push(put(&client, &format!("r/{i:03}"), &format!("{i}")).await);
    }
    let saved = client
        .load_cursor("resume-test")
        .await
        .expect("load cursor")
        .expect("a saved cursor");
    let mut watch = client.watch(b"r/", b"", Some(&saved)).await.expect("watch");
    let rest = take_events(&mut watch, RESUME_FIRST / 2 + RESUME_MORE).await;
    assert_eq!(
        rest.iter().map(id_of).collect::<Vec<_>>(),
        ids[RESUME_FIRST / 2..],
        "the resumed feed gives exactly what came after the cursor"
    );
    // Values and deletes come through.
    let txn = client.begin();
    txn.delete(b"r/000").expect("delete");
    txn.commit().await.expect("commit");
    let deleted = take_events(&mut watch, 1).await;
    assert_eq!(deleted[0].changes[0].key, b"r/000");
    assert_eq!(deleted[0].changes[0].value, None, "a delete has no value");
    assert_eq!(client.load_cursor("never-saved").await.expect("load"), None);
    // Forgotten: gone from the catalog and the status; a second time is
    // an error that says where to look.
    let forget = [
        "admin",
        "forget-feed",
        "--addr",
        cluster.addr(),
        "--feed",
        "resume-test",
    ];
    let out = run_trellis(&forget);
    assert!(out.status.success(), "{}", printed(&out));
    assert_eq!(client.load_cursor("resume-test").await.expect("load"), None);
    let status = cluster.status().await.expect("status");
    assert!(status.feeds.is_empty(), "{:?}", status.feeds);
    let out = run_trellis(&forget);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no feed named"),
        "{}",
        printed(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_ranges_and_names_are_refused() {
    let cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    put(&client, "b/1", "x").await;

    let this = cluster_id(&cluster).await;
    let unknown_group = Cursor::new(this, [(7, 3)]);
    let err = client
        .watch(b"", b"", Some(&unknown_group))
        .await
        .err()
        .expect("a cursor naming an unknown group is refused");
    assert!(err.to_string().contains("group 7"), "{err}");

    let past_end = Cursor::new(this, [(1, 1_000_000)]);
    let mut watch = client
        .watch(b"", b"", Some(&past_end))
        .await
        .expect("opens; the group refuses");
    let err = tokio::time::timeout(DRAIN_TIMEOUT, watch.next())
        .await
        .expect("the refusal comes")
        .expect_err("a position past the log's end is refused");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("past the end"), "{err}");

    let err = client
        .watch(b"z", b"a", None)
        .await
        .err()
        .expect("an empty range is refused");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = client
        .watch(&vec![b'k'; 5000], b"", None)
        .await
        .err()
        .expect("a range start over the key limit is refused");
    assert!(err.to_string().contains("KEY_BYTES_MAX"), "{err}");

    let err = client
        .save_cursor("no spaces/allowed", &Cursor::default())
        .await
        .expect_err("a bad feed name is refused");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

/// Keys written before the scanning watch opens.
const SCAN_KEYS: usize = 3000;
/// Keys written per transaction while filling.
const SCAN_FILL_BATCH: usize = 50;
/// Every this many of those keys is deleted again before the watch.
const SCAN_DELETE_EVERY: usize = 7;

/// A key's state as a consumer keeps it: the highest version wins.
type Applied = BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

fn apply_newer(applied: &mut Applied, key: &[u8], version: u64, value: Option<Vec<u8>>) {
    let newer = applied.get(key).is_none_or(|(held, _)| version > *held);
    if newer {
        applied.insert(key.to_vec(), (version, value));
    }
}

/// Scan rows and events applied highest-version-wins, as a consumer does.
fn apply_all(seen: &[FeedMessage]) -> Applied {
    let mut applied = Applied::new();
    for m in seen {
        match m {
            FeedMessage::Scan { rows, .. } => {
                for r in rows {
                    apply_newer(&mut applied, &r.key, r.version, Some(r.value.clone()));
                }
            }
            FeedMessage::Event(e) => {
                for c in &e.changes {
                    apply_newer(&mut applied, &c.key, e.version, c.value.clone());
                }
            }
            FeedMessage::Resolved { .. } => {}
        }
    }
    applied
}

/// The store's keys under `prefix` (values, versions), read strongly.
async fn store_state(client: &Client, prefix: &[u8]) -> BTreeMap<Vec<u8>, (u64, Vec<u8>)> {
    let scan = client
        .scan(prefix, 10_000, trellis_client::Consistency::Strong)
        .await
        .expect("scan the store");
    assert!(
        !scan.truncated,
        "the test writes fewer keys than one scan takes"
    );
    scan.items
        .into_iter()
        .map(|item| (item.key, (item.version, item.value)))
        .collect()
}

/// Writers that keep overwriting, deleting and creating keys under
/// `scan/` while the scan runs; every `scan/k/` key they try to write
/// (whatever the outcome) goes into `touched` first.
fn start_scan_writers(
    addr: String,
    stop: Arc<AtomicBool>,
    touched: Arc<Mutex<BTreeSet<Vec<u8>>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let addr = addr.clone();
            let stop = stop.clone();
            let touched = touched.clone();
            tokio::spawn(async move {
                let client = Client::connect(&addr).await.expect("writer client");
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let txn = client.begin();
                    let old = format!("scan/k/{:05}", (i * 37 + w * 11) % SCAN_KEYS);
                    touched
                        .lock()
                        .expect("lock")
                        .insert(old.clone().into_bytes());
                    if i.is_multiple_of(5) {
                        txn.delete(old.as_bytes()).expect("delete");
                    } else {
                        txn.put(old.as_bytes(), format!("w{w}-{i}").as_bytes())
                            .expect("put");
                    }
                    if i.is_multiple_of(3) {
                        txn.put(format!("scan/n/{w}/{i:05}").as_bytes(), b"new")
                            .expect("put");
                    }
                    // Aborts and unknown outcomes are fine: the store's
                    // final state is the truth the feed must reach.
                    if txn.commit().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// A new feed asks for an initial scan: each group's committed state in
/// the range comes first (in key order, no deleted key, each row's version
/// at or below what the store holds at the end), then its tail. While
/// writers keep overwriting, deleting and creating keys, and a primary is
/// SIGKILLed in the middle of its scan, the scan and the tail applied with
/// highest-version-wins end equal to the store; no cursor is handed out
/// before every group's scan is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_scan_then_the_tail_ends_equal_to_the_store_through_a_failover() {
    // Each scan chunk is followed by a pause (failpoint), so the kill below
    // lands mid-scan.
    let mut cluster =
        ReplicatedCluster::start_with_shard_env(3, 2, &[("TRELLIS_FAILPOINTS", "feed_scan_lag")])
            .await
            .expect("cluster");
    let addr = cluster.addr().to_string();
    let client = Client::connect(&addr).await.expect("client");
    // Retried: a 2PC's keys stay locked until every group finalized it.
    for first in (0..SCAN_KEYS).step_by(SCAN_FILL_BATCH) {
        client
            .run_txn(|txn| async move {
                for i in first..first + SCAN_FILL_BATCH {
                    txn.put(
                        format!("scan/k/{i:05}").as_bytes(),
                        format!("f{i}").as_bytes(),
                    )?;
                }
                Ok(())
            })
            .await
            .expect("fill");
    }
    client
        .run_txn(|txn| async move {
            for i in (0..SCAN_KEYS).step_by(SCAN_DELETE_EVERY) {
                txn.delete(format!("scan/k/{i:05}").as_bytes())?;
            }
            Ok(())
        })
        .await
        .expect("delete some");
    // Outside the watched range: never in the scan.
    put(&client, "scam/outside", "x").await;
    let deleted_before: BTreeSet<Vec<u8>> = (0..SCAN_KEYS)
        .step_by(SCAN_DELETE_EVERY)
        .map(|i| format!("scan/k/{i:05}").into_bytes())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    // A key a writer wrote before a group's feed started is in its scan
    // only (never an event): such a row is right even for a key deleted
    // before the watch.
    let touched: Arc<Mutex<BTreeSet<Vec<u8>>>> = Arc::default();
    let writers = start_scan_writers(addr.clone(), stop.clone(), touched.clone());
    let primary = cluster.primary(1).await.expect("primary of group 1");
    let mut watch = client
        .watch_with_scan(b"scan/", b"scan0")
        .await
        .expect("watch with a scan");
    let seen: Arc<Mutex<Vec<FeedMessage>>> = Arc::default();
    // After each message: whether the watch offered a cursor.
    let cursors: Arc<Mutex<Vec<bool>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        let cursors = cursors.clone();
        tokio::spawn(async move {
            loop {
                match watch.next().await {
                    Ok(Some(m)) => {
                        let mut seen = seen.lock().expect("lock");
                        cursors.lock().expect("lock").push(watch.cursor().is_some());
                        seen.push(m);
                    }
                    Ok(None) => panic!("the watch ended"),
                    Err(e) => panic!("the watch failed: {e}"),
                }
            }
        })
    };
    // Kill group 1's primary once its first scan rows came: its stream
    // breaks mid-scan and the scan starts over at the new primary.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !seen
        .lock()
        .expect("lock")
        .iter()
        .any(|m| matches!(m, FeedMessage::Scan { group: 1, rows, .. } if !rows.is_empty()))
    {
        assert!(Instant::now() < deadline, "group 1 sent no scan row");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cluster.kill9(1, primary);
    tokio::time::sleep(LOAD_PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // The store's final state; the feed must reach it.
    let store = store_state(&client, b"scan/").await;
    assert!(
        store.len() > SCAN_KEYS / 2,
        "the store holds too few keys to check: {}",
        store.len()
    );
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let applied = loop {
        let applied = apply_all(&seen.lock().expect("lock"));
        let live: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = applied
            .iter()
            .filter_map(|(k, (v, value))| value.clone().map(|value| (k.clone(), (*v, value))))
            .collect();
        if live == store {
            break applied;
        }
        assert!(
            Instant::now() < deadline,
            "the scan and the tail never reached the store: {} keys applied live, {} in the \
             store, first difference {:?}",
            live.len(),
            store.len(),
            store
                .iter()
                .find(|(k, v)| live.get(*k) != Some(v))
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v, live.get(k)))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    reader.abort();
    assert!(!applied.is_empty());

    let seen = seen.lock().expect("lock");
    let cursors = cursors.lock().expect("lock");
    // Per group: scan rows in key order (from the start again after a
    // "begins" message), every row's version at or below the store's, no
    // row of a key deleted before the watch and not written since, no key
    // outside the range; a group's events only after its scan is done.
    let mut last_key: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut done: BTreeSet<u64> = BTreeSet::new();
    let mut began: BTreeMap<u64, usize> = BTreeMap::new();
    // Groups whose scan began again after it had sent rows.
    let mut broken_mid_scan: BTreeSet<u64> = BTreeSet::new();
    let mut rows_seen = 0;
    for (i, m) in seen.iter().enumerate() {
        match m {
            FeedMessage::Scan {
                group,
                position,
                rows,
                done: finished,
            } => {
                assert!(
                    !done.contains(group),
                    "group {group}: a scan after it was done"
                );
                if rows.is_empty() && !finished {
                    assert_eq!(*position, 0, "a scan's begin message has no position");
                    *began.entry(*group).or_default() += 1;
                    if last_key.remove(group).is_some() {
                        broken_mid_scan.insert(*group);
                    }
                    continue;
                }
                assert!(
                    began.contains_key(group),
                    "group {group}: rows before its begin"
                );
                for r in rows {
                    rows_seen += 1;
                    assert!(r.key.starts_with(b"scan/"), "a row outside the range");
                    if let Some(last) = last_key.get(group) {
                        assert!(r.key > *last, "group {group}: scan rows out of key order");
                    }
                    last_key.insert(*group, r.key.clone());
                    if let Some((version, _)) = store.get(&r.key) {
                        assert!(
                            r.version <= *version,
                            "a scan row's version {} is above the store's {version}",
                            r.version
                        );
                    }
                    let rewritten = seen.iter().any(|m| match m {
                        FeedMessage::Event(e) => e.changes.iter().any(|c| c.key == r.key),
                        _ => false,
                    });
                    let written = rewritten || touched.lock().expect("lock").contains(&r.key);
                    assert!(
                        !deleted_before.contains(&r.key) || written,
                        "a row for {:?}, deleted before the watch and not written since",
                        String::from_utf8_lossy(&r.key)
                    );
                }
                if *finished {
                    done.insert(*group);
                }
            }
            FeedMessage::Event(e) => {
                assert!(
                    done.contains(&e.group),
                    "group {}: an event before its scan was done",
                    e.group
                );
            }
            FeedMessage::Resolved { group, .. } => {
                assert!(
                    done.contains(group),
                    "group {group}: resolved before its scan was done"
                );
            }
        }
        assert_eq!(
            cursors[i],
            done.len() == 3,
            "message {i}: a cursor exactly once every group's scan is done"
        );
    }
    assert_eq!(done.len(), 3, "every group's scan is done");
    assert!(rows_seen >= SCAN_KEYS / 2, "the scan gave {rows_seen} rows");
    assert!(
        broken_mid_scan.contains(&1),
        "group 1's scan did not start over after rows came (the kill missed the scan): \
         {began:?}"
    );
    eprintln!("scan test: {rows_seen} rows, scans begun by group {began:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_scan_with_a_cursor_is_refused() {
    let cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    put(&client, "s/1", "x").await;
    // The client's API offers no such request; the service refuses a raw one.
    let mut raw = trellis_proto::v1::changefeed_client::ChangefeedClient::connect(format!(
        "http://{}",
        cluster.addr()
    ))
    .await
    .expect("connect");
    let err = raw
        .watch(trellis_proto::v1::WatchRequest {
            cursor: Some(Cursor::new(cluster_id(&cluster).await, [(1, 0)]).to_pb()),
            initial_scan: true,
            ..Default::default()
        })
        .await
        .expect_err("a scan with a cursor is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("initial scan"), "{}", err.message());
    // An empty range's scan is done at once and the tail follows.
    let mut watch = client
        .watch_with_scan(b"nothing/", b"nothing0")
        .await
        .expect("watch");
    assert!(
        watch.cursor().is_none() && watch.scanning(),
        "no cursor before the scan's first message"
    );
    let mut done = false;
    while !done {
        let m = tokio::time::timeout(DRAIN_TIMEOUT, watch.next())
            .await
            .expect("the scan ends")
            .expect("watch")
            .expect("open");
        match m {
            FeedMessage::Scan { rows, done: d, .. } => {
                assert!(rows.is_empty(), "no key in range");
                if !d {
                    assert!(watch.cursor().is_none(), "no cursor while scanning");
                }
                done = d;
            }
            other => panic!("before the scan is done: {other:?}"),
        }
    }
    assert!(watch.cursor().is_some(), "a cursor once the scan is done");
    put(&client, "nothing/1", "y").await;
    let events = take_events(&mut watch, 1).await;
    assert_eq!(events[0].changes[0].key, b"nothing/1");
}

/// This cluster's id, as `trellis status` shows it.
async fn cluster_id(cluster: &ReplicatedCluster) -> ClusterId {
    let status = cluster.status().await.expect("status");
    ClusterId::new(status.cluster).expect("the status names the cluster")
}

/// A cursor is a position in one cluster's logs. Another cluster's cursor
/// (here forged: this cluster's groups, another id, so only the id tells
/// them apart) is refused by Watch, by SaveCursor and by `trellis cdc
/// --from`, each naming both clusters; this cluster's own cursor, the one
/// a watch hands out, is taken and names the id `trellis status` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_another_cluster_is_refused() {
    let cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    put(&client, "c/1", "x").await;
    let this = cluster_id(&cluster).await;
    let shown = run_trellis(&["status", "--addr", cluster.addr()]);
    assert!(shown.status.success(), "{}", printed(&shown));
    assert!(
        String::from_utf8_lossy(&shown.stdout).starts_with(&format!("cluster {this} ")),
        "{}",
        printed(&shown)
    );

    // From the beginning (no cluster named yet): the watch's cursor takes
    // the cluster from its messages.
    let mut watch = client
        .watch(b"c/", b"", Some(&Cursor::default()))
        .await
        .expect("an empty cursor is any cluster's");
    let first = take_events(&mut watch, 1).await;
    assert_eq!(first[0].changes[0].key, b"c/1");
    let ours = watch.cursor().expect("no scan: a cursor").clone();
    assert_eq!(ours.cluster, Some(this), "{ours}");
    drop(watch);
    client
        .save_cursor("ours", &ours)
        .await
        .expect("this cluster's cursor is saved");
    assert_eq!(
        client.load_cursor("ours").await.expect("load"),
        Some(ours.clone())
    );

    let other = ClusterId::new(this.get() ^ 0x5a5a).expect("in range");
    let foreign = Cursor {
        cluster: Some(other),
        ..ours.clone()
    };
    let says_both = |text: &str| {
        assert!(text.contains(&other.to_string()), "names theirs: {text}");
        assert!(text.contains(&this.to_string()), "names ours: {text}");
    };
    let err = client
        .watch(b"c/", b"", Some(&foreign))
        .await
        .err()
        .expect("another cluster's cursor is refused");
    assert!(
        matches!(
            &err,
            Error::Server {
                code: tonic::Code::FailedPrecondition,
                ..
            }
        ),
        "{err:?}"
    );
    says_both(&err.to_string());
    let err = client
        .save_cursor("theirs", &foreign)
        .await
        .expect_err("another cluster's cursor is not saved");
    says_both(&err.to_string());
    assert_eq!(client.load_cursor("theirs").await.expect("load"), None);
    // Positions without a cluster are refused too (the server's check, not
    // only the text form's).
    let nameless = Cursor {
        cluster: None,
        ..ours.clone()
    };
    let err = client
        .watch(b"c/", b"", Some(&nameless))
        .await
        .err()
        .expect("positions without a cluster are refused");
    assert!(err.to_string().contains("no cluster"), "{err}");

    // `trellis cdc --from` another cluster's cursor: refused, non-zero.
    let out = run_trellis(&[
        "cdc",
        "--addr",
        cluster.addr(),
        "--sink",
        "stdout",
        "--from",
        &foreign.to_string(),
    ]);
    assert!(!out.status.success(), "{}", printed(&out));
    says_both(&String::from_utf8_lossy(&out.stderr));
    // And its text form without the cluster, before anything is sent.
    let out = run_trellis(&["cdc", "--sink", "stdout", "--from", "1:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("names no cluster"),
        "{}",
        printed(&out)
    );
}

/// The events of a raw watch (as another language's client sees them):
/// in `FeedEvents` messages when the request asks for batches, one
/// message per event otherwise; the same events in the same order either
/// way, each batch followed by the resolved position after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_the_same_events_batched_or_one_by_one() {
    use trellis_proto::v1::watch_response::Kind;
    const PUTS: usize = 12;
    let cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    let mut ids = Vec::new();
    for i in 0..PUTS {
        ids.push(put(&client, &format!("b/{i:02}"), "x").await);
    }
    let this = cluster_id(&cluster).await;
    let mut seen_by_mode = Vec::new();
    for batch in [false, true] {
        let mut raw = trellis_proto::v1::changefeed_client::ChangefeedClient::connect(format!(
            "http://{}",
            cluster.addr()
        ))
        .await
        .expect("connect");
        let mut stream = raw
            .watch(trellis_proto::v1::WatchRequest {
                start: b"b/".to_vec(),
                end: b"b0".to_vec(),
                cursor: Some(Cursor::new(this, [(1, 0)]).to_pb()),
                batch,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let mut seen: Vec<[u8; 16]> = Vec::new();
        let mut batches = 0;
        while seen.len() < PUTS {
            let message = tokio::time::timeout(DRAIN_TIMEOUT, stream.message())
                .await
                .expect("the feed went quiet")
                .expect("watch")
                .expect("open");
            match message.kind.expect("a kind") {
                Kind::Event(e) => {
                    assert!(!batch, "one message per event only when not batched");
                    seen.push(id_of(&e));
                }
                Kind::Events(events) => {
                    assert!(batch, "FeedEvents only when asked for");
                    assert!(!events.events.is_empty(), "a batch holds events");
                    let resolved = events.resolved.expect("a batch ends resolved");
                    let last = events.events.last().expect("events").position;
                    assert!(resolved.position >= last, "{resolved:?} before {last}");
                    seen.extend(events.events.iter().map(id_of));
                    batches += 1;
                }
                Kind::Resolved(_) => {}
                Kind::Scan(s) => panic!("no scan was asked for: {s:?}"),
            }
        }
        if batch {
            assert!((1..=PUTS).contains(&batches), "{batches} batches");
        }
        seen_by_mode.push(seen);
    }
    assert_eq!(seen_by_mode[0], ids, "one by one: every put, in order");
    assert_eq!(seen_by_mode[1], ids, "batched: every put, in order");
}

/// Key prefixes of the moving-map scan test (one store read each).
const MOVING_PREFIXES: usize = 4;
/// Keys under each.
const MOVING_KEYS: usize = 5000;
/// Keys written per transaction while filling.
const MOVING_FILL_BATCH: usize = 250;
/// Slots of group 1 moved to group 2 and back while the scans run.
const MOVING_SLOTS: usize = 24;
/// Move rounds (there and back) at most before a rescan must have shown.
const MOVING_ROUNDS_MAX: usize = 10;
/// How long the scans, with their rescans, may take to settle.
const MOVING_SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// An initial scan while slots move between the groups: each group scans
/// the slots it owns, so a slot that flips from group 1 to group 2 could
/// be read by neither (1 reads after it heard of the flip, 2 before). The
/// groups whose scan read an older map epoch than another's must scan
/// again (a "begins" after their `done`), and the scans and tails applied
/// highest-version-wins end equal to the store, every key there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_scan_while_slots_move_scans_again_and_misses_nothing() {
    use trellis_types::placement::assign_slots;
    let cluster =
        ReplicatedCluster::start_with_shard_env(2, 1, &[("TRELLIS_FAILPOINTS", "feed_scan_lag")])
            .await
            .expect("cluster");
    let addr = cluster.addr().to_string();
    let client = Client::connect(&addr).await.expect("client");
    for d in 0..MOVING_PREFIXES {
        for first in (0..MOVING_KEYS).step_by(MOVING_FILL_BATCH) {
            client
                .run_txn(|txn| async move {
                    for i in first..first + MOVING_FILL_BATCH {
                        txn.put(format!("mv/{d}/{i:04}").as_bytes(), b"v")?;
                    }
                    Ok(())
                })
                .await
                .expect("fill");
        }
    }
    let ring = assign_slots(&[1, 2]);
    let slots: Vec<String> = (0..ring.len())
        .filter(|s| ring[*s] == 1)
        .take(MOVING_SLOTS)
        .map(|s| s.to_string())
        .collect();
    let slots = slots.join(",");

    let mut watch = client
        .watch_with_scan(b"mv/", b"mv0")
        .await
        .expect("watch with a scan");
    let seen: Arc<Mutex<Vec<FeedMessage>>> = Arc::default();
    let complete = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, complete) = (seen.clone(), complete.clone());
        tokio::spawn(async move {
            loop {
                match watch.next().await {
                    Ok(Some(m)) => {
                        seen.lock().expect("lock").push(m);
                        complete.store(watch.cursor().is_some(), Ordering::Relaxed);
                    }
                    Ok(None) => panic!("the watch ended"),
                    Err(e) => panic!("the watch failed: {e}"),
                }
            }
        })
    };
    // Whether some group's scan began again after it was done.
    let rescanned = |seen: &[FeedMessage]| {
        let mut done = BTreeSet::new();
        seen.iter().any(|m| match m {
            FeedMessage::Scan {
                group,
                rows,
                done: d,
                ..
            } => {
                if *d {
                    done.insert(*group);
                    false
                } else {
                    rows.is_empty() && done.contains(group)
                }
            }
            _ => false,
        })
    };
    // Slots there and back until a rescan shows (the first flip lands
    // while the scans still run: each takes seconds under the failpoint).
    let mut rounds = 0;
    while !rescanned(&seen.lock().expect("lock")) {
        assert!(
            rounds < MOVING_ROUNDS_MAX,
            "no group scanned again in {rounds} rounds of moves during the scans"
        );
        rounds += 1;
        for (from, to) in [("1", "2"), ("2", "1")] {
            let args: Vec<String> = [
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
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let out = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                trellis_tests::harness::admin_ok(&args)
            })
            .await
            .expect("move-slots");
            assert!(out.contains("done"), "{out}");
        }
    }

    // The store, read prefix by prefix (each fits one scan).
    let mut store = BTreeMap::new();
    for d in 0..MOVING_PREFIXES {
        store.extend(store_state(&client, format!("mv/{d}/").as_bytes()).await);
    }
    assert_eq!(
        store.len(),
        MOVING_PREFIXES * MOVING_KEYS,
        "every key stays"
    );
    let deadline = Instant::now() + MOVING_SETTLE_TIMEOUT;
    loop {
        let applied = apply_all(&seen.lock().expect("lock"));
        let live: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = applied
            .into_iter()
            .filter_map(|(k, (v, value))| value.map(|value| (k, (v, value))))
            .collect();
        if complete.load(Ordering::Relaxed) && live == store {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scans never settled on the store (scans done: {}): {} keys live, {} in the \
             store, first missing {:?}",
            complete.load(Ordering::Relaxed),
            live.len(),
            store.len(),
            store
                .keys()
                .find(|k| !live.contains_key(*k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reader.abort();
}

/// A counter of a process's /metrics (0 if not rendered yet).
async fn counter(proc: &trellis_tests::harness::Proc, name: &str) -> u64 {
    let metrics = trellis_tests::harness::http_get(proc.field("metrics"), "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// The story: a backup of group 1 is killed; a registered feed handles
/// the transactions written after, and its cursor, saved, pins the log
/// from there. The primary goes on alone, snapshots and keeps no log
/// below the feed's pin, so the backup, restarted, needs a snapshot: it
/// gets one, and with it the log from the feed's pin (the log prefix).
/// The primary is then killed and the restored backup promoted: the feed
/// resumed from its saved cursor gives exactly the transactions after
/// it, those before the snapshot too. Without the prefix the watch fails
/// with FEED_HISTORY_GONE ("restored from its primary's snapshot").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_by_snapshot_and_promoted_keeps_the_feeds_history() {
    // A tiny in-memory feed of records and no log kept past a snapshot
    // (but for the feed's pin): a backup that returns needs a snapshot.
    let args = [
        "--feed-bytes-max",
        "4096",
        "--segment-bytes",
        "4096",
        "--snapshot-every-bytes",
        "16384",
        "--log-retain-bytes",
        "0",
    ];
    let mut cluster = ReplicatedCluster::start(1, 2, &args)
        .await
        .expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    let this = cluster_id(&cluster).await;
    let primary = cluster.primary(1).await.expect("primary");
    let backup = if primary == 1 { 2 } else { 1 };
    let backup_addr = cluster.proc(1, backup).field("grpc").to_string();
    put(&client, "before/0", "x").await;
    cluster.kill9(1, backup);
    cluster
        .wait_for("the dead backup out of the configuration", |s| {
            s.groups[0]
                .members
                .iter()
                .any(|m| m.address == backup_addr && !m.in_sync)
        })
        .await
        .expect("reconfiguration");

    // The feed handles these, and saves its cursor after them. They fill
    // a few log segments, so the segment with the backup's next record
    // lies wholly below the feed's pin.
    let value = "v".repeat(1024);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(put(&client, &format!("s/{i:03}"), &value).await);
    }
    let mut watch = client
        .watch(b"s/", b"", Some(&Cursor::new(this, [(1, 0)])))
        .await
        .expect("watch");
    let handled = take_events(&mut watch, 10).await;
    assert_eq!(handled.iter().map(id_of).collect::<Vec<_>>(), ids);
    let cursor = watch.cursor().expect("no scan: a cursor").clone();
    drop(watch);
    client
        .save_cursor("restore-test", &cursor)
        .await
        .expect("save cursor");
    // Every replica polls the feeds' pin about every 250 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Enough log for a snapshot (taken after the writes, past the
    // feed's pin): what the backup missed goes.
    let snapshots = counter(cluster.proc(1, primary), "trellis_shard_snapshots_total").await;
    let mut after = Vec::new();
    for i in 10..90 {
        after.push(put(&client, &format!("s/{i:03}"), &value).await);
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let now = counter(cluster.proc(1, primary), "trellis_shard_snapshots_total").await;
        if now > snapshots {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the primary took {} snapshots since {snapshots}: {}",
            now - snapshots,
            trellis_tests::harness::http_get(cluster.proc(1, primary).field("metrics"), "/metrics")
                .await
                .lines()
                .filter(|l| l.contains("snapshot") || l.contains("append"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.restart(1, backup).expect("restart");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while counter(
        cluster.proc(1, backup),
        "trellis_repl_snapshot_installs_total",
    )
    .await
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "the backup caught up without a snapshot: nothing to check"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .wait_for("the restored backup in sync", |s| {
            let members = &s.groups[0].members;
            let primary_lsn = members
                .iter()
                .find(|m| m.role == "primary")
                .map(|m| m.last_lsn);
            members
                .iter()
                .any(|m| m.address == backup_addr && m.in_sync && Some(m.last_lsn) == primary_lsn)
        })
        .await
        .expect("in sync");

    let old_primary = cluster.proc(1, primary).field("grpc").to_string();
    cluster.kill9(1, primary);
    cluster
        .wait_for("the restored backup promoted", |s| {
            s.groups[0].members.iter().any(|m| {
                m.role == "primary" && m.address == backup_addr && m.address != old_primary
            })
        })
        .await
        .expect("failover");

    let saved = client
        .load_cursor("restore-test")
        .await
        .expect("load cursor")
        .expect("saved");
    let mut watch = client
        .watch(b"s/", b"", Some(&saved))
        .await
        .expect("a watch from the saved cursor on the restored replica");
    let rest = take_events(&mut watch, after.len()).await;
    assert_eq!(
        rest.iter().map(id_of).collect::<Vec<_>>(),
        after,
        "the restored replica's feed gives exactly what came after the cursor"
    );
}
