//! The sinks of `trellis cdc`: where change-feed events
//! (`trellis.v1.FeedEvent`, one committed transaction's writes in one
//! group) go. A sink is named by a URL ([`SinkUrl`]), opened with
//! [`Sink::connect`], and given events with [`Sink::deliver`], which
//! returns `Ok` only once every event it was given is durably accepted
//! downstream: that is what lets the caller then checkpoint its cursor.
//!
//! This crate never talks to Trellis, keeps no cursor and never retries:
//! the caller owns the feed, the checkpoint and the backoff. After an
//! error the sink may be half broken (a closed channel, a lost
//! connection); the caller drops it, connects anew and delivers the same
//! events again. Every sink is idempotent under such replays: the queues
//! deduplicate by message id ([`json::message_id`]) and the cache keeps
//! only newer versions.
//!
//! # Sinks
//! - `stdout`: one JSON line per event ([`json`]), flushed.
//! - `nats://HOST:PORT/SUBJECT`: NATS JetStream. Each event's JSON is
//!   published to SUBJECT with the header `Nats-Msg-Id:
//!   trellis-<group>-<position>`, so the stream drops a replayed event
//!   within its duplicate window; every publish ack is awaited. If no
//!   stream captures SUBJECT, one is created: `TRELLIS_<SUBJECT>` (every
//!   character outside `[A-Za-z0-9_-]` made `_`) on file storage with a
//!   duplicate window of [`nats::DUPLICATE_WINDOW`], and a log line says
//!   so. An existing stream is used as it is (a warning if its duplicate
//!   window is shorter).
//! - `amqp://[USER:PASS@]HOST:PORT/EXCHANGE`: RabbitMQ (vhost `/`, user
//!   and password `guest` unless given). The exchange is declared (topic,
//!   durable; it may exist already as such), the channel puts publisher
//!   confirms on, and each event is published persistent (delivery mode
//!   2), `mandatory`, with `message_id` `trellis-<group>-<position>` and
//!   routing key `trellis.<group>`. A nack, or an event that reached no
//!   queue (returned as unroutable), is an error: an event the broker
//!   dropped was not delivered.
//! - `redis://HOST:PORT[/DB]`: a cache that follows the store, guarded by
//!   version so that it never goes back in time ([`cache`] says how).
//!
//! An initial scan's chunk ([`Sink::deliver_scan`]) goes out as one
//! message per row (JSON in [`json`], message id
//! `scan-<group>-<position>-<key hex>`), or, into the cache, as one guarded
//! update per row at the row's version: a row older than what the cache
//! holds changes nothing.
//!
//! Consumers of the queues see each event at least once (exactly once
//! within a duplicate window on NATS); `(group, position)` identifies an
//! event for deduplication beyond it.
//!
//! # Layout
//! - `lib.rs`: [`Sink`] (connect, deliver) and the limits.
//! - [`url`] parses and checks a sink URL into a [`SinkUrl`].
//! - [`json`] is the JSON form of an event, pure.
//! - [`error`] holds [`SinkError`].
//! - `stdout` writes JSON lines to standard output (or any writer).
//! - [`nats`] publishes to NATS JetStream.
//! - [`amqp`] publishes to RabbitMQ.
//! - [`cache`] keeps the Redis cache: its layout, the Lua guard, and
//!   [`cache::cached`], what a reader sees.

use std::time::Duration;

use trellis_proto::v1::{FeedEvent, FeedScan};

use crate::json::Message;

pub mod amqp;
pub mod cache;
pub mod error;
pub mod json;
pub mod nats;
mod stdout;
pub mod url;

pub use error::SinkError;
pub use url::SinkUrl;

/// How long connecting to a sink may take, setup included (declaring the
/// exchange, finding or creating the stream, loading the cache script).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one [`Sink::deliver`] may take, from its first write to its
/// last acknowledgement; past it the call fails (and its events may or
/// may not have arrived: deliver them again).
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most events one [`Sink::deliver`] takes: they are all in flight at once
/// (published, then every ack awaited), so this bounds what a broker must
/// hold unacknowledged and what one deadline covers.
pub const DELIVER_EVENTS_MAX: usize = 1024;

/// An open sink. See the crate doc for what each kind does.
pub enum Sink {
    Stdout(stdout::JsonLines),
    Nats(nats::NatsSink),
    Amqp(amqp::AmqpSink),
    Redis(cache::RedisCache),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", self.name())
    }
}

