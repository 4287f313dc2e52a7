//! The garbage collector, as kube-controller-manager's: an object whose owners
//! (ownerReferences) are all gone is deleted; one with some owners gone loses those
//! references. Deletion with `propagationPolicy: Foreground` leaves the owner with the
//! `foregroundDeletion` finalizer until its dependents that block owner deletion are gone;
//! `Orphan` leaves the `orphan` finalizer until its dependents no longer name it.
//!
//! It watches every kind that can own or be owned (not Events or Namespaces). A missing owner
//! is looked up live before its dependents go: the cache may not have seen it yet. Pods bound
//! to a node that no longer exists are deleted at once, as no agent will stop them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{name, namespace, terminating, uid};
use crate::api::resources::object_path;
use crate::api::resources::{RESOURCES, ResourceInfo, by_kind};
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

/// The finalizer that holds an owner until its dependents are deleted.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that holds an owner until its dependents are released.
pub const ORPHAN: &str = "orphan";

struct Kind {
    res: &'static ResourceInfo,
    informer: Arc<Informer>,
}

struct Ctx {
    client: Client,
    kinds: HashMap<&'static str, Kind>,
}

impl Ctx {
    fn kind(&self, kind: &str) -> Option<&Kind> {
        self.kinds.get(kind)
    }

    /// Every cached object that names `owner_uid` as an owner, with its kind.
    fn dependents(&self, owner_uid: &str) -> Vec<(&'static str, Arc<Value>)> {
        self.kinds
            .iter()
            .flat_map(|(k, kind)| {
                kind.informer
                    .owned_by(owner_uid)
                    .into_iter()
                    .map(move |o| (*k, o))
            })
            .collect()
    }
}

fn finalizers(object: &Value) -> Vec<&str> {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn owners(object: &Value) -> &[Value] {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// Registers the collector's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let kinds = RESOURCES
        .iter()
        .filter(|r| !matches!(r.kind, "Event" | "Namespace"))
        .map(|res| {
            let informer = informers.get(&crate::api::resources::collection_path(res, None));
            (res.kind, Kind { res, informer })
        })
        .collect();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        kinds,
    });
    let queue = Queue::new();
    for (kind, k) in &ctx.kinds {
        let (q, c, kind) = (queue.clone(), Arc::downgrade(&ctx), *kind);
        k.informer.on_change(move |old, new| {
            let Some(ctx) = c.upgrade() else { return };
            match (old, new) {
                (_, Some(new)) => {
                    // A pod bound to a node that is not there (the node left while the
                    // controller was down).
                    if kind == "Pod"
                        && old.is_none_or(|o| o["spec"]["nodeName"] != new["spec"]["nodeName"])
                        && let Some(node) =
                            new["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
                        && ctx
                            .kind("Node")
                            .is_some_and(|k| k.informer.synced() && k.informer.get(node).is_none())
                    {
                        q.add(format!("{POD_GC}|{node}"));
                    }
                    let refs_changed = old.is_none_or(|o| owners(o) != owners(new));
                    let deleting = terminating(new)
                        && finalizers(new)
                            .iter()
                            .any(|f| *f == FOREGROUND || *f == ORPHAN);
                    if (refs_changed && !owners(new).is_empty()) || deleting {
                        q.add(format!("{kind}|{}", key_of(new)));
                    }
                    // A dependent going away may free an owner held in the foreground.
                    if terminating(new) {
                        wake_owners(&ctx, &q, new);
                    }
                }
                (Some(old), None) => {
                    if kind == "Node" {
                        q.add(format!("{POD_GC}|{}", name(old)));
                    }
                    for (k, dependent) in ctx.dependents(uid(old)) {
                        q.add(format!("{k}|{}", key_of(&dependent)));
                    }
                    wake_owners(&ctx, &q, old);
                }
                (None, None) => {}
            }
        });
    }
    let shutdown = shutdown.child_token();
    // Now and then, pods of nodes that are gone are looked for again (a binding can race a
    // node's deletion), as the pod garbage collector's 20 s period.
    let (q, c, stop) = (queue.clone(), Arc::downgrade(&ctx), shutdown.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POD_GC_PERIOD);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(ctx) = c.upgrade() else { return };
            let (Some(pods), Some(nodes)) = (ctx.kind("Pod"), ctx.kind("Node")) else {
                return;
            };
            if !nodes.informer.synced() {
                continue;
            }
            let gone: std::collections::BTreeSet<String> = pods
                .informer
                .list()
                .iter()
                .filter_map(|p| {
                    p["spec"]["nodeName"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                })
                .filter(|n| nodes.informer.get(n).is_none())
                .collect();
            for node in gone {
                q.add(format!("{POD_GC}|{node}"));
            }
        }
    });
    tokio::spawn(async move {
        for kind in ctx.kinds.values() {
            kind.informer.wait_synced().await;
        }
        queue
            .work("garbagecollector", shutdown, |key| {
                let ctx = ctx.clone();
                async move { reconcile(&ctx, &key).await }
            })
            .await;
    });
}

