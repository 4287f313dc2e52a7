//! The server's certificate authority and serving certificate, made on first start.

use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::Error;

/// The CA's common name; fixed, so a stored CA key can sign again after a restart.
const CA_NAME: &str = "wk-server-ca";

/// PEM files of the CA and the serving certificate.
pub struct Material {
    /// The CA certificate (embedded in the kubeconfig).
    pub ca_pem: String,
    /// The serving certificate chain.
    pub cert_pem: String,
    /// The serving key.
    pub key_pem: String,
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

/// Loads the TLS material from `dir`, creating what is missing. The serving certificate is
/// made again when the names it must cover change.
///
/// # Errors
/// When a file cannot be read or written, or a key does not parse.
pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Material, Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let ca_cert_path = dir.join("server-ca.crt");
    let ca_key_path = dir.join("server-ca.key");
    let (ca_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
        let key_pem = fs::read_to_string(&ca_key_path).map_err(|e| Error::io(&ca_key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(Error::tls)?;
        (
            fs::read_to_string(&ca_cert_path).map_err(|e| Error::io(&ca_cert_path, e))?,
            key,
        )
    } else {
        let key = KeyPair::generate().map_err(Error::tls)?;
        let cert = ca_params()?.self_signed(&key).map_err(Error::tls)?;
        super::write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        fs::write(&ca_cert_path, cert.pem()).map_err(|e| Error::io(&ca_cert_path, e))?;
        (cert.pem(), key)
    };
    let cert_path = dir.join("serving.crt");
    let key_path = dir.join("serving.key");
    let sans_path = dir.join("serving.sans");
    let wanted = sans.join(",");
    let current = fs::read_to_string(&sans_path).unwrap_or_default();
    if current != wanted || !cert_path.exists() || !key_path.exists() {
        let key = KeyPair::generate().map_err(Error::tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "wk-apiserver");
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(Error::tls),
            })
            .collect::<Result<_, _>>()?;
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(Error::tls)?;
        super::write_private(&key_path, key.serialize_pem().as_bytes())?;
        fs::write(&cert_path, cert.pem()).map_err(|e| Error::io(&cert_path, e))?;
        fs::write(&sans_path, &wanted).map_err(|e| Error::io(&sans_path, e))?;
    }
    Ok(Material {
        ca_pem,
        cert_pem: fs::read_to_string(&cert_path).map_err(|e| Error::io(&cert_path, e))?,
        key_pem: fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?,
    })
}
