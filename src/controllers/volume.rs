//! PersistentVolumes and claims, as kube-controller-manager's persistent volume controller and
//! k3s's local-path-provisioner do it together:
//!
//! - a Pending claim is bound to the smallest Available volume that fits it (class, access
//!   modes, size, selector, and the chosen node under WaitForFirstConsumer), or
//! - when its class's provisioner is wk's own (`wk.dev/local-path`), a volume is made for it: a
//!   directory on one node (the one the scheduler picked for its first pod, in the
//!   `volume.kubernetes.io/selected-node` annotation), pinned there by nodeAffinity and
//!   mounted by that node's agent;
//! - a volume whose claim is gone is Released, and deleted when its reclaim policy says so
//!   (the agent then removes the directory);
//! - a claim being deleted keeps its `kubernetes.io/pvc-protection` finalizer until no pod
//!   that uses it is left.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{finished, name, namespace, terminating, uid};
use crate::api::admission::resource_list;
use crate::client::events;
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

/// The provisioner of wk's node-local storage class, and the CSI driver name its volumes carry.
pub const PROVISIONER: &str = "wk.dev/local-path";
/// The storage class `wk server` creates, as k3s names its own.
pub const DEFAULT_CLASS: &str = "local-path";
/// The node the scheduler chose for a claim's first pod.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The finalizer that keeps a claim while pods use it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer that keeps a volume while a claim is bound to it.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// PersistentVolumeClaims.
pub const CLAIMS: &str = "/api/v1/persistentvolumeclaims";
/// PersistentVolumes.
pub const VOLUMES: &str = "/api/v1/persistentvolumes";
/// StorageClasses.
pub const CLASSES: &str = "/apis/storage.k8s.io/v1/storageclasses";
const COMPONENT: &str = "persistentvolume-controller";

/// The default StorageClass: node-local directories, made when a pod first uses the claim.
pub fn default_class() -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER, "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"})
}

/// The claims a pod's volumes name.
pub fn claims_of(pod: &Value) -> impl Iterator<Item = &str> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
}

struct Ctx {
    client: Client,
    claims: Arc<Informer>,
    volumes: Arc<Informer>,
    classes: Arc<Informer>,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    /// Claims told they wait for their first pod (the event goes once per claim).
    told_to_wait: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Registers the controller on the shared informers and starts its two workers, one for
/// claims and one for volumes.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        claims: informers.get(CLAIMS),
        volumes: informers.get(VOLUMES),
        classes: informers.get(CLASSES),
        pods: informers.get(super::PODS),
        nodes: informers.get(super::NODES),
        told_to_wait: std::sync::Mutex::default(),
    });
    let (claim_queue, volume_queue) = (Queue::new(), Queue::new());
    super::enqueue_self(&ctx.claims, &claim_queue);
    super::enqueue_self(&ctx.volumes, &volume_queue);
    let vq = volume_queue.clone();
    ctx.claims.on_change(move |old, new| {
        for claim in [old, new].into_iter().flatten() {
            if let Some(v) = claim["spec"]["volumeName"].as_str() {
                vq.add(v);
            }
        }
    });
    let cq = claim_queue.clone();
    ctx.volumes.on_change(move |old, new| {
        for volume in [old, new].into_iter().flatten() {
            let r = &volume["spec"]["claimRef"];
            if let (Some(ns), Some(n)) = (r["namespace"].as_str(), r["name"].as_str()) {
                cq.add(format!("{ns}/{n}"));
            }
        }
    });
    let cq = claim_queue.clone();
    ctx.pods.on_change(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            for claim in claims_of(pod) {
                cq.add(format!("{}/{claim}", namespace(pod)));
            }
        }
    });
    let cq = claim_queue.clone();
    let claims = ctx.claims.clone();
    ctx.classes.on_change(move |_, _| {
        for c in claims.list() {
            cq.add(key_of(&c));
        }
    });
    let all = vec![
        ctx.claims.clone(),
        ctx.volumes.clone(),
        ctx.classes.clone(),
        ctx.pods.clone(),
        ctx.nodes.clone(),
    ];
    super::run_worker(
        "persistentvolume-binder",
        all.clone(),
        claim_queue,
        shutdown,
        ctx.clone(),
        |ctx, key| async move { reconcile_claim(&ctx, &key).await },
    );
    super::run_worker(
        "persistentvolume",
        all,
        volume_queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile_volume(&ctx, &key).await },
    );
}

