//! The service proxy, in userspace and in the spirit of kube-proxy: each agent serves every
//! Service's TCP and UDP ports and passes the traffic to one of the Service's ready endpoints.
//!
//! - **ClusterIP:** the ClusterIPs are host addresses on a dummy link of the agent's own
//!   (`<bridge>-svc`, as kube-proxy's IPVS mode has `kube-ipvs0`), so a pod's connection to
//!   one, routed to its node through the bridge, arrives at the proxy's listener there.
//! - **NodePort:** `node IP:nodePort`.
//! - **LoadBalancer:** `node IP:port` on every node, as k3s's servicelb (whose ingress list the
//!   server's servicelb controller keeps).
//! - **externalIPs:** `externalIP:port` on the nodes where that address is local.
//!
//! TCP connections are passed through whole, except that a connection whose endpoint is a Wasm
//! pod's HTTP server on this node is handed to that server itself ([`crate::agent::handoff`]);
//! UDP datagrams go through a session per client.
//!
//! Endpoints come from the Services' EndpointSlices (ready endpoints only); a change applies as
//! soon as its watch event arrives, and the connections to an endpoint that has gone are
//! closed. `sessionAffinity: ClientIP` sends a client to the endpoint it had, for
//! `timeoutSeconds` (10800 by default).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::handoff::LocalServers;
use crate::client::Client;
use crate::client::informer::{Informer, Informers};
use crate::controllers::endpoints::SERVICES;
use crate::controllers::endpointslice::{SERVICE_NAME, SLICES};
use crate::controllers::{name, namespace};
use crate::dns::ClusterDns;

/// How long each try to open a connection to an endpoint may take: each try takes an endpoint
/// from the Service's endpoints as they are then, not yet tried by this connection, as
/// kube-proxy's userspace mode did with the same timeouts.
const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// How often the proxy looks over its listeners when nothing changed.
const RESYNC: Duration = Duration::from_secs(60);
/// How long a UDP session lasts without a reply.
const UDP_IDLE: Duration = Duration::from_secs(30);
/// How long `sessionAffinity: ClientIP` holds by default.
const AFFINITY: Duration = Duration::from_secs(10_800);

/// ClientIP affinity: how long it holds, and each client's endpoint and last use.
type Sticky = (
    Duration,
    HashMap<IpAddr, (SocketAddr, tokio::time::Instant)>,
);

/// One Service port's endpoints, and the connections open to each.
#[derive(Default)]
struct Pool {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// With ClientIP affinity: how long it holds, and each client's endpoint and last use.
    affinity: Mutex<Option<Sticky>>,
    open: Mutex<HashMap<SocketAddr, Vec<AbortHandle>>>,
}

impl Pool {
    /// Sets the endpoints; connections to those no longer among them are closed.
    fn set(&self, backends: Vec<SocketAddr>, affinity: Option<Duration>) {
        let gone: Vec<SocketAddr> = {
            let mut current = self.backends.lock().expect("pool lock");
            let gone = current
                .iter()
                .filter(|b| !backends.contains(b))
                .copied()
                .collect();
            *current = backends;
            gone
        };
        {
            let mut sticky = self.affinity.lock().expect("pool lock");
            match (affinity, sticky.as_mut()) {
                (Some(d), Some((held, clients))) => {
                    *held = d;
                    clients.retain(|_, (b, _)| !gone.contains(b));
                }
                (Some(d), None) => *sticky = Some((d, HashMap::new())),
                (None, _) => *sticky = None,
            }
        }
        let mut open = self.open.lock().expect("pool lock");
        for backend in gone {
            let conns = open.remove(&backend).unwrap_or_default();
            let live = conns.iter().filter(|c| !c.is_finished()).count();
            if live > 0 {
                tracing::debug!(%backend, connections = live, "endpoint gone; closing its connections");
            }
            for conn in conns {
                conn.abort();
            }
        }
    }

