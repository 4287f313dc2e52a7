//! The scheduler: binds each pod that has no node to one that can run it, through the
//! `binding` subresource. Filters, as kube-scheduler's: the node is Ready and schedulable, its
//! NoSchedule and NoExecute taints are tolerated, it matches the pod's nodeSelector and
//! required node affinity (expressions on labels, fields on the name), and it has room (pods,
//! CPU and memory requests, hostPorts). Scores: least allocated, balanced allocation,
//! spreading the pods of one owner, and preferred node affinity. A pod that fits nowhere gets
//! `PodScheduled=False` and a `FailedScheduling` event saying why for each node, and is
//! retried when things change.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::quantity::Quantity;
use crate::client::Client;
use crate::client::informer::Informers;

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
    /// The hostPorts taken, as `protocol/port`.
    ports: std::collections::HashSet<String>,
    /// Pods per controller uid, for spreading.
    owners: HashMap<String, i128>,
}

impl Room {
    fn release(&mut self, pod: &Value) {
        let (cpu, memory) = requests(pod);
        self.pods -= 1;
        self.cpu -= cpu;
        self.memory -= memory;
        for p in host_ports(pod) {
            self.ports.remove(&p);
        }
        if let Some(owner) = owner_uid(pod)
            && let Some(n) = self.owners.get_mut(owner)
        {
            *n -= 1;
        }
    }

    fn take(&mut self, pod: &Value) {
        let (cpu, memory) = requests(pod);
        self.pods += 1;
        self.cpu += cpu;
        self.memory += memory;
        self.ports.extend(host_ports(pod));
        if let Some(owner) = owner_uid(pod) {
            *self.owners.entry(owner.to_owned()).or_default() += 1;
        }
    }
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

/// The hostPorts a pod asks for, as `protocol/port`.
fn host_ports(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let port = p["hostPort"].as_u64().filter(|p| *p > 0)?;
            Some(format!(
                "{}/{port}",
                p["protocol"].as_str().unwrap_or("TCP")
            ))
        })
        .collect()
}

fn owner_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)?["uid"]
        .as_str()
}

/// Whether a toleration tolerates a taint, as Kubernetes' `ToleratesTaint`: the effect and
/// key match (empty means any), and the value is equal unless the operator is Exists.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let s = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_owned();
    let effect = s(toleration, "effect");
    if !effect.is_empty() && effect != s(taint, "effect") {
        return false;
    }
    let key = s(toleration, "key");
    if !key.is_empty() && key != s(taint, "key") {
        return false;
    }
    match toleration["operator"].as_str().unwrap_or("Equal") {
        "Exists" => true,
        _ => !key.is_empty() && s(toleration, "value") == s(taint, "value"),
    }
}

/// The first of a node's taints with one of `effects` that `tolerations` do not tolerate.
pub fn untolerated<'a>(
    node: &'a Value,
    tolerations: &Value,
    effects: &[&str],
) -> Option<&'a Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| effects.contains(&t["effect"].as_str().unwrap_or_default()))
        .find(|taint| {
            !tolerations
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| tolerates(t, taint))
        })
}

