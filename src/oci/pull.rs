//! Pulling an image into the node's store, under a pull policy, one pull per image however
//! many pods ask at once.
//!
//! What is Wasm (DESIGN.md, OCI): an image manifest with one layer of a Wasm media type (the
//! CNCF artifact, wasm-to-oci, runwasi's component layer), or a `wasi/wasm` platform image
//! whose tar layers hold the module at its entrypoint; an index is narrowed to its `wasi` entry.
//! Any other image is a Linux one if it is for this node's platform (`linux/amd64` on x86-64,
//! `linux/arm64` on aarch64): its config and tar layers are stored for the container shim.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use super::fetch::{Manifest, Session};
use super::registry::{Credential, DockerConfig, Registries};
use super::{MAX_MANIFEST_BYTES, PullError, parse_reference};
use crate::agent::images::{self, Image, Record};

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Check the registry every time (blobs already stored are not fetched again).
    Always,
    /// Pull only when the node does not have the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl Policy {
    /// The policy a container spec names; without one, the kubelet's default for the tag.
    pub fn of(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ if crate::api::objects::default_pull_policy(image) == "Always" => Self::Always,
            _ => Self::IfNotPresent,
        }
    }
}

/// Why a container's image is not available.
#[derive(Clone, Debug)]
pub enum Unavailable {
    /// `imagePullPolicy: Never` and the image is not on the node.
    NeverPull(String),
    /// The node's own store could not be read.
    Inspect(String),
    /// The pull failed.
    Pull(PullError),
}

/// A finished pull.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The image.
    pub image: Image,
    /// Bytes of all its blobs.
    pub size: u64,
    /// Bytes fetched from the registry this time.
    pub fetched: u64,
    /// How it was packaged.
    pub format: String,
}

/// The longest a pull may take: a registry that trickles bytes must not hold it (and every
/// pod waiting on it) forever, as a per-read timeout alone would allow.
const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

type Flight = Arc<tokio::sync::OnceCell<Result<Pulled, PullError>>>;

/// Pulls images into a node's store.
pub struct Puller {
    store: images::Store,
    registries: PathBuf,
    layer_limit: u64,
    flights: Mutex<HashMap<String, Flight>>,
}

impl Puller {
    /// A puller for a node: `registries.yaml` is read from its data directory at each pull.
    pub fn new(store: images::Store, data_dir: &Path, layer_limit: u64) -> Self {
        Self {
            store,
            registries: data_dir.join("registries.yaml"),
            layer_limit,
            flights: Mutex::default(),
        }
    }

    /// The node's image store.
    pub fn store(&self) -> &images::Store {
        &self.store
    }

    /// Makes an image available under a pull policy: the stored one, or a fresh pull
    /// (`pulling` is called just before one starts).
    ///
    /// # Errors
    /// [`Unavailable`] says why it is not.
    pub async fn ensure(
        &self,
        name: &str,
        policy: Policy,
        secrets: &[DockerConfig],
        pulling: impl FnOnce(),
    ) -> Result<(Image, Option<Pulled>), Unavailable> {
        // The index is parsed once per change and memoised: this stays on the executor.
        let local = self.store.find(name).map_err(|e| {
            Unavailable::Inspect(format!("Failed to inspect image \"{name}\": {e}"))
        })?;
        match (policy, local) {
            (Policy::Never | Policy::IfNotPresent, Some(found)) => Ok((found, None)),
            (Policy::Never, None) => Err(Unavailable::NeverPull(format!(
                "Container image \"{name}\" is not present with pull policy of Never"
            ))),
            _ => {
                pulling();
                match self.pull(name, secrets).await {
                    Ok(p) => Ok((p.image.clone(), Some(p))),
                    Err(e) => Err(Unavailable::Pull(e)),
                }
            }
        }
    }

