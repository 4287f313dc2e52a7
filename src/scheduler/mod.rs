//! The scheduler: binds each pod that has no node to one that can run it, through the
//! `binding` subresource. Filters: the node is Ready and schedulable, matches the pod's
//! nodeSelector, its taints are tolerated, and it has room (pods, CPU and memory requests).
//! Score: least allocated. A pod that fits nowhere gets `PodScheduled=False` and a
//! `FailedScheduling` event saying why for each node, and is retried when things change.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::quantity::Quantity;
use crate::client::Client;

/// How often unschedulable pods are tried again even when nothing seems to change.
const RETRY: Duration = Duration::from_secs(5);

/// What a node offers and what its pods already take.
#[derive(Debug, Default, Clone)]
struct Room {
    pods: i128,
    cpu: i128,
    memory: i128,
    max_pods: i128,
    max_cpu: i128,
    max_memory: i128,
}

fn quantity(v: &Value) -> i128 {
    v.as_str()
        .and_then(|q| Quantity::parse(q).ok())
        .map_or(0, Quantity::millis)
}

/// A pod's requests (the larger of its containers' sum and its biggest init container).
fn requests(pod: &Value) -> (i128, i128) {
    let sum = |field: &str, r: &str| -> i128 {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| quantity(&c["resources"]["requests"][r]))
            .sum()
    };
    let max = |field: &str, r: &str| -> i128 {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| quantity(&c["resources"]["requests"][r]))
            .max()
            .unwrap_or(0)
    };
    (
        sum("containers", "cpu").max(max("initContainers", "cpu")),
        sum("containers", "memory").max(max("initContainers", "memory")),
    )
}

/// Why `node` cannot take `pod`, in kube-scheduler's words; `None` when it can.
fn unfit(pod: &Value, node: &Value, room: &Room) -> Option<String> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    if !ready {
        return Some("node(s) were not ready".into());
    }
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tolerates = |key: &str, effect: &str| {
        tolerations.iter().any(|t| {
            let key_ok = t["key"].as_str().is_none_or(|k| k.is_empty() || k == key)
                || t["operator"] == "Exists" && t["key"].as_str().is_none_or(str::is_empty);
            let effect_ok = t["effect"]
                .as_str()
                .is_none_or(|e| e.is_empty() || e == effect);
            key_ok && effect_ok
        })
    };
    if node["spec"]["unschedulable"] == true
        && !tolerates("node.kubernetes.io/unschedulable", "NoSchedule")
    {
        return Some("node(s) were unschedulable".into());
    }
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = taint["effect"].as_str().unwrap_or_default();
        if matches!(effect, "NoSchedule" | "NoExecute")
            && !tolerates(taint["key"].as_str().unwrap_or_default(), effect)
        {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default()
            ));
        }
    }
    if let Some(selector) = pod["spec"]["nodeSelector"].as_object() {
        let labels = &node["metadata"]["labels"];
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    if room.pods + 1 > room.max_pods {
        return Some("Too many pods".into());
    }
    let (cpu, memory) = requests(pod);
    if cpu > 0 && room.cpu + cpu > room.max_cpu {
        return Some("Insufficient cpu".into());
    }
    if memory > 0 && room.memory + memory > room.max_memory {
        return Some("Insufficient memory".into());
    }
    None
}

/// Least-allocated score, 0–100: the free share of CPU and memory after placing the pod.
fn score(pod: &Value, room: &Room) -> i128 {
    let (cpu, memory) = requests(pod);
    let free = |used: i128, max: i128| {
        if max > 0 {
            (max - used).max(0) * 100 / max
        } else {
            0
        }
    };
    (free(room.cpu + cpu, room.max_cpu) + free(room.memory + memory, room.max_memory)) / 2
}

/// Picks a node for `pod`, or says why none fits ("0/3 nodes are available: ...").
fn choose(pod: &Value, nodes: &[Value], rooms: &HashMap<String, Room>) -> Result<String, String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i128, String)> = None;
    for node in nodes {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let room = rooms.get(&name).cloned().unwrap_or_default();
        match unfit(pod, node, &room) {
            Some(why) => *reasons.entry(why).or_default() += 1,
            None => {
                let s = score(pod, &room);
                if best
                    .as_ref()
                    .is_none_or(|(b, n)| s > *b || (s == *b && name < *n))
                {
                    best = Some((s, name));
                }
            }
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!("0/{} nodes are available: {}.", nodes.len(), why.join(", "))
    })
}