fn claim_path(claim: &Value) -> String {
    format!(
        "/api/v1/namespaces/{}/persistentvolumeclaims/{}",
        namespace(claim),
        name(claim)
    )
}

fn storage(list: &Value) -> i128 {
    resource_list(list).get("storage").map_or(0, |q| q.millis())
}

fn modes(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Whether `volume` can serve `claim`, on `node` when the claim waits for its first pod.
fn fits(volume: &Value, claim: &Value, node: Option<&Value>) -> bool {
    let (v, c) = (&volume["spec"], &claim["spec"]);
    let class = |s: &Value| {
        s["storageClassName"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let claim_ref = &v["claimRef"];
    let free = claim_ref.is_null()
        || (claim_ref["namespace"] == claim["metadata"]["namespace"]
            && claim_ref["name"] == claim["metadata"]["name"]
            && claim_ref["uid"]
                .as_str()
                .is_none_or(|u| u.is_empty() || u == uid(claim)));
    let selector = crate::api::selector::LabelSelector::from_json(&c["selector"]);
    // A volume already bound to this very claim (a binding that lost a race half way) fits.
    let ours = claim_ref["uid"] == claim["metadata"]["uid"];
    free && !terminating(volume)
        && (ours
            || matches!(
                volume["status"]["phase"].as_str(),
                Some("Available" | "Pending") | None
            ))
        && class(v) == class(c)
        && storage(&v["capacity"]) >= storage(&c["resources"]["requests"])
        && modes(&c["accessModes"])
            .iter()
            .all(|m| modes(&v["accessModes"]).contains(m))
        && (c["selector"].is_null()
            || selector.is_ok_and(|s| s.matches(volume["metadata"]["labels"].as_object())))
        && (v["nodeAffinity"]["required"].is_null()
            || node.is_none_or(|n| crate::scheduler::selects(&v["nodeAffinity"]["required"], n)))
}

async fn reconcile_claim(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(claim) = ctx.claims.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&claim) {
        return release_protection(ctx, &claim).await;
    }
    if claim["status"]["phase"] == "Bound" {
        return Ok(Action::Await);
    }
    let class_name = claim["spec"]["storageClassName"]
        .as_str()
        .unwrap_or_default();
    let class = ctx.classes.get(class_name);
    let waits = class
        .as_ref()
        .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
    // The scheduler's choice; or, should its note have been lost, the node a pod using the
    // claim was bound to.
    let used_on = ctx
        .pods
        .list_namespace(namespace(&claim))
        .into_iter()
        .filter(|p| !finished(p) && claims_of(p).any(|c| c == name(&claim)))
        .find_map(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        });
    let selected = claim["metadata"]["annotations"][SELECTED_NODE]
        .as_str()
        .map(str::to_owned)
        .or(used_on);
    let selected = selected.as_deref();
    let node = selected.and_then(|n| ctx.nodes.get(n));
    // A claim that names its volume takes that one, or waits for it.
    if let Some(wanted) = claim["spec"]["volumeName"]
        .as_str()
        .filter(|v| !v.is_empty())
    {
        return match ctx.volumes.get(wanted) {
            Some(v) if fits(&v, &claim, None) || v["spec"]["claimRef"]["uid"] == uid(&claim) => {
                bind(ctx, &v, &claim).await
            }
            _ => Ok(Action::Await),
        };
    }
    if waits && selected.is_none() {
        let first = ctx
            .told_to_wait
            .lock()
            .is_ok_and(|mut told| told.insert(uid(&claim).to_owned()));
        if first {
            record(
                ctx,
                &claim,
                false,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            );
        }
        return Ok(Action::Await);
    }
    let best = ctx
        .volumes
        .list()
        .into_iter()
        .filter(|v| fits(v, &claim, node.as_deref()))
        .min_by_key(|v| {
            (
                v["spec"]["claimRef"].is_null(),
                storage(&v["spec"]["capacity"]),
            )
        });
    if let Some(volume) = best {
        return bind(ctx, &volume, &claim).await;
    }
    let Some(class) = class.filter(|c| c["provisioner"] == PROVISIONER) else {
        return Ok(Action::Await);
    };
    // Provision: on the node chosen for the first pod, or (Immediate) the ready node that
    // holds the fewest of these volumes.
    let node_name = match selected {
        Some(n) => n.to_owned(),
        None => match least_used_node(ctx) {
            Some(n) => n,
            None => return Ok(Action::Await),
        },
    };
    let volume_name = format!("pvc-{}", uid(&claim));
    let volume = json!({"apiVersion": "v1", "kind": "PersistentVolume",
    "metadata": {"name": volume_name,
        "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
    "spec": {
        "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
        "accessModes": claim["spec"]["accessModes"],
        "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
        "storageClassName": class_name,
        "volumeMode": "Filesystem",
        "csi": {"driver": PROVISIONER, "volumeHandle": volume_name},
        "claimRef": claim_ref(&claim),
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}]}},
    }});
    let created = match super::create(&ctx.client, VOLUMES, &volume).await {
        Ok(v) => v,
        // Made by an earlier pass whose binding lost a race: finish binding it.
        Err(e) if e.code() == Some(409) => {
            return match ctx.client.get(&format!("{VOLUMES}/{volume_name}")).await {
                Ok(v) if v["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"] => {
                    bind(ctx, &v, &claim).await
                }
                _ => Ok(Action::Await),
            };
        }
        Err(e) => {
            record(
                ctx,
                &claim,
                true,
                "ProvisioningFailed",
                &format!("failed to provision volume with StorageClass {class_name:?}: {e}"),
            );
            return Err(e);
        }
    };
    record(
        ctx,
        &claim,
        false,
        "ProvisioningSucceeded",
        &format!("Successfully provisioned volume {volume_name} on node {node_name}"),
    );
    bind(ctx, &created, &claim).await
}