    /// The endpoint for a client's next try, other than those in `tried`: the one its
    /// affinity holds, else the next in turn. With affinity, the client is held to it from now.
    fn choose(&self, client: IpAddr, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let backends: Vec<SocketAddr> = self
            .backends
            .lock()
            .expect("pool lock")
            .iter()
            .filter(|b| !tried.contains(b))
            .copied()
            .collect();
        if backends.is_empty() {
            return None;
        }
        let mut pick = backends[self.next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        let mut sticky = self.affinity.lock().expect("pool lock");
        if let Some((hold, clients)) = sticky.as_mut() {
            let now = tokio::time::Instant::now();
            if let Some((b, at)) = clients.get(&client)
                && now.duration_since(*at) < *hold
                && backends.contains(b)
            {
                pick = *b;
            }
            clients.insert(client, (pick, now));
        }
        Some(pick)
    }

    /// Records a connection open to `backend`, to be closed when it leaves; false (and not
    /// recorded) when it has left already, while the connection was being opened.
    fn opened(&self, backend: SocketAddr, conn: AbortHandle) -> bool {
        let mut open = self.open.lock().expect("pool lock");
        if !self.backends.lock().expect("pool lock").contains(&backend) {
            return false;
        }
        let list = open.entry(backend).or_default();
        list.retain(|c| !c.is_finished());
        list.push(conn);
        true
    }
}

/// An address served, and whether over UDP (else TCP).
type Front = (SocketAddr, bool);

/// The proxy's state: a listener per address, each with its Service port's pool.
struct Proxy {
    client: Client,
    node_ip: IpAddr,
    /// The dummy link for ClusterIPs (none without a pod network or privileges).
    vips: Option<(rtnetlink::Handle, u32)>,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    /// Cluster DNS, served at the `kube-dns` Service's addresses.
    dns: Arc<ClusterDns>,
    /// This node's Wasm HTTP servers, which take their connections without a relay (none:
    /// every connection is relayed).
    local: Option<Arc<LocalServers>>,
    pools: HashMap<String, Arc<Pool>>,
    listeners: HashMap<Front, (String, AbortHandle)>,
    /// Addresses that could not be served, so each is reported once.
    failed: HashSet<Front>,
    shutdown: CancellationToken,
}

/// Runs the proxy until `shutdown`. `link` names the dummy link for ClusterIPs; without one
/// (no pod network, no privileges) only NodePorts are served.
pub async fn run(
    client: Client,
    informers: Informers,
    dns: Arc<ClusterDns>,
    node_ip: IpAddr,
    link: Option<String>,
    local: Option<Arc<LocalServers>>,
    shutdown: CancellationToken,
) {
    let services = informers.get(SERVICES);
    let slices = informers.get(SLICES);
    let wake = crate::client::informer::wake_on_change(&[&services, &slices]);
    informers.start(&client, &shutdown);
    let vips = match link {
        Some(name) => match vip_link(&name).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(link = name, error = %e, "ClusterIPs are not served on this node");
                None
            }
        },
        None => None,
    };
    let mut proxy = Proxy {
        client,
        dns,
        local,
        node_ip,
        vips,
        services: services.clone(),
        slices: slices.clone(),
        pools: HashMap::new(),
        listeners: HashMap::new(),
        failed: HashSet::new(),
        shutdown: shutdown.clone(),
    };
    tokio::select! {
        () = async { services.wait_synced().await; slices.wait_synced().await; } => {}
        () = shutdown.cancelled() => return,
    }
    loop {
        proxy.sync().await;
        // Listeners that could not bind are tried again soon; the rest is looked over now
        // and then (an externalIP may have become local), not so often that an idle agent
        // keeps its proxy's code paged in.
        let again = if proxy.failed.is_empty() {
            RESYNC
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(again) => {}
            () = shutdown.cancelled() => break,
        }
    }
    for (_, (_, listener)) in proxy.listeners.drain() {
        listener.abort();
    }
    if let Some((h, index)) = &proxy.vips {
        let _ = crate::net::link::sync_host_addresses(h, *index, &HashSet::new()).await;
    }
    drop(proxy.client);
}

async fn vip_link(name: &str) -> std::io::Result<(rtnetlink::Handle, u32)> {
    let h = crate::net::link::host_handle()?;
    let index = crate::net::link::ensure_dummy(&h, name).await?;
    Ok((h, index))
}

/// The dummy link's name for an agent whose bridge is `bridge`.
pub fn link_name(bridge: &str) -> Option<String> {
    let name = format!("{bridge}-svc");
    (name.len() <= crate::net::link::MAX_NAME).then_some(name)
}

