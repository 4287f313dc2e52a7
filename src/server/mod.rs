//! `wk server`: the control plane. It owns the store, serves the API over HTTPS, and writes
//! the admin kubeconfig and the node join token on first start.

pub mod kubeconfig;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentConfig;
use crate::api::{self, ApiState, Tokens, resources};
use crate::store::{Cache, RedbStore, Store};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Making or loading certificates failed.
    #[error("TLS material: {0}")]
    Tls(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
    /// The listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a built-in object (a namespace, the `kubernetes` Service) failed.
    #[error("creating the built-in {name}: {source}")]
    Bootstrap {
        /// The object.
        name: String,
        /// The cause.
        #[source]
        source: Box<api::ApiError>,
    },
    /// The HTTP server failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// The built-in node agent could not start.
    #[error("the built-in node agent: {0}")]
    Agent(String),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn tls(e: impl std::fmt::Display) -> Self {
        Self::Tls(e.to_string())
    }
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The default data directory: /var/lib/wk as root, else ~/.local/share/wk.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/wk")
    } else {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share/wk")
    }
}

/// What `wk server` needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the database, certificates, kubeconfig and tokens live.
    pub data_dir: PathBuf,
    /// The HTTPS listen address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Extra names for the serving certificate.
    pub tls_sans: Vec<String>,
    /// How often watches that ask for bookmarks get one.
    pub bookmark_interval: Duration,
    /// In-process controllers not to run (`scheduler`), as kube-controller-manager's
    /// `--controllers=-name`.
    pub disabled: Vec<String>,
    /// The range pods take their addresses from; each Node gets a share of it.
    pub cluster_cidr: crate::net::cidr::Cidr,
    /// The prefix length of each Node's share (its podCIDR).
    pub node_cidr_mask: u8,
    /// The range Services take their ClusterIPs from.
    pub service_cidr: crate::net::cidr::Cidr,
    /// The controllers' timings.
    pub controllers: crate::controllers::Settings,
}

impl ServerConfig {
    /// A config with the defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            tls_sans: Vec::new(),
            bookmark_interval: Duration::from_secs(10),
            disabled: Vec::new(),
            cluster_cidr: crate::net::CLUSTER_CIDR,
            node_cidr_mask: crate::net::NODE_CIDR_MASK,
            service_cidr: crate::net::SERVICE_CIDR,
            controllers: crate::controllers::Settings::default(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a token file, or makes one.
fn token(path: &Path) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => {
            let t = random_token();
            write_private(path, format!("{t}\n").as_bytes())?;
            Ok(t)
        }
    }
}

/// Reads the node token's secret, writing `DATA/node-token` in the secure format.
fn node_token(path: &Path, ca_pem: &str) -> Result<String, Error> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let (_, secret) = crate::client::parse_join_token(&existing);
    let secret = if secret.is_empty() {
        random_token()
    } else {
        secret
    };
    let full = crate::client::join_token(ca_pem, &secret);
    if existing.trim() != full {
        write_private(path, format!("{full}\n").as_bytes())?;
    }
    Ok(secret)
}

