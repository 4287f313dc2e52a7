//! The endpoints controller, as kube-controller-manager's: keeps the `Endpoints` object of each
//! Service with a selector equal to the pods it selects, ready ones under `addresses` and the
//! rest under `notReadyAddresses` (all under `addresses` with `publishNotReadyAddresses`), with
//! each Service port resolved to the pod's port (a named `targetPort` looks up the container
//! port of that name). Readiness is the pods' Ready condition, which agents set from their
//! probes. Services without a selector keep the Endpoints their users write.
//!
//! [`backends`] is shared with the EndpointSlice controller.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{finished, name, namespace, ready, terminating};
use crate::api::selector::LabelSelector as Selector;
use crate::client::informer::{Action, Informer, Informers, Queue, key_of};
use crate::client::{Client, Error};

/// Services.
pub const SERVICES: &str = "/api/v1/services";
/// Endpoints.
pub const ENDPOINTS: &str = "/api/v1/endpoints";

/// One pod behind a Service.
pub struct Backend {
    /// The pod.
    pub pod: Arc<Value>,
    /// Its address.
    pub ip: String,
    /// Whether it is Ready.
    pub ready: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// The Service's ports resolved on this pod: name, port and protocol.
    pub ports: Vec<Value>,
    /// The pod's `hostname`, when its `subdomain` is this Service (a StatefulSet's pods):
    /// cluster DNS gives it a name under the Service.
    pub hostname: Option<String>,
}

/// The selector of a Service that has one (and is not ExternalName).
pub fn selector_of(service: &Value) -> Option<Selector> {
    let selector = service["spec"]["selector"].as_object()?;
    if selector.is_empty() || service["spec"]["type"] == "ExternalName" {
        return None;
    }
    Selector::from_json(&json!({"matchLabels": selector})).ok()
}

/// The port of `pod` that a Service port targets: its `targetPort` as a number, or the
/// container port of that name; `None` when the pod has no port of that name.
fn target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    match &service_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(named) if !named.is_empty() => {
            if let Ok(n) = named.parse() {
                return Some(n);
            }
            pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| p["name"] == *named)
                .and_then(|p| p["containerPort"].as_i64())
        }
        _ => service_port["port"].as_i64(),
    }
}

/// The pods `service` selects that have an address and have not finished, in name order,
/// each with the Service's ports resolved on it.
pub fn backends(service: &Value, pods: &Informer) -> Vec<Backend> {
    let Some(selector) = selector_of(service) else {
        return Vec::new();
    };
    let mut found: Vec<Backend> = pods
        .list_namespace(namespace(service))
        .into_iter()
        .filter(|p| selector.matches(p["metadata"]["labels"].as_object()))
        .filter(|p| !finished(p))
        .filter_map(|pod| {
            let ip = pod["status"]["podIP"]
                .as_str()
                .filter(|ip| !ip.is_empty())?
                .to_owned();
            let ports = service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|sp| {
                    let port = target_port(sp, &pod)?;
                    let mut p = json!({"port": port,
                        "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                        p["name"] = json!(n);
                    }
                    if let Some(a) = sp["appProtocol"].as_str() {
                        p["appProtocol"] = json!(a);
                    }
                    Some(p)
                })
                .collect();
            let hostname = pod["spec"]["hostname"]
                .as_str()
                .filter(|h| !h.is_empty() && pod["spec"]["subdomain"] == *name(service))
                .map(str::to_owned);
            Some(Backend {
                ip,
                hostname,
                ready: ready(&pod),
                terminating: terminating(&pod),
                ports,
                pod,
            })
        })
        .collect();
    found.sort_by(|a, b| name(&a.pod).cmp(name(&b.pod)));
    found
}

/// A reference to a backend's pod.
pub fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": namespace(pod), "name": name(pod),
        "uid": pod["metadata"]["uid"]})
}

/// The labels an Endpoints object or EndpointSlice of `service` carries: the Service's own,
/// and `service.kubernetes.io/headless` for a headless one.
pub fn labels_for(service: &Value) -> serde_json::Map<String, Value> {
    let mut labels = service["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if service["spec"]["clusterIP"] == "None" {
        labels.insert("service.kubernetes.io/headless".into(), json!(""));
    }
    labels
}

/// One subset in the making: its ports, ready addresses and not-ready addresses.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