impl Proxy {
    /// Makes the listeners, addresses and pools what the Services and their slices say.
    async fn sync(&mut self) {
        // Each address served, with the `namespace/name:port` of its Service port.
        let mut frontends: HashMap<Front, String> = HashMap::new();
        let mut endpoints: HashMap<String, (Vec<SocketAddr>, Option<Duration>)> = HashMap::new();
        let mut vips = HashSet::new();
        let slices = self.slices.list();
        for service in self.services.list() {
            let spec = &service["spec"];
            let cluster_ip = spec["clusterIP"]
                .as_str()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            let affinity = (spec["sessionAffinity"] == "ClientIP").then(|| {
                spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                    .as_u64()
                    .map_or(AFFINITY, Duration::from_secs)
            });
            let mine: Vec<&Value> = slices
                .iter()
                .filter(|s| {
                    namespace(s) == namespace(&service)
                        && s["metadata"]["labels"][SERVICE_NAME] == name(&service)
                })
                .map(|s| &**s)
                .collect();
            for port in spec["ports"].as_array().into_iter().flatten() {
                let udp = match port["protocol"].as_str().unwrap_or("TCP") {
                    "TCP" => false,
                    "UDP" => true,
                    // SCTP is not proxied.
                    _ => continue,
                };
                let port_name = port["name"].as_str().unwrap_or_default();
                let key = format!("{}/{}:{port_name}", namespace(&service), name(&service));
                endpoints.insert(key.clone(), (ready_endpoints(&mine, port_name), affinity));
                let mut serve = |addr: SocketAddr| {
                    frontends.entry((addr, udp)).or_insert_with(|| key.clone());
                };
                if let (Some(ip), Some(p)) = (cluster_ip, port["port"].as_u64())
                    && self.vips.is_some()
                {
                    vips.insert(ip);
                    serve(SocketAddr::new(IpAddr::V4(ip), p as u16));
                }
                if let Some(p) = port["nodePort"].as_u64() {
                    serve(SocketAddr::new(self.node_ip, p as u16));
                }
                let Some(p) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                // A LoadBalancer is served on its port on every node, as k3s's servicelb does.
                if spec["type"] == "LoadBalancer" {
                    serve(SocketAddr::new(self.node_ip, p));
                }
                // externalIPs are served where they are local (elsewhere the bind fails).
                for ip in spec["externalIPs"].as_array().into_iter().flatten() {
                    if let Some(ip) = ip.as_str().and_then(|i| i.parse::<IpAddr>().ok()) {
                        serve(SocketAddr::new(ip, p));
                    }
                }
            }
        }
        if let Some((h, index)) = &self.vips
            && let Err(e) = crate::net::link::sync_host_addresses(h, *index, &vips).await
        {
            tracing::warn!(error = %e, "could not set the ClusterIPs on this node");
        }
        for (key, (backends, affinity)) in &endpoints {
            self.pools
                .entry(key.clone())
                .or_default()
                .set(backends.clone(), *affinity);
        }
        self.pools.retain(|key, pool| {
            let keep = endpoints.contains_key(key);
            if !keep {
                pool.set(Vec::new(), None);
            }
            keep
        });
        self.listeners.retain(|addr, (key, task)| {
            let keep = frontends.get(addr) == Some(key);
            if !keep {
                task.abort();
            }
            keep
        });
        // Cluster DNS answers at its Service's ports itself: this node's agent is the server.
        let dns_key = format!("{}/{}:", crate::dns::SERVICE.0, crate::dns::SERVICE.1);
        for (front, key) in frontends {
            if self.listeners.contains_key(&front) {
                continue;
            }
            let Some(pool) = self.pools.get(&key).cloned() else {
                continue;
            };
            let (addr, udp) = front;
            let stop = self.shutdown.child_token();
            let dns = key.starts_with(&dns_key).then(|| self.dns.clone());
            let bound = if let Some(dns) = dns {
                if udp {
                    tokio::net::UdpSocket::bind(addr)
                        .await
                        .map(|socket| tokio::spawn(crate::dns::serve_udp(dns, socket, stop)))
                } else {
                    TcpListener::bind(addr)
                        .await
                        .map(|listener| tokio::spawn(crate::dns::serve_tcp(dns, listener, stop)))
                }
            } else if udp {
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .map(|socket| tokio::spawn(serve_udp(socket, pool, stop)))
            } else {
                TcpListener::bind(addr)
                    .await
                    .map(|listener| tokio::spawn(serve(listener, pool, self.local.clone(), stop)))
            };
            match bound {
                Ok(task) => {
                    self.failed.remove(&front);
                    self.listeners.insert(front, (key, task.abort_handle()));
                }
                // Not an address of this node (an externalIP of another, a ClusterIP not yet
                // added): nothing to serve here.
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    tracing::debug!(%addr, service = key, "not an address of this node");
                }
                Err(e) => {
                    if self.failed.insert(front) {
                        tracing::warn!(%addr, udp, service = key, error = %e, "cannot serve a Service port");
                    }
                }
            }
        }
    }
}

