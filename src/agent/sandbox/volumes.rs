//! Pod volumes on the node: emptyDir (a directory, or a size-limited tmpfs for
//! `medium: Memory`), hostPath with its type checks, persistentVolumeClaim (a directory of the
//! node's own storage for wk's local-path volumes, or the hostPath or local path of a static
//! volume), and configMap, secret, downwardAPI and projected volumes written as files. Containers see them as WASI preopened directories at
//! their volumeMounts.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use crate::agent::wasm::Mount;
use crate::api::quantity::Quantity;
use crate::client::Client;

/// Why a volume could not be set up (the kubelet's FailedMount).
#[derive(Debug, thiserror::Error)]
#[error("volume {volume:?}: {message}")]
pub struct Error {
    /// The volume's name.
    pub volume: String,
    /// What is wrong.
    pub message: String,
}

fn err(volume: &str, message: impl Into<String>) -> Error {
    Error {
        volume: volume.to_owned(),
        message: message.into(),
    }
}

/// A volume made ready on the node.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The host directory.
    pub path: PathBuf,
    /// Projected content (configMap, secret...) is always read-only, as in Kubernetes.
    pub read_only: bool,
}

/// Where a pod's volume directories live.
pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// Where the node keeps its local-path PersistentVolumes, one directory each.
pub fn storage_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// Sets up every volume of `pod` under `pod_dir`; claimed volumes of wk's own class live
/// under `storage` ([`storage_dir`]).
///
/// # Errors
/// The first volume that cannot be set up.
pub async fn prepare(
    client: &Client,
    pod: &Value,
    pod_dir: &Path,
    storage: &Path,
) -> Result<HashMap<String, Ready>, Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut out = HashMap::new();
    for v in pod["spec"]["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = v["name"].as_str().unwrap_or_default();
        let dir = volumes_dir(pod_dir).join(name);
        let ready = if let Some(empty) = v.get("emptyDir") {
            empty_dir(name, &dir, empty)?;
            Ready {
                path: dir,
                read_only: false,
            }
        } else if let Some(host) = v.get("hostPath") {
            Ready {
                path: host_path(name, host)?,
                read_only: false,
            }
        } else if let Some(claim) = v.get("persistentVolumeClaim") {
            let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
            Ready {
                path: claimed(client, ns, name, claim, storage, node).await?,
                read_only: claim["readOnly"] == true,
            }
        } else {
            let mut files = Vec::new();
            project(client, ns, pod, name, v, &mut files).await?;
            write_files(name, &dir, &files)?;
            Ready {
                path: dir,
                read_only: true,
            }
        };
        out.insert(name.to_owned(), ready);
    }
    Ok(out)
}

/// Rewrites the projected volumes (configMap, secret, downwardAPI) from the current objects,
/// as the kubelet does when they change. Returns whether any file changed.
///
/// # Errors
/// When an object cannot be read.
pub async fn refresh(client: &Client, pod: &Value, pod_dir: &Path) -> Result<bool, Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut changed = false;
    for v in pod["spec"]["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if v.get("emptyDir").is_some()
            || v.get("hostPath").is_some()
            || v.get("persistentVolumeClaim").is_some()
        {
            continue;
        }
        let name = v["name"].as_str().unwrap_or_default();
        let mut files = Vec::new();
        project(client, ns, pod, name, v, &mut files).await?;
        let dir = volumes_dir(pod_dir).join(name);
        let same = files
            .iter()
            .all(|(path, bytes, _)| std::fs::read(dir.join(path)).is_ok_and(|old| old == *bytes));
        if !same {
            write_files(name, &dir, &files)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The directory of the PersistentVolume bound to a pod's claim.
async fn claimed(
    client: &Client,
    ns: &str,
    name: &str,
    claim: &Value,
    storage: &Path,
    node: &str,
) -> Result<PathBuf, Error> {
    use crate::controllers::volume::PROVISIONER;
    let claim_name = claim["claimName"].as_str().unwrap_or_default();
    let pvc = client
        .get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim_name}"
        ))
        .await
        .map_err(|e| err(name, format!("persistentvolumeclaim {claim_name:?}: {e}")))?;
    let volume_name = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
    if pvc["status"]["phase"] != "Bound" || volume_name.is_empty() {
        return Err(err(
            name,
            format!("persistentvolumeclaim {claim_name:?} is not bound yet"),
        ));
    }
    let pv = client
        .get(&format!("/api/v1/persistentvolumes/{volume_name}"))
        .await
        .map_err(|e| err(name, format!("persistentvolume {volume_name:?}: {e}")))?;
    let spec = &pv["spec"];
    if spec["claimRef"]["uid"] != pvc["metadata"]["uid"] {
        return Err(err(
            name,
            format!("persistentvolume {volume_name:?} is not bound to claim {claim_name:?}"),
        ));
    }
    // A volume pinned to another node holds its data there, not here.
    let here = serde_json::json!({"metadata": {"name": node,
        "labels": {"kubernetes.io/hostname": node}}});
    let required = &spec["nodeAffinity"]["required"];
    if required.is_object() && !crate::scheduler::selects(required, &here) {
        return Err(err(
            name,
            format!("persistentvolume {volume_name:?} is on another node than {node:?}"),
        ));
    }
    if spec["csi"]["driver"] == PROVISIONER {
        // Remembered for the clean-up: only a volume reclaimed by deletion loses its data.
        let policy = spec["persistentVolumeReclaimPolicy"]
            .as_str()
            .unwrap_or("Retain");
        let _ = std::fs::create_dir_all(storage.join(RECLAIM));
        let handle = spec["csi"]["volumeHandle"].as_str().unwrap_or_default();
        let mut parts = Path::new(handle).components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(err(
                name,
                format!("persistentvolume {volume_name:?} has an unusable volumeHandle {handle:?}"),
            ));
        }
        let dir = storage.join(handle);
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(name, format!("making {}: {e}", dir.display())))?;
        std::fs::write(storage.join(RECLAIM).join(handle), policy)
            .map_err(|e| err(name, format!("recording the reclaim policy: {e}")))?;
        return Ok(dir);
    }
    if spec["hostPath"].is_object() {
        return host_path(name, &spec["hostPath"]);
    }
    if let Some(path) = spec["local"]["path"].as_str() {
        let path = PathBuf::from(path);
        if !path.is_dir() {
            return Err(err(
                name,
                format!(
                    "local volume path {} is not a directory on this node",
                    path.display()
                ),
            ));
        }
        return Ok(path);
    }
    Err(err(
        name,
        format!(
            "persistentvolume {volume_name:?} has a source wk cannot mount: it mounts hostPath, local and {PROVISIONER} volumes"
        ),
    ))
}

