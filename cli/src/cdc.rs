//! `trellis cdc`: runs a change feed (`Changefeed.Watch`) into a sink
//! (`trellis-cdc`: stdout, NATS JetStream, RabbitMQ, a Redis cache) and,
//! with `--feed NAME`, keeps its cursor in the catalog so that a restarted
//! `trellis cdc` resumes where the last one stopped. A cursor is saved only
//! after the sink accepted every event up to it: nothing is acknowledged
//! upstream that was not delivered downstream. A sink that fails is
//! connected to again with backoff and given the same events (the sinks
//! are idempotent); the feed's lag grows meanwhile, no event is dropped.
//!
//! With `--initial-scan` the range's committed state goes to the sink
//! first (scan rows), then the tail; no cursor is saved until every
//! group's scan is done, and a watch that breaks before that scans again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use trellis_cdc::{Accepted, DELIVER_EVENTS_MAX, IN_FLIGHT_EVENTS_MAX, Sink, SinkUrl};
use trellis_client::{Cursor, Error, FeedEvent, FeedMessage, ScanRow};
use trellis_metrics::{Counter, Scrape};

/// Backoff between attempts to deliver to a failing sink, or to watch
/// again after the coordinator went away.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most this often the cursor is saved in the catalog (and on exit).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often progress is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Events held before they are delivered, at most (a batch goes out
/// earlier at every resolved position).
const BATCH_EVENTS_DEFAULT: usize = 256;

#[derive(clap::Args)]
#[command(after_help = "\
What a consumer gets: one message (or JSON line, or cache update) per
committed transaction per group, in each group's commit order, never one of
an aborted transaction; a transaction that wrote in several groups has one
per group, each naming all its groups (`participants`). Each carries its
group and position: `trellis-<group>-<position>` is the message id (NATS
`Nats-Msg-Id`, AMQP `message_id`) to deduplicate by.

Resuming: with --feed NAME the cursor is saved in the catalog after each
delivered batch (at most once a second) and on exit; the next
`trellis cdc --feed NAME` starts after it. Events delivered but not yet
checkpointed come again after a crash (at least once).

Initial scan: --initial-scan first sends every key's committed value in the
range (one message or cache update per key, with its version; JSON
`\"scan\":true`, message id `scan-<group>-<position>-<key hex>`), then the
changes after it. A scanned value may be newer than where the changes
resume: keep the highest version per key (the Redis sink does). Deleted keys
are not sent: fill an empty cache. The cursor is saved only once every
group's scan is done; stopped before that, it scans again.

History gone: if a saved cursor points into log no group keeps any more
(FEED_HISTORY_GONE), start over with a scan:
  trellis admin forget-feed --feed NAME
  trellis cdc --feed NAME --initial-scan --sink ...

Examples:
  trellis cdc --sink stdout
  trellis cdc --sink nats://127.0.0.1:4222/trellis.changes --feed orders --prefix order:
  trellis cdc --sink amqp://guest:guest@127.0.0.1:5672/trellis --feed audit
  trellis cdc --sink redis://127.0.0.1:6379 --feed cache --from beginning
  trellis cdc --sink redis://127.0.0.1:6379/2 --feed cache --initial-scan")]