fn rooms(nodes: &[Value], pods: &[Value]) -> HashMap<String, Room> {
    let mut rooms: HashMap<String, Room> = nodes
        .iter()
        .map(|n| {
            let alloc = &n["status"]["allocatable"];
            let room = Room {
                max_pods: quantity(&alloc["pods"]) / 1000,
                max_cpu: quantity(&alloc["cpu"]),
                max_memory: quantity(&alloc["memory"]),
                ..Room::default()
            };
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                room,
            )
        })
        .collect();
    for p in pods {
        let phase = p["status"]["phase"].as_str().unwrap_or_default();
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        if let Some(room) = p["spec"]["nodeName"]
            .as_str()
            .and_then(|n| rooms.get_mut(n))
        {
            let (cpu, memory) = requests(p);
            room.pods += 1;
            room.cpu += cpu;
            room.memory += memory;
        }
    }
    rooms
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let mut reported: HashMap<String, String> = HashMap::new();
    while !shutdown.is_cancelled() {
        if let Err(e) = pass(&client, &mut reported).await {
            tracing::debug!(error = %e, "scheduling pass failed");
        }
        // Wait for a change to pods or nodes, or the retry period.
        let wait = async {
            let Ok(list) = client.get("/api/v1/pods?limit=1").await else {
                tokio::time::sleep(RETRY).await;
                return;
            };
            let rv = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("0")
                .to_owned();
            let Ok(mut pods) = client.watch(&format!("/api/v1/pods?watch=true&resourceVersion={rv}&fieldSelector=spec.nodeName%3D"), None).await else {
                tokio::time::sleep(RETRY).await;
                return;
            };
            let _ = tokio::time::timeout(RETRY, pods.next()).await;
        };
        tokio::select! {
            () = wait => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn pass(
    client: &Client,
    reported: &mut HashMap<String, String>,
) -> Result<(), crate::client::Error> {
    let pending = client
        .get("/api/v1/pods?fieldSelector=spec.nodeName%3D")
        .await?;
    let pending: Vec<Value> = pending["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter(|p| {
            p["spec"]["schedulerName"]
                .as_str()
                .is_none_or(|s| s == "default-scheduler")
        })
        .cloned()
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let nodes = client.get("/api/v1/nodes").await?;
    let nodes: Vec<Value> = nodes["items"].as_array().cloned().unwrap_or_default();
    let all = client.get("/api/v1/pods").await?;
    let mut rooms = rooms(
        &nodes,
        all["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    );
    for pod in pending {
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = format!("{ns}/{name}");
        match choose(&pod, &nodes, &rooms) {
            Ok(node) => {
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                let bound = client
                    .request(
                        Method::POST,
                        &format!("/api/v1/namespaces/{ns}/pods/{name}/binding"),
                        Some("application/json"),
                        Some(binding.to_string().into_bytes()),
                    )
                    .await;
                match bound {
                    Ok(_) => {
                        if let Some(room) = rooms.get_mut(&node) {
                            let (cpu, memory) = requests(&pod);
                            room.pods += 1;
                            room.cpu += cpu;
                            room.memory += memory;
                        }
                        reported.remove(&key);
                        event(
                            client,
                            &pod,
                            false,
                            "Scheduled",
                            &format!("Successfully assigned {key} to {node}"),
                        );
                    }
                    Err(e) => tracing::debug!(pod = %key, error = %e, "binding failed; retrying"),
                }
            }
            Err(why) => {
                if reported.get(&key) != Some(&why) {
                    let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                        "reason": "Unschedulable", "message": why,
                        "lastProbeTime": null, "lastTransitionTime": crate::agent::status::now()}]}});
                    let _ = client
                        .request(
                            Method::PATCH,
                            &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
                            Some("application/strategic-merge-patch+json"),
                            Some(status.to_string().into_bytes()),
                        )
                        .await;
                    event(client, &pod, true, "FailedScheduling", &why);
                    reported.insert(key, why);
                }
            }
        }
    }
    Ok(())
}

/// Posts a scheduler Event about `pod`, in the background.
fn event(client: &Client, pod: &Value, warning: bool, reason: &str, message: &str) {
    let mut involved = crate::client::events::reference(pod);
    involved["kind"] = json!("Pod");
    involved["apiVersion"] = json!("v1");
    let source = crate::client::events::Source {
        component: "default-scheduler",
        host: None,
    };
    crate::client::events::record(client, involved, source, warning, reason, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, memory: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"disk": "ssd"}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(cpu: &str) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {"requests": {"cpu": cpu}}}]}})
    }

    #[test]
    fn the_least_allocated_fitting_node_wins() {
        let nodes = vec![node("a", "2", "4Gi"), node("b", "4", "4Gi")];
        let rooms = rooms(&nodes, &[]);
        assert_eq!(choose(&pod("1"), &nodes, &rooms), Ok("b".into()));
        let err = choose(&pod("8"), &nodes, &rooms).unwrap_err();
        assert_eq!(err, "0/2 nodes are available: 2 Insufficient cpu.");
    }

    #[test]
    fn cordoned_tainted_and_unready_nodes_are_filtered_with_reasons() {
        let mut cordoned = node("a", "2", "4Gi");
        cordoned["spec"]["unschedulable"] = json!(true);
        let mut tainted = node("b", "2", "4Gi");
        tainted["spec"]["taints"] = json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]);
        let mut down = node("c", "2", "4Gi");
        down["status"]["conditions"][0]["status"] = json!("False");
        let nodes = vec![cordoned, tainted.clone(), down];
        let err = choose(&pod("1"), &nodes, &rooms(&nodes, &[])).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: yes}, 1 node(s) were not ready, 1 node(s) were unschedulable."
        );
        let mut tolerant = pod("1");
        tolerant["spec"]["tolerations"] =
            json!([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]);
        assert_eq!(
            choose(&tolerant, &nodes, &rooms(&nodes, &[])),
            Ok("b".into())
        );
        let mut picky = pod("1");
        picky["spec"]["nodeSelector"] = json!({"disk": "hdd"});
        let nodes = vec![node("a", "2", "4Gi")];
        assert!(
            choose(&picky, &nodes, &rooms(&nodes, &[]))
                .unwrap_err()
                .contains("selector")
        );
    }

    #[test]
    fn bound_pods_count_against_a_nodes_room() {
        let nodes = vec![node("a", "2", "4Gi")];
        let running = json!({"spec": {"nodeName": "a", "containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}, "status": {"phase": "Running"}});
        let done = json!({"spec": {"nodeName": "a", "containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}, "status": {"phase": "Succeeded"}});
        let r = rooms(&nodes, &[running, done]);
        assert_eq!(r["a"].cpu, 1500);
        assert!(choose(&pod("1"), &nodes, &r).is_err());
    }
}
