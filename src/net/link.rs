//! Links, addresses and routes through rtnetlink: the node's bridge, each pod's veth pair, and
//! the pod side's eth0 with its address and default route. A netlink socket works in the
//! namespace of the thread that made it, so the pod side gets a socket made on a short-lived
//! thread that joined the pod's namespace.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::Path;

use futures_util::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{
    Handle, LinkBridge, LinkDummy, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::cidr::Cidr;

/// The kernel's limit on interface names (IFNAMSIZ less the NUL).
pub const MAX_NAME: usize = 15;

/// The kernel's errno in a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other),
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name (1 to {MAX_NAME} characters)"),
        ));
    }
    Ok(())
}

/// A link message's name.
fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// An address message's IPv4 addresses (its local one, and its peer's on a point-to-point link).
fn v4_addresses(m: &AddressMessage) -> impl Iterator<Item = Ipv4Addr> + '_ {
    m.attributes.iter().filter_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
            Some(*ip)
        }
        _ => None,
    })
}

/// A route message's destination (0.0.0.0 for a default route), gateway and output link.
fn route_fields(m: &RouteMessage) -> (Ipv4Addr, Option<Ipv4Addr>, Option<u32>) {
    let (mut destination, mut gateway, mut link) = (Ipv4Addr::UNSPECIFIED, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => link = Some(*i),
            _ => {}
        }
    }
    (destination, gateway, link)
}

/// A handle in the calling process's namespace. Needs a tokio runtime.
///
/// # Errors
/// When the netlink socket cannot be made.
pub fn host_handle() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A handle working inside the namespace bind-mounted at `netns`. Needs a tokio runtime; the
/// connection ends when the handle is dropped.
///
/// # Errors
/// When the namespace cannot be joined or the socket made.
pub fn netns_handle(netns: &Path) -> io::Result<Handle> {
    let ns = File::open(netns)?;
    // setns() changes the calling thread for good, so a throw-away thread makes the socket.
    let socket = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<Socket> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Socket::new(NETLINK_ROUTE)
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })?;
    socket.set_non_blocking(true)?;
    // SAFETY: the fd comes from a socket we own and give up here; TokioSocket takes it over.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of the link called `name`, if there is one.
///
/// # Errors
/// When netlink fails.
pub async fn index(h: &Handle, name: &str) -> io::Result<Option<u32>> {
    check_name(name)?;
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// The names of the links enslaved to the bridge with index `bridge`.
///
/// # Errors
/// When netlink fails.
pub async fn ports(h: &Handle, bridge: u32) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(io_error)? {
        let master = m
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge));
        if let (true, Some(name)) = (master, link_name(&m)) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The IPv4 addresses on the link with index `index`.
///
/// # Errors
/// When netlink fails.
pub async fn addresses(h: &Handle, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let mut dump = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = dump.try_next().await.map_err(io_error)? {
        for ip in v4_addresses(&m) {
            if !out.contains(&(ip, m.header.prefix_len)) {
                out.push((ip, m.header.prefix_len));
            }
        }
    }
    Ok(out)
}

async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, len: u8) -> io::Result<()> {
    match h.address().add(index, IpAddr::V4(ip), len).execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => Err(io_error(e)),
        _ => Ok(()),
    }
}

async fn set_up(h: &Handle, index: u32) -> io::Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(io_error)
}

/// The names of this namespace's links, by index.
async fn link_names(h: &Handle) -> io::Result<std::collections::HashMap<u32, String>> {
    let mut out = std::collections::HashMap::new();
    let mut links = h.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(io_error)? {
        if let Some(name) = link_name(&m) {
            out.insert(m.header.index, name);
        }
    }
    Ok(out)
}

/// Something on this host that uses addresses of a node's podCIDR.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    /// What it is, for a person.
    pub what: String,
    /// The link it is on.
    pub link: String,
}

