//! `wk bench js`: a JS wasi:http component (examples/hello-js) served by wk, against the same
//! program on native Node and the same component under `wasmtime serve`, with the same wrk
//! settings in alternating runs; and the component's cold start, first time and cached.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use http::Method;
use serde_json::json;

use super::pods::{Node, Wrk, free_port, release_agent, start_agent_with, wrk_with};
use super::{median, wait_serving};

/// What `wk bench js` measures.
pub struct JsOptions<'a> {
    /// The component `npm run build` made (the fetch event: one request per instance).
    pub component: &'a Path,
    /// The component `npm run build:reusable` made, which the reusing pods run.
    pub reusable: &'a Path,
    /// The Node program it was built from.
    pub program: &'a Path,
    /// The wasmtime CLI (48.0.8).
    pub wasmtime: &'a Path,
    /// Alternating runs of each setup, per connection count.
    pub runs: usize,
    /// Seconds per wrk run.
    pub secs: u64,
    /// Connection counts.
    pub connections: Vec<usize>,
    /// Requests per instance for the reusing pod.
    pub reuse: u32,
}

/// One setup's runs at one connection count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Setup {
    /// What serves.
    pub name: String,
    /// The index of the `wasmtime serve` setup that runs the same component.
    pub peer: usize,
    /// Per run.
    pub runs: Vec<Wrk>,
}

/// One connection count's runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JsRow {
    /// Connections wrk keeps open.
    pub connections: usize,
    /// `node PROGRAM`, then `wasmtime serve -Scli` on each component (a fresh instance per
    /// request), then the wk pods.
    pub setups: Vec<Setup>,
}

/// Figures of `wk bench js`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JsReport {
    /// Pod created to first 200 OK, compiling the component.
    pub cold_start_s: f64,
    /// The same for the second pod, the compiled component cached.
    pub cached_start_s: f64,
    /// Per connection count.
    pub rows: Vec<JsRow>,
}

/// Median req/s of runs.
pub fn rps(runs: &[Wrk]) -> f64 {
    median(runs.iter().map(|w| w.requests_per_second).collect())
}

/// The image of the reusable build.
const REUSABLE_IMAGE: &str = "hello-js-reusable:v1";

/// Whether a pod with these annotations reuses instances, and so runs the reusable build.
fn reuses(annotations: &serde_json::Value) -> bool {
    annotations
        .get(crate::agent::wasm::http::REUSE_ANNOTATION)
        .is_some()
}

/// The node whose agent unmaps freed instance memory (`--wasm-keep-resident 0`).
const UNMAPPED: &str = "bench-unmapped";

/// A child killed when dropped.
struct Killed(Child);

/// A bench agent's data directory, its namespaces removed when dropped (after its agent).
struct Released<'a>(&'a Path);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        release_agent(self.0);
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Node's own preamble for the program: the port wrk uses, and a writeHead() after the response
/// was sent ignored as the prelude does (Node throws there, which ends the process).
const NODE_PREAMBLE: &str = r"
const http = require('http');
const writeHead = http.ServerResponse.prototype.writeHead;
http.ServerResponse.prototype.writeHead = function (...a) {
  return this.headersSent ? this : writeHead.apply(this, a);
};
const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (_port, ...rest) {
  return listen.call(this, Number(process.env.BENCH_PORT), '127.0.0.1', ...rest);
};
";