/// Queues the owners of `object` that wait in the foreground for their dependents.
fn wake_owners(ctx: &Ctx, q: &Queue, object: &Value) {
    for r in owners(object) {
        let (Some(kind), Some(owner_uid)) = (r["kind"].as_str(), r["uid"].as_str()) else {
            continue;
        };
        if let Some(k) = ctx.kind(kind)
            && let Some(owner) = k.informer.by_uid(owner_uid)
            && terminating(&owner)
        {
            q.add(format!("{kind}|{}", key_of(&owner)));
        }
    }
}

fn path_of(res: &ResourceInfo, object: &Value) -> String {
    let ns = Some(namespace(object)).filter(|n| !n.is_empty());
    object_path(res, ns, name(object))
}

/// What became of one owner reference.
enum Owner {
    /// It exists and is not being deleted in the foreground.
    Alive,
    /// It is being deleted in the foreground: its dependents go first.
    Foreground,
    /// It does not exist (or is another object under the same name).
    Gone,
}

async fn owner_state(ctx: &Ctx, object: &Value, r: &Value) -> Result<Owner, Error> {
    let kind = r["kind"].as_str().unwrap_or_default();
    let owner_uid = r["uid"].as_str().unwrap_or_default();
    // A kind wk does not serve cannot be checked: the reference is left alone.
    let Some(res) = ctx.kind(kind).map(|k| k.res).or_else(|| by_kind(kind)) else {
        return Ok(Owner::Alive);
    };
    let state = |owner: &Value| {
        if terminating(owner) && finalizers(owner).contains(&FOREGROUND) {
            Owner::Foreground
        } else {
            Owner::Alive
        }
    };
    if let Some(owner) = ctx.kind(kind).and_then(|k| k.informer.by_uid(owner_uid)) {
        return Ok(state(&owner));
    }
    // Not cached: it may be too new for the cache. Ask the server.
    let ns = res.namespaced.then(|| namespace(object));
    let path = object_path(res, ns, r["name"].as_str().unwrap_or_default());
    match ctx.client.get(&path).await {
        Ok(owner) if uid(&owner) == owner_uid => Ok(state(&owner)),
        Ok(_) => Ok(Owner::Gone),
        Err(e) if e.code() == Some(404) => Ok(Owner::Gone),
        Err(e) => Err(e),
    }
}

/// The queue key prefix for a node whose pods are to be collected.
const POD_GC: &str = "pod-gc";
/// How often pods of nodes that are gone are looked for.
const POD_GC_PERIOD: std::time::Duration = std::time::Duration::from_secs(20);

