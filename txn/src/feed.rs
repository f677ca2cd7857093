//! The change feed's fan-in (DESIGN.md §11): one `trellis.v1.Changefeed`
//! stream made of every group's `Shard.Feed`, each read from its group's
//! primary and followed across failover and map changes: a group's stream
//! that breaks is opened again at the new primary after the last position
//! it gave, so nothing is skipped and nothing before that position comes
//! twice. Groups that join the map while a watch runs are read from their
//! log's beginning. The gRPC `Status`es a watch ends with are built here.
//!
//! A watch with an initial scan first says, for every group of the map,
//! that its scan begins (an empty `FeedScan`), then passes each group's
//! scan chunks on; a group's stream that breaks before its scan is done
//! starts the scan again from the range's first key at a new position
//! (rows may come twice; consumers keep the highest version per key). Once
//! a group's scan is done its tail follows as for any watch, resumed after
//! the scan's position if the stream breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use trellis_proto::error;
use trellis_proto::shard::v1 as shard_pb;
use trellis_proto::v1 as pb;
use trellis_types::{ClusterId, GroupId, Lsn, MapEpoch};

use crate::router::{Fault, Router, classify};
use crate::service::invalid;

/// Messages a watch holds for its client (across groups); a slow client
/// slows every group's stream, nothing is dropped.
pub const WATCH_BUFFER_MAX: usize = 256;
/// The same for a watch that asked for batches: each message holds up to
/// a shard's read of its log (`FEED_READ_BYTES_MAX`, 256 KiB, in the
/// shard crate), so fewer of them.
pub const WATCH_BATCHES_BUFFERED_MAX: usize = 16;

impl WatchSpec {
    /// How many messages the watch holds for its client.
    pub fn buffer(&self) -> usize {
        if self.batch {
            WATCH_BATCHES_BUFFERED_MAX
        } else {
            WATCH_BUFFER_MAX
        }
    }
}
/// A group's feed that sent nothing for this long is opened again (a
/// shard's feed sends at least every `FEED_RESOLVED_INTERVAL`, 200 ms).
pub const FEED_SILENCE_MAX: Duration = Duration::from_secs(5);
/// Backoff between attempts to open a group's feed.
pub const FEED_RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const FEED_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a watch looks for groups that joined the map.
pub const FEED_MAP_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline for opening one group's feed (the stream itself has none).
pub const FEED_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Rounds of initial scans a watch runs before it gives up on a range
/// whose slots keep moving (each round scans again only the groups that
/// read an older map epoch than another group).
pub const SCAN_ROUNDS_MAX: u32 = 32;
/// How long a group waits before it scans again for a newer map epoch (a
/// shard hears of a new map within about a second).
pub const SCAN_AGAIN_WAIT: Duration = Duration::from_secs(1);

/// The map epochs, lowest and highest, by whose slot ownership one group's
/// scan chose its keys (`FeedBatch.scan_epoch_min` / `_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochSpan {
    pub min: MapEpoch,
    pub max: MapEpoch,
}

/// What the watch does once a group's scan is done or the group left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanVerdict {
    /// Other groups are still scanning.
    Wait,
    /// Every group read one and the same epoch: together the scans took
    /// every slot's keys exactly once. Nothing more to check.
    Complete,
    /// Scan these groups again: each read (partly) an epoch older than
    /// another group's, so a slot that moved between them in the meantime
    /// may have been read by neither.
    Rescan(BTreeSet<GroupId>),
    /// The slots kept moving for `SCAN_ROUNDS_MAX` rounds.
    GiveUp,
}

/// The initial scans of one watch, judged together (DESIGN.md §11,
/// ARCHITECTURE.md "Change feed"): a shard scans the slots it owns (or
/// holds frozen for a move), so one group's scan under map epoch E and
/// another's under E + 1 can both skip a slot that moved between them.
/// Scans that all read one epoch cover each slot exactly once. Pure.
#[derive(Debug)]
pub struct ScanBook {
    /// By scanning group: its scan's epochs once done.
    groups: BTreeMap<GroupId, Option<EpochSpan>>,
    rounds: u32,
    complete: bool,
}

