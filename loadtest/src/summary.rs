//! The end-of-test summary: what a run measured, laid out like k6's (a
//! THRESHOLDS block with ✓/✗, CHECKS, then TOTAL RESULTS with dotted metric
//! names), and the same data as JSON for `--summary-export`.
//!
//! A [`Summary`] is plain data: the runner fills it from its histograms and
//! counters; thresholds, the text, the JSON and the HTML report only read
//! it.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::threshold;

/// Width of the dotted name column of TOTAL RESULTS.
const NAME_COLUMN: usize = 36;

/// Latency statistics in milliseconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrendStats {
    pub count: u64,
    pub avg: f64,
    pub min: f64,
    pub med: f64,
    pub max: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    /// Other percentiles a threshold asked for: (p, value).
    pub extra: Vec<(f64, f64)>,
}

impl TrendStats {
    /// The `p`th percentile, if it was computed.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        match p {
            50.0 => Some(self.med),
            90.0 => Some(self.p90),
            95.0 => Some(self.p95),
            99.0 => Some(self.p99),
            100.0 => Some(self.max),
            _ => self.extra.iter().find(|(q, _)| *q == p).map(|(_, v)| *v),
        }
    }
}

/// One metric's end-of-test value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Trend(TrendStats),
    /// `trues` of `total` events were true (for `txn_failed`: failed).
    Rate {
        trues: u64,
        total: u64,
    },
    Counter {
        count: u64,
        per_second: f64,
    },
    Gauge {
        value: f64,
        min: f64,
        max: f64,
    },
}

/// A metric, or a tagged sub-metric (`txn_duration{path:2pc}`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub name: String,
    pub tag: Option<(String, String)>,
    pub value: MetricValue,
}

impl MetricRow {
    pub fn new(name: &str, tag: Option<(&str, &str)>, value: MetricValue) -> MetricRow {
        MetricRow {
            name: name.to_string(),
            tag: tag.map(|(k, v)| (k.to_string(), v.to_string())),
            value,
        }
    }

