//! The shard's side of moving slots between groups (DESIGN.md §8): the
//! logged slot steps (import, abandon, freeze, thaw, release), following a
//! map on request, exporting a slot's entries and ingesting them at the
//! target. The rules live in [`crate::ownership`] (which steps fit) and
//! [`crate::state`] (`plan_step`, `export`, `check_ingest`, and `apply` of
//! the SLOTS and INGEST records); this module logs what they say and waits
//! for durability, as [`super::participant`] does for transactions.
//!
//! Every step answers once durable at SYNC, so a job that saw an answer
//! never sees it undone by a failover. Every step is idempotent: a resumed
//! job repeats it, and a step already done logs nothing.
//!
//! # What this module never does
//!
//! - It never speaks the wire (the server converts at its edge).
//! - It never sends a value a failover could lose: an export waits until
//!   what it sends is durable at SYNC.
//! - It never decides on its own when a slot moves: the job driver does,
//!   and the catalog's map is the word on which slots are owned.

use std::ops::Range;

use tokio::time::Instant;
use trellis_types::limits::{KEY_BYTES_MAX, MESSAGE_BYTES_MAX, VALUE_BYTES_MAX};
use trellis_types::{GroupId, MapEpoch, SlotSet, Version};

use super::{Shard, ShardError};
use crate::ownership::SlotStep;
use crate::record::{IngestRec, Record, SnapEntry};
use crate::repl::Level;
use crate::state::{Entry, Export, ExportRefusal, slots_rec};
use crate::wal::RECORD_BYTES_MAX;

/// Most bytes of entries in one ExportSlots message (keys, values and
/// [`ENTRY_OVERHEAD_BYTES`] each). The largest entry fits in one.
pub const EXPORT_CHUNK_BYTES: usize = 2 * 1024 * 1024;
/// Most bytes of entries one Ingest may carry (counted as for export): the
/// INGEST record it becomes must fit in one log record.
pub const INGEST_BYTES_MAX: usize = RECORD_BYTES_MAX / 2;
/// Highest version an ingest accepts. Versions share a word with the
/// tombstone flag (bit 63), and this group's own versions continue above
/// the highest imported one: this leaves 2^62 of them. A source's versions
/// are its LSNs plus its own base, far below it.
pub const IMPORTED_VERSION_MAX: Version = 1 << 62;

/// What one entry costs beyond its key and value, counted generously
/// (protobuf tags, lengths, the version, the tombstone flag).
pub const ENTRY_OVERHEAD_BYTES: usize = 32;

const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + ENTRY_OVERHEAD_BYTES <= EXPORT_CHUNK_BYTES);
const _: () = assert!(EXPORT_CHUNK_BYTES <= INGEST_BYTES_MAX);
const _: () = assert!(INGEST_BYTES_MAX * 2 <= RECORD_BYTES_MAX);
const _: () = assert!(INGEST_BYTES_MAX * 2 <= MESSAGE_BYTES_MAX);

/// What one entry counts for against [`EXPORT_CHUNK_BYTES`] and
/// [`INGEST_BYTES_MAX`].
pub fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
}

