//! The node's images: a content-addressed store (`DATA/content/sha256/<hex>`, verified when
//! written and when read) and an index (`DATA/images/index.json`) of image names and of what each
//! image is made of. `wk image import` fills it without a registry; [`crate::oci`] pulls into it.
//!
//! An image's id is the digest a reference resolves to: the manifest's (or the image index's) for
//! a pulled image, the Wasm file's own for an imported one. A Wasm image has exactly one Wasm
//! content blob, the one pods run. A Linux image (for the container shim) has its config as
//! that blob, and its layers, unpacked once into a read-only root (`DATA/rootfs/<config hex>`)
//! that every container of the image starts from.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why an image could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes no longer match their digest.
    #[error("content {expected} is corrupt on disk: its bytes hash to {actual}")]
    Corrupt {
        /// The digest the content is stored under.
        expected: String,
        /// What the bytes hash to now.
        actual: String,
    },
    /// Bytes written for a digest hash to another one.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The digest the bytes were fetched for.
        expected: String,
        /// What they hash to.
        actual: String,
    },
    /// The file is not Wasm.
    #[error("{0} is not a WebAssembly module or component (no \\0asm header)")]
    NotWasm(String),
    /// A Linux image's layers could not be unpacked.
    #[error("unpacking layer {layer}: {source}")]
    Unpack {
        /// The layer's digest.
        layer: String,
        /// Why.
        #[source]
        source: crate::oci::unpack::UnpackError,
    },
    /// An image name that cannot be used.
    #[error("invalid image name {0:?}")]
    Name(String),
    /// A digest that is not `sha256:` and 64 hex digits.
    #[error("invalid digest {0:?}: wk stores sha256 content only")]
    Digest(String),
    /// `wk image rm` of an image a pod uses, or of one that is not there.
    #[error("{0}")]
    Remove(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// A resolved image: its id, and its Wasm content's digest and file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The image's id, `sha256:<hex>`: what `status.containerStatuses[].imageID` names.
    pub id: String,
    /// The Wasm content's digest, `sha256:<hex>` (a Linux image's config's).
    pub digest: String,
    /// The Wasm content file (a Linux image's config).
    pub path: PathBuf,
    /// A Linux image's layers; `None` for Wasm.
    pub linux: Option<Linux>,
}

/// What makes an image a Linux one: its platform and its layers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// `linux/amd64`, `linux/arm64/v8`...
    pub platform: String,
    /// The layers' digests, bottom first.
    pub layers: Vec<String>,
}

/// What one image is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The Wasm content's digest (a Linux image's config's).
    pub wasm: String,
    /// A Linux image's platform and layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<Linux>,
    /// Every blob of the image in the content store (manifests, config, layers, the Wasm).
    #[serde(default)]
    pub blobs: Vec<String>,
    /// The repositories it was pulled from (`127.0.0.1:5000/hello`), for `repo@digest` names.
    #[serde(default)]
    pub repos: Vec<String>,
    /// How it was packaged, e.g. "CNCF Wasm artifact".
    #[serde(default)]
    pub format: String,
    /// When it was pulled or imported, in Unix seconds.
    #[serde(default)]
    pub created: u64,
}

/// The index file: names and image records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Index {
    /// `name:tag` → image id.
    pub names: BTreeMap<String, String>,
    /// Image id → its record.
    pub images: BTreeMap<String, Record>,
}

impl<'de> Deserialize<'de> for Index {
    /// Reads the index, and also the first format (a flat `name → Wasm digest` map).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Now {
                names: BTreeMap<String, String>,
                #[serde(default)]
                images: BTreeMap<String, Record>,
            },
            Flat(BTreeMap<String, String>),
        }
        Ok(match Any::deserialize(d)? {
            Any::Now { names, images } => Index { names, images },
            Any::Flat(names) => {
                let images = names
                    .values()
                    .map(|d| {
                        let record = Record {
                            wasm: d.clone(),
                            blobs: vec![d.clone()],
                            format: "imported Wasm file".into(),
                            ..Record::default()
                        };
                        (d.clone(), record)
                    })
                    .collect();
                Index { names, images }
            }
        })
    }
}

