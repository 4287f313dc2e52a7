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

/// Mounts the namespace mounted at `from` at `to` as well (a fresh file there).
fn bind_to(from: &Path, to: &Path) -> io::Result<()> {
    File::create(to)?;
    if let Err(e) = mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(to);
        return Err(e.into());
    }
    Ok(())
}

/// A namespace made ahead of need.
struct Spare {
    path: PathBuf,
    /// The pod-network holder of the address it was wired with, if it was.
    wired: Option<String>,
}

/// What [`Pool::take_into`] gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// No namespace was ready.
    Nothing,
    /// A namespace with `lo` up only.
    Bare,
    /// A namespace already on the pod network, its address held by this holder.
    Wired(String),
}

/// Namespaces made ahead of need (with `lo` up, and connected to the pod network where there
/// is one), so that a pod's sandbox is a bind mount away rather than a kernel namespace and a
/// veth (a millisecond or more each) away.
pub struct Pool {
    dir: PathBuf,
    target: usize,
    ready: Mutex<Vec<Spare>>,
    /// Spare mounts handed out, unmounted on the next fill: an unmount waits for an RCU grace
    /// period, which is no business of a starting pod.
    retired: Mutex<Vec<PathBuf>>,
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
            retired: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            filling: AtomicBool::new(false),
        }
    }

    /// Mounts a ready namespace at `path`.
    ///
    /// # Errors
    /// When the mount fails (the namespace is then dropped, and a wired one's holder is
    /// returned with the error for its address to be freed).
    pub fn take_into(&self, path: &Path) -> Result<Taken, (io::Error, Option<String>)> {
        let Some(spare) = self.ready.lock().ok().and_then(|mut r| r.pop()) else {
            return Ok(Taken::Nothing);
        };
        if let Err(e) = bind_to(&spare.path, path) {
            destroy(&spare.path);
            return Err((e, spare.wired));
        }
        if let Ok(mut r) = self.retired.lock() {
            r.push(spare.path);
        }
        Ok(spare.wired.map_or(Taken::Bare, Taken::Wired))
    }

    /// Makes namespaces until the pool is full (blocking), each handed to `wire` (which
    /// connects it to the pod network and returns its address's holder, or `None`). Only one
    /// caller fills at a time.
    pub fn fill(&self, wire: &dyn Fn(&Path) -> Option<String>) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let retired = self.retired.lock().map(|mut r| std::mem::take(&mut *r));
        for path in retired.unwrap_or_default() {
            destroy(&path);
        }
        while self.ready.lock().map_or(usize::MAX, |r| r.len()) < self.target {
            let path = self
                .dir
                .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
            match create(&path) {
                Ok(()) => {
                    let wired = wire(&path);
                    if let Ok(mut r) = self.ready.lock() {
                        r.push(Spare { path, wired });
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

    /// Removes every namespace (agent shutdown); returns the holders of the wired ones'
    /// addresses.
    pub fn drain(&self) -> Vec<String> {
        let ready = self.ready.lock().map(|mut r| std::mem::take(&mut *r));
        let retired = self.retired.lock().map(|mut r| std::mem::take(&mut *r));
        for path in retired.unwrap_or_default() {
            destroy(&path);
        }
        let mut holders = Vec::new();
        for spare in ready.unwrap_or_default() {
            destroy(&spare.path);
            holders.extend(spare.wired);
        }
        holders
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
