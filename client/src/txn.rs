//! The transaction builder (read → buffer writes → commit) and the retry
//! loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use trellis_types::limits::{SCAN_LIMIT_MAX, TXN_BYTES_MAX, TXN_KEYS_MAX};

use crate::client::{
    Client, CommitRequest, Committed, Consistency, Durability, Item, ScanResult, TxnId, Write,
    check_key, check_value, new_txn_id,
};
use crate::error::{Error, Result};

/// Most attempts [`Client::run_txn`] makes at one transaction.
pub const TXN_ATTEMPTS_MAX: u32 = 10;
/// First backoff between attempts; doubled each time up to
/// [`TXN_BACKOFF_MAX`], with random jitter.
pub const TXN_BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest backoff between attempts.
pub const TXN_BACKOFF_MAX: Duration = Duration::from_millis(1000);

#[derive(Debug)]
struct State {
    txn_id: TxnId,
    /// Key → version seen (0 = absent) and the value then.
    reads: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    /// Key → buffered write.
    writes: BTreeMap<Vec<u8>, Write>,
    durability: Durability,
    consistency: Consistency,
    finished: bool,
}

/// One transaction. Reads record the version they saw; writes are buffered
/// and sent in one Commit with those versions. A read of a key written
/// earlier in the same transaction returns the buffered value; a key read
/// twice returns what the first read saw.
///
/// Cloning gives another handle to the same transaction (so a body passed
/// to [`Client::run_txn`] can move it into an `async` block).
#[derive(Clone)]
pub struct Transaction {
    client: Client,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("txn_id", &hex::encode(self.id()))
            .finish()
    }
}

impl Transaction {
    pub(crate) fn new(client: Client) -> Transaction {
        Transaction {
            client,
            state: Arc::new(Mutex::new(State {
                txn_id: new_txn_id(),
                reads: BTreeMap::new(),
                writes: BTreeMap::new(),
                durability: Durability::default(),
                consistency: Consistency::default(),
                finished: false,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transaction id Commit will carry.
    pub fn id(&self) -> TxnId {
        self.state().txn_id
    }

    /// Durability of the commit.
    pub fn set_durability(&self, durability: Durability) {
        self.state().durability = durability;
    }

    /// Consistency of the reads that follow.
    pub fn set_consistency(&self, consistency: Consistency) {
        self.state().consistency = consistency;
    }

    /// Whether anything was written.
    pub fn has_writes(&self) -> bool {
        !self.state().writes.is_empty()
    }

    /// The value of `key` as this transaction sees it (`None`: absent).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let items = self.get_many(&[key.to_vec()]).await?;
        Ok(items.into_iter().next().and_then(|item| {
            let Item { value, version, .. } = item;
            (version != 0).then_some(value)
        }))
    }

    /// Reads `keys`, one item per key in order. A key buffered by a write
    /// of this transaction shows the buffered value (version: the one read
    /// before, or 0 — or 0 with an empty value after a delete); a key read
    /// before shows that first read.
    pub async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Item>> {
        let (missing, consistency) = {
            let state = self.state();
            if state.finished {
                return Err(Error::Application("the transaction is finished".into()));
            }
            let mut missing: Vec<Vec<u8>> = keys
                .iter()
                .filter(|k| !state.writes.contains_key(*k) && !state.reads.contains_key(*k))
                .cloned()
                .collect();
            missing.sort();
            missing.dedup();
            (missing, state.consistency)
        };
        for key in keys {
            check_key(key)?;
        }
        if !missing.is_empty() {
            let items = self.client.get(&missing, consistency).await?;
            let mut state = self.state();
            for item in items {
                state
                    .reads
                    .entry(item.key)
                    .or_insert((item.version, item.value));
            }
        }
        let state = self.state();
        Ok(keys.iter().map(|k| state.view(k)).collect())
    }

    /// Items whose key starts with `prefix` as this transaction sees them
    /// (buffered writes included), in key order, at most `limit` (0: the
    /// server's default). Every item the server returned is recorded as
    /// read; keys created under the prefix by others are not detected
    /// (no phantom protection).
    pub async fn scan(&self, prefix: &[u8], limit: u32) -> Result<ScanResult> {
        let consistency = self.state().consistency;
        let fetched = self.client.scan(prefix, limit, consistency).await?;
        let limit = if limit == 0 {
            1000
        } else {
            limit.min(SCAN_LIMIT_MAX)
        } as usize;
        let mut state = self.state();
        for item in &fetched.items {
            state
                .reads
                .entry(item.key.clone())
                .or_insert((item.version, item.value.clone()));
        }
        let mut keys: Vec<Vec<u8>> = fetched.items.iter().map(|i| i.key.clone()).collect();
        keys.extend(
            state
                .writes
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        let mut items: Vec<Item> = keys
            .iter()
            .map(|k| state.view(k))
            .filter(|item| {
                item.version != 0
                    || state
                        .writes
                        .get(&item.key)
                        .is_some_and(|w| matches!(w, Write::Put(_)))
            })
            .collect();
        let truncated = fetched.truncated || items.len() > limit;
        items.truncate(limit);
        Ok(ScanResult {
            items,
            truncated,
            sources: fetched.sources,
        })
    }

    /// Buffers a put of `key`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        self.buffer(key, Write::Put(value.to_vec()))
    }

    /// Buffers a delete of `key`.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        check_key(key)?;
        self.buffer(key, Write::Delete)
    }

    fn buffer(&self, key: &[u8], write: Write) -> Result<()> {
        let mut state = self.state();
        if state.finished {
            return Err(Error::Application("the transaction is finished".into()));
        }
        state.writes.insert(key.to_vec(), write);
        let keys = state.reads.len() + state.writes.len();
        if keys > TXN_KEYS_MAX {
            return Err(Error::InvalidArgument(format!(
                "{keys} keys read and written is over TXN_KEYS_MAX ({TXN_KEYS_MAX})"
            )));
        }
        let bytes: usize = state
            .writes
            .iter()
            .map(|(k, w)| {
                k.len()
                    + match w {
                        Write::Put(v) => v.len(),
                        Write::Delete => 0,
                    }
            })
            .sum();
        if bytes > TXN_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "{bytes} bytes of writes is over TXN_BYTES_MAX ({TXN_BYTES_MAX})"
            )));
        }
        Ok(())
    }

    /// Sends the reads and buffered writes in one Commit. The transaction is
    /// finished afterwards, whatever the outcome.
    pub async fn commit(&self) -> Result<Committed> {
        let request = {
            let mut state = self.state();
            if state.finished {
                return Err(Error::Application("the transaction is finished".into()));
            }
            state.finished = true;
            CommitRequest {
                txn_id: state.txn_id,
                // A key also written is validated by its read version too.
                reads: state
                    .reads
                    .iter()
                    .map(|(k, (version, _))| (k.clone(), *version))
                    .collect(),
                writes: std::mem::take(&mut state.writes).into_iter().collect(),
                durability: state.durability,
            }
        };
        if request.writes.is_empty() && request.reads.is_empty() {
            return Ok(Committed {
                txn_id: request.txn_id,
                written: Vec::new(),
            });
        }
        self.client.commit(request).await
    }

    /// Drops the buffered writes; nothing is sent.
    pub fn rollback(&self) {
        let mut state = self.state();
        state.finished = true;
        state.writes.clear();
    }
}