pub struct Args {
    /// Coordinator address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
    addr: String,
    /// Where events go: `stdout` (JSON lines), `nats://HOST:PORT/SUBJECT`
    /// (JetStream; a stream is created if none captures SUBJECT),
    /// `amqp://[USER:PASS@]HOST:PORT/EXCHANGE` (RabbitMQ, publisher
    /// confirms; bind a queue to the exchange with `trellis.#`), or
    /// `redis://HOST:PORT[/DB]` (a cache kept by version: never older).
    #[arg(long, value_parser = parse_sink)]
    sink: SinkUrl,
    /// The feed's name (1 to 128 of A-Z a-z 0-9 . _ -): its cursor is kept
    /// in the catalog under it and a restart resumes from it. Without it
    /// nothing is kept.
    #[arg(long, value_parser = feed_name)]
    feed: Option<String>,
    /// Only keys that start with this prefix (default: every key).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Where to start when --feed has no saved cursor: `now`, `beginning`
    /// (each group's whole log, as far as it is kept), or a cursor
    /// `CLUSTER/GROUP:POSITION,...` (as the log lines print it; CLUSTER is
    /// the id `trellis status` shows: another cluster's cursor is refused).
    /// Given with a feed that has a saved cursor, it replaces it.
    #[arg(long, value_parser = parse_from)]
    from: Option<From>,
    /// Send the range's committed state first (every key's value and
    /// version), then the changes after it. Only for a start from now: with
    /// no --from or `--from now`, and no cursor saved under --feed.
    #[arg(long)]
    initial_scan: bool,
    /// Events delivered per batch, at most.
    #[arg(long, default_value_t = BATCH_EVENTS_DEFAULT, value_parser = batch_events)]
    batch_events: usize,
    /// Address for Prometheus metrics at /metrics (port 0 picks a free
    /// port; the log says which): events delivered, lag by group in
    /// records and seconds, sink errors, checkpoints.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: std::net::SocketAddr,
}

/// The metrics of one `trellis cdc`, read at each scrape.
#[derive(Default)]
struct CdcMetrics {
    feed: String,
    events: Counter,
    scan_rows: Counter,
    batches: Counter,
    sink_errors: Counter,
    watch_restarts: Counter,
    checkpoints: Counter,
    checkpoint_errors: Counter,
    /// By group.
    lag: Mutex<BTreeMap<u64, GroupLag>>,
}

/// How far a feed is behind one group: records, and since when it was
/// last caught up (`None`: caught up at the last resolved message).
type GroupLag = (u64, Option<Instant>);

impl CdcMetrics {
    fn lag(&self, group: u64, records: u64) {
        let mut lag = self.lag.lock().expect("lag lock poisoned");
        let entry = lag.entry(group).or_insert((0, None));
        entry.0 = records;
        if records == 0 {
            entry.1 = None;
        } else if entry.1.is_none() {
            entry.1 = Some(Instant::now());
        }
    }

    fn render(&self) -> Scrape {
        let mut out = Scrape::new();
        let feed = || vec![("feed".to_string(), self.feed.clone())];
        let one = |c: &Counter| vec![(feed(), c.get())];
        out.counter_family(
            "trellis_cdc_events_total",
            "Events the sink accepted.",
            one(&self.events),
        );
        out.counter_family(
            "trellis_cdc_scan_rows_total",
            "Initial-scan rows the sink accepted.",
            one(&self.scan_rows),
        );
        out.counter_family(
            "trellis_cdc_batches_total",
            "Batches the sink accepted.",
            one(&self.batches),
        );
        out.counter_family(
            "trellis_cdc_sink_errors_total",
            "Deliveries that failed (each is retried with backoff).",
            one(&self.sink_errors),
        );
        out.counter_family(
            "trellis_cdc_watch_restarts_total",
            "Times the feed was watched again after its stream broke.",
            one(&self.watch_restarts),
        );
        out.counter_family(
            "trellis_cdc_checkpoints_total",
            "Cursors saved in the catalog.",
            one(&self.checkpoints),
        );
        out.counter_family(
            "trellis_cdc_checkpoint_errors_total",
            "Cursor saves that failed (the next one saves a newer cursor).",
            one(&self.checkpoint_errors),
        );
        let lag = self.lag.lock().expect("lag lock poisoned");
        let series = |value: &dyn Fn(&GroupLag) -> f64| {
            lag.iter()
                .map(|(group, l)| {
                    let mut labels = feed();
                    labels.push(("group".to_string(), group.to_string()));
                    (labels, value(l))
                })
                .collect::<Vec<_>>()
        };
        out.gauge_family(
            "trellis_cdc_lag_records",
            "Log records the group's primary holds past the feed's resolved position.",
            series(&|l| l.0 as f64),
        );
        out.gauge_family(
            "trellis_cdc_lag_seconds",
            "Seconds since the feed was last caught up with the group (0: caught up).",
            series(&|l| l.1.map_or(0.0, |since| since.elapsed().as_secs_f64())),
        );
        out
    }
}

