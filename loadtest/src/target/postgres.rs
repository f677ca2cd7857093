//! PostgreSQL: `postgres://USER@HOST:PORT/DB`, on a table
//! `kv(k bytea primary key, v bytea, ver bigint)` the tool creates
//! (`--pg-table` names another; a `kv` of an older run without `ver` gets
//! the column). `ver` counts the writes to a row: both modes bump it.
//!
//! Two ways to run a transaction (`--pg-mode`), so that PostgreSQL is
//! measured with its best client as well as with the obvious one:
//!
//! - `serializable` (the default): every session is SERIALIZABLE. An
//!   attempt that writes is `BEGIN; SELECT k, v ... WHERE k = ANY($1);
//!   INSERT ... ON CONFLICT DO UPDATE; COMMIT`. SQLSTATE 40001
//!   (serialization failure) and 40P01 (deadlock) are conflicts.
//! - `occ`: optimistic, at READ COMMITTED. The reads are one autocommit
//!   `SELECT k, v, ver` (one statement sees one snapshot); the writes are
//!   version-conditional: `UPDATE ... SET v, ver = ver + 1 WHERE k AND ver
//!   = <read>` for a key read present, `INSERT ... ON CONFLICT DO NOTHING`
//!   for a key read absent. A statement that hits 0 rows is a conflict. One
//!   write is one autocommit statement (w1-rmw: SELECT, then UPDATE); more
//!   are one transaction (w2-transfer: BEGIN, two UPDATEs, COMMIT), run in
//!   key order so that two of them never deadlock. A key read but not
//!   written is re-checked with `SELECT ... FOR SHARE` inside that
//!   transaction (a key read absent can still appear before the commit: no
//!   row to lock; none of w1/w2/w3/bank reads a key it does not write).
//!
//! In both, a read-only attempt is a single SELECT and blind writes a single
//! upsert (one statement is one transaction, as one Get or one Commit is in
//! Trellis). `--durability async` sets `synchronous_commit = local` (do not
//! wait for standbys); `sync` and `semi_sync` keep the server's setting.
//! `--consistency` has no effect: every read goes to the primary.
//!
//! Connections are the sessions of one pool (`--connections`, by default
//! one per VU: a session runs one transaction at a time).

use futures::future::BoxFuture;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use super::{Options, Target, TxnError, Values};
use crate::workload::{TxnSpec, Writes};

/// Longest table name (PostgreSQL's identifier limit).
pub const TABLE_NAME_BYTES_MAX: usize = 63;

/// How transactions run (`--pg-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgMode {
    /// SERIALIZABLE transactions: read, upsert, commit.
    Serializable,
    /// READ COMMITTED with version-conditional writes.
    Occ,
}

/// Every mode with its name, in `--help` order.
pub const PG_MODES: &[(&str, PgMode)] =
    &[("serializable", PgMode::Serializable), ("occ", PgMode::Occ)];

impl PgMode {
    pub fn parse(name: &str) -> Result<PgMode, String> {
        PG_MODES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("--pg-mode `{name}`: use serializable or occ"))
    }

    pub fn name(self) -> &'static str {
        PG_MODES
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .expect("every mode is in PG_MODES")
    }
}

/// One write of an `occ` commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OccWrite {
    /// The key was read at `version`: `UPDATE ... WHERE k AND ver =
    /// version`; 0 rows is a conflict.
    Update {
        key: Vec<u8>,
        value: Vec<u8>,
        version: i64,
    },
    /// The key was read absent: `INSERT ... ON CONFLICT DO NOTHING`; 0 rows
    /// is a conflict.
    Insert { key: Vec<u8>, value: Vec<u8> },
    /// The key was not read (a blind write): an upsert, which cannot
    /// conflict.
    Upsert { key: Vec<u8>, value: Vec<u8> },
}

impl OccWrite {
    fn key(&self) -> &[u8] {
        match self {
            OccWrite::Update { key, .. }
            | OccWrite::Insert { key, .. }
            | OccWrite::Upsert { key, .. } => key,
        }
    }
}

/// What an `occ` commit runs, decided from what was read: a pure function
/// of the reads, so it is tested without a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OccPlan {
    /// In key order: every transaction locks rows in the same order, so
    /// two never wait for each other.
    pub writes: Vec<OccWrite>,
    /// Keys read and not written, with the version read (`None`: absent),
    /// re-checked under `FOR SHARE` before the commit.
    pub checks: Vec<(Vec<u8>, Option<i64>)>,
}

