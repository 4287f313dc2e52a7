//! Node IPAM, as kube-controller-manager's: gives each Node a podCIDR (`spec.podCIDR` and
//! `spec.podCIDRs`) carved from the cluster CIDR, the lowest free one first. A Node that
//! cannot get one (the range is used up) keeps none and gets a `CIDRNotAvailable` event.

use std::collections::HashSet;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, events};
use crate::net::cidr::Cidr;

/// How often the nodes are looked at even when no change is seen.
const RESYNC: Duration = Duration::from_secs(30);

/// Gives podCIDRs of length `mask` from `cluster` to Nodes until `shutdown`.
pub async fn run(client: Client, cluster: Cidr, mask: u8, shutdown: CancellationToken) {
    let mut reported = HashSet::new();
    while !shutdown.is_cancelled() {
        let rv = match pass(&client, cluster, mask, &mut reported).await {
            Ok(rv) => rv,
            Err(e) => {
                tracing::debug!(error = %e, "node IPAM pass failed");
                "0".to_owned()
            }
        };
        let wait = async {
            let url = format!("/api/v1/nodes?watch=true&resourceVersion={rv}");
            let Ok(mut nodes) = client.watch(&url, None).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            };
            // Any ADDED node may need a range; other changes need nothing.
            let _ = tokio::time::timeout(RESYNC, async {
                while let Ok(Some(event)) = nodes.next().await {
                    if event["type"] == "ADDED" || event["type"] == "DELETED" {
                        return;
                    }
                }
            })
            .await;
        };
        tokio::select! {
            () = wait => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The podCIDR a node holds, if it is one of `cluster`'s.
fn held(node: &Value, cluster: Cidr) -> Option<Cidr> {
    node["spec"]["podCIDR"]
        .as_str()
        .and_then(|c| c.parse::<Cidr>().ok())
        .filter(|c| cluster.covers(*c))
}

/// One pass: gives a range to every Node without one. Returns the list's resourceVersion.
async fn pass(
    client: &Client,
    cluster: Cidr,
    mask: u8,
    reported: &mut HashSet<String>,
) -> Result<String, crate::client::Error> {
    let list = client.get("/api/v1/nodes").await?;
    let nodes = list["items"].as_array().cloned().unwrap_or_default();
    let mut used: HashSet<Cidr> = nodes.iter().filter_map(|n| held(n, cluster)).collect();
    let mut next = 0u64;
    for node in &nodes {
        if node["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            continue;
        }
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let free = loop {
            match cluster.subnet(mask, next) {
                Some(c) if used.contains(&c) => next += 1,
                other => break other,
            }
        };
        let Some(range) = free else {
            if reported.insert(name.to_owned()) {
                tracing::warn!(node = name, %cluster, "no podCIDR left for the node");
                let message = format!("Node {name} status is now: CIDRNotAvailable");
                let kind = ("v1", "Node");
                events::record_normal(
                    client,
                    node,
                    kind,
                    "cidrAllocator",
                    "CIDRNotAvailable",
                    &message,
                );
            }
            continue;
        };
        let patch =
            json!({"spec": {"podCIDR": range.to_string(), "podCIDRs": [range.to_string()]}});
        client
            .request(
                Method::PATCH,
                &format!("/api/v1/nodes/{name}"),
                Some("application/merge-patch+json"),
                Some(patch.to_string().into_bytes()),
            )
            .await?;
        tracing::info!(node = name, %range, "gave the node its podCIDR");
        used.insert(range);
        reported.remove(name);
    }
    Ok(list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned())
}
