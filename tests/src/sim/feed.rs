//! The simulator's change-feed consumer: a host (`feed`) that registers a
//! feed ([`FEED_NAME`], `SaveCursor`), watches the whole key space through
//! the coordinator's `Changefeed.Watch` from every group's log beginning,
//! keeps every message it handles, saves its [`Cursor`] every
//! [`FEED_SAVE_INTERVAL`], and when its stream breaks (a coordinator crash
//! or cut, a silent stream) watches again from its cursor, so its record
//! has no gap. The saved cursor pins every replica's log (the catalog's
//! `feed_keep_from`), so no failover and no coordinator outage may lose
//! the history it still needs: FEED_HISTORY_GONE fails the seed. After the
//! final read it waits (at most [`FEED_CATCH_UP_MAX`]) until every group's
//! feed is resolved past the log's head as it was then; the run then
//! judges the record against the history (`trellis_checker::feed`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_checker::bank::BankMop;
use trellis_checker::feed::{BankWrite, FeedEvent, FeedMessage, FeedReport, ListWrite};
use trellis_checker::{Mop, Op};
use trellis_client::{Client, Cursor, Options, Route};

use super::{COORDINATOR, PORT};
use crate::workload::{
    ACCOUNTS, CLIENT_RPC_TIMEOUT, decode_list_value, parse_account_key, parse_balance,
    parse_list_key,
};

/// The consumer's host name.
pub const FEED_HOST: &str = "feed";
/// A watch that hands out nothing for this long is opened again (every
/// group resolves at least every 200 ms when it is healthy).
pub const FEED_SILENCE_MAX: Duration = Duration::from_secs(3);
/// Pause before watching again after a stream broke or could not open.
pub const FEED_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest simulated time from the final read's end to the feed resolved
/// past every group's head; past it the run fails if events are missing.
pub const FEED_CATCH_UP_MAX: Duration = Duration::from_secs(8);
/// The consumer waits at least this long after the final read, so that
/// every group still fed has sent a resolved position since.
pub const FEED_CATCH_UP_MIN: Duration = Duration::from_secs(1);
/// Most messages kept (a run has a few thousand); past it the run fails.
pub const FEED_MESSAGES_MAX: usize = 1_000_000;
/// The consumer's registered feed: its cursor is kept in the catalog under
/// this name, and every replica keeps its group's log from there.
pub const FEED_NAME: &str = "sim-consumer";
/// How often the consumer saves its cursor (at most; it saves while
/// messages come). The pin trails what was handled by about this much.
pub const FEED_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// What the consumer saw, shared with the run.
#[derive(Default)]
pub struct FeedState {
    /// Every message handled, in order, across watches.
    pub messages: Vec<trellis_client::FeedMessage>,
    /// Watches opened.
    pub watches: u64,
    /// Why watches ended or could not open, with simulated times.
    pub breaks: Vec<String>,
    /// Times a group no longer kept its log after the consumer's cursor
    /// (FEED_HISTORY_GONE; see [`HISTORY_GONE`]): the consumer watched
    /// again from now, so its record has a gap, completeness is not
    /// judged, and the run fails (the feed is registered).
    pub gaps: Vec<String>,
    /// Cursors saved (`SaveCursor` answered), and saves that failed (the
    /// next one saves a newer cursor).
    pub saves: u64,
    pub save_errors: u64,
    /// Set by the run when the final read is over: the consumer catches up
    /// and stops.
    pub final_done_at: Option<Duration>,
    /// Set by the consumer: it caught up (or gave up) and stopped.
    pub finished: Option<Result<Duration, String>>,
    /// Something no retry fixes (too many messages).
    pub error: Option<String>,
}

#[derive(Clone, Default)]
pub struct Feed(pub Arc<Mutex<FeedState>>);

