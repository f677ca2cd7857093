//! The Trellis transaction core: what a coordinator runs and what a client
//! that routes its own requests (the Rust client's `Route::Direct`) runs in
//! process. No catalog and no sqlx: where the shard map comes from is a
//! [`router::MapSource`] (the coordinator's catalog, or a coordinator's
//! `Txn.ClusterMap`).
//!
//! # Layout
//! - [`map`]: the shard map (the ring that fills it is
//!   `trellis_types::placement`).
//! - [`router`]: the current map and channels to shards; classifies faults.
//! - [`twopc`]: the commit's decisions, pure: plan (1PC, read-only or 2PC
//!   and the anchor), vote tally, the answer, status, resolution, forget.
//! - [`txn`]: the IO of reads, 1PC/2PC commits, status, in-doubt
//!   resolution; retries with backoff.
//! - [`stale`]: STALE reads on any replica: read options (bound, session
//!   floors), which replica answered, which replica a read goes to.
//! - [`service`]: the public `trellis.v1.Txn` service over a
//!   [`txn::TxnManager`].
//! - [`feed`]: the change feed's fan-in: every group's `Shard.Feed` into
//!   one `trellis.v1.Changefeed.Watch` stream, followed across failover
//!   and map changes.
//! - [`authz`]: whether a user's grants allow a request, pure.
//! - [`token`]: session tokens (HMAC-SHA256), pure.
//! - [`gate`]: who is asking and whether they may, per request.
//! - [`metrics`], [`failpoint`].

pub mod authz;
pub mod failpoint;
pub mod feed;
pub mod gate;
pub mod map;
pub mod metrics;
pub mod router;
pub mod service;
pub mod stale;
pub mod token;
pub mod twopc;
pub mod txn;

use std::time::Duration;

/// Deadline for finishing one transaction's background finalization.
pub const FINALIZE_DEADLINE: Duration = Duration::from_secs(10);
/// Most in-doubt transactions one sweep asks each group for.
pub const SWEEP_BATCH_MAX: u32 = 1000;
