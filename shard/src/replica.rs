//! The moving parts of replication: the primary's side of the `Replicate`
//! stream, the backup's side, the loop that follows the group's
//! configuration in the catalog (through the coordinator's `Membership`
//! service), the primary's upkeep of the configuration, and failover.
//!
//! See [`crate::repl`] for the rules these follow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};
use trellis_proto::shard::v1 as pb;
use trellis_proto::shard::v1::membership_client::MembershipClient;
use trellis_proto::shard::v1::shard_client::ShardClient;
use trellis_types::limits::MESSAGE_BYTES_MAX;
use trellis_types::{Lsn, MapEpoch, SlotSet};

use crate::engine::{Shard, ShardError};
use crate::repl::{FeedGap, FeedRecord, GRACE, Role, SAFE_POINT_INTERVAL, common_prefix};
use crate::role::{
    Change, GroupConfig, Member, PeerStatus, Step, apply_changes, choose_primary, failover_peers,
    hand_over, next_role, primary_still_serving, upkeep_changes,
};
use crate::wal::WalError;

/// How often every replica re-reads its group's configuration.
pub const CONFIG_POLL: Duration = Duration::from_millis(250);
// A replica whose certificate the coordinator refuses fails a handshake
// at every poll of its configuration and of the auth settings (and a few
// registrations besides): with room to spare, that must stay under the
// coordinator's rate limit on failed handshakes, which would otherwise
// close new connections from every process on the replica's machine.
const _: () = assert!(
    2 * (trellis_net::tls::limit::HANDSHAKE_FAILURE_WINDOW.as_millis() / CONFIG_POLL.as_millis())
        + trellis_net::tls::limit::HANDSHAKE_FAILURE_WINDOW.as_millis()
            / crate::gate::AUTH_POLL.as_millis()
        <= trellis_net::tls::limit::HANDSHAKE_FAILURES_MAX as u128
);
/// Deadline of one call to the coordinator.
pub const CONTROL_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one peer's status during a failover: shorter, because a
/// failover asks the old primary and then every in-sync backup in turn.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);
const _: () = assert!(PEER_STATUS_TIMEOUT.as_millis() < CONTROL_RPC_TIMEOUT.as_millis());
/// Deadline for a backup to connect to its primary.
pub const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Batches queued towards one backup.
pub const STREAM_QUEUE_MAX: usize = 8;
/// Bytes of a snapshot per batch.
pub const SNAPSHOT_PIECE_BYTES: usize = 1024 * 1024;
/// Largest snapshot a backup accepts.
pub const SNAPSHOT_BYTES_MAX: usize = 8 * 1024 * 1024 * 1024;
/// Applied batches waiting for their acknowledgement (the acknowledging
/// task folds all waiting ones into one).
pub const ACKS_QUEUED_MAX: usize = 1024;
/// A backup further behind than this many records is catching up, and what
/// it is sent is paced ([`crate::pacer`]); closer, it is streamed at once.
pub const CATCH_UP_LAG_RECORDS: Lsn = 1024;
/// Pause before a backup reconnects after its stream failed.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// HTTP/2 keep-alive on replication and control channels: a peer that
/// stops answering is noticed within about a lease.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a replication stream or a call to the coordinator failed. The
/// texts are what the logs have always said; callers log these and retry
/// (streams reconnect, the configuration is polled again).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A peer's or the coordinator's address is not a valid URI.
    #[error("bad address {addr}: {source}")]
    BadAddress {
        /// The address as configured.
        addr: String,
        /// What is wrong with it.
        source: tonic::transport::Error,
    },
    /// The engine refused or failed (applying records, installing a
    /// snapshot, opening the log for a backlog).
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A log or snapshot could not be read or decoded.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A task running blocking file work failed (panicked or was
    /// cancelled).
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// Encoding a snapshot for a backup failed.
    #[error(transparent)]
    Encode(#[from] std::io::Error),
    /// The coordinator's slot bitmap is malformed.
    #[error("the coordinator sent a bad slot map: {0}")]
    SlotMap(String),
    /// The primary sent a record kind wider than the one byte it logs.
    #[error("record kind {0} out of range")]
    RecordKind(u32),
    /// A backup needs records the feed and the log on disk no longer hold.
    #[error(
        "the backup fell behind the feed and the log on disk (needs {next}); \
         it reconnects for a snapshot"
    )]
    BehindLog {
        /// The first record it needs.
        next: Lsn,
    },
    /// The blocking task reading the log for a backup failed.
    #[error("log read task failed: {0}")]
    LogReadTask(tokio::task::JoinError),
    /// Reading the log for a backup failed.
    #[error("reading the log for a backup: {0}")]
    LogRead(WalError),
    /// Primary: the backup's end of the stream is gone.
    #[error("the backup went away")]
    BackupGone,
    /// Primary: the role or epoch changed while streaming.
    #[error("no longer the primary of this epoch")]
    NoLongerPrimary,
    /// Primary: the feed of recent records closed.
    #[error("the feed closed")]
    FeedClosed,
    /// Backup: the queue of acknowledgements closed.
    #[error("ack queue closed")]
    AckQueueClosed,
    /// Backup: the primary did not open the stream in time.
    #[error("no answer from primary {primary}")]
    PrimaryNoAnswer {
        /// The primary's address.
        primary: String,
    },
    /// Backup: the primary refused the stream.
    #[error("primary {primary} refused: {}", .status.message())]
    PrimaryRefused {
        /// The primary's address.
        primary: String,
        /// Its answer.
        status: Status,
    },
    /// Backup: nothing came from the primary within the grace period.
    #[error("primary {primary} silent for {grace:?}")]
    PrimarySilent {
        /// The primary's address.
        primary: String,
        /// How long it was silent ([`GRACE`]).
        grace: Duration,
    },
    /// Backup: the primary closed the stream.
    #[error("primary {primary} closed the stream")]
    PrimaryClosed {
        /// The primary's address.
        primary: String,
    },
    /// Backup: the stream failed.
    #[error("stream: {}", .0.message())]
    Stream(Status),
    /// Backup: the epoch changed (here or in what the primary sent).
    #[error("the epoch changed")]
    EpochChanged,
    /// Backup: the log prefix before a snapshot was refused.
    #[error(transparent)]
    Prefix(#[from] crate::log_prefix::PrefixError),
    /// Backup: the primary's snapshot is larger than [`SNAPSHOT_BYTES_MAX`].
    #[error("snapshot larger than SNAPSHOT_BYTES_MAX")]
    SnapshotTooLarge,
    /// Backup: the task sending acknowledgements stopped.
    #[error("the acknowledgement task stopped")]
    AckTaskStopped,
    /// The coordinator refused or failed a call (its message).
    #[error("{}", .0.message())]
    Coordinator(Status),
    /// The coordinator answered a configuration change without the
    /// configuration.
    #[error("the coordinator sent no configuration")]
    NoConfiguration,
}