    /// Pulls an image. Callers asking for the same image with the same credentials while a
    /// pull runs share it.
    ///
    /// # Errors
    /// [`PullError`] says why.
    pub async fn pull(&self, name: &str, secrets: &[DockerConfig]) -> Result<Pulled, PullError> {
        let key = format!(
            "{name}\n{}",
            serde_json::to_string(secrets).unwrap_or_default()
        );
        let flight = self
            .flights
            .lock()
            .map_err(|_| PullError::Setup("the pull table's lock is poisoned".into()))?
            .entry(key.clone())
            .or_default()
            .clone();
        let result = flight
            .get_or_init(|| async {
                match tokio::time::timeout(PULL_DEADLINE, self.pull_once(name, secrets)).await {
                    Ok(r) => r,
                    Err(_) => Err(PullError::Setup(format!(
                        "gave up pulling {name} after {} minutes: the registry sends too slowly",
                        PULL_DEADLINE.as_secs() / 60
                    ))),
                }
            })
            .await
            .clone();
        if let Ok(mut f) = self.flights.lock()
            && f.get(&key).is_some_and(|g| Arc::ptr_eq(g, &flight))
        {
            f.remove(&key);
        }
        result
    }

    async fn pull_once(&self, name: &str, secrets: &[DockerConfig]) -> Result<Pulled, PullError> {
        let reference = parse_reference(name)?;
        let registries =
            Registries::load(&self.registries).map_err(|e| PullError::Setup(e.to_string()))?;
        let endpoints = registries
            .endpoints(reference.registry())
            .map_err(|e| PullError::Setup(e.to_string()))?;
        let mut last = None;
        for endpoint in &endpoints {
            for cred in credentials_for(endpoint, reference.registry(), secrets) {
                let attempt = async {
                    let session = Session::open(
                        &reference,
                        endpoint,
                        cred,
                        oci_client::RegistryOperation::Pull,
                    )
                    .await?;
                    self.pull_from(&session, name).await
                };
                match attempt.await {
                    Ok(p) => return Ok(p),
                    Err(e) if e.is_auth() => last = Some(e),
                    // As containerd does, a mirror that fails for any reason gives way to the
                    // next endpoint, and at last to the registry itself.
                    Err(e) if endpoint.mirror => {
                        tracing::info!(image = name, mirror = %endpoint.host, error = %e, "mirror failed; trying the next endpoint");
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| PullError::Setup("no registry endpoint to pull from".into())))
    }

    async fn pull_from(&self, session: &Session, name: &str) -> Result<Pulled, PullError> {
        let started = Instant::now();
        let reference = &session.reference;
        let what = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_owned();
        let top = session.manifest(&what, super::MAX_MANIFEST_BYTES).await?;
        let mut manifests = vec![top.digest.clone()];
        let mut stored = Vec::new();
        let top_json = parse_json(&top, name)?;
        let image_manifest = if is_index(&top, &top_json) {
            let entry = pick_entry(&top_json, name)?;
            let m = session.manifest(&entry, super::MAX_MANIFEST_BYTES).await?;
            manifests.push(m.digest.clone());
            stored.push(m.clone_parts());
            m
        } else {
            top.clone()
        };
        stored.push(top.clone_parts());
        let json = parse_json(&image_manifest, name)?;
        let layers = descriptors(&json["layers"], name)?;
        let config = descriptor(&json["config"], "config", name)?;
        let mut got = Tally {
            blobs: manifests.clone(),
            fetched: stored.iter().map(|(b, _)| b.len() as u64).sum(),
        };

        let wasm_layers: Vec<&Descriptor> = layers
            .iter()
            .filter(|l| {
                matches!(
                    l.media_type.as_str(),
                    super::WASM_LAYER | super::WASM_LAYER_V1 | super::RUNWASI_COMPONENT_LAYER
                )
            })
            .collect();
        let mut linux = None;
        let (wasm, format) = if let Some(layer) = wasm_layers.first() {
            if wasm_layers.len() > 1 {
                return Err(PullError::Format(format!(
                    "{name} has {} Wasm layers; a container runs one module or component",
                    wasm_layers.len()
                )));
            }
            let format = match (layer.media_type.as_str(), config.media_type.as_str()) {
                (super::WASM_LAYER, _) | (_, super::WASM_CONFIG_V0) => "CNCF Wasm artifact",
                (super::WASM_LAYER_V1, _) => "wasm-to-oci artifact",
                _ => "runwasi component image",
            };
            let path = got
                .blob(
                    session,
                    &self.store,
                    layer,
                    self.layer_limit,
                    "the Wasm layer",
                )
                .await?;
            let head = read_head(&path)?;
            if !crate::agent::wasm::looks_like_wasm(&head) {
                return Err(PullError::Format(format!(
                    "the Wasm layer {} of {name} is not a WebAssembly module or component (no \\0asm header)",
                    layer.digest
                )));
            }
            got.blob(
                session,
                &self.store,
                &config,
                MAX_MANIFEST_BYTES,
                "the config",
            )
            .await?;
            (layer.digest.clone(), format)
        } else {
            if !matches!(
                config.media_type.as_str(),
                super::OCI_CONFIG | super::DOCKER_CONFIG
            ) {
                return Err(PullError::Format(format!(
                    "{name} has no Wasm layer (its config is {:?} and its layers are {:?})",
                    config.media_type,
                    layers
                        .iter()
                        .map(|l| l.media_type.as_str())
                        .collect::<Vec<_>>()
                )));
            }
            let path = got
                .blob(
                    session,
                    &self.store,
                    &config,
                    MAX_MANIFEST_BYTES,
                    "the config",
                )
                .await?;
            let raw = tokio::fs::read(&path)
                .await
                .map_err(|e| PullError::Store(format!("{}: {e}", path.display())))?;
            let cfg: Value = serde_json::from_slice(&raw).map_err(|e| {
                PullError::Format(format!("the image config of {name} is not JSON: {e}"))
            })?;
            let platform = platform_of(&cfg);
            if !is_wasi(&cfg["os"], &cfg["architecture"], &cfg["variant"]) {
                if !is_node_linux(&cfg) {
                    return Err(PullError::OtherPlatform {
                        reference: name.to_owned(),
                        platforms: platform,
                        node: node_platform(),
                    });
                }
                for layer in &layers {
                    check_layer_type(layer, name)?;
                    got.blob(session, &self.store, layer, self.layer_limit, "the layer")
                        .await?;
                }
                linux = Some(images::Linux {
                    platform,
                    layers: layers.iter().map(|l| l.digest.clone()).collect(),
                });
                (config.digest.clone(), "Linux image")
            } else {
                let entry = cfg["config"]["Entrypoint"][0]
                .as_str()
                .or(cfg["config"]["Cmd"][0].as_str())
                .ok_or_else(|| {
                    PullError::Format(format!(
                        "{name} is a {platform} image without an entrypoint naming its .wasm file"
                    ))
                })?
                .to_owned();
                let mut paths = Vec::new();
                for layer in &layers {
                    let p = got
                        .blob(session, &self.store, layer, self.layer_limit, "the layer")
                        .await?;
                    paths.push((layer.clone(), p));
                }
                let working_dir = cfg["config"]["WorkingDir"]
                    .as_str()
                    .unwrap_or("/")
                    .to_owned();
                let store = self.store.clone();
                let (n, limit) = (name.to_owned(), self.layer_limit);
                let digest = tokio::task::spawn_blocking(move || {
                    extract(&store, &paths, &entry, &working_dir, &n, limit)
                })
                .await
                .map_err(|e| PullError::Setup(e.to_string()))??;
                (digest, "wasi/wasm image")
            }
        };
        for (bytes, digest) in stored {
            if self.store.content_path(&digest).exists() {
                continue;
            }
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                let mut w = store.writer()?;
                w.write(&bytes)?;
                w.commit(Some(&digest))
            })
            .await
            .map_err(|e| PullError::Setup(e.to_string()))?
            .map_err(PullError::store)?;
        }
        let Tally { mut blobs, fetched } = got;
        blobs.push(wasm.clone());
        blobs.sort();
        blobs.dedup();
        let id = top.digest.clone();
        let record = Record {
            wasm: wasm.clone(),
            linux: linux.clone(),
            blobs,
            repos: vec![images::repository(name)],
            format: format.to_owned(),
            created: 0,
        };
        let size = self.store.size(&record);
        let index = self.store.index();
        let known = index.images.get(&id).is_some_and(|r| {
            r.wasm == record.wasm
                && r.linux == record.linux
                && r.blobs == record.blobs
                && r.repos.contains(&record.repos[0])
        }) && (name.contains('@')
            || index.names.get(&images::normalize(name)) == Some(&id));
        if !known {
            let store = self.store.clone();
            let n = name.to_owned();
            let rid = id.clone();
            tokio::task::spawn_blocking(move || store.record(&rid, record, &[&n]))
                .await
                .map_err(|e| PullError::Setup(e.to_string()))?
                .map_err(PullError::store)?;
        }
        tracing::info!(image = name, id = %id, format, bytes = size, fetched, took = ?started.elapsed(), "pulled");
        Ok(Pulled {
            image: Image {
                path: self.store.content_path(&wasm),
                id,
                digest: wasm,
                linux,
            },
            size,
            fetched,
            format: format.to_owned(),
        })
    }
}

