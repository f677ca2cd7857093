//! `Route::Direct`: the client routes its own requests.
//!
//! The client keeps the coordinator's transaction manager in process (the
//! same code, `trellis_txn::txn`, behind the same service,
//! `trellis_txn::service::TxnApi`), with a router whose map comes from the
//! coordinator's `Txn.ClusterMap` instead of the catalog. Reads,
//! scans, `TxnStatus`, one-group commits and read-only commits then go
//! straight to the shards' primaries: one hop where the coordinator made
//! two. A shard that answers WRONG_SHARD, STALE_MAP or NOT_PRIMARY makes the
//! router ask the coordinator for its map again and the call is retried,
//! as in the coordinator. A key locked by a prepared transaction that
//! stays locked is resolved by the coordinator (`Txn.ResolveLock`): only
//! cluster processes may finalize at a shard.
//!
//! Under TLS the shards serve the client's certificate on the methods
//! this route calls, and with auth on they check its user (certificate or
//! token: the router sends the process's token on every shard request)
//! as the coordinator would.
//!
//! A commit that writes in two groups or more goes to the coordinator
//! ([`needs_coordinator`]): a two-phase commit is answered before it is
//! finalized, and the coordinator, which outlives the client, finalizes it
//! (in batches shared by every client). Were the client to do it, a client
//! that exits after its last commit would leave that transaction's locks
//! to the in-doubt sweeper.
//!
//! Validation, deadlines (`grpc-timeout`, set on every request as it is on
//! the wire) and errors (the same `tonic::Status`, with the same
//! `ErrorInfo`) are the service's own, so both routes answer alike.

use std::sync::Arc;

use trellis_proto::v1 as pb;
use trellis_proto::v1::txn_client::TxnClient;
use trellis_txn::metrics::Metrics;
use trellis_txn::router::{Credentials, Link, Router, fetch_map};
use trellis_txn::service::TxnApi;
use trellis_txn::txn::{Settle, TxnManager};
use trellis_types::GroupId;

use crate::error::{Error, Result};

/// The in-process transaction service of a `Route::Direct` client. Cheap
/// to clone (shared).
#[derive(Clone)]
pub(crate) struct Direct {
    api: TxnApi,
    txns: Arc<TxnManager>,
}

impl Direct {
    /// Reads the map from the coordinator behind `coordinator` and starts
    /// the transaction manager (its finalizer task ends when the last
    /// clone of the client is dropped); `credentials` go with every shard
    /// request.
    pub(crate) async fn start(
        coordinator: TxnClient<Link>,
        addr: &str,
        credentials: Credentials,
    ) -> Result<Direct> {
        let map = fetch_map(coordinator.clone(), None).await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot read the shard map from {addr} (Route::Direct needs a coordinator that serves Txn.ClusterMap): {e} ({})",
                trellis_net::tls::hint()
            ))
        })?;
        let router =
            Arc::new(Router::with_source(coordinator.clone(), map).with_credentials(credentials));
        // The client's own counters: nobody scrapes them, the
        // coordinator's count what passes through it.
        let txns = TxnManager::with_settle(
            router,
            Arc::new(Metrics::default()),
            Settle::Through(coordinator),
        );
        Ok(Direct {
            api: TxnApi::new(txns.clone()),
            txns,
        })
    }

    pub(crate) fn api(&self) -> &TxnApi {
        &self.api
    }

    /// Whether `commit` goes to the coordinator under the map held now.
    pub(crate) fn needs_coordinator(&self, commit: &pb::CommitRequest) -> bool {
        let map = self.txns.router().map();
        needs_coordinator(commit, |key| map.group_of(key))
    }
}

/// Whether a commit is a two-phase one (it writes, and its keys span two
/// groups or more), which a routing client leaves to the coordinator. The
/// same rule as `trellis_txn::twopc::plan`: one group is a
/// one-phase commit, no writes a read-only validation.
pub(crate) fn needs_coordinator(
    commit: &pb::CommitRequest,
    group_of: impl Fn(&[u8]) -> GroupId,
) -> bool {
    if commit.writes.is_empty() {
        return false;
    }
    let mut groups = commit
        .reads
        .iter()
        .map(|r| r.key.as_slice())
        .chain(commit.writes.iter().map(|w| w.key.as_slice()))
        .map(group_of);
    let first = groups.next();
    groups.any(|g| Some(g) != first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(reads: &[&str], writes: &[&str]) -> pb::CommitRequest {
        pb::CommitRequest {
            txn_id: vec![1; 16],
            reads: reads
                .iter()
                .map(|k| pb::Read {
                    key: k.as_bytes().to_vec(),
                    version: 1,
                })
                .collect(),
            writes: writes
                .iter()
                .map(|k| pb::Write {
                    key: k.as_bytes().to_vec(),
                    op: Some(pb::write::Op::Delete(pb::Empty {})),
                })
                .collect(),
            durability: 0,
        }
    }

    #[test]
    fn only_writes_over_several_groups_go_to_the_coordinator() {
        // Keys starting with 'a' live in group 1, the rest in group 2.
        let group_of = |k: &[u8]| if k[0] == b'a' { 1 } else { 2 };
        assert!(!needs_coordinator(&commit(&["a1"], &["a2"]), group_of));
        assert!(!needs_coordinator(&commit(&[], &["b1", "b2"]), group_of));
        assert!(
            !needs_coordinator(&commit(&["a1", "b1"], &[]), group_of),
            "read-only over two groups is validated here"
        );
        assert!(!needs_coordinator(&commit(&[], &[]), group_of));
        assert!(needs_coordinator(&commit(&["a1"], &["b1"]), group_of));
        assert!(needs_coordinator(&commit(&[], &["a1", "b1"]), group_of));
    }
}
