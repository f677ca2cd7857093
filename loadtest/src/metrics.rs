//! What a run measures while it runs: latency histograms (HdrHistogram, in
//! microseconds) overall and per commit path, counters, the VU level, and a
//! per-second timeline for the HTML report.
//!
//! Every VU records into one [`Recorder`] behind one short lock. Samples are
//! stamped with the clock *inside* the lock, so they arrive in time order
//! and a second can be closed (its percentiles computed, its histogram
//! reused) as soon as a sample of a later second arrives: the timeline keeps
//! a few numbers per second, never a histogram per second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::summary::{MetricRow, MetricValue, TrendStats};
use crate::target::Path;

/// Largest latency a histogram holds exactly; longer ones are recorded as
/// this (saturated). Matches the longest `--timeout` times the attempts.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of the overall histograms.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Significant digits of the per-second histogram (only its percentiles
/// are kept).
const SECOND_SIGNIFICANT_DIGITS: u8 = 2;
/// Most seconds the timeline keeps (a day); later seconds are not charted.
pub const TIMELINE_SECONDS_MAX: usize = 86_400;

/// How an iteration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Certainly not committed (aborted, refused, or out of attempts).
    Failed,
    /// May or may not have committed.
    Unknown,
}

/// One second of the run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Second {
    /// From the start of the run.
    pub second: u64,
    /// Iterations that completed in it.
    pub iterations: u64,
    pub failed: u64,
    pub conflicts: u64,
    pub dropped: u64,
    /// VUs active at its end.
    pub vus: u64,
    /// Latency percentiles of the iterations completed in it, ms.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// One finished iteration.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From its scheduled start (open model) or its start (closed model)
    /// to its final outcome, retries included.
    pub latency: Duration,
    pub path: Path,
    pub outcome: Outcome,
    /// Conflicted attempts.
    pub conflicts: u32,
    /// Attempts after the first.
    pub retries: u32,
}

struct Inner {
    all: Histogram<u64>,
    by_path: Vec<(Path, Histogram<u64>)>,
    iterations: u64,
    failed: u64,
    unknown: u64,
    conflicts: u64,
    retries: u64,
    dropped: u64,
    vus: u64,
    vus_min: u64,
    vus_max: u64,
    vus_allocated: u64,
    current: Second,
    current_hist: Histogram<u64>,
    timeline: Vec<Second>,
}

/// The live metrics of a run.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, digits)
        .expect("constant bounds are valid for HdrHistogram")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Summary statistics of a histogram, with extra percentiles.
