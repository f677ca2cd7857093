//! Running statements against the cluster: a session with its transaction
//! state and settings.

use std::sync::{Arc, Mutex};

use crate::client::{Client, Consistency, Durability, Item};
use crate::error::{Error, quote_key};
use crate::sql::parse::{Column, Filter, NewValue, Statement};
use crate::txn::Transaction;

/// The transaction state a prompt shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// No transaction open: each statement is its own.
    Idle,
    /// Inside BEGIN.
    Open,
    /// Inside BEGIN after an error: only ROLLBACK (or COMMIT, which rolls
    /// back) is accepted.
    Failed,
}

/// What a statement printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Vec<u8>>>,
        /// The scan stopped at a limit the statement did not choose (the
        /// server's default without LIMIT, or `SCAN_LIMIT_MAX` above it):
        /// more keys match than are shown. Holds that limit. A LIMIT the
        /// statement gave cutting the rows is not reported: it was asked for.
        truncated: Option<u32>,
        /// Keys of `WHERE k IN (...)` that do not exist. As in SQL they give
        /// no row; they are kept so the shell can say which they were.
        absent: Vec<Vec<u8>>,
    },
    /// A command tag such as `INSERT 0 2`.
    Tag(String),
}

/// A failed statement, psql-like: message, code, and hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub message: String,
    /// A SQLSTATE-like code with its name, e.g. `40001 serialization_failure`.
    pub code: &'static str,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The cluster could not be reached (exit code 2, not 1).
    pub connection: bool,
}

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError {
            message: message.into(),
            code,
            detail: None,
            hint: None,
            connection: false,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> SqlError {
        self.hint = Some(hint.into());
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> SqlError {
        self.detail = Some(detail.into());
        self
    }

    /// `ERROR: ...`, `CODE: ...`, then `DETAIL:` and `HINT:` lines.
    pub fn render(&self) -> String {
        let mut out = format!("ERROR: {}\nCODE: {}", self.message, self.code);
        if let Some(d) = &self.detail {
            out.push_str("\nDETAIL: ");
            out.push_str(d);
        }
        if let Some(h) = &self.hint {
            out.push_str("\nHINT: ");
            out.push_str(h);
        }
        out
    }

    /// Maps a client error, with `in_txn` telling whether a retry means the
    /// whole explicit transaction.
    pub fn from_client(err: &Error, in_txn: bool) -> SqlError {
        let keys = err
            .keys()
            .iter()
            .map(|k| quote_key(k))
            .collect::<Vec<_>>()
            .join(", ");
        let again = if in_txn {
            "retry the transaction: run it again from BEGIN (its reads are stale; nothing was committed)"
        } else {
            "retry the statement (nothing was committed)"
        };
        match err {
            Error::Conflict { .. } => SqlError::new("40001 serialization_failure", err.to_string())
                .hint(format!(
                    "another transaction changed {keys} after this one read it; {again}"
                )),
            Error::Locked { .. } => SqlError::new("55P03 lock_not_available", err.to_string())
                .hint(format!(
                    "another transaction holds {keys} while it commits; {again}"
                )),
            Error::ResolvedAbort { .. } => {
                SqlError::new("40000 transaction_rollback", err.to_string()).hint(format!(
                    "another party (a resolver, or a slot move draining the keys) decided it before its own commit did; {again}"
                ))
            }
            Error::SlotsMoved { .. } => {
                SqlError::new("40001 serialization_failure", err.to_string()).hint(format!(
                    "the keys moved to another shard group while the transaction committed; {again}"
                ))
            }
            Error::ParticipantUnavailable { .. } => {
                SqlError::new("57P03 cannot_connect_now", err.to_string())
                    .hint("the transaction did not commit; retry when the cluster is healthy")
            }
            Error::OutcomeUnknown { txn_id, .. } => {
                let id = hex::encode(txn_id);
                SqlError {
                    message: format!(
                        "the outcome of transaction {id} is unknown: it may or may not have committed"
                    ),
                    code: "40003 statement_completion_unknown",
                    detail: None,
                    hint: Some(format!(
                        "do not assume either way; ask the cluster with TxnStatus(txn_id = {id}) (the trellis.v1.Txn service), which answers COMMITTED, ABORTED or UNKNOWN (never committed)"
                    )),
                    connection: false,
                }
            }
            Error::Unavailable(m) => SqlError {
                message: format!("cluster unavailable: {m}"),
                code: "08006 connection_failure",
                detail: None,
                hint: None,
                connection: true,
            },
            Error::InvalidArgument(m) => SqlError::new("22023 invalid_parameter_value", m.clone()),
            Error::Application(m) => SqlError::new("XX000 internal_error", m.clone()),
            Error::Server { code, message } if lost_connection(*code, message) => SqlError {
                message: format!("lost the connection to the cluster: {message}"),
                code: "08006 connection_failure",
                detail: None,
                hint: None,
                connection: true,
            },
            Error::Server { .. } | Error::FeedHistoryGone { .. } => {
                SqlError::new("XX000 internal_error", err.to_string())
            }
        }
    }
}

/// Whether a status the server did not choose is the connection failing
/// under the call: tonic reports a broken or refused connection as
/// `Unknown`/`Cancelled` with a transport message and no details, where a
/// server's own error always says what it is about.
fn lost_connection(code: tonic::Code, message: &str) -> bool {
    /// Texts of tonic and hyper for a connection that failed or went away.
    const TRANSPORT_MESSAGES: &[&str] = &[
        "transport error",
        "error trying to connect",
        "connection closed",
        "connection reset",
        "broken pipe",
        "operation was canceled",
    ];
    let lower = message.to_ascii_lowercase();
    matches!(code, tonic::Code::Unknown | tonic::Code::Cancelled)
        && TRANSPORT_MESSAGES.iter().any(|m| lower.contains(m))
}

/// A shell session: one client, the open transaction if any, and settings.
pub struct Session {
    client: Client,
    txn: Option<Transaction>,
    failed: bool,
    durability: Durability,
    consistency: Consistency,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("status", &self.status())
            .finish()
    }
}

