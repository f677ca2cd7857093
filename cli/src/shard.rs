//! `trellis shard`: one shard replica serving the shard-internal gRPC
//! service and Prometheus metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use trellis_shard::fail_stop;
use trellis_shard::metrics::{self, Metrics};
use trellis_shard::{Shard, ShardConfig, server};
use trellis_types::SlotSet;

#[derive(clap::Args)]
#[command(after_help = "\
On start the shard recovers from its data directory (newest snapshot, then the
log after it) and prints one line to stdout once it serves:

  READY grpc=127.0.0.1:50061 metrics=127.0.0.1:9161 group=1

SIGTERM or Ctrl-C stops it cleanly (pending writes are made durable first).
SIGKILL at any moment loses nothing that was acknowledged.

Example:
  trellis shard --data-dir /var/lib/trellis/g1 --listen 127.0.0.1:50061 --group 1")]
pub struct Args {
    /// Directory for the write-ahead log and snapshots (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address for the shard's gRPC service (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// Address for Prometheus metrics at /metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// The shard group this replica belongs to. A data directory stays bound
    /// to the group that created it.
    #[arg(long, default_value_t = 1)]
    group: u64,
    /// Slots this shard owns until a coordinator assigns them: `all`, or
    /// ranges like `0-1023,2048`.
    #[arg(long, default_value = "all", value_parser = SlotSet::parse)]
    slots: SlotSet,
    /// Epoch of the slot map the --slots belong to. Requests routed with a
    /// newer epoch are refused as STALE_MAP.
    #[arg(long, default_value_t = 1)]
    map_epoch: u64,
    /// Coordinator to register with (`host:port`). The shard then owns no
    /// slot until the coordinator assigns its group's slots; --slots and
    /// --map-epoch are ignored.
    #[arg(long, value_parser = crate::flags::addr)]
    coordinator: Option<String>,
    /// Address to advertise to the coordinator (default: the bound --listen
    /// address).
    #[arg(long)]
    advertise: Option<String>,
    /// Bytes of recent log records kept in memory to stream to backups; a
    /// backup further behind reads from the log on disk, or gets a
    /// snapshot if the log no longer reaches back that far.
    #[arg(long, default_value_t = trellis_shard::repl::FEED_BYTES_MAX)]
    feed_bytes_max: usize,
    /// Bytes per second this replica spends, as a primary, on catching
    /// backups up (snapshots and backlogs, all backups together), so that
    /// a returning backup cannot starve foreground writes; 0 = unpaced.
    /// Streaming to up-to-date backups is never paced.
    #[arg(long, default_value_t = trellis_shard::pacer::CATCH_UP_BYTES_PER_SEC, value_parser = catch_up_rate)]
    catch_up_bytes_per_sec: u64,
    /// Bytes of log kept on disk after a snapshot covers them, so that a
    /// backup further behind than the in-memory feed catches up from the
    /// log rather than by a whole snapshot (whole segments are kept).
    #[arg(long, default_value_t = trellis_shard::engine::LOG_RETAIN_BYTES)]
    log_retain_bytes: u64,
    /// Size past which a log segment is closed and the next one begun.
    #[arg(long, default_value_t = trellis_shard::wal::SEGMENT_BYTES_MAX, value_parser = log_size)]
    segment_bytes: u64,
    /// Bytes logged between two snapshots (bounds recovery time: at most
    /// this much log is replayed after the newest snapshot).
    #[arg(long, default_value_t = trellis_shard::engine::SNAPSHOT_LOG_BYTES, value_parser = log_size)]
    snapshot_every_bytes: u64,
    /// Exit when the parent process goes away (used by `trellis dev` so a
    /// killed dev cluster leaves no orphans).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

/// Where a replica started on port 0 remembers the port it got.
const PORT_FILE: &str = "listen.port";

/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a fail-stopping shard waits for its note to be written and
/// synced before it exits without it (a disk that hangs).
const FAIL_STOP_NOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Slowest catch-up rate accepted (other than 0, unpaced): one snapshot
/// piece must go out well within a backup's grace period, or a backup being
/// caught up would think its primary gone.
const CATCH_UP_BYTES_PER_SEC_MIN: u64 = 2 * 1024 * 1024;
const _: () = assert!(
    (trellis_shard::replica::SNAPSHOT_PIECE_BYTES as u64) * 1000 / CATCH_UP_BYTES_PER_SEC_MIN
        < trellis_shard::repl::GRACE.as_millis() as u64 / 2
);

/// Smallest --segment-bytes and --snapshot-every-bytes accepted: below
/// this a busy replica would do little but roll segments and snapshot.
const LOG_SIZE_MIN: u64 = 4096;

/// `--segment-bytes` and `--snapshot-every-bytes`, checked while parsing
/// (a bad value is a usage error, exit code 2).
fn log_size(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n >= LOG_SIZE_MIN => Ok(n),
        Ok(n) => Err(format!("{n} is below the minimum of {LOG_SIZE_MIN} bytes")),
        Err(_) => Err(format!("`{text}` is not a number of bytes")),
    }
}

