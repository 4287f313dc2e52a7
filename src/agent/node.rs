//! The agent's Node: registration with capacity, labels, addresses and nodeInfo; the Lease
//! heartbeat in `kube-node-lease`; and status updates when something changes.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AgentConfig;
use super::images;
use super::wasm::WASMTIME_VERSION;
use crate::client::{self, Client};

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How long a Lease is valid without renewal.
pub const LEASE_DURATION_SECONDS: i64 = 40;
/// The annotation that says the node runs pods on the host network (no namespaces).
pub const HOST_NETWORK_ANNOTATION: &str = "wk.dev/host-network-fallback";

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Total memory in KiB, from /proc/meminfo.
fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Disk space of the data directory, in bytes.
fn disk_bytes(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The instance type, where the platform says it (DMI product name).
fn instance_type() -> Option<String> {
    let name = read_trim("/sys/class/dmi/id/product_name");
    (!name.is_empty()).then(|| {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(63)
            .collect::<String>()
            .trim_matches('-')
            .to_owned()
    })
}

/// The whole Node object this agent registers.
/// What the agent found about its node at start, for the Node object.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Pods share the host network: no namespaces could be made.
    pub host_network: bool,
    /// Why Linux containers cannot run here; `None` when they can.
    pub no_linux: Option<String>,
    /// The pod network, once set up: what it gives pods, or why they get no address. `None`
    /// while it is not set up yet, or when the node has none by choice.
    pub pod_network: Option<Result<String, String>>,
}

/// The label of nodes that run Linux containers (the `runc` RuntimeClass selects them).
pub const RUNC_LABEL: &str = "wk.dev/runc";

/// The Node object this agent registers.
pub fn node_object(config: &AgentConfig, images: &images::Store, facts: &Facts) -> Value {
    let host_network = facts.host_network;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", memory_kib()),
        "pods": config.max_pods.to_string(),
        "ephemeral-storage": disk_bytes(&config.data_dir).to_string(),
    });
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(config.node_name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!(crate::arch()));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    labels.insert("beta.kubernetes.io/arch".into(), json!(crate::arch()));
    if let Some(t) = instance_type().filter(|t| !t.is_empty()) {
        labels.insert("node.kubernetes.io/instance-type".into(), json!(t));
    }
    if facts.no_linux.is_none() {
        labels.insert(RUNC_LABEL.into(), json!("true"));
    }
    for (k, v) in &config.labels {
        labels.insert(k.clone(), json!(v));
    }
    let mut annotations = serde_json::Map::new();
    if host_network {
        annotations.insert(HOST_NETWORK_ANNOTATION.into(), json!("true"));
    }
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels, "annotations": annotations},
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions(facts),
            "addresses": [
                {"type": "InternalIP", "address": config.address.to_string()},
                {"type": "Hostname", "address": config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
            "nodeInfo": {
                "machineID": read_trim("/etc/machine-id"),
                "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": kernel,
                "osImage": os_image(),
                "containerRuntimeVersion": format!("wasmtime://{WASMTIME_VERSION}"),
                "kubeletVersion": format!("wk/v{}", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": crate::arch(),
            },
            "images": images.node_images(),
        },
    })
}

fn conditions(facts: &Facts) -> Value {
    let host_network = facts.host_network;
    let t = now();
    let c = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    let ready = if host_network {
        "wk agent is posting ready status (pods share the host network: no network namespaces)"
    } else {
        "wk agent is posting ready status"
    };
    let mut all = json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "wk agent has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "wk agent has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "wk agent has sufficient PID available"
        ),
        c("Ready", "True", "KubeletReady", ready),
        match &facts.no_linux {
            None => c(
                "LinuxContainers",
                "True",
                "RuncAvailable",
                "Linux images run with runc through wk-shim"
            ),
            Some(why) => c("LinuxContainers", "False", "RuntimeUnavailable", why),
        },
    ]);
    // As a network plugin (flannel, Calico) reports it: False once pods can get addresses.
    let network = match &facts.pod_network {
        Some(Ok(what)) => Some(c("NetworkUnavailable", "False", "PodNetworkReady", what)),
        Some(Err(why)) => Some(c("NetworkUnavailable", "True", "PodNetworkFailed", why)),
        None => None,
    };
    if let (Some(list), Some(network)) = (all.as_array_mut(), network) {
        list.push(network);
    }
    all
}

