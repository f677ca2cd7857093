//! `--report FILE.html`: one self-contained page — inline SVG charts of
//! throughput and latency percentiles per second, and the summary as a
//! table. No script, no stylesheet or font from elsewhere: it reads the
//! same offline, years later.

use std::fmt::Write as _;

use crate::metrics::Second;
use crate::summary::{MetricValue, Summary, format_ms};

/// Chart size in SVG user units.
const CHART_WIDTH: f64 = 900.0;
const CHART_HEIGHT: f64 = 260.0;
/// Margins for the axes' labels.
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_BOTTOM: f64 = 30.0;
const MARGIN_TOP: f64 = 10.0;
const MARGIN_RIGHT: f64 = 20.0;
/// Horizontal grid lines per chart.
const Y_TICKS: usize = 5;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let pow = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * pow)
}

/// One line of a chart.
struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn chart(title: &str, unit: &str, seconds: f64, series: &[Series<'_>]) -> String {
    let mut out = String::new();
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x_max = seconds.max(1.0);
    let plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |v: f64| MARGIN_LEFT + v / x_max * plot_w;
    let y = |v: f64| MARGIN_TOP + plot_h - v / y_max * plot_h;
    let _ = writeln!(out, "<h2>{}</h2>", escape(title));
    let _ = writeln!(
        out,
        r#"<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" aria-label="{}">"#,
        escape(title)
    );
    for i in 0..=Y_TICKS {
        let v = y_max * i as f64 / Y_TICKS as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{MARGIN_LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{} {unit}</text>"##,
            CHART_WIDTH - MARGIN_RIGHT,
            y(v),
            y(v),
            MARGIN_LEFT - 6.0,
            y(v) + 4.0,
            trim_number(v)
        );
    }
    let step = nice_max(x_max / 10.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}s</text>"#,
            x(t),
            CHART_HEIGHT - 10.0,
            trim_number(t)
        );
        t += step;
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            s.color,
            path.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            MARGIN_LEFT + 10.0 + 110.0 * i as f64,
            MARGIN_TOP + 2.0,
            s.color,
            MARGIN_LEFT + 24.0 + 110.0 * i as f64,
            MARGIN_TOP + 11.0,
            escape(s.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn trim_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The whole page.
pub fn html(title: &str, summary: &Summary, timeline: &[Second]) -> String {
    let seconds = timeline.len() as f64;
    let at = |s: &Second| s.second as f64 + 0.5;
    let series = |label, color, f: fn(&Second) -> f64| Series {
        label,
        color,
        points: timeline.iter().map(|s| (at(s), f(s))).collect(),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }}
td:first-child, th:first-child {{ text-align: left; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #cf222e; font-weight: bold; }}
pre {{ background: #f6f8fa; padding: 1em; font-size: 12px; overflow-x: auto; }}
</style></head><body>
<h1>{}</h1>
"#,
        escape(title),
        escape(title)
    );
    out.push_str("<table>\n");
    let run = [
        (
            "started",
            summary
                .started
                .map_or_else(|| "unknown".to_string(), crate::summary::utc_text),
        ),
        ("command", summary.command.clone()),
    ];
    for (k, v) in run.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = writeln!(
            out,
            "<tr><th>{k}</th><td style=\"text-align:left\"><code>{}</code></td></tr>",
            escape(v)
        );
    }
    for (k, v) in &summary.info {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td style=\"text-align:left\">{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    out.push_str("</table>\n");
    if !summary.thresholds.is_empty() || !summary.checks.is_empty() {
        out.push_str("<h2>Thresholds and checks</h2>\n<table><tr><th>criterion</th><th>result</th><th>observed</th></tr>\n");
        for t in &summary.thresholds {
            let (class, mark) = if t.passed {
                ("pass", "✓ pass")
            } else {
                ("fail", "✗ fail")
            };
            let _ = writeln!(
                out,
                "<tr><td>{}: {}</td><td class=\"{class}\">{mark}</td><td>{}</td></tr>",
                escape(&t.threshold.label()),
                escape(&t.threshold.expr),
                escape(&t.observed)
            );
        }
        for c in &summary.checks {
            let (class, mark) = if c.passed {
                ("pass", "✓ pass")
            } else {
                ("fail", "✗ fail")
            };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"{class}\">{mark}</td><td style=\"text-align:left\">{}</td></tr>",
                escape(&c.name),
                escape(&c.detail).replace('\n', "<br>")
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str(&chart(
        "Throughput per second (whole seconds; the last partial one is in the totals only)",
        "/s",
        seconds,
        &[
            series("iterations", "#0969da", |s| s.iterations as f64),
            series("failed", "#cf222e", |s| s.failed as f64),
            series("conflicts", "#bf8700", |s| s.conflicts as f64),
            series("dropped", "#8250df", |s| s.dropped as f64),
        ],
    ));
    out.push_str(&chart(
        "Latency percentiles per second (txn_duration)",
        "ms",
        seconds,
        &[
            series("p50", "#1a7f37", |s| s.p50),
            series("p95", "#bf8700", |s| s.p95),
            series("p99", "#cf222e", |s| s.p99),
        ],
    ));
    out.push_str(&chart(
        "Active VUs",
        "",
        seconds,
        &[series("vus", "#0969da", |s| s.vus as f64)],
    ));
    out.push_str("<h2>Total results</h2>\n<table><tr><th>metric</th><th>count / rate</th><th>avg</th><th>min</th><th>med</th><th>max</th><th>p(90)</th><th>p(95)</th><th>p(99)</th></tr>\n");
    for row in &summary.metrics {
        let label = escape(&row.label());
        let _ = match &row.value {
            MetricValue::Trend(t) => writeln!(
                out,
                "<tr><td>{label}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                t.count,
                format_ms(t.avg),
                format_ms(t.min),
                format_ms(t.med),
                format_ms(t.max),
                format_ms(t.p90),
                format_ms(t.p95),
                format_ms(t.p99)
            ),
            MetricValue::Rate { trues, total } => writeln!(
                out,
                "<tr><td>{label}</td><td>{:.2}% ({trues} of {total})</td><td colspan=\"7\"></td></tr>",
                if *total == 0 {
                    0.0
                } else {
                    *trues as f64 * 100.0 / *total as f64
                }
            ),
            MetricValue::Counter { count, per_second } => writeln!(
                out,
                "<tr><td>{label}</td><td>{count} ({per_second:.2}/s)</td><td colspan=\"7\"></td></tr>"
            ),
            MetricValue::Gauge { value, min, max } => writeln!(
                out,
                "<tr><td>{label}</td><td>{value} (min {min}, max {max})</td><td colspan=\"7\"></td></tr>"
            ),
        };
    }
    out.push_str("</table>\n<h2>Summary as printed</h2>\n<pre>");
    out.push_str(&escape(&summary.render()));
    out.push_str("</pre>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained_and_charts_every_second() {
        let timeline: Vec<Second> = (0..5)
            .map(|s| Second {
                second: s,
                iterations: 100 + s,
                p99: 3.0,
                ..Second::default()
            })
            .collect();
        let summary = Summary {
            started: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400)),
            command: "trellis load --threshold 'p(99)<5ms'".into(),
            ..Summary::default()
        };
        let page = html("trellis load <w1-rmw>", &summary, &timeline);
        assert!(page.contains("1970-01-02T00:00:00Z"), "the run's date");
        assert!(
            page.contains("trellis load --threshold 'p(99)&lt;5ms'"),
            "the command line, escaped"
        );
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            page.contains("trellis load &lt;w1-rmw&gt;"),
            "titles are escaped"
        );
        assert!(
            !page.contains("http://") && !page.contains("https://") && !page.contains("<script"),
            "nothing is fetched from elsewhere"
        );
        assert_eq!(page.matches("<svg").count(), 3);
        let throughput = page.split("<polyline").nth(1).expect("a throughput line");
        assert_eq!(
            throughput
                .split("points=\"")
                .nth(1)
                .expect("points")
                .split('"')
                .next()
                .expect("end")
                .split(' ')
                .count(),
            5,
            "one point per second"
        );
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1234.0), 2000.0);
        assert_eq!(nice_max(0.3), 0.5);
    }
}