fn parse_sink(text: &str) -> Result<SinkUrl, String> {
    SinkUrl::parse(text).map_err(|e| e.to_string())
}

fn feed_name(text: &str) -> Result<String, String> {
    trellis_coordinator::catalog::check_feed_name(text)?;
    Ok(text.to_string())
}

fn batch_events(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > DELIVER_EVENTS_MAX {
        return Err(format!("must be 1 to {DELIVER_EVENTS_MAX}"));
    }
    Ok(n)
}

/// Where a feed starts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum From {
    Now,
    Cursor(Cursor),
    /// Every group from its log's beginning (the groups are known only
    /// once connected).
    Beginning,
}

fn parse_from(text: &str) -> Result<From, String> {
    match text {
        "now" => Ok(From::Now),
        "beginning" => Ok(From::Beginning),
        cursor => cursor
            .parse::<Cursor>()
            .map(From::Cursor)
            .map_err(|e| format!("{e} (--from takes now, beginning, or a cursor)")),
    }
}

/// The end of the keys starting with `prefix` (exclusive; empty: none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

impl Args {
    /// The coordinator address this command dials (for the TLS files a
    /// running `trellis dev` offers, `crate::dev::certs`).
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let signals = crate::signals::Signals::install();
        let delivered: Delivered = Arc::default();
        let (addr, name) = (args.addr.clone(), args.feed.clone());
        tokio::select! {
            result = feed(args, delivered.clone()) => result,
            () = signals.wait(false) => {
                // The last cursor whose events the sink took.
                let last = delivered.lock().expect("cursor lock poisoned").clone();
                if let (Some(name), Some(cursor)) = (name, last) {
                    let client = crate::login::coordinator_client(&addr).await?;
                    client
                        .save_cursor(&name, &cursor)
                        .await
                        .with_context(|| format!("saving feed {name:?}'s cursor on exit"))?;
                    tracing::info!(%cursor, "stopped; cursor saved");
                }
                Ok(())
            }
        }
    })
}

/// The cursor up to which the sink took every event.
type Delivered = Arc<Mutex<Option<Cursor>>>;

