//! Routes between nodes, host-gw style as flannel's host-gw backend keeps them for a LAN of
//! Raspberry Pis: each agent routes every other node's podCIDR via that node's InternalIP, so
//! a pod reaches pods on other nodes at their own addresses. The routes carry wk's routing
//! protocol number ([`crate::net::link::ROUTE_PROTOCOL`]), which lets an agent find and prune
//! its own after a restart, and are removed when it stops.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::client::informer::Informers;
use crate::net::cidr::Cidr;
use crate::net::link::Route;

/// How often the routes are checked even when no Node changed (someone may have removed one).
const RESYNC: Duration = Duration::from_secs(60);

/// The routes this node wants: each other node's podCIDR via its InternalIP. Nodes on this
/// host (a loopback address, or this node's own) need none: their bridges are local.
pub fn wanted(nodes: &[std::sync::Arc<Value>], own_name: &str, own_ip: IpAddr) -> Vec<Route> {
    let mut routes: Vec<Route> = nodes
        .iter()
        .filter(|n| n["metadata"]["name"] != own_name)
        .filter_map(|n| {
            let cidr: Cidr = n["spec"]["podCIDR"].as_str()?.parse().ok()?;
            let gateway: Ipv4Addr = n["status"]["addresses"]
                .as_array()?
                .iter()
                .find(|a| a["type"] == "InternalIP")?["address"]
                .as_str()?
                .parse()
                .ok()?;
            (!gateway.is_loopback() && IpAddr::V4(gateway) != own_ip).then_some((
                cidr.network(),
                cidr.prefix(),
                gateway,
            ))
        })
        .collect();
    routes.sort();
    routes
}

/// Lets the node forward its pods' packets to other nodes and theirs to its pods, as flannel
/// and k3s turn forwarding on. A host that forwards already is left as it is.
fn enable_forwarding() {
    const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(FORWARDING).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    match std::fs::write(FORWARDING, "1") {
        Ok(()) => tracing::info!("IPv4 forwarding turned on, for pods on other nodes"),
        Err(e) => {
            tracing::warn!(error = %e, "IPv4 forwarding is off: pods on other nodes cannot reach this node's pods")
        }
    }
}

/// Keeps the routes until `shutdown`, then removes them.
pub async fn run(client: Client, own_name: String, own_ip: IpAddr, shutdown: CancellationToken) {
    let h = match crate::net::link::host_handle() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "no routes to other nodes' pods");
            return;
        }
    };
    enable_forwarding();
    let informers = Informers::default();
    let nodes = informers.get(crate::controllers::NODES);
    let wake = crate::client::informer::wake_on_change(&[&nodes]);
    informers.start(&client, &shutdown);
    tokio::select! {
        () = nodes.wait_synced() => {}
        () = shutdown.cancelled() => return,
    }
    let mut reported = None;
    loop {
        let want = wanted(&nodes.list(), &own_name, own_ip);
        let result = crate::net::link::sync_routes(&h, &want).await;
        let now = result.as_ref().err().map(ToString::to_string);
        if now != reported {
            match &result {
                Ok(()) => tracing::info!(routes = want.len(), "routes to other nodes' pods set"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not set the routes to other nodes' pods")
                }
            }
            reported = now;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
            () = shutdown.cancelled() => break,
        }
    }
    let _ = crate::net::link::sync_routes(&h, &[]).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> std::sync::Arc<Value> {
        std::sync::Arc::new(
            json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip}]}}),
        )
    }

    #[test]
    fn every_other_node_on_another_host_gets_a_route() {
        let nodes = [
            node("me", Some("100.64.0.0/24"), "100.64.255.1"),
            node("b", Some("100.64.1.0/24"), "100.64.255.2"),
            node("c", Some("100.64.2.0/24"), "100.64.255.3"),
            node("no-cidr", None, "100.64.255.4"),
            node("same-host", Some("100.64.3.0/24"), "127.0.0.1"),
        ];
        let own: IpAddr = "100.64.255.1".parse().unwrap();
        assert_eq!(
            wanted(&nodes, "me", own),
            [
                (
                    Ipv4Addr::new(100, 64, 1, 0),
                    24,
                    Ipv4Addr::new(100, 64, 255, 2)
                ),
                (
                    Ipv4Addr::new(100, 64, 2, 0),
                    24,
                    Ipv4Addr::new(100, 64, 255, 3)
                ),
            ]
        );
    }
}
