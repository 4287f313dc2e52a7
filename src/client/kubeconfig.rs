//! Reading kubeconfig files: the cluster, user and namespace of a context.

use std::path::Path;

use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use super::Error;

/// A kubeconfig file (the parts wk reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// The cluster, credentials and namespace one context resolves to.
#[derive(Debug)]
pub struct Resolved {
    /// The server URL.
    pub server: String,
    /// The CA, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// The bearer token.
    pub token: Option<String>,
    /// The context's namespace, or `default`.
    pub namespace: String,
}

impl Resolved {
    /// The CA certificates to trust.
    ///
    /// # Errors
    /// When the CA data is not PEM.
    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let Some(pem) = &self.ca_pem else {
            return Err(Error::Config(
                "the kubeconfig's cluster has no certificate-authority-data".into(),
            ));
        };
        pem_certs(pem).map_err(|e| {
            Error::Config(format!(
                "the kubeconfig's certificate-authority-data is not PEM: {e}"
            ))
        })
    }
}

/// The certificates in a PEM bundle.
///
/// # Errors
/// When the text is not PEM.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

impl Kubeconfig {
    /// Reads and parses a kubeconfig file.
    ///
    /// # Errors
    /// When the file is missing or not a kubeconfig.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading kubeconfig {}: {e}", path.display())))?;
        yaml_serde::from_str(&text)
            .map_err(|e| Error::Config(format!("kubeconfig {} is not valid: {e}", path.display())))
    }

    /// Resolves a context (the current one when `None`).
    ///
    /// # Errors
    /// When the context, its cluster or its user is missing.
    pub fn resolve(&self, context: Option<&str>) -> Result<Resolved, Error> {
        let name = context
            .map(str::to_owned)
            .or_else(|| self.current_context.clone())
            .ok_or_else(|| {
                Error::Config("the kubeconfig has no current-context; pass --context".into())
            })?;
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.context)
            .ok_or_else(|| {
                Error::Config(format!(
                    "context \"{name}\" does not exist in the kubeconfig"
                ))
            })?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .map(|c| &c.cluster)
            .ok_or_else(|| {
                Error::Config(format!(
                    "cluster \"{}\" does not exist in the kubeconfig",
                    ctx.cluster
                ))
            })?;
        let user = ctx
            .user
            .as_ref()
            .and_then(|u| self.users.iter().find(|x| &x.name == u))
            .map(|u| &u.user);
        let ca_pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| {
                        Error::Config(format!("certificate-authority-data is not base64: {e}"))
                    })?,
            ),
            (None, Some(file)) => Some(
                std::fs::read(file).map_err(|e| Error::Config(format!("reading {file}: {e}")))?,
            ),
            (None, None) => None,
        };
        let token = match user {
            Some(User { token: Some(t), .. }) => Some(t.clone()),
            Some(User {
                token_file: Some(f),
                ..
            }) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| Error::Config(format!("reading {f}: {e}")))?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        Ok(Resolved {
            server: cluster.server.clone(),
            ca_pem,
            insecure: cluster.insecure_skip_tls_verify,
            token,
            namespace: ctx.namespace.clone().unwrap_or_else(|| "default".into()),
        })
    }
}

/// A verifier for `insecure-skip-tls-verify: true`.
#[derive(Debug)]
pub struct NoVerify(rustls::crypto::WebPkiSupportedAlgorithms);

impl NoVerify {
    /// A verifier that accepts any server certificate.
    pub fn new() -> Self {
        Self(rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms)
    }
}

impl Default for NoVerify {
    fn default() -> Self {
        Self::new()
    }
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
