//! Pulling an image into the node's store, under a pull policy, one pull per image however
//! many pods ask at once.
//!
//! What is Wasm (DESIGN.md, OCI): an image manifest with one layer of a Wasm media type (the
//! CNCF artifact, wasm-to-oci, runwasi's component layer), or a `wasi/wasm` platform image
//! whose tar layers hold the module at its entrypoint; an index is narrowed to its `wasi` entry.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use super::fetch::{Manifest, Session};
use super::registry::{Credential, DockerConfig, Registries};
use super::{PullError, parse_reference};
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
            _ if images::is_latest(image) => Self::Always,
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
            .get_or_init(|| self.pull_once(name, secrets))
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
            let mut creds: Vec<Credential> = secrets
                .iter()
                .flat_map(|s| s.matching(reference.registry()))
                .collect();
            if endpoint.mirror {
                creds.extend(secrets.iter().flat_map(|s| s.matching(&endpoint.host)));
            }
            creds.extend(endpoint.credential.clone());
            if creds.is_empty() {
                creds.push(Credential::Anonymous);
            }
            for cred in creds {
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
                    Err(e @ (PullError::Unreachable { .. } | PullError::NotFound { .. }))
                        if endpoint.mirror =>
                    {
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
            let entry = pick_wasm_entry(&top_json, name)?;
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
        let mut blobs = manifests.clone();
        let mut fetched: u64 = stored.iter().map(|(b, _)| b.len() as u64).sum();
        let have = |d: &str| self.store.content_path(d).exists();

        let wasm_layers: Vec<&Descriptor> = layers
            .iter()
            .filter(|l| {
                matches!(
                    l.media_type.as_str(),
                    super::WASM_LAYER | super::WASM_LAYER_V1 | super::RUNWASI_COMPONENT_LAYER
                )
            })
            .collect();
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
            if !have(&layer.digest) {
                fetched += layer.size;
            }
            let path = session
                .blob(
                    &self.store,
                    &layer.digest,
                    layer.size,
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
            blobs.push(layer.digest.clone());
            if !have(&config.digest) {
                fetched += config.size;
            }
            session
                .small_blob(&self.store, &config.digest, config.size, "the config")
                .await?;
            blobs.push(config.digest.clone());
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
            if !have(&config.digest) {
                fetched += config.size;
            }
            let raw = session
                .small_blob(&self.store, &config.digest, config.size, "the config")
                .await?;
            blobs.push(config.digest.clone());
            let cfg: Value = serde_json::from_slice(&raw).map_err(|e| {
                PullError::Format(format!("the image config of {name} is not JSON: {e}"))
            })?;
            let platform = platform_of(&cfg);
            if !is_wasi(&cfg["os"], &cfg["architecture"], &cfg["variant"]) {
                return Err(PullError::NotWasm {
                    reference: name.to_owned(),
                    platforms: platform,
                });
            }
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
                if !have(&layer.digest) {
                    fetched += layer.size;
                }
                let p = session
                    .blob(
                        &self.store,
                        &layer.digest,
                        layer.size,
                        self.layer_limit,
                        "the layer",
                    )
                    .await?;
                paths.push((layer.clone(), p));
                blobs.push(layer.digest.clone());
            }
            let store = self.store.clone();
            let (n, limit) = (name.to_owned(), self.layer_limit);
            let digest =
                tokio::task::spawn_blocking(move || extract(&store, &paths, &entry, &n, limit))
                    .await
                    .map_err(|e| PullError::Setup(e.to_string()))??;
            (digest, "wasi/wasm image")
        };
        for (bytes, digest) in stored {
            if have(&digest) {
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
        blobs.push(wasm.clone());
        blobs.sort();
        blobs.dedup();
        let id = top.digest.clone();
        let record = Record {
            wasm: wasm.clone(),
            blobs,
            repos: vec![images::repository(name)],
            format: format.to_owned(),
            created: 0,
        };
        let size = self.store.size(&record);
        let index = self.store.index();
        let known = index.images.get(&id).is_some_and(|r| {
            r.wasm == record.wasm && r.blobs == record.blobs && r.repos.contains(&record.repos[0])
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
            },
            size,
            fetched,
            format: format.to_owned(),
        })
    }
}

