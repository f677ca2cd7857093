//! The change feed from the client's side: [`Client::watch`] opens a
//! `Changefeed.Watch` stream and [`Watch`] hands out its events and
//! resolved positions while keeping the [`Cursor`] to resume with;
//! [`Client::save_cursor`] and [`Client::load_cursor`] keep a cursor in the
//! catalog under a feed name. [`Client::watch_with_scan`] starts with the
//! range's committed state ([`FeedMessage::Scan`]) before the tail.

use std::collections::{BTreeMap, BTreeSet};

use trellis_proto::v1 as pb;
use trellis_proto::v1::changefeed_client::ChangefeedClient;
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

/// Where a feed is: by group, the position after which it resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<u64, u64>);

impl Cursor {
    /// Moves `group` on to `position` (never back).
    pub fn advance(&mut self, group: u64, position: u64) {
        let at = self.0.entry(group).or_insert(0);
        *at = (*at).max(position);
    }

    pub fn to_pb(&self) -> pb::FeedCursor {
        pb::FeedCursor {
            groups: self
                .0
                .iter()
                .map(|(&group, &position)| pb::GroupPosition { group, position })
                .collect(),
        }
    }

    pub fn from_pb(cursor: &pb::FeedCursor) -> Cursor {
        Cursor(
            cursor
                .groups
                .iter()
                .map(|p| (p.group, p.position))
                .collect(),
        )
    }
}

impl std::fmt::Display for Cursor {
    /// `1:120,2:88`: group:position, by group.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (group, position) in &self.0 {
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

    /// Parses `1:120,2:88` (the [`Display`](std::fmt::Display) form).
    fn from_str(text: &str) -> std::result::Result<Cursor, String> {
        let mut cursor = Cursor::default();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (group, position) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("cursor part {part:?} is not GROUP:POSITION"))?;
            let group: u64 = group
                .parse()
                .map_err(|e| format!("cursor group {group:?}: {e}"))?;
            let position: u64 = position
                .parse()
                .map_err(|e| format!("cursor position {position:?}: {e}"))?;
            if cursor.0.insert(group, position).is_some() {
                return Err(format!("the cursor names group {group} twice"));
            }
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
}

impl Watch {
    /// The next message; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<FeedMessage>> {
        let message = self
            .stream
            .message()
            .await
            .map_err(|s| Error::from_status(&s))?;
        let Some(message) = message else {
            return Ok(None);
        };
        self.scan_unseen = false;
        Ok(Some(match message.kind {
            Some(pb::watch_response::Kind::Event(event)) => {
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
    fn changefeed(&self) -> ChangefeedClient<tonic::transport::Channel> {
        ChangefeedClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX)
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
        let cursor: Cursor = "1:120, 3:7,2:0".parse().expect("parse");
        assert_eq!(cursor.to_string(), "1:120,2:0,3:7");
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor.clone()));
        assert_eq!(Cursor::from_pb(&cursor.to_pb()), cursor);
        assert!("1:2,1:3".parse::<Cursor>().unwrap_err().contains("twice"));
        assert!(
            "1-2"
                .parse::<Cursor>()
                .unwrap_err()
                .contains("GROUP:POSITION")
        );
        assert!("x:2".parse::<Cursor>().is_err());
    }

    #[test]
    fn a_cursor_never_goes_back() {
        let mut cursor = Cursor::default();
        cursor.advance(1, 10);
        cursor.advance(1, 4);
        assert_eq!(cursor.0[&1], 10);
    }
}
