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
use trellis_types::{ClusterId, GroupId, Lsn};

use crate::router::{Fault, Router, classify};
use crate::service::invalid;

/// Messages a watch holds for its client (across groups); a slow client
/// slows every group's stream, nothing is dropped.
pub const WATCH_BUFFER_MAX: usize = 256;
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
    loop {
        let map = router.map();
        if first && spec.initial_scan {
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
                let scan = first && spec.initial_scan;
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

/// Follows one group's feed from `from` (`None`: now), after its initial
/// scan if `scan`.
async fn group_feed(
    router: Arc<Router>,
    spec: WatchSpec,
    group: GroupId,
    mut from: Option<Lsn>,
    scan: bool,
    out: Out,
) {
    // Until the scan is done, every attempt scans from the start.
    let mut scanning = scan;
    let mut attempts = 0u64;
    let mut backoff = FEED_RETRY_BACKOFF_MIN;
    loop {
        attempts += 1;
        if scanning && attempts > 1 {
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
                match follow(&mut stream, &spec, group, &mut from, &mut scanning, &out).await {
                    Followed::ClientGone => return,
                    Followed::Broke(fault, status) => (fault, status),
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
}

/// Passes a group's batches on until the stream breaks or goes silent;
/// `from` follows what was passed on, and `scanning` ends with the scan.
async fn follow(
    stream: &mut tonic::Streaming<shard_pb::FeedBatch>,
    spec: &WatchSpec,
    group: GroupId,
    from: &mut Option<Lsn>,
    scanning: &mut bool,
    out: &Out,
) -> Followed {
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(FEED_SILENCE_MAX, stream.message()) => next,
            () = out.closed() => return Followed::ClientGone,
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
                // breaks from now on.
                *scanning = false;
                *from = Some(batch.resolved);
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