impl OccPlan {
    /// `reads[i]` was read at `versions[i]` (`None`: absent).
    pub fn new(reads: &[Vec<u8>], versions: &[Option<i64>], writes: Writes) -> OccPlan {
        let read_version = |key: &[u8]| {
            reads
                .iter()
                .position(|k| k.as_slice() == key)
                .map(|i| versions.get(i).copied().flatten())
        };
        let mut planned: Vec<OccWrite> = writes
            .into_iter()
            .map(|(key, value)| match read_version(&key) {
                Some(Some(version)) => OccWrite::Update {
                    key,
                    value,
                    version,
                },
                Some(None) => OccWrite::Insert { key, value },
                None => OccWrite::Upsert { key, value },
            })
            .collect();
        planned.sort_by(|a, b| a.key().cmp(b.key()));
        let mut checks: Vec<(Vec<u8>, Option<i64>)> = reads
            .iter()
            .zip(versions)
            .filter(|(k, _)| !planned.iter().any(|w| w.key() == k.as_slice()))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        checks.sort();
        checks.dedup();
        OccPlan {
            writes: planned,
            checks,
        }
    }

    /// One statement, run in autocommit: no BEGIN and COMMIT round trips.
    pub fn is_one_statement(&self) -> bool {
        self.writes.len() == 1 && self.checks.is_empty()
    }
}

/// Whether the keys re-checked still have the versions read: `found` is
/// what `SELECT k, ver ... FOR SHARE` returned (absent keys give no row).
pub fn checks_hold(checks: &[(Vec<u8>, Option<i64>)], found: &[(Vec<u8>, i64)]) -> bool {
    checks.iter().all(|(key, version)| {
        let now = found.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        now == *version
    })
}

pub struct Postgres {
    url_shown: String,
    pool: PgPool,
    options: Options,
    statements: Statements,
}

/// The SQL of one table.
struct Statements {
    select_many: String,
    select_one: String,
    upsert: String,
    /// `occ`: reads with versions.
    select_many_versions: String,
    select_one_version: String,
    /// `occ`: the conditional writes and the re-check.
    update_if_version: String,
    insert_if_absent: String,
    upsert_one: String,
    check_versions: String,
}

impl Statements {
    fn new(table: &str) -> Statements {
        Statements {
            select_many: format!("SELECT k, v FROM {table} WHERE k = ANY($1)"),
            select_one: format!("SELECT v FROM {table} WHERE k = $1"),
            upsert: format!(
                "INSERT INTO {table} (k, v) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = {table}.ver + 1"
            ),
            select_many_versions: format!("SELECT k, v, ver FROM {table} WHERE k = ANY($1)"),
            select_one_version: format!("SELECT v, ver FROM {table} WHERE k = $1"),
            update_if_version: format!(
                "UPDATE {table} SET v = $2, ver = ver + 1 WHERE k = $1 AND ver = $3"
            ),
            insert_if_absent: format!(
                "INSERT INTO {table} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING"
            ),
            upsert_one: format!(
                "INSERT INTO {table} (k, v) VALUES ($1, $2) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = {table}.ver + 1"
            ),
            check_versions: format!(
                "SELECT k, ver FROM {table} WHERE k = ANY($1) ORDER BY k FOR SHARE"
            ),
        }
    }
}

/// Checks `--pg-table`: a plain lower-case identifier.
pub fn check_table(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= TABLE_NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--pg-table `{name}`: use lower-case letters, digits and _ (at most {TABLE_NAME_BYTES_MAX}), starting with a letter or _"
        ))
    }
}

