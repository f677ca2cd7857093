//! The JSON form of a change-feed event, the payload every message sink
//! sends (one object per event; the stdout sink writes one per line).
//! Pure.
//!
//! ```json
//! {"cluster":"1f0c3a9e5b7d2468","group":1,"position":120,"version":4711,
//!  "txn_id":"0123456789abcdef0123456789abcdef","participants":[1,2],
//!  "changes":[
//!    {"key":"user:7","key_b64":"dXNlcjo3","deleted":false,
//!     "value":"ada","value_b64":"YWRh"},
//!    {"key_b64":"/w==","deleted":true,"value_b64":null}]}
//! ```
//!
//! - `cluster`: the cluster the event came from, its id in 16 lowercase
//!   hex digits as `trellis status` shows it (positions mean something
//!   only in their cluster).
//! - `group`, `position`: where the event sits in its group's log;
//!   `(group, position)` identifies it (resume after it, deduplicate by
//!   it). `version`: the commit version of every change in it.
//! - `txn_id`: the transaction id, lowercase hex (32 digits for Trellis's
//!   16 bytes). `participants`: the groups of a two-phase transaction
//!   (this one included), empty for a one-group commit: a consumer
//!   assembles the whole transaction from one event per participant.
//! - Keys and values are bytes, so each is sent losslessly as standard
//!   base64 (`key_b64`, `value_b64`), and also as text (`key`, `value`)
//!   when it is valid UTF-8; the text field is left out otherwise.
//!   `deleted: true` marks a delete, whose `value_b64` is `null` and which
//!   has no `value`.
//!
//! Field order is fixed (as listed), so the same event always encodes to
//! the same bytes.
//!
//! A row of an initial scan (`trellis cdc --initial-scan`) is one message
//! of its own ([`encode_scan_row`]), told apart by `"scan":true`:
//!
//! ```json
//! {"scan":true,"cluster":"1f0c3a9e5b7d2468","group":1,"position":118,"version":4690,
//!  "key":"user:7","key_b64":"dXNlcjo3","value":"ada","value_b64":"YWRh"}
//! ```
//!
//! `position` is where the group's events resume after the scan; the
//! row's `version` may be above it (the write then comes again as an
//! event): keep the highest version per key. Its message id is
//! `scan-<group>-<position>-<key as lowercase hex>` ([`scan_message_id`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use trellis_proto::v1::{FeedChange, FeedEvent, FeedScan, FeedScanRow};

/// One message for a queue sink: its payload, its id (to deduplicate by),
/// its group, and what it is (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    pub id: String,
    pub group: u64,
    pub what: String,
}

impl Message {
    /// The message of one event.
    pub fn of_event(event: &FeedEvent) -> Message {
        Message {
            payload: encode_event(event),
            id: message_id(event),
            group: event.group,
            what: format!("event (group {}, position {})", event.group, event.position),
        }
    }

    /// The messages of a scan chunk: one per row, in key order.
    pub fn of_scan(scan: &FeedScan) -> Vec<Message> {
        scan.rows
            .iter()
            .map(|row| Message {
                payload: encode_scan_row(scan.cluster, scan.group, scan.position, row),
                id: scan_message_id(scan.group, scan.position, &row.key),
                group: scan.group,
                what: format!(
                    "scan row (group {}, position {}, key {})",
                    scan.group,
                    scan.position,
                    hex_lower(&row.key)
                ),
            })
            .collect()
    }
}

/// The JSON of one scan row (see the module doc), as bytes.
pub fn encode_scan_row(cluster: u64, group: u64, position: u64, row: &FeedScanRow) -> Vec<u8> {
    let json = ScanRowJson {
        scan: true,
        cluster: cluster_hex(cluster),
        group,
        position,
        version: row.version,
        key: std::str::from_utf8(&row.key).ok(),
        key_b64: STANDARD.encode(&row.key),
        value: std::str::from_utf8(&row.value).ok(),
        value_b64: STANDARD.encode(&row.value),
    };
    serde_json::to_vec(&json).expect("numbers, strings and booleans always encode as JSON")
}

/// The message id of a scan row: `scan-<group>-<position>-<key hex>`. A
/// scan started again (after a failover) has another position, so its
/// rows are new messages.
pub fn scan_message_id(group: u64, position: u64, key: &[u8]) -> String {
    format!("scan-{group}-{position}-{}", hex_lower(key))
}

#[derive(Serialize)]
struct ScanRowJson<'a> {
    scan: bool,
    cluster: String,
    group: u64,
    position: u64,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    key_b64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    value_b64: String,
}

/// The JSON of one event, as bytes (no trailing newline).
pub fn encode_event(event: &FeedEvent) -> Vec<u8> {
    let json = EventJson {
        cluster: cluster_hex(event.cluster),
        group: event.group,
        position: event.position,
        version: event.version,
        txn_id: hex_lower(&event.txn_id),
        participants: &event.participants,
        changes: event.changes.iter().map(ChangeJson::of).collect(),
    };
    serde_json::to_vec(&json).expect("numbers, strings and lists always encode as JSON")
}

/// The message id under which the queues deduplicate an event:
/// `trellis-<group>-<position>`.
pub fn message_id(event: &FeedEvent) -> String {
    format!("trellis-{}-{}", event.group, event.position)
}

