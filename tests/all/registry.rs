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

/// How a test registry authenticates.
enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Token(&'a TokenService),
}

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
        Self::launch(Auth::None)
    }

    /// A registry that wants HTTP basic credentials (htpasswd, bcrypt).
    pub fn with_auth(user: &str, password: &str) -> Self {
        Self::launch(Auth::Basic(user, password))
    }

    fn launch(auth: Auth) -> Self {
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
        if let Auth::Token(service) = auth {
            let bundle = dir.path().join("token-ca.pem");
            std::fs::write(&bundle, &service.cert_pem).unwrap();
            config.push_str(&format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                service.addr,
                bundle.display()
            ));
        }
        if let Auth::Basic(user, password) = auth {
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
        self.image_of(os, arch, serde_json::json!({"Entrypoint": [entry]}), &[tar])
    }

    /// A single-platform image of `layers` (plain tar archives, stored gzipped), with `config`
    /// as its config's `config`. Returns the manifest's descriptor.
    pub fn image_of(
        &self,
        os: &str,
        arch: &str,
        config: serde_json::Value,
        layers: &[Vec<u8>],
    ) -> serde_json::Value {
        let mut diff_ids = Vec::new();
        let mut descriptors = Vec::new();
        for tar in layers {
            diff_ids.push(digest(tar));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, tar).unwrap();
            descriptors.push(self.blob(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gz.finish().unwrap(),
            ));
        }
        let config = serde_json::json!({
            "architecture": arch, "os": os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": descriptors
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

/// A token service for the registry's bearer-token auth (what Docker Hub, GHCR and Harbor
/// use): it checks basic credentials and issues ES256 JWTs that carry the requested access,
/// signed with a key whose self-signed certificate the registry trusts (`x5c` header).
pub struct TokenService {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The certificate (PEM) the registry trusts.
    pub cert_pem: String,
    /// How many tokens were issued.
    pub issued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The issuer and service names both sides agree on.
const ISSUER: &str = "wk-test-issuer";
const SERVICE: &str = "wk-test-registry";

impl TokenService {
    fn start(user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["wk-token-issuer".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
        )
        .unwrap();
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(cert.der())],
        });
        let header = b64.encode(header.to_string());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = issued.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    request.push_str(&line);
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let authorized = request.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l[14..].trim() == expected
                });
                let scopes: Vec<String> = path
                    .split_once('?')
                    .map(|(_, q)| {
                        form_urlencoded::parse(q.as_bytes())
                            .filter(|(k, _)| k == "scope")
                            .map(|(_, v)| v.into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let (status, body) = if authorized {
                    let access: Vec<serde_json::Value> = scopes
                        .iter()
                        .filter_map(|s| {
                            let mut parts = s.splitn(3, ':');
                            let (kind, name, actions) =
                                (parts.next()?, parts.next()?, parts.next()?);
                            Some(serde_json::json!({"type": kind, "name": name,
                                "actions": actions.split(',').collect::<Vec<_>>()}))
                        })
                        .collect();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let claims = serde_json::json!({
                        "iss": ISSUER, "sub": "wkuser", "aud": SERVICE,
                        "iat": now, "nbf": now - 10, "exp": now + 300,
                        "jti": format!("t{}", count.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
                        "access": access,
                    });
                    let input = format!("{header}.{}", b64.encode(claims.to_string()));
                    let signature = signer
                        .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
                        .unwrap();
                    let token = format!("{input}.{}", b64.encode(signature.as_ref()));
                    (
                        "200 OK",
                        serde_json::json!({"token": token, "expires_in": 300}).to_string(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"details":"bad credentials"}"#.to_owned(),
                    )
                };
                let mut s = &stream;
                let _ = std::io::Write::write_all(
                    &mut s,
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Self {
            addr,
            cert_pem: cert.pem(),
            issued,
        }
    }
}

impl Registry {
    /// A registry with bearer-token auth, and the token service that checks `user`/`password`.
    pub fn with_token_auth(user: &str, password: &str) -> (Self, TokenService) {
        let service = TokenService::start(user, password);
        (Self::launch(Auth::Token(&service)), service)
    }
}
