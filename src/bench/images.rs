//! `wk bench images`: pulling a 2 MB component from a local registry and starting a pod from
//! it, cold and warm; the cost of image resolution on a warm start; and a precompiled start
//! against compiling on each start. The peer for pulls is `skopeo copy` of the same images.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::pods::{Node, start_latency_of, start_samples};
use super::{Latencies, latencies};
use crate::agent::{images, wasm};
use crate::oci;

/// A Wasm file padded with a custom section named `wk-padding` (still valid) to `size`
/// bytes; `fill` makes copies of one file differ, and so their digests.
pub fn pad_wasm(bytes: &[u8], size: usize, fill: u8) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"wk-padding";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    // Section id, a length of up to 4 LEB bytes, the name: what the padding adds besides fill.
    let payload = size.saturating_sub(bytes.len() + 1 + 4 + content.len());
    content.resize(content.len() + payload, fill);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// Debian's `docker-registry` on a free loopback port, in a scratch directory.
struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wk-bench-registry")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (Debian package docker-registry)")?;
        let r = Self {
            child,
            _dir: dir,
            addr,
        };
        let began = Instant::now();
        while std::net::TcpStream::connect(&r.addr).is_err() {
            if began.elapsed() > Duration::from_secs(20) {
                bail!("docker-registry did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Figures of `wk bench images`.
#[derive(Debug, Serialize)]
pub struct ImagesReport {
    /// The component's size in bytes.
    pub component_bytes: u64,
    /// Pod created → Running for an image the node never saw: pull, verify, compile, start.
    pub cold_start: Latencies,
    /// The same for an image already pulled and compiled (IfNotPresent).
    pub warm_start: Latencies,
    /// The same with `imagePullPolicy: Always` (a manifest request; no blob is fetched).
    pub always_start: Latencies,
    /// The baseline: the same component imported with `wk image import` (no registry).
    pub imported_start: Latencies,
    /// What a warm start of a pulled image adds over the imported baseline, p50 ms.
    pub warm_added_ms: f64,
    /// Resolving an already-pulled image under IfNotPresent, in process, p50 µs.
    pub ensure_warm_us: f64,
    /// A pull of a fresh image into an empty store, in process (no compile).
    pub pull: Latencies,
    /// The peer: `skopeo copy docker://… oci:…` of the same images.
    pub skopeo_pull: Latencies,
    /// Loading the component by compiling it (no cache).
    pub compile: Latencies,
    /// Loading it from the precompiled artifact (a fresh runtime over the cache).
    pub precompiled: Latencies,
    /// compile p50 / precompiled p50.
    pub precompiled_speedup: f64,
}

/// Runs the benchmark with `runs` samples per figure.
///
/// # Errors
/// When the registry, the server or a pod does not come up.
pub async fn images(
    wk: &Path,
    component: &Path,
    size: usize,
    runs: usize,
) -> anyhow::Result<ImagesReport> {
    let original =
        std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("wk-bench-images")
        .tempdir()?;
    let variant = |i: usize| -> anyhow::Result<PathBuf> {
        let path = scratch.path().join(format!("c{i}.wasm"));
        std::fs::write(&path, pad_wasm(&original, size, (i % 251) as u8 + 1))?;
        Ok(path)
    };
    let registry = Registry::start()?;
    let reg = registry.addr.clone();
    let quiet = |_: u64, _: u64| {};
    eprintln!("pushing {} images of {} bytes", runs + 2, size);
    for i in 0..=runs {
        oci::push::push(
            &variant(i)?,
            &format!("{reg}/big:cold-{i}"),
            oci::push::Format::Cncf,
            true,
            &quiet,
        )
        .await?;
    }
    let warm_file = variant(1000)?;
    oci::push::push(
        &warm_file,
        &format!("{reg}/big:warm"),
        oci::push::Format::Cncf,
        true,
        &quiet,
    )
    .await?;
    let component_bytes = std::fs::metadata(&warm_file)?.len();

    let node = Node::start(wk, true, 4 * (runs + 1) + 10)?;
    node.import(wk, &warm_file, "big-imported:v1")?;
    let settle = Duration::from_millis(300);
    eprintln!("cold: pull + compile + start, {runs} pods");
    let cold = |i: usize| (format!("{reg}/big:cold-{i}"), "IfNotPresent".to_owned());
    let (cold_start, _) = start_latency_of(&node, runs, "cold", &cold, settle).await?;
    // Warm, Always and imported starts take turns, so that each sees the same node.
    eprintln!("warm, Always and imported: {runs} pods each, in turn");
    // The uncounted first pod pulls the warm image (its bytes, imported too, compile once).
    let mixed = |i: usize| match i % 3 {
        _ if i == 0 => (format!("{reg}/big:warm"), "IfNotPresent".to_owned()),
        1 => (format!("{reg}/big:warm"), "IfNotPresent".to_owned()),
        2 => (format!("{reg}/big:warm"), "Always".to_owned()),
        _ => ("big-imported:v1".to_owned(), "IfNotPresent".to_owned()),
    };
    let began = Instant::now();
    let (samples, _) = start_samples(&node, 3 * runs, "mixed", &mixed, settle).await?;
    let elapsed = began.elapsed();
    let kind = |k: usize| -> Vec<f64> {
        samples
            .iter()
            .enumerate()
            .filter(|(j, _)| (j + 1) % 3 == k)
            .map(|(_, s)| *s)
            .collect()
    };
    let warm_start = latencies(kind(1), elapsed);
    let always_start = latencies(kind(2), elapsed);
    let imported_start = latencies(kind(0), elapsed);
    drop(node);

    eprintln!("pulls in process and with skopeo");
    let mut pulls = Vec::new();
    let mut skopeo = Vec::new();
    let began = Instant::now();
    for i in 0..=runs {
        let dir = tempfile::tempdir_in(scratch.path())?;
        let puller = oci::Puller::new(images::Store::new(dir.path()), dir.path(), u64::MAX);
        let t0 = Instant::now();
        puller.pull(&format!("{reg}/big:cold-{i}"), &[]).await?;
        let t_pull = t0.elapsed();
        let out = dir.path().join("skopeo");
        let t0 = Instant::now();
        let status = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--src-tls-verify=false", "-q"])
            .arg(format!("docker://{reg}/big:cold-{i}"))
            .arg(format!("oci:{}:x", out.display()))
            .stdout(Stdio::null())
            .status()
            .context("running skopeo (Debian package skopeo)")?;
        let t_skopeo = t0.elapsed();
        if !status.success() {
            bail!("skopeo copy failed");
        }
        if i > 0 {
            pulls.push(t_pull.as_secs_f64() * 1000.0);
            skopeo.push(t_skopeo.as_secs_f64() * 1000.0);
        }
    }
    let pull = latencies(pulls, began.elapsed());
    let skopeo_pull = latencies(skopeo, began.elapsed());

    // Resolution of a pulled image, as a warm pod start does it.
    let dir = tempfile::tempdir_in(scratch.path())?;
    let puller = oci::Puller::new(images::Store::new(dir.path()), dir.path(), u64::MAX);
    let name = format!("{reg}/big:warm");
    puller.pull(&name, &[]).await?;
    let mut ensure = Vec::new();
    for _ in 0..1000 {
        let t0 = Instant::now();
        let (image, _) = puller
            .ensure(&name, oci::Policy::IfNotPresent, &[], || {})
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        puller.store().verify(&image)?;
        ensure.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    ensure.sort_by(f64::total_cmp);
    let ensure_warm_us = ensure[ensure.len() / 2];

    eprintln!("compile against precompiled, {runs} loads each");
    let cache = scratch.path().join("cache");
    let mut compile = Vec::new();
    let mut precompiled = Vec::new();
    let began = Instant::now();
    for i in 0..=runs {
        let file = variant(2000 + i)?;
        let digest = images::digest_of(&std::fs::read(&file)?);
        let rt = fresh_runtime(&cache).await?;
        let t0 = Instant::now();
        rt.load(&digest, &file).await?;
        let t_compile = t0.elapsed();
        let rt = fresh_runtime(&cache).await?;
        let t0 = Instant::now();
        rt.load(&digest, &file).await?;
        let t_cached = t0.elapsed();
        if i > 0 {
            compile.push(t_compile.as_secs_f64() * 1000.0);
            precompiled.push(t_cached.as_secs_f64() * 1000.0);
        }
    }
    let compile = latencies(compile, began.elapsed());
    let precompiled = latencies(precompiled, began.elapsed());
    Ok(ImagesReport {
        component_bytes,
        warm_added_ms: warm_start.p50_ms - imported_start.p50_ms,
        precompiled_speedup: compile.p50_ms / precompiled.p50_ms.max(1e-9),
        cold_start,
        warm_start,
        always_start,
        imported_start,
        ensure_warm_us,
        pull,
        skopeo_pull,
        compile,
        precompiled,
    })
}

async fn fresh_runtime(cache: &Path) -> anyhow::Result<Arc<wasm::Runtime>> {
    let cache = cache.to_owned();
    Ok(tokio::task::spawn_blocking(move || {
        wasm::Runtime::new(&cache, 4, wasm::MAX_MODULE_BYTES, wasm::KEEP_RESIDENT)
    })
    .await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_keeps_a_module_valid_and_reaches_the_size() {
        let module = b"\0asm\x01\0\0\0";
        let engine = wasmtime::Engine::default();
        for (size, fill) in [(2 << 20, 1), (300, 2), (1 << 10, 3)] {
            let padded = pad_wasm(module, size, fill);
            assert!(
                padded.len() <= size && padded.len() + 4 >= size,
                "{} vs {size}",
                padded.len()
            );
            wasmtime::Module::new(&engine, &padded).unwrap();
        }
        assert_ne!(pad_wasm(module, 4096, 1), pad_wasm(module, 4096, 2));
    }
}
