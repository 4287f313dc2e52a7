//! The node's images: a content-addressed store (`DATA/content/sha256/<hex>`, verified when
//! written and when read) and an index of image names (`DATA/images/index.json`). `wk image
//! import` fills it without a registry; pulling from OCI registries plugs in at [`resolve`].

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
    /// The file is not Wasm.
    #[error("{0} is not a WebAssembly module or component (no \\0asm header)")]
    NotWasm(String),
    /// An image name that cannot be used.
    #[error("invalid image name {0:?}")]
    Name(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// A resolved image: its digest and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The content file.
    pub path: PathBuf,
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

/// Whether a name's tag is `latest` (or missing): the kubelet's rule for `Always`.
pub fn is_latest(name: &str) -> bool {
    !name.contains('@') && normalize(name).ends_with(":latest")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    fn content_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("content")
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The name → digest index (empty when it cannot be read; see [`Store::try_index`]).
    pub fn index(&self) -> BTreeMap<String, String> {
        self.try_index().unwrap_or_default()
    }

    /// The name → digest index, read again only when the file changed.
    ///
    /// # Errors
    /// When the index exists but cannot be read or parsed.
    pub fn try_index(&self) -> Result<BTreeMap<String, String>, Error> {
        let path = self.index_path();
        let stamp = match std::fs::metadata(&path) {
            Ok(m) => Stamp::of(&m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        if let Ok(memo) = self.memo.lock()
            && let Some((s, index)) = &memo.index
            && *s == stamp
        {
            return Ok(index.clone());
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let index: BTreeMap<String, String> =
            serde_json::from_slice(&bytes).map_err(|e| Error::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
        if let Ok(mut memo) = self.memo.lock() {
            memo.index = Some((stamp, index.clone()));
        }
        Ok(index)
    }

    /// Adds content, verifying its digest as it streams, written atomically.
    ///
    /// # Errors
    /// When the source cannot be read or the store written.
    pub fn add(&self, mut source: impl Read) -> Result<Image, Error> {
        let dir = self.root.join("content").join("sha256");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut first = Vec::new();
        loop {
            let n = source.read(&mut buf).map_err(io(&dir))?;
            if n == 0 {
                break;
            }
            if first.len() < 4096 {
                let take = n.min(4096 - first.len());
                first.extend_from_slice(&buf[..take]);
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io(&dir))?;
        }
        if !crate::agent::wasm::looks_like_wasm(&first) {
            return Err(Error::NotWasm("the file".into()));
        }
        tmp.as_file().sync_all().map_err(io(&dir))?;
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        let path = self.content_path(&digest);
        tmp.persist(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(Image { digest, path })
    }

    /// Names an image (`name:tag` → digest), replacing an earlier one of that name.
    ///
    /// # Errors
    /// When the index cannot be written.
    pub fn tag(&self, name: &str, digest: &str) -> Result<(), Error> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Error::Name(name.to_owned()));
        }
        let mut index = self.index();
        index.insert(normalize(name), digest.to_owned());
        let path = self.index_path();
        let dir = path.parent().expect("index has a parent").to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
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
        let digest = match name.split_once('@') {
            Some((_, d)) => d.to_owned(),
            None => match self.try_index()?.get(&normalize(name)) {
                Some(d) => d.clone(),
                None => return Ok(None),
            },
        };
        let path = self.content_path(&digest);
        match std::fs::metadata(&path) {
            Ok(_) => Ok(Some(Image { digest, path })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Checks that stored content still hashes to its digest. Content checked before and not
    /// changed since (same size, modification time and inode) is not hashed again.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when it does not.
    pub fn verify(&self, image: &Image) -> Result<(), Error> {
        let mut file = std::fs::File::open(&image.path).map_err(io(&image.path))?;
        let stamp = Stamp::of(&file.metadata().map_err(io(&image.path))?);
        if self
            .memo
            .lock()
            .is_ok_and(|m| m.verified.get(&image.digest) == Some(&stamp))
        {
            return Ok(());
        }
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io(&image.path))?;
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != image.digest {
            return Err(Error::Corrupt {
                expected: image.digest.clone(),
                actual,
            });
        }
        if let Ok(mut m) = self.memo.lock() {
            m.verified.insert(image.digest.clone(), stamp);
        }
        Ok(())
    }

    /// The images for the Node's `status.images`.
    pub fn node_images(&self) -> Vec<serde_json::Value> {
        let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, digest) in self.index() {
            by_digest.entry(digest).or_default().push(name);
        }
        by_digest
            .into_iter()
            .map(|(digest, mut names)| {
                let size = std::fs::metadata(self.content_path(&digest)).map_or(0, |m| m.len());
                let repo = names[0]
                    .rsplit_once(':')
                    .map_or(names[0].clone(), |(r, _)| r.to_owned());
                names.insert(0, format!("{repo}@{digest}"));
                serde_json::json!({"names": names, "sizeBytes": size})
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
    index: Option<(Stamp, BTreeMap<String, String>)>,
    /// Digest → the content file's stamp when it last hashed right.
    verified: HashMap<String, Stamp>,
}

/// Why a container's image is not available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// `imagePullPolicy: Never` and the image is not on the node.
    NeverPull(String),
    /// The image would have to be pulled.
    Pull(String),
    /// The node's own store could not be read.
    Inspect(String),
}

/// Resolves a container's image under its pull policy. Registry pulls are not built yet: an
/// image that must be pulled is reported as ErrImagePull with the reason.
pub fn resolve(store: &Store, image: &str, policy: &str) -> Result<Image, Unavailable> {
    let local = store
        .find(image)
        .map_err(|e| Unavailable::Inspect(format!("Failed to inspect image \"{image}\": {e}")))?;
    match (policy, local) {
        ("Never" | "IfNotPresent", Some(found)) => Ok(found),
        ("Never", None) => Err(Unavailable::NeverPull(format!(
            "Container image \"{image}\" is not present with pull policy of Never"
        ))),
        _ => Err(Unavailable::Pull(format!(
            "Failed to pull image \"{image}\": this node cannot pull from registries yet; load it with `wk image import FILE --name {image}` and set imagePullPolicy: IfNotPresent or Never"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_content_is_found_by_name_and_digest_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let wasm = b"\0asm\x01\0\0\0";
        let image = store.add(&wasm[..]).unwrap();
        assert!(image.digest.starts_with("sha256:"));
        store.tag("hello", &image.digest).unwrap();
        assert_eq!(store.find("hello:latest").unwrap(), Some(image.clone()));
        assert_eq!(
            store.find(&format!("x@{}", image.digest)).unwrap(),
            Some(image.clone())
        );
        store.verify(&image).unwrap();
        std::fs::write(&image.path, b"\0asm tampered").unwrap();
        assert!(matches!(store.verify(&image), Err(Error::Corrupt { .. })));
        assert!(matches!(
            store.add(&b"not wasm"[..]),
            Err(Error::NotWasm(_))
        ));
    }

    #[test]
    fn pull_policies_follow_the_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let image = store.add(&b"\0asm\x01\0\0\0"[..]).unwrap();
        store.tag("app:v1", &image.digest).unwrap();
        assert!(resolve(&store, "app:v1", "IfNotPresent").is_ok());
        assert!(resolve(&store, "app:v1", "Never").is_ok());
        assert!(matches!(
            resolve(&store, "app:v2", "Never"),
            Err(Unavailable::NeverPull(_))
        ));
        assert!(matches!(
            resolve(&store, "app:v1", "Always"),
            Err(Unavailable::Pull(_))
        ));
        assert!(is_latest("app") && is_latest("reg:5000/app") && !is_latest("reg:5000/app:v1"));
    }

    #[test]
    fn an_unreadable_store_is_an_inspect_error_not_a_pull() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let image = store.add(&b"\0asm\x01\0\0\0"[..]).unwrap();
        store.tag("app:v1", &image.digest).unwrap();
        std::fs::write(dir.path().join("images/index.json"), b"{ not json").unwrap();
        match resolve(&store, "app:v1", "IfNotPresent") {
            Err(Unavailable::Inspect(m)) => assert!(m.contains("index.json"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
