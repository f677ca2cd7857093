//! What the write-ahead log and snapshots hold, as prost messages (so the
//! format can grow fields without breaking old logs), and the record kinds.
//!
//! Every state change of a replica is exactly one [`Record`]; replaying the
//! records in LSN order rebuilds the state.

use prost::Message;

/// Record kind bytes, as written in the frame's `type` field. Never reuse a
/// number.
pub mod kind {
    pub const COMMIT_LOCAL: u8 = 1;
    pub const PREPARE: u8 = 2;
    pub const DECIDE: u8 = 3;
    pub const FINALIZE: u8 = 4;
    pub const FORGET: u8 = 5;
    pub const NEW_EPOCH: u8 = 6;
    pub const SLOTS: u8 = 7;
    pub const INGEST: u8 = 8;
}

/// Whether a record of `kind` is appended lazily ([`crate::wal::Wal::append_lazy`]):
/// a FINALIZE or FORGET of the background finalizer need not take an
/// `fdatasync` of its own — the PREPARE it follows is durable, and a lost
/// one is redone by resolution (its sender waits for its durability before
/// forgetting anything). Whoever waits for one with urgency (a fence, a
/// read of what it wrote) urges the writer.
pub fn is_lazy(kind: u8) -> bool {
    matches!(kind, kind::FINALIZE | kind::FORGET)
}

/// The `op` of a [`SlotsRec`]. Never reuse a number.
pub mod slot_op {
    pub const BEGIN_IMPORT: i32 = 1;
    pub const ABANDON_IMPORT: i32 = 2;
    pub const FREEZE: i32 = 3;
    pub const THAW: i32 = 4;
    pub const RELEASE: i32 = 5;
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct WriteRec {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// `None` deletes the key.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct ReadRec {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

/// A one-phase commit: validated, so it only has to be applied.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct CommitLocalRec {
    #[prost(bytes = "vec", tag = "1")]
    pub txn_id: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub writes: Vec<WriteRec>,
}

/// A 2PC participant's vote YES: the locks it holds and what it will write.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct PrepareRec {
    #[prost(bytes = "vec", tag = "1")]
    pub txn_id: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub reads: Vec<ReadRec>,
    #[prost(message, repeated, tag = "3")]
    pub writes: Vec<WriteRec>,
    #[prost(uint64, tag = "4")]
    pub anchor: u64,
    #[prost(uint64, repeated, tag = "5")]
    pub participants: Vec<u64>,
    /// The execution of the commit whose PREPARE this is (random per
    /// attempt; 0 in records written before executions were named). At the
    /// anchor it names the one execution that may commit in parallel
    /// (answer once every participant voted YES) and abort without fencing.
    #[prost(uint64, tag = "6")]
    pub exec: u64,
}

impl PrepareRec {
    /// Whether the transaction reads or writes a key in `slots` (it then
    /// holds a lock there while prepared).
    pub fn touches(&self, slots: &trellis_types::SlotSet) -> bool {
        let keys = self.reads.iter().map(|r| &r.key);
        keys.chain(self.writes.iter().map(|w| &w.key))
            .any(|key| slots.contains(trellis_types::slot_of(key)))
    }
}

/// The transaction record at the anchor: the outcome, decided once.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct DecideRec {
    #[prost(bytes = "vec", tag = "1")]
    pub txn_id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub commit: bool,
    #[prost(uint64, repeated, tag = "3")]
    pub participants: Vec<u64>,
}

/// Apply (commit) or discard (abort) a prepared transaction.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct FinalizeRec {
    #[prost(bytes = "vec", tag = "1")]
    pub txn_id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub commit: bool,
}

/// Drop transaction records whose participants have all finalized.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct ForgetRec {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub txn_ids: Vec<Vec<u8>>,
}

/// A primary starts its epoch here: every record after it (until the next
/// one) was ordered by that primary. Changes nothing else; the list of
/// these is how two replicas find where their logs part.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct NewEpochRec {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
}

/// A step of a slot move ([`crate::ownership::SlotStep`]): logged so that
/// replay and backups rebuild the in-between states, and so that the
/// steps that drop data do it at one log position on every replica.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SlotsRec {
    /// One of [`slot_op`].
    #[prost(int32, tag = "1")]
    pub op: i32,
    /// The slots, as `SlotSet::to_bytes` encodes them.
    #[prost(bytes = "vec", tag = "2")]
    pub slots: Vec<u8>,
    /// The other group: the source of an import, the target of a freeze.
    #[prost(uint64, tag = "3")]
    pub peer: u64,
}