/// The credentials to try at an endpoint, in order: the pod's secrets for the host, then the
/// node's (registries.yaml); anonymous when there are none. A pod's secrets go only to the host
/// they name: a mirror gets the secrets for its own host, never the upstream registry's.
fn credentials_for(
    endpoint: &super::registry::Endpoint,
    registry: &str,
    secrets: &[DockerConfig],
) -> Vec<Credential> {
    let host = if endpoint.mirror {
        endpoint.host.as_str()
    } else {
        registry
    };
    let mut creds: Vec<Credential> = secrets.iter().flat_map(|s| s.matching(host)).collect();
    creds.extend(endpoint.credential.clone());
    if creds.is_empty() {
        creds.push(Credential::Anonymous);
    }
    creds
}

impl Manifest {
    fn clone_parts(&self) -> (bytes::Bytes, String) {
        (self.bytes.clone(), self.digest.clone())
    }
}

/// What a pull stored and fetched so far.
struct Tally {
    /// The digests of the image's blobs.
    blobs: Vec<String>,
    /// Bytes fetched from the registry.
    fetched: u64,
}

impl Tally {
    /// Fetches a blob into the store (unless it is there), and counts it.
    async fn blob(
        &mut self,
        session: &Session,
        store: &images::Store,
        d: &Descriptor,
        limit: u64,
        what: &str,
    ) -> Result<PathBuf, PullError> {
        let (path, fetched) = session.blob(store, &d.digest, d.size, limit, what).await?;
        self.fetched = self.fetched.saturating_add(fetched);
        self.blobs.push(d.digest.clone());
        Ok(path)
    }
}

