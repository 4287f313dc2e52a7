//! The Wasm runtime: one wasmtime Engine per node (Cranelift, pooling allocator, epoch
//! interruption), an on-disk cache of compiled artifacts keyed by content digest and engine
//! fingerprint, and the two kinds of container: commands and wasi:http services.

pub mod http;
pub mod lookup;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Module, PoolingAllocationConfig,
    ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::logs::LogStream;

/// How often the epoch ticks: the granularity of CPU slicing and of kills.
pub const EPOCH: Duration = Duration::from_millis(10);
/// The linear memory a guest may use when its container sets no memory limit.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;
/// Wasm stack per instance; deep recursion traps with a stack overflow at this depth.
const MAX_WASM_STACK: usize = 512 << 10;
/// Of each freed instance slot's linear memory, how much of what the guest wrote is put back in
/// place rather than unmapped, by default (see [`Runtime::new`]).
pub const KEEP_RESIDENT: usize = 4 << 20;
/// The same for its tables.
const TABLE_KEEP_RESIDENT: usize = 1 << 20;

/// The largest module or component a node compiles by default: far above real services
/// (a JS engine component is about 14 MB), far below what Cranelift needs gigabytes for.
pub const MAX_MODULE_BYTES: u64 = 128 << 20;

/// Why loading or running a module failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be configured.
    #[error("configuring the Wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a Wasm module or component wasmtime accepts.
    #[error("compiling {digest}: {message}")]
    Compile {
        /// The content digest.
        digest: String,
        /// What wasmtime said.
        message: String,
    },
    /// The module is valid but is neither a command nor an HTTP component.
    #[error("{0}")]
    Kind(String),
    /// Reading or writing the cache.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the guest's context (a preopen, the linker) failed.
    #[error("preparing the guest: {0}")]
    Setup(String),
}

/// A compiled container image, ready to instantiate.
#[derive(Clone)]
pub enum Loaded {
    /// A WASI preview1 core module with `_start`.
    Module(InstancePre<P1State>),
    /// A component exporting `wasi:cli/run`.
    Command(CommandPre<P2State>),
    /// A component exporting `wasi:http/incoming-handler`.
    Http(ProxyPre<P2State>),
}

/// A hook of wk's WIT package (`wit/wk.wit`) that a component may export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `wk:pod/lifecycle.pre-stop`.
    PreStop,
    /// `wk:pod/health.check`.
    Health,
}

impl Hook {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::PreStop => ("wk:pod/lifecycle@0.1.0", "pre-stop"),
            Self::Health => ("wk:pod/health@0.1.0", "check"),
        }
    }

    /// How events name it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::PreStop => "wk:pod/lifecycle.pre-stop",
            Self::Health => "wk:pod/health.check",
        }
    }
}

impl Loaded {
    fn component_pre(&self) -> Option<&wasmtime::component::InstancePre<P2State>> {
        match self {
            Self::Command(p) => Some(p.instance_pre()),
            Self::Http(p) => Some(p.instance_pre()),
            Self::Module(_) => None,
        }
    }

    /// Whether the component exports `hook`.
    pub fn has_hook(&self, hook: Hook) -> bool {
        let Some(pre) = self.component_pre() else {
            return false;
        };
        let c = pre.component();
        let (iface, func) = hook.names();
        c.get_export_index(None, iface)
            .and_then(|i| c.get_export_index(Some(&i), func))
            .is_some()
    }

    /// `command` or `http`, for logs and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Module(_) | Self::Command(_) => "command",
            Self::Http(_) => "http",
        }
    }
}