impl State {
    fn view(&self, key: &[u8]) -> Item {
        let read = self.reads.get(key);
        let version = read.map_or(0, |(v, _)| *v);
        match self.writes.get(key) {
            Some(Write::Put(value)) => Item {
                key: key.to_vec(),
                value: value.clone(),
                version: version.max(1),
            },
            Some(Write::Delete) => Item {
                key: key.to_vec(),
                value: Vec::new(),
                version: 0,
            },
            None => Item {
                key: key.to_vec(),
                value: read.map(|(_, v)| v.clone()).unwrap_or_default(),
                version,
            },
        }
    }
}

/// The backoff before attempt `attempt + 1` (attempts count from 1).
pub fn backoff(attempt: u32) -> Duration {
    let base = TXN_BACKOFF_START
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(TXN_BACKOFF_MAX);
    // Jitter: 50% to 100% of the base, so competing retries spread out.
    base.mul_f64(0.5 + trellis_types::rng::unit() * 0.5)
}

impl Client {
    /// Runs `body` in a transaction and commits it. On a retryable abort
    /// (CONFLICT, LOCKED, RESOLVED_ABORT, SLOTS_MOVED), from the commit or from the body, the *whole
    /// body* is run again in a fresh transaction (new id, new reads; the old
    /// buffered writes are dropped, never re-applied), at most
    /// [`TXN_ATTEMPTS_MAX`] times with exponential backoff. Any other error
    /// is returned at once.
    ///
    /// ```no_run
    /// # async fn demo(client: trellis_client::Client) -> trellis_client::Result<()> {
    /// client
    ///     .run_txn(|txn| async move {
    ///         let n: i64 = txn
    ///             .get(b"counter")
    ///             .await?
    ///             .map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
    ///             .unwrap_or(0);
    ///         txn.put(b"counter", (n + 1).to_string().as_bytes())?;
    ///         Ok(())
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn run_txn<T, F, Fut>(&self, mut body: F) -> Result<T>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let txn = self.begin();
            let outcome = match body(txn.clone()).await {
                Ok(value) => txn.commit().await.map(|_| value),
                Err(err) => {
                    txn.rollback();
                    Err(err)
                }
            };
            match outcome {
                Err(err) if err.is_retryable() && attempt < TXN_ATTEMPTS_MAX => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= TXN_BACKOFF_START);
        assert!(backoff(1) >= TXN_BACKOFF_START / 2);
        assert!(backoff(4) >= TXN_BACKOFF_START * 4);
        assert!(backoff(30) <= TXN_BACKOFF_MAX);
    }

    #[test]
    fn view_prefers_buffered_writes() {
        let mut state = State {
            txn_id: [0; 16],
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            durability: Durability::Sync,
            consistency: Consistency::Strong,
            finished: false,
        };
        state.reads.insert(b"a".to_vec(), (7, b"old".to_vec()));
        assert_eq!(state.view(b"a").value, b"old");
        assert_eq!(state.view(b"a").version, 7);
        state
            .writes
            .insert(b"a".to_vec(), Write::Put(b"new".to_vec()));
        assert_eq!(state.view(b"a").value, b"new");
        state.writes.insert(b"a".to_vec(), Write::Delete);
        assert_eq!(state.view(b"a").version, 0);
        state
            .writes
            .insert(b"b".to_vec(), Write::Put(b"x".to_vec()));
        assert_eq!(
            state.view(b"b").version,
            1,
            "a buffered put reads as present"
        );
    }
}