#[derive(Serialize)]
struct EventJson<'a> {
    cluster: String,
    group: u64,
    position: u64,
    version: u64,
    txn_id: String,
    participants: &'a [u64],
    changes: Vec<ChangeJson<'a>>,
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    key_b64: String,
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    /// `null` for a delete.
    value_b64: Option<String>,
}

impl<'a> ChangeJson<'a> {
    fn of(change: &'a FeedChange) -> ChangeJson<'a> {
        ChangeJson {
            key: std::str::from_utf8(&change.key).ok(),
            key_b64: STANDARD.encode(&change.key),
            deleted: change.value.is_none(),
            value: change
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok()),
            value_b64: change.value.as_deref().map(|v| STANDARD.encode(v)),
        }
    }
}

/// A cluster id as `trellis status` and cursors write it: 16 lowercase
/// hex digits.
fn cluster_hex(cluster: u64) -> String {
    format!("{cluster:016x}")
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> FeedEvent {
        FeedEvent {
            group: 1,
            position: 120,
            version: 4711,
            txn_id: (0..16).map(|i| i * 17).collect(),
            cluster: 7,
            participants: vec![1, 2],
            changes: vec![
                FeedChange {
                    key: b"user:7".to_vec(),
                    value: Some(b"ada".to_vec()),
                },
                FeedChange {
                    key: vec![0xff],
                    value: None,
                },
                FeedChange {
                    key: "caf\u{e9}".as_bytes().to_vec(),
                    value: Some(vec![0, 0xfe]),
                },
                FeedChange {
                    key: b"empty".to_vec(),
                    value: Some(vec![]),
                },
            ],
        }
    }

    #[test]
    fn an_event_encodes_as_documented() {
        let json = String::from_utf8(encode_event(&event())).expect("utf-8");
        assert_eq!(
            json,
            concat!(
                r#"{"cluster":"0000000000000007","group":1,"position":120,"version":4711,"#,
                r#""txn_id":"00112233445566778899aabbccddeeff","participants":[1,2],"changes":["#,
                r#"{"key":"user:7","key_b64":"dXNlcjo3","deleted":false,"value":"ada","value_b64":"YWRh"},"#,
                r#"{"key_b64":"/w==","deleted":true,"value_b64":null},"#,
                r#"{"key":"café","key_b64":"Y2Fmw6k=","deleted":false,"value_b64":"AP4="},"#,
                r#"{"key":"empty","key_b64":"ZW1wdHk=","deleted":false,"value":"","value_b64":""}]}"#,
            )
        );
    }

    /// Whatever the bytes, the base64 fields give them back exactly.
    #[test]
    fn keys_and_values_round_trip_through_base64() {
        let event = event();
        let json: serde_json::Value =
            serde_json::from_slice(&encode_event(&event)).expect("valid JSON");
        let changes = json["changes"].as_array().expect("changes");
        assert_eq!(changes.len(), event.changes.len());
        for (got, want) in changes.iter().zip(&event.changes) {
            let key = STANDARD
                .decode(got["key_b64"].as_str().expect("key_b64"))
                .expect("base64");
            assert_eq!(key, want.key);
            let value = got["value_b64"]
                .as_str()
                .map(|v| STANDARD.decode(v).expect("base64"));
            assert_eq!(value, want.value);
            assert_eq!(got["deleted"], want.value.is_none());
        }
    }

    #[test]
    fn a_scan_row_encodes_as_documented_with_its_own_id() {
        let scan = FeedScan {
            cluster: 1,
            group: 1,
            position: 118,
            rows: vec![
                FeedScanRow {
                    key: b"user:7".to_vec(),
                    value: b"ada".to_vec(),
                    version: 4690,
                },
                FeedScanRow {
                    key: vec![0xff, 0x01],
                    value: vec![0xfe],
                    version: 12,
                },
            ],
            done: false,
        };
        let messages = Message::of_scan(&scan);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            String::from_utf8(messages[0].payload.clone()).expect("utf-8"),
            concat!(
                r#"{"scan":true,"cluster":"0000000000000001","group":1,"position":118,"version":4690,"#,
                r#""key":"user:7","key_b64":"dXNlcjo3","value":"ada","value_b64":"YWRh"}"#
            )
        );
        assert_eq!(messages[0].id, "scan-1-118-757365723a37");
        assert_eq!(
            String::from_utf8(messages[1].payload.clone()).expect("utf-8"),
            r#"{"scan":true,"cluster":"0000000000000001","group":1,"position":118,"version":12,"key_b64":"/wE=","value_b64":"/g=="}"#
        );
        assert_eq!(messages[1].id, "scan-1-118-ff01");
        assert_eq!(messages[1].group, 1);
    }

    #[test]
    fn a_one_group_commit_has_no_participants_and_no_change_is_fine() {
        let event = FeedEvent {
            group: 3,
            position: 9,
            version: 9,
            txn_id: vec![0xab; 16],
            cluster: 7,
            participants: vec![],
            changes: vec![],
        };
        assert_eq!(
            String::from_utf8(encode_event(&event)).expect("utf-8"),
            r#"{"cluster":"0000000000000007","group":3,"position":9,"version":9,"txn_id":"abababababababababababababababab","participants":[],"changes":[]}"#
        );
        assert_eq!(message_id(&event), "trellis-3-9");
    }
}
