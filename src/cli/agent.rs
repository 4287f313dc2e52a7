//! `wk agent`: a node that joins a server with the node token.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig};
use crate::client::Client;

/// The port the agent serves logs and metrics on, as the kubelet's.
const AGENT_PORT: u16 = 10250;

/// The node's own flags, shared by `wk agent` and `wk server`'s built-in agent.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeFlags {
    /// The Node's name [default: the host name].
    #[arg(long, env = "WK_NODE_NAME")]
    node_name: Option<String>,
    /// A label for the Node, `key=value` (repeatable).
    #[arg(long = "node-label", env = "WK_NODE_LABEL", value_delimiter = ',')]
    node_label: Vec<String>,
    /// The address reported as the Node's InternalIP.
    #[arg(long, env = "WK_NODE_IP", default_value = "127.0.0.1")]
    node_ip: IpAddr,
    /// Where the agent serves logs and metrics to the API server, which reaches it at the
    /// node's address (port 0: any free port) [default: the node IP, port 10250].
    #[arg(long, env = "WK_AGENT_LISTEN")]
    agent_listen: Option<SocketAddr>,
    /// The most pods this node runs.
    #[arg(long, env = "WK_MAX_PODS", default_value_t = 1000)]
    max_pods: u32,
    /// How pods are networked: `bridge` gives each an address from the node's podCIDR on a
    /// bridge; `none` leaves each with only its own loopback.
    #[arg(long, env = "WK_POD_NETWORK", default_value = "bridge", value_parser = ["bridge", "none"])]
    pod_network: String,
    /// The bridge pods are connected to.
    #[arg(long, env = "WK_BRIDGE", default_value = crate::net::BRIDGE)]
    bridge: String,
    /// The largest Wasm module or component this node compiles, in MiB.
    #[arg(long, env = "WK_MAX_MODULE_SIZE", default_value_t = crate::agent::wasm::MAX_MODULE_BYTES >> 20)]
    max_module_size: u64,
    /// Of each idle Wasm instance slot, how many MiB of the memory its last guest wrote are
    /// reset in place for the next instance instead of being unmapped and faulted in again:
    /// faster fresh instances for the memory it keeps (Linux 6.7+; 0: off).
    #[arg(long, env = "WK_WASM_KEEP_RESIDENT", default_value_t = crate::agent::wasm::KEEP_RESIDENT >> 20)]
    wasm_keep_resident: usize,
    /// Network namespaces the node keeps made and connected ahead of need, so that a pod
    /// starts without waiting for the kernel to make them (each holds one pod address).
    #[arg(long, env = "WK_SPARE_SANDBOXES", default_value_t = crate::agent::SPARE_NETNS)]
    spare_sandboxes: usize,
    /// Whether the service proxy gives a connection whose endpoint is a Wasm pod's HTTP server
    /// on this node to that server itself (true), or relays it over a second connection to
    /// the pod's address, as it does for every other endpoint (false).
    #[arg(long, env = "WK_PROXY_HANDOFF", default_value_t = true, action = clap::ArgAction::Set)]
    proxy_handoff: bool,
    /// The container shim that runs Linux images (default: `wk-shim` next to `wk`, else on
    /// PATH).
    #[arg(long, env = "WK_CONTAINER_SHIM")]
    container_shim: Option<PathBuf>,
    /// The port this node serves Ingresses on over HTTP (0: not at all).
    #[arg(long, env = "WK_INGRESS_HTTP_PORT", default_value_t = 80)]
    ingress_http_port: u16,
    /// The port this node serves Ingresses on over HTTPS (0: not at all).
    #[arg(long, env = "WK_INGRESS_HTTPS_PORT", default_value_t = 443)]
    ingress_https_port: u16,
    /// The resolv.conf whose nameservers cluster DNS forwards other names to, as the
    /// kubelet's flag (empty: none, so only cluster names resolve).
    #[arg(long, env = "WK_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: String,
    /// Disk usage (percent of the data directory's filesystem) at which unused images are
    /// removed, least recently used first.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: u8,
    /// Disk usage (percent) image garbage collection brings the disk down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// Images used or pulled more recently than this are never collected (e.g. 2m, 30s, 0s).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    image_minimum_gc_age: std::time::Duration,
}

/// `90s`, `2m`, `1h30m`, `0`: a duration as the kubelet's flags take it.
pub(super) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for ch in text.trim().chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "{text:?}: expected a duration such as 90s, 2m or 1h"
                ));
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {ch:?}"))?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() && (total != 0 || number != "0") {
        return Err(format!("{text:?}: give a unit (s, m or h)"));
    }
    Ok(std::time::Duration::from_secs(total))
}