/// The node's Wasm runtime.
pub struct Runtime {
    engine: Engine,
    p1: wasmtime::Linker<P1State>,
    p2: wasmtime::component::Linker<P2State>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, Loaded>>,
    /// Digests that failed to compile, with why: the same bytes fail the same way, so a pod
    /// retrying them costs no compile.
    failed: Mutex<HashMap<String, String>>,
    /// One compile at a time: Cranelift's memory for a big module is bounded by one.
    compiling: Mutex<()>,
    /// A lock per digest being loaded, so pods starting together load it once and share it.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The largest module or component this node compiles.
    max_module_bytes: u64,
    /// Whether the pooling allocator could be set up (else instances are allocated on demand).
    pub pooling: bool,
    /// Whether a freed slot's written pages are reset in place (PAGEMAP_SCAN) rather than
    /// unmapped.
    pub reset_in_place: bool,
    /// The pool's slots (a fiber stack and a component instance each): a guest waits for one
    /// rather than fail to instantiate when every slot is in use. None without the pool.
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// The version of wasmtime wk embeds, for the Node's containerRuntimeVersion.
pub const WASMTIME_VERSION: &str = "48.0.8";

fn engine_config(pool: Option<PoolingAllocationConfig>) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.max_wasm_stack(MAX_WASM_STACK);
    cfg.parallel_compilation(true);
    // For profiling guests with perf: `perfmap` names their compiled functions in
    // /tmp/perf-PID.map, `jitdump` writes jit-PID.dump for `perf inject --jit`.
    match std::env::var("WK_WASM_PROFILER").as_deref() {
        Ok("perfmap") => {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Ok("jitdump") => {
            cfg.profiler(wasmtime::ProfilingStrategy::JitDump);
        }
        _ => {}
    }
    if let Some(pool) = pool {
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

impl Runtime {
    /// Builds the engine and linkers; the pool is sized for `max_pods` concurrent instances.
    /// `keep_resident` bounds how much of a freed slot's written memory is reset in place
    /// (0: none).
    ///
    /// # Errors
    /// When neither a pooled nor an on-demand engine can be built.
    pub fn new(
        cache_root: &Path,
        max_pods: u32,
        max_module_bytes: u64,
        keep_resident: usize,
    ) -> Result<Arc<Self>, Error> {
        let mut pool = PoolingAllocationConfig::new();
        let slots = max_pods.clamp(16, 1000);
        pool.total_memories(slots * 2)
            .total_tables(slots * 2)
            .total_stacks(slots)
            .total_core_instances(slots * 4)
            .total_component_instances(slots)
            .max_memory_size(DEFAULT_MEMORY_LIMIT as usize)
            .max_memories_per_module(2)
            .max_tables_per_module(2)
            .max_unused_warm_slots(16);
        // Where the kernel can say which pages an instance wrote (PAGEMAP_SCAN, Linux 6.7+),
        // a freed slot's written pages (up to `keep_resident` of them) are copied back from
        // the memory image in place instead of being unmapped, so the module's next instance
        // in that slot takes no copy-on-write faults (nor the TLB shootdowns each costs) on
        // them. Each of the warm slots holds those pages. Without the scan, keeping memory
        // resident would copy every slot's first bytes, written or not: it stays off.
        let reset_in_place =
            keep_resident > 0 && PoolingAllocationConfig::is_pagemap_scan_available();
        if reset_in_place {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(keep_resident)
                .table_keep_resident(TABLE_KEEP_RESIDENT.min(keep_resident));
        }
        // The pool reserves address space up front; where that is refused (ulimit -v, small
        // 32-bit spaces) fall back to allocating on demand.
        let (engine, pooling) = match Engine::new(&engine_config(Some(pool))) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(error = %e, "the pooling allocator is unavailable; allocating instances on demand");
                let e =
                    Engine::new(&engine_config(None)).map_err(|e| Error::Engine(e.to_string()))?;
                (e, false)
            }
        };
        let mut p1 = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1, |s: &mut P1State| &mut s.wasi)
            .map_err(|e| Error::Engine(e.to_string()))?;
        let mut p2 = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2)
            .map_err(|e| Error::Engine(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2)
            .map_err(|e| Error::Engine(e.to_string()))?;
        lookup::add_to_linker(&mut p2, |s: &mut P2State| lookup::Lookup {
            table: &mut s.table,
            resolver: s.dns.as_ref(),
            allowed: s.network,
        })
        .map_err(|e| Error::Engine(e.to_string()))?;

        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let cache_dir = cache_root.join(format!("{:016x}", h.finish()));
        std::fs::create_dir_all(&cache_dir).map_err(|source| Error::Io {
            path: cache_dir.clone(),
            source,
        })?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wk-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH);
                }
            })
            .map_err(|e| Error::Engine(e.to_string()))?;
        Ok(Arc::new(Self {
            engine,
            p1,
            p2,
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
            loading: Mutex::new(HashMap::new()),
            max_module_bytes,
            pooling,
            reset_in_place: pooling && reset_in_place,
            slots: pooling.then(|| Arc::new(tokio::sync::Semaphore::new(slots as usize))),
        }))
    }

    /// The pool's slots, which every running guest holds one of (None without the pool).
    pub fn slots(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        self.slots.clone()
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads the module stored at `path` with content `digest`: from memory, else from the
    /// compiled cache, else by compiling it (off the async executor) and caching the result.
    ///
    /// # Errors
    /// When the bytes do not compile, or are neither a command nor an HTTP component.
    pub async fn load(self: &Arc<Self>, digest: &str, path: &Path) -> Result<Loaded, Error> {
        let known = || -> Option<Result<Loaded, Error>> {
            if let Some(l) = self.loaded.lock().ok()?.get(digest) {
                return Some(Ok(l.clone()));
            }
            let failed = self.failed.lock().ok()?.get(digest).cloned();
            failed.map(|e| Err(Error::Kind(e)))
        };
        if let Some(r) = known() {
            return r;
        }
        let gate = self
            .loading
            .lock()
            .map_err(|_| Error::Setup("the loader's lock is poisoned".into()))?
            .entry(digest.to_owned())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(r) = known() {
            return r;
        }
        let this = self.clone();
        let (digest_owned, path) = (digest.to_owned(), path.to_owned());
        let loaded = tokio::task::spawn_blocking(move || this.load_blocking(&digest_owned, &path))
            .await
            .map_err(|e| Error::Setup(e.to_string()))?;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e @ (Error::Compile { .. } | Error::Kind(_))) => {
                if let Ok(mut m) = self.failed.lock() {
                    m.insert(digest.to_owned(), e.to_string());
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Ok(mut m) = self.loaded.lock() {
            m.insert(digest.to_owned(), loaded.clone());
        }
        if let Ok(mut m) = self.loading.lock() {
            m.remove(digest);
        }
        Ok(loaded)
    }

    /// Drops what the runtime holds for content that left the node: its loaded artifact and
    /// its compiled file.
    pub fn forget(&self, digest: &str) {
        if let Ok(mut m) = self.loaded.lock() {
            m.remove(digest);
        }
        if let Ok(mut m) = self.failed.lock() {
            m.remove(digest);
        }
        let hex = digest.trim_start_matches("sha256:");
        let _ = std::fs::remove_file(self.cache_dir.join(format!("{hex}.cwasm")));
    }

    fn load_blocking(&self, digest: &str, path: &Path) -> Result<Loaded, Error> {
        let hex = digest.trim_start_matches("sha256:");
        let cached = self.cache_dir.join(format!("{hex}.cwasm"));
        let compile_err = |message: String| Error::Compile {
            digest: digest.to_owned(),
            message,
        };
        if let Ok(Some(kind)) = Engine::detect_precompiled_file(&cached) {
            // SAFETY: the cache holds only artifacts this process's engine wrote (below), and a
            // blob from another engine configuration is rejected with an error, not misread.
            let loaded = match kind {
                wasmtime::Precompiled::Module => {
                    unsafe { Module::deserialize_file(&self.engine, &cached) }.map(Artifact::Module)
                }
                wasmtime::Precompiled::Component => {
                    unsafe { Component::deserialize_file(&self.engine, &cached) }
                        .map(Artifact::Component)
                }
            };
            if let Ok(artifact) = loaded {
                return self.prepare(artifact);
            }
        }
        let size = std::fs::metadata(path)
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        if size > self.max_module_bytes {
            return Err(compile_err(format!(
                "the module is {} MiB, over this node's limit of {} MiB (wk agent --max-module-size)",
                size.div_ceil(1 << 20),
                self.max_module_bytes >> 20
            )));
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let _one_at_a_time = self.compiling.lock();
        let compiled = if is_component(&bytes) || first_form(&bytes).starts_with("(component") {
            Component::new(&self.engine, &bytes)
                .and_then(|c| Ok((c.serialize()?, Artifact::Component(c))))
        } else {
            Module::new(&self.engine, &bytes)
                .and_then(|m| Ok((m.serialize()?, Artifact::Module(m))))
        };
        drop(bytes);
        let compiled = compiled.map(|(blob, artifact)| {
            let tmp = cached.with_extension("tmp");
            if std::fs::write(&tmp, &blob)
                .and_then(|()| std::fs::rename(&tmp, &cached))
                .is_err()
            {
                tracing::warn!(path = %cached.display(), "could not write the compiled artifact to the cache");
            }
            artifact
        });
        // What the compile allocated is freed now, whether it succeeded or not.
        crate::agent::trim::release_free_heap();
        self.prepare(compiled.map_err(|e| compile_err(format!("{e:#}")))?)
    }

    fn prepare(&self, artifact: Artifact) -> Result<Loaded, Error> {
        match artifact {
            Artifact::Module(m) => {
                if m.get_export("_start").is_none() {
                    return Err(Error::Kind(
                        "the module exports no `_start`: it is a library (reactor), not a command"
                            .into(),
                    ));
                }
                let pre = self
                    .p1
                    .instantiate_pre(&m)
                    .map_err(|e| Error::Kind(format!("the module cannot be linked: {e:#}")))?;
                Ok(Loaded::Module(pre))
            }
            Artifact::Component(c) => {
                let pre = self
                    .p2
                    .instantiate_pre(&c)
                    .map_err(|e| Error::Kind(format!("the component cannot be linked: {e:#}")))?;
                if c.get_export_index(None, "wasi:http/incoming-handler@0.2.0")
                    .is_some()
                {
                    return ProxyPre::new(pre)
                        .map(Loaded::Http)
                        .map_err(|e| Error::Kind(e.to_string()));
                }
                if c.get_export_index(None, "wasi:cli/run@0.2.0").is_some() {
                    return CommandPre::new(pre)
                        .map(Loaded::Command)
                        .map_err(|e| Error::Kind(e.to_string()));
                }
                Err(Error::Kind(
                    "the component exports neither wasi:cli/run nor wasi:http/incoming-handler"
                        .into(),
                ))
            }
        }
    }
}

enum Artifact {
    Module(Module),
    Component(Component),
}

/// Whether `bytes` start with the component-model header.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00])
}

/// The first line of WAT text that is not blank or a `;;` comment.
fn first_form(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(4096)];
    String::from_utf8_lossy(head)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(";;"))
        .unwrap_or_default()
        .to_owned()
}