/// The ready endpoints of a Service port, from its slices.
pub(crate) fn ready_endpoints(slices: &[&Value], port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == false {
                continue;
            }
            for a in e["addresses"].as_array().into_iter().flatten() {
                if let Some(ip) = a.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Accepts connections on `listener` and passes each to an endpoint of `pool`.
async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    local: Option<Arc<LocalServers>>,
    stop: CancellationToken,
) {
    while let Some((inbound, peer)) = crate::net::accept(&listener, &stop).await {
        let (pool, local) = (pool.clone(), local.clone());
        tokio::spawn(async move { forward(inbound, peer, pool, local.as_deref()).await });
    }
}

/// Relays datagrams on `socket` to endpoints of `pool`: each client gets a session, a socket
/// of its own connected to one endpoint, whose replies go back to the client from the Service's
/// address; a session ends after [`UDP_IDLE`] without replies, or when its endpoint leaves.
async fn serve_udp(socket: tokio::net::UdpSocket, pool: Arc<Pool>, stop: CancellationToken) {
    let socket = Arc::new(socket);
    let mut sessions: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, AbortHandle)> =
        HashMap::new();
    let mut buf = vec![0u8; 65_536];
    while let Some((n, client)) = crate::net::receive(&socket, &mut buf, &stop).await {
        sessions.retain(|_, (_, task)| !task.is_finished());
        let upstream = if let Some((upstream, _)) = sessions.get(&client) {
            upstream.clone()
        } else {
            let Some(backend) = pool.choose(client.ip(), &[]) else {
                continue;
            };
            let local = if backend.is_ipv4() {
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            };
            let Ok(upstream) = tokio::net::UdpSocket::bind(local).await else {
                continue;
            };
            if upstream.connect(backend).await.is_err() {
                continue;
            }
            let upstream = Arc::new(upstream);
            let (up, front) = (upstream.clone(), socket.clone());
            let replies = tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)).await {
                    if front.send_to(&buf[..n], client).await.is_err() {
                        return;
                    }
                }
            });
            if !pool.opened(backend, replies.abort_handle()) {
                replies.abort();
                continue;
            }
            sessions.insert(client, (upstream.clone(), replies.abort_handle()));
            upstream
        };
        let _ = upstream.send(&buf[..n]).await;
    }
    for (_, (_, task)) in sessions {
        task.abort();
    }
}