impl Feed {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the final read's host when it is done; waits (at most
    /// [`FEED_CATCH_UP_MAX`] plus a step) for the consumer to catch up.
    pub async fn final_done(&self) {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        self.lock().final_done_at = Some(now);
        let deadline = now + FEED_CATCH_UP_MAX + Duration::from_secs(1);
        while self.lock().finished.is_none()
            && turmoil::sim_elapsed().unwrap_or_default() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// What FEED_HISTORY_GONE says. The consumer's feed is registered, so
/// every replica keeps its group's log from the saved cursor on, within
/// `LOG_PINNED_BYTES_MAX` (1 GiB) past `--log-retain-bytes`: more than a
/// simulated disk holds (`SIM_DISK_BYTES`, 1 MiB), so the bound is never
/// what cut the log here; and a backup restored from its primary's
/// snapshot gets the log prefix the feed pins with it (list-append seeds
/// 10009 and 10038 promoted such a backup before the prefix was shipped).
/// History gone is therefore a bug: it is recorded as a gap (the consumer
/// watches again from now, so the other rules are still judged) and fails
/// the seed.
pub const HISTORY_GONE: &str = "no longer keeps its log after position";
const _: () = assert!(
    super::SIM_DISK_BYTES < trellis_shard::engine::LOG_PINNED_BYTES_MAX,
    "a registered feed's pin can never reach its bound in the simulator"
);

/// The consumer host's software.
pub async fn consume(feed: Feed) -> Result<(), Box<dyn std::error::Error>> {
    let options = Options {
        rpc_timeout: CLIENT_RPC_TIMEOUT,
        connect_timeout: Duration::from_secs(2),
        route: Route::Coordinator,
    };
    let addr = format!("{COORDINATOR}:{PORT}");
    // No group named: every group from its log's beginning.
    let mut cursor = Cursor::default();
    // The cursor last saved, and when (`None`: not registered yet).
    let mut saved: Option<(Cursor, Duration)> = None;
    // After a gap: watch from now (every group), then resume as before.
    let mut from_now = false;
    let mut catch_up = CatchUp::default();
    // One client for the whole run: its channel reconnects by itself.
    let client = loop {
        match Client::connect_with(&addr, options.clone()).await {
            Ok(client) => break client,
            Err(err) => {
                feed.lock()
                    .breaks
                    .push(format!("{:?} connect: {err}", now()));
                tokio::time::sleep(FEED_RETRY_PAUSE).await;
            }
        }
    };
    loop {
        if let Some(done) = catch_up.done(&feed) {
            feed.lock().finished = Some(done);
            return Ok(());
        }
        if saved.is_none() {
            // Registered before the first watch: from here every replica
            // keeps its log from the cursor on (the empty cursor: all of
            // it), once it polls its configuration.
            if !save(&client, &feed, &cursor, &mut saved).await {
                tokio::time::sleep(FEED_RETRY_PAUSE).await;
                continue;
            }
        }
        let from = (!from_now).then_some(&cursor);
        let mut watch = match client.watch(b"", b"", from).await {
            Ok(watch) => {
                from_now = false;
                watch
            }
            Err(err) => {
                let text = err.to_string();
                if text.contains(HISTORY_GONE) {
                    from_now = true;
                    feed.lock()
                        .gaps
                        .push(format!("{:?} watch from {cursor}: {text}", now()));
                }
                feed.lock()
                    .breaks
                    .push(format!("{:?} watch from {cursor}: {text}", now()));
                // A group removed (resharding) is no longer watched.
                if let Some(group) = removed_group(&text) {
                    cursor.groups.remove(&group);
                }
                tokio::time::sleep(FEED_RETRY_PAUSE).await;
                continue;
            }
        };
        feed.lock().watches += 1;
        loop {
            if let Some(done) = catch_up.done(&feed) {
                feed.lock().finished = Some(done);
                return Ok(());
            }
            let why = match tokio::time::timeout(FEED_SILENCE_MAX, watch.next()).await {
                Ok(Ok(Some(message))) => {
                    // The simulator never asks for a scan: a cursor is always there.
                    cursor = watch
                        .cursor()
                        .expect("a watch without an initial scan has a cursor")
                        .clone();
                    {
                        let mut state = feed.lock();
                        catch_up.saw(&message, state.final_done_at);
                        if state.messages.len() >= FEED_MESSAGES_MAX {
                            state.error = Some(format!(
                                "the consumer got more than {FEED_MESSAGES_MAX} messages"
                            ));
                            state.finished = Some(Err("too many messages".into()));
                            return Ok(());
                        }
                        state.messages.push(message);
                    }
                    let due = saved.as_ref().is_none_or(|(at, when)| {
                        *at != cursor && now().saturating_sub(*when) >= FEED_SAVE_INTERVAL
                    });
                    if due {
                        save(&client, &feed, &cursor, &mut saved).await;
                    }
                    continue;
                }
                Ok(Ok(None)) => "the server ended the stream".to_string(),
                Ok(Err(err)) => {
                    let text = err.to_string();
                    if text.contains(HISTORY_GONE) {
                        from_now = true;
                        feed.lock()
                            .gaps
                            .push(format!("{:?} stream at {cursor}: {text}", now()));
                    }
                    text
                }
                Err(_) => format!("nothing for {FEED_SILENCE_MAX:?}"),
            };
            feed.lock()
                .breaks
                .push(format!("{:?} stream broke at {cursor}: {why}", now()));
            break;
        }
        tokio::time::sleep(FEED_RETRY_PAUSE).await;
    }
}

/// Saves `cursor` under [`FEED_NAME`]; on success it is the one `saved`.
/// Whether it was saved.
async fn save(
    client: &Client,
    feed: &Feed,
    cursor: &Cursor,
    saved: &mut Option<(Cursor, Duration)>,
) -> bool {
    match client.save_cursor(FEED_NAME, cursor).await {
        Ok(()) => {
            feed.lock().saves += 1;
            *saved = Some((cursor.clone(), now()));
            true
        }
        Err(_) => {
            feed.lock().save_errors += 1;
            false
        }
    }
}

/// The group an UNKNOWN_GROUP refusal names ("the cursor names group N,
/// which this cluster does not have").
fn removed_group(text: &str) -> Option<u64> {
    let rest = text.split("the cursor names group ").nth(1)?;
    let (group, tail) = rest.split_once(',')?;
    tail.contains("does not have")
        .then(|| group.trim().parse().ok())
        .flatten()
}

/// Whether the consumer has caught up after the final read: every group
/// that sent a resolved position since is resolved at or past the head its
/// first such message named.
#[derive(Default)]
struct CatchUp {
    /// group → (head when first resolved after the final read, resolved
    /// position since)
    groups: std::collections::BTreeMap<u64, (u64, u64)>,
}

impl CatchUp {
    fn saw(&mut self, message: &trellis_client::FeedMessage, final_done: Option<Duration>) {
        if final_done.is_none() {
            return;
        }
        if let trellis_client::FeedMessage::Resolved {
            group,
            position,
            head,
        } = *message
        {
            let at = self.groups.entry(group).or_insert((head, position));
            at.1 = at.1.max(position);
        }
    }

    fn done(&self, feed: &Feed) -> Option<Result<Duration, String>> {
        let since = feed.lock().final_done_at?;
        let now = now();
        let waited = now.saturating_sub(since);
        if waited < FEED_CATCH_UP_MIN {
            return None;
        }
        let behind: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, (head, resolved))| resolved < head)
            .map(|(g, (head, resolved))| format!("group {g} resolved to {resolved} of {head}"))
            .collect();
        if behind.is_empty() && !self.groups.is_empty() {
            return Some(Ok(waited));
        }
        if waited >= FEED_CATCH_UP_MAX {
            return Some(Err(if self.groups.is_empty() {
                format!("no group resolved anything in the {waited:?} after the final read")
            } else {
                format!(
                    "not caught up {waited:?} after the final read: {}",
                    behind.join(", ")
                )
            }));
        }
        None
    }
}

