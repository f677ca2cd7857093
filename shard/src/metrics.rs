//! Prometheus metrics of one shard replica, kept in atomics; read into a
//! [`Scrape`] at each scrape, which `trellis-metrics` encodes with
//! prometheus-client and serves.
//!
//! Never blocks the write path: recording is a few relaxed atomic adds.
//! This module owns every shard metric's name; the names are what the alert
//! rules and the dashboard (`deploy/`) read, so a rename is listed in the
//! README's "Renamed metrics".

use std::time::Duration;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;
use trellis_metrics::{COUNT_BOUNDS, Histogram, Labels, SECONDS_BOUNDS};
use trellis_types::Lsn;
use trellis_types::fail_stop::FailStopCause;

use crate::repl::{CatchUp, Peer, Repl, Role};
pub use trellis_metrics::{Counter, Scrape, bind, serve};

/// Milliseconds in a second: `catch_up_paced_ms` is kept in milliseconds
/// and exposed in seconds.
const MILLIS_PER_SECOND: f64 = 1000.0;

/// [`Metrics::reads_by`]: a STRONG read (always on the primary).
pub const READ_STRONG: usize = 0;
/// [`Metrics::reads_by`]: a STALE read the primary served.
pub const READ_STALE_PRIMARY: usize = 1;
/// [`Metrics::reads_by`]: a STALE read a backup served.
pub const READ_STALE_BACKUP: usize = 2;

/// Events per second between the last two samples of a counter (pure:
/// the time is passed in).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RateMeter {
    last: Option<(Instant, u64)>,
    per_second: f64,
}

impl RateMeter {
    /// Samples `count` at `now`; returns the rate since the previous
    /// sample (0 until there are two).
    pub fn observe(&mut self, now: Instant, count: u64) -> f64 {
        if let Some((at, before)) = self.last {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            if elapsed > 0.0 {
                self.per_second = count.saturating_sub(before) as f64 / elapsed;
            }
        }
        self.last = Some((now, count));
        self.per_second
    }

