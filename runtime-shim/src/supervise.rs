//! The supervising process of one Linux container, as containerd's shims are: `wk-shim run
//! BUNDLE` runs the container the bundle's `request.json` describes with runc, and outlives
//! the agent that started it.
//!
//! It leaves its own session, and becomes the subreaper of what it starts, so the container's
//! first process is its child once `runc create` returns. The container's stdout and stderr are
//! pipes it reads into the container's log file, in the same format as Wasm containers' logs.
//! When the container's first process exits, the shim notes the exit code and whether the
//! kernel's OOM killer ended it (from the container's memory cgroup, before runc removes it),
//! deletes the container, and writes `ended.json`. Stopping is the agent's: `runc kill`, with
//! SIGTERM and then SIGKILL after the grace period.
//!
//! The bundle holds `request.json` (from the agent), `shim.pid`, `config.json`, `init.pid` and
//! `runc.log` (runc's), the container's root under `fs/`, and at last `ended.json`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::log::ContainerLog;
use crate::rootfs::writable_root;
use crate::spec::{Container, Image, Pod, runtime_spec};

/// The agent's request file in a bundle.
pub const REQUEST: &str = "request.json";
/// The file the shim writes its pid to.
pub const SHIM_PID: &str = "shim.pid";
/// The file the shim writes when the container has ended.
pub const ENDED: &str = "ended.json";
/// What the shim writes to its stdout once the container's process runs (then it closes it).
pub const STARTED: &str = "started";
/// The file runc writes the container's first process's pid to.
pub const INIT_PID: &str = "init.pid";

/// What the agent asks the shim to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// The container's id for runc.
    pub id: String,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state directory (`--root`), one per node.
    pub runc_root: PathBuf,
    /// The image's config.
    pub image: Image,
    /// The image's unpacked, read-only root.
    pub image_root: PathBuf,
    /// The container's settings.
    pub container: Container,
    /// What the pod gives it.
    pub pod: Pod,
    /// The log file of this run.
    pub log: PathBuf,
    /// Whether to try overlayfs for the writable root (else copy).
    pub overlay: bool,
}

/// How a container's run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ended {
    /// The exit code (128 + the signal for a process killed by one).
    pub code: i32,
    /// Whether the OOM killer ended it.
    pub oom: bool,
    /// Why it could not be started at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ended {
    fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 128,
            oom: false,
            error: Some(message.into()),
        }
    }
}

/// The runc command line, with the node's state directory and the bundle's log.
#[must_use]
pub fn runc(request: &Request, bundle: &Path) -> Command {
    let mut c = Command::new(&request.runc);
    c.arg("--root")
        .arg(&request.runc_root)
        .arg("--log")
        .arg(bundle.join("runc.log"))
        .arg("--log-format")
        .arg("json");
    c
}

/// Runs `wk-shim run BUNDLE`: supervises the container to its end and writes `ended.json`.
///
/// # Errors
/// When the request cannot be read or the end cannot be written.
pub fn run(bundle: &Path) -> std::io::Result<Ended> {
    // Its own session, so the agent's end (or a signal to the agent's group) is not its end.
    let _ = nix::unistd::setsid();
    // The container's first process becomes this one's child when `runc create` returns.
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    std::fs::write(bundle.join(SHIM_PID), std::process::id().to_string())?;
    let raw = std::fs::read(bundle.join(REQUEST))?;
    let request: Request = serde_json::from_slice(&raw)
        .map_err(|e| std::io::Error::other(format!("{REQUEST}: {e}")))?;
    let ended = supervise(bundle, &request);
    let tmp = bundle.join(".ended.json");
    std::fs::write(&tmp, serde_json::to_vec(&ended).unwrap_or_default())?;
    std::fs::rename(&tmp, bundle.join(ENDED))?;
    Ok(ended)
}

fn supervise(bundle: &Path, request: &Request) -> Ended {
    let log = match ContainerLog::create(request.log.clone()) {
        Ok(l) => l,
        Err(e) => return Ended::failed(format!("creating the log file: {e}")),
    };
    // In a directory of its own: releasing the root removes it, and the bundle stays.
    let writable = match writable_root(&request.image_root, &bundle.join("fs"), request.overlay) {
        Ok(w) => w,
        Err(e) => return Ended::failed(format!("making the container's root: {e}")),
    };
    let ended = run_container(bundle, request, &log, &writable.root);
    if let Err(e) = writable.release() {
        eprintln!("wk-shim: releasing the container's root: {e}");
    }
    ended
}

/// The last error runc logged, for a create or start that failed.
fn runc_error(bundle: &Path) -> String {
    let text = std::fs::read_to_string(bundle.join("runc.log")).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .and_then(|v| v["msg"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "runc failed without a message".to_owned())
}

/// Copies one of the container's streams into its log until the last writer closes it.
fn pump(
    log: Arc<ContainerLog>,
    stream: &'static str,
    mut pipe: std::io::PipeReader,
) -> std::sync::mpsc::Receiver<()> {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut partial = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => log.write(stream, &mut partial, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        log.finish(stream, &mut partial);
        let _ = done.send(());
    });
    wait
}

