//! Opening a replica: the data directory's lock and meta file, the newest
//! snapshot, then the log replayed after it (a torn tail cut). Refuses to
//! start on corruption or on another group's data; never repairs a log
//! beyond cutting a torn tail.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use trellis_types::{GroupId, Lsn};

use super::retention::LogPins;
use super::{Shard, ShardConfig, ShardError, open_err};
use crate::fsio::{self, File};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::record::Record;
use crate::repl::Repl;
use crate::snapshot;
use crate::state::State;
use crate::wal::{self, Wal};

/// The file a running replica holds locked (flock) in its data directory.
const LOCK_FILE: &str = "LOCK";
/// The file naming the group a data directory belongs to.
const META_FILE: &str = "shard.meta";

/// What recovery did, for the start-up log line and tests.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The snapshot loaded (0: none).
    pub snapshot_lsn: Lsn,
    /// Log records replayed after it.
    pub replayed: u64,
    /// The last record in the log after replay.
    pub last_lsn: Lsn,
    /// Bytes of a torn tail cut from the last segment.
    pub torn_bytes: u64,
    /// How long opening took.
    pub took: Duration,
}

impl Shard {
    /// Opens (or creates) the replica in `config.data_dir`: loads the newest
    /// snapshot, replays the log after it, cuts a torn tail, and starts the
    /// log writer. Refuses to start on corruption, naming file and offset.
    pub fn open(config: ShardConfig, metrics: Arc<Metrics>) -> Result<Arc<Shard>, ShardError> {
        let started = std::time::Instant::now();
        let dir = &config.data_dir;
        fsio::create_dir_all(dir).map_err(|e| open_err(dir, e))?;
        let lock = fsio::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| open_err(dir, e))?;
        // flock; a no-op inside a simulation, where each host has a
        // filesystem of its own (see fsio::File::try_lock).
        lock.try_lock().map_err(|_| {
            open_err(
                dir,
                "another process holds its LOCK file (is a shard already running on it?)",
            )
        })?;
        check_meta(dir, config.group_id)?;
        // A snapshot's log prefix staged but not installed is not part of
        // the log (see log_prefix, "Crash safety").
        crate::log_prefix::discard_staged(dir)?;

        let state = State::new(Ownership::new(config.map_epoch, &config.slots));
        let now = Instant::now();
        let mut recovery = Recovery::default();
        if let Some((lsn, path)) = snapshot::list(dir)?.into_iter().next() {
            let capture = snapshot::read(&path)?;
            state
                .lock()
                .restore(capture, now)
                .map_err(|e| open_err(&path, format!("snapshot cannot be loaded: {e}")))?;
            recovery.snapshot_lsn = lsn;
        }
        let repl = Repl::new(!config.replicated, config.feed_bytes_max, now);
        let replay = {
            let mut guard = state.lock();
            wal::replay(dir, recovery.snapshot_lsn, |raw| {
                let record = Record::decode(raw.kind, raw.payload)?;
                guard.apply(raw.lsn, &record, now)?;
                // What backups may need next is what was logged last.
                repl.feed.push(
                    raw.lsn,
                    raw.kind,
                    prost::bytes::Bytes::copy_from_slice(raw.payload),
                );
                Ok(())
            })?
        };
        if replay.last_lsn > 0 && replay.records == 0 {
            repl.feed.reset(replay.last_lsn);
        }
        recovery.replayed = replay.records;
        recovery.last_lsn = replay.last_lsn;
        recovery.torn_bytes = replay.torn_bytes;
        recovery.took = started.elapsed();

        metrics.keys.set(state.index.len() as u64);
        metrics
            .prepared
            .set(state.lock().core().prepared.len() as u64);
        let wal = Wal::open_with(
            dir,
            replay.last_lsn,
            metrics.clone(),
            config.log.segment_bytes,
        )?;
        let catch_up = crate::pacer::Pacer::new(config.catch_up_bytes_per_sec);
        Ok(Arc::new(Shard {
            catch_up,
            config,
            state,
            wal: RwLock::new(wal),
            repl,
            metrics,
            snapshot_running: AtomicBool::new(false),
            snapshot_mark_bytes: AtomicU64::new(0),
            recovery,
            log_pins: std::sync::Mutex::new(LogPins::default()),
            feed_keep_from: std::sync::atomic::AtomicU64::new(super::retention::FEED_PIN_NOT_KNOWN),
            restored_log_from: std::sync::atomic::AtomicU64::new(0),
            opened_at: Instant::now(),
            gate: Arc::default(),
            _lock: lock,
        }))
    }
}

