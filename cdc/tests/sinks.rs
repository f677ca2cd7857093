//! The sinks against the real brokers on 127.0.0.1 (NATS JetStream 4222,
//! RabbitMQ 5672 guest/guest, Redis 6379), which our machines and CI run:
//! each test delivers events through `Sink` and reads them back the way a
//! consumer or a cache reader would. Names (subjects, exchanges, keys)
//! carry the process id and the time, so reruns and parallel runs never
//! meet; each test removes what it created.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use trellis_cdc::{Sink, SinkError, SinkUrl};
use trellis_proto::v1::{FeedChange, FeedEvent, FeedScan, FeedScanRow};

const NATS: &str = "127.0.0.1:4222";
const AMQP: &str = "127.0.0.1:5672";
const REDIS: &str = "127.0.0.1:6379";
/// How long a test waits for messages it expects to have arrived.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A name no other run uses: `tag`, the process id and the time.
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn set(key: &str, value: &str) -> FeedChange {
    FeedChange {
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
    }
}

fn delete(key: &str) -> FeedChange {
    FeedChange {
        key: key.as_bytes().to_vec(),
        value: None,
    }
}

fn event(group: u64, position: u64, version: u64, changes: Vec<FeedChange>) -> FeedEvent {
    FeedEvent {
        group,
        position,
        version,
        txn_id: position.to_be_bytes().repeat(2),
        cluster: 1,
        participants: vec![],
        changes,
    }
}

async fn connect(url: &str) -> Sink {
    let url = SinkUrl::parse(url).expect("a good sink URL");
    Sink::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connect to {url} (is the broker running?): {err}"))
}

/// (group, position) of each JSON payload.
fn positions(payloads: &[Vec<u8>]) -> Vec<(u64, u64)> {
    payloads
        .iter()
        .map(|p| {
            let json: serde_json::Value = serde_json::from_slice(p).expect("JSON payload");
            (
                json["group"].as_u64().expect("group"),
                json["position"].as_u64().expect("position"),
            )
        })
        .collect()
}

/// A broker that is not there (port 1) fails to connect with an error
/// naming it; nothing hangs past the connect deadline.
#[tokio::test]
async fn an_unreachable_broker_is_a_connect_error_naming_it() {
    for (url, names) in [
        (
            "nats://127.0.0.1:1/orders",
            "NATS JetStream nats://127.0.0.1:1/orders",
        ),
        (
            "amqp://127.0.0.1:1/orders",
            "RabbitMQ amqp://guest@127.0.0.1:1/orders",
        ),
        ("redis://127.0.0.1:1", "Redis redis://127.0.0.1:1/0"),
    ] {
        let err = Sink::connect(&SinkUrl::parse(url).expect("parse"))
            .await
            .expect_err(url);
        assert!(matches!(err, SinkError::Connect { .. }), "{url}: {err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot connect to {names}: ")),
            "{text}"
        );
    }
}

/// The stdout sink writes one JSON line per event and flushes; more than
/// DELIVER_EVENTS_MAX events in one call are refused before any is written.
#[tokio::test]
async fn json_lines_are_one_event_a_line() {
    let (writer, mut reader) = tokio::io::duplex(64 * 1024);
    let mut sink = Sink::json_lines(writer, "test writer");
    let events = [
        event(1, 10, 10, vec![set("a", "1")]),
        event(2, 11, 11, vec![delete("b")]),
    ];
    sink.deliver(&events).await.expect("deliver");
    let too_many = vec![event(1, 1, 1, vec![]); trellis_cdc::DELIVER_EVENTS_MAX + 1];
    let err = sink.deliver(&too_many).await.expect_err("too many");
    assert!(matches!(err, SinkError::TooMany { .. }), "{err:?}");
    drop(sink);
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut text)
        .await
        .expect("read");
    let lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    assert_eq!(positions(&lines), [(1, 10), (2, 11)], "{text}");
    assert!(text.ends_with('\n'));
}

fn scan(group: u64, position: u64, rows: &[(&str, &str, u64)]) -> FeedScan {
    FeedScan {
        group,
        position,
        rows: rows
            .iter()
            .map(|&(key, value, version)| FeedScanRow {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                version,
            })
            .collect(),
        done: false,
        cluster: 1,
    }
}