/// Entries copied from another group into importing slots, with their
/// source versions. Each is inserted unless the index holds the key at a
/// version at least as high; the record raises the group's version base
/// so its own next versions are above every imported one.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct IngestRec {
    #[prost(uint64, tag = "1")]
    pub from_group: u64,
    /// `value` absent: a tombstone.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<SnapEntry>,
}

/// Where an epoch starts, in snapshots.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapEpoch {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(uint64, tag = "2")]
    pub lsn: u64,
}

/// One state change of a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    CommitLocal(CommitLocalRec),
    Prepare(PrepareRec),
    Decide(DecideRec),
    Finalize(FinalizeRec),
    Forget(ForgetRec),
    NewEpoch(NewEpochRec),
    Slots(SlotsRec),
    Ingest(IngestRec),
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::CommitLocal(_) => kind::COMMIT_LOCAL,
            Record::Prepare(_) => kind::PREPARE,
            Record::Decide(_) => kind::DECIDE,
            Record::Finalize(_) => kind::FINALIZE,
            Record::Forget(_) => kind::FORGET,
            Record::NewEpoch(_) => kind::NEW_EPOCH,
            Record::Slots(_) => kind::SLOTS,
            Record::Ingest(_) => kind::INGEST,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::CommitLocal(r) => r.encode_to_vec(),
            Record::Prepare(r) => r.encode_to_vec(),
            Record::Decide(r) => r.encode_to_vec(),
            Record::Finalize(r) => r.encode_to_vec(),
            Record::Forget(r) => r.encode_to_vec(),
            Record::NewEpoch(r) => r.encode_to_vec(),
            Record::Slots(r) => r.encode_to_vec(),
            Record::Ingest(r) => r.encode_to_vec(),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, String> {
        let err = |e: prost::DecodeError| format!("undecodable record of kind {kind}: {e}");
        Ok(match kind {
            kind::COMMIT_LOCAL => {
                Record::CommitLocal(CommitLocalRec::decode(payload).map_err(err)?)
            }
            kind::PREPARE => Record::Prepare(PrepareRec::decode(payload).map_err(err)?),
            kind::DECIDE => Record::Decide(DecideRec::decode(payload).map_err(err)?),
            kind::FINALIZE => Record::Finalize(FinalizeRec::decode(payload).map_err(err)?),
            kind::FORGET => Record::Forget(ForgetRec::decode(payload).map_err(err)?),
            kind::NEW_EPOCH => Record::NewEpoch(NewEpochRec::decode(payload).map_err(err)?),
            kind::SLOTS => Record::Slots(SlotsRec::decode(payload).map_err(err)?),
            kind::INGEST => Record::Ingest(IngestRec::decode(payload).map_err(err)?),
            other => {
                return Err(format!(
                    "unknown record kind {other} (written by a newer Trellis?)"
                ));
            }
        })
    }
}

// ---- snapshots ----

#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapEntry {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
    #[prost(uint64, tag = "3")]
    pub version: u64,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapPrepared {
    #[prost(message, optional, tag = "1")]
    pub rec: Option<PrepareRec>,
    #[prost(uint64, tag = "2")]
    pub lsn: u64,
    /// The version its writes get (its PREPARE's); 0 in snapshots written
    /// before versions could differ from LSNs, where it is `lsn`.
    #[prost(uint64, tag = "3")]
    pub version: u64,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapDecision {
    #[prost(message, optional, tag = "1")]
    pub rec: Option<DecideRec>,
    #[prost(uint64, tag = "2")]
    pub lsn: u64,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapOutcome {
    #[prost(bytes = "vec", tag = "1")]
    pub txn_id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub commit: bool,
    /// Aborted: the keys at fault.
    #[prost(message, repeated, tag = "3")]
    pub keys: Vec<ReadRec>,
    #[prost(uint64, tag = "4")]
    pub lsn: u64,
    #[prost(int32, tag = "5")]
    pub refusal: i32,
    #[prost(string, tag = "6")]
    pub message: String,
    /// Committed: digest of the written keys.
    #[prost(uint64, tag = "7")]
    pub digest: u64,
    /// Committed: the version the writes got.
    #[prost(uint64, tag = "8")]
    pub version: u64,
}

/// Last chunk of a snapshot: without it the snapshot is incomplete.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapTrailer {
    #[prost(uint64, tag = "1")]
    pub lsn: u64,
    #[prost(uint64, tag = "2")]
    pub entries: u64,
    #[prost(message, repeated, tag = "3")]
    pub epochs: Vec<SnapEpoch>,
    /// Slots importing or frozen here (the map says the rest).
    #[prost(message, repeated, tag = "4")]
    pub moving: Vec<SnapSlot>,
    /// Where the version base changed ([`crate::version_base::VersionBase`]).
    #[prost(message, repeated, tag = "5")]
    pub version_points: Vec<SnapVersionPoint>,
}

/// A slot in an in-between state, in snapshots.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapSlot {
    #[prost(uint32, tag = "1")]
    pub slot: u32,
    /// Frozen towards `peer`; otherwise importing from it.
    #[prost(bool, tag = "2")]
    pub frozen: bool,
    #[prost(uint64, tag = "3")]
    pub peer: u64,
}

