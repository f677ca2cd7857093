//! [`SinkError`]: why a sink could not be opened or could not take events.
//! Every variant names the sink (its URL without a password) and what was
//! being done.

use std::time::Duration;

/// The error of a broker client, boxed: each sink's client has its own.
pub type BrokerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A sink URL that cannot be used.
    #[error("refusing sink `{url}`: {reason}; use {}", crate::url::ACCEPTED_FORMS)]
    BadUrl { url: String, reason: String },
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {sink}: {source}")]
    Connect {
        sink: String,
        #[source]
        source: BrokerError,
    },
    /// The broker answered, but an operation failed (declaring, publishing,
    /// awaiting an ack, running the cache script).
    #[error("{sink}: {what}: {source}")]
    Broker {
        sink: String,
        what: String,
        #[source]
        source: BrokerError,
    },
    /// The broker said no to an event or a setting: a nack, an unroutable
    /// message, a message over its size limit, a stream that does not
    /// capture the subject. `what` says which and what to do.
    #[error("{sink}: {what}")]
    Refused { sink: String, what: String },
    /// A deadline passed.
    #[error("{sink}: {what} took longer than {after:?}")]
    TimedOut {
        sink: String,
        what: String,
        after: Duration,
    },
    /// More events in one call than [`crate::DELIVER_EVENTS_MAX`].
    #[error(
        "{sink}: refusing {events} events in one delivery: at most {} (deliver them in batches)",
        crate::DELIVER_EVENTS_MAX
    )]
    TooMany { sink: String, events: usize },
}

impl SinkError {
    /// A [`SinkError::Broker`] maker for `map_err`.
    pub(crate) fn broker<E>(sink: &str, what: impl Into<String>) -> impl FnOnce(E) -> SinkError
    where
        E: Into<BrokerError>,
    {
        let (sink, what) = (sink.to_string(), what.into());
        move |source| SinkError::Broker {
            sink,
            what,
            source: source.into(),
        }
    }

    /// A [`SinkError::Connect`] maker for `map_err`.
    pub(crate) fn connect<E>(sink: &str) -> impl FnOnce(E) -> SinkError
    where
        E: Into<BrokerError>,
    {
        let sink = sink.to_string();
        move |source| SinkError::Connect {
            sink,
            source: source.into(),
        }
    }
}
