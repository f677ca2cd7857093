//! Thresholds: pass/fail criteria on the end-of-test metrics, as in k6.
//!
//! `--threshold 'METRIC[{TAG:VALUE}]:AGG OP BOUND'`, e.g.
//! `txn_duration:p(99)<50ms`, `txn_duration{path:2pc}:med<=20ms`,
//! `txn_failed:rate<0.01`, `dropped_iterations:count==0`. Parsing rejects
//! unknown metrics, aggregations the metric does not have, and bad bounds,
//! naming the part that is wrong. Evaluation reads a [`Summary`] and never
//! touches the run.

use std::fmt;

use crate::summary::{MetricValue, Summary, format_ms};

/// What kind of metric a name is: which aggregations it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Latencies, in milliseconds: avg, min, med, max, p(N).
    Trend,
    /// A fraction of events that were true: rate.
    Rate,
    /// A count: count, and rate (per second of the run).
    Counter,
    /// A level: value (at the end), min, max.
    Gauge,
}

/// Every metric a run reports, with its kind: the vocabulary thresholds may
/// name.
pub const METRICS: &[(&str, Kind)] = &[
    ("txn_duration", Kind::Trend),
    ("txn_failed", Kind::Rate),
    ("txn_conflicts", Kind::Counter),
    ("txn_retries", Kind::Counter),
    ("txn_outcome_unknown", Kind::Counter),
    ("iterations", Kind::Counter),
    ("dropped_iterations", Kind::Counter),
    ("checks", Kind::Rate),
    ("vus", Kind::Gauge),
    ("vus_max", Kind::Gauge),
];

/// The kind of `name`, if it is a metric a run reports.
pub fn kind_of(name: &str) -> Option<Kind> {
    METRICS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// An aggregation of a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agg {
    Avg,
    Min,
    Med,
    Max,
    /// A percentile, 0 < p ≤ 100.
    P(f64),
    Rate,
    Count,
    Value,
}

impl fmt::Display for Agg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Agg::Avg => f.write_str("avg"),
            Agg::Min => f.write_str("min"),
            Agg::Med => f.write_str("med"),
            Agg::Max => f.write_str("max"),
            Agg::P(p) => write!(f, "p({p})"),
            Agg::Rate => f.write_str("rate"),
            Agg::Count => f.write_str("count"),
            Agg::Value => f.write_str("value"),
        }
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

/// One parsed `--threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The metric, e.g. `txn_duration`.
    pub metric: String,
    /// A tag filter, e.g. `("path", "2pc")`.
    pub tag: Option<(String, String)>,
    pub agg: Agg,
    pub cmp: Cmp,
    /// In the metric's unit: milliseconds for trends, a fraction for rates
    /// (`rate`), events for counts, events per second for a counter's
    /// `rate`.
    pub bound: f64,
    /// The expression as written, e.g. `p(99)<50ms`.
    pub expr: String,
}

impl Threshold {
    /// The metric with its tag, as the summary names it:
    /// `txn_duration{path:2pc}`.
    pub fn label(&self) -> String {
        match &self.tag {
            Some((k, v)) => format!("{}{{{k}:{v}}}", self.metric),
            None => self.metric.clone(),
        }
    }
}

