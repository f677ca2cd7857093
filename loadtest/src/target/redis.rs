//! Redis: `redis://HOST:PORT`, optimistic transactions with `WATCH`.
//!
//! An attempt that writes is two round trips, each one pipeline:
//!
//! 1. `WATCH keys...; MGET keys...` — the values read, and Redis now
//!    watches them for this connection;
//! 2. `MULTI; SET k v...; EXEC; WAIT 1 <ms>` — `EXEC` answers nil when a
//!    watched key changed since the `WATCH` (a conflict: nothing was
//!    written), and `WAIT` answers how many replicas have acknowledged the
//!    writes so far.
//!
//! With `--durability sync` or `semi_sync` (the default is sync) a commit
//! counts only once [`REPLICAS_ACKNOWLEDGED_MIN`] replica has it: a `WAIT`
//! answering 0 is *not* a success. The write did happen on the primary and
//! may or may not survive it, so the attempt's outcome is unknown (counted
//! in `txn_failed` and `txn_outcome_unknown`, never retried). With
//! `--durability async` no `WAIT` is sent. What the primary does with a
//! write before answering (`appendfsync`) is the server's setting.
//!
//! A read-only attempt is one `GET` (one key) or one `MGET` (several: Redis
//! runs one command at a time, so an `MGET` is a snapshot); blind writes
//! are step 2 alone. `--consistency` has no effect: every command goes to
//! the one server named.
//!
//! `WATCH` belongs to a connection, so a connection runs one transaction at
//! a time: `--connections` of them (by default one per VU), each taken by
//! one attempt. A connection that failed (an IO error, a deadline) is
//! dropped and opened again by the next attempt that takes it, so no
//! half-finished `WATCH` or `MULTI` outlives its attempt.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::sync::Mutex;

use super::{Options, Target, TxnError, Values};
use crate::workload::TxnSpec;

/// Replicas that must acknowledge a write (`WAIT`'s first argument) for a
/// synchronous commit to succeed.
pub const REPLICAS_ACKNOWLEDGED_MIN: i64 = 1;
/// The part of `--timeout` a `WAIT` may block: its answer (0 replicas, when
/// none acknowledged) must come back before the attempt's own deadline.
pub const WAIT_TIMEOUT_DIVISOR: u32 = 2;

pub struct Redis {
    addr: String,
    client: redis::Client,
    /// `None`: not open, or dropped after a failure.
    connections: Vec<Mutex<Option<Connection>>>,
    options: Options,
    /// `Some(ms)`: `WAIT` for a replica with this timeout after each
    /// commit.
    wait_ms: Option<u64>,
}

/// One connection and whether it can be used again.
struct Connection {
    inner: MultiplexedConnection,
    /// A pipeline failed on it (an IO error, a deadline, an error reply):
    /// it may still be watching keys or inside a MULTI, so it is dropped.
    broken: bool,
}

/// What the commit pipeline's answers mean.
///
/// `answers` are the replies to `MULTI`, one `SET` per write, `EXEC`, and
/// (when `waited`) `WAIT`.
pub fn commit_outcome(answers: &[Value], writes: usize, waited: bool) -> Result<(), TxnError> {
    let expected = writes + 2 + usize::from(waited);
    if answers.len() != expected {
        return Err(TxnError::Unknown(format!(
            "redis: {} answers to a commit of {writes} writes (expected {expected})",
            answers.len()
        )));
    }
    match &answers[writes + 1] {
        Value::Nil => {
            return Err(TxnError::Conflict(
                "redis: EXEC answered nil: a watched key changed since it was read".into(),
            ));
        }
        Value::Array(results) if results.len() == writes => {}
        other => {
            return Err(TxnError::Unknown(format!("redis: EXEC answered {other:?}")));
        }
    }
    if !waited {
        return Ok(());
    }
    match &answers[writes + 2] {
        Value::Int(n) if *n >= REPLICAS_ACKNOWLEDGED_MIN => Ok(()),
        Value::Int(n) => Err(TxnError::Unknown(format!(
            "redis: WAIT: {n} replica(s) acknowledged the commit, {REPLICAS_ACKNOWLEDGED_MIN} needed (written on the primary only)"
        ))),
        other => Err(TxnError::Unknown(format!("redis: WAIT answered {other:?}"))),
    }
}

