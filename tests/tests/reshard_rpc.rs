//! The shard side of moving a slot, over gRPC between two real `trellis
//! shard` processes on 127.0.0.1:0, driven step by step as a job driver
//! would: MoveSlots, ExportSlots and Ingest, with their error reasons.

use tonic::Code;
use trellis_proto::shard::v1 as pb;
use trellis_tests::harness::{Proc, shard_client, txn_id};
use trellis_types::{SLOTS, SlotSet, slot_of};

type Client = pb::shard_client::ShardClient<tonic::transport::Channel>;

fn start_shard(dir: &std::path::Path, group: &str, slots: &str) -> Proc {
    let dir = dir.to_str().expect("utf-8 path");
    Proc::start(&[
        "shard",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--group",
        group,
        "--slots",
        slots,
    ])
    .expect("shard starts")
}

fn reason(status: &tonic::Status) -> Option<pb::ErrorReason> {
    trellis_proto::error::error_info(status)
        .and_then(|info| pb::ErrorReason::from_str_name(&info.reason))
}

fn set(slots: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut set = SlotSet::empty();
    for slot in slots {
        set.insert(slot);
    }
    set.to_bytes()
}

async fn step(client: &mut Client, op: pb::SlotOp, slot: u32, peer_group: u64) -> u64 {
    client
        .move_slots(pb::MoveSlotsRequest {
            op: op as i32,
            slots: set([slot]),
            peer_group,
            map_epoch: 0,
            owned: Vec::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{op:?}: {e}"))
        .into_inner()
        .map_epoch
}

async fn commit(client: &mut Client, map_epoch: u64, key: &[u8], value: &[u8]) -> u64 {
    let response = client
        .commit_local(pb::CommitLocalRequest {
            durability: 0,
            map_epoch,
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![pb::WriteOp {
                key: key.to_vec(),
                value: value.to_vec(),
                delete: value.is_empty(),
            }],
        })
        .await
        .expect("commit")
        .into_inner();
    match response.outcome {
        Some(pb::commit_local_response::Outcome::Committed(written)) => written.version,
        other => panic!("refused: {other:?}"),
    }
}

/// Every message of one export: its entries, and the last one's complete
/// version (checking only the last message says it is last).
async fn export(
    client: &mut Client,
    slot: u32,
    above_version: u64,
    drained: bool,
) -> Result<(Vec<pb::ExportEntry>, u64), tonic::Status> {
    let mut stream = client
        .export_slots(pb::ExportSlotsRequest {
            slots: set([slot]),
            above_version,
            drained,
            peer_group: 2,
        })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    let mut complete = None;
    while let Some(chunk) = stream.message().await? {
        assert!(complete.is_none(), "a message after the last");
        entries.extend(chunk.entries);
        if chunk.last {
            complete = Some(chunk.complete_version);
        }
    }
    Ok((entries, complete.expect("a last message")))
}

/// Group 1 owns every slot but one (X), group 2 owns X. Slot S moves from
/// 1 to 2: import at 2, base copy, more writes at 1 (a delete among them),
/// freeze at 1 (its commits answer SLOT_MOVING), the drained last copy,
/// both follow the flipped map, 1 releases. Group 2 then serves S's keys
/// at group 1's versions and writes above them; group 1 answers
/// WRONG_SHARD. Steps out of order answer FAILED_PRECONDITION, and a
/// drained copy before the freeze NOT_DRAINED.
#[tokio::test]
async fn a_slot_moves_between_two_shard_processes() {
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("moving-{i}").into_bytes())
        .filter(|k| slot_of(k) == slot_of(b"moving-0"))
        .take(3)
        .collect();
    let moved = slot_of(&keys[0]);
    let kept = (moved + 1) % SLOTS;
    let group_1_slots: Vec<String> = (0..SLOTS)
        .filter(|s| *s != kept)
        .map(|s| s.to_string())
        .collect();
    let dir_1 = tempfile::tempdir().expect("tempdir");
    let dir_2 = tempfile::tempdir().expect("tempdir");
    let one = start_shard(dir_1.path(), "1", &group_1_slots.join(","));
    let two = start_shard(dir_2.path(), "2", &kept.to_string());
    let mut c1 = shard_client(&one).await.expect("connect 1");
    let mut c2 = shard_client(&two).await.expect("connect 2");

    for i in 0..30 {
        commit(&mut c1, 1, format!("other-{i}").as_bytes(), b"x").await;
    }
    commit(&mut c1, 1, &keys[0], b"first").await;
    commit(&mut c1, 1, &keys[1], b"to be deleted").await;

    // Out of order: group 1 cannot freeze a slot it does not own, group 2
    // takes no copy before it imports.
    let refused = c1
        .move_slots(pb::MoveSlotsRequest {
            op: pb::SlotOp::Freeze as i32,
            slots: set([kept]),
            peer_group: 2,
            map_epoch: 0,
            owned: Vec::new(),
        })
        .await
        .expect_err("not owned");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    assert_eq!(step(&mut c2, pb::SlotOp::BeginImport, moved, 1).await, 1);
    let (base, complete) = export(&mut c1, moved, 0, false).await.expect("export");
    assert_eq!(base.len(), 2);
    let ingested = c2
        .ingest(pb::IngestRequest {
            from_group: 1,
            entries: base.clone(),
        })
        .await
        .expect("ingest")
        .into_inner()
        .version;
    assert!(ingested >= base.iter().map(|e| e.version).max().expect("some"));

    commit(&mut c1, 1, &keys[0], b"second").await;
    commit(&mut c1, 1, &keys[1], b"").await;
    commit(&mut c1, 1, &keys[2], b"new").await;
    let not_drained = export(&mut c1, moved, complete, true)
        .await
        .expect_err("not frozen yet");
    assert_eq!(not_drained.code(), Code::FailedPrecondition);
    assert_eq!(reason(&not_drained), Some(pb::ErrorReason::NotDrained));

    step(&mut c1, pb::SlotOp::Freeze, moved, 2).await;
    step(&mut c1, pb::SlotOp::Freeze, moved, 2).await; // a resumed job
    let frozen = c1
        .commit_local(pb::CommitLocalRequest {
            durability: 0,
            map_epoch: 1,
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![pb::WriteOp {
                key: keys[0].clone(),
                value: b"late".to_vec(),
                delete: false,
            }],
        })
        .await
        .expect_err("frozen");
    assert_eq!(reason(&frozen), Some(pb::ErrorReason::SlotMoving));
    let (delta, _) = export(&mut c1, moved, complete, true)
        .await
        .expect("drained export");
    assert_eq!(delta.len(), 3);
    assert!(delta.iter().any(|e| e.deleted && e.value.is_empty()));
    c2.ingest(pb::IngestRequest {
        from_group: 1,
        entries: delta.clone(),
    })
    .await
    .expect("ingest delta");

    // The flip (the driver's catalog write), then both follow it.
    let two_owns = set([kept, moved]);
    let epoch = c2
        .move_slots(pb::MoveSlotsRequest {
            op: pb::SlotOp::FollowMap as i32,
            slots: Vec::new(),
            peer_group: 0,
            map_epoch: 2,
            owned: two_owns.clone(),
        })
        .await
        .expect("follow")
        .into_inner()
        .map_epoch;
    assert_eq!(epoch, 2);
    let one_owns = set((0..SLOTS).filter(|s| *s != kept && *s != moved));
    c1.move_slots(pb::MoveSlotsRequest {
        op: pb::SlotOp::Release as i32,
        slots: set([moved]),
        peer_group: 0,
        map_epoch: 2,
        owned: one_owns,
    })
    .await
    .expect("release");

    let read = c2
        .read(pb::ReadRequest {
            map_epoch: 2,
            keys: keys.clone(),
            ..Default::default()
        })
        .await
        .expect("group 2 serves the slot")
        .into_inner()
        .results;
    let source = |key: &[u8]| delta.iter().find(|e| e.key == key).expect("sent").version;
    assert_eq!(
        (read[0].value.as_slice(), read[0].version),
        (&b"second"[..], source(&keys[0]))
    );
    assert_eq!(read[1].version, 0, "deleted");
    assert_eq!(
        (read[2].value.as_slice(), read[2].version),
        (&b"new"[..], source(&keys[2]))
    );
    let highest = delta.iter().map(|e| e.version).max().expect("some");
    let written = commit(&mut c2, 2, &keys[0], b"at group 2").await;
    assert!(
        written > highest,
        "wrote at {written}, imported up to {highest}"
    );
    let wrong = c1
        .read(pb::ReadRequest {
            map_epoch: 2,
            keys: vec![keys[0].clone()],
            ..Default::default()
        })
        .await
        .expect_err("moved away");
    assert_eq!(reason(&wrong), Some(pb::ErrorReason::WrongShard));
}
