//! The StatefulSet controller, as kube-controller-manager's, without storage yet: pods with
//! stable names (`web-0`, `web-1`, ...) and hostnames under the set's Service name. With
//! OrderedReady, pod N is made only when pods 0..N are Running and Ready, and scaling down
//! removes the highest ordinal first, one at a time; Parallel does both at once. A RollingUpdate
//! replaces pods from the highest ordinal down to `partition`, one at a time, each once the
//! pods above it are ready on the new template; OnDelete waits for the user to delete them.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::daemonset::REVISION_LABEL;
use super::deployment::template_hash;
use super::{controlled_by, finished, name, namespace, ready, settle, terminating, uid};
use crate::client::informer::{Action, Informer, Informers, Queue};
use crate::client::{Client, Error, events};

/// StatefulSets.
pub const STATEFULSETS: &str = "/apis/apps/v1/statefulsets";
/// The label with a StatefulSet pod's own name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

const KIND: (&str, &str) = ("apps/v1", "StatefulSet");
const COMPONENT: &str = "statefulset-controller";

struct Ctx {
    client: Client,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    claims: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        sets: informers.get(STATEFULSETS),
        pods: informers.get(super::PODS),
        claims: informers.get(super::volume::CLAIMS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.sets, &queue);
    super::enqueue_controller(&ctx.pods, &queue, "StatefulSet");
    let informers = vec![ctx.sets.clone(), ctx.pods.clone(), ctx.claims.clone()];
    super::run_worker(
        "statefulset",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// The ordinal of a set's pod from its name (`web-2` → 2).
fn ordinal(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The pod with this ordinal, from the set's template at revision `revision`.
fn pod_for(sts: &Value, i: i64, revision: &str) -> Value {
    let template = &sts["spec"]["template"];
    let pod = format!("{}-{i}", name(sts));
    let mut metadata = super::metadata_from(sts, KIND, template, super::Naming::Exactly(&pod));
    metadata["labels"][REVISION_LABEL] = json!(revision);
    metadata["labels"][POD_NAME_LABEL] = json!(pod);
    metadata["labels"][INDEX_LABEL] = json!(i.to_string());
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(pod);
    // Each claim template becomes the volume of that name, bound to this ordinal's claim.
    let templates = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if !templates.is_empty() {
        let mut volumes: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
        for t in templates {
            let volume = t["metadata"]["name"].as_str().unwrap_or_default();
            volumes.retain(|v| v["name"] != volume);
            volumes.push(json!({"name": volume,
                "persistentVolumeClaim": {"claimName": claim_name(volume, name(sts), i)}}));
        }
        spec["volumes"] = json!(volumes);
    }
    if let Some(service) = sts["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(service);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The claim of ordinal `i` from the claim template `template`: `data-web-0`.
fn claim_name(template: &str, set: &str, i: i64) -> String {
    format!("{template}-{set}-{i}")
}

/// Creates the claims of ordinal `i` that do not exist yet, from the set's
/// volumeClaimTemplates. They outlive the pods (and, unless the set's
/// persistentVolumeClaimRetentionPolicy says Delete, the set).
async fn ensure_claims(
    ctx: &Ctx,
    sts: &Value,
    i: i64,
    written: &mut Vec<Value>,
) -> Result<(), Error> {
    let (ns, set) = (namespace(sts), name(sts));
    let owned = sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete";
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let claim = claim_name(t["metadata"]["name"].as_str().unwrap_or_default(), set, i);
        match ctx.claims.get(&format!("{ns}/{claim}")) {
            // The pod waits until the old claim is gone; it must not start on it.
            Some(c) if terminating(&c) => {
                return Err(Error::Config(format!(
                    "claim {claim} is being deleted; pod {set}-{i} waits for it to go"
                )));
            }
            Some(_) => continue,
            None => {}
        }
        let mut metadata = json!({"name": claim, "namespace": ns,
            "labels": t["metadata"]["labels"], "annotations": t["metadata"]["annotations"]});
        for (k, v) in sts["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            metadata["labels"][k] = v.clone();
        }
        if owned {
            metadata["ownerReferences"] = json!([super::owner_reference(sts, KIND)]);
        }
        let object = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": metadata, "spec": t["spec"]});
        let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims");
        match super::create_for(&ctx.client, (sts, KIND, COMPONENT), &path, &object).await {
            Ok(created) => {
                record(
                    &ctx.client,
                    sts,
                    "SuccessfulCreate",
                    &format!("create Claim {claim} Pod {set}-{i} in StatefulSet {set} success"),
                );
                written.push(created);
            }
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// With `whenScaled: Delete`, removes the claims of ordinals at or above `replicas` whose pod
/// is gone (the claims' protection holds them while a pod still uses them).
async fn delete_scaled_claims(
    ctx: &Ctx,
    sts: &Value,
    replicas: i64,
    pods: &std::collections::BTreeMap<i64, Arc<Value>>,
) -> Result<(), Error> {
    if sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] != "Delete" {
        return Ok(());
    }
    let (ns, set) = (namespace(sts), name(sts));
    // Only claims this set made carry its selector's labels.
    let Ok(selector) = crate::api::selector::LabelSelector::from_json(&sts["spec"]["selector"])
    else {
        return Ok(());
    };
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let prefix = format!(
            "{}-{set}-",
            t["metadata"]["name"].as_str().unwrap_or_default()
        );
        for claim in ctx.claims.list_namespace(ns) {
            if selector.is_empty() || !selector.matches(claim["metadata"]["labels"].as_object()) {
                continue;
            }
            let Some(i) = name(&claim)
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            if i >= replicas && !pods.contains_key(&i) && !terminating(&claim) {
                let path = format!(
                    "/api/v1/namespaces/{ns}/persistentvolumeclaims/{}",
                    name(&claim)
                );
                super::delete(&ctx.client, &path, "Background", Some(uid(&claim))).await?;
            }
        }
    }
    Ok(())
}

fn record(client: &Client, sts: &Value, reason: &str, message: &str) {
    events::record_normal(client, sts, KIND, COMPONENT, reason, message);
}

fn healthy(pod: &Value) -> bool {
    !terminating(pod) && pod["status"]["phase"] == "Running" && ready(pod)
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(sts) = ctx.sets.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&sts) {
        return Ok(Action::Await);
    }
    let client = &ctx.client;
    let set = name(&sts);
    let ns = namespace(&sts);
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let revision = format!(
        "{set}-{}",
        template_hash(
            &sts["spec"]["template"],
            sts["status"]["collisionCount"].as_u64().unwrap_or(0)
        )
    );
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    let mut by_ordinal: std::collections::BTreeMap<i64, Arc<Value>> = Default::default();
    for pod in ctx.pods.owned_by(uid(&sts)) {
        if controlled_by(&pod, "StatefulSet", uid(&sts))
            && let Some(i) = ordinal(set, name(&pod))
        {
            by_ordinal.insert(i, pod);
        }
    }
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    let mut written = Vec::new();
    let mut claims_written = Vec::new();
    let result = async {
        // Pods that ended are replaced under the same name.
        for pod in by_ordinal.values() {
            if finished(pod) && !terminating(pod) {
                let path = format!("{pods_path}/{}", name(pod));
                written.extend(super::delete(client, &path, "Background", Some(uid(pod))).await?);
            }
        }
        // Scale up, in order unless Parallel.
        for i in 0..replicas {
            match by_ordinal.get(&i) {
                None => {
                    ensure_claims(ctx, &sts, i, &mut claims_written).await?;
                    let created = super::create_for(
                        client,
                        (&sts, KIND, COMPONENT),
                        &pods_path,
                        &pod_for(&sts, i, &revision),
                    )
                    .await;
                    match created {
                        Ok(pod) => {
                            record(
                                client,
                                &sts,
                                "SuccessfulCreate",
                                &format!(
                                    "create Pod {} in StatefulSet {set} successful",
                                    name(&pod)
                                ),
                            );
                            written.push(pod);
                        }
                        // The old pod of that name is still going.
                        Err(e) if e.code() == Some(409) => {}
                        Err(e) => return Err(e),
                    }
                    if !parallel {
                        return Ok(());
                    }
                }
                Some(pod) if !parallel && !healthy(pod) => return Ok(()),
                Some(_) => {}
            }
        }
        // Scale down from the highest ordinal.
        let extra: Vec<&Arc<Value>> = by_ordinal.range(replicas..).rev().map(|(_, p)| p).collect();
        if !extra.is_empty() {
            let doomed = if parallel { extra.len() } else { 1 };
            for pod in extra.into_iter().take(doomed) {
                if terminating(pod) {
                    continue;
                }
                let path = format!("{pods_path}/{}", name(pod));
                if let Some(gone) =
                    super::delete(client, &path, "Background", Some(uid(pod))).await?
                {
                    record(
                        client,
                        &sts,
                        "SuccessfulDelete",
                        &format!("delete Pod {} in StatefulSet {set} successful", name(pod)),
                    );
                    written.push(gone);
                }
            }
            return Ok(());
        }
        // Rolling update: from the highest ordinal down to the partition, one at a time.
        let strategy = &sts["spec"]["updateStrategy"];
        if strategy["type"].as_str().unwrap_or("RollingUpdate") != "RollingUpdate" {
            return Ok(());
        }
        let partition = strategy["rollingUpdate"]["partition"].as_i64().unwrap_or(0);
        for i in (partition..replicas).rev() {
            let Some(pod) = by_ordinal.get(&i) else {
                return Ok(());
            };
            if pod["metadata"]["labels"][REVISION_LABEL] == revision.as_str() {
                if !healthy(pod) {
                    return Ok(());
                }
                continue;
            }
            if !terminating(pod) {
                let path = format!("{pods_path}/{}", name(pod));
                written.extend(super::delete(client, &path, "Background", Some(uid(pod))).await?);
            }
            return Ok(());
        }
        Ok(())
    }
    .await;
    settle(&ctx.pods, &written).await;
    settle(&ctx.claims, &claims_written).await;
    result?;
    delete_scaled_claims(ctx, &sts, replicas, &by_ordinal).await?;
    // Status.
    let live: Vec<&Arc<Value>> = by_ordinal
        .values()
        .filter(|p| !terminating(p) && !finished(p))
        .collect();
    let updated = live
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == revision.as_str())
        .count();
    let ready_count = live.iter().filter(|p| ready(p)).count();
    let current_revision = if updated == live.len() && live.len() as i64 == replicas {
        revision.clone()
    } else {
        sts["status"]["currentRevision"]
            .as_str()
            .map_or_else(|| revision.clone(), str::to_owned)
    };
    let current = live
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == current_revision.as_str())
        .count();
    let status = json!({
        "observedGeneration": sts["metadata"]["generation"].as_i64().unwrap_or(1),
        "replicas": live.len(),
        "readyReplicas": ready_count,
        "availableReplicas": ready_count,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": revision,
    });
    let mut old = sts["status"].clone();
    if let Some(o) = old.as_object_mut() {
        o.remove("collisionCount");
        o.remove("conditions");
    }
    if old != status {
        let path = format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{set}/status");
        super::merge_patch(client, &path, &json!({"status": status})).await?;
    }
    Ok(Action::Await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_have_stable_names_hostnames_and_ordinals() {
        let sts = json!({"metadata": {"name": "web", "namespace": "ns", "uid": "u"},
            "spec": {"serviceName": "web", "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let pod = pod_for(&sts, 2, "web-abc");
        assert_eq!(pod["metadata"]["name"], "web-2");
        assert_eq!(pod["spec"]["hostname"], "web-2");
        assert_eq!(pod["spec"]["subdomain"], "web");
        assert_eq!(pod["metadata"]["labels"][INDEX_LABEL], "2");
        assert_eq!(pod["metadata"]["labels"][POD_NAME_LABEL], "web-2");
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "web-abc");
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
    }
}