/// `--catch-up-bytes-per-sec`, checked while parsing.
fn catch_up_rate(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n == 0 || n >= CATCH_UP_BYTES_PER_SEC_MIN => Ok(n),
        Ok(n) => Err(format!(
            "{n} is below the minimum of {CATCH_UP_BYTES_PER_SEC_MIN} \
             (a 1 MiB snapshot piece must go out within a backup's grace period); \
             use 0 for unpaced"
        )),
        Err(_) => Err(format!("`{text}` is not a number of bytes per second")),
    }
}

/// On the way out after the log failed: notes the cause in the data
/// directory and tells the coordinator (if any), each with a best effort
/// and a deadline, so that the cause outlives the process (metrics
/// `trellis_shard_last_fail_stop_timestamp_seconds` after a restart,
/// `trellis_shard_fail_stops_total` on the coordinator at once).
async fn note_fail_stop(
    data_dir: &std::path::Path,
    coordinator: Option<&str>,
    group: u64,
    advertise: &str,
    why: &fail_stop::LogFailure,
) {
    let note = fail_stop::Note::new(why, trellis_types::clock::unix_ms());
    let dir = data_dir.to_path_buf();
    // A thread of its own, not the runtime's blocking pool: if the disk
    // hangs, the process must still exit (the runtime would wait for it).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fail_stop::write(&dir, &note));
    });
    match tokio::time::timeout(FAIL_STOP_NOTE_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => {
            tracing::error!(%err, "cannot note the fail-stop in the data directory")
        }
        Ok(Err(_)) => tracing::error!("the fail-stop note thread died"),
        Err(_) => tracing::error!(
            timeout_ms = FAIL_STOP_NOTE_TIMEOUT.as_millis() as u64,
            "noting the fail-stop in the data directory hangs; stopping without it"
        ),
    }
    if let Some(coordinator) = coordinator
        && let Err(err) =
            trellis_shard::membership::report_fail_stop(coordinator, group, advertise, why).await
    {
        tracing::error!(%err, "cannot tell the coordinator about the fail-stop");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Every line this process logs, on any thread, is inside its root span.
    let root = crate::logs::shard_span(args.group);
    let runtime = crate::logs::runtime(&root).context("starting the async runtime")?;
    let _root = root.clone().entered();
    runtime.block_on(serve(args, root))
}

