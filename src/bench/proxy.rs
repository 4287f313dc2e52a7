//! `wk bench proxy`: what the service proxy costs. One HTTP pod, measured with wrk at its pod
//! IP (the peer: no proxy at all), through its Service's ClusterIP and through a NodePort, in
//! alternating runs of the same session.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use http::Method;
use serde_json::json;

use super::pods::{Node, Wrk, hello_pod, wrk_with};
use super::{median, wait_serving};

/// Figures of `wk bench proxy`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyReport {
    /// Connections wrk keeps open.
    pub connections: usize,
    /// Straight to the pod's address, per run.
    pub pod_ip: Vec<Wrk>,
    /// Through the Service's ClusterIP, per run.
    pub cluster_ip: Vec<Wrk>,
    /// Through the Service's NodePort on the node's address, per run.
    pub node_port: Vec<Wrk>,
    /// Median ClusterIP req/s over median pod IP req/s.
    pub cluster_ip_ratio: f64,
    /// Median NodePort req/s over median pod IP req/s.
    pub node_port_ratio: f64,
}

/// Runs `wk bench proxy`.
///
/// # Errors
/// When the node, the pod or wrk fails.
pub async fn proxy(
    wk: &Path,
    http_wasm: &Path,
    runs: usize,
    secs: u64,
    connections: usize,
) -> anyhow::Result<ProxyReport> {
    // A node's instance pool has a slot per allowed pod (16 at least): room for 64 requests
    // in flight takes a node of 100 pods.
    let node = Node::start(wk, true, 100)?;
    node.import(wk, http_wasm, "hello:v1")?;
    node.client
        .request(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some("application/json"),
            Some(hello_pod("proxied", None)),
        )
        .await?;
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "proxied"},
        "spec": {"type": "NodePort", "selector": {"app": "bench"},
            "ports": [{"port": 8200, "targetPort": 8000}]}});
    let service = crate::controllers::create(
        &node.client,
        "/api/v1/namespaces/default/services",
        &service,
    )
    .await?;
    let cluster_ip = service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let node_port = service["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .unwrap_or_default();
    let began = Instant::now();
    let pod_ip = loop {
        let pod = node
            .client
            .get("/api/v1/namespaces/default/pods/proxied")
            .await?;
        if let Some(ip) = pod["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) {
            break ip.to_owned();
        }
        if began.elapsed() > Duration::from_secs(60) {
            bail!("the pod got no address");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let urls = [
        format!("http://{pod_ip}:8000/"),
        format!("http://{cluster_ip}:8200/"),
        format!("http://127.0.0.1:{node_port}/"),
    ];
    for url in &urls {
        wait_serving(url, Duration::from_secs(60)).await?;
    }
    let mut figures: [Vec<Wrk>; 3] = Default::default();
    for _ in 0..runs {
        for (url, out) in urls.iter().zip(figures.iter_mut()) {
            out.push(wrk_with(url, secs, connections)?);
        }
    }
    let rps = |w: &[Wrk]| median(w.iter().map(|w| w.requests_per_second).collect());
    let [pod_ip, cluster_ip, node_port] = figures;
    Ok(ProxyReport {
        connections,
        cluster_ip_ratio: rps(&cluster_ip) / rps(&pod_ip).max(1e-9),
        node_port_ratio: rps(&node_port) / rps(&pod_ip).max(1e-9),
        pod_ip,
        cluster_ip,
        node_port,
    })
}
