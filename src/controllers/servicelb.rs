//! The service load balancer, as k3s's servicelb: a `type: LoadBalancer` Service is served on
//! its port by every node's service proxy, so its `status.loadBalancer.ingress` lists the
//! addresses (InternalIP) of the Ready, schedulable nodes, and follows them as nodes come, go
//! or are cordoned. Ingresses of class `wk`, which every node serves too, get the same list.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::endpoints::SERVICES;
use super::{name, namespace, terminating};
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

struct Ctx {
    client: Client,
    services: Arc<Informer>,
    ingresses: Arc<Informer>,
    classes: Arc<Informer>,
    nodes: Arc<Informer>,
}

/// The queue key of an Ingress (Services are queued by their plain key).
const INGRESS_KEY: &str = "ingress:";

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: informers.get(SERVICES),
        ingresses: informers.get(crate::ingress::INGRESSES),
        classes: informers.get(crate::ingress::CLASSES),
        nodes: informers.get(super::NODES),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.services, &queue);
    let q = queue.clone();
    ctx.ingresses.on_change(move |old, new| {
        if let Some(i) = new.or(old) {
            q.add(format!("{INGRESS_KEY}{}", key_of(i)));
        }
    });
    // The class decides which Ingresses are served.
    let (q, ingresses) = (queue.clone(), ctx.ingresses.clone());
    ctx.classes.on_change(move |_, _| {
        for i in ingresses.list() {
            q.add(format!("{INGRESS_KEY}{}", key_of(&i)));
        }
    });
    // A node's readiness or address changes every LoadBalancer's and Ingress's addresses.
    let (q, services, ingresses) = (queue.clone(), ctx.services.clone(), ctx.ingresses.clone());
    ctx.nodes.on_change(move |old, new| {
        if old.map(ingress_of) == new.map(ingress_of) {
            return;
        }
        for s in services.list() {
            if s["spec"]["type"] == "LoadBalancer" {
                q.add(key_of(&s));
            }
        }
        for i in ingresses.list() {
            q.add(format!("{INGRESS_KEY}{}", key_of(&i)));
        }
    });
    let informers = vec![
        ctx.services.clone(),
        ctx.ingresses.clone(),
        ctx.classes.clone(),
        ctx.nodes.clone(),
    ];
    super::run_worker(
        "service-lb-controller",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// The address a node serves LoadBalancers on, if it serves them: Ready, schedulable, with an
/// InternalIP.
fn ingress_of(node: &Value) -> Option<String> {
    if !super::condition(node, "Ready").is_some_and(|c| c["status"] == "True")
        || node["spec"]["unschedulable"] == true
    {
        return None;
    }
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .map(str::to_owned)
}

/// The addresses of the nodes that serve LoadBalancers and Ingresses, in order.
fn serving_nodes(ctx: &Ctx) -> Vec<String> {
    let mut ips: Vec<String> = ctx
        .nodes
        .list()
        .iter()
        .filter_map(|n| ingress_of(n))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    if let Some(key) = key.strip_prefix(INGRESS_KEY) {
        return reconcile_ingress(ctx, key).await;
    }
    let Some(service) = ctx.services.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&service) {
        return Ok(Action::Await);
    }
    let want = if service["spec"]["type"] == "LoadBalancer" {
        let ingress: Vec<Value> = serving_nodes(ctx)
            .into_iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        json!(ingress)
    } else {
        Value::Null
    };
    let path = format!(
        "/api/v1/namespaces/{}/services/{}/status",
        namespace(&service),
        name(&service)
    );
    set_ingress(ctx, &ctx.services, &path, &service, want).await
}

/// An Ingress of class `wk` is served on every node: its status lists their addresses. Other
/// classes' Ingresses are left to their controllers.
async fn reconcile_ingress(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(ingress) = ctx.ingresses.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&ingress) || !crate::ingress::ours(&ingress, &ctx.classes) {
        return Ok(Action::Await);
    }
    let ips: Vec<Value> = serving_nodes(ctx)
        .into_iter()
        .map(|ip| json!({"ip": ip}))
        .collect();
    let want = if ips.is_empty() {
        Value::Null
    } else {
        json!(ips)
    };
    let path = format!(
        "/apis/networking.k8s.io/v1/namespaces/{}/ingresses/{}/status",
        namespace(&ingress),
        name(&ingress)
    );
    set_ingress(ctx, &ctx.ingresses, &path, &ingress, want).await
}

/// Sets `status.loadBalancer.ingress` of `object` (a Service or an Ingress, at `path`) to
/// `want` unless it is that already.
async fn set_ingress(
    ctx: &Ctx,
    informer: &Arc<Informer>,
    path: &str,
    object: &Value,
    want: Value,
) -> Result<Action, Error> {
    if object["status"]["loadBalancer"]["ingress"] != want {
        // A merge patch replaces the list whole (or removes it, with null).
        let patch = json!({"metadata": {"resourceVersion": object["metadata"]["resourceVersion"]},
            "status": {"loadBalancer": {"ingress": want}}});
        let written = super::merge_patch(&ctx.client, path, &patch).await?;
        super::settle(informer, &[written]).await;
    }
    Ok(Action::Await)
}
