//! `trellis bench feed`: the change feed's commit-to-emit latency and
//! pace against a running cluster. One watch from now over a key prefix of
//! this run's own, and commits of one key each started on a clock at a
//! fixed rate (1,000 and 5,000 a second by default); each event is matched
//! to its commit by transaction id, in this one process, so both ends read
//! the same clock. Reported per rate: commits/s reached, events/s the watch
//! got, and p50/p99/max of *commit-to-emit*: from the commit's
//! acknowledgement to its event's arrival at the watcher (0 when the event
//! came first). Nothing is asserted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use trellis_proto::v1 as pb;

use super::percentile;

/// The rates measured when `--rate` is not given, commits per second.
pub const RATES_DEFAULT: [u64; 2] = [1_000, 5_000];
/// Commits in flight at once; a tick that finds none free is counted as
/// missed (the cluster is slower than the rate).
const INFLIGHT_MAX: usize = 512;
/// Keys each rate's commits cycle through.
const KEYS: u64 = 10_000;
/// Deadline of each commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for connecting and for opening the watch (the stream itself
/// runs as long as the measurement).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the watch may take to deliver the last events after the
/// commits stop.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// Most events held for matching (a watch far behind is reported, not
/// buffered without bound).
const PENDING_MAX: usize = 1_000_000;

/// What one rate measured.
struct Measured {
    rate: u64,
    committed: u64,
    missed: u64,
    errors: u64,
    elapsed: Duration,
    events: u64,
    /// Events of this run's commits that arrived while the commits ran.
    events_during: u64,
    latencies: Vec<Duration>,
    unmatched: u64,
}

/// A commit's acknowledgement or its event, whichever came first, waits
/// here for the other.
#[derive(Default)]
struct Matches {
    acked: HashMap<Vec<u8>, Instant>,
    emitted: HashMap<Vec<u8>, Instant>,
    latencies: Vec<Duration>,
}

impl Matches {
    fn ack(&mut self, txn: Vec<u8>, at: Instant) {
        match self.emitted.remove(&txn) {
            Some(_) => self.latencies.push(Duration::ZERO),
            None if self.acked.len() < PENDING_MAX => {
                self.acked.insert(txn, at);
            }
            None => {}
        }
    }

    fn emit(&mut self, txn: Vec<u8>, at: Instant) {
        match self.acked.remove(&txn) {
            Some(acked) => self.latencies.push(at.saturating_duration_since(acked)),
            None if self.emitted.len() < PENDING_MAX => {
                self.emitted.insert(txn, at);
            }
            None => {}
        }
    }
}

pub fn run(addr: &str, seconds: Duration, rates: &[u64]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = trellis_net::connect(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(OPEN_TIMEOUT),
        )
        .await
        .with_context(|| format!("connecting to {addr}"))?;
        println!(
            "trellis bench feed: {addr}, {} s per rate, one-key commits, one watch from now",
            seconds.as_secs()
        );
        println!(
            "{:>7} {:>10} {:>8} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "rate",
            "commits/s",
            "missed",
            "errors",
            "events/s",
            "events",
            "p50 ms",
            "p99 ms",
            "max ms"
        );
        let run_id: u32 = rand::random();
        for &rate in rates {
            let m = measure(channel.clone(), run_id, rate, seconds).await?;
            let mut sorted = m.latencies.clone();
            sorted.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{:>7} {:>10.0} {:>8} {:>9} {:>10.0} {:>10} {:>8.2} {:>8.2} {:>8.2}",
                m.rate,
                m.committed as f64 / m.elapsed.as_secs_f64(),
                m.missed,
                m.errors,
                m.events_during as f64 / m.elapsed.as_secs_f64(),
                format!("{}/{}", m.events, m.committed),
                ms(percentile(&sorted, 50.0)),
                ms(percentile(&sorted, 99.0)),
                ms(sorted.last().copied().unwrap_or_default()),
            );
            if m.unmatched > 0 {
                println!(
                    "        {} events of this run matched no acknowledged commit \
                     (a commit whose answer was lost, counted in errors)",
                    m.unmatched
                );
            }
        }
        Ok(())
    })
}

