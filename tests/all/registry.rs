//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on 127.0.0.1 with a free port, plain or with htpasswd auth; and OCI image layouts
//! written here for `skopeo` to push, as an independent tool.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::eventually;

/// A running registry.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry that wants HTTP basic credentials (htpasswd, bcrypt).
    pub fn with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user, password)))
    }

    fn launch(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wk-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docker-registry (Debian package docker-registry)");
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let r = Self {
            child,
            dir,
            addr,
            log,
        };
        let url = format!("http://{}/v2/", r.addr);
        assert!(
            eventually(Duration::from_secs(20), || Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .is_ok_and(|o| matches!(&o.stdout[..], b"200" | b"401"))),
            "docker-registry did not start:\n{}",
            r.log()
        );
        r
    }

    /// What the registry logged (its access log included).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many requests of a method reached a path (`GET`, `/v2/app/manifests/v1`).
    pub fn requests(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} ");
        self.log().matches(&needle).count()
    }

    /// The file a blob is stored in (to tamper with it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sha256:<hex>` of bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An OCI image layout being written: blobs, and an index.json naming one manifest.
pub struct Layout {
    /// The layout's directory.
    pub dir: tempfile::TempDir,
}

impl Layout {
    /// An empty layout.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Self { dir }
    }

    /// Writes a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let d = digest(bytes);
        std::fs::write(
            self.dir
                .path()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            bytes,
        )
        .unwrap();
        serde_json::json!({"mediaType": media_type, "digest": d, "size": bytes.len()})
    }

    /// A single-platform image: a config for `os/arch` whose entrypoint is `entry`, and one
    /// gzipped tar layer holding `file` at `entry`. Returns the manifest's descriptor.
    pub fn image(&self, os: &str, arch: &str, entry: &str, file: &[u8]) -> serde_json::Value {
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            let mut h = tar::Header::new_gnu();
            h.set_size(file.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, entry.trim_start_matches('/'), file)
                .unwrap();
            b.finish().unwrap();
        }
        let diff_id = digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let layer = self.blob(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &gz.finish().unwrap(),
        );
        let config = serde_json::json!({
            "architecture": arch, "os": os,
            "config": {"Entrypoint": [entry]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [layer]
        });
        let mut d = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        d["platform"] = serde_json::json!({"os": os, "architecture": arch});
        d
    }

    /// Names the layout's top object: one manifest, or an index of several.
    pub fn top(&self, tag: &str, manifests: &[serde_json::Value]) {
        let mut entry = if let [one] = manifests {
            let mut one = one.clone();
            one.as_object_mut().unwrap().remove("platform");
            one
        } else {
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests
            });
            self.blob(
                "application/vnd.oci.image.index.v1+json",
                index.to_string().as_bytes(),
            )
        };
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
        std::fs::write(self.dir.path().join("index.json"), top.to_string()).unwrap();
    }

    /// Pushes the layout's `tag` with skopeo (every platform of an index).
    pub fn push(&self, tag: &str, target: &str) {
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--all",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", self.dir.path().display()))
            .arg(format!("docker://{target}"))
            .output()
            .expect("run skopeo (Debian package skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
