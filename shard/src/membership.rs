//! A shard's registration with its coordinator: tell it where we serve,
//! learn which slots we own; and, when its log fails and it stops, tell it
//! why ([`report_fail_stop`]).

use std::sync::Arc;
use std::time::Duration;

use crate::Shard;
use trellis_proto::shard::v1 as pb;
use trellis_types::SlotSet;

/// Deadline of one registration attempt.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between attempts: from the first value, doubling up to the max.
const REGISTER_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Deadline of the whole fail-stop report (every attempt): the process is
/// stopping and must not wait on an unreachable coordinator for long.
pub const FAIL_STOP_REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of the fail-stop report within its deadline.
const FAIL_STOP_REPORT_ATTEMPTS_MAX: u32 = 3;
/// A failed attempt is logged the first time and then once in this many, so
/// a shard started before its coordinator does not flood its log.
const REGISTER_FAILURES_PER_WARNING: u64 = 10;

/// Registers until it succeeds (the coordinator may start after us), then
/// installs the slots it assigns.
pub async fn register(shard: Arc<Shard>, coordinator: String, group: u64, advertise: String) {
    let mut backoff = REGISTER_BACKOFF_FIRST;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        match attempt(&coordinator, group, &advertise).await {
            Ok((map_epoch, slots)) => {
                let owned = slots.len();
                shard.set_slots(map_epoch, slots);
                tracing::info!(%coordinator, map_epoch, slots = owned, "registered with the coordinator");
                return;
            }
            Err(err) => {
                if attempts % REGISTER_FAILURES_PER_WARNING == 1 {
                    tracing::warn!(%coordinator, attempts, %err, "cannot register with the coordinator yet; retrying");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
    }
}

async fn attempt(coordinator: &str, group: u64, advertise: &str) -> Result<(u64, SlotSet), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{coordinator}"))
        .map_err(|e| format!("bad coordinator address {coordinator}: {e}"))?
        .connect_timeout(REGISTER_TIMEOUT)
        .timeout(REGISTER_TIMEOUT);
    let channel = trellis_net::connect(endpoint).await.map_err(|e| {
        format!(
            "cannot reach {coordinator}: {}",
            trellis_net::error_text(&e)
        )
    })?;
    let mut client = pb::membership_client::MembershipClient::new(channel);
    let response = client
        .register(pb::RegisterRequest {
            group_id: group,
            addr: advertise.to_string(),
            pid: std::process::id(),
        })
        .await
        .map_err(|s| format!("{coordinator} refused the registration: {}", s.message()))?
        .into_inner();
    let slots = SlotSet::from_bytes(&response.slots)?;
    Ok((response.map_epoch, slots))
}

/// Tells the coordinator that this replica stops because its log failed,
/// and why: a few attempts within [`FAIL_STOP_REPORT_TIMEOUT`] in all.
/// Best effort; the error says why the coordinator was not told.
pub async fn report_fail_stop(
    coordinator: &str,
    group: u64,
    addr: &str,
    failure: &crate::fail_stop::LogFailure,
) -> Result<(), String> {
    let report = pb::FailStopReport {
        group_id: group,
        addr: addr.to_string(),
        cause: failure.cause.name().to_string(),
        detail: failure.message.clone(),
    };
    let attempts = async {
        let mut last = String::new();
        for _ in 0..FAIL_STOP_REPORT_ATTEMPTS_MAX {
            match report_once(coordinator, report.clone()).await {
                Ok(()) => return Ok(()),
                Err(err) => last = err,
            }
            tokio::time::sleep(REGISTER_BACKOFF_FIRST).await;
        }
        Err(last)
    };
    tokio::time::timeout(FAIL_STOP_REPORT_TIMEOUT, attempts)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {coordinator} within {FAIL_STOP_REPORT_TIMEOUT:?}"
            ))
        })
}

async fn report_once(coordinator: &str, report: pb::FailStopReport) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{coordinator}"))
        .map_err(|e| format!("bad coordinator address {coordinator}: {e}"))?
        .connect_timeout(FAIL_STOP_REPORT_TIMEOUT)
        .timeout(FAIL_STOP_REPORT_TIMEOUT);
    let channel = trellis_net::connect(endpoint).await.map_err(|e| {
        format!(
            "cannot reach {coordinator}: {}",
            trellis_net::error_text(&e)
        )
    })?;
    pb::membership_client::MembershipClient::new(channel)
        .report_fail_stop(report)
        .await
        .map_err(|s| format!("{coordinator} refused the report: {}", s.message()))?;
    Ok(())
}
