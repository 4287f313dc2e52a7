//! The ReplicaSet controller, as kube-controller-manager's: keeps `spec.replicas` active pods
//! matching each ReplicaSet's selector, made from its template and owned by it (a controller
//! ownerReference). It adopts orphans that match and releases owned pods that no longer do.
//! Scaling down deletes the worst pods first: unscheduled, then not ready, then the newest.
//! Level-triggered: each pass reads every ReplicaSet and pod and acts on the difference; a pass
//! runs on any change to either, and every [`RESYNC`] (minReadySeconds comes due by time).

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::selector::LabelSelector as Selector;
use crate::client::{Client, events};

/// How often every ReplicaSet is looked at even when no change is seen.
const RESYNC: Duration = Duration::from_secs(10);

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let rv = match pass(&client).await {
            Ok(rv) => rv,
            Err(e) => {
                tracing::debug!(error = %e, "replicaset pass failed");
                None
            }
        };
        let wait = async {
            let Some((rs_rv, pod_rv)) = rv else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            };
            let Ok(mut sets) = client
                .watch(
                    &format!("/apis/apps/v1/replicasets?watch=true&resourceVersion={rs_rv}"),
                    None,
                )
                .await
            else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            };
            // Without ReplicaSets, pod changes are none of this controller's business.
            let Some(pod_rv) = pod_rv else {
                let _ = tokio::time::timeout(RESYNC, sets.next()).await;
                return;
            };
            let Ok(mut pods) = client
                .watch(
                    &format!("/api/v1/pods?watch=true&resourceVersion={pod_rv}"),
                    None,
                )
                .await
            else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            };
            let _ = tokio::time::timeout(RESYNC, async {
                tokio::select! {
                    _ = sets.next() => {}
                    _ = pods.next() => {}
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

fn rv(list: &Value) -> String {
    list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned()
}

/// One pass over every ReplicaSet. Returns the lists' resourceVersions to watch from (no pods'
/// when there is no ReplicaSet).
async fn pass(client: &Client) -> Result<Option<(String, Option<String>)>, crate::client::Error> {
    let sets = client.get("/apis/apps/v1/replicasets").await?;
    if sets["items"].as_array().is_none_or(Vec::is_empty) {
        return Ok(Some((rv(&sets), None)));
    }
    let pods = client.get("/api/v1/pods").await?;
    let mut by_ns: HashMap<&str, Vec<&Value>> = HashMap::new();
    for p in pods["items"].as_array().into_iter().flatten() {
        by_ns
            .entry(p["metadata"]["namespace"].as_str().unwrap_or_default())
            .or_default()
            .push(p);
    }
    for rs in sets["items"].as_array().into_iter().flatten() {
        let ns = rs["metadata"]["namespace"].as_str().unwrap_or_default();
        let pods = by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        if let Err(e) = reconcile(client, rs, pods).await {
            tracing::debug!(
                replicaset = rs["metadata"]["name"].as_str().unwrap_or_default(),
                error = %e,
                "reconciling failed; next pass retries"
            );
        }
    }
    Ok(Some((rv(&sets), Some(rv(&pods)))))
}

/// The controller ownerReference of an object, if any.
fn controller_of(pod: &Value) -> Option<&Value> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}

fn terminating(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_string()
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

fn ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

fn condition<'a>(pod: &'a Value, kind: &str) -> Option<&'a Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Whether a ready pod has been ready for `min_ready` seconds at `now`.
fn available(pod: &Value, min_ready: i64, now: jiff::Timestamp) -> bool {
    if !ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    condition(pod, "Ready")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| now.as_second() - t.as_second() >= min_ready)
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

fn owner_reference(rs: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": rs["metadata"]["name"], "uid": rs["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// A new pod from the ReplicaSet's template.
fn pod_from_template(rs: &Value) -> Value {
    let template = &rs["spec"]["template"];
    let name = rs["metadata"]["name"].as_str().unwrap_or_default();
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["generateName"] = json!(format!("{name}-"));
    metadata["namespace"] = rs["metadata"]["namespace"].clone();
    metadata["ownerReferences"] = json!([owner_reference(rs)]);
    if let Some(m) = metadata.as_object_mut() {
        m.remove("name");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

async fn patch_pod(
    client: &Client,
    pod: &Value,
    refs: Vec<Value>,
) -> Result<(), crate::client::Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    // The resourceVersion makes it conditional: a pod changed (or replaced under the same
    // name) since the list is left to the next pass.
    // No references left: the field goes, as Kubernetes omits an empty list.
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        Value::Array(refs)
    };
    let patch = json!({"metadata": {
        "resourceVersion": pod["metadata"]["resourceVersion"], "ownerReferences": refs}});
    client
        .request(
            Method::PATCH,
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            Some("application/merge-patch+json"),
            Some(patch.to_string().into_bytes()),
        )
        .await
        .map(drop)
}

fn record(client: &Client, rs: &Value, reason: &str, message: &str) {
    let kind = ("apps/v1", "ReplicaSet");
    events::record_normal(client, rs, kind, "replicaset-controller", reason, message);
}

async fn reconcile(
    client: &Client,
    rs: &Value,
    pods: &[&Value],
) -> Result<(), crate::client::Error> {
    if terminating(rs) {
        return Ok(());
    }
    let ns = rs["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = rs["metadata"]["name"].as_str().unwrap_or_default();
    let Ok(selector) = Selector::from_json(&rs["spec"]["selector"]) else {
        return Ok(());
    };
    let labels = |p: &Value| p["metadata"]["labels"].as_object().cloned();
    let mut mine: Vec<&Value> = Vec::new();
    for &pod in pods {
        match controller_of(pod) {
            Some(r) if r["uid"] == rs["metadata"]["uid"] => {
                if selector.matches(labels(pod).as_ref()) {
                    mine.push(pod);
                } else {
                    // Release: it no longer matches.
                    let refs: Vec<Value> = pod["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["uid"] != rs["metadata"]["uid"])
                        .cloned()
                        .collect();
                    patch_pod(client, pod, refs).await?;
                }
            }
            Some(_) => {}
            None => {
                if !terminating(pod) && selector.matches(labels(pod).as_ref()) {
                    // Adopt an orphan.
                    let mut refs: Vec<Value> = pod["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    refs.push(owner_reference(rs));
                    patch_pod(client, pod, refs).await?;
                    mine.push(pod);
                }
            }
        }
    }
    let active: Vec<&Value> = mine
        .iter()
        .copied()
        .filter(|p| !terminating(p) && !finished(p))
        .collect();
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    if active.len() < want {
        for _ in active.len()..want {
            let created = client
                .request(
                    Method::POST,
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    Some("application/json"),
                    Some(pod_from_template(rs).to_string().into_bytes()),
                )
                .await?;
            let pod = created["metadata"]["name"].as_str().unwrap_or_default();
            record(
                client,
                rs,
                "SuccessfulCreate",
                &format!("Created pod: {pod}"),
            );
        }
    } else if active.len() > want {
        let mut doomed = active.clone();
        doomed.sort_by_key(|p| deletion_rank(p));
        for pod in doomed.into_iter().take(active.len() - want) {
            let pod = pod["metadata"]["name"].as_str().unwrap_or_default();
            match client
                .request(
                    Method::DELETE,
                    &format!("/api/v1/namespaces/{ns}/pods/{pod}"),
                    None,
                    None,
                )
                .await
            {
                Ok(_) => record(
                    client,
                    rs,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pod}"),
                ),
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let now = jiff::Timestamp::now();
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
        let patch = json!({"status": status});
        client
            .request(
                Method::PATCH,
                &format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}/status"),
                Some("application/merge-patch+json"),
                Some(patch.to_string().into_bytes()),
            )
            .await?;
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
