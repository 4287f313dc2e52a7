//! Unpacking a Linux image's layers into a root filesystem, for the container shim.
//!
//! Layers are tar archives, gzip-compressed or not (told by their first bytes, not by what the
//! registry called them), applied in order. OCI whiteouts apply: `.wh.NAME` removes NAME from
//! the layers below, and `.wh..wh..opq` empties its directory of what the layers below put
//! there. Nothing may land outside the root: an entry whose path has `..`, that goes through a
//! symbolic link (which could point anywhere), or a hard link to outside is refused, and so are
//! device nodes. A refused layer leaves the error naming the entry; the caller throws the
//! half-made root away.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// The marker that makes a directory opaque.
const OPAQUE: &str = ".wh..wh..opq";
/// The prefix of a whiteout's name.
const WHITEOUT: &str = ".wh.";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land outside the root filesystem.
    #[error("layer entry {entry:?} escapes the root filesystem: {why}")]
    Escape {
        /// The entry's path in the archive.
        entry: String,
        /// How it escapes.
        why: String,
    },
    /// An entry is a device node, which a container may not get from an image.
    #[error("layer entry {0:?} is a device node, which images may not carry")]
    Device(String),
    /// The layer is compressed in a way wk does not read.
    #[error("the layer is compressed with {0}, which wk does not unpack (gzip or plain tar only)")]
    Compression(&'static str),
    /// The archive is damaged, or writing the root failed.
    #[error("unpacking {entry:?}: {source}")]
    Io {
        /// The entry being written (empty: the archive itself).
        entry: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// What applying one layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Files, directories, links and fifos written.
    pub written: usize,
    /// Paths the layer's whiteouts removed.
    pub removed: usize,
}

fn io_at(entry: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        entry: entry.to_owned(),
        source,
    }
}

/// An entry's path as components under the root: `./` and a leading `/` dropped, `..` refused.
fn relative(entry: &str) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for part in Path::new(entry).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape {
                    entry: entry.to_owned(),
                    why: "its path has `..`".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Makes the directories above `rel` under `root`, refusing to go through anything that is not
/// a real directory (a symbolic link could lead out of the root).
fn parent_dirs(root: &Path, rel: &Path, entry: &str) -> Result<(), UnpackError> {
    let mut at = root.to_owned();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Escape {
                    entry: entry.to_owned(),
                    why: format!(
                        "it goes through the symbolic link {}",
                        at.strip_prefix(root).unwrap_or(&at).display()
                    ),
                });
            }
            Ok(_) => {
                // A file where this layer puts a directory: the directory wins, as in overlayfs.
                fs::remove_file(&at).map_err(io_at(entry))?;
                fs::create_dir(&at).map_err(io_at(entry))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(io_at(entry))?;
            }
            Err(e) => return Err(io_at(entry)(e)),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (not following a link), if anything.