impl ScanBook {
    /// The scans of `groups`, all begun.
    pub fn new(groups: impl IntoIterator<Item = GroupId>) -> ScanBook {
        ScanBook {
            groups: groups.into_iter().map(|g| (g, None)).collect(),
            rounds: 1,
            complete: false,
        }
    }

    /// `group`'s scan began again (its stream broke): no epochs yet.
    pub fn restarted(&mut self, group: GroupId) {
        if let Some(epochs) = self.groups.get_mut(&group) {
            *epochs = None;
        }
    }

    /// `group`'s scan is done, having read `epochs`.
    pub fn done(&mut self, group: GroupId, epochs: EpochSpan) -> ScanVerdict {
        if let Some(held) = self.groups.get_mut(&group) {
            *held = Some(epochs);
        }
        self.judge()
    }

    /// `group` left the map: its scan no longer counts.
    pub fn left(&mut self, group: GroupId) -> ScanVerdict {
        self.groups.remove(&group);
        self.judge()
    }

    fn judge(&mut self) -> ScanVerdict {
        if self.complete {
            return ScanVerdict::Complete;
        }
        let mut done = Vec::with_capacity(self.groups.len());
        for (&group, epochs) in &self.groups {
            match epochs {
                None => return ScanVerdict::Wait,
                Some(e) => done.push((group, *e)),
            }
        }
        let newest = done.iter().map(|(_, e)| e.max).max().unwrap_or(0);
        let behind: BTreeSet<GroupId> = done
            .iter()
            .filter(|(_, e)| e.min < newest)
            .map(|(g, _)| *g)
            .collect();
        if behind.is_empty() {
            self.complete = true;
            return ScanVerdict::Complete;
        }
        if self.rounds >= SCAN_ROUNDS_MAX {
            return ScanVerdict::GiveUp;
        }
        self.rounds += 1;
        for group in &behind {
            self.groups.insert(*group, None);
        }
        ScanVerdict::Rescan(behind)
    }
}

/// What a watch covers and where it starts.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// The cluster watched: every message names it.
    pub cluster: ClusterId,
    pub start: Vec<u8>,
    /// Empty: no end.
    pub end: Vec<u8>,
    /// `None`: from now. Else after these positions; a group not named is
    /// read from its log's beginning.
    pub cursor: Option<BTreeMap<GroupId, Lsn>>,
    /// Each group's committed state first (only from now).
    pub initial_scan: bool,
    /// Each shard batch's events as one `FeedEvents` message.
    pub batch: bool,
}

/// Checks that `cursor` is of `cluster`: it names that cluster, or no
/// cluster and no group (each group from its log's beginning, which any
/// cluster may take). Else `WRONG_CLUSTER`, naming both ids. Watch and
/// SaveCursor both check it.
pub fn check_cursor_cluster(cursor: &pb::FeedCursor, cluster: ClusterId) -> Result<(), Status> {
    if cursor.cluster == cluster.get() || (cursor.cluster == 0 && cursor.groups.is_empty()) {
        return Ok(());
    }
    let message = if cursor.cluster == 0 {
        format!(
            "the cursor names groups but no cluster: positions mean something only in their \
             cluster (this is cluster {cluster}; `trellis status` shows it, and every event \
             and resolved message of a watch names it)"
        )
    } else {
        let theirs = ClusterId::new(cursor.cluster)
            .map_or_else(|| format!("{:016x}", cursor.cluster), |c| c.to_string());
        format!(
            "the cursor is of cluster {theirs}, not of this cluster {cluster}: its positions \
             mean nothing here; use a cursor of this cluster, or start from now"
        )
    };
    Err(error::status(
        tonic::Code::FailedPrecondition,
        message,
        pb::ErrorReason::WrongCluster.as_str_name(),
        [(error::key::CLUSTER, cluster.to_string())],
    ))
}

