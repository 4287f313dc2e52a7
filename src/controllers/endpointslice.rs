//! The EndpointSlice controller, as kube-controller-manager's: for each Service with a selector,
//! a `discovery.k8s.io/v1` EndpointSlice (IPv4) listing the pods it selects, each with its
//! `ready`, `serving` and `terminating` conditions, node and pod reference, and the Service's
//! ports resolved on the pods. Slices are labelled `kubernetes.io/service-name` and owned by
//! their Service, so the garbage collector removes them with it.
//!
//! One slice holds up to [`MAX_PER_SLICE`] endpoints, as kube-controller-manager's
//! `--max-endpoints-per-slice` default; a Service whose pods resolve its ports differently (a
//! named `targetPort` on pods that number it differently) gets one slice per port set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::endpoints::{Backend, SERVICES, backends, labels_for, selector_of, target_ref};
use super::{name, namespace, terminating};
use crate::client::informer::{Action, Informer, Informers, Queue};
use crate::client::{Client, Error};

/// EndpointSlices.
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY`].
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The most endpoints one slice holds.
pub const MAX_PER_SLICE: usize = 100;

struct Ctx {
    client: Client,
    services: Arc<Informer>,
    pods: Arc<Informer>,
    slices: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: informers.get(SERVICES),
        pods: informers.get(super::PODS),
        slices: informers.get(SLICES),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.services, &queue);
    super::endpoints::enqueue_services(&ctx.pods, &ctx.services, &queue);
    // A slice changed or removed by someone else is put back.
    let q = queue.clone();
    ctx.slices.on_change(move |old, new| {
        for slice in [old, new].into_iter().flatten() {
            if let Some(service) = slice["metadata"]["labels"][SERVICE_NAME].as_str() {
                q.add(format!("{}/{service}", namespace(slice)));
            }
        }
    });
    let informers = vec![ctx.services.clone(), ctx.pods.clone(), ctx.slices.clone()];
    super::run_worker(
        "endpointslice",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// One endpoint of a slice.
/// With `publishNotReadyAddresses` every endpoint is ready, as Kubernetes writes it.
fn endpoint(b: &Backend, publish: bool) -> Value {
    let mut e = json!({"addresses": [b.ip],
        "conditions": {"ready": publish || (b.ready && !b.terminating), "serving": b.ready,
            "terminating": b.terminating},
        "targetRef": target_ref(&b.pod)});
    if let Some(hostname) = &b.hostname {
        e["hostname"] = json!(hostname);
    }
    if let Some(node) = b.pod["spec"]["nodeName"].as_str() {
        e["nodeName"] = json!(node);
    }
    e
}

/// The slices a Service should have: its endpoints grouped by port set, in chunks of
/// [`MAX_PER_SLICE`]; each is `(ports, endpoints)`.
fn desired(backends: &[Backend], publish: bool) -> Vec<(Value, Vec<Value>)> {
    let mut by_ports: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for b in backends.iter().filter(|b| !b.ports.is_empty()) {
        let mut ports = b.ports.clone();
        ports.sort_by_key(|p| p["name"].as_str().unwrap_or_default().to_owned());
        let ports = Value::Array(ports);
        by_ports
            .entry(ports.to_string())
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint(b, publish));
    }
    by_ports
        .into_values()
        .flat_map(|(ports, endpoints)| {
            endpoints
                .chunks(MAX_PER_SLICE)
                .map(|c| (ports.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let (ns, svc_name) = key.split_once('/').unwrap_or(("", key));
    let collection = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
    let mut existing: Vec<Arc<Value>> = ctx
        .slices
        .list_namespace(ns)
        .into_iter()
        .filter(|s| {
            s["metadata"]["labels"][SERVICE_NAME] == svc_name
                && s["metadata"]["labels"][MANAGED_BY] == CONTROLLER
        })
        .collect();
    existing.sort_by(|a, b| name(a).cmp(name(b)));
    // A Service gone takes its slices with it through their ownerReferences.
    let Some(service) = ctx.services.get(key) else {
        return Ok(Action::Await);
    };
    if selector_of(&service).is_none() || terminating(&service) {
        return Ok(Action::Await);
    }
    let mut labels = labels_for(&service);
    labels.insert(SERVICE_NAME.into(), json!(svc_name));
    labels.insert(MANAGED_BY.into(), json!(CONTROLLER));
    let labels = Value::Object(labels);
    let publish = service["spec"]["publishNotReadyAddresses"] == true;
    let mut want = desired(&backends(&service, &ctx.pods), publish);
    // A Service with no endpoints still has one (empty) slice, as Kubernetes keeps it.
    if want.is_empty() {
        // Kubernetes' placeholder slice carries neither endpoints nor ports.
        want.push((Value::Null, Vec::new()));
    }
    let count = want.len();
    let mut written = Vec::new();
    for (i, (ports, endpoints)) in want.into_iter().enumerate() {
        let body = |slice: &mut Value| {
            slice["addressType"] = json!("IPv4");
            slice["ports"] = ports.clone();
            slice["endpoints"] = Value::Array(endpoints.clone());
        };
        match existing.get(i) {
            Some(old)
                if old["ports"] == ports
                    && old["endpoints"] == Value::Array(endpoints.clone())
                    && old["metadata"]["labels"] == labels => {}
            Some(old) => {
                let mut patch = json!({"metadata": {
                    "resourceVersion": old["metadata"]["resourceVersion"],
                    "labels": super::endpoints::labels_patch(&old["metadata"]["labels"], &labels)}});
                body(&mut patch);
                let path = format!("{collection}/{}", name(old));
                written.push(super::merge_patch(&ctx.client, &path, &patch).await?);
            }
            None => {
                let mut slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"generateName": format!("{svc_name}-"), "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [super::owner_reference(&service, ("v1", "Service"))]}});
                body(&mut slice);
                written.push(super::create(&ctx.client, &collection, &slice).await?);
            }
        }
    }
    for extra in existing.iter().skip(count) {
        let path = format!("{collection}/{}", name(extra));
        super::delete(&ctx.client, &path, "Background", Some(super::uid(extra))).await?;
    }
    // The next pass must see these writes, or it would make a second slice.
    super::settle(&ctx.slices, &written).await;
    Ok(Action::Await)
}