/// Whether a node selector requirement (`matchExpressions` or `matchFields` entry) holds for
/// a value (`None`: the label is absent).
fn requirement_holds(req: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = req["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |v: &str| v.parse::<i64>().ok();
    match req["operator"].as_str().unwrap_or_default() {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Whether a node selector term (its expressions on labels and its fields) matches a node.
/// A term with neither matches nothing.
fn term_matches(term: &Value, node: &Value) -> bool {
    let exprs = term["matchExpressions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let fields = term["matchFields"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = &node["metadata"]["labels"];
    exprs
        .iter()
        .all(|r| requirement_holds(r, labels[r["key"].as_str().unwrap_or_default()].as_str()))
        && fields.iter().all(|r| {
            let value = (r["key"] == "metadata.name")
                .then(|| node["metadata"]["name"].as_str())
                .flatten();
            requirement_holds(r, value)
        })
}

/// Whether a pod spec's nodeSelector and required node affinity let it onto `node`.
pub fn node_selected(spec: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    if let Some(selector) = spec["nodeSelector"].as_object()
        && selector.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    let required =
        &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    !required.is_object() || selects(required, node)
}

/// Whether a NodeSelector (`{nodeSelectorTerms: [...]}`, as in required node affinity and a
/// PersistentVolume's nodeAffinity) lets `node` in: any of its terms matches. One without
/// terms lets every node in.
pub fn selects(selector: &Value, node: &Value) -> bool {
    match selector["nodeSelectorTerms"].as_array() {
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

/// The sum of the weights of the preferred node affinity terms `node` matches.
fn preferred_weight(spec: &Value, node: &Value) -> i128 {
    spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p["preference"], node))
        .map(|p| i128::from(p["weight"].as_i64().unwrap_or(0)))
        .sum()
}

/// A node as the filters read it, parsed once per pass.
struct NodeInfo<'a> {
    node: &'a Value,
    name: String,
    ready: bool,
    unschedulable: bool,
    /// Its NoSchedule and NoExecute taints.
    taints: Vec<&'a Value>,
}

impl<'a> NodeInfo<'a> {
    fn of(node: &'a Value) -> Self {
        Self {
            node,
            name: node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ready: node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            unschedulable: node["spec"]["unschedulable"] == true,
            taints: node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
                .collect(),
        }
    }
}

/// What the filters and scores read of a pod, parsed once per choice.
struct PodInfo<'a> {
    pod: &'a Value,
    cpu: i128,
    memory: i128,
    ports: Vec<String>,
    owner: Option<&'a str>,
    tolerations: &'a [Value],
    /// Whether it has a nodeSelector or node affinity at all.
    picky: bool,
    /// The nodeAffinity of the PersistentVolumes its claims are bound to.
    volume_terms: Vec<Value>,
}

impl<'a> PodInfo<'a> {
    fn of(pod: &'a Value) -> Self {
        let (cpu, memory) = requests(pod);
        let spec = &pod["spec"];
        Self {
            pod,
            cpu,
            memory,
            ports: host_ports(pod),
            owner: owner_uid(pod),
            tolerations: spec["tolerations"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
            picky: spec.get("nodeSelector").is_some_and(|s| !s.is_null())
                || spec["affinity"]
                    .get("nodeAffinity")
                    .is_some_and(|a| !a.is_null()),
            volume_terms: Vec::new(),
        }
    }
}

/// Why `node` cannot take `pod`, in kube-scheduler's words; `None` when it can.
fn unfit(pod: &PodInfo<'_>, node: &NodeInfo<'_>, room: &Room) -> Option<String> {
    if !node.ready {
        return Some("node(s) were not ready".into());
    }
    let tolerations = pod.tolerations;
    if node.unschedulable {
        let unschedulable =
            json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if !tolerations.iter().any(|t| tolerates(t, &unschedulable)) {
            return Some("node(s) were unschedulable".into());
        }
    }
    if let Some(taint) = node
        .taints
        .iter()
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
    {
        return Some(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint["key"].as_str().unwrap_or_default(),
            taint["value"].as_str().unwrap_or_default()
        ));
    }
    if pod.picky && !node_selected(&pod.pod["spec"], node.node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if pod.volume_terms.iter().any(|t| !selects(t, node.node)) {
        return Some("node(s) had volume node affinity conflict".into());
    }
    if room.pods + 1 > room.max_pods {
        return Some("Too many pods".into());
    }
    if pod.cpu > 0 && room.cpu + pod.cpu > room.max_cpu {
        return Some("Insufficient cpu".into());
    }
    if pod.memory > 0 && room.memory + pod.memory > room.max_memory {
        return Some("Insufficient memory".into());
    }
    if !room.ports.is_empty() && pod.ports.iter().any(|p| room.ports.contains(p)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    None
}

/// The node's score for the pod, higher is better, as kube-scheduler's default plugins add
/// up: least allocated and balanced allocation (0–100 each), spreading the pods of one owner
/// (100 on a node with none of them, less with each), and preferred node affinity (the
/// matched weights, 1–100 each).
fn score(pod: &PodInfo<'_>, node: &Value, room: &Room) -> i128 {
    let (cpu, memory) = (pod.cpu, pod.memory);
    let share = |used: i128, max: i128| {
        if max > 0 {
            (used * 100 / max).min(100)
        } else {
            0
        }
    };
    let (cpu_used, mem_used) = (
        share(room.cpu + cpu, room.max_cpu),
        share(room.memory + memory, room.max_memory),
    );
    let least = (200 - cpu_used - mem_used) / 2;
    let balanced = 100 - (cpu_used - mem_used).abs();
    let spread = pod.owner.map_or(100, |o| {
        let mine = room.owners.get(o).copied().unwrap_or(0);
        100 / (1 + mine)
    });
    let preferred = if pod.picky {
        preferred_weight(&pod.pod["spec"], node)
    } else {
        0
    };
    least + balanced + spread + preferred
}

/// How many feasible nodes to find before scoring, as kube-scheduler's adaptive
/// percentageOfNodesToScore: all of up to 100 nodes; of more, 50% less 1% per 125 nodes (at
/// least 5%), and never fewer than 100.
fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = (50 - (nodes / 125) as i64).max(5) as usize;
    (nodes * percent / 100).max(100)
}

/// The cluster as one pass sees it: nodes, what their pods take, and where the next search
/// starts (so that sampled searches go round every node).
struct Snapshot<'a> {
    nodes: Vec<NodeInfo<'a>>,
    rooms: Vec<Room>,
    next_start: usize,
}

impl<'a> Snapshot<'a> {
    fn new<'p>(
        nodes: impl IntoIterator<Item = &'a Value>,
        pods: impl IntoIterator<Item = &'p Value>,
    ) -> Self {
        let nodes: Vec<NodeInfo<'a>> = nodes.into_iter().map(NodeInfo::of).collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut rooms: Vec<Room> = nodes
            .iter()
            .map(|n| {
                let alloc = &n.node["status"]["allocatable"];
                Room {
                    max_pods: quantity(&alloc["pods"]) / 1000,
                    max_cpu: quantity(&alloc["cpu"]),
                    max_memory: quantity(&alloc["memory"]),
                    ..Room::default()
                }
            })
            .collect();
        for p in pods {
            let phase = p["status"]["phase"].as_str().unwrap_or_default();
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            if let Some(&i) = p["spec"]["nodeName"].as_str().and_then(|n| index.get(n)) {
                rooms[i].take(p);
            }
        }
        Self {
            nodes,
            rooms,
            next_start: 0,
        }
    }

    /// Picks a node for `pod` (its index), or says why none fits ("0/3 nodes are available:
    /// ...").
    #[cfg(test)]
    fn choose(&mut self, pod: &Value) -> Result<usize, String> {
        self.choose_for(&PodInfo::of(pod))
    }

    /// As [`Snapshot::choose`], for a pod already looked at.
    fn choose_for(&mut self, pod: &PodInfo<'_>) -> Result<usize, String> {
        let n = self.nodes.len();
        let want = feasible_to_find(n);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(i128, usize)> = None;
        let (mut feasible, mut looked) = (0, 0);
        while looked < n && feasible < want {
            let i = (self.next_start + looked) % n;
            looked += 1;
            match unfit(pod, &self.nodes[i], &self.rooms[i]) {
                Some(why) => *reasons.entry(why).or_default() += 1,
                None => {
                    feasible += 1;
                    let s = score(pod, self.nodes[i].node, &self.rooms[i]);
                    let better = best.is_none_or(|(b, j)| {
                        s > b || (s == b && self.nodes[i].name < self.nodes[j].name)
                    });
                    if better {
                        best = Some((s, i));
                    }
                }
            }
        }
        if n > 0 {
            self.next_start = (self.next_start + looked) % n;
        }
        best.map(|(_, i)| i).ok_or_else(|| {
            let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            format!("0/{n} nodes are available: {}.", why.join(", "))
        })
    }
}

/// Picks a node for `pod` among `nodes` with the pods `placed` on them.
#[cfg(test)]
fn choose(pod: &Value, nodes: &[Value], placed: &[Value]) -> Result<String, String> {
    let mut snapshot = Snapshot::new(nodes, placed);
    snapshot.choose(pod).map(|i| snapshot.nodes[i].name.clone())
}

/// Bindings in flight at once.
const BIND_CONCURRENCY: usize = 64;

/// How long a binding this scheduler made is assumed while its cache has not shown it yet.
const ASSUMED_FOR: Duration = Duration::from_secs(30);

/// Bindings made but not yet seen in the cache, by pod uid: the node, the pod, and when. Their
/// room stays taken, as kube-scheduler's assumed pods.
type Assumed = HashMap<String, (String, Value, std::time::Instant)>;

/// Runs the scheduler until `shutdown`. It reads pods and nodes through informers: fed by the
/// API server's `cache` in its process, else by watches.
pub async fn run(
    client: Client,
    cache: Option<std::sync::Arc<crate::store::cache::Cache>>,
    shutdown: CancellationToken,
) {
    let informers = cache.map_or_else(Informers::default, Informers::local);
    let pods = informers.get("/api/v1/pods");
    let nodes = informers.get("/api/v1/nodes");
    let storage = Storage {
        claims: informers.get(crate::controllers::volume::CLAIMS),
        volumes: informers.get(crate::controllers::volume::VOLUMES),
        classes: informers.get(crate::controllers::volume::CLASSES),
    };
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    pods.on_change(move |old, new| {
        let unbound = |p: &Value| p["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
        let freed = new.is_none()
            || new.is_some_and(|n| {
                matches!(n["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                    && old.is_some_and(|o| o["status"]["phase"] != n["status"]["phase"])
            });
        if freed || (old.is_none() && new.is_some_and(unbound)) {
            w.notify_one();
        }
    });
    let w = wake.clone();
    nodes.on_change(move |_, _| w.notify_one());
    // A claim that becomes bound (or appears) may let its pods onto a node.
    let w = wake.clone();
    storage.claims.on_change(move |_, _| w.notify_one());
    informers.start(&client, &shutdown);
    tokio::select! {
        () = async {
            pods.wait_synced().await;
            nodes.wait_synced().await;
            storage.claims.wait_synced().await;
            storage.volumes.wait_synced().await;
            storage.classes.wait_synced().await;
        } => {}
        () = shutdown.cancelled() => return,
    }
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut assumed = Assumed::new();
    while !shutdown.is_cancelled() {
        pass(
            &client,
            &pods.list(),
            &nodes.list(),
            &storage,
            &mut reported,
            &mut assumed,
        )
        .await;
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(RETRY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn pass(
    client: &Client,
    all: &[std::sync::Arc<Value>],
    nodes: &[std::sync::Arc<Value>],
    storage: &Storage,
    reported: &mut HashMap<String, String>,
    assumed: &mut Assumed,
) {
    let unbound = |p: &Value| p["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    // Bindings the cache now shows (or that are too old to wait for) are assumed no longer.
    if !assumed.is_empty() {
        let shown: std::collections::HashSet<&str> = all
            .iter()
            .filter(|p| !unbound(p))
            .filter_map(|p| p["metadata"]["uid"].as_str())
            .collect();
        assumed
            .retain(|uid, (_, _, at)| !shown.contains(uid.as_str()) && at.elapsed() < ASSUMED_FOR);
    }
    let pending: Vec<&Value> = all
        .iter()
        .map(|p| &**p)
        .filter(|p| unbound(p))
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter(|p| !assumed.contains_key(p["metadata"]["uid"].as_str().unwrap_or_default()))
        .filter(|p| {
            p["spec"]["schedulerName"]
                .as_str()
                .is_none_or(|s| s == "default-scheduler")
        })
        .collect();
    if pending.is_empty() {
        return;
    }
    let placed: Vec<Value> = assumed
        .values()
        .map(|(node, pod, _)| {
            let mut p = pod.clone();
            p["spec"]["nodeName"] = json!(node);
            p
        })
        .collect();
    let mut snapshot = Snapshot::new(
        nodes.iter().map(|n| &**n),
        all.iter().map(|p| &**p).chain(placed.iter()),
    );
    // Bulk binding: each pod's node is chosen and its room reserved in turn, then the
    // bindings go out many at a time. A binding the server refuses (the pod was bound or
    // deleted meanwhile) gives its room back; the next pass sees the truth.
    let mut bindings = Vec::new();
    // Claims given a node in this pass: their other pods follow it.
    let mut selected: HashMap<String, usize> = HashMap::new();
    let started = std::time::Instant::now();
    for &pod in &pending {
        let key = format!(
            "{}/{}",
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        );
        let mut info = PodInfo::of(pod);
        let mut to_select = Vec::new();
        let chosen = match storage.check(pod) {
            Ok(claims) => {
                info.volume_terms = claims.terms;
                for (path, rv) in claims.to_select {
                    match selected.get(&path) {
                        Some(&i) => info.volume_terms.push(on_node(&snapshot.nodes[i].name)),
                        None => to_select.push((path, rv)),
                    }
                }
                snapshot.choose_for(&info)
            }
            Err(why) => Err(format!(
                "0/{} nodes are available: {why}.",
                snapshot.nodes.len()
            )),
        };
        match chosen {
            Ok(i) => {
                snapshot.rooms[i].take(pod);
                for (path, _) in &to_select {
                    selected.insert(path.clone(), i);
                }
                bindings.push((pod, i, key, to_select));
            }
            Err(why) => {
                if reported.get(&key) != Some(&why) {
                    unschedulable(client, pod, &why).await;
                    reported.insert(key, why);
                }
            }
        }
    }
    let chosen = started.elapsed();
    let names: Vec<String> = snapshot.nodes.iter().map(|n| n.name.clone()).collect();
    let mut sends = Vec::with_capacity(bindings.len());
    for (b, (pod, i, _, to_select)) in bindings.iter().enumerate() {
        let (client, pod, node) = (client.clone(), (*pod).clone(), names[*i].clone());
        sends.push(async move {
            // Claims that wait for their first pod learn its node before the pod is bound.
            // Conditional on the claim's version: of two passes choosing, one wins.
            for (path, rv) in to_select {
                let patch = json!({"metadata": {"resourceVersion": rv, "annotations": {
                    crate::controllers::volume::SELECTED_NODE: node}}});
                if let Err(e) = crate::controllers::merge_patch(&client, path, &patch).await {
                    tracing::debug!(claim = %path, error = %e, "could not select the claim's node");
                    return (b, false);
                }
            }
            (b, bind(&client, &pod, &node).await)
        });
    }
    let results: Vec<(usize, bool)> = futures_util::stream::iter(sends)
        .buffer_unordered(BIND_CONCURRENCY)
        .collect()
        .await;
    tracing::debug!(pending = pending.len(), nodes = names.len(), ?chosen, bound = ?started.elapsed() - chosen, "scheduling pass");
    for (b, ok) in results {
        let (pod, i, key, _) = &bindings[b];
        if ok {
            reported.remove(key);
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assumed.insert(
                uid,
                (names[*i].clone(), (*pod).clone(), std::time::Instant::now()),
            );
            event(
                client,
                pod,
                false,
                "Scheduled",
                &format!("Successfully assigned {key} to {}", names[*i]),
            );
        } else {
            snapshot.rooms[*i].release(pod);
        }
    }
}

/// The informers the volume checks read.
struct Storage {
    claims: std::sync::Arc<crate::client::informer::Informer>,
    volumes: std::sync::Arc<crate::client::informer::Informer>,
    classes: std::sync::Arc<crate::client::informer::Informer>,
}

/// What a pod's claims ask of its node.
struct ClaimNeeds {
    /// The nodeAffinity of the volumes they are bound to.
    terms: Vec<Value>,
    /// The paths (and versions) of the claims that wait for this pod to choose their node.
    to_select: Vec<(String, Value)>,
}

impl Storage {
    /// What the pod's PersistentVolumeClaims ask of its node, or why it cannot be placed
    /// anywhere yet, in kube-scheduler's words.
    fn check(&self, pod: &Value) -> Result<ClaimNeeds, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut needs = ClaimNeeds {
            terms: Vec::new(),
            to_select: Vec::new(),
        };
        for claim_name in crate::controllers::volume::claims_of(pod) {
            let Some(claim) = self.claims.get(&format!("{ns}/{claim_name}")) else {
                return Err(format!("persistentvolumeclaim \"{claim_name}\" not found"));
            };
            if claim.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(format!(
                    "persistentvolumeclaim \"{claim_name}\" is being deleted"
                ));
            }
            match claim["spec"]["volumeName"]
                .as_str()
                .filter(|v| !v.is_empty())
            {
                Some(volume) => {
                    let Some(pv) = self.volumes.get(volume) else {
                        return Err(format!("persistentvolume \"{volume}\" not found"));
                    };
                    let required = &pv["spec"]["nodeAffinity"]["required"];
                    if required.is_object() {
                        needs.terms.push(required.clone());
                    }
                }
                None => {
                    let class = claim["spec"]["storageClassName"]
                        .as_str()
                        .unwrap_or_default();
                    let waits = self
                        .classes
                        .get(class)
                        .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
                    if !waits {
                        return Err("pod has unbound immediate PersistentVolumeClaims".into());
                    }
                    match claim["metadata"]["annotations"]
                        [crate::controllers::volume::SELECTED_NODE]
                        .as_str()
                    {
                        // Chosen for an earlier pod: this one goes to the same node.
                        Some(node) => needs.terms.push(on_node(node)),
                        None => needs.to_select.push((
                            format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim_name}"),
                            claim["metadata"]["resourceVersion"].clone(),
                        )),
                    }
                }
            }
        }
        Ok(needs)
    }
}

/// A NodeSelector that lets only the node named `node` in.
fn on_node(node: &str) -> Value {
    json!({"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": [node]}]}]})
}

/// Binds `pod` to `node`; false (logged) when the server refuses.
async fn bind(client: &Client, pod: &Value, node: &str) -> bool {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    match client
        .request(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/pods/{name}/binding"),
            Some("application/json"),
            Some(binding.to_string().into_bytes()),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "binding failed; retrying");
            false
        }
    }
}