/// The node's image store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    memo: Arc<Mutex<Memo>>,
}

/// `hello` is `hello:latest`; a digest reference stays as it is.
pub fn normalize(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The repository part of an image name: `reg:5000/app:v1` → `reg:5000/app`.
pub fn repository(name: &str) -> String {
    let name = name.split('@').next().unwrap_or(name);
    let normal = normalize(name);
    normal
        .rsplit_once(':')
        .map_or(normal.clone(), |(r, _)| r.to_owned())
}

/// Checks that a digest is `sha256:` and 64 lowercase hex digits (it becomes a file name).
///
/// # Errors
/// [`Error::Digest`] when it is not.
pub fn check_digest(digest: &str) -> Result<&str, Error> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(Error::Digest(digest.to_owned())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 digest of bytes, `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How much of a blob's start is kept to tell Wasm (text modules may open with comments).
const HEAD: usize = 4096;

/// Content being written into the store: hashed as it streams, in a temporary file until
/// [`BlobWriter::commit`] checks its digest and renames it into place.
pub struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    len: u64,
    head: Vec<u8>,
    root: PathBuf,
}

impl BlobWriter {
    /// Appends bytes.
    ///
    /// # Errors
    /// When the temporary file cannot be written.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.head.len() < HEAD {
            let take = bytes.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        let path = self.tmp.path().to_owned();
        self.tmp.write_all(bytes).map_err(io(&path))
    }

    /// How many bytes were written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first bytes written (up to 4 KiB): enough to tell Wasm, binary or text.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Syncs the content and moves it to its digest's place. With `expected`, content that
    /// hashes otherwise is dropped and [`Error::Mismatch`] names both digests.
    ///
    /// # Errors
    /// On a mismatch, or when the file cannot be synced or renamed.
    pub fn commit(self, expected: Option<&str>) -> Result<(String, PathBuf), Error> {
        let digest = format!("sha256:{}", hex(&self.hasher.finalize()));
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(Error::Mismatch {
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let path = content_path(&self.root, &digest);
        self.tmp.as_file().sync_all().map_err(io(&path))?;
        self.tmp.persist(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok((digest, path))
    }
}

fn content_path(root: &Path, digest: &str) -> PathBuf {
    root.join("content")
        .join("sha256")
        .join(digest.trim_start_matches("sha256:"))
}

impl Store {
    /// The store under a node's data directory.
    pub fn new(data: &Path) -> Self {
        Self {
            root: data.to_owned(),
            memo: Arc::default(),
        }
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images").join("index.json")
    }

    /// Where a blob's content lives (whether or not it is there).
    pub fn content_path(&self, digest: &str) -> PathBuf {
        content_path(&self.root, digest)
    }

    /// The index (empty when it cannot be read; see [`Store::try_index`]).
    pub fn index(&self) -> Arc<Index> {
        self.try_index().unwrap_or_default()
    }

    /// The index, read again only when the file changed.
    ///
    /// # Errors
    /// When the index exists but cannot be read or parsed.
    pub fn try_index(&self) -> Result<Arc<Index>, Error> {
        let path = self.index_path();
        let stamp = match std::fs::metadata(&path) {
            Ok(m) => Stamp::of(&m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Arc::default());
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if let Ok(memo) = self.memo.lock()
            && let Some((s, index)) = &memo.index
            && *s == stamp
        {
            return Ok(index.clone());
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let index = Arc::new(index);
        if let Ok(mut memo) = self.memo.lock() {
            memo.index = Some((stamp, index.clone()));
        }
        Ok(index)
    }

    /// Starts writing a blob into the content store.
    ///
    /// # Errors
    /// When the content directory cannot be made.
    pub fn writer(&self) -> Result<BlobWriter, Error> {
        let dir = self.root.join("content").join("sha256");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(BlobWriter {
            tmp: tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?,
            hasher: Sha256::new(),
            len: 0,
            head: Vec::new(),
            root: self.root.clone(),
        })
    }

    /// Adds a Wasm file, verifying its digest as it streams, written atomically.
    ///
    /// # Errors
    /// When the source cannot be read, is not Wasm, or the store cannot be written.
    pub fn add(&self, mut source: impl Read) -> Result<(String, PathBuf), Error> {
        let mut w = self.writer()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = source.read(&mut buf).map_err(io(&self.root))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        if !crate::agent::wasm::looks_like_wasm(w.head()) {
            return Err(Error::NotWasm("the file".into()));
        }
        w.commit(None)
    }

    /// A stored blob's path when the store holds it and it still hashes right.
    pub fn blob(&self, digest: &str) -> Option<PathBuf> {
        check_digest(digest).ok()?;
        let path = self.content_path(digest);
        self.verify_file(digest, &path).ok().map(|()| path)
    }

    /// Records an image and names it, under the index's lock, replacing an earlier image of
    /// each name. Names that resolve to a digest (`repo@sha256:…`) are not kept as names.
    ///
    /// # Errors
    /// When a name is unusable or the index cannot be written.
    pub fn record(&self, id: &str, record: Record, names: &[&str]) -> Result<(), Error> {
        check_digest(id)?;
        for name in names {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(Error::Name((*name).to_owned()));
            }
        }
        self.update(|index| {
            let entry = index.images.entry(id.to_owned()).or_insert_with(|| Record {
                created: now(),
                ..Record::default()
            });
            let repos = std::mem::take(&mut entry.repos);
            *entry = Record {
                created: if record.created == 0 {
                    entry.created
                } else {
                    record.created
                },
                ..record.clone()
            };
            for r in repos {
                if !entry.repos.contains(&r) {
                    entry.repos.push(r);
                }
            }
            for name in names.iter().filter(|n| !n.contains('@')) {
                index.names.insert(normalize(name), id.to_owned());
            }
        })
    }

    /// Names an imported Wasm file (whose id is its own digest).
    ///
    /// # Errors
    /// When the name is unusable or the index cannot be written.
    pub fn tag(&self, name: &str, digest: &str) -> Result<(), Error> {
        let record = Record {
            wasm: digest.to_owned(),
            blobs: vec![digest.to_owned()],
            format: "imported Wasm file".into(),
            ..Record::default()
        };
        self.record(digest, record, &[name])
    }

    /// Changes the index under an exclusive lock (between processes too: `wk image import`
    /// may run next to the agent), and writes it atomically.
    fn update(&self, change: impl FnOnce(&mut Index)) -> Result<(), Error> {
        let path = self.index_path();
        let dir = path.parent().expect("index has a parent").to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&lock_path)(e.into()))?;
        let mut index = Index::clone(&*self.try_index()?);
        change(&mut index);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
        serde_json::to_writer_pretty(&mut tmp, &index).map_err(|e| Error::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        tmp.persist(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Finds a local image by name or by `@sha256:` digest.
    ///
    /// # Errors
    /// When the index or the content cannot be read (not when they are absent).
    pub fn find(&self, name: &str) -> Result<Option<Image>, Error> {
        let index = self.try_index()?;
        let id = match name.split_once('@') {
            Some((_, d)) => d.to_owned(),
            None => match index.names.get(&normalize(name)) {
                Some(d) => d.clone(),
                None => return Ok(None),
            },
        };
        // Only recorded images: a digest that names some other stored blob (a config, a
        // platform manifest) is not an image to run.
        let (wasm, linux) = match index.images.get(&id) {
            Some(r) => (r.wasm.clone(), r.linux.clone()),
            None => return Ok(None),
        };
        if check_digest(&wasm).is_err() {
            return Ok(None);
        }
        let path = self.content_path(&wasm);
        match std::fs::metadata(&path) {
            Ok(_) => Ok(Some(Image {
                id,
                digest: wasm,
                path,
                linux,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Checks that an image's Wasm content (a Linux image's config and layers) still hashes to
    /// its digest. Content checked before and not changed since (same size, modification time
    /// and inode) is not hashed again.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when it does not.
    pub fn verify(&self, image: &Image) -> Result<(), Error> {
        self.verify_file(&image.digest, &image.path)?;
        for layer in image.linux.iter().flat_map(|l| &l.layers) {
            check_digest(layer)?;
            self.verify_file(layer, &self.content_path(layer))?;
        }
        Ok(())
    }

    /// Where a Linux image's unpacked root filesystem lives (whether or not it is there).
    fn rootfs_path(&self, config: &str) -> PathBuf {
        self.root
            .join("rootfs")
            .join(config.trim_start_matches("sha256:"))
    }

    /// The read-only root filesystem of the Linux image with config digest `config`, unpacked
    /// from its layers the first time it is asked for. Containers never write it: each gets a
    /// writable root over it. This blocks.
    ///
    /// # Errors
    /// When a layer cannot be read or is refused ([`Error::Unpack`] names the entry).
    pub fn rootfs(&self, config: &str, linux: &Linux) -> Result<PathBuf, Error> {
        check_digest(config)?;
        let root = self.rootfs_path(config);
        if root.is_dir() {
            return Ok(root);
        }
        let parent = self.root.join("rootfs");
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        // Unpacked beside, then renamed into place: a root that is there is whole. Two pods
        // unpacking the same image at once both finish; the second rename loses and is thrown
        // away.
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&parent)
            .map_err(io(&parent))?;
        let dir = tmp.path().join("root");
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        for layer in &linux.layers {
            check_digest(layer)?;
            let path = self.content_path(layer);
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            crate::oci::unpack::apply_layer(&dir, std::io::BufReader::new(file)).map_err(
                |source| Error::Unpack {
                    layer: layer.clone(),
                    source,
                },
            )?;
        }
        match std::fs::rename(&dir, &root) {
            Ok(()) => {}
            Err(_) if root.is_dir() => {}
            Err(e) => return Err(io(&root)(e)),
        }
        Ok(root)
    }

    fn verify_file(&self, digest: &str, path: &Path) -> Result<(), Error> {
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let stamp = Stamp::of(&file.metadata().map_err(io(path))?);
        if self
            .memo
            .lock()
            .is_ok_and(|m| m.verified.get(digest) == Some(&stamp))
        {
            return Ok(());
        }
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != digest {
            return Err(Error::Corrupt {
                expected: digest.to_owned(),
                actual,
            });
        }
        if let Ok(mut m) = self.memo.lock() {
            m.verified.insert(digest.to_owned(), stamp);
        }
        Ok(())
    }

    /// Notes that a pod started from an image, for image garbage collection's LRU order.
    pub fn touch(&self, id: &str) {
        if let Ok(mut m) = self.memo.lock() {
            m.used.insert(id.to_owned(), SystemTime::now());
        }
    }

    /// When an image was last used by a pod this process started, else when it was stored.
    pub fn last_used(&self, id: &str, record: &Record) -> SystemTime {
        self.memo
            .lock()
            .ok()
            .and_then(|m| m.used.get(id).copied())
            .unwrap_or(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(record.created))
    }

    /// Removes an image: its names, its record, and its blobs no other image shares. Compiled
    /// artifacts stay in the runtime's cache, which is keyed by the Wasm digest.
    ///
    /// # Errors
    /// When the index cannot be written; missing blobs are not an error.
    pub fn remove(&self, id: &str) -> Result<u64, Error> {
        let mut freed = 0;
        let mut orphans = Vec::new();
        self.update(|index| {
            let Some(record) = index.images.remove(id) else {
                return;
            };
            index.names.retain(|_, v| v != id);
            let kept: std::collections::HashSet<&String> = index
                .images
                .values()
                .flat_map(|r| r.blobs.iter().chain([&r.wasm]))
                .collect();
            orphans = record
                .blobs
                .iter()
                .chain([&record.wasm])
                .filter(|b| !kept.contains(b))
                .cloned()
                .collect();
        })?;
        orphans.sort();
        orphans.dedup();
        for blob in orphans {
            if check_digest(&blob).is_err() {
                continue;
            }
            let unpacked = self.rootfs_path(&blob);
            if unpacked.is_dir() {
                let _ = std::fs::remove_dir_all(&unpacked);
            }
            let path = self.content_path(&blob);
            if let Ok(m) = std::fs::metadata(&path) {
                freed += m.len();
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(freed)
    }

    /// Removes content no image records (blobs of pulls that failed half way, temporary files
    /// of a crash) older than `age`. Returns the bytes freed.
    pub fn sweep(&self, age: std::time::Duration) -> u64 {
        let Ok(index) = self.try_index() else {
            return 0;
        };
        let kept: std::collections::HashSet<String> = index
            .images
            .values()
            .flat_map(|r| r.blobs.iter().chain([&r.wasm]))
            .map(|d| d.trim_start_matches("sha256:").to_owned())
            .collect();
        let dir = self.root.join("content").join("sha256");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut freed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|d| d >= age);
            if !kept.contains(&name)
                && old
                && meta.is_file()
                && std::fs::remove_file(e.path()).is_ok()
            {
                freed += meta.len();
                tracing::info!(blob = %name, bytes = meta.len(), "removed content no image uses");
            }
        }
        // Unpacked roots of images gone, and unpacking a crash left half done.
        let roots = self.root.join("rootfs");
        for e in std::fs::read_dir(&roots).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|d| d >= age);
            if old && !kept.contains(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
                tracing::info!(root = %name, "removed an unpacked root no image uses");
            }
        }
        freed
    }

    /// The bytes an image's blobs take.
    pub fn size(&self, record: &Record) -> u64 {
        let mut blobs: Vec<&String> = record.blobs.iter().chain([&record.wasm]).collect();
        blobs.sort();
        blobs.dedup();
        blobs
            .into_iter()
            .filter(|b| check_digest(b).is_ok())
            .filter_map(|b| std::fs::metadata(self.content_path(b)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Image ids, least recently used first.
    pub fn by_last_use(&self) -> Vec<String> {
        let index = self.index();
        let mut ids: Vec<(SystemTime, String)> = index
            .images
            .iter()
            .map(|(id, r)| (self.last_used(id, r), id.clone()))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The images for the Node's `status.images`.
    pub fn node_images(&self) -> Vec<serde_json::Value> {
        let index = self.index();
        let mut by_id: BTreeMap<&String, Vec<String>> = BTreeMap::new();
        for (name, id) in &index.names {
            by_id.entry(id).or_default().push(name.clone());
        }
        index
            .images
            .iter()
            .map(|(id, record)| {
                let tags = by_id.remove(id).unwrap_or_default();
                let mut repos: Vec<String> = record.repos.clone();
                for t in &tags {
                    let r = repository(t);
                    if !repos.contains(&r) {
                        repos.push(r);
                    }
                }
                let mut names: Vec<String> = repos.iter().map(|r| format!("{r}@{id}")).collect();
                names.extend(tags);
                serde_json::json!({"names": names, "sizeBytes": self.size(record)})
            })
            .collect()
    }
}

/// What a file looked like when last read: enough to tell that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: m.len(),
            modified: m.modified().ok(),
            inode: m.ino(),
        }
    }
}

/// What the store remembers between reads.
#[derive(Debug, Default)]
struct Memo {
    index: Option<(Stamp, Arc<Index>)>,
    /// Digest → the content file's stamp when it last hashed right.
    verified: HashMap<String, Stamp>,
    /// Image id → when a pod last started from it.
    used: HashMap<String, SystemTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_content_is_found_by_name_and_digest_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let wasm = b"\0asm\x01\0\0\0";
        let (digest, path) = store.add(&wasm[..]).unwrap();
        assert_eq!(digest, digest_of(wasm));
        store.tag("hello", &digest).unwrap();
        let image = Image {
            id: digest.clone(),
            digest: digest.clone(),
            path,
            linux: None,
        };
        assert_eq!(store.find("hello:latest").unwrap(), Some(image.clone()));
        assert_eq!(
            store.find(&format!("x@{digest}")).unwrap(),
            Some(image.clone())
        );
        store.verify(&image).unwrap();
        std::fs::write(&image.path, b"\0asm tampered").unwrap();
        assert!(matches!(store.verify(&image), Err(Error::Corrupt { .. })));
        assert!(store.blob(&digest).is_none());
        assert!(matches!(
            store.add(&b"not wasm"[..]),
            Err(Error::NotWasm(_))
        ));
    }

    #[test]
    fn a_blob_that_hashes_otherwise_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut w = store.writer().unwrap();
        w.write(b"some bytes").unwrap();
        let wrong = digest_of(b"other bytes");
        match w.commit(Some(&wrong)) {
            Err(Error::Mismatch { expected, actual }) => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, digest_of(b"some bytes"));
            }
            other => panic!("{other:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("content/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn removing_an_image_keeps_blobs_another_image_shares() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let (wasm, _) = store.add(&b"\0asm\x01\0\0\0"[..]).unwrap();
        let blob = |bytes: &[u8]| {
            let mut w = store.writer().unwrap();
            w.write(bytes).unwrap();
            w.commit(None).unwrap().0
        };
        let (m1, m2) = (blob(b"manifest one"), blob(b"manifest two"));
        let record = |m: &str| Record {
            wasm: wasm.clone(),
            blobs: vec![m.to_owned(), wasm.clone()],
            repos: vec!["reg/app".into()],
            format: "test".into(),
            ..Record::default()
        };
        store.record(&m1, record(&m1), &["reg/app:v1"]).unwrap();
        store
            .record(&m2, record(&m2), &["reg/app:v2", "reg/app@sha256:x"])
            .unwrap();
        assert_eq!(store.index().names.len(), 2);
        assert_eq!(store.find("reg/app:v1").unwrap().unwrap().id, m1);
        let images = store.node_images();
        assert_eq!(images.len(), 2);
        assert!(
            images
                .iter()
                .any(|i| i["names"][0] == format!("reg/app@{m1}"))
        );
        store.remove(&m1).unwrap();
        assert!(store.content_path(&wasm).exists(), "the Wasm is shared");
        assert!(!store.content_path(&m1).exists());
        assert!(store.find("reg/app:v1").unwrap().is_none());
        store.remove(&m2).unwrap();
        assert!(!store.content_path(&wasm).exists());
        assert!(store.index().images.is_empty());
    }

    #[test]
    fn a_sweep_removes_only_content_no_image_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let (kept, _) = store.add(&b"\0asm\x01\0\0\0"[..]).unwrap();
        store.tag("app:v1", &kept).unwrap();
        let mut w = store.writer().unwrap();
        w.write(b"a layer of a pull that failed").unwrap();
        let (orphan, _) = w.commit(None).unwrap();
        assert_eq!(
            store.sweep(std::time::Duration::from_secs(3600)),
            0,
            "too young"
        );
        assert!(store.sweep(std::time::Duration::ZERO) > 0);
        assert!(store.content_path(&kept).exists());
        assert!(!store.content_path(&orphan).exists());
        // A blob that is only stored, never recorded, is not an image to run.
        assert!(store.find(&format!("x@{orphan}")).unwrap().is_none());
    }

    #[test]
    fn the_first_index_format_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let (digest, _) = store.add(&b"\0asm\x01\0\0\0"[..]).unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::write(
            dir.path().join("images/index.json"),
            format!("{{\"hello:v1\": \"{digest}\"}}"),
        )
        .unwrap();
        let image = store.find("hello:v1").unwrap().unwrap();
        assert_eq!(
            (image.id.as_str(), image.digest.as_str()),
            (digest.as_str(), digest.as_str())
        );
    }

    #[test]
    fn digests_that_are_not_sha256_hex_are_refused() {
        assert!(check_digest(&digest_of(b"x")).is_ok());
        for bad in ["sha256:../../etc/passwd", "sha512:00", "sha256:ABC", ""] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(
            store
                .find("x@sha256:../../../etc/passwd")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_unreadable_index_is_an_error_not_an_absence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let (digest, _) = store.add(&b"\0asm\x01\0\0\0"[..]).unwrap();
        store.tag("app:v1", &digest).unwrap();
        std::fs::write(dir.path().join("images/index.json"), b"{ not json").unwrap();
        let e = store.find("app:v1").unwrap_err().to_string();
        assert!(e.contains("index.json"), "{e}");
    }
}