/// Serves until told to stop; `root` is the process's root span, whose
/// fields are recorded as they become known.
async fn serve(args: Args, root: tracing::Span) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (map_epoch, slots) = match &args.coordinator {
        // Until the coordinator answers, own nothing under epoch 0.
        Some(_) => (0, SlotSet::empty()),
        None => (args.map_epoch, args.slots.clone()),
    };
    let config = ShardConfig {
        data_dir: args.data_dir.clone(),
        group_id: args.group,
        map_epoch,
        slots,
        replicated: args.coordinator.is_some(),
        feed_bytes_max: args.feed_bytes_max,
        catch_up_bytes_per_sec: args.catch_up_bytes_per_sec,
        log: trellis_shard::engine::LogConfig {
            segment_bytes: args.segment_bytes,
            snapshot_every_bytes: args.snapshot_every_bytes,
            retain_bytes: args.log_retain_bytes,
        },
    };
    let opened = metrics.clone();
    let shard = tokio::task::spawn_blocking(move || Shard::open(config, opened))
        .await
        .context("recovery task")?
        .with_context(|| format!("opening shard data in {}", args.data_dir.display()))?;
    // The last fail-stop, if this replica had one, and a note file ready
    // to be overwritten in place at the next (see trellis_shard::fail_stop).
    match fail_stop::prepare(&args.data_dir) {
        Ok(Some(note)) => {
            tracing::warn!(cause = %note.cause, unix_ms = note.unix_ms, detail = %note.detail, "this replica fail-stopped when it last ran");
            let _ = metrics.last_fail_stop.set((note.cause, note.unix_ms));
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(%err, "cannot prepare the fail-stop note; a fail-stop would not be noted in the data directory")
        }
    }
    let recovery = shard.recovery().clone();
    tracing::info!(
        snapshot_lsn = recovery.snapshot_lsn,
        replayed = recovery.replayed,
        last_lsn = recovery.last_lsn,
        torn_bytes = recovery.torn_bytes,
        took_ms = recovery.took.as_millis() as u64,
        "recovered"
    );

    // A replica is known to its group by its address, so one started on
    // port 0 keeps the port it first got across restarts.
    let port_file = args.data_dir.join(PORT_FILE);
    let mut listen = args.listen;
    if listen.port() == 0
        && let Ok(text) = std::fs::read_to_string(&port_file)
        && let Ok(port) = text.trim().parse::<u16>()
    {
        listen.set_port(port);
    }
    let (grpc_addr, grpc_listener) = server::bind(listen).await.with_context(|| {
        format!(
            "binding gRPC on {listen} (the replica's address from its last run is kept in {})",
            port_file.display()
        )
    })?;
    if args.listen.port() == 0 {
        std::fs::write(&port_file, format!("{}\n", grpc_addr.port()))
            .with_context(|| format!("writing {}", port_file.display()))?;
    }
    let (metrics_addr, metrics_listener) = metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics on {}", args.metrics_listen))?;
    shard.repl.set_metrics_addr(&metrics_addr.to_string());
    let render_shard = shard.clone();
    let metrics_task = tokio::spawn(crate::tls::serve_metrics(metrics_listener, move || {
        let mut out = render_shard.render_metrics();
        render_shard.gate.render(&mut out);
        crate::tls::render(&mut out);
        out
    }));
    let snapshot_task = tokio::spawn(shard.clone().snapshot_loop());

    // The address the group knows this replica by.
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());
    root.record("replica", advertise.as_str());
    // With TLS, clients that route their own requests call this shard
    // too: keep the cluster's auth settings here to judge them (without
    // TLS every caller is served as a cluster process).
    let auth_task = args
        .coordinator
        .clone()
        .filter(|_| trellis_net::tls::current().is_some())
        .map(|coordinator| {
            tokio::spawn(trellis_shard::gate::follow(shard.gate.clone(), coordinator))
        });
    let register_task = args.coordinator.clone().map(|coordinator| {
        shard.repl.set_me(&advertise);
        shard.repl.set_coordinator(&coordinator);
        let shard = shard.clone();
        let group = args.group;
        let advertise = advertise.clone();
        tokio::spawn(async move {
            trellis_shard::membership::register(
                shard.clone(),
                coordinator.clone(),
                group,
                advertise,
            )
            .await;
            trellis_shard::replica::run(shard, coordinator).await;
        })
    });

    println!(
        "READY grpc={grpc_addr} metrics={metrics_addr} group={}",
        args.group
    );
    tracing::info!(%grpc_addr, %metrics_addr, group = args.group, "shard serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server::serve(shard.clone(), grpc_listener, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(serving);
    let served = tokio::select! {
        served = &mut serving => served.context("serving gRPC"),
        why = shard.log_failed() => {
            // Fail-stop: after a failed write or fsync nothing may be
            // acknowledged again; a restart recovers from what is durable.
            tracing::error!(%why, cause = %why.cause, "the log failed; stopping so that a restart recovers");
            note_fail_stop(&args.data_dir, args.coordinator.as_deref(), args.group, &advertise, &why).await;
            Err(anyhow::anyhow!(
                "the shard's log failed ({why}); stopped without acknowledging anything more. \
                 Fix the disk (space, errors) and start the shard again: recovery keeps \
                 every acknowledged write"
            ))
        }
        () = crate::signals::shutdown(args.exit_with_parent) => {
            let _ = stop_tx.send(());
            // In-flight requests get a grace period; idle client connections
            // that ignore GOAWAY must not hold the shutdown up.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
                Ok(served) => served.context("serving gRPC"),
                Err(_) => {
                    tracing::warn!(grace_ms = SHUTDOWN_GRACE.as_millis() as u64, "connections still open after the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    metrics_task.abort();
    snapshot_task.abort();
    for task in [register_task, auth_task].into_iter().flatten() {
        task.abort();
    }
    shard.shutdown();
    if served.is_ok() {
        tracing::info!("shard stopped cleanly");
    }
    served
}
