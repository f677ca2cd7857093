//! The shard inside a deterministic turmoil simulation: one simulated host,
//! its own filesystem that loses every unsynced byte on a crash, and
//! simulated time. These tests exercise the simulation paths of
//! [`crate::fsio`] and the log writer task, with the real recovery code.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use trellis_types::{SlotSet, TxnId};

use crate::engine::{Shard, ShardConfig, ShardError};
use crate::metrics::Metrics;
use crate::record::WriteRec;
use crate::repl::Level;
use crate::state::Outcome;
use crate::wal::WalError;

/// Seed of every simulation here: a failure replays exactly.
const SEED: u64 = 0x7e_1115;
/// Where the shard keeps its data on the simulated host.
const DATA_DIR: &str = "/data";
const HOST: &str = "shard";
/// Concurrent writers on the host (they share group commits).
const WRITERS: u32 = 4;
/// Keys each writer overwrites in turn, so recovery must find the newest
/// acknowledged value, not just any.
const KEYS_PER_WRITER: u32 = 8;
/// Pause between two writes of one writer (simulated time).
const WRITE_PAUSE: Duration = Duration::from_millis(3);
/// How often the host writes a snapshot (recovery then reads a snapshot
/// plus the log after it).
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(40);
/// Crash-and-restart rounds.
const CRASHES: u32 = 4;
/// Acknowledged writes each round waits for before it crashes the host.
const ACKS_PER_ROUND: usize = 60;
/// Bound on the simulation steps any one wait takes.
const STEPS_MAX: usize = 10_000;
/// Writes tried before a test that expects the disk to fail gives up.
const COMMITS_MAX: u32 = 1_000;
/// Opens tried on a disk that fails at random.
const OPEN_ATTEMPTS_MAX: u32 = 64;
/// Disk size of the disk-full test: the data directory's first files fit,
/// a few dozen writes do not.
const DISK_BYTES_MAX: u64 = 8 * 1024;
/// Value size of the failure tests.
const VALUE_BYTES: usize = 256;

fn config() -> ShardConfig {
    ShardConfig {
        data_dir: PathBuf::from(DATA_DIR),
        group_id: 1,
        map_epoch: 1,
        slots: SlotSet::all(),
        replicated: false,
        feed_bytes_max: crate::repl::FEED_BYTES_MAX,
        catch_up_bytes_per_sec: crate::pacer::CATCH_UP_BYTES_PER_SEC,
        log: crate::engine::LogConfig::default(),
    }
}

fn txn(boot: u32, writer: u32, n: u32) -> TxnId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&boot.to_le_bytes());
    id[4..8].copy_from_slice(&writer.to_le_bytes());
    id[8..12].copy_from_slice(&n.to_le_bytes());
    TxnId(id)
}

fn put(key: &str, value: &[u8]) -> WriteRec {
    WriteRec {
        key: key.into(),
        value: Some(value.to_vec()),
    }
}

async fn value_of(shard: &Shard, key: &str) -> Result<Option<Vec<u8>>, ShardError> {
    let views = shard.read(&[key.as_bytes().to_vec()]).await?;
    Ok(views[0]
        .entry
        .as_ref()
        .and_then(|e| e.value().map(<[u8]>::to_vec)))
}

/// What the host has seen, kept outside it so it survives crashes.
#[derive(Debug, Default)]
struct Journal {
    /// Newest acknowledged value of every key.
    acked: BTreeMap<String, Vec<u8>>,
    /// Writes acknowledged in all.
    acks: usize,
    /// Writes asked for and not answered yet, by key: a crash while one is
    /// in flight lands between its write and its fsync, and recovery may
    /// find it or not.
    in_flight: BTreeMap<String, Vec<u8>>,
    /// Times the host opened its shard.
    boots: u32,
    /// Keys the latest boot found intact before writing anything.
    verified: usize,
    /// The durable LSN each boot recovered to.
    recovered_lsns: Vec<u64>,
    /// Bytes of a torn record each boot's recovery cut off the log.
    torn_bytes: Vec<u64>,
}

