//! The change feed from the client's side: [`Client::watch`] opens a
//! `Changefeed.Watch` stream and [`Watch`] hands out its events and
//! resolved positions while keeping the [`Cursor`] to resume with;
//! [`Client::save_cursor`] and [`Client::load_cursor`] keep a cursor in the
//! catalog under a feed name. [`Client::watch_with_scan`] starts with the
//! range's committed state ([`FeedMessage::Scan`]) before the tail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use trellis_proto::v1 as pb;
use trellis_proto::v1::changefeed_client::ChangefeedClient;
use trellis_types::ClusterId;
use trellis_types::limits::MESSAGE_BYTES_MAX;

use crate::client::Client;
use crate::error::{Error, Result};

/// One committed transaction's writes in one group, as the feed sends it
/// (`group`, `position`, `version`, `txn_id`, `participants`, `changes`;
/// see `trellis.v1.FeedEvent`).
pub type FeedEvent = pb::FeedEvent;

/// A key's committed value from an initial scan (`key`, `value`,
/// `version`; see `trellis.v1.FeedScanRow`).
pub type ScanRow = pb::FeedScanRow;

/// Where a feed is: the cluster, and by group the position after which it
/// resumes. A cluster refuses another's cursor (`WRONG_CLUSTER`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The cluster the positions are of. `None` only while no position is
    /// known: a cursor naming no group (every group from its log's
    /// beginning) may be taken by any cluster; a watch fills it in from
    /// its first message.
    pub cluster: Option<ClusterId>,
    /// By group, the position after which the feed resumes.
    pub groups: BTreeMap<u64, u64>,
}

impl Cursor {
    /// The cursor of `cluster` at `groups`' positions.
    pub fn new(cluster: ClusterId, groups: impl IntoIterator<Item = (u64, u64)>) -> Cursor {
        Cursor {
            cluster: Some(cluster),
            groups: groups.into_iter().collect(),
        }
    }

    /// Moves `group` on to `position` (never back).
    pub fn advance(&mut self, group: u64, position: u64) {
        let at = self.groups.entry(group).or_insert(0);
        *at = (*at).max(position);
    }

    pub fn to_pb(&self) -> pb::FeedCursor {
        pb::FeedCursor {
            groups: self
                .groups
                .iter()
                .map(|(&group, &position)| pb::GroupPosition { group, position })
                .collect(),
            cluster: self.cluster.map_or(0, ClusterId::get),
        }
    }

    /// The cursor in a `FeedCursor` (a cluster of 0 or out of range is
    /// none: the server refuses such a cursor if it names groups).
    pub fn from_pb(cursor: &pb::FeedCursor) -> Cursor {
        Cursor {
            cluster: ClusterId::new(cursor.cluster),
            groups: cursor
                .groups
                .iter()
                .map(|p| (p.group, p.position))
                .collect(),
        }
    }
}

/// How a cursor is written, for the messages that refuse one.
const CURSOR_FORM: &str = "CLUSTER/GROUP:POSITION,... (e.g. 1f0c3a9e5b7d2468/1:120,2:88: \
     the cluster's 16 hex digits as `trellis status` shows them, then a position per group; \
     `trellis cdc` logs its cursor in this form)";

impl std::fmt::Display for Cursor {
    /// `1f0c3a9e5b7d2468/1:120,2:88`: the cluster, then group:position by
    /// group (`/` alone: no cluster, no group).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(cluster) = self.cluster {
            write!(f, "{cluster}")?;
        }
        f.write_str("/")?;
        let mut first = true;
        for (group, position) in &self.groups {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{group}:{position}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    /// Parses `1f0c3a9e5b7d2468/1:120,2:88` (the
    /// [`Display`](std::fmt::Display) form). Positions without a cluster
    /// are refused: they mean nothing outside their cluster.
    fn from_str(text: &str) -> std::result::Result<Cursor, String> {
        let Some((cluster, groups)) = text.trim().split_once('/') else {
            return Err(format!(
                "cursor {text:?} names no cluster: write it as {CURSOR_FORM}"
            ));
        };
        let mut cursor = Cursor {
            cluster: match cluster.trim() {
                "" => None,
                hex => Some(
                    hex.parse::<ClusterId>()
                        .map_err(|e| format!("cursor {text:?}: {e}"))?,
                ),
            },
            groups: BTreeMap::new(),
        };
        for part in groups.split(',').filter(|p| !p.trim().is_empty()) {
            let (group, position) = part.trim().split_once(':').ok_or_else(|| {
                format!(
                    "cursor part {part:?} is not GROUP:POSITION: write a cursor as {CURSOR_FORM}"
                )
            })?;
            let group: u64 = group
                .parse()
                .map_err(|e| format!("cursor group {group:?}: {e}"))?;
            let position: u64 = position
                .parse()
                .map_err(|e| format!("cursor position {position:?}: {e}"))?;
            if cursor.groups.insert(group, position).is_some() {
                return Err(format!("the cursor names group {group} twice"));
            }
        }
        if cursor.cluster.is_none() && !cursor.groups.is_empty() {
            return Err(format!(
                "cursor {text:?} names no cluster: write it as {CURSOR_FORM}"
            ));
        }
        Ok(cursor)
    }
}

