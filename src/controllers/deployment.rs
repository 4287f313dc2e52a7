//! The Deployment controller, as kube-controller-manager's: each Deployment owns one
//! ReplicaSet per pod template it has had (named `<deployment>-<pod-template-hash>`), scales
//! the current one up and the old ones down by its strategy (RollingUpdate within maxSurge and
//! maxUnavailable, or Recreate), numbers them with revision annotations, keeps
//! revisionHistoryLimit old ones, and reports progress with the Available and Progressing
//! conditions. A rollback (`kubectl rollout undo`) writes an old template back; the template is
//! matched to its ReplicaSet semantically, so that ReplicaSet is scaled up again and gets the
//! next revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{controlled_by, controller_of, name, namespace, settle, terminating, uid};
use crate::api::selector::LabelSelector as Selector;
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error, events};

/// The ReplicaSet (and Deployment) annotation with the revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label that tells the ReplicaSets of a Deployment apart.
pub const HASH_LABEL: &str = "pod-template-hash";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";

const KIND: (&str, &str) = ("apps/v1", "Deployment");

struct Ctx {
    client: Client,
    deployments: Arc<Informer>,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        deployments: informers.get(super::DEPLOYMENTS),
        sets: informers.get(super::REPLICASETS),
        pods: informers.get(super::PODS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.deployments, &queue);
    let (q, deployments) = (queue.clone(), ctx.deployments.clone());
    ctx.sets.on_change(move |old, new| {
        for rs in [old, new].into_iter().flatten() {
            match controller_of(rs) {
                Some(r) if r["kind"] == "Deployment" => {
                    q.add(format!(
                        "{}/{}",
                        namespace(rs),
                        r["name"].as_str().unwrap_or_default()
                    ));
                }
                Some(_) => {}
                None => {
                    let labels = rs["metadata"]["labels"].as_object();
                    for d in deployments.list_namespace(namespace(rs)) {
                        if Selector::from_json(&d["spec"]["selector"])
                            .is_ok_and(|s| !s.is_empty() && s.matches(labels))
                        {
                            q.add(key_of(&d));
                        }
                    }
                }
            }
        }
    });
    // Recreate waits for the old pods to go: their deletions wake the Deployment.
    let (q, sets) = (queue.clone(), ctx.sets.clone());
    ctx.pods.on_change(move |old, new| {
        if let (Some(pod), None) = (old, new)
            && let Some(r) = controller_of(pod)
            && r["kind"] == "ReplicaSet"
            && let Some(rs) = sets.get(&format!(
                "{}/{}",
                namespace(pod),
                r["name"].as_str().unwrap_or_default()
            ))
            && let Some(d) = controller_of(&rs)
            && d["kind"] == "Deployment"
        {
            q.add(format!(
                "{}/{}",
                namespace(pod),
                d["name"].as_str().unwrap_or_default()
            ));
        }
    });
    let informers = vec![ctx.deployments.clone(), ctx.sets.clone(), ctx.pods.clone()];
    super::run_worker(
        "deployment",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// A pod template with what does not change its meaning taken out: nulls, zero values
/// (`false`, `0`, `""`, as Go's structs leave them out), empty objects and lists,
/// `creationTimestamp`, and the `pod-template-hash` label. Keys are sorted, so equal
/// templates serialise alike (the hash is computed over this).
fn semantic(template: &Value) -> Value {
    fn prune(v: &Value) -> Option<Value> {
        match v {
            Value::Null | Value::Bool(false) => None,
            Value::Number(n) if n.as_f64() == Some(0.0) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> = m
                    .iter()
                    .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                    .collect();
                if sorted.is_empty() {
                    return None;
                }
                Some(Value::Object(
                    sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect(),
                ))
            }
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(
                a.iter().map(|v| prune(v).unwrap_or(json!({}))).collect(),
            )),
            other => Some(other.clone()),
        }
    }
    let mut t = template.clone();
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("creationTimestamp");
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(HASH_LABEL);
        }
    }
    prune(&t).unwrap_or(json!({}))
}

/// Whether a ReplicaSet's template is the Deployment's template.
pub fn same_template(rs_template: &Value, template: &Value) -> bool {
    semantic(rs_template) == semantic(template)
}

