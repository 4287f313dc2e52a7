//! `wk bench pods` and `wk bench serve`: pod start latency against `runc run`, density of idle
//! HTTP pods, the agent's idle memory, and serving throughput against `wasmtime serve`, all
//! measured against real child processes on this machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::Method;
use serde_json::{Value, json};

use super::{Latencies, latencies, median, rss_mb};
use crate::client::Client;

/// A `wk server` (with or without its agent) as a child process.
pub struct Node {
    child: Child,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// An admin client.
    pub client: Client,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

/// The range bench clusters take pod addresses from (shared address space).
const BENCH_CIDR: &str = "100.127.0.0/16";
/// A bridge holds at most 1,024 ports (the kernel's BR_MAX_PORTS).
const BRIDGE_PORTS: usize = 1023;

/// The node CIDR prefix length that gives `pods` pods an address each, from [`BENCH_CIDR`].
fn node_mask(pods: usize) -> u8 {
    (16..=24)
        .rev()
        .find(|len| (1usize << (32 - len)) - 3 >= pods)
        .unwrap_or(16)
}

/// The agent's pod-network flags for `pods` pods: bridge `bridge`, or no pod network where
/// one bridge cannot hold them all.
fn network_flags(bridge: &str, pods: usize) -> Vec<String> {
    let mode = if pods > BRIDGE_PORTS {
        "none"
    } else {
        "bridge"
    };
    ["--bridge", bridge, "--pod-network", mode]
        .map(str::to_owned)
        .to_vec()
}

/// Removes a bench bridge and its service link (its pods' veths went with their namespaces).
fn delete_bridge(name: &str) {
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let h = crate::net::link::host_handle()?;
            // The service proxy's dummy link goes with the bridge, as the test harness does.
            if let Some(vips) = crate::agent::proxy::link_name(&name) {
                let _ = crate::net::link::delete(&h, &vips).await;
            }
            crate::net::link::delete(&h, &name).await
        })
    })
    .join();
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM first, so the agent stops its pods' threads; then make sure.
        // SAFETY: kill with a valid pid and signal number has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        release_node(&self.dir.path().join("agent"), NODE_BRIDGE);
    }
}

/// The bridge of a bench server's built-in agent.
const NODE_BRIDGE: &str = "wkbench0";
/// The bridge of a bench's standalone agent.
const AGENT_BRIDGE: &str = "wkbench1";

impl Node {
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `wk server` with its agent (node `bench`) unless `agent` is false.
    ///
    /// # Errors
    /// When the server does not start.
    pub fn start(wk: &Path, agent: bool, max_pods: usize) -> anyhow::Result<Self> {
        let extra: &[&str] = if agent {
            &[]
        } else {
            &["--no-agent", "--disable", "scheduler"]
        };
        Self::start_with(wk, agent, max_pods, extra)
    }