impl NodeFlags {
    /// Validates the flags into an agent config.
    ///
    /// # Errors
    /// A label that is not `key=value`.
    pub fn config(&self, data_dir: PathBuf, token: String) -> anyhow::Result<AgentConfig> {
        let mut config = AgentConfig::new(data_dir, token);
        if let Some(name) = &self.node_name {
            config.node_name = name.clone();
        }
        let mut labels = BTreeMap::new();
        for l in &self.node_label {
            let Some((k, v)) = l.split_once('=') else {
                bail!("--node-label {l:?}: expected key=value");
            };
            labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        config.labels = labels;
        config.address = self.node_ip;
        config.max_pods = self.max_pods.max(1);
        config.pod_network = self.pod_network == "bridge";
        if self.bridge.is_empty() || self.bridge.len() > crate::net::link::MAX_NAME {
            bail!("--bridge {:?}: a name of 1 to 15 characters", self.bridge);
        }
        config.bridge = self.bridge.clone();
        config.max_module_bytes = self.max_module_size.max(1) << 20;
        if self.wasm_keep_resident > (crate::agent::wasm::DEFAULT_MEMORY_LIMIT >> 20) as usize {
            bail!(
                "--wasm-keep-resident {}: at most {} MiB, a guest's whole memory",
                self.wasm_keep_resident,
                crate::agent::wasm::DEFAULT_MEMORY_LIMIT >> 20
            );
        }
        config.keep_resident = self.wasm_keep_resident << 20;
        config.spare_netns = self.spare_sandboxes;
        config.proxy_handoff = self.proxy_handoff;
        config.container_shim = self.container_shim.clone();
        config.resolv_conf =
            (!self.resolv_conf.is_empty()).then(|| PathBuf::from(&self.resolv_conf));
        config.ingress = crate::ingress::Ports {
            http: self.ingress_http_port,
            https: self.ingress_https_port,
        };
        if self.image_gc_low_threshold > self.image_gc_high_threshold {
            bail!(
                "--image-gc-low-threshold ({}) must not be above --image-gc-high-threshold ({})",
                self.image_gc_low_threshold,
                self.image_gc_high_threshold
            );
        }
        config.image_gc = crate::agent::image_gc::Policy {
            high: self.image_gc_high_threshold,
            low: self.image_gc_low_threshold,
            min_age: self.image_minimum_gc_age,
        };
        // A taken default port falls back to a free one: the API server learns the port from
        // the Node's daemonEndpoints.
        let listen = self
            .agent_listen
            .unwrap_or(SocketAddr::new(self.node_ip, AGENT_PORT));
        config.listen = if std::net::TcpListener::bind(listen).is_ok() {
            listen
        } else {
            tracing::warn!(addr = %listen, "the agent port is taken; using a free one");
            SocketAddr::new(listen.ip(), 0)
        };
        Ok(config)
    }
}

/// Flags of `wk agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server to join, e.g. https://127.0.0.1:6443.
    #[arg(long, env = "WK_SERVER")]
    server: String,
    /// The join token (DATA/node-token on the server).
    #[arg(long, env = "WK_TOKEN")]
    token: String,
    /// Where images, compiled modules, pods and logs live [default: /var/lib/wk/agent as root, else ~/.local/share/wk/agent]
    #[arg(long, env = "WK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeFlags,
}

/// Runs `wk agent` until SIGTERM or SIGINT.
///
/// # Errors
/// When the server cannot be joined or the agent cannot start.
pub async fn execute(args: Args) -> anyhow::Result<()> {
    super::init_logging();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data = args
        .data_dir
        .unwrap_or_else(|| crate::server::default_data_dir().join("agent"));
    let client = Client::join(&args.server, &args.token)
        .await
        .with_context(|| format!("joining {}", args.server))?;
    let (_, secret) = crate::client::parse_join_token(&args.token);
    let config = args.node.config(data, secret)?;
    let shutdown = CancellationToken::new();
    let agent = Agent::start(config, client, shutdown.clone())
        .await
        .context("wk agent")?;
    eprintln!(
        "wk agent running as node {} (endpoint {})",
        agent.shared.node_name, agent.endpoint
    );
    crate::server::drain_on_signals(shutdown.clone());
    // Once started, the binary's start-up code need not stay mapped.
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let bytes = tokio::task::spawn_blocking(crate::agent::trim::release_executable_pages)
            .await
            .unwrap_or(0);
        tracing::debug!(bytes, "released the start-up pages of the binary");
    });
    agent.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{NodeFlags, parse_duration};
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        node: NodeFlags,
    }

    #[test]
    fn node_flags_reach_the_agent_config() {
        let flags = Flags::parse_from([
            "wk",
            "--agent-listen",
            "127.0.0.1:0",
            "--ingress-http-port",
            "0",
            "--ingress-https-port",
            "8443",
            "--resolv-conf",
            "",
        ]);
        let config = flags.node.config("/tmp/x".into(), String::new()).unwrap();
        assert_eq!((config.ingress.http, config.ingress.https), (0, 8443));
        assert_eq!(config.resolv_conf, None);
        // Without --agent-listen the agent listens on the node's address, where the API
        // server looks for it.
        let on_node_ip = Flags::parse_from(["wk", "--node-ip", "127.0.0.83"]);
        let config = on_node_ip
            .node
            .config("/tmp/x".into(), String::new())
            .unwrap();
        assert_eq!(config.listen.ip().to_string(), "127.0.0.83");
        let defaults = Flags::parse_from(["wk", "--agent-listen", "127.0.0.1:0"]);
        let config = defaults
            .node
            .config("/tmp/x".into(), String::new())
            .unwrap();
        assert_eq!((config.ingress.http, config.ingress.https), (80, 443));
        assert_eq!(config.keep_resident, crate::agent::wasm::KEEP_RESIDENT);
        assert!(config.proxy_handoff);
        let relay = Flags::parse_from(["wk", "--proxy-handoff", "false"])
            .node
            .config("/tmp/x".into(), String::new())
            .unwrap();
        assert!(!relay.proxy_handoff);

        let keep = |mib: &str| {
            Flags::parse_from(["wk", "--wasm-keep-resident", mib])
                .node
                .config("/tmp/x".into(), String::new())
                .map(|c| c.keep_resident)
        };
        assert_eq!(keep("0").unwrap(), 0);
        assert_eq!(keep("16").unwrap(), 16 << 20);
        let err = keep("4096").unwrap_err().to_string();
        assert!(err.contains("--wasm-keep-resident 4096"), "{err}");
    }

    #[test]
    fn durations_read_as_the_kubelet_writes_them() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m5s"), Ok(Duration::from_secs(5405)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("90").unwrap_err().contains("unit"));
        assert!(parse_duration("2d").unwrap_err().contains("duration"));
        assert!(parse_duration("m").is_err());
    }
}