fn stats(h: &Histogram<u64>, extra: &[f64]) -> TrendStats {
    let q = |p: f64| ms(h.value_at_quantile(p / 100.0));
    TrendStats {
        count: h.len(),
        avg: h.mean() / 1000.0,
        min: ms(h.min()),
        med: q(50.0),
        max: ms(h.max()),
        p90: q(90.0),
        p95: q(95.0),
        p99: q(99.0),
        extra: extra.iter().map(|p| (*p, q(*p))).collect(),
    }
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            inner: Mutex::new(Inner {
                all: histogram(SIGNIFICANT_DIGITS),
                by_path: Path::ALL
                    .iter()
                    .map(|p| (*p, histogram(SIGNIFICANT_DIGITS)))
                    .collect(),
                iterations: 0,
                failed: 0,
                unknown: 0,
                conflicts: 0,
                retries: 0,
                dropped: 0,
                vus: 0,
                vus_min: 0,
                vus_max: 0,
                vus_allocated: 0,
                current: Second::default(),
                current_hist: histogram(SECOND_SIGNIFICANT_DIGITS),
                timeline: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain counters: a panicking VU leaves nothing half-done worth
        // refusing.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a finished iteration.
    pub fn record(&self, sample: Sample) {
        let mut inner = self.lock();
        let now = self.start.elapsed().as_secs();
        inner.advance(now);
        let us = (sample.latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        inner.all.saturating_record(us);
        if let Some((_, h)) = inner.by_path.iter_mut().find(|(p, _)| *p == sample.path) {
            h.saturating_record(us);
        }
        inner.current_hist.saturating_record(us);
        inner.iterations += 1;
        inner.current.iterations += 1;
        inner.conflicts += u64::from(sample.conflicts);
        inner.current.conflicts += u64::from(sample.conflicts);
        inner.retries += u64::from(sample.retries);
        match sample.outcome {
            Outcome::Committed => {}
            Outcome::Failed => {
                inner.failed += 1;
                inner.current.failed += 1;
            }
            Outcome::Unknown => {
                inner.failed += 1;
                inner.unknown += 1;
                inner.current.failed += 1;
            }
        }
    }

    /// Records an arrival that found no free VU.
    pub fn dropped(&self) {
        let mut inner = self.lock();
        let now = self.start.elapsed().as_secs();
        inner.advance(now);
        inner.dropped += 1;
        inner.current.dropped += 1;
    }

    /// Sets the number of active VUs, and how many exist.
    pub fn set_vus(&self, active: u64, allocated: u64) {
        let mut inner = self.lock();
        let now = self.start.elapsed().as_secs();
        inner.advance(now);
        inner.vus = active;
        inner.vus_min = inner.vus_min.min(active);
        inner.vus_max = inner.vus_max.max(active);
        inner.vus_allocated = inner.vus_allocated.max(allocated);
        inner.current.vus = active;
    }

    /// Closes seconds that have passed with no sample (called every tick).
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = self.start.elapsed().as_secs();
        inner.advance(now);
    }

    /// (iterations, failed, dropped, active VUs) so far, for the progress
    /// line.
    pub fn progress(&self) -> (u64, u64, u64, u64) {
        let inner = self.lock();
        (inner.iterations, inner.failed, inner.dropped, inner.vus)
    }

    /// The per-second timeline: whole seconds only. The last, partial
    /// second of a run is left out (its iterations are in the totals): a
    /// tenth of a second charted as a second would look like a collapse.
    pub fn timeline(&self) -> Vec<Second> {
        let mut inner = self.lock();
        let now = self.start.elapsed().as_secs();
        inner.advance(now);
        inner.timeline.clone()
    }

    /// The end-of-test metrics. `percentiles` are extra ones thresholds
    /// ask for; `tag_paths` splits `txn_duration` by path.
    pub fn rows(&self, elapsed: Duration, percentiles: &[f64]) -> Vec<MetricRow> {
        let inner = self.lock();
        let per_second = |n: u64| {
            let s = elapsed.as_secs_f64();
            if s > 0.0 { n as f64 / s } else { 0.0 }
        };
        let counter = |name: &str, n: u64| {
            MetricRow::new(
                name,
                None,
                MetricValue::Counter {
                    count: n,
                    per_second: per_second(n),
                },
            )
        };
        let mut rows = vec![MetricRow::new(
            "txn_duration",
            None,
            MetricValue::Trend(stats(&inner.all, percentiles)),
        )];
        for (path, h) in &inner.by_path {
            if !h.is_empty() {
                rows.push(MetricRow::new(
                    "txn_duration",
                    Some(("path", path.tag())),
                    MetricValue::Trend(stats(h, percentiles)),
                ));
            }
        }
        rows.push(MetricRow::new(
            "txn_failed",
            None,
            MetricValue::Rate {
                trues: inner.failed,
                total: inner.iterations,
            },
        ));
        rows.push(counter("txn_conflicts", inner.conflicts));
        rows.push(counter("txn_retries", inner.retries));
        rows.push(counter("txn_outcome_unknown", inner.unknown));
        rows.push(counter("iterations", inner.iterations));
        rows.push(counter("dropped_iterations", inner.dropped));
        rows.push(MetricRow::new(
            "vus",
            None,
            MetricValue::Gauge {
                value: inner.vus as f64,
                min: inner.vus_min as f64,
                max: inner.vus_max as f64,
            },
        ));
        rows.push(MetricRow::new(
            "vus_max",
            None,
            MetricValue::Gauge {
                value: inner.vus_allocated as f64,
                min: inner.vus_allocated as f64,
                max: inner.vus_allocated as f64,
            },
        ));
        rows
    }
}

impl Inner {
    /// Closes every second before `now`.
    fn advance(&mut self, now: u64) {
        while self.current.second < now {
            let h = &self.current_hist;
            let q = |p: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    ms(h.value_at_quantile(p))
                }
            };
            let closed = Second {
                p50: q(0.5),
                p95: q(0.95),
                p99: q(0.99),
                max: if h.is_empty() { 0.0 } else { ms(h.max()) },
                ..self.current
            };
            if self.timeline.len() < TIMELINE_SECONDS_MAX {
                self.timeline.push(closed);
            }
            self.current_hist.reset();
            self.current = Second {
                second: self.current.second + 1,
                vus: self.vus,
                ..Second::default()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_outcomes_and_split_paths() {
        let recorder = Recorder::new(Instant::now());
        recorder.set_vus(4, 4);
        for (i, path) in [Path::OnePc, Path::TwoPc, Path::TwoPc].iter().enumerate() {
            recorder.record(Sample {
                latency: Duration::from_millis(10 * (i as u64 + 1)),
                path: *path,
                outcome: if i == 2 {
                    Outcome::Unknown
                } else {
                    Outcome::Committed
                },
                conflicts: 1,
                retries: 1,
            });
        }
        recorder.dropped();
        let rows = recorder.rows(Duration::from_secs(1), &[99.9]);
        let find = |name: &str, tag: Option<&str>| {
            rows.iter()
                .find(|r| r.name == name && r.tag.as_ref().map(|t| t.1.as_str()) == tag)
                .map(|r| r.value.clone())
        };
        let Some(MetricValue::Trend(all)) = find("txn_duration", None) else {
            panic!("{rows:?}")
        };
        assert_eq!(all.count, 3);
        assert!((all.max - 30.0).abs() < 0.1, "{all:?}");
        assert_eq!(all.extra.len(), 1);
        let Some(MetricValue::Trend(two)) = find("txn_duration", Some("2pc")) else {
            panic!("{rows:?}")
        };
        assert_eq!(two.count, 2);
        assert!(
            find("txn_duration", Some("read")).is_none(),
            "empty paths are left out"
        );
        assert_eq!(
            find("txn_failed", None),
            Some(MetricValue::Rate { trues: 1, total: 3 })
        );
        assert!(matches!(
            find("txn_conflicts", None),
            Some(MetricValue::Counter { count: 3, .. })
        ));
        assert!(matches!(
            find("dropped_iterations", None),
            Some(MetricValue::Counter { count: 1, .. })
        ));
        assert!(matches!(
            find("txn_outcome_unknown", None),
            Some(MetricValue::Counter { count: 1, .. })
        ));
    }

    #[test]
    fn timeline_closes_seconds_in_order() {
        let mut inner = Recorder::new(Instant::now())
            .inner
            .into_inner()
            .expect("fresh");
        inner.current_hist.saturating_record(2000);
        inner.current.iterations = 1;
        inner.advance(3);
        assert_eq!(inner.timeline.len(), 3);
        assert_eq!(inner.timeline[0].iterations, 1);
        assert!((inner.timeline[0].p99 - 2.0).abs() < 0.05);
        assert_eq!(inner.timeline[2].second, 2);
        assert_eq!(inner.timeline[2].iterations, 0);
        assert_eq!(inner.current.second, 3);
    }
}
