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
    /// An in-process controller not to run (repeatable): scheduler, nodeipam, replicaset,
    /// deployment, statefulset, daemonset, job, cronjob, garbagecollector, nodelifecycle,
    /// disruption, resourcequota, horizontalpodautoscaling, persistentvolume-binder, endpoint,
    /// endpointslice, servicelb; the default StorageClass, local-storage; or the built-in
    /// Ingress controller's IngressClass, ingress.
    #[arg(long, env = "WK_DISABLE", value_delimiter = ',', value_parser = ["scheduler", "nodeipam", "replicaset", "deployment", "statefulset", "daemonset", "job", "cronjob", "garbagecollector", "nodelifecycle", "disruption", "resourcequota", "horizontalpodautoscaling", "persistentvolume-binder", "endpoint", "endpointslice", "servicelb", "local-storage", "ingress"])]
    disable: Vec<String>,
    /// The range pod addresses come from; each node gets a share of it as its podCIDR.
    #[arg(long, env = "WK_CLUSTER_CIDR", default_value_t = crate::net::CLUSTER_CIDR)]
    cluster_cidr: crate::net::cidr::Cidr,
    /// The range Services take their ClusterIPs from.
    #[arg(long, env = "WK_SERVICE_CIDR", default_value_t = crate::net::SERVICE_CIDR)]
    service_cidr: crate::net::cidr::Cidr,
    /// The prefix length of each node's podCIDR.
    #[arg(long, env = "WK_NODE_CIDR_MASK_SIZE", default_value_t = crate::net::NODE_CIDR_MASK)]
    node_cidr_mask_size: u8,
    /// How long a node may go without renewing its Lease before it is marked unreachable
    /// (`20s`, `1m`).
    #[arg(long, env = "WK_NODE_MONITOR_GRACE_PERIOD", default_value = "20s", value_parser = super::agent::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is evaluated (`15s`).
    #[arg(long, env = "WK_HPA_SYNC_PERIOD", default_value = "15s", value_parser = super::agent::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
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
    config.controllers = crate::controllers::Settings {
        node_monitor_grace_period: args.node_monitor_grace_period,
        horizontal_pod_autoscaler_sync_period: args.horizontal_pod_autoscaler_sync_period,
    };
    if args.node_cidr_mask_size < args.cluster_cidr.prefix() || args.node_cidr_mask_size > 29 {
        anyhow::bail!(
            "--node-cidr-mask-size {} must be between the cluster CIDR's /{} and /29",
            args.node_cidr_mask_size,
            args.cluster_cidr.prefix()
        );
    }
    if args.service_cidr.covers(args.cluster_cidr) || args.cluster_cidr.covers(args.service_cidr) {
        anyhow::bail!(
            "--service-cidr {} and --cluster-cidr {} overlap: Services and pods need ranges of their own",
            args.service_cidr,
            args.cluster_cidr
        );
    }
    if args.service_cidr.prefix() > 29 {
        anyhow::bail!(
            "--service-cidr {} is too small: it needs at least a /29",
            args.service_cidr
        );
    }
    config.service_cidr = args.service_cidr;
    config.cluster_cidr = args.cluster_cidr;
    config.node_cidr_mask = args.node_cidr_mask_size;
    let agent = if args.no_agent {
        None
    } else {
        Some(args.node.config(data.join("agent"), String::new())?)
    };
    server::run(config, agent).await.context("wk server")
}