/// A lazily connecting channel to `addr`; `timeout` is the deadline of each
/// call (`None` only for the long-lived replication stream, whose every
/// message has its own deadline instead).
fn channel(addr: &str, timeout: Option<Duration>) -> Result<Channel, ReplicaError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ReplicaError::BadAddress {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(STREAM_CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let endpoint = match timeout {
        Some(t) => endpoint.timeout(t),
        None => endpoint,
    };
    Ok(trellis_net::lazy(endpoint))
}

/// The coordinator's Membership service (one channel, reused by every call).
type Coordinator = MembershipClient<Channel>;

fn membership(coordinator: &str) -> Result<Coordinator, ReplicaError> {
    Ok(MembershipClient::new(channel(
        coordinator,
        Some(CONTROL_RPC_TIMEOUT),
    )?))
}

fn shard_client(
    addr: &str,
    timeout: Option<Duration>,
) -> Result<ShardClient<Channel>, ReplicaError> {
    Ok(ShardClient::new(channel(addr, timeout)?)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

/// A record as the stream carries it: what the primary's feed (or its log
/// on disk) holds, unchanged.
fn record_to_wire(record: FeedRecord) -> pb::ReplicaRecord {
    pb::ReplicaRecord {
        lsn: record.lsn,
        kind: u32::from(record.kind),
        payload: record.payload,
    }
}

/// A streamed record back as the domain record the engine appends. The
/// primary sends only kinds it logged (one byte); a wider one is refused.
fn record_from_wire(record: pb::ReplicaRecord) -> Result<FeedRecord, ReplicaError> {
    let kind = u8::try_from(record.kind).map_err(|_| ReplicaError::RecordKind(record.kind))?;
    Ok(FeedRecord {
        lsn: record.lsn,
        kind,
        payload: record.payload,
    })
}

// ------------------------------------------------------------ primary side

/// Serves one backup's `Replicate` stream: checks its hello, sends a
/// snapshot if its log cannot be continued from the feed, then records and
/// heartbeats; takes its acknowledgements.
pub async fn serve_stream(
    shard: Arc<Shard>,
    mut inbound: Streaming<pb::ReplicaAck>,
) -> Result<mpsc::Receiver<Result<pb::ReplicaBatch, Status>>, Status> {
    let first = tokio::time::timeout(CONTROL_RPC_TIMEOUT, inbound.next())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello from the backup"))?
        .ok_or_else(|| Status::cancelled("the backup closed the stream"))??;
    let hello = first
        .hello
        .ok_or_else(|| Status::invalid_argument("the first message must carry a hello"))?;
    let (role, epoch) = shard.repl.role();
    if role != Role::Primary {
        return Err(Status::unavailable(format!(
            "not a primary (this replica is {} at epoch {epoch})",
            role.name()
        )));
    }
    if hello.epoch != epoch {
        return Err(Status::failed_precondition(format!(
            "epoch mismatch: the backup is at epoch {}, this primary at {epoch}",
            hello.epoch
        )));
    }
    let known = shard
        .repl
        .config()
        .as_ref()
        .is_some_and(|c| c.members.iter().skip(1).any(|m| m.addr == hello.addr));
    if !known {
        return Err(Status::failed_precondition(format!(
            "{} is not a member of this group's configuration; it must register first",
            hello.addr
        )));
    }
    let theirs: Vec<(u64, Lsn)> = hello.epochs.iter().map(|e| (e.epoch, e.lsn)).collect();
    let common = common_prefix(&shard.epochs(), shard.last_lsn(), &theirs, hello.last_lsn);
    // Past the in-memory feed, the log on disk may still have what the
    // backup needs; only when neither has it does it get a snapshot.
    // The reader, positioned at the backup's next record, is handed on.
    let in_feed = shard.repl.feed.can_feed_after(hello.last_lsn);
    let disk = if in_feed {
        None
    } else {
        shard
            .log_reader(hello.last_lsn + 1)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
    };
    let from_log = disk.is_some();
    let needs_snapshot = common < hello.last_lsn || (!in_feed && !from_log);
    tracing::info!(
        backup = %hello.addr,
        their_last = hello.last_lsn,
        common,
        needs_snapshot,
        from_log,
        "backup connected"
    );

    let (tx, rx) = mpsc::channel(STREAM_QUEUE_MAX);
    let addr = hello.addr.clone();
    // The newest clock token the backup sent: echoed in safe points.
    let token = Arc::new(AtomicU64::new(0));
    // Acknowledgements.
    {
        let shard = shard.clone();
        let addr = addr.clone();
        let token = token.clone();
        tokio::spawn(async move {
            while let Some(Ok(ack)) = inbound.next().await {
                token.fetch_max(ack.sent_at, Ordering::AcqRel);
                shard.repl.ack(
                    &addr,
                    ack.durable_lsn,
                    ack.heartbeat_seq,
                    shard.durable_lsn(),
                    Instant::now(),
                );
            }
        });
    }
    // Records and heartbeats.
    tokio::spawn(async move {
        let disk = if needs_snapshot { None } else { disk };
        let report = CatchUpReport {
            shard: &shard,
            addr: &addr,
            stream: shard.repl.new_stream(),
        };
        let link = BackupLink {
            tx: &tx,
            token: &token,
        };
        if let Err(err) = feed_backup(
            &shard,
            link,
            epoch,
            hello.last_lsn,
            needs_snapshot,
            disk,
            &report,
        )
        .await
        {
            tracing::debug!(backup = %addr, %err, "stream to backup ended");
            let _ = tx.send(Err(Status::aborted(err.to_string()))).await;
        }
    });
    Ok(rx)
}

/// Publishes one stream's catch-up progress in the primary's state (for
/// `trellis status` and the metrics); clears it when the stream ends.
struct CatchUpReport<'a> {
    shard: &'a Arc<Shard>,
    addr: &'a str,
    stream: u64,
}

impl CatchUpReport<'_> {
    fn set(&self, mode: crate::repl::CatchUpMode, done: u64, total: u64) {
        self.shard
            .repl
            .report_catch_up(self.addr, self.stream, Some((mode, done, total)));
    }

    fn clear(&self) {
        self.shard
            .repl
            .report_catch_up(self.addr, self.stream, None);
    }
}

impl Drop for CatchUpReport<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The next batch for a backup behind the in-memory feed, from the log on
/// disk (opening a reader at `next` unless `disk` is already there).
async fn read_log(
    shard: &Arc<Shard>,
    disk: &mut Option<crate::wal::LogReader>,
    next: Lsn,
) -> Result<Vec<crate::repl::FeedRecord>, ReplicaError> {
    let reader = match disk.take() {
        Some(reader) if reader.next_lsn() == next => reader,
        _ => shard
            .log_reader(next)
            .await?
            .ok_or(ReplicaError::BehindLog { next })?,
    };
    let upto = shard.durable_lsn();
    let (reader, read) = crate::fsio::blocking(move || {
        let mut reader = reader;
        let read = reader.read(upto, crate::repl::BATCH_BYTES_MAX);
        (reader, read)
    })
    .await
    .map_err(ReplicaError::LogReadTask)?;
    let records = read.map_err(ReplicaError::LogRead)?;
    *disk = Some(reader);
    Ok(records
        .into_iter()
        .map(|r| crate::repl::FeedRecord {
            lsn: r.lsn,
            kind: r.kind,
            payload: r.payload.into(),
        })
        .collect())
}

/// The safe point a batch built now carries ([`crate::freshness`]): the
/// newest token the backup sent, read first, then the last LSN appended;
/// none unless this replica holds its lease (no other primary can append).
fn safe_point(shard: &Shard, token: &AtomicU64) -> (Lsn, u64) {
    let token = token.load(Ordering::Acquire);
    if token == 0 || !shard.repl.serving(Instant::now()) {
        return (0, 0);
    }
    (shard.last_lsn(), token)
}

/// Where a stream's batches go, and the newest clock token its backup
/// sent (echoed in safe points).
struct BackupLink<'a> {
    tx: &'a mpsc::Sender<Result<pb::ReplicaBatch, Status>>,
    token: &'a AtomicU64,
}