impl Postgres {
    pub async fn connect(url: &str, options: &Options) -> anyhow::Result<Postgres> {
        check_table(&options.pg_table).map_err(anyhow::Error::msg)?;
        let async_commit = options.durability == trellis_client::Durability::Async;
        let isolation = match options.pg_mode {
            PgMode::Serializable => "SERIALIZABLE",
            PgMode::Occ => "READ COMMITTED",
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.connections.max(1) as u32)
            .acquire_timeout(options.timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(
                        format!(
                            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {isolation}"
                        )
                        .as_str(),
                    )
                    .await?;
                    // The ROLLBACK sqlx sends after a failed COMMIT draws a
                    // "no transaction in progress" notice per conflict:
                    // noise on the terminal, not information.
                    conn.execute("SET client_min_messages = error").await?;
                    if async_commit {
                        conn.execute("SET synchronous_commit = local").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", redact(url)))?;
        let table = &options.pg_table;
        let setup = async {
            pool.execute(
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} \
                     (k bytea PRIMARY KEY, v bytea NOT NULL, ver bigint NOT NULL DEFAULT 0)"
                )
                .as_str(),
            )
            .await?;
            // A table of an older run has no `ver`. ALTER TABLE takes the
            // table's strongest lock even when the column exists, so ask
            // first.
            let has_version: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'ver')",
            )
            .bind(table)
            .fetch_one(&pool)
            .await?;
            if !has_version {
                pool.execute(
                    format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS ver bigint NOT NULL DEFAULT 0"
                    )
                    .as_str(),
                )
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        tokio::time::timeout(options.timeout, setup)
            .await
            .map_err(|_| anyhow::anyhow!("creating table {table}: timed out"))?
            .map_err(|e| anyhow::anyhow!("creating table {table}: {e}"))?;
        Ok(Postgres {
            url_shown: redact(url),
            pool,
            options: options.clone(),
            statements: Statements::new(table),
        })
    }

    async fn step<T>(
        &self,
        what: &str,
        committing: bool,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, TxnError> {
        match tokio::time::timeout(self.options.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(what, e, committing)),
            Err(_) if committing => Err(TxnError::Unknown(format!("{what}: timed out"))),
            Err(_) => Err(TxnError::Failed(format!("{what}: timed out"))),
        }
    }

    /// A read-only attempt: one SELECT (a snapshot in either mode).
    async fn read(&self, spec: &TxnSpec) -> Result<Values, TxnError> {
        if spec.reads.len() == 1 {
            let row = self
                .step(
                    "select",
                    false,
                    sqlx::query(&self.statements.select_one)
                        .bind(&spec.reads[0])
                        .fetch_optional(&self.pool),
                )
                .await?;
            let value = row
                .map(|r| r.try_get::<Vec<u8>, _>(0))
                .transpose()
                .map_err(|e| TxnError::Failed(format!("select: {e}")))?;
            return Ok(vec![value]);
        }
        let rows = self
            .step(
                "select",
                false,
                sqlx::query(&self.statements.select_many)
                    .bind(&spec.reads)
                    .fetch_all(&self.pool),
            )
            .await?;
        order(spec, rows)
    }

    /// Blind writes: one upsert statement.
    async fn blind_write(&self, spec: &TxnSpec) -> Result<Values, TxnError> {
        let writes = spec.writes(&[]).map_err(TxnError::Failed)?;
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = writes.into_iter().unzip();
        self.step(
            "upsert",
            true,
            sqlx::query(&self.statements.upsert)
                .bind(keys)
                .bind(values)
                .execute(&self.pool),
        )
        .await?;
        Ok(Vec::new())
    }

    /// `serializable`: BEGIN; SELECT; upsert; COMMIT.
    async fn serializable(&self, spec: &TxnSpec) -> Result<Values, TxnError> {
        let mut tx = self.step("begin", false, self.pool.begin()).await?;
        let rows = self
            .step(
                "select",
                false,
                sqlx::query(&self.statements.select_many)
                    .bind(&spec.reads)
                    .fetch_all(&mut *tx),
            )
            .await?;
        let values = order(spec, rows)?;
        let writes = spec.writes(&values).map_err(TxnError::Failed)?;
        let (keys, new_values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = writes.into_iter().unzip();
        self.step(
            "upsert",
            false,
            sqlx::query(&self.statements.upsert)
                .bind(keys)
                .bind(new_values)
                .execute(&mut *tx),
        )
        .await?;
        self.step("commit", true, tx.commit()).await?;
        Ok(values)
    }

    /// `occ`: read values and versions in autocommit, then the
    /// conditional writes of [`OccPlan`].
    async fn occ(&self, spec: &TxnSpec) -> Result<Values, TxnError> {
        let read: Vec<Option<(Vec<u8>, i64)>> = if spec.reads.len() == 1 {
            let row = self
                .step(
                    "select",
                    false,
                    sqlx::query(&self.statements.select_one_version)
                        .bind(&spec.reads[0])
                        .fetch_optional(&self.pool),
                )
                .await?;
            vec![
                row.map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
                    .transpose()
                    .map_err(|e| TxnError::Failed(format!("select: {e}")))?,
            ]
        } else {
            let rows = self
                .step(
                    "select",
                    false,
                    sqlx::query(&self.statements.select_many_versions)
                        .bind(&spec.reads)
                        .fetch_all(&self.pool),
                )
                .await?;
            let found: std::collections::HashMap<Vec<u8>, (Vec<u8>, i64)> = rows
                .into_iter()
                .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| TxnError::Failed(format!("select: {e}")))?;
            spec.reads.iter().map(|k| found.get(k).cloned()).collect()
        };
        let values: Values = read
            .iter()
            .map(|r| r.as_ref().map(|(v, _)| v.clone()))
            .collect();
        let versions: Vec<Option<i64>> = read.iter().map(|r| r.as_ref().map(|(_, n)| *n)).collect();
        let writes = spec.writes(&values).map_err(TxnError::Failed)?;
        let plan = OccPlan::new(&spec.reads, &versions, writes);
        if plan.is_one_statement() {
            let rows = self
                .step(
                    "conditional write",
                    true,
                    self.occ_write(&plan.writes[0]).execute(&self.pool),
                )
                .await?
                .rows_affected();
            return if rows == 1 {
                Ok(values)
            } else {
                Err(occ_conflict(&plan.writes[0]))
            };
        }
        let mut tx = self.step("begin", false, self.pool.begin()).await?;
        for write in &plan.writes {
            let rows = self
                .step(
                    "conditional write",
                    false,
                    self.occ_write(write).execute(&mut *tx),
                )
                .await?
                .rows_affected();
            if rows != 1 {
                // Dropping `tx` rolls it back.
                return Err(occ_conflict(write));
            }
        }
        if !plan.checks.is_empty() {
            let keys: Vec<&[u8]> = plan.checks.iter().map(|(k, _)| k.as_slice()).collect();
            let found: Vec<(Vec<u8>, i64)> = self
                .step(
                    "check versions",
                    false,
                    sqlx::query_as(&self.statements.check_versions)
                        .bind(keys)
                        .fetch_all(&mut *tx),
                )
                .await?;
            if !checks_hold(&plan.checks, &found) {
                return Err(TxnError::Conflict(
                    "occ: a key read and not written changed since it was read".into(),
                ));
            }
        }
        self.step("commit", true, tx.commit()).await?;
        Ok(values)
    }

    fn occ_write<'q>(
        &'q self,
        write: &'q OccWrite,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match write {
            OccWrite::Update {
                key,
                value,
                version,
            } => sqlx::query(&self.statements.update_if_version)
                .bind(key)
                .bind(value)
                .bind(version),
            OccWrite::Insert { key, value } => sqlx::query(&self.statements.insert_if_absent)
                .bind(key)
                .bind(value),
            OccWrite::Upsert { key, value } => sqlx::query(&self.statements.upsert_one)
                .bind(key)
                .bind(value),
        }
    }
}

