//! The ReplicaSet controller, as kube-controller-manager's: keeps `spec.replicas` active pods
//! matching each ReplicaSet's selector, made from its template and owned by it (a controller
//! ownerReference). It adopts orphans that match and releases owned pods that no longer do.
//! Scaling down deletes the worst pods first: unscheduled, then not ready, then the newest.
//! It reads ReplicaSets and pods from the shared informers; each ReplicaSet is one queue key,
//! queued when it or one of its pods changes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{available, controller_of, finished, name, namespace, ready, settle, terminating};
use crate::api::selector::LabelSelector as Selector;
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error, events};

/// Pods created at once, at most (kube-controller-manager's burst, in slow-start batches).
const BURST: usize = 500;

struct Ctx {
    client: Client,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        sets: informers.get(super::REPLICASETS),
        pods: informers.get(super::PODS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.sets, &queue);
    let (q, sets) = (queue.clone(), ctx.sets.clone());
    ctx.pods.on_change(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            match controller_of(pod) {
                Some(r) if r["kind"] == "ReplicaSet" => {
                    q.add(format!(
                        "{}/{}",
                        namespace(pod),
                        r["name"].as_str().unwrap_or_default()
                    ));
                }
                Some(_) => {}
                // An orphan: the sets that would adopt it.
                None if !terminating(pod) => {
                    let labels = pod["metadata"]["labels"].as_object();
                    for rs in sets.list_namespace(namespace(pod)) {
                        if Selector::from_json(&rs["spec"]["selector"])
                            .is_ok_and(|s| !s.is_empty() && s.matches(labels))
                        {
                            q.add(key_of(&rs));
                        }
                    }
                }
                None => {}
            }
        }
    });
    let informers = vec![ctx.sets.clone(), ctx.pods.clone()];
    super::run_worker(
        "replicaset",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// The order pods are deleted in when scaling down: unscheduled, pending, not ready, then the
/// newest first (as kube-controller-manager's `ActivePodsWithRanks`, simplified).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let running = pod["status"]["phase"] == "Running";
    (
        u8::from(scheduled),
        u8::from(running),
        u8::from(ready(pod)),
        std::cmp::Reverse(
            pod["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
    )
}

const KIND: (&str, &str) = ("apps/v1", "ReplicaSet");
const COMPONENT: &str = "replicaset-controller";

/// A new pod from the ReplicaSet's template.
fn pod_from_template(rs: &Value) -> Value {
    let template = &rs["spec"]["template"];
    let prefix = format!("{}-", name(rs));
    let metadata = super::metadata_from(rs, KIND, template, super::Naming::Generated(&prefix));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// Sets a pod's ownerReferences, conditional on the version read: a pod changed (or replaced
/// under the same name) since is left to the next pass.
async fn set_owners(client: &Client, pod: &Value, refs: Vec<Value>) -> Result<Value, Error> {
    // No references left: the field goes, as Kubernetes omits an empty list.
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        Value::Array(refs)
    };
    let patch = json!({"metadata": {
        "resourceVersion": pod["metadata"]["resourceVersion"], "ownerReferences": refs}});
    let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(pod), name(pod));
    super::merge_patch(client, &path, &patch).await
}

fn record(client: &Client, rs: &Value, reason: &str, message: &str) {
    events::record_normal(client, rs, KIND, COMPONENT, reason, message);
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(rs) = ctx.sets.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&rs) {
        return Ok(Action::Await);
    }
    let client = &ctx.client;
    let ns = namespace(&rs);
    let Ok(selector) = Selector::from_json(&rs["spec"]["selector"]) else {
        return Ok(Action::Await);
    };
    let rs_uid = super::uid(&rs);
    let labels = |p: &Value| p["metadata"]["labels"].as_object().cloned();
    let mut written = Vec::new();
    let mut mine: Vec<Arc<Value>> = Vec::new();
    for pod in ctx.pods.list_namespace(ns) {
        match controller_of(&pod) {
            Some(r) if r["uid"] == rs_uid => {
                if selector.matches(labels(&pod).as_ref()) {
                    mine.push(pod);
                } else {
                    // Release: it no longer matches.
                    let refs: Vec<Value> = pod["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["uid"] != rs_uid)
                        .cloned()
                        .collect();
                    written.push(set_owners(client, &pod, refs).await?);
                }
            }
            Some(_) => {}
            None => {
                if !terminating(&pod)
                    && !selector.is_empty()
                    && selector.matches(labels(&pod).as_ref())
                {
                    // Adopt an orphan.
                    let mut refs: Vec<Value> = pod["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    refs.push(super::owner_reference(&rs, KIND));
                    written.push(set_owners(client, &pod, refs).await?);
                    mine.push(pod);
                }
            }
        }
    }
    let active: Vec<&Value> = mine
        .iter()
        .map(|p| &**p)
        .filter(|p| !terminating(p) && !finished(p))
        .collect();
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let result = scale(ctx, &rs, &active, want, &mut written).await;
    // Whatever was written must reach the cache before this set is looked at again.
    settle(&ctx.pods, &written).await;
    result?;
    update_status(client, &rs, &active).await?;
    // Availability comes due by time when minReadySeconds is set.
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let now = crate::clock::now();
    if min_ready > 0
        && active
            .iter()
            .any(|p| ready(p) && !available(p, min_ready, now))
    {
        return Ok(Action::RequeueAfter(Duration::from_secs(1)));
    }
    Ok(Action::Await)
}

/// Creates or deletes pods until `want` are active. Creations go in slow-start batches (1, 2,
/// 4, ...), so a template that cannot be created fails once, not `want` times.
async fn scale(
    ctx: &Ctx,
    rs: &Value,
    active: &[&Value],
    want: usize,
    written: &mut Vec<Value>,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = namespace(rs);
    if active.len() < want {
        let mut missing = (want - active.len()).min(BURST);
        let mut batch = 1;
        let path = format!("/api/v1/namespaces/{ns}/pods");
        let pod = pod_from_template(rs);
        while missing > 0 {
            let n = batch.min(missing);
            let results = futures_util::future::join_all(
                (0..n).map(|_| super::create_for(client, (rs, KIND, COMPONENT), &path, &pod)),
            )
            .await;
            for result in results {
                let created = result?;
                record(
                    client,
                    rs,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", name(&created)),
                );
                written.push(created);
            }
            missing -= n;
            batch *= 2;
        }
    } else if active.len() > want {
        let mut doomed = active.to_vec();
        doomed.sort_by_key(|p| deletion_rank(p));
        let doomed = &doomed[..active.len() - want];
        let results =
            futures_util::future::join_all(
                doomed.iter().map(|pod| {
                    let path = format!("/api/v1/namespaces/{ns}/pods/{}", name(pod));
                    async move {
                        super::delete(client, &path, "Background", Some(super::uid(pod))).await
                    }
                }),
            )
            .await;
        for (pod, result) in doomed.iter().zip(results) {
            match result {
                Ok(Some(gone)) => {
                    record(
                        client,
                        rs,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", name(pod)),
                    );
                    written.push(gone);
                }
                Ok(None) => {}
                // Replaced under the same name since: not this pod any more.
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn update_status(client: &Client, rs: &Value, active: &[&Value]) -> Result<(), Error> {
    let now = crate::clock::now();
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let template_labels = rs["spec"]["template"]["metadata"]["labels"].as_object();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels.is_none_or(|want| {
                want.iter()
                    .all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v)
            })
        })
        .count();
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": active.iter().filter(|p| ready(p)).count(),
        "availableReplicas": active.iter().filter(|p| available(p, min_ready, now)).count(),
        "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    let mut current = rs["status"].clone();
    if let Some(c) = current.as_object_mut() {
        c.remove("conditions");
    }
    if current != status {
        let path = format!(
            "/apis/apps/v1/namespaces/{}/replicasets/{}/status",
            namespace(rs),
            name(rs)
        );
        super::merge_patch(client, &path, &json!({"status": status})).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: &str) -> Value {
        json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": "2026-12-01T00:00:00Z"}
            ]}
        })
    }

    #[test]
    fn the_worst_pods_go_first() {
        let pods = [
            pod("old-ready", "n", "Running", true, "2026-12-01T00:00:00Z"),
            pod("new-ready", "n", "Running", true, "2026-12-01T00:05:00Z"),
            pod("not-ready", "n", "Running", false, "2026-12-01T00:00:00Z"),
            pod("pending", "n", "Pending", false, "2026-12-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2026-12-01T00:00:00Z"),
        ];
        let mut order: Vec<&Value> = pods.iter().collect();
        order.sort_by_key(|p| deletion_rank(p));
        let names: Vec<&str> = order
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", "n", "Running", true, "2026-12-01T00:00:00Z");
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert!(available(&p, 0, at("2026-12-01T00:00:00Z")));
        assert!(!available(&p, 30, at("2026-12-01T00:00:10Z")));
        assert!(available(&p, 30, at("2026-12-01T00:00:30Z")));
        let not_ready = pod("q", "n", "Running", false, "2026-12-01T00:00:00Z");
        assert!(!available(&not_ready, 0, at("2026-12-01T01:00:00Z")));
    }

    #[test]
    fn pods_from_the_template_are_owned_and_named_after_the_set() {
        let rs = json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1"},
            "spec": {"template": {"metadata": {"name": "ignored", "labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        });
        let p = pod_from_template(&rs);
        assert_eq!(p["metadata"]["generateName"], "web-");
        assert!(p["metadata"].get("name").is_none());
        assert_eq!(p["metadata"]["namespace"], "prod");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(p["spec"]["containers"][0]["image"], "i");
    }
}