/// Which limits the node's cgroups can enforce: memory, and CPU quota (v2's
/// `cgroup.controllers`, or v1's memory and cpu hierarchies).
#[must_use]
pub fn controllers() -> (bool, bool) {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(list) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        let has = |c: &str| list.split_whitespace().any(|x| x == c);
        return (has("memory"), has("cpu"));
    }
    (
        root.join("memory/memory.limit_in_bytes").exists(),
        root.join("cpu/cpu.cfs_quota_us").exists(),
    )
}

/// The cgroup a container runs in (under each controller's hierarchy on cgroup v1).
#[must_use]
pub fn cgroup(id: &str) -> String {
    format!("/wk/{id}")
}

/// A running container's memory in use (bytes) and CPU time used (ns), from its cgroup (v1's
/// memory and cpuacct controllers, or v2's unified hierarchy).
#[must_use]
pub fn usage(id: &str) -> Option<(u64, u64)> {
    let cg = cgroup(id);
    let read = |path: String| std::fs::read_to_string(path).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    if let Some(memory) = number(read(format!(
        "/sys/fs/cgroup/memory{cg}/memory.usage_in_bytes"
    ))) {
        let cpu = number(read(format!("/sys/fs/cgroup/cpuacct{cg}/cpuacct.usage")));
        return Some((memory, cpu.unwrap_or(0)));
    }
    let memory = number(read(format!("/sys/fs/cgroup{cg}/memory.current")))?;
    let cpu_us = keyed(&format!("/sys/fs/cgroup{cg}/cpu.stat"), "usage_usec");
    Some((memory, cpu_us.unwrap_or(0).saturating_mul(1000)))
}

/// The number on the line `KEY N` of a cgroup file (memory.events, cpu.stat...).
fn keyed(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether the kernel's OOM killer killed a process of the container's memory cgroup (v1's
/// memory.oom_control, or v2's memory.events).
fn oom_killed(cgroup: &str) -> bool {
    let count = |path: String| keyed(&path, "oom_kill");
    let v1 = count(format!("/sys/fs/cgroup/memory{cgroup}/memory.oom_control"));
    let v2 = count(format!("/sys/fs/cgroup{cgroup}/memory.events"));
    v1.or(v2).is_some_and(|n| n > 0)
}

fn run_container(bundle: &Path, request: &Request, log: &Arc<ContainerLog>, root: &Path) -> Ended {
    let mut spec = match runtime_spec(&request.image, &request.container, &request.pod, root) {
        Ok(s) => s,
        Err(e) => return Ended::failed(e.to_string()),
    };
    let cgroup = cgroup(&request.id);
    spec["linux"]["cgroupsPath"] = json!(cgroup);
    let config = serde_json::to_vec_pretty(&spec).unwrap_or_default();
    if let Err(e) = std::fs::write(bundle.join("config.json"), config) {
        return Ended::failed(format!("writing config.json: {e}"));
    }
    let pipes = std::io::pipe().and_then(|o| Ok((o, std::io::pipe()?)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return Ended::failed(format!("making the log pipes: {e}")),
    };
    // The pipes are the container's stdout and stderr: runc passes them through. This
    // process's own write ends close with the command, so the readers end with the container.
    let created = runc(request, bundle)
        .arg("create")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(bundle.join(INIT_PID))
        .arg(&request.id)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .status();
    let pumps = [
        pump(log.clone(), "stdout", out_r),
        pump(log.clone(), "stderr", err_r),
    ];
    let ended = match created {
        Ok(s) if s.success() => start_and_wait(bundle, request, &cgroup),
        Ok(_) => Ended::failed(runc_error(bundle)),
        Err(e) => Ended::failed(format!("running {}: {e}", request.runc.display())),
    };
    let _ = runc(request, bundle)
        .args(["delete", "--force", &request.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // The container's processes are gone with its PID namespace; a stream still open past
    // that (a process that escaped it) is not waited for.
    for p in pumps {
        let _ = p.recv_timeout(Duration::from_secs(2));
    }
    ended
}

/// Tells the agent the container runs, on stdout, and closes stdout: the agent may go away
/// from now on (a write to a pipe it no longer reads is an error this ignores).
fn say_started() {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{STARTED}");
    let _ = out.flush();
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn start_and_wait(bundle: &Path, request: &Request, cgroup: &str) -> Ended {
    let init = std::fs::read_to_string(bundle.join(INIT_PID))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    let Some(init) = init.map(Pid::from_raw) else {
        return Ended::failed("runc created the container but wrote no pid");
    };
    match runc(request, bundle)
        .args(["start", &request.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(_) => return Ended::failed(runc_error(bundle)),
        Err(e) => return Ended::failed(format!("running {}: {e}", request.runc.display())),
    }
    say_started();
    // Reaps everything that ends up here (orphans of the container's runc, too) until the
    // container's first process is gone.
    let code = loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => break code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == init => break 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Ended::failed(format!("waiting for the container: {e}")),
        }
    };
    Ended {
        code,
        oom: oom_killed(cgroup),
        error: None,
    }
}