/// Whether the start of a file looks like Wasm: the binary header, or WAT text opening a
/// module or component.
pub fn looks_like_wasm(head: &[u8]) -> bool {
    if head.starts_with(b"\0asm") {
        return true;
    }
    let code = first_form(head);
    code.starts_with("(module") || code.starts_with("(component")
}

// ---- guest state ----

/// Memory accounting per instance: enforces the limit and remembers hitting it (OOMKilled).
pub struct Limiter {
    inner: StoreLimits,
    /// Set when a grow was refused by the limit.
    pub hit_limit: bool,
    /// Linear memory in use now, shared with the pod's metrics.
    usage: Arc<AtomicU64>,
    /// What this instance holds of `usage`.
    held: u64,
}

impl Limiter {
    fn new(memory_limit: u64, usage: Arc<AtomicU64>) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_limit).unwrap_or(usize::MAX))
                .table_elements(100_000)
                .instances(100)
                .build(),
            hit_limit: false,
            usage,
            held: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            let grown = desired.saturating_sub(current) as u64;
            self.held += grown;
            self.usage.fetch_add(grown, Ordering::Relaxed);
        } else {
            self.hit_limit = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        // The instance's memory goes with its store.
        self.usage.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// The store data of a preview1 command.
pub struct P1State {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// The store data of a component (command or HTTP handler).
pub struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    limiter: Limiter,
    /// Cluster DNS for the guest's names.
    dns: Option<crate::dns::Resolver>,
    /// Whether the guest may use the network (and so resolve names).
    network: bool,
    hooks: lookup::Hooks,
}

/// Store data with a memory limiter.
trait Limited: Sized + Send + 'static {
    fn limiter(&mut self) -> &mut Limiter;
}