/// Runs `wk bench js`.
///
/// # Errors
/// When a child process, the pods or wrk fail.
pub async fn js(wk: &Path, opts: &JsOptions<'_>) -> anyhow::Result<JsReport> {
    // Room in the node's instance pool for 256 requests at once.
    let node = Node::start(wk, true, 300)?;
    node.import(wk, opts.component, "hello-js:v1")?;
    node.import(wk, opts.reusable, REUSABLE_IMAGE)?;
    // A second node that unmaps a freed instance's memory instead of resetting it in place,
    // to show what that step is worth.
    let flags = ["--wasm-keep-resident", "0", "--pod-network", "none"];
    let flags = flags.map(str::to_owned);
    let (agent, agent_dir) = start_agent_with(wk, &node, UNMAPPED, 300, &flags)?;
    let _release = Released(agent_dir.path());
    let _agent = Killed(agent);
    let store = crate::agent::images::Store::new(agent_dir.path());
    let (digest, _) = store.add(std::fs::File::open(opts.component)?)?;
    store.tag("hello-js:v1", &digest)?;
    let pod =
        |node: &str, name: &str, port: u16, annotations: serde_json::Value, cpu: Option<&str>| {
            // The reusing pods run the component that can answer request after request.
            let image = if reuses(&annotations) {
                REUSABLE_IMAGE
            } else {
                "hello-js:v1"
            };
            let mut resources = json!({"requests": {"cpu": "100m"}});
            if let Some(cpu) = cpu {
                resources["limits"] = json!({"cpu": cpu});
            }
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{
                "name": "hello", "image": image, "imagePullPolicy": "Never",
                "resources": resources,
                "ports": [{"containerPort": 8000, "hostPort": port}]}]}})
        };
    // The pods: (name, node, annotations, CPU limit). Without a limit a busy pod spreads over
    // the node's cores; a limit of one core keeps it on its own thread.
    let reuse = json!({crate::agent::wasm::http::REUSE_ANNOTATION: opts.reuse.to_string()});
    let pods = [
        ("wk, fresh instance", "fresh", "bench", json!({}), None),
        (
            "wk, fresh instance, one core",
            "fresh-1",
            "bench",
            json!({}),
            Some("1"),
        ),
        (
            "wk, fresh instance, one core, 2 made ahead",
            "prewarm",
            "bench",
            json!({crate::agent::wasm::http::PREWARM_ANNOTATION: "2"}),
            Some("1"),
        ),
        ("wk, instance reuse", "reuse", "bench", reuse.clone(), None),
        (
            "wk, instance reuse, one core",
            "reuse-1",
            "bench",
            reuse,
            Some("1"),
        ),
        (
            "wk, fresh instance, one core, memory unmapped",
            "unmapped",
            UNMAPPED,
            json!({}),
            Some("1"),
        ),
    ];
    let mut urls = Vec::new();
    let mut starts = Vec::new();
    for (_, name, on, annotations, cpu) in &pods {
        let port = free_port()?;
        let began = Instant::now();
        node.client
            .request(
                Method::POST,
                "/api/v1/namespaces/default/pods",
                Some("application/json"),
                Some(serde_json::to_vec(&pod(
                    on,
                    name,
                    port,
                    annotations.clone(),
                    *cpu,
                ))?),
            )
            .await?;
        let url = format!("http://127.0.0.1:{port}/");
        wait_serving(&url, Duration::from_secs(600)).await?;
        starts.push(began.elapsed().as_secs_f64());
        urls.push(url);
    }

    let dir = tempfile::tempdir()?;
    let preamble = dir.path().join("preamble.js");
    std::fs::write(&preamble, NODE_PREAMBLE)?;
    let node_port = free_port()?;
    let _native = Killed(
        Command::new("node")
            .arg("-r")
            .arg(&preamble)
            .arg(opts.program)
            .env("BENCH_PORT", node_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node")?,
    );
    let node_url = format!("http://127.0.0.1:{node_port}/");
    wait_serving(&node_url, Duration::from_secs(30)).await?;

    let mut peers = Vec::new();
    let mut peer_urls = Vec::new();
    for component in [opts.component, opts.reusable] {
        let port = free_port()?;
        peers.push(Killed(
            Command::new(opts.wasmtime)
                .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
                .arg(component)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", opts.wasmtime.display()))?,
        ));
        let url = format!("http://127.0.0.1:{port}/");
        wait_serving(&url, Duration::from_secs(600)).await?;
        peer_urls.push(url);
    }

    // Each setup with the index of the `wasmtime serve` of its component.
    let mut names = vec![
        ("node hello.js", 1),
        ("wasmtime serve (fresh instance)", 1),
        ("wasmtime serve, reusable build", 2),
    ];
    names.extend(pods.iter().map(|p| (p.0, if reuses(&p.3) { 2 } else { 1 })));
    let mut targets = vec![node_url];
    targets.extend(peer_urls);
    targets.extend(urls);
    let mut rows = Vec::new();
    for &connections in &opts.connections {
        let mut figures = vec![Vec::new(); targets.len()];
        for _ in 0..opts.runs {
            for (url, out) in targets.iter().zip(figures.iter_mut()) {
                out.push(wrk_with(url, opts.secs, connections)?);
            }
        }
        rows.push(JsRow {
            connections,
            setups: names
                .iter()
                .zip(figures)
                .map(|(&(name, peer), runs)| Setup {
                    name: name.to_owned(),
                    peer,
                    runs,
                })
                .collect(),
        });
    }
    Ok(JsReport {
        cold_start_s: starts[0],
        cached_start_s: starts[1],
        rows,
    })
}
