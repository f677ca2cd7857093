//! Helpers the engine's tests share: a standalone replica's configuration,
//! writes, transaction ids, and reading one key back.

use std::path::Path;

use trellis_types::{SlotSet, TxnId};

use super::{LogConfig, Shard, ShardConfig};
use crate::record::WriteRec;

pub(super) fn config(dir: &Path) -> ShardConfig {
    ShardConfig {
        data_dir: dir.to_path_buf(),
        group_id: 1,
        map_epoch: 1,
        slots: SlotSet::all(),
        replicated: false,
        feed_bytes_max: crate::repl::FEED_BYTES_MAX,
        catch_up_bytes_per_sec: crate::pacer::CATCH_UP_BYTES_PER_SEC,
        log: LogConfig::default(),
    }
}

pub(super) fn put(k: &str, v: &str) -> WriteRec {
    WriteRec {
        key: k.into(),
        value: Some(v.into()),
    }
}

pub(super) fn txn(n: u32) -> TxnId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    TxnId(id)
}

pub(super) async fn value_of(shard: &Shard, key: &str) -> Option<(Vec<u8>, u64)> {
    let views = shard.read(&[key.as_bytes().to_vec()]).await.expect("read");
    views[0]
        .entry
        .as_ref()
        .and_then(|e| e.value().map(|v| (v.to_vec(), e.version())))
}
