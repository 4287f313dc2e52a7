//! The built-in Ingress controller, as k3s bundles Traefik: every agent serves the Ingresses
//! of class `wk` on its node's address, HTTP on port 80 and HTTPS on 443 (`--ingress-http-port`,
//! `--ingress-https-port`), passing each request to a ready endpoint of the backend Service.
//!
//! - Rules match on host (exact, or a `*.example.test` wildcard for one label) and path
//!   (`Exact`, and `Prefix` by whole path elements; `ImplementationSpecific` is `Prefix`). An
//!   exact host wins over a wildcard, then an Exact path over a Prefix, then the longest Prefix.
//! - `defaultBackend` takes what no rule matches; with none, a 404.
//! - TLS certificates come from Secrets of type `kubernetes.io/tls`, picked by SNI; other
//!   names get a self-signed certificate of the node's own.
//! - The server makes the IngressClass `wk` (the default class) unless started with
//!   `--disable ingress`; without it, agents listen on neither port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::client::informer::{Informer, Informers};
use crate::controllers::endpointslice::SERVICE_NAME;

/// The IngressClass wk serves.
pub const CLASS: &str = "wk";
/// Its `spec.controller`.
pub const CONTROLLER: &str = "wk.dev/ingress";
/// The collection of Ingresses.
pub const INGRESSES: &str = "/apis/networking.k8s.io/v1/ingresses";
/// The collection of IngressClasses.
pub const CLASSES: &str = "/apis/networking.k8s.io/v1/ingressclasses";
/// The annotation that makes a class the default.
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// How often certificates are read again when nothing changed (a Secret renewed).
const RESYNC: Duration = Duration::from_secs(60);

/// The IngressClass the server makes: wk's, the default one.
pub fn ingress_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS: "true"}},
        "spec": {"controller": CONTROLLER}})
}

