//! Cluster DNS, as CoreDNS's kubernetes plugin answers it: every agent holds the records, built
//! from the Services and EndpointSlices it watches, and answers at the `kube-dns` ClusterIP
//! (port 53, UDP and TCP) on its own node. A pod's Wasm guests ask it in-process: wk's
//! `wasi:sockets/ip-name-lookup` and outgoing wasi:http resolve through [`Resolver`].
//!
//! - `svc.ns.svc.cluster.local`: the ClusterIP; for a headless Service, its ready endpoints
//!   (every endpoint with `publishNotReadyAddresses`); for an ExternalName, a CNAME.
//! - `host.svc.ns.svc.cluster.local`: a headless Service's endpoint by its `hostname` (a
//!   StatefulSet's `web-0.web.ns.svc.cluster.local`) or by its dashed address.
//! - `_port._proto.svc.ns.svc.cluster.local`: SRV records for named ports.
//! - `a-b-c-d.ns.pod.cluster.local`: the address the name spells.
//!
//! Other names go to the node's upstream resolvers (`--resolv-conf`, /etc/resolv.conf by
//! default), asked from the node's own network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::client::informer::Informer;
use crate::controllers::endpointslice::SERVICE_NAME;

/// The cluster's domain.
pub const DOMAIN: &str = "cluster.local";
/// The namespace and name of the Service whose ClusterIP the agents answer DNS at.
pub const SERVICE: (&str, &str) = ("kube-system", "kube-dns");
/// How long answers may be cached, as CoreDNS's default.
const TTL: u32 = 5;
/// How long an upstream resolver has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How many CNAMEs a lookup follows.
const MAX_CHASE: usize = 8;
/// The `ndots` of a pod's resolver options, as the kubelet writes them.
pub const NDOTS: usize = 5;

/// Why a name did not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// No such name (NXDOMAIN, or no address for it).
    NotFound,
    /// No resolver answered in time, or one failed.
    Unavailable,
}

/// What the cluster's zone says of a name.
#[derive(Debug)]
enum Found {
    /// The records asked for (maybe none: the name exists but has no such records).
    Records(Vec<Record>),
    /// An ExternalName's CNAME; the target's own records follow it.
    Alias(Box<Record>, Name),
    /// No such name in the zone.
    NxDomain,
}

/// The node's cluster DNS: the records of every Service, from the agent's informers.
pub struct ClusterDns {
    services: Arc<Informer>,
    slices: Arc<Informer>,
    zone: Name,
    upstream: Vec<SocketAddr>,
    /// The agent's main runtime: upstream queries leave from the node's network, also when a
    /// pod's thread (inside its namespace) asks.
    runtime: tokio::runtime::Handle,
}

/// A pod's view of cluster DNS: its namespace gives the search path.
#[derive(Clone)]
pub struct Resolver {
    dns: Arc<ClusterDns>,
    namespace: String,
}

impl Resolver {
    /// The resolver for pods of `namespace`.
    pub fn new(dns: Arc<ClusterDns>, namespace: &str) -> Self {
        Self {
            dns,
            namespace: namespace.to_owned(),
        }
    }

    /// The addresses of `name`, through the pod's search path, as a pod's libc would resolve
    /// it: a name with fewer than [`NDOTS`] dots is tried under `ns.svc.cluster.local`,
    /// `svc.cluster.local` and `cluster.local` first.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let absolute = name.ends_with('.');
        let bare = name.trim_end_matches('.');
        // As in a pod's /etc/hosts.
        if bare.eq_ignore_ascii_case("localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        }
        let mut candidates = Vec::new();
        let searched = [
            format!("{bare}.{}.svc.{DOMAIN}", self.namespace),
            format!("{bare}.svc.{DOMAIN}"),
            format!("{bare}.{DOMAIN}"),
        ];
        if absolute || bare.matches('.').count() >= NDOTS {
            candidates.push(bare.to_owned());
            if !absolute {
                candidates.extend(searched);
            }
        } else {
            candidates.extend(searched);
            // A single label is a cluster name or nothing: it is not asked upstream.
            if bare.contains('.') {
                candidates.push(bare.to_owned());
            }
        }
        let mut failure = LookupError::NotFound;
        for candidate in candidates {
            let Ok(mut fqdn) = Name::from_ascii(&candidate) else {
                continue;
            };
            fqdn.set_fqdn(true);
            match self.dns.addresses(fqdn).await {
                Ok(found) if !found.is_empty() => return Ok(found),
                Ok(_) => {}
                Err(e) => failure = e,
            }
        }
        Err(failure)
    }
}