fn claim_ref(claim: &Value) -> Value {
    json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"],
        "uid": claim["metadata"]["uid"], "resourceVersion": claim["metadata"]["resourceVersion"]})
}

fn least_used_node(ctx: &Ctx) -> Option<String> {
    let volumes = ctx.volumes.list();
    ctx.nodes
        .list()
        .into_iter()
        .filter(|n| super::condition(n, "Ready").is_some_and(|c| c["status"] == "True"))
        .filter(|n| n["spec"]["unschedulable"] != true)
        .min_by_key(|n| {
            let used = volumes
                .iter()
                .filter(|v| crate::scheduler::selects(&v["spec"]["nodeAffinity"]["required"], n))
                .count();
            (used, name(n).to_owned())
        })
        .map(|n| name(&n).to_owned())
}

/// Binds `volume` and `claim` to each other: the volume's claimRef and phase first, then the
/// claim's volumeName and status (so that a crash between leaves a claimRef the next pass
/// completes).
async fn bind(ctx: &Ctx, volume: &Value, claim: &Value) -> Result<Action, Error> {
    let volume_path = format!("{VOLUMES}/{}", name(volume));
    let mut written = Vec::new();
    if volume["spec"]["claimRef"]["uid"] != uid(claim) {
        let patch = json!({"metadata": {"resourceVersion": volume["metadata"]["resourceVersion"]},
            "spec": {"claimRef": claim_ref(claim)}});
        written.push(super::merge_patch(&ctx.client, &volume_path, &patch).await?);
    }
    if volume["status"]["phase"] != "Bound" {
        let status = json!({"status": {"phase": "Bound"}});
        written.push(
            super::merge_patch(&ctx.client, &format!("{volume_path}/status"), &status).await?,
        );
    }
    let path = claim_path(claim);
    if claim["spec"]["volumeName"] != volume["metadata"]["name"] {
        let patch = json!({"metadata": {"resourceVersion": claim["metadata"]["resourceVersion"],
            "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                            "pv.kubernetes.io/bound-by-controller": "yes"}},
            "spec": {"volumeName": volume["metadata"]["name"]}});
        written.push(super::merge_patch(&ctx.client, &path, &patch).await?);
    }
    let status = json!({"status": {"phase": "Bound", "accessModes": volume["spec"]["accessModes"],
        "capacity": volume["spec"]["capacity"]}});
    written.push(super::merge_patch(&ctx.client, &format!("{path}/status"), &status).await?);
    super::settle(&ctx.claims, &written).await;
    Ok(Action::Await)
}

/// Lets a terminating claim go once no pod that may still run uses it.
async fn release_protection(ctx: &Ctx, claim: &Value) -> Result<Action, Error> {
    let finalizers: Vec<Value> = claim["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == PVC_PROTECTION) {
        return Ok(Action::Await);
    }
    let in_use = ctx.pods.list_namespace(namespace(claim)).iter().any(|p| {
        // A pod not yet on a node cannot be using it (Kubernetes' rule too).
        let placed = p["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        placed && !finished(p) && claims_of(p).any(|c| c == name(claim))
    });
    if in_use {
        return Ok(Action::Await);
    }
    let rest: Vec<Value> = finalizers
        .into_iter()
        .filter(|f| f != PVC_PROTECTION)
        .collect();
    let patch = json!({"metadata": {"resourceVersion": claim["metadata"]["resourceVersion"],
        "finalizers": rest}});
    super::merge_patch(&ctx.client, &claim_path(claim), &patch).await?;
    Ok(Action::Await)
}

async fn reconcile_volume(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(volume) = ctx.volumes.get(key) else {
        return Ok(Action::Await);
    };
    let path = format!("{VOLUMES}/{}", name(&volume));
    let claim_ref = &volume["spec"]["claimRef"];
    if terminating(&volume) {
        // It goes once no claim is bound to it.
        let claim_key = format!(
            "{}/{}",
            claim_ref["namespace"].as_str().unwrap_or_default(),
            claim_ref["name"].as_str().unwrap_or_default()
        );
        let bound = ctx.claims.get(&claim_key).is_some_and(|c| {
            claim_ref["uid"] == c["metadata"]["uid"]
                && c["spec"]["volumeName"] == volume["metadata"]["name"]
        });
        let finalizers: Vec<Value> = volume["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !bound && finalizers.iter().any(|f| f == PV_PROTECTION) {
            let rest: Vec<Value> = finalizers
                .into_iter()
                .filter(|f| f != PV_PROTECTION)
                .collect();
            let patch = json!({"metadata": {"resourceVersion": volume["metadata"]["resourceVersion"],
                "finalizers": rest}});
            super::merge_patch(&ctx.client, &path, &patch).await?;
        }
        return Ok(Action::Await);
    }
    let phase = volume["status"]["phase"].as_str().unwrap_or_default();
    let set_phase = |phase: &'static str, message: &str| {
        let status = json!({"status": {"phase": phase, "message": message}});
        let path = format!("{path}/status");
        async move { super::merge_patch(&ctx.client, &path, &status).await }
    };
    if claim_ref.is_null() {
        if !matches!(phase, "Available" | "Released" | "Failed") {
            set_phase("Available", "").await?;
        }
        return Ok(Action::Await);
    }
    let claim_key = format!(
        "{}/{}",
        claim_ref["namespace"].as_str().unwrap_or_default(),
        claim_ref["name"].as_str().unwrap_or_default()
    );
    let bound_uid = claim_ref["uid"].as_str().unwrap_or_default();
    let claim = ctx.claims.get(&claim_key);
    let claim_there = claim
        .as_ref()
        .is_some_and(|c| bound_uid.is_empty() || uid(c) == bound_uid);
    if claim_there {
        if phase != "Bound"
            && claim
                .as_ref()
                .is_some_and(|c| c["spec"]["volumeName"] == volume["metadata"]["name"])
        {
            set_phase("Bound", "").await?;
        } else if phase != "Bound" && phase != "Available" {
            set_phase("Available", "").await?;
        }
        return Ok(Action::Await);
    }
    if bound_uid.is_empty() {
        // Pre-bound to a claim that does not exist yet.
        if phase != "Available" {
            set_phase("Available", "").await?;
        }
        return Ok(Action::Await);
    }
    // The cache says the claim is gone; the server must agree before anything is deleted.
    let live = ctx
        .client
        .get(&format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims/{}",
            claim_ref["namespace"].as_str().unwrap_or_default(),
            claim_ref["name"].as_str().unwrap_or_default()
        ))
        .await;
    match live {
        Ok(c) if uid(&c) == bound_uid => return Ok(Action::Await),
        Ok(_) => {}
        Err(e) if e.code() == Some(404) => {}
        Err(e) => return Err(e),
    }
    match volume["spec"]["persistentVolumeReclaimPolicy"].as_str() {
        Some("Delete")
            if volume["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"]
                == PROVISIONER =>
        {
            super::delete(&ctx.client, &path, "Background", Some(uid(&volume))).await?;
        }
        Some("Delete") => {
            if phase != "Failed" {
                set_phase("Failed", "error getting deleter volume plugin for volume: no deletable volume plugin matched").await?;
            }
        }
        _ => {
            if phase != "Released" {
                set_phase("Released", "").await?;
            }
        }
    }
    Ok(Action::Await)
}

