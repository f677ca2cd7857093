//! Shards follow a changed slot map without a restart, and the coordinator
//! routes by it: the first step of resharding (ARCHITECTURE.md,
//! "Resharding").
//!
//! Real processes on 127.0.0.1: a coordinator and two shard groups over a
//! SQLite catalog. The test changes the map in the catalog itself (no job
//! moves slots yet, so the moved slots hold no data), then checks that
//! every replica serves under the new epoch, that the old owner refuses a
//! moved key, and that a write and read of a moved key go to the new owner
//! — also through a coordinator that still routes by the old map and must
//! route again when the old owner refuses.

use std::time::Duration;

use trellis_coordinator::catalog::Catalog;
use trellis_proto::shard::v1 as shard_pb;
use trellis_proto::shard::v1::shard_client::ShardClient;
use trellis_proto::v1;
use trellis_tests::harness::{Cluster, RPC_TIMEOUT};
use trellis_types::{SlotSet, slot_of};

/// How long replicas may take to follow a new map (they poll the group's
/// configuration about every second).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// Slots the test moves from group 1 to group 2.
const MOVED_SLOTS: usize = 10;

fn commit_put(key: &[u8], value: &[u8]) -> v1::CommitRequest {
    v1::CommitRequest {
        txn_id: rand::random::<[u8; 16]>().to_vec(),
        writes: vec![v1::Write {
            key: key.to_vec(),
            op: Some(v1::write::Op::Put(value.to_vec())),
        }],
        ..Default::default()
    }
}

/// Keys held by `group`'s first member.
fn keys_at(status: &v1::StatusResponse, group: u64) -> u64 {
    status
        .groups
        .iter()
        .find(|s| s.group_id == group)
        .and_then(|s| s.members.first())
        .map_or(0, |m| m.keys)
}

/// Writes `key` through coordinator `i` and reads it back; both must
/// succeed.
async fn write_and_read(cluster: &Cluster, i: usize, key: &[u8]) {
    let mut txn = cluster.txn(i).await.expect("txn client");
    let response = txn
        .commit(commit_put(key, b"v"))
        .await
        .expect("commit a moved key")
        .into_inner();
    assert!(
        matches!(
            response.outcome,
            Some(v1::commit_response::Outcome::Committed(_))
        ),
        "{response:?}"
    );
    let items = txn
        .get(v1::GetRequest {
            keys: vec![key.to_vec()],
            ..Default::default()
        })
        .await
        .expect("read a moved key")
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].value, b"v");
}

/// Moves the first [`MOVED_SLOTS`] slots of group 1 to group 2 in the
/// catalog (epoch 1 → 2), waits until every replica follows (asking
/// coordinator 0), and returns that status and a key in a moved slot.
async fn move_slots_and_wait(cluster: &Cluster) -> (v1::StatusResponse, Vec<u8>, u32) {
    let catalog = Catalog::connect(cluster.catalog()).await.expect("catalog");
    let map = catalog.load().await.expect("map");
    let moved: Vec<u32> = (0..map.slots.len() as u32)
        .filter(|s| map.slots[*s as usize] == 1)
        .take(MOVED_SLOTS)
        .collect();
    let mut slots = map.slots.clone();
    moved.iter().for_each(|s| slots[*s as usize] = 2);
    assert!(
        catalog.cas_slot_map(1, &slots).await.expect("cas"),
        "epoch 1 → 2"
    );

    // Every replica follows it.
    let status = cluster
        .wait_for(0, "every replica at map epoch 2", FOLLOW_TIMEOUT, |s| {
            s.groups
                .iter()
                .flat_map(|g| &g.members)
                .all(|m| m.map_epoch == 2)
        })
        .await
        .expect("replicas follow the map");
    let before = map.slots.iter().filter(|g| **g == 2).count() as u32;
    let mut moved_set = SlotSet::empty();
    moved.iter().for_each(|s| moved_set.insert(*s));
    let key = (0..)
        .map(|i| format!("moved-{i}").into_bytes())
        .find(|k| moved_set.contains(slot_of(k)))
        .expect("some key lands in a moved slot");
    (status, key, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_a_new_map_and_the_coordinator_routes_by_it() {
    let cluster = Cluster::start(2).await.expect("cluster");
    let status = cluster.status(0).await.expect("status");
    assert_eq!(status.map_epoch, 1);
    let (status, key, before) = move_slots_and_wait(&cluster).await;
    let owned = |g: u64| {
        status
            .groups
            .iter()
            .find(|s| s.group_id == g)
            .map(|s| s.slots_owned)
    };
    assert_eq!(owned(2), Some(before + MOVED_SLOTS as u32));

    // The old owner refuses it under the new map.
    let group1 = status
        .groups
        .iter()
        .find(|g| g.group_id == 1)
        .and_then(|g| g.members.first())
        .map(|m| m.address.clone())
        .expect("group 1's primary");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{group1}"))
        .expect("uri")
        .timeout(RPC_TIMEOUT)
        .connect()
        .await
        .expect("connect to group 1");
    let refused = ShardClient::new(channel)
        .read(shard_pb::ReadRequest {
            map_epoch: 2,
            keys: vec![key.clone()],
            ..Default::default()
        })
        .await
        .expect_err("group 1 no longer serves the moved slot");
    let info = trellis_proto::error::error_info(&refused).expect("error info");
    assert_eq!(info.reason, "WRONG_SHARD", "{refused:?}");

    // Through the coordinator, the key is written and read at group 2.
    write_and_read(&cluster, 0, &key).await;
    let after = cluster.status(0).await.expect("status");
    assert_eq!(keys_at(&after, 2), 1, "the write landed at the new owner");
    assert_eq!(keys_at(&after, 1), 0, "and not at the old one");
}

/// A coordinator whose map is old (its periodic re-read is off: failpoint
/// `stale_map`) sends a moved key to the old owner, is refused, learns the
/// new map and routes the read and the commit again, to the new owner.
/// Before re-routing it retried the old owner until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_an_old_map_routes_again_when_refused() {
    let mut cluster = Cluster::start(2).await.expect("cluster");
    let stale = cluster
        .add_coordinator(&[("TRELLIS_FAILPOINTS", "stale_map")])
        .expect("second coordinator");
    // Its first look at the map, before the move (it reads the map once
    // at start; shards register with coordinator 0, not with it).
    let status = cluster.status(stale).await.expect("status");
    assert_eq!(status.map_epoch, 1);

    let (_, key, _) = move_slots_and_wait(&cluster).await;
    write_and_read(&cluster, stale, &key).await;
    let after = cluster.status(0).await.expect("status");
    assert_eq!(keys_at(&after, 2), 1, "the write landed at the new owner");
    assert_eq!(keys_at(&after, 1), 0, "and not at the old one");
}
