//! Network namespaces for pod sandboxes: made on a throw-away thread, kept alive by a bind mount
//! at `DATA/netns/<pod-uid>`, and joined by the pod's own thread. This is the one module with
//! `unsafe` (setns, ioctl), each block commented with why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Makes a new network namespace with `lo` up, bind-mounted at `path`.
///
/// # Errors
/// Without CAP_SYS_ADMIN (not root), or when the mount point cannot be made.
pub fn create(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let target: PathBuf = path.to_owned();
    // unshare() changes the calling thread only, so a fresh thread does it and then exits: the
    // namespace lives on through the bind mount.
    std::thread::Builder::new()
        .name("wk-netns".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            loopback_up()?;
            File::create(&target)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                let _ = std::fs::remove_file(&target);
                io::Error::from(e)
            })
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Whether `path` is a mounted network namespace (rather than a leftover empty file).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    // NSFS_MAGIC: the file system type of /proc/*/ns/* files.
    nix::sys::statfs::fstatfs(&file).is_ok_and(|s| s.filesystem_type().0 == 0x6e73_6673)
}

/// Moves the calling thread into the namespace at `path`.
///
/// # Errors
/// When the namespace file cannot be opened or joined.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Unmounts and removes the namespace at `path`; the kernel frees it once no thread or socket
/// uses it any more.
pub fn destroy(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Moves the namespace mounted at `from` to `to` (a fresh file there), then unmounts `from`.
fn move_to(from: &Path, to: &Path) -> io::Result<()> {
    File::create(to)?;
    if let Err(e) = mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(to);
        return Err(e.into());
    }
    destroy(from);
    Ok(())
}

/// Namespaces made ahead of need (with `lo` up), so that a pod's sandbox is a bind mount away
/// rather than a kernel namespace creation (a millisecond or more) away.
pub struct Pool {
    dir: PathBuf,
    target: usize,
    ready: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
    filling: AtomicBool,
}

impl Pool {
    /// A pool keeping `target` namespaces under `dir`; namespaces left there by an earlier
    /// agent are removed.
    pub fn new(dir: PathBuf, target: usize) -> Self {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            destroy(&entry.path());
        }
        Self {
            dir,
            target,
            ready: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            filling: AtomicBool::new(false),
        }
    }

    /// Mounts a ready namespace at `path`; `Ok(false)` when none is ready.
    ///
    /// # Errors
    /// When the mount fails (the namespace is then dropped).
    pub fn take_into(&self, path: &Path) -> io::Result<bool> {
        let Some(warm) = self.ready.lock().ok().and_then(|mut r| r.pop()) else {
            return Ok(false);
        };
        if let Err(e) = move_to(&warm, path) {
            destroy(&warm);
            return Err(e);
        }
        Ok(true)
    }

    /// Makes namespaces until the pool is full (blocking). Only one caller fills at a time.
    pub fn fill(&self) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        while self.ready.lock().map_or(usize::MAX, |r| r.len()) < self.target {
            let path = self
                .dir
                .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
            match create(&path) {
                Ok(()) => {
                    if let Ok(mut r) = self.ready.lock() {
                        r.push(path);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "making a spare network namespace failed");
                    break;
                }
            }
        }
        self.filling.store(false, Ordering::Release);
    }

    /// Removes every ready namespace (agent shutdown).
    pub fn drain(&self) {
        let ready = self.ready.lock().map(|mut r| std::mem::take(&mut *r));
        for path in ready.unwrap_or_default() {
            destroy(&path);
        }
    }
}

/// Sets IFF_UP on `lo` in the calling thread's namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() has no memory preconditions; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own, sized as the kernel expects.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