/// A content descriptor of a manifest.
#[derive(Clone, Debug)]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

fn parse_json(m: &Manifest, name: &str) -> Result<Value, PullError> {
    serde_json::from_slice(&m.bytes)
        .map_err(|e| PullError::Format(format!("the manifest of {name} is not JSON: {e}")))
}

fn is_index(m: &Manifest, json: &Value) -> bool {
    let media = json["mediaType"].as_str().unwrap_or(&m.media_type);
    media == super::OCI_INDEX || media == super::DOCKER_LIST || json["manifests"].is_array()
}

fn descriptor(v: &Value, what: &str, name: &str) -> Result<Descriptor, PullError> {
    let bad = || {
        PullError::Format(format!(
            "the manifest of {name} has a malformed {what} descriptor"
        ))
    };
    let digest = v["digest"].as_str().ok_or_else(bad)?.to_owned();
    images::check_digest(&digest).map_err(|e| PullError::Format(format!("{name}: {e}")))?;
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        size: v["size"].as_u64().ok_or_else(bad)?,
        digest,
    })
}

fn descriptors(v: &Value, name: &str) -> Result<Vec<Descriptor>, PullError> {
    let list = v
        .as_array()
        .ok_or_else(|| PullError::Format(format!("the manifest of {name} has no layers")))?;
    if list.is_empty() {
        return Err(PullError::Format(format!(
            "the manifest of {name} has no layers"
        )));
    }
    list.iter().map(|l| descriptor(l, "layer", name)).collect()
}