impl Manifest {
    fn clone_parts(&self) -> (bytes::Bytes, String) {
        (self.bytes.clone(), self.digest.clone())
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

/// The digest of an index's `wasi/wasm` entry.
fn pick_wasm_entry(index: &Value, name: &str) -> Result<String, PullError> {
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    if let Some(e) = entries.iter().find(|e| {
        let p = &e["platform"];
        is_wasi(&p["os"], &p["architecture"], &p["variant"])
    }) {
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
    Err(PullError::NotWasm {
        reference: name.to_owned(),
        platforms: platforms.join(", "),
    })
}

fn read_head(path: &Path) -> Result<Vec<u8>, PullError> {
    let mut head = vec![0u8; 8];
    let mut f = std::fs::File::open(path)
        .map_err(|e| PullError::Store(format!("{}: {e}", path.display())))?;
    let n = f
        .read(&mut head)
        .map_err(|e| PullError::Store(format!("{}: {e}", path.display())))?;
    head.truncate(n);
    Ok(head)
}

/// `./a//b/` → `a/b`.
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Finds the entrypoint's file in a `wasi/wasm` image's layers, topmost first, honouring
/// whiteouts, and stores it as the image's Wasm content.
fn extract(
    store: &images::Store,
    layers: &[(Descriptor, PathBuf)],
    entry: &str,
    name: &str,
    limit: u64,
) -> Result<String, PullError> {
    let target = clean(entry);
    if target.is_empty() || target.split('/').any(|p| p == "..") {
        return Err(PullError::Format(format!(
            "{name}: the entrypoint {entry:?} is not a path inside the image"
        )));
    }
    let (dir, base) = target.rsplit_once('/').unwrap_or(("", &target));
    let whiteout = if dir.is_empty() {
        format!(".wh.{base}")
    } else {
        format!("{dir}/.wh.{base}")
    };
    for (layer, path) in layers.iter().rev() {
        let file = std::fs::File::open(path)
            .map_err(|e| PullError::Store(format!("{}: {e}", path.display())))?;
        let reader: Box<dyn std::io::Read> = match layer.media_type.as_str() {
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
        let mut archive = tar::Archive::new(reader);
        let bad = |e: std::io::Error| {
            PullError::Format(format!(
                "{name}: layer {} is not a readable tar: {e}",
                layer.digest
            ))
        };
        let mut hidden = false;
        for item in archive.entries().map_err(bad)? {
            let mut item = item.map_err(bad)?;
            let p = clean(&item.path().map_err(bad)?.to_string_lossy());
            let opaque = p
                .strip_suffix(".wh..wh..opq")
                .is_some_and(|d| target.starts_with(d));
            if p == whiteout || opaque {
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
            let size = item.header().size().map_err(bad)?;
            if size > limit {
                return Err(PullError::TooLarge {
                    what: format!("{name}'s {entry}"),
                    size,
                    limit,
                    knob: "the node's limit is set with `wk agent --max-module-size`",
                });
            }
            let (digest, _) = store.add(&mut item).map_err(|e| match e {
                images::Error::NotWasm(_) => PullError::Format(format!(
                    "{name}: the entrypoint {entry:?} is not a WebAssembly module or component"
                )),
                e => PullError::store(e),
            })?;
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
        let d = extract(&store, &[l1.clone(), l2], "/app/hello.wasm", "img", 1 << 20).unwrap();
        assert_eq!(d, images::digest_of(new));
        let gone = layer(dir.path(), "l3", &[("app/.wh.hello.wasm", b"")], false);
        let e = extract(
            &store,
            &[l1.clone(), gone],
            "/app/hello.wasm",
            "img",
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not in the image's layers"), "{e}");
        let e = extract(
            &store,
            std::slice::from_ref(&l1),
            "/app/hello.wasm",
            "img",
            4,
        )
        .unwrap_err();
        assert!(matches!(e, PullError::TooLarge { .. }), "{e}");
        let e = extract(
            &store,
            std::slice::from_ref(&l1),
            "../etc/passwd",
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
        let e = extract(&store, &[text], "/app/hello.wasm", "img", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not a WebAssembly"), "{e}");
    }

    #[test]
    fn an_index_is_narrowed_to_its_wasi_entry_and_linux_only_images_are_named() {
        let d = |c: &str| images::digest_of(c.as_bytes());
        let index = serde_json::json!({"manifests": [
            {"digest": d("a"), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d("b"), "size": 1, "platform": {"os": "wasip2", "architecture": "wasm"}},
        ]});
        assert_eq!(pick_wasm_entry(&index, "img").unwrap(), d("b"));
        let linux = serde_json::json!({"manifests": [
            {"digest": d("a"), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d("c"), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ]});
        match pick_wasm_entry(&linux, "img") {
            Err(PullError::NotWasm { platforms, .. }) => {
                assert_eq!(platforms, "linux/amd64, linux/arm64/v8");
            }
            other => panic!("{other:?}"),
        }
    }
}