/// Records which group a data directory belongs to, and refuses to open it
/// as another group's.
fn check_meta(dir: &Path, group_id: GroupId) -> Result<(), ShardError> {
    let path = dir.join(META_FILE);
    match fsio::read_to_string(&path) {
        Ok(text) => {
            let found = text
                .lines()
                .find_map(|l| l.strip_prefix("group_id="))
                .and_then(|v| v.trim().parse::<GroupId>().ok())
                .ok_or_else(|| open_err(&path, "unreadable shard.meta"))?;
            if found != group_id {
                return Err(open_err(
                    dir,
                    format!(
                        "it holds group {found}'s data, not group {group_id}'s; pass --group {found} or use another directory"
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("shard.meta.tmp");
            fsio::write(&tmp, format!("group_id={group_id}\n"))
                .and_then(|()| File::open(&tmp)?.sync_all())
                .and_then(|()| fsio::rename(&tmp, &path))
                .map_err(|e| open_err(&path, e))?;
            wal::sync_dir(dir)?;
            Ok(())
        }
        Err(e) => Err(open_err(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_util::{config, put, txn, value_of};
    use super::super::{Shard, Vote};
    use crate::metrics::Metrics;
    use crate::record::{PrepareRec, ReadRec, WriteRec};
    use crate::repl::Level;

    #[tokio::test]
    async fn snapshot_plus_replay_equals_live_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        for i in 0..200u32 {
            let w = if i % 10 == 9 {
                WriteRec {
                    key: format!("k{}", i % 50).into(),
                    value: None,
                }
            } else {
                put(&format!("k{}", i % 50), &format!("v{i}"))
            };
            shard
                .commit_local(1, txn(i), vec![], vec![w], Level::Sync)
                .await
                .expect("commit");
            if i == 120 {
                assert!(shard.snapshot().await.expect("snapshot").is_some());
            }
        }
        let prepared = PrepareRec {
            txn_id: txn(1000).0.to_vec(),
            reads: vec![ReadRec {
                key: b"k1".to_vec(),
                version: value_of(&shard, "k1").await.map_or(0, |v| v.1),
            }],
            writes: vec![put("k2", "prepared")],
            anchor: 1,
            participants: vec![1, 2],
            exec: 7,
        };
        assert!(matches!(
            shard
                .prepare(1, prepared, Level::Sync)
                .await
                .expect("prepare"),
            Vote::Yes { .. }
        ));
        let mut live = Vec::new();
        for i in 0..50 {
            live.push(value_of(&shard, &format!("k{i}")).await);
        }
        let live_status = shard.status();
        shard.shutdown();
        drop(shard);

        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("reopen");
        assert!(shard.recovery().snapshot_lsn > 0);
        assert!(shard.recovery().replayed > 0 && shard.recovery().replayed < 200);
        for (i, expected) in live.iter().enumerate() {
            assert_eq!(&value_of(&shard, &format!("k{i}")).await, expected, "k{i}");
        }
        let status = shard.status();
        assert_eq!(
            (status.last_lsn, status.prepared, status.keys),
            (live_status.last_lsn, 1, live_status.keys)
        );
        let view = shard.read(&[b"k2".to_vec()]).await.expect("read");
        assert_eq!(
            view[0].lock.as_ref().expect("lock survived restart").txn,
            txn(1000)
        );
    }

    #[tokio::test]
    async fn data_dir_is_locked_and_bound_to_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let err =
            Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect_err("locked");
        assert!(err.to_string().contains("LOCK"), "{err}");
        shard.shutdown();
        drop(shard);
        let mut other = config(dir.path());
        other.group_id = 2;
        let err = Shard::open(other, Arc::new(Metrics::default())).expect_err("wrong group");
        assert!(err.to_string().contains("group 1"), "{err}");
    }
}
