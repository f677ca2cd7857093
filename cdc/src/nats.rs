//! The NATS JetStream sink: each event's JSON published to one subject
//! with the `Nats-Msg-Id` header `trellis-<group>-<position>`, pipelined:
//! `NatsSink::send` publishes and hands back the acks to await, so the
//! caller can publish the next events while earlier acks are on their way
//! (at most [`IN_FLIGHT_EVENTS_MAX`] unacknowledged), and every ack is
//! awaited.
//!
//! On connect it finds the stream that captures the subject, or creates
//! one ([`stream_name_for`], file storage, [`DUPLICATE_WINDOW`]) and says
//! so in a log line: a subject no stream captures would make every publish
//! fail with "no responders", and a sink is meant to work when pointed at
//! a plain JetStream server. A stream that exists is used as it is; if its
//! duplicate window is shorter than [`DUPLICATE_WINDOW`], a warning says
//! replays after a restart may then reach consumers twice.

use std::time::Duration;

use crate::json::Message;
use crate::{Accepted, CONNECT_TIMEOUT, DELIVER_TIMEOUT, IN_FLIGHT_EVENTS_MAX, SinkError};
use async_nats::jetstream::{self, context::GetStreamByNameErrorKind, message::PublishMessage};

/// The duplicate window of a stream this sink creates: a replayed event
/// (after `trellis cdc` restarts from its last checkpoint) published
/// within this long of the first copy is dropped by the stream. The
/// caller checkpoints well within it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// The prefix of the name of a stream this sink creates.
pub const STREAM_PREFIX: &str = "TRELLIS_";
/// Bytes kept free for headers below the server's `max_payload` when
/// checking an event's size (the message id header is about 40).
pub const HEADER_BYTES_MAX: usize = 256;
/// Deadline of each JetStream API request (finding, creating a stream).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of the stream this sink creates for `subject`: `TRELLIS_` and
/// the subject with every character outside `[A-Za-z0-9_-]` made `_`
/// (`orders.created` → `TRELLIS_orders_created`).
pub fn stream_name_for(subject: &str) -> String {
    let tail: String = subject
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("{STREAM_PREFIX}{tail}")
}

/// An open JetStream sink.
pub struct NatsSink {
    jetstream: jetstream::Context,
    subject: String,
    /// The stream that captures `subject`.
    stream: String,
    /// The server's largest message, in bytes.
    max_payload: usize,
    name: String,
}

impl NatsSink {
    pub(crate) async fn connect(
        host: &str,
        port: u16,
        subject: &str,
    ) -> Result<NatsSink, SinkError> {
        let name = format!("NATS JetStream nats://{host}:{port}/{subject}");
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connect(format!("{host}:{port}"))
            .await
            .map_err(SinkError::connect(&name))?;
        let max_payload = client.server_info().max_payload;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .ack_timeout(DELIVER_TIMEOUT)
            // The caller keeps at most this many unacknowledged; a
            // publish past it fails at once rather than wait for a permit
            // (which its own caller's unawaited acks would hold).
            .max_ack_inflight(IN_FLIGHT_EVENTS_MAX)
            .backpressure_on_inflight(false)
            .build(client);
        let stream = ensure_stream(&jetstream, subject, &name).await?;
        Ok(NatsSink {
            jetstream,
            subject: subject.to_string(),
            stream,
            max_payload,
            name,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The stream that captures the subject (found or created).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Publishes every message, in order, without waiting for an ack, and
    /// returns what awaits their acks (each within [`DELIVER_TIMEOUT`] of
    /// its publish): publishes of later calls may go out while these acks
    /// are on their way. Every publish of one call is awaited in order; a
    /// failed publish or ack fails the whole call.
    pub(crate) async fn send(&mut self, messages: Vec<Message>) -> Result<Accepted, SinkError> {
        let limit = self.max_payload.saturating_sub(HEADER_BYTES_MAX);
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            if m.payload.len() > limit {
                return Err(SinkError::Refused {
                    sink: self.name.clone(),
                    what: format!(
                        "{} is {} bytes of JSON; this server takes messages of at most {} bytes \
                         (its max_payload, less {HEADER_BYTES_MAX} for headers): raise max_payload \
                         in the NATS server's configuration",
                        m.what,
                        m.payload.len(),
                        self.max_payload
                    ),
                });
            }
            let message = PublishMessage::build()
                .payload(m.payload.into())
                .message_id(m.id);
            let ack = self
                .jetstream
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(SinkError::broker(
                    &self.name,
                    format!("publishing {}", m.what),
                ))?;
            acks.push((m.what, ack));
        }
        let (name, stream) = (self.name.clone(), self.stream.clone());
        Ok(Box::pin(async move {
            for (what, ack) in acks {
                ack.await.map_err(SinkError::broker(
                    &name,
                    format!("awaiting stream {stream}'s ack of {what}"),
                ))?;
            }
            Ok(())
        }))
    }
}

/// The name of the stream that captures `subject`, created if none does.
async fn ensure_stream(
    jetstream: &jetstream::Context,
    subject: &str,
    name: &str,
) -> Result<String, SinkError> {
    match jetstream.stream_by_subject(subject).await {
        Ok(stream) => {
            let found = jetstream
                .get_stream(&stream)
                .await
                .map_err(SinkError::broker(
                    name,
                    format!("reading stream {stream}, which captures subject {subject}"),
                ))?;
            let window = found.cached_info().config.duplicate_window;
            if window < DUPLICATE_WINDOW {
                tracing::warn!(
                    stream,
                    subject,
                    duplicate_window_s = window.as_secs(),
                    "the JetStream stream of the change feed deduplicates over less than {DUPLICATE_WINDOW:?}: \
                     events replayed after a restart of `trellis cdc` may reach consumers twice"
                );
            }
            Ok(stream)
        }
        Err(err) if matches!(err.kind(), GetStreamByNameErrorKind::NotFound) => {
            let stream = stream_name_for(subject);
            let config = jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.to_string()],
                duplicate_window: DUPLICATE_WINDOW,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            jetstream
                .get_or_create_stream(config)
                .await
                .map_err(SinkError::broker(
                    name,
                    format!("creating stream {stream} for subject {subject}"),
                ))?;
            // A stream of that name may have existed for another subject
            // (`a.b` and `a_b` share a name).
            match jetstream.stream_by_subject(subject).await {
                Ok(captures) if captures == stream => {}
                _ => {
                    return Err(SinkError::Refused {
                        sink: name.to_string(),
                        what: format!(
                            "stream {stream} exists but does not capture subject {subject}; \
                             create a stream for it, e.g. `nats stream add --subjects {subject} \
                             --dupe-window 2m`"
                        ),
                    });
                }
            }
            tracing::info!(
                stream,
                subject,
                duplicate_window_s = DUPLICATE_WINDOW.as_secs(),
                "no JetStream stream captured the change feed's subject: created one"
            );
            Ok(stream)
        }
        Err(err) => Err(SinkError::broker(
            name,
            format!("finding the stream that captures subject {subject} (is JetStream enabled?)"),
        )(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_keep_only_safe_characters() {
        assert_eq!(stream_name_for("orders"), "TRELLIS_orders");
        assert_eq!(stream_name_for("orders.created"), "TRELLIS_orders_created");
        assert_eq!(stream_name_for("a/b-c_d"), "TRELLIS_a_b-c_d");
        assert_eq!(stream_name_for("caf\u{e9}"), "TRELLIS_caf_");
    }
}