/// The consumer's record with each write decoded by `decode` (key,
/// value → the checker's write); a write the workload cannot have made is
/// an error.
fn decode<W>(
    messages: &[trellis_client::FeedMessage],
    decode: impl Fn(&[u8], Option<&[u8]>) -> Result<W, String>,
) -> Result<Vec<FeedMessage<W>>, String> {
    messages
        .iter()
        .map(|m| {
            Ok(match m {
                trellis_client::FeedMessage::Resolved {
                    group, position, ..
                } => FeedMessage::Resolved {
                    group: *group,
                    position: *position,
                },
                trellis_client::FeedMessage::Event(e) => FeedMessage::Event(FeedEvent {
                    group: e.group,
                    position: e.position,
                    version: e.version,
                    txn_id: e.txn_id.clone(),
                    writes: e
                        .changes
                        .iter()
                        .map(|c| {
                            decode(&c.key, c.value.as_deref()).map_err(|why| {
                                format!("group {} position {}: {why}", e.group, e.position)
                            })
                        })
                        .collect::<Result<_, String>>()?,
                }),
                trellis_client::FeedMessage::Scan { group, .. } => {
                    return Err(format!(
                        "group {group} sent an initial scan the consumer never asked for"
                    ));
                }
            })
        })
        .collect()
}

