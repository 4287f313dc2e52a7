//! Pod networking on a node: a bridge in the host namespace (`wk0` by default) holding the
//! gateway of the node's podCIDR, and for each pod a veth pair from the bridge into the pod's
//! namespace, where it is `eth0` with the pod's address and a default route via the bridge.
//! Addresses come from [`ipam`]; the kernel work is in [`link`].

pub mod cidr;
pub mod ipam;
pub mod link;

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use cidr::Cidr;
use ipam::Ipam;

/// The default bridge name.
pub const BRIDGE: &str = "wk0";
/// The default range pods take their addresses from (shared address space, never private).
pub const CLUSTER_CIDR: Cidr = match Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 16) {
    Some(c) => c,
    None => panic!("the default cluster CIDR is a valid range"),
};
/// The default range Services take their ClusterIPs from (shared address space, never private).
pub const SERVICE_CIDR: Cidr = match Cidr::new(Ipv4Addr::new(100, 65, 0, 0), 16) {
    Some(c) => c,
    None => panic!("the default service CIDR is a valid range"),
};
/// The default size of each node's share of it.
pub const NODE_CIDR_MASK: u8 = 24;

/// The prefix of the holders of spare namespaces' addresses.
pub const SPARE: &str = "spare-";

/// The name of pod `uid`'s host-side veth: `wkv` and 12 hex digits of the uid (or of a spare
/// namespace's holder).
pub fn veth_name(uid: &str) -> String {
    let hex: String = uid
        .strip_prefix(SPARE)
        .unwrap_or(uid)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("wkv{hex}")
}

/// A node's pod network.
pub struct PodNetwork {
    host: rtnetlink::Handle,
    bridge: String,
    bridge_index: u32,
    range: Cidr,
    ipam: Ipam,
}