/// A value read: a bulk string, or nil for an absent key.
fn value_read(value: Value) -> Result<Option<Vec<u8>>, TxnError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        other => Err(TxnError::Failed(format!("redis: read answered {other:?}"))),
    }
}

/// The values of an `MGET` of `keys` keys.
fn values_read(answer: Value, keys: usize) -> Result<Values, TxnError> {
    match answer {
        Value::Array(values) if values.len() == keys => {
            values.into_iter().map(value_read).collect()
        }
        other => Err(TxnError::Failed(format!(
            "redis: MGET of {keys} keys answered {other:?}"
        ))),
    }
}

/// An error of a step: a failed commit may have happened.
fn classify(what: &str, err: RedisError, committing: bool) -> TxnError {
    let text = format!("redis {what}: {err}");
    let lost = err.is_io_error() || err.is_timeout() || err.is_connection_dropped();
    if committing && lost {
        TxnError::Unknown(text)
    } else {
        TxnError::Failed(text)
    }
}

impl Redis {
    pub async fn connect(addr: &str, options: &Options) -> anyhow::Result<Redis> {
        let client = redis::Client::open(format!("redis://{addr}"))
            .map_err(|e| anyhow::anyhow!("redis://{addr}: {e}"))?;
        let wait_ms = match options.durability {
            trellis_client::Durability::Async => None,
            trellis_client::Durability::Sync | trellis_client::Durability::SemiSync => {
                Some((options.timeout / WAIT_TIMEOUT_DIVISOR).as_millis().max(1) as u64)
            }
        };
        let redis = Redis {
            addr: addr.to_string(),
            client,
            connections: (0..options.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            options: options.clone(),
            wait_ms,
        };
        // Open one now, so that a wrong address fails the run at once.
        let first = redis
            .open()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to redis://{addr}: {e}"))?;
        *redis.connections[0].lock().await = Some(Connection {
            inner: first,
            broken: false,
        });
        Ok(redis)
    }

    async fn open(&self) -> Result<MultiplexedConnection, TxnError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.timeout))
            .set_response_timeout(Some(self.options.timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| TxnError::Failed(format!("redis connect: {e}")))
    }

    /// One pipeline, under the attempt's deadline.
    async fn send(
        &self,
        conn: &mut Connection,
        what: &str,
        committing: bool,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, TxnError> {
        let deadline: Duration = self.options.timeout;
        let result =
            tokio::time::timeout(deadline, pipe.query_async::<Vec<Value>>(&mut conn.inner)).await;
        if !matches!(result, Ok(Ok(_))) {
            conn.broken = true;
        }
        match result {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(e)) => Err(classify(what, e, committing)),
            Err(_) if committing => Err(TxnError::Unknown(format!("redis {what}: timed out"))),
            Err(_) => Err(TxnError::Failed(format!("redis {what}: timed out"))),
        }
    }

    /// One attempt on an open connection.
    async fn attempt(&self, conn: &mut Connection, spec: &TxnSpec) -> Result<Values, TxnError> {
        if spec.is_read_only() {
            let mut pipe = redis::pipe();
            if spec.reads.len() == 1 {
                pipe.cmd("GET").arg(&spec.reads[0]);
            } else {
                pipe.cmd("MGET").arg(&spec.reads);
            }
            let mut answers = self.send(conn, "read", false, &pipe).await?;
            let answer = answers
                .pop()
                .ok_or_else(|| TxnError::Failed("redis: no answer to a read".into()))?;
            return if spec.reads.len() == 1 {
                Ok(vec![value_read(answer)?])
            } else {
                values_read(answer, spec.reads.len())
            };
        }
        let values = if spec.reads.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            pipe.cmd("WATCH")
                .arg(&spec.reads)
                .ignore()
                .cmd("MGET")
                .arg(&spec.reads);
            let mut answers = self.send(conn, "watch and read", false, &pipe).await?;
            let answer = answers
                .pop()
                .ok_or_else(|| TxnError::Failed("redis: no answer to MGET".into()))?;
            values_read(answer, spec.reads.len())?
        };
        let writes = match spec.writes(&values) {
            Ok(w) => w,
            Err(e) => {
                // Leave the connection watching nothing.
                let mut pipe = redis::pipe();
                pipe.cmd("UNWATCH");
                self.send(conn, "unwatch", false, &pipe).await?;
                return Err(TxnError::Failed(e));
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI");
        for (key, value) in &writes {
            pipe.cmd("SET").arg(key).arg(value);
        }
        pipe.cmd("EXEC");
        if let Some(ms) = self.wait_ms {
            pipe.cmd("WAIT").arg(REPLICAS_ACKNOWLEDGED_MIN).arg(ms);
        }
        let answers = self.send(conn, "commit", true, &pipe).await?;
        commit_outcome(&answers, writes.len(), self.wait_ms.is_some())?;
        Ok(values)
    }
}