/// Where the reclaim policy of each local-path volume mounted here is remembered.
const RECLAIM: &str = ".reclaim";

/// Removes the node's local-path directories whose PersistentVolume is gone and whose reclaim
/// policy was Delete (a Retain volume's data outlives it, as in Kubernetes). Nothing is
/// removed unless the volumes could be listed.
pub async fn collect_storage(client: &Client, storage: &Path) {
    use crate::controllers::volume::{PROVISIONER, VOLUMES};
    let Ok(entries) = std::fs::read_dir(storage) else {
        return;
    };
    let dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != RECLAIM))
        .collect();
    if dirs.is_empty() {
        return;
    }
    let Ok(list) = client.get(VOLUMES).await else {
        return;
    };
    let Some(items) = list["items"].as_array() else {
        return;
    };
    let live: std::collections::HashSet<&str> = items
        .iter()
        .filter(|v| v["spec"]["csi"]["driver"] == PROVISIONER)
        .filter_map(|v| v["spec"]["csi"]["volumeHandle"].as_str())
        .collect();
    for dir in dirs {
        let Some(handle) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let marker = storage.join(RECLAIM).join(handle);
        let deleted = std::fs::read_to_string(&marker).is_ok_and(|p| p == "Delete");
        if deleted && !live.contains(handle) {
            let _ = std::fs::remove_file(&marker);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(path = %dir.display(), "removed the data of a deleted volume")
                }
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "could not remove the data of a deleted volume")
                }
            }
        }
    }
}

/// Unmounts what `prepare` mounted (memory-backed emptyDirs).
pub fn unmount_all(pod_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(volumes_dir(pod_dir)) {
        for e in entries.flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn empty_dir(name: &str, dir: &Path, spec: &Value) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| err(name, e.to_string()))?;
    if spec["medium"] == "Memory" {
        let size = spec["sizeLimit"]
            .as_str()
            .map(|s| Quantity::parse(s).map_err(|e| err(name, e.to_string())))
            .transpose()?;
        let options = size.map(|q| format!("size={},mode=0777", q.value()));
        let already = nix::sys::statfs::statfs(dir)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !already {
            nix::mount::mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                options.as_deref(),
            )
            .map_err(|e| err(name, format!("mounting a memory-backed emptyDir: {e}")))?;
        }
    }
    Ok(())
}

