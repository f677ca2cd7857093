//! `--out json=FILE`: one JSON object per line, in k6's shape — a `Metric`
//! line the first time a metric appears, then a `Point` per sample:
//!
//! ```text
//! {"type":"Metric","metric":"txn_duration","data":{"name":"txn_duration","type":"trend","contains":"time","thresholds":[],"submetrics":null}}
//! {"type":"Point","metric":"txn_duration","data":{"time":"2026-01-02T03:04:05.678Z","value":1.234,"tags":{"path":"1pc","outcome":"committed","workload":"w1-rmw"}}}
//! ```
//!
//! VUs hand points to a writer thread through a bounded queue
//! ([`POINTS_QUEUE_MAX`]); when it is full they wait (after their latency
//! was taken), so a slow disk slows the run rather than losing points.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::mpsc;

use crate::threshold::{Kind, kind_of};

/// Points waiting for the writer.
pub const POINTS_QUEUE_MAX: usize = 65_536;

/// One sample.
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: &'static str,
    pub time: SystemTime,
    pub value: f64,
    pub tags: Vec<(&'static str, String)>,
}

/// The sending side; cloning is cheap.
#[derive(Clone, Debug)]
pub struct Points {
    tx: mpsc::Sender<Message>,
}

#[derive(Debug)]
enum Message {
    Point(Point),
    /// Write what came before, then stop (points sent later are dropped:
    /// only iterations abandoned at the end send any).
    End,
}

impl Points {
    pub async fn send(&self, point: Point) {
        // Fails only once the writer stopped after `finish`.
        let _ = self.tx.send(Message::Point(point)).await;
    }

    /// Asks the writer to flush and stop; join its handle afterwards.
    pub async fn finish(&self) {
        let _ = self.tx.send(Message::End).await;
    }
}

/// Opens `path` and starts the writer thread; join the handle after
/// [`Points::finish`].
pub fn start(path: &Path) -> anyhow::Result<(Points, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("creating --out file {}: {e}", path.display()))?;
    let (tx, mut rx) = mpsc::channel::<Message>(POINTS_QUEUE_MAX);
    let shown = path.display().to_string();
    let handle = std::thread::Builder::new()
        .name("load-out-json".into())
        .spawn(move || -> anyhow::Result<()> {
            let mut out = std::io::BufWriter::new(file);
            let mut declared = HashSet::new();
            while let Some(Message::Point(point)) = rx.blocking_recv() {
                if declared.insert(point.metric) {
                    writeln!(out, "{}", metric_line(point.metric))?;
                }
                writeln!(out, "{}", point_line(&point))?;
            }
            out.flush()
                .map_err(|e| anyhow::anyhow!("writing --out file {shown}: {e}"))?;
            Ok(())
        })?;
    Ok((Points { tx }, handle))
}

fn metric_line(metric: &str) -> String {
    let kind = match kind_of(metric) {
        Some(Kind::Trend) => "trend",
        Some(Kind::Rate) => "rate",
        Some(Kind::Gauge) => "gauge",
        _ => "counter",
    };
    let mut data = json!({
        "name": metric, "type": kind, "contains": "default",
        "thresholds": [], "submetrics": null,
    });
    if kind == "trend" {
        data["contains"] = json!("time");
    }
    json!({ "type": "Metric", "metric": metric, "data": data }).to_string()
}

fn point_line(point: &Point) -> String {
    let tags: serde_json::Map<String, serde_json::Value> = point
        .tags
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "type": "Point",
        "metric": point.metric,
        "data": { "time": rfc3339(point.time), "value": point.value, "tags": tags },
    })
    .to_string()
}

/// `2026-01-02T03:04:05.678Z` (UTC, milliseconds).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (the "days from civil" inverse, by 400-year eras).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_have_k6_shape() {
        let metric: serde_json::Value =
            serde_json::from_str(&metric_line("txn_duration")).expect("json");
        assert_eq!(metric["type"], "Metric");
        assert_eq!(metric["data"]["type"], "trend");
        assert_eq!(metric["data"]["contains"], "time");
        let point: serde_json::Value = serde_json::from_str(&point_line(&Point {
            metric: "iterations",
            time: SystemTime::UNIX_EPOCH,
            value: 1.0,
            tags: vec![("workload", "w1-rmw".into())],
        }))
        .expect("json");
        assert_eq!(point["type"], "Point");
        assert_eq!(point["metric"], "iterations");
        assert_eq!(point["data"]["value"], 1.0);
        assert_eq!(point["data"]["tags"]["workload"], "w1-rmw");
    }
}
