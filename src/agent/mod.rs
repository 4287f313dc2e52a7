//! The node agent (the kubelet's analog): registers its Node, keeps the Lease fresh, watches
//! the pods bound to it and runs each in a sandbox with a worker of its own. It is an API
//! client like any other, whether it runs inside `wk server` or as `wk agent`.

pub mod endpoint;
pub mod env;
pub mod exec;
pub mod handoff;
pub mod image_gc;
pub mod images;
pub mod logs;
pub mod node;
pub mod pod;
pub mod probes;
pub mod proxy;
pub mod routes;
pub mod sandbox;
pub mod shim;
pub mod status;
pub mod trim;
pub mod wasm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Wasm runtime could not be set up.
    #[error(transparent)]
    Wasm(#[from] wasm::Error),
    /// The API server refused the Node.
    #[error("registering node {node}: {source}")]
    Register {
        /// The node name.
        node: String,
        /// The cause.
        #[source]
        source: client::Error,
    },
    /// The agent's endpoint could not be served.
    #[error("the agent endpoint on {addr}: {message}")]
    Endpoint {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
}

/// What an agent needs to start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Where images, compiled modules, sandboxes and logs live.
    pub data_dir: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// Extra Node labels.
    pub labels: BTreeMap<String, String>,
    /// The most pods this node runs (its allocatable pods).
    pub max_pods: u32,
    /// The agent endpoint (logs, metrics); port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address reported as the Node's InternalIP.
    pub address: IpAddr,
    /// The endpoint's actual port, once bound.
    pub port: u16,
    /// The token the API server presents to the endpoint (the node token).
    pub node_token: String,
    /// Whether pods get an address on the node's bridge (else only their own loopback).
    pub pod_network: bool,
    /// The bridge pods are connected to.
    pub bridge: String,
    /// The largest module or component the node compiles.
    pub max_module_bytes: u64,
    /// How much of a freed instance slot's written memory is reset in place rather than
    /// unmapped (0: none; see [`wasm::Runtime::new`]).
    pub keep_resident: usize,
    /// How many network namespaces are kept made ahead of need.
    pub spare_netns: usize,
    /// Whether the service proxy hands connections for this node's Wasm HTTP servers straight
    /// to them ([`handoff`]) rather than relaying them.
    pub proxy_handoff: bool,
    /// When unused images are collected.
    pub image_gc: image_gc::Policy,
    /// The resolv.conf naming the resolvers cluster DNS forwards other names to.
    pub resolv_conf: Option<PathBuf>,
    /// Where the node serves Ingresses.
    pub ingress: crate::ingress::Ports,
    /// The container shim binary (`None`: `wk-shim` next to `wk`, else on PATH).
    pub container_shim: Option<PathBuf>,
}

impl AgentConfig {
    /// A config with the defaults: the host name, 1000 pods, the endpoint on 127.0.0.1:10250.
    pub fn new(data_dir: impl Into<PathBuf>, node_token: impl Into<String>) -> Self {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            data_dir: data_dir.into(),
            node_name: name,
            labels: BTreeMap::new(),
            max_pods: 1000,
            listen: SocketAddr::from(([127, 0, 0, 1], 10250)),
            address: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            node_token: node_token.into(),
            pod_network: true,
            bridge: crate::net::BRIDGE.to_owned(),
            max_module_bytes: wasm::MAX_MODULE_BYTES,
            keep_resident: wasm::KEEP_RESIDENT,
            spare_netns: SPARE_NETNS,
            proxy_handoff: true,
            image_gc: image_gc::Policy::default(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
            container_shim: None,
            ingress: crate::ingress::Ports {
                http: 80,
                https: 443,
            },
        }
    }
}

/// One tracked container's usage gauges.
pub struct ContainerMetrics {
    /// The container's name.
    pub name: String,
    /// Linear memory in use, bytes.
    pub memory: Arc<AtomicU64>,
    /// CPU time used, nanoseconds.
    pub cpu: Arc<AtomicU64>,
}

/// One pod's gauges.
struct PodMetrics {
    namespace: String,
    name: String,
    containers: Vec<ContainerMetrics>,
}