/// The `subsets` of a Service's Endpoints: backends grouped by their resolved ports, as
/// Kubernetes repacks them. Terminating pods are left out unless the Service publishes
/// not-ready addresses.
pub fn subsets(service: &Value, backends: &[Backend]) -> Value {
    let publish = service["spec"]["publishNotReadyAddresses"] == true;
    let mut by_ports: BTreeMap<String, Subset> = BTreeMap::new();
    for b in backends {
        if b.ports.is_empty() || (b.terminating && !publish) {
            continue;
        }
        let mut ports = b.ports.clone();
        ports.sort_by_key(|p| p["name"].as_str().unwrap_or_default().to_owned());
        let entry = by_ports
            .entry(Value::Array(ports.clone()).to_string())
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        let mut address = json!({"ip": b.ip, "targetRef": target_ref(&b.pod)});
        if let Some(hostname) = &b.hostname {
            address["hostname"] = json!(hostname);
        }
        if let Some(node) = b.pod["spec"]["nodeName"].as_str() {
            address["nodeName"] = json!(node);
        }
        if b.ready || publish {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    Value::Array(
        by_ports
            .into_values()
            .map(|(ports, ready, not_ready)| {
                let mut subset = json!({"ports": ports});
                if !ready.is_empty() {
                    subset["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    subset["notReadyAddresses"] = json!(not_ready);
                }
                subset
            })
            .collect(),
    )
}

/// Queues the Services of a pod's namespace whose selector matches the pod (before or after
/// the change).
pub fn enqueue_services(pods: &Informer, services: &Arc<Informer>, queue: &Arc<Queue>) {
    let (q, services) = (queue.clone(), services.clone());
    pods.on_change(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            let labels = pod["metadata"]["labels"].as_object();
            for s in services.list_namespace(namespace(pod)) {
                if selector_of(&s).is_some_and(|sel| sel.matches(labels)) {
                    q.add(key_of(&s));
                }
            }
        }
    });
}

struct Ctx {
    client: Client,
    services: Arc<Informer>,
    pods: Arc<Informer>,
    endpoints: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: informers.get(SERVICES),
        pods: informers.get(super::PODS),
        endpoints: informers.get(ENDPOINTS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.services, &queue);
    // An Endpoints object changed or removed by someone else is put back.
    super::enqueue_self(&ctx.endpoints, &queue);
    enqueue_services(&ctx.pods, &ctx.services, &queue);
    let informers = vec![
        ctx.services.clone(),
        ctx.pods.clone(),
        ctx.endpoints.clone(),
    ];
    super::run_worker(
        "endpoint",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let (ns, svc_name) = key.split_once('/').unwrap_or(("", key));
    let path = format!("/api/v1/namespaces/{ns}/endpoints/{svc_name}");
    let existing = ctx.endpoints.get(key);
    let Some(service) = ctx.services.get(key) else {
        // The Service is gone: so are its Endpoints.
        if let Some(e) = existing {
            super::delete(&ctx.client, &path, "Background", Some(super::uid(&e))).await?;
        }
        return Ok(Action::Await);
    };
    if selector_of(&service).is_none() || terminating(&service) {
        return Ok(Action::Await);
    }
    let subsets = subsets(&service, &backends(&service, &ctx.pods));
    let labels = Value::Object(labels_for(&service));
    match existing {
        Some(e) if e["subsets"] == subsets && e["metadata"]["labels"] == labels => {}
        Some(e) => {
            // Conditional on the version read: a stale cache costs a retry, not a lost write.
            let patch = json!({"metadata": {"resourceVersion": e["metadata"]["resourceVersion"],
                "labels": labels_patch(&e["metadata"]["labels"], &labels)},
                "subsets": subsets});
            super::merge_patch(&ctx.client, &path, &patch).await?;
        }
        None => {
            let object = json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": svc_name, "namespace": ns, "labels": labels},
                "subsets": subsets});
            match super::create(
                &ctx.client,
                &format!("/api/v1/namespaces/{ns}/endpoints"),
                &object,
            )
            .await
            {
                // Made meanwhile: its watch event queues this Service again.
                Err(e) if e.code() == Some(409) => {}
                other => drop(other?),
            }
        }
    }
    Ok(Action::Await)
}

/// A merge patch from the labels `old` to `new`: each changed label, and a null for each
/// removed one.
pub fn labels_patch(old: &Value, new: &Value) -> Value {
    let mut patch = new.as_object().cloned().unwrap_or_default();
    for key in old.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !patch.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pod = json!({"spec": {"containers": [{"ports": [
            {"name": "http", "containerPort": 8000}]}]}});
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": "http"}), &pod),
            Some(8000)
        );
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": 8080}), &pod),
            Some(8080)
        );
        assert_eq!(target_port(&json!({"port": 80}), &pod), Some(80));
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": "grpc"}), &pod),
            None
        );
    }

    #[test]
    fn subsets_group_by_ports_and_split_by_readiness() {
        let service = json!({"spec": {"ports": [{"port": 80}]}});
        let pod = |n: &str| {
            Arc::new(json!({"metadata": {"name": n, "namespace": "d", "uid": n},
                "spec": {"nodeName": "n1"}}))
        };
        let backend = |n: &str, ip: &str, port: i64, ready: bool, terminating: bool| Backend {
            pod: pod(n),
            ip: ip.into(),
            hostname: None,
            ready,
            terminating,
            ports: vec![json!({"port": port, "protocol": "TCP"})],
        };
        let all = [
            backend("a", "100.64.0.2", 8000, true, false),
            backend("b", "100.64.0.3", 8000, false, false),
            backend("c", "100.64.0.4", 9000, true, false),
            backend("d", "100.64.0.5", 8000, true, true),
        ];
        let subsets = subsets(&service, &all);
        assert_eq!(subsets.as_array().unwrap().len(), 2, "{subsets:#}");
        assert_eq!(subsets[0]["ports"][0]["port"], 8000);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "100.64.0.2");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "100.64.0.3");
        assert_eq!(
            subsets[0]["addresses"].as_array().unwrap().len(),
            1,
            "terminating left out"
        );
        assert_eq!(subsets[1]["addresses"][0]["targetRef"]["name"], "c");

        let publish = json!({"spec": {"publishNotReadyAddresses": true, "ports": [{"port": 80}]}});
        let subsets = super::subsets(&publish, &all);
        assert_eq!(subsets[0]["addresses"].as_array().unwrap().len(), 3);
        assert!(subsets[0]["notReadyAddresses"].is_null());
    }
}
