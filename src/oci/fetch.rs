//! Talking to one registry endpoint: oci-client does the token dance and pushes; manifests and
//! blobs are fetched here, so that every byte is counted against a limit and hashed into the
//! node's content store as it streams.

use std::time::Duration;

use futures_util::StreamExt as _;
use oci_client::{Reference, RegistryOperation};

use super::PullError;
use super::registry::{Credential, Endpoint};
use crate::agent::images;

/// How long to wait for a registry to accept a connection, and between bytes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The manifest types wk asks for.
pub const ACCEPT: &[&str] = &[
    super::OCI_MANIFEST,
    super::OCI_INDEX,
    super::DOCKER_MANIFEST,
    super::DOCKER_LIST,
];

/// An authenticated connection to one endpoint for one repository.
pub struct Session {
    http: reqwest::Client,
    /// The oci-client side, authenticated (pushes use it).
    pub oci: oci_client::Client,
    /// The reference, with the mirror set when the endpoint is one.
    pub reference: Reference,
    endpoint: Endpoint,
    registry: String,
    credential: Credential,
    token: Option<String>,
}

/// A fetched manifest.
#[derive(Clone)]
pub struct Manifest {
    /// Its bytes, exactly as served.
    pub bytes: bytes::Bytes,
    /// Their digest.
    pub digest: String,
    /// The Content-Type the registry gave.
    pub media_type: String,
}

/// Clients by endpoint settings and credential: building one loads TLS roots (tens of
/// milliseconds), and oci-client's token cache is only safe to share under one credential.
type Clients = std::collections::HashMap<String, (oci_client::Client, reqwest::Client)>;
static CLIENTS: std::sync::OnceLock<std::sync::Mutex<Clients>> = std::sync::OnceLock::new();

fn clients(
    endpoint: &Endpoint,
    credential: &Credential,
) -> Result<(oci_client::Client, reqwest::Client), PullError> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint.ca_pem.hash(&mut h);
    credential.hash(&mut h);
    let key = format!(
        "{}|{}|{}|{:x}",
        endpoint.host,
        endpoint.plain_http,
        endpoint.insecure,
        h.finish()
    );
    let table = CLIENTS.get_or_init(Default::default);
    if let Some(c) = table.lock().ok().and_then(|t| t.get(&key).cloned()) {
        return Ok(c);
    }
    let mut certs = Vec::new();
    if let Some(pem) = &endpoint.ca_pem {
        certs.push(oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: pem.clone(),
        });
    }
    let config = oci_client::client::ClientConfig {
        protocol: if endpoint.plain_http {
            oci_client::client::ClientProtocol::Http
        } else {
            oci_client::client::ClientProtocol::Https
        },
        accept_invalid_certificates: endpoint.insecure,
        extra_root_certificates: certs,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("wk/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let oci = oci_client::Client::try_from(config).map_err(|e| PullError::Setup(e.to_string()))?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("wk/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(endpoint.insecure);
    if let Some(pem) = &endpoint.ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| PullError::Setup(format!("the CA file for {}: {e}", endpoint.host)))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder
        .build()
        .map_err(|e| PullError::Setup(e.to_string()))?;
    if let Ok(mut t) = table.lock() {
        t.insert(key, (oci.clone(), http.clone()));
    }
    Ok((oci, http))
}

impl Session {
    /// Connects to an endpoint and authenticates for an operation.
    ///
    /// # Errors
    /// When the registry cannot be reached or refuses the credential.
    pub async fn open(
        reference: &Reference,
        endpoint: &Endpoint,
        credential: Credential,
        op: RegistryOperation,
    ) -> Result<Self, PullError> {
        let (oci, http) = clients(endpoint, &credential)?;
        let mut reference = reference.clone();
        if endpoint.mirror {
            reference.set_mirror_registry(endpoint.host.clone());
        }
        let registry = reference.registry().to_owned();
        let token = oci
            .auth(&reference, &credential.to_oci(), op)
            .await
            .map_err(|e| match e {
                oci_client::errors::OciDistributionError::AuthenticationFailure(reason) => {
                    PullError::Unauthorized {
                        registry: endpoint.host.clone(),
                        detail: format!(
                            "the token service refused the credentials: {}",
                            reason.trim()
                        ),
                    }
                }
                e => PullError::Unreachable {
                    registry: endpoint.host.clone(),
                    detail: error_chain(&e),
                },
            })?;
        Ok(Self {
            http,
            oci,
            reference,
            endpoint: endpoint.clone(),
            registry,
            credential,
            token,
        })
    }

    /// The endpoint's host.
    pub fn host(&self) -> &str {
        &self.endpoint.host
    }