/// Whether wk serves `ingress`: its class is `wk` (by name, or the legacy annotation), or it
/// names none and `wk` is the default class. `wk` itself must exist.
pub fn ours(ingress: &Value, classes: &Informer) -> bool {
    let Some(class) = classes.get(CLASS) else {
        return false;
    };
    if class["spec"]["controller"] != CONTROLLER {
        return false;
    }
    let named = ingress["spec"]["ingressClassName"]
        .as_str()
        .or(ingress["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str());
    match named {
        Some(name) => name == CLASS,
        None => class["metadata"]["annotations"][DEFAULT_CLASS] == "true",
    }
}

/// A Service port an Ingress passes requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    namespace: String,
    service: String,
    /// The Service port, by number or by name.
    port: Value,
}

impl Backend {
    fn of(namespace: &str, backend: &Value) -> Option<Self> {
        let service = &backend["service"];
        let port = &service["port"];
        // kubectl's protobuf carries `number: 0` beside a name: zero is no number.
        let port = match port["number"].as_u64() {
            Some(n) if n > 0 => json!(n),
            _ => port["name"].clone(),
        };
        Some(Self {
            namespace: namespace.to_owned(),
            service: service["name"].as_str()?.to_owned(),
            port,
        })
    }
}

/// One path of one rule.
#[derive(Clone, Debug)]
struct Route {
    /// None: any host.
    host: Option<String>,
    path: String,
    exact: bool,
    backend: Backend,
}

/// What the node's Ingresses route: their rules, and the default backend.
#[derive(Default, Debug)]
pub struct Table {
    routes: Vec<Route>,
    default: Option<Backend>,
}

impl Table {
    /// The routes of `ingresses` (those wk serves), oldest Ingress first for the default.
    pub fn of(ingresses: &[Arc<Value>]) -> Self {
        let mut ordered: Vec<&Arc<Value>> = ingresses.iter().collect();
        ordered.sort_by_key(|i| {
            (
                i["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                crate::client::informer::key_of(i),
            )
        });
        let mut table = Self::default();
        for ingress in ordered {
            let ns = ingress["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            if table.default.is_none() {
                table.default = Backend::of(ns, &ingress["spec"]["defaultBackend"]);
            }
            for rule in ingress["spec"]["rules"].as_array().into_iter().flatten() {
                let host = rule["host"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase);
                for path in rule["http"]["paths"].as_array().into_iter().flatten() {
                    let Some(backend) = Backend::of(ns, &path["backend"]) else {
                        continue;
                    };
                    table.routes.push(Route {
                        host: host.clone(),
                        path: path["path"].as_str().unwrap_or("/").to_owned(),
                        exact: path["pathType"] == "Exact",
                        backend,
                    });
                }
            }
        }
        table
    }

    /// The backend for a request to `host` (no port) and `path`.
    pub fn pick(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host.to_ascii_lowercase();
        // Exact hosts, then wildcards, then rules for any host.
        let tier = |h: &Option<String>| match h.as_deref() {
            Some(h) if h == host => Some(0),
            Some(h) if wildcard_matches(h, &host) => Some(1),
            Some(_) => None,
            None => Some(2),
        };
        for level in 0..3 {
            let candidates: Vec<&Route> = self
                .routes
                .iter()
                .filter(|r| tier(&r.host) == Some(level))
                .collect();
            if let Some(r) = candidates.iter().find(|r| r.exact && r.path == path) {
                return Some(&r.backend);
            }
            if let Some(r) = candidates
                .iter()
                .filter(|r| !r.exact && prefix_matches(&r.path, path))
                .max_by_key(|r| r.path.trim_end_matches('/').len())
            {
                return Some(&r.backend);
            }
        }
        self.default.as_ref()
    }
}

/// `*.example.test` matches `a.example.test`, not `a.b.example.test` nor `example.test`.
fn wildcard_matches(pattern: &str, host: &str) -> bool {
    pattern
        .strip_prefix("*.")
        .and_then(|suffix| host.strip_suffix(suffix))
        .and_then(|label| label.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

/// A Prefix path matches element by element: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let want: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    let got: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    got.len() >= want.len() && want.iter().zip(&got).all(|(a, b)| a == b)
}

/// What the listeners share: the routes, the endpoints and the certificates.
struct State {
    services: Arc<Informer>,
    slices: Arc<Informer>,
    table: RwLock<Table>,
    next: AtomicUsize,
    client: HttpClient<HttpConnector, UnsyncBoxBody<Bytes, hyper::Error>>,
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl State {
    /// A ready endpoint of `backend`, round robin.
    fn endpoint(&self, backend: &Backend) -> Option<SocketAddr> {
        let service = self
            .services
            .get(&format!("{}/{}", backend.namespace, backend.service))?;
        let port = service["spec"]["ports"]
            .as_array()?
            .iter()
            .find(|p| match &backend.port {
                Value::Number(n) => p["port"].as_u64() == n.as_u64(),
                Value::String(name) => p["name"].as_str() == Some(name),
                _ => false,
            })?;
        let port_name = port["name"].as_str().unwrap_or_default();
        let slices: Vec<Arc<Value>> = self
            .slices
            .list_namespace(&backend.namespace)
            .into_iter()
            .filter(|s| s["metadata"]["labels"][SERVICE_NAME] == backend.service.as_str())
            .collect();
        let refs: Vec<&Value> = slices.iter().map(|s| &**s).collect();
        let endpoints = crate::agent::proxy::ready_endpoints(&refs, port_name);
        if endpoints.is_empty() {
            return None;
        }
        Some(endpoints[self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len()])
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let host = req
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| {
                        h.rsplit_once(':')
                            .filter(|(_, p)| p.parse::<u16>().is_ok())
                            .map_or(h, |(h, _)| h)
                            .to_owned()
                    })
            })
            .unwrap_or_default();
        let path = req.uri().path().to_owned();
        let backend = self
            .table
            .read()
            .expect("ingress table")
            .pick(&host, &path)
            .cloned();
        let Some(backend) = backend else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        let Some(endpoint) = self.endpoint(&backend) else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no available server\n");
        };
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Ok(uri) = format!("http://{endpoint}{path_and_query}").parse::<http::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "bad request path\n");
        };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        if !headers.contains_key(http::header::HOST)
            && let Ok(h) = HeaderValue::from_str(&host)
        {
            headers.insert(http::header::HOST, h);
        }
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        for (name, value) in [
            ("x-forwarded-for", forwarded_for),
            ("x-forwarded-host", host.clone()),
            (
                "x-forwarded-proto",
                if tls { "https" } else { "http" }.to_owned(),
            ),
            ("x-real-ip", peer.ip().to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        let req = req.map(BodyExt::boxed_unsync);
        match self.client.request(req).await {
            Ok(resp) => resp.map(BodyExt::boxed_unsync),
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "ingress backend failed");
                text(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
            }
        }
    }
}

