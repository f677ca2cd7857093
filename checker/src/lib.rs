//! History checkers for Trellis.
//!
//! A test harness or load tester records what its clients asked for and
//! were told — a *history* — and a checker decides whether the isolation
//! Trellis claims, strict serializability, can explain it. Three workloads:
//!
//! - **list-append** (after Jepsen's Elle): keys hold lists of integers;
//!   transactions append unique values and read whole lists. Reads reveal
//!   the order appends took effect in, from which the checker builds a
//!   dependency graph and looks for cycles (G0, G1c, G-single,
//!   G-nonadjacent, G2-item, and their `-process` and `-realtime` variants)
//!   and for anomalies visible without one (aborted and intermediate reads,
//!   lost updates, incompatible orders, …). Its bounded-staleness mode
//!   checks STALE(bound) reads, as backup replicas serve them, apart from
//!   the graph: each must return a state the key held at some moment in
//!   `[invoke − bound, complete]`, and hold its session's own writes
//!   (stale-read, future-read, read-your-writes).
//! - **bank**: transfers between accounts and full reads; every committed
//!   read must sum to the total.
//! - **register**: per-key linearizability of reads, writes and
//!   compare-and-set.
//!
//! Every check returns a [`report::Report`]: a [`report::Verdict`] (valid,
//! invalid, or unknown when the history cannot decide), the anomalies found,
//! each explained in words, and notes.
//!
//! # Layout
//!
//! - [`history`]: operations (`invoke`/`ok`/`fail`/`info`), list-append
//!   micro-ops (appends, STRONG and stale reads), and the pairing of
//!   invocations with completions into transactions.
//! - [`mod@format`]: the line-oriented text form of histories, and saving and
//!   loading files.
//! - [`report`]: verdicts, anomaly classes, cycle steps, reports.
//! - [`list_append`]: the list-append checks, the dependency graph's
//!   edges, and the stale-read checks.
//! - `graph` (private): the dependency graph, Tarjan's strongly connected
//!   components, and the per-class shortest-cycle search.
//! - [`bank`]: bank micro-ops and the total/negative-balance checks.
//! - [`feed`]: a change-feed consumer's record judged against the history
//!   (order, completeness, no aborted writes).
//! - [`register`]: register micro-ops and the bounded linearizability search.
//!
//! # What this crate never does
//!
//! - No IO, except [`format::save`] and [`format::load`]; no clock, no
//!   threads, no randomness: the same history always gives the same report.
//! - It never treats an `info` operation (a timeout) as committed or as
//!   failed: it may have taken effect, at any time after its invocation, or
//!   never.
//! - It never claims a history correct, only that it found no anomaly:
//!   *Valid* means "no evidence against".
//! - It never depends on the rest of the workspace, so harnesses of any
//!   crate can use it.
//!
//! # Terms
//!
//! "Append" here is the list-append micro-op (Elle's word), not a log
//! append as in the glossary; the order of a key's list elements is its
//! *list order* (Elle's "version order": in this project a *version* is a
//! key's LSN).

pub mod bank;
pub mod feed;
pub mod format;
mod graph;
pub mod history;
pub mod list_append;
pub mod register;
pub mod report;

pub use history::{HistoryError, Mop, Op, OpKind, Outcome, Txn};
pub use report::{
    Anomaly, AnomalyClass, CycleKind, CycleStep, CycleVia, Relation, Report, Verdict,
};