    fn url(&self, kind: &str, what: &str) -> String {
        let scheme = if self.endpoint.plain_http {
            "http"
        } else {
            "https"
        };
        let ns = if self.endpoint.mirror {
            format!("?ns={}", self.registry)
        } else {
            String::new()
        };
        format!(
            "{scheme}://{}/v2/{}/{kind}/{what}{ns}",
            self.endpoint.host,
            self.reference.repository()
        )
    }

    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.token, &self.credential) {
            (Some(t), _) => rb.bearer_auth(t),
            (None, Credential::Basic(u, p)) => rb.basic_auth(u, Some(p)),
            (None, Credential::Bearer(t)) => rb.bearer_auth(t),
            (None, Credential::Anonymous) => rb,
        }
    }

    /// A request or a body that broke off.
    fn broken(&self, e: &reqwest::Error) -> PullError {
        PullError::Unreachable {
            registry: self.endpoint.host.clone(),
            detail: error_chain(e),
        }
    }

    async fn get(&self, url: &str, accept: Option<String>) -> Result<reqwest::Response, PullError> {
        let mut rb = self.authorize(self.http.get(url));
        if let Some(a) = accept {
            rb = rb.header(reqwest::header::ACCEPT, a);
        }
        let res = rb.send().await.map_err(|e| self.broken(&e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        // An error body is read for its message, up to 64 KiB: a registry may send no end.
        let mut body = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            body.extend_from_slice(&chunk[..chunk.len().min((64 << 10) - body.len())]);
            if body.len() >= 64 << 10 {
                break;
            }
        }
        let detail = registry_message(&body).unwrap_or_else(|| status.to_string());
        Err(match status.as_u16() {
            401 => PullError::Unauthorized {
                registry: self.endpoint.host.clone(),
                detail,
            },
            403 => PullError::Denied {
                registry: self.endpoint.host.clone(),
                detail,
            },
            404 => PullError::NotFound {
                what: url.to_owned(),
                detail,
            },
            _ => PullError::Status {
                url: url.to_owned(),
                detail,
            },
        })
    }

    /// Checks that the registry accepts the session's credentials (`GET /v2/`).
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), PullError> {
        let scheme = if self.endpoint.plain_http {
            "http"
        } else {
            "https"
        };
        self.get(&format!("{scheme}://{}/v2/", self.endpoint.host), None)
            .await
            .map(drop)
    }

    /// Fetches a manifest by tag or digest, refusing more than `limit` bytes. A manifest asked
    /// for by digest must hash to it, and one whose `Docker-Content-Digest` header disagrees
    /// with its bytes is refused.
    ///
    /// # Errors
    /// On HTTP errors, an oversized body or a digest that does not match.
    pub async fn manifest(&self, what: &str, limit: u64) -> Result<Manifest, PullError> {
        let url = self.url("manifests", what);
        let res = self.get(&url, Some(ACCEPT.join(", "))).await?;
        let media_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let header_digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let too_large = |size: u64| PullError::TooLarge {
            what: format!("the manifest {}", self.reference.whole()),
            size,
            limit,
            knob: "manifests are limited to 4 MiB",
        };
        if let Some(n) = res.content_length()
            && n > limit
        {
            return Err(too_large(n));
        }
        let mut body = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.broken(&e))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        let digest = images::digest_of(&body);
        let expected = if what.starts_with("sha256:") {
            Some(what.to_owned())
        } else {
            header_digest.filter(|h| h.starts_with("sha256:"))
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(PullError::Mismatch {
                what: format!("the manifest {}", self.reference.whole()),
                expected,
                actual: digest,
            });
        }
        Ok(Manifest {
            bytes: body.into(),
            digest,
            media_type,
        })
    }

    /// Streams a blob into the content store, refusing more bytes than its descriptor
    /// declares (and descriptors over `limit`), and keeping it only when it hashes to its
    /// digest. A blob already stored (and still hashing right) is not fetched again. Returns
    /// the stored file and the bytes fetched for it (0 when it was there).
    ///
    /// # Errors
    /// On HTTP errors, a size over the limits or a digest that does not match.
    pub async fn blob(
        &self,
        store: &images::Store,
        digest: &str,
        size: u64,
        limit: u64,
        what: &str,
    ) -> Result<(std::path::PathBuf, u64), PullError> {
        images::check_digest(digest).map_err(|e| PullError::Format(e.to_string()))?;
        if size > limit {
            return Err(PullError::TooLarge {
                what: format!("{what} {digest}"),
                size,
                limit,
                knob: "the node's limit is set with `wk agent --max-module-size`",
            });
        }
        let check = store.clone();
        let d = digest.to_owned();
        if let Ok(Some(path)) = tokio::task::spawn_blocking(move || check.blob(&d)).await {
            return Ok((path, 0));
        }
        let url = self.url("blobs", digest);
        let res = self.get(&url, None).await?;
        let mut w = store.writer().map_err(PullError::store)?;
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.broken(&e))?;
            if w.len() + chunk.len() as u64 > size {
                return Err(PullError::Format(format!(
                    "the registry sent more than the {size} bytes the manifest declares for {what} {digest}"
                )));
            }
            w.write(&chunk).map_err(PullError::store)?;
        }
        if w.len() != size {
            return Err(PullError::Format(format!(
                "the registry sent {} bytes where the manifest declares {size} for {what} {digest}",
                w.len()
            )));
        }
        let expected = digest.to_owned();
        let what = what.to_owned();
        tokio::task::spawn_blocking(move || w.commit(Some(&expected)))
            .await
            .map_err(|e| PullError::Setup(e.to_string()))?
            .map(|(_, path)| (path, size))
            .map_err(|e| match e {
                images::Error::Mismatch { expected, actual } => PullError::Mismatch {
                    what,
                    expected,
                    actual,
                },
                e => PullError::store(e),
            })
    }
}

