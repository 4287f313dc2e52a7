//! Linux containers: the agent's side of the container shim (`runtime-shim/`, the `wk-shim`
//! binary). A container whose image is a Linux one is unpacked into a read-only root once per
//! image; each run gets a bundle directory (`DATA/pods/<uid>/shim/<container>`) holding the
//! request the shim turns into a runtime spec, and a `wk-shim` process of its own that runs it
//! with runc and outlives the agent. Stopping is `runc kill`: SIGTERM when the pod drains,
//! SIGKILL when the grace period is over. Exec probes are `runc exec`.
//!
//! Containers of both kinds go through [`Runnable`], so the pod worker starts, stops and
//! probes them the same way.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use wk_shim::supervise::{ENDED, Ended, REQUEST, Request, SHIM_PID};

use super::wasm::{Exit, Hook, Loaded, Stop};

/// How often a running Linux container's cgroup is read for metrics.
const USAGE_SAMPLE: Duration = Duration::from_secs(5);

/// What a container runs: a loaded Wasm module or component, or a Linux image under the shim.
#[derive(Clone)]
pub enum Runnable {
    /// A Wasm module or component, loaded.
    Wasm(Loaded),
    /// A Linux image's container.
    Linux(Arc<Linux>),
}

impl Runnable {
    /// The Wasm module or component, for a Wasm container.
    pub fn wasm(&self) -> Option<&Loaded> {
        match self {
            Self::Wasm(l) => Some(l),
            Self::Linux(_) => None,
        }
    }

    /// Whether it is a Wasm HTTP component (served by the agent, not run as a command).
    pub fn is_http(&self) -> bool {
        matches!(self, Self::Wasm(Loaded::Http(_)))
    }

    /// Whether it exports one of wk's hooks (Linux containers have none).
    pub fn has_hook(&self, hook: Hook) -> bool {
        self.wasm().is_some_and(|l| l.has_hook(hook))
    }
}

/// The node's shim: the `wk-shim` binary, runc, and runc's state directory.
#[derive(Debug)]
pub struct Shim {
    binary: PathBuf,
    runc: PathBuf,
    root: PathBuf,
    /// Whether the node's cgroups enforce memory and CPU limits.
    pub controllers: (bool, bool),
}

/// A program on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Shim {
    /// Finds what Linux containers need on this node: the shim (`binary`, else `wk-shim`
    /// next to `wk`, else on PATH), runc on PATH, root, and namespaces.
    ///
    /// # Errors
    /// Why Linux containers cannot run here; Wasm pods are not concerned.
    pub fn detect(data: &Path, binary: Option<&Path>, namespaces: bool) -> Result<Self, String> {
        let binary = match binary {
            Some(b) if b.is_file() => b.to_owned(),
            Some(b) => {
                return Err(format!(
                    "the container shim {} (--container-shim) is not there",
                    b.display()
                ));
            }
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join("wk-shim")))
                .filter(|p| p.is_file())
                .or_else(|| on_path("wk-shim"))
                .ok_or("the container shim wk-shim is not installed next to wk or on PATH")?,
        };
        let runc = on_path("runc").ok_or("runc is not installed (Debian package runc)")?;
        if !nix::unistd::geteuid().is_root() {
            return Err("runc needs root, and the agent does not run as root".into());
        }
        if !namespaces {
            return Err("this node cannot make namespaces".into());
        }
        let controllers = wk_shim::supervise::controllers();
        if !controllers.0 || !controllers.1 {
            tracing::warn!(
                memory = controllers.0,
                cpu = controllers.1,
                "the node's cgroups cannot enforce every limit on Linux containers"
            );
        }
        Ok(Self {
            binary,
            runc,
            root: data.join("runc"),
            controllers,
        })
    }

    /// Sends a signal to a container's processes; retried while the shim is still creating
    /// it, until it exists or the run has ended.
    async fn signal(&self, id: &str, bundle: &Path, signal: &str) {
        for _ in 0..50 {
            let done = tokio::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .args(["kill", id, signal])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if done || bundle.join(ENDED).exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `runc exec` of `argv` in container `id`, with its stdout and stderr piped, and stdin
    /// when `stdin`; killed when dropped.
    pub fn exec_command(&self, id: &str, argv: &[String], stdin: bool) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runc);
        c.arg("--root")
            .arg(&self.root)
            .args(["exec", id])
            .args(argv)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<(), String> {
        let run = self.exec_command(id, argv, false).output();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "command exited with {}{}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            )),
            Ok(Err(e)) => Err(format!("running runc exec: {e}")),
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
        }
    }
}

