//! Prometheus metrics for Trellis processes: a lock-free fixed-bucket
//! histogram, a [`Scrape`] that gathers every value at scrape time and is
//! encoded by the `prometheus-client` crate, and the small HTTP endpoint that
//! serves `GET /metrics` (over HTTPS with [`serve_tls`]).
//!
//! Recording never blocks: a few relaxed atomic adds. Hot paths keep their
//! own `AtomicU64`s and [`Histogram`]s; nothing is registered with a
//! long-lived registry. Each scrape reads them into a [`Scrape`], which is a
//! `prometheus-client` [`Collector`], and encodes it. prometheus-client's own
//! `Histogram` takes a mutex on every observation (the WAL writer and every
//! commit observe one); ours stays a few atomic adds and hands its buckets to
//! the encoder.
//!
//! prometheus-client writes OpenMetrics text. A scraper that asks for it
//! (`Accept: application/openmetrics-text`, as Prometheus does) gets it; any
//! other gets the same families in the Prometheus text format 0.0.4 (what
//! `promtool check metrics` reads), whose only differences here are the
//! `_total` on a counter's `# HELP`/`# TYPE` name and no `# EOF`.
//!
//! Recording can be switched off for the whole process ([`set_recording`],
//! from `trellis --metrics-recording off`), to measure what it costs: then
//! every [`Counter`] and [`Histogram`] skips its atomic adds after one
//! relaxed load of a flag, so the hot paths do none of the recording work.
//! The endpoint still serves what is computed at scrape time.
//!
//! This crate must never know a metric's name: the shard and the coordinator
//! own theirs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Most metrics requests served at once; more wait in the accept queue.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// A metrics request must arrive and be answered within this time.
pub const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a metrics request we read (we only need the head).
const METRICS_REQUEST_BYTES_MAX: usize = 4096;
/// Content type of the Prometheus text format 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";
/// Content type of OpenMetrics text 1.0.0.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The media type a scraper names in `Accept` to get OpenMetrics.
const OPENMETRICS_MEDIA_TYPE: &str = "application/openmetrics-text";
/// The suffix every counter's series carries (prometheus-client appends it).
const COUNTER_SUFFIX: &str = "_total";
/// The line that ends an OpenMetrics exposition.
const OPENMETRICS_EOF: &str = "# EOF";

/// Whether hot paths record: on unless [`set_recording`] turned it off.
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off for the whole process. Meant to be called
/// once, at start, before any traffic (the CLI's `--metrics-recording`):
/// counts made before a switch stay as they are.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Relaxed);
}

/// Whether [`Counter`]s and [`Histogram`]s record now (one relaxed load).
#[inline]
pub fn recording() -> bool {
    RECORDING.load(Relaxed)
}

/// A counter, or an integer gauge, that a hot path keeps: a relaxed
/// atomic, left alone while recording is off ([`set_recording`]).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n` (if recording).
    #[inline]
    pub fn add(&self, n: u64) {
        if recording() {
            self.0.fetch_add(n, Relaxed);
        }
    }

    /// Adds one (if recording).
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets a gauge to `value` (if recording).
    #[inline]
    pub fn set(&self, value: u64) {
        if recording() {
            self.0.store(value, Relaxed);
        }
    }

    /// Its value now.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed upper bounds, Prometheus-style (cumulative when
/// encoded). Lock-free: an observation is three relaxed atomic adds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending) and a `+Inf` bucket.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation (if recording); `value` is in the
    /// histogram's unit, and the sum is kept in millionths of it.
    #[inline]
    pub fn observe(&self, value: f64) {
        if !recording() {
            return;
        }
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Its values now: the sum, the count, and each bucket's upper bound
    /// with the observations in it alone (not cumulative), `+Inf` last.
    fn snapshot(&self) -> HistogramValue {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Relaxed)))
            .collect();
        HistogramValue {
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: self.count.load(Relaxed),
            buckets,
        }
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

/// Label pairs of one series, e.g. `[("backup", "10.0.0.2:7001")]`.
pub type Labels = Vec<(String, String)>;

/// A histogram's values as read at a scrape.
#[derive(Debug, Clone)]
struct HistogramValue {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone); `+Inf` last.
    buckets: Vec<(f64, u64)>,
}

/// One series' value as read at a scrape.
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    /// A counter of a fractional quantity (seconds).
    CounterFloat(f64),
    /// A gauge kept as an integer (rendered without a fraction).
    GaugeInt(u64),
    Gauge(f64),
    Histogram(HistogramValue),
}

/// One metric family: its name as exposed (a counter's without `_total`,
/// which the encoder appends), its help, and its series.
#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

