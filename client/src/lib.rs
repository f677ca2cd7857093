//! The Rust client library of Trellis, and the engine of the `trellis sql`
//! shell.
//!
//! # The client
//!
//! [`Client::connect`] opens one connection to a coordinator; every call
//! carries a deadline ([`Options`]). By default ([`Route::Direct`]) the
//! client also caches the shard map and sends reads and one-group commits
//! straight to the shards' primaries; [`Route::Coordinator`] sends every
//! call through the coordinator. [`Client::get`], [`Client::scan`],
//! [`Client::commit`] and [`Client::txn_status`] are the plain RPCs, typed.
//! [`Client::begin`] starts a [`Transaction`]: reads record the version they
//! saw, writes are buffered (a read of a key written earlier in the same
//! transaction returns the buffered value), and [`Transaction::commit`] sends
//! them in one Commit. [`Client::run_txn`] runs a transaction body and
//! commits it; on a retryable abort (CONFLICT, LOCKED, RESOLVED_ABORT, SLOTS_MOVED) it runs the *whole
//! body* again in a fresh transaction, at most [`TXN_ATTEMPTS_MAX`] times
//! with backoff, so old writes are never re-applied blindly.
//!
//! With auth on, [`auth::configure`] makes every client of the process log
//! in as one user (a password login; the token travels on every request
//! and is renewed before it expires).
//!
//! Errors are [`Error`]: `Conflict { keys }`, `Locked { keys }`,
//! `OutcomeUnknown { txn_id }` (ask [`Client::txn_status`]), `Unavailable`,
//! `InvalidArgument`, and the other abort reasons.
//!
//! # The shell: `trellis sql`
//!
//! A psql-like shell over one table, `kv(k, v)`, built on this library
//! ([`sql`] parses and runs statements; the binary adds the terminal).
//!
//! ```text
//! SELECT v FROM kv WHERE k = 'a';            -- also: k IN ('a','b')
//! SELECT k, v, version FROM kv WHERE k LIKE 'user:%' LIMIT 10;   -- prefix scan
//! INSERT INTO kv VALUES ('a','1'), ('b','2'); -- fails if a key exists
//! UPSERT INTO kv VALUES ('a','1');
//! UPDATE kv SET v = 'x' WHERE k = 'a';
//! UPDATE kv SET v = v + 10 WHERE k = 'acct:1';  -- integer arithmetic
//! DELETE FROM kv WHERE k = 'a';
//! BEGIN; ...; COMMIT;   (or ROLLBACK)  -- outside BEGIN each statement is its own transaction
//! SET durability = sync | semi_sync | async;
//! SET consistency = strong | stale '500ms';
//! GET a;  PUT a 'x';  DEL a;            -- short forms
//! ```
//!
//! Strings are single-quoted (`''` is a quote), `x'6869'` is bytes.
//! Statements end with `;` and may span lines. Outside `BEGIN`, a statement
//! that hits a retryable abort is retried automatically; inside, the abort
//! is reported at `COMMIT` with the conflicting keys and a `HINT` to run the
//! transaction again.
//!
//! Meta-commands: `\?` help, `\q` quit, `\timing`, `\x` expanded rows,
//! `\format table|csv|json|tsv`, `\status` (the `trellis status` table),
//! `\i FILE`. The prompt is `trellis=>` idle, `trellis=*>` in a transaction,
//! `trellis=!>` in a failed one (ROLLBACK to leave it), `trellis->` while a
//! statement continues.
//!
//! Non-interactive: `trellis sql -c "stmt; stmt"` (repeatable), `-f FILE`,
//! or statements on standard input. Output is an aligned table on a
//! terminal, TSV otherwise (`--format` overrides). The first error stops the
//! run: exit code 1 for a failed statement, 2 when the cluster cannot be
//! reached. History is kept in `~/.trellis_sql_history`
//! (`TRELLIS_SQL_HISTORY` overrides).
//!
//! # Layout
//! - `client` (private; its items are re-exported): [`Client`], its
//!   [`Options`] and deadlines, the plain RPCs and the Commit resend.
//! - `txn` (private, re-exported): [`Transaction`] and the
//!   [`Client::run_txn`] retry loop with its [`backoff`].
//! - `error` (private, re-exported): [`Error`] and how a gRPC status maps
//!   to it.
//! - `feed` (private, re-exported): the change feed: [`Client::watch`],
//!   [`Watch`], [`Cursor`], cursors kept in the catalog.
//! - [`sql`]: the language of `trellis sql`: parser, session, formats.

pub mod auth;
mod client;
mod direct;
mod error;
mod feed;
pub mod sql;
mod txn;

pub use client::{
    COMMIT_RESEND_BACKOFF_BASE, COMMIT_RESENDS_MAX, CONNECT_TIMEOUT_DEFAULT, Client, CommitRequest,
    Committed, Consistency, Durability, Item, Options, RPC_TIMEOUT_DEFAULT, ReadSource, Route,
    ScanResult, TxnId, TxnState, Write, new_txn_id,
};
pub use error::{Error, Result, quote_key};
pub use feed::{Cursor, FeedEvent, FeedMessage, ScanRow, Watch};
pub use trellis_types::ClusterId;
pub use txn::{TXN_ATTEMPTS_MAX, TXN_BACKOFF_MAX, TXN_BACKOFF_START, Transaction, backoff};
