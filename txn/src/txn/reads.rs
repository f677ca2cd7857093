//! Reads and scans of the transaction manager: STRONG ones at primaries
//! (waiting for, then resolving, prepared transactions' locks), STALE ones
//! at any in-sync replica that can prove its data fresh enough
//! ([`crate::stale`]), falling back to the primary.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use trellis_proto::shard::v1 as pb;
use trellis_types::{GroupId, Key, TxnId, Version};

use super::{
    Item, READ_LOCK_POLL, READ_LOCK_ROUNDS_MAX, READ_LOCK_WAIT_MAX, ROUTE_ATTEMPTS_MAX, TxnError,
    TxnManager,
};
use crate::stale::{BACKUP_READ_TIMEOUT, ReadOptions, ReadSource, staleness_ms};

impl TxnManager {
    /// Reads keys, one item per key in request order, and which replica
    /// answered each group. STRONG reads never return a value a decided
    /// commit overwrote: a key locked by a prepared transaction is re-read
    /// until the lock goes (bounded), then the transaction is resolved
    /// through its anchor. STALE reads (`opts.max_staleness`) go to a
    /// replica drawn among the group's in-sync members
    /// ([`crate::stale::pick_backup`]); a backup that cannot prove its data
    /// fresh enough declines and the primary answers, where a STALE read
    /// returns the last committed value without waiting unless the lock is
    /// older than the bound.
    pub async fn get(
        &self,
        keys: &[Key],
        opts: &ReadOptions,
        deadline: Instant,
    ) -> Result<(Vec<Item>, Vec<ReadSource>), TxnError> {
        let mut items: Vec<Option<Item>> = vec![None; keys.len()];
        let mut sources: BTreeMap<GroupId, ReadSource> = BTreeMap::new();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let map = self.router.map();
            let by_group = map.by_group(pending.iter().map(|i| keys[*i].as_slice()));
            let reads = by_group.into_iter().map(|(group, positions)| {
                let idx: Vec<usize> = positions.iter().map(|p| pending[*p]).collect();
                let group_keys: Vec<Key> = idx.iter().map(|i| keys[*i].clone()).collect();
                async move {
                    let result = self.read_group(group, group_keys, opts, deadline).await;
                    (group, idx, result)
                }
            });
            let mut moved = Vec::new();
            for (group, idx, result) in join_all(reads).await {
                match result {
                    Ok((found, source)) => {
                        for (i, item) in idx.iter().zip(found) {
                            items[*i] = Some(item);
                        }
                        sources.insert(group, source);
                    }
                    Err(TxnError::Moved { .. }) => moved.extend(idx),
                    Err(err) => return Err(err),
                }
            }
            if moved.is_empty() {
                return Ok((
                    items
                        .into_iter()
                        .map(|i| i.expect("every key read"))
                        .collect(),
                    sources.into_values().collect(),
                ));
            }
            moved.sort_unstable();
            pending = moved;
        }
        Err(TxnError::Unavailable(format!(
            "read: keys kept moving between groups ({ROUTE_ATTEMPTS_MAX} routings)"
        )))
    }

    /// A client of the backup of `group` a STALE read goes to, and the map
    /// epoch to route with; `None` when the draw falls on the primary
    /// ([`crate::stale::pick_backup`]).
    fn backup_for(&self, group: GroupId) -> Option<(crate::router::ShardRpc, u64)> {
        let map = self.router.map();
        let members = &map.groups.get(&group)?.members;
        let addr = crate::stale::pick_backup(members, trellis_types::rng::u64())?;
        let client = self.router.client_at(addr).ok()?;
        Some((client, map.map_epoch))
    }

    /// A STALE read of `keys` at a backup of `group`, if the draw falls on
    /// one and it answers in time; `None` sends the read to the primary.
    async fn read_backup(
        &self,
        group: GroupId,
        keys: &[Key],
        bound: Duration,
        floor: Version,
        deadline: Instant,
    ) -> Option<(Vec<Item>, ReadSource)> {
        let (mut client, map_epoch) = self.backup_for(group)?;
        let request = pb::ReadRequest {
            map_epoch,
            keys: keys.to_vec(),
            max_staleness_ms: staleness_ms(Some(bound)),
            floor_version: floor,
        };
        match tokio::time::timeout(backup_wait(deadline), client.read(request)).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                let source = ReadSource::from_pb(group, answer.source);
                // A map older than the group's last hand-over may name its
                // new primary as a backup: a primary answers as one, with
                // the locks it holds, which only the primary path waits
                // for and resolves (a STALE read taking the last committed
                // value under them would miss a session's own decided
                // commit). Without locks its answer is as good as any.
                if !source.backup && answer.results.iter().any(|r| r.lock.is_some()) {
                    return None;
                }
                // A backup proved every value fresh enough, locked ones
                // included: all are taken.
                let items = answer
                    .results
                    .into_iter()
                    .map(|r| Item {
                        key: r.key,
                        value: r.value,
                        version: r.version,
                    })
                    .collect();
                Some((items, source))
            }
            _ => {
                self.metrics.stale_fallbacks.inc();
                None
            }
        }
    }

    async fn read_group(
        &self,
        group: GroupId,
        keys: Vec<Key>,
        opts: &ReadOptions,
        deadline: Instant,
    ) -> Result<(Vec<Item>, ReadSource), TxnError> {
        let max_staleness = opts.max_staleness;
        if let Some(bound) = max_staleness
            && let Some(found) = self
                .read_backup(group, &keys, bound, opts.floor(group), deadline)
                .await
        {
            return Ok(found);
        }
        // Sent to the primary too: the replica the map names may have
        // become a backup meanwhile, and then serves as one.
        let floor = opts.floor(group);
        let mut source = None;
        let mut items: Vec<Option<Item>> = vec![None; keys.len()];
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut waited = Duration::ZERO;
        let mut rounds = 0;
        while !pending.is_empty() {
            let ask: Vec<Key> = pending.iter().map(|i| keys[*i].clone()).collect();
            let ask_keys: Vec<&[u8]> = ask.iter().map(Vec::as_slice).collect();
            let answer = self
                .call_keys(group, &ask_keys, deadline, "read", |mut client, map| {
                    let ask = ask.clone();
                    async move {
                        client
                            .read(pb::ReadRequest {
                                map_epoch: map.map_epoch,
                                keys: ask,
                                max_staleness_ms: staleness_ms(max_staleness),
                                floor_version: floor,
                            })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            source = Some(ReadSource::from_pb(group, answer.source));
            let results = answer.results;
            let mut still = Vec::new();
            // Each lock's transaction, with its anchor and a key it locks.
            let mut to_resolve: BTreeMap<Vec<u8>, (GroupId, Vec<u8>)> = BTreeMap::new();
            for (i, result) in pending.iter().zip(results) {
                let lock_age = result
                    .lock
                    .as_ref()
                    .map(|l| Duration::from_millis(l.age_ms));
                // A session with a floor here may hold this very lock (its
                // own commit, decided and not yet finalized): its STALE
                // read waits for the lock as a STRONG one does.
                let bound = if floor > 0 { None } else { max_staleness };
                match (read_step(lock_age, bound, waited), result.lock) {
                    (ReadStep::Take, _) | (_, None) => {
                        items[*i] = Some(Item {
                            key: result.key,
                            value: result.value,
                            version: result.version,
                        })
                    }
                    (ReadStep::Wait, Some(_)) => still.push(*i),
                    (ReadStep::Resolve, Some(lock)) => {
                        still.push(*i);
                        to_resolve.insert(lock.txn_id, (lock.anchor_group, result.key));
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if !to_resolve.is_empty() {
                rounds += 1;
                if rounds > READ_LOCK_ROUNDS_MAX {
                    return Err(TxnError::Unavailable(format!(
                        "keys at group {group} stayed locked by prepared transactions after {READ_LOCK_ROUNDS_MAX} resolutions"
                    )));
                }
                for (txn, (anchor, key)) in to_resolve {
                    let txn =
                        TxnId::from_bytes(&txn).map_err(|e| TxnError::Internal(e.to_string()))?;
                    self.settle(txn, anchor, group, &key, deadline).await?;
                }
                waited = Duration::ZERO;
            } else {
                self.metrics.read_lock_waits.inc();
                tokio::time::sleep(READ_LOCK_POLL).await;
                waited += READ_LOCK_POLL;
            }
            if Instant::now() >= deadline {
                return Err(TxnError::Deadline(format!(
                    "read at group {group} waiting for locked keys"
                )));
            }
        }
        let items = items
            .into_iter()
            .map(|i| i.expect("every key read"))
            .collect();
        let source = source.unwrap_or_else(|| ReadSource::from_pb(group, None));
        Ok((items, source))
    }

    /// Keys with `prefix` from every group, merged in key order, at most
    /// `limit`, and which replica answered each group. Returns whether more
    /// matched. STALE scans (`opts.max_staleness`) go to a replica as reads
    /// do ([`Self::get`]).
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: u32,
        opts: &ReadOptions,
        deadline: Instant,
    ) -> Result<(Vec<Item>, bool, Vec<ReadSource>), TxnError> {
        let map = self.router.map();
        let groups: Vec<GroupId> = map.groups.keys().copied().collect();
        let scans = groups
            .iter()
            .map(|group| self.scan_group(*group, prefix, limit, opts, deadline));
        let mut all = Vec::new();
        let mut truncated = false;
        let mut locked = Vec::new();
        let mut sources = Vec::new();
        for result in join_all(scans).await {
            let (response, source) = result?;
            truncated |= response.truncated;
            for r in response.results {
                if r.lock.is_some() && !source.backup {
                    locked.push(r.key);
                } else if r.version != 0 {
                    all.push(Item {
                        key: r.key,
                        value: r.value,
                        version: r.version,
                    });
                }
            }
            sources.push(source);
        }
        if !locked.is_empty() {
            // Locked keys go through the read path: wait, then resolve.
            let (items, _) = self.get(&locked, opts, deadline).await?;
            all.extend(items.into_iter().filter(|i| i.version != 0));
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        if all.len() > limit as usize {
            all.truncate(limit as usize);
            truncated = true;
        }
        Ok((all, truncated, sources))
    }

    /// One group's part of a scan: at a backup for a STALE scan if the draw
    /// falls on one and it answers in time (every value it returns, locked
    /// keys' included, is proved fresh), else at the primary.
    async fn scan_group(
        &self,
        group: GroupId,
        prefix: &[u8],
        limit: u32,
        opts: &ReadOptions,
        deadline: Instant,
    ) -> Result<(pb::ScanResponse, ReadSource), TxnError> {
        let stale_ms = staleness_ms(opts.max_staleness);
        // Sent to the primary too: the replica the map names may have
        // become a backup meanwhile, and then serves as one.
        let floor = opts.floor(group);
        if stale_ms > 0
            && let Some((mut client, map_epoch)) = self.backup_for(group)
        {
            let request = pb::ScanRequest {
                map_epoch,
                prefix: prefix.to_vec(),
                limit,
                max_staleness_ms: stale_ms,
                floor_version: floor,
            };
            match tokio::time::timeout(backup_wait(deadline), client.scan(request)).await {
                Ok(Ok(answer)) => {
                    let mut answer = answer.into_inner();
                    let source = ReadSource::from_pb(group, answer.source.take());
                    return Ok((answer, source));
                }
                _ => self.metrics.stale_fallbacks.inc(),
            }
        }
        let prefix = prefix.to_vec();
        let mut answer = self
            .call(group, deadline, "scan", move |mut client, map| {
                let prefix = prefix.clone();
                async move {
                    client
                        .scan(pb::ScanRequest {
                            map_epoch: map.map_epoch,
                            prefix,
                            limit,
                            max_staleness_ms: stale_ms,
                            floor_version: floor,
                        })
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        let source = ReadSource::from_pb(group, answer.source.take());
        Ok((answer, source))
    }
}

/// What a read does with one key's result ([`read_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadStep {
    /// Return the value read.
    Take,
    /// Read the key again after [`READ_LOCK_POLL`]: its lock may go.
    Wait,
    /// Resolve the lock's transaction through its anchor, then read again.
    Resolve,
}

/// What a read does with a key locked for `lock_age` (`None`: not locked),
/// having waited `waited` for it so far. An unlocked key is taken. A STALE
/// read (`max_staleness`) takes the last committed value under a lock no
/// older than its bound. Otherwise the read waits for the lock to go, and
/// after [`READ_LOCK_WAIT_MAX`] resolves its transaction, so that a STRONG
/// read never returns a value a decided commit overwrote.
fn read_step(
    lock_age: Option<Duration>,
    max_staleness: Option<Duration>,
    waited: Duration,
) -> ReadStep {
    match (lock_age, max_staleness) {
        (None, _) => ReadStep::Take,
        (Some(age), Some(bound)) if age <= bound => ReadStep::Take,
        _ if waited >= READ_LOCK_WAIT_MAX => ReadStep::Resolve,
        _ => ReadStep::Wait,
    }
}

/// How long a STALE read waits for a backup before asking the primary:
/// at most half of what is left of its deadline.
fn backup_wait(deadline: Instant) -> Duration {
    (deadline.saturating_duration_since(Instant::now()) / 2).min(BACKUP_READ_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_takes_unlocked_keys_and_bounded_stale_ones_and_waits_then_resolves() {
        let ms = Duration::from_millis;
        // Unlocked: taken, STRONG or STALE.
        assert_eq!(read_step(None, None, ms(0)), ReadStep::Take);
        assert_eq!(read_step(None, Some(ms(10)), ms(0)), ReadStep::Take);
        // STALE under a lock within the bound: the last committed value.
        assert_eq!(read_step(Some(ms(10)), Some(ms(10)), ms(0)), ReadStep::Take);
        // STALE under an older lock, and STRONG: wait, then resolve.
        assert_eq!(read_step(Some(ms(11)), Some(ms(10)), ms(0)), ReadStep::Wait);
        assert_eq!(read_step(Some(ms(0)), None, ms(0)), ReadStep::Wait);
        let long = READ_LOCK_WAIT_MAX;
        assert_eq!(
            read_step(Some(ms(0)), None, long - READ_LOCK_POLL),
            ReadStep::Wait
        );
        assert_eq!(read_step(Some(ms(0)), None, long), ReadStep::Resolve);
        assert_eq!(
            read_step(Some(ms(11)), Some(ms(10)), long),
            ReadStep::Resolve
        );
        assert_eq!(read_step(Some(ms(5)), Some(ms(10)), long), ReadStep::Take);
    }
}