/// What a watch hands out.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedMessage {
    /// A committed transaction's writes in one group.
    Event(FeedEvent),
    /// Every event of `group` at or below `position` was handed out;
    /// `head - position` is how many log records the feed is behind.
    Resolved {
        group: u64,
        position: u64,
        head: u64,
    },
    /// A chunk of `group`'s initial scan: rows in key order (after the
    /// previous chunk's), each key's committed value and version. With no
    /// rows and `position` 0 it says the group's scan begins (again, if it
    /// broke: rows from the first key come anew). A row may be newer than
    /// `position`: keep the highest version per key. The `done` chunk
    /// ends the scan; the group's events after `position` follow.
    Scan {
        group: u64,
        position: u64,
        rows: Vec<ScanRow>,
        done: bool,
    },
}

/// An open watch.
pub struct Watch {
    stream: tonic::Streaming<pb::WatchResponse>,
    cursor: Cursor,
    /// Groups whose initial scan is not done yet.
    scanning: BTreeSet<u64>,
    /// A scan was asked for and no message came yet (the server names the
    /// scanning groups first of all).
    scan_unseen: bool,
    /// The rest of a `FeedEvents` message, handed out one by one.
    pending: VecDeque<pb::watch_response::Kind>,
}

impl Watch {
    /// The next message; `None` when the server ended the stream.
    /// Cancel-safe: dropped before it is ready, it loses no message
    /// (`trellis cdc` races it against its sink's acks).
    pub async fn next(&mut self) -> Result<Option<FeedMessage>> {
        let kind = loop {
            if let Some(kind) = self.pending.pop_front() {
                break Some(kind);
            }
            let message = self
                .stream
                .message()
                .await
                .map_err(|s| Error::from_status(&s))?;
            let Some(message) = message else {
                return Ok(None);
            };
            self.scan_unseen = false;
            match message.kind {
                // The events, then the resolved position, one by one.
                Some(pb::watch_response::Kind::Events(events)) => {
                    self.pending.extend(
                        events
                            .events
                            .into_iter()
                            .map(pb::watch_response::Kind::Event)
                            .chain(events.resolved.map(pb::watch_response::Kind::Resolved)),
                    );
                }
                kind => break kind,
            }
        };
        Ok(Some(match kind {
            Some(pb::watch_response::Kind::Events(_)) => {
                unreachable!("a FeedEvents message is unpacked above")
            }
            Some(pb::watch_response::Kind::Event(event)) => {
                self.learn_cluster(event.cluster);
                self.cursor.advance(event.group, event.position);
                FeedMessage::Event(event)
            }
            Some(pb::watch_response::Kind::Scan(scan)) => {
                if scan.done {
                    self.scanning.remove(&scan.group);
                    self.cursor.advance(scan.group, scan.position);
                } else {
                    self.scanning.insert(scan.group);
                }
                FeedMessage::Scan {
                    group: scan.group,
                    position: scan.position,
                    rows: scan.rows,
                    done: scan.done,
                }
            }
            Some(pb::watch_response::Kind::Resolved(r)) => {
                self.learn_cluster(r.cluster);
                self.cursor.advance(r.group, r.position);
                FeedMessage::Resolved {
                    group: r.group,
                    position: r.position,
                    head: r.head,
                }
            }
            None => {
                return Err(Error::Server {
                    code: tonic::Code::Internal,
                    message: "the server sent an empty watch message".into(),
                });
            }
        }))
    }

    /// Every message names the cluster; a cursor that started without one
    /// (from the beginning) takes it from the first.
    fn learn_cluster(&mut self, cluster: u64) {
        if self.cursor.cluster.is_none() {
            self.cursor.cluster = ClusterId::new(cluster);
        }
    }

    /// Where this watch is: resume with it to get what comes after the
    /// messages handed out so far. `None` while an initial scan is not done
    /// in every group: until then no cursor resumes it without a gap (watch
    /// with a scan again).
    pub fn cursor(&self) -> Option<&Cursor> {
        (!self.scanning()).then_some(&self.cursor)
    }

