//! The pod sandbox (the pause container's analog): the pod's directory, its network namespace,
//! and the pod's own thread. That thread joined the namespace and runs a small tokio runtime,
//! so every socket a guest or its HTTP listener opens lives in the pod's namespace. Tearing
//! the sandbox down stops that runtime (dropping every task, instance and socket), joins the
//! thread, then removes the namespace and the directory.

pub mod netns;
pub mod volumes;

use std::future::Future;
use std::path::{Path, PathBuf};

/// Why a sandbox could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network namespace could not be made or joined.
    #[error("creating the pod's network namespace at {path}: {source}")]
    Netns {
        /// The bind-mount path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pod's directory or thread could not be made.
    #[error("creating the pod sandbox: {0}")]
    Io(#[from] std::io::Error),
}

/// A pod's sandbox.
pub struct Sandbox {
    /// DATA/pods/<uid>.
    pub dir: PathBuf,
    /// DATA/netns/<uid>, or `None` when the pod shares the host's network.
    pub netns: Option<PathBuf>,
    /// The holder of the pod-network address its namespace came with (a spare made ahead and
    /// already connected), to be handed to the pod.
    pub wired: Option<String>,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the pod's directory and namespace live.
pub fn paths(data: &Path, uid: &str) -> (PathBuf, PathBuf) {
    (data.join("pods").join(uid), data.join("netns").join(uid))
}

impl Sandbox {
    /// Makes (or re-enters, after an agent restart) the sandbox of pod `uid`.
    ///
    /// # Errors
    /// When the namespace, directory or thread cannot be made.
    pub fn create(
        data: &Path,
        uid: &str,
        name: &str,
        host_network: bool,
        spare: Option<&netns::Pool>,
        unwire: &dyn Fn(&str),
    ) -> Result<Self, Error> {
        let (dir, ns) = paths(data, uid);
        std::fs::create_dir_all(&dir)?;
        let mut wired = None;
        let netns = if host_network {
            None
        } else {
            if !netns::is_mounted(&ns) {
                wired = mount_namespace(&ns, spare, unwire)?;
            }
            Some(ns)
        };
        match start_thread(name, netns.clone()) {
            Ok((handle, stop, thread)) => Ok(Self {
                dir,
                netns,
                wired,
                handle,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                if let (Some(holder), Some(ns)) = (wired, &netns) {
                    // The spare's namespace goes (and its veth with it); its address is freed.
                    netns::destroy(ns);
                    unwire(&holder);
                }
                Err(e)
            }
        }
    }
    /// The pod thread's runtime, to run futures inside the pod's network namespace.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// Runs `future` on the pod's thread, inside its network namespace.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Stops everything the pod runs, then removes its namespace and directory.
    pub async fn teardown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(ns) = self.netns.take() {
            netns::destroy(&ns);
        }
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A sandbox dropped without teardown (agent shutdown) stops its thread but keeps its
        // namespace and files, so the next agent can adopt or clean them.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A runtime of `threads` worker threads inside the namespace at `netns` (the node's network
/// when `None`), for a container whose work should spread over the node's cores: an HTTP
/// component's requests, each in its own instance. None when it cannot be made.
pub fn worker_runtime(
    name: &str,
    netns: Option<&Path>,
    threads: usize,
) -> Option<tokio::runtime::Runtime> {
    let ns = netns.map(Path::to_owned);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(threads)
        .thread_name(thread_name(name))
        .on_thread_start(move || {
            crate::agent::trim::release_unused_stack();
            if let Some(ns) = &ns
                && let Err(e) = netns::enter(ns)
            {
                tracing::error!(netns = %ns.display(), error = %e, "a pod worker thread could not enter the pod's network namespace");
            }
        })
        .enable_all()
        .build()
        .map_err(|e| tracing::warn!(error = %e, "a pod's worker threads could not start; serving on the pod's own thread"))
        .ok()
}

/// Removes sandboxes left by an earlier agent whose pods are no longer bound here, with the
/// Linux containers still running in them.
pub fn clean_orphans(data: &Path, keep: &std::collections::HashSet<String>) -> usize {
    let mut removed = 0;
    for pod in std::fs::read_dir(data.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if !keep.contains(&*pod.file_name().to_string_lossy()) {
            crate::agent::shim::stop_pod(&pod.path());
        }
    }
    for sub in ["netns", "pods"] {
        let Ok(entries) = std::fs::read_dir(data.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&uid) {
                continue;
            }
            if sub == "netns" {
                netns::destroy(&entry.path());
            } else {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            removed += 1;
        }
    }
    removed
}

/// Mounts a network namespace at `ns`: a spare from the pool if one is ready, else a new one.
/// Returns the holder of the address a spare came connected with.
fn mount_namespace(
    ns: &Path,
    spare: Option<&netns::Pool>,
    unwire: &dyn Fn(&str),
) -> Result<Option<String>, Error> {
    let _ = std::fs::remove_file(ns);
    let taken = match spare.map(|p| p.take_into(ns)) {
        Some(Ok(taken)) => taken,
        Some(Err((e, holder))) => {
            tracing::debug!(error = %e, "taking a spare network namespace failed");
            if let Some(h) = holder {
                unwire(&h);
            }
            netns::Taken::Nothing
        }
        None => netns::Taken::Nothing,
    };
    match taken {
        netns::Taken::Wired(holder) => Ok(Some(holder)),
        netns::Taken::Bare => Ok(None),
        netns::Taken::Nothing => netns::create(ns)
            .map(|()| None)
            .map_err(|source| Error::Netns {
                path: ns.to_owned(),
                source,
            }),
    }
}

/// A started pod thread: its runtime's handle, the sender that stops it, and the thread.
type PodThread = (
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
);

/// A pod's threads' name: `pod-` and the start of the pod's (Linux keeps 15 bytes).
fn thread_name(name: &str) -> String {
    format!("pod-{}", name.chars().take(11).collect::<String>())
}

/// Starts the pod's thread, inside `netns` when there is one, with its runtime.
fn start_thread(name: &str, netns: Option<PathBuf>) -> Result<PodThread, Error> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let enter = netns.clone();
    let thread = std::thread::Builder::new()
        .name(thread_name(name))
        .stack_size(512 << 10)
        .spawn(move || {
            // The stack may be one glibc kept from an exited thread, pages and all.
            crate::agent::trim::release_unused_stack();
            let ready = (|| -> std::io::Result<tokio::runtime::Runtime> {
                if let Some(ns) = &enter {
                    netns::enter(ns)?;
                }
                // A pod's runtime serves few sockets: a small event buffer keeps an
                // idle pod's memory down.
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .max_io_events_per_tick(64)
                    .thread_stack_size(512 << 10)
                    .build()
            })();
            match ready {
                Ok(rt) => {
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    // Dropping the runtime drops every task still on it: instances,
                    // listeners, connections.
                    rt.shutdown_timeout(std::time::Duration::from_secs(1));
                }
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                }
            }
        })?;
    let handle = match handle_rx.recv() {
        Ok(Ok(h)) => h,
        Ok(Err(source)) => {
            let _ = thread.join();
            return Err(Error::Netns {
                path: netns.clone().unwrap_or_default(),
                source,
            });
        }
        Err(_) => {
            let _ = thread.join();
            return Err(Error::Io(std::io::Error::other(
                "the pod thread died at start",
            )));
        }
    };
    Ok((handle, stop_tx, thread))
}