fn occ_conflict(write: &OccWrite) -> TxnError {
    TxnError::Conflict(match write {
        OccWrite::Insert { .. } => "occ: a key read absent was written since".into(),
        _ => "occ: a key's version changed since it was read".into(),
    })
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn classify(what: &str, err: sqlx::Error, committing: bool) -> TxnError {
    if let sqlx::Error::Database(db) = &err {
        let code = db.code().map(|c| c.to_string()).unwrap_or_default();
        return if code == "40001" || code == "40P01" {
            TxnError::Conflict(format!("{what}: {code}: {}", db.message()))
        } else {
            TxnError::Failed(format!("{what}: {code}: {}", db.message()))
        };
    }
    let text = format!("{what}: {err}");
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
            if committing =>
        {
            TxnError::Unknown(text)
        }
        _ => TxnError::Failed(text),
    }
}

impl Target for Postgres {
    fn describe(&self) -> String {
        let how = match self.options.pg_mode {
            PgMode::Serializable => "SERIALIZABLE",
            PgMode::Occ => "occ: READ COMMITTED + version-conditional writes",
        };
        format!(
            "{} table {} ({} connection(s), {how})",
            self.url_shown,
            self.options.pg_table,
            self.options.connections.max(1)
        )
    }

    fn execute<'a>(
        &'a self,
        _conn: usize,
        spec: &'a TxnSpec,
    ) -> BoxFuture<'a, Result<Values, TxnError>> {
        Box::pin(async move {
            if spec.is_read_only() {
                return self.read(spec).await;
            }
            if spec.reads.is_empty() {
                return self.blind_write(spec).await;
            }
            match self.options.pg_mode {
                PgMode::Serializable => self.serializable(spec).await,
                PgMode::Occ => self.occ(spec).await,
            }
        })
    }
}