/// Every metric family of a process as read at one scrape: filled by the
/// shard's or the coordinator's `render`, encoded by prometheus-client (it
/// is the [`Collector`] of a registry built for that scrape).
///
/// Families appear in the order they were added; a family may have no
/// series (it still shows its `# HELP` and `# TYPE`).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    /// An empty scrape.
    pub fn new() -> Self {
        Scrape::default()
    }

    /// Adds one unlabelled counter. `name` is its series name, ending in
    /// `_total` (the name dashboards and alerts use).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counter_family(name, help, vec![(Vec::new(), value)]);
    }

    /// Adds one unlabelled counter of a fractional quantity (seconds, in
    /// base units); `name` ends in `_total`.
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        let family = counter_family_name(name);
        self.push(
            family,
            help,
            MetricType::Counter,
            vec![(Vec::new(), Value::CounterFloat(value))],
        );
    }

    /// Adds one counter with a series per label set; `name` ends in
    /// `_total`.
    pub fn counter_family(&mut self, name: &str, help: &str, series: Vec<(Labels, u64)>) {
        let family = counter_family_name(name);
        self.push(
            family,
            help,
            MetricType::Counter,
            series
                .into_iter()
                .map(|(labels, v)| (labels, Value::Counter(v)))
                .collect(),
        );
    }

    /// Adds one unlabelled gauge with an integer value.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.push(
            name,
            help,
            MetricType::Gauge,
            vec![(Vec::new(), Value::GaugeInt(value))],
        );
    }

    /// Adds one gauge with a series per label set, e.g.
    /// `lag{backup="a"}`. An empty `series` still shows HELP and TYPE.
    pub fn gauge_family(&mut self, name: &str, help: &str, series: Vec<(Labels, f64)>) {
        self.push(
            name,
            help,
            MetricType::Gauge,
            series
                .into_iter()
                .map(|(labels, v)| (labels, Value::Gauge(v)))
                .collect(),
        );
    }

    /// Adds one histogram with a series per label set (one with no labels
    /// for a plain histogram).
    pub fn histogram_family(&mut self, name: &str, help: &str, series: &[(Labels, &Histogram)]) {
        self.push(
            name,
            help,
            MetricType::Histogram,
            series
                .iter()
                .map(|(labels, h)| (labels.clone(), Value::Histogram(h.snapshot())))
                .collect(),
        );
    }

    /// Adds one unlabelled histogram.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.histogram_family(name, help, &[(Vec::new(), histogram)]);
    }

    fn push(&mut self, name: &str, help: &str, kind: MetricType, series: Vec<(Labels, Value)>) {
        assert!(
            self.families.iter().all(|f| f.name != name),
            "metric family {name} added twice"
        );
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            series,
        });
    }

    /// The scrape in OpenMetrics text, `# EOF` last.
    pub fn openmetrics(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The scrape in the Prometheus text format 0.0.4: the OpenMetrics text
    /// with each counter's `# HELP` and `# TYPE` named as its series are
    /// (with `_total`), and without `# EOF`.
    pub fn text(&self) -> String {
        let counters: BTreeSet<&str> = self
            .families
            .iter()
            .filter(|f| matches!(f.kind, MetricType::Counter))
            .map(|f| f.name.as_str())
            .collect();
        let mut out = String::new();
        for line in self.openmetrics().lines() {
            if line == OPENMETRICS_EOF {
                continue;
            }
            let meta = ["# HELP ", "# TYPE "]
                .into_iter()
                .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
            match meta {
                Some((prefix, rest)) => {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    out.push_str(prefix);
                    out.push_str(name);
                    if counters.contains(name) {
                        out.push_str(COUNTER_SUFFIX);
                    }
                    out.push(' ');
                    out.push_str(tail);
                }
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let mut metric =
                encoder.encode_descriptor(&family.name, &family.help, None, family.kind)?;
            for (labels, value) in &family.series {
                encode_series(metric.encode_family(labels)?, value)?;
            }
        }
        Ok(())
    }
}

/// Encodes one series' value.
fn encode_series(mut metric: MetricEncoder<'_>, value: &Value) -> Result<(), std::fmt::Error> {
    match value {
        Value::Counter(v) => ConstCounter::new(*v).encode(metric),
        Value::CounterFloat(v) => ConstCounter::new(*v).encode(metric),
        Value::GaugeInt(v) => ConstGauge::new(*v).encode(metric),
        Value::Gauge(v) => ConstGauge::new(*v).encode(metric),
        Value::Histogram(h) => metric.encode_histogram::<Labels>(h.sum, h.count, &h.buckets, None),
    }
}

/// A counter's family name: its series name without `_total`, which the
/// encoder appends again. Panics if `name` lacks it: every counter name is
/// a constant in the code, and one without `_total` breaks the convention.
fn counter_family_name(name: &str) -> &str {
    name.strip_suffix(COUNTER_SUFFIX)
        .unwrap_or_else(|| panic!("a counter's name ends in {COUNTER_SUFFIX}: {name}"))
}

/// Whether a request head asks for OpenMetrics in its `Accept` header.
fn wants_openmetrics(head: &str) -> bool {
    head.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept") && value.contains(OPENMETRICS_MEDIA_TYPE)
        })
    })
}

