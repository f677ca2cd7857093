//! The typed errors of the client.

use trellis_proto::error;
use trellis_proto::v1 as pb;

/// Everything a call of the client can fail with.
///
/// [`Error::is_retryable`] tells which ones [`crate::Client::run_txn`]
/// answers by re-running the whole transaction body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A key this transaction read was changed before it committed.
    /// Retryable: re-run the whole transaction (new reads, new id).
    #[error("transaction aborted: conflict on {}", keys_text(.keys))]
    Conflict { keys: Vec<Vec<u8>>, message: String },
    /// A key is locked by another prepared transaction. Retryable.
    #[error("transaction aborted: {} locked by another transaction", keys_text(.keys))]
    Locked { keys: Vec<Vec<u8>>, message: String },
    /// Another decision came first: a resolver's (a reader that met the
    /// transaction's lock, the sweeper, the reshard driver draining a
    /// moving slot, a TxnStatus) abort of a transaction nobody had decided.
    /// Nothing was committed. Retryable: re-run the whole transaction.
    #[error("transaction aborted by recovery: {message}")]
    ResolvedAbort { keys: Vec<Vec<u8>>, message: String },
    /// A participant could not be reached in time; the transaction did not
    /// commit.
    #[error("transaction aborted: a participant was unavailable: {message}")]
    ParticipantUnavailable { keys: Vec<Vec<u8>>, message: String },
    /// Some keys moved to another group (resharding) after the commit was
    /// planned; nothing was committed. Retryable.
    #[error("transaction aborted: {message}")]
    SlotsMoved { keys: Vec<Vec<u8>>, message: String },
    /// The transaction may or may not have committed; `TxnStatus` with this
    /// id can tell.
    #[error(
        "outcome unknown for transaction {}: it may or may not have committed; ask TxnStatus({})",
        hex::encode(.txn_id), hex::encode(.txn_id)
    )]
    OutcomeUnknown { txn_id: [u8; 16], message: String },
    /// The cluster could not serve in time, or could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The input broke a limit or rule; the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The transaction body gave up (e.g. a duplicate key on INSERT). Never
    /// retried.
    #[error("{0}")]
    Application(String),
    /// A change feed's cursor points into history a group no longer keeps
    /// (its log after the cursor was deleted). No retry helps: start a new
    /// feed with an initial scan ([`Client::watch_with_scan`]).
    ///
    /// [`Client::watch_with_scan`]: crate::Client::watch_with_scan
    #[error("feed history gone in group {group}: {message}")]
    FeedHistoryGone { group: u64, message: String },
    /// Anything else the server answered.
    #[error("server error ({code:?}): {message}")]
    Server { code: tonic::Code, message: String },
}

/// Short form of `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn keys_text(keys: &[Vec<u8>]) -> String {
    if keys.is_empty() {
        return "(keys not reported)".to_string();
    }
    let shown: Vec<String> = keys.iter().take(8).map(|k| quote_key(k)).collect();
    let more = keys.len().saturating_sub(8);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A key as the shell writes it: `'text'` when it is printable UTF-8,
/// `x'hex'` otherwise.
pub fn quote_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => format!("'{}'", s.replace('\'', "''")),
        _ => format!("x'{}'", hex::encode(key)),
    }
}