/// Rows of `k = ANY(...)` back in the order of `spec.reads`. A table of
/// another shape is an error, not a panic.
fn order(spec: &TxnSpec, rows: Vec<sqlx::postgres::PgRow>) -> Result<Values, TxnError> {
    let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = rows
        .into_iter()
        .map(|r| Ok((r.try_get::<Vec<u8>, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| TxnError::Failed(format!("select: {e}")))?;
    Ok(spec.reads.iter().map(|k| found.get(k).cloned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(check_table("kv").is_ok());
        assert!(check_table("load_test_42").is_ok());
        for bad in ["", "KV", "1kv", "kv; drop table x", "a-b", &"x".repeat(64)] {
            assert!(check_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_parse_by_name() {
        for (name, mode) in PG_MODES {
            assert_eq!(PgMode::parse(name), Ok(*mode));
            assert_eq!(mode.name(), *name);
        }
        let err = PgMode::parse("snapshot").expect_err("no such mode");
        assert!(err.contains("serializable or occ"), "{err}");
    }

    fn kv(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (key.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn an_rmw_is_one_update_conditional_on_the_version_read() {
        let plan = OccPlan::new(&[b"a".to_vec()], &[Some(7)], vec![kv("a", "8")]);
        assert_eq!(
            plan.writes,
            vec![OccWrite::Update {
                key: b"a".to_vec(),
                value: b"8".to_vec(),
                version: 7
            }]
        );
        assert!(plan.checks.is_empty());
        assert!(plan.is_one_statement(), "autocommit: no BEGIN, no COMMIT");
        // Read absent: an insert that must find the key still absent.
        let plan = OccPlan::new(&[b"a".to_vec()], &[None], vec![kv("a", "1")]);
        assert_eq!(
            plan.writes,
            vec![OccWrite::Insert {
                key: b"a".to_vec(),
                value: b"1".to_vec()
            }]
        );
    }

    #[test]
    fn a_transfer_writes_in_key_order_in_one_transaction() {
        // Read z then a (the spec's order): written a then z, so two
        // transfers over the same pair lock their rows in the same order.
        let plan = OccPlan::new(
            &[b"z".to_vec(), b"a".to_vec()],
            &[Some(3), None],
            vec![kv("z", "-5"), kv("a", "5")],
        );
        assert_eq!(
            plan.writes,
            vec![
                OccWrite::Insert {
                    key: b"a".to_vec(),
                    value: b"5".to_vec()
                },
                OccWrite::Update {
                    key: b"z".to_vec(),
                    value: b"-5".to_vec(),
                    version: 3
                },
            ]
        );
        assert!(!plan.is_one_statement());
    }

    #[test]
    fn keys_read_and_not_written_are_rechecked_and_blind_writes_upserted() {
        let plan = OccPlan::new(
            &[b"r".to_vec(), b"w".to_vec(), b"gone".to_vec()],
            &[Some(2), Some(9), None],
            vec![kv("w", "x"), kv("blind", "y")],
        );
        assert_eq!(
            plan.checks,
            vec![(b"gone".to_vec(), None), (b"r".to_vec(), Some(2))]
        );
        assert!(matches!(&plan.writes[0], OccWrite::Upsert { key, .. } if key == b"blind"));
        assert!(!plan.is_one_statement(), "checks need a transaction");
        // The re-check: same versions hold; a bump, a delete or an insert
        // does not.
        assert!(checks_hold(&plan.checks, &[(b"r".to_vec(), 2)]));
        assert!(!checks_hold(&plan.checks, &[(b"r".to_vec(), 3)]));
        assert!(!checks_hold(&plan.checks, &[]));
        assert!(!checks_hold(
            &plan.checks,
            &[(b"r".to_vec(), 2), (b"gone".to_vec(), 0)]
        ));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
