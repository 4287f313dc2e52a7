//! The node lifecycle controller, as kube-controller-manager's: a node whose agent has not
//! renewed its Lease (nor posted its status) for the grace period (`--node-monitor-grace-period`,
//! 20 s) is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable:NoExecute`; one
//! that reports itself not ready is tainted `not-ready:NoExecute`. The taints go when it is
//! healthy again. Its pods are marked not ready at once.
//!
//! Taint-based eviction: a pod on a node with a NoExecute taint it does not tolerate is
//! deleted; one that tolerates it for `tolerationSeconds` is deleted that long after the taint
//! came. Pods get such tolerations for not-ready and unreachable by default, for 30 s (ADR 009:
//! edge nodes want fast failover, Kubernetes waits 300 s).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{name, namespace, terminating, uid};
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error, events};

/// The taint of a node whose agent has gone silent.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose agent says it is not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The default grace period before a silent node is unreachable.
pub const GRACE: Duration = Duration::from_secs(20);
/// How long pods tolerate a not-ready or unreachable node by default.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 30;
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
/// How often every node is looked at, as `--node-monitor-period`.
const MONITOR_PERIOD: Duration = Duration::from_secs(5);

struct Ctx {
    client: Client,
    nodes: Arc<Informer>,
    leases: Arc<Informer>,
    pods: Arc<Informer>,
    grace: Duration,
    /// Per node, the last heartbeat seen (lease renewal and Ready heartbeat) and when this
    /// controller saw it change: silence is measured on this clock, so a server restart or a
    /// skewed node clock does not make nodes look dead.
    heard: std::sync::Mutex<std::collections::HashMap<String, (String, tokio::time::Instant)>>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(
    client: &Client,
    informers: &Informers,
    grace: Duration,
    shutdown: &CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        nodes: informers.get(super::NODES),
        leases: informers.get(LEASES),
        pods: informers.get(super::PODS),
        grace,
        heard: std::sync::Mutex::default(),
    });
    let queue = Queue::new();
    let (q, pods) = (queue.clone(), ctx.pods.clone());
    ctx.nodes.on_change(move |old, new| {
        if let Some(n) = new.or(old) {
            q.add(format!("node|{}", name(n)));
        }
        // New or changed NoExecute taints concern the node's pods.
        let taints = |n: Option<&Value>| n.map(|n| n["spec"]["taints"].clone());
        if let Some(n) = new
            && taints(old) != taints(new)
        {
            for pod in pods.list() {
                if pod["spec"]["nodeName"] == n["metadata"]["name"] {
                    q.add(format!("pod|{}", key_of(&pod)));
                }
            }
        }
    });
    let q = queue.clone();
    ctx.leases.on_change(move |_, new| {
        if let Some(l) = new {
            q.add(format!("node|{}", name(l)));
        }
    });
    let (q, nodes) = (queue.clone(), ctx.nodes.clone());
    ctx.pods.on_change(move |old, new| {
        if let Some(pod) = new
            && old.is_none_or(|o| o["spec"]["nodeName"] != pod["spec"]["nodeName"])
            && let Some(node) = pod["spec"]["nodeName"].as_str().and_then(|n| nodes.get(n))
            && no_execute(&node).next().is_some()
        {
            q.add(format!("pod|{}", key_of(pod)));
        }
    });
    let (q, nodes, stop) = (queue.clone(), ctx.nodes.clone(), shutdown.child_token());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MONITOR_PERIOD);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            for node in nodes.list() {
                q.add(format!("node|{}", name(&node)));
            }
        }
    });
    let shutdown = shutdown.child_token();
    tokio::spawn(async move {
        ctx.nodes.wait_synced().await;
        ctx.leases.wait_synced().await;
        ctx.pods.wait_synced().await;
        queue
            .work("nodelifecycle", shutdown, |key| {
                let ctx = ctx.clone();
                async move {
                    match key.split_once('|') {
                        Some(("node", node)) => monitor(&ctx, node).await,
                        Some(("pod", pod)) => evict(&ctx, pod).await,
                        _ => Ok(Action::Await),
                    }
                }
            })
            .await;
    });
}

fn no_execute(node: &Value) -> impl Iterator<Item = &Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoExecute")
}

