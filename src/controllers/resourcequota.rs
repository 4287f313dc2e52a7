//! The resource quota controller, as kube-controller-manager's: keeps each ResourceQuota's
//! `status.hard` and `status.used` (what `kubectl describe quota` shows) equal to its limits
//! and to what the namespace's objects use. Admission in the API server counts the same way
//! ([`crate::api::admission::quota_used`]); this only reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{name, namespace, terminating};
use crate::api::admission::{self, show};
use crate::api::resources::{self, ResourceInfo};
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

/// ResourceQuotas.
pub const QUOTAS: &str = "/api/v1/resourcequotas";
/// The kinds counted from shared informers (changes to them re-count at once); any other
/// `count/` resource is listed on each count, and re-counted every half minute.
const WATCHED: &[(&str, &str)] = &[
    ("Pod", super::PODS),
    ("Service", "/api/v1/services"),
    ("ConfigMap", "/api/v1/configmaps"),
    ("Secret", "/api/v1/secrets"),
];
const RECOUNT: Duration = Duration::from_secs(30);

struct Ctx {
    client: Client,
    quotas: Arc<Informer>,
    watched: HashMap<&'static str, Arc<Informer>>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        quotas: informers.get(QUOTAS),
        watched: WATCHED
            .iter()
            .map(|(kind, path)| (*kind, informers.get(path)))
            .collect(),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.quotas, &queue);
    for informer in ctx.watched.values() {
        let (q, quotas) = (queue.clone(), ctx.quotas.clone());
        informer.on_change(move |old, new| {
            if let Some(o) = new.or(old) {
                for quota in quotas.list_namespace(namespace(o)) {
                    q.add(key_of(&quota));
                }
            }
        });
    }
    let mut all = vec![ctx.quotas.clone()];
    all.extend(ctx.watched.values().cloned());
    super::run_worker(
        "resourcequota",
        all,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(quota) = ctx.quotas.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&quota) {
        return Ok(Action::Await);
    }
    let ns = namespace(&quota);
    let mut listed: HashMap<&str, Vec<Arc<Value>>> = HashMap::new();
    let mut unwatched = false;
    for res in admission::counted_resources(&quota) {
        let objects = match ctx.watched.get(res.kind) {
            Some(informer) => informer.list_namespace(ns),
            None => {
                unwatched = true;
                list(&ctx.client, res, ns).await?
            }
        };
        listed.insert(res.kind, objects);
    }
    let used = admission::quota_used(&quota, |r| listed.get(r.kind).cloned().unwrap_or_default());
    let hard = quota["spec"]["hard"].clone();
    let used: Map<String, Value> = used
        .into_iter()
        .map(|(k, q)| {
            let shown = show(&k, q);
            (k, json!(shown))
        })
        .collect();
    let status = json!({"hard": hard, "used": used});
    if quota["status"] != status {
        let path = format!(
            "/api/v1/namespaces/{ns}/resourcequotas/{}/status",
            name(&quota)
        );
        // Limits taken out of spec.hard go from the status too.
        let mut patch = status.clone();
        for field in ["hard", "used"] {
            for k in quota["status"][field]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if status[field].get(k).is_none() {
                    patch[field][k] = Value::Null;
                }
            }
        }
        super::merge_patch(&ctx.client, &path, &json!({"status": patch})).await?;
    }
    Ok(if unwatched {
        Action::RequeueAfter(RECOUNT)
    } else {
        Action::Await
    })
}

async fn list(client: &Client, res: &ResourceInfo, ns: &str) -> Result<Vec<Arc<Value>>, Error> {
    let list = client
        .get(&resources::collection_path(res, Some(ns)))
        .await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| Arc::new(o.clone()))
        .collect())
}
