//! A shard's registration with its coordinator: tell it where we serve,
//! learn which slots we own.

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
    let channel = trellis_net::connect(endpoint)
        .await
        .map_err(|e| format!("cannot reach {coordinator}: {e}"))?;
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
