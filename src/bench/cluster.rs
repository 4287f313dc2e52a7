//! `wk bench cluster`: a Deployment made fully Available across real agents, and the failover
//! when one of them dies, against a `wk server` and `wk agent` child processes on this
//! machine. The peer, measured in the same run on the same agents, is the same number of
//! pods created already bound to their nodes (no Deployment, ReplicaSet or scheduler): what
//! the agents alone take.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use http::Method;
use serde_json::{Value, json};

use super::pods::{Node, start_agent_with};
use super::{median, post};
use crate::client::Client;

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// Seconds from the Deployment's creation until all its replicas are Available.
    pub deployment_available_s: f64,
    /// Seconds from creating as many pods bound to the nodes until all are Running (peer).
    pub bound_pods_running_s: f64,
    /// Seconds from SIGKILL of the agent holding the most pods until as many pods of the
    /// Deployment are Ready on the other nodes.
    pub failover_s: f64,
    /// How many of the Deployment's pods the dead agent held.
    pub pods_moved: usize,
}

/// The report: every run, and the medians.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Agents (nodes).
    pub agents: usize,
    /// Replicas of the Deployment.
    pub replicas: usize,
    /// `--node-monitor-grace-period`, seconds.
    pub grace_s: u64,
    /// Each run.
    pub runs: Vec<Run>,
    /// Median of deployment_available_s.
    pub deployment_available_s: f64,
    /// Median of bound_pods_running_s.
    pub bound_pods_running_s: f64,
    /// Median of failover_s.
    pub failover_s: f64,
}