impl Error {
    /// Re-running the whole transaction may succeed (CONFLICT, LOCKED,
    /// RESOLVED_ABORT or SLOTS_MOVED).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. }
                | Error::Locked { .. }
                | Error::ResolvedAbort { .. }
                | Error::SlotsMoved { .. }
        )
    }

    /// The keys at fault, for aborts that report them.
    pub fn keys(&self) -> &[Vec<u8>] {
        match self {
            Error::Conflict { keys, .. }
            | Error::Locked { keys, .. }
            | Error::ResolvedAbort { keys, .. }
            | Error::ParticipantUnavailable { keys, .. }
            | Error::SlotsMoved { keys, .. } => keys,
            _ => &[],
        }
    }

    /// Maps an abort answered by Commit.
    pub(crate) fn from_aborted(aborted: pb::Aborted) -> Error {
        let pb::Aborted {
            reason,
            keys,
            message,
        } = aborted;
        match pb::AbortReason::try_from(reason) {
            Ok(pb::AbortReason::Conflict) => Error::Conflict { keys, message },
            Ok(pb::AbortReason::Locked) => Error::Locked { keys, message },
            Ok(pb::AbortReason::ResolvedAbort) => Error::ResolvedAbort { keys, message },
            Ok(pb::AbortReason::ParticipantUnavailable) => {
                Error::ParticipantUnavailable { keys, message }
            }
            Ok(pb::AbortReason::SlotsMoved) => Error::SlotsMoved { keys, message },
            _ => Error::Server {
                code: tonic::Code::Aborted,
                message: format!("aborted for reason {reason}: {message}"),
            },
        }
    }

    /// Maps an error status, reading its `ErrorInfo` (gRPC's richer error
    /// model, see `trellis_proto::error`) when present.
    pub(crate) fn from_status(status: &tonic::Status) -> Error {
        let info = error::error_info(status);
        let reason = info
            .as_ref()
            .and_then(|i| pb::ErrorReason::from_str_name(&i.reason));
        let message = status.message().to_string();
        if reason == Some(pb::ErrorReason::OutcomeUnknown) {
            let mut txn_id = [0u8; 16];
            let sent = info
                .as_ref()
                .and_then(|i| i.metadata.get(error::key::TXN_ID))
                .and_then(|h| hex::decode(h).ok());
            if let Some(sent) = sent
                && sent.len() == txn_id.len()
            {
                txn_id.copy_from_slice(&sent);
            }
            return Error::OutcomeUnknown { txn_id, message };
        }
        if reason == Some(pb::ErrorReason::FeedHistoryGone) {
            let group = info
                .as_ref()
                .and_then(|i| i.metadata.get(error::key::GROUP))
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            return Error::FeedHistoryGone { group, message };
        }
        match (reason, status.code()) {
            (Some(pb::ErrorReason::InvalidInput), _) | (_, tonic::Code::InvalidArgument) => {
                Error::InvalidArgument(message)
            }
            (Some(pb::ErrorReason::Unavailable), _)
            | (_, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                Error::Unavailable(if message.is_empty() {
                    format!("{:?}", status.code())
                } else {
                    message
                })
            }
            (_, code) => Error::Server { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_history_gone_names_its_group() {
        let status = error::status(
            tonic::Code::FailedPrecondition,
            "group 2: the log is gone",
            pb::ErrorReason::FeedHistoryGone.as_str_name(),
            [(error::key::GROUP, "2".to_string())],
        );
        let err = Error::from_status(&status);
        assert!(
            matches!(err, Error::FeedHistoryGone { group: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn outcome_unknown_detail_is_decoded() {
        let status = error::status(
            tonic::Code::Unknown,
            "lost",
            pb::ErrorReason::OutcomeUnknown.as_str_name(),
            [(error::key::TXN_ID, "ab".repeat(16))],
        );
        let err = Error::from_status(&status);
        assert!(matches!(err, Error::OutcomeUnknown { txn_id, .. } if txn_id == [0xab; 16]));
        assert!(err.to_string().contains(&"ab".repeat(16)), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn aborts_map_to_typed_errors() {
        let err = Error::from_aborted(pb::Aborted {
            reason: pb::AbortReason::Conflict as i32,
            keys: vec![b"a".to_vec()],
            message: String::new(),
        });
        assert!(err.is_retryable());
        assert_eq!(err.keys(), &[b"a".to_vec()]);
        assert!(err.to_string().contains("'a'"), "{err}");
        let err = Error::from_aborted(pb::Aborted {
            reason: pb::AbortReason::ResolvedAbort as i32,
            keys: vec![],
            message: "x".into(),
        });
        assert!(
            err.is_retryable(),
            "a definite abort decided by a resolver: nothing committed"
        );
        // Keys that moved under the commit: nothing committed, run again.
        let err = Error::from_aborted(pb::Aborted {
            reason: pb::AbortReason::SlotsMoved as i32,
            keys: vec![],
            message: "group 2 no longer owns some of the keys".into(),
        });
        assert!(matches!(err, Error::SlotsMoved { .. }), "{err:?}");
        assert!(err.is_retryable());
        let err = Error::from_aborted(pb::Aborted {
            reason: pb::AbortReason::ParticipantUnavailable as i32,
            keys: vec![],
            message: "group 2 could not prepare".into(),
        });
        assert!(!err.is_retryable(), "a group down is not retried blindly");
    }

    #[test]
    fn invalid_and_unavailable_statuses() {
        let err = Error::from_status(&tonic::Status::invalid_argument("key too long"));
        assert!(matches!(err, Error::InvalidArgument(_)));
        let err = Error::from_status(&tonic::Status::unavailable("down"));
        assert!(matches!(err, Error::Unavailable(_)));
    }

    #[test]
    fn keys_are_quoted_for_humans() {
        assert_eq!(quote_key(b"it's"), "'it''s'");
        assert_eq!(quote_key(&[0, 1]), "x'0001'");
    }
}