impl PodNetwork {
    /// Sets up the bridge `bridge` for the node's podCIDR `range`, with address records under
    /// `state`. Needs a tokio runtime.
    ///
    /// # Errors
    /// When the bridge cannot be made or the records read, or another link of the host holds
    /// addresses of the range or routes to or through them ([`link::claimed`]).
    pub async fn setup(bridge: &str, range: Cidr, state: &Path) -> io::Result<Self> {
        if range.prefix() > 29 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the podCIDR {range} is too small for pods"),
            ));
        }
        let dir = state.join(range.to_string().replace('/', "_"));
        let ipam = tokio::task::spawn_blocking(move || Ipam::open(dir, range))
            .await
            .map_err(io::Error::other)??;
        let host = link::host_handle()?;
        // A bridge of its own that holds the range already serves its pods (an agent's
        // restart): what came since is only reported, so that those pods keep their network.
        let gateway = (ipam.gateway(), range.prefix());
        let serving = match link::index(&host, bridge).await? {
            Some(i) => link::addresses(&host, i).await?.contains(&gateway),
            None => false,
        };
        if let Some(claim) = link::claimed(&host, range, bridge).await? {
            let link::Claim { what, link } = claim;
            let message = format!(
                "the podCIDR {range} is already in use on this host: {what}. If {link} is a bridge \
                 left by a wk cluster that no longer runs, delete it (`ip link del {link}`) and \
                 restart this agent; else give this cluster a range of its own (`wk server --cluster-cidr`) \
                 and delete this Node, so that it gets a podCIDR from it"
            );
            if !serving {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, message));
            }
            tracing::warn!(%message, "the pod network is kept for the pods it serves");
        }
        let bridge_index =
            link::ensure_bridge(&host, bridge, ipam.gateway(), range.prefix()).await?;
        Ok(Self {
            host,
            bridge: bridge.to_owned(),
            bridge_index,
            range,
            ipam,
        })
    }

    /// The node's podCIDR.
    pub fn range(&self) -> Cidr {
        self.range
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// How many pods can have an address here.
    pub fn capacity(&self) -> u64 {
        self.ipam.capacity()
    }

    /// Connects pod `uid`'s namespace at `netns` to the bridge, and returns its address. A pod
    /// that is connected already (an adopted sandbox) keeps its address and veth.
    ///
    /// # Errors
    /// When the range is full or netlink fails; nothing is left half made.
    pub async fn attach(&self, uid: &str, netns: &Path) -> io::Result<Ipv4Addr> {
        let (ip, fresh) = self.ipam.assign(uid)?;
        let veth = self.ipam.link(uid);
        if !fresh && let Some(index) = link::index(&self.host, &veth).await? {
            // Adopted: its bridge may have been made again since.
            link::enslave(&self.host, index, self.bridge_index).await?;
            return Ok(ip);
        }
        let made = async {
            link::add_veth(&self.host, &veth, self.bridge_index, netns).await?;
            let pod = link::netns_handle(netns)?;
            link::configure_pod(&pod, ip, self.range.prefix(), self.ipam.gateway()).await
        }
        .await;
        if let Err(e) = made {
            let _ = link::delete(&self.host, &veth).await;
            self.ipam.release(uid);
            return Err(e);
        }
        Ok(ip)
    }

    /// Connects a spare namespace at `netns` ahead of need, under a holder of its own; the
    /// holder, or `None` when that failed.
    pub async fn wire_spare(&self, netns: &Path) -> Option<String> {
        let holder = format!("{SPARE}{}", uuid::Uuid::new_v4().simple());
        match self.attach(&holder, netns).await {
            Ok(_) => Some(holder),
            Err(e) => {
                tracing::debug!(error = %e, "connecting a spare network namespace failed");
                None
            }
        }
    }

    /// Gives pod `uid` the address (and veth) of the spare namespace it took, held by
    /// `holder` until now.
    ///
    /// # Errors
    /// When the spare's record is gone or cannot be rewritten.
    pub fn hand_over(&self, holder: &str, uid: &str) -> io::Result<Ipv4Addr> {
        self.ipam.hand_over(holder, uid)
    }

    /// Frees the address of `holder` without touching any link (its namespace is gone, and
    /// its veth with it).
    pub fn forget(&self, holder: &str) {
        self.ipam.release(holder);
    }

    /// Disconnects pod `uid` and frees its address.
    pub async fn detach(&self, uid: &str) {
        if let Err(e) = link::delete(&self.host, &self.ipam.link(uid)).await {
            tracing::warn!(error = %e, uid, "deleting the pod's veth failed");
        }
        self.ipam.release(uid);
    }

    /// Removes the veths and addresses of pods other than `keep` (left by an earlier agent).
    /// Returns how many pods it disconnected.
    pub async fn prune(&self, keep: &HashSet<String>) -> usize {
        let wanted: HashSet<String> = keep.iter().map(|u| self.ipam.link(u)).collect();
        let mut removed = 0;
        match link::ports(&self.host, self.bridge_index).await {
            Ok(ports) => {
                for port in ports.iter().filter(|p| !wanted.contains(*p)) {
                    if link::delete(&self.host, port).await.unwrap_or(false) {
                        removed += 1;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing the bridge's ports failed"),
        }
        for uid in self.ipam.holders() {
            if !keep.contains(&uid) {
                self.ipam.release(&uid);
            }
        }
        removed
    }
}

/// The next connection on `listener`, or `None` once `stop` is cancelled. A failed accept (out
/// of descriptors, a connection reset before it was taken) is retried after a pause.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

/// The next datagram on `socket` into `buf`: its length and sender, or `None` once `stop` is
/// cancelled. A failed receive (an ICMP error for an earlier send) is skipped.
pub async fn receive(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
    stop: &tokio_util::sync::CancellationToken,
) -> Option<(usize, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            r = socket.recv_from(buf) => match r {
                Ok(r) => return Some(r),
                Err(e) => tracing::debug!(error = %e, "udp receive failed"),
            },
            () = stop.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let name = veth_name("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(name, "wkv0f1e2d3c4b5a");
        assert!(name.len() <= link::MAX_NAME);
    }
}