fn container() -> Value {
    json!([{"name": "hello", "image": "hello:v1", "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8000}]}])
}

/// Polls `done` every 50 ms until it holds; fails after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut done: F) -> anyhow::Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let began = Instant::now();
    loop {
        if done().await? {
            return Ok(Instant::now());
        }
        if began.elapsed() > limit {
            bail!("{what} did not happen within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pods(client: &Client, selector: &str) -> anyhow::Result<Vec<Value>> {
    let list = client
        .get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector={selector}"
        ))
        .await?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn running_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Creates `n` pods labelled `selector` (`k=v`), bound round-robin to `nodes`, and returns how
/// long they took to all be Running.
async fn bound_pods(
    client: &Client,
    nodes: &[String],
    n: usize,
    label: &str,
) -> anyhow::Result<f64> {
    let began = Instant::now();
    // As concurrently as a ReplicaSet creates its pods (its slow start ends at 64 at once).
    let creates = (0..n).map(|i| {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{label}-{i}"), "labels": {"bench": label}},
            "spec": {"nodeName": nodes[i % nodes.len()], "terminationGracePeriodSeconds": 0,
                     "containers": container()}});
        async move { post(client, "/api/v1/namespaces/default/pods", &pod).await }
    });
    let results: Vec<anyhow::Result<Value>> = futures_util::stream::iter(creates)
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let selector = format!("bench%3D{label}");
    let done = until(
        "the bound pods running",
        Duration::from_secs(300),
        || async {
            let all = pods(client, &selector).await?;
            Ok(all.len() == n && all.iter().all(running_ready))
        },
    )
    .await?;
    let took = done.duration_since(began).as_secs_f64();
    client
        .request(
            Method::DELETE,
            &format!(
                "/api/v1/namespaces/default/pods?labelSelector={selector}&gracePeriodSeconds=0"
            ),
            None,
            None,
        )
        .await?;
    until("the bound pods gone", Duration::from_secs(120), || async {
        Ok(pods(client, &selector).await?.is_empty())
    })
    .await?;
    Ok(took)
}

fn kill(agent: &mut Child) {
    let _ = agent.kill();
    let _ = agent.wait();
}

/// One run: a fresh server and `agents` agents.
async fn run_once(
    wk: &Path,
    http_wasm: &Path,
    agents: usize,
    replicas: usize,
    grace: &str,
) -> anyhow::Result<Run> {
    let server = Node::start_with(
        wk,
        false,
        replicas,
        &["--no-agent", "--node-monitor-grace-period", grace],
    )?;
    let mut children: Vec<(String, Child, tempfile::TempDir)> = Vec::new();
    let network = vec!["--pod-network".to_owned(), "none".to_owned()];
    for i in 0..agents {
        let name = format!("node-{i}");
        let (child, dir) = start_agent_with(wk, &server, &name, replicas + 10, &network)?;
        let store = crate::agent::images::Store::new(dir.path());
        let (digest, _) = store.add(std::fs::File::open(http_wasm)?)?;
        store.tag("hello:v1", &digest)?;
        children.push((name, child, dir));
    }
    let result = measure(&server, &mut children, replicas).await;
    for (_, child, dir) in &mut children {
        kill(child);
        super::pods::release_agent(dir.path());
    }
    result
}

async fn measure(
    server: &Node,
    children: &mut [(String, Child, tempfile::TempDir)],
    replicas: usize,
) -> anyhow::Result<Run> {
    let client = &server.client;
    let names: Vec<String> = children.iter().map(|(n, _, _)| n.clone()).collect();
    until("every node Ready", Duration::from_secs(60), || async {
        let nodes = client.get("/api/v1/nodes").await?;
        let ready = nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        Ok(ready == names.len())
    })
    .await?;
    // Each agent compiles the component once; the pods measured start from its cache.
    bound_pods(client, &names, names.len(), "warm").await?;
    let bound_pods_running_s = bound_pods(client, &names, replicas, "bound").await?;

    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": container()}}}});
    let began = Instant::now();
    post(
        client,
        "/apis/apps/v1/namespaces/default/deployments",
        &deployment,
    )
    .await?;
    let available = until(
        "the Deployment Available",
        Duration::from_secs(300),
        || async {
            let d = client
                .get("/apis/apps/v1/namespaces/default/deployments/web")
                .await?;
            Ok(d["status"]["availableReplicas"].as_u64() == Some(replicas as u64))
        },
    )
    .await?;
    let deployment_available_s = available.duration_since(began).as_secs_f64();

    // Kill the agent with the most of the Deployment's pods.
    let placed = pods(client, "app%3Dweb").await?;
    let count = |node: &str| {
        placed
            .iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .count()
    };
    let victim = names
        .iter()
        .max_by_key(|n| count(n))
        .cloned()
        .unwrap_or_default();
    let pods_moved = count(&victim);
    let (_, child, _) = children
        .iter_mut()
        .find(|(n, _, _)| *n == victim)
        .ok_or_else(|| anyhow::anyhow!("no agent {victim}"))?;
    let killed = Instant::now();
    kill(child);
    let back = until(
        "the pods Ready elsewhere",
        Duration::from_secs(600),
        || async {
            let all = pods(client, "app%3Dweb").await?;
            let elsewhere = all
                .iter()
                .filter(|p| p["spec"]["nodeName"] != victim.as_str() && running_ready(p))
                .count();
            Ok(elsewhere >= replicas)
        },
    )
    .await?;
    Ok(Run {
        deployment_available_s,
        bound_pods_running_s,
        failover_s: back.duration_since(killed).as_secs_f64(),
        pods_moved,
    })
}

/// Runs `wk bench cluster`.
///
/// # Errors
/// When a child process fails or a figure never comes.
pub async fn cluster(
    wk: &Path,
    http_wasm: &Path,
    agents: usize,
    replicas: usize,
    runs: usize,
    grace: Duration,
) -> anyhow::Result<Report> {
    let grace_flag = format!("{}s", grace.as_secs());
    let mut all = Vec::new();
    for r in 0..runs {
        eprintln!("run {}/{runs}: {agents} agents, {replicas} replicas", r + 1);
        let run = run_once(wk, http_wasm, agents, replicas, &grace_flag).await?;
        eprintln!(
            "  deployment available {:.2} s, bound pods running {:.2} s, failover {:.1} s ({} pods)",
            run.deployment_available_s, run.bound_pods_running_s, run.failover_s, run.pods_moved
        );
        all.push(run);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(Report {
        agents,
        replicas,
        grace_s: grace.as_secs(),
        deployment_available_s: median(all.iter().map(|r| r.deployment_available_s).collect()),
        bound_pods_running_s: median(all.iter().map(|r| r.bound_pods_running_s).collect()),
        failover_s: median(all.iter().map(|r| r.failover_s).collect()),
        runs: all,
    })
}
