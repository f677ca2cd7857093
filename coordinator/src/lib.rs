//! The Trellis coordinator: stateless; routes keys to shard groups and
//! commits transactions across them. Any number can run over one catalog.
//!
//! # Layout
//! The transaction core is the crate `trellis_txn` (no catalog, no sqlx:
//! the Rust client runs it too); its modules are re-exported here under
//! their old paths: [`map`], [`twopc`] (the commit's decisions, pure),
//! [`txn`] (the IO of reads, commits, status, in-doubt resolution),
//! [`metrics`], and the router and the `Txn` service inside [`router`] and
//! [`service`].
//!
//! - [`auth`]: passwords (argon2id) and the lock-out rules of user
//!   management, pure but for hashing.
//! - [`auth_service`]: the `Auth` service (users, grants, login) and the
//!   loop keeping the gate in step with the catalog.
//! - [`catalog`]: cluster metadata in SQL (sqlx: SQLite or PostgreSQL).
//! - [`router`]: `trellis_txn`'s router over the catalog ([`router::CatalogRouter`]).
//! - [`reshard`]: resharding decisions, pure: the planner (rebalance,
//!   move, drain, remove) and the job machine (import, copy, freeze,
//!   drain, flip, release; pause and cancel).
//! - [`reshard_job`]: a job as the catalog stores it (its encoding) and
//!   the pure rules around it: who runs it (claim), when its driver must
//!   stop (self-fencing), operators' requests, progress figures.
//! - [`reshard_driver`]: the IO that runs jobs: one task per
//!   coordinator doing what `Job::next` says against shards and catalog.
//! - [`service`]: the gRPC edge (`Txn`, `Admin`, `Membership`).
//! - [`changefeed`]: the public `Changefeed` service: `Watch` over
//!   `trellis_txn::feed`, cursors kept in the catalog.
//! - [`failpoint`].
//!
//! The coordinator never holds state that must survive it: prepared locks
//! and decisions live on the shards.

pub mod auth;
pub mod auth_service;
pub mod catalog;
pub mod changefeed;
pub mod failpoint;
pub mod reshard;
pub mod reshard_driver;
pub mod reshard_job;
pub mod router;
pub mod service;

pub use trellis_txn::{
    FINALIZE_DEADLINE, SWEEP_BATCH_MAX, authz, gate, map, metrics, token, twopc, txn,
};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use router::CatalogRouter;

/// Pause between sweeps for in-doubt transactions.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of one sweep.
pub const SWEEP_DEADLINE: Duration = Duration::from_secs(30);
/// How often the coordinator re-reads the shard map and heartbeats.
pub const MAP_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Age of a coordinator's last heartbeat past which the status shows it as
/// dead: three missed heartbeats, so one slow catalog write does not.
pub const COORDINATOR_SILENCE_MAX: Duration = Duration::from_secs(6);
const _: () = assert!(
    COORDINATOR_SILENCE_MAX.as_millis() >= 3 * MAP_REFRESH_INTERVAL.as_millis(),
    "a live coordinator must never look dead between two heartbeats"
);
const _: () = assert!(
    catalog::COORDINATOR_ROW_EXPIRY.as_millis() > COORDINATOR_SILENCE_MAX.as_millis(),
    "a row is shown dead before it is deleted"
);

/// Runs forever: resolves transactions prepared longer than the in-doubt
/// age, on every group.
pub async fn sweeper(txns: Arc<txn::TxnManager>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let deadline = tokio::time::Instant::now() + SWEEP_DEADLINE;
        let resolved = txns.sweep(deadline).await;
        if resolved > 0 {
            tracing::info!(resolved, "sweeper resolved in-doubt transactions");
        }
    }
}

/// Runs forever: re-reads the map (new members) and heartbeats this
/// coordinator (`id`, serving at `addr`, metrics at `metrics_addr`) in the
/// catalog.
pub async fn refresher(txns: Arc<txn::TxnManager>, id: String, addr: String, metrics_addr: String) {
    loop {
        tokio::time::sleep(MAP_REFRESH_INTERVAL).await;
        let router = txns.router();
        let metrics = txns.metrics();
        // A test can freeze this coordinator's view (see `failpoint`).
        if !trellis_types::failpoint::armed("stale_map") {
            match router.catalog().load().await {
                Ok(map) => {
                    metrics.catalog_read();
                    router.install(map);
                }
                Err(err) => {
                    metrics.catalog_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, "cannot re-read the shard map");
                }
            }
        }
        if let Err(err) = router
            .catalog()
            .heartbeat_coordinator(&id, &addr, &metrics_addr)
            .await
        {
            metrics.catalog_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%err, "cannot heartbeat in the catalog");
        }
    }
}