/// Certificates by host name, from the Ingresses' TLS Secrets, and the node's own.
#[derive(Debug)]
struct Certificates {
    by_host: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_host = self.by_host.read().expect("certificates");
        let found = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            by_host.get(&name).cloned().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                by_host.get(&format!("*.{parent}")).cloned()
            })
        });
        Some(found.unwrap_or_else(|| self.fallback.clone()))
    }
}

/// A certificate and key from a `kubernetes.io/tls` Secret.
fn certified(secret: &Value) -> Result<CertifiedKey, String> {
    use base64::Engine as _;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    if secret["type"] != "kubernetes.io/tls" {
        return Err(format!("type {} is not kubernetes.io/tls", secret["type"]));
    }
    let field = |f: &str| -> Result<Vec<u8>, String> {
        let b64 = secret["data"][f]
            .as_str()
            .ok_or_else(|| format!("no {f}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{f}: {e}"))
    };
    let chain = crate::client::kubeconfig::pem_certs(&field("tls.crt")?)
        .map_err(|e| format!("tls.crt: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(&field("tls.key")?).map_err(|e| format!("tls.key: {e}"))?;
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(chain, key))
}

/// The node's own certificate, for names no Secret covers.
fn self_signed(node_ip: IpAddr) -> Result<CertifiedKey, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec!["wk-ingress".to_owned()]).map_err(|e| e.to_string())?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(node_ip));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wk ingress default certificate");
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// Where the node serves Ingresses.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// HTTP (0: not served).
    pub http: u16,
    /// HTTPS (0: not served).
    pub https: u16,
}

/// Serves the node's Ingresses until `shutdown`. `services` and `slices` are the informers
/// the service proxy watches too (started by it).
pub async fn run(
    client: Client,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    node_ip: IpAddr,
    ports: Ports,
    shutdown: CancellationToken,
) {
    let own = Informers::default();
    let ingresses = own.get(INGRESSES);
    let classes = own.get(CLASSES);
    let wake = crate::client::informer::wake_on_change(&[&ingresses, &classes]);
    own.start(&client, &shutdown);
    let fallback = match self_signed(node_ip) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!(error = %e, "no certificate for HTTPS Ingresses");
            return;
        }
    };
    let certificates = Arc::new(Certificates {
        by_host: RwLock::default(),
        fallback,
    });
    let state = Arc::new(State {
        services,
        slices,
        table: RwLock::default(),
        next: AtomicUsize::new(0),
        client: HttpClient::builder(TokioExecutor::new()).build_http(),
    });
    tokio::select! {
        () = async { ingresses.wait_synced().await; classes.wait_synced().await; } => {}
        () = shutdown.cancelled() => return,
    }
    let mut listeners: Vec<tokio::task::AbortHandle> = Vec::new();
    // Ports another program holds are tried again at each change, and reported once.
    let mut refused = std::collections::HashSet::new();
    let mut reported = HashMap::new();
    loop {
        let served: Vec<Arc<Value>> = ingresses
            .list()
            .into_iter()
            .filter(|i| ours(i, &classes))
            .collect();
        *state.table.write().expect("ingress table") = Table::of(&served);
        load_certificates(&client, &served, &certificates, &mut reported).await;
        let enabled = classes.get(CLASS).is_some();
        if enabled && listeners.is_empty() {
            listeners = listen(
                node_ip,
                ports,
                &state,
                &certificates,
                &shutdown,
                &mut refused,
            )
            .await;
        } else if !enabled {
            for l in listeners.drain(..) {
                l.abort();
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
            () = shutdown.cancelled() => break,
        }
    }
    for l in listeners {
        l.abort();
    }
}