impl Target for Redis {
    fn describe(&self) -> String {
        let durability = match self.wait_ms {
            Some(ms) => format!(
                "WATCH/MULTI/EXEC, then WAIT {REPLICAS_ACKNOWLEDGED_MIN} {ms}: a commit no replica acknowledged fails"
            ),
            None => "WATCH/MULTI/EXEC, no WAIT (--durability async)".into(),
        };
        format!(
            "redis://{} ({} connection(s), {durability})",
            self.addr,
            self.connections.len()
        )
    }

    fn execute<'a>(
        &'a self,
        conn: usize,
        spec: &'a TxnSpec,
    ) -> BoxFuture<'a, Result<Values, TxnError>> {
        Box::pin(async move {
            // The first idle connection from `conn` on; if all are busy,
            // wait for `conn`'s.
            let n = self.connections.len();
            let mut slot = None;
            for i in 0..n {
                if let Ok(guard) = self.connections[(conn + i) % n].try_lock() {
                    slot = Some(guard);
                    break;
                }
            }
            let mut slot = match slot {
                Some(s) => s,
                None => self.connections[conn % n].lock().await,
            };
            let mut connection = match slot.take() {
                Some(c) => c,
                None => Connection {
                    inner: self.open().await?,
                    broken: false,
                },
            };
            let result = self.attempt(&mut connection, spec).await;
            // Conflicts and replica shortfalls leave it clean (EXEC ends
            // the WATCH); a failed pipeline does not.
            if !connection.broken {
                *slot = Some(connection);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(exec: Value, wait: Option<i64>) -> Vec<Value> {
        let mut a = vec![
            Value::Okay,
            Value::SimpleString("QUEUED".into()),
            Value::SimpleString("QUEUED".into()),
            exec,
        ];
        a.extend(wait.map(Value::Int));
        a
    }

    #[test]
    fn a_commit_succeeds_only_when_a_replica_acknowledged_it() {
        let done = Value::Array(vec![Value::Okay, Value::Okay]);
        assert_eq!(
            commit_outcome(&answers(done.clone(), Some(1)), 2, true),
            Ok(())
        );
        // Written on the primary alone: not a success, and not a conflict
        // to retry either (it may survive or not).
        let err = commit_outcome(&answers(done.clone(), Some(0)), 2, true)
            .expect_err("no replica acknowledged");
        assert!(
            matches!(&err, TxnError::Unknown(m) if m.contains("0 replica")),
            "{err}"
        );
        // No WAIT asked (--durability async): EXEC is the end.
        assert_eq!(commit_outcome(&answers(done, None), 2, false), Ok(()));
    }

    #[test]
    fn a_nil_exec_is_a_conflict_whatever_wait_says() {
        let err = commit_outcome(&answers(Value::Nil, Some(1)), 2, true).expect_err("aborted");
        assert!(matches!(err, TxnError::Conflict(_)), "{err}");
    }

    #[test]
    fn answers_of_another_shape_are_not_taken_for_success() {
        // An EXEC with fewer results than writes, or missing answers.
        let short = Value::Array(vec![Value::Okay]);
        assert!(matches!(
            commit_outcome(&answers(short, Some(1)), 2, true),
            Err(TxnError::Unknown(_))
        ));
        assert!(matches!(
            commit_outcome(&[Value::Okay], 2, true),
            Err(TxnError::Unknown(_))
        ));
        assert!(values_read(Value::Array(vec![Value::Nil]), 2).is_err());
        assert_eq!(
            values_read(
                Value::Array(vec![Value::Nil, Value::BulkString(b"v".to_vec())]),
                2
            ),
            Ok(vec![None, Some(b"v".to_vec())])
        );
    }
}
