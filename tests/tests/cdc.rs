//! `trellis cdc` over real processes and the real brokers on 127.0.0.1
//! (issue 22): a Redis cache that follows the store never goes back in
//! time and ends equal to it, through a SIGKILL of `trellis cdc`; NATS
//! JetStream gets every committed transaction exactly once (after its
//! message-id deduplication) through a primary's SIGKILL and a SIGKILL of
//! `trellis cdc`, which resumes from its cursor in the catalog; RabbitMQ
//! gets confirmed messages; bad sinks and unreachable brokers fail clearly.
//! `--initial-scan` fills an empty cache with what was written before
//! `trellis cdc` started. A cursor past the kept history is refused
//! (FEED_HISTORY_GONE, `trellis cdc` exit 1 naming the way out) and the way
//! out, an initial scan, gives every key.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use tokio::time::Instant;
use trellis_client::{Client, ClusterId, Consistency};
use trellis_tests::harness::{http_get, metric_sample, printed, run_trellis, trellis_bin};
use trellis_tests::replicated::ReplicatedCluster;

const REDIS: &str = "127.0.0.1:6379";
const NATS: &str = "127.0.0.1:4222";
const AMQP: &str = "127.0.0.1:5672";
/// Keys the cache test's writers update again and again.
const CACHE_KEYS: usize = 16;
/// Writers of each load.
const WRITERS: usize = 2;
/// How long a load phase runs.
const PHASE: Duration = Duration::from_secs(2);
/// How long the sink may take to catch up after the load.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// A loopback address with a port free now.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

/// A `trellis cdc` child, killed (SIGKILL, by its PID) when dropped.
struct Cdc {
    child: Child,
}

impl Cdc {
    fn start(args: &[&str]) -> Cdc {
        let child = Command::new(trellis_bin())
            .arg("cdc")
            .args(args)
            .env(
                "TRELLIS_LOG",
                std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start trellis cdc");
        Cdc { child }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cache_follows_the_store_and_never_goes_back_through_a_cdc_kill() {
    let cluster = ReplicatedCluster::start(2, 1, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let prefix = format!("{}/", unique("cache"));
    let keys: Vec<Vec<u8>> = (0..CACHE_KEYS)
        .map(|i| format!("{prefix}{i:02}").into_bytes())
        .collect();
    let feed = unique("cache");
    let sink = format!("redis://{REDIS}");
    let cdc_args = |from: bool| {
        let mut args = vec![
            "--addr".to_string(),
            addr.clone(),
            "--sink".into(),
            sink.clone(),
            "--feed".into(),
            feed.clone(),
            "--prefix".into(),
            prefix.clone(),
        ];
        if from {
            args.extend(["--from".into(), "beginning".into()]);
        }
        args
    };
    let args: Vec<String> = cdc_args(true);
    let cdc = Cdc::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Writers: overwrite and now and then delete the same few keys.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = Client::connect(&addr).await.expect("client");
        let keys = keys.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let txn = client.begin();
                let key = &keys[(i * 7 + w) % keys.len()];
                if i.is_multiple_of(9) {
                    txn.delete(key).expect("delete");
                } else {
                    txn.put(key, format!("w{w}-{i}").as_bytes()).expect("put");
                    // And a second key, often in the other group (2PC).
                    txn.put(
                        &keys[(i * 3 + 1) % keys.len()],
                        format!("w{w}-{i}b").as_bytes(),
                    )
                    .expect("put");
                }
                let _ = txn.commit().await;
            }
        }));
    }
    // A reader of the cache: no key's version ever goes back.
    let reader = {
        let keys = keys.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = redis().await;
            let mut newest: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for key in &keys {
                    if let Some((version, _)) = trellis_cdc::cache::cached(&mut conn, key)
                        .await
                        .expect("read the cache")
                    {
                        let seen = newest.entry(key.clone()).or_insert(0);
                        assert!(
                            version >= *seen,
                            "the cache went back for {}: version {version} after {seen}",
                            String::from_utf8_lossy(key)
                        );
                        *seen = version;
                        reads += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        })
    };
    tokio::time::sleep(PHASE).await;
    cdc.kill9();
    tokio::time::sleep(PHASE).await;
    // Restarted without --from: it resumes from the saved cursor.
    let metrics_addr = free_addr();
    let mut args: Vec<String> = cdc_args(false);
    args.extend(["--metrics-listen".into(), metrics_addr.clone()]);
    let _cdc = Cdc::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let reads = reader.await.expect("the cache reader");
    assert!(reads > 0, "the reader never saw a cached key");

    // After the writers: the cache equals the store.
    let client = Client::connect(&addr).await.expect("client");
    let store = client
        .get(&keys, Consistency::Strong)
        .await
        .expect("read the store");
    let mut conn = redis().await;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let mut differ = Vec::new();
        for item in &store {
            let cached = trellis_cdc::cache::cached(&mut conn, &item.key)
                .await
                .expect("read the cache");
            let same = match (item.value(), &cached) {
                (Some(value), Some((version, Some(held)))) => {
                    *version == item.version && held.as_slice() == value
                }
                // Deleted in the store: a tombstone, or never cached.
                (None, Some((_, None)) | None) => true,
                _ => false,
            };
            if !same {
                differ.push((String::from_utf8_lossy(&item.key).into_owned(), cached));
            }
        }
        if differ.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache still differs from the store: {differ:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its metrics: events delivered, and every group's lag.
    let page = http_get(&metrics_addr, "/metrics").await;
    let events = metric_sample(
        &page,
        &format!("trellis_cdc_events_total{{feed=\"{feed}\"}}"),
    )
    .unwrap_or_else(|| panic!("no events counter in {page}"));
    assert!(events > 0.0, "{page}");
    for group in 1..=2 {
        assert!(
            metric_sample(
                &page,
                &format!("trellis_cdc_lag_records{{feed=\"{feed}\",group=\"{group}\"}}")
            )
            .is_some(),
            "no lag for group {group} in {page}"
        );
    }
    let mut del = redis::cmd("DEL");
    for key in &keys {
        del.arg(key);
    }
    let _: i64 = del.query_async(&mut conn).await.expect("clean up");
}

