//! The HTTPS client for the API, used by the CLI (and, later, by agents and controllers).

pub mod kubeconfig;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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

/// An authenticated client for one cluster.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<Connector, Full<Bytes>>,
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
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        let tls = if resolved.insecure {
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(kubeconfig::NoVerify::new()))
                .with_no_client_auth()
        } else {
            for cert in resolved.ca_certs()? {
                roots.add(cert).map_err(|e| {
                    Error::Config(format!("the kubeconfig's CA is not usable: {e}"))
                })?;
            }
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
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
            http,
            server: resolved.server.trim_end_matches('/').to_owned(),
            token: resolved.token,
            namespace: resolved.namespace,
        })
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
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
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
        self.http.request(req).await.map_err(|e| {
            use std::error::Error as _;
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            Error::Transport {
                server: self.server.clone(),
                message,
            }
        })
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
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transport {
                server: self.server.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
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
