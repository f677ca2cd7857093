//! `trellis bench`: the benchmarks of this machine and of clusters, one
//! module each, behind one subcommand. Every figure is measured in the same
//! run as the baseline it is compared to, and nothing is asserted: these
//! are measurements, not tests.
//!
//! # Layout
//! - [`storage`]: `trellis bench storage`, the storage engine on this disk
//!   (fdatasync baseline, WAL appends, replay, memory per key).
//! - [`txn`]: `trellis bench txn`, 1PC vs 2PC commits on a running cluster.
//! - [`feed`]: `trellis bench feed`, the change feed's commit-to-emit
//!   latency and pace on a running cluster.
//! - [`repl`]: `trellis bench replication`, what replication costs and how
//!   long a failover takes, on clusters it starts itself.
//! - [`percentile`]: the latency summary the cluster benchmarks share.

mod feed;
mod repl;
mod storage;
mod txn;

use std::path::PathBuf;
use std::time::Duration;

/// Longest `--seconds` per measurement.
const SECONDS_MAX: u64 = 3600;
/// Most `--keys` of the storage benchmark's replay and memory measurement.
const KEYS_MAX: u64 = 100_000_000;
/// Highest `--rate` of the feed benchmark, commits per second.
const RATE_MAX: u64 = 100_000;

#[derive(clap::Args)]
#[command(after_help = "\
Kinds (the first argument; storage when omitted):

  storage      The storage engine on this machine's disk, no cluster needed:
               the raw fdatasync rate of one thread appending 4 KiB (the
               baseline); acknowledged WAL appends/s with 1, 16 and 64
               concurrent appenders of 128-byte records, as a ratio to the
               raw rate; replay speed on recovery; memory per key after
               recovering --keys keys of 16-byte keys and 100-byte values.
               Uses a scratch directory under --dir, removed afterwards.

  txn          One-phase vs two-phase commits against a running cluster at
               --addr (2 groups or more, e.g. `trellis dev`): commits/s,
               p50 and p99 at 1 and at 64 concurrent clients, and the
               2PC/1PC latency ratio. It writes keys bench:*.

  feed         The change feed on a running cluster at --addr: one watch from
               now over keys of its own (bench:feed:*), and one-key commits
               started on a clock at each --rate (default 1000 then 5000 a
               second) for --seconds; each event is matched to its commit by
               transaction id. Prints commits/s reached, events/s, and
               commit-to-emit latency p50/p99/max: from the commit's
               acknowledgement to its event at the watcher.

  replication  What replication costs and how long a failover takes, on
               clusters it starts itself (a coordinator and one group of 1,
               2 and 3 replicas as child processes on 127.0.0.1, data under
               --dir, removed afterwards): read-modify-write throughput by
               durability as a ratio to 1 replica, then the median time of
               10 failovers (SIGKILL of the primary of 3 replicas to the
               first write the new primary acknowledges). Needs no cluster.

Every figure is measured in the same run as the baseline it is compared
to; nothing is asserted. Run in release mode, on the disk you care about.

Examples:
  trellis bench storage --dir /path/on/that/disk
  trellis bench storage --seconds 10 --keys 5000000
  trellis dev &   trellis bench txn --addr 127.0.0.1:50051 --seconds 5
  trellis bench feed --addr 127.0.0.1:50051 --seconds 10 --rate 1000,5000
  trellis bench replication --dir /tmp/trellis-bench
  cargo run --release -p trellis -- bench storage --dir .")]
pub struct Args {
    /// What to measure: storage, txn, feed or replication (see below).
    #[arg(value_parser = ["storage", "txn", "feed", "replication"], default_value = "storage")]
    what: String,
    /// txn and feed: the coordinator of the cluster to measure, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
    addr: String,
    /// storage and replication: the directory to work in (a fresh
    /// subdirectory is made and removed afterwards).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seconds each throughput measurement runs.
    #[arg(long, default_value_t = 3, value_parser = crate::flags::u64_in(1, SECONDS_MAX))]
    seconds: u64,
    /// feed: commits per second to measure at, one after the other
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = crate::flags::u64_in(1, RATE_MAX))]
    rate: Vec<u64>,
    /// storage: keys written for the replay and memory measurement.
    #[arg(long, default_value_t = 1_000_000, value_parser = crate::flags::u64_in(1, KEYS_MAX))]
    keys: u64,
}

impl Args {
    /// A flag given to a kind that does not take it (a usage error).
    pub fn misuse(&self) -> Option<String> {
        (!self.rate.is_empty() && self.what != "feed").then(|| {
            format!(
                "--rate belongs to `trellis bench feed`; `trellis bench {}` runs at full speed",
                self.what
            )
        })
    }
}

impl Args {
    /// The coordinator address `txn` and `feed` dial; none for the
    /// others (for the TLS files a running `trellis dev` offers).
    pub(crate) fn addr(&self) -> Option<&str> {
        matches!(self.what.as_str(), "txn" | "feed").then_some(self.addr.as_str())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(args.seconds);
    match args.what.as_str() {
        "replication" => repl::run(&args.dir, seconds),
        "txn" => txn::run(&args.addr, seconds),
        "feed" if args.rate.is_empty() => feed::run(&args.addr, seconds, &feed::RATES_DEFAULT),
        "feed" => feed::run(&args.addr, seconds, &args.rate),
        // "storage", the default: clap admits only the three names.
        _ => storage::run(&args.dir, seconds, args.keys),
    }
}

/// The `p`th percentile of sorted latencies (nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.0), ms(1));
        assert_eq!(percentile(&sorted, 50.0), ms(51));
        assert_eq!(percentile(&sorted, 99.0), ms(99));
        assert_eq!(percentile(&sorted, 100.0), ms(100));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