/// The host's software: opens the shard (recovering whatever the disk kept),
/// checks that every write acknowledged before is there with its newest
/// value, then writes from several tasks and snapshots now and then, until
/// it is crashed.
async fn shard_host(journal: Rc<RefCell<Journal>>) -> turmoil::Result {
    let shard = Shard::open(config(), Arc::new(Metrics::default()))?;
    let (expected, in_flight) = {
        let mut j = journal.borrow_mut();
        (j.acked.clone(), std::mem::take(&mut j.in_flight))
    };
    for (key, value) in &expected {
        let found = value_of(&shard, key).await?;
        if let Some(whole) = found.as_ref().filter(|f| in_flight.get(key) == Some(*f)) {
            // A write in flight at the crash reached the disk whole: it
            // may, it was just never acknowledged. It is the newest now.
            journal
                .borrow_mut()
                .acked
                .insert(key.clone(), whole.clone());
            continue;
        }
        if found.as_ref() != Some(value) {
            return Err(format!(
                "after a crash {key} is {found:?}, but {value:?} was acknowledged"
            )
            .into());
        }
    }
    let boot = {
        let mut j = journal.borrow_mut();
        j.boots += 1;
        j.verified = expected.len();
        j.recovered_lsns.push(shard.durable_lsn());
        j.torn_bytes.push(shard.recovery().torn_bytes);
        j.boots
    };
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let shard = shard.clone();
        let journal = journal.clone();
        writers.push(tokio::task::spawn_local(async move {
            for n in 0.. {
                let key = format!("w{writer}-k{}", n % KEYS_PER_WRITER);
                let value = format!("boot{boot}-n{n}").into_bytes();
                journal
                    .borrow_mut()
                    .in_flight
                    .insert(key.clone(), value.clone());
                let outcome = shard
                    .commit_local(
                        1,
                        txn(boot, writer, n),
                        vec![],
                        vec![put(&key, &value)],
                        Level::Sync,
                    )
                    .await
                    .map_err(|e| format!("{key}: {e}"))?;
                journal.borrow_mut().in_flight.remove(&key);
                if !matches!(outcome, Outcome::Committed { .. }) {
                    return Err(format!("{key} was not committed: {outcome:?}"));
                }
                {
                    let mut j = journal.borrow_mut();
                    j.acked.insert(key, value);
                    j.acks += 1;
                }
                tokio::time::sleep(WRITE_PAUSE).await;
            }
            Ok::<(), String>(())
        }));
    }
    loop {
        tokio::time::sleep(SNAPSHOT_INTERVAL).await;
        shard.snapshot().await?;
        if let Some(done) = writers.iter_mut().find(|w| w.is_finished()) {
            return Err(format!("a writer stopped: {:?}", done.await).into());
        }
    }
}

/// Steps `sim` until `until` holds, at most [`STEPS_MAX`] steps.
fn step_until(
    sim: &mut turmoil::Sim<'_>,
    what: &str,
    mut until: impl FnMut() -> bool,
) -> turmoil::Result {
    for _ in 0..STEPS_MAX {
        if until() {
            return Ok(());
        }
        sim.step()?;
    }
    Err(format!("not within {STEPS_MAX} steps: {what}").into())
}

/// Runs the crash scenario with `seed` and returns what the host saw.
fn crash_scenario(
    seed: u64,
    torn_block: Option<u64>,
) -> Result<Journal, Box<dyn std::error::Error>> {
    let journal = Rc::new(RefCell::new(Journal::default()));
    let mut builder = turmoil::Builder::new();
    builder.rng_seed(seed);
    if let Some(block) = torn_block {
        builder.fs().block_size(block);
    }
    let mut sim = builder.build();
    let host_journal = journal.clone();
    sim.host(HOST, move || shard_host(host_journal.clone()));
    for round in 1..=CRASHES {
        let want = ACKS_PER_ROUND * round as usize;
        step_until(&mut sim, "writes acknowledged", || {
            let j = journal.borrow();
            // With torn writes, crash while a write is unsynced.
            j.acks >= want && (torn_block.is_none() || !j.in_flight.is_empty())
        })?;
        sim.crash(HOST);
        sim.bounce(HOST);
        step_until(&mut sim, "the host recovered", || {
            journal.borrow().boots == round + 1
        })?;
    }
    drop(sim);
    Ok(Rc::try_unwrap(journal)
        .map_err(|_| "the journal is still shared")?
        .into_inner())
}

/// A shard on a simulated host writes from four tasks while snapshots come
/// and go; the host is crashed four times, each time losing whatever was
/// not synced. Every restart must find every acknowledged write with its
/// newest value: an acknowledgement is a promise that the bytes are on
/// disk.
#[test]
fn crashes_lose_no_acknowledged_write() -> turmoil::Result {
    let journal = crash_scenario(SEED, None)?;
    assert_eq!(journal.boots, CRASHES + 1);
    assert_eq!(
        journal.verified,
        (WRITERS * KEYS_PER_WRITER) as usize,
        "the last boot checked every key"
    );
    assert!(
        journal.recovered_lsns.windows(2).all(|w| w[0] < w[1]),
        "each boot recovered more: {:?}",
        journal.recovered_lsns
    );
    Ok(())
}