async fn feed(args: Args, last_delivered: Delivered) -> anyhow::Result<()> {
    let from = args.from.clone();
    if args.initial_scan {
        // --from first, before connecting anywhere; the saved cursor below.
        check_initial_scan(args.from.as_ref(), None, args.feed.as_deref())?;
    }
    let metrics = Arc::new(CdcMetrics {
        feed: args.feed.clone().unwrap_or_else(|| "-".into()),
        ..CdcMetrics::default()
    });
    let (metrics_addr, listener) = trellis_metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics on {}", args.metrics_listen))?;
    let render = metrics.clone();
    tokio::spawn(crate::tls::serve_metrics(listener, move || {
        let mut out = render.render();
        crate::tls::render(&mut out);
        out
    }));
    tracing::info!(%metrics_addr, "metrics at /metrics");
    let client = crate::login::coordinator_client(&args.addr)
        .await
        .with_context(|| format!("connecting to the coordinator at {}", args.addr))?;
    let mut sink = Sink::connect(&args.sink)
        .await
        .with_context(|| format!("connecting to the sink {}", args.sink))?;
    let saved = match &args.feed {
        Some(name) => client
            .load_cursor(name)
            .await
            .with_context(|| format!("loading feed {name:?}'s cursor"))?,
        None => None,
    };
    if args.initial_scan {
        check_initial_scan(args.from.as_ref(), saved.as_ref(), args.feed.as_deref())?;
    }
    let mut delivered: Option<Cursor> = match (from, saved) {
        (Some(From::Now), _) => None,
        (Some(From::Cursor(c)), _) => Some(c),
        (Some(From::Beginning), _) => Some(Cursor::default()),
        (None, Some(saved)) => {
            tracing::info!(cursor = %saved, "resuming from the saved cursor");
            Some(saved)
        }
        (None, None) => None,
    };
    let start = args.prefix.as_bytes().to_vec();
    let end = prefix_end(&start);
    let mut progress = Progress::new();
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut first = true;
    loop {
        if !first {
            metrics.watch_restarts.inc();
        }
        first = false;
        // Until every group's scan was delivered there is no cursor: a
        // watch that broke before scans again.
        let watching = if args.initial_scan && delivered.is_none() {
            client.watch_with_scan(&start, &end).await
        } else {
            client.watch(&start, &end, delivered.as_ref()).await
        };
        let mut watch = match watching {
            Ok(watch) => watch,
            Err(e) if retryable(&e) => {
                tracing::warn!(error = %e, ?backoff, "cannot watch; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                continue;
            }
            Err(e) => bail!(
                "the feed was refused: {}",
                explain(&e, args.feed.as_deref())
            ),
        };
        let mut batch: Vec<FeedEvent> = Vec::new();
        let mut in_flight = InFlight::default();
        let mut checkpointed_at = Instant::now();
        loop {
            // The oldest batch accepted, or the watch's next message.
            let message = tokio::select! {
                biased;
                accepted = in_flight.accept_oldest(), if !in_flight.is_empty() => {
                    let settled = match accepted {
                        Ok(sent) => vec![sent],
                        Err(e) => recover(&mut sink, &args.sink, &mut in_flight, e, &metrics).await,
                    };
                    accept(settled, &mut delivered, &last_delivered, &metrics);
                    if let (Some(name), Some(cursor)) = (&args.feed, &delivered)
                        && checkpointed_at.elapsed() >= CHECKPOINT_INTERVAL
                    {
                        match client.save_cursor(name, cursor).await {
                            Ok(()) => {
                                checkpointed_at = Instant::now();
                                metrics.checkpoints.inc();
                            }
                            // Not fatal: the next checkpoint saves a newer
                            // one; a crash meanwhile only repeats events.
                            Err(e) => {
                                metrics.checkpoint_errors.inc();
                                tracing::warn!(error = %e, "cannot save the cursor");
                            }
                        }
                    }
                    progress.maybe_log(&metrics, delivered.as_ref());
                    continue;
                }
                message = watch.next() => message,
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => {
                    tracing::warn!("the coordinator ended the feed; watching again");
                    break;
                }
                Err(e) if retryable(&e) => {
                    tracing::warn!(error = %e, "the feed broke; watching again");
                    break;
                }
                Err(e) => bail!("the feed failed: {}", explain(&e, args.feed.as_deref())),
            };
            backoff = RETRY_BACKOFF_MIN;
            let flush = match message {
                FeedMessage::Event(event) => {
                    batch.push(event);
                    batch.len() >= args.batch_events
                }
                FeedMessage::Resolved {
                    group,
                    position,
                    head,
                } => {
                    metrics.lag(group, head.saturating_sub(position));
                    true
                }
                FeedMessage::Scan {
                    group,
                    position,
                    rows,
                    done,
                } => {
                    // The events sent before it first, then the chunk at
                    // once (other groups' events held in the batch go out
                    // right after it: order across groups is not kept
                    // anyway).
                    let settled = settle_all(&mut sink, &args.sink, &mut in_flight, &metrics).await;
                    accept(settled, &mut delivered, &last_delivered, &metrics);
                    deliver_scan(&mut sink, &args.sink, group, position, rows, &metrics).await;
                    if done {
                        tracing::info!(group, position, "the group's initial scan is delivered");
                    }
                    true
                }
            };
            if !flush {
                continue;
            }
            // Sent, its acceptance awaited above with the oldest first;
            // the window full, the oldest are awaited now. The watch's
            // cursor covers this batch and what was sent before (there is
            // none until every scan is done).
            let cursor = watch.cursor().cloned();
            let events = std::mem::take(&mut batch);
            while !in_flight.has_room(events.len()) {
                let settled = match in_flight.accept_oldest().await {
                    Ok(sent) => vec![sent],
                    Err(e) => recover(&mut sink, &args.sink, &mut in_flight, e, &metrics).await,
                };
                accept(settled, &mut delivered, &last_delivered, &metrics);
            }
            if events.is_empty() && in_flight.is_empty() {
                // Nothing to wait for: the cursor moves at once.
                let sent = Sent { events: 0, cursor };
                accept(vec![sent], &mut delivered, &last_delivered, &metrics);
                continue;
            }
            if events.is_empty() {
                in_flight.move_cursor(cursor);
                continue;
            }
            match sink.send(&events).await {
                Ok(accepted) => in_flight.push(events, cursor, accepted),
                Err(e) => {
                    in_flight.push(events, cursor, Box::pin(std::future::ready(Err(e))));
                }
            }
        }
        // Batches are accepted before the cursor moves past them; a broken
        // watch drops only undelivered events, which the next watch sends
        // again (it starts after the last delivered cursor). Those in
        // flight are delivered first, so the cursor is as far as it goes.
        let settled = settle_all(&mut sink, &args.sink, &mut in_flight, &metrics).await;
        accept(settled, &mut delivered, &last_delivered, &metrics);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// Batches sent to the sink and not yet known accepted, oldest first: at
/// most [`IN_FLIGHT_EVENTS_MAX`] events, kept to send again if the sink
/// fails. A batch's cursor is safe to keep only once it and every batch
/// before it are accepted, so acceptances are awaited oldest first.
#[derive(Default)]
struct InFlight {
    batches: VecDeque<Sending>,
    events: usize,
}

/// One batch in flight.
struct Sending {
    events: Vec<FeedEvent>,
    /// Where the feed is once this batch (and every one before) is
    /// accepted; `None` during an initial scan.
    cursor: Option<Cursor>,
    accepted: Accepted,
}

/// A batch the sink accepted.
#[derive(Debug, PartialEq)]
struct Sent {
    events: usize,
    cursor: Option<Cursor>,
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Whether `events` more fit in the window.
    fn has_room(&self, events: usize) -> bool {
        self.is_empty() || self.events + events <= IN_FLIGHT_EVENTS_MAX
    }

    fn push(&mut self, events: Vec<FeedEvent>, cursor: Option<Cursor>, accepted: Accepted) {
        self.events += events.len();
        self.batches.push_back(Sending {
            events,
            cursor,
            accepted,
        });
    }

    /// The feed moved on with no event to send (a resolved position): the
    /// newest batch's acceptance covers the new cursor too.
    fn move_cursor(&mut self, cursor: Option<Cursor>) {
        if let (Some(newest), Some(cursor)) = (self.batches.back_mut(), cursor) {
            newest.cursor = Some(cursor);
        }
    }

    /// Awaits the oldest batch's acceptance (cancel-safe: the batch stays
    /// until it is accepted). On an error the batch stays too: take every
    /// batch with [`InFlight::take`] and send them again.
    async fn accept_oldest(&mut self) -> Result<Sent, trellis_cdc::SinkError> {
        let oldest = self
            .batches
            .front_mut()
            .expect("accept_oldest is called only with batches in flight");
        (&mut oldest.accepted).await?;
        let sent = self.batches.pop_front().expect("the batch just accepted");
        self.events -= sent.events.len();
        Ok(Sent {
            events: sent.events.len(),
            cursor: sent.cursor,
        })
    }

    /// Every batch in flight, oldest first, their acceptances forgotten.
    fn take(&mut self) -> Vec<(Vec<FeedEvent>, Option<Cursor>)> {
        self.events = 0;
        self.batches
            .drain(..)
            .map(|b| (b.events, b.cursor))
            .collect()
    }
}

/// After the sink failed with `error`: delivers every batch in flight
/// again, in order, on a new connection, trying until the sink takes them
/// (the feed waits, it never drops an event); returns them as accepted.
async fn recover(
    sink: &mut Sink,
    url: &SinkUrl,
    in_flight: &mut InFlight,
    error: trellis_cdc::SinkError,
    metrics: &CdcMetrics,
) -> Vec<Sent> {
    metrics.sink_errors.inc();
    tracing::warn!(error = %error, ?RETRY_BACKOFF_MIN, "the sink failed; trying again");
    tokio::time::sleep(RETRY_BACKOFF_MIN).await;
    match Sink::connect(url).await {
        Ok(fresh) => *sink = fresh,
        Err(e) => tracing::warn!(error = %e, "cannot reconnect to the sink"),
    }
    let mut sent = Vec::new();
    for (events, cursor) in in_flight.take() {
        deliver(sink, url, &events, metrics).await;
        sent.push(Sent {
            events: events.len(),
            cursor,
        });
    }
    tracing::info!(batches = sent.len(), "the sink took the batches again");
    sent
}

/// Awaits every batch in flight (sending them again if the sink fails);
/// returns them as accepted, oldest first.
async fn settle_all(
    sink: &mut Sink,
    url: &SinkUrl,
    in_flight: &mut InFlight,
    metrics: &CdcMetrics,
) -> Vec<Sent> {
    let mut settled = Vec::new();
    while !in_flight.is_empty() {
        match in_flight.accept_oldest().await {
            Ok(sent) => settled.push(sent),
            Err(e) => settled.extend(recover(sink, url, in_flight, e, metrics).await),
        }
    }
    settled
}

/// Batches the sink accepted, oldest first: counted, and the feed's
/// cursor moved past them (everything up to it is accepted downstream, so
/// it is safe to keep).
fn accept(
    settled: Vec<Sent>,
    delivered: &mut Option<Cursor>,
    last: &Delivered,
    metrics: &CdcMetrics,
) {
    for sent in settled {
        if sent.events > 0 {
            metrics.events.add(sent.events as u64);
            metrics.batches.inc();
        }
        if let Some(cursor) = sent.cursor {
            *delivered = Some(cursor);
        }
    }
    *last.lock().expect("cursor lock poisoned") = delivered.clone();
}

/// Delivers `events`, trying again (a new connection each time) until the
/// sink takes them: the feed waits, it never drops an event.
async fn deliver(sink: &mut Sink, url: &SinkUrl, events: &[FeedEvent], metrics: &CdcMetrics) {
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut attempt = 0u32;
    loop {
        match sink.deliver(events).await {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(attempts = attempt + 1, "the sink took the batch again");
                }
                return;
            }
            Err(e) => {
                attempt += 1;
                metrics.sink_errors.inc();
                tracing::warn!(error = %e, attempt, ?backoff, "the sink failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                match Sink::connect(url).await {
                    Ok(fresh) => *sink = fresh,
                    Err(e) => tracing::warn!(error = %e, "cannot reconnect to the sink"),
                }
            }
        }
    }
}

/// Delivers a scan chunk's rows in pieces the sink takes, retrying as
/// [`deliver`] does.
async fn deliver_scan(
    sink: &mut Sink,
    url: &SinkUrl,
    group: u64,
    position: u64,
    rows: Vec<ScanRow>,
    metrics: &CdcMetrics,
) {
    for piece in rows.chunks(DELIVER_EVENTS_MAX) {
        let scan = trellis_proto::v1::FeedScan {
            group,
            position,
            rows: piece.to_vec(),
            done: false,
            // The sinks' messages do not carry the cluster.
            cluster: 0,
        };
        let mut backoff = RETRY_BACKOFF_MIN;
        while let Err(e) = sink.deliver_scan(&scan).await {
            metrics.sink_errors.inc();
            tracing::warn!(error = %e, ?backoff, "the sink failed a scan chunk; trying again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            match Sink::connect(url).await {
                Ok(fresh) => *sink = fresh,
                Err(e) => tracing::warn!(error = %e, "cannot reconnect to the sink"),
            }
        }
        metrics.scan_rows.add(piece.len() as u64);
    }
}

/// `--initial-scan` starts a feed from now: refused with a cursor to
/// resume from (given or saved).
fn check_initial_scan(
    from: Option<&From>,
    saved: Option<&Cursor>,
    feed: Option<&str>,
) -> anyhow::Result<()> {
    match from {
        None | Some(From::Now) => {}
        Some(From::Beginning | From::Cursor(_)) => bail!(
            "--initial-scan starts from now; it cannot be given with --from beginning or a \
             cursor (leave --from out, or give --from now)"
        ),
    }
    if saved.is_some() && from.is_none() {
        let name = feed.unwrap_or_default();
        bail!(
            "feed {name:?} has a saved cursor, so it resumes without a scan; to fill the sink \
             anew, forget it first (`trellis admin forget-feed --feed {name}`) or give \
             --from now to replace it"
        );
    }
    Ok(())
}

/// An error for the user, with the way out when a feed's history is gone.
fn explain(e: &Error, feed: Option<&str>) -> String {
    match e {
        Error::FeedHistoryGone { group, .. } => {
            let name = feed.unwrap_or("NAME");
            format!(
                "{e}. Group {group} no longer keeps its log after this feed's cursor: the \
                 changes in between cannot be sent. Start the feed over with a scan of the \
                 current state: `trellis admin forget-feed --feed {name}`, then \
                 `trellis cdc --feed {name} --initial-scan --sink ...` (a cache sink: empty \
                 it first, deleted keys are not scanned)"
            )
        }
        _ => e.to_string(),
    }
}

/// Errors after which watching again may help.
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_))
}