    /// As [`Node::start`], with more `wk server` flags.
    ///
    /// # Errors
    /// When the server does not start.
    pub fn start_with(
        wk: &Path,
        agent: bool,
        max_pods: usize,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wk-bench").tempdir()?;
        let mut cmd = Command::new(wk);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--cluster-cidr", BENCH_CIDR, "--node-cidr-mask-size"])
            .arg(node_mask(max_pods).to_string())
            .args(extra);
        if agent {
            cmd.args(network_flags(NODE_BRIDGE, max_pods));
            cmd.args([
                "--node-name",
                "bench",
                "--agent-listen",
                "127.0.0.1:0",
                "--max-pods",
            ])
            .arg(max_pods.to_string());
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut url = String::new();
        let want = if agent {
            "wk agent running as node"
        } else {
            "wk server listening on"
        };
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(u) = line.strip_prefix("wk server listening on ") {
                        url = u.trim().to_owned();
                    }
                    if line.starts_with(want) {
                        break;
                    }
                }
                _ => bail!("wk server did not start"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let client = Client::from_kubeconfig(&dir.path().join("kubeconfig.yaml"), None)?;
        Ok(Self {
            child,
            dir,
            client,
            url,
        })
    }

    /// Loads a module into the node's image store.
    ///
    /// # Errors
    /// When `wk image import` fails.
    pub fn import(&self, wk: &Path, file: &Path, name: &str) -> anyhow::Result<()> {
        let out = Command::new(wk)
            .args(["image", "import"])
            .arg(file)
            .args(["--name", name, "--data-dir"])
            .arg(self.dir.path().join("agent"))
            .output()?;
        if !out.status.success() {
            bail!("wk image import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

pub(crate) fn hello_pod(name: &str, host_port: Option<u16>) -> Vec<u8> {
    http_pod(name, host_port, "hello:v1", "IfNotPresent")
}

/// An HTTP pod bound to the bench node, serving on 8000.
pub(crate) fn http_pod(name: &str, host_port: Option<u16>, image: &str, policy: &str) -> Vec<u8> {
    let mut port = json!({"containerPort": 8000});
    if let Some(h) = host_port {
        port["hostPort"] = json!(h);
    }
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": "bench", "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "hello", "image": image, "imagePullPolicy": policy, "ports": [port]}]}
    }))
    .unwrap_or_default()
}

/// GET / on 127.0.0.1:8000 from inside a network namespace until it answers 200.
fn first_ok(netns: PathBuf, deadline: Instant) -> Option<Instant> {
    while !netns.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    // Joining can race the bind mount; retry briefly.
    while crate::agent::sandbox::netns::enter(&netns).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    first_ok_at("127.0.0.1:8000".parse().ok()?, deadline)
}

