//! The client for the API, used by the CLI, agents and controllers: over HTTPS, or in-process
//! against the API's router when the API runs in the same process (an embedding gateway, the
//! controllers' unit tests).

pub mod events;
pub mod informer;
pub mod kubeconfig;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::ServiceExt as _;

pub use self::kubeconfig::Kubeconfig;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a failure Status.
    #[error("Error from server ({reason}): {message}")]
    Status {
        /// The HTTP code.
        code: u16,
        /// The Status reason (NotFound, Conflict, ...).
        reason: String,
        /// The Status message.
        message: String,
        /// The whole Status, for its causes.
        status: Value,
    },
    /// The kubeconfig could not be found or read.
    #[error("{0}")]
    Config(String),
    /// The connection or TLS failed.
    #[error("the connection to the server {server} failed: {message}")]
    Transport {
        /// The server URL.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered something that is not the expected JSON.
    #[error("the server sent an unexpected answer: {0}")]
    Decode(String),
}

impl Error {
    /// The HTTP code of a Status error.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A response body, streamed from the network or from an in-process API.
pub type Body = UnsyncBoxBody<Bytes, Error>;

/// How requests reach the API server.
#[derive(Clone)]
enum Transport {
    /// HTTPS (or plain HTTP) to the server URL.
    Network(Box<HyperClient<Connector, Full<Bytes>>>),
    /// Straight into the API's router, with no socket in between.
    InProcess(axum::Router),
}

/// An authenticated client for one cluster.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    server: String,
    token: Option<String>,
    /// The namespace of the kubeconfig's current context (or `default`).
    pub namespace: String,
}

/// Where to look for a kubeconfig, in kubectl's order: the flag, `$KUBECONFIG`, wk's
/// default data directory, then ~/.kube/config.
pub fn find_kubeconfig(flag: Option<PathBuf>) -> Result<PathBuf, Error> {
    if let Some(path) = flag {
        return Ok(path);
    }
    if let Some(env) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty())
        && let Some(first) = std::env::split_paths(&env).find(|p| p.exists())
    {
        return Ok(first);
    }
    let data_dir =
        std::env::var_os("WK_DATA_DIR").map_or_else(crate::server::default_data_dir, PathBuf::from);
    let candidates = [
        data_dir.join("kubeconfig.yaml"),
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".kube/config"),
    ];
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        Error::Config("no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or start `wk server` (it writes DATA/kubeconfig.yaml)".into())
    })
}

impl Client {
    /// Builds a client from a kubeconfig file and an optional context name.
    ///
    /// # Errors
    /// When the file cannot be read or names no usable cluster.
    pub fn from_kubeconfig(path: &std::path::Path, context: Option<&str>) -> Result<Self, Error> {
        let config = Kubeconfig::load(path)?;
        let resolved = config.resolve(context)?;
        let ca = if resolved.insecure {
            None
        } else {
            Some(resolved.ca_certs()?)
        };
        let mut client = Self::new(&resolved.server, resolved.token, ca)?;
        client.namespace = resolved.namespace;
        Ok(client)
    }