impl Limited for P1State {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

impl Limited for P2State {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

/// A guest's store and the node's pool slot its instances take. The fields drop in order: the
/// store, and its instances with it, goes back to the pool before the slot is given back, so a
/// guest that waited for the slot (on another pod's thread, or another of this pod's workers)
/// finds the pool's room free. A slot held in the store's data would be given back first:
/// wasmtime drops a store's data before its instances.
struct Guest<T: 'static> {
    store: Store<T>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<T: Limited> Guest<T> {
    /// A store for `data` with its limiter, once one of the node's pool slots is free.
    async fn new(engine: &Engine, slots: Option<&Arc<tokio::sync::Semaphore>>, data: T) -> Self {
        let slot = slot(slots).await;
        let mut store = Store::new(engine, data);
        store.limiter(|s| s.limiter());
        Self { store, _slot: slot }
    }
}

impl<T: 'static> std::ops::Deref for Guest<T> {
    type Target = Store<T>;
    fn deref(&self) -> &Store<T> {
        &self.store
    }
}

impl<T: 'static> std::ops::DerefMut for Guest<T> {
    fn deref_mut(&mut self) -> &mut Store<T> {
        &mut self.store
    }
}

impl<T: 'static> wasmtime::AsContext for Guest<T> {
    type Data = T;
    fn as_context(&self) -> wasmtime::StoreContext<'_, T> {
        self.store.as_context()
    }
}

impl<T: 'static> wasmtime::AsContextMut for Guest<T> {
    fn as_context_mut(&mut self) -> wasmtime::StoreContextMut<'_, T> {
        self.store.as_context_mut()
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// A directory a guest sees.
#[derive(Clone, Debug)]
pub struct Mount {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether writes are refused.
    pub read_only: bool,
}

/// Everything one run of a container needs, besides the module.
#[derive(Clone)]
pub struct GuestSpec {
    /// argv, argv[0] included.
    pub argv: Vec<String>,
    /// The environment, in order.
    pub env: Vec<(String, String)>,
    /// The volume mounts.
    pub mounts: Vec<Mount>,
    /// The working directory, if the spec sets one.
    pub working_dir: Option<String>,
    /// The linear-memory limit in bytes.
    pub memory_limit: u64,
    /// The CPU limit in millicores (None: unlimited).
    pub cpu_millis: Option<u64>,
    /// Whether the guest may open sockets (inside its pod's namespace).
    pub network: bool,
    /// Cluster DNS as the pod sees it, for the guest's names.
    pub dns: Option<crate::dns::Resolver>,
    /// The node's pool slots (see [`Runtime::slots`]).
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Linear memory in use, for metrics.
    pub memory_usage: Arc<AtomicU64>,
    /// CPU time used, in nanoseconds, for metrics.
    pub cpu_nanos: Arc<AtomicU64>,
}

impl GuestSpec {
    fn wasi_builder(
        &self,
        stdout: Option<&LogStream>,
        stderr: Option<&LogStream>,
    ) -> Result<WasiCtxBuilder, Error> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.argv).envs(&self.env);
        if let Some(out) = stdout {
            b.stdout(out.clone());
        }
        if let Some(err) = stderr {
            b.stderr(err.clone());
        }
        for m in &self.mounts {
            let perms = if m.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            b.preopened_dir(&m.host, &m.guest, perms).map_err(|e| {
                Error::Setup(format!("mounting {} at {}: {e}", m.host.display(), m.guest))
            })?;
        }
        if let Some(dir) = &self.working_dir {
            b.initial_cwd(dir);
        }
        if self.network {
            // The pod's thread is inside the pod's own network namespace, so this reaches only
            // the pod's localhost (and, with pod networking, what the namespace routes to).
            b.inherit_network()
                .allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true);
        }
        Ok(b)
    }
}