impl ClusterDns {
    /// Cluster DNS over the agent's Service and EndpointSlice informers, forwarding other
    /// names to `upstream`. Must be made on the agent's main runtime.
    pub fn new(services: Arc<Informer>, slices: Arc<Informer>, upstream: Vec<SocketAddr>) -> Self {
        let mut zone = Name::from_ascii(DOMAIN).expect("the cluster domain is a name");
        zone.set_fqdn(true);
        Self {
            services,
            slices,
            zone,
            upstream,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The address the agents answer DNS at: the `kube-dns` Service's ClusterIP.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.services.get(&format!("{}/{}", SERVICE.0, SERVICE.1))?["spec"]["clusterIP"]
            .as_str()?
            .parse()
            .ok()
    }

    /// The IPv4 addresses of an absolute name: the zone's records (following CNAMEs), or the
    /// upstream resolvers' answer for names outside it.
    async fn addresses(&self, mut name: Name) -> Result<Vec<IpAddr>, LookupError> {
        for _ in 0..MAX_CHASE {
            match self.find(&name, RecordType::A) {
                None => return self.ask_upstream(name).await,
                Some(Found::NxDomain) => return Err(LookupError::NotFound),
                Some(Found::Records(records)) => return Ok(addresses_in(&records)),
                Some(Found::Alias(_, target)) => name = target,
            }
        }
        Err(LookupError::NotFound)
    }

    /// The upstream resolvers, less cluster DNS itself (a node whose resolv.conf names it).
    fn upstream(&self) -> Vec<SocketAddr> {
        let own = self.address().map(IpAddr::V4);
        self.upstream
            .iter()
            .filter(|s| Some(s.ip()) != own)
            .copied()
            .collect()
    }

    /// Asks the upstream resolvers for `name`'s A records, from the node's network.
    async fn ask_upstream(&self, name: Name) -> Result<Vec<IpAddr>, LookupError> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name, RecordType::A));
        let packet = query.to_vec().map_err(|_| LookupError::NotFound)?;
        let upstream = self.upstream();
        let answer = self
            .runtime
            .spawn(async move { forward(&upstream, &packet).await })
            .await
            .ok()
            .flatten()
            .ok_or(LookupError::Unavailable)?;
        let reply = Message::from_vec(&answer).map_err(|_| LookupError::Unavailable)?;
        match reply.metadata.response_code {
            ResponseCode::NoError => Ok(addresses_in(&reply.answers)),
            ResponseCode::NXDomain => Err(LookupError::NotFound),
            _ => Err(LookupError::Unavailable),
        }
    }

    /// The reply to one DNS request, or `None` when there is nothing to say (not a query).
    pub async fn handle(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) if packet.len() >= 2 => {
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return reply.to_vec().ok();
            }
            Err(_) => return None,
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.queries = request.queries.clone();
        let query = match request.queries.as_slice() {
            [q] if request.metadata.op_code == OpCode::Query => q,
            _ => {
                reply.metadata.response_code = ResponseCode::NotImp;
                return reply.to_vec().ok();
            }
        };
        let mut name = query.name().clone();
        name.set_fqdn(true);
        let mut chased = 0;
        loop {
            match self.find(&name, query.query_type()) {
                None if chased == 0 => {
                    return match forward(&self.upstream(), packet).await {
                        Some(answer) if tcp || answer.len() <= 512 => Some(answer),
                        Some(answer) => Message::from_vec(&answer)
                            .ok()
                            .and_then(|m| m.truncate().to_vec().ok()),
                        None => {
                            reply.metadata.response_code = ResponseCode::ServFail;
                            reply.to_vec().ok()
                        }
                    };
                }
                // An ExternalName pointing outside the cluster: its target's records from
                // upstream follow the CNAME.
                None => {
                    if let Ok(ips) = self.ask_upstream(name.clone()).await {
                        for ip in ips {
                            if let IpAddr::V4(ip) = ip {
                                reply.add_answer(Record::from_rdata(
                                    name.clone(),
                                    TTL,
                                    RData::A(A(ip)),
                                ));
                            }
                        }
                    }
                    break;
                }
                Some(Found::NxDomain) => {
                    // Only the first name decides NXDOMAIN; a dangling alias answers its CNAME.
                    if chased == 0 {
                        reply.metadata.response_code = ResponseCode::NXDomain;
                    }
                    break;
                }
                Some(Found::Records(records)) => {
                    reply.answers.extend(records);
                    break;
                }
                Some(Found::Alias(cname, target)) => {
                    reply.add_answer(*cname);
                    chased += 1;
                    if chased >= MAX_CHASE
                        || !matches!(query.query_type(), RecordType::A | RecordType::AAAA)
                    {
                        break;
                    }
                    name = target;
                }
            }
        }
        reply.metadata.authoritative = true;
        if reply.answers.is_empty() {
            reply.add_authority(self.soa());
        }
        let bytes = reply.to_vec().ok()?;
        let limit = request
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()));
        if !tcp && bytes.len() > limit {
            return reply.truncate().to_vec().ok();
        }
        Some(bytes)
    }

    /// The zone's start of authority, sent with negative answers so they are cached briefly.
    fn soa(&self) -> Record {
        let ns = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        let mail = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        let soa = SOA::new(ns, mail, 1, 7200, 1800, 86400, TTL);
        Record::from_rdata(self.zone.clone(), TTL, RData::SOA(soa))
    }

    /// What the zone holds for `name` and `qtype`; `None` when the name is outside the zone.
    fn find(&self, name: &Name, qtype: RecordType) -> Option<Found> {
        if !self.zone.zone_of(name) {
            return None;
        }
        let labels: Vec<String> = name
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let inner = &labels[..labels.len() - usize::from(self.zone.num_labels())];
        let found = match inner {
            // The zone itself, `svc`, `pod` and a namespace under them exist, with no records.
            [] => Found::Records(Vec::new()),
            [kind] | [_, kind] if kind == "svc" || kind == "pod" => Found::Records(Vec::new()),
            [ip, _ns, kind] if kind == "pod" => match dashed(ip) {
                Some(ip) => self.addresses_of(name, qtype, &[ip]),
                None => Found::NxDomain,
            },
            [svc, ns, kind] if kind == "svc" => self.service(name, qtype, ns, svc),
            [host, svc, ns, kind] if kind == "svc" => self.endpoint(name, qtype, ns, svc, host),
            [port, proto, svc, ns, kind]
                if kind == "svc" && port.starts_with('_') && proto.starts_with('_') =>
            {
                self.srv(name, qtype, ns, svc, &port[1..], &proto[1..])
            }
            _ => Found::NxDomain,
        };
        Some(found)
    }

    /// A records for `ips` if `qtype` asks for them; the name exists either way.
    fn addresses_of(&self, name: &Name, qtype: RecordType, ips: &[Ipv4Addr]) -> Found {
        if !matches!(qtype, RecordType::A | RecordType::ANY) {
            return Found::Records(Vec::new());
        }
        Found::Records(
            ips.iter()
                .map(|ip| Record::from_rdata(name.clone(), TTL, RData::A(A(*ip))))
                .collect(),
        )
    }

    fn service(&self, name: &Name, qtype: RecordType, ns: &str, svc: &str) -> Found {
        let Some(service) = self.services.get(&format!("{ns}/{svc}")) else {
            return Found::NxDomain;
        };
        let spec = &service["spec"];
        if spec["type"] == "ExternalName" {
            let Some(target) = spec["externalName"]
                .as_str()
                .and_then(|t| Name::from_ascii(t.trim_end_matches('.')).ok())
            else {
                return Found::Records(Vec::new());
            };
            let mut target = target;
            target.set_fqdn(true);
            let cname = Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target.clone())));
            return Found::Alias(Box::new(cname), target);
        }
        match spec["clusterIP"].as_str() {
            Some("None") => {
                let ips: Vec<Ipv4Addr> = self
                    .endpoints(&service)
                    .into_iter()
                    .map(|(ip, _)| ip)
                    .collect();
                self.addresses_of(name, qtype, &ips)
            }
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(ip) => self.addresses_of(name, qtype, &[ip]),
                Err(_) => Found::Records(Vec::new()),
            },
            None => Found::Records(Vec::new()),
        }
    }

    /// A headless Service's endpoint named by its hostname or its dashed address.
    fn endpoint(&self, name: &Name, qtype: RecordType, ns: &str, svc: &str, host: &str) -> Found {
        let Some(service) = self.services.get(&format!("{ns}/{svc}")) else {
            return Found::NxDomain;
        };
        if service["spec"]["clusterIP"] != "None" {
            return Found::NxDomain;
        }
        let ips: Vec<Ipv4Addr> = self
            .endpoints(&service)
            .into_iter()
            .filter(|(ip, hostname)| hostname.as_deref() == Some(host) || dashed(host) == Some(*ip))
            .map(|(ip, _)| ip)
            .collect();
        if ips.is_empty() {
            return Found::NxDomain;
        }
        self.addresses_of(name, qtype, &ips)
    }

    /// SRV records for a named port: the Service's name and port, or for a headless
    /// Service each endpoint's name and port.
    fn srv(
        &self,
        name: &Name,
        qtype: RecordType,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
    ) -> Found {
        let Some(service) = self.services.get(&format!("{ns}/{svc}")) else {
            return Found::NxDomain;
        };
        let Some(spec_port) = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["name"].as_str() == Some(port)
                    && p["protocol"]
                        .as_str()
                        .unwrap_or("TCP")
                        .eq_ignore_ascii_case(proto)
            })
        else {
            return Found::NxDomain;
        };
        if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
            return Found::Records(Vec::new());
        }
        let Ok(service_name) =
            Name::from_ascii(format!("{svc}.{ns}.svc")).and_then(|n| n.append_domain(&self.zone))
        else {
            return Found::NxDomain;
        };
        let srv = |port: u16, target: Name| {
            Record::from_rdata(
                name.clone(),
                TTL,
                RData::SRV(SRV::new(0, 100, port, target)),
            )
        };
        if service["spec"]["clusterIP"] != "None" {
            let Some(p) = spec_port["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
            else {
                return Found::Records(Vec::new());
            };
            return Found::Records(vec![srv(p, service_name)]);
        }
        let mut records = Vec::new();
        for slice in self.slices_of(&service) {
            let Some(p) = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str() == Some(port))
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for (ip, hostname) in ready_in(&service, &slice) {
                let label = hostname.unwrap_or_else(|| ip.to_string().replace('.', "-"));
                if let Ok(target) =
                    Name::from_ascii(&label).and_then(|l| l.append_domain(&service_name))
                {
                    records.push(srv(p, target));
                }
            }
        }
        Found::Records(records)
    }

    fn slices_of(&self, service: &Value) -> Vec<Arc<Value>> {
        let name = service["metadata"]["name"].as_str().unwrap_or_default();
        self.slices
            .list_namespace(
                service["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default(),
            )
            .into_iter()
            .filter(|s| s["metadata"]["labels"][SERVICE_NAME] == name)
            .collect()
    }

    /// A Service's endpoints that DNS names: address and hostname.
    fn endpoints(&self, service: &Value) -> Vec<(Ipv4Addr, Option<String>)> {
        let mut all: Vec<(Ipv4Addr, Option<String>)> = self
            .slices_of(service)
            .iter()
            .flat_map(|slice| ready_in(service, slice))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The endpoints of `slice` that DNS names: the ready ones, or all with
/// `publishNotReadyAddresses`.
fn ready_in(service: &Value, slice: &Value) -> Vec<(Ipv4Addr, Option<String>)> {
    let publish = service["spec"]["publishNotReadyAddresses"] == true;
    let mut out = Vec::new();
    for e in slice["endpoints"].as_array().into_iter().flatten() {
        if !publish && e["conditions"]["ready"] == false {
            continue;
        }
        let hostname = e["hostname"].as_str().map(str::to_owned);
        for a in e["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a.as_str().and_then(|a| a.parse().ok()) {
                out.push((ip, hostname.clone()));
            }
        }
    }
    out
}

/// The address a dashed label spells (`100-64-0-5`).
fn dashed(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    parts.join(".").parse().ok()
}

/// The A records' addresses among `records`.
fn addresses_in(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// Sends `packet` to each upstream resolver in turn (UDP, then TCP when the answer was
/// truncated) and returns the first answer.
async fn forward(upstream: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    for server in upstream {
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            let bind: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(bind).await.ok()?;
            socket.connect(server).await.ok()?;
            socket.send(packet).await.ok()?;
            let mut buf = vec![0u8; 65_535];
            loop {
                let n = socket.recv(&mut buf).await.ok()?;
                // Only the reply to this query (the same id) counts.
                if n >= 3 && buf[..2] == packet[..2] {
                    let truncated = buf[2] & 0x02 != 0;
                    if !truncated {
                        return Some(buf[..n].to_vec());
                    }
                    return forward_tcp(*server, packet)
                        .await
                        .or(Some(buf[..n].to_vec()));
                }
            }
        })
        .await;
        if let Ok(Some(answer)) = answer {
            return Some(answer);
        }
    }
    None
}