/// The `pod-template-hash` of a template: FNV-1a over its semantic form (and the collision
/// count), written in Kubernetes' safe alphabet, so names never spell words.
pub fn template_hash(template: &Value, collisions: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(semantic(template).to_string().as_bytes());
    if collisions > 0 {
        feed(&collisions.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// The revision annotation of a ReplicaSet or Deployment (0 without one).
pub fn revision_of(rs: &Value) -> u64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(object: &Value) -> i64 {
    object["spec"]["replicas"].as_i64().unwrap_or(1).max(0)
}

fn status_count(object: &Value, field: &str) -> i64 {
    object["status"][field].as_i64().unwrap_or(0)
}

/// An int-or-percent field resolved against `total`, rounding up or down.
fn resolve(value: &Value, total: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = total * pct;
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        _ => 0,
    }
}

/// maxSurge and maxUnavailable of a RollingUpdate Deployment, as numbers. Both zero would
/// never progress, so maxUnavailable is then 1, as Kubernetes does.
fn surge_and_unavailable(d: &Value) -> (i64, i64) {
    let replicas = spec_replicas(d);
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = resolve(ru.get("maxSurge").unwrap_or(&json!("25%")), replicas, true);
    let unavailable = resolve(
        ru.get("maxUnavailable").unwrap_or(&json!("25%")),
        replicas,
        false,
    )
    .min(replicas);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// One Deployment's view of the world in a pass.
struct Rollout<'a> {
    ctx: &'a Ctx,
    d: &'a Value,
    new: Option<Arc<Value>>,
    old: Vec<Arc<Value>>,
    written: Vec<Value>,
    /// Whether the new ReplicaSet was made in this pass.
    created: bool,
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(d) = ctx.deployments.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&d) {
        return Ok(Action::Await);
    }
    let Ok(selector) = Selector::from_json(&d["spec"]["selector"]) else {
        return Ok(Action::Await);
    };
    if selector.is_empty() {
        return Ok(Action::Await);
    }
    let mut r = Rollout {
        ctx,
        d: &d,
        new: None,
        old: Vec::new(),
        written: Vec::new(),
        created: false,
    };
    let result = r.sync(&selector).await;
    settle(&ctx.sets, &r.written).await;
    result?;
    r.status().await
}

impl Rollout<'_> {
    fn path(&self, rs: &Value) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/replicasets/{}",
            namespace(self.d),
            name(rs)
        )
    }

    async fn sync(&mut self, selector: &Selector) -> Result<(), Error> {
        let d = self.d;
        let mut sets = Vec::new();
        for rs in self.ctx.sets.list_namespace(namespace(d)) {
            let labels = rs["metadata"]["labels"].as_object();
            match controller_of(&rs) {
                Some(r) if r["uid"] == uid(d) => {
                    if selector.matches(labels) {
                        sets.push(rs);
                    } else {
                        self.set_owners(&rs, false).await?;
                    }
                }
                None if !terminating(&rs) && selector.matches(labels) => {
                    let adopted = self.set_owners(&rs, true).await?;
                    sets.push(Arc::new(adopted));
                }
                _ => {}
            }
        }
        let template = &d["spec"]["template"];
        let (new, old): (Vec<_>, Vec<_>) = sets
            .into_iter()
            .partition(|rs| same_template(&rs["spec"]["template"], template));
        // Two sets for one template (only by hand): the oldest is the current one.
        let mut new = new;
        new.sort_by_key(|rs| {
            rs["metadata"]["creationTimestamp"]
                .as_str()
                .map(str::to_owned)
        });
        let mut extra = new.split_off(new.len().min(1));
        self.new = new.pop();
        self.old = old;
        self.old.append(&mut extra);
        self.old.sort_by_key(|rs| revision_of(rs));
        if d["spec"]["paused"] == true {
            // A paused Deployment still follows its size, but rolls nothing out: its one
            // active set (or, with none, the newest) takes the new size.
            let active: Vec<Arc<Value>> = self
                .all()
                .filter(|s| spec_replicas(s) > 0)
                .cloned()
                .collect();
            let target = match active.as_slice() {
                [one] => Some(one.clone()),
                [] => self.new.clone().or_else(|| self.old.last().cloned()),
                _ => None,
            };
            if let Some(rs) = target
                && spec_replicas(&rs) != spec_replicas(d)
            {
                self.scale(&rs, spec_replicas(d)).await?;
            }
            return Ok(());
        }
        if d["spec"]["strategy"]["type"] == "Recreate" {
            self.recreate().await?;
        } else {
            self.rolling().await?;
        }
        self.clean_history().await
    }

    /// Adopts (or releases) a ReplicaSet, conditional on the version read.
    async fn set_owners(&self, rs: &Value, adopt: bool) -> Result<Value, Error> {
        let mut refs: Vec<Value> = rs["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["uid"] != uid(self.d))
            .cloned()
            .collect();
        if adopt {
            refs.push(super::owner_reference(self.d, KIND));
        }
        let refs = if refs.is_empty() {
            Value::Null
        } else {
            Value::Array(refs)
        };
        let patch = json!({"metadata": {
            "resourceVersion": rs["metadata"]["resourceVersion"], "ownerReferences": refs}});
        super::merge_patch(&self.ctx.client, &self.path(rs), &patch).await
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Value>> {
        self.old.iter().chain(self.new.iter())
    }

    /// The revision the current ReplicaSet should have: one past every old one.
    fn next_revision(&self) -> u64 {
        self.old.iter().map(|rs| revision_of(rs)).max().unwrap_or(0) + 1
    }

    /// The annotations the current ReplicaSet carries: the Deployment's own (its change-cause
    /// above all), its revision, and the sizes it was scaled for.
    fn annotations(&self, revision: u64, current: &Value) -> Map<String, Value> {
        let mut a: Map<String, Value> = current.as_object().cloned().unwrap_or_default();
        for (k, v) in self.d["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if !matches!(
                k.as_str(),
                "kubectl.kubernetes.io/last-applied-configuration"
                    | REVISION
                    | REVISION_HISTORY
                    | DESIRED
                    | MAX_REPLICAS
            ) {
                a.insert(k.clone(), v.clone());
            }
        }
        let old = revision_of(&json!({"metadata": {"annotations": current}}));
        if old != revision {
            if old > 0 {
                // A rollback: the set remembers the revisions it has been.
                let history = current[REVISION_HISTORY]
                    .as_str()
                    .map_or(old.to_string(), |h| format!("{h},{old}"));
                a.insert(REVISION_HISTORY.into(), json!(history));
            }
            a.insert(REVISION.into(), json!(revision.to_string()));
        }
        let (surge, _) = self.surge_and_unavailable();
        a.insert(DESIRED.into(), json!(spec_replicas(self.d).to_string()));
        a.insert(
            MAX_REPLICAS.into(),
            json!((spec_replicas(self.d) + surge).to_string()),
        );
        a
    }

    fn surge_and_unavailable(&self) -> (i64, i64) {
        if self.d["spec"]["strategy"]["type"] == "Recreate" {
            (0, 0)
        } else {
            surge_and_unavailable(self.d)
        }
    }

    /// Makes the current ReplicaSet with `replicas`, or brings the one there is up to date
    /// (revision and annotations) and to `replicas`.
    async fn ensure_new(&mut self, replicas: i64) -> Result<(), Error> {
        let d = self.d;
        let revision = self.next_revision();
        if let Some(rs) = self.new.clone() {
            let revision = if revision_of(&rs) >= revision {
                revision_of(&rs)
            } else {
                revision
            };
            let annotations = self.annotations(revision, &rs["metadata"]["annotations"]);
            let changed = rs["metadata"]["annotations"].as_object() != Some(&annotations)
                || spec_replicas(&rs) != replicas
                || rs["spec"]["minReadySeconds"] != d["spec"]["minReadySeconds"];
            if changed {
                let patch = json!({
                    "metadata": {"resourceVersion": rs["metadata"]["resourceVersion"],
                                 "annotations": annotations},
                    "spec": {"replicas": replicas, "minReadySeconds": d["spec"]["minReadySeconds"]},
                });
                let updated = super::merge_patch(&self.ctx.client, &self.path(&rs), &patch).await?;
                self.scaled_event(&rs, spec_replicas(&rs), replicas);
                self.written.push(updated.clone());
                self.new = Some(Arc::new(updated));
            }
            self.set_deployment_revision(revision).await?;
            return Ok(());
        }
        let collisions = d["status"]["collisionCount"].as_u64().unwrap_or(0);
        let hash = template_hash(&d["spec"]["template"], collisions);
        let mut template = d["spec"]["template"].clone();
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        if let Some(m) = template["metadata"].as_object_mut() {
            m.remove("creationTimestamp");
        }
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let rs_name = format!("{}-{hash}", name(d));
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name, "namespace": namespace(d),
                "labels": template["metadata"]["labels"],
                "annotations": self.annotations(revision, &json!({})),
                "ownerReferences": [super::owner_reference(d, KIND)],
            },
            "spec": {"replicas": replicas, "minReadySeconds": d["spec"]["minReadySeconds"],
                     "selector": selector, "template": template},
        });
        let path = format!("/apis/apps/v1/namespaces/{}/replicasets", namespace(d));
        match super::create(&self.ctx.client, &path, &rs).await {
            Ok(created) => {
                self.scaled_event(&created, 0, replicas);
                self.written.push(created.clone());
                self.new = Some(Arc::new(created));
                self.created = true;
                self.set_deployment_revision(revision).await
            }
            Err(e) if e.code() == Some(409) => {
                // A set of that name exists. Ours with this template: the cache is behind.
                // Anything else: a hash collision; the next name uses a new count.
                let existing = self.ctx.client.get(&self.path(&rs)).await?;
                if controlled_by(&existing, "Deployment", uid(d))
                    && same_template(&existing["spec"]["template"], &d["spec"]["template"])
                {
                    return Err(e);
                }
                let patch = json!({"status": {"collisionCount": collisions + 1}});
                super::merge_patch(&self.ctx.client, &self.status_path(), &patch).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn status_path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/deployments/{}/status",
            namespace(self.d),
            name(self.d)
        )
    }

    /// The Deployment carries its current revision too (`kubectl rollout history` reads sets).
    async fn set_deployment_revision(&mut self, revision: u64) -> Result<(), Error> {
        if revision_of(self.d) == revision {
            return Ok(());
        }
        let path = format!(
            "/apis/apps/v1/namespaces/{}/deployments/{}",
            namespace(self.d),
            name(self.d)
        );
        let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        super::merge_patch(&self.ctx.client, &path, &patch)
            .await
            .map(drop)
    }

    fn scaled_event(&self, rs: &Value, from: i64, to: i64) {
        if from == to {
            return;
        }
        let way = if to > from { "up" } else { "down" };
        events::record_normal(
            &self.ctx.client,
            self.d,
            KIND,
            "deployment-controller",
            "ScalingReplicaSet",
            &format!("Scaled {way} replica set {} from {from} to {to}", name(rs)),
        );
    }

    async fn scale(&mut self, rs: &Arc<Value>, replicas: i64) -> Result<(), Error> {
        let from = spec_replicas(rs);
        if from == replicas {
            return Ok(());
        }
        let mut patch = json!({
            "metadata": {"resourceVersion": rs["metadata"]["resourceVersion"]},
            "spec": {"replicas": replicas},
        });
        if replicas > 0 {
            let (surge, _) = self.surge_and_unavailable();
            patch["metadata"]["annotations"] = json!({
                DESIRED: spec_replicas(self.d).to_string(),
                MAX_REPLICAS: (spec_replicas(self.d) + surge).to_string(),
            });
        }
        let updated = super::merge_patch(&self.ctx.client, &self.path(rs), &patch).await?;
        self.scaled_event(rs, from, replicas);
        self.written.push(updated.clone());
        let updated = Arc::new(updated);
        if self.new.as_ref().is_some_and(|n| uid(n) == uid(rs)) {
            self.new = Some(updated);
        } else if let Some(o) = self.old.iter_mut().find(|o| uid(o) == uid(rs)) {
            *o = updated;
        }
        Ok(())
    }

    /// Recreate: every old pod goes before any new one starts.
    async fn recreate(&mut self) -> Result<(), Error> {
        let active: Vec<Arc<Value>> = self
            .old
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .cloned()
            .collect();
        for rs in &active {
            self.scale(rs, 0).await?;
        }
        let running = self.old.iter().any(|rs| {
            self.ctx
                .pods
                .owned_by(uid(rs))
                .iter()
                .any(|p| !super::finished(p))
        });
        if !active.is_empty() || running {
            return Ok(());
        }
        self.ensure_new(spec_replicas(self.d)).await
    }

    /// RollingUpdate: the new set grows within maxSurge, the old ones shrink within
    /// maxUnavailable (kube-controller-manager's `rolloutRolling`).
    async fn rolling(&mut self) -> Result<(), Error> {
        let replicas = spec_replicas(self.d);
        let (surge, unavailable) = self.surge_and_unavailable();
        let total: i64 = self.all().map(|rs| spec_replicas(rs)).sum();
        let current = self.new.as_ref().map_or(0, |rs| spec_replicas(rs));
        let wanted = if current >= replicas {
            replicas
        } else {
            let room = (replicas + surge - total).max(0);
            current + room.min(replicas - current)
        };
        self.ensure_new(wanted).await?;
        if wanted > current {
            // Scaled up: the old sets are looked at once the new pods show.
            return Ok(());
        }
        // Scale the old sets down, keeping replicas - maxUnavailable available.
        let old_total: i64 = self.old.iter().map(|rs| spec_replicas(rs)).sum();
        if old_total == 0 {
            return Ok(());
        }
        let all_total: i64 = self.all().map(|rs| spec_replicas(rs)).sum();
        let min_available = replicas - unavailable;
        let new_unavailable = self.new.as_ref().map_or(0, |rs| {
            (spec_replicas(rs) - status_count(rs, "availableReplicas")).max(0)
        });
        let mut budget = all_total - min_available - new_unavailable;
        if budget <= 0 {
            return Ok(());
        }
        // Unhealthy old pods go first: they count for nothing.
        let old = self.old.clone();
        for rs in &old {
            if budget <= 0 {
                break;
            }
            let unhealthy = spec_replicas(rs) - status_count(rs, "availableReplicas");
            if unhealthy <= 0 {
                continue;
            }
            let cut = unhealthy.min(budget);
            self.scale(rs, spec_replicas(rs) - cut).await?;
            budget -= cut;
        }
        // Then available ones, oldest first, as far as availability allows.
        let available: i64 = self
            .all()
            .map(|rs| status_count(rs, "availableReplicas"))
            .sum();
        let mut budget = (available - min_available).max(0);
        let old = self.old.clone();
        for rs in &old {
            if budget <= 0 {
                break;
            }
            let cut = spec_replicas(rs).min(budget);
            if cut > 0 {
                self.scale(rs, spec_replicas(rs) - cut).await?;
                budget -= cut;
            }
        }
        Ok(())
    }

    /// Deletes the oldest scaled-down sets beyond revisionHistoryLimit.
    async fn clean_history(&mut self) -> Result<(), Error> {
        let limit = self.d["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0);
        let idle: Vec<Arc<Value>> = self
            .old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0 && status_count(rs, "replicas") == 0 && !terminating(rs)
            })
            .cloned()
            .collect();
        let excess = idle
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for rs in idle.iter().take(excess) {
            if let Some(gone) = super::delete(
                &self.ctx.client,
                &self.path(rs),
                "Background",
                Some(uid(rs)),
            )
            .await?
            {
                self.written.push(gone);
            }
        }
        Ok(())
    }

    /// Writes the Deployment's status from its sets, with the Available and Progressing
    /// conditions; asks to look again when the progress deadline falls due.
    async fn status(&self) -> Result<Action, Error> {
        let d = self.d;
        let replicas = spec_replicas(d);
        let (_, unavailable) = self.surge_and_unavailable();
        let sum = |f: &str| -> i64 { self.all().map(|rs| status_count(rs, f)).sum() };
        let total: i64 = self.all().map(|rs| spec_replicas(rs)).sum();
        let actual = sum("replicas");
        let updated = self
            .new
            .as_ref()
            .map_or(0, |rs| status_count(rs, "replicas"));
        let available = sum("availableReplicas");
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"].as_i64().unwrap_or(1),
            "replicas": actual,
            "updatedReplicas": updated,
            "readyReplicas": sum("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": (total - available).max(0),
        });
        if let Some(c) = d["status"]["collisionCount"].as_u64() {
            status["collisionCount"] = json!(c);
        }
        let now = crate::agent::status::now();
        let old_conditions = d["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let find = |t: &str| old_conditions.iter().find(|c| c["type"] == t).cloned();
        let set = |t: &str, state: &str, reason: &str, message: String, progressed: bool| {
            let old = find(t);
            let same = old.as_ref().is_some_and(|o| {
                o["status"] == state && o["reason"] == reason && o["message"] == message.as_str()
            });
            if same && !progressed {
                return old.unwrap_or_default();
            }
            let transition = match &old {
                Some(o) if o["status"] == state => o["lastTransitionTime"].clone(),
                _ => json!(now),
            };
            json!({"type": t, "status": state, "reason": reason, "message": message,
                   "lastUpdateTime": now, "lastTransitionTime": transition})
        };
        let updating = || {
            set(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!(
                    "ReplicaSet \"{}\" is progressing.",
                    self.new.as_ref().map_or("", |rs| name(rs))
                ),
                true,
            )
        };
        let available_condition = if available >= replicas - unavailable {
            set(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            )
        } else {
            set(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            )
        };
        let rs_name = self
            .new
            .as_ref()
            .map(|rs| name(rs).to_owned())
            .unwrap_or_default();
        let deadline = d["spec"]["progressDeadlineSeconds"].as_i64();
        let complete = updated == replicas
            && available == replicas
            && actual == replicas
            && self.new.is_some();
        let progressed = updated > status_count(d, "updatedReplicas")
            || status_count(&status, "readyReplicas") > status_count(d, "readyReplicas")
            || available > status_count(d, "availableReplicas")
            || (status_count(d, "replicas") - status_count(d, "updatedReplicas"))
                > (actual - updated);
        let mut requeue = None;
        let progressing = if d["spec"]["paused"] == true {
            Some(set(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            ))
        } else if deadline.is_none() {
            None
        } else if complete {
            Some(set(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                false,
            ))
        } else if self.created {
            Some(set(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs_name}\""),
                false,
            ))
        } else if find("Progressing").is_some_and(|c| c["reason"] == "DeploymentPaused") {
            Some(set(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                false,
            ))
        } else if progressed {
            Some(updating())
        } else {
            // No progress: has the deadline passed since the last?
            let last = find("Progressing").and_then(|c| {
                c["lastUpdateTime"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            });
            let deadline = deadline.unwrap_or(600);
            let since = last.map_or(0, |t| crate::clock::now().as_second() - t.as_second());
            if last.is_some() && since >= deadline {
                Some(set(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    false,
                ))
            } else {
                if find("Progressing").is_none_or(|c| c["reason"] != "ProgressDeadlineExceeded") {
                    requeue = Some(Duration::from_secs(
                        u64::try_from(deadline - since).unwrap_or(1).max(1),
                    ));
                }
                find("Progressing").or_else(|| Some(updating()))
            }
        };
        let mut conditions = vec![available_condition];
        conditions.extend(progressing);
        status["conditions"] = json!(conditions);
        if d["status"] != status {
            let patch = json!({"status": status});
            let written = super::merge_patch(&self.ctx.client, &self.status_path(), &patch).await?;
            settle(&self.ctx.deployments, &[written]).await;
        }
        Ok(requeue.map_or(Action::Await, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_semantically_not_byte_for_byte() {
        let stored = json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {"containers": [{"name": "web", "image": "w:1", "resources": {}}]}});
        // What `kubectl rollout undo` writes back.
        let undo = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
            "spec": {"containers": [{"image": "w:1", "name": "web", "ports": [], "tty": false}],
                     "hostNetwork": false}});
        assert!(same_template(&stored, &undo));
        assert_eq!(template_hash(&stored, 0), template_hash(&undo, 0));
        let other = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "w:2"}]}});
        assert!(!same_template(&stored, &other));
        assert_ne!(template_hash(&other, 0), template_hash(&undo, 0));
        assert_ne!(template_hash(&undo, 1), template_hash(&undo, 0));
        assert!(
            template_hash(&undo, 0)
                .bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes_does() {
        let d = |replicas: i64, surge: Value, unavailable: Value| {
            json!({"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}})
        };
        assert_eq!(
            surge_and_unavailable(&d(10, json!("25%"), json!("25%"))),
            (3, 2)
        );
        assert_eq!(surge_and_unavailable(&d(3, json!(1), json!(0))), (1, 0));
        assert_eq!(
            surge_and_unavailable(&d(1, json!("0%"), json!("0%"))),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(&json!({"spec": {"replicas": 4}})),
            (1, 1)
        );
    }
}