/// From `lsn` on, `version = lsn + offset` (until the next point).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapVersionPoint {
    #[prost(uint64, tag = "1")]
    pub lsn: u64,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct SnapChunk {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<SnapEntry>,
    #[prost(message, repeated, tag = "2")]
    pub prepared: Vec<SnapPrepared>,
    #[prost(message, repeated, tag = "3")]
    pub decisions: Vec<SnapDecision>,
    #[prost(message, repeated, tag = "4")]
    pub outcomes: Vec<SnapOutcome>,
    #[prost(message, optional, tag = "5")]
    pub trailer: Option<SnapTrailer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepare_touches_the_slots_of_its_reads_and_its_writes() {
        let key_in = |slot: u32| {
            (0u32..)
                .map(|i| format!("k{i}").into_bytes())
                .find(|k| trellis_types::slot_of(k) == slot)
                .expect("some key hashes to every slot")
        };
        let rec = PrepareRec {
            txn_id: vec![1; 16],
            reads: vec![ReadRec {
                key: key_in(3),
                version: 1,
            }],
            writes: vec![WriteRec {
                key: key_in(5),
                value: None,
            }],
            anchor: 1,
            participants: vec![1],
            exec: 0,
        };
        let set = |slots: &[u32]| {
            let mut set = trellis_types::SlotSet::empty();
            for s in slots {
                set.insert(*s);
            }
            set
        };
        assert!(rec.touches(&set(&[3])), "a read's slot");
        assert!(rec.touches(&set(&[5, 9])), "a write's slot");
        assert!(!rec.touches(&set(&[4, 6])), "neither");
        assert!(!rec.touches(&set(&[])), "no slot");
    }

    #[test]
    fn records_round_trip() {
        let records = [
            Record::CommitLocal(CommitLocalRec {
                txn_id: vec![1; 16],
                writes: vec![
                    WriteRec {
                        key: b"a".to_vec(),
                        value: Some(b"1".to_vec()),
                    },
                    WriteRec {
                        key: b"b".to_vec(),
                        value: None,
                    },
                ],
            }),
            Record::Prepare(PrepareRec {
                txn_id: vec![2; 16],
                reads: vec![ReadRec {
                    key: b"c".to_vec(),
                    version: 9,
                }],
                writes: vec![WriteRec {
                    key: b"d".to_vec(),
                    value: Some(vec![]),
                }],
                anchor: 3,
                participants: vec![1, 3],
                exec: 11,
            }),
            Record::Decide(DecideRec {
                txn_id: vec![3; 16],
                commit: true,
                participants: vec![1],
            }),
            Record::Finalize(FinalizeRec {
                txn_id: vec![4; 16],
                commit: false,
            }),
            Record::Forget(ForgetRec {
                txn_ids: vec![vec![5; 16]],
            }),
            Record::Slots(SlotsRec {
                op: slot_op::FREEZE,
                slots: vec![1, 2, 3],
                peer: 7,
            }),
            Record::Ingest(IngestRec {
                from_group: 2,
                entries: vec![
                    SnapEntry {
                        key: b"e".to_vec(),
                        value: Some(b"v".to_vec()),
                        version: 40,
                    },
                    SnapEntry {
                        key: b"f".to_vec(),
                        value: None,
                        version: 41,
                    },
                ],
            }),
        ];
        for record in records {
            let back = Record::decode(record.kind(), &record.encode()).expect("decodes");
            assert_eq!(back, record);
        }
        // An empty value and a delete stay distinct.
        let put_empty = WriteRec {
            key: b"k".to_vec(),
            value: Some(vec![]),
        };
        let back = WriteRec::decode(put_empty.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back.value, Some(vec![]));
        assert!(Record::decode(99, &[]).is_err());
    }
}