/// A list-append write: `la:K` and a list.
fn list_write(key: &[u8], value: Option<&[u8]>) -> Result<ListWrite, String> {
    let key_n = parse_list_key(key).ok_or_else(|| {
        format!(
            "the feed has a write to {}, not a list-append key",
            trellis_client::quote_key(key)
        )
    })?;
    let list = value
        .map(|v| {
            decode_list_value(v).ok_or_else(|| {
                format!(
                    "key {key_n}'s value {:?} is not a list",
                    String::from_utf8_lossy(v)
                )
            })
        })
        .transpose()?;
    Ok((key_n, list))
}

/// A bank write: `bank:A` and a balance.
fn bank_write(key: &[u8], value: Option<&[u8]>) -> Result<BankWrite, String> {
    let account = parse_account_key(key).ok_or_else(|| {
        format!(
            "the feed has a write to {}, not an account",
            trellis_client::quote_key(key)
        )
    })?;
    let balance = value
        .map(|v| {
            parse_balance(v).ok_or_else(|| {
                format!(
                    "account {account}'s value {:?} is not a balance",
                    String::from_utf8_lossy(v)
                )
            })
        })
        .transpose()?;
    Ok((account, balance))
}

fn problem(why: String) -> FeedReport {
    FeedReport {
        problems: vec![why],
        ..FeedReport::default()
    }
}

/// What a workload's feed check is.
pub(crate) trait FeedCheck: Sized {
    /// `complete`: the record has no gap, so completeness is judged too.
    fn check_feed(
        ops: &[Op<Self>],
        messages: &[trellis_client::FeedMessage],
        complete: bool,
    ) -> FeedReport;
}

impl FeedCheck for Mop {
    fn check_feed(
        ops: &[Op<Self>],
        messages: &[trellis_client::FeedMessage],
        complete: bool,
    ) -> FeedReport {
        match decode(messages, list_write) {
            Ok(decoded) => trellis_checker::feed::check_list_append(ops, &decoded, complete)
                .unwrap_or_else(|err| problem(format!("the history cannot be checked: {err}"))),
            Err(why) => problem(why),
        }
    }
}

impl FeedCheck for BankMop {
    fn check_feed(
        ops: &[Op<Self>],
        messages: &[trellis_client::FeedMessage],
        complete: bool,
    ) -> FeedReport {
        if !complete {
            // A gap breaks the replay of balances: order rules only.
            return match decode(messages, bank_write) {
                Ok(decoded) => trellis_checker::feed::check_order(&decoded),
                Err(why) => problem(why),
            };
        }
        let accounts: BTreeSet<u64> = (0..ACCOUNTS).collect();
        match decode(messages, bank_write) {
            Ok(decoded) => trellis_checker::feed::check_bank(ops, &decoded, &accounts)
                .unwrap_or_else(|err| problem(format!("the history cannot be checked: {err}"))),
            Err(why) => problem(why),
        }
    }
}

/// The feed's verdict for a run: the check's problems, and the consumer's
/// own (it never caught up, it gave up).
pub(crate) fn judge<M: FeedCheck>(
    ops: &[Op<M>],
    feed: &Feed,
) -> (FeedReport, Vec<String>, Vec<String>) {
    let state = feed.lock();
    let mut report = M::check_feed(ops, &state.messages, state.gaps.is_empty());
    if let Some(err) = &state.error {
        report.problems.push(err.clone());
    }
    for gap in &state.gaps {
        report.problems.push(format!(
            "a group lost history the registered feed still needed (FEED_HISTORY_GONE): {gap}"
        ));
    }
    match &state.finished {
        None => report
            .problems
            .push("the feed consumer never finished (the run ended first)".to_string()),
        Some(Err(why)) => report.problems.push(format!("the feed consumer: {why}")),
        Some(Ok(_)) => {}
    }
    (report, state.breaks.clone(), state.gaps.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_group_is_read_from_the_refusal() {
        let text = "server error (NotFound): the cursor names group 2, which this cluster \
                    does not have (a removed group?)";
        assert_eq!(removed_group(text), Some(2));
        assert_eq!(removed_group("unavailable: down"), None);
    }
}