async fn forward_tcp(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await.ok()?;
    let len = u16::try_from(packet.len()).ok()?;
    stream.write_all(&len.to_be_bytes()).await.ok()?;
    stream.write_all(packet).await.ok()?;
    read_framed(&mut stream).await
}

/// One length-prefixed DNS message from a TCP stream.
async fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

/// The upstream resolvers a resolv.conf names (port 53), without `skip` (cluster DNS itself).
pub fn upstream_from(path: &Path, skip: &[IpAddr]) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !skip.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The resolv.conf a pod's Linux containers see, as the kubelet writes it for the pod's
/// `dnsPolicy` and `dnsConfig`: with ClusterFirst (the default), cluster DNS at `cluster_dns`
/// and the namespace's search path with ndots 5; with Default (and ClusterFirst on the host
/// network), the node's own resolv.conf, which `node` reads (only then); with None, only what `dnsConfig` says.
/// `dnsConfig`'s nameservers, searches and options are added in each case.
pub fn resolv_conf(
    pod: &Value,
    cluster_dns: Option<Ipv4Addr>,
    node: impl FnOnce() -> String,
) -> String {
    let spec = &pod["spec"];
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let host_network = spec["hostNetwork"] == true;
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let cluster = match (policy, cluster_dns) {
        ("ClusterFirstWithHostNet", Some(_)) => true,
        ("ClusterFirst", Some(_)) => !host_network,
        _ => false,
    };
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        (Vec::new(), Vec::new(), Vec::new());
    if cluster {
        servers.extend(cluster_dns.map(|ip| ip.to_string()));
        searches.extend([
            format!("{namespace}.svc.{DOMAIN}"),
            format!("svc.{DOMAIN}"),
            DOMAIN.to_owned(),
        ]);
        options.push(format!("ndots:{NDOTS}"));
    } else if policy != "None" {
        for line in node().lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
                Some("search" | "domain") => searches.extend(words.map(str::to_owned)),
                Some("options") => options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
    }
    let config = &spec["dnsConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    servers.extend(strings(&config["nameservers"]));
    searches.extend(strings(&config["searches"]));
    for option in config["options"].as_array().into_iter().flatten() {
        let Some(name) = option["name"].as_str() else {
            continue;
        };
        options.retain(|o| o.split(':').next() != Some(name));
        options.push(match option["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_owned(),
        });
    }
    // As the kubelet: at most three nameservers, and each name once.
    servers.dedup();
    servers.truncate(3);
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    let mut out = String::new();
    for server in servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Answers DNS over UDP on `socket` until `stop`.
pub async fn serve_udp(dns: Arc<ClusterDns>, socket: UdpSocket, stop: CancellationToken) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_535];
    while let Some((n, client)) = crate::net::receive(&socket, &mut buf, &stop).await {
        let packet = buf[..n].to_vec();
        let (dns, socket) = (dns.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = dns.handle(&packet, false).await {
                let _ = socket.send_to(&reply, client).await;
            }
        });
    }
}

