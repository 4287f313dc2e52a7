//! A container's own writable root over its image's read-only one: an overlayfs mount where
//! the kernel allows it (the image's root as the lower layer, the container's changes in an
//! upper directory of its own), a copy of the image's root otherwise. Either way the image's
//! root is never written, so every container of the image starts from the same files.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

/// A container's root filesystem, made by [`writable_root`].
#[derive(Debug)]
pub struct Writable {
    /// Where the container's root is: the bundle's `rootfs`.
    pub root: PathBuf,
    /// The directory holding it (and the overlay's upper and work directories).
    dir: PathBuf,
    /// Whether `root` is an overlay mount (else a copy).
    pub overlay: bool,
}

/// Copies the tree at `from` to `to` (which must not exist): directories, files, symbolic
/// links (as links) and fifos, with their modes and owners.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        symlink(fs::read_link(from)?, to)?;
    } else if kind.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if kind.is_file() {
        fs::copy(from, to)?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else {
        // Fifos and sockets: an image's root has no others (unpacking refuses devices).
        nix::unistd::mkfifo(
            to,
            nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
        )
        .map_err(io::Error::from)?;
    }
    // Only root may give files away; an unprivileged shim keeps them its own.
    let _ = lchown(to, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

/// Makes a writable root for a container under `dir` over the image's root `image`, with
/// overlayfs when `overlay` is asked for and the kernel takes it, else by copying.
///
/// # Errors
/// When the directories cannot be made or the copy fails.
pub fn writable_root(image: &Path, dir: &Path, overlay: bool) -> io::Result<Writable> {
    let root = dir.join("rootfs");
    fs::create_dir_all(&root)?;
    if overlay {
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        fs::create_dir_all(&upper)?;
        fs::create_dir_all(&work)?;
        let paths = [image, upper.as_path(), work.as_path()];
        // overlayfs options separate with ',' and ':'; the agent's paths never have them.
        if paths
            .iter()
            .all(|p| !p.to_string_lossy().contains([',', ':']))
        {
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                upper.display(),
                work.display()
            );
            let mounted = nix::mount::mount(
                Some("overlay"),
                &root,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(options.as_str()),
            );
            if mounted.is_ok() {
                return Ok(Writable {
                    root,
                    dir: dir.to_owned(),
                    overlay: true,
                });
            }
        }
        // Not root, no overlayfs, or an upper directory on overlayfs itself: copy instead.
        let _ = fs::remove_dir(&upper);
        let _ = fs::remove_dir_all(&work);
    }
    fs::remove_dir(&root)?;
    copy_tree(image, &root)?;
    Ok(Writable {
        root,
        dir: dir.to_owned(),
        overlay: false,
    })
}

impl Writable {
    /// Unmounts the container's root (if an overlay) and removes everything it wrote.
    ///
    /// # Errors
    /// When the mount or the files cannot be removed.
    pub fn release(self) -> io::Result<()> {
        if self.overlay {
            nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH)
                .map_err(io::Error::from)?;
        }
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image root: a file, a directory, a symbolic link.
    fn image(dir: &Path) -> PathBuf {
        let image = dir.join("image");
        fs::create_dir_all(image.join("etc")).unwrap();
        fs::write(image.join("etc/motd"), "from the image\n").unwrap();
        fs::set_permissions(image.join("etc/motd"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink("/etc/motd", image.join("motd")).unwrap();
        image
    }

    /// Releases a root even when the test fails, so that no mount is left behind.
    struct Guard(Option<Writable>);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(w) = self.0.take() {
                w.release().expect("release");
            }
        }
    }

    fn check(overlay: bool) {
        let dir = tempfile::tempdir().unwrap();
        let image = image(dir.path());
        let first = Guard(Some(
            writable_root(&image, &dir.path().join("c1"), overlay).unwrap(),
        ));
        let w = first.0.as_ref().unwrap();
        // Root on a kernel with overlayfs gets a mount; anything else a copy.
        let can_mount = nix::unistd::geteuid().is_root()
            && fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\toverlay\n"));
        assert_eq!(w.overlay, overlay && can_mount);
        let root = &w.root;
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "from the image\n"
        );
        assert_eq!(
            fs::metadata(root.join("etc/motd"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert_eq!(
            fs::read_link(root.join("motd")).unwrap(),
            Path::new("/etc/motd")
        );
        // The container writes, adds and removes; the image's root does not change.
        fs::write(root.join("etc/motd"), "changed\n").unwrap();
        fs::write(root.join("new"), "new\n").unwrap();
        fs::remove_file(root.join("motd")).unwrap();
        assert_eq!(
            fs::read_to_string(image.join("etc/motd")).unwrap(),
            "from the image\n"
        );
        assert!(!image.join("new").exists());
        assert!(fs::symlink_metadata(image.join("motd")).is_ok());
        // A second container of the image starts from the image's files.
        let second = Guard(Some(
            writable_root(&image, &dir.path().join("c2"), overlay).unwrap(),
        ));
        let w2 = second.0.as_ref().unwrap();
        assert_eq!(
            fs::read_to_string(w2.root.join("etc/motd")).unwrap(),
            "from the image\n"
        );
        drop((first, second));
        assert!(!dir.path().join("c1").exists() && !dir.path().join("c2").exists());
    }

    #[test]
    fn a_copied_root_is_the_containers_own() {
        check(false);
    }

    #[test]
    fn an_overlay_root_is_the_containers_own_and_falls_back_to_a_copy() {
        // As root on a kernel with overlayfs this mounts one; elsewhere it copies. Both must
        // behave the same.
        check(true);
    }
}