/// GET / on `addr` until it answers 200: when it did, or None by `deadline`.
pub(crate) fn first_ok_at(addr: std::net::SocketAddr, deadline: Instant) -> Option<Instant> {
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 16];
            if s.read(&mut head).is_ok_and(|n| n >= 12) && &head[9..12] == b"200" {
                return Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// The pause between two measured starts.
const SETTLE: Duration = Duration::from_millis(200);

/// Start latency: one pod at a time, bound at creation; the time until a watch shows it
/// Running, and until it answers 200 inside its namespace.
async fn start_latency(node: &Node, runs: usize) -> anyhow::Result<(Latencies, Latencies)> {
    let hello = |_| ("hello:v1".to_owned(), "IfNotPresent".to_owned());
    start_latency_of(node, runs, "start", &hello, SETTLE).await
}

/// As [`start_latency`], for pods of `prefix-i` whose image and pull policy `image(i)` gives,
/// `settle` apart.
pub(crate) async fn start_latency_of(
    node: &Node,
    runs: usize,
    prefix: &str,
    image: &(dyn Fn(usize) -> (String, String) + Sync),
    settle: Duration,
) -> anyhow::Result<(Latencies, Latencies)> {
    let began = Instant::now();
    let (running, ok) = start_samples(node, runs, prefix, image, settle).await?;
    let elapsed = began.elapsed();
    Ok((latencies(running, elapsed), latencies(ok, elapsed)))
}

/// The samples of [`start_latency_of`], in ms: to Running, and to the first 200 OK. Sample `k`
/// is pod `k + 1` (pod 0 is a warm-up, not counted).
pub(crate) async fn start_samples(
    node: &Node,
    runs: usize,
    prefix: &str,
    image: &(dyn Fn(usize) -> (String, String) + Sync),
    settle: Duration,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut running = Vec::new();
    let mut ok = Vec::new();
    // The first pod compiles the module and fills the cache; it is not counted.
    for i in 0..=runs {
        let name = format!("{prefix}-{i}");
        let (image_name, policy) = image(i);
        let creating =
            Creating::start(node, &name, http_pod(&name, None, &image_name, &policy)).await?;
        let (t0, uid) = (creating.t0, creating.uid.clone());
        let netns = node.dir.path().join("agent/netns").join(&uid);
        let deadline = t0 + Duration::from_secs(30);
        let prober = std::thread::spawn(move || first_ok(netns, deadline));
        let t_running = creating.running().await?;
        let t_ok = prober
            .join()
            .ok()
            .flatten()
            .context("the pod never answered 200")?;
        if i > 0 {
            running.push((t_running - t0).as_secs_f64() * 1000.0);
            ok.push((t_ok - t0).as_secs_f64() * 1000.0);
        }
        // Each start on a settled node: the last pod's events written and the agent's spare
        // namespaces made again, as for a pod created on a node that is not mid-burst.
        tokio::time::sleep(settle).await;
    }
    Ok((running, ok))
}

/// A pod being created, with a watch on it from before the create.
pub(crate) struct Creating {
    name: String,
    watch: crate::client::Watch,
    /// When the create returned.
    pub t0: Instant,
    /// The pod's uid.
    pub uid: String,
}

impl Creating {
    /// Watches for pod `name`, then creates it from `body`.
    pub async fn start(node: &Node, name: &str, body: Vec<u8>) -> anyhow::Result<Self> {
        let list = node
            .client
            .get("/api/v1/namespaces/default/pods?limit=1")
            .await?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_owned();
        let watch = node
            .client
            .watch(
                &format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3D{name}"),
                None,
            )
            .await?;
        let created = node
            .client
            .request(
                Method::POST,
                "/api/v1/namespaces/default/pods",
                Some("application/json"),
                Some(body),
            )
            .await?;
        Ok(Self {
            name: name.to_owned(),
            watch,
            t0: Instant::now(),
            uid: created["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// When the watch showed the pod Running (within 30 s).
    pub async fn running(self) -> anyhow::Result<Instant> {
        self.until("start", |pod| pod["status"]["phase"] == "Running")
            .await
    }

    /// When the watch showed the pod's Ready condition True (within 30 s).
    pub async fn ready(self) -> anyhow::Result<Instant> {
        self.until("become Ready", |pod| {
            pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .await
    }

    /// When the watch first showed the pod as `done` says (within 30 s).
    async fn until(mut self, what: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Instant> {
        loop {
            let Some(event) = tokio::time::timeout(Duration::from_secs(30), self.watch.next())
                .await
                .ok()
                .transpose()?
                .flatten()
            else {
                bail!("pod {} did not {what}", self.name);
            };
            if done(&event["object"]) {
                return Ok(Instant::now());
            }
        }
    }
}

/// The peer: `runc run -d` of a busybox container (create and start, detached), timed to its
/// return, on the same machine.
pub(crate) fn runc_latency(runs: usize) -> anyhow::Result<Latencies> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is not installed (Debian: busybox-static)")?;
    let bundle = tempfile::Builder::new().prefix("wk-bench-runc").tempdir()?;
    let rootfs = bundle.path().join("rootfs/bin");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(busybox, rootfs.join("busybox"))?;
    let spec = Command::new("runc")
        .arg("spec")
        .current_dir(bundle.path())
        .output()
        .context("running runc spec (is runc installed?)")?;
    if !spec.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&spec.stderr));
    }
    let path = bundle.path().join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["/bin/busybox", "sleep", "600"]);
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    let mut samples = Vec::new();
    let began = Instant::now();
    for i in 0..=runs {
        let id = format!("wk-bench-{}-{i}", std::process::id());
        // The detached container inherits runc's stdio: a pipe would never reach EOF.
        let errors = bundle.path().join("runc.err");
        let t0 = Instant::now();
        let status = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors)?)
            .status()?;
        let t = t0.elapsed();
        let _ = Command::new("runc").args(["delete", "-f", &id]).output();
        if !status.success() {
            bail!(
                "runc run: {}",
                std::fs::read_to_string(&errors).unwrap_or_default()
            );
        }
        if i > 0 {
            samples.push(t.as_secs_f64() * 1000.0);
        }
    }
    Ok(latencies(samples, began.elapsed()))
}

/// Figures of `wk bench pods`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PodsReport {
    /// Bound to Running (seen through a watch), cached module.
    pub to_running: Latencies,
    /// Bound to the first 200 OK inside the pod's namespace.
    pub to_first_ok: Latencies,
    /// `runc run -d` of busybox, same machine.
    pub runc_start: Latencies,
    /// runc p50 / wk p50 to Running.
    pub speedup_p50: f64,
    /// Idle HTTP pods started for the density figure.
    /// The density agent's pod network: `bridge`, or `none` past one bridge's ports.
    pub density_network: &'static str,
    pub density_pods: usize,
    /// Seconds from the first create to all of them Running.
    pub density_seconds: f64,
    /// A standalone agent's RSS before the density pods, MB.
    pub rss_before_mb: f64,
    /// ... and with all of them running, MB.
    pub rss_after_mb: f64,
    /// (after - before) / pods, KB.
    pub rss_per_pod_kb: f64,
    /// The same for anonymous memory alone (what the pods themselves hold: heap, stacks,
    /// guest memory), without pages of the binary's code that their work mapped, KB.
    pub anon_per_pod_kb: f64,
    /// A standalone `wk agent`'s RSS, idle for 30 s, MB.
    pub agent_idle_rss_mb: f64,
    /// ... of which anonymous memory (heap, stacks, relocated data), MB.
    pub agent_idle_anon_mb: f64,
}