/// How a command run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest exited with this code.
    Code(i32),
    /// It went over its memory limit.
    OomKilled,
    /// It was stopped by the agent (deletion, liveness failure).
    Killed,
    /// It trapped: stack overflow, unreachable, out-of-bounds access...
    Trap(String),
    /// It could not be started.
    Failed(String),
}

impl Exit {
    /// The exit code kubectl shows.
    pub fn code(&self) -> i32 {
        match self {
            Self::Code(c) => *c,
            Self::OomKilled | Self::Killed => 137,
            Self::Trap(_) | Self::Failed(_) => 128,
        }
    }

    /// The terminated-state reason the kubelet would give.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Code(0) => "Completed",
            Self::OomKilled => "OOMKilled",
            Self::Failed(_) => "StartError",
            _ => "Error",
        }
    }

    /// The terminated-state message, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Trap(m) | Self::Failed(m) => Some(m.clone()),
            _ => None,
        }
    }
}

/// A stop request shared with a running guest: checked at every epoch tick.
#[derive(Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl Stop {
    /// Asks the guest to stop now.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether a stop was asked for.
    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Installs the epoch callback: a stop interrupts the guest; a CPU limit makes it sleep off
/// the time it used beyond its share; otherwise it yields so other tasks run.
fn slice<T: 'static>(store: &mut Store<T>, stop: &Stop, spec: &GuestSpec) -> Arc<Meter> {
    slice_with(store, stop, spec.cpu_millis, &spec.cpu_nanos)
}

fn slice_with<T: 'static>(
    store: &mut Store<T>,
    stop: &Stop,
    cpu_millis: Option<u64>,
    used: &Arc<AtomicU64>,
) -> Arc<Meter> {
    store.set_epoch_deadline(1);
    let flag = stop.flag.clone();
    let meter = Arc::new(Meter {
        used: used.clone(),
        mark: AtomicU64::new(thread_cpu_nanos()),
        carried: AtomicU64::new(0),
    });
    let at_tick = meter.clone();
    store.epoch_deadline_callback(move |_| {
        if flag.load(Ordering::Relaxed) {
            return Ok(UpdateDeadline::Interrupt);
        }
        let spent = at_tick.tick();
        match cpu_millis {
            // Over a tick of wall time the guest may use millis/1000 of it; sleeping
            // spent * (1000/millis - 1) keeps it at that share.
            Some(m) if m < 1000 && m > 0 => {
                let pause = Duration::from_nanos(spent.saturating_mul(1000 - m) / m);
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::time::sleep(pause)),
                ))
            }
            _ => Ok(UpdateDeadline::Yield(1)),
        }
    });
    meter
}

/// A guest's CPU time, counted poll by poll on the thread that polls it: what runs on that
/// thread between two polls (other tasks) is not the guest's, a task on a pod's worker threads
/// may be polled on a different thread each time, and a call shorter than a tick counts too.
struct Meter {
    /// The container's total.
    used: Arc<AtomicU64>,
    /// The thread's CPU time when the current poll began, or at the last tick within it.
    mark: AtomicU64,
    /// CPU time since the last tick, in the polls before the current one.
    carried: AtomicU64,
}

impl Meter {
    /// At a tick (inside a poll): the guest's CPU time since the last one.
    fn tick(&self) -> u64 {
        let now = thread_cpu_nanos();
        now.saturating_sub(self.mark.swap(now, Ordering::Relaxed))
            + self.carried.swap(0, Ordering::Relaxed)
    }

    /// Runs the guest's `work`, counting the CPU time of each poll.
    async fn run<F: std::future::Future>(&self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            let start = thread_cpu_nanos();
            self.mark.store(start, Ordering::Relaxed);
            let polled = work.as_mut().poll(cx);
            let end = thread_cpu_nanos();
            let since_mark = end.saturating_sub(self.mark.load(Ordering::Relaxed));
            self.carried.fetch_add(since_mark, Ordering::Relaxed);
            self.used
                .fetch_add(end.saturating_sub(start), Ordering::Relaxed);
            polled
        })
        .await
    }
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Classifies the error a guest run ended with.
fn exit_of(err: wasmtime::Error, hit_limit: bool, stop: &Stop) -> Exit {
    if let Some(I32Exit(code)) = err.downcast_ref::<I32Exit>() {
        return if *code != 0 && hit_limit {
            Exit::OomKilled
        } else {
            Exit::Code(*code)
        };
    }
    if hit_limit {
        return Exit::OomKilled;
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) if stop.stopped() => Exit::Killed,
        Some(trap) => Exit::Trap(trap.to_string()),
        None if stop.stopped() => Exit::Killed,
        None => Exit::Trap(format!("{err:#}")),
    }
}

/// Runs a command container to completion (or until `stop`).
pub async fn run_command(
    loaded: &Loaded,
    engine: &Engine,
    spec: &GuestSpec,
    stdout: &LogStream,
    stderr: &LogStream,
    stop: &Stop,
) -> Exit {
    let exit = tokio::select! {
        exit = run_inner(loaded, engine, spec, stdout, stderr, stop) => exit,
        // A guest blocked in a host call (a sleep, a socket read) sees no epoch tick:
        // dropping its future stops it.
        () = stop.wait() => Exit::Killed,
    };
    stdout.finish();
    stderr.finish();
    exit
}