async fn measure(
    channel: tonic::transport::Channel,
    run_id: u32,
    rate: u64,
    seconds: Duration,
) -> anyhow::Result<Measured> {
    let prefix = format!("bench:feed:{run_id:08x}:{rate}:").into_bytes();
    let mut end = prefix.clone();
    *end.last_mut().expect("a prefix") += 1;
    let mut feed = pb::changefeed_client::ChangefeedClient::new(channel.clone());
    let opened = feed.watch(pb::WatchRequest {
        start: prefix.clone(),
        end,
        cursor: None,
        initial_scan: false,
        batch: true,
    });
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, opened)
        .await
        .map_err(|_| anyhow::anyhow!("the watch did not open within {OPEN_TIMEOUT:?}"))?
        .context("opening the watch")?
        .into_inner();
    let matches = Arc::new(Mutex::new(Matches::default()));
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let matches = matches.clone();
        let events = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let emitted = match message.kind {
                    Some(pb::watch_response::Kind::Events(batch)) => batch.events,
                    Some(pb::watch_response::Kind::Event(event)) => vec![event],
                    _ => continue,
                };
                let at = Instant::now();
                events.fetch_add(emitted.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let mut matches = matches.lock().expect("matches lock");
                for event in emitted {
                    matches.emit(event.txn_id, at);
                }
            }
        })
    };
    let client = pb::txn_client::TxnClient::new(channel);
    let inflight = Arc::new(Semaphore::new(INFLIGHT_MAX));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut missed = 0u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while started.elapsed() < seconds {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        n += 1;
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            missed += 1;
            continue;
        };
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{}", n % KEYS).as_bytes());
        let txn_id = rand::random::<[u8; 16]>().to_vec();
        let request = pb::CommitRequest {
            txn_id: txn_id.clone(),
            reads: vec![],
            writes: vec![pb::Write {
                key,
                op: Some(pb::write::Op::Put(n.to_le_bytes().to_vec())),
            }],
            durability: 0,
        };
        let mut client = client.clone();
        let (matches, errors, committed) = (matches.clone(), errors.clone(), committed.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let mut request = tonic::Request::new(request);
            request.set_timeout(COMMIT_TIMEOUT);
            match client.commit(request).await.map(|r| r.into_inner().outcome) {
                Ok(Some(pb::commit_response::Outcome::Committed(_))) => {
                    committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    matches
                        .lock()
                        .expect("matches lock")
                        .ack(txn_id, Instant::now());
                }
                _ => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        // Reap finished commits so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let events_during = events.load(std::sync::atomic::Ordering::Relaxed);
    let committed = committed.load(std::sync::atomic::Ordering::Relaxed);
    let drain_until = Instant::now() + DRAIN_MAX;
    while events.load(std::sync::atomic::Ordering::Relaxed) < committed
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    let events = events.load(std::sync::atomic::Ordering::Relaxed);
    let matches = std::mem::take(&mut *matches.lock().expect("matches lock"));
    Ok(Measured {
        rate,
        committed,
        missed,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        events,
        events_during,
        unmatched: matches.emitted.len() as u64,
        latencies: matches.latencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_matched_to_its_commit_whichever_comes_first() {
        let t0 = Instant::now();
        let mut m = Matches::default();
        m.ack(b"a".to_vec(), t0);
        m.emit(b"a".to_vec(), t0 + Duration::from_millis(7));
        // The event before the acknowledgement counts as 0.
        m.emit(b"b".to_vec(), t0);
        m.ack(b"b".to_vec(), t0 + Duration::from_millis(3));
        m.emit(b"c".to_vec(), t0);
        assert_eq!(m.latencies, vec![Duration::from_millis(7), Duration::ZERO]);
        assert!(m.acked.is_empty());
        assert_eq!(m.emitted.len(), 1);
    }
}