/// Reads the TLS Secrets the served Ingresses name; a bad one is reported once.
async fn load_certificates(
    client: &Client,
    served: &[Arc<Value>],
    certificates: &Certificates,
    reported: &mut HashMap<String, String>,
) {
    let mut by_host = HashMap::new();
    for ingress in served {
        let ns = ingress["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        for tls in ingress["spec"]["tls"].as_array().into_iter().flatten() {
            let Some(secret) = tls["secretName"].as_str() else {
                continue;
            };
            let key = format!("{ns}/{secret}");
            let loaded = match client
                .get(&format!("/api/v1/namespaces/{ns}/secrets/{secret}"))
                .await
            {
                Ok(s) => certified(&s),
                Err(e) => Err(e.to_string()),
            };
            match loaded {
                Ok(cert) => {
                    reported.remove(&key);
                    let cert = Arc::new(cert);
                    for host in tls["hosts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        by_host
                            .entry(host.to_ascii_lowercase())
                            .or_insert_with(|| cert.clone());
                    }
                }
                Err(e) => {
                    if reported.get(&key) != Some(&e) {
                        tracing::warn!(secret = key, error = %e, "an Ingress's TLS Secret is not usable");
                        reported.insert(key, e);
                    }
                }
            }
        }
    }
    *certificates.by_host.write().expect("certificates") = by_host;
}

