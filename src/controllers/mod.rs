//! The controllers `wk server` runs in-process. Each is an API client like any other, and
//! level-triggered: it reads the current state from shared watch-fed caches
//! ([`crate::client::informer`]) and corrects it through the API, one queued key at a time.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podautoscaler;
pub mod replicaset;
pub mod resourcequota;
pub mod servicelb;
pub mod statefulset;
pub mod volume;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

/// The collection paths the controllers share informers for.
pub const PODS: &str = "/api/v1/pods";
/// ReplicaSets.
pub const REPLICASETS: &str = "/apis/apps/v1/replicasets";
/// Deployments.
pub const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
/// Nodes.
pub const NODES: &str = "/api/v1/nodes";

/// How long a controller waits for its own write to reach its cache before going on anyway.
pub const OWN_WRITES: Duration = Duration::from_secs(5);

/// The controllers' timings, as kube-controller-manager's flags set them.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a node may stay silent before it is unreachable.
    pub node_monitor_grace_period: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated.
    pub horizontal_pod_autoscaler_sync_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: nodelifecycle::GRACE,
            horizontal_pod_autoscaler_sync_period: podautoscaler::SYNC_PERIOD,
        }
    }
}

/// Starts the informer-based controllers that `enabled` lets through, and their informers:
/// fed by the API server's `cache` when they run in its process, else by watches.
pub fn start(
    client: &Client,
    cache: Option<Arc<crate::store::cache::Cache>>,
    enabled: &dyn Fn(&str) -> bool,
    settings: Settings,
    shutdown: &CancellationToken,
) {
    let informers = cache.map_or_else(Informers::default, Informers::local);
    if enabled("nodelifecycle") {
        nodelifecycle::start(
            client,
            &informers,
            settings.node_monitor_grace_period,
            shutdown,
        );
    }
    if enabled("replicaset") {
        replicaset::start(client, &informers, shutdown);
    }
    if enabled("deployment") {
        deployment::start(client, &informers, shutdown);
    }
    if enabled("statefulset") {
        statefulset::start(client, &informers, shutdown);
    }
    if enabled("daemonset") {
        daemonset::start(client, &informers, shutdown);
    }
    if enabled("endpoint") {
        endpoints::start(client, &informers, shutdown);
    }
    if enabled("endpointslice") {
        endpointslice::start(client, &informers, shutdown);
    }
    if enabled("servicelb") {
        servicelb::start(client, &informers, shutdown);
    }
    if enabled("disruption") {
        disruption::start(client, &informers, shutdown);
    }
    if enabled("job") {
        job::start(client, &informers, shutdown);
    }
    if enabled("cronjob") {
        cronjob::start(client, &informers, shutdown);
    }
    if enabled("horizontalpodautoscaling") {
        podautoscaler::start(
            client,
            &informers,
            settings.horizontal_pod_autoscaler_sync_period,
            shutdown,
        );
    }
    if enabled("persistentvolume-binder") {
        volume::start(client, &informers, shutdown);
    }
    if enabled("resourcequota") {
        resourcequota::start(client, &informers, shutdown);
    }
    if enabled("garbagecollector") {
        gc::start(client, &informers, shutdown);
    }
    informers.start(client, shutdown);
}

/// Queues an object's own key whenever it changes.
pub fn enqueue_self(informer: &Informer, queue: &Arc<Queue>) {
    let q = queue.clone();
    informer.on_change(move |old, new| {
        if let Some(o) = new.or(old) {
            q.add(key_of(o));
        }
    });
}

/// Queues the controller of each changed object when that controller is a `kind` (a pod's
/// ReplicaSet, a Job's CronJob).
pub fn enqueue_controller(informer: &Informer, queue: &Arc<Queue>, kind: &'static str) {
    let q = queue.clone();
    informer.on_change(move |old, new| {
        for object in [old, new].into_iter().flatten() {
            if let Some(r) = controller_of(object)
                && r["kind"] == kind
            {
                q.add(format!(
                    "{}/{}",
                    namespace(object),
                    r["name"].as_str().unwrap_or_default()
                ));
            }
        }
    });
}

/// Starts a controller's worker once `informers` have loaded: it reconciles each queued key
/// with `reconcile(ctx, key)` until `shutdown`.
pub fn run_worker<C, F, Fut>(
    name: &'static str,
    informers: Vec<Arc<Informer>>,
    queue: Arc<Queue>,
    shutdown: &CancellationToken,
    ctx: Arc<C>,
    reconcile: F,
) where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send,
{
    let shutdown = shutdown.child_token();
    tokio::spawn(async move {
        for informer in &informers {
            informer.wait_synced().await;
        }
        queue
            .work(name, shutdown, |key| reconcile(ctx.clone(), key))
            .await;
    });
}