    /// Builds a client for `server` that trusts the certificates `ca` (or, with `None`, any
    /// certificate: only for `insecure-skip-tls-verify` and for fetching a CA to pin).
    ///
    /// # Errors
    /// When a CA certificate is not usable.
    pub fn new(
        server: &str,
        token: Option<String>,
        ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    ) -> Result<Self, Error> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tls = match ca {
            None => rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(kubeconfig::NoVerify::new()))
                .with_no_client_auth(),
            Some(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        Error::Config(format!("the cluster's CA is not usable: {e}"))
                    })?;
                }
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            transport: Transport::Network(Box::new(http)),
            server: server.trim_end_matches('/').to_owned(),
            token,
            namespace: "default".into(),
        })
    }

    /// A client that calls the API's `router` directly, in this process, presenting `token`:
    /// requests, answers and watch streams are the same as over the network, with no socket,
    /// TLS or connection pool in between.
    pub fn in_process(router: axum::Router, token: Option<String>) -> Self {
        Self {
            transport: Transport::InProcess(router),
            server: "http://in-process".into(),
            token,
            namespace: "default".into(),
        }
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a request and returns the response with its body still streaming.
    ///
    /// # Errors
    /// Transport failures only; the caller reads the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Body>, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server));
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        req = req.header(header::ACCEPT, accept.unwrap_or("application/json"));
        req = req.header(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("wk/", env!("CARGO_PKG_VERSION"))),
        );
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Transport {
                server: self.server.clone(),
                message: e.to_string(),
            })?;
        let transport_error = |message: String| Error::Transport {
            server: self.server.clone(),
            message,
        };
        match &self.transport {
            Transport::Network(http) => {
                let response = http.request(req).await.map_err(|e| {
                    use std::error::Error as _;
                    let mut message = e.to_string();
                    let mut source = e.source();
                    while let Some(s) = source {
                        message = format!("{message}: {s}");
                        source = s.source();
                    }
                    transport_error(message)
                })?;
                let server = self.server.clone();
                Ok(response.map(move |body| {
                    body.map_err(move |e| Error::Transport {
                        server: server.clone(),
                        message: e.to_string(),
                    })
                    .boxed_unsync()
                }))
            }
            Transport::InProcess(router) => {
                // Each request is served on a task of its own, as a server connection would
                // serve it, so that many requests from one caller run in parallel.
                let call = router.clone().oneshot(req.map(axum::body::Body::new));
                let response = tokio::spawn(call)
                    .await
                    .map_err(|e| transport_error(e.to_string()))?
                    .map_err(|e| transport_error(e.to_string()))?;
                Ok(response.map(|body| {
                    body.map_err(|e| Error::Transport {
                        server: "in-process".into(),
                        message: e.to_string(),
                    })
                    .boxed_unsync()
                }))
            }
        }
    }

    /// Sends a request and reads a JSON answer; a failure Status becomes [`Error::Status`].
    ///
    /// # Errors
    /// Transport failures, failure Statuses, or a body that is not JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Value, Error> {
        self.request_accept(method, path, content_type, None, body)
            .await
    }

    /// As [`Client::request`], with an Accept header (for Tables).
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_accept(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Value, Error> {
        let response = self.send(method, path, content_type, accept, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(status_error(status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    /// GET a JSON object.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.request(Method::GET, path, None, None).await
    }
}

/// The SHA-256 of a CA's PEM, hex: what a join token pins.
pub fn ca_hash(ca_pem: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A join token in k3s's secure format, `K10<ca sha256>::node:<secret>`: the agent fetches
/// the CA from `/cacerts` and trusts it only if it hashes to the pinned value.
pub fn join_token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::node:{secret}", ca_hash(ca_pem))
}

/// Splits a join token into the pinned CA hash (if any) and the bearer secret.
pub fn parse_join_token(token: &str) -> (Option<String>, String) {
    let token = token.trim();
    match token
        .strip_prefix("K10")
        .and_then(|rest| rest.split_once("::"))
    {
        Some((hash, cred)) => {
            let secret = cred.split_once(':').map_or(cred, |(_, s)| s);
            (Some(hash.to_owned()), secret.to_owned())
        }
        None => (None, token.to_owned()),
    }
}

impl Client {
    /// Connects an agent with a join token: fetches the CA from `/cacerts`, checks it against
    /// the hash the token pins, and trusts only that CA from then on.
    ///
    /// # Errors
    /// When the server cannot be reached or its CA does not match the token.
    pub async fn join(server: &str, token: &str) -> Result<Self, Error> {
        let (hash, secret) = parse_join_token(token);
        let probe = Self::new(server, None, None)?;
        let response = probe
            .send(Method::GET, "/cacerts", None, Some("text/plain"), None)
            .await?;
        let status = response.status();
        let pem = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(status_error(status.as_u16(), &pem));
        }
        let pem = String::from_utf8_lossy(&pem).into_owned();
        match hash {
            Some(h) if h != ca_hash(&pem) => {
                return Err(Error::Config(format!(
                    "the CA that {server} presents does not match the hash in the join token: refusing to trust it"
                )));
            }
            Some(_) => {}
            None => tracing::warn!(
                "the join token pins no CA hash (it is not K10...); trusting the server's CA on first use"
            ),
        }
        let certs = kubeconfig::pem_certs(pem.as_bytes())
            .map_err(|e| Error::Config(format!("the server's /cacerts is not PEM: {e}")))?;
        Self::new(server, Some(secret), Some(certs))
    }
}

/// A watch stream: one event object (`{"type": ..., "object": ...}`) per line of a
/// `watch=true` response. BOOKMARK events are passed on; an ERROR event becomes an error.
pub struct Watch {
    body: Body,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, or `None` when the server closed the stream.
    ///
    /// # Errors
    /// A transport failure, a line that is not JSON, or an ERROR event (its Status).
    pub async fn next(&mut self) -> Result<Option<Value>, Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: Value =
                    serde_json::from_slice(&line).map_err(|e| Error::Decode(e.to_string()))?;
                if event["type"] == "ERROR" {
                    let body = serde_json::to_vec(&event["object"]).unwrap_or_default();
                    let code = event["object"]["code"]
                        .as_u64()
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(500);
                    return Err(status_error(code, &body));
                }
                return Ok(Some(event));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            if let Ok(data) = frame?.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

impl Client {
    /// GETs `path` and returns the body still streaming (logs, watches); a failure status
    /// becomes its error.
    ///
    /// # Errors
    /// Transport failures, or the failure Status the server answered with.
    pub async fn stream(&self, path: &str, accept: Option<&str>) -> Result<Body, Error> {
        let response = self.send(Method::GET, path, None, accept, None).await?;
        let status = response.status();
        let body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status.as_u16(), &bytes));
        }
        Ok(body)
    }

    /// Starts a watch on `path` (which must carry `watch=true`), with an Accept header.
    ///
    /// # Errors
    /// Transport failures, or the failure Status the server answered with.
    pub async fn watch(&self, path: &str, accept: Option<&str>) -> Result<Watch, Error> {
        let body = self.stream(path, accept).await?;
        Ok(Watch {
            body,
            buf: Vec::new(),
        })
    }
}

/// Builds the error for a failed response body.
pub fn status_error(code: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<Value>(body) {
        Ok(status) if status.get("kind").and_then(Value::as_str) == Some("Status") => {
            Error::Status {
                code,
                reason: status
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("Unknown")
                    .to_owned(),
                message: status
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                status,
            }
        }
        _ => Error::Status {
            code,
            reason: "Unknown".into(),
            message: format!(
                "the server answered {code}: {}",
                String::from_utf8_lossy(body).trim()
            ),
            status: Value::Null,
        },
    }
}