/// A running server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The node token's secret.
    pub node_secret: String,
    /// The admin token, for the controllers that run in-process.
    admin_token: String,
    /// The API's watch cache, which the in-process controllers read.
    cache: Arc<Cache>,
    /// The API's router, which the in-process controllers call without a socket.
    router: axum::Router,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Server {
    /// Opens the store, prepares TLS and tokens, and starts serving.
    ///
    /// # Errors
    /// When the data directory, store, certificates or listener cannot be set up.
    pub async fn start(config: ServerConfig) -> Result<Self, Error> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data).map_err(|e| Error::io(data, e))?;
        let server_dir = data.join("server");
        std::fs::create_dir_all(&server_dir).map_err(|e| Error::io(&server_dir, e))?;

        let db_path = server_dir.join("state.redb");
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&db_path))
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))??;
        let store: Arc<dyn Store> = Arc::new(store);
        let cache = Cache::start(store).await?;

        let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), hostname()];
        for san in &config.tls_sans {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        if !config.listen.ip().is_unspecified() && !sans.contains(&config.listen.ip().to_string()) {
            sans.push(config.listen.ip().to_string());
        }
        let tls_dir = server_dir.join("tls");
        let material = tokio::task::spawn_blocking(move || tls::load_or_create(&tls_dir, &sans))
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))??;
        let tokens = Tokens {
            admin: token(&server_dir.join("admin-token"))?,
            node: node_token(&data.join("node-token"), &material.ca_pem)?,
        };

        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let kubeconfig = data.join("kubeconfig.yaml");
        let url = format!(
            "https://{}",
            SocketAddr::new(host.parse().unwrap_or(addr.ip()), addr.port())
        );
        write_private(
            &kubeconfig,
            kubeconfig::render(&url, &material.ca_pem, &tokens.admin).as_bytes(),
        )?;

        let shutdown = CancellationToken::new();
        let state = ApiState::new(
            cache.clone(),
            tokens.clone(),
            shutdown.clone(),
            config.bookmark_interval,
            material.ca_pem.clone(),
            config.service_cidr,
        );
        bootstrap(
            &state,
            Some(SocketAddr::new(
                host.parse().unwrap_or(addr.ip()),
                addr.port(),
            )),
            Builtins {
                local_storage: !config.disabled.iter().any(|d| d == "local-storage"),
                ingress: !config.disabled.iter().any(|d| d == "ingress"),
            },
        )
        .await?;

        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            material.cert_pem.into_bytes(),
            material.key_pem.into_bytes(),
        )
        .await
        .map_err(Error::tls)?;
        let handle = axum_server::Handle::new();
        let app = api::router(state.clone());
        let router = app.clone();
        // Without TCP_NODELAY every small answer waits for the client's delayed ACK (~40 ms).
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        let server = axum_server::from_tcp(listener)
            .map_err(|source| Error::Listen { addr, source })?
            .acceptor(acceptor)
            .handle(handle.clone());
        let drain = shutdown.clone();
        tokio::spawn(async move {
            drain.cancelled().await;
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        let task = tokio::spawn(async move {
            server
                .serve(app.into_make_service())
                .await
                .map_err(Error::Serve)
        });
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "wk server is serving");
        Ok(Self {
            addr,
            kubeconfig,
            ca_pem: material.ca_pem.clone(),
            node_secret: tokens.node.clone(),
            admin_token: tokens.admin.clone(),
            cache: state.cache.clone(),
            router,
            shutdown,
            task,
        })
    }

    /// An admin client that calls this server's API in-process.
    pub fn admin_client(&self) -> crate::client::Client {
        crate::client::Client::in_process(self.router.clone(), Some(self.admin_token.clone()))
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped.
    ///
    /// # Errors
    /// What the HTTP server failed with.
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::Serve(std::io::Error::other(e))),
        }
    }
}

/// The optional built-in objects the server makes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Builtins {
    /// The default StorageClass (k3s's local-path).
    pub local_storage: bool,
    /// The IngressClass `wk`, which the agents serve.
    pub ingress: bool,
}

/// Creates the built-in namespaces, the `kubernetes` Service (and, with `api`, its Endpoints:
/// the API server's address), cluster DNS's `kube-dns` Service, the default StorageClass (as
/// k3s deploys its local-path class) and the IngressClass `wk` unless disabled; then resumes the clean-up of terminating namespaces.
pub(crate) async fn bootstrap(
    state: &Arc<ApiState>,
    api: Option<SocketAddr>,
    builtins: Builtins,
) -> Result<(), Error> {
    let namespaces = resources::by_kind("Namespace").expect("namespaces are served");
    let mut built_in: Vec<serde_json::Value> =
        ["default", "kube-system", "kube-public", "kube-node-lease"]
            .iter()
            .map(
                |name| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            )
            .collect();
    built_in.push(crate::api::services::kubernetes_service(state.service_cidr));
    if builtins.local_storage {
        built_in.push(crate::controllers::volume::default_class());
    }
    if builtins.ingress {
        built_in.push(crate::ingress::ingress_class());
    }
    built_in.extend(crate::agent::shim::runtime_classes());
    for object in built_in {
        // Made once; never overwritten (users may change them).
        upsert(state, object, &[]).await?;
    }
    // Cluster DNS's address may be held by a Service an older wk stored: DNS is then not
    // served, and the server says why instead of refusing to start.
    if let Some(dns) = crate::api::services::kube_dns_service(state.service_cidr)
        && let Err(e) = upsert(state, dns, &[]).await
    {
        tracing::warn!(error = %e, "cluster DNS has no Service, so pods cannot reach it by address");
    }
    if let Some(api) = api {
        api_endpoints(state, api).await?;
    }
    allocate_older_services(state).await;
    let (all, _, _) = state.cache.list(&namespaces.prefix(None), None, None, |n| {
        n.pointer("/metadata/deletionTimestamp").is_some()
    });
    for (_, ns) in all {
        if let Some(name) = ns
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
        {
            state.finalize_later(name.to_owned());
        }
    }
    Ok(())
}

/// Points the `kubernetes` Endpoints and EndpointSlice at the API server's address, as
/// kube-apiserver's reconciler keeps them (an address or port changed since the last start is
/// corrected), so that the service proxies pass `kubernetes.default` on to it.
async fn api_endpoints(state: &Arc<ApiState>, api: SocketAddr) -> Result<(), Error> {
    let ip = api.ip().to_string();
    let port = json!({"name": "https", "port": api.port(), "protocol": "TCP"});
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [port]}]});
    upsert(state, endpoints, &["subsets"]).await?;
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {crate::controllers::endpointslice::SERVICE_NAME: "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [port]});
    upsert(state, slice, &["endpoints", "ports"]).await
}