/// Binds the HTTP and HTTPS listeners; a port that cannot be bound is reported.
async fn listen(
    node_ip: IpAddr,
    ports: Ports,
    state: &Arc<State>,
    certificates: &Arc<Certificates>,
    shutdown: &CancellationToken,
    refused: &mut std::collections::HashSet<SocketAddr>,
) -> Vec<tokio::task::AbortHandle> {
    let mut tasks = Vec::new();
    for (port, tls) in [(ports.http, false), (ports.https, true)] {
        if port == 0 {
            continue;
        }
        let addr = SocketAddr::new(node_ip, port);
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                if refused.insert(addr) {
                    tracing::warn!(%addr, error = %e, "cannot serve Ingresses");
                }
                continue;
            }
        };
        let acceptor = tls.then(|| {
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        tracing::info!(%addr, tls, "serving Ingresses");
        let (state, stop) = (state.clone(), shutdown.child_token());
        tasks.push(tokio::spawn(serve(listener, acceptor, state, stop)).abort_handle());
    }
    tasks
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    stop: CancellationToken,
) {
    while let Some((stream, peer)) = crate::net::accept(&listener, &stop).await {
        let (state, tls) = (state.clone(), tls.clone());
        tokio::spawn(async move {
            let secure = tls.is_some();
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(state.handle(req, peer, secure).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, created: &str, spec: Value) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created}, "spec": spec}),
        )
    }

    fn backend(service: &str) -> Value {
        json!({"service": {"name": service, "port": {"number": 80}}})
    }

    fn picked<'a>(t: &'a Table, host: &str, path: &str) -> Option<&'a str> {
        t.pick(host, path).map(|b| b.service.as_str())
    }

    #[test]
    fn hosts_and_paths_pick_the_most_specific_rule() {
        let table = Table::of(&[
            ingress(
                "a",
                "2026-01-01T00:00:00Z",
                json!({"defaultBackend": backend("fallback"), "rules": [
                {"host": "one.example.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("one")},
                    {"path": "/api", "pathType": "Prefix", "backend": backend("one-api")},
                    {"path": "/api/exact", "pathType": "Exact", "backend": backend("one-exact")}]}},
                {"host": "*.example.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("wild")}]}}]}),
            ),
            ingress(
                "b",
                "2026-01-02T00:00:00Z",
                json!({"defaultBackend": backend("later"), "rules": [
                {"host": "Two.Example.Test", "http": {"paths": [
                    {"path": "/", "pathType": "ImplementationSpecific", "backend": backend("two")}]}},
                {"http": {"paths": [{"path": "/any", "pathType": "Prefix", "backend": backend("any-host")}]}}]}),
            ),
        ]);
        assert_eq!(picked(&table, "one.example.test", "/"), Some("one"));
        assert_eq!(picked(&table, "ONE.example.test", "/api"), Some("one-api"));
        assert_eq!(
            picked(&table, "one.example.test", "/api/v1"),
            Some("one-api")
        );
        assert_eq!(
            picked(&table, "one.example.test", "/apiary"),
            Some("one"),
            "whole elements only"
        );
        assert_eq!(
            picked(&table, "one.example.test", "/api/exact"),
            Some("one-exact")
        );
        assert_eq!(
            picked(&table, "one.example.test", "/api/exact/more"),
            Some("one-api")
        );
        assert_eq!(picked(&table, "two.example.test", "/x"), Some("two"));
        assert_eq!(picked(&table, "three.example.test", "/x"), Some("wild"));
        assert_eq!(
            picked(&table, "a.b.example.test", "/x"),
            Some("fallback"),
            "a wildcard is one label"
        );
        assert_eq!(picked(&table, "other.test", "/any/thing"), Some("any-host"));
        assert_eq!(
            picked(&table, "other.test", "/"),
            Some("fallback"),
            "the oldest default backend"
        );
        let none = Table::of(&[ingress("c", "2026-01-01T00:00:00Z", json!({"rules": []}))]);
        assert_eq!(picked(&none, "x", "/"), None);
    }

    #[test]
    fn only_ingresses_of_class_wk_are_served() {
        let classes = Informer::new(CLASSES);
        let i = |spec: Value, annotations: Value| json!({"metadata": {"annotations": annotations}, "spec": spec});
        let plain = i(json!({}), json!({}));
        assert!(!ours(&plain, &classes), "no class: ingress is disabled");
        classes.fill(vec![{
            let mut c = ingress_class();
            c["metadata"]["resourceVersion"] = json!("1");
            c
        }]);
        assert!(ours(&plain, &classes), "wk is the default class");
        assert!(ours(
            &i(json!({"ingressClassName": "wk"}), json!({})),
            &classes
        ));
        assert!(!ours(
            &i(json!({"ingressClassName": "nginx"}), json!({})),
            &classes
        ));
        assert!(!ours(
            &i(json!({}), json!({"kubernetes.io/ingress.class": "traefik"})),
            &classes
        ));
        let mut not_default = ingress_class();
        not_default["metadata"]["annotations"] = json!({});
        not_default["metadata"]["resourceVersion"] = json!("2");
        classes.fill(vec![not_default]);
        assert!(!ours(&plain, &classes));
        assert!(ours(
            &i(json!({"ingressClassName": "wk"}), json!({})),
            &classes
        ));
    }

    #[test]
    fn tls_secrets_must_hold_a_certificate_and_its_key() {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["one.example.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let good = json!({"type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(&cert.pem()), "tls.key": b64(&key.serialize_pem())}});
        assert!(certified(&good).is_ok());
        let opaque = json!({"type": "Opaque", "data": good["data"]});
        assert!(
            certified(&opaque)
                .unwrap_err()
                .contains("not kubernetes.io/tls")
        );
        let no_key = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": b64(&cert.pem())}});
        assert_eq!(certified(&no_key).unwrap_err(), "no tls.key");
        let bad = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": b64("junk"), "tls.key": b64(&key.serialize_pem())}});
        assert!(certified(&bad).unwrap_err().starts_with("tls.crt"));
    }
}