/// Checks a watch request on `cluster` and turns it into a spec. Errors:
/// the range (see `trellis_types::validate::key_range`), a cursor of
/// another cluster ([`check_cursor_cluster`]), one naming a group twice or
/// one the map does not have.
pub fn watch_spec(
    req: pb::WatchRequest,
    groups: &BTreeSet<GroupId>,
    cluster: ClusterId,
) -> Result<WatchSpec, Status> {
    trellis_types::validate::key_range(&req.start, &req.end)
        .map_err(|e| invalid(format!("watch range: {e}")))?;
    if req.initial_scan && req.cursor.is_some() {
        return Err(invalid(
            "an initial scan starts from now: give no cursor (a cursor resumes a feed whose \
             scan was done)",
        ));
    }
    let cursor = match req.cursor {
        None => None,
        Some(c) => {
            check_cursor_cluster(&c, cluster)?;
            let mut positions = BTreeMap::new();
            for p in c.groups {
                if !groups.contains(&p.group) {
                    return Err(error::status(
                        tonic::Code::NotFound,
                        format!(
                            "the cursor names group {}, which this cluster does not have \
                             (a removed group?)",
                            p.group
                        ),
                        pb::ErrorReason::UnknownGroup.as_str_name(),
                        [(error::key::GROUP, p.group.to_string())],
                    ));
                }
                if positions.insert(p.group, p.position).is_some() {
                    return Err(invalid(format!("the cursor names group {} twice", p.group)));
                }
            }
            Some(positions)
        }
    };
    Ok(WatchSpec {
        cluster,
        start: req.start,
        end: req.end,
        cursor,
        initial_scan: req.initial_scan,
        batch: req.batch,
    })
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// Runs a watch into `out` until its receiver goes away or a group's feed
/// fails for good (then the last item is that error).
pub async fn watch(router: Arc<Router>, spec: WatchSpec, out: Out) {
    let mut running: BTreeSet<GroupId> = BTreeSet::new();
    let mut first = true;
    let mut scans: Option<Arc<Scans>> = None;
    loop {
        let map = router.map();
        if first && spec.initial_scan {
            scans = Some(Arc::new(Scans::new(map.groups.keys().copied())));
            // Before any group's message: the client learns which groups
            // it waits for before the scan is done.
            for &group in map.groups.keys() {
                let begins = pb::WatchResponse {
                    kind: Some(pb::watch_response::Kind::Scan(pb::FeedScan {
                        group,
                        position: 0,
                        rows: Vec::new(),
                        done: false,
                        cluster: spec.cluster.get(),
                    })),
                };
                if out.send(Ok(begins)).await.is_err() {
                    return;
                }
            }
        }
        for &group in map.groups.keys() {
            if running.insert(group) {
                // Groups present at the start follow the cursor (or start
                // now); later ones start at their beginning.
                let from = match (&spec.cursor, first) {
                    (None, true) => None,
                    (Some(cursor), true) => Some(cursor.get(&group).copied().unwrap_or(0)),
                    (_, false) => Some(0),
                };
                // Only the groups of the first map scan.
                let scan = scans.clone().filter(|_| first);
                tokio::spawn(group_feed(
                    router.clone(),
                    spec.clone(),
                    group,
                    from,
                    scan,
                    out.clone(),
                ));
            }
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(FEED_MAP_CHECK_INTERVAL) => {}
            () = out.closed() => return,
        }
    }
}

/// The initial scans of one watch: judged together ([`ScanBook`]), and a
/// way to tell a group whose scan is done to scan again.
struct Scans {
    book: std::sync::Mutex<ScanBook>,
    again: BTreeMap<GroupId, tokio::sync::Notify>,
}

impl Scans {
    fn new(groups: impl IntoIterator<Item = GroupId>) -> Scans {
        let groups: BTreeSet<GroupId> = groups.into_iter().collect();
        Scans {
            book: std::sync::Mutex::new(ScanBook::new(groups.iter().copied())),
            again: groups
                .into_iter()
                .map(|g| (g, tokio::sync::Notify::new()))
                .collect(),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, ScanBook> {
        self.book.lock().expect("scan book lock poisoned")
    }

    /// Acts on a verdict: tells the groups to scan again, or ends the
    /// watch if the slots kept moving.
    async fn act(&self, verdict: ScanVerdict, out: &Out) {
        match verdict {
            ScanVerdict::Wait | ScanVerdict::Complete => {}
            ScanVerdict::Rescan(groups) => {
                tracing::info!(
                    ?groups,
                    "slots moved while the initial scans ran; scanning these groups again"
                );
                for group in groups {
                    if let Some(again) = self.again.get(&group) {
                        again.notify_one();
                    }
                }
            }
            ScanVerdict::GiveUp => {
                let _ = out
                    .send(Err(Status::unavailable(format!(
                        "slots kept moving between groups during the initial scan \
                         ({SCAN_ROUNDS_MAX} rounds of scans read different map epochs): \
                         start the watch with a scan again once the resharding job is \
                         done (`trellis admin reshard list`)"
                    ))))
                    .await;
            }
        }
    }

    /// Waits until `group` is told to scan again (never, for a group that
    /// does not scan).
    async fn again(&self, group: GroupId) {
        match self.again.get(&group) {
            Some(again) => again.notified().await,
            None => std::future::pending().await,
        }
    }
}

/// Follows one group's feed from `from` (`None`: now), after its initial
/// scan if `scan` (the watch's scans, judged together).
async fn group_feed(
    router: Arc<Router>,
    spec: WatchSpec,
    group: GroupId,
    mut from: Option<Lsn>,
    scan: Option<Arc<Scans>>,
    out: Out,
) {
    // Until the scan is done, every attempt scans from the start.
    let mut scanning = scan.is_some();
    let mut attempts = 0u64;
    let mut backoff = FEED_RETRY_BACKOFF_MIN;
    loop {
        attempts += 1;
        if scanning && attempts > 1 {
            if let Some(scans) = &scan {
                scans.book().restarted(group);
            }
            // The scan begins again: rows from the range's first key.
            let again = pb::WatchResponse {
                kind: Some(pb::watch_response::Kind::Scan(pb::FeedScan {
                    group,
                    position: 0,
                    rows: Vec::new(),
                    done: false,
                    cluster: spec.cluster.get(),
                })),
            };
            if out.send(Ok(again)).await.is_err() {
                return;
            }
        }
        let map = router.map();
        if !map.groups.contains_key(&group) {
            tracing::info!(group, "the group left the map; its feed ends");
            if let Some(scans) = &scan {
                let verdict = scans.book().left(group);
                scans.act(verdict, &out).await;
            }
            return;
        }
        let opened = match router.client(&map, group) {
            Ok(mut client) => {
                let mut request = tonic::Request::new(shard_pb::FeedRequest {
                    start: spec.start.clone(),
                    end: spec.end.clone(),
                    after: from.unwrap_or(0),
                    from_now: from.is_none(),
                    initial_scan: scanning,
                });
                request.set_timeout(FEED_OPEN_TIMEOUT);
                client
                    .feed(request)
                    .await
                    .map_err(|s| (classify(group, &s), s))
            }
            Err(fault) => Err((fault.clone(), Status::unavailable(format!("{fault:?}")))),
        };
        let fault = match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let followed = follow(
                    &mut stream,
                    &spec,
                    group,
                    &mut from,
                    &mut scanning,
                    scan.as_deref(),
                    &out,
                )
                .await;
                match followed {
                    Followed::ClientGone => return,
                    Followed::Broke(fault, status) => (fault, status),
                    Followed::ScanAgain => {
                        // From now, after a wait for the newer map.
                        scanning = true;
                        from = None;
                        tokio::select! {
                            () = tokio::time::sleep(SCAN_AGAIN_WAIT) => {}
                            () = out.closed() => return,
                        }
                        continue;
                    }
                }
            }
            Err(fault) => fault,
        };
        match fault {
            (Fault::Invalid(_) | Fault::Other(_), status) => {
                // History gone, a position past the log: no retry helps.
                let _ = out.send(Err(public_status(group, &status))).await;
                return;
            }
            (fault, _) => {
                tracing::debug!(group, ?fault, "a group's feed broke; opening it again");
                router.refresh(&map).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = out.closed() => return,
        }
        backoff = (backoff * 2).min(FEED_RETRY_BACKOFF_MAX);
    }
}

enum Followed {
    ClientGone,
    Broke(Fault, Status),
    /// The watch's scans read different map epochs: this group's must be
    /// done again.
    ScanAgain,
}

/// Passes a group's batches on until the stream breaks or goes silent;
/// `from` follows what was passed on, and `scanning` ends with the scan.
async fn follow(
    stream: &mut tonic::Streaming<shard_pb::FeedBatch>,
    spec: &WatchSpec,
    group: GroupId,
    from: &mut Option<Lsn>,
    scanning: &mut bool,
    scans: Option<&Scans>,
    out: &Out,
) -> Followed {
    loop {
        let again = async {
            match scans {
                Some(scans) => scans.again(group).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = tokio::time::timeout(FEED_SILENCE_MAX, stream.message()) => next,
            () = out.closed() => return Followed::ClientGone,
            () = again => return Followed::ScanAgain,
        };
        let cluster = spec.cluster;
        let batch = match next {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => {
                let status = Status::unavailable(format!("group {group}'s feed ended"));
                return Followed::Broke(Fault::Unavailable(status.message().into()), status);
            }
            Ok(Err(status)) => return Followed::Broke(classify(group, &status), status),
            Err(_) => {
                let status = Status::unavailable(format!(
                    "group {group}'s feed sent nothing for {FEED_SILENCE_MAX:?}"
                ));
                return Followed::Broke(Fault::Unavailable(status.message().into()), status);
            }
        };
        if batch.scanning {
            if !*scanning {
                let status = Status::internal(format!(
                    "group {group}'s feed sent a scan that was not asked for"
                ));
                return Followed::Broke(Fault::Other(status.message().into()), status);
            }
            if batch.scan_rows.is_empty() && !batch.scan_done {
                continue; // a keep-alive while the chunk becomes durable
            }
            let scan = pb::WatchResponse {
                kind: Some(pb::watch_response::Kind::Scan(pb::FeedScan {
                    group,
                    position: batch.resolved,
                    rows: batch
                        .scan_rows
                        .into_iter()
                        .map(|r| pb::FeedScanRow {
                            key: r.key,
                            value: r.value,
                            version: r.version,
                        })
                        .collect(),
                    done: batch.scan_done,
                    cluster: cluster.get(),
                })),
            };
            if out.send(Ok(scan)).await.is_err() {
                return Followed::ClientGone;
            }
            if batch.scan_done {
                // The tail starts after the scan's position, whatever
                // breaks from now on (unless the scans must be done again).
                *scanning = false;
                *from = Some(batch.resolved);
                if let Some(scans) = scans {
                    let epochs = EpochSpan {
                        min: batch.scan_epoch_min,
                        max: batch.scan_epoch_max,
                    };
                    let verdict = scans.book().done(group, epochs);
                    scans.act(verdict, out).await;
                }
            }
            continue;
        }
        if *scanning {
            let status = Status::internal(format!(
                "group {group}'s feed sent its tail before an initial scan (a shard too old \
                 to scan?)"
            ));
            return Followed::Broke(Fault::Other(status.message().into()), status);
        }
        // Never before the resumed position.
        let events: Vec<pb::FeedEvent> = batch
            .txns
            .into_iter()
            .filter(|txn| from.is_none_or(|f| txn.position > f))
            .map(|txn| event_pb(cluster, group, txn))
            .collect();
        let last = events.last().map_or(0, |e| e.position);
        let resolved = pb::FeedResolved {
            group,
            position: batch.resolved.max(last).max(from.unwrap_or(0)),
            head: batch.head,
            cluster: cluster.get(),
        };
        let position = resolved.position;
        for message in responses(spec.batch, events, resolved) {
            if out.send(Ok(message)).await.is_err() {
                return Followed::ClientGone;
            }
        }
        *from = Some(position);
    }
}

/// A shard batch's events and the resolved position after them, as the
/// watch sends them: one `FeedEvents` message (`batch`; only the resolved
/// one when there is no event), else a message per event, then the
/// resolved one.
fn responses(
    batch: bool,
    events: Vec<pb::FeedEvent>,
    resolved: pb::FeedResolved,
) -> Vec<pb::WatchResponse> {
    use pb::watch_response::Kind;
    let message = |kind| pb::WatchResponse { kind: Some(kind) };
    if batch && !events.is_empty() {
        return vec![message(Kind::Events(pb::FeedEvents {
            events,
            resolved: Some(resolved),
        }))];
    }
    events
        .into_iter()
        .map(|e| message(Kind::Event(e)))
        .chain([message(Kind::Resolved(resolved))])
        .collect()
}

fn event_pb(cluster: ClusterId, group: GroupId, txn: shard_pb::FeedTxn) -> pb::FeedEvent {
    pb::FeedEvent {
        cluster: cluster.get(),
        group,
        position: txn.position,
        version: txn.version,
        txn_id: txn.txn_id,
        participants: txn.participants,
        changes: txn
            .writes
            .into_iter()
            .map(|w| pb::FeedChange {
                key: w.key,
                value: (!w.delete).then_some(w.value),
            })
            .collect(),
    }
}

/// The public status for a shard's final feed error.
fn public_status(group: GroupId, status: &Status) -> Status {
    let reason = error::error_info(status)
        .and_then(|info| shard_pb::ErrorReason::from_str_name(&info.reason));
    let message = format!("group {group}: {}", status.message());
    match reason {
        Some(shard_pb::ErrorReason::FeedHistoryGone) => error::status(
            tonic::Code::FailedPrecondition,
            message,
            pb::ErrorReason::FeedHistoryGone.as_str_name(),
            [(error::key::GROUP, group.to_string())],
        ),
        Some(shard_pb::ErrorReason::InvalidArgument) => invalid(message),
        _ => error::status(
            tonic::Code::Internal,
            message,
            pb::ErrorReason::Internal.as_str_name(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> BTreeSet<GroupId> {
        [1, 2, 3].into_iter().collect()
    }

    const CLUSTER: u64 = 0x5eed;

    fn this() -> ClusterId {
        ClusterId::new(CLUSTER).expect("in range")
    }

    fn cursor(positions: &[(u64, u64)]) -> Option<pb::FeedCursor> {
        Some(pb::FeedCursor {
            cluster: CLUSTER,
            groups: positions
                .iter()
                .map(|&(group, position)| pb::GroupPosition { group, position })
                .collect(),
        })
    }

    #[test]
    fn a_watch_request_is_checked() {
        let check = |req| watch_spec(req, &groups(), this());
        let ok = check(pb::WatchRequest {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
            cursor: cursor(&[(1, 10), (3, 4)]),
            initial_scan: false,
            batch: true,
        })
        .expect("valid");
        assert!(ok.batch);
        assert_eq!(
            ok.cursor,
            Some([(1, 10), (3, 4)].into_iter().collect::<BTreeMap<_, _>>())
        );
        let unknown = check(pb::WatchRequest {
            cursor: cursor(&[(9, 1)]),
            ..Default::default()
        })
        .expect_err("group 9 is not in the cluster");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(
            unknown.message().contains("group 9"),
            "{}",
            unknown.message()
        );
        let twice = check(pb::WatchRequest {
            cursor: cursor(&[(1, 1), (1, 2)]),
            ..Default::default()
        })
        .expect_err("group 1 twice");
        assert_eq!(twice.code(), tonic::Code::InvalidArgument);
        let empty = check(pb::WatchRequest {
            start: b"b".to_vec(),
            end: b"a".to_vec(),
            cursor: None,
            initial_scan: false,
            batch: false,
        })
        .expect_err("start after end");
        assert!(empty.message().contains("range"), "{}", empty.message());
        let scan_with_cursor = check(pb::WatchRequest {
            cursor: cursor(&[(1, 1)]),
            initial_scan: true,
            ..Default::default()
        })
        .expect_err("a scan only starts from now");
        assert_eq!(scan_with_cursor.code(), tonic::Code::InvalidArgument);
        assert!(
            scan_with_cursor.message().contains("initial scan"),
            "{}",
            scan_with_cursor.message()
        );
        let scan = check(pb::WatchRequest {
            initial_scan: true,
            ..Default::default()
        })
        .expect("a scan from now");
        assert!(scan.initial_scan && scan.cursor.is_none());
    }

    #[test]
    fn a_batch_is_one_message_or_one_per_event_then_the_resolved_one() {
        use pb::watch_response::Kind;
        let event = |position| pb::FeedEvent {
            group: 2,
            position,
            ..Default::default()
        };
        let resolved = pb::FeedResolved {
            group: 2,
            position: 9,
            head: 12,
            cluster: CLUSTER,
        };
        let kinds = |batch, events| -> Vec<Kind> {
            responses(batch, events, resolved)
                .into_iter()
                .map(|m| m.kind.expect("a kind"))
                .collect()
        };
        assert_eq!(
            kinds(false, vec![event(4), event(7)]),
            vec![
                Kind::Event(event(4)),
                Kind::Event(event(7)),
                Kind::Resolved(resolved)
            ]
        );
        assert_eq!(
            kinds(true, vec![event(4), event(7)]),
            vec![Kind::Events(pb::FeedEvents {
                events: vec![event(4), event(7)],
                resolved: Some(resolved),
            })]
        );
        // Nothing new: the resolved position alone, batched or not.
        for batch in [false, true] {
            assert_eq!(kinds(batch, vec![]), vec![Kind::Resolved(resolved)]);
        }
    }

    fn span(min: u64, max: u64) -> EpochSpan {
        EpochSpan { min, max }
    }

    #[test]
    fn scans_of_one_epoch_are_complete() {
        let mut book = ScanBook::new([1, 2, 3]);
        assert_eq!(book.done(1, span(4, 4)), ScanVerdict::Wait);
        assert_eq!(book.done(3, span(4, 4)), ScanVerdict::Wait);
        assert_eq!(book.done(2, span(4, 4)), ScanVerdict::Complete);
        // Judged once: later news changes nothing.
        assert_eq!(book.done(2, span(9, 9)), ScanVerdict::Complete);
    }

    #[test]
    fn a_group_that_read_an_older_epoch_scans_again_until_all_agree() {
        let mut book = ScanBook::new([1, 2, 3]);
        // Group 1 read epoch 4, then heard of 5 mid-scan; group 2 read 5
        // only; group 3 read 4 only. A slot that moved at 5 may be in
        // neither 1's later chunks nor 3's.
        book.done(1, span(4, 5));
        book.done(2, span(5, 5));
        assert_eq!(
            book.done(3, span(4, 4)),
            ScanVerdict::Rescan([1, 3].into_iter().collect())
        );
        // Group 1 scans again at 5; group 3 has not heard of 5 yet.
        assert_eq!(book.done(1, span(5, 5)), ScanVerdict::Wait);
        assert_eq!(
            book.done(3, span(4, 4)),
            ScanVerdict::Rescan([3].into_iter().collect())
        );
        // A restarted scan (failover) forgets what it had read.
        book.restarted(3);
        assert_eq!(book.done(3, span(5, 5)), ScanVerdict::Complete);
    }

    #[test]
    fn a_group_that_left_no_longer_counts() {
        let mut book = ScanBook::new([1, 2]);
        assert_eq!(book.done(1, span(3, 3)), ScanVerdict::Wait);
        assert_eq!(book.left(2), ScanVerdict::Complete);
        // Had group 2 stayed, its newer epoch would have made 1 scan again.
        let mut book = ScanBook::new([1, 2]);
        book.done(1, span(2, 2));
        assert_eq!(
            book.done(2, span(3, 3)),
            ScanVerdict::Rescan([1].into_iter().collect())
        );
        let mut book = ScanBook::new([1, 2]);
        book.done(1, span(2, 2));
        assert_eq!(book.left(2), ScanVerdict::Complete);
    }

    #[test]
    fn slots_that_keep_moving_give_up_after_the_bound() {
        let mut book = ScanBook::new([1, 2]);
        let mut epoch = 1;
        let mut rounds = 1;
        book.done(1, span(epoch, epoch));
        loop {
            epoch += 1;
            match book.done(2, span(epoch, epoch)) {
                ScanVerdict::Rescan(groups) => {
                    assert_eq!(groups, [1].into_iter().collect());
                    rounds += 1;
                    // Group 2's stream broke (its scan starts over), then
                    // group 1 scans again; by then the epoch moved on.
                    book.restarted(2);
                    assert_eq!(book.done(1, span(epoch, epoch)), ScanVerdict::Wait);
                    assert!(rounds <= SCAN_ROUNDS_MAX, "past the bound");
                }
                ScanVerdict::GiveUp => break,
                other => panic!("slots move every round: {other:?}"),
            }
        }
        assert_eq!(rounds, SCAN_ROUNDS_MAX);
    }

    #[test]
    fn a_cursor_of_another_cluster_is_refused() {
        let reason = |s: &Status| error::error_info(s).map(|i| i.reason);
        // Same groups, another cluster: refused before the groups are
        // looked at, naming both clusters.
        let mut foreign = cursor(&[(1, 10)]).expect("cursor");
        foreign.cluster = 0x7ab;
        let err = watch_spec(
            pb::WatchRequest {
                cursor: Some(foreign.clone()),
                ..Default::default()
            },
            &groups(),
            this(),
        )
        .expect_err("another cluster's cursor");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(reason(&err).as_deref(), Some("WRONG_CLUSTER"));
        assert!(
            err.message().contains("00000000000007ab"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("0000000000005eed"),
            "{}",
            err.message()
        );
        assert_eq!(
            error::error_info(&err).expect("info").metadata[error::key::CLUSTER],
            "0000000000005eed"
        );
        assert!(check_cursor_cluster(&foreign, this()).is_err());
        // Positions without a cluster are refused too ...
        foreign.cluster = 0;
        let err = check_cursor_cluster(&foreign, this()).expect_err("no cluster");
        assert_eq!(reason(&err).as_deref(), Some("WRONG_CLUSTER"));
        assert!(err.message().contains("no cluster"), "{}", err.message());
        // ... but an empty cursor (every group from its beginning) needs none.
        foreign.groups.clear();
        check_cursor_cluster(&foreign, this()).expect("an empty cursor is any cluster's");
        check_cursor_cluster(&cursor(&[(2, 3)]).expect("cursor"), this()).expect("ours");
    }
}