async fn run_inner(
    loaded: &Loaded,
    engine: &Engine,
    spec: &GuestSpec,
    stdout: &LogStream,
    stderr: &LogStream,
    stop: &Stop,
) -> Exit {
    let builder = match spec.wasi_builder(Some(stdout), Some(stderr)) {
        Ok(b) => b,
        Err(e) => return Exit::Failed(e.to_string()),
    };
    let limiter = Limiter::new(spec.memory_limit, spec.memory_usage.clone());
    match loaded {
        Loaded::Module(pre) => {
            let mut builder = builder;
            let data = P1State {
                wasi: builder.build_p1(),
                limiter,
            };
            let mut store = Guest::new(engine, spec.slots.as_ref(), data).await;
            let meter = slice(&mut store, stop, spec);
            let result = meter
                .run(async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                })
                .await;
            let hit = store.data().limiter.hit_limit;
            match result {
                Ok(()) => Exit::Code(0),
                Err(e) => exit_of(e, hit, stop),
            }
        }
        Loaded::Command(pre) => {
            let mut builder = builder;
            let mut store = Guest::new(
                engine,
                spec.slots.as_ref(),
                p2_state(builder.build(), limiter, spec),
            )
            .await;
            let meter = slice(&mut store, stop, spec);
            let result = meter
                .run(async {
                    let command = pre.instantiate_async(&mut store).await?;
                    command.wasi_cli_run().call_run(&mut store).await
                })
                .await;
            let hit = store.data().limiter.hit_limit;
            match result {
                Ok(Ok(())) => Exit::Code(0),
                Ok(Err(())) if hit => Exit::OomKilled,
                Ok(Err(())) => Exit::Code(1),
                Err(e) => exit_of(e, hit, stop),
            }
        }
        Loaded::Http(_) => Exit::Failed("an HTTP component is served, not run".into()),
    }
}

/// Waits for one of the node's pool `slots` (none needed without the pool).
async fn slot(
    slots: Option<&Arc<tokio::sync::Semaphore>>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slots = slots?;
    match slots.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => {
            tracing::debug!(
                "every slot of the node's instance pool is in use: the guest waits for one"
            );
            slots.clone().acquire_owned().await.ok()
        }
    }
}

/// The store data of a component guest.
fn p2_state(ctx: WasiCtx, limiter: Limiter, spec: &GuestSpec) -> P2State {
    let mut table = ResourceTable::new();
    table.set_max_capacity(100_000);
    P2State {
        ctx,
        table,
        http: WasiHttpCtx::new(),
        limiter,
        dns: spec.dns.clone(),
        network: spec.network,
        hooks: lookup::Hooks {
            resolver: spec.dns.clone(),
        },
    }
}