/// Parses one `--threshold`.
pub fn parse(text: &str) -> Result<Threshold, String> {
    let text = text.trim();
    // The metric ends at the first ':' outside a `{...}` tag filter.
    let split = match text.find('{') {
        Some(open) if text[..open].find(':').is_none() => {
            let close = text[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or_else(|| format!("threshold `{text}`: the tag filter has no closing `}}`"))?;
            text[close..].find(':').map(|i| close + i)
        }
        _ => text.find(':'),
    }
    .ok_or_else(|| {
        format!(
            "threshold `{text}` has no `:`: write METRIC:EXPRESSION, e.g. txn_duration:p(99)<50ms"
        )
    })?;
    let (name_part, expr) = (text[..split].trim(), text[split + 1..].trim());
    let (metric, tag) = match name_part.split_once('{') {
        Some((metric, rest)) => {
            let inner = rest.strip_suffix('}').ok_or_else(|| {
                format!("threshold `{text}`: `{name_part}` must end with the tag filter's `}}`")
            })?;
            let (k, v) = inner.split_once(':').ok_or_else(|| {
                format!("threshold `{text}`: tag filter `{{{inner}}}` must be {{TAG:VALUE}}, e.g. {{path:2pc}}")
            })?;
            (
                metric.trim().to_string(),
                Some((k.trim().to_string(), v.trim().to_string())),
            )
        }
        None => (name_part.to_string(), None),
    };
    let kind = kind_of(&metric).ok_or_else(|| {
        let known: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
        format!(
            "threshold `{text}`: unknown metric `{metric}`; known: {}",
            known.join(", ")
        )
    })?;
    let op_at = expr.find(['<', '>', '=', '!']).ok_or_else(|| {
        format!("threshold `{text}`: expression `{expr}` has no comparison (<, <=, >, >=, ==, !=)")
    })?;
    let (agg_text, rest) = (expr[..op_at].trim(), &expr[op_at..]);
    let (cmp, bound_text) = [
        ("<=", Cmp::Le),
        (">=", Cmp::Ge),
        ("==", Cmp::Eq),
        ("!=", Cmp::Ne),
        ("<", Cmp::Lt),
        (">", Cmp::Gt),
    ]
    .iter()
    .find_map(|(op, cmp)| rest.strip_prefix(op).map(|b| (*cmp, b.trim())))
    .ok_or_else(|| {
        format!("threshold `{text}`: `{rest}` does not start with <, <=, >, >=, == or !=")
    })?;
    let agg = parse_agg(agg_text)
        .ok_or_else(|| format!("threshold `{text}`: unknown aggregation `{agg_text}`"))?;
    let allowed = match kind {
        Kind::Trend => matches!(agg, Agg::Avg | Agg::Min | Agg::Med | Agg::Max | Agg::P(_)),
        Kind::Rate => matches!(agg, Agg::Rate),
        Kind::Counter => matches!(agg, Agg::Count | Agg::Rate),
        Kind::Gauge => matches!(agg, Agg::Value | Agg::Min | Agg::Max),
    };
    if !allowed {
        let have = match kind {
            Kind::Trend => "avg, min, med, max, p(N)",
            Kind::Rate => "rate",
            Kind::Counter => "count, rate",
            Kind::Gauge => "value, min, max",
        };
        return Err(format!(
            "threshold `{text}`: `{metric}` has no `{agg_text}`; it has {have}"
        ));
    }
    let bound = parse_bound(kind, agg, bound_text).ok_or_else(|| {
        format!(
            "threshold `{text}`: bound `{bound_text}` is not {}",
            match (kind, agg) {
                (Kind::Trend, _) => "a time such as 50ms, 1.5s, 800us (a bare number is ms)",
                (Kind::Rate, _) => "a fraction such as 0.01, or a percentage such as 1%",
                _ => "a number",
            }
        )
    })?;
    Ok(Threshold {
        metric,
        tag,
        agg,
        cmp,
        bound,
        expr: expr.split_whitespace().collect::<Vec<_>>().join(""),
    })
}

fn parse_agg(text: &str) -> Option<Agg> {
    Some(match text {
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "med" => Agg::Med,
        "max" => Agg::Max,
        "rate" => Agg::Rate,
        "count" => Agg::Count,
        "value" => Agg::Value,
        _ => {
            let p: f64 = text
                .strip_prefix("p(")?
                .strip_suffix(')')?
                .trim()
                .parse()
                .ok()?;
            if !(p > 0.0 && p <= 100.0) {
                return None;
            }
            Agg::P(p)
        }
    })
}

fn parse_bound(kind: Kind, agg: Agg, text: &str) -> Option<f64> {
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    match (kind, agg) {
        (Kind::Trend, _) => {
            for (unit, ms) in [("ms", 1.0), ("us", 1e-3), ("µs", 1e-3), ("s", 1e3)] {
                if let Some(n) = text.strip_suffix(unit) {
                    return number(n).map(|v| v * ms);
                }
            }
            number(text)
        }
        (Kind::Rate, _) => match text.strip_suffix('%') {
            Some(n) => number(n).map(|v| v / 100.0),
            None => number(text),
        },
        _ => number(text),
    }
}

/// A threshold after the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub threshold: Threshold,
    pub passed: bool,
    /// What was measured, e.g. `p(99)=12.31ms`; `no samples` when the
    /// metric saw none (then it passes, as in k6).
    pub observed: String,
}

/// Evaluates `threshold` against the end-of-test metrics.
pub fn evaluate(threshold: &Threshold, summary: &Summary) -> Outcome {
    let value = summary
        .metric(&threshold.metric, threshold.tag.as_ref())
        .and_then(|v| observe(threshold.agg, v));
    match value {
        Some((v, shown)) => Outcome {
            threshold: threshold.clone(),
            passed: threshold.cmp.holds(v, threshold.bound),
            observed: format!("{}={shown}", threshold.agg),
        },
        None => Outcome {
            threshold: threshold.clone(),
            passed: true,
            observed: "no samples".into(),
        },
    }
}