/// A Linux container, ready to run.
pub struct Linux {
    /// The node's shim.
    pub shim: Arc<Shim>,
    /// What each run asks of the shim (the log path is set per run).
    pub request: Request,
    /// The run's bundle directory.
    pub bundle: PathBuf,
    /// The container's memory in use and CPU time used, for metrics (from its cgroup).
    usage: (Arc<AtomicU64>, Arc<AtomicU64>),
}

impl Linux {
    /// A container the node's shim runs, from its request (runc's paths are the shim's),
    /// reporting its memory and CPU use into `usage` while it runs.
    pub fn new(
        shim: Arc<Shim>,
        mut request: Request,
        bundle: PathBuf,
        usage: (Arc<AtomicU64>, Arc<AtomicU64>),
    ) -> Self {
        request.runc = shim.runc.clone();
        request.runc_root = shim.root.clone();
        Self {
            shim,
            request,
            bundle,
            usage,
        }
    }

    /// The container's id for runc.
    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// Runs a command in the running container (`runc exec`), for exec probes and hooks.
    ///
    /// # Errors
    /// A message saying how the command failed, timed out, or could not run.
    pub async fn exec(&self, argv: &[String], timeout: Duration) -> Result<(), String> {
        self.shim.exec(self.id(), argv, timeout).await
    }

    /// The pid of a `wk-shim` still running this container's last run: one an agent before
    /// this one started, which this one adopts rather than starting the container again.
    pub fn adoptable(&self) -> Option<i32> {
        if self.bundle.join(ENDED).exists() {
            return None;
        }
        live_shim(&self.bundle)
    }

    /// Starts the container's run, logging to `log`, and returns once its process runs; or
    /// adopts the run a previous agent started ([`Linux::adoptable`]).
    ///
    /// # Errors
    /// Why the container could not be started.
    pub async fn start(&self, log: &Path) -> Result<Started<'_>, String> {
        if let Some(pid) = self.adoptable() {
            tracing::info!(container = %self.request.id, pid, "adopted a running container");
            return Ok(Started {
                linux: self,
                process: Process::Adopted(pid),
            });
        }
        let mut child = self.spawn(log).await?;
        // The shim says `started` once runc has started the container, then closes its stdout.
        let mut said = String::new();
        if let Some(out) = child.stdout.take() {
            let mut lines = tokio::io::BufReader::new(out);
            let _ = tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut said).await;
        }
        let mut process = Process::Child(child);
        if said.trim() == wk_shim::supervise::STARTED {
            return Ok(Started {
                linux: self,
                process,
            });
        }
        let status = process.wait().await;
        Err(match self.ended() {
            Some(Ended { error: Some(m), .. }) => m,
            Some(e) => format!("the container ended before it was started ({e:?})"),
            None => self.no_result(&status),
        })
    }

    /// How the last run ended, if the shim has said.
    fn ended(&self) -> Option<Ended> {
        std::fs::read(self.bundle.join(ENDED))
            .ok()
            .and_then(|raw| serde_json::from_slice::<Ended>(&raw).ok())
    }

    /// The message for a shim that ended without writing how the container did.
    fn no_result(&self, status: &str) -> String {
        let why = std::fs::read_to_string(self.bundle.join("shim.log")).unwrap_or_default();
        format!(
            "the container shim ended ({status}) without a result: {}",
            why.trim()
        )
    }

    /// Writes the bundle and starts a `wk-shim` for it.
    async fn spawn(&self, log: &Path) -> Result<tokio::process::Child, String> {
        let bundle = &self.bundle;
        let mut request = self.request.clone();
        request.log = log.to_owned();
        self.write_bundle(&request)
            .await
            .map_err(|e| format!("writing the container's bundle: {e}"))?;
        let shim_log = std::fs::File::create(bundle.join("shim.log"))
            .map_err(|e| format!("creating shim.log: {e}"))?;
        tokio::process::Command::new(&self.shim.binary)
            .arg("run")
            .arg(bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.shim.binary.display()))
    }

    async fn write_bundle(&self, request: &Request) -> std::io::Result<()> {
        let bundle = &self.bundle;
        match tokio::fs::remove_dir_all(bundle).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        tokio::fs::create_dir_all(bundle).await?;
        tokio::fs::write(bundle.join(REQUEST), serde_json::to_vec(request)?).await
    }
}

