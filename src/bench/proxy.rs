//! `wk bench proxy`: what the service proxy costs. One HTTP pod, measured with wrk at its pod
//! IP (the peer: no proxy at all), through its Service's ClusterIP and through a NodePort, in
//! alternating runs of the same session, on a node that hands such connections to the pod's
//! server and on one that relays them; and how long after a new pod is Ready its Service sends
//! it traffic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use http::Method;
use serde_json::json;

use super::pods::{Creating, Node, Wrk, first_ok_at, hello_pod, http_pod, wrk_with};
use super::{median, wait_serving};

/// Figures of `wk bench proxy`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyReport {
    /// Connections wrk keeps open.
    pub connections: usize,
    /// The node as it runs by default: the proxy hands connections for the pod's HTTP server
    /// to that server.
    pub handoff: ProxyRuns,
    /// A node that relays every connection (`--proxy-handoff false`), as the proxy does for
    /// endpoints that are not Wasm HTTP servers of its own node.
    pub relay: ProxyRuns,
    /// Per new pod, ms from the watch showing it Ready to its Service's ClusterIP answering
    /// from it (on the default node).
    pub ready_to_traffic_ms: Vec<f64>,
    /// Their median.
    pub ready_to_traffic_median_ms: f64,
}

/// One node's alternating wrk runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyRuns {
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

/// Runs `wk bench proxy`: the default node, then a relaying one.
///
/// # Errors
/// When a node, the pod or wrk fails.
pub async fn proxy(
    wk: &Path,
    http_wasm: &Path,
    runs: usize,
    secs: u64,
    connections: usize,
) -> anyhow::Result<ProxyReport> {
    let (handoff, ready_to_traffic_ms) = {
        let node = proxied_node(wk, http_wasm, &[]).await?;
        let runs_of = measure(&node, runs, secs, connections).await?;
        (runs_of, ready_to_traffic(&node, runs.max(1)).await?)
    };
    let relay = {
        let node = proxied_node(wk, http_wasm, &["--proxy-handoff", "false"]).await?;
        measure(&node, runs, secs, connections).await?
    };
    Ok(ProxyReport {
        connections,
        handoff,
        relay,
        ready_to_traffic_median_ms: median(ready_to_traffic_ms.clone()),
        ready_to_traffic_ms,
    })
}

/// A node (with `wk server` flags `extra`) serving one HTTP pod, `proxied`, behind a NodePort
/// Service of the same name.
async fn proxied_node(wk: &Path, http_wasm: &Path, extra: &[&str]) -> anyhow::Result<Node> {
    // A node's instance pool has a slot per allowed pod (16 at least): room for 64 requests
    // in flight takes a node of 100 pods.
    let node = Node::start_with(wk, true, 100, extra)?;
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
    crate::controllers::create(
        &node.client,
        "/api/v1/namespaces/default/services",
        &service,
    )
    .await?;
    Ok(node)
}

/// wrk at the pod's address, its Service's ClusterIP and its NodePort, in turn, `runs` times.
async fn measure(
    node: &Node,
    runs: usize,
    secs: u64,
    connections: usize,
) -> anyhow::Result<ProxyRuns> {
    let service = node
        .client
        .get("/api/v1/namespaces/default/services/proxied")
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
    Ok(ProxyRuns {
        cluster_ip_ratio: rps(&cluster_ip) / rps(&pod_ip).max(1e-9),
        node_port_ratio: rps(&node_port) / rps(&pod_ip).max(1e-9),
        pod_ip,
        cluster_ip,
        node_port,
    })
}

/// `runs` times, a new pod behind a Service of its own (no other endpoint): ms from a watch
/// showing the pod Ready to the Service's ClusterIP answering 200 from it, which a client on the
/// node tries every fraction of a millisecond. Each pod is deleted, and the ClusterIP stops
/// answering, before the next.
async fn ready_to_traffic(node: &Node, runs: usize) -> anyhow::Result<Vec<f64>> {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ready"},
        "spec": {"selector": {"app": "ready"}, "ports": [{"port": 8200, "targetPort": 8000}]}});
    let service = crate::controllers::create(
        &node.client,
        "/api/v1/namespaces/default/services",
        &service,
    )
    .await?;
    let ip: std::net::IpAddr = service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let vip = std::net::SocketAddr::new(ip, 8200);
    let mut out = Vec::new();
    for i in 0..runs {
        let name = format!("ready-{i}");
        let mut body: serde_json::Value =
            serde_json::from_slice(&http_pod(&name, None, "hello:v1", "IfNotPresent"))?;
        body["metadata"]["labels"]["app"] = json!("ready");
        let creating = Creating::start(node, &name, serde_json::to_vec(&body)?).await?;
        let deadline = creating.t0 + Duration::from_secs(30);
        let prober = std::thread::spawn(move || first_ok_at(vip, deadline));
        let ready = creating.ready().await?;
        let Some(answered) = prober.join().ok().flatten() else {
            bail!("{vip} never answered from pod {name}");
        };
        // Signed: the proxy may hear of the endpoint before the watch delivers Ready.
        out.push(match answered.checked_duration_since(ready) {
            Some(after) => after.as_secs_f64() * 1000.0,
            None => -(ready - answered).as_secs_f64() * 1000.0,
        });
        node.client
            .request(
                Method::DELETE,
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
                None,
            )
            .await?;
        let began = Instant::now();
        while first_ok_at(vip, Instant::now() + Duration::from_millis(100)).is_some() {
            if began.elapsed() > Duration::from_secs(30) {
                bail!("{vip} still answers 30 s after pod {name} was deleted");
            }
        }
    }
    Ok(out)
}
