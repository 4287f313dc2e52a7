//! `wk push`: publishing a `.wasm` file as an OCI artifact, in the CNCF format (default), the
//! older wasm-to-oci format, or runwasi's component image; and the client-side credentials and
//! endpoint choice `wk push`, `wk pull` and `wk registry login` share.

use std::path::Path;

use serde_json::json;

use super::fetch::Session;
use super::registry::{self, Credential, DockerConfig, Endpoint};
use super::{PullError, parse_reference};
use crate::agent::images;

/// How a `.wasm` file is packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The CNCF Wasm artifact (`application/vnd.wasm.config.v0+json`, `application/wasm`).
    Cncf,
    /// The older wasm-to-oci artifact (`application/vnd.wasm.content.layer.v1+wasm`).
    WasmToOci,
    /// runwasi's image: an OCI image config for `wasip2`, one component layer.
    Runwasi,
}

/// Whether Wasm bytes are a component (else a core module).
pub fn is_component(head: &[u8]) -> bool {
    head.len() >= 8 && head[4..8] != [1, 0, 0, 0]
}

/// The credentials `wk` uses on this machine: `wk registry login`'s file, then Docker's.
pub fn client_credentials() -> Vec<DockerConfig> {
    let mut out = Vec::new();
    if let Ok(c) = registry::read_login_file(&registry::login_file()) {
        out.push(c);
    }
    let docker = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"));
    if let Some(path) = docker
        && let Ok(c) = registry::read_login_file(&path)
    {
        out.push(c);
    }
    out
}

/// The endpoint a client talks to for a registry: plain HTTP on the loopback or when asked.
pub fn client_endpoint(registry: &str, plain_http: bool) -> Endpoint {
    Endpoint {
        host: registry::own_host(registry).to_owned(),
        plain_http: plain_http || registry::is_loopback(registry),
        mirror: false,
        ca_pem: None,
        insecure: false,
        credential: None,
    }
}

/// What a push published.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// The Wasm layer's digest.
    pub layer: String,
    /// Its size.
    pub size: u64,
}

/// Pushes a `.wasm` file under a reference. `progress` is told the bytes sent so far.
///
/// # Errors
/// When the file is not Wasm, or the registry refuses.
pub async fn push(
    file: &Path,
    reference: &str,
    format: Format,
    plain_http: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Pushed, PullError> {
    let bytes =
        std::fs::read(file).map_err(|e| PullError::Setup(format!("{}: {e}", file.display())))?;
    if !crate::agent::wasm::looks_like_wasm(&bytes) {
        return Err(PullError::Format(format!(
            "{} is not a WebAssembly module or component (no \\0asm header)",
            file.display()
        )));
    }
    let r = parse_reference(reference)?;
    let endpoint = client_endpoint(r.registry(), plain_http);
    let creds = client_credentials()
        .iter()
        .flat_map(|c| c.matching(r.registry()))
        .next()
        .unwrap_or(Credential::Anonymous);
    let session = Session::open(&r, &endpoint, creds, oci_client::RegistryOperation::Push).await?;
    let layer_digest = images::digest_of(&bytes);
    let size = bytes.len() as u64;
    let component = is_component(&bytes);
    let os = if component { "wasip2" } else { "wasip1" };
    let title = file
        .file_name()
        .map_or("module.wasm".into(), |n| n.to_string_lossy().into_owned());
    let created = jiff::Timestamp::now().to_string();
    let (config_type, config, layer_type, artifact_type) = match format {
        Format::Cncf => (
            super::WASM_CONFIG_V0,
            json!({"created": created, "architecture": "wasm", "os": os,
                   "layerDigests": [layer_digest]}),
            super::WASM_LAYER,
            Some(super::WASM_CONFIG_V0),
        ),
        Format::WasmToOci => (super::WASM_CONFIG_V1, json!({}), super::WASM_LAYER_V1, None),
        Format::Runwasi => (
            super::OCI_CONFIG,
            json!({"created": created, "architecture": "wasm", "os": os,
                   "config": {"Entrypoint": [format!("/{title}")]},
                   "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}),
            super::RUNWASI_COMPONENT_LAYER,
            None,
        ),
    };
    let config = serde_json::to_vec(&config).expect("a config serialises");
    let config_digest = images::digest_of(&config);
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": super::OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": layer_type, "digest": layer_digest, "size": size,
            "annotations": {"org.opencontainers.image.title": title}
        }],
    });
    if let Some(a) = artifact_type {
        manifest["artifactType"] = json!(a);
    }
    let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");

    let oci = &session.oci;
    let target = &session.reference;
    let refused = |e: oci_client::errors::OciDistributionError| match &e {
        oci_client::errors::OciDistributionError::UnauthorizedError { .. }
        | oci_client::errors::OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => PullError::Unauthorized {
            registry: session.host().to_owned(),
            detail: "push refused; log in with `wk registry login`".into(),
        },
        _ => PullError::Status {
            url: target.whole(),
            detail: super::fetch::error_chain(&e),
        },
    };
    if !oci
        .blob_exists(target, &layer_digest)
        .await
        .unwrap_or(false)
    {
        let data = bytes::Bytes::from(bytes);
        const CHUNK: usize = 256 << 10;
        let chunks: Vec<bytes::Bytes> = (0..data.len())
            .step_by(CHUNK)
            .map(|at| data.slice(at..(at + CHUNK).min(data.len())))
            .collect();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let counter = sent.clone();
        let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
            let n = counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(n + c.len() as u64);
            Ok(c)
        }));
        let upload = oci.push_blob_stream(target, stream, &layer_digest, Some(size));
        tokio::pin!(upload);
        loop {
            tokio::select! {
                r = &mut upload => { r.map_err(refused)?; break; }
                Some(n) = rx.recv() => progress(n, size),
            }
        }
    }
    progress(size, size);
    if !oci
        .blob_exists(target, &config_digest)
        .await
        .unwrap_or(false)
    {
        oci.push_blob(target, config, &config_digest)
            .await
            .map_err(refused)?;
    }
    oci.push_manifest_raw(
        target,
        manifest.clone(),
        http::HeaderValue::from_static(super::OCI_MANIFEST),
    )
    .await
    .map_err(refused)?;
    Ok(Pushed {
        digest: images::digest_of(&manifest),
        layer: layer_digest,
        size,
    })
}

/// Checks credentials against a registry (`GET /v2/`, after any token exchange).
///
/// # Errors
/// When the registry cannot be reached or refuses them.
pub async fn check_login(
    registry: &str,
    credential: Credential,
    plain_http: bool,
) -> Result<(), PullError> {
    let r = parse_reference(&format!("{registry}/wk-login-check:latest"))?;
    let endpoint = client_endpoint(r.registry(), plain_http);
    let session = Session::open(
        &r,
        &endpoint,
        credential,
        oci_client::RegistryOperation::Pull,
    )
    .await?;
    session.ping().await
}