/// A scan chunk is one JSON line per row, marked `"scan":true`.
#[tokio::test]
async fn scan_rows_are_one_json_line_each() {
    let (writer, mut reader) = tokio::io::duplex(64 * 1024);
    let mut sink = Sink::json_lines(writer, "test writer");
    sink.deliver_scan(&scan(2, 40, &[("a", "1", 12), ("b", "2", 41)]))
        .await
        .expect("deliver a scan chunk");
    drop(sink);
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut text)
        .await
        .expect("read");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["scan"], true);
    assert_eq!(lines[0]["key"], "a");
    assert_eq!(lines[1]["version"], 41);
    assert_eq!(lines[1]["position"], 40);
}

mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer::pull};

    async fn jetstream() -> jetstream::Context {
        let client = async_nats::connect(NATS).await.expect("connect to NATS");
        jetstream::new(client)
    }

    /// Every message of stream `name`, by a pull consumer: payloads and
    /// message-id headers.
    async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<(Vec<u8>, String)> {
        let stream = js.get_stream(name).await.expect("the stream");
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config::default())
            .await
            .expect("a consumer");
        let mut messages = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        let mut seen = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.expect("a message");
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            seen.push((message.payload.to_vec(), id));
            message.ack().await.expect("ack");
        }
        seen
    }

    /// A subject no stream captures gets a stream of its own; events land
    /// in order with their message ids, and an event delivered twice (a
    /// replay after a restart) is stored once.
    #[tokio::test]
    async fn events_are_published_once_each_with_their_ids() {
        let subject = format!("trellis-test.{}", unique("events"));
        let mut sink = connect(&format!("nats://{NATS}/{subject}")).await;
        let stream = trellis_cdc::nats::stream_name_for(&subject);
        let first = [
            event(1, 5, 5, vec![set("a", "1")]),
            event(2, 3, 9, vec![set("b", "2"), delete("c")]),
            event(1, 6, 6, vec![delete("a")]),
        ];
        sink.deliver(&first).await.expect("deliver");
        // The replay: the last two again, then one new.
        sink.deliver(&first[1..]).await.expect("deliver again");
        sink.deliver(&[event(1, 7, 7, vec![set("a", "3")])])
            .await
            .expect("deliver a new one");

        let js = jetstream().await;
        let info = js
            .get_stream(&stream)
            .await
            .expect("created")
            .cached_info()
            .clone();
        assert_eq!(info.config.subjects, [subject.as_str()]);
        assert_eq!(
            info.config.duplicate_window,
            trellis_cdc::nats::DUPLICATE_WINDOW
        );
        let seen = read_stream(&js, &stream).await;
        let (payloads, ids): (Vec<_>, Vec<_>) = seen.into_iter().unzip();
        assert_eq!(positions(&payloads), [(1, 5), (2, 3), (1, 6), (1, 7)]);
        assert_eq!(
            ids,
            ["trellis-1-5", "trellis-2-3", "trellis-1-6", "trellis-1-7"]
        );
        assert_eq!(payloads[1], trellis_cdc::json::encode_event(&first[1]));

        // A second sink finds the stream it created rather than making one.
        drop(sink);
        let mut again = connect(&format!("nats://{NATS}/{subject}")).await;
        again
            .deliver(&first)
            .await
            .expect("deliver after reconnect");
        let after = js
            .get_stream(&stream)
            .await
            .expect("stream")
            .cached_info()
            .clone();
        assert_eq!(after.state.messages, 4, "still deduplicated");
        js.delete_stream(&stream).await.expect("clean up");
    }

    /// Sends pipelined: many sends go out before any acceptance is
    /// awaited, each send's acceptance then comes oldest first, and the
    /// stream holds every event once, in the order sent.
    #[tokio::test]
    async fn pipelined_sends_land_in_order_once_each() {
        let subject = format!("trellis-test.{}", unique("pipelined"));
        let mut sink = connect(&format!("nats://{NATS}/{subject}")).await;
        let stream = trellis_cdc::nats::stream_name_for(&subject);
        let batches: Vec<Vec<FeedEvent>> = (0..20u64)
            .map(|b| {
                (0..5u64)
                    .map(|i| {
                        let position = b * 5 + i + 1;
                        event(1 + position % 3, position, position, vec![set("k", "v")])
                    })
                    .collect()
            })
            .collect();
        let mut pending = Vec::new();
        for batch in &batches {
            pending.push(sink.send(batch).await.expect("send"));
        }
        for accepted in pending {
            accepted.await.expect("accepted");
        }
        let js = jetstream().await;
        let seen = read_stream(&js, &stream).await;
        let (payloads, ids): (Vec<_>, Vec<_>) = seen.into_iter().unzip();
        let sent: Vec<(u64, u64)> = batches
            .iter()
            .flatten()
            .map(|e| (e.group, e.position))
            .collect();
        assert_eq!(positions(&payloads), sent);
        assert_eq!(ids.len(), 100);
        js.delete_stream(&stream).await.expect("clean up");
    }

    /// A stream made by hand for the subject is used as it is.
    #[tokio::test]
    async fn an_existing_stream_is_used() {
        let subject = format!("trellis-test.{}", unique("existing"));
        let stream = format!("HAND_{}", unique("made").replace('-', "_"));
        let js = jetstream().await;
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subject}.>"), subject.clone()],
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .expect("create a stream by hand");
        let mut sink = connect(&format!("nats://{NATS}/{subject}")).await;
        let Sink::Nats(nats) = &sink else {
            panic!("a NATS sink")
        };
        assert_eq!(nats.stream(), stream);
        sink.deliver(&[event(4, 1, 1, vec![set("k", "v")])])
            .await
            .expect("deliver");
        let seen = read_stream(&js, &stream).await;
        assert_eq!(seen.len(), 1);
        assert!(
            js.get_stream(trellis_cdc::nats::stream_name_for(&subject))
                .await
                .is_err(),
            "no stream of our own was made"
        );
        js.delete_stream(&stream).await.expect("clean up");
    }
}