fn host_path(name: &str, spec: &Value) -> Result<PathBuf, Error> {
    let path = PathBuf::from(spec["path"].as_str().unwrap_or_default());
    if !path.is_absolute() {
        return Err(err(
            name,
            format!("hostPath {} is not absolute", path.display()),
        ));
    }
    let meta = std::fs::metadata(&path);
    match spec["type"].as_str().unwrap_or_default() {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(&path).map_err(|e| err(name, e.to_string()))?;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
            }
        }
        "Directory" => {
            if !meta.as_ref().is_ok_and(std::fs::Metadata::is_dir) {
                return Err(err(
                    name,
                    format!(
                        "hostPath type check failed: {} is not a directory",
                        path.display()
                    ),
                ));
            }
        }
        other @ ("File" | "FileOrCreate" | "Socket" | "CharDevice" | "BlockDevice") => {
            return Err(err(
                name,
                format!(
                    "hostPath type {other} cannot be mounted into a Wasm guest: WASI preopens are directories"
                ),
            ));
        }
        other => return Err(err(name, format!("unknown hostPath type {other:?}"))),
    }
    if !path.is_dir() {
        return Err(err(
            name,
            format!(
                "{} is not a directory; WASI guests can only mount directories",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// A file to project: relative path, content, mode.
type File = (PathBuf, Vec<u8>, u32);

async fn project(
    client: &Client,
    ns: &str,
    pod: &Value,
    name: &str,
    v: &Value,
    files: &mut Vec<File>,
) -> Result<(), Error> {
    if let Some(cm) = v.get("configMap") {
        source(
            client,
            ns,
            name,
            "configmaps",
            cm,
            cm["defaultMode"].as_u64(),
            files,
        )
        .await
    } else if let Some(secret) = v.get("secret") {
        let mut spec = secret.clone();
        spec["name"] = secret["secretName"].clone();
        source(
            client,
            ns,
            name,
            "secrets",
            &spec,
            secret["defaultMode"].as_u64(),
            files,
        )
        .await
    } else if let Some(d) = v.get("downwardAPI") {
        downward(pod, name, d, d["defaultMode"].as_u64(), files)
    } else if let Some(p) = v.get("projected") {
        let mode = p["defaultMode"].as_u64();
        for s in p["sources"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(cm) = s.get("configMap") {
                source(client, ns, name, "configmaps", cm, mode, files).await?;
            } else if let Some(secret) = s.get("secret") {
                source(client, ns, name, "secrets", secret, mode, files).await?;
            } else if let Some(d) = s.get("downwardAPI") {
                downward(pod, name, d, mode, files)?;
            } else {
                return Err(err(
                    name,
                    "only configMap, secret and downwardAPI projections are supported",
                ));
            }
        }
        Ok(())
    } else {
        Err(err(
            name,
            "unsupported volume type: wk supports emptyDir, hostPath, persistentVolumeClaim, configMap, secret, downwardAPI and projected",
        ))
    }
}

async fn source(
    client: &Client,
    ns: &str,
    volume: &str,
    plural: &str,
    spec: &Value,
    default_mode: Option<u64>,
    files: &mut Vec<File>,
) -> Result<(), Error> {
    let object_name = spec["name"].as_str().unwrap_or_default();
    let optional = spec["optional"].as_bool().unwrap_or(false);
    let object = match client
        .get(&format!("/api/v1/namespaces/{ns}/{plural}/{object_name}"))
        .await
    {
        Ok(o) => o,
        Err(e) if e.code() == Some(404) && optional => return Ok(()),
        Err(e) => {
            let kind = if plural == "secrets" {
                "secret"
            } else {
                "configmap"
            };
            return Err(err(
                volume,
                format!("{kind} {object_name:?} not found: {e}"),
            ));
        }
    };
    let mut data: Vec<(String, Vec<u8>)> = Vec::new();
    if plural == "secrets" {
        for (k, v) in object["data"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| err(volume, format!("secret key {k}: {e}")))?;
            data.push((k.clone(), bytes));
        }
    } else {
        for (k, v) in object["data"].as_object().into_iter().flatten() {
            data.push((
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            ));
        }
        for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| err(volume, format!("binaryData key {k}: {e}")))?;
            data.push((k.clone(), bytes));
        }
    }
    let mode = spec["defaultMode"]
        .as_u64()
        .or(default_mode)
        .unwrap_or(0o644) as u32;
    match spec["items"].as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let Some((_, bytes)) = data.iter().find(|(k, _)| k == key) else {
                    if optional {
                        continue;
                    }
                    return Err(err(
                        volume,
                        format!("key {key:?} is not in {object_name:?}"),
                    ));
                };
                let path = relative(volume, item["path"].as_str().unwrap_or(key))?;
                let m = item["mode"].as_u64().map_or(mode, |m| m as u32);
                files.push((path, bytes.clone(), m));
            }
        }
        None => {
            for (k, bytes) in data {
                files.push((relative(volume, &k)?, bytes, mode));
            }
        }
    }
    Ok(())
}