type Stash = Arc<Mutex<Option<SqlError>>>;

impl Session {
    pub fn new(client: Client) -> Session {
        Session {
            client,
            txn: None,
            failed: false,
            durability: Durability::default(),
            consistency: Consistency::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn status(&self) -> TxnStatus {
        match (&self.txn, self.failed) {
            (None, _) => TxnStatus::Idle,
            (Some(_), false) => TxnStatus::Open,
            (Some(_), true) => TxnStatus::Failed,
        }
    }

    /// Marks an open transaction failed (e.g. after a statement that did
    /// not parse), as psql does; nothing happens outside a transaction.
    pub fn fail_transaction(&mut self) {
        if self.txn.is_some() {
            self.failed = true;
        }
    }

    /// Runs one statement.
    pub async fn execute(&mut self, stmt: &Statement) -> Result<Output, SqlError> {
        match stmt {
            Statement::Begin => {
                if self.txn.is_some() {
                    return Err(SqlError::new(
                        "25001 active_sql_transaction",
                        "there is already a transaction in progress",
                    ));
                }
                let txn = self.client.begin();
                txn.set_durability(self.durability);
                txn.set_consistency(self.consistency);
                self.txn = Some(txn);
                self.failed = false;
                Ok(Output::Tag("BEGIN".into()))
            }
            Statement::Rollback => {
                if let Some(txn) = self.txn.take() {
                    txn.rollback();
                }
                self.failed = false;
                Ok(Output::Tag("ROLLBACK".into()))
            }
            Statement::Commit => {
                let Some(txn) = self.txn.take() else {
                    return Err(SqlError::new(
                        "25P01 no_active_sql_transaction",
                        "there is no transaction in progress",
                    ));
                };
                if std::mem::take(&mut self.failed) {
                    txn.rollback();
                    return Ok(Output::Tag("ROLLBACK".into()));
                }
                match txn.commit().await {
                    Ok(_) => Ok(Output::Tag("COMMIT".into())),
                    Err(e) => Err(SqlError::from_client(&e, true)),
                }
            }
            Statement::SetDurability(d) => {
                self.durability = *d;
                if let Some(txn) = &self.txn {
                    txn.set_durability(*d);
                }
                Ok(Output::Tag("SET".into()))
            }
            Statement::SetConsistency(c) => {
                self.consistency = *c;
                if let Some(txn) = &self.txn {
                    txn.set_consistency(*c);
                }
                Ok(Output::Tag("SET".into()))
            }
            _ => {
                if let Some(txn) = self.txn.clone() {
                    if self.failed {
                        return Err(SqlError::new(
                            "25P02 in_failed_sql_transaction",
                            "current transaction is aborted, commands ignored until end of transaction block",
                        )
                        .hint("ROLLBACK to leave it"));
                    }
                    let stash: Stash = Arc::default();
                    let result = apply(&txn, stmt, &stash).await;
                    result.map_err(|e| {
                        self.failed = true;
                        take(&stash).unwrap_or_else(|| SqlError::from_client(&e, true))
                    })
                } else {
                    self.autocommit(stmt).await
                }
            }
        }
    }

    /// One statement as its own transaction, retried on retryable aborts by
    /// [`Client::run_txn`].
    async fn autocommit(&mut self, stmt: &Statement) -> Result<Output, SqlError> {
        // A prefix scan outside a transaction is one Scan call: not
        // validated across groups, and not limited to TXN_KEYS_MAX.
        if let Statement::Select {
            columns,
            filter: Filter::Prefix(prefix),
            limit,
        } = stmt
        {
            let scan = self
                .client
                .scan(prefix, scan_limit(*limit), self.consistency)
                .await
                .map_err(|e| SqlError::from_client(&e, false))?;
            let mut items = scan.items;
            if let Some(limit) = limit {
                items.truncate(*limit as usize);
            }
            return Ok(rows(
                columns,
                items,
                unchosen_cut(*limit, scan.truncated),
                Vec::new(),
            ));
        }
        let stash: Stash = Arc::default();
        let (durability, consistency) = (self.durability, self.consistency);
        let result = self
            .client
            .run_txn(|txn| {
                txn.set_durability(durability);
                txn.set_consistency(consistency);
                let stash = stash.clone();
                async move { apply(&txn, stmt, &stash).await }
            })
            .await;
        result.map_err(|e| take(&stash).unwrap_or_else(|| SqlError::from_client(&e, false)))
    }
}

fn take(stash: &Stash) -> Option<SqlError> {
    stash.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Fails the transaction body with a statement error (never retried).
fn fail(stash: &Stash, err: SqlError) -> Error {
    let message = err.message.clone();
    *stash.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
    Error::Application(message)
}

/// Rows a scan without LIMIT returns: the coordinator's default.
pub const SCAN_LIMIT_DEFAULT: u32 = 1000;

fn scan_limit(limit: Option<u32>) -> u32 {
    limit.map_or(SCAN_LIMIT_DEFAULT, |l| {
        l.clamp(1, trellis_types::limits::SCAN_LIMIT_MAX)
    })
}

/// The limit that cut a scan when it was not the statement's own LIMIT
/// (see [`Output::Rows`]'s `truncated`).
fn unchosen_cut(limit: Option<u32>, truncated: bool) -> Option<u32> {
    let used = scan_limit(limit);
    (truncated && limit.is_none_or(|l| l > used)).then_some(used)
}

fn rows(
    columns: &[Column],
    items: Vec<Item>,
    truncated: Option<u32>,
    absent: Vec<Vec<u8>>,
) -> Output {
    Output::Rows {
        columns: columns.iter().map(|c| c.name().to_string()).collect(),
        rows: items
            .into_iter()
            .filter(|i| i.version != 0)
            .map(|item| {
                columns
                    .iter()
                    .map(|c| match c {
                        Column::K => item.key.clone(),
                        Column::V => item.value.clone(),
                        Column::Version => item.version.to_string().into_bytes(),
                    })
                    .collect()
            })
            .collect(),
        truncated,
        absent,
    }
}

/// The present items a filter names, as `txn` sees them.
async fn matching(
    txn: &Transaction,
    filter: &Filter,
    limit: Option<u32>,
) -> Result<(Vec<Item>, bool), Error> {
    match filter {
        Filter::Eq(key) => Ok((txn.get_many(std::slice::from_ref(key)).await?, false)),
        Filter::In(keys) => {
            let mut keys = keys.clone();
            keys.sort();
            keys.dedup();
            Ok((txn.get_many(&keys).await?, false))
        }
        Filter::Prefix(prefix) => {
            let scan = txn.scan(prefix, scan_limit(limit)).await?;
            Ok((scan.items, scan.truncated))
        }
    }
}

/// An UPDATE or DELETE whose prefix matches more keys than one scan
/// returns: refused whole, rather than changing the first
/// [`SCAN_LIMIT_DEFAULT`] keys and saying nothing of the rest.
fn too_many_to_change(verb: &str) -> SqlError {
    SqlError::new(
        "54000 program_limit_exceeded",
        format!("{verb} by prefix matches more than {SCAN_LIMIT_DEFAULT} keys"),
    )
    .hint(format!(
        "nothing was changed; one statement changes at most {SCAN_LIMIT_DEFAULT} keys (a transaction holds at most {}): narrow the prefix",
        trellis_types::limits::TXN_KEYS_MAX
    ))
}

/// Runs a data statement inside `txn`.
async fn apply(txn: &Transaction, stmt: &Statement, stash: &Stash) -> Result<Output, Error> {
    match stmt {
        Statement::Select {
            columns,
            filter,
            limit,
        } => {
            let (mut items, truncated) = matching(txn, filter, *limit).await?;
            let absent = match filter {
                Filter::In(_) => items
                    .iter()
                    .filter(|i| i.version == 0)
                    .map(|i| i.key.clone())
                    .collect(),
                _ => Vec::new(),
            };
            items.retain(|i| i.version != 0);
            if let Some(limit) = limit {
                items.truncate(*limit as usize);
            }
            Ok(rows(
                columns,
                items,
                unchosen_cut(*limit, truncated),
                absent,
            ))
        }
        Statement::Insert { rows, upsert } => {
            if !upsert {
                let mut seen = std::collections::BTreeSet::new();
                for (k, _) in rows {
                    if !seen.insert(k) {
                        return Err(fail(
                            stash,
                            SqlError::new(
                                "23505 unique_violation",
                                "duplicate key value violates unique constraint \"kv_pkey\"",
                            )
                            .detail(format!(
                                "Key (k)=({}) appears twice in this INSERT.",
                                quote_key(k)
                            )),
                        ));
                    }
                }
                let keys: Vec<Vec<u8>> = rows.iter().map(|(k, _)| k.clone()).collect();
                let existing = txn.get_many(&keys).await?;
                if let Some(item) = existing.iter().find(|i| i.version != 0) {
                    return Err(fail(
                        stash,
                        SqlError::new(
                            "23505 unique_violation",
                            "duplicate key value violates unique constraint \"kv_pkey\"",
                        )
                        .detail(format!(
                            "Key (k)=({}) already exists.",
                            quote_key(&item.key)
                        ))
                        .hint("use UPSERT to overwrite, or UPDATE"),
                    ));
                }
            }
            for (k, v) in rows {
                txn.put(k, v)?;
            }
            Ok(Output::Tag(if *upsert {
                format!("UPSERT {}", rows.len())
            } else {
                format!("INSERT 0 {}", rows.len())
            }))
        }
        Statement::Update { value, filter } => {
            let (items, truncated) = matching(txn, filter, None).await?;
            if truncated {
                return Err(fail(stash, too_many_to_change("UPDATE")));
            }
            let mut n = 0;
            for item in items.iter().filter(|i| i.version != 0) {
                let new = match value {
                    NewValue::Literal(v) => v.clone(),
                    NewValue::Add(delta) => {
                        let text = String::from_utf8_lossy(&item.value);
                        let current: i64 = text.trim().parse().map_err(|_| {
                            fail(
                                stash,
                                SqlError::new(
                                    "22P02 invalid_text_representation",
                                    format!(
                                        "v + n needs an integer value, but the value of {} is {}",
                                        quote_key(&item.key),
                                        quote_key(&item.value)
                                    ),
                                ),
                            )
                        })?;
                        let sum = current.checked_add(*delta).ok_or_else(|| {
                            fail(
                                stash,
                                SqlError::new(
                                    "22003 numeric_value_out_of_range",
                                    format!(
                                        "{current} + {delta} is out of the 64-bit integer range"
                                    ),
                                ),
                            )
                        })?;
                        sum.to_string().into_bytes()
                    }
                };
                txn.put(&item.key, &new)?;
                n += 1;
            }
            Ok(Output::Tag(format!("UPDATE {n}")))
        }
        Statement::Delete { filter } => {
            let (items, truncated) = matching(txn, filter, None).await?;
            if truncated {
                return Err(fail(stash, too_many_to_change("DELETE")));
            }
            let mut n = 0;
            for item in items.iter().filter(|i| i.version != 0) {
                txn.delete(&item.key)?;
                n += 1;
            }
            Ok(Output::Tag(format!("DELETE {n}")))
        }
        _ => Err(Error::Application(
            "not a data statement (BEGIN/COMMIT/ROLLBACK/SET run on the session)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_errors_carry_keys_and_a_hint() {
        let err = Error::Conflict {
            keys: vec![b"acct:1".to_vec()],
            message: String::new(),
        };
        let text = SqlError::from_client(&err, true).render();
        assert!(
            text.starts_with("ERROR: transaction aborted: conflict on 'acct:1'"),
            "{text}"
        );
        assert!(text.contains("\nCODE: 40001"), "{text}");
        assert!(
            text.contains("\nHINT: another transaction changed 'acct:1'"),
            "{text}"
        );
        assert!(text.contains("from BEGIN"), "{text}");
    }

    #[test]
    fn outcome_unknown_names_the_id_and_txn_status() {
        let err = Error::OutcomeUnknown {
            txn_id: [0x11; 16],
            message: String::new(),
        };
        let e = SqlError::from_client(&err, false);
        let text = e.render();
        assert!(text.contains(&"11".repeat(16)), "{text}");
        assert!(text.contains("TxnStatus"), "{text}");
        assert!(!e.connection);
        assert!(SqlError::from_client(&Error::Unavailable("x".into()), false).connection);
    }

    #[test]
    fn a_transport_failure_is_a_connection_error_not_an_internal_one() {
        let err = Error::Server {
            code: tonic::Code::Unknown,
            message: "transport error".into(),
        };
        let e = SqlError::from_client(&err, false);
        assert!(e.connection, "{e:?}");
        assert!(e.code.starts_with("08006"), "{e:?}");
        let err = Error::Server {
            code: tonic::Code::Internal,
            message: "transport error".into(),
        };
        assert!(!SqlError::from_client(&err, false).connection);
    }

    #[test]
    fn only_a_limit_the_statement_did_not_choose_is_reported() {
        assert_eq!(unchosen_cut(None, true), Some(SCAN_LIMIT_DEFAULT));
        assert_eq!(unchosen_cut(None, false), None);
        assert_eq!(unchosen_cut(Some(5), true), None);
        let max = trellis_types::limits::SCAN_LIMIT_MAX;
        assert_eq!(unchosen_cut(Some(max + 1), true), Some(max));
    }
}