/// A snapshot of one container's usage.
#[derive(Clone, Debug)]
pub struct ContainerUsage {
    /// The container.
    pub name: String,
    /// Linear memory in use, bytes.
    pub memory: u64,
    /// CPU time used, nanoseconds.
    pub cpu: u64,
    /// CPU in use over the last sample window, nanocores.
    pub nanocores: u64,
}

/// A snapshot of one pod's usage.
#[derive(Clone, Debug)]
pub struct PodUsage {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Its containers.
    pub containers: Vec<ContainerUsage>,
}

/// What the workers, the pod watch and the endpoint share.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// The Wasm runtime.
    pub runtime: Arc<wasm::Runtime>,
    /// The container shim for Linux images, or why this node cannot run them.
    pub shim: Result<Arc<shim::Shim>, String>,
    /// The node's images.
    pub images: images::Store,
    /// Pulls images into [`Shared::images`].
    pub puller: crate::oci::Puller,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// The Node's address.
    pub node_ip: String,
    /// Whether pods share the host network (no namespaces could be made).
    pub host_network: bool,
    /// Network namespaces made ahead for the next pods (none on the host network).
    pub spare_netns: Option<sandbox::netns::Pool>,
    /// The pod network, once the Node has its podCIDR (absent without one, or when off).
    pub net: std::sync::OnceLock<Arc<crate::net::PodNetwork>>,
    /// Cluster DNS, which this node's pods resolve names through.
    pub dns: std::sync::OnceLock<Arc<crate::dns::ClusterDns>>,
    /// The node's resolv.conf, for pods whose DNS policy is the node's.
    pub resolv_conf: Option<PathBuf>,
    /// The most pods this node admits (its allocatable pods).
    pub max_pods: std::sync::atomic::AtomicU32,
    /// Stops every worker without deleting anything (agent shutdown).
    pub shutdown: CancellationToken,
    /// `namespace/name` → uid of the pods bound here.
    pods: Mutex<HashMap<String, String>>,
    /// Log files being written now.
    live: Mutex<HashSet<PathBuf>>,
    /// Per-pod usage gauges, by uid.
    metrics: Mutex<HashMap<String, PodMetrics>>,
    /// Wakes image garbage collection (after pulls and pod deletions).
    pub gc_wake: tokio::sync::Notify,
    /// Held shared while a container resolves (and maybe pulls) its image and marks it used,
    /// and exclusively while image garbage collection removes anything.
    pub image_lock: tokio::sync::RwLock<()>,
    /// The HTTP servers of this node's Wasm pods, which the service proxy hands connections to.
    pub local_http: Arc<handoff::LocalServers>,
    /// The image ids each running pod's containers use, by uid (image GC spares them).
    images_in_use: Mutex<HashMap<String, Vec<String>>>,
    /// CPU rates from the last samples.
    rates: Mutex<Rates>,
}

/// CPU usage rates, sampled every [`SAMPLE`].
#[derive(Default)]
struct Rates {
    /// `uid/container` → (cumulative CPU ns, when, nanocores).
    containers: HashMap<String, (u64, std::time::Instant, u64)>,
    /// The node: (busy ticks, total ticks, nanocores).
    node: (u64, u64, u64),
}

/// How often CPU rates are sampled (metrics-server's window).
pub const SAMPLE: Duration = Duration::from_secs(10);

/// The node's busy and total CPU ticks, from /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The node's memory in use (MemTotal − MemAvailable), bytes.
fn memory_in_use() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:")) * 1024
}

