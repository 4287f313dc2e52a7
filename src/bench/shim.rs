//! `wk bench shim`: how long a Linux container takes to start through the container shim
//! (runc), against a Wasm pod on the same node, in the same run.
//!
//! One node (`wk server` with its agent). The Wasm pod is the wasi:http hello component; the
//! Linux pod a busybox image made from Debian's busybox-static (`sleep`). Both are in the
//! node's store already, created bound to the node, one at a time and alternating, and timed
//! from the create to a watch showing `phase: Running`. For the Linux pod that includes
//! writing its bundle, the `wk-shim` process, an overlay over the image's unpacked root, and
//! `runc create` and `runc start`. The first pod of each kind is not counted (the Wasm one
//! compiles the component; the Linux one unpacks the image), and is reported on its own.
//! `runc run -d` of busybox from a prepared bundle, in the same run, shows what runc alone
//! takes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use serde_json::json;

use super::pods::{Creating, Node, http_pod, runc_latency};
use super::{Latencies, latencies};
use crate::agent::images::{self, Linux, Record, Store};

/// The figures of `wk bench shim`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShimReport {
    /// Bound to Running, Wasm HTTP pods.
    pub wasm: Latencies,
    /// Bound to Running, busybox pods under runc.
    pub linux: Latencies,
    /// Linux p50 / Wasm p50.
    pub ratio_p50: f64,
    /// `runc run -d` of busybox from a prepared bundle, same machine, same run: what runc
    /// alone takes, for the shim's and the agent's share of the Linux figure.
    pub runc_alone: Latencies,
    /// The first Linux pod, which unpacks the image, ms.
    pub linux_first_ms: f64,
    /// The first Wasm pod, which compiles the component, ms.
    pub wasm_first_ms: f64,
}

/// A tar layer of a busybox root: /bin/busybox from Debian's busybox-static with `applets`
/// linked to it, /etc/passwd (root, nobody) and /tmp. The benchmarks and the tests build their
/// Linux images from it.
///
/// # Errors
/// When busybox-static is not installed.
pub fn busybox_layer(applets: &[&str]) -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (install Debian's busybox-static)")?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut file = |path: &str, mode: u32, kind: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, path, data)
    };
    file("bin", 0o755, tar::EntryType::Directory, &[])?;
    file("etc", 0o755, tar::EntryType::Directory, &[])?;
    file("tmp", 0o1777, tar::EntryType::Directory, &[])?;
    file("bin/busybox", 0o755, tar::EntryType::Regular, &busybox)?;
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n";
    file("etc/passwd", 0o644, tar::EntryType::Regular, passwd)?;
    for applet in applets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.into_inner()?)
}

/// Stores a busybox Linux image ([`busybox_layer`] with `sh` and `sleep`) in a node's store
/// as `name`.
///
/// # Errors
/// When busybox-static is not installed or the store cannot be written.
pub fn store_busybox(store: &Store, name: &str) -> anyhow::Result<()> {
    let layer = busybox_layer(&["sh", "sleep"])?;
    let config = json!({"architecture": crate::arch(), "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [images::digest_of(&layer)]}});
    let put = |bytes: &[u8]| -> anyhow::Result<String> {
        let mut w = store.writer()?;
        w.write(bytes)?;
        Ok(w.commit(None)?.0)
    };
    let layer = put(&layer)?;
    let config = put(&serde_json::to_vec(&config)?)?;
    let record = Record {
        wasm: config.clone(),
        linux: Some(Linux {
            platform: format!("linux/{}", crate::arch()),
            layers: vec![layer.clone()],
        }),
        blobs: vec![config.clone(), layer],
        format: "Linux image".into(),
        ..Record::default()
    };
    store.record(&config, record, &[name])?;
    Ok(())
}

/// A busybox pod bound to the bench node, sleeping.
fn busybox_pod(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": "bench", "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "main", "image": "busybox:bench", "imagePullPolicy": "Never",
            "command": ["sleep", "3600"]}]}
    }))
    .unwrap_or_default()
}

/// Runs `wk bench shim`: `runs` starts of each kind, alternating.
///
/// # Errors
/// When the node does not start or a pod does not reach Running.
pub async fn shim(wk: &Path, http_wasm: &Path, runs: usize) -> anyhow::Result<ShimReport> {
    let node = Node::start(wk, true, 2 * runs + 10)?;
    node.import(wk, http_wasm, "hello:v1")?;
    store_busybox(&Store::new(&node.dir.path().join("agent")), "busybox:bench")?;
    let began = std::time::Instant::now();
    let (mut wasm, mut linux) = (Vec::new(), Vec::new());
    let (mut wasm_first_ms, mut linux_first_ms) = (0.0, 0.0);
    for i in 0..=runs {
        for kind in ["wasm", "linux"] {
            let name = format!("{kind}-{i}");
            let body = match kind {
                "wasm" => http_pod(&name, None, "hello:v1", "IfNotPresent"),
                _ => busybox_pod(&name),
            };
            let creating = Creating::start(&node, &name, body).await?;
            let t0 = creating.t0;
            let ms = (creating.running().await? - t0).as_secs_f64() * 1000.0;
            match (kind, i) {
                ("wasm", 0) => wasm_first_ms = ms,
                ("wasm", _) => wasm.push(ms),
                (_, 0) => linux_first_ms = ms,
                _ => linux.push(ms),
            }
            // Each start on a settled node, as in `wk bench pods`.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let elapsed = began.elapsed();
    // The containers outlive the agent by design: delete them with their pods.
    node.client
        .request(
            Method::DELETE,
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dbench",
            None,
            None,
        )
        .await?;
    let wasm = latencies(wasm, elapsed);
    let linux = latencies(linux, elapsed);
    let runc_alone = runc_latency(runs)?;
    Ok(ShimReport {
        ratio_p50: linux.p50_ms / wasm.p50_ms.max(1e-9),
        runc_alone,
        wasm,
        linux,
        linux_first_ms,
        wasm_first_ms,
    })
}