/// What on this host already uses addresses of `range`, outside the link `own` (the node's
/// bridge): an address in it on another link (another cluster's bridge, a VPN, a LAN), or a
/// route of the main table to part of it, or through a gateway in it, over another link. wk's
/// own host-gw routes are left out (their agent prunes them), and so are the routes the kernel
/// makes for addresses (the first check finds those). `None` when nothing does. Pods given such
/// addresses would be unreachable, or would take traffic meant for someone else.
///
/// Not looked at: routing tables other than main (policy routing, as Tailscale's table 52),
/// and a LAN whose subnet is wider than the range and holds it, with no address in it here.
///
/// # Errors
/// When netlink fails.
pub async fn claimed(h: &Handle, range: Cidr, own: &str) -> io::Result<Option<Claim>> {
    let names = link_names(h).await?;
    let name = |i: u32| {
        names
            .get(&i)
            .map_or_else(|| format!("link {i}"), Clone::clone)
    };
    let mut dump = h.address().get().execute();
    while let Some(m) = dump.try_next().await.map_err(io_error)? {
        let link = name(m.header.index);
        if link == own {
            continue;
        }
        if let Some(ip) = v4_addresses(&m).find(|ip| range.contains(*ip)) {
            let what = format!("{ip}/{} on {link} is in it", m.header.prefix_len);
            return Ok(Some(Claim { what, link }));
        }
    }
    let mut dump = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = dump.try_next().await.map_err(io_error)? {
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table));
        if table != u32::from(RouteHeader::RT_TABLE_MAIN)
            || matches!(
                m.header.protocol,
                RouteProtocol::Kernel | RouteProtocol::Other(ROUTE_PROTOCOL)
            )
        {
            continue;
        }
        let len = m.header.destination_prefix_length;
        let (destination, via, link) = route_fields(&m);
        let link = link.map(name).unwrap_or_default();
        let into = len >= range.prefix() && range.contains(destination);
        let through = via.is_some_and(|g| range.contains(g));
        if link == own || !(into || through) {
            continue;
        }
        let route = format!(
            "the route {destination}/{len}{}{}",
            via.map(|g| format!(" via {g}")).unwrap_or_default(),
            if link.is_empty() {
                String::new()
            } else {
                format!(" dev {link}")
            },
        );
        let what = if into {
            format!("{route} leads part of it elsewhere")
        } else {
            format!("{route} goes through a gateway in it")
        };
        return Ok(Some(Claim { what, link }));
    }
    Ok(None)
}

/// Makes the bridge `name` (or takes the one there), gives it `gateway/len` and sets it up.
/// Returns its index.
///
/// # Errors
/// When netlink fails.
pub async fn ensure_bridge(h: &Handle, name: &str, gateway: Ipv4Addr, len: u8) -> io::Result<u32> {
    let index = match index(h, name).await? {
        Some(i) => {
            // Another agent's bridge (another podCIDR) must not be shared: pruning would take
            // its pods' veths for leftovers.
            let held = addresses(h, i).await?;
            if let Some((other, other_len)) =
                held.iter().find(|(ip, l)| (*ip, *l) != (gateway, len))
            {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "the bridge {name} already holds {other}/{other_len}, not this node's {gateway}/{len}: another agent uses it (give this one its own with --bridge)"
                    ),
                ));
            }
            i
        }
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Err(e) if errno(&e) != Some(libc::EEXIST) => return Err(io_error(e)),
                _ => {}
            }
            index(h, name)
                .await?
                .ok_or_else(|| io::Error::other(format!("the bridge {name} vanished")))?
        }
    };
    add_address(h, index, gateway, len).await?;
    set_up(h, index).await?;
    Ok(index)
}

/// Makes the link `name` for host-only addresses (or takes the one there) and sets it up: the
/// service proxy gives it the ClusterIPs, as kube-proxy's IPVS mode gives `kube-ipvs0` its
/// Service addresses, so that traffic to them is delivered to this host. It is a dummy link,
/// or where the kernel has no dummy driver (some VM kernels), a bridge with no ports, which
/// holds addresses the same way. Returns its index.
///
/// # Errors
/// When netlink fails.
pub async fn ensure_dummy(h: &Handle, name: &str) -> io::Result<u32> {
    check_name(name)?;
    if index(h, name).await?.is_none() {
        match h.link().add(LinkDummy::new(name).build()).execute().await {
            Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
                match h.link().add(LinkBridge::new(name).build()).execute().await {
                    Err(e) if errno(&e) != Some(libc::EEXIST) => return Err(io_error(e)),
                    _ => {}
                }
            }
            Err(e) if errno(&e) != Some(libc::EEXIST) => return Err(io_error(e)),
            _ => {}
        }
    }
    let index = index(h, name)
        .await?
        .ok_or_else(|| io::Error::other(format!("the link {name} vanished")))?;
    set_up(h, index).await?;
    Ok(index)
}

/// Makes the host-scoped /32 addresses of the link with index `index` exactly `want`.
///
/// # Errors
/// When netlink fails.
pub async fn sync_host_addresses(
    h: &Handle,
    index: u32,
    want: &std::collections::HashSet<Ipv4Addr>,
) -> io::Result<()> {
    let mut dump = h.address().get().set_link_index_filter(index).execute();
    let mut held = Vec::new();
    while let Some(m) = dump.try_next().await.map_err(io_error)? {
        let ip = v4_addresses(&m).next();
        if let Some(ip) = ip {
            held.push((ip, m));
        }
    }
    for (ip, message) in held.iter() {
        if !want.contains(ip) {
            match h.address().del(message.clone()).execute().await {
                Err(e) if errno(&e) != Some(libc::EADDRNOTAVAIL) => return Err(io_error(e)),
                _ => {}
            }
        }
    }
    for ip in want {
        if !held.iter().any(|(h, _)| h == ip) {
            add_address(h, index, *ip, 32).await?;
        }
    }
    Ok(())
}

