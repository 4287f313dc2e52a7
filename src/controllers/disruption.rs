//! The disruption controller, as kube-controller-manager's: keeps each PodDisruptionBudget's
//! status (expected, healthy and desired pods, and how many disruptions are allowed now) so
//! that the eviction subresource can refuse an eviction that would break the budget. A pod
//! just evicted (in `disruptedPods`) counts as gone for up to two minutes, until its deletion
//! shows.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{controller_of, finished, name, namespace, ready, terminating};
use crate::api::selector::LabelSelector as Selector;
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

/// PodDisruptionBudgets.
pub const PDBS: &str = "/apis/policy/v1/poddisruptionbudgets";
/// How long an evicted pod counts as disrupted before its deletion must have shown.
const DISRUPTED_FOR: i64 = 120;

struct Ctx {
    client: Client,
    budgets: Arc<Informer>,
    pods: Arc<Informer>,
    sets: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        budgets: informers.get(PDBS),
        pods: informers.get(super::PODS),
        sets: informers.get(super::REPLICASETS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.budgets, &queue);
    let (q, budgets) = (queue.clone(), ctx.budgets.clone());
    ctx.pods.on_change(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            let labels = pod["metadata"]["labels"].as_object();
            for b in budgets.list_namespace(namespace(pod)) {
                if Selector::from_json(&b["spec"]["selector"]).is_ok_and(|s| s.matches(labels)) {
                    q.add(key_of(&b));
                }
            }
        }
    });
    let informers = vec![ctx.budgets.clone(), ctx.pods.clone(), ctx.sets.clone()];
    super::run_worker(
        "disruption",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// An int-or-percent of `total`, percentages rounded up.
fn resolve(value: &Value, total: i64) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            (total * pct + 99) / 100
        }
        _ => 0,
    }
}

/// How many pods must stay healthy, out of `expected`.
fn desired_healthy(spec: &Value, expected: i64) -> i64 {
    if let Some(min) = spec.get("minAvailable") {
        resolve(min, expected)
    } else if let Some(max) = spec.get("maxUnavailable") {
        (expected - resolve(max, expected)).max(0)
    } else {
        expected.min(1)
    }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(pdb) = ctx.budgets.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&pdb) {
        return Ok(Action::Await);
    }
    let selector = Selector::from_json(&pdb["spec"]["selector"]).ok();
    let pods: Vec<Arc<Value>> = ctx
        .pods
        .list_namespace(namespace(&pdb))
        .into_iter()
        .filter(|p| {
            selector
                .as_ref()
                .is_some_and(|s| !s.is_empty() && s.matches(p["metadata"]["labels"].as_object()))
        })
        .filter(|p| !finished(p))
        .collect();
    // Expected: the size the pods' controllers ask for (ReplicaSets), else the pods there are.
    let mut counted = HashSet::new();
    let mut from_owners = 0;
    let mut unowned = 0;
    for pod in &pods {
        match controller_of(pod) {
            Some(r) if r["kind"] == "ReplicaSet" => {
                let set = format!(
                    "{}/{}",
                    namespace(pod),
                    r["name"].as_str().unwrap_or_default()
                );
                if counted.insert(set.clone()) {
                    from_owners += ctx
                        .sets
                        .get(&set)
                        .map_or(1, |rs| rs["spec"]["replicas"].as_i64().unwrap_or(1));
                }
            }
            _ => unowned += 1,
        }
    }
    let expected = from_owners + unowned;
    let now = crate::clock::now();
    // Pods evicted lately count as gone until their deletion shows (or two minutes pass).
    let mut disrupted = serde_json::Map::new();
    for (pod, at) in pdb["status"]["disruptedPods"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let fresh = at
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|t| now.as_second() - t.as_second() < DISRUPTED_FOR);
        let still_there = pods.iter().any(|p| name(p) == pod && !terminating(p));
        if fresh && still_there {
            disrupted.insert(pod.clone(), at.clone());
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| !terminating(p) && ready(p) && !disrupted.contains_key(name(p)))
        .count() as i64;
    let desired = desired_healthy(&pdb["spec"], expected);
    let allowed = (healthy - desired).max(0);
    let mut status = json!({
        "observedGeneration": pdb["metadata"]["generation"].as_i64().unwrap_or(1),
        "expectedPods": expected,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "disruptionsAllowed": allowed,
    });
    if !disrupted.is_empty() {
        status["disruptedPods"] = Value::Object(disrupted.clone());
    }
    let (state, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let old_condition = pdb["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"))
        .cloned();
    let transition = match &old_condition {
        Some(c) if c["status"] == state => c["lastTransitionTime"].clone(),
        _ => json!(now.to_string()),
    };
    status["conditions"] = json!([{"type": "DisruptionAllowed", "status": state, "reason": reason,
        "message": "", "observedGeneration": status["observedGeneration"],
        "lastTransitionTime": transition}]);
    if pdb["status"] != status {
        let path = format!(
            "/apis/policy/v1/namespaces/{}/poddisruptionbudgets/{}/status",
            namespace(&pdb),
            name(&pdb)
        );
        // The whole status, disruptedPods included (a merge patch would keep stale entries).
        // Conditional: an eviction may have spent a disruption since this was read.
        let mut patch = json!({"metadata": {"resourceVersion": pdb["metadata"]["resourceVersion"]},
            "status": status});
        if disrupted.is_empty() {
            patch["status"]["disruptedPods"] = Value::Null;
        }
        super::merge_patch(&ctx.client, &path, &patch).await?;
    }
    Ok(if disrupted.is_empty() {
        Action::Await
    } else {
        Action::RequeueAfter(Duration::from_secs(10))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_resolve_numbers_and_percentages() {
        assert_eq!(desired_healthy(&json!({"minAvailable": 2}), 3), 2);
        assert_eq!(desired_healthy(&json!({"minAvailable": "50%"}), 3), 2);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": 1}), 3), 2);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": "34%"}), 3), 1);
        assert_eq!(desired_healthy(&json!({}), 3), 1);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": 5}), 3), 0);
    }
}