fn downward(
    pod: &Value,
    volume: &str,
    spec: &Value,
    default_mode: Option<u64>,
    files: &mut Vec<File>,
) -> Result<(), Error> {
    let mode = default_mode.unwrap_or(0o644) as u32;
    for item in spec["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let path = relative(volume, item["path"].as_str().unwrap_or_default())?;
        let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
        let text = field_value(pod, field).ok_or_else(|| {
            err(
                volume,
                format!("downwardAPI field {field:?} is not supported"),
            )
        })?;
        let m = item["mode"].as_u64().map_or(mode, |m| m as u32);
        files.push((path, text.into_bytes(), m));
    }
    Ok(())
}

/// The value of a downward-API field path (`metadata.name`, `metadata.labels['app']`...).
pub fn field_value(pod: &Value, field: &str) -> Option<String> {
    let map_text = |m: &Value| {
        let mut pairs: Vec<String> = m
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
            .collect();
        pairs.sort();
        pairs.join("\n")
    };
    let str_at = |p: &str| pod.pointer(p).and_then(Value::as_str).map(str::to_owned);
    match field {
        "metadata.name" => str_at("/metadata/name"),
        "metadata.namespace" => str_at("/metadata/namespace"),
        "metadata.uid" => str_at("/metadata/uid"),
        "metadata.labels" => Some(map_text(&pod["metadata"]["labels"])),
        "metadata.annotations" => Some(map_text(&pod["metadata"]["annotations"])),
        "spec.nodeName" => str_at("/spec/nodeName"),
        "spec.serviceAccountName" => str_at("/spec/serviceAccountName"),
        "status.podIP" => str_at("/status/podIP"),
        "status.hostIP" => str_at("/status/hostIP"),
        f => {
            let (map, key) = f
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    f.strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })?;
            let key = key.strip_suffix("']")?;
            Some(
                pod["metadata"][map][key]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    }
}

/// A path inside a volume: relative, with no `..`.
fn relative(volume: &str, path: &str) -> Result<PathBuf, Error> {
    let p = PathBuf::from(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(err(
            volume,
            format!("path {path:?} must be relative and may not contain '..'"),
        ))
    }
}

/// Writes the files into `dir`, replacing what was there; each file is written atomically.
fn write_files(volume: &str, dir: &Path, files: &[File]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| err(volume, e.to_string()))?;
    let wanted: Vec<&PathBuf> = files.iter().map(|(p, _, _)| p).collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let rel = PathBuf::from(e.file_name());
            if !wanted.iter().any(|w| w.starts_with(&rel)) {
                let _ =
                    std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
            }
        }
    }
    for (path, bytes, mode) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(volume, e.to_string()))?;
        }
        let tmp = target.with_extension("wk-tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| {
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode & 0o777))
            })
            .and_then(|()| std::fs::rename(&tmp, &target))
            .map_err(|e| err(volume, format!("{}: {e}", target.display())))?;
    }
    Ok(())
}

/// The guest mounts of one container: its volumeMounts resolved against the ready volumes.
///
/// # Errors
/// A mount naming no volume, or a subPath that escapes its volume.
pub fn mounts(container: &Value, ready: &HashMap<String, Ready>) -> Result<Vec<Mount>, Error> {
    let mut out = Vec::new();
    for m in container["volumeMounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = m["name"].as_str().unwrap_or_default();
        let volume = ready.get(name).ok_or_else(|| {
            err(
                name,
                "the container mounts a volume the pod does not define",
            )
        })?;
        let mut host = volume.path.clone();
        if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
            host = host.join(relative(name, sub)?);
            if !host.exists() && !volume.read_only {
                std::fs::create_dir_all(&host).map_err(|e| err(name, e.to_string()))?;
            }
        }
        out.push(Mount {
            host,
            guest: m["mountPath"].as_str().unwrap_or_default().to_owned(),
            read_only: volume.read_only || m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sub_paths_may_not_escape_their_volume() {
        let ready = HashMap::from([(
            "data".to_owned(),
            Ready {
                path: PathBuf::from("/nonexistent/v"),
                read_only: true,
            },
        )]);
        let c = json!({"volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": "../etc"}]});
        assert!(mounts(&c, &ready).unwrap_err().message.contains(".."));
        let c = json!({"volumeMounts": [{"name": "other", "mountPath": "/d"}]});
        assert!(mounts(&c, &ready).is_err());
        let c = json!({"volumeMounts": [{"name": "data", "mountPath": "/d"}]});
        let m = mounts(&c, &ready).unwrap();
        assert!(m[0].read_only, "projected volumes are read-only");
    }

    #[test]
    fn downward_fields_read_the_pod() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"b": "2", "a": "1"}}});
        assert_eq!(field_value(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(
            field_value(&pod, "metadata.labels").unwrap(),
            "a=\"1\"\nb=\"2\""
        );
        assert_eq!(field_value(&pod, "metadata.labels['b']").unwrap(), "2");
        assert!(field_value(&pod, "spec.bogus").is_none());
    }
}
