//! `wk server`: run the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::server::{self, ServerConfig};

/// Flags of `wk server`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where state, certificates, the kubeconfig and tokens live [default: /var/lib/wk as root, else ~/.local/share/wk]
    #[arg(long, env = "WK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The HTTPS address to listen on.
    #[arg(long, env = "WK_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// An extra name or IP for the serving certificate (repeatable).
    #[arg(long = "tls-san", env = "WK_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Run without the built-in node agent (the only mode until the agent lands).
    #[arg(long, env = "WK_NO_AGENT")]
    no_agent: bool,
    /// Seconds between watch bookmarks.
    #[arg(long, env = "WK_BOOKMARK_INTERVAL", default_value_t = 10, hide = true)]
    bookmark_interval: u64,
}

/// Runs `wk server` until a signal stops it.
///
/// # Errors
/// When the server cannot start or fails.
pub async fn execute(args: Args) -> anyhow::Result<()> {
    super::init_logging();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if !args.no_agent {
        tracing::warn!("the node agent is not built yet; running as if --no-agent was given");
    }
    let mut config = ServerConfig::new(args.data_dir.unwrap_or_else(server::default_data_dir));
    config.listen = args.listen;
    config.tls_sans = args.tls_san;
    config.bookmark_interval = std::time::Duration::from_secs(args.bookmark_interval.max(1));
    server::run(config).await.context("wk server")
}
