//! `wk bench api`: the API server's throughput, watch latency, list time and memory, measured
//! against a real `wk server` child process over HTTPS.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::client::Client;

pub mod cluster;
pub mod images;
pub mod js;
pub mod pods;
pub mod proxy;
pub mod scheduler;
pub mod shim;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pods created one at a time.
    pub sequential: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Pods in all (the concurrent phase creates the rest).
    pub total_pods: usize,
    /// Watchers for the latency phase.
    pub watchers: usize,
    /// Pods created while the watchers listen.
    pub watched_pods: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sequential: 1000,
            clients: 32,
            total_pods: 10_000,
            watchers: 100,
            watched_pods: 200,
        }
    }
}

/// One phase's latencies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latencies {
    /// Operations per second over the phase.
    pub per_second: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Sequential creates.
    pub create_sequential: Latencies,
    /// Creates with `clients` concurrent clients.
    pub create_concurrent: Latencies,
    /// Watch delivery latency (per delivered event).
    pub watch_delivery: Latencies,
    /// Time to list every pod, ms (median of 5).
    pub list_ms: f64,
    /// Pods listed.
    pub listed: usize,
    /// Server RSS right after start, MB.
    pub idle_rss_mb: f64,
    /// Server peak RSS (VmHWM) after holding every pod, MB.
    pub peak_rss_mb: f64,
    /// Server RSS at the end, MB.
    pub end_rss_mb: f64,
    /// Plain fsyncs per second on the same disk, one writer: the durability floor a server
    /// without group commit would be capped by.
    pub fsync_per_second: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// POSTs `body` as JSON to `path`.