mod amqp {
    use super::*;
    use lapin::options::{
        BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};

    async fn channel() -> (Connection, lapin::Channel) {
        let connection = Connection::connect(
            &format!("amqp://guest:guest@{AMQP}/%2f"),
            ConnectionProperties::default(),
        )
        .await
        .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        (connection, channel)
    }

    /// Events reach a queue bound to the exchange, persistent, with their
    /// message ids and per-group routing keys, in order.
    #[tokio::test]
    async fn events_reach_a_bound_queue_confirmed() {
        let exchange = unique("trellis-test");
        let mut sink = connect(&format!("amqp://{AMQP}/{exchange}")).await;
        // The consumer's side: a queue bound to every group's events.
        let (_connection, channel) = channel().await;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
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
        let events = [
            event(1, 5, 5, vec![set("a", "1")]),
            event(2, 3, 9, vec![set("b", "2"), delete("c")]),
            event(1, 6, 6, vec![delete("a")]),
        ];
        sink.deliver(&events).await.expect("deliver");
        // A second connect declares the same exchange again: no error.
        let mut again = connect(&format!("amqp://{AMQP}/{exchange}")).await;
        again.deliver(&events[..1]).await.expect("deliver again");

        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + READ_BACK_TIMEOUT;
        while got.len() < 4 && tokio::time::Instant::now() < deadline {
            match channel
                .basic_get(queue.name().clone(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                Some(message) => got.push(message.delivery),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let payloads: Vec<Vec<u8>> = got.iter().map(|d| d.data.clone()).collect();
        assert_eq!(positions(&payloads), [(1, 5), (2, 3), (1, 6), (1, 5)]);
        let ids: Vec<String> = got
            .iter()
            .map(|d| {
                d.properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            ids,
            ["trellis-1-5", "trellis-2-3", "trellis-1-6", "trellis-1-5"]
        );
        let keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
        assert_eq!(keys, ["trellis.1", "trellis.2", "trellis.1", "trellis.1"]);
        assert!(got.iter().all(|d| *d.properties.delivery_mode() == Some(2)));
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("clean up");
    }

    /// With no queue bound, RabbitMQ would drop the event and still
    /// confirm it: the sink says so instead of reporting it delivered.
    #[tokio::test]
    async fn an_event_no_queue_takes_is_an_error() {
        let exchange = unique("trellis-test-unbound");
        let mut sink = connect(&format!("amqp://{AMQP}/{exchange}")).await;
        let err = sink
            .deliver(&[event(3, 1, 1, vec![set("k", "v")])])
            .await
            .expect_err("unroutable");
        let text = err.to_string();
        assert!(matches!(err, SinkError::Refused { .. }), "{err:?}");
        assert!(
            text.contains(&exchange) && text.contains("no queue") && text.contains("trellis.#"),
            "{text}"
        );
        let (_connection, channel) = channel().await;
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("clean up");
    }

    /// An exchange of that name but another type cannot be used, and the
    /// error says so.
    #[tokio::test]
    async fn an_exchange_of_another_type_is_refused() {
        let exchange = unique("trellis-test-fanout");
        let (_connection, channel) = channel().await;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Fanout,
                lapin::options::ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare a fanout exchange");
        let url = SinkUrl::parse(&format!("amqp://{AMQP}/{exchange}")).expect("parse");
        let err = Sink::connect(&url).await.expect_err("another type");
        assert!(
            err.to_string().contains("another type or durability"),
            "{err}"
        );
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("clean up");
    }
}

mod cache {
    use super::*;
    use redis::aio::MultiplexedConnection;
    use trellis_cdc::cache::cached;

    async fn redis() -> MultiplexedConnection {
        redis::Client::open(format!("redis://{REDIS}"))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }

    async fn seen(conn: &mut MultiplexedConnection, key: &str) -> Option<(u64, Option<Vec<u8>>)> {
        cached(conn, key.as_bytes()).await.expect("read the cache")
    }

    async fn ttl_ms(conn: &mut MultiplexedConnection, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(conn)
            .await
            .expect("PTTL")
    }

    async fn clean(conn: &mut MultiplexedConnection, keys: &[&str]) {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(conn)
            .await
            .expect("clean up");
    }

    /// The cache never goes back: an older write after a newer one is
    /// ignored, a delete leaves a tombstone that an older write cannot
    /// pass, and a newer write replaces the tombstone for good.
    #[tokio::test]
    async fn the_cache_never_goes_back_in_time() {
        let prefix = unique("trellis-test");
        let (a, b) = (format!("{prefix}:a"), format!("{prefix}:b"));
        let mut sink = connect(&format!("redis://{REDIS}")).await;
        let mut conn = redis().await;
        assert_eq!(seen(&mut conn, &a).await, None);

        sink.deliver(&[event(1, 10, 5, vec![set(&a, "five"), set(&b, "b5")])])
            .await
            .expect("deliver v5");
        assert_eq!(seen(&mut conn, &a).await, Some((5, Some(b"five".to_vec()))));
        sink.deliver(&[event(1, 8, 3, vec![set(&a, "three")])])
            .await
            .expect("deliver v3 late");
        assert_eq!(
            seen(&mut conn, &a).await,
            Some((5, Some(b"five".to_vec()))),
            "an older write is ignored"
        );
        // The same version again (a replay) changes nothing either.
        sink.deliver(&[event(1, 10, 5, vec![set(&a, "other")])])
            .await
            .expect("replay v5");
        assert_eq!(seen(&mut conn, &a).await, Some((5, Some(b"five".to_vec()))));

        sink.deliver(&[event(1, 11, 6, vec![delete(&a)])])
            .await
            .expect("delete at v6");
        assert_eq!(seen(&mut conn, &a).await, Some((6, None)));
        let ttl = ttl_ms(&mut conn, &a).await;
        assert!(
            ttl > 0 && ttl as u128 <= trellis_cdc::cache::TOMBSTONE_TTL.as_millis(),
            "a tombstone expires: {ttl}"
        );
        sink.deliver(&[event(1, 9, 4, vec![set(&a, "four")])])
            .await
            .expect("deliver v4 late");
        assert_eq!(
            seen(&mut conn, &a).await,
            Some((6, None)),
            "an older write cannot bring a deleted key back"
        );
        sink.deliver(&[event(2, 3, 7, vec![set(&a, "seven")])])
            .await
            .expect("deliver v7");
        assert_eq!(
            seen(&mut conn, &a).await,
            Some((7, Some(b"seven".to_vec())))
        );
        assert_eq!(
            ttl_ms(&mut conn, &a).await,
            -1,
            "a live value never expires"
        );
        assert_eq!(seen(&mut conn, &b).await, Some((5, Some(b"b5".to_vec()))));
        clean(&mut conn, &[&a, &b]).await;
    }

    /// A scan row is applied at its own version through the same guard: it
    /// fills an absent key, and never replaces a newer value or tombstone
    /// the cache took from an event.
    #[tokio::test]
    async fn scan_rows_fill_the_cache_only_where_it_is_older() {
        let prefix = unique("trellis-test");
        let (a, b, c) = (
            format!("{prefix}:a"),
            format!("{prefix}:b"),
            format!("{prefix}:c"),
        );
        let mut sink = connect(&format!("redis://{REDIS}")).await;
        let mut conn = redis().await;
        sink.deliver(&[event(1, 20, 20, vec![set(&b, "b20"), delete(&c)])])
            .await
            .expect("deliver v20");
        sink.deliver_scan(&scan(
            1,
            15,
            &[
                (a.as_str(), "a12", 12),
                (b.as_str(), "b18", 18),
                (c.as_str(), "c9", 9),
            ],
        ))
        .await
        .expect("deliver a scan chunk");
        assert_eq!(seen(&mut conn, &a).await, Some((12, Some(b"a12".to_vec()))));
        assert_eq!(
            seen(&mut conn, &b).await,
            Some((20, Some(b"b20".to_vec()))),
            "an older scan row does not replace a newer event's value"
        );
        assert_eq!(
            seen(&mut conn, &c).await,
            Some((20, None)),
            "nor a newer delete"
        );
        clean(&mut conn, &[&a, &b, &c]).await;
    }

    /// Within one delivery, events may come in any order and touch a key
    /// several times: the newest version wins. Versions above 2^53 (where
    /// Lua's numbers lose digits) still compare exactly.
    #[tokio::test]
    async fn the_newest_version_wins_within_a_batch_and_for_huge_versions() {
        let prefix = unique("trellis-test");
        let (k, h) = (format!("{prefix}:k"), format!("{prefix}:huge"));
        let mut sink = connect(&format!("redis://{REDIS}")).await;
        let mut conn = redis().await;
        let big = 1u64 << 60;
        sink.deliver(&[
            event(1, 3, 30, vec![set(&k, "30")]),
            event(1, 1, 10, vec![set(&k, "10")]),
            event(1, 2, 20, vec![delete(&k)]),
            event(2, 1, big, vec![set(&h, "older")]),
            event(2, 2, big + 1, vec![set(&h, "newer")]),
            event(2, 3, 9, vec![set(&h, "much older")]),
        ])
        .await
        .expect("deliver");
        assert_eq!(seen(&mut conn, &k).await, Some((30, Some(b"30".to_vec()))));
        assert_eq!(
            seen(&mut conn, &h).await,
            Some((big + 1, Some(b"newer".to_vec())))
        );
        clean(&mut conn, &[&k, &h]).await;
    }

    /// Keys and values are bytes, not text: they are cached as given.
    #[tokio::test]
    async fn binary_keys_and_values_are_kept_exactly() {
        let mut key = unique("trellis-test").into_bytes();
        key.extend_from_slice(&[0, 0xff, b'\n']);
        let value = vec![0xfe, 0, 1, 2];
        let mut sink = connect(&format!("redis://{REDIS}")).await;
        let change = FeedChange {
            key: key.clone(),
            value: Some(value.clone()),
        };
        sink.deliver(&[event(1, 1, 1, vec![change])])
            .await
            .expect("deliver");
        let mut conn = redis().await;
        assert_eq!(
            cached(&mut conn, &key).await.expect("read"),
            Some((1, Some(value)))
        );
        let _: i64 = redis::cmd("DEL")
            .arg(&key[..])
            .query_async(&mut conn)
            .await
            .expect("clean up");
    }

    /// Redis forgot the script (a restart, SCRIPT FLUSH): the sink loads it
    /// again and delivers.
    #[tokio::test]
    async fn a_forgotten_script_is_loaded_again() {
        let key = format!("{}:k", unique("trellis-test"));
        let mut sink = connect(&format!("redis://{REDIS}")).await;
        let mut conn = redis().await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("flush the scripts");
        sink.deliver(&[event(1, 1, 2, vec![set(&key, "v")])])
            .await
            .expect("deliver after the flush");
        assert_eq!(seen(&mut conn, &key).await, Some((2, Some(b"v".to_vec()))));
        clean(&mut conn, &[&key]).await;
    }

    /// A key someone else wrote as a plain string is not ours to
    /// overwrite: the delivery fails and says which sink and what.
    #[tokio::test]
    async fn a_key_of_another_type_fails_the_delivery() {
        let key = format!("{}:foreign", unique("trellis-test"));
        let mut conn = redis().await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("not ours")
            .query_async(&mut conn)
            .await
            .expect("SET");
        let mut sink = connect(&format!("redis://{REDIS}")).await;
        let err = sink
            .deliver(&[event(1, 1, 2, vec![set(&key, "v")])])
            .await
            .expect_err("wrong type");
        let text = err.to_string();
        assert!(
            text.starts_with("Redis redis://127.0.0.1:6379/0: running the version guard"),
            "{text}"
        );
        assert!(text.contains("WRONGTYPE"), "{text}");
        clean(&mut conn, &[&key]).await;
    }
}