/// The same seed gives the same run: what was acknowledged, and where each
/// boot's recovery ended, match exactly.
#[test]
fn a_seed_replays_exactly() -> turmoil::Result {
    let first = crash_scenario(SEED, None)?;
    let second = crash_scenario(SEED, None)?;
    assert_eq!(first.acked, second.acked);
    assert_eq!(first.acks, second.acks);
    assert_eq!(first.recovered_lsns, second.recovered_lsns);
    Ok(())
}

/// Writes until one fails; checks that the failure is the log's (not a
/// panic, not a hang), and that the log then refuses every write: after a
/// failed `fdatasync` nothing may be acknowledged again (fail stop).
async fn write_until_the_log_fails(shard: &Shard) -> turmoil::Result {
    let value = vec![0x5a; VALUE_BYTES];
    for n in 0..COMMITS_MAX {
        let key = format!("k{n}");
        match shard
            .commit_local(
                1,
                txn(0, 0, n),
                vec![],
                vec![put(&key, &value)],
                Level::Sync,
            )
            .await
        {
            Ok(Outcome::Committed { .. }) => continue,
            Ok(other) => return Err(format!("{key}: {other:?}").into()),
            Err(ShardError::Wal(WalError::Failed(message))) => {
                if !(message.contains("fdatasync of") || message.contains("write of")) {
                    return Err(format!("unexpected failure: {message}").into());
                }
                let durable = shard.durable_lsn();
                let later = shard
                    .commit_local(
                        1,
                        txn(0, 1, n),
                        vec![],
                        vec![put("after", &value)],
                        Level::Sync,
                    )
                    .await;
                if !matches!(later, Err(ShardError::Wal(WalError::Failed(_)))) {
                    return Err(format!("a write after the failure answered {later:?}").into());
                }
                if shard.durable_lsn() != durable {
                    return Err("the log became durable further after failing".into());
                }
                shard.shutdown();
                return Ok(());
            }
            Err(other) => return Err(format!("{key} failed otherwise: {other}").into()),
        }
    }
    Err(format!("{COMMITS_MAX} writes and none failed").into())
}

/// A disk of a few KiB fills up: the write that does not fit fails with
/// the log's error, and every later write is refused.
#[test]
fn a_full_disk_stops_the_log() -> turmoil::Result {
    let mut builder = turmoil::Builder::new();
    builder.rng_seed(SEED).fs().capacity(DISK_BYTES_MAX);
    let mut sim = builder.build();
    sim.client(HOST, async {
        let shard = Shard::open(config(), Arc::new(Metrics::default()))?;
        write_until_the_log_fails(&shard).await
    });
    sim.run()
}

/// Half of all reads and writes fail: opening may fail (with an error),
/// and once it succeeds the first failed log write stops the log.
#[test]
fn io_errors_stop_the_log() -> turmoil::Result {
    let mut builder = turmoil::Builder::new();
    builder.rng_seed(SEED).fs().io_error_probability(0.5);
    let mut sim = builder.build();
    sim.client(HOST, async {
        let mut failed_opens = 0;
        let shard = loop {
            match Shard::open(config(), Arc::new(Metrics::default())) {
                Ok(shard) => break shard,
                Err(err @ (ShardError::Open { .. } | ShardError::Wal(WalError::Io { .. }))) => {
                    failed_opens += 1;
                    if failed_opens >= OPEN_ATTEMPTS_MAX {
                        return Err(format!("{failed_opens} opens failed, last: {err}").into());
                    }
                }
                Err(other) => return Err(format!("open failed otherwise: {other}").into()),
            }
        };
        write_until_the_log_fails(&shard).await
    });
    sim.run()
}

/// Block size of the torn-write test: smaller than one log record, so a
/// crash can keep part of a record.
const TORN_BLOCK_BYTES: u64 = 16;

/// The simulated disk tears unsynced writes on a crash (keeps a random
/// prefix of 16-byte blocks). Recovery must cut the torn record off and
/// still find every acknowledged write.
#[test]
fn torn_writes_are_cut_and_lose_no_acknowledged_write() -> turmoil::Result {
    let journal = crash_scenario(SEED, Some(TORN_BLOCK_BYTES))?;
    assert_eq!(journal.boots, CRASHES + 1);
    assert_eq!(journal.verified, (WRITERS * KEYS_PER_WRITER) as usize);
    eprintln!("torn bytes cut per boot: {:?}", journal.torn_bytes);
    assert!(
        journal.torn_bytes.iter().any(|&b| b > 0),
        "no recovery found a torn record: {:?}",
        journal.torn_bytes
    );
    Ok(())
}