fn record(ctx: &Ctx, claim: &Value, warning: bool, reason: &str, message: &str) {
    events::record_about(
        &ctx.client,
        claim,
        ("v1", "PersistentVolumeClaim"),
        COMPONENT,
        warning,
        reason,
        message,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(size: &str, class: &str) -> Value {
        json!({"metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}}})
    }

    fn volume(size: &str, class: &str, modes: Value) -> Value {
        json!({"metadata": {"name": "v", "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class},
            "status": {"phase": "Available"}})
    }

    #[test]
    fn a_volume_fits_a_claim_by_class_size_modes_selector_and_node() {
        let rwo = json!(["ReadWriteOnce"]);
        assert!(fits(
            &volume("1Gi", "slow", rwo.clone()),
            &claim("512Mi", "slow"),
            None
        ));
        assert!(!fits(
            &volume("256Mi", "slow", rwo.clone()),
            &claim("512Mi", "slow"),
            None
        ));
        assert!(!fits(
            &volume("1Gi", "fast", rwo.clone()),
            &claim("512Mi", "slow"),
            None
        ));
        assert!(!fits(
            &volume("1Gi", "slow", json!(["ReadOnlyMany"])),
            &claim("512Mi", "slow"),
            None
        ));
        let mut picky = claim("512Mi", "slow");
        picky["spec"]["selector"] = json!({"matchLabels": {"tier": "cold"}});
        assert!(!fits(&volume("1Gi", "slow", rwo.clone()), &picky, None));
        let mut taken = volume("1Gi", "slow", rwo.clone());
        taken["spec"]["claimRef"] = json!({"namespace": "ns", "name": "other", "uid": "u2"});
        assert!(!fits(&taken, &claim("512Mi", "slow"), None));
        // Half bound to this very claim (its own binding lost a race): still its volume; bound
        // to another, not.
        let mut half = volume("1Gi", "slow", rwo.clone());
        half["spec"]["claimRef"] = json!({"namespace": "ns", "name": "data", "uid": "u1"});
        half["status"]["phase"] = json!("Bound");
        assert!(fits(&half, &claim("512Mi", "slow"), None));
        half["spec"]["claimRef"]["uid"] = json!("u0");
        assert!(!fits(&half, &claim("512Mi", "slow"), None));
        let mut pinned = volume("1Gi", "slow", rwo);
        pinned["spec"]["nodeAffinity"]["required"] = json!({"nodeSelectorTerms": [{"matchExpressions":
            [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]});
        let node =
            |n: &str| json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}});
        assert!(fits(&pinned, &claim("1Gi", "slow"), Some(&node("a"))));
        assert!(!fits(&pinned, &claim("1Gi", "slow"), Some(&node("b"))));
    }
}
