//! Failpoints: named places where a test can make the coordinator die as if
//! SIGKILLed, to check that no crash point loses or half-applies anything.
//!
//! `TRELLIS_FAILPOINTS=after_prepare` (comma-separated names) makes the
//! process abort the first time it reaches that point. Names in use:
//! `during_prepare`, `after_prepare`, `after_decide`, `during_finalize` (all in the
//! transaction manager, `trellis_txn`). Without the variable a failpoint is
//! one relaxed load (`trellis_types::failpoint`).
//!
//! One name does not abort: `stale_map` makes the periodic refresher skip
//! re-reading the shard map (it still heartbeats), so the coordinator
//! learns a newer map only when a shard refuses a request under the old
//! one: how a test drives the re-routing of moved keys. Nor does
//! `reshard_copy_hold`: the reshard driver waits [`RESHARD_COPY_HOLD`]
//! before each batch's base copy.

/// With `reshard_copy_hold` armed, how long the reshard driver waits
/// before each batch's base copy (the job shows the `copy` phase all that
/// time), so that a fault test can strike a batch while it copies rather
/// than hope to catch a copy of a few milliseconds. Nothing waits unless
/// the name is armed.
pub const RESHARD_COPY_HOLD: std::time::Duration = std::time::Duration::from_millis(400);

/// Aborts the process here if `name` is armed (the transaction manager's
/// points are in `trellis_txn::failpoint`, this same function).
pub use trellis_txn::failpoint::failpoint;
