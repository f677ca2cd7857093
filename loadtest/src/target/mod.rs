//! Targets: the systems a run measures, behind one trait so each is
//! measured the same way.
//!
//! A [`Target`] runs one attempt of a [`TxnSpec`]: read its keys, compute
//! the writes ([`TxnSpec::writes`]), commit them only if nothing read has
//! changed. It never retries: the runner does, identically for every target,
//! and counts each conflict. Every call has a deadline (`--timeout`).
//!
//! - [`trellis`]: the Trellis client library (`trellis://ADDR`).
//! - [`etcd`]: etcd's KV gRPC API, compare-mod-revision-then-put
//!   transactions (`etcd://ADDR[,ADDR...]`).
//! - [`postgres`]: SERIALIZABLE transactions, or version-conditional
//!   writes at READ COMMITTED (`--pg-mode occ`), on a table of keys and
//!   values (`postgres://...`).
//! - [`redis`]: WATCH/MULTI/EXEC transactions, each commit followed by
//!   `WAIT` for a replica (`redis://HOST:PORT`).
//! - `broken-bank://URL` (hidden, for tests): wraps another target and
//!   turns every bank transfer into a debit without its credit, so the bank
//!   check has something to catch.

pub mod etcd;
pub mod postgres;
pub mod redis;
pub mod trellis;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::workload::{Op, TxnSpec};

/// Values read, one per key of `TxnSpec::reads` (`None`: absent).
pub type Values = Vec<Option<Vec<u8>>>;

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// A serialization conflict: nothing took effect; run it again.
    Conflict(String),
    /// It certainly did not take effect, and retrying will not help.
    Failed(String),
    /// It may or may not have taken effect (a commit whose answer was lost).
    Unknown(String),
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnError::Conflict(m) => write!(f, "conflict: {m}"),
            TxnError::Failed(m) => write!(f, "failed: {m}"),
            TxnError::Unknown(m) => write!(f, "outcome unknown: {m}"),
        }
    }
}

/// How a transaction commits, as far as the target can tell: the `path`
/// tag of `txn_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// Trellis: the keys written live in one group (one-phase commit).
    OnePc,
    /// Trellis: the keys written span several groups (two-phase commit).
    TwoPc,
    /// Nothing written.
    Read,
    /// Writes, on a target (or a Trellis map) where the path is not known.
    Write,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::OnePc, Path::TwoPc, Path::Read, Path::Write];

    pub fn tag(self) -> &'static str {
        match self {
            Path::OnePc => "1pc",
            Path::TwoPc => "2pc",
            Path::Read => "read",
            Path::Write => "write",
        }
    }
}

/// Settings every target takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections (gRPC channels, PostgreSQL sessions or Redis
    /// connections), used round robin by the VUs.
    pub connections: usize,
    /// Deadline of each call.
    pub timeout: Duration,
    pub durability: trellis_client::Durability,
    pub consistency: trellis_client::Consistency,
    /// Trellis: how requests reach the shards.
    pub route: trellis_client::Route,
    /// PostgreSQL table.
    pub pg_table: String,
    /// PostgreSQL: how transactions run.
    pub pg_mode: postgres::PgMode,
}

/// A system under test.
pub trait Target: Send + Sync {
    /// One line for the summary: what and where.
    fn describe(&self) -> String;

    /// The commit path `spec` will take.
    fn path(&self, spec: &TxnSpec) -> Path {
        if spec.is_read_only() {
            Path::Read
        } else {
            Path::Write
        }
    }

    /// Runs one attempt of `spec` on connection `conn` (any number; taken
    /// modulo the connections).
    fn execute<'a>(
        &'a self,
        conn: usize,
        spec: &'a TxnSpec,
    ) -> BoxFuture<'a, Result<Values, TxnError>>;
}

/// Connects to the target named by `url`.
pub async fn connect(url: &str, options: &Options) -> anyhow::Result<Arc<dyn Target>> {
    if let Some(addr) = url.strip_prefix("trellis://") {
        return Ok(Arc::new(trellis::Trellis::connect(addr, options).await?));
    }
    if let Some(endpoints) = url.strip_prefix("etcd://") {
        return Ok(Arc::new(etcd::Etcd::connect(endpoints, options).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::Postgres::connect(url, options).await?));
    }
    if let Some(addr) = url.strip_prefix("redis://") {
        return Ok(Arc::new(redis::Redis::connect(addr, options).await?));
    }
    if let Some(inner) = url.strip_prefix("broken-bank://") {
        let inner = Box::pin(connect(inner, options)).await?;
        return Ok(Arc::new(BrokenBank { inner }));
    }
    anyhow::bail!(
        "--target `{url}`: expected trellis://HOST:PORT, etcd://HOST:PORT[,HOST:PORT...], postgres://USER@HOST:PORT/DB or redis://HOST:PORT"
    )
}

/// Test-only: loses the credit of every bank transfer.
struct BrokenBank {
    inner: Arc<dyn Target>,
}

impl Target for BrokenBank {
    fn describe(&self) -> String {
        format!(
            "{} (broken-bank: transfers lose their credit)",
            self.inner.describe()
        )
    }

    fn path(&self, spec: &TxnSpec) -> Path {
        self.inner.path(spec)
    }

    fn execute<'a>(
        &'a self,
        conn: usize,
        spec: &'a TxnSpec,
    ) -> BoxFuture<'a, Result<Values, TxnError>> {
        Box::pin(async move {
            match spec.op {
                Op::BankTransfer { from, to, amount } => {
                    let leak = TxnSpec {
                        op: Op::BankLeak { from, to, amount },
                        ..spec.clone()
                    };
                    self.inner.execute(conn, &leak).await
                }
                _ => self.inner.execute(conn, spec).await,
            }
        })
    }
}