/// Cuts an export's entries into messages of at most `chunk_bytes` each
/// (an entry larger than that alone in one). Always at least one range, so
/// the last message (which carries `complete_version`) exists even when
/// nothing is sent.
pub fn export_chunks(entries: &[(Box<[u8]>, Entry)], chunk_bytes: usize) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, entry)) in entries.iter().enumerate() {
        let size = entry_bytes(key, entry.value());
        if i > start && bytes + size > chunk_bytes {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    chunks.push(start..entries.len());
    chunks
}

impl Shard {
    /// Logs `step` for `slots` (BEGIN_IMPORT, ABANDON_IMPORT, FREEZE,
    /// THAW) once the ownership says it fits every slot; slots where it is
    /// done already are left out of the record, and a step done everywhere
    /// logs nothing (so a resumed import never drops what it copied).
    /// Answers the map epoch once the step is durable at SYNC.
    pub async fn move_slots(
        &self,
        step: SlotStep,
        slots: &SlotSet,
    ) -> Result<MapEpoch, ShardError> {
        if step == SlotStep::Release {
            return Err(ShardError::Invalid(
                "a release follows the map first: use release_slots".into(),
            ));
        }
        self.log_step(step, slots).await
    }

    /// After the flip: follows the map `map_epoch` (under which this group
    /// owns `owned`), then logs RELEASE for `slots`, dropping their data.
    /// Refused, with nothing logged, if a slot is still owned or frozen
    /// here under that map (the map did not move it).
    pub async fn release_slots(
        &self,
        map_epoch: MapEpoch,
        owned: SlotSet,
        slots: &SlotSet,
    ) -> Result<MapEpoch, ShardError> {
        self.set_slots(map_epoch, owned);
        self.log_step(SlotStep::Release, slots).await
    }

    async fn log_step(&self, step: SlotStep, slots: &SlotSet) -> Result<MapEpoch, ShardError> {
        self.wal().reserve().await?;
        let (lsn, map_epoch) = {
            let mut guard = self.state.lock();
            let changed = guard.plan_step(step, slots).map_err(ShardError::BadStep)?;
            let lsn = if changed.is_empty() {
                // Done already: answer once what this step saw is durable.
                guard.core().applied_lsn
            } else {
                let lsn = self.log(&mut guard, &Record::Slots(slots_rec(step, &changed)))?;
                tracing::info!(
                    lsn,
                    step = step.name(),
                    slots = changed.len(),
                    "slot step logged"
                );
                lsn
            };
            (lsn, guard.core().ownership.map_epoch())
        };
        self.after_write();
        self.settle(lsn, Level::Sync).await?;
        Ok(map_epoch)
    }

    /// The entries of `slots` with versions above `above_version`
    /// (tombstones too), sorted by key, and the version up to which the
    /// copy is complete ([`crate::state::State::export`]; the index is walked
    /// outside the state lock). With
    /// `drained` (the cutover's last copy), refused unless every slot is
    /// frozen towards that group and nothing is prepared or held on their
    /// keys. Answers once everything up to the complete version is durable
    /// at SYNC: a copied value, or a version promised complete, is never
    /// one a failover could lose.
    pub async fn export(
        &self,
        slots: &SlotSet,
        above_version: Version,
        drained: Option<GroupId>,
    ) -> Result<Export, ShardError> {
        let export = self
            .state
            .export(slots, above_version, drained, Instant::now())
            .map_err(|refusal| match refusal {
                ExportRefusal::NotHeld(error) => ShardError::BadStep(error),
                ExportRefusal::NotFrozen { slot, state } => ShardError::NotDrained(format!(
                    "slot {slot} is {state:?} here, not frozen towards group {}",
                    drained.unwrap_or_default()
                )),
                ExportRefusal::NotDrained { locked_keys } => ShardError::NotDrained(format!(
                    "{locked_keys} key(s) of the frozen slots are still locked by prepared \
                     transactions or held by read-only ones; retry"
                )),
            })?;
        let newest = export
            .entries
            .iter()
            .map(|(_, e)| e.version())
            .max()
            .unwrap_or(0)
            .max(export.complete_version);
        self.settle(self.state.lsn_of(newest), Level::Sync).await?;
        Ok(export)
    }

    /// Logs copied entries (an INGEST record) into slots importing from
    /// `from`; refused, with nothing logged, if any entry's slot is not.
    /// Answers this group's version after the record (at least every
    /// version it holds, imported or its own) once durable at SYNC.
    pub async fn ingest(
        &self,
        from: GroupId,
        entries: Vec<SnapEntry>,
    ) -> Result<Version, ShardError> {
        let bytes: usize = entries
            .iter()
            .map(|e| entry_bytes(&e.key, e.value.as_deref()))
            .sum();
        if bytes > INGEST_BYTES_MAX {
            return Err(ShardError::Invalid(format!(
                "an ingest of {bytes} bytes is over INGEST_BYTES_MAX ({INGEST_BYTES_MAX}); send smaller batches"
            )));
        }
        if let Some(e) = entries
            .iter()
            .find(|e| e.version == 0 || e.version > IMPORTED_VERSION_MAX)
        {
            return Err(ShardError::Invalid(format!(
                "entry {} has version {}; copied entries keep their source versions, \
                 which are above 0 and at most IMPORTED_VERSION_MAX ({IMPORTED_VERSION_MAX})",
                hex::encode(&e.key),
                e.version
            )));
        }
        self.wal().reserve().await?;
        let (lsn, version) = {
            let mut guard = self.state.lock();
            guard
                .check_ingest(from, &entries)
                .map_err(|n| self.not_served(n))?;
            let lsn = if entries.is_empty() {
                guard.core().applied_lsn
            } else {
                self.log(
                    &mut guard,
                    &Record::Ingest(IngestRec {
                        from_group: from,
                        entries,
                    }),
                )?
            };
            (lsn, guard.version(lsn))
        };
        self.after_write();
        self.settle(lsn, Level::Sync).await?;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trellis_types::{SlotSet, slot_of};

    use super::super::test_util::{config, put, txn, value_of};
    use super::super::{Shard, ShardError};
    use super::*;
    use crate::metrics::Metrics;
    use crate::record::{PrepareRec, WriteRec};
    use crate::state::Outcome;

    fn entry(key: &str, value_bytes: usize) -> (Box<[u8]>, Entry) {
        (
            key.as_bytes().into(),
            Entry::new(1, Some(&vec![0; value_bytes])),
        )
    }

    #[test]
    fn export_chunks_stay_under_the_bound_and_always_end() {
        assert_eq!(
            export_chunks(&[], 100),
            vec![0..0],
            "one last message even when empty"
        );
        // 1 + 40 + 32 = 73 bytes each: one per chunk of 100, two per 146.
        let entries: Vec<_> = (0..5).map(|i| entry(&i.to_string(), 40)).collect();
        assert_eq!(
            export_chunks(&entries, 100),
            vec![0..1, 1..2, 2..3, 3..4, 4..5]
        );
        assert_eq!(export_chunks(&entries, 146), vec![0..2, 2..4, 4..5]);
        let big = vec![entry("a", 10), entry("b", 500), entry("c", 10)];
        assert_eq!(
            export_chunks(&big, 100),
            vec![0..1, 1..2, 2..3],
            "an entry over the bound goes alone"
        );
    }

    /// Keys that hash to the same slot, and one that does not.
    fn keys_in_one_slot(n: usize) -> (u32, Vec<String>, String) {
        let slot = slot_of(b"moving-0");
        let keys: Vec<String> = (0..)
            .map(|i| format!("moving-{i}"))
            .filter(|k| slot_of(k.as_bytes()) == slot)
            .take(n)
            .collect();
        let other = (0..)
            .map(|i| format!("staying-{i}"))
            .find(|k| slot_of(k.as_bytes()) != slot)
            .expect("some key");
        (slot, keys, other)
    }

    fn one(slot: u32) -> SlotSet {
        SlotSet::parse(&slot.to_string()).expect("slot")
    }

    fn all_but(slot: u32) -> SlotSet {
        let mut set = SlotSet::empty();
        for s in (0..trellis_types::SLOTS).filter(|s| *s != slot) {
            set.insert(s);
        }
        set
    }

    fn to_snap(export: &Export) -> Vec<SnapEntry> {
        export
            .entries
            .iter()
            .map(|(key, e)| SnapEntry {
                key: key.to_vec(),
                value: e.value().map(<[u8]>::to_vec),
                version: e.version(),
            })
            .collect()
    }

    async fn commit(shard: &Shard, n: u32, writes: Vec<WriteRec>) -> Outcome {
        shard
            .commit_local(1, txn(n), vec![], writes, Level::Sync)
            .await
            .expect("commit")
    }

    /// The story of one slot moving from group 1 (A, every slot) to group
    /// 2 (B, none), step by step as the job drives it: B begins the import,
    /// A's base copy is ingested, A keeps writing (a delete too), A freezes
    /// and its drained last delta is ingested, both follow the flipped map,
    /// A releases. Then B serves the keys at A's versions and writes above
    /// them, and A answers WRONG_SHARD and holds nothing of the slot.
    #[tokio::test]
    async fn a_slot_moves_between_two_groups_with_its_versions() {
        let (slot, keys, other) = keys_in_one_slot(3);
        let dir_a = tempfile::tempdir().expect("tempdir");
        let dir_b = tempfile::tempdir().expect("tempdir");
        let a = Shard::open(config(dir_a.path()), Arc::new(Metrics::default())).expect("open A");
        let mut cfg_b = config(dir_b.path());
        cfg_b.group_id = 2;
        cfg_b.slots = SlotSet::empty();
        let b = Shard::open(cfg_b, Arc::new(Metrics::default())).expect("open B");

        // A's history runs far ahead of B's LSNs.
        for n in 0..40 {
            commit(&a, n, vec![put(&other, &format!("o{n}"))]).await;
        }
        commit(&a, 100, vec![put(&keys[0], "k0"), put(&keys[1], "k1")]).await;

        assert_eq!(
            b.move_slots(SlotStep::BeginImport { from: 1 }, &one(slot))
                .await
                .expect("import"),
            1
        );
        b.move_slots(SlotStep::BeginImport { from: 1 }, &one(slot))
            .await
            .expect("a resumed job repeats the step");
        let base = a.export(&one(slot), 0, None).await.expect("export");
        assert_eq!(base.entries.len(), 2);
        assert!(base.entries.iter().all(|(k, _)| slot_of(k) == slot));
        let imported = b.ingest(1, to_snap(&base)).await.expect("ingest");
        assert!(imported >= base.complete_version);
        // Versions out of range are refused before anything is logged.
        let last_lsn = b.last_lsn();
        for version in [0, IMPORTED_VERSION_MAX + 1] {
            let mut bad = to_snap(&base);
            bad[0].version = version;
            assert!(matches!(
                b.ingest(1, bad).await,
                Err(ShardError::Invalid(_))
            ));
        }
        assert_eq!(b.last_lsn(), last_lsn);
        // Ingesting into a slot not importing from that group is refused.
        assert!(matches!(
            b.ingest(3, to_snap(&base)).await,
            Err(ShardError::BadStep(_))
        ));

        // The delta: a change, a delete, a new key.
        commit(
            &a,
            101,
            vec![
                put(&keys[0], "k0'"),
                WriteRec {
                    key: keys[1].clone().into(),
                    value: None,
                },
            ],
        )
        .await;
        commit(&a, 102, vec![put(&keys[2], "k2")]).await;
        assert!(
            matches!(
                a.export(&one(slot), base.complete_version, Some(2)).await,
                Err(ShardError::NotDrained(_))
            ),
            "not frozen yet"
        );
        a.move_slots(SlotStep::Freeze { to: 2 }, &one(slot))
            .await
            .expect("freeze");
        let last = a
            .export(&one(slot), base.complete_version, Some(2))
            .await
            .expect("drained export");
        assert_eq!(last.entries.len(), 3, "two changes and a tombstone");
        assert!(last.entries.iter().any(|(_, e)| e.value().is_none()));
        b.ingest(1, to_snap(&last)).await.expect("ingest delta");
        // Importing: B serves nothing yet, scans included; A's frozen
        // slot refuses a scan that meets it.
        assert!(matches!(
            b.check_owned(1, [keys[0].as_bytes()]),
            Err(ShardError::SlotMoving(_))
        ));
        assert!(b.scan(b"moving-", 100).await.expect("scan").0.is_empty());
        assert!(matches!(
            a.scan(b"moving-", 100).await,
            Err(ShardError::SlotMoving(_))
        ));

        // The flip, then the release.
        assert!(b.set_slots(2, one(slot)));
        assert!(a.set_slots(2, all_but(slot)));
        assert!(
            matches!(
                a.release_slots(2, all_but(slot), &all_but(slot)).await,
                Err(ShardError::BadStep(_))
            ),
            "owned slots are not released"
        );
        a.release_slots(2, all_but(slot), &one(slot))
            .await
            .expect("release");

        b.check_owned(2, keys.iter().map(|k| k.as_bytes()))
            .expect("B serves the slot");
        let (scanned, _) = b.scan(b"moving-", 100).await.expect("scan");
        let scanned: Vec<&[u8]> = scanned.iter().map(|(k, _)| k.as_slice()).collect();
        let mut expected = [keys[0].as_bytes(), keys[2].as_bytes()];
        expected.sort();
        assert_eq!(scanned, expected, "the delete stays deleted");
        let at_a = [
            (keys[0].as_str(), Some(b"k0'".to_vec())),
            (keys[2].as_str(), Some(b"k2".to_vec())),
        ];
        let mut highest = 0;
        for e in &last.entries {
            highest = highest.max(e.1.version());
        }
        for (key, value) in at_a {
            let (got, version) = value_of(&b, key).await.expect("moved");
            assert_eq!(Some(got), value);
            let source = last
                .entries
                .iter()
                .find(|(k, _)| &k[..] == key.as_bytes())
                .expect("sent");
            assert_eq!(
                version,
                source.1.version(),
                "{key} keeps its source version"
            );
        }
        let deleted = b.read(&[keys[1].clone().into()]).await.expect("read");
        assert_eq!(
            deleted[0].entry.as_ref().map(Entry::version),
            Some(
                last.entries
                    .iter()
                    .find(|(k, _)| &k[..] == keys[1].as_bytes())
                    .expect("tombstone")
                    .1
                    .version()
            )
        );
        assert_eq!(deleted[0].entry.as_ref().and_then(Entry::value), None);
        match commit(&b, 200, vec![put(&keys[0], "at B")]).await {
            Outcome::Committed { version, .. } => {
                assert!(
                    version > highest,
                    "B wrote at {version}, imported up to {highest}"
                )
            }
            other => panic!("B refused: {other:?}"),
        }
        assert!(matches!(
            a.check_owned(2, [keys[0].as_bytes()]),
            Err(ShardError::WrongShard { .. })
        ));
        assert!(
            a.state.index.iter().all(|e| slot_of(e.key()) != slot),
            "A dropped the slot's entries"
        );
        assert!(value_of(&a, &other).await.is_some(), "other slots stay");
    }

    /// A frozen slot refuses commits and prepares at once (checked under
    /// the state lock), reads too, and stays frozen across restarts, from
    /// the log and from a snapshot: a restart in a job's drain must never
    /// let the source serve writes again.
    #[tokio::test]
    async fn a_frozen_slot_refuses_commits_and_stays_frozen_across_restarts() {
        let (slot, keys, other) = keys_in_one_slot(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut shard =
            Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        commit(&shard, 1, vec![put(&keys[0], "v")]).await;
        shard
            .move_slots(SlotStep::Freeze { to: 2 }, &one(slot))
            .await
            .expect("freeze");
        let refused = shard
            .commit_local(1, txn(2), vec![], vec![put(&keys[0], "w")], Level::Sync)
            .await;
        assert!(
            matches!(refused, Err(ShardError::SlotMoving(_))),
            "{refused:?}"
        );
        let prepare = PrepareRec {
            txn_id: txn(3).0.to_vec(),
            reads: vec![],
            writes: vec![put(&keys[0], "w")],
            anchor: 1,
            participants: vec![1, 2],
            exec: 7,
        };
        assert!(matches!(
            shard.prepare(1, prepare, Level::Sync).await,
            Err(ShardError::SlotMoving(_))
        ));
        commit(&shard, 4, vec![put(&other, "fine")]).await;

        for snapshot_first in [false, true] {
            if snapshot_first {
                assert!(shard.snapshot().await.expect("snapshot").is_some());
            }
            shard.shutdown();
            drop(shard);
            shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("reopen");
            assert_eq!(shard.recovery().snapshot_lsn > 0, snapshot_first);
            assert!(
                matches!(
                    shard.check_owned(1, [keys[0].as_bytes()]),
                    Err(ShardError::SlotMoving(_))
                ),
                "frozen after a restart (snapshot: {snapshot_first})"
            );
            let refused = shard
                .commit_local(1, txn(10), vec![], vec![put(&keys[0], "w")], Level::Sync)
                .await;
            assert!(
                matches!(refused, Err(ShardError::SlotMoving(_))),
                "{refused:?}"
            );
        }
        // Under a coordinator a replica restarts owning nothing (epoch 0)
        // until it hears the map: the slot still comes out frozen, and the
        // map that still gives it to this group keeps it frozen.
        shard.shutdown();
        drop(shard);
        let mut cfg = config(dir.path());
        (cfg.map_epoch, cfg.slots) = (0, SlotSet::empty());
        shard = Shard::open(cfg, Arc::new(Metrics::default())).expect("reopen");
        assert!(shard.set_slots(1, SlotSet::all()));
        assert!(
            matches!(
                shard.check_owned(1, [keys[0].as_bytes()]),
                Err(ShardError::SlotMoving(_))
            ),
            "frozen after a restart that owned nothing until the map came"
        );
        assert!(shard.check_owned(1, [other.as_bytes()]).is_ok());
        shard
            .move_slots(SlotStep::Thaw, &one(slot))
            .await
            .expect("thaw");
        commit(&shard, 11, vec![put(&keys[0], "thawed")]).await;
        assert_eq!(
            value_of(&shard, &keys[0]).await.expect("written").0,
            b"thawed"
        );
    }
}