/// Creates the Node, or brings an existing one's labels, addresses and status up to date.
///
/// # Errors
/// When the API cannot be reached or refuses the Node.
pub async fn register(client: &Client, node: &Value) -> Result<(), client::Error> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let path = format!("/api/v1/nodes/{name}");
    let existing = match client.get(&path).await {
        Ok(existing) => {
            let mut meta = json!({"labels": node["metadata"]["labels"]});
            if existing["metadata"]["annotations"]
                .get(HOST_NETWORK_ANNOTATION)
                .is_some()
                || node["metadata"]["annotations"]
                    .get(HOST_NETWORK_ANNOTATION)
                    .is_some()
            {
                meta["annotations"] = json!({HOST_NETWORK_ANNOTATION:
                    node["metadata"]["annotations"].get(HOST_NETWORK_ANNOTATION).cloned().unwrap_or(Value::Null)});
            }
            let patch = json!({"metadata": meta});
            client
                .request(
                    Method::PATCH,
                    &path,
                    Some("application/merge-patch+json"),
                    Some(patch.to_string().into_bytes()),
                )
                .await?;
            existing
        }
        Err(e) if e.code() == Some(404) => {
            match client
                .request(
                    Method::POST,
                    "/api/v1/nodes?fieldManager=wk-agent",
                    Some("application/json"),
                    Some(node.to_string().into_bytes()),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
            Value::Null
        }
        Err(e) => return Err(e),
    };
    update_status(client, node, &existing).await
}

/// Writes the Node's status (conditions with a fresh heartbeat, capacity, images...). A
/// condition whose status is the one `current` (the Node as the API has it) shows keeps its
/// lastTransitionTime, as the kubelet's do.
///
/// # Errors
/// When the API refuses it.
pub async fn update_status(
    client: &Client,
    node: &Value,
    current: &Value,
) -> Result<(), client::Error> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let mut status = node["status"].clone();
    crate::agent::status::keep_transition_times(
        &mut status,
        &crate::agent::status::transitions(&current["status"]),
    );
    let patch = json!({"status": status});
    client
        .request(
            Method::PATCH,
            &format!("/api/v1/nodes/{name}/status"),
            Some("application/merge-patch+json"),
            Some(patch.to_string().into_bytes()),
        )
        .await
        .map(drop)
}

/// Renews (or creates) the node's Lease.
///
/// # Errors
/// When the API refuses it.
pub async fn renew_lease(
    client: &Client,
    name: &str,
    node_uid: Option<&str>,
) -> Result<(), client::Error> {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}");
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now_micro()});
    match client
        .request(
            Method::PATCH,
            &path,
            Some("application/merge-patch+json"),
            Some(json!({"spec": spec}).to_string().into_bytes()),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(404) => {
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": spec,
            });
            if let Some(uid) = node_uid {
                lease["metadata"]["ownerReferences"] =
                    json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]);
            }
            client
                .request(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    Some("application/json"),
                    Some(lease.to_string().into_bytes()),
                )
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    }
}

/// Keeps the Node registered and its Lease fresh until `shutdown`: renews every 10 s,
/// re-registers when the Node is gone (a server restart on a fresh store, or a delete), and
/// rewrites the status every minute or when the image list changes.
pub async fn heartbeat(
    client: Client,
    config: AgentConfig,
    images: images::Store,
    facts: Facts,
    shutdown: CancellationToken,
) {
    let name = config.node_name.clone();
    let mut last_status = std::time::Instant::now();
    let mut last_images = images.node_images();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LEASE_RENEW) => {}
        }
        let node = client.get(&format!("/api/v1/nodes/{name}")).await;
        let result = match node {
            Err(e) if e.code() == Some(404) => {
                tracing::info!(node = %name, "the Node is gone; registering again");
                register(&client, &node_object(&config, &images, &facts)).await
            }
            Err(e) => Err(e),
            Ok(n) => {
                let uid = n["metadata"]["uid"].as_str().map(str::to_owned);
                let imgs = images.node_images();
                let mut r = renew_lease(&client, &name, uid.as_deref()).await;
                if r.is_ok()
                    && (imgs != last_images || last_status.elapsed() >= Duration::from_secs(60))
                {
                    let node = node_object(&config, &images, &facts);
                    r = update_status(&client, &node, &n).await;
                    last_status = std::time::Instant::now();
                    last_images = imgs;
                }
                r
            }
        };
        if let Err(e) = result {
            tracing::warn!(node = %name, error = %e, "heartbeat failed; retrying");
        }
    }
}
