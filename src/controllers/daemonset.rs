//! The DaemonSet controller, as kube-controller-manager's: one pod per node that the
//! template's nodeSelector, required node affinity and tolerations allow, following nodes as
//! they come, change and go. Its pods are placed by the scheduler through a required node
//! affinity on the node's name, and tolerate what daemons must (not-ready, unreachable,
//! pressure, cordon). Updates: RollingUpdate replaces old pods at most maxUnavailable nodes at
//! a time; OnDelete only uses the new template for pods made after one is deleted.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::deployment::template_hash;
use super::{available, controlled_by, finished, name, namespace, settle, terminating, uid};
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error, events};

/// DaemonSets.
pub const DAEMONSETS: &str = "/apis/apps/v1/daemonsets";
/// The label with the template hash of a DaemonSet's (or StatefulSet's) pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";

const KIND: (&str, &str) = ("apps/v1", "DaemonSet");
const COMPONENT: &str = "daemonset-controller";

struct Ctx {
    client: Client,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        sets: informers.get(DAEMONSETS),
        pods: informers.get(super::PODS),
        nodes: informers.get(super::NODES),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.sets, &queue);
    super::enqueue_controller(&ctx.pods, &queue, "DaemonSet");
    // A node that comes, goes or changes its labels, taints or readiness concerns every set.
    let (q, sets) = (queue.clone(), ctx.sets.clone());
    ctx.nodes.on_change(move |old, new| {
        let relevant = |n: Option<&Value>| {
            n.map(|n| {
                (
                    n["metadata"]["labels"].clone(),
                    n["spec"]["taints"].clone(),
                    n["spec"]["unschedulable"].clone(),
                )
            })
        };
        if relevant(old) != relevant(new) {
            for set in sets.list() {
                q.add(key_of(&set));
            }
        }
    });
    let informers = vec![ctx.sets.clone(), ctx.pods.clone(), ctx.nodes.clone()];
    super::run_worker(
        "daemonset",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// The tolerations every daemon pod gets, as Kubernetes adds them.
fn daemon_tolerations(spec: &Value) -> Value {
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !tolerations
            .iter()
            .any(|t| t["key"] == key && t["effect"] == effect)
        {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec["hostNetwork"] == true {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    json!(tolerations)
}

/// Whether the set's pods belong on `node`.
fn should_run(ds: &Value, node: &Value) -> bool {
    let spec = &ds["spec"]["template"]["spec"];
    crate::scheduler::node_selected(spec, node)
        && crate::scheduler::untolerated(
            node,
            &daemon_tolerations(spec),
            &["NoSchedule", "NoExecute"],
        )
        .is_none()
}

/// A pod of the set for `node`.
fn pod_for(ds: &Value, node: &str, hash: &str) -> Value {
    let template = &ds["spec"]["template"];
    let prefix = format!("{}-", name(ds));
    let mut metadata = super::metadata_from(ds, KIND, template, super::Naming::Generated(&prefix));
    metadata["labels"][REVISION_LABEL] = json!(hash);
    metadata["labels"]["pod-template-generation"] = json!(
        ds["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1)
            .to_string()
    );
    let mut spec = template["spec"].clone();
    spec["tolerations"] = daemon_tolerations(&spec);
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The node a daemon pod is for: where it runs, else its node-name affinity.
fn node_of(pod: &Value) -> Option<String> {
    pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
}

/// An int-or-percent against `total`, rounding up (maxUnavailable of a DaemonSet).
fn resolve_up(value: &Value, total: i64) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(1),
        Value::String(s) => {
            (total * s.trim_end_matches('%').parse::<i64>().unwrap_or(0) + 99) / 100
        }
        _ => 1,
    }
}

fn record(client: &Client, ds: &Value, reason: &str, message: &str) {
    events::record_normal(client, ds, KIND, COMPONENT, reason, message);
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(ds) = ctx.sets.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&ds) {
        return Ok(Action::Await);
    }
    let client = &ctx.client;
    let ns = namespace(&ds);
    let hash = template_hash(
        &ds["spec"]["template"],
        ds["status"]["collisionCount"].as_u64().unwrap_or(0),
    );
    let nodes = ctx.nodes.list();
    let eligible: HashMap<&str, bool> = nodes
        .iter()
        .map(|n| (name(n), should_run(&ds, n)))
        .collect();
    let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for pod in ctx.pods.owned_by(uid(&ds)) {
        if controlled_by(&pod, "DaemonSet", uid(&ds)) && !terminating(&pod) {
            by_node
                .entry(node_of(&pod).unwrap_or_default())
                .or_default()
                .push(pod);
        }
    }
    let mut written = Vec::new();
    let mut doomed: Vec<Arc<Value>> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for (node, run) in &eligible {
        let pods = by_node.get(*node).map(Vec::as_slice).unwrap_or_default();
        // A daemon pod that failed is replaced.
        let (dead, live): (Vec<_>, Vec<_>) = pods.iter().cloned().partition(|p| finished(p));
        doomed.extend(dead);
        if !run {
            doomed.extend(live);
        } else if live.is_empty() {
            missing.push(node);
        } else if live.len() > 1 {
            // Keep the oldest.
            let mut live = live;
            live.sort_by_key(|p| {
                p["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_owned)
            });
            doomed.extend(live.into_iter().skip(1));
        }
    }
    // Pods for nodes that are gone.
    for (node, pods) in &by_node {
        if !eligible.contains_key(node.as_str()) {
            doomed.extend(pods.iter().cloned());
        }
    }
    // Rolling update: old pods go, maxUnavailable nodes at a time.
    let desired = eligible.values().filter(|r| **r).count() as i64;
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let now = crate::clock::now();
    let strategy = &ds["spec"]["updateStrategy"];
    if strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let max_unavailable = resolve_up(
            strategy["rollingUpdate"]
                .get("maxUnavailable")
                .unwrap_or(&json!(1)),
            desired,
        )
        .max(1);
        let mut unavailable = missing.len() as i64;
        let mut old: Vec<Arc<Value>> = Vec::new();
        for (node, run) in &eligible {
            if !run {
                continue;
            }
            for pod in by_node
                .get(*node)
                .into_iter()
                .flatten()
                .filter(|p| !finished(p))
            {
                if !available(pod, min_ready, now) {
                    unavailable += 1;
                }
                if pod["metadata"]["labels"][REVISION_LABEL] != hash.as_str() {
                    old.push(pod.clone());
                }
            }
        }
        // Unavailable old pods cost nothing to replace; then available ones within budget.
        old.sort_by_key(|p| available(p, min_ready, now));
        let mut budget = max_unavailable - unavailable;
        for pod in old {
            if !available(&pod, min_ready, now) {
                doomed.push(pod);
            } else if budget > 0 {
                budget -= 1;
                doomed.push(pod);
            }
        }
    }
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    for node in missing {
        let created = super::create_for(
            client,
            (&ds, KIND, COMPONENT),
            &pods_path,
            &pod_for(&ds, node, &hash),
        )
        .await?;
        record(
            client,
            &ds,
            "SuccessfulCreate",
            &format!("Created pod: {}", name(&created)),
        );
        written.push(created);
    }
    let mut seen = std::collections::HashSet::new();
    for pod in doomed {
        if !seen.insert(uid(&pod).to_owned()) {
            continue;
        }
        let path = format!("{pods_path}/{}", name(&pod));
        if let Some(gone) = super::delete(client, &path, "Background", Some(uid(&pod))).await? {
            record(
                client,
                &ds,
                "SuccessfulDelete",
                &format!("Deleted pod: {}", name(&pod)),
            );
            written.push(gone);
        }
    }
    settle(&ctx.pods, &written).await;
    // Status, from what there was at the start of this pass.
    let (mut current, mut misscheduled, mut ready, mut avail, mut updated) = (0, 0, 0, 0, 0);
    for (node, pods) in &by_node {
        let live: Vec<&Arc<Value>> = pods.iter().filter(|p| !finished(p)).collect();
        if live.is_empty() {
            continue;
        }
        if eligible.get(node.as_str()).copied().unwrap_or(false) {
            current += 1;
            let pod = live[0];
            if super::ready(pod) {
                ready += 1;
            }
            if available(pod, min_ready, now) {
                avail += 1;
            }
            if pod["metadata"]["labels"][REVISION_LABEL] == hash.as_str() {
                updated += 1;
            }
        } else if pods.iter().any(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        }) {
            misscheduled += 1;
        }
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": avail,
        "numberUnavailable": (desired - avail).max(0),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    let mut old_status = ds["status"].clone();
    if let Some(o) = old_status.as_object_mut() {
        o.remove("conditions");
        o.remove("collisionCount");
    }
    if old_status != status {
        let path = format!(
            "/apis/apps/v1/namespaces/{ns}/daemonsets/{}/status",
            name(&ds)
        );
        super::merge_patch(client, &path, &json!({"status": status})).await?;
    }
    // Availability comes due by time with minReadySeconds.
    Ok(if min_ready > 0 && ready > avail {
        Action::RequeueAfter(std::time::Duration::from_secs(1))
    } else {
        Action::Await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn daemons_tolerate_cordons_and_pressure_but_not_other_taints() {
        let ds = json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}});
        let edge = node(
            "a",
            json!({"role": "edge"}),
            json!([
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert!(should_run(&ds, &edge));
        let core = node("b", json!({"role": "core"}), json!([]));
        assert!(!should_run(&ds, &core));
        let gpu = node(
            "c",
            json!({"role": "edge"}),
            json!([{"key": "gpu", "value": "1", "effect": "NoSchedule"}]),
        );
        assert!(!should_run(&ds, &gpu));
        let mut tolerant = ds.clone();
        tolerant["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": "gpu", "operator": "Exists"}]);
        assert!(should_run(&tolerant, &gpu));
    }

    #[test]
    fn daemon_pods_are_pinned_to_their_node_by_affinity() {
        let ds = json!({"metadata": {"name": "logs", "namespace": "kube-system", "uid": "u", "generation": 2},
            "spec": {"template": {"metadata": {"labels": {"app": "logs"}}, "spec": {"containers": []}}}});
        let pod = pod_for(&ds, "edge-1", "abc");
        assert_eq!(node_of(&pod).as_deref(), Some("edge-1"));
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "abc");
        assert_eq!(pod["metadata"]["labels"]["pod-template-generation"], "2");
        let n = json!({"metadata": {"name": "edge-1"}});
        assert!(crate::scheduler::node_selected(&pod["spec"], &n));
        assert!(!crate::scheduler::node_selected(
            &pod["spec"],
            &json!({"metadata": {"name": "edge-2"}})
        ));
        assert!(pod["spec"]["tolerations"].as_array().unwrap().len() >= 6);
    }
}