fn is_wasi(os: &Value, arch: &Value, variant: &Value) -> bool {
    let os = os.as_str().unwrap_or_default();
    let arch = arch.as_str().unwrap_or_default();
    let variant = variant.as_str().unwrap_or_default();
    matches!(os, "wasi" | "wasip1" | "wasip2")
        || arch == "wasm"
        || matches!(variant, "wasip1" | "wasip2")
}

fn platform_of(v: &Value) -> String {
    let os = v["os"].as_str().unwrap_or("unknown");
    let arch = v["architecture"].as_str().unwrap_or("unknown");
    match v["variant"].as_str() {
        Some(var) => format!("{os}/{arch}/{var}"),
        None => format!("{os}/{arch}"),
    }
}

/// The platforms this node runs, for messages.
fn node_platform() -> String {
    format!("wasi/wasm or linux/{}", crate::arch())
}

/// Whether a platform (an index entry's, or an image config) is Linux on this node's
/// architecture.
fn is_node_linux(p: &Value) -> bool {
    p["os"].as_str() == Some("linux") && p["architecture"].as_str() == Some(crate::arch())
}

/// The layer media types wk unpacks: tar, gzipped or not (unpacking tells them by their
/// bytes); zstd and the rest are refused by name before anything is fetched.
fn check_layer_type(layer: &Descriptor, name: &str) -> Result<(), PullError> {
    let media = layer.media_type.as_str();
    let base = media
        .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        .or_else(|| media.strip_prefix("application/vnd.oci.image.layer.v1."));
    let ok = matches!(base, Some("tar" | "tar+gzip"))
        || media == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        || media == "application/vnd.docker.image.rootfs.diff.tar"
        || media.is_empty();
    if ok {
        Ok(())
    } else {
        Err(PullError::Format(format!(
            "{name} has a layer of type {media:?} ({}); wk unpacks tar layers, plain or gzip",
            layer.digest
        )))
    }
}

/// The digest of an index's entry for this node: its `wasi/wasm` entry, else its Linux entry
/// for the node's architecture.
fn pick_entry(index: &Value, name: &str) -> Result<String, PullError> {
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let wasi = entries.iter().find(|e| {
        let p = &e["platform"];
        is_wasi(&p["os"], &p["architecture"], &p["variant"])
    });
    if let Some(e) = wasi.or_else(|| entries.iter().find(|e| is_node_linux(&e["platform"]))) {
        let d = descriptor(e, "index entry", name)?;
        return Ok(d.digest);
    }
    if let [only] = entries.as_slice()
        && only["platform"].is_null()
    {
        return Ok(descriptor(only, "index entry", name)?.digest);
    }
    let platforms: Vec<String> = entries
        .iter()
        .map(|e| platform_of(&e["platform"]))
        .collect();
    if platforms.is_empty() {
        return Err(PullError::Format(format!(
            "the image index of {name} is empty"
        )));
    }
    Err(PullError::OtherPlatform {
        reference: name.to_owned(),
        platforms: platforms.join(", "),
        node: node_platform(),
    })
}

/// The first 4 KiB of a file: enough to tell Wasm, binary or text.
fn read_head(path: &Path) -> Result<Vec<u8>, PullError> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| PullError::Store(format!("{}: {e}", path.display())))?;
    Ok(head)
}