/// Makes a veth pair in one request: `host` up on the bridge with index `bridge`, and its peer
/// as `eth0` in the namespace at `netns`.
///
/// # Errors
/// When netlink fails (EEXIST when `host` is taken).
pub async fn add_veth(h: &Handle, host: &str, bridge: u32, netns: &Path) -> io::Result<()> {
    check_name(host)?;
    let ns = File::open(netns)?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0".to_owned())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(host, "eth0")
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    let made = h.link().add(veth).execute().await.map_err(io_error);
    drop(ns);
    made
}

/// Puts the link with index `index` on the bridge with index `bridge`, and sets it up.
///
/// # Errors
/// When netlink fails.
pub async fn enslave(h: &Handle, index: u32, bridge: u32) -> io::Result<()> {
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(io_error)
}

/// Inside a pod's namespace (a handle from [`netns_handle`]): gives `eth0` the address
/// `ip/len`, sets it up (`lo` is up from the namespace's making), and routes everything
/// through `gateway`.
///
/// # Errors
/// When netlink fails.
pub async fn configure_pod(h: &Handle, ip: Ipv4Addr, len: u8, gateway: Ipv4Addr) -> io::Result<()> {
    let eth0 = index(h, "eth0")
        .await?
        .ok_or_else(|| io::Error::other("the pod has no eth0"))?;
    add_address(h, eth0, ip, len).await?;
    set_up(h, eth0).await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(eth0)
        .build();
    match h.route().add(route).execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => Err(io_error(e)),
        _ => Ok(()),
    }
}

/// The routing protocol number on the routes wk adds, so that it knows (and prunes) its own,
/// as routing daemons mark theirs.
pub const ROUTE_PROTOCOL: u8 = 0x77;

/// A route to `destination` (a network and prefix length) via `gateway`.
pub type Route = (Ipv4Addr, u8, Ipv4Addr);