/// The `message` fields of a registry's error body (`{"errors": [{"code", "message"}]}`).
fn registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let list = v["errors"].as_array()?;
    let parts: Vec<String> = list
        .iter()
        .map(|e| {
            let code = e["code"].as_str().unwrap_or_default();
            let msg = e["message"].as_str().unwrap_or_default();
            match (code.is_empty(), msg.is_empty()) {
                (false, false) => format!("{}: {msg}", code.to_lowercase()),
                (false, true) => code.to_lowercase(),
                _ => msg.to_owned(),
            }
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// An error and its causes, joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    //! A lying registry: a loopback HTTP server that answers with oversized or wrong bodies.

    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves `answer(path)` (status line and headers, then a body) to every request.
    async fn liar(answer: fn(&str) -> (String, Vec<u8>)) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (head, body) = answer(&path);
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    fn answer(path: &str) -> (String, Vec<u8>) {
        let ok = |body: Vec<u8>, extra: &str| {
            (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                    body.len()
                ),
                body,
            )
        };
        if path == "/v2/" {
            return ok(b"{}".to_vec(), "");
        }
        if path.ends_with("/manifests/declared-huge") {
            return (
                "HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n".into(),
                vec![b' '; 1024],
            );
        }
        if path.ends_with("/manifests/streamed-huge") {
            // No length: the body just keeps coming, past 4 MiB.
            return (
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(),
                vec![b' '; 5 << 20],
            );
        }
        if path.ends_with("/manifests/header-lies") {
            let claimed = images::digest_of(b"something else");
            return ok(
                b"{}".to_vec(),
                &format!("Docker-Content-Digest: {claimed}\r\n"),
            );
        }
        if path.contains("/manifests/sha256:") {
            return ok(b"{\"other\": \"bytes\"}".to_vec(), "");
        }
        if path.contains("/blobs/") {
            return ok(vec![7u8; 100], "");
        }
        (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
            vec![],
        )
    }

    async fn session(addr: &str) -> Session {
        let reference = super::super::parse_reference(&format!("{addr}/app:v1")).unwrap();
        let endpoint = super::super::push::client_endpoint(reference.registry(), true);
        Session::open(
            &reference,
            &endpoint,
            Credential::Anonymous,
            RegistryOperation::Pull,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn oversized_and_lying_answers_are_refused() {
        let addr = liar(answer).await;
        let s = session(&addr).await;
        let limit = super::super::MAX_MANIFEST_BYTES;
        for tag in ["declared-huge", "streamed-huge"] {
            match s.manifest(tag, limit).await {
                Err(PullError::TooLarge { size, .. }) => assert!(size > limit, "{tag}: {size}"),
                Err(e) => panic!("{tag}: {e}"),
                Ok(_) => panic!("{tag}: accepted"),
            }
        }
        let e = s.manifest("header-lies", limit).await.err().unwrap();
        assert!(matches!(e, PullError::Mismatch { .. }), "{e}");
        let pinned = images::digest_of(b"the pinned manifest");
        match s.manifest(&pinned, limit).await {
            Err(PullError::Mismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, pinned);
                assert_eq!(actual, images::digest_of(b"{\"other\": \"bytes\"}"));
            }
            other => panic!("{:?}", other.err()),
        }

        let dir = tempfile::tempdir().unwrap();
        let store = images::Store::new(dir.path());
        let digest = images::digest_of(&[7u8; 100]);
        let e = s
            .blob(&store, &digest, 50, 1 << 20, "the layer")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("more than the 50 bytes"), "{e}");
        let e = s
            .blob(&store, &digest, 200, 1 << 20, "the layer")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("sent 100 bytes"), "{e}");
        let e = s
            .blob(&store, &digest, 100, 10, "the layer")
            .await
            .unwrap_err();
        assert!(matches!(e, PullError::TooLarge { .. }), "{e}");
        let wrong = images::digest_of(b"not these bytes");
        let e = s
            .blob(&store, &wrong, 100, 1 << 20, "the layer")
            .await
            .unwrap_err();
        assert!(matches!(e, PullError::Mismatch { .. }), "{e}");
        assert!(
            s.blob(&store, &digest, 100, 1 << 20, "the layer")
                .await
                .is_ok()
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("content/sha256"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(files.len(), 1, "only the good blob is kept: {files:?}");
    }
}