fn observe(agg: Agg, value: &MetricValue) -> Option<(f64, String)> {
    match value {
        MetricValue::Trend(t) => {
            if t.count == 0 {
                return None;
            }
            let v = match agg {
                Agg::Avg => t.avg,
                Agg::Min => t.min,
                Agg::Med => t.med,
                Agg::Max => t.max,
                Agg::P(p) => t.percentile(p)?,
                _ => return None,
            };
            Some((v, format_ms(v)))
        }
        MetricValue::Rate { trues, total } => {
            if *total == 0 {
                return None;
            }
            let v = *trues as f64 / *total as f64;
            Some((v, format!("{:.2}%", v * 100.0)))
        }
        MetricValue::Counter { count, per_second } => match agg {
            Agg::Count => Some((*count as f64, count.to_string())),
            Agg::Rate => Some((*per_second, format!("{per_second:.2}/s"))),
            _ => None,
        },
        MetricValue::Gauge { value, min, max } => {
            let v = match agg {
                Agg::Value => *value,
                Agg::Min => *min,
                Agg::Max => *max,
                _ => return None,
            };
            Some((v, format!("{v}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{MetricRow, TrendStats};

    #[test]
    fn parses_the_forms_of_the_issue() {
        let t = parse("txn_duration:p(99)<50ms").expect("parses");
        assert_eq!(t.metric, "txn_duration");
        assert_eq!(t.agg, Agg::P(99.0));
        assert_eq!(t.cmp, Cmp::Lt);
        assert_eq!(t.bound, 50.0);
        assert_eq!(t.expr, "p(99)<50ms");
        let t = parse("txn_failed:rate<0.01").expect("parses");
        assert_eq!((t.agg, t.cmp, t.bound), (Agg::Rate, Cmp::Lt, 0.01));
        let t = parse("txn_failed:rate <= 1%").expect("parses");
        assert_eq!((t.cmp, t.bound), (Cmp::Le, 0.01));
        let t = parse("txn_duration{path:2pc}:med>=1.5s").expect("parses");
        assert_eq!(t.tag, Some(("path".into(), "2pc".into())));
        assert_eq!(t.label(), "txn_duration{path:2pc}");
        assert_eq!((t.agg, t.cmp, t.bound), (Agg::Med, Cmp::Ge, 1500.0));
        let t = parse("txn_duration:avg<800us").expect("parses");
        assert!((t.bound - 0.8).abs() < 1e-12);
        let t = parse("dropped_iterations:count==0").expect("parses");
        assert_eq!((t.agg, t.cmp, t.bound), (Agg::Count, Cmp::Eq, 0.0));
        let t = parse("txn_duration:p(99.9)!=7").expect("parses");
        assert_eq!((t.agg, t.cmp, t.bound), (Agg::P(99.9), Cmp::Ne, 7.0));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("txn_latency:p(99)<5ms", "`txn_latency`"),
            ("txn_duration", "has no `:`"),
            ("txn_duration:p(99)", "no comparison"),
            ("txn_duration:p(101)<5ms", "`p(101)`"),
            ("txn_duration:rate<5", "has no `rate`"),
            ("txn_failed:p(99)<5", "has no `p(99)`"),
            ("txn_duration:p(99)<5xs", "bound `5xs`"),
            ("txn_failed:rate<a%", "bound `a%`"),
            ("txn_duration{path}:p(99)<5ms", "{TAG:VALUE}"),
            ("txn_duration{path:1pc:p(99)<5ms", "closing"),
        ];
        for (text, needle) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    fn summary() -> Summary {
        let trend = TrendStats {
            count: 100,
            avg: 10.0,
            min: 1.0,
            med: 9.0,
            max: 70.0,
            p90: 20.0,
            p95: 30.0,
            p99: 60.0,
            extra: Vec::new(),
        };
        Summary {
            metrics: vec![
                MetricRow::new("txn_duration", None, MetricValue::Trend(trend.clone())),
                MetricRow::new(
                    "txn_duration",
                    Some(("path", "1pc")),
                    MetricValue::Trend(TrendStats { p99: 5.0, ..trend }),
                ),
                MetricRow::new(
                    "txn_failed",
                    None,
                    MetricValue::Rate {
                        trues: 2,
                        total: 100,
                    },
                ),
                MetricRow::new(
                    "dropped_iterations",
                    None,
                    MetricValue::Counter {
                        count: 3,
                        per_second: 0.5,
                    },
                ),
            ],
            ..Summary::default()
        }
    }

    fn passes(text: &str) -> bool {
        evaluate(&parse(text).expect(text), &summary()).passed
    }

    #[test]
    fn evaluation_compares_the_right_aggregate() {
        assert!(!passes("txn_duration:p(99)<50ms"));
        assert!(passes("txn_duration:p(99)<61ms"));
        assert!(passes("txn_duration{path:1pc}:p(99)<50ms"));
        assert!(passes("txn_duration:p(95)<=30"));
        assert!(!passes("txn_duration:max<70ms"));
        assert!(passes("txn_duration:med<0.01s"));
        assert!(!passes("txn_failed:rate<0.01"));
        assert!(passes("txn_failed:rate<=2%"));
        assert!(!passes("dropped_iterations:count==0"));
        assert!(passes("dropped_iterations:rate<1"));
        let outcome = evaluate(
            &parse("txn_duration:p(99)<50ms").expect("parses"),
            &summary(),
        );
        assert_eq!(outcome.observed, "p(99)=60.00ms");
        // No samples for a tag: passes, and says so.
        let outcome = evaluate(
            &parse("txn_duration{path:2pc}:p(99)<1ms").expect("parses"),
            &summary(),
        );
        assert!(outcome.passed);
        assert_eq!(outcome.observed, "no samples");
    }
}
