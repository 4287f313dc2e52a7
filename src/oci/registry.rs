//! Where a registry is reached and with which credentials: the node's `registries.yaml`
//! (modelled on k3s's: mirrors, plain-HTTP endpoints, credentials, TLS), Docker-style
//! `config.json` files (`wk registry login`) and `imagePullSecrets`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Why registry settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse, or holds a value wk cannot use.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A node's `registries.yaml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// Registry host → the endpoints tried before it.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Endpoint host → how to talk to it.
    #[serde(default)]
    pub configs: BTreeMap<String, EndpointConfig>,
}

/// The endpoints of a registry, tried in order; the registry itself comes last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// URLs such as `http://127.0.0.1:5000` (plain HTTP) or `https://mirror.example`.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// Credentials and TLS settings of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Credentials.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Credentials as Docker and k3s write them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// base64 of `user:password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// A bearer token.
    #[serde(
        default,
        alias = "identityToken",
        alias = "identitytoken",
        skip_serializing_if = "Option::is_none"
    )]
    pub identity_token: Option<String>,
    /// A registry token.
    #[serde(
        default,
        alias = "registryToken",
        alias = "registrytoken",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_token: Option<String>,
}

/// TLS settings of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of CAs to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (development only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A credential to present to a registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// No credentials.
    Anonymous,
    /// HTTP basic, or the user and password of a token exchange.
    Basic(String, String),
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic(user, _) => write!(f, "Basic({user}, ****)"),
            Self::Bearer(_) => f.write_str("Bearer(****)"),
        }
    }
}

impl Credential {
    /// The oci-client form.
    pub fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic(u, p) => RegistryAuth::Basic(u.clone(), p.clone()),
            Self::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

impl AuthConfig {
    /// The credential these fields describe, if any.
    ///
    /// # Errors
    /// When `auth` is not base64 of `user:password`.
    pub fn credential(&self) -> Result<Option<Credential>, String> {
        if let Some(t) = self
            .identity_token
            .as_ref()
            .or(self.registry_token.as_ref())
            && !t.is_empty()
        {
            return Ok(Some(Credential::Bearer(t.clone())));
        }
        if let (Some(u), Some(p)) = (&self.username, &self.password)
            && !u.is_empty()
        {
            return Ok(Some(Credential::Basic(u.clone(), p.clone())));
        }
        if let Some(a) = self.auth.as_ref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|e| format!("the \"auth\" field is not base64: {e}"))?;
            let text = String::from_utf8(raw)
                .map_err(|_| "the \"auth\" field does not decode to text".to_owned())?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| "the \"auth\" field does not decode to user:password".to_owned())?;
            return Ok(Some(Credential::Basic(u.to_owned(), p.to_owned())));
        }
        Ok(None)
    }

    /// Fields for user and password, as `docker login` stores them.
    pub fn basic(user: &str, password: &str) -> Self {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self {
            auth: Some(auth),
            ..Self::default()
        }
    }
}

/// One place to reach a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP rather than HTTPS.
    pub plain_http: bool,
    /// Whether this is a mirror (requests then carry `?ns=<registry>`).
    pub mirror: bool,
    /// Extra CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// The endpoint's credential from `registries.yaml`.
    pub credential: Option<Credential>,
}

/// The host that serves a registry's name: Docker Hub's `docker.io` is `index.docker.io`.
pub fn own_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    }
}

