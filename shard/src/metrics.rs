//! Prometheus metrics of one shard replica, kept in atomics and rendered as
//! the Prometheus text format, plus the small HTTP endpoint that serves them.
//!
//! Never blocks the write path: recording is a few relaxed atomic adds.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Most metrics requests served at once; more wait in the accept queue.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// A metrics request must arrive and be answered within this time.
pub const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a metrics request we read (we only need the first line).
const METRICS_REQUEST_BYTES_MAX: usize = 4096;

/// A histogram with fixed upper bounds, Prometheus-style (cumulative on
/// render).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation; `value` is in the histogram's unit, and the
    /// sum is kept in millionths of it.
    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6,
            self.count.load(Relaxed)
        );
    }
}

const SECONDS_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const COUNT_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// Every metric of a shard replica.
pub struct Metrics {
    pub appends: AtomicU64,
    pub append_bytes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_seconds: Histogram,
    pub batch_records: Histogram,
    pub commits_local: AtomicU64,
    pub prepares: AtomicU64,
    pub decisions: AtomicU64,
    pub finalizes: AtomicU64,
    pub refusals_conflict: AtomicU64,
    pub refusals_locked: AtomicU64,
    pub reads: AtomicU64,
    pub read_lock_waits: AtomicU64,
    pub wrong_shard: AtomicU64,
    pub snapshots: AtomicU64,
    pub keys: AtomicU64,
    pub prepared: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            appends: AtomicU64::new(0),
            append_bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_seconds: Histogram::new(SECONDS_BOUNDS),
            batch_records: Histogram::new(COUNT_BOUNDS),
            commits_local: AtomicU64::new(0),
            prepares: AtomicU64::new(0),
            decisions: AtomicU64::new(0),
            finalizes: AtomicU64::new(0),
            refusals_conflict: AtomicU64::new(0),
            refusals_locked: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_lock_waits: AtomicU64::new(0),
            wrong_shard: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            prepared: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Called by the log writer after each durable batch.
    pub fn record_fsync(&self, took: Duration, records: u64, bytes: u64) {
        self.fsyncs.fetch_add(1, Relaxed);
        self.appends.fetch_add(records, Relaxed);
        self.append_bytes.fetch_add(bytes, Relaxed);
        self.fsync_seconds.observe(took.as_secs_f64());
        self.batch_records.observe(records as f64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: &[(&str, &str, &AtomicU64)] = &[
            (
                "trellis_wal_appends_total",
                "Records appended to the write-ahead log.",
                &self.appends,
            ),
            (
                "trellis_wal_record_bytes_total",
                "Bytes of framed records written.",
                &self.append_bytes,
            ),
            (
                "trellis_wal_fsyncs_total",
                "fdatasync calls (one per group-commit batch).",
                &self.fsyncs,
            ),
            (
                "trellis_shard_commits_local_total",
                "One-phase commits applied.",
                &self.commits_local,
            ),
            (
                "trellis_shard_prepares_total",
                "Transactions prepared (YES votes).",
                &self.prepares,
            ),
            (
                "trellis_shard_decisions_total",
                "Decisions recorded at this anchor.",
                &self.decisions,
            ),
            (
                "trellis_shard_finalizes_total",
                "Prepared transactions finalized.",
                &self.finalizes,
            ),
            (
                "trellis_shard_refusals_conflict_total",
                "Commits or prepares refused: stale read version.",
                &self.refusals_conflict,
            ),
            (
                "trellis_shard_refusals_locked_total",
                "Commits or prepares refused: key locked.",
                &self.refusals_locked,
            ),
            ("trellis_shard_reads_total", "Keys read.", &self.reads),
            (
                "trellis_shard_read_lock_waits_total",
                "Reads that waited for a write to become durable.",
                &self.read_lock_waits,
            ),
            (
                "trellis_shard_wrong_shard_total",
                "Requests refused for a slot not owned here.",
                &self.wrong_shard,
            ),
            (
                "trellis_shard_snapshots_total",
                "Snapshots written.",
                &self.snapshots,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let gauges: &[(&str, &str, &AtomicU64)] = &[
            (
                "trellis_shard_keys",
                "Keys in the index (tombstones included).",
                &self.keys,
            ),
            (
                "trellis_shard_prepared",
                "Transactions prepared and not yet finalized.",
                &self.prepared,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Relaxed)
            );
        }
        self.fsync_seconds.render(
            &mut out,
            "trellis_wal_fsync_seconds",
            "Latency of one write+fdatasync of a batch.",
        );
        self.batch_records.render(
            &mut out,
            "trellis_wal_batch_records",
            "Records made durable by one fdatasync.",
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Any other
/// path gets 404. Requests are bounded in size, time and concurrency.
pub async fn serve(listener: TcpListener, render: impl Fn() -> String + Send + Sync + 'static) {
    let render = std::sync::Arc::new(render);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(METRICS_REQUEST_TIMEOUT, async {
                let mut buf = vec![0u8; METRICS_REQUEST_BYTES_MAX];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = stream.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                    if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..filled]);
                let line = head.lines().next().unwrap_or_default();
                let (status, body) = if line.starts_with("GET /metrics") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        });
    }
}

/// Binds the metrics endpoint; returns the bound address and the serving
/// future.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(SocketAddr, TcpListener)> {
    let listener = TcpListener::bind(addr).await?;
    Ok((listener.local_addr()?, listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"), "{out}");
    }
}
