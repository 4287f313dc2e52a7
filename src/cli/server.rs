//! `wk server`: run the control plane, with its built-in node agent unless `--no-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::agent::NodeFlags;
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
    /// Run the control plane only, without the built-in node agent.
    #[arg(long, env = "WK_NO_AGENT")]
    no_agent: bool,
    /// An in-process controller not to run (repeatable): scheduler.
    #[arg(long, env = "WK_DISABLE", value_delimiter = ',', value_parser = ["scheduler"])]
    disable: Vec<String>,
    /// Seconds between watch bookmarks.
    #[arg(long, env = "WK_BOOKMARK_INTERVAL", default_value_t = 10, hide = true)]
    bookmark_interval: u64,
    #[command(flatten)]
    node: NodeFlags,
}

/// Runs `wk server` until a signal stops it.
///
/// # Errors
/// When the server cannot start or fails.
pub async fn execute(args: Args) -> anyhow::Result<()> {
    super::init_logging();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data = args.data_dir.unwrap_or_else(server::default_data_dir);
    let mut config = ServerConfig::new(&data);
    config.listen = args.listen;
    config.tls_sans = args.tls_san;
    config.bookmark_interval = std::time::Duration::from_secs(args.bookmark_interval.max(1));
    config.disabled = args.disable;
    let agent = if args.no_agent {
        None
    } else {
        Some(args.node.config(data.join("agent"), String::new())?)
    };
    server::run(config, agent).await.context("wk server")
}
