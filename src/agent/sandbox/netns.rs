//! Network namespaces for pod sandboxes: made on a throw-away thread, kept alive by a bind mount
//! at `DATA/netns/<pod-uid>`, and joined by the pod's own thread. This is the one module with
//! `unsafe` (setns, ioctl), each block commented with why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

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