fn timestamp(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str().and_then(|t| t.parse().ok())
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Marks a silent node unknown and keeps its NoExecute taints in step with its readiness.
async fn monitor(ctx: &Ctx, node_name: &str) -> Result<Action, Error> {
    let Some(node) = ctx.nodes.get(node_name) else {
        return Ok(Action::Await);
    };
    let now = crate::clock::now();
    let lease = ctx.leases.get(&format!("kube-node-lease/{node_name}"));
    let ready = ready_condition(&node);
    let beat = format!(
        "{}|{}",
        lease
            .as_ref()
            .map_or(&Value::Null, |l| &l["spec"]["renewTime"]),
        ready.map_or(&Value::Null, |c| &c["lastHeartbeatTime"])
    );
    let silent_for = {
        let mut heard = ctx.heard.lock().expect("heartbeat lock");
        let entry = heard
            .entry(node_name.to_owned())
            .or_insert_with(|| (beat.clone(), tokio::time::Instant::now()));
        if entry.0 != beat {
            *entry = (beat, tokio::time::Instant::now());
        }
        entry.1.elapsed()
    };
    let mut state = ready
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_owned();
    let mut node = (*node).clone();
    if silent_for > ctx.grace && state != "Unknown" {
        // Every condition the agent posted is now unknown, as Kubernetes marks them.
        let stamp = now.to_string();
        let conditions: Vec<Value> = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let mut c = c.clone();
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(stamp);
                c
            })
            .collect();
        let path = format!("/api/v1/nodes/{node_name}/status");
        node = super::merge_patch(
            &ctx.client,
            &path,
            &json!({"status": {"conditions": conditions}}),
        )
        .await?;
        state = "Unknown".into();
        tracing::info!(node = node_name, silent = ?silent_for, "node stopped posting its status; marked unknown");
        events::record_normal(
            &ctx.client,
            &node,
            ("v1", "Node"),
            "node-controller",
            "NodeNotReady",
            &format!("Node {node_name} status is now: NodeNotReady"),
        );
        mark_pods_not_ready(ctx, node_name).await;
    }
    // The taints follow the Ready condition.
    let wanted = match state.as_str() {
        "True" => None,
        "False" => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    };
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let before = taints.len();
    taints.retain(|t| {
        let k = t["key"].as_str().unwrap_or_default();
        !((k == UNREACHABLE || k == NOT_READY) && Some(k) != wanted)
    });
    let mut changed = taints.len() != before;
    if let Some(key) = wanted
        && !taints
            .iter()
            .any(|t| t["key"] == key && t["effect"] == "NoExecute")
    {
        taints.push(json!({"key": key, "effect": "NoExecute", "timeAdded": now.to_string()}));
        changed = true;
    }
    if changed {
        let patch = json!({"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"taints": if taints.is_empty() { Value::Null } else { json!(taints) }}});
        super::merge_patch(&ctx.client, &format!("/api/v1/nodes/{node_name}"), &patch).await?;
    }
    Ok(if state == "True" {
        // Look again when the grace period would run out.
        Action::RequeueAfter(ctx.grace.saturating_sub(silent_for) + Duration::from_secs(1))
    } else {
        Action::Await
    })
}

/// Sets the Ready condition of every pod on the node to False.
async fn mark_pods_not_ready(ctx: &Ctx, node_name: &str) {
    for pod in ctx.pods.list() {
        if pod["spec"]["nodeName"] != node_name || terminating(&pod) {
            continue;
        }
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": crate::clock::now().to_string()}]}});
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            namespace(&pod),
            name(&pod)
        );
        let sent = ctx
            .client
            .request(
                http::Method::PATCH,
                &path,
                Some("application/strategic-merge-patch+json"),
                Some(patch.to_string().into_bytes()),
            )
            .await;
        if let Err(e) = sent {
            tracing::debug!(pod = %key_of(&pod), error = %e, "could not mark a pod not ready");
        }
    }
}

/// When a pod must leave its node because of a NoExecute taint: `None` if it tolerates them
/// all for ever, else the time (now or later).
fn eviction_time(pod: &Value, node: &Value) -> Option<jiff::Timestamp> {
    let now = crate::clock::now();
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    no_execute(node)
        .filter_map(|taint| {
            let Some(t) = tolerations
                .iter()
                .find(|t| crate::scheduler::tolerates(t, taint))
            else {
                return Some(now);
            };
            let seconds = t["tolerationSeconds"].as_i64()?;
            let added = timestamp(&taint["timeAdded"]).unwrap_or(now);
            Some(added + jiff::SignedDuration::from_secs(seconds.max(0)))
        })
        .min()
}

async fn evict(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(pod) = ctx.pods.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&pod) {
        return Ok(Action::Await);
    }
    let Some(node) = pod["spec"]["nodeName"]
        .as_str()
        .and_then(|n| ctx.nodes.get(n))
    else {
        return Ok(Action::Await);
    };
    let Some(at) = eviction_time(&pod, &node) else {
        return Ok(Action::Await);
    };
    let wait = at.as_second() - crate::clock::now().as_second();
    if wait > 0 {
        return Ok(Action::RequeueAfter(Duration::from_secs(
            wait.unsigned_abs(),
        )));
    }
    let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(&pod), name(&pod));
    if super::delete(&ctx.client, &path, "Background", Some(uid(&pod)))
        .await?
        .is_some()
    {
        tracing::info!(
            pod = key,
            node = name(&node),
            "evicted a pod from a NoExecute-tainted node"
        );
        let mut involved = events::reference(&pod);
        involved["kind"] = json!("Pod");
        involved["apiVersion"] = json!("v1");
        let source = events::Source {
            component: "taint-eviction-controller",
            host: None,
        };
        events::record(
            &ctx.client,
            involved,
            source,
            false,
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {key}"),
        );
    }
    Ok(Action::Await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_leave_a_tainted_node_after_their_toleration() {
        let added = crate::clock::now() - jiff::SignedDuration::from_secs(10);
        let node = json!({"spec": {"taints": [
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": added.to_string()}]}});
        let bare = json!({"spec": {}});
        assert!(eviction_time(&bare, &node).is_some_and(|t| t <= crate::clock::now()));
        let patient = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}});
        let at = eviction_time(&patient, &node).unwrap();
        assert_eq!(at.as_second(), added.as_second() + 30);
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(eviction_time(&forever, &node), None);
        let healthy = json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}});
        assert_eq!(eviction_time(&bare, &healthy), None);
    }
}
