//! One Trellis shard replica: it stores a group's data durably and takes
//! part in transactions as the coordinator asks.
//!
//! # Layout
//! - [`wal`]: write-ahead log segments, framing, group commit, torn tails.
//! - [`fsio`]: the file operations the crate uses, on the real filesystem
//!   or (feature `sim`, inside a turmoil simulation) the simulated one.
//! - [`record`]: what the log and snapshots hold (prost messages).
//! - [`state`]: the state machine: index, lock table, transaction records,
//!   outcome memory, and the rules that check each operation (`check_*`,
//!   among them the anchor's decide and resolve). No IO, no clock.
//! - [`snapshot`]: writing and reading snapshots.
//! - [`log_prefix`]: the log records below a snapshot that registered
//!   feeds still pin, shipped with it to a backup: which ones (pure), what
//!   a backup accepts (pure), and the backup's staging files.
//! - [`engine`]: one replica's [`Shard`], each change durable before it
//!   answers, by concern: recovery (opening the data directory), the
//!   participant operations, retention (snapshots, log pins),
//!   replication (role changes, what a backup takes from its primary, as
//!   domain records: the wire stays in [`replica`] and [`server`]) and
//!   resharding (slot steps, export, ingest).
//! - [`repl`]: replication state of a replica: role, epoch, the feed of
//!   recent records, backups' acknowledgements, watermarks, the lease.
//! - [`role`]: the group's configuration (domain type) and the replication
//!   decisions as pure functions: [`role::next_role`],
//!   [`role::upkeep_changes`] (backups dropped, learners admitted),
//!   [`role::choose_primary`] (failover). No IO, no clock.
//! - [`replica`]: the moving parts of replication: the `Replicate` stream
//!   on both sides, following the catalog's configuration, upkeep, hand-over
//!   and failover; the RPCs that feed [`role`]'s decisions and carry them
//!   out.
//! - [`ownership`]: which slots the group serves and the states of a
//!   moving slot (importing, frozen), and the slot steps (import, abandon,
//!   freeze, thaw, release) checked strictly on the primary and applied
//!   leniently from the log, as a pure state machine. It lives in the
//!   state core: commits and prepares check it under the state lock.
//! - [`version_base`]: how versions follow LSNs and stay above every
//!   imported version (pure; the state core keeps one).
//! - [`freshness`]: reads on backups: the safe points a backup gets from
//!   its primary, and whether a bounded-staleness read may be served here
//!   (pure; the replica keeps one behind a lock).
//! - [`feed`]: the change feed's assembly: log records in, committed
//!   transactions in position order and the resolved position out (pure;
//!   the engine reads the log, the server streams).
//! - [`pacer`]: the rate limit on what catching-up backups are sent.
//! - [`server`]: the gRPC edge (wire ↔ domain types, input limits, status).
//! - [`gate`]: which `Shard` methods clients may call, and with auth on,
//!   the cluster's settings (from the coordinator) they are checked with.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`membership`]: registering with the coordinator.
//! - [`failpoint`]: named places where a test makes the disk fail.
//! - [`fail_stop`]: the note a replica leaves when its log failed and it
//!   stops, read back (and exported) when it starts again.
//! - `sim_tests` (tests with feature `sim`): the shard under turmoil.
//!
//! This crate never talks to the catalog's database, and never decides a
//! transaction's outcome on its own except by presumed abort at the anchor.

pub mod engine;
pub mod fail_stop;
pub mod failpoint;
pub mod feed;
pub mod freshness;
pub mod fsio;
pub mod gate;
pub mod log_prefix;
pub mod membership;
pub mod metrics;
pub mod ownership;
pub mod pacer;
pub mod record;
pub mod repl;
pub mod replica;
pub mod role;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod version_base;
pub mod wal;

#[cfg(all(test, feature = "sim"))]
mod sim_tests;

pub use engine::{Shard, ShardConfig, ShardError};