/// When progress was last logged, and the events delivered by then (the
/// figures themselves are the metrics').
struct Progress {
    since: Instant,
    logged_at: Instant,
    events_at_log: u64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            since: Instant::now(),
            logged_at: Instant::now(),
            events_at_log: 0,
        }
    }

    fn maybe_log(&mut self, metrics: &CdcMetrics, cursor: Option<&Cursor>) {
        let elapsed = self.logged_at.elapsed();
        if elapsed < PROGRESS_INTERVAL {
            return;
        }
        let events = metrics.events.get();
        let rate = (events - self.events_at_log) as f64 / elapsed.as_secs_f64();
        let lag: Vec<String> = metrics
            .lag
            .lock()
            .expect("lag lock poisoned")
            .iter()
            .map(|(g, l)| format!("{g}:{}", l.0))
            .collect();
        tracing::info!(
            events,
            events_per_second = format!("{rate:.0}"),
            lag_records = lag.join(","),
            cursor = %cursor.map(ToString::to_string).unwrap_or_default(),
            running_s = self.since.elapsed().as_secs(),
            "delivered"
        );
        self.events_at_log = events;
        self.logged_at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `future` once: its output if it is ready.
    fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    /// A batch whose acceptance comes when the returned sender says.
    fn batch(
        events: usize,
    ) -> (
        Vec<FeedEvent>,
        Accepted,
        tokio::sync::oneshot::Sender<Result<(), trellis_cdc::SinkError>>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let accepted: Accepted = Box::pin(async move { rx.await.expect("sender kept") });
        (vec![FeedEvent::default(); events], accepted, tx)
    }

    /// Pipelined batches: a later batch accepted first moves no cursor;
    /// the cursor moves only when every batch before it is accepted, and a
    /// resolved position with nothing to send rides on the newest batch.
    #[test]
    fn a_cursor_moves_only_past_batches_accepted_with_every_earlier_one() {
        let cluster = trellis_client::ClusterId::new(9).expect("a cluster id");
        let at = |p: u64| Some(Cursor::new(cluster, [(1, p)]));
        let mut in_flight = InFlight::default();
        let (events_a, accepted_a, ack_a) = batch(2);
        let (events_b, accepted_b, ack_b) = batch(1);
        in_flight.push(events_a, at(10), accepted_a);
        in_flight.push(events_b, at(11), accepted_b);
        in_flight.move_cursor(at(14));
        assert_eq!(in_flight.events, 3);
        ack_b.send(Ok(())).expect("receiver kept");
        assert!(
            poll_once(in_flight.accept_oldest()).is_none(),
            "the later batch's ack does not settle the earlier one"
        );
        ack_a.send(Ok(())).expect("receiver kept");
        let first = poll_once(in_flight.accept_oldest()).expect("ready");
        assert_eq!(
            first.expect("accepted"),
            Sent {
                events: 2,
                cursor: at(10)
            }
        );
        let second = poll_once(in_flight.accept_oldest()).expect("ready");
        assert_eq!(
            second.expect("accepted"),
            Sent {
                events: 1,
                cursor: at(14)
            }
        );
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.events, 0);
    }

    /// A failed batch stays in flight with every later one, all of them
    /// to be sent again in order; the window is bounded.
    #[test]
    fn a_failed_batch_and_every_later_one_are_kept_to_send_again() {
        let cluster = trellis_client::ClusterId::new(9).expect("a cluster id");
        let at = |p: u64| Some(Cursor::new(cluster, [(2, p)]));
        let mut in_flight = InFlight::default();
        let (events_a, accepted_a, ack_a) = batch(3);
        let (events_b, accepted_b, _ack_b) = batch(4);
        in_flight.push(events_a, at(5), accepted_a);
        in_flight.push(events_b, at(9), accepted_b);
        ack_a
            .send(Err(trellis_cdc::SinkError::TooMany {
                sink: "test".into(),
                events: 3,
            }))
            .expect("receiver kept");
        let failed = poll_once(in_flight.accept_oldest()).expect("ready");
        assert!(failed.is_err());
        let again = in_flight.take();
        let kept: Vec<(usize, Option<Cursor>)> =
            again.iter().map(|(e, c)| (e.len(), c.clone())).collect();
        assert_eq!(kept, [(3, at(5)), (4, at(9))]);
        assert!(in_flight.is_empty() && in_flight.events == 0);

        assert!(
            in_flight.has_room(DELIVER_EVENTS_MAX),
            "an empty window takes a batch"
        );
        let (events, accepted, _ack) = batch(IN_FLIGHT_EVENTS_MAX - 1);
        in_flight.push(events, None, accepted);
        assert!(in_flight.has_room(1));
        assert!(!in_flight.has_room(2));
    }

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"");
        assert_eq!(prefix_end(b""), b"");
    }

    #[test]
    fn from_values_are_checked() {
        assert_eq!(parse_from("now"), Ok(From::Now));
        assert_eq!(parse_from("beginning"), Ok(From::Beginning));
        let cluster = trellis_client::ClusterId::new(0x2a).expect("in range");
        assert_eq!(
            parse_from("000000000000002a/1:5,2:7"),
            Ok(From::Cursor(Cursor::new(cluster, [(1, 5), (2, 7)])))
        );
        let err = parse_from("yesterday").unwrap_err();
        assert!(err.contains("now, beginning"), "{err}");
        assert!(check_initial_scan(None, None, None).is_ok());
        assert!(check_initial_scan(Some(&From::Now), None, Some("f")).is_ok());
        let saved = Cursor::new(
            trellis_client::ClusterId::new(7).expect("a cluster id"),
            [(1, 5)],
        );
        assert!(
            check_initial_scan(Some(&From::Now), Some(&saved), Some("f")).is_ok(),
            "--from now replaces a saved cursor"
        );
        let err = check_initial_scan(None, Some(&saved), Some("f")).unwrap_err();
        assert!(err.to_string().contains("forget-feed"), "{err}");
        let err = check_initial_scan(Some(&From::Beginning), None, None).unwrap_err();
        assert!(err.to_string().contains("--from"), "{err}");
        let gone = Error::FeedHistoryGone {
            group: 2,
            message: "group 2: gone".into(),
        };
        let text = explain(&gone, Some("orders"));
        assert!(
            text.contains("forget-feed --feed orders") && text.contains("--initial-scan"),
            "{text}"
        );
        let err = parse_from("1:5,2:7").unwrap_err();
        assert!(err.contains("names no cluster"), "{err}");
        assert!(batch_events("0").is_err());
        assert!(batch_events("100000").is_err());
        assert_eq!(batch_events("10"), Ok(10));
    }
}
