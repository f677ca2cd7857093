//! `trellis bench storage`: measures the storage engine on this machine's
//! disk and prints the figures with their ratios to a baseline measured in
//! the same run. Nothing here is a test: no figure is asserted.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use trellis_shard::metrics::Metrics;
use trellis_shard::record::{CommitLocalRec, Record, WriteRec};
use trellis_shard::wal::Wal;
use trellis_shard::{Shard, ShardConfig};
use trellis_types::SlotSet;

/// Removes the benchmark's directory however the run ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs every storage measurement in a scratch directory under `dir`, each
/// throughput one for `seconds`, the replay and memory one over `keys` keys.
pub fn run(dir: &Path, seconds: Duration, keys: u64) -> anyhow::Result<()> {
    let scratch = Scratch(dir.join(format!(".trellis-bench-{}", std::process::id())));
    fs::create_dir_all(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    println!(
        "trellis bench storage: dir {}, {} s per measurement",
        dir.display(),
        seconds.as_secs()
    );
    println!("machine: {} cores, {}", num_cpus(), kernel());
    println!();

    let raw = raw_fdatasync_rate(&scratch.0.join("raw"), seconds)?;
    println!(
        "{:<52} {:>12.0} /s   (baseline)",
        "raw fdatasync, 1 thread, 4 KiB appends", raw
    );
    for appenders in [1usize, 16, 64] {
        let dir = scratch.0.join(format!("wal-{appenders}"));
        fs::create_dir_all(&dir)?;
        let rate = runtime.block_on(wal_append_rate(&dir, appenders, seconds))?;
        println!(
            "{:<52} {:>12.0} /s   {:>6.1}x raw",
            format!("WAL acknowledged appends, {appenders} appenders, 128 B"),
            rate,
            rate / raw
        );
    }

    let dir = scratch.0.join("replay");
    fs::create_dir_all(&dir)?;
    let (records, took, alloc_bytes, rss_bytes) =
        runtime.block_on(replay_and_memory(&dir, keys))?;
    println!(
        "{:<52} {:>12.0} /s   ({records} records in {:.2} s)",
        "replay on recovery",
        records as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let raw_bytes = (16 + 100) as f64;
    let per_key_alloc = alloc_bytes as f64 / keys as f64;
    let per_key_rss = rss_bytes as f64 / keys as f64;
    println!(
        "{:<52} {:>12.0} B    {:>6.2}x raw key+value ({raw_bytes} B)",
        "memory per key, allocated (jemalloc stats)",
        per_key_alloc,
        per_key_alloc / raw_bytes
    );
    println!(
        "{:<52} {:>12.0} B    {:>6.2}x raw key+value",
        "memory per key, resident (RSS growth)",
        per_key_rss,
        per_key_rss / raw_bytes
    );
    Ok(())
}

fn raw_fdatasync_rate(path: &Path, seconds: Duration) -> anyhow::Result<f64> {
    let mut file = File::create(path)?;
    let block = vec![0x5Au8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < seconds {
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn wal_append_rate(dir: &Path, appenders: usize, seconds: Duration) -> anyhow::Result<f64> {
    let wal = Wal::open(dir, 0, Arc::new(Metrics::default()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let payload = Arc::new(vec![0xA5u8; 128]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (wal, stop, acked, payload) =
            (wal.clone(), stop.clone(), acked.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                wal.reserve().await?;
                let lsn = wal.append(1, &payload)?;
                wal.wait_durable(lsn).await?;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, trellis_shard::wal::WalError>(())
        }));
    }
    tokio::time::sleep(seconds).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    wal.shutdown();
    Ok(rate)
}

/// Writes `keys` one-phase commits of one 16-byte key and a 100-byte value
/// each, then recovers a shard from them: replay time, and the memory the
/// recovered index takes.
async fn replay_and_memory(dir: &Path, keys: u64) -> anyhow::Result<(u64, Duration, u64, u64)> {
    let wal = Wal::open(dir, 0, Arc::new(Metrics::default()))?;
    let mut last = 0;
    for i in 0..keys {
        let mut txn_id = [0u8; 16];
        txn_id[..8].copy_from_slice(&i.to_le_bytes());
        let record = Record::CommitLocal(CommitLocalRec {
            txn_id: txn_id.to_vec(),
            writes: vec![WriteRec {
                key: format!("key:{i:012}").into_bytes(),
                value: Some(vec![b'v'; 100]),
            }],
        });
        if i % 1024 == 0 {
            wal.reserve().await?;
        }
        last = wal.append(record.kind(), &record.encode())?;
    }
    wal.wait_durable(last).await?;
    wal.shutdown();
    drop(wal);

    let alloc_before = allocated();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let config = ShardConfig {
        data_dir: dir.to_path_buf(),
        group_id: 1,
        map_epoch: 1,
        slots: SlotSet::all(),
        replicated: false,
        feed_bytes_max: trellis_shard::repl::FEED_BYTES_MAX,
        catch_up_bytes_per_sec: trellis_shard::pacer::CATCH_UP_BYTES_PER_SEC,
        log: trellis_shard::engine::LogConfig::default(),
    };
    let shard = Shard::open(config, Arc::new(Metrics::default()))?;
    let took = started.elapsed();
    let records = shard.recovery().replayed;
    // Pages freed during replay (old hash tables, read buffers) stay
    // resident until the allocator's decay purges them; purge now so RSS
    // measures what the index holds.
    purge_allocator();
    let alloc = allocated().saturating_sub(alloc_before);
    let rss = rss_bytes().saturating_sub(rss_before);
    shard.shutdown();
    Ok((records, took, alloc, rss))
}

/// Returns every unused dirty page of every jemalloc arena to the OS.
#[allow(unsafe_code)]
fn purge_allocator() {
    let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for arena in 0..arenas {
        let name = format!("arena.{arena}.purge\0");
        // SAFETY: `arena.<i>.purge` is a void mallctl: it reads and writes
        // nothing, so the pointer-free call below is what it expects.
        let _ = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
    }
}

fn allocated() -> u64 {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as u64
}

fn rss_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... in pages.
    let statm = fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".into())
}