/// Answers DNS over TCP on `listener` until `stop`.
pub async fn serve_tcp(dns: Arc<ClusterDns>, listener: TcpListener, stop: CancellationToken) {
    while let Some((mut stream, _)) = crate::net::accept(&listener, &stop).await {
        let dns = dns.clone();
        tokio::spawn(async move {
            while let Ok(Some(packet)) =
                tokio::time::timeout(Duration::from_secs(10), read_framed(&mut stream)).await
            {
                let Some(reply) = dns.handle(&packet, true).await else {
                    return;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                if stream.write_all(&len.to_be_bytes()).await.is_err()
                    || stream.write_all(&reply).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": "1"}, "spec": spec})
    }

    fn slice(service: &str, port: Value, endpoints: Value) -> Value {
        json!({"metadata": {"name": format!("{service}-x"), "namespace": "default", "resourceVersion": "1",
            "labels": {SERVICE_NAME: service}},
            "ports": [port], "endpoints": endpoints})
    }

    /// A resolver the tests run as a node's upstream: `example.test` is 100.66.0.9, every
    /// other name is unknown.
    async fn upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let query = Message::from_vec(&buf[..n]).unwrap();
                let mut reply = Message::response(query.metadata.id, OpCode::Query);
                reply.queries = query.queries.clone();
                let q = &query.queries[0];
                if q.name().to_ascii() == "example.test." {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(100, 66, 0, 9))),
                    ));
                } else {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                }
                socket
                    .send_to(&reply.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
        });
        addr
    }

    fn cluster(upstream: Vec<SocketAddr>) -> Arc<ClusterDns> {
        let services = Informer::new("/api/v1/services");
        let slices = Informer::new("/apis/discovery.k8s.io/v1/endpointslices");
        let web = |ip: &str, host: &str, ready: bool| json!({"addresses": [ip], "hostname": host, "conditions": {"ready": ready}});
        services.fill(vec![
            service(
                "hello-svc",
                json!({"clusterIP": "100.65.0.20",
                "ports": [{"name": "http", "port": 8200, "protocol": "TCP"}]}),
            ),
            service(
                "web",
                json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
            ),
            service(
                "all",
                json!({"clusterIP": "None", "publishNotReadyAddresses": true,
                "ports": [{"name": "http", "port": 80}]}),
            ),
            service(
                "alias",
                json!({"type": "ExternalName",
                "externalName": "hello-svc.default.svc.cluster.local"}),
            ),
            service(
                "outside",
                json!({"type": "ExternalName", "externalName": "example.test"}),
            ),
        ]);
        slices.fill(vec![
            slice(
                "web",
                json!({"name": "http", "port": 8000}),
                json!([
                    web("100.64.0.5", "web-0", true),
                    web("100.64.0.6", "web-1", true),
                    web("100.64.0.7", "web-2", false)
                ]),
            ),
            {
                let mut s = slice(
                    "all",
                    json!({"name": "http", "port": 8000}),
                    json!([
                    {"addresses": ["100.64.0.8"], "conditions": {"ready": false}}]),
                );
                s["metadata"]["name"] = json!("all-x");
                s
            },
        ]);
        Arc::new(ClusterDns::new(services, slices, upstream))
    }

    async fn ask(dns: &ClusterDns, name: &str, qtype: RecordType) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let reply = dns.handle(&q.to_vec().unwrap(), false).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, q.metadata.id);
        reply
    }

    fn data(reply: &Message) -> Vec<String> {
        reply.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[tokio::test]
    async fn services_answer_with_their_cluster_ip_and_unknown_names_are_nxdomain() {
        let dns = cluster(Vec::new());
        let r = ask(&dns, "hello-svc.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(data(&r), ["100.65.0.20"]);
        // Mixed case is the same name.
        let r = ask(&dns, "Hello-Svc.Default.SVC.cluster.local.", RecordType::A).await;
        assert_eq!(data(&r), ["100.65.0.20"]);
        // The name exists without IPv6 records: no error, and the zone's SOA for caching.
        let r = ask(
            &dns,
            "hello-svc.default.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        for gone in [
            "nope.default.svc.cluster.local.",
            "x.y.z.cluster.local.",
            "web-9.web.default.svc.cluster.local.",
        ] {
            let r = ask(&dns, gone, RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{gone}");
        }
        let r = ask(&dns, "100-64-3-4.default.pod.cluster.local.", RecordType::A).await;
        assert_eq!(data(&r), ["100.64.3.4"]);
    }

    #[tokio::test]
    async fn headless_services_name_their_ready_endpoints_and_each_hostname() {
        let dns = cluster(Vec::new());
        let r = ask(&dns, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(data(&r), ["100.64.0.5", "100.64.0.6"]);
        let r = ask(&dns, "web-1.web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(data(&r), ["100.64.0.6"]);
        let r = ask(
            &dns,
            "100-64-0-5.web.default.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(data(&r), ["100.64.0.5"]);
        // publishNotReadyAddresses names endpoints that are not ready too.
        let r = ask(&dns, "all.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(data(&r), ["100.64.0.8"]);
    }

    #[tokio::test]
    async fn named_ports_have_srv_records() {
        let dns = cluster(Vec::new());
        let r = ask(
            &dns,
            "_http._tcp.hello-svc.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(
            data(&r),
            ["0 100 8200 hello-svc.default.svc.cluster.local."]
        );
        let r = ask(
            &dns,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(
            data(&r),
            [
                "0 100 8000 web-0.web.default.svc.cluster.local.",
                "0 100 8000 web-1.web.default.svc.cluster.local."
            ]
        );
        let r = ask(
            &dns,
            "_http._udp.hello-svc.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn external_names_are_cnames_followed_inside_and_outside_the_cluster() {
        let dns = cluster(vec![upstream().await]);
        let r = ask(&dns, "alias.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            data(&r),
            ["hello-svc.default.svc.cluster.local.", "100.65.0.20"]
        );
        let r = ask(&dns, "outside.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(data(&r), ["example.test.", "100.66.0.9"]);
        let pod = Resolver::new(dns.clone(), "default");
        assert_eq!(
            pod.lookup("outside").await,
            Ok(vec!["100.66.0.9".parse().unwrap()])
        );
        assert_eq!(
            pod.lookup("alias").await,
            Ok(vec!["100.65.0.20".parse().unwrap()])
        );
    }

    #[tokio::test]
    async fn other_names_go_to_the_upstream_resolver() {
        let dns = cluster(vec![upstream().await]);
        let r = ask(&dns, "example.test.", RecordType::A).await;
        assert_eq!(data(&r), ["100.66.0.9"]);
        assert!(!r.metadata.authoritative);
        let r = ask(&dns, "unknown.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let pod = Resolver::new(dns, "default");
        assert_eq!(
            pod.lookup("example.test").await,
            Ok(vec!["100.66.0.9".parse().unwrap()])
        );
        assert_eq!(pod.lookup("unknown.test").await, Err(LookupError::NotFound));
        // Without an upstream that answers, other names fail as a server failure.
        let alone = cluster(vec!["127.0.0.1:9".parse().unwrap()]);
        let r = ask(&alone, "example.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        let pod = Resolver::new(alone, "default");
        assert_eq!(
            pod.lookup("example.test").await,
            Err(LookupError::Unavailable)
        );
    }

    #[tokio::test]
    async fn pods_resolve_short_names_through_their_namespace_search_path() {
        let dns = cluster(Vec::new());
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        let here = Resolver::new(dns.clone(), "default");
        assert_eq!(here.lookup("hello-svc").await, Ok(ip("100.65.0.20")));
        assert_eq!(here.lookup("web-0.web").await, Ok(ip("100.64.0.5")));
        assert_eq!(
            here.lookup("hello-svc.default.svc.cluster.local").await,
            Ok(ip("100.65.0.20"))
        );
        assert_eq!(
            here.lookup("hello-svc.default.svc.cluster.local.").await,
            Ok(ip("100.65.0.20"))
        );
        assert_eq!(here.lookup("100.64.1.2").await, Ok(ip("100.64.1.2")));
        assert_eq!(here.lookup("localhost").await, Ok(ip("127.0.0.1")));
        let elsewhere = Resolver::new(dns, "other");
        assert_eq!(
            elsewhere.lookup("hello-svc").await,
            Err(LookupError::NotFound)
        );
        assert_eq!(
            elsewhere.lookup("hello-svc.default").await,
            Ok(ip("100.65.0.20"))
        );
        assert_eq!(
            elsewhere.lookup("hello-svc.default.svc").await,
            Ok(ip("100.65.0.20"))
        );
    }

    #[tokio::test]
    async fn bad_packets_get_a_format_error_and_tcp_answers_are_framed() {
        let dns = cluster(Vec::new());
        let reply = dns.handle(&[0x12, 0x34, 0xff], false).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (reply.metadata.id, reply.metadata.response_code),
            (0x1234, ResponseCode::FormErr)
        );
        assert!(dns.handle(&[1], false).await.is_none());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve_tcp(dns, listener, stop.clone()));
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("hello-svc.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let answer = forward_tcp(addr, &q.to_vec().unwrap()).await.unwrap();
        assert_eq!(data(&Message::from_vec(&answer).unwrap()), ["100.65.0.20"]);
        stop.cancel();
    }

    #[test]
    fn pods_get_the_resolv_conf_their_dns_policy_asks_for() {
        let dns = Some(Ipv4Addr::new(100, 65, 0, 10));
        let node = || "search example.test\nnameserver 127.0.0.53\noptions edns0\n".to_owned();
        let pod = |spec: Value| json!({"metadata": {"namespace": "shop"}, "spec": spec});
        assert_eq!(
            resolv_conf(&pod(json!({})), dns, node),
            "nameserver 100.65.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({"dnsPolicy": "Default"})), dns, node),
            "nameserver 127.0.0.53\nsearch example.test\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({"hostNetwork": true})), dns, node),
            "nameserver 127.0.0.53\nsearch example.test\noptions edns0\n",
            "ClusterFirst on the host network is the node's"
        );
        assert!(
            resolv_conf(
                &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
                dns,
                node
            )
            .starts_with("nameserver 100.65.0.10\n")
        );
        assert_eq!(
            resolv_conf(
                &pod(json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["100.66.0.1"], "searches": ["a.test", "a.test"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}})),
                dns,
                node
            ),
            "nameserver 100.66.0.1\nsearch a.test\noptions ndots:2 rotate\n"
        );
        assert_eq!(
            resolv_conf(
                &pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}})),
                dns,
                node
            ),
            "nameserver 100.65.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:1\n"
        );
        // Without cluster DNS (no kube-dns Service yet), ClusterFirst falls back to the node's.
        assert!(resolv_conf(&pod(json!({})), None, node).starts_with("nameserver 127.0.0.53\n"));
    }

    #[test]
    fn upstreams_come_from_resolv_conf_without_cluster_dns_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "# c\nsearch example.test\nnameserver 127.0.0.53\nnameserver 100.65.0.10\nnameserver ::1\noptions ndots:2\n").unwrap();
        let skip = ["100.65.0.10".parse().unwrap()];
        let got = upstream_from(&path, &skip);
        assert_eq!(
            got,
            [
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(upstream_from(&dir.path().join("missing"), &[]).is_empty());
    }
}