/// `metadata.name`.
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// `metadata.namespace`.
pub fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// `metadata.uid`.
pub fn uid(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

/// The controller ownerReference of an object, if any.
pub fn controller_of(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}

/// Whether the controller of `object` is the `kind` with this uid.
pub fn controlled_by(object: &Value, kind: &str, owner_uid: &str) -> bool {
    controller_of(object).is_some_and(|r| r["kind"] == kind && r["uid"] == owner_uid)
}

/// A controller ownerReference to `owner`, an object of type `(apiVersion, kind)`.
pub fn owner_reference(owner: &Value, (api_version, kind): (&str, &str)) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// How an object made from a template is named.
pub enum Naming<'a> {
    /// This exact name (a StatefulSet's `web-0`, a CronJob's Job).
    Exactly(&'a str),
    /// A name the API server generates from this prefix.
    Generated(&'a str),
}

/// The metadata of an object made from `template` (its labels and annotations kept) for
/// `owner`, an object of type `(apiVersion, kind)`: in the owner's namespace, controlled by
/// it, and named as `naming` says.
pub fn metadata_from(
    owner: &Value,
    kind: (&str, &str),
    template: &Value,
    naming: Naming<'_>,
) -> Value {
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    if let Some(m) = metadata.as_object_mut() {
        m.remove("name");
        m.remove("generateName");
        m.remove("creationTimestamp");
    }
    match naming {
        Naming::Exactly(n) => metadata["name"] = json!(n),
        Naming::Generated(prefix) => metadata["generateName"] = json!(prefix),
    }
    metadata["namespace"] = json!(namespace(owner));
    metadata["ownerReferences"] = json!([owner_reference(owner, kind)]);
    metadata
}

/// Whether the object has a deletionTimestamp.
pub fn terminating(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

/// Whether a pod has finished (Succeeded or Failed).
pub fn finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// The status condition of this type.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Whether a pod is Ready.
pub fn ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Whether a ready pod has been ready for `min_ready` seconds at `now`.
pub fn available(pod: &Value, min_ready: i64, now: jiff::Timestamp) -> bool {
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

/// A JSON merge patch of `path`.
///
/// # Errors
/// As [`Client::request`]; a resourceVersion in the patch makes it conditional (409).
pub async fn merge_patch(client: &Client, path: &str, patch: &Value) -> Result<Value, Error> {
    client
        .request(
            Method::PATCH,
            path,
            Some("application/merge-patch+json"),
            Some(patch.to_string().into_bytes()),
        )
        .await
}

/// Posts `object` to the collection at `path` for `owner` (with its type and the component
/// that acts for it). A refusal other than a name already taken becomes a `FailedCreate`
/// Warning event on the owner, carrying the server's message (a quota exceeded, a LimitRange
/// bound), as Kubernetes' controllers report it.
///
/// # Errors
/// As [`Client::request`].
pub async fn create_for(
    client: &Client,
    (owner, kind, component): (&Value, (&str, &str), &str),
    path: &str,
    object: &Value,
) -> Result<Value, Error> {
    let result = create(client, path, object).await;
    if let Err(e) = &result
        && e.code() != Some(409)
    {
        let message = message_of(e);
        crate::client::events::record_about(
            client,
            owner,
            kind,
            component,
            true,
            "FailedCreate",
            &format!("Error creating: {message}"),
        );
    }
    result
}

/// What went wrong, as events and conditions quote it: the server's message for a refusal.
pub fn message_of(e: &Error) -> String {
    match e {
        Error::Status { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Posts `object` to the collection at `path`.
///
/// # Errors
/// As [`Client::request`].
pub async fn create(client: &Client, path: &str, object: &Value) -> Result<Value, Error> {
    client
        .request(
            Method::POST,
            path,
            Some("application/json"),
            Some(object.to_string().into_bytes()),
        )
        .await
}

/// Deletes the object at `path` with a propagation policy (and a uid precondition when
/// given); a 404 counts as done and gives `None`.
///
/// # Errors
/// As [`Client::request`].
pub async fn delete(
    client: &Client,
    path: &str,
    propagation: &str,
    uid: Option<&str>,
) -> Result<Option<Value>, Error> {
    let mut options = json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "propagationPolicy": propagation});
    if let Some(uid) = uid {
        options["preconditions"] = json!({"uid": uid});
    }
    match client
        .request(
            Method::DELETE,
            path,
            Some("application/json"),
            Some(options.to_string().into_bytes()),
        )
        .await
    {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until `informer` has seen the newest of `written` (objects this controller wrote).
pub async fn settle(informer: &Arc<Informer>, written: &[Value]) {
    let rv = written
        .iter()
        .map(crate::client::informer::revision)
        .max()
        .unwrap_or(0);
    if rv > 0 && !informer.wait_for(rv, OWN_WRITES).await {
        tracing::debug!(path = informer.path(), rv, "own write not seen in time");
    }
}
