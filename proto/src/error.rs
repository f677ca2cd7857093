//! The error model on the wire: one way to write an error status, one way
//! to read it, for the public and the shard-internal services alike.
//!
//! Every error status of the public services (`trellis.v1`) and of the
//! shard's data path (`trellis.shard.v1.Shard` reads, commits, 2PC) carries
//! gRPC's richer error model: its `grpc-status-details-bin` trailer holds a
//! `google.rpc.Status` (same code and message as the status) whose `details`
//! hold one `google.rpc.ErrorInfo`:
//!
//! - `domain`: [`DOMAIN`];
//! - `reason`: the name of a value of `trellis.v1.ErrorReason` (public
//!   services) or `trellis.shard.v1.ErrorReason` (the shard service), e.g.
//!   `OUTCOME_UNKNOWN`; read it back with `ErrorReason::from_str_name`;
//! - `metadata`: the structured fields of that reason, under the keys in
//!   [`key`].
//!
//! Any gRPC library reads this without Trellis's `.proto` files (Python:
//! `grpc_status.rpc_status.from_call`; Go: `status.FromError(..).Details()`).
//! This module only encodes and decodes; which reason an error gets is
//! decided where each crate builds its statuses (`status_of` in the
//! coordinator's and the shard's service edges). The control-plane calls
//! between processes (`Membership`, the `Replicate` stream, `TransferPrimary`)
//! still answer plain statuses, code and message: nothing branches on a
//! reason there.

use std::collections::HashMap;

pub use tonic_types::ErrorInfo;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `ErrorInfo.domain` of every Trellis error.
pub const DOMAIN: &str = "trellis.dev";

/// `ErrorInfo.metadata` keys.
pub mod key {
    /// The transaction's 16-byte id as 32 lowercase hex digits
    /// (`OUTCOME_UNKNOWN`).
    pub const TXN_ID: &str = "txn_id";
    /// The slot-map epoch the shard serves under (`WRONG_SHARD`,
    /// `STALE_MAP`), decimal.
    pub const MAP_EPOCH: &str = "map_epoch";
    /// The primary epoch the replica is at (`NOT_PRIMARY`), decimal.
    pub const EPOCH: &str = "epoch";
    /// The key the shard does not own, as lowercase hex (`WRONG_SHARD`).
    pub const KEY: &str = "key";
    /// The group the refusing shard serves (`WRONG_SHARD`), or the group
    /// an Admin call was about (`GROUP_EXISTS`, `UNKNOWN_GROUP`,
    /// `GROUP_OWNS_SLOTS`), decimal.
    pub const GROUP: &str = "group";
    /// The reshard job an Admin call was about, or the one holding the
    /// slots (`SLOTS_BUSY`, `UNKNOWN_JOB`), decimal.
    pub const JOB: &str = "job";
    /// The refusing cluster's id, 16 hex digits (`WRONG_CLUSTER`).
    pub const CLUSTER: &str = "cluster";
}

/// An error status: `code` and `message` for every gRPC client, and an
/// `ErrorInfo` with `reason` and `metadata` for clients that branch on it.
pub fn status(
    code: tonic::Code,
    message: impl Into<String>,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> tonic::Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    tonic::Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

/// The `ErrorInfo` of a Trellis error status; `None` when the status
/// carries none (e.g. it was made by the transport, not by a server) or one
/// of another domain.
pub fn error_info(status: &tonic::Status) -> Option<ErrorInfo> {
    status
        .get_details_error_info()
        .filter(|info| info.domain == DOMAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_info_round_trips() {
        let status = status(
            tonic::Code::Unknown,
            "lost",
            "OUTCOME_UNKNOWN",
            [(key::TXN_ID, "ab".repeat(16))],
        );
        let info = error_info(&status).expect("an ErrorInfo");
        assert_eq!(info.reason, "OUTCOME_UNKNOWN");
        assert_eq!(info.domain, DOMAIN);
        assert_eq!(info.metadata[key::TXN_ID], "ab".repeat(16));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert_eq!(status.message(), "lost");
    }

    #[test]
    fn statuses_without_details_have_no_info() {
        assert!(error_info(&tonic::Status::unavailable("connection refused")).is_none());
        let foreign = tonic::Status::with_error_details(
            tonic::Code::Internal,
            "x",
            ErrorDetails::with_error_info("OTHER", "example.com", HashMap::new()),
        );
        assert!(error_info(&foreign).is_none());
    }
}