/// Makes the main table's routes marked [`ROUTE_PROTOCOL`] exactly `want`: host-gw routes to
/// the other nodes' podCIDRs via their addresses, as flannel's host-gw backend keeps them.
///
/// # Errors
/// When netlink fails (a gateway that no link reaches is refused by the kernel).
pub async fn sync_routes(h: &Handle, want: &[Route]) -> io::Result<()> {
    let mut dump = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut held = Vec::new();
    while let Some(m) = dump.try_next().await.map_err(io_error)? {
        if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        let (destination, gateway, _) = route_fields(&m);
        let gateway = gateway.unwrap_or(Ipv4Addr::UNSPECIFIED);
        held.push((
            (destination, m.header.destination_prefix_length, gateway),
            m,
        ));
    }
    for (route, message) in &held {
        if !want.contains(route) {
            match h.route().del(message.clone()).execute().await {
                Err(e) if errno(&e) != Some(libc::ESRCH) => return Err(io_error(e)),
                _ => {}
            }
        }
    }
    for route @ (destination, len, gateway) in want {
        if held.iter().any(|(r, _)| r == route) {
            continue;
        }
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(*destination, *len)
            .gateway(*gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match h.route().add(message).execute().await {
            Err(e) if errno(&e) != Some(libc::EEXIST) => return Err(io_error(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Deletes the link `name`; `false` when there was none.
///
/// # Errors
/// When netlink fails otherwise.
pub async fn delete(h: &Handle, name: &str) -> io::Result<bool> {
    check_name(name)?;
    match h
        .link()
        .del_with_message(LinkUnspec::new_with_name(name).build())
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(io_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network namespace of the test's own, given back when dropped.
    struct PrivateNs {
        _dir: tempfile::TempDir,
        ns: std::path::PathBuf,
        handle: Option<Handle>,
    }

    impl PrivateNs {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ns = dir.path().join("ns");
            crate::agent::sandbox::netns::create(&ns).expect("a network namespace (run as root)");
            let handle = Some(netns_handle(&ns).unwrap());
            Self {
                _dir: dir,
                ns,
                handle,
            }
        }

        /// A netlink handle inside it.
        fn handle(&self) -> Handle {
            self.handle.clone().expect("a handle until dropped")
        }
    }

    impl Drop for PrivateNs {
        fn drop(&mut self) {
            self.handle.take();
            crate::agent::sandbox::netns::destroy(&self.ns);
        }
    }

    /// In a network namespace of the test's own: a range is claimed by an address in it on
    /// another link, or by a route to part of it through another link, and by nothing else.
    #[tokio::test]
    async fn a_range_is_claimed_by_other_links_addresses_and_routes_in_it() {
        let space = PrivateNs::new();
        let h = space.handle();
        let range: Cidr = "100.64.1.0/24".parse().unwrap();
        ensure_bridge(&h, "own0", Ipv4Addr::new(100, 64, 1, 1), 24)
            .await
            .unwrap();
        let lan = ensure_bridge(&h, "lan0", Ipv4Addr::new(100, 64, 200, 1), 24)
            .await
            .unwrap();
        // The node's own bridge, an address outside, and the kernel's routes for both.
        assert_eq!(claimed(&h, range, "own0").await.unwrap(), None);
        let add = |h: Handle, dst: [u8; 4], len: u8, protocol: RouteProtocol| async move {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.into(), len)
                .gateway(Ipv4Addr::new(100, 64, 200, 9))
                .output_interface(lan)
                .protocol(protocol)
                .build();
            h.route().add(route).execute().await.unwrap();
        };
        // A wider route (the node's bridge wins) and one of wk's host-gw routes, which their
        // agent prunes.
        add(h.clone(), [100, 64, 0, 0], 16, RouteProtocol::Boot).await;
        add(
            h.clone(),
            [100, 64, 1, 64],
            26,
            RouteProtocol::Other(ROUTE_PROTOCOL),
        )
        .await;
        assert_eq!(claimed(&h, range, "own0").await.unwrap(), None);
        // Someone else's route into it.
        add(h.clone(), [100, 64, 1, 128], 25, RouteProtocol::Static).await;
        let claim = claimed(&h, range, "own0").await.unwrap().unwrap();
        assert!(
            claim
                .what
                .contains("100.64.1.128/25 via 100.64.200.9 dev lan0"),
            "{claim:?}"
        );
        assert_eq!(claim.link, "lan0");
        // An address in it on another link, whatever its prefix.
        add_address(&h, lan, Ipv4Addr::new(100, 64, 1, 200), 32)
            .await
            .unwrap();
        let claim = claimed(&h, range, "own0").await.unwrap().unwrap();
        assert!(claim.what.contains("100.64.1.200/32 on lan0"), "{claim:?}");
        // A range that holds the gateway of a route (here the wider one's).
        let gateways: Cidr = "100.64.200.8/29".parse().unwrap();
        let claim = claimed(&h, gateways, "own0").await.unwrap().unwrap();
        assert!(
            claim
                .what
                .contains("100.64.0.0/16 via 100.64.200.9 dev lan0 goes through a gateway"),
            "{claim:?}"
        );
        // Another range is free.
        let free: Cidr = "100.64.2.0/24".parse().unwrap();
        assert_eq!(claimed(&h, free, "own0").await.unwrap(), None);
    }

    /// In a network namespace of the test's own: routes are added, kept, replaced and pruned,
    /// and routes wk did not add are left alone.
    #[tokio::test]
    async fn host_gw_routes_follow_what_is_wanted() {
        let space = PrivateNs::new();
        let h = space.handle();
        let lan = ensure_bridge(&h, "lan0", Ipv4Addr::new(100, 64, 200, 1), 24)
            .await
            .unwrap();
        // A route of someone else's.
        let theirs = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(100, 64, 210, 0), 24)
            .gateway(Ipv4Addr::new(100, 64, 200, 9))
            .output_interface(lan)
            .build();
        h.route().add(theirs).execute().await.unwrap();
        let route = |n: u8, via: u8| {
            (
                Ipv4Addr::new(100, 64, n, 0),
                24,
                Ipv4Addr::new(100, 64, 200, via),
            )
        };
        let ours = |h: Handle| async move {
            let mut dump = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let mut out = Vec::new();
            while let Some(m) = dump.try_next().await.unwrap() {
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                });
                out.push((
                    dst,
                    m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL),
                ));
            }
            out
        };
        sync_routes(&h, &[route(201, 2), route(202, 3)])
            .await
            .unwrap();
        sync_routes(&h, &[route(201, 2), route(202, 3)])
            .await
            .unwrap();
        let seen = ours(h.clone()).await;
        assert!(
            seen.contains(&(Some(Ipv4Addr::new(100, 64, 201, 0)), true)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&(Some(Ipv4Addr::new(100, 64, 202, 0)), true)),
            "{seen:?}"
        );
        sync_routes(&h, &[route(202, 4)]).await.unwrap();
        let seen = ours(h.clone()).await;
        let marked: Vec<_> = seen.iter().filter(|(_, ours)| *ours).collect();
        assert_eq!(
            marked,
            [&(Some(Ipv4Addr::new(100, 64, 202, 0)), true)],
            "{seen:?}"
        );
        assert!(
            seen.contains(&(Some(Ipv4Addr::new(100, 64, 210, 0)), false)),
            "theirs stays"
        );
        sync_routes(&h, &[]).await.unwrap();
        assert!(ours(h.clone()).await.iter().all(|(_, ours)| !ours));
    }
}