/// Whether a registry host is on the loopback: like Docker, wk talks plain HTTP to those
/// unless `registries.yaml` names an `https://` endpoint for them.
pub fn is_loopback(host: &str) -> bool {
    let name = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(a, _)| a))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Registries {
    /// Reads `registries.yaml`; a missing file is an empty configuration.
    ///
    /// # Errors
    /// When it cannot be read or does not parse.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let parsed: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            yaml_serde::from_str(&text).map_err(|e| Error::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        for (name, mirror) in &parsed.mirrors {
            for e in &mirror.endpoint {
                split_url(e).map_err(|message| Error::Invalid {
                    path: path.to_owned(),
                    message: format!("mirrors.{name}: {message}"),
                })?;
            }
        }
        for (name, config) in &parsed.configs {
            if let Some(auth) = &config.auth {
                auth.credential().map_err(|message| Error::Invalid {
                    path: path.to_owned(),
                    message: format!("configs.{name}.auth: {message}"),
                })?;
            }
        }
        Ok(parsed)
    }

    /// The endpoints to try for a registry, mirrors first, then the registry itself.
    ///
    /// # Errors
    /// When a CA file cannot be read.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, Error> {
        let mut out = Vec::new();
        let mirrors = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        let mut own_scheme = None;
        for url in mirrors.map(|m| m.endpoint.as_slice()).unwrap_or_default() {
            let (plain, host) = split_url(url).map_err(|message| Error::Invalid {
                path: PathBuf::from("registries.yaml"),
                message,
            })?;
            if host == registry {
                own_scheme = Some(plain);
                continue;
            }
            out.push(self.endpoint(&host, plain, true)?);
        }
        let plain = own_scheme.unwrap_or_else(|| is_loopback(registry));
        out.push(self.endpoint(own_host(registry), plain, false)?);
        Ok(out)
    }

    fn endpoint(&self, host: &str, plain_http: bool, mirror: bool) -> Result<Endpoint, Error> {
        let config = self.configs.get(host).or_else(|| {
            (host == "index.docker.io")
                .then(|| self.configs.get("docker.io"))
                .flatten()
        });
        let tls = config.and_then(|c| c.tls.as_ref());
        let ca_pem = match tls.and_then(|t| t.ca_file.as_ref()) {
            Some(p) => Some(std::fs::read(p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            plain_http,
            mirror,
            ca_pem,
            insecure: tls.is_some_and(|t| t.insecure_skip_verify),
            credential: config
                .and_then(|c| c.auth.as_ref())
                .and_then(|a| a.credential().ok().flatten()),
        })
    }
}

/// `http://host:port` → (plain, `host:port`). Paths are refused: wk reaches an endpoint's
/// `/v2/` at its root.
fn split_url(url: &str) -> Result<(bool, String), String> {
    let (plain, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else {
        (false, url)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "endpoint {url:?} must be a scheme and host[:port], without a path"
        ));
    }
    Ok((plain, host.to_owned()))
}

/// A Docker-style credentials file: `{"auths": {"host": {"auth": "…"}}}`. It is what
/// `kubernetes.io/dockerconfigjson` secrets hold and what `wk registry login` writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerConfig {
    /// Registry key → credentials.
    #[serde(default)]
    pub auths: BTreeMap<String, AuthConfig>,
}

impl DockerConfig {
    /// Parses a `.dockerconfigjson`, or the older `.dockercfg` (the map without `auths`).
    ///
    /// # Errors
    /// When it is neither.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        // Errors name where, never what: the text may hold passwords.
        let where_ = |e: serde_json::Error| format!("line {} column {}", e.line(), e.column());
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({})", where_(e)))?;
        let auths = if value.get("auths").is_some() {
            value["auths"].clone()
        } else {
            value
        };
        let auths = serde_json::from_value(auths).map_err(|_| {
            "\"auths\" is not a map of registries to credentials (username, password, auth)"
                .to_owned()
        })?;
        Ok(Self { auths })
    }

    /// The credentials whose key matches a registry host, most specific first.
    pub fn matching(&self, registry: &str) -> Vec<Credential> {
        let mut found: Vec<(usize, Credential)> = self
            .auths
            .iter()
            .filter(|(key, _)| key_matches(key, registry))
            .filter_map(|(key, a)| Some((key.len(), a.credential().ok()??)))
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found.into_iter().map(|(_, c)| c).collect()
    }
}

/// Whether a credentials key (`127.0.0.1:5000`, `https://reg.example/v1/`, `*.example.com`)
/// names a registry host, as the kubelet's credential provider matches them.
fn key_matches(key: &str, registry: &str) -> bool {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    let docker_hub =
        |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    if docker_hub(host) && docker_hub(registry) {
        return true;
    }
    if let Some(pattern) = host.strip_prefix("*.") {
        let (suffix, port) = pattern
            .split_once(':')
            .map_or((pattern, None), |(h, p)| (h, Some(p)));
        let (name, their_port) = registry
            .split_once(':')
            .map_or((registry, None), |(h, p)| (h, Some(p)));
        return port == their_port
            && name.ends_with(&format!(".{suffix}"))
            && !name[..name.len() - suffix.len() - 1].contains('.');
    }
    host == registry
}

