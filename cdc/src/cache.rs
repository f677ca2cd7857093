//! The Redis cache sink: a cache that follows the store and never goes
//! back in time, however late, replayed or reordered its events come.
//!
//! # Layout
//! Each store key is a Redis key of the same bytes (no prefix), holding a
//! hash:
//! - a value: `{v: VERSION, d: VALUE}`;
//! - a delete: a tombstone `{v: VERSION, deleted: 1}`, which expires after
//!   [`TOMBSTONE_TTL`].
//!
//! `v` is the version of the write as decimal text. A reader reads
//! `HMGET key v d deleted` ([`cached`] does): no `v` means not cached.
//!
//! # The guard
//! Every event is applied by one Lua script run ([`GUARD_SCRIPT`]; by
//! EVALSHA, loading it again if Redis answers NOSCRIPT), so a reader
//! never sees half of one event. For each change it writes only if the
//! key holds no `v` or an older one; an equal or newer `v` is kept. The
//! tombstone is what stops a late older write from bringing a deleted key
//! back; after its TTL, an older write could (a replay that late would
//! mean the sink resumed from a checkpoint that old). A key that holds
//! something other than a hash (written by someone else) fails the
//! delivery with Redis's WRONGTYPE error naming the script.
//!
//! An initial scan's row is applied as a one-key event at the row's
//! version ([`scan_as_events`]): the same guard, so a row older than the
//! cached version (the cache already took a newer event) changes nothing.
//! Scan rows never delete: a key deleted while the cache was not followed
//! stays cached until written again. Empty the cache (or its Redis db)
//! before filling it anew with an initial scan.
//!
//! Versions grow per key across groups (a key moved by resharding keeps
//! growing above what it had), so the guard needs no group.
//!
//! All the EVALSHAs of one delivery are pipelined. This is for one Redis
//! server: a Redis Cluster would refuse an event's keys in different
//! slots.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ServerErrorKind};
use trellis_proto::v1::{FeedChange, FeedEvent, FeedScan};

use crate::{CONNECT_TIMEOUT, DELIVER_TIMEOUT, SinkError};

/// How long a tombstone (a deleted key's version) is kept.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The version guard. `KEYS`: the event's keys. `ARGV[1]`: the version
/// (decimal, no leading zeros); `ARGV[2]`: the tombstone TTL in ms; then
/// per key two arguments: `s` and the value (a set) or `d` and an empty
/// string (a delete).
/// Versions are compared as decimal text (longer is larger, then
/// bytewise), never as Lua numbers, which are doubles and would lose
/// versions above 2^53. Returns how many keys it wrote.
pub const GUARD_SCRIPT: &str = r#"
local version = ARGV[1]
local written = 0
for i, key in ipairs(KEYS) do
  local held = redis.call('HGET', key, 'v')
  if (not held) or #held < #version or (#held == #version and held < version) then
    if ARGV[1 + 2 * i] == 's' then
      redis.call('HSET', key, 'v', version, 'd', ARGV[2 + 2 * i])
      redis.call('HDEL', key, 'deleted')
      redis.call('PERSIST', key)
    else
      redis.call('HSET', key, 'v', version, 'deleted', '1')
      redis.call('HDEL', key, 'd')
      redis.call('PEXPIRE', key, ARGV[2])
    end
    written = written + 1
  end
end
return written
"#;

/// An open cache sink.
pub struct RedisCache {
    connection: MultiplexedConnection,
    script: redis::Script,
    name: String,
}

impl RedisCache {
    pub(crate) async fn connect(host: &str, port: u16, db: u32) -> Result<RedisCache, SinkError> {
        let name = format!("Redis redis://{host}:{port}/{db}");
        let client = redis::Client::open(format!("redis://{host}:{port}/{db}"))
            .map_err(SinkError::connect(&name))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(DELIVER_TIMEOUT));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(SinkError::connect(&name))?;
        let script = redis::Script::new(GUARD_SCRIPT);
        script
            .prepare_invoke()
            .load_async(&mut connection)
            .await
            .map_err(SinkError::broker(&name, "loading the version-guard script"))?;
        Ok(RedisCache {
            connection,
            script,
            name,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) async fn deliver(&mut self, events: &[FeedEvent]) -> Result<(), SinkError> {
        let pipeline = guard_pipeline(self.script.get_hash(), events);
        match pipeline.query_async::<Vec<i64>>(&mut self.connection).await {
            Ok(_) => Ok(()),
            // Redis restarted or its scripts were flushed: none of the
            // pipeline ran, or whatever did is guarded against running
            // twice.
            Err(err) if err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script
                    .prepare_invoke()
                    .load_async(&mut self.connection)
                    .await
                    .map_err(SinkError::broker(
                        &self.name,
                        "loading the version-guard script again",
                    ))?;
                pipeline
                    .query_async::<Vec<i64>>(&mut self.connection)
                    .await
                    .map(|_| ())
                    .map_err(SinkError::broker(&self.name, guard_what(events)))
            }
            Err(err) => Err(SinkError::broker(&self.name, guard_what(events))(err)),
        }
    }
}

/// An initial scan's rows as one-key events at each row's version (what
/// the guard applies; group and position are the scan's, the transaction
/// id empty).
pub fn scan_as_events(scan: &FeedScan) -> Vec<FeedEvent> {
    scan.rows
        .iter()
        .map(|row| FeedEvent {
            cluster: scan.cluster,
            group: scan.group,
            position: scan.position,
            version: row.version,
            txn_id: Vec::new(),
            participants: Vec::new(),
            changes: vec![FeedChange {
                key: row.key.clone(),
                value: Some(row.value.clone()),
            }],
        })
        .collect()
}

fn guard_what(events: &[FeedEvent]) -> String {
    format!("running the version guard over {} events", events.len())
}

/// One EVALSHA of the guard per event.
fn guard_pipeline(hash: &str, events: &[FeedEvent]) -> redis::Pipeline {
    let ttl_ms = TOMBSTONE_TTL.as_millis().to_string();
    let mut pipeline = redis::pipe();
    for event in events {
        let command = pipeline.cmd("EVALSHA").arg(hash).arg(event.changes.len());
        for change in &event.changes {
            command.arg(&change.key[..]);
        }
        command.arg(event.version.to_string()).arg(&ttl_ms);
        for change in &event.changes {
            match &change.value {
                Some(value) => command.arg("s").arg(&value[..]),
                None => command.arg("d").arg(""),
            };
        }
    }
    pipeline
}

/// What a reader of the cache sees for `key`: `None` if it is not cached,
/// else its version and its value (`None`: deleted at that version).
pub async fn cached(
    connection: &mut impl ConnectionLike,
    key: &[u8],
) -> Result<Option<(u64, Option<Vec<u8>>)>, redis::RedisError> {
    let (version, value, deleted): (Option<String>, Option<Vec<u8>>, Option<String>) =
        redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("d")
            .arg("deleted")
            .query_async(connection)
            .await?;
    let Some(version) = version else {
        return Ok(None);
    };
    let version = version.parse::<u64>().map_err(|_| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "a cached version is not a number",
            version.clone(),
        ))
    })?;
    match (value, deleted) {
        (Some(value), None) => Ok(Some((version, Some(value)))),
        (None, Some(_)) => Ok(Some((version, None))),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "a cached key holds neither exactly a value nor a tombstone",
        ))),
    }
}