    /// `name` or `name{tag:value}`.
    pub fn label(&self) -> String {
        match &self.tag {
            Some((k, v)) => format!("{}{{{k}:{v}}}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A correctness check run at the end (bank total, history checker).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was found, in words.
    pub detail: String,
}

/// Everything the end of a run reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// How the run was set up, e.g. `("workload", "w1-rmw")`, in order.
    pub info: Vec<(String, String)>,
    /// How long the run took.
    pub elapsed: Duration,
    pub metrics: Vec<MetricRow>,
    pub thresholds: Vec<threshold::Outcome>,
    pub checks: Vec<Check>,
    /// Per-second figures, for the HTML report (not printed).
    pub timeline: Vec<crate::metrics::Second>,
    /// When the run started (for the report and the JSON export; not
    /// printed: the terminal already knows).
    pub started: Option<std::time::SystemTime>,
    /// The command line that made the run, quoted for a POSIX shell.
    pub command: String,
}

/// `t` as UTC in RFC 3339 to the second, e.g. `2026-12-06T00:23:05Z`.
pub fn utc_text(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// `args` as one line a POSIX shell runs as the same command: each
/// argument quoted with `'...'` unless it is made of safe characters only.
pub fn shell_line<I: IntoIterator<Item = String>>(args: I) -> String {
    args.into_iter()
        .map(|a| {
            let safe = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
            if safe {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A latency in ms, k6-style: `812.00µs`, `12.34ms`, `1.20s`.
pub fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.2}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

impl Summary {
    /// The value of `name` with `tag` (None: the untagged metric).
    pub fn metric(&self, name: &str, tag: Option<&(String, String)>) -> Option<&MetricValue> {
        self.metrics
            .iter()
            .find(|m| m.name == name && m.tag.as_ref() == tag)
            .map(|m| &m.value)
    }

    /// Whether any threshold was crossed.
    pub fn thresholds_crossed(&self) -> bool {
        self.thresholds.iter().any(|t| !t.passed)
    }

    /// Whether any check failed.
    pub fn checks_failed(&self) -> bool {
        self.checks.iter().any(|c| !c.passed)
    }

    /// The text summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.info.is_empty() {
            let width = self.info.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in &self.info {
                let _ = writeln!(out, "  {k:>width$}: {v}");
            }
            out.push('\n');
        }
        if !self.thresholds.is_empty() {
            out.push_str("  █ THRESHOLDS\n");
            let mut labels: Vec<String> = Vec::new();
            for t in &self.thresholds {
                let label = t.threshold.label();
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
            for label in labels {
                let _ = writeln!(out, "\n    {label}");
                for t in self
                    .thresholds
                    .iter()
                    .filter(|t| t.threshold.label() == label)
                {
                    let mark = if t.passed { '✓' } else { '✗' };
                    let _ = writeln!(out, "    {mark} '{}' {}", t.threshold.expr, t.observed);
                }
            }
            out.push_str("\n\n");
        }
        if !self.checks.is_empty() {
            out.push_str("  █ CHECKS\n\n");
            for c in &self.checks {
                let mark = if c.passed { '✓' } else { '✗' };
                let _ = writeln!(out, "    {mark} {}", c.name);
                if !c.detail.is_empty() {
                    for line in c.detail.lines() {
                        let _ = writeln!(out, "      {line}");
                    }
                }
            }
            out.push_str("\n\n");
        }
        out.push_str("  █ TOTAL RESULTS\n");
        let all_cells: Vec<Vec<String>> = self
            .metrics
            .iter()
            .filter_map(|m| match &m.value {
                MetricValue::Trend(t) => Some(trend_cells(t)),
                _ => None,
            })
            .collect();
        let widths: Vec<usize> = (0..7)
            .map(|i| {
                all_cells
                    .iter()
                    .map(|c| c[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (section, names) in [
            (
                "TRANSACTIONS",
                &[
                    "txn_duration",
                    "txn_failed",
                    "txn_conflicts",
                    "txn_retries",
                    "txn_outcome_unknown",
                ][..],
            ),
            ("CHECKS", &["checks"][..]),
            (
                "EXECUTION",
                &["iterations", "dropped_iterations", "vus", "vus_max"][..],
            ),
        ] {
            let rows: Vec<&MetricRow> = self
                .metrics
                .iter()
                .filter(|m| names.contains(&m.name.as_str()))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n    {section}");
            for row in rows {
                let name = match &row.tag {
                    Some((k, v)) => format!("  {{ {k}:{v} }}"),
                    None => row.name.clone(),
                };
                let dots = NAME_COLUMN.saturating_sub(name.chars().count());
                let value = match &row.value {
                    MetricValue::Trend(t) => trend_cells(t)
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                        .trim_end()
                        .to_string(),
                    MetricValue::Rate { trues, total } => {
                        let pct = if *total == 0 {
                            0.0
                        } else {
                            *trues as f64 * 100.0 / *total as f64
                        };
                        format!("{:<8} {trues} out of {total}", format!("{pct:.2}%"))
                    }
                    MetricValue::Counter { count, per_second } => {
                        format!("{count:<8} {per_second:.2}/s")
                    }
                    MetricValue::Gauge { value, min, max } => {
                        format!("{:<8} min={min} max={max}", value.to_string())
                    }
                };
                let _ = writeln!(out, "    {name}{}: {value}", ".".repeat(dots));
            }
        }
        let _ = writeln!(
            out,
            "\n\nrunning ({}), {}",
            format_elapsed(self.elapsed),
            self.run_line()
        );
        out
    }

    fn run_line(&self) -> String {
        let count = |name: &str| match self.metric(name, None) {
            Some(MetricValue::Counter { count, .. }) => *count,
            _ => 0,
        };
        let failed = match self.metric("txn_failed", None) {
            Some(MetricValue::Rate { trues, .. }) => *trues,
            _ => 0,
        };
        let iterations = count("iterations");
        format!(
            "{} complete and {failed} failed iterations, {} dropped",
            iterations.saturating_sub(failed),
            count("dropped_iterations")
        )
    }

    /// The summary as JSON (`--summary-export`), in the shape of k6's
    /// end-of-test data: `metrics.NAME.{type, contains, values,
    /// thresholds}`, plus `checks`, `state` and `options`.
    pub fn to_json(&self) -> Value {
        let mut metrics = Map::new();
        for row in &self.metrics {
            let (kind, values) = match &row.value {
                MetricValue::Trend(t) => {
                    let mut v = json!({
                        "avg": t.avg, "min": t.min, "med": t.med, "max": t.max,
                        "p(90)": t.p90, "p(95)": t.p95, "p(99)": t.p99, "count": t.count,
                    });
                    for (p, value) in &t.extra {
                        v[format!("p({p})")] = json!(value);
                    }
                    ("trend", v)
                }
                MetricValue::Rate { trues, total } => (
                    "rate",
                    json!({
                        "rate": if *total == 0 { 0.0 } else { *trues as f64 / *total as f64 },
                        "passes": trues, "fails": total - trues,
                    }),
                ),
                MetricValue::Counter { count, per_second } => {
                    ("counter", json!({ "count": count, "rate": per_second }))
                }
                MetricValue::Gauge { value, min, max } => {
                    ("gauge", json!({ "value": value, "min": min, "max": max }))
                }
            };
            let mut entry = json!({ "type": kind, "values": values });
            if kind == "trend" {
                entry["contains"] = json!("time");
            }
            let label = row.label();
            let thresholds: Map<String, Value> = self
                .thresholds
                .iter()
                .filter(|t| t.threshold.label() == label)
                .map(|t| (t.threshold.expr.clone(), json!({ "ok": t.passed })))
                .collect();
            if !thresholds.is_empty() {
                entry["thresholds"] = Value::Object(thresholds);
            }
            metrics.insert(label, entry);
        }
        let options: Map<String, Value> = self
            .info
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "metrics": metrics,
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "ok": c.passed, "detail": c.detail,
            })).collect::<Vec<_>>(),
            "state": {
                "testRunDurationMs": self.elapsed.as_secs_f64() * 1000.0,
                "startedAt": self.started.map(utc_text),
                "commandLine": self.command,
            },
            "options": options,
        })
    }
}

fn trend_cells(t: &TrendStats) -> Vec<String> {
    [
        ("avg", t.avg),
        ("min", t.min),
        ("med", t.med),
        ("max", t.max),
        ("p(90)", t.p90),
        ("p(95)", t.p95),
        ("p(99)", t.p99),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", format_ms(*v)))
    .collect()
}

/// `0m12.3s`, as k6 prints a run's length.
pub fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs_f64();
    let minutes = (s / 60.0).floor();
    format!("{}m{:04.1}s", minutes as u64, s - minutes * 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built summary: every block and every kind of row.
    fn example() -> Summary {
        let trend = TrendStats {
            count: 1000,
            avg: 2.5,
            min: 0.412,
            med: 2.0,
            max: 1250.0,
            p90: 4.0,
            p95: 5.5,
            p99: 12.345,
            extra: Vec::new(),
        };
        let thresholds = ["txn_duration:p(99)<50ms", "txn_failed:rate<0.01"]
            .iter()
            .map(|t| threshold::parse(t).expect("parses"))
            .collect::<Vec<_>>();
        let mut summary = Summary {
            info: vec![
                ("target".into(), "trellis://127.0.0.1:50051".into()),
                ("workload".into(), "w1-rmw over 100000 keys".into()),
            ],
            elapsed: Duration::from_millis(10_400),
            metrics: vec![
                MetricRow::new("txn_duration", None, MetricValue::Trend(trend.clone())),
                MetricRow::new(
                    "txn_duration",
                    Some(("path", "1pc")),
                    MetricValue::Trend(TrendStats {
                        max: 9.0,
                        ..trend.clone()
                    }),
                ),
                MetricRow::new(
                    "txn_failed",
                    None,
                    MetricValue::Rate {
                        trues: 20,
                        total: 1000,
                    },
                ),
                MetricRow::new(
                    "txn_conflicts",
                    None,
                    MetricValue::Counter {
                        count: 7,
                        per_second: 0.7,
                    },
                ),
                MetricRow::new("checks", None, MetricValue::Rate { trues: 1, total: 1 }),
                MetricRow::new(
                    "iterations",
                    None,
                    MetricValue::Counter {
                        count: 1000,
                        per_second: 100.0,
                    },
                ),
                MetricRow::new(
                    "vus",
                    None,
                    MetricValue::Gauge {
                        value: 0.0,
                        min: 0.0,
                        max: 64.0,
                    },
                ),
            ],
            thresholds: Vec::new(),
            checks: vec![Check {
                name: "bank: the final read sums to the total".into(),
                passed: true,
                detail: "800 over 8 accounts".into(),
            }],
            timeline: Vec::new(),
            started: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_796_430_185)),
            command: "trellis load --vus 64 --duration 10s".into(),
        };
        summary.thresholds = thresholds
            .iter()
            .map(|t| threshold::evaluate(t, &summary))
            .collect();
        summary
    }

    /// The layout, character for character: a change here is a change
    /// people see.
    const GOLDEN: &str = "    target: trellis://127.0.0.1:50051
  workload: w1-rmw over 100000 keys

  █ THRESHOLDS

    txn_duration
    ✓ 'p(99)<50ms' p(99)=12.35ms

    txn_failed
    ✗ 'rate<0.01' rate=2.00%


  █ CHECKS

    ✓ bank: the final read sums to the total
      800 over 8 accounts


  █ TOTAL RESULTS

    TRANSACTIONS
    txn_duration........................: avg=2.50ms min=412.00µs med=2.00ms max=1.25s  p(90)=4.00ms p(95)=5.50ms p(99)=12.35ms
      { path:1pc }......................: avg=2.50ms min=412.00µs med=2.00ms max=9.00ms p(90)=4.00ms p(95)=5.50ms p(99)=12.35ms
    txn_failed..........................: 2.00%    20 out of 1000
    txn_conflicts.......................: 7        0.70/s

    CHECKS
    checks..............................: 100.00%  1 out of 1

    EXECUTION
    iterations..........................: 1000     100.00/s
    vus.................................: 0        min=0 max=64


running (0m10.4s), 980 complete and 20 failed iterations, 0 dropped
";

    #[test]
    fn text_layout_matches_the_golden_copy() {
        let text = example().render();
        if text != GOLDEN {
            panic!("summary layout changed:\n{text}\n--- expected:\n{GOLDEN}");
        }
    }

    #[test]
    fn json_has_k6_shape() {
        let json = example().to_json();
        assert_eq!(json["metrics"]["txn_duration"]["type"], "trend");
        assert_eq!(json["metrics"]["txn_duration"]["contains"], "time");
        assert_eq!(json["metrics"]["txn_duration"]["values"]["p(99)"], 12.345);
        assert_eq!(
            json["metrics"]["txn_duration"]["thresholds"]["p(99)<50ms"]["ok"],
            true
        );
        assert_eq!(
            json["metrics"]["txn_failed"]["thresholds"]["rate<0.01"]["ok"],
            false
        );
        assert_eq!(json["metrics"]["txn_failed"]["values"]["fails"], 980);
        assert_eq!(
            json["metrics"]["txn_duration{path:1pc}"]["values"]["max"],
            9.0
        );
        assert_eq!(json["metrics"]["iterations"]["values"]["count"], 1000);
        assert_eq!(json["checks"][0]["ok"], true);
        assert_eq!(json["state"]["testRunDurationMs"], 10400.0);
        assert_eq!(json["state"]["startedAt"], "2026-12-05T00:23:05Z");
        assert_eq!(
            json["state"]["commandLine"],
            "trellis load --vus 64 --duration 10s"
        );
    }

    #[test]
    fn dates_and_command_lines() {
        let at = |s: u64| utc_text(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(
            shell_line(["trellis", "load", "--threshold", "p(99)<5ms", "it's"].map(String::from)),
            "trellis load --threshold 'p(99)<5ms' 'it'\\''s'"
        );
    }

    #[test]
    fn latencies_are_formatted_with_units() {
        assert_eq!(format_ms(0.0123), "12.30µs");
        assert_eq!(format_ms(5.0), "5.00ms");
        assert_eq!(format_ms(2500.0), "2.50s");
        assert_eq!(format_elapsed(Duration::from_secs(75)), "1m15.0s");
    }
}
