//! PostgreSQL: `postgres://USER@HOST:PORT/DB`, SERIALIZABLE transactions on
//! a table `kv(k bytea primary key, v bytea)` the tool creates
//! (`--pg-table` names another).
//!
//! Every session is set to SERIALIZABLE. An attempt that writes is
//! `BEGIN; SELECT k, v ... WHERE k = ANY($1); INSERT ... ON CONFLICT DO
//! UPDATE; COMMIT`; a read-only one is a single SELECT, and blind writes a
//! single upsert (one statement is one transaction, as one Get or one
//! Commit is in Trellis). SQLSTATE 40001 (serialization failure) and 40P01
//! (deadlock) are conflicts. `--durability async` sets
//! `synchronous_commit = local` (do not wait for standbys); `sync` and
//! `semi_sync` keep the server's setting. `--consistency` has no effect:
//! every read goes to the primary.
//!
//! Connections are the sessions of one pool (`--connections`, by default
//! one per VU: a session runs one transaction at a time).

use futures::future::BoxFuture;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use super::{Options, Target, TxnError, Values};
use crate::workload::TxnSpec;

/// Longest table name (PostgreSQL's identifier limit).
pub const TABLE_NAME_BYTES_MAX: usize = 63;

pub struct Postgres {
    url_shown: String,
    pool: PgPool,
    options: Options,
    select_many: String,
    select_one: String,
    upsert: String,
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
        let pool = PgPoolOptions::new()
            .max_connections(options.connections.max(1) as u32)
            .acquire_timeout(options.timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
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
        tokio::time::timeout(
            options.timeout,
            pool.execute(
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (k bytea PRIMARY KEY, v bytea NOT NULL)"
                )
                .as_str(),
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("creating table {table}: timed out"))?
        .map_err(|e| anyhow::anyhow!("creating table {table}: {e}"))?;
        Ok(Postgres {
            url_shown: redact(url),
            pool,
            options: options.clone(),
            select_many: format!("SELECT k, v FROM {table} WHERE k = ANY($1)"),
            select_one: format!("SELECT v FROM {table} WHERE k = $1"),
            upsert: format!(
                "INSERT INTO {table} (k, v) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
            ),
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
        format!(
            "{} table {} ({} connection(s), SERIALIZABLE)",
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
                if spec.reads.len() == 1 {
                    let row = self
                        .step(
                            "select",
                            false,
                            sqlx::query(&self.select_one)
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
                        sqlx::query(&self.select_many)
                            .bind(&spec.reads)
                            .fetch_all(&self.pool),
                    )
                    .await?;
                return order(spec, rows);
            }
            if spec.reads.is_empty() {
                let writes = spec.writes(&[]).map_err(TxnError::Failed)?;
                let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = writes.into_iter().unzip();
                self.step(
                    "upsert",
                    true,
                    sqlx::query(&self.upsert)
                        .bind(keys)
                        .bind(values)
                        .execute(&self.pool),
                )
                .await?;
                return Ok(Vec::new());
            }
            let mut tx = self.step("begin", false, self.pool.begin()).await?;
            let rows = self
                .step(
                    "select",
                    false,
                    sqlx::query(&self.select_many)
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
                sqlx::query(&self.upsert)
                    .bind(keys)
                    .bind(new_values)
                    .execute(&mut *tx),
            )
            .await?;
            self.step("commit", true, tx.commit()).await?;
            Ok(values)
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
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