async fn post(client: &Client, path: &str, body: &Value) -> anyhow::Result<Value> {
    Ok(client
        .request(
            Method::POST,
            path,
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await?)
}

/// Waits until `url` answers 200 (curl), up to `limit`; gives how long that took.
pub(crate) async fn wait_serving(url: &str, limit: Duration) -> anyhow::Result<Duration> {
    let began = Instant::now();
    while !Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-m", "2", url])
        .status()
        .is_ok_and(|s| s.success())
    {
        if began.elapsed() > limit {
            anyhow::bail!("{url} did not answer within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(began.elapsed())
}

/// The median of `v` (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn latencies(mut samples: Vec<f64>, elapsed: Duration) -> Latencies {
    samples.sort_by(f64::total_cmp);
    Latencies {
        per_second: samples.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&samples, 0.5),
        p99_ms: percentile(&samples, 0.99),
    }
}

fn rss_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pod(name: &str, stamp: Option<u128>) -> Vec<u8> {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/hello:v1", "ports": [{"containerPort": 8000}]}]}
    });
    if let Some(s) = stamp {
        p["metadata"]["annotations"] = json!({"bench/sent-ns": s.to_string()});
    }
    serde_json::to_vec(&p).unwrap_or_default()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct ServerProcess {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(wk: &Path) -> anyhow::Result<ServerProcess> {
    // `WK_BENCH_DISABLE` names more controllers to leave out, to see what each costs.
    let disabled = match std::env::var("WK_BENCH_DISABLE") {
        Ok(more) if !more.is_empty() => format!("scheduler,{more}"),
        _ => "scheduler".to_owned(),
    };
    start_server_disabling(wk, &disabled)
}

/// A `wk server` with no agent and the named controllers (comma-separated) disabled.
fn start_server_disabling(wk: &Path, disabled: &str) -> anyhow::Result<ServerProcess> {
    let dir = tempfile::Builder::new().prefix("wk-bench").tempdir()?;
    let mut child = Command::new(wk)
        .args([
            "server",
            "--no-agent",
            "--disable",
            disabled,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("wk server listening on") => break,
            Some(Ok(_)) => {}
            _ => anyhow::bail!("wk server did not start"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProcess {
        child,
        kubeconfig: dir.path().join("kubeconfig.yaml"),
        _dir: dir,
    })
}

async fn create(client: &Client, ns: &str, body: Vec<u8>) -> anyhow::Result<()> {
    client
        .request(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/pods"),
            Some("application/json"),
            Some(body),
        )
        .await?;
    Ok(())
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    client
        .request(
            Method::POST,
            "/api/v1/namespaces",
            Some("application/json"),
            Some(serde_json::to_vec(&ns)?),
        )
        .await?;
    Ok(())
}

fn fsync_rate(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        f.write_all(b"0123456789abcdef")?;
        f.sync_data()?;
        n += 1;
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(path);
    Ok(rate)
}

/// Runs the API benchmark against a fresh server started from the `wk` binary at `wk`.
///
/// # Errors
/// When the server cannot start or a request fails.
pub async fn api(wk: &Path, opts: &Options) -> anyhow::Result<Report> {
    let server = start_server(wk)?;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_mb = rss_mb(pid, "VmRSS:");
    let client = Client::from_kubeconfig(&server.kubeconfig, None)?;
    namespace(&client, "bench").await?;
    namespace(&client, "watch").await?;

    let mut samples = Vec::with_capacity(opts.sequential);
    let start = Instant::now();
    for i in 0..opts.sequential {
        let t = Instant::now();
        create(&client, "bench", pod(&format!("seq-{i}"), None)).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let create_sequential = latencies(samples, start.elapsed());

    let remaining = opts.total_pods.saturating_sub(opts.sequential);
    let clients = opts.clients.max(1);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for c in 0..clients {
        let per_client = remaining / clients + usize::from(c < remaining % clients);
        let client = Client::from_kubeconfig(&server.kubeconfig, None)?;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                create(&client, "bench", pod(&format!("c{c}-{i}"), None)).await?;
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await??);
    }
    let create_concurrent = latencies(samples, start.elapsed());

    let mut list_times = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let list = client.get("/api/v1/namespaces/bench/pods").await?;
        list_times.push(t.elapsed().as_secs_f64() * 1000.0);
        listed = list["items"].as_array().map_or(0, Vec::len);
    }
    list_times.sort_by(f64::total_cmp);

    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for _ in 0..opts.watchers {
        let client = Client::from_kubeconfig(&server.kubeconfig, None)?;
        let delivered = delivered.clone();
        let expect = opts.watched_pods;
        let list = client.get("/api/v1/namespaces/watch/pods").await?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_owned();
        let response = client
            .send(
                Method::GET,
                &format!("/api/v1/namespaces/watch/pods?watch=true&resourceVersion={rv}"),
                None,
                None,
                None,
            )
            .await?;
        watchers.push(tokio::spawn(async move {
            let mut body = response.into_body().into_data_stream();
            let mut buf = Vec::new();
            let mut seen = 0;
            while seen < expect {
                let Some(Ok(chunk)) = body.next().await else {
                    break;
                };
                let arrived = now_ns();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if let Some(sent) = event
                        .pointer("/object/metadata/annotations/bench~1sent-ns")
                        .and_then(Value::as_str)
                        && let Ok(sent) = sent.parse::<u128>()
                    {
                        let ms = arrived.saturating_sub(sent) as f64 / 1e6;
                        if let Ok(mut d) = delivered.lock() {
                            d.push(ms);
                        }
                        seen += 1;
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    for i in 0..opts.watched_pods {
        create(&client, "watch", pod(&format!("w-{i}"), Some(now_ns()))).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let elapsed = start.elapsed();
    let samples = delivered.lock().map(|d| d.clone()).unwrap_or_default();
    let watch_delivery = latencies(samples, elapsed);

    let peak_rss_mb = rss_mb(pid, "VmHWM:");
    let end_rss_mb = rss_mb(pid, "VmRSS:");
    let fsync_per_second = fsync_rate(server._dir.path())?;
    Ok(Report {
        create_sequential,
        create_concurrent,
        watch_delivery,
        list_ms: percentile(&list_times, 0.5),
        listed,
        idle_rss_mb,
        peak_rss_mb,
        end_rss_mb,
        fsync_per_second,
    })
}