async fn feed_backup(
    shard: &Arc<Shard>,
    link: BackupLink<'_>,
    epoch: u64,
    their_last: Lsn,
    needs_snapshot: bool,
    // A reader of the log on disk at the backup's next record, if the feed
    // no longer has it.
    mut disk: Option<crate::wal::LogReader>,
    report: &CatchUpReport<'_>,
) -> Result<(), ReplicaError> {
    use crate::repl::CatchUpMode;
    let mut next = their_last + 1;
    // Snapshots taken meanwhile keep the log this stream still needs.
    let pin = shard.pin_log(next.min(shard.last_lsn() + 1));
    if needs_snapshot {
        // What registered feeds pin stays on disk while it is sent.
        if let Some(feeds_from) = shard.feeds_need_from() {
            pin.advance(feeds_from.min(next).min(shard.last_lsn() + 1));
        }
        let capture = shard.capture();
        next = capture.lsn + 1;
        send_log_prefix(shard, &link, epoch, capture.lsn, report).await?;
        pin.advance(next);
        let mut bytes = Vec::new();
        crate::snapshot::encode(&mut bytes, &capture)?;
        drop(capture);
        let total = bytes.len() as u64;
        let mut sent = 0u64;
        report.set(CatchUpMode::Snapshot, sent, total);
        let pieces = bytes.len().div_ceil(SNAPSHOT_PIECE_BYTES).max(1);
        for (i, piece) in bytes
            .chunks(SNAPSHOT_PIECE_BYTES)
            .chain(std::iter::once(&[][..]))
            .take(pieces)
            .enumerate()
        {
            let batch = pb::ReplicaBatch {
                epoch,
                heartbeat_seq: shard.repl.heartbeat(Instant::now()),
                snapshot: piece.to_vec(),
                snapshot_done: i + 1 == pieces,
                records: Vec::new(),
                commit_lsn: shard.repl.marks().sync,
                safe_lsn: 0,
                safe_token: 0,
                prefix: Vec::new(),
            };
            pace(shard, piece.len()).await;
            link.tx
                .send(Ok(batch))
                .await
                .map_err(|_| ReplicaError::BackupGone)?;
            sent += piece.len() as u64;
            report.set(CatchUpMode::Snapshot, sent, total);
        }
        shard.metrics().snapshots_sent.inc();
    }
    let mut feed = shard.repl.feed.subscribe();
    let mut tick = tokio::time::interval(SAFE_POINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // First record of the backlog being caught up, while there is one, and
    // whether a catch-up (snapshot or backlog) is being reported.
    let mut backlog_from: Option<Lsn> = None;
    let mut reporting = needs_snapshot;
    loop {
        if shard.repl.role() != (Role::Primary, epoch) {
            return Err(ReplicaError::NoLongerPrimary);
        }
        // A backup more than CATCH_UP_LAG_RECORDS behind, or one fed from
        // the log on disk, is catching up: its backlog is paced; one that
        // keeps up is streamed at once.
        let mut catching_up = shard.last_lsn().saturating_sub(next) > CATCH_UP_LAG_RECORDS;
        let (records, mode) = match shard.repl.feed.batch(next) {
            Ok(records) => {
                disk = None;
                (records, CatchUpMode::Feed)
            }
            Err(FeedGap::Trimmed) => {
                let records = read_log(shard, &mut disk, next).await?;
                shard
                    .metrics()
                    .catch_up_log_records
                    .add(records.len() as u64);
                catching_up = true;
                (records, CatchUpMode::Log)
            }
        };
        if catching_up {
            let from = *backlog_from.get_or_insert(next);
            let done = records.last().map_or(next, |r| r.lsn + 1) - from;
            report.set(mode, done, (shard.last_lsn() + 1).saturating_sub(from));
            reporting = true;
        } else if reporting {
            backlog_from = None;
            reporting = false;
            report.clear();
        }
        if let Some(last) = records.last() {
            next = last.lsn + 1;
            pin.advance(next);
        }
        let sent_records = !records.is_empty();
        if catching_up {
            pace(shard, records.iter().map(|r| r.payload.len()).sum()).await;
        }
        let (safe_lsn, safe_token) = safe_point(shard, link.token);
        let batch = pb::ReplicaBatch {
            epoch,
            heartbeat_seq: shard.repl.heartbeat(Instant::now()),
            snapshot: Vec::new(),
            snapshot_done: false,
            records: records.into_iter().map(record_to_wire).collect(),
            commit_lsn: shard.repl.marks().sync,
            safe_lsn,
            safe_token,
            prefix: Vec::new(),
        };
        link.tx
            .send(Ok(batch))
            .await
            .map_err(|_| ReplicaError::BackupGone)?;
        if sent_records && shard.last_lsn() >= next {
            continue; // more is waiting
        }
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() {
                    return Err(ReplicaError::FeedClosed);
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// Sends, before a snapshot at `snapshot_lsn`, the log prefix registered
/// feeds pin below it ([`crate::log_prefix`]): batches of at most
/// [`crate::repl::BATCH_BYTES_MAX`] read from the log on disk, paced like
/// any catch-up. The caller pinned the log from the feeds' pin. Sends
/// nothing when no feed is registered or the feeds need nothing below the
/// snapshot.
async fn send_log_prefix(
    shard: &Arc<Shard>,
    link: &BackupLink<'_>,
    epoch: u64,
    snapshot_lsn: Lsn,
    report: &CatchUpReport<'_>,
) -> Result<(), ReplicaError> {
    let Some(start) = shard.snapshot_prefix_start(snapshot_lsn).await? else {
        return Ok(());
    };
    // Only durable records are read back from the log.
    shard.wait_durable(snapshot_lsn).await?;
    let Some(mut reader) = shard.log_reader(start).await? else {
        // Pinned, so never cut meanwhile; a log that did not reach back
        // (the primary restored by snapshot itself) sends no prefix.
        return Ok(());
    };
    let total = snapshot_lsn + 1 - start;
    while reader.next_lsn() <= snapshot_lsn {
        let (back, read) = crate::fsio::blocking(move || {
            let read = reader.read(snapshot_lsn, crate::repl::BATCH_BYTES_MAX);
            (reader, read)
        })
        .await
        .map_err(ReplicaError::LogReadTask)?;
        reader = back;
        let records = read.map_err(ReplicaError::LogRead)?;
        let bytes = records.iter().map(|r| r.payload.len()).sum();
        let batch = pb::ReplicaBatch {
            epoch,
            heartbeat_seq: shard.repl.heartbeat(Instant::now()),
            snapshot: Vec::new(),
            snapshot_done: false,
            records: Vec::new(),
            commit_lsn: shard.repl.marks().sync,
            safe_lsn: 0,
            safe_token: 0,
            prefix: records
                .into_iter()
                .map(|r| pb::ReplicaRecord {
                    lsn: r.lsn,
                    kind: u32::from(r.kind),
                    payload: r.payload.into(),
                })
                .collect(),
        };
        pace(shard, bytes).await;
        link.tx
            .send(Ok(batch))
            .await
            .map_err(|_| ReplicaError::BackupGone)?;
        // In records, as a backlog read from the log is reported.
        report.set(
            crate::repl::CatchUpMode::Log,
            reader.next_lsn() - start,
            total,
        );
    }
    shard.metrics().catch_up_log_records.add(total);
    Ok(())
}

/// Waits for the catch-up rate to allow `bytes` more, and counts them.
async fn pace(shard: &Arc<Shard>, bytes: usize) {
    let waited = shard.catch_up.take(bytes).await;
    let metrics = shard.metrics();
    metrics.catch_up_bytes.add(bytes as u64);
    metrics.catch_up_paced_ms.add(waited.as_millis() as u64);
}

// ------------------------------------------------------------- backup side

/// Follows `primary` at `epoch` until the stream fails or the role changes.
async fn follow(shard: &Arc<Shard>, primary: &str, epoch: u64) -> Result<(), ReplicaError> {
    let mut client = shard_client(primary, None)?;
    let (ack_tx, ack_rx) = mpsc::channel::<pb::ReplicaAck>(STREAM_QUEUE_MAX);
    let hello = pb::ReplicaHello {
        group_id: shard.group_id(),
        epoch,
        addr: shard.repl.me(),
        last_lsn: shard.last_lsn(),
        epochs: shard
            .epochs()
            .into_iter()
            .map(|(epoch, lsn)| pb::EpochStart { epoch, lsn })
            .collect(),
    };
    ack_tx
        .send(pb::ReplicaAck {
            hello: Some(hello),
            durable_lsn: shard.durable_lsn(),
            heartbeat_seq: 0,
            sent_at: shard.repl.clock_token(Instant::now()),
        })
        .await
        .map_err(|_| ReplicaError::AckQueueClosed)?;
    let opened = tokio::time::timeout(
        CONTROL_RPC_TIMEOUT,
        client.replicate(tokio_stream::wrappers::ReceiverStream::new(ack_rx)),
    )
    .await
    .map_err(|_| ReplicaError::PrimaryNoAnswer {
        primary: primary.to_string(),
    })?
    .map_err(|status| ReplicaError::PrimaryRefused {
        primary: primary.to_string(),
        status,
    })?;
    let mut stream = opened.into_inner();
    // Safe points of an earlier stream prove nothing about this one's log.
    shard.repl.reset_freshness();
    // Acknowledgements go out from their own task, so receiving and
    // applying never waits for an fsync: whatever arrived meanwhile is
    // covered by the next wait (group commit on the backup too).
    let (applied_tx, mut applied_rx) = mpsc::channel::<(Lsn, u64)>(ACKS_QUEUED_MAX);
    let acker = {
        let shard = shard.clone();
        tokio::spawn(async move {
            while let Some((mut lsn, mut seq)) = applied_rx.recv().await {
                while let Ok((l, s)) = applied_rx.try_recv() {
                    lsn = lsn.max(l);
                    seq = seq.max(s);
                }
                // Unurged: an eager record syncs at once anyway, and a
                // lazy one (the finalizer's) waits at most LAZY_SYNC_DELAY.
                // Each step of durability is acknowledged as it comes, so
                // a lazy record that arrived last (the previous
                // transaction's FINALIZE after the next one's PREPARE)
                // never holds back the acknowledgement of an eager one
                // before it. Those steps carry no heartbeat (0 is none):
                // the lease follows only the full acknowledgement below.
                loop {
                    let durable = shard.durable_lsn();
                    if durable >= lsn {
                        break;
                    }
                    if shard.wait_durable_unurged(durable + 1).await.is_err() {
                        return;
                    }
                    let durable = shard.durable_lsn();
                    if durable >= lsn {
                        break;
                    }
                    let step = pb::ReplicaAck {
                        hello: None,
                        durable_lsn: durable,
                        heartbeat_seq: 0,
                        sent_at: shard.repl.clock_token(Instant::now()),
                    };
                    if ack_tx.send(step).await.is_err() {
                        return;
                    }
                }
                let ack = pb::ReplicaAck {
                    hello: None,
                    durable_lsn: shard.durable_lsn(),
                    heartbeat_seq: seq,
                    sent_at: shard.repl.clock_token(Instant::now()),
                };
                if ack_tx.send(ack).await.is_err() {
                    return;
                }
            }
        })
    };
    let result = receive(shard, primary, epoch, &mut stream, &applied_tx).await;
    acker.abort();
    result
}

/// The receiving half of [`follow`]: applies what the primary sends and
/// queues each batch's acknowledgement.
async fn receive(
    shard: &Arc<Shard>,
    primary: &str,
    epoch: u64,
    stream: &mut Streaming<pb::ReplicaBatch>,
    applied: &mpsc::Sender<(Lsn, u64)>,
) -> Result<(), ReplicaError> {
    let mut snapshot: Vec<u8> = Vec::new();
    // The log prefix that comes before a snapshot, staged as it comes.
    let mut prefix: Option<crate::log_prefix::PrefixStage> = None;
    loop {
        let batch = match tokio::time::timeout(GRACE, stream.next()).await {
            Err(_) => {
                return Err(ReplicaError::PrimarySilent {
                    primary: primary.to_string(),
                    grace: GRACE,
                });
            }
            Ok(None) => {
                return Err(ReplicaError::PrimaryClosed {
                    primary: primary.to_string(),
                });
            }
            Ok(Some(Err(status))) => return Err(ReplicaError::Stream(status)),
            Ok(Some(Ok(batch))) => batch,
        };
        if shard.repl.role().1 != epoch || batch.epoch != epoch {
            return Err(ReplicaError::EpochChanged);
        }
        shard.repl.heard(Instant::now());
        if !batch.prefix.is_empty() {
            let records = batch
                .prefix
                .into_iter()
                .map(record_from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            let stage = match prefix.take() {
                Some(stage) => stage,
                None => {
                    let shard = shard.clone();
                    crate::fsio::blocking(move || shard.stage_prefix()).await??
                }
            };
            let stage = crate::fsio::blocking(move || {
                let mut stage = stage;
                stage.append(&records).map(|()| stage)
            })
            .await??;
            prefix = Some(stage);
            // Like snapshot pieces, renews no lease.
            continue;
        }
        if !batch.snapshot.is_empty() || batch.snapshot_done {
            if snapshot.len() + batch.snapshot.len() > SNAPSHOT_BYTES_MAX {
                return Err(ReplicaError::SnapshotTooLarge);
            }
            snapshot.extend_from_slice(&batch.snapshot);
            if batch.snapshot_done {
                let bytes = std::mem::take(&mut snapshot);
                let capture = crate::snapshot::decode(
                    &bytes,
                    std::path::Path::new("(snapshot from the primary)"),
                )?;
                let shard2 = shard.clone();
                let stage = prefix.take();
                crate::fsio::blocking(move || {
                    let prefix = match stage {
                        Some(stage) => stage.finish(capture.lsn)?,
                        None => None,
                    };
                    shard2
                        .install_snapshot(capture, prefix)
                        .map_err(ReplicaError::from)
                })
                .await??;
            }
            // Snapshot pieces renew no lease (nothing is acknowledged
            // until it is installed).
            if !batch.snapshot_done {
                continue;
            }
        }
        let last = if batch.records.is_empty() {
            shard.last_lsn()
        } else {
            if trellis_types::failpoint::armed(crate::failpoint::BACKUP_APPLY_LAG_NAME) {
                tokio::time::sleep(crate::failpoint::BACKUP_APPLY_LAG).await;
            }
            shard
                .metrics()
                .replicated_records
                .add(batch.records.len() as u64);
            let records = batch
                .records
                .into_iter()
                .map(record_from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            shard.apply_replicated(&records)?
        };
        shard.repl.on_batch(
            Instant::now(),
            last,
            batch.commit_lsn,
            batch.safe_lsn,
            batch.safe_token,
        );
        applied
            .send((last, batch.heartbeat_seq))
            .await
            .map_err(|_| ReplicaError::AckTaskStopped)?;
    }
}

// ------------------------------------------------- configuration and roles

/// Runs forever: follows the group's configuration, switches roles, streams
/// from the primary as a backup, keeps the configuration as a primary, and
/// asks for a failover when the primary goes silent.
pub async fn run(shard: Arc<Shard>, coordinator: String) {
    let coordinator = match membership(&coordinator) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "cannot follow the group's configuration");
            return;
        }
    };
    let me = shard.repl.me();
    let follower = Arc::new(tokio::sync::Mutex::new(None::<(String, u64)>));
    let mut tick = tokio::time::interval(CONFIG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease_was_valid = false;
    loop {
        tick.tick().await;
        let config = match get_group(&coordinator, shard.group_id()).await {
            Ok(Polled {
                config,
                slots,
                feed_keep_from,
            }) => {
                if let Some(keep_from) = feed_keep_from {
                    shard.pin_log_for_feeds(keep_from);
                }
                if let Some((map_epoch, slots)) = slots {
                    let owned = slots.len();
                    if shard.set_slots(map_epoch, slots) {
                        tracing::info!(map_epoch, slots = owned, "following a newer slot map");
                    }
                }
                config
            }
            Err(err) => {
                tracing::debug!(%err, "cannot read the group's configuration");
                continue;
            }
        };
        let (role, epoch) = shard.repl.role();
        let last_heard = shard.repl.last_heard();
        match next_role(&config, &me, (role, epoch), last_heard, Instant::now()) {
            Step::Join { step_down } => {
                if step_down {
                    tracing::info!(
                        epoch,
                        "stepping down: no longer in the group's configuration; rejoining"
                    );
                    shard.repl.set_role(
                        Role::Idle,
                        epoch,
                        None,
                        shard.durable_lsn(),
                        Instant::now(),
                    );
                }
                if let Err(err) = register(&coordinator, shard.group_id(), &me).await {
                    tracing::debug!(%err, "cannot register");
                }
            }
            Step::Stale => {}
            Step::Lead { start } => {
                if start {
                    tracing::info!(epoch = config.epoch, "becoming the group's primary");
                    if let Err(err) = shard.become_primary(config.epoch, config.clone()) {
                        tracing::error!(%err, epoch = config.epoch, "cannot start as primary");
                        continue;
                    }
                } else {
                    shard.repl.set_role(
                        Role::Primary,
                        config.epoch,
                        Some(config.clone()),
                        shard.durable_lsn(),
                        Instant::now(),
                    );
                }
                let valid = shard.repl.serving(Instant::now());
                if lease_was_valid && !valid {
                    shard.metrics().leases_lost.inc();
                    tracing::warn!(
                        epoch = config.epoch,
                        "lease lapsed: serving nothing until the backups grant it again"
                    );
                }
                lease_was_valid = valid;
                upkeep(&shard, &coordinator, &config).await;
            }
            Step::Follow {
                role: want,
                primary,
                step_down,
                failover: primary_silent,
            } => {
                if step_down {
                    tracing::warn!(
                        epoch = config.epoch,
                        %primary,
                        "stepping down: another replica is primary"
                    );
                }
                // Same role and epoch: only the configuration is refreshed.
                shard.repl.set_role(
                    want,
                    config.epoch,
                    Some(config.clone()),
                    shard.durable_lsn(),
                    Instant::now(),
                );
                ensure_following(&shard, &follower, primary, config.epoch);
                if primary_silent {
                    failover(&shard, &coordinator, &config).await;
                }
            }
        }
    }
}

/// Starts a follower task for (`primary`, `epoch`) unless one runs.
fn ensure_following(
    shard: &Arc<Shard>,
    follower: &Arc<tokio::sync::Mutex<Option<(String, u64)>>>,
    primary: String,
    epoch: u64,
) {
    let Ok(mut current) = follower.try_lock() else {
        return;
    };
    if current.as_ref() == Some(&(primary.clone(), epoch)) {
        return;
    }
    *current = Some((primary.clone(), epoch));
    drop(current);
    tracing::info!(%primary, epoch, "following the primary");
    let shard = shard.clone();
    let follower = follower.clone();
    tokio::spawn(async move {
        loop {
            {
                let current = follower.lock().await;
                let (role, now_epoch) = shard.repl.role();
                if current.as_ref() != Some(&(primary.clone(), epoch))
                    || now_epoch != epoch
                    || !matches!(role, Role::Backup | Role::Learner)
                {
                    break;
                }
            }
            if let Err(err) = follow(&shard, &primary, epoch).await {
                tracing::debug!(%primary, epoch, %err, "following the primary failed; retrying");
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        let mut current = follower.lock().await;
        if current.as_ref() == Some(&(primary.clone(), epoch)) {
            *current = None;
        }
    });
}

/// Primary: takes silent backups out of the configuration, adds learners
/// that caught up ([`upkeep_changes`] decides).
async fn upkeep(shard: &Arc<Shard>, coordinator: &Coordinator, config: &GroupConfig) {
    let now = Instant::now();
    let last = shard.last_lsn();
    let peers = shard.repl.peers();
    let changes = upkeep_changes(config, &peers, last, now);
    // The catalog keeps one reason per change: the last one's.
    let Some(reason) = changes.last().map(Change::reason) else {
        return;
    };
    for change in &changes {
        let counter = match change {
            Change::Drop { .. } => &shard.metrics().backups_removed,
            Change::Admit { .. } => &shard.metrics().backups_added,
        };
        counter.inc();
    }
    let members = apply_changes(config, &changes);
    match cas_group(coordinator, config, config.epoch, members, &reason).await {
        Ok((true, new)) => {
            tracing::info!(%reason, epoch = new.epoch, "configuration changed");
            shard.repl.set_role(
                Role::Primary,
                new.epoch,
                Some(new),
                shard.durable_lsn(),
                Instant::now(),
            );
        }
        Ok((false, new)) => {
            tracing::info!(%reason, version = new.version, "configuration changed under us; re-reading");
        }
        Err(err) => tracing::warn!(%reason, %err, "cannot change the configuration"),
    }
}

/// Longest a hand-over waits for its target to have every record.
pub const TRANSFER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a hand-over checks whether its target has every record.
pub const TRANSFER_POLL: Duration = Duration::from_millis(5);

/// Primary: hands the group over to the in-sync backup `to`. Stops
/// serving, waits until `to` acknowledged every record, then makes it
/// primary at epoch + 1 with this replica as its backup. On any failure
/// before the catalog changed, serves again as before.
pub async fn transfer(shard: &Arc<Shard>, to: &str) -> Result<u64, Status> {
    let coordinator = shard.repl.coordinator().ok_or_else(|| {
        Status::failed_precondition("a standalone shard has no group to hand over")
    })?;
    let (role, epoch) = shard.repl.role();
    let config = shard.repl.config();
    let Some(config) = config.filter(|_| role == Role::Primary) else {
        return Err(Status::failed_precondition(format!(
            "this replica is {}, not the primary",
            role.name()
        )));
    };
    let members = hand_over(&config, to).map_err(|e| Status::invalid_argument(e.to_string()))?;
    shard.repl.set_handing_over(true);
    let result = async {
        let last = shard.last_lsn();
        let deadline = Instant::now() + TRANSFER_CATCH_UP_TIMEOUT;
        while shard.repl.acked(to).unwrap_or(0) < last {
            if Instant::now() > deadline {
                return Err(Status::unavailable(format!(
                    "{to} did not catch up to {last} within {TRANSFER_CATCH_UP_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(TRANSFER_POLL).await;
        }
        let reason = format!("primary transferred from {} to {to}", shard.repl.me());
        let coordinator = membership(&coordinator).map_err(|e| Status::internal(e.to_string()))?;
        match cas_group(&coordinator, &config, epoch + 1, members, &reason).await {
            Ok((true, new)) => Ok(new),
            Ok((false, _)) => Err(Status::aborted(
                "the configuration changed meanwhile; nothing was moved, try again",
            )),
            Err(err) => Err(Status::unavailable(format!(
                "cannot change the configuration: {err}"
            ))),
        }
    }
    .await;
    match result {
        Ok(new) => {
            tracing::info!(%to, epoch = new.epoch, "handed the group over");
            shard.repl.set_role(
                Role::Backup,
                new.epoch,
                Some(new.clone()),
                shard.durable_lsn(),
                Instant::now(),
            );
            Ok(new.epoch)
        }
        Err(status) => {
            shard.repl.set_handing_over(false);
            Err(status)
        }
    }
}

/// Backup: the primary is silent. Unless it still answers as a primary with
/// a lease, promote the most up-to-date reachable in-sync member (itself if
/// it is that member) at `epoch + 1` ([`choose_primary`] decides).
async fn failover(shard: &Arc<Shard>, coordinator: &Coordinator, config: &GroupConfig) {
    let old = match config.primary() {
        Some(addr) => peer_status(addr).await,
        None => None,
    };
    if primary_still_serving(config, old.as_ref()) {
        return; // it serves; our stream will reconnect
    }
    let me = shard.repl.me();
    let my_durable = shard.durable_lsn();
    let mut answers: Vec<(String, PeerStatus)> = Vec::new();
    for addr in failover_peers(config, &me) {
        if let Some(status) = peer_status(addr).await {
            answers.push((addr.to_string(), status));
        }
    }
    let chosen = match choose_primary(config, &me, my_durable, &answers) {
        Ok(chosen) => chosen,
        Err(err) => {
            tracing::warn!(%err, "cannot run a failover");
            return;
        }
    };
    let reason = chosen.reason();
    match cas_group(
        coordinator,
        config,
        config.epoch + 1,
        chosen.members,
        &reason,
    )
    .await
    {
        Ok((true, new)) => {
            tracing::warn!(%reason, epoch = new.epoch, "failover done");
            // The promoted replica starts at once if it is this one; the
            // others learn it at their next poll.
            if new.primary() == Some(me.as_str())
                && let Err(err) = shard.become_primary(new.epoch, new.clone())
            {
                tracing::error!(%err, epoch = new.epoch, "cannot start as primary");
            }
        }
        Ok((false, _)) => tracing::info!("another replica changed the configuration first"),
        Err(err) => tracing::warn!(%err, "failover failed; retrying"),
    }
}

/// A peer's own account of itself, or `None` if it does not answer in
/// time.
async fn peer_status(addr: &str) -> Option<PeerStatus> {
    let mut client = shard_client(addr, Some(PEER_STATUS_TIMEOUT)).ok()?;
    let call = client.shard_status(pb::ShardStatusRequest {});
    match tokio::time::timeout(PEER_STATUS_TIMEOUT, call).await {
        Ok(Ok(response)) => Some(PeerStatus::from(response.get_ref())),
        _ => None,
    }
}

/// What a configuration poll learns.
struct Polled {
    config: GroupConfig,
    /// The slot map's epoch with the group's slots under it, when the
    /// coordinator gave them.
    slots: Option<(MapEpoch, SlotSet)>,
    /// The first record registered feeds still need (0: none; `None`: the
    /// coordinator could not tell, so the pin stays as it was).
    feed_keep_from: Option<Lsn>,
}

/// The group's configuration, its slots, and the registered feeds' pin.
async fn get_group(coordinator: &Coordinator, group: u64) -> Result<Polled, ReplicaError> {
    let mut client = coordinator.clone();
    let wire = client
        .get_group(pb::GetGroupRequest { group_id: group })
        .await
        .map_err(ReplicaError::Coordinator)?
        .into_inner();
    let slots = if wire.map_epoch == 0 {
        None
    } else {
        let slots = SlotSet::from_bytes(&wire.slots).map_err(ReplicaError::SlotMap)?;
        Some((wire.map_epoch, slots))
    };
    let feed_keep_from = wire.feed_keep_from;
    Ok(Polled {
        config: GroupConfig::from(wire),
        slots,
        feed_keep_from,
    })
}

async fn register(coordinator: &Coordinator, group: u64, addr: &str) -> Result<(), ReplicaError> {
    let mut client = coordinator.clone();
    client
        .register(pb::RegisterRequest {
            group_id: group,
            addr: addr.to_string(),
            pid: std::process::id(),
        })
        .await
        .map(|_| ())
        .map_err(ReplicaError::Coordinator)
}

async fn cas_group(
    coordinator: &Coordinator,
    config: &GroupConfig,
    epoch: u64,
    members: Vec<Member>,
    reason: &str,
) -> Result<(bool, GroupConfig), ReplicaError> {
    let mut client = coordinator.clone();
    let response = client
        .cas_group(pb::CasGroupRequest {
            group_id: config.group_id,
            expected_version: config.version,
            epoch,
            members: members
                .into_iter()
                .map(crate::role::member_to_wire)
                .collect(),
            reason: reason.to_string(),
        })
        .await
        .map_err(ReplicaError::Coordinator)?
        .into_inner();
    let config = response.config.ok_or(ReplicaError::NoConfiguration)?;
    Ok((response.won, GroupConfig::from(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The logs say what they said when these errors were strings: the
    /// texts are part of what operators grep for.
    #[test]
    fn replica_errors_keep_their_texts() {
        let cases = [
            (
                ReplicaError::BehindLog { next: 7 },
                "the backup fell behind the feed and the log on disk (needs 7); \
                 it reconnects for a snapshot",
            ),
            (
                ReplicaError::PrimarySilent {
                    primary: "a:1".into(),
                    grace: GRACE,
                },
                &format!("primary a:1 silent for {GRACE:?}"),
            ),
            (
                ReplicaError::PrimaryRefused {
                    primary: "a:1".into(),
                    status: Status::unavailable("not now"),
                },
                "primary a:1 refused: not now",
            ),
            (
                ReplicaError::Stream(Status::aborted("gone")),
                "stream: gone",
            ),
            (
                ReplicaError::Coordinator(Status::unavailable("no catalog")),
                "no catalog",
            ),
            (ReplicaError::Shard(ShardError::Busy("full".into())), "full"),
            (
                ReplicaError::RecordKind(300),
                "record kind 300 out of range",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    /// A record crosses the stream unchanged, and a kind wider than the
    /// byte the primary logs is refused.
    #[test]
    fn records_cross_the_wire_unchanged() {
        let record = FeedRecord {
            lsn: 9,
            kind: 3,
            payload: prost::bytes::Bytes::from_static(b"payload"),
        };
        let back = record_from_wire(record_to_wire(record.clone())).expect("round trip");
        assert_eq!(
            (back.lsn, back.kind, back.payload),
            (record.lsn, record.kind, record.payload)
        );
        let wide = pb::ReplicaRecord {
            lsn: 1,
            kind: 256,
            payload: prost::bytes::Bytes::new(),
        };
        assert!(matches!(
            record_from_wire(wide),
            Err(ReplicaError::RecordKind(256))
        ));
    }
}