impl Sink {
    /// Connects to the sink `url` names and prepares it (stream, exchange,
    /// script), within [`CONNECT_TIMEOUT`]. An unreachable broker is
    /// [`SinkError::Connect`] naming it.
    pub async fn connect(url: &SinkUrl) -> Result<Sink, SinkError> {
        let name = url.to_string();
        let connecting = async {
            Ok(match url {
                SinkUrl::Stdout => Sink::Stdout(stdout::JsonLines::stdout()),
                SinkUrl::Nats {
                    host,
                    port,
                    subject,
                } => Sink::Nats(nats::NatsSink::connect(host, *port, subject).await?),
                SinkUrl::Amqp {
                    user,
                    password,
                    host,
                    port,
                    exchange,
                } => Sink::Amqp(
                    amqp::AmqpSink::connect(user, password, host, *port, exchange).await?,
                ),
                SinkUrl::Redis { host, port, db } => {
                    Sink::Redis(cache::RedisCache::connect(host, *port, *db).await?)
                }
            })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::TimedOut {
                sink: name,
                what: "connecting".to_string(),
                after: CONNECT_TIMEOUT,
            }),
        }
    }

    /// JSON lines into `writer` instead of standard output: what the
    /// `stdout` sink does, for tests and for embedding.
    pub fn json_lines(
        writer: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
        name: &str,
    ) -> Sink {
        Sink::Stdout(stdout::JsonLines::new(Box::new(writer), name))
    }

    /// What this sink is, for messages: its URL without a password.
    pub fn name(&self) -> &str {
        match self {
            Sink::Stdout(s) => s.name(),
            Sink::Nats(s) => s.name(),
            Sink::Amqp(s) => s.name(),
            Sink::Redis(s) => s.name(),
        }
    }

    /// Delivers `events` (at most [`DELIVER_EVENTS_MAX`]) and returns `Ok`
    /// only once every one is durably accepted downstream: flushed, acked
    /// by the stream, confirmed by the broker, or applied (or found older
    /// than what is cached) by the cache. Within [`DELIVER_TIMEOUT`]. On an
    /// error any subset may have arrived; delivering them again is safe.
    pub async fn deliver(&mut self, events: &[FeedEvent]) -> Result<(), SinkError> {
        if events.len() > DELIVER_EVENTS_MAX {
            return Err(SinkError::TooMany {
                sink: self.name().to_string(),
                events: events.len(),
            });
        }
        if events.is_empty() {
            return Ok(());
        }
        let messages = || events.iter().map(Message::of_event).collect::<Vec<_>>();
        let name = self.name().to_string();
        let delivering = async {
            match self {
                Sink::Stdout(s) => s.deliver(&messages()).await,
                Sink::Nats(s) => s.deliver(&messages()).await,
                Sink::Amqp(s) => s.deliver(&messages()).await,
                Sink::Redis(s) => s.deliver(events).await,
            }
        };
        match tokio::time::timeout(DELIVER_TIMEOUT, delivering).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::TimedOut {
                sink: name,
                what: format!("delivering {} events", events.len()),
                after: DELIVER_TIMEOUT,
            }),
        }
    }

    /// Delivers an initial scan's chunk (at most [`DELIVER_EVENTS_MAX`]
    /// rows): one message per row, or into the cache one guarded update
    /// per row at its version. `Ok` as for [`Sink::deliver`]; safe to
    /// deliver again.
    pub async fn deliver_scan(&mut self, scan: &FeedScan) -> Result<(), SinkError> {
        if scan.rows.len() > DELIVER_EVENTS_MAX {
            return Err(SinkError::TooMany {
                sink: self.name().to_string(),
                events: scan.rows.len(),
            });
        }
        if scan.rows.is_empty() {
            return Ok(());
        }
        let messages = || Message::of_scan(scan);
        let name = self.name().to_string();
        let delivering = async {
            match self {
                Sink::Stdout(s) => s.deliver(&messages()).await,
                Sink::Nats(s) => s.deliver(&messages()).await,
                Sink::Amqp(s) => s.deliver(&messages()).await,
                Sink::Redis(s) => s.deliver(&cache::scan_as_events(scan)).await,
            }
        };
        match tokio::time::timeout(DELIVER_TIMEOUT, delivering).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::TimedOut {
                sink: name,
                what: format!(
                    "delivering {} scan rows of group {}",
                    scan.rows.len(),
                    scan.group
                ),
                after: DELIVER_TIMEOUT,
            }),
        }
    }
}