/// Where `wk registry login` keeps credentials: `$WK_REGISTRY_AUTH_FILE`, else
/// `$XDG_CONFIG_HOME/wk/config.json` (`~/.config/wk/config.json`).
pub fn login_file() -> PathBuf {
    if let Some(p) = std::env::var_os("WK_REGISTRY_AUTH_FILE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("wk").join("config.json")
}

/// Reads a credentials file; a missing one is empty.
///
/// # Errors
/// When it cannot be read or parsed.
pub fn read_login_file(path: &Path) -> Result<DockerConfig, Error> {
    match std::fs::read(path) {
        Ok(bytes) => DockerConfig::parse(&bytes).map_err(|message| Error::Invalid {
            path: path.to_owned(),
            message,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_yaml_gives_mirrors_plain_http_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.yaml");
        std::fs::write(
            &path,
            r#"
mirrors:
  docker.io:
    endpoint: ["http://127.0.0.1:5001", "https://mirror.test"]
  reg.test:5000:
    endpoint: ["http://reg.test:5000"]
configs:
  "127.0.0.1:5001":
    auth: {username: u, password: p}
  reg.test:5000:
    auth: {auth: dTI6cDI=}
"#,
        )
        .unwrap();
        let r = Registries::load(&path).unwrap();
        let e = r.endpoints("docker.io").unwrap();
        assert_eq!(e.len(), 3);
        assert!(e[0].plain_http && e[0].mirror);
        assert_eq!(
            e[0].credential,
            Some(Credential::Basic("u".into(), "p".into()))
        );
        assert!(!e[1].plain_http && e[1].mirror && e[1].credential.is_none());
        assert!(!e[2].plain_http && !e[2].mirror);
        let own = r.endpoints("reg.test:5000").unwrap();
        assert_eq!(own.len(), 1);
        assert!(own[0].plain_http);
        assert_eq!(
            own[0].credential,
            Some(Credential::Basic("u2".into(), "p2".into()))
        );
        assert!(r.endpoints("127.0.0.1:5000").unwrap()[0].plain_http);
        assert!(!r.endpoints("example.test").unwrap()[0].plain_http);
    }

    #[test]
    fn a_bad_registries_yaml_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.yaml");
        std::fs::write(&path, "mirrors:\n  x:\n    endpoints: [a]\n").unwrap();
        let e = Registries::load(&path).unwrap_err().to_string();
        assert!(e.contains("endpoints"), "{e}");
        std::fs::write(&path, "mirrors:\n  x:\n    endpoint: [\"http://a/b\"]\n").unwrap();
        let e = Registries::load(&path).unwrap_err().to_string();
        assert!(e.contains("without a path"), "{e}");
        assert_eq!(
            Registries::load(&dir.path().join("none")).unwrap(),
            Registries::default()
        );
    }

    #[test]
    fn docker_config_keys_match_as_the_kubelet_matches_them() {
        let cfg = DockerConfig::parse(
            br#"{"auths": {
                "https://127.0.0.1:5000/v1/": {"username": "a", "password": "1"},
                "*.example.test": {"auth": "YjoyCg=="},
                "https://index.docker.io/v1/": {"identitytoken": "tok"}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.matching("127.0.0.1:5000"),
            vec![Credential::Basic("a".into(), "1".into())]
        );
        assert!(cfg.matching("127.0.0.1:5001").is_empty());
        assert_eq!(cfg.matching("r.example.test").len(), 1);
        assert!(
            cfg.matching("r.example.test:5000").is_empty(),
            "the key has no port"
        );
        assert!(cfg.matching("a.b.example.test").is_empty());
        assert_eq!(
            cfg.matching("docker.io"),
            vec![Credential::Bearer("tok".into())]
        );
        let legacy = DockerConfig::parse(br#"{"127.0.0.1:5000": {"auth": "dTpw"}}"#).unwrap();
        assert_eq!(
            legacy.matching("127.0.0.1:5000"),
            vec![Credential::Basic("u".into(), "p".into())]
        );
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.test:5000"));
        assert!(!is_loopback("100.64.0.1:5000"));
    }
}