/// Deletes at once (grace 0) the pods bound to a node that no longer exists: no agent will
/// ever stop them, as kube-controller-manager's pod garbage collector does.
async fn collect_pods_of(ctx: &Ctx, node: &str) -> Result<Action, Error> {
    match ctx.client.get(&format!("/api/v1/nodes/{node}")).await {
        Ok(_) => return Ok(Action::Await),
        Err(e) if e.code() == Some(404) => {}
        Err(e) => return Err(e),
    }
    let Some(pods) = ctx.kind("Pod") else {
        return Ok(Action::Await);
    };
    for pod in pods.informer.list() {
        if pod["spec"]["nodeName"] != node {
            continue;
        }
        let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid(&pod)}});
        let path = path_of(pods.res, &pod);
        match ctx
            .client
            .request(
                http::Method::DELETE,
                &path,
                Some("application/json"),
                Some(options.to_string().into_bytes()),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %key_of(&pod), node, "deleted a pod of a node that is gone")
            }
            Err(e) if matches!(e.code(), Some(404 | 409)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Action::Await)
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some((kind, key)) = key.split_once('|') else {
        return Ok(Action::Await);
    };
    if kind == POD_GC {
        return collect_pods_of(ctx, key).await;
    }
    let Some(k) = ctx.kind(kind) else {
        return Ok(Action::Await);
    };
    let Some(object) = k.informer.get(key) else {
        return Ok(Action::Await);
    };
    let res = k.res;
    if terminating(&object) {
        let held = finalizers(&object);
        if held.contains(&ORPHAN) {
            orphan_dependents(ctx, &object).await?;
            return remove_finalizer(ctx, res, &object, ORPHAN).await;
        }
        if held.contains(&FOREGROUND) {
            return delete_dependents(ctx, res, &object).await;
        }
    }
    if owners(&object).is_empty() || terminating(&object) {
        return Ok(Action::Await);
    }
    let mut gone = Vec::new();
    let mut foreground = false;
    let mut alive = 0;
    for r in owners(&object) {
        match owner_state(ctx, &object, r).await? {
            Owner::Alive => alive += 1,
            Owner::Foreground => foreground = true,
            Owner::Gone => gone.push(r.clone()),
        }
    }
    if alive == 0 {
        // Every owner is gone or going: so is this object (in the foreground when an owner
        // waits for it, so that its own dependents go before it does).
        let policy = if foreground {
            "Foreground"
        } else {
            "Background"
        };
        super::delete(
            &ctx.client,
            &path_of(res, &object),
            policy,
            Some(uid(&object)),
        )
        .await?;
        tracing::debug!(kind, key, policy, "deleted an object whose owners are gone");
    } else if !gone.is_empty() {
        let refs: Vec<&Value> = owners(&object)
            .iter()
            .filter(|r| !gone.contains(r))
            .collect();
        let patch = json!({"metadata": {
            "resourceVersion": object["metadata"]["resourceVersion"], "ownerReferences": refs}});
        super::merge_patch(&ctx.client, &path_of(res, &object), &patch).await?;
    }
    Ok(Action::Await)
}

/// Removes the owner's references from its dependents.
async fn orphan_dependents(ctx: &Ctx, owner: &Value) -> Result<(), Error> {
    for (kind, dependent) in ctx.dependents(uid(owner)) {
        let Some(k) = ctx.kind(kind) else { continue };
        let refs: Vec<&Value> = owners(&dependent)
            .iter()
            .filter(|r| r["uid"] != uid(owner))
            .collect();
        let refs = if refs.is_empty() {
            Value::Null
        } else {
            json!(refs)
        };
        let patch = json!({"metadata": {
            "resourceVersion": dependent["metadata"]["resourceVersion"], "ownerReferences": refs}});
        match super::merge_patch(&ctx.client, &path_of(k.res, &dependent), &patch).await {
            Ok(written) => super::settle(&k.informer, &[written]).await,
            Err(e) if e.code() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deletes the dependents of an owner deleted in the foreground, and lets the owner go once
/// none that blocks it is left.
async fn delete_dependents(
    ctx: &Ctx,
    res: &'static ResourceInfo,
    owner: &Value,
) -> Result<Action, Error> {
    let mut blocking = 0;
    for (kind, dependent) in ctx.dependents(uid(owner)) {
        let Some(k) = ctx.kind(kind) else { continue };
        let blocks = owners(&dependent)
            .iter()
            .any(|r| r["uid"] == uid(owner) && r["blockOwnerDeletion"] == true);
        if blocks {
            blocking += 1;
        }
        if !terminating(&dependent) {
            super::delete(
                &ctx.client,
                &path_of(k.res, &dependent),
                "Foreground",
                Some(uid(&dependent)),
            )
            .await?;
        }
    }
    if blocking > 0 {
        // Their deletions wake this owner.
        return Ok(Action::Await);
    }
    remove_finalizer(ctx, res, owner, FOREGROUND).await
}

async fn remove_finalizer(
    ctx: &Ctx,
    res: &'static ResourceInfo,
    object: &Value,
    finalizer: &str,
) -> Result<Action, Error> {
    let left: Vec<&str> = finalizers(object)
        .into_iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {
        "resourceVersion": object["metadata"]["resourceVersion"], "finalizers": left}});
    match super::merge_patch(&ctx.client, &path_of(res, object), &patch).await {
        Ok(_) => Ok(Action::Await),
        Err(e) if e.code() == Some(404) => Ok(Action::Await),
        Err(e) => Err(e),
    }
}
