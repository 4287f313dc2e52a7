//! `wk bench scheduler`: pods bound per second by wk's scheduler, with hollow nodes (Node
//! objects whose Leases a small simulator keeps renewed, in the spirit of kubemark) and a
//! backlog of pending pods, against a real `wk server` over HTTPS. The scheduler runs in this
//! process as the API client it always is, with the server's own disabled; or (`--in-server`)
//! the server's own scheduler does the work, as it does in a cluster.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::post;
use crate::client::Client;

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Hollow nodes.
    pub nodes: usize,
    /// Pods scheduled.
    pub pods: usize,
    /// Seconds from the scheduler's start until the last binding showed in a watch.
    pub seconds: f64,
    /// Pods bound per second.
    pub bound_per_second: f64,
    /// The most pods any node got, and its pod capacity.
    pub busiest_node: (usize, usize),
}

const CONCURRENCY: usize = 32;
const MAX_PODS: usize = 110;

async fn patch(client: &Client, path: &str, body: &Value) -> anyhow::Result<Value> {
    Ok(client
        .request(
            Method::PATCH,
            path,
            Some("application/merge-patch+json"),
            Some(body.to_string().into_bytes()),
        )
        .await?)
}

/// Runs `f` on `0..n`, `CONCURRENCY` at a time.
async fn each<F, Fut>(n: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let results: Vec<anyhow::Result<Value>> = futures_util::stream::iter((0..n).map(f))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().try_for_each(|r| r.map(drop))
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Registers `n` hollow nodes with their Leases.
async fn hollow_nodes(client: &Client, n: usize) -> anyhow::Result<()> {
    each(n, |i| async move {
        let name = format!("hollow-{i:05}");
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "type": "hollow"}}});
        post(client, "/api/v1/nodes", &node).await?;
        let resources = json!({"cpu": "4", "memory": "8Gi", "pods": MAX_PODS.to_string()});
        let status = json!({"status": {"capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
        patch(client, &format!("/api/v1/nodes/{name}/status"), &status).await?;
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()}});
        post(client, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &lease).await
    })
    .await
}

/// Renews every hollow node's Lease every 10 s until `stop`, as agents do.
fn keep_alive(client: Client, n: usize, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
                () = stop.cancelled() => return,
            }
            let renewed = each(n, |i| {
                let client = client.clone();
                async move {
                    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/hollow-{i:05}");
                    patch(&client, &path, &json!({"spec": {"renewTime": now()}})).await
                }
            })
            .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "a hollow node's lease renewal failed");
            }
        }
    });
}

/// The leader Lease of `wk server`'s controllers and scheduler.
const LEADER_LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/wk-controller-manager";

/// Takes the server's leader Lease for the benchmark (renewed far in the future, so it holds)
/// and waits until the server has stepped down; or, with `release`, hands it back expired.
async fn hold_leadership(client: &Client, release: bool) -> anyhow::Result<()> {
    let began = Instant::now();
    let mut lease = loop {
        match client.get(LEADER_LEASE).await {
            Ok(lease) => break lease,
            Err(e) if e.code() == Some(404) && began.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (holder, renewed) = if release {
        ("wk-bench", "2000-01-01T00:00:00.000000Z".to_owned())
    } else {
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        (
            "wk-bench",
            later.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        )
    };
    lease["spec"]["holderIdentity"] = json!(holder);
    lease["spec"]["renewTime"] = json!(renewed);
    client
        .request(
            Method::PUT,
            LEADER_LEASE,
            Some("application/json"),
            Some(lease.to_string().into_bytes()),
        )
        .await?;
    if !release {
        // The server notices at its next renewal.
        tokio::time::sleep(crate::controllers::leader::RETRY + Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Runs the benchmark against a fresh server started from the `wk` binary at `wk`. The
/// scheduler runs in this process, fed by HTTP watches; with `in_server`, the server's own
/// scheduler (reading its watch cache) does the work instead: the benchmark holds the leader
/// Lease while it makes the nodes and pods, then hands it back, and the time runs from the
/// server's taking it.
///
/// # Errors
/// When the server cannot start, a request fails, or the pods are not all bound in time.
pub async fn scheduler(
    wk: &Path,
    nodes: usize,
    pods: usize,
    in_server: bool,
) -> anyhow::Result<Report> {
    let disabled = if in_server {
        "nodeipam"
    } else {
        "scheduler,nodeipam"
    };
    let server = super::start_server_disabling(wk, disabled)?;
    let client = Client::from_kubeconfig(&server.kubeconfig, None)?;
    if in_server {
        hold_leadership(&client, false).await?;
    }
    let stop = CancellationToken::new();
    hollow_nodes(&client, nodes).await?;
    keep_alive(client.clone(), nodes, stop.clone());
    super::namespace(&client, "bench").await?;
    each(pods, |i| {
        let client = client.clone();
        async move {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i:06}"), "namespace": "bench"},
                "spec": {"containers": [{"name": "c", "image": "hello:v1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
            post(&client, "/api/v1/namespaces/bench/pods", &pod).await
        }
    })
    .await?;
    // Count bindings from a watch that starts before the scheduler does.
    let list = client.get("/api/v1/namespaces/bench/pods?limit=1").await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let mut watch = client
        .watch(
            &format!("/api/v1/namespaces/bench/pods?watch=true&resourceVersion={rv}"),
            None,
        )
        .await?;
    let mut start = Instant::now();
    if in_server {
        hold_leadership(&client, true).await?;
        // The time runs from the server's taking the Lease back (its informers, its first
        // pass and every binding), not from its retry period.
        while client.get(LEADER_LEASE).await?["spec"]["holderIdentity"] == "wk-bench" {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start = Instant::now();
    } else {
        tokio::spawn(crate::scheduler::run(
            client.clone(),
            None,
            stop.child_token(),
        ));
    }
    let mut bound: HashMap<String, String> = HashMap::new();
    let deadline = Duration::from_secs(600);
    while bound.len() < pods {
        let event = tokio::time::timeout(deadline.saturating_sub(start.elapsed()), watch.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {pods} pods were bound in 10 minutes",
                    bound.len()
                )
            })??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        let object = &event["object"];
        if let Some(node) = object["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            bound.insert(
                object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                node.to_owned(),
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.cancel();
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for node in bound.values() {
        *per_node.entry(node).or_default() += 1;
    }
    let busiest = per_node.values().copied().max().unwrap_or(0);
    anyhow::ensure!(
        busiest <= MAX_PODS,
        "a node got {busiest} pods, over its {MAX_PODS}"
    );
    drop(server);
    Ok(Report {
        nodes,
        pods,
        seconds,
        bound_per_second: pods as f64 / seconds,
        busiest_node: (busiest, MAX_PODS),
    })
}