/// Calls a hook in a fresh instance of the container's component (sharing its mounts, env and
/// network), within `timeout`. The guest's output goes to the container's log.
///
/// # Errors
/// The guest's own error, a trap, a timeout, or a component without the hook.
pub async fn call_hook(
    loaded: &Loaded,
    engine: &Engine,
    spec: &GuestSpec,
    stdout: &LogStream,
    stderr: &LogStream,
    hook: Hook,
    timeout: Duration,
) -> Result<(), String> {
    let Some(pre) = loaded.component_pre() else {
        return Err(format!("{} needs a component", hook.describe()));
    };
    let mut builder = spec
        .wasi_builder(Some(stdout), Some(stderr))
        .map_err(|e| e.to_string())?;
    let limiter = Limiter::new(spec.memory_limit, spec.memory_usage.clone());
    let mut store = Guest::new(
        engine,
        spec.slots.as_ref(),
        p2_state(builder.build(), limiter, spec),
    )
    .await;
    let stop = Stop::default();
    let meter = slice(&mut store, &stop, spec);
    let (iface, func) = hook.names();
    let call = meter.run(async {
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let i = instance
            .get_export_index(&mut store, None, iface)
            .ok_or_else(|| format!("the component does not export {iface}"))?;
        let f = instance
            .get_export_index(&mut store, Some(&i), func)
            .ok_or_else(|| format!("{iface} has no function {func}"))?;
        let typed = instance
            .get_typed_func::<(), (Result<(), String>,)>(&mut store, &f)
            .map_err(|e| format!("{} has the wrong type: {e:#}", hook.describe()))?;
        let (result,) = typed
            .call_async(&mut store, ())
            .await
            .map_err(|e| format!("{e:#}"))?;
        result
    });
    let result = tokio::time::timeout(timeout, call).await;
    stdout.finish();
    stderr.finish();
    match result {
        Ok(r) => r,
        Err(_) => {
            stop.stop();
            Err(format!(
                "{} did not return within {}s",
                hook.describe(),
                timeout.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_starting_together_share_one_load_and_a_bad_module_fails_once() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(
            &dir.path().join("cache"),
            16,
            MAX_MODULE_BYTES,
            KEEP_RESIDENT,
        )
        .unwrap();
        let module = dir.path().join("m.wat");
        std::fs::write(
            &module,
            "(module (memory (export \"memory\") 1) (func (export \"_start\")))",
        )
        .unwrap();
        let mut loads = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (rt, path) = (runtime.clone(), module.clone());
            loads.spawn(async move { rt.load("sha256:m", &path).await });
        }
        let mut modules = Vec::new();
        while let Some(r) = loads.join_next().await {
            match r.unwrap().unwrap() {
                Loaded::Module(pre) => modules.push(pre.module().clone()),
                _ => panic!("a core module loads as a module"),
            }
        }
        assert!(
            modules.iter().all(|m| Module::same(m, &modules[0])),
            "one compiled module, shared"
        );

        let bad = dir.path().join("bad.wasm");
        std::fs::write(&bad, b"\0asm\x01\0\0\0\x99garbage").unwrap();
        let first = runtime
            .load("sha256:bad", &bad)
            .await
            .err()
            .unwrap()
            .to_string();
        std::fs::remove_file(&bad).unwrap();
        // The same digest fails the same way without being read or compiled again.
        let again = runtime
            .load("sha256:bad", &bad)
            .await
            .err()
            .unwrap()
            .to_string();
        assert_eq!(first, again);
        assert!(first.contains("sha256:bad"), "{first}");
    }

    #[tokio::test]
    async fn a_restarted_runtime_loads_the_compiled_artifact_without_compiling() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let module = dir.path().join("m.wat");
        std::fs::write(&module, "(module (func (export \"_start\")))").unwrap();
        let first = Runtime::new(&cache, 4, MAX_MODULE_BYTES, KEEP_RESIDENT).unwrap();
        first.load("sha256:m", &module).await.unwrap();
        drop(first);
        // The source is gone: only the artifact kept under the engine's fingerprint can load.
        std::fs::remove_file(&module).unwrap();
        let again = Runtime::new(&cache, 4, MAX_MODULE_BYTES, KEEP_RESIDENT).unwrap();
        assert!(matches!(
            again.load("sha256:m", &module).await,
            Ok(Loaded::Module(_))
        ));
        again.forget("sha256:m");
        let again = Runtime::new(&cache, 4, MAX_MODULE_BYTES, KEEP_RESIDENT).unwrap();
        assert!(
            again.load("sha256:m", &module).await.is_err(),
            "forget drops the artifact"
        );
    }

    /// Minor page faults this thread has taken so far.
    fn faults() -> i64 {
        // SAFETY: getrusage writes into the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        usage.ru_minflt
    }

    /// Calls `export` (no arguments, an i32 back) on a fresh instance of `module`.
    fn call_fresh(runtime: &Runtime, module: &Module, export: &str) -> i32 {
        let mut store = Store::new(&runtime.engine, ());
        store.set_epoch_deadline(1 << 20);
        let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
        let f = instance
            .get_typed_func::<(), i32>(&mut store, export)
            .unwrap();
        f.call(&mut store, ()).unwrap()
    }

    /// Reset in place covers writes scattered over many runs of pages (as a JS engine's heap
    /// makes): the next instance in the slot takes no fault on them. wasmtime 48 as released
    /// stopped after 32 runs and unmapped the rest (docs/adr/014-vendored-wasmtime.md). Where
    /// the kernel cannot scan (no PAGEMAP_SCAN), every written page faults again instead.
    #[test]
    fn scattered_writes_are_reset_in_place_without_faulting_again() {
        // 100 pages, 32 KiB apart (100 separate runs), all within the 4 MiB kept resident;
        // each must read as zero, then is written.
        let wat = r#"(module
            (memory (export "memory") 64)
            (func (export "scatter") (result i32)
                (local $i i32) (local $seen i32)
                (loop $next
                    (local.set $seen (i32.add (local.get $seen)
                        (i32.load (i32.mul (local.get $i) (i32.const 32768)))))
                    (i32.store (i32.mul (local.get $i) (i32.const 32768)) (i32.const 1))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $next (i32.lt_u (local.get $i) (i32.const 100))))
                (local.get $seen)))"#;
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path(), 4, MAX_MODULE_BYTES, KEEP_RESIDENT).unwrap();
        let module = Module::new(&runtime.engine, wat).unwrap();
        let round = || {
            assert_eq!(
                call_fresh(&runtime, &module, "scatter"),
                0,
                "a page kept a write"
            )
        };
        for _ in 0..3 {
            round();
        }
        let before = faults();
        for _ in 0..10 {
            round();
        }
        let per_round = (faults() - before) / 10;
        if runtime.reset_in_place {
            assert!(per_round < 30, "{per_round} faults per instance");
        } else {
            assert!(per_round >= 100, "{per_round} faults per instance");
        }
    }

    /// A slot's next instance sees the module's initial memory, whether its last guest's
    /// writes were reset in place (inside and beyond `keep_resident`) or unmapped.
    #[test]
    fn an_instance_never_sees_what_the_last_one_in_its_slot_wrote() {
        // 256 pages (16 MiB): a data segment at 0, zeroed pages at 1 MiB and at 8 MiB, past
        // the 4 MiB kept resident.
        let wat = r#"(module
            (memory (export "memory") 256)
            (data (i32.const 0) "\29\00\00\00")
            (func (export "touch") (result i32)
                (local $seen i32)
                (local.set $seen (i32.add (i32.load (i32.const 0))
                    (i32.add (i32.load (i32.const 0x100000)) (i32.load (i32.const 0x800000)))))
                (i32.store (i32.const 0) (i32.const 99))
                (i32.store (i32.const 0x100000) (i32.const 7))
                (i32.store (i32.const 0x800000) (i32.const 7))
                (local.get $seen)))"#;
        for keep in [KEEP_RESIDENT, 0] {
            let dir = tempfile::tempdir().unwrap();
            let runtime = Runtime::new(dir.path(), 4, MAX_MODULE_BYTES, keep).unwrap();
            assert!(runtime.pooling);
            assert_eq!(
                runtime.reset_in_place,
                keep > 0 && PoolingAllocationConfig::is_pagemap_scan_available()
            );
            let module = Module::new(&runtime.engine, wat).unwrap();
            for round in 0..20 {
                assert_eq!(
                    call_fresh(&runtime, &module, "touch"),
                    41,
                    "keep {keep}, round {round}"
                );
            }
        }
    }

    /// A guest's pool slot is given back only once its store's instances are back in the pool,
    /// so a guest that got the slot, on whichever thread, always finds room. With the slot in
    /// the store's data, wasmtime gave it back first, and instantiating raced the last guest's
    /// teardown (a pod's worker threads, or two pods' threads).
    #[test]
    fn a_guest_given_a_freed_slot_always_finds_room_in_the_pool() {
        // Two memories per instance fill the pool's memories (two per slot) when every slot is
        // in use; writing 4 MiB makes giving the memory back take a while.
        let wat = r#"(module
            (memory (export "a") 256)
            (memory 1)
            (func (export "fill") (result i32)
                (memory.fill (i32.const 0) (i32.const 1) (i32.const 0x400000))
                (i32.const 0)))"#;
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path(), 1, MAX_MODULE_BYTES, 0).unwrap();
        assert!(runtime.pooling);
        let module = Module::new(&runtime.engine, wat).unwrap();
        let slots = runtime.slots();
        let total = slots.as_ref().unwrap().available_permits();
        let failures = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..total + 4)
            .map(|_| {
                let (engine, module, slots) =
                    (runtime.engine.clone(), module.clone(), slots.clone());
                let failures = failures.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for _ in 0..40 {
                            let data = P1State {
                                wasi: WasiCtxBuilder::new().build_p1(),
                                limiter: Limiter::new(1 << 30, Arc::default()),
                            };
                            let mut guest = Guest::new(&engine, slots.as_ref(), data).await;
                            guest.set_epoch_deadline(1 << 20);
                            match wasmtime::Instance::new(&mut guest, &module, &[]) {
                                Ok(instance) => {
                                    let fill = instance
                                        .get_typed_func::<(), i32>(&mut guest, "fill")
                                        .unwrap();
                                    assert_eq!(fill.call(&mut guest, ()).unwrap(), 0);
                                }
                                Err(_) => {
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "instantiations refused by the pool"
        );
    }

    /// A guest's calls shorter than an epoch tick count as its CPU time (they counted only
    /// where a tick fell inside one), and only its own polls do.
    #[test]
    fn a_guest_s_short_calls_are_counted_as_its_cpu_time() {
        let wat = r#"(module
            (func (export "spin") (param $n i32) (result i32)
                (loop $again
                    (local.set $n (i32.sub (local.get $n) (i32.const 1)))
                    (br_if $again (i32.gt_s (local.get $n) (i32.const 0))))
                (local.get $n)))"#;
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path(), 4, MAX_MODULE_BYTES, KEEP_RESIDENT).unwrap();
        let module = Module::new(&runtime.engine, wat).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let used = Arc::new(AtomicU64::new(0));
        let (inside, calls) = rt.block_on(async {
            let mut store = Store::new(&runtime.engine, ());
            let stop = Stop::default();
            let meter = slice_with(&mut store, &stop, None, &used);
            let instance = meter
                .run(wasmtime::Instance::new_async(&mut store, &module, &[]))
                .await
                .unwrap();
            let spin = instance
                .get_typed_func::<i32, i32>(&mut store, "spin")
                .unwrap();
            used.store(0, Ordering::Relaxed);
            let began = thread_cpu_nanos();
            let (mut inside, mut calls) = (0, 0);
            // Calls of about a millisecond, well under a tick, for 100 ms, with a millisecond
            // of other work on the thread between them, which is not the guest's.
            while thread_cpu_nanos() - began < 100_000_000 {
                let meter = slice_with(&mut store, &stop, None, &used);
                let call = thread_cpu_nanos();
                meter
                    .run(spin.call_async(&mut store, 500_000))
                    .await
                    .unwrap();
                inside += thread_cpu_nanos() - call;
                let busy = thread_cpu_nanos();
                while thread_cpu_nanos() - busy < 1_000_000 {}
                calls += 1;
            }
            (inside, calls)
        });
        let counted = used.load(Ordering::Relaxed);
        assert!(calls > 10, "{calls} calls");
        assert!(
            counted > inside * 9 / 10 && counted <= inside,
            "{counted} ns counted of {inside} ns in {calls} calls"
        );
    }
}
