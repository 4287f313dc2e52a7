//! The service load balancer, as k3s's servicelb: a `type: LoadBalancer` Service is served on
//! its port by every node's service proxy, so its `status.loadBalancer.ingress` lists the
//! addresses (InternalIP) of the Ready, schedulable nodes, and follows them as nodes come, go
//! or are cordoned.

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
    nodes: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: informers.get(SERVICES),
        nodes: informers.get(super::NODES),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.services, &queue);
    // A node's readiness or address changes every LoadBalancer's ingress.
    let (q, services) = (queue.clone(), ctx.services.clone());
    ctx.nodes.on_change(move |old, new| {
        if old.map(ingress_of) == new.map(ingress_of) {
            return;
        }
        for s in services.list() {
            if s["spec"]["type"] == "LoadBalancer" {
                q.add(key_of(&s));
            }
        }
    });
    let informers = vec![ctx.services.clone(), ctx.nodes.clone()];
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

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(service) = ctx.services.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&service) {
        return Ok(Action::Await);
    }
    let want = if service["spec"]["type"] == "LoadBalancer" {
        let mut ips: Vec<String> = ctx
            .nodes
            .list()
            .iter()
            .filter_map(|n| ingress_of(n))
            .collect();
        ips.sort();
        ips.dedup();
        let ingress: Vec<Value> = ips
            .into_iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        json!(ingress)
    } else {
        Value::Null
    };
    if service["status"]["loadBalancer"]["ingress"] != want {
        let path = format!(
            "/api/v1/namespaces/{}/services/{}/status",
            namespace(&service),
            name(&service)
        );
        // A merge patch replaces the list whole (or removes it, with null).
        let patch = json!({"metadata": {"resourceVersion": service["metadata"]["resourceVersion"]},
            "status": {"loadBalancer": {"ingress": want}}});
        let written = super::merge_patch(&ctx.client, &path, &patch).await?;
        super::settle(&ctx.services, &[written]).await;
    }
    Ok(Action::Await)
}