    /// The rate at the last sample.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

/// Every metric of a shard replica.
pub struct Metrics {
    pub appends: Counter,
    /// Bytes of framed records made durable. Also what triggers a snapshot
    /// (`--snapshot-every-bytes`), so it is kept with recording off too.
    pub append_bytes: AtomicU64,
    pub fsyncs: Counter,
    /// Batches written to the log (each is then synced: `batch_writes -
    /// fsyncs` is the batch written and not yet durable, 0 or 1).
    pub batch_writes: Counter,
    pub fsync_seconds: Histogram,
    pub batch_records: Histogram,
    pub commits_local: Counter,
    pub prepares: Counter,
    pub decisions: Counter,
    pub finalizes: Counter,
    pub refusals_conflict: Counter,
    pub refusals_locked: Counter,
    /// How long a transaction stayed prepared here (its locks held), from
    /// its PREPARE applied to its FINALIZE applied, on the replica that
    /// finalized it as primary.
    pub prepared_hold_seconds: Histogram,
    pub reads: Counter,
    pub read_lock_waits: Counter,
    /// Read requests by consistency and the role that served them:
    /// `[strong on the primary, stale on the primary, stale on a backup]`.
    pub reads_by: [Counter; 3],
    /// STALE reads a backup declined (the caller asks the primary).
    pub stale_declines: Counter,
    /// Staleness of the STALE reads a backup served, in seconds.
    pub staleness_seconds: Histogram,
    /// Read requests per second, all and STALE, sampled once a second
    /// ([`Metrics::sample_read_rates`]) for the cluster status.
    pub read_rates: std::sync::Mutex<(RateMeter, RateMeter)>,
    pub wrong_shard: Counter,
    /// Client calls checked against a user's grants (once per call).
    pub auth_checks: Counter,
    /// Client calls refused for a missing grant.
    pub auth_denied: Counter,
    /// Client calls from nobody the cluster knows.
    pub auth_unauthenticated: Counter,
    pub snapshots: Counter,
    pub keys: Counter,
    pub prepared: Counter,
    pub promotions: Counter,
    pub snapshot_installs: Counter,
    pub snapshots_sent: Counter,
    pub catch_up_bytes: Counter,
    /// Milliseconds catch-up streams waited for the catch-up rate (exposed
    /// as `trellis_repl_catch_up_paced_seconds_total`).
    pub catch_up_paced_ms: Counter,
    pub catch_up_log_records: Counter,
    pub backups_removed: Counter,
    pub backups_added: Counter,
    pub leases_lost: Counter,
    pub replicated_records: Counter,
    /// The last fail-stop noted in the data directory (its cause and Unix
    /// ms), read once at start (`fail_stop::prepare`).
    pub last_fail_stop: OnceLock<(FailStopCause, u64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            appends: Counter::new(),
            append_bytes: AtomicU64::new(0),
            fsyncs: Counter::new(),
            batch_writes: Counter::new(),
            fsync_seconds: Histogram::new(SECONDS_BOUNDS),
            batch_records: Histogram::new(COUNT_BOUNDS),
            commits_local: Counter::new(),
            prepares: Counter::new(),
            decisions: Counter::new(),
            finalizes: Counter::new(),
            refusals_conflict: Counter::new(),
            refusals_locked: Counter::new(),
            prepared_hold_seconds: Histogram::new(SECONDS_BOUNDS),
            reads: Counter::new(),
            read_lock_waits: Counter::new(),
            reads_by: [Counter::new(), Counter::new(), Counter::new()],
            stale_declines: Counter::new(),
            staleness_seconds: Histogram::new(SECONDS_BOUNDS),
            read_rates: std::sync::Mutex::new((RateMeter::default(), RateMeter::default())),
            wrong_shard: Counter::new(),
            auth_checks: Counter::new(),
            auth_denied: Counter::new(),
            auth_unauthenticated: Counter::new(),
            snapshots: Counter::new(),
            keys: Counter::new(),
            prepared: Counter::new(),
            promotions: Counter::new(),
            snapshot_installs: Counter::new(),
            snapshots_sent: Counter::new(),
            catch_up_bytes: Counter::new(),
            catch_up_paced_ms: Counter::new(),
            catch_up_log_records: Counter::new(),
            backups_removed: Counter::new(),
            backups_added: Counter::new(),
            leases_lost: Counter::new(),
            replicated_records: Counter::new(),
            last_fail_stop: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Samples the read counters for [`Metrics::read_rates`].
    pub fn sample_read_rates(&self, now: Instant) {
        let stale =
            self.reads_by[READ_STALE_PRIMARY].get() + self.reads_by[READ_STALE_BACKUP].get();
        let all = self.reads_by[READ_STRONG].get() + stale;
        let mut rates = self.read_rates.lock().expect("rate lock poisoned");
        rates.0.observe(now, all);
        rates.1.observe(now, stale);
    }

    /// Read requests per second, all and STALE, at the last sample.
    pub fn read_rates(&self) -> (f64, f64) {
        let rates = self.read_rates.lock().expect("rate lock poisoned");
        (rates.0.per_second(), rates.1.per_second())
    }

    /// Called by the log writer after each durable batch.
    pub fn record_fsync(&self, took: Duration, records: u64, bytes: u64) {
        self.fsyncs.inc();
        self.appends.add(records);
        self.append_bytes.fetch_add(bytes, Relaxed);
        self.fsync_seconds.observe(took.as_secs_f64());
        self.batch_records.observe(records as f64);
    }

    /// Whether a batch is written to the log and not yet synced: a crash
    /// now loses (or tears) it.
    pub fn log_batch_unsynced(&self) -> bool {
        self.batch_writes.get() > self.fsyncs.get()
    }

    /// Every counter, gauge and histogram of this replica as of now.
    pub fn render(&self) -> Scrape {
        let mut out = Scrape::new();
        let counters: &[(&str, &str, &Counter)] = &[
            (
                "trellis_auth_checks_total",
                "Client calls (routed by the client) checked against the user's grants: one per call, never per key.",
                &self.auth_checks,
            ),
            (
                "trellis_auth_denied_total",
                "Client calls refused PERMISSION_DENIED for a grant the user lacks.",
                &self.auth_denied,
            ),
            (
                "trellis_auth_unauthenticated_total",
                "Client calls refused UNAUTHENTICATED: no user the cluster knows.",
                &self.auth_unauthenticated,
            ),
            (
                "trellis_repl_promotions_total",
                "Times this replica became its group's primary (failovers and restarts).",
                &self.promotions,
            ),
            (
                "trellis_repl_snapshot_installs_total",
                "Snapshots installed from the primary (catch-up past the primary's log feed, or a diverged log).",
                &self.snapshot_installs,
            ),
            (
                "trellis_repl_snapshots_sent_total",
                "Snapshots sent to backups.",
                &self.snapshots_sent,
            ),
            (
                "trellis_repl_catch_up_bytes_total",
                "Bytes sent to backups catching up (snapshot pieces and backlogs), paced by --catch-up-bytes-per-sec.",
                &self.catch_up_bytes,
            ),
            (
                "trellis_repl_catch_up_log_records_total",
                "Records sent to backups from the log on disk (past the in-memory feed).",
                &self.catch_up_log_records,
            ),
            (
                "trellis_repl_backups_removed_total",
                "In-sync backups taken out of the configuration for silence.",
                &self.backups_removed,
            ),
            (
                "trellis_repl_backups_added_total",
                "Learners added to the configuration once caught up.",
                &self.backups_added,
            ),
            (
                "trellis_repl_leases_lost_total",
                "Times this primary's lease lapsed.",
                &self.leases_lost,
            ),
            (
                "trellis_repl_records_received_total",
                "Log records received from the primary (backup).",
                &self.replicated_records,
            ),
            (
                "trellis_wal_appends_total",
                "Records appended to the write-ahead log.",
                &self.appends,
            ),
            (
                "trellis_wal_batch_writes_total",
                "Group-commit batches written to the log (each then synced once).",
                &self.batch_writes,
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
            out.counter(name, help, value.get());
        }
        let by = |consistency: &str, role: &str| -> Labels {
            vec![
                ("consistency".to_string(), consistency.to_string()),
                ("role".to_string(), role.to_string()),
            ]
        };
        out.counter_family(
            "trellis_reads_total",
            "Read requests (Read and Scan) served, by consistency and by the role of the replica that served them.",
            vec![
                (by("strong", "primary"), self.reads_by[READ_STRONG].get()),
                (by("stale", "primary"), self.reads_by[READ_STALE_PRIMARY].get()),
                (by("stale", "backup"), self.reads_by[READ_STALE_BACKUP].get()),
            ],
        );
        out.counter(
            "trellis_stale_read_declines_total",
            "STALE reads this replica, as a backup, could not prove fresh enough and declined (the caller falls back to the primary).",
            self.stale_declines.get(),
        );
        out.histogram(
            "trellis_stale_read_staleness_seconds",
            "Staleness of the STALE reads this replica served as a backup: every value was the committed one at some moment since then.",
            &self.staleness_seconds,
        );
        out.counter(
            "trellis_wal_record_bytes_total",
            "Bytes of framed records written.",
            self.append_bytes.load(Relaxed),
        );
        // Kept in milliseconds on the hot path; exposed in the base unit.
        out.counter_f64(
            "trellis_repl_catch_up_paced_seconds_total",
            "Seconds catch-up streams waited for the catch-up rate.",
            self.catch_up_paced_ms.get() as f64 / MILLIS_PER_SECOND,
        );
        let gauges: &[(&str, &str, &Counter)] = &[
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
            out.gauge(name, help, value.get());
        }
        out.gauge_family(
            "trellis_shard_last_fail_stop_timestamp_seconds",
            "When this replica last stopped because its log failed (Unix time), by cause (fsync, disk_full, io), as noted in its data directory; no series if it never did.",
            self.last_fail_stop
                .get()
                .map(|(cause, unix_ms)| {
                    (
                        vec![("cause".to_string(), cause.name().to_string())],
                        *unix_ms as f64 / MILLIS_PER_SECOND,
                    )
                })
                .into_iter()
                .collect(),
        );
        out.histogram(
            "trellis_shard_prepared_hold_seconds",
            "How long each finalized transaction stayed prepared here, its keys locked: from its PREPARE to its FINALIZE (on the primary that finalized it).",
            &self.prepared_hold_seconds,
        );
        out.histogram(
            "trellis_wal_fsync_seconds",
            "Latency of one write+fdatasync of a batch.",
            &self.fsync_seconds,
        );
        out.histogram(
            "trellis_wal_batch_records",
            "Records made durable by one fdatasync.",
            &self.batch_records,
        );
        out
    }
}

/// Adds the replication gauges of a replica as of `now`: whether it
/// serves, and a primary's view of its backups (a backup shows those
/// families without series).
/// `local` is its durable LSN, `last` its last one.
pub fn render_repl(out: &mut Scrape, repl: &Repl, local: Lsn, last: Lsn, now: Instant) {
    out.gauge_family(
        "trellis_repl_serving",
        "1 if this replica answers clients now (a primary holding its lease, or a standalone shard), else 0.",
        vec![(Vec::new(), if repl.serving(now) { 1.0 } else { 0.0 })],
    );
    let at_risk = repl.at_risk(local, now);
    let view = repl.view();
    let primary = view.role == Role::Primary;
    let peers: Vec<(&String, &Peer)> = if primary {
        view.peers.iter().collect()
    } else {
        Vec::new()
    };
    let backup = |addr: &str| -> Labels { vec![("backup".to_string(), addr.to_string())] };
    let per_peer = |f: &dyn Fn(&Peer) -> f64| -> Vec<(Labels, f64)> {
        peers.iter().map(|(addr, p)| (backup(addr), f(p))).collect()
    };
    out.gauge_family(
        "trellis_repl_lag_records",
        "Primary: records a backup has not acknowledged as durable.",
        per_peer(&|p| last.saturating_sub(p.acked) as f64),
    );
    out.gauge_family(
        "trellis_repl_lag_seconds",
        "Primary: seconds since a backup last acknowledged anything.",
        per_peer(&|p| now.saturating_duration_since(p.last_ack).as_secs_f64()),
    );
    let catching_up: Vec<(&String, CatchUp)> = peers
        .iter()
        .filter_map(|(addr, p)| p.catch_up.map(|c| (*addr, c)))
        .collect();
    for (name, help, value) in [
        (
            "trellis_repl_catch_up_done",
            "Primary: bytes (snapshot) or records (backlog) sent to a backup being caught up.",
            (|c: &CatchUp| c.done) as fn(&CatchUp) -> u64,
        ),
        (
            // Was trellis_repl_catch_up_total: `_total` is for counters.
            "trellis_repl_catch_up_target",
            "Primary: bytes (snapshot) or records (backlog) a backup being caught up needs.",
            |c: &CatchUp| c.total,
        ),
    ] {
        let series: Vec<(Labels, f64)> = catching_up
            .iter()
            .map(|(addr, c)| {
                let mut labels = backup(addr);
                labels.push(("mode".to_string(), c.mode.name().to_string()));
                (labels, value(c) as f64)
            })
            .collect();
        out.gauge_family(name, help, series);
    }
    out.gauge_family(
        "trellis_repl_at_risk_records",
        "Primary: records durable here and on no backup (an ASYNC commit among them is lost if this primary is).",
        vec![(Vec::new(), at_risk.records as f64)],
    );
    out.gauge_family(
        "trellis_repl_at_risk_seconds",
        "Primary: how long the oldest at-risk record has been durable here (0 when none is).",
        vec![(Vec::new(), at_risk.oldest.as_secs_f64())],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_count_between_two_samples_over_their_interval() {
        let t0 = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.observe(t0, 100), 0.0, "one sample gives no rate");
        assert_eq!(meter.observe(t0 + Duration::from_secs(2), 300), 100.0);
        // A sample at the same instant keeps the last rate.
        assert_eq!(meter.observe(t0 + Duration::from_secs(2), 400), 100.0);
        assert_eq!(
            meter.observe(t0 + Duration::from_millis(2500), 400),
            0.0,
            "nothing read since the last sample"
        );
        assert_eq!(meter.per_second(), 0.0);
    }
}