/// Gives a ClusterIP (and NodePorts) to the Services an earlier wk stored without them, so
/// that the service proxies serve them.
async fn allocate_older_services(state: &Arc<ApiState>) {
    let services = resources::by_kind("Service").expect("services are served");
    let (all, _, _) = state.cache.list(&services.prefix(None), None, None, |s| {
        s["spec"]["clusterIP"].is_null() && s["spec"]["type"] != "ExternalName"
    });
    for (_, service) in all {
        if let Err(e) = state
            .write_update(services, &service, (*service).clone(), None, false)
            .await
        {
            tracing::warn!(service = ?service["metadata"]["name"], error = %e, "could not give an older Service its ClusterIP");
        }
    }
}

/// Creates a built-in object, or brings its `fields` up to date.
async fn upsert(
    state: &Arc<ApiState>,
    object: serde_json::Value,
    fields: &[&str],
) -> Result<(), Error> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let res = resources::by_kind(&kind).expect("built-in kinds are served");
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
    let failed = |source| Error::Bootstrap {
        name: format!("{kind} {name}"),
        source: Box::new(source),
    };
    match state.cache.get(&res.key(ns.as_deref(), &name)) {
        Some(existing) if fields.iter().all(|f| existing[*f] == object[*f]) => Ok(()),
        Some(existing) => {
            let mut updated = (*existing).clone();
            for f in fields {
                updated[*f] = object[*f].clone();
            }
            state
                .write_update(res, &existing, updated, None, false)
                .await
                .map(drop)
                .map_err(failed)
        }
        None => match state.create_object(res, object, None, false).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(failed(e)),
        },
    }
}

/// Runs the server (and, with `agent`, its built-in node agent) until SIGTERM or SIGINT:
/// the first signal drains, a second exits at once.
///
/// # Errors
/// When the server or the agent cannot start, or the server fails while serving.
pub async fn run(config: ServerConfig, agent: Option<AgentConfig>) -> Result<(), Error> {
    let disabled = config.disabled.clone();
    let enabled = move |name: &str| !disabled.iter().any(|d| d == name);
    let (scheduler, nodeipam) = (enabled("scheduler"), enabled("nodeipam"));
    let (cluster_cidr, node_cidr_mask) = (config.cluster_cidr, config.node_cidr_mask);
    let settings = config.controllers;
    let server = Server::start(config).await?;
    eprintln!(
        "wk server listening on https://{}\nkubeconfig: {}",
        server.addr,
        server.kubeconfig.display()
    );
    let token = server.shutdown_token();
    let url = format!("https://{}", server.addr);
    let certs =
        crate::client::kubeconfig::pem_certs(server.ca_pem.as_bytes()).map_err(Error::tls)?;
    // The scheduler and the controllers are API clients like any other (DESIGN: nothing but
    // the API server touches the store), calling it in-process: the same authentication,
    // admission and storage, without TLS and HTTP/2 framing on every request.
    let admin = server.admin_client();
    // The scheduler and the controllers run on the replica that holds the leader Lease (the
    // only one, until several servers share an etcd).
    let leader_client = admin.clone();
    let cache = server.cache.clone();
    let lead = move |term: CancellationToken| {
        if nodeipam {
            tokio::spawn(crate::controllers::nodeipam::run(
                admin.clone(),
                cluster_cidr,
                node_cidr_mask,
                term.child_token(),
            ));
        }
        crate::controllers::start(&admin, Some(cache.clone()), &enabled, settings, &term);
        if scheduler {
            tokio::spawn(crate::scheduler::run(
                admin.clone(),
                Some(cache.clone()),
                term.child_token(),
            ));
        }
    };
    tokio::spawn(crate::controllers::leader::run(
        leader_client,
        crate::controllers::leader::identity(),
        token.child_token(),
        lead,
    ));
    let agent = match agent {
        Some(mut cfg) => {
            cfg.node_token = server.node_secret.clone();
            let client =
                crate::client::Client::new(&url, Some(server.node_secret.clone()), Some(certs))
                    .map_err(|e| Error::Agent(e.to_string()))?;
            let agent = crate::agent::Agent::start(cfg, client, token.child_token())
                .await
                .map_err(|e| Error::Agent(e.to_string()))?;
            eprintln!("wk agent running as node {}", agent.shared.node_name);
            Some(agent)
        }
        None => None,
    };
    drain_on_signals(token);
    let result = server.wait().await;
    if let Some(agent) = agent {
        agent.wait().await;
    }
    result
}

/// Cancels `token` on the first SIGTERM or SIGINT (a drain); a second signal exits at once.
pub fn drain_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down; a second signal exits at once");
        token.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}