/// A reader that fails once it has given out `left` bytes: a gzip bomb, or tar extension
/// headers (which the tar crate reads whole into memory) claiming gigabytes, stop there.
struct Budget<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other(
                "the layer unpacks to more than wk reads of a layer",
            ));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// `./a//b/` → `a/b`.
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Finds the entrypoint's file in a `wasi/wasm` image's layers, topmost first, honouring
/// whiteouts (of the file and of any directory above it) and opaque directories, and stores it
/// as the image's Wasm content. A relative entrypoint is taken from the working directory.
fn extract(
    store: &images::Store,
    layers: &[(Descriptor, PathBuf)],
    entry: &str,
    working_dir: &str,
    name: &str,
    limit: u64,
) -> Result<String, PullError> {
    let target = if entry.starts_with('/') {
        clean(entry)
    } else {
        clean(&format!("{working_dir}/{entry}"))
    };
    if target.is_empty() || target.split('/').any(|p| p == "..") {
        return Err(PullError::Format(format!(
            "{name}: the entrypoint {entry:?} is not a path inside the image"
        )));
    }
    // `a/b/c.wasm` is hidden by `.wh.a`, `a/.wh.b`, `a/b/.wh.c.wasm`, and by an opaque marker
    // in `a` or `a/b` (those replace what lower layers had there).
    let parts: Vec<&str> = target.split('/').collect();
    let mut hiders = Vec::new();
    for i in 0..parts.len() {
        let dir = parts[..i].join("/");
        let wh = format!(".wh.{}", parts[i]);
        hiders.push(if dir.is_empty() {
            wh
        } else {
            format!("{dir}/{wh}")
        });
        if i > 0 {
            hiders.push(format!("{dir}/.wh..wh..opq"));
        }
    }
    // What a layer may unpack to before wk gives up on it.
    let budget = limit.saturating_mul(2).max(64 << 20);
    for (layer, path) in layers.iter().rev() {
        let file = std::fs::File::open(path)
            .map_err(|e| PullError::Store(format!("{}: {e}", path.display())))?;
        let raw: Box<dyn std::io::Read> = match layer.media_type.as_str() {
            m if m.ends_with("+gzip") || m.ends_with(".gzip") => {
                Box::new(flate2::read::GzDecoder::new(file))
            }
            m if m.ends_with("+zstd") => {
                return Err(PullError::Format(format!(
                    "{name}: layer {} is zstd-compressed, which wk does not read; push it with gzip or uncompressed layers",
                    layer.digest
                )));
            }
            _ => Box::new(file),
        };
        let mut archive = tar::Archive::new(Budget {
            inner: raw,
            left: budget,
        });
        let bad = |e: std::io::Error| {
            PullError::Format(format!(
                "{name}: layer {} is not a readable tar: {e}",
                layer.digest
            ))
        };
        let mut hidden = false;
        for item in archive.entries().map_err(bad)? {
            let item = item.map_err(bad)?;
            let p = clean(&item.path().map_err(bad)?.to_string_lossy());
            if hiders.contains(&p) {
                hidden = true;
                continue;
            }
            if p != target {
                continue;
            }
            if !item.header().entry_type().is_file() {
                return Err(PullError::Format(format!(
                    "{name}: the entrypoint {entry:?} is not a regular file in layer {}",
                    layer.digest
                )));
            }
            // The entry's size as the tar crate reads it (a PAX `size` record wins over the
            // header's), and never more than the limit whatever it says.
            let size = item.size();
            let too_large = |size| PullError::TooLarge {
                what: format!("{name}'s {entry}"),
                size,
                limit,
                knob: "the node's limit is set with `wk agent --max-module-size`",
            };
            if size > limit {
                return Err(too_large(size));
            }
            let mut capped = item.take(limit.saturating_add(1));
            let (digest, path) = store.add(&mut capped).map_err(|e| match e {
                images::Error::NotWasm(_) => PullError::Format(format!(
                    "{name}: the entrypoint {entry:?} is not a WebAssembly module or component"
                )),
                e => PullError::store(e),
            })?;
            let stored = std::fs::metadata(&path).map_or(0, |m| m.len());
            if stored > limit {
                let _ = std::fs::remove_file(&path);
                return Err(too_large(stored));
            }
            return Ok(digest);
        }
        if hidden {
            break;
        }
    }
    Err(PullError::Format(format!(
        "{name}: the entrypoint {entry:?} is not in the image's layers"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_secrets_go_only_to_the_host_they_name() {
        let secrets = [DockerConfig::parse(
            br#"{"auths": {"docker.io": {"username": "me", "password": "hub"}}}"#,
        )
        .unwrap()];
        let registries = Registries {
            mirrors: [(
                "*".to_owned(),
                super::super::registry::Mirror {
                    endpoint: vec!["http://mirror.test:5000".into()],
                },
            )]
            .into(),
            ..Registries::default()
        };
        let endpoints = registries.endpoints("docker.io").unwrap();
        assert_eq!(endpoints.len(), 2);
        assert_eq!(
            credentials_for(&endpoints[0], "docker.io", &secrets),
            vec![Credential::Anonymous],
            "the mirror does not get the Docker Hub password"
        );
        assert_eq!(
            credentials_for(&endpoints[1], "docker.io", &secrets),
            vec![Credential::Basic("me".into(), "hub".into())]
        );
    }

    #[test]
    fn pull_policies_default_as_the_kubelet_does() {
        assert_eq!(Policy::of(None, "app"), Policy::Always);
        assert_eq!(Policy::of(None, "reg:5000/app:latest"), Policy::Always);
        assert_eq!(Policy::of(None, "reg:5000/app:v1"), Policy::IfNotPresent);
        assert_eq!(
            Policy::of(None, "reg:5000/app@sha256:00"),
            Policy::IfNotPresent
        );
        assert_eq!(Policy::of(Some("Never"), "app"), Policy::Never);
        assert_eq!(Policy::of(Some("Always"), "app:v1"), Policy::Always);
    }

    fn layer(dir: &Path, name: &str, files: &[(&str, &[u8])], gzip: bool) -> (Descriptor, PathBuf) {
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            for (path, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, *data).unwrap();
            }
            b.finish().unwrap();
        }
        let bytes = if gzip {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            e.finish().unwrap()
        } else {
            raw
        };
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let media = if gzip {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        (
            Descriptor {
                media_type: media.into(),
                digest: images::digest_of(&bytes),
                size: bytes.len() as u64,
            },
            path,
        )
    }

    #[test]
    fn the_entrypoint_comes_from_the_topmost_layer_and_whiteouts_hide_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = images::Store::new(&dir.path().join("store"));
        let old: &[u8] = b"\0asm\x01\0\0\0old";
        let new: &[u8] = b"\0asm\x01\0\0\0new";
        let l1 = layer(dir.path(), "l1", &[("app/hello.wasm", old)], true);
        let l2 = layer(dir.path(), "l2", &[("./app/hello.wasm", new)], false);
        let d = extract(
            &store,
            &[l1.clone(), l2],
            "/app/hello.wasm",
            "/",
            "img",
            1 << 20,
        )
        .unwrap();
        assert_eq!(d, images::digest_of(new));
        let gone = layer(dir.path(), "l3", &[("app/.wh.hello.wasm", b"")], false);
        let e = extract(
            &store,
            &[l1.clone(), gone],
            "/app/hello.wasm",
            "/",
            "img",
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not in the image's layers"), "{e}");
        let e = extract(
            &store,
            std::slice::from_ref(&l1),
            "/app/hello.wasm",
            "/",
            "img",
            4,
        )
        .unwrap_err();
        assert!(matches!(e, PullError::TooLarge { .. }), "{e}");
        let e = extract(
            &store,
            std::slice::from_ref(&l1),
            "../etc/passwd",
            "/",
            "img",
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a path inside the image"), "{e}");
        let text = layer(
            dir.path(),
            "l4",
            &[("app/hello.wasm", b"#!/bin/sh\n")],
            false,
        );
        let e = extract(&store, &[text], "/app/hello.wasm", "/", "img", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not a WebAssembly"), "{e}");
        // A whiteout of a directory above the file hides it, and so does an opaque marker.
        for hider in ["app/.wh..wh..opq", ".wh.app"] {
            let top = layer(dir.path(), "l5", &[(hider, b"")], false);
            let e = extract(
                &store,
                &[l1.clone(), top],
                "/app/hello.wasm",
                "/",
                "img",
                1 << 20,
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("not in the image's layers"),
                "{hider}: {e}"
            );
        }
        // A relative entrypoint is found from the working directory.
        let d = extract(
            &store,
            std::slice::from_ref(&l1),
            "hello.wasm",
            "/app",
            "img",
            1 << 20,
        )
        .unwrap();
        assert_eq!(d, images::digest_of(old));
    }

    #[test]
    fn a_pax_size_bigger_than_the_header_says_is_held_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = images::Store::new(&dir.path().join("store"));
        let data = [b"\0asm\x01\0\0\0".as_slice(), &[0u8; 4088]].concat();
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            // A PAX header saying 4096 bytes, before a ustar header saying 8.
            let record = "13 size=4096\n";
            let mut pax = tar::Header::new_ustar();
            pax.set_entry_type(tar::EntryType::XHeader);
            pax.set_size(record.len() as u64);
            pax.set_cksum();
            b.append_data(&mut pax, "PaxHeaders/app.wasm", record.as_bytes())
                .unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_size(8);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "app.wasm", &data[..8]).unwrap();
            // The rest of the 4096 bytes the PAX record promised.
            let tail = data[8..].to_vec();
            b.get_mut().extend_from_slice(&tail);
            b.finish().unwrap();
        }
        let path = dir.path().join("pax");
        std::fs::write(&path, &raw).unwrap();
        let d = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: images::digest_of(&raw),
            size: raw.len() as u64,
        };
        let e = extract(&store, &[(d, path)], "/app.wasm", "/", "img", 1024).unwrap_err();
        assert!(matches!(e, PullError::TooLarge { size: 4096, .. }), "{e}");
    }

    #[test]
    fn an_index_is_narrowed_to_its_wasi_entry_else_to_the_node_s_linux_one() {
        let d = |c: &str| images::digest_of(c.as_bytes());
        let arch = crate::arch();
        let index = serde_json::json!({"manifests": [
            {"digest": d("a"), "size": 1, "platform": {"os": "linux", "architecture": arch}},
            {"digest": d("b"), "size": 1, "platform": {"os": "wasip2", "architecture": "wasm"}},
        ]});
        assert_eq!(pick_entry(&index, "img").unwrap(), d("b"));
        let linux = serde_json::json!({"manifests": [
            {"digest": d("c"), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": d("a"), "size": 1, "platform": {"os": "linux", "architecture": arch}},
        ]});
        assert_eq!(pick_entry(&linux, "img").unwrap(), d("a"));
        let foreign = serde_json::json!({"manifests": [
            {"digest": d("c"), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": d("e"), "size": 1, "platform": {"os": "windows", "architecture": arch}},
        ]});
        let e = pick_entry(&foreign, "img").unwrap_err();
        assert!(
            matches!(&e, PullError::OtherPlatform { platforms, .. } if platforms == &format!("linux/s390x, windows/{arch}")),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .ends_with(&format!("this node runs wasi/wasm or linux/{arch}")),
            "{e}"
        );
    }

    #[test]
    fn zstd_layers_are_refused_by_their_type_before_any_fetch() {
        let layer = |media: &str| Descriptor {
            media_type: media.into(),
            digest: images::digest_of(b"l"),
            size: 1,
        };
        for ok in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ] {
            assert!(check_layer_type(&layer(ok), "img").is_ok(), "{ok}");
        }
        let e = check_layer_type(&layer("application/vnd.oci.image.layer.v1.tar+zstd"), "img");
        assert!(e.unwrap_err().to_string().contains("tar+zstd"));
    }
}