/// Serves `GET /metrics` on `listener` until the task is dropped: each
/// request calls `scrape` and answers in OpenMetrics if it asks for it, else
/// in the text format 0.0.4. Any other path gets 404. Requests are bounded in
/// size, time and concurrency.
pub async fn serve(listener: TcpListener, scrape: impl Fn() -> Scrape + Send + Sync + 'static) {
    serve_with(listener, None::<fn() -> Arc<rustls::ServerConfig>>, scrape).await
}

/// [`serve`] over HTTPS: each connection's TLS handshake uses the config
/// `tls` returns at that moment (so a reloaded certificate serves the next
/// scrape), within [`METRICS_REQUEST_TIMEOUT`] like the request itself.
pub async fn serve_tls(
    listener: TcpListener,
    tls: impl Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static,
    scrape: impl Fn() -> Scrape + Send + Sync + 'static,
) {
    serve_with(listener, Some(tls), scrape).await
}

async fn serve_with<T>(
    listener: TcpListener,
    tls: Option<T>,
    scrape: impl Fn() -> Scrape + Send + Sync + 'static,
) where
    T: Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static,
{
    let scrape = Arc::new(scrape);
    let tls = tls.map(Arc::new);
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let scrape = scrape.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(METRICS_REQUEST_TIMEOUT, async {
                match tls {
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config());
                        answer(acceptor.accept(stream).await?, &*scrape).await
                    }
                    None => answer(stream, &*scrape).await,
                }
            })
            .await;
        });
    }
}

/// Reads one request's head from `stream` and answers it.
async fn answer<S>(mut stream: S, scrape: &(impl Fn() -> Scrape + ?Sized)) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    let (status, content_type, body) = if !line.starts_with("GET /metrics") {
        (
            "404 Not Found",
            CONTENT_TYPE_TEXT,
            "try GET /metrics\n".to_string(),
        )
    } else if wants_openmetrics(&head) {
        ("200 OK", CONTENT_TYPE_OPENMETRICS, scrape().openmetrics())
    } else {
        ("200 OK", CONTENT_TYPE_TEXT, scrape().text())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics endpoint; returns the bound address and the listener
/// to hand to [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<(SocketAddr, TcpListener)> {
    let listener = TcpListener::bind(addr).await?;
    Ok((listener.local_addr()?, listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        let mut scrape = Scrape::new();
        scrape.histogram("x", "help", &h);
        let out = scrape.text();
        assert!(out.contains("# TYPE x histogram\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1.0\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"10.0\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"), "{out}");
        assert!(out.contains("x_sum 55.5"), "{out}");
    }

    #[test]
    fn gauge_family_renders_labelled_series() {
        let mut scrape = Scrape::new();
        scrape.gauge_family(
            "lag",
            "help",
            vec![(labels(&[("backup", "a\"b")]), 3.0), (Vec::new(), 0.5)],
        );
        scrape.gauge_family("empty", "no series", Vec::new());
        let out = scrape.text();
        assert!(out.contains("# TYPE lag gauge\n"), "{out}");
        assert!(out.contains("lag{backup=\"a\\\"b\"} 3"), "{out}");
        assert!(out.contains("\nlag 0.5\n"), "{out}");
        assert!(out.contains("# TYPE empty gauge\n"), "{out}");
    }

    /// A counter keeps the name it was given, `_total` and all, in both
    /// formats: OpenMetrics names the family without it and its series
    /// with it, the text format names both with it.
    #[test]
    fn counters_keep_their_total_name_in_both_formats() {
        let mut scrape = Scrape::new();
        scrape.counter("c_total", "A counter.", 7);
        scrape.counter_family(
            "d_total",
            "By reason.",
            vec![(labels(&[("reason", "x")]), 2)],
        );
        scrape.gauge("g", "A gauge.", 4);

        let text = scrape.text();
        assert!(
            text.contains("# HELP c_total A counter.\n# TYPE c_total counter\nc_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE d_total counter\nd_total{reason=\"x\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE g gauge\ng 4\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");

        let om = scrape.openmetrics();
        assert!(om.contains("# TYPE c counter\nc_total 7\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    #[should_panic(expected = "ends in _total")]
    fn a_counter_without_total_is_refused() {
        Scrape::new().counter("c", "help", 1);
    }

    #[test]
    fn openmetrics_is_served_only_to_who_asks() {
        assert!(wants_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
        ));
        assert!(!wants_openmetrics(
            "GET /metrics HTTP/1.1\r\naccept: */*\r\n\r\n"
        ));
        assert!(!wants_openmetrics("GET /metrics HTTP/1.1\r\n\r\n"));
    }
}
