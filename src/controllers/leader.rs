//! Leader election through a Lease, as client-go's leaderelection: of several `wk server`
//! replicas, the one holding `kube-system/wk-controller-manager` runs the scheduler and the
//! controllers. It renews the Lease every [`RETRY`]; a holder that has not renewed for
//! [`LEASE_DURATION`] is taken over. A leader that cannot renew within [`RENEW_DEADLINE`]
//! stops leading (its controllers stop) and tries again like the others.

use std::time::Duration;

use http::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Error};

/// The Lease the controllers' leader holds.
pub const LEASE: &str = "wk-controller-manager";
/// How long a Lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps trying to renew before it steps down.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and the others try.
pub const RETRY: Duration = Duration::from_secs(5);

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

fn micro_now() -> String {
    crate::clock::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Takes or renews the Lease for `identity`; true when this replica holds it now.
async fn try_hold(client: &Client, identity: &str) -> Result<bool, Error> {
    let now = micro_now();
    let current = match client.get(&format!("{PATH}/{LEASE}")).await {
        Ok(lease) => lease,
        Err(e) if e.code() == Some(404) => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE, "namespace": "kube-system"},
                "spec": {"holderIdentity": identity,
                         "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0}});
            return match client
                .request(
                    Method::POST,
                    PATH,
                    Some("application/json"),
                    Some(lease.to_string().into_bytes()),
                )
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some(409) => Ok(false),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let spec = &current["spec"];
    let holder = spec["holderIdentity"].as_str().unwrap_or_default();
    let expired = spec["renewTime"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_none_or(|t| {
            let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(15);
            crate::clock::now().as_second() - t.as_second() > duration
        });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let mut next = current.clone();
    next["spec"]["holderIdentity"] = json!(identity);
    next["spec"]["renewTime"] = json!(now);
    next["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION.as_secs());
    if holder != identity {
        next["spec"]["acquireTime"] = json!(now);
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
        next["spec"]["leaseTransitions"] = json!(transitions + 1);
    }
    // A PUT with the version read: of two replicas taking over at once, one wins.
    match client
        .request(
            Method::PUT,
            &format!("{PATH}/{LEASE}"),
            Some("application/json"),
            Some(next.to_string().into_bytes()),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(409) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `lead` whenever this replica holds the Lease, until `shutdown`. `lead` gets a token
/// that is cancelled when leadership is lost; it is called again on the next win.
pub async fn run(
    client: Client,
    identity: String,
    shutdown: CancellationToken,
    lead: impl Fn(CancellationToken) + Send + 'static,
) {
    while !shutdown.is_cancelled() {
        match try_hold(&client, &identity).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "leader election: could not reach the Lease");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        }
        tracing::info!(
            identity,
            lease = LEASE,
            "became the leader; starting the controllers"
        );
        let term = shutdown.child_token();
        lead(term.clone());
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => return,
            }
            match try_hold(&client, &identity).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "leader election: renewal failed");
                    if last_renewed.elapsed() > RENEW_DEADLINE {
                        break;
                    }
                }
            }
        }
        tracing::warn!(identity, "lost the leader lease; stopping the controllers");
        term.cancel();
    }
}

/// This replica's identity: the host name and a random suffix, as client-go's.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "wk".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}
