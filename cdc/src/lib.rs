//! The sinks of `trellis cdc`: where change-feed events
//! (`trellis.v1.FeedEvent`, one committed transaction's writes in one
//! group) go. A sink is named by a URL ([`SinkUrl`]), opened with
//! [`Sink::connect`], and given events with [`Sink::deliver`], which
//! returns `Ok` only once every event it was given is durably accepted
//! downstream: that is what lets the caller then checkpoint its cursor.
//! [`Sink::send`] does the same in two steps, so that a caller can send
//! more while earlier events await their acks ([`Accepted`], at most
//! [`IN_FLIGHT_EVENTS_MAX`] events in flight): NATS publishes are
//! pipelined so.
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
//!   within its duplicate window; every publish ack is awaited (pipelined:
//!   [`Sink::send`]). If no
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

use std::future::Future;
use std::pin::Pin;
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
/// Most events sent to a sink and not yet known accepted, over every
/// [`Sink::send`] whose [`Accepted`] is still pending: what a broker holds
/// unacknowledged for one `trellis cdc`, and what its caller keeps to
/// send again after a failure. The NATS sink allows its client exactly
/// this many unacknowledged publishes.
pub const IN_FLIGHT_EVENTS_MAX: usize = 4096;
const _: () = assert!(DELIVER_EVENTS_MAX <= IN_FLIGHT_EVENTS_MAX);

/// What [`Sink::send`] leaves to await: `Ok` once every event it sent is
/// durably accepted downstream (as [`Sink::deliver`] says). Awaiting it is
/// cancel-safe (poll it again later); dropping it forgets the events' fate
/// (send them again to know).
pub type Accepted = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

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
        self.send(events).await?.await
    }

    /// Sends `events` (at most [`DELIVER_EVENTS_MAX`]) and returns what
    /// says when they are accepted, as [`Sink::deliver`] does, without
    /// waiting for it where the sink can: NATS returns once they are
    /// published, its acks still on their way, so the caller may send
    /// more meanwhile (at most [`IN_FLIGHT_EVENTS_MAX`] events unaccepted
    /// in all, the caller's to keep); every other sink returns once they
    /// are accepted. The acceptances of successive sends come in order:
    /// await them oldest first. On an error, of the send or of its
    /// [`Accepted`], any subset of these and of every later send may have
    /// arrived: send them again (it is safe), after reconnecting.
    pub async fn send(&mut self, events: &[FeedEvent]) -> Result<Accepted, SinkError> {
        if events.len() > DELIVER_EVENTS_MAX {
            return Err(SinkError::TooMany {
                sink: self.name().to_string(),
                events: events.len(),
            });
        }
        let accepted = || -> Accepted { Box::pin(std::future::ready(Ok(()))) };
        if events.is_empty() {
            return Ok(accepted());
        }
        let messages = || events.iter().map(Message::of_event).collect::<Vec<_>>();
        let name = self.name().to_string();
        let timed_out = || SinkError::TimedOut {
            sink: name.clone(),
            what: format!("delivering {} events", events.len()),
            after: DELIVER_TIMEOUT,
        };
        let sending = async {
            match self {
                Sink::Stdout(s) => s.deliver(&messages()).await.map(|()| accepted()),
                Sink::Nats(s) => s.send(messages()).await,
                Sink::Amqp(s) => s.deliver(&messages()).await.map(|()| accepted()),
                Sink::Redis(s) => s.deliver(events).await.map(|()| accepted()),
            }
        };
        // One deadline from the first write to the last acknowledgement.
        let deadline = tokio::time::Instant::now() + DELIVER_TIMEOUT;
        let pending = match tokio::time::timeout_at(deadline, sending).await {
            Ok(result) => result?,
            Err(_) => return Err(timed_out()),
        };
        let timed_out = timed_out();
        Ok(Box::pin(async move {
            match tokio::time::timeout_at(deadline, pending).await {
                Ok(result) => result,
                Err(_) => Err(timed_out),
            }
        }))
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
                Sink::Nats(s) => s.send(messages()).await?.await,
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