/// Records why a pod fits nowhere: `PodScheduled=False` and a FailedScheduling event.
async fn unschedulable(client: &Client, pod: &Value, why: &str) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
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
    event(client, pod, true, "FailedScheduling", why);
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
        let rooms = [].to_vec();
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
        let err = choose(&pod("1"), &nodes, &[]).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: yes}, 1 node(s) were not ready, 1 node(s) were unschedulable."
        );
        let mut tolerant = pod("1");
        tolerant["spec"]["tolerations"] =
            json!([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]);
        assert_eq!(choose(&tolerant, &nodes, &[]), Ok("b".into()));
        let mut picky = pod("1");
        picky["spec"]["nodeSelector"] = json!({"disk": "hdd"});
        let nodes = vec![node("a", "2", "4Gi")];
        assert!(
            choose(&picky, &nodes, &[])
                .unwrap_err()
                .contains("selector")
        );
    }

    #[test]
    fn bound_pods_count_against_a_nodes_room() {
        let nodes = vec![node("a", "2", "4Gi")];
        let running = json!({"spec": {"nodeName": "a", "containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}, "status": {"phase": "Running"}});
        let done = json!({"spec": {"nodeName": "a", "containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}, "status": {"phase": "Succeeded"}});
        let r = [running, done].to_vec();
        assert_eq!(Snapshot::new(&nodes, &r).rooms[0].cpu, 1500);
        assert!(choose(&pod("1"), &nodes, &r).is_err());
    }

    #[test]
    fn node_affinity_requires_terms_and_prefers_weights() {
        let mut a = node("a", "2", "4Gi");
        a["metadata"]["labels"] = json!({"zone": "north", "gen": "3"});
        let mut b = node("b", "2", "4Gi");
        b["metadata"]["labels"] = json!({"zone": "south", "gen": "5"});
        let nodes = vec![a, b];
        let rooms = [].to_vec();
        let with = |affinity: Value| {
            let mut p = pod("100m");
            p["spec"]["affinity"] = json!({"nodeAffinity": affinity});
            p
        };
        let required = |terms: Value| {
            with(
                json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}),
            )
        };
        let zone_in = required(
            json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["south"]}]}]),
        );
        assert_eq!(choose(&zone_in, &nodes, &rooms), Ok("b".into()));
        let newer = required(
            json!([{"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]}]),
        );
        assert_eq!(choose(&newer, &nodes, &rooms), Ok("a".into()));
        let by_name = required(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]),
        );
        assert_eq!(choose(&by_name, &nodes, &rooms), Ok("a".into()));
        let nowhere =
            required(json!([{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]));
        assert_eq!(
            choose(&nowhere, &nodes, &rooms).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );
        // Terms are ORed; an empty term matches nothing.
        let either = required(
            json!([{}, {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["south"]}]}]),
        );
        assert_eq!(choose(&either, &nodes, &rooms), Ok("a".into()));
        let preferred = with(json!({"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["south"]}]}}]}));
        assert_eq!(choose(&preferred, &nodes, &rooms), Ok("b".into()));
    }

    #[test]
    fn taint_values_host_ports_and_owners_count() {
        let mut tainted = node("a", "2", "4Gi");
        tainted["spec"]["taints"] =
            json!([{"key": "team", "value": "red", "effect": "NoSchedule"}]);
        let nodes = vec![tainted];
        let mut blue = pod("100m");
        blue["spec"]["tolerations"] =
            json!([{"key": "team", "operator": "Equal", "value": "blue"}]);
        assert!(
            choose(&blue, &nodes, &[])
                .unwrap_err()
                .contains("untolerated taint {team: red}")
        );
        blue["spec"]["tolerations"][0]["value"] = json!("red");
        assert_eq!(choose(&blue, &nodes, &[]), Ok("a".into()));

        let nodes = vec![node("a", "2", "4Gi"), node("b", "2", "4Gi")];
        let mut web = pod("100m");
        web["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        web["metadata"]["ownerReferences"] = json!([{"uid": "rs1", "controller": true}]);
        let mut placed = web.clone();
        placed["spec"]["nodeName"] = json!("a");
        let r = [placed.clone()].to_vec();
        // The port is taken on a, and b has none of the owner's pods anyway.
        assert_eq!(choose(&web, &nodes, &r), Ok("b".into()));
        let mut on_b = placed.clone();
        on_b["spec"]["nodeName"] = json!("b");
        assert_eq!(
            choose(&web, &nodes, &[placed.clone(), on_b]).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
        );
        // Without ports, the owner's pods spread.
        let mut spread = pod("100m");
        spread["metadata"]["ownerReferences"] = json!([{"uid": "rs1", "controller": true}]);
        assert_eq!(choose(&spread, &nodes, &r), Ok("b".into()));
    }

    #[test]
    fn big_clusters_are_sampled_as_kube_scheduler_does() {
        assert_eq!(feasible_to_find(50), 50);
        assert_eq!(feasible_to_find(100), 100);
        assert_eq!(feasible_to_find(1000), 420);
        assert_eq!(feasible_to_find(5000), 500);
        assert_eq!(feasible_to_find(30_000), 1500);
        // The search starts where the last one stopped, so every node gets its turn.
        let nodes: Vec<Value> = (0..300)
            .map(|i| node(&format!("n{i:03}"), "4", "8Gi"))
            .collect();
        let mut snapshot = Snapshot::new(&nodes, &[]);
        let first = snapshot.choose(&pod("100m")).unwrap();
        assert_eq!(snapshot.next_start, 144);
        let second = snapshot.choose(&pod("100m")).unwrap();
        assert!(
            first < 144 && (144..288).contains(&second),
            "{first} {second}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Scheduling pods one after another never puts more on a node than it has.
        #[test]
        fn a_bound_pod_always_fits_its_node(
            caps in proptest::collection::vec((1u32..8, 1u32..8, 1u32..6), 1..6),
            pods in proptest::collection::vec((0u32..3000, 0u32..3000), 1..60),
        ) {
            let nodes: Vec<Value> = caps.iter().enumerate().map(|(i, (cpu, mem, max))| {
                let mut n = node(&format!("n{i}"), &cpu.to_string(), &format!("{mem}Gi"));
                n["status"]["allocatable"]["pods"] = json!(max.to_string());
                n
            }).collect();
            let mut bound: Vec<Value> = Vec::new();
            for (i, (cpu, mem)) in pods.iter().enumerate() {
                let mut p = json!({"metadata": {"name": format!("p{i}")}, "spec": {"containers": [
                    {"resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}}}]}});
                if let Ok(n) = choose(&p, &nodes, &bound) {
                    p["spec"]["nodeName"] = json!(n);
                    bound.push(p);
                }
            }
            for (i, (cpu, mem, max)) in caps.iter().enumerate() {
                let name = format!("n{i}");
                let on: Vec<&Value> = bound.iter().filter(|p| p["spec"]["nodeName"] == name.as_str()).collect();
                let used: (i128, i128) = on.iter().map(|p| requests(p)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                proptest::prop_assert!(on.len() as u32 <= *max);
                proptest::prop_assert!(used.0 <= i128::from(*cpu) * 1000);
                proptest::prop_assert!(used.1 <= i128::from(*mem) * 1024 * 1024 * 1024 * 1000);
            }
        }

        /// A pass reserves room for every pod before its bindings go out at once; bindings
        /// that fail give their room back, and a second pass (over what was bound) fills the
        /// rest. No node ends with more than it has.
        #[test]
        fn bulk_binding_never_overcommits(
            caps in proptest::collection::vec((1u32..4, 1u32..4), 1..5),
            pods in proptest::collection::vec((0u32..1500, 0u32..1500, proptest::bool::ANY), 1..60),
        ) {
            let nodes: Vec<Value> = caps.iter().enumerate()
                .map(|(i, (cpu, mem))| node(&format!("n{i}"), &cpu.to_string(), &format!("{mem}Gi")))
                .collect();
            let pod_of = |i: usize, cpu: u32, mem: u32| json!({"metadata": {"name": format!("p{i}")},
                "spec": {"containers": [{"resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}}}]}});
            let mut bound: Vec<Value> = Vec::new();
            for round in 0..2 {
                let mut snapshot = Snapshot::new(&nodes, &bound);
                let mut batch = Vec::new();
                for (i, (cpu, mem, fails)) in pods.iter().enumerate() {
                    let name = format!("p{i}");
                    if bound.iter().any(|b| b["metadata"]["name"] == name.as_str()) {
                        continue;
                    }
                    let p = pod_of(i, *cpu, *mem);
                    if let Ok(n) = snapshot.choose(&p) {
                        snapshot.rooms[n].take(&p);
                        batch.push((p, n, *fails && round == 0));
                    }
                }
                for (mut p, n, fails) in batch {
                    if fails {
                        snapshot.rooms[n].release(&p);
                    } else {
                        p["spec"]["nodeName"] = json!(snapshot.nodes[n].name.clone());
                        bound.push(p);
                    }
                }
            }
            for (i, (cpu, mem)) in caps.iter().enumerate() {
                let name = format!("n{i}");
                let used = bound.iter().filter(|p| p["spec"]["nodeName"] == name.as_str())
                    .map(requests).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                proptest::prop_assert!(used.0 <= i128::from(*cpu) * 1000);
                proptest::prop_assert!(used.1 <= i128::from(*mem) * 1024 * 1024 * 1024 * 1000);
            }
        }
    }
}