/// Keys written before the initial-scan test's `trellis cdc` starts.
const SCAN_KEYS: usize = 300;

/// Keys are written (and some deleted) before `trellis cdc --initial-scan`
/// starts into an empty Redis prefix, then writers keep changing some of
/// them: once they stop, the cache equals the store for every key, those
/// written before the start included; the cursor is saved once the scan
/// is done, and asking for a scan again with that saved cursor is refused
/// with the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_scan_fills_an_empty_cache_with_what_was_written_before() {
    let cluster = ReplicatedCluster::start(2, 1, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let prefix = format!("{}/", unique("scan"));
    let keys: Vec<Vec<u8>> = (0..SCAN_KEYS)
        .map(|i| format!("{prefix}{i:04}").into_bytes())
        .collect();
    let client = Client::connect(&addr).await.expect("client");
    // Retried: a 2PC's keys stay locked until every group finalized it.
    for chunk in keys.chunks(50) {
        client
            .run_txn(|txn| async move {
                for key in chunk {
                    txn.put(key, b"before")?;
                }
                Ok(())
            })
            .await
            .expect("write before the feed");
    }
    let deleted = &keys;
    client
        .run_txn(|txn| async move {
            for key in deleted.iter().step_by(5) {
                txn.delete(key)?;
            }
            Ok(())
        })
        .await
        .expect("delete before the feed");

    let feed = unique("scan");
    let sink = format!("redis://{REDIS}");
    let metrics_addr = free_addr();
    let args = [
        "--addr",
        addr.as_str(),
        "--sink",
        sink.as_str(),
        "--feed",
        feed.as_str(),
        "--prefix",
        prefix.as_str(),
        "--initial-scan",
        "--metrics-listen",
        metrics_addr.as_str(),
    ];
    let cdc = Cdc::start(&args);
    // Writers change the first quarter of the keys meanwhile; the rest
    // reach the cache only through the scan.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = Client::connect(&addr).await.expect("client");
        let keys = keys[..SCAN_KEYS / 4].to_vec();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let txn = client.begin();
                let key = &keys[(i * 13 + w) % keys.len()];
                if i.is_multiple_of(7) {
                    txn.delete(key).expect("delete");
                } else {
                    txn.put(key, format!("w{w}-{i}").as_bytes()).expect("put");
                }
                let _ = txn.commit().await;
            }
        }));
    }
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    let store: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = client
        .scan(prefix.as_bytes(), 10_000, Consistency::Strong)
        .await
        .expect("read the store")
        .items
        .into_iter()
        .map(|item| (item.key, (item.version, item.value)))
        .collect();
    let untouched_before = store
        .values()
        .filter(|(_, value)| value.as_slice() == b"before")
        .count();
    assert!(
        untouched_before > SCAN_KEYS / 2,
        "too few keys left as written before the feed to check the scan: {untouched_before}"
    );
    let mut conn = redis().await;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let mut differ = Vec::new();
        for key in &keys {
            let cached = trellis_cdc::cache::cached(&mut conn, key)
                .await
                .expect("read the cache");
            let same = match (store.get(key), &cached) {
                (Some((version, value)), Some((held_version, Some(held)))) => {
                    held_version == version && held == value
                }
                // Deleted in the store: a tombstone, or never cached.
                (None, Some((_, None)) | None) => true,
                _ => false,
            };
            if !same {
                differ.push((String::from_utf8_lossy(key).into_owned(), cached));
            }
        }
        if differ.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache still differs from the store in {} keys, e.g. {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = http_get(&metrics_addr, "/metrics").await;
    let rows = metric_sample(
        &page,
        &format!("trellis_cdc_scan_rows_total{{feed=\"{feed}\"}}"),
    )
    .unwrap_or_else(|| panic!("no scan rows counter in {page}"));
    assert!(rows >= untouched_before as f64, "{page}");

    // Once the scan is done a cursor is saved; a scan is then refused for
    // that feed, with the way out.
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while client.load_cursor(&feed).await.expect("load").is_none() {
        assert!(Instant::now() < deadline, "no cursor was ever saved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cdc.kill9();
    let mut again = vec!["cdc"];
    again.extend(
        args.iter()
            .filter(|a| !a.starts_with("--metrics") && **a != metrics_addr),
    );
    let out = run_trellis(&again);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("forget-feed") && stderr.contains("saved cursor"),
        "{}",
        printed(&out)
    );

    let mut del = redis::cmd("DEL");
    for key in &keys {
        del.arg(key);
    }
    let _: i64 = del.query_async(&mut conn).await.expect("clean up");
}

/// One event's group and keys.
type GroupKeys = (u64, Vec<Vec<u8>>);

/// Acknowledged transactions: id → keys written.
type Acked = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

fn start_load(
    addr: &str,
    prefix: &str,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (addr, prefix, stop, acked) = (
                addr.to_string(),
                prefix.to_string(),
                stop.clone(),
                acked.clone(),
            );
            tokio::spawn(async move {
                let client = Client::connect(&addr).await.expect("client");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let keys: Vec<Vec<u8>> = (0..if i.is_multiple_of(3) { 3 } else { 1 })
                        .map(|k| format!("{prefix}{w}/{i}/{k}").into_bytes())
                        .collect();
                    let txn = client.begin();
                    for k in &keys {
                        txn.put(k, b"v").expect("put");
                    }
                    let id = hex::encode(txn.id());
                    if txn.commit().await.is_ok() {
                        acked.lock().expect("lock").insert(id, keys);
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// One message's JSON, the parts this test checks; it must name `cluster`
/// as `trellis status` does.
fn parse_event(payload: &[u8], cluster: ClusterId) -> (u64, u64, String, Vec<Vec<u8>>) {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON event");
    let keys = v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["key"].as_str().expect("a UTF-8 key").as_bytes().to_vec())
        .collect();
    assert_eq!(
        v["cluster"].as_str(),
        Some(cluster.to_string().as_str()),
        "the event names its cluster"
    );
    (
        v["group"].as_u64().expect("group"),
        v["position"].as_u64().expect("position"),
        v["txn_id"].as_str().expect("txn_id").to_string(),
        keys,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_gets_every_committed_transaction_once_through_a_primary_and_a_cdc_kill() {
    let mut cluster = ReplicatedCluster::start(3, 2, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let this = cluster_id(&cluster).await;
    let prefix = format!("{}/", unique("nats"));
    let subject = format!("trellis-test.{}", unique("feed"));
    let feed = unique("nats");
    let args = |from: bool| {
        let mut args = vec![
            "--addr".to_string(),
            addr.clone(),
            "--sink".into(),
            format!("nats://{NATS}/{subject}"),
            "--feed".into(),
            feed.clone(),
            "--prefix".into(),
            prefix.clone(),
            "--batch-events".into(),
            "16".into(),
        ];
        if from {
            args.extend(["--from".into(), "beginning".into()]);
        }
        args
    };
    let first: Vec<String> = args(true);
    let cdc = Cdc::start(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers = start_load(&addr, &prefix, &stop, &acked);
    tokio::time::sleep(PHASE).await;
    let primary = cluster.primary(2).await.expect("primary of group 2");
    cluster.kill9(2, primary);
    tokio::time::sleep(PHASE).await;
    cdc.kill9();
    tokio::time::sleep(PHASE).await;
    let again: Vec<String> = args(false);
    let _cdc = Cdc::start(&again.iter().map(String::as_str).collect::<Vec<_>>());
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 20, "the load did too little: {}", acked.len());

    // Read the stream until every acknowledged transaction is there.
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.expect("NATS"));
    let stream_name = trellis_cdc::nats::stream_name_for(&subject);
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let stream = loop {
        match js.get_stream(&stream_name).await {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(Instant::now() < deadline, "no stream {stream_name}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("a consumer");
    // By transaction: (group, keys) of each of its events.
    let mut by_txn: HashMap<String, Vec<GroupKeys>> = HashMap::new();
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    loop {
        let missing = acked
            .iter()
            .filter(|(id, keys)| {
                by_txn.get(*id).is_none_or(|events| {
                    events.iter().map(|e| e.1.len()).sum::<usize>() < keys.len()
                })
            })
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged transactions never reached NATS"
        );
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("a message");
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .expect("a message id");
            let (group, position, txn, keys) = parse_event(&message.payload, this);
            assert_eq!(id, format!("trellis-{group}-{position}"));
            assert!(
                ids.insert(id.clone()),
                "{id} stored twice: deduplication failed"
            );
            let before = last.insert(group, position).unwrap_or(0);
            assert!(
                position > before,
                "group {group}: {position} after {before}"
            );
            by_txn.entry(txn).or_default().push((group, keys));
            message.ack().await.expect("ack");
        }
    }
    for (txn, events) in &by_txn {
        let keys = acked
            .get(txn)
            .unwrap_or_else(|| panic!("transaction {txn} in NATS was never acknowledged"));
        let mut got: Vec<Vec<u8>> = events.iter().flat_map(|e| e.1.clone()).collect();
        got.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(got, want, "transaction {txn}: keys differ");
        let groups: std::collections::BTreeSet<u64> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            groups.len(),
            events.len(),
            "transaction {txn} twice in a group"
        );
    }
    let _ = js.delete_stream(&stream_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_gets_confirmed_messages_with_their_ids() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;

    let cluster = ReplicatedCluster::start(2, 1, &[]).await.expect("cluster");
    let addr = cluster.addr().to_string();
    let this = cluster_id(&cluster).await;
    let exchange = unique("trellis-test");
    let prefix = format!("{}/", unique("amqp"));
    // The consumer's side first: a queue bound to every group's events.
    let connection = lapin::Connection::connect(
        &format!("amqp://guest:guest@{AMQP}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "trellis.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let _cdc = Cdc::start(&[
        "--addr",
        &addr,
        "--sink",
        &format!("amqp://{AMQP}/{exchange}"),
        "--prefix",
        &prefix,
        "--from",
        "beginning",
    ]);
    let client = Client::connect(&addr).await.expect("client");
    let mut written = Vec::new();
    for i in 0..10 {
        let txn = client.begin();
        txn.put(format!("{prefix}{i}").as_bytes(), b"v")
            .expect("put");
        written.push(hex::encode(txn.id()));
        txn.commit().await.expect("commit");
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while got.len() < written.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of 10 messages came",
            got.len()
        );
        match channel
            .basic_get(queue.name().clone(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            Some(message) => {
                let (group, position, txn, _) = parse_event(&message.delivery.data, this);
                let id = message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string());
                assert_eq!(id, Some(format!("trellis-{group}-{position}")));
                got.push(txn);
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got.sort();
    written.sort();
    assert_eq!(got, written);
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sinks_and_unreachable_brokers_fail_clearly() {
    let out = run_trellis(&["cdc", "--sink", "kafka://127.0.0.1:9092/t"]);
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nats://HOST:PORT/SUBJECT"),
        "{}",
        printed(&out)
    );
    let out = run_trellis(&["cdc", "--sink", "stdout", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    let out = run_trellis(&["cdc", "--sink", "stdout", "--feed", "no spaces"]);
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));

    let cluster = ReplicatedCluster::start(1, 1, &[]).await.expect("cluster");
    let out = run_trellis(&[
        "cdc",
        "--addr",
        cluster.addr(),
        "--sink",
        "nats://127.0.0.1:1/nowhere",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        printed(&out)
    );
    // A cursor of another cluster: its group is this one's, only the
    // cluster id tells them apart.
    let status = cluster.status().await.expect("status");
    let this = ClusterId::new(status.cluster).expect("the status names the cluster");
    let other = ClusterId::new(this.get() ^ 1).expect("in range");
    let out = run_trellis(&[
        "cdc",
        "--addr",
        cluster.addr(),
        "--sink",
        "stdout",
        "--from",
        &format!("{other}/1:100"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("of cluster {other}, not of this cluster {this}")),
        "{}",
        printed(&out)
    );
    // A cursor written without its cluster: refused before connecting.
    let out = run_trellis(&["cdc", "--sink", "stdout", "--from", "1:100"]);
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
}

/// Bytes of each value the history test writes (so the log rolls quickly).
const HISTORY_VALUE_BYTES: usize = 512;
/// How long the history test may write before the group's first records
/// are gone from its log.
const HISTORY_CUT_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause with no watch open before each look at the history (a shard
/// checks for a snapshot every second).
const HISTORY_SNAPSHOT_WAIT: Duration = Duration::from_millis(2500);

/// A cursor from before what the group's log still keeps: the watch is
/// refused with FEED_HISTORY_GONE, `trellis cdc --from` that cursor stops
/// with exit 1 and names the way out (`forget-feed`, `--initial-scan`),
/// and that way out works: an initial scan gives every key written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_no_longer_kept_is_refused_clearly_and_an_initial_scan_recovers() {
    // Small segments, frequent snapshots, nothing kept past a snapshot:
    // the first records go soon.
    let cluster = ReplicatedCluster::start(
        1,
        1,
        &[
            "--log-retain-bytes",
            "0",
            "--segment-bytes",
            "4096",
            "--snapshot-every-bytes",
            "4096",
        ],
    )
    .await
    .expect("cluster");
    let client = Client::connect(cluster.addr()).await.expect("client");
    let status = cluster.status().await.expect("status");
    let this = ClusterId::new(status.cluster).expect("the status names the cluster");
    let group = status.groups[0].group_id;
    let old = trellis_client::Cursor::new(this, [(group, 1)]);
    let value = vec![b'v'; HISTORY_VALUE_BYTES];
    let deadline = Instant::now() + HISTORY_CUT_TIMEOUT;
    let mut written = 0usize;
    let gone = loop {
        for _ in 0..32 {
            let txn = client.begin();
            txn.put(format!("hist/{written:05}").as_bytes(), &value)
                .expect("put");
            txn.commit().await.expect("commit");
            written += 1;
        }
        // A watch from the old cursor pins the log while it runs: give a
        // snapshot (checked every second) time with no watch open.
        tokio::time::sleep(HISTORY_SNAPSHOT_WAIT).await;
        let mut watch = client
            .watch(b"hist/", b"", Some(&old))
            .await
            .expect("the watch opens; the group's refusal comes on the stream");
        // The stream says where it starts (a resolved message at the
        // cursor) before it reads the log: an event means the history is
        // still there, the refusal that it is gone.
        let refused = loop {
            match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
                Ok(Err(trellis_client::Error::FeedHistoryGone { group: g, message })) => {
                    assert_eq!(g, group);
                    break Some(message);
                }
                Ok(Ok(Some(trellis_client::FeedMessage::Event(_)))) => break None,
                Ok(Ok(Some(_))) => {}
                other => panic!("after a cursor at position 1: {other:?}"),
            }
        };
        drop(watch);
        if let Some(message) = refused {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "the log still held position 2 after {written} writes"
        );
    };
    assert!(gone.contains(&format!("group {group}")), "{gone}");

    // `trellis cdc` from that cursor: exit 1, with the way out.
    let out = run_trellis(&[
        "cdc",
        "--addr",
        cluster.addr(),
        "--sink",
        "stdout",
        "--from",
        &old.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FEED_HISTORY_GONE") || stderr.contains("no longer"),
        "{}",
        printed(&out)
    );
    assert!(stderr.contains("--initial-scan"), "{}", printed(&out));

    // The way out: a scan of the range, then the tail.
    let mut watch = client
        .watch_with_scan(b"hist/", b"hist0")
        .await
        .expect("watch with a scan");
    let mut keys = std::collections::BTreeSet::new();
    let scan_deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while watch.cursor().is_none() {
        let message = tokio::time::timeout_at(scan_deadline, watch.next())
            .await
            .expect("the scan ends in time")
            .expect("watch")
            .expect("open");
        if let trellis_client::FeedMessage::Scan { rows, .. } = message {
            for row in rows {
                assert_eq!(row.value, value);
                keys.insert(row.key);
            }
        }
    }
    let expected: std::collections::BTreeSet<Vec<u8>> = (0..written)
        .map(|i| format!("hist/{i:05}").into_bytes())
        .collect();
    assert_eq!(keys, expected, "the scan gives every key written");
}

/// This cluster's id, as `trellis status` shows it.
async fn cluster_id(cluster: &ReplicatedCluster) -> ClusterId {
    let status = cluster.status().await.expect("status");
    ClusterId::new(status.cluster).expect("the status names the cluster")
}
