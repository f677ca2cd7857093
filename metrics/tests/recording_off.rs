//! The process-wide recording switch (its own test binary: the switch is
//! global, and the library's unit tests record in parallel threads). Off,
//! counters and histograms keep what they had; back on, they count again.

use trellis_metrics::{Counter, Histogram, SECONDS_BOUNDS, Scrape, recording, set_recording};

#[test]
fn recording_off_leaves_counters_and_histograms_alone() {
    let counter = Counter::new();
    let gauge = Counter::new();
    let histogram = Histogram::new(SECONDS_BOUNDS);
    assert!(recording(), "on by default");
    counter.inc();
    gauge.set(7);
    histogram.observe(0.001);

    set_recording(false);
    assert!(!recording());
    counter.inc();
    counter.add(10);
    gauge.set(9);
    histogram.observe(0.001);
    assert_eq!(counter.get(), 1, "a counter counts nothing while off");
    assert_eq!(gauge.get(), 7, "a gauge keeps its last value while off");
    let mut scrape = Scrape::new();
    scrape.histogram("h_seconds", "help", &histogram);
    let text = scrape.text();
    assert!(text.contains("h_seconds_count 1\n"), "{text}");

    set_recording(true);
    counter.inc();
    histogram.observe(0.001);
    assert_eq!(counter.get(), 2);
    let mut scrape = Scrape::new();
    scrape.histogram("h_seconds", "help", &histogram);
    assert!(scrape.text().contains("h_seconds_count 2\n"));
}