/// Connects `inbound` to an endpoint that answers, then copies both ways until either side
/// closes, or the endpoint leaves the pool. Each try takes an endpoint from the pool as it is
/// then, so a connection that comes while the endpoints change lands on a current one. An
/// endpoint served by this agent (`local`) takes the connection itself.
async fn forward(
    mut inbound: TcpStream,
    peer: SocketAddr,
    pool: Arc<Pool>,
    local: Option<&LocalServers>,
) {
    let mut tried = Vec::new();
    let mut failed = Vec::new();
    for limit in DIAL_TIMEOUTS {
        let Some(backend) = pool.choose(peer.ip(), &tried) else {
            break;
        };
        tried.push(backend);
        let handed = match local {
            Some(local) => local.hand(backend, inbound),
            None => Err(inbound),
        };
        inbound = match handed {
            Ok(handed) => {
                let served = tokio::spawn(handed.finished());
                if !pool.opened(backend, served.abort_handle()) {
                    served.abort();
                }
                let _ = served.await;
                return;
            }
            Err(inbound) => inbound,
        };
        let mut outbound = match tokio::time::timeout(limit, TcpStream::connect(backend)).await {
            Ok(Ok(outbound)) => outbound,
            Ok(Err(e)) => {
                failed.push(format!("{backend}: {e}"));
                continue;
            }
            Err(_) => {
                failed.push(format!("{backend}: no answer in {limit:?}"));
                continue;
            }
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let copy = tokio::spawn(async move {
            if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                tracing::debug!(client = %peer, %backend, error = %e, "proxied connection failed");
            }
        });
        if !pool.opened(backend, copy.abort_handle()) {
            copy.abort();
        }
        let _ = copy.await;
        return;
    }
    tracing::debug!(client = %peer, ?failed, "no endpoint took the connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ready_endpoints_take_the_named_port_and_skip_the_unready() {
        let slice = serde_json::json!({"ports": [{"name": "web", "port": 8000}],
            "endpoints": [
                {"addresses": ["100.64.0.2"], "conditions": {"ready": true}},
                {"addresses": ["100.64.0.3"], "conditions": {"ready": false}},
                {"addresses": ["100.64.0.4"], "conditions": {}}]});
        assert_eq!(
            ready_endpoints(&[&slice], "web"),
            [addr("100.64.0.2:8000"), addr("100.64.0.4:8000")]
        );
        assert!(ready_endpoints(&[&slice], "other").is_empty());
    }

    #[tokio::test]
    async fn udp_is_relayed_per_client_and_a_gone_endpoint_ends_the_session() {
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let backend = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&reply, from).await;
            }
        });
        let pool = Arc::new(Pool::default());
        pool.set(vec![backend], None);
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve_udp(front, pool.clone(), stop.clone()));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(front_addr).await.unwrap();
        let mut buf = [0u8; 512];
        for word in ["one", "two"] {
            client.send(word.as_bytes()).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], format!("echo:{word}").as_bytes());
        }
        // The endpoint leaves: its session is closed, and nothing answers.
        pool.set(Vec::new(), None);
        client.send(b"three").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf))
                .await
                .is_err()
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_connection_tries_another_endpoint_when_one_refuses() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                tokio::spawn(async move { s.write_all(b"hi").await });
            }
        });
        // Bound and let go: nothing listens there, so a connection is refused.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = Arc::new(Pool::default());
        pool.set(vec![dead, live_addr], None);
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(front, pool, None, stop.clone()));
        // Round robin starts every other connection at the dead endpoint.
        for _ in 0..4 {
            let mut c = TcpStream::connect(front_addr).await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, b"hi");
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn a_pool_spreads_clients_keeps_affinity_and_closes_gone_endpoints() {
        let pool = Pool::default();
        let (a, b) = (addr("100.64.0.2:80"), addr("100.64.0.3:80"));
        pool.set(vec![a, b], None);
        let client: IpAddr = "100.64.0.9".parse().unwrap();
        let firsts: HashSet<SocketAddr> = (0..4).filter_map(|_| pool.choose(client, &[])).collect();
        assert_eq!(firsts.len(), 2, "round robin");

        pool.set(vec![a, b], Some(Duration::from_secs(60)));
        let first = pool.choose(client, &[]).unwrap();
        assert!(
            (0..4).all(|_| pool.choose(client, &[]) == Some(first)),
            "sticky"
        );
        let other = if first == a { b } else { a };
        // A try that failed moves the client, and it stays where it went.
        assert_eq!(pool.choose(client, &[first]), Some(other));
        assert_eq!(pool.choose(client, &[]), Some(other));
        assert_eq!(pool.choose(client, &[a, b]), None);

        let conn = tokio::spawn(std::future::pending::<()>());
        assert!(pool.opened(other, conn.abort_handle()));
        pool.set(vec![first], Some(Duration::from_secs(60)));
        assert!(
            conn.await.unwrap_err().is_cancelled(),
            "its connection is closed"
        );
        assert_eq!(pool.choose(client, &[]), Some(first));
        // A connection opened while its endpoint left is not kept.
        let late = tokio::spawn(std::future::pending::<()>());
        assert!(!pool.opened(other, late.abort_handle()));
        late.abort();
    }
}