    /// Whether an initial scan is still running in some group.
    pub fn scanning(&self) -> bool {
        self.scan_unseen || !self.scanning.is_empty()
    }
}

impl Client {
    fn changefeed(&self) -> ChangefeedClient<crate::auth::Authed> {
        ChangefeedClient::new(crate::auth::authed(self.channel.clone()))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Watches the committed writes to keys in `[start, end)` (`end` empty:
    /// no end), after `cursor` (`None`: from now). See `Changefeed.Watch`.
    pub async fn watch(&self, start: &[u8], end: &[u8], cursor: Option<&Cursor>) -> Result<Watch> {
        self.open_watch(start, end, cursor, false).await
    }

    /// Watches keys in `[start, end)` from now, starting with every
    /// group's committed state in the range ([`FeedMessage::Scan`]), then
    /// its tail. [`Watch::cursor`] is `None` until every scan is done.
    pub async fn watch_with_scan(&self, start: &[u8], end: &[u8]) -> Result<Watch> {
        self.open_watch(start, end, None, true).await
    }

    async fn open_watch(
        &self,
        start: &[u8],
        end: &[u8],
        cursor: Option<&Cursor>,
        initial_scan: bool,
    ) -> Result<Watch> {
        // The stream has no deadline; opening it has the client's.
        let request = self.request(pb::WatchRequest {
            start: start.to_vec(),
            end: end.to_vec(),
            cursor: cursor.map(Cursor::to_pb),
            initial_scan,
            batch: true,
        });
        let stream = self
            .changefeed()
            .watch(request)
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        Ok(Watch {
            stream,
            cursor: cursor.cloned().unwrap_or_default(),
            scanning: BTreeSet::new(),
            scan_unseen: initial_scan,
            pending: VecDeque::new(),
        })
    }

    /// Keeps `cursor` in the catalog under `feed`.
    pub async fn save_cursor(&self, feed: &str, cursor: &Cursor) -> Result<()> {
        let request = self.request(pb::SaveCursorRequest {
            feed: feed.to_string(),
            cursor: Some(cursor.to_pb()),
        });
        self.changefeed()
            .save_cursor(request)
            .await
            .map_err(|s| Error::from_status(&s))?;
        Ok(())
    }

    /// The cursor kept under `feed`, if any.
    pub async fn load_cursor(&self, feed: &str) -> Result<Option<Cursor>> {
        let request = self.request(pb::LoadCursorRequest {
            feed: feed.to_string(),
        });
        let answer = self
            .changefeed()
            .load_cursor(request)
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        Ok(answer.cursor.as_ref().map(Cursor::from_pb))
    }

    /// Forgets the cursor kept under `feed` (the cluster stops keeping
    /// its log for that feed); whether there was one.
    pub async fn delete_cursor(&self, feed: &str) -> Result<bool> {
        let request = self.request(pb::DeleteCursorRequest {
            feed: feed.to_string(),
        });
        let answer = self
            .changefeed()
            .delete_cursor(request)
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        Ok(answer.existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_prints_and_parses_back() {
        let cursor: Cursor = "000000000000abcd/1:120, 3:7,2:0".parse().expect("parse");
        assert_eq!(cursor.cluster, ClusterId::new(0xabcd));
        assert_eq!(cursor.to_string(), "000000000000abcd/1:120,2:0,3:7");
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor.clone()));
        assert_eq!(Cursor::from_pb(&cursor.to_pb()), cursor);
        assert_eq!(cursor.to_pb().cluster, 0xabcd);
        // No cluster and no group: from every log's beginning, any cluster.
        let empty: Cursor = "/".parse().expect("parse");
        assert_eq!(empty, Cursor::default());
        assert_eq!(empty.to_string(), "/");
        let refused = |text: &str| text.parse::<Cursor>().expect_err(text);
        assert!(refused("000000000000abcd/1:2,1:3").contains("twice"));
        assert!(refused("000000000000abcd/1-2").contains("GROUP:POSITION"));
        assert!(refused("000000000000abcd/x:2").contains("cursor group"));
        // Positions without a cluster: the form before clusters had ids.
        for old in ["1:120,2:88", "/1:120"] {
            let err = refused(old);
            assert!(err.contains("names no cluster"), "{old}: {err}");
            assert!(err.contains("CLUSTER/GROUP:POSITION"), "{old}: {err}");
        }
        assert!(refused("abcd/1:2").contains("16 hex digits"));
        assert!(refused("0000000000000000/1:2").contains("out of range"));
    }

    #[test]
    fn a_cursor_never_goes_back() {
        let mut cursor = Cursor::default();
        cursor.advance(1, 10);
        cursor.advance(1, 4);
        assert_eq!(cursor.groups[&1], 10);
    }
}