impl Shared {
    /// Tops up the spare network namespaces in the background, connected to the pod network
    /// where there is one.
    fn spawn_refill(self: &Arc<Self>) {
        let shared = self.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            if let Some(pool) = &shared.spare_netns
                && !shared.shutdown.is_cancelled()
            {
                let net = shared.net.get();
                pool.fill(&|path| runtime.block_on(net?.wire_spare(path)));
            }
        });
    }

    /// Records a pod's containers' gauges for metrics.
    pub fn track(
        &self,
        uid: &str,
        ns: &str,
        name: &str,
        containers: Vec<(String, Arc<AtomicU64>, Arc<AtomicU64>)>,
    ) {
        if let Ok(mut m) = self.metrics.lock() {
            let list = containers
                .into_iter()
                .map(|(name, memory, cpu)| ContainerMetrics { name, memory, cpu })
                .collect();
            m.insert(
                uid.to_owned(),
                PodMetrics {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    containers: list,
                },
            );
        }
    }

    /// Forgets a pod that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.metrics.lock() {
            m.remove(uid);
        }
        if let Ok(mut m) = self.images_in_use.lock() {
            m.remove(uid);
        }
        self.gc_wake.notify_one();
    }

    /// Marks an image as used by a pod until the pod is forgotten: image GC keeps it.
    pub fn use_image(&self, uid: &str, id: &str) {
        if let Ok(mut m) = self.images_in_use.lock() {
            let ids = m.entry(uid.to_owned()).or_default();
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_owned());
            }
        }
    }

    /// The ids of the images the pods here use.
    pub fn images_in_use(&self) -> HashSet<String> {
        self.images_in_use
            .lock()
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Marks a log file as being written (or not any more).
    pub fn live_logs(&self, path: &Path, live: bool) {
        if let Ok(mut l) = self.live.lock() {
            if live {
                l.insert(path.to_owned());
            } else {
                l.remove(path);
            }
        }
    }

    /// Whether a log file is still being written.
    pub fn is_live(&self, path: &Path) -> bool {
        self.live.lock().is_ok_and(|l| l.contains(path))
    }

    /// The uid of a pod bound here.
    pub fn uid_of(&self, ns: &str, name: &str) -> Option<String> {
        self.pods.lock().ok()?.get(&format!("{ns}/{name}")).cloned()
    }

    /// Takes a CPU sample of every container and of the node, updating the rates.
    fn sample(&self) {
        let now = std::time::Instant::now();
        let Ok(mut rates) = self.rates.lock() else {
            return;
        };
        if let Ok(m) = self.metrics.lock() {
            let mut seen = HashSet::new();
            for (uid, pod) in m.iter() {
                for c in &pod.containers {
                    let key = format!("{uid}/{}", c.name);
                    let cpu = c.cpu.load(Ordering::Relaxed);
                    let rate = match rates.containers.get(&key) {
                        Some((last, at, _)) => {
                            let dt = now.duration_since(*at).as_nanos().max(1) as u64;
                            cpu.saturating_sub(*last).saturating_mul(1_000_000_000) / dt
                        }
                        None => 0,
                    };
                    rates.containers.insert(key.clone(), (cpu, now, rate));
                    seen.insert(key);
                }
            }
            rates.containers.retain(|k, _| seen.contains(k));
        }
        let (busy, total) = cpu_ticks();
        let (last_busy, last_total, _) = rates.node;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let rate = if total > last_total && last_total > 0 {
            (busy - last_busy).saturating_mul(cores * 1_000_000_000) / (total - last_total)
        } else {
            0
        };
        rates.node = (busy, total, rate);
    }

    /// The node's usage: (CPU nanocores, memory bytes in use).
    pub fn node_usage(&self) -> (u64, u64) {
        let cpu = self.rates.lock().map_or(0, |r| r.node.2);
        (cpu, memory_in_use())
    }

    /// A container's CPU rate in nanocores, from the last samples.
    pub fn cpu_rate(&self, uid: &str, container: &str) -> u64 {
        self.rates
            .lock()
            .ok()
            .and_then(|r| r.containers.get(&format!("{uid}/{container}")).map(|c| c.2))
            .unwrap_or(0)
    }

    /// The usage of every pod.
    pub fn usage(&self) -> Vec<PodUsage> {
        let Ok(m) = self.metrics.lock() else {
            return Vec::new();
        };
        m.iter()
            .map(|(uid, p)| PodUsage {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                containers: p
                    .containers
                    .iter()
                    .map(|c| ContainerUsage {
                        name: c.name.clone(),
                        memory: c.memory.load(Ordering::Relaxed),
                        cpu: c.cpu.load(Ordering::Relaxed),
                        nanocores: self.cpu_rate(uid, &c.name),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// A running agent.
pub struct Agent {
    /// The state its parts share.
    pub shared: Arc<Shared>,
    /// The endpoint's address.
    pub endpoint: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Raises the soft open-file limit to the hard one: each pod holds a few descriptors (its
/// runtime's epoll and waker, listeners, log files), so thousands of pods need more than the
/// usual soft limit, as containerd and the kubelet arrange for themselves.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    // Root may go past the hard limit, up to the kernel's nr_open.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(hard)
        .min(1 << 20);
    if soft >= ceiling {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_err()
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(now, _)| now)
}

/// Descriptors an idle HTTP pod holds: its runtime's epoll, the epoll's clone, the waker and
/// the signal driver's stream (tokio builds one into every runtime with I/O when its `signal`
/// feature is on), and the listener; a log file is opened only once the guest writes.
const FDS_PER_POD: u64 = 5;
/// Descriptors kept for the agent itself: API connections, log readers, compiles.
const FD_RESERVE: u64 = 1024;

/// How many pods an open-file limit of `limit` leaves room for.
fn fd_room(limit: u64) -> u32 {
    u32::try_from(limit.saturating_sub(FD_RESERVE) / FDS_PER_POD).unwrap_or(u32::MAX)
}

/// Whether this process may make network namespaces (it is root with CAP_SYS_ADMIN).
fn namespaces_available(data: &Path) -> bool {
    let probe = data.join("netns").join(".probe");
    match sandbox::netns::create(&probe) {
        Ok(()) => {
            sandbox::netns::destroy(&probe);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "network namespaces are unavailable (not root?): pods will share the host network, and clashing ports are refused");
            false
        }
    }
}

/// Waits for the Node's podCIDR (given by the server's node IPAM controller), then sets up the
/// bridge for it. The error says why pods get no address.
async fn pod_network(
    client: &Client,
    config: &AgentConfig,
    data: &Path,
    shutdown: &CancellationToken,
) -> Result<crate::net::PodNetwork, String> {
    let path = format!("/api/v1/nodes/{}", config.node_name);
    let deadline = std::time::Instant::now() + POD_CIDR_WAIT;
    let range = loop {
        let node = client.get(&path).await.ok();
        let cidr = node.as_ref().and_then(|n| n["spec"]["podCIDR"].as_str());
        if let Some(c) = cidr {
            match c.parse::<crate::net::cidr::Cidr>() {
                Ok(c) => break c,
                Err(e) => return Err(format!("the Node's podCIDR {c:?} is not usable: {e}")),
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(
                "the Node got no podCIDR (is the server's nodeipam controller off?)".to_owned(),
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => return Err("the agent is stopping".to_owned()),
        }
    };
    crate::net::PodNetwork::setup(&config.bridge, range, &data.join("net"))
        .await
        .map_err(|e| {
            format!(
                "setting up the bridge {} for {range} failed: {e}",
                config.bridge
            )
        })
}

/// Network namespaces kept ready for the next pods: enough for pods started one after
/// another; a burst past them makes its own.
pub const SPARE_NETNS: usize = 2;

/// How long a new agent waits for its Node's podCIDR.
const POD_CIDR_WAIT: Duration = Duration::from_secs(20);

impl Agent {
    /// Starts the agent: runtime, endpoint, Node registration, heartbeat and pod watch.
    ///
    /// # Errors
    /// When the data directory, runtime or endpoint cannot be set up, or the Node is refused.
    pub async fn start(
        mut config: AgentConfig,
        client: Client,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let data = config.data_dir.clone();
        let fd_limit = raise_fd_limit();
        if fd_room(fd_limit) < config.max_pods {
            config.max_pods = fd_room(fd_limit).max(1);
            tracing::warn!(
                fd_limit,
                pods = config.max_pods,
                "the open-file limit caps the pods this node runs (raise it, or run as root with CAP_SYS_RESOURCE)"
            );
        }
        for sub in ["pods", "netns", "content", "images", "cache"] {
            let p = data.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| Error::Io { path: p, source })?;
        }
        let host_network = {
            let d = data.clone();
            tokio::task::spawn_blocking(move || !namespaces_available(&d))
                .await
                .unwrap_or(true)
        };
        let runtime = {
            let (cache, max, module, keep) = (
                data.join("cache").join("wasm"),
                config.max_pods,
                config.max_module_bytes,
                config.keep_resident,
            );
            tokio::task::spawn_blocking(move || wasm::Runtime::new(&cache, max, module, keep))
                .await
                .map_err(|e| Error::Endpoint {
                    addr: config.listen,
                    message: e.to_string(),
                })??
        };
        let images = images::Store::new(&data);
        let shim = shim::Shim::detect(&data, config.container_shim.as_deref(), !host_network)
            .map(Arc::new);
        if let Err(why) = &shim {
            tracing::warn!(reason = %why, "Linux containers cannot run on this node; Wasm pods can");
        }
        let mut facts = node::Facts {
            host_network,
            no_linux: shim.as_ref().err().cloned(),
            pod_network: None,
        };
        let shared = Arc::new(Shared {
            client: client.clone(),
            runtime,
            shim,
            images: images.clone(),
            puller: crate::oci::Puller::new(images.clone(), &data, config.max_module_bytes),
            data_dir: data.clone(),
            node_name: config.node_name.clone(),
            node_ip: config.address.to_string(),
            host_network,
            spare_netns: (!host_network)
                .then(|| sandbox::netns::Pool::new(data.join("netns-spare"), config.spare_netns)),
            net: std::sync::OnceLock::new(),
            dns: std::sync::OnceLock::new(),
            resolv_conf: config.resolv_conf.clone(),
            max_pods: std::sync::atomic::AtomicU32::new(config.max_pods),
            shutdown: shutdown.clone(),
            pods: Mutex::new(HashMap::new()),
            live: Mutex::new(HashSet::new()),
            metrics: Mutex::new(HashMap::new()),
            images_in_use: Mutex::new(HashMap::new()),
            gc_wake: tokio::sync::Notify::new(),
            image_lock: tokio::sync::RwLock::new(()),
            local_http: Arc::default(),
            rates: Mutex::new(Rates::default()),
        });
        let (endpoint, serve) = endpoint::bind(&config, shared.clone()).await?;
        config.port = endpoint.port();
        let node = node::node_object(&config, &images, &facts);
        // The API may still be starting (an in-process agent races its server): retry a while.
        let mut attempt = 0;
        loop {
            match node::register(&client, &node).await {
                Ok(()) => break,
                Err(e)
                    if attempt < 20
                        && !matches!(
                            e,
                            client::Error::Status {
                                code: 401 | 403 | 422,
                                ..
                            }
                        ) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(source) => {
                    return Err(Error::Register {
                        node: config.node_name.clone(),
                        source,
                    });
                }
            }
        }
        // The Node as registered: its uid for the Lease, its conditions for the next status.
        let registered = client
            .get(&format!("/api/v1/nodes/{}", config.node_name))
            .await
            .unwrap_or_default();
        let uid = registered["metadata"]["uid"].as_str().map(str::to_owned);
        let _ = node::renew_lease(&client, &config.node_name, uid.as_deref()).await;
        if config.pod_network && !host_network {
            match pod_network(&client, &config, &data, &shutdown).await {
                Ok(net) => {
                    facts.pod_network = Some(Ok(format!(
                        "pods get addresses of {} on the bridge {}",
                        net.range(),
                        net.bridge()
                    )));
                    // A pod needs an address: no more pods than the podCIDR holds.
                    let room = u32::try_from(net.capacity()).unwrap_or(u32::MAX);
                    if room < config.max_pods {
                        config.max_pods = room;
                        shared
                            .max_pods
                            .store(room, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::info!(range = %net.range(), bridge = net.bridge(), "pod network ready");
                    let _ = shared.net.set(Arc::new(net));
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "pods get no address: only their own loopback");
                    facts.pod_network = Some(Err(why));
                }
            }
            // The Node says so (NetworkUnavailable) at once, not at the next heartbeat.
            if !shutdown.is_cancelled() {
                let node = node::node_object(&config, &images, &facts);
                let _ = node::update_status(&client, &node, &registered).await;
            }
        }
        // The proxy and cluster DNS read the same Services and EndpointSlices.
        let services_and_slices = crate::client::informer::Informers::default();
        let dns = Arc::new(crate::dns::ClusterDns::new(
            services_and_slices.get(crate::controllers::endpoints::SERVICES),
            services_and_slices.get(crate::controllers::endpointslice::SLICES),
            config
                .resolv_conf
                .as_deref()
                .map(|p| crate::dns::upstream_from(p, &[]))
                .unwrap_or_default(),
        ));
        let _ = shared.dns.set(dns.clone());
        let ingress = crate::ingress::run(
            client.clone(),
            services_and_slices.get(crate::controllers::endpoints::SERVICES),
            services_and_slices.get(crate::controllers::endpointslice::SLICES),
            config.address,
            config.ingress,
            shutdown.clone(),
        );
        tracing::info!(node = %config.node_name, %endpoint, host_network, pooling = shared.runtime.pooling, reset_in_place = shared.runtime.reset_in_place, "node agent registered");
        let mut tasks = vec![
            tokio::spawn(serve),
            tokio::spawn(node::heartbeat(
                client.clone(),
                config.clone(),
                images,
                facts,
                shutdown.clone(),
            )),
            tokio::spawn(watch_pods(shared.clone())),
            tokio::spawn(sample_usage(shared.clone())),
            tokio::spawn(collect_storage(shared.clone())),
            tokio::spawn(image_gc::run(shared.clone(), config.image_gc)),
            tokio::spawn(proxy::run(
                client.clone(),
                services_and_slices,
                dns,
                config.address,
                shared.net.get().and_then(|n| proxy::link_name(n.bridge())),
                config.proxy_handoff.then(|| shared.local_http.clone()),
                shutdown.clone(),
            )),
            tokio::spawn(ingress),
        ];
        // Pods on other nodes are reached through routes, once this node has pods of its own.
        if shared.net.get().is_some() {
            tasks.push(tokio::spawn(routes::run(
                client.clone(),
                config.node_name.clone(),
                config.address,
                shutdown.clone(),
            )));
        }
        Ok(Self {
            shared,
            endpoint,
            tasks,
        })
    }

    /// Waits until the agent has stopped (its shutdown token was cancelled).
    pub async fn wait(self) {
        self.shared.shutdown.cancelled().await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if let Some(pool) = &self.shared.spare_netns {
            for holder in pool.drain() {
                if let Some(net) = self.shared.net.get() {
                    net.forget(&holder);
                }
            }
        }
    }
}

/// Samples CPU usage until shutdown, for the rates metrics report.
async fn sample_usage(shared: Arc<Shared>) {
    loop {
        shared.sample();
        tokio::select! {
            () = tokio::time::sleep(SAMPLE) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Removes deleted volumes' data now and then.
async fn collect_storage(shared: Arc<Shared>) {
    let storage = sandbox::volumes::storage_dir(&shared.data_dir);
    loop {
        sandbox::volumes::collect_storage(&shared.client, &storage).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// `namespace/name`, as the endpoint looks pods up.
fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

struct Workers {
    shared: Arc<Shared>,
    running: HashMap<String, (watch::Sender<Arc<Value>>, tokio::task::JoinHandle<()>)>,
    /// Pods refused at admission (not run here).
    rejected: HashSet<String>,
}

impl Workers {
    fn dispatch(&mut self, mut pod: Value) {
        // Each pod's worker keeps its object as long as the pod runs, and nothing here reads
        // who manages which field (several KB per pod, a copy each time kubectl applies).
        if let Some(meta) = pod["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = pod_key(&pod);
        if let Ok(mut p) = self.shared.pods.lock() {
            p.insert(key, uid.clone());
        }
        let pod = Arc::new(pod);
        if let Some((tx, task)) = self.running.get(&uid)
            && !task.is_finished()
        {
            let _ = tx.send(pod);
            return;
        }
        if self.rejected.contains(&uid) || !self.admit(&pod) {
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                // Nothing of it ever ran here: the object can go at once.
                let (client, pod) = (self.shared.client.clone(), pod.clone());
                tokio::spawn(async move { pod::delete_now(&client, &pod).await });
            }
            return;
        }
        let (tx, rx) = watch::channel(pod);
        let task = tokio::spawn(pod::run(self.shared.clone(), rx));
        self.running.insert(uid, (tx, task));
    }

    /// The kubelet's admission check on pod count: a new pod past the node's allocatable pods
    /// is rejected (phase Failed, reason OutOfpods) instead of run.
    fn admit(&mut self, pod: &Value) -> bool {
        let terminal =
            |p: &Value| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        if terminal(pod) || pod.pointer("/metadata/deletionTimestamp").is_some() {
            return true;
        }
        let capacity = self
            .shared
            .max_pods
            .load(std::sync::atomic::Ordering::Relaxed);
        let used = self
            .running
            .values()
            .filter(|(tx, task)| !task.is_finished() && !terminal(&tx.borrow()))
            .count();
        if used < capacity as usize {
            return true;
        }
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.rejected.insert(uid);
        let message = format!(
            "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {capacity}"
        );
        tracing::warn!(pod = %pod_key(pod), %message);
        let (shared, pod) = (self.shared.clone(), pod.clone());
        tokio::spawn(async move { pod::reject(&shared, &pod, "OutOfpods", &message).await });
        false
    }

    fn remove(&mut self, pod: &Value) {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        self.rejected.remove(uid);
        // Dropping the sender tells the worker the pod is gone.
        self.running.remove(uid);
        let key = pod_key(pod);
        if let Ok(mut p) = self.shared.pods.lock() {
            p.remove(&key);
        }
    }
}

/// Lists and watches the pods bound to this node, giving each its worker; re-lists after a
/// watch breaks (410 Gone, a server restart).
async fn watch_pods(shared: Arc<Shared>) {
    let selector = format!("spec.nodeName%3D{}", shared.node_name);
    let mut workers = Workers {
        shared: shared.clone(),
        running: HashMap::new(),
        rejected: HashSet::new(),
    };
    let mut first = true;
    while !shared.shutdown.is_cancelled() {
        let list = match shared
            .client
            .get(&format!("/api/v1/pods?fieldSelector={selector}"))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing this node's pods failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shared.shutdown.cancelled() => break,
                }
            }
        };
        let mut rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_owned();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let seen: HashSet<String> = items
            .iter()
            .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
            .collect();
        let gone: Vec<String> = workers
            .running
            .keys()
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            workers.running.remove(&uid);
        }
        if first {
            let data = shared.data_dir.clone();
            let keep = seen.clone();
            let removed = tokio::task::spawn_blocking(move || sandbox::clean_orphans(&data, &keep))
                .await
                .unwrap_or(0);
            if removed > 0 {
                tracing::info!(removed, "cleaned sandboxes of pods no longer bound here");
            }
            if let Some(net) = shared.net.get() {
                let removed = net.prune(&seen).await;
                if removed > 0 {
                    tracing::info!(removed, "removed veths of pods no longer bound here");
                }
            }
            // Only now: the prune above would take a spare's veth for a leftover.
            shared.spawn_refill();
            first = false;
        }
        for item in items {
            workers.dispatch(item);
        }
        let url = format!(
            "/api/v1/pods?fieldSelector={selector}&watch=true&allowWatchBookmarks=true&resourceVersion={rv}"
        );
        let mut stream = match shared.client.watch(&url, None).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "watch failed; listing again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                () = shared.shutdown.cancelled() => return,
            };
            match event {
                Ok(Some(mut event)) => {
                    let object = event["object"].take();
                    if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                        rv = v.to_owned();
                    }
                    match event["type"].as_str() {
                        Some("ADDED" | "MODIFIED") => workers.dispatch(object),
                        Some("DELETED") => workers.remove(&object),
                        _ => {}
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = rv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_bounds_the_pods() {
        assert_eq!(fd_room(20_000), 3_795);
        assert_eq!(fd_room(1 << 20), 209_510);
        assert_eq!(
            fd_room(100),
            0,
            "a tiny limit leaves no room (the agent still offers one)"
        );
    }
}
