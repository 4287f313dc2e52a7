//! Images from OCI registries (ADR 008): pulling every Wasm packaging in use into the node's
//! content store, verified as it streams; pushing `.wasm` files as artifacts; registry
//! settings and credentials.

pub mod fetch;
pub mod pull;
pub mod push;
pub mod registry;
pub mod unpack;

pub use pull::{Policy, Pulled, Puller, Unavailable};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The CNCF Wasm artifact's config (wkg, oci-wasm, wasmCloud).
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF Wasm artifact's layer.
pub const WASM_LAYER: &str = "application/wasm";
/// The older wasm-to-oci config (Spin, Krustlet).
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
/// The older wasm-to-oci layer.
pub const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// runwasi's component layer.
pub const RUNWASI_COMPONENT_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

/// The largest manifest (or image config) wk reads: a registry that serves more is hostile.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Why an image could not be pulled. Each message names the problem the way a user acts on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PullError {
    /// Not a valid image reference.
    #[error("invalid image reference {reference:?}: {detail}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it does not parse.
        detail: String,
    },
    /// The registry could not be reached, or the connection broke.
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable {
        /// The endpoint.
        registry: String,
        /// The cause.
        detail: String,
    },
    /// The registry wants (other) credentials.
    #[error(
        "unauthorized: registry {registry} refused the credentials ({detail}); add an imagePullSecret or credentials in registries.yaml"
    )]
    Unauthorized {
        /// The endpoint.
        registry: String,
        /// The registry's message.
        detail: String,
    },
    /// The credentials are valid but lack access.
    #[error("access denied by registry {registry}: {detail}")]
    Denied {
        /// The endpoint.
        registry: String,
        /// The registry's message.
        detail: String,
    },
    /// The tag, digest or repository does not exist.
    #[error("not found: {what} ({detail})")]
    NotFound {
        /// The URL asked for.
        what: String,
        /// The registry's message.
        detail: String,
    },
    /// Any other HTTP error.
    #[error("registry error at {url}: {detail}")]
    Status {
        /// The URL.
        url: String,
        /// The registry's message or the status.
        detail: String,
    },
    /// Bytes that do not hash to the digest they were fetched by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    Mismatch {
        /// Which manifest or blob.
        what: String,
        /// The digest asked for.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// A manifest or layer over the limits.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes ({knob})")]
    TooLarge {
        /// Which manifest or blob.
        what: String,
        /// Its (declared or received) size.
        size: u64,
        /// The limit.
        limit: u64,
        /// Where the limit comes from.
        knob: &'static str,
    },
    /// A manifest or layer that cannot be used.
    #[error("{0}")]
    Format(String),
    /// An image for platforms this node does not run.
    #[error("{reference} is an image for {platforms}; this node runs {node}")]
    OtherPlatform {
        /// The image.
        reference: String,
        /// Its platforms, e.g. `linux/arm64, linux/s390x`.
        platforms: String,
        /// What the node runs: `wasi/wasm or linux/amd64`.
        node: String,
    },
    /// The node's store could not be written.
    #[error("storing the image: {0}")]
    Store(String),
    /// A client could not be set up.
    #[error("{0}")]
    Setup(String),
}

impl PullError {
    fn store(e: crate::agent::images::Error) -> Self {
        Self::Store(e.to_string())
    }

    /// Whether another credential might succeed where this one failed.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Denied { .. })
    }
}

/// Parses an image reference the way Docker and the kubelet do (`hello` is
/// `docker.io/library/hello:latest`).
///
/// # Errors
/// [`PullError::Reference`] when it is not one.
pub fn parse_reference(name: &str) -> Result<oci_client::Reference, PullError> {
    let r = name
        .parse::<oci_client::Reference>()
        .map_err(|e| PullError::Reference {
            reference: name.to_owned(),
            detail: e.to_string(),
        })?;
    if let Some(d) = r.digest()
        && crate::agent::images::check_digest(d).is_err()
    {
        return Err(PullError::Reference {
            reference: name.to_owned(),
            detail: "wk verifies sha256 digests only; pin the image by its sha256 digest".into(),
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_sha256_pins_are_taken() {
        let hex = "a".repeat(64);
        assert!(super::parse_reference(&format!("r:5000/app@sha256:{hex}")).is_ok());
        let e = super::parse_reference(&format!("r:5000/app@sha512:{}", "a".repeat(128)));
        assert!(e.unwrap_err().to_string().contains("sha256 digests only"));
        assert!(super::parse_reference("r:5000/App:v1").is_err());
    }
}