/// Runs `wk bench pods`.
///
/// # Errors
/// When a child process or a pod fails.
pub async fn pods(
    wk: &Path,
    http_wasm: &Path,
    starts: usize,
    density: usize,
    runc_runs: usize,
) -> anyhow::Result<PodsReport> {
    let node = Node::start(wk, true, starts + 10)?;
    node.import(wk, http_wasm, "hello:v1")?;
    eprintln!("start latency: {starts} pods, one at a time");
    let (to_running, to_first_ok) = start_latency(&node, starts).await?;
    eprintln!("runc: {runc_runs} containers");
    let runc_start = runc_latency(runc_runs)?;
    eprintln!("density: {density} idle HTTP pods");

    drop(node);

    // Density runs against a standalone agent, so its RSS is the agent's alone (the
    // control plane's copies of the pods and their events live in the server process).
    let server = Node::start(wk, false, density + 10)?;
    let (mut agent, agent_dir) = start_agent(wk, &server, "bench", density + 10)?;
    // Past the agent's release of its start-up pages (a second after start), so that the
    // memory before and after the pods is measured the same way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = crate::agent::images::Store::new(agent_dir.path());
    let (digest, _) = store.add(std::fs::File::open(http_wasm)?)?;
    store.tag("hello:v1", &digest)?;
    // One warm-up pod compiles the module (Cranelift's memory is the process's from then on)
    // and caches it; the pods measured start from the cache, as every later pod does.
    server
        .client
        .request(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some("application/json"),
            Some(hello_pod("warm-up", None)),
        )
        .await?;
    let warm = Instant::now();
    while server
        .client
        .get("/api/v1/namespaces/default/pods/warm-up")
        .await?["status"]["phase"]
        != "Running"
    {
        if warm.elapsed() > Duration::from_secs(120) {
            bail!("the warm-up pod did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_mb = rss_mb(agent.id(), "VmRSS:");
    let anon_before_mb = rss_mb(agent.id(), "RssAnon:");
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = density.div_ceil(16);
    for w in 0..16 {
        let client = server.client.clone();
        tasks.spawn(async move {
            for i in (w * per)..((w + 1) * per).min(density) {
                client
                    .request(
                        Method::POST,
                        "/api/v1/namespaces/default/pods",
                        Some("application/json"),
                        Some(hello_pod(&format!("idle-{i}"), None)),
                    )
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    loop {
        let list = server
            .client
            .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dbench")
            .await?;
        let running = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("idle-"))
                    && p["status"]["phase"] == "Running"
            })
            .count();
        if running == density {
            break;
        }
        if began.elapsed() > Duration::from_secs(600) {
            bail!("only {running} of {density} pods are running after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let density_seconds = began.elapsed().as_secs_f64();
    // Idle: the burst's helper threads (tokio keeps an idle blocking thread 10 s) are gone.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss_after_mb = rss_mb(agent.id(), "VmRSS:");
    let anon_after_mb = rss_mb(agent.id(), "RssAnon:");
    stop_agent(&mut agent, &agent_dir);
    drop(server);

    eprintln!("agent idle RSS");
    let (agent_idle_rss_mb, agent_idle_anon_mb) = agent_idle_rss(wk).await?;
    Ok(PodsReport {
        speedup_p50: runc_start.p50_ms / to_running.p50_ms.max(1e-9),
        to_running,
        to_first_ok,
        runc_start,
        density_pods: density,
        density_network: if density + 10 > BRIDGE_PORTS {
            "none"
        } else {
            "bridge"
        },
        density_seconds,
        rss_before_mb,
        rss_after_mb,
        rss_per_pod_kb: (rss_after_mb - rss_before_mb) * 1024.0 / density.max(1) as f64,
        anon_per_pod_kb: (anon_after_mb - anon_before_mb) * 1024.0 / density.max(1) as f64,
        agent_idle_rss_mb,
        agent_idle_anon_mb,
    })
}

/// Starts `wk agent` joined to `server` as node `name`; returns it and its data directory.
fn start_agent(
    wk: &Path,
    server: &Node,
    name: &str,
    max_pods: usize,
) -> anyhow::Result<(Child, tempfile::TempDir)> {
    start_agent_with(
        wk,
        server,
        name,
        max_pods,
        &network_flags(AGENT_BRIDGE, max_pods),
    )
}

/// As [`start_agent`], with `network` for its pod network flags.
pub(crate) fn start_agent_with(
    wk: &Path,
    server: &Node,
    name: &str,
    max_pods: usize,
    network: &[String],
) -> anyhow::Result<(Child, tempfile::TempDir)> {
    let token = std::fs::read_to_string(server.dir.path().join("node-token"))?;
    let dir = tempfile::Builder::new()
        .prefix("wk-bench-agent")
        .tempdir()?;
    let mut agent = Command::new(wk)
        .args([
            "agent",
            "--server",
            &server.url,
            "--token",
            token.trim(),
            "--node-name",
            name,
            "--agent-listen",
            "127.0.0.1:0",
            "--max-pods",
        ])
        .arg(max_pods.to_string())
        .args(network)
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = agent.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let started = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("wk agent running as node") => break true,
            Some(Ok(_)) => {}
            _ => break false,
        }
    };
    std::thread::spawn(move || for _ in lines {});
    if !started {
        let _ = agent.kill();
        bail!("wk agent did not start");
    }
    Ok((agent, dir))
}

fn stop_agent(agent: &mut Child, dir: &tempfile::TempDir) {
    // SAFETY: kill with a valid pid and signal number has no memory effects.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    let _ = agent.kill();
    let _ = agent.wait();
    release_node(dir.path(), AGENT_BRIDGE);
}

/// Removes what a stopped bench agent leaves for a later agent to adopt (its pods' and spare
/// namespaces, its bridge): a bench has no later agent.
fn release_node(agent_dir: &Path, bridge: &str) {
    release_agent(agent_dir);
    delete_bridge(bridge);
}

/// Stops the Linux containers and removes the network namespaces a stopped bench agent
/// leaves.
pub(crate) fn release_agent(agent_dir: &Path) {
    crate::agent::shim::stop_all(agent_dir);
    for sub in ["netns", "netns-spare"] {
        for entry in std::fs::read_dir(agent_dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            crate::agent::sandbox::netns::destroy(&entry.path());
        }
    }
}

/// A standalone `wk agent` joined to a control-plane-only server, idle for 3 s.
/// How long the idle agent runs before its memory is read: three node-status heartbeats and
/// lease renewals, so the figure holds the code that idle work runs.
const IDLE: Duration = Duration::from_secs(30);

/// A standalone agent's RSS and anonymous RSS, MB, after [`IDLE`] with no pods.
async fn agent_idle_rss(wk: &Path) -> anyhow::Result<(f64, f64)> {
    let server = Node::start(wk, false, 1000)?;
    let (mut agent, dir) = start_agent(wk, &server, "solo", 1000)?;
    tokio::time::sleep(IDLE).await;
    let rss = rss_mb(agent.id(), "VmRSS:");
    let anon = rss_mb(agent.id(), "RssAnon:");
    stop_agent(&mut agent, &dir);
    Ok((rss, anon))
}

/// One wrk run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Wrk {
    /// Requests per second.
    pub requests_per_second: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

fn parse_ms(text: &str) -> f64 {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        _ => n,
    }
}

/// Runs `wrk -t2 -c32 -d<secs>s --latency` against a URL.
///
/// # Errors
/// When wrk is missing or fails.
pub fn wrk(url: &str, secs: u64) -> anyhow::Result<Wrk> {
    wrk_with(url, secs, 32)
}

/// As [`wrk`], with `connections` connections.
///
/// # Errors
/// When wrk is missing or fails.
pub fn wrk_with(url: &str, secs: u64, connections: usize) -> anyhow::Result<Wrk> {
    let out = Command::new("wrk")
        .args([
            // wrk wants a connection per thread at least.
            &format!("-t{}", connections.clamp(1, 2)),
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk (Debian: wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_owned()
    };
    let rps: f64 = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    if rps == 0.0 || text.contains("Non-2xx") {
        bail!("wrk against {url} failed:\n{text}");
    }
    Ok(Wrk {
        requests_per_second: rps,
        p50_ms: parse_ms(&field("50%")),
        p99_ms: parse_ms(&field("99%")),
    })
}

/// Figures of `wk bench serve`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeReport {
    /// One HTTP pod, through its hostPort, per run.
    pub wk: Vec<Wrk>,
    /// `wasmtime serve -Scli` on the same component, per run.
    pub wasmtime_serve: Vec<Wrk>,
    /// Median wk req/s over median wasmtime serve req/s.
    pub ratio: f64,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `wk bench serve`: alternating wrk runs against one wk pod and `wasmtime serve`.
///
/// # Errors
/// When a child process or wrk fails.
pub async fn serve(
    wk: &Path,
    http_wasm: &Path,
    wasmtime: &Path,
    runs: usize,
    secs: u64,
) -> anyhow::Result<ServeReport> {
    let node = Node::start(wk, true, 10)?;
    node.import(wk, http_wasm, "hello:v1")?;
    let port = free_port()?;
    node.client
        .request(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some("application/json"),
            Some(hello_pod("serve", Some(port))),
        )
        .await?;
    let url = format!("http://127.0.0.1:{port}/");
    super::wait_serving(&url, Duration::from_secs(60)).await?;
    let peer_port = free_port()?;
    let mut peer = Command::new(wasmtime)
        .args([
            "serve",
            "-Scli",
            "--addr",
            &format!("127.0.0.1:{peer_port}"),
        ])
        .arg(http_wasm)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", wasmtime.display()))?;
    let peer_url = format!("http://127.0.0.1:{peer_port}/");
    if let Err(e) = super::wait_serving(&peer_url, Duration::from_secs(120)).await {
        let _ = peer.kill();
        return Err(e.context("wasmtime serve did not serve"));
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(wrk(&url, secs)?);
        theirs.push(wrk(&peer_url, secs)?);
    }
    let _ = peer.kill();
    let _ = peer.wait();
    let ratio = median(ours.iter().map(|w| w.requests_per_second).collect())
        / median(theirs.iter().map(|w| w.requests_per_second).collect()).max(1e-9);
    Ok(ServeReport {
        wk: ours,
        wasmtime_serve: theirs,
        ratio,
    })
}