/// The RuntimeClasses the server makes: `runc` for Linux images, on nodes that run them, and
/// `wasmtime` for Wasm. A pod without a class runs by its image's kind.
pub fn runtime_classes() -> [Value; 2] {
    let class = |name: &str, scheduling: Value| {
        let mut c = serde_json::json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name}, "handler": name});
        if !scheduling.is_null() {
            c["scheduling"] = scheduling;
        }
        c
    };
    [
        class(
            "runc",
            serde_json::json!({"nodeSelector": {super::node::RUNC_LABEL: "true"}}),
        ),
        class("wasmtime", Value::Null),
    ]
}

/// Stops every Linux container of the agent whose data directory is `data` and waits for
/// their shims to end (up to 10 s): for a node taken down for good, and for tests and
/// benchmarks, since containers outlive their agent. Returns whether none is left. Blocks.
pub fn stop_all(data: &Path) -> bool {
    let root = data.join("runc");
    if let Ok(out) = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["kill", id, "SIGKILL"])
                .output();
        }
    }
    let pods: Vec<PathBuf> = std::fs::read_dir(data.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|pod| pod.path())
        .collect();
    pods.iter().all(|pod| stop_pod(pod))
}

/// Kills the Linux containers still running in a pod's directory (`DATA/pods/<uid>`), by the
/// pids their shims recorded, and waits for the shims to end (up to 10 s): before a pod's
/// sandbox goes, nothing of it may run on. Returns whether none is left. Blocks.
pub fn stop_pod(pod_dir: &Path) -> bool {
    let shims: Vec<i32> = std::fs::read_dir(pod_dir.join("shim"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|bundle| {
            let bundle = bundle.path();
            let shim = live_shim(&bundle)?;
            if let Some(init) = pid_in(&bundle, wk_shim::supervise::INIT_PID) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(init),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Some(shim)
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shims.iter().any(|p| running(*p)) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A Linux container's run, started.
pub struct Started<'a> {
    linux: &'a Linux,
    process: Process,
}

impl Started<'_> {
    /// Whether a previous agent started it.
    pub fn adopted(&self) -> bool {
        matches!(self.process, Process::Adopted(_))
    }

    /// Waits for the run to end: `drain` sends SIGTERM, `kill` SIGKILL.
    pub async fn wait(mut self, drain: &Stop, kill: &Stop) -> Exit {
        let linux = self.linux;
        let (id, bundle) = (linux.request.id.as_str(), &linux.bundle);
        let mut termed = false;
        let mut sample = tokio::time::interval(USAGE_SAMPLE);
        let status = loop {
            tokio::select! {
                status = self.process.wait() => break status,
                _ = sample.tick() => {
                    if let Some((memory, cpu)) = wk_shim::supervise::usage(id) {
                        linux.usage.0.store(memory, Ordering::Relaxed);
                        linux.usage.1.store(cpu, Ordering::Relaxed);
                    }
                }
                () = drain.wait(), if !termed => {
                    termed = true;
                    linux.shim.signal(id, bundle, "SIGTERM").await;
                }
                () = kill.wait() => {
                    linux.shim.signal(id, bundle, "SIGKILL").await;
                    break self.process.wait().await;
                }
            }
        };
        linux.usage.0.store(0, Ordering::Relaxed);
        match linux.ended() {
            Some(Ended { error: Some(m), .. }) => Exit::Failed(m),
            Some(Ended { oom: true, .. }) => Exit::OomKilled,
            Some(Ended { code, .. }) => Exit::Code(code),
            None => Exit::Failed(linux.no_result(&status)),
        }
    }
}

/// A `wk-shim` process: this agent's child, or one adopted from an agent before it.
enum Process {
    Child(tokio::process::Child),
    Adopted(i32),
}

impl Process {
    /// Waits for it to end; says how.
    async fn wait(&mut self) -> String {
        match self {
            Self::Child(c) => c
                .wait()
                .await
                .map_or_else(|e| e.to_string(), |s| s.to_string()),
            Self::Adopted(pid) => {
                // Not this process's child: watched until it is gone (or a zombie its new
                // parent has not reaped yet).
                while running(*pid) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                "adopted shim exited".into()
            }
        }
    }
}

/// The pid a bundle's file (`shim.pid`, `init.pid`) records.
fn pid_in(bundle: &Path, file: &str) -> Option<i32> {
    std::fs::read_to_string(bundle.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The pid of the `wk-shim` running `bundle`, if it still runs: the pid its `shim.pid`
/// records, alive, and a `wk-shim run` of this bundle (not another process that got the pid).
fn live_shim(bundle: &Path) -> Option<i32> {
    let pid = pid_in(bundle, SHIM_PID)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.first().is_some_and(|a| a.ends_with(b"wk-shim"))
        && args.get(2) == Some(&bundle.as_os_str().as_encoded_bytes());
    (ours && running(pid)).then_some(pid)
}

/// Whether a process is alive (not gone, not a zombie).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// `securityContext.NAME` of the container, else of the pod.
fn security<'a>(pod: &'a Value, container: &'a Value, name: &str) -> &'a Value {
    let own = &container["securityContext"][name];
    if own.is_null() {
        &pod["spec"]["securityContext"][name]
    } else {
        own
    }
}

/// The container's settings for the shim, from its spec and what the agent resolved.
pub fn container(
    pod: &Value,
    spec: &Value,
    guest: &super::wasm::GuestSpec,
    memory_limit: Option<u64>,
) -> wk_shim::spec::Container {
    let env = &guest.env;
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    wk_shim::spec::Container {
        command: super::env::expanded(spec, "command", env),
        args: super::env::expanded(spec, "args", env),
        env: env.clone(),
        working_dir: guest.working_dir.clone(),
        run_as_user: id(security(pod, spec, "runAsUser")),
        run_as_group: id(security(pod, spec, "runAsGroup")),
        mounts: guest
            .mounts
            .iter()
            .map(|m| wk_shim::spec::Mount {
                host: m.host.clone(),
                path: m.guest.clone(),
                read_only: m.read_only,
            })
            .collect(),
        memory_limit,
        cpu_millis: guest.cpu_millis,
        read_only_root: spec["securityContext"]["readOnlyRootFilesystem"]
            .as_bool()
            .unwrap_or(false),
    }
}

/// Drops the limits the node's cgroups cannot enforce (`controllers`: memory, CPU) from a
/// container's settings; returns a message for each, for a warning event.
pub fn drop_unenforced(
    container: &mut wk_shim::spec::Container,
    (memory, cpu): (bool, bool),
) -> Vec<String> {
    let mut dropped = Vec::new();
    let message = |what: &str, controller: &str| {
        format!("{what} is not enforced: this node's cgroups have no {controller} controller")
    };
    if !memory && container.memory_limit.take().is_some() {
        dropped.push(message("limits.memory", "memory"));
    }
    if !cpu && container.cpu_millis.take().is_some() {
        dropped.push(message("limits.cpu", "cpu"));
    }
    dropped
}

/// The files a pod's Linux containers see as /etc/hosts, /etc/hostname and /etc/resolv.conf
/// (resolv.conf is written with the sandbox), as the kubelet writes them.
///
/// # Errors
/// When they cannot be written.
pub fn etc_files(
    dir: &Path,
    hostname: &str,
    pod_ip: Option<&str>,
) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    Ok(vec![
        ("/etc/hosts".into(), dir.join("hosts")),
        ("/etc/hostname".into(), dir.join("hostname")),
        ("/etc/resolv.conf".into(), dir.join("resolv.conf")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_the_cgroups_cannot_enforce_are_dropped_and_said() {
        let limited = || wk_shim::spec::Container {
            memory_limit: Some(64 << 20),
            cpu_millis: Some(200),
            ..wk_shim::spec::Container::default()
        };
        let mut c = limited();
        assert!(drop_unenforced(&mut c, (true, true)).is_empty());
        assert_eq!((c.memory_limit, c.cpu_millis), (Some(64 << 20), Some(200)));
        let mut c = limited();
        let said = drop_unenforced(&mut c, (false, true));
        assert_eq!(
            said,
            ["limits.memory is not enforced: this node's cgroups have no memory controller"]
        );
        assert_eq!((c.memory_limit, c.cpu_millis), (None, Some(200)));
        let mut c = limited();
        assert_eq!(drop_unenforced(&mut c, (false, false)).len(), 2);
        assert_eq!((c.memory_limit, c.cpu_millis), (None, None));
        // No limit asked for: nothing to say.
        let mut c = wk_shim::spec::Container::default();
        assert!(drop_unenforced(&mut c, (false, false)).is_empty());
    }
}
