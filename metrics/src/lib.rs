//! Prometheus metrics for Trellis processes: a fixed-bucket histogram,
//! helpers that render counters and gauges in the text exposition format,
//! and the small HTTP endpoint that serves `GET /metrics`.
//!
//! Recording never blocks: a few relaxed atomic adds.

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

    /// Appends the histogram in the text format.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
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

/// Upper bounds (seconds) for latency histograms: 100 µs to 2.5 s.
pub const SECONDS_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds for count histograms (batch sizes).
pub const COUNT_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// Appends one counter in the text format.
pub fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
        value.load(Relaxed)
    );
}

/// Appends one gauge in the text format.
pub fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Appends one gauge with a series per label set, e.g. `lag{backup="a"}`.
/// Label values are escaped; an empty `series` still renders HELP and TYPE.
pub fn gauge_family(out: &mut String, name: &str, help: &str, series: &[(Vec<(&str, &str)>, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in series {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

    #[test]
    fn gauge_family_renders_labelled_series() {
        let mut out = String::new();
        gauge_family(
            &mut out,
            "lag",
            "help",
            &[(vec![("backup", "a\"b")], 3.0), (vec![], 0.5)],
        );
        assert!(out.contains("# TYPE lag gauge\n"), "{out}");
        assert!(out.contains("lag{backup=\"a\\\"b\"} 3\n"), "{out}");
        assert!(out.contains("\nlag 0.5\n"), "{out}");
    }
}