fn remove(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map(|()| true),
        Ok(_) => fs::remove_file(path).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies one layer (a tar archive, gzip-compressed or not) onto `root`.
///
/// # Errors
/// [`UnpackError`] naming the entry refused or the failure.
pub fn apply_layer(root: &Path, layer: impl Read) -> Result<Applied, UnpackError> {
    let mut input = BufReader::new(layer);
    let head = input.fill_buf().map_err(io_at(""))?;
    let reader: Box<dyn Read> = match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(input)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => return Err(UnpackError::Compression("zstd")),
        [0x42, 0x5a, 0x68, ..] => return Err(UnpackError::Compression("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => return Err(UnpackError::Compression("xz")),
        _ => Box::new(input),
    };
    let mut archive = tar::Archive::new(reader);
    let mut applied = Applied::default();
    // What this layer wrote: an opaque marker hides the layers below, not this one.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(io_at(""))? {
        let mut entry = entry.map_err(io_at(""))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = relative(&name)?;
        let Some(file_name) = rel.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        parent_dirs(root, &rel, &name)?;
        let target = root.join(&rel);
        if file_name == OPAQUE {
            let dir = target.parent().unwrap_or(root);
            for child in fs::read_dir(dir).map_err(io_at(&name))? {
                let child = child.map_err(io_at(&name))?.path();
                let child_rel = child.strip_prefix(root).unwrap_or(&child).to_owned();
                if !ours.contains(&child_rel) && remove(&child).map_err(io_at(&name))? {
                    applied.removed += 1;
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            if remove(&target.with_file_name(hidden)).map_err(io_at(&name))? {
                applied.removed += 1;
            }
            continue;
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let owner = (header.uid().ok(), header.gid().ok());
        match header.entry_type() {
            EntryType::Directory => {
                if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                    remove(&target).map_err(io_at(&name))?;
                }
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(io_at(&name))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_at(&name))?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove(&target).map_err(io_at(&name))?;
                let mut file = fs::File::create(&target).map_err(io_at(&name))?;
                io::copy(&mut entry, &mut file).map_err(io_at(&name))?;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_at(&name))?;
            }
            EntryType::Symlink => {
                let to = entry.link_name().map_err(io_at(&name))?.ok_or_else(|| {
                    io_at(&name)(io::Error::other("a symbolic link with no target"))
                })?;
                remove(&target).map_err(io_at(&name))?;
                // Its target is read inside the container's root when used, never here.
                symlink(&*to, &target).map_err(io_at(&name))?;
            }
            EntryType::Link => {
                let to = entry
                    .link_name()
                    .map_err(io_at(&name))?
                    .ok_or_else(|| io_at(&name)(io::Error::other("a hard link with no target")))?;
                let to = to.to_string_lossy().into_owned();
                let to_rel = relative(&to).map_err(|_| UnpackError::Escape {
                    entry: name.clone(),
                    why: format!("it is a hard link to {to:?}"),
                })?;
                parent_dirs(root, &to_rel, &name)?;
                let source = root.join(&to_rel);
                if fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(UnpackError::Escape {
                        entry: name,
                        why: format!("it is a hard link to the symbolic link {to:?}"),
                    });
                }
                remove(&target).map_err(io_at(&name))?;
                fs::hard_link(&source, &target).map_err(io_at(&name))?;
            }
            EntryType::Fifo => {
                remove(&target).map_err(io_at(&name))?;
                nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(mode))
                    .map_err(|e| io_at(&name)(io::Error::from(e)))?;
            }
            EntryType::Char | EntryType::Block => return Err(UnpackError::Device(name)),
            // PAX and GNU long-name headers are read by the tar crate itself; anything else
            // carries no file.
            _ => continue,
        }
        if let (Ok(uid), Ok(gid)) = (
            owner.0.map(u32::try_from).transpose(),
            owner.1.map(u32::try_from).transpose(),
        ) {
            // Only root may give files away; an unprivileged shim keeps them its own.
            let _ = lchown(&target, uid, gid);
        }
        ours.insert(rel);
        applied.written += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer from (path, kind) entries: "dir", "file:TEXT", "link:TARGET", "hard:TARGET",
    /// "char".
    fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            let data: &[u8] = if let Some(text) = kind.strip_prefix("file:") {
                h.set_entry_type(EntryType::Regular);
                text.as_bytes()
            } else if *kind == "dir" {
                h.set_entry_type(EntryType::Directory);
                b""
            } else if let Some(to) = kind.strip_prefix("link:") {
                h.set_entry_type(EntryType::Symlink);
                h.set_link_name(to).unwrap();
                b""
            } else if let Some(to) = kind.strip_prefix("hard:") {
                h.set_entry_type(EntryType::Link);
                // set_link_name refuses `..`, which is what a hostile layer sends.
                let bytes = to.as_bytes();
                h.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
                b""
            } else {
                h.set_entry_type(EntryType::Char);
                b""
            };
            h.set_size(data.len() as u64);
            // Paths with `..` are what a hostile layer sends: write the name raw.
            let bytes = path.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn read(root: &Path, path: &str) -> String {
        fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let lower = layer(&[
            ("bin/", "dir"),
            ("bin/busybox", "file:bb"),
            ("bin/sh", "link:/bin/busybox"),
            ("etc/hostname", "file:lower"),
            ("etc/motd", "file:gone soon"),
            ("var/cache/a", "file:1"),
            ("var/cache/b", "file:2"),
            ("usr/bin/ln", "hard:bin/busybox"),
        ]);
        let applied = apply_layer(&root, lower.as_slice()).unwrap();
        assert_eq!(applied.written, 8);
        assert_eq!(read(&root, "bin/busybox"), "bb");
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(read(&root, "usr/bin/ln"), "bb");
        let mode = fs::metadata(root.join("bin/busybox"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        // Gzip-compressed, as registries serve layers.
        let upper = layer(&[
            ("etc/hostname", "file:upper"),
            ("etc/.wh.motd", "file:"),
            ("var/cache/c", "file:3"),
            ("var/cache/.wh..wh..opq", "file:"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &upper).unwrap();
        let applied = apply_layer(&root, gz.finish().unwrap().as_slice()).unwrap();
        assert_eq!(read(&root, "etc/hostname"), "upper");
        assert!(!root.join("etc/motd").exists());
        // The opaque marker hid the lower layer's cache, not this layer's own file.
        assert!(!root.join("var/cache/a").exists() && !root.join("var/cache/b").exists());
        assert_eq!(read(&root, "var/cache/c"), "3");
        assert_eq!(applied.removed, 3);
    }

    #[test]
    fn entries_that_would_leave_the_root_and_device_nodes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();

        let e = apply_layer(&root, layer(&[("../escaped", "file:x")]).as_slice()).unwrap_err();
        assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
        assert!(e.to_string().contains("../escaped"), "{e}");
        assert!(!dir.path().join("escaped").exists());

        // A link to anywhere, then a file through it: refused, nothing written there.
        let through = layer(&[
            ("etc", &*format!("link:{}", outside.display())),
            ("etc/passwd", "file:root::0:0"),
        ]);
        let e = apply_layer(&root, through.as_slice()).unwrap_err();
        assert!(e.to_string().contains("symbolic link etc"), "{e}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        fs::remove_file(root.join("etc")).unwrap();

        let hard = layer(&[("stolen", "hard:../outside")]);
        let e = apply_layer(&root, hard.as_slice()).unwrap_err();
        assert!(e.to_string().contains("hard link"), "{e}");

        let e = apply_layer(&root, layer(&[("dev/sda", "char")]).as_slice()).unwrap_err();
        assert!(matches!(e, UnpackError::Device(_)), "{e}");
        assert!(e.to_string().contains("dev/sda"), "{e}");

        let e = apply_layer(&root, &[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..]).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }
}
