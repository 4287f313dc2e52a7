//! Service admission: a ClusterIP from the service CIDR and a NodePort from 30000–32767 for each
//! port that needs one, as kube-apiserver's allocators give them. A requested address or port
//! is taken if it is in range and free, else refused with Kubernetes' message; an unrequested
//! one is a free one picked at random. What is allocated is read from the Services stored, under
//! a lock held until the new Service is stored, so nothing is given twice and a deleted
//! Service's address and ports are free again at once.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, Cause};
use super::resources::{self, ResourceInfo};
use super::{ApiState, meta_str};
use crate::net::cidr::Cidr;

/// The range NodePorts come from, as kube-apiserver's `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The addresses and ports the other Services hold.
struct Taken {
    ips: HashSet<Ipv4Addr>,
    node_ports: HashSet<(u16, String)>,
}

/// What `spec.type` asks of the allocators.
fn kind(spec: &Value) -> &str {
    spec["type"].as_str().unwrap_or("ClusterIP")
}

/// Whether the ports of a Service of this spec get NodePorts.
fn wants_node_ports(spec: &Value) -> bool {
    match kind(spec) {
        "NodePort" => true,
        "LoadBalancer" => spec["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

impl ApiState {
    /// Gives a Service its ClusterIP and NodePorts, keeping those of `old` (an update that
    /// leaves them out keeps them, as Kubernetes does) and checking requested ones. The guard
    /// it returns is to be held until the Service is stored.
    ///
    /// # Errors
    /// 422 for an address or port out of range, taken, or changed after it was set; 500 when
    /// the range is full.
    pub async fn admit_service(
        &self,
        res: &'static ResourceInfo,
        service: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.service_lock.lock().await;
        self.cache.sync().await?;
        let name = meta_str(service, "name").unwrap_or_default().to_owned();
        let ns = meta_str(service, "namespace")
            .unwrap_or_default()
            .to_owned();
        let taken = self.taken_by_others(&ns, &name);
        let mut causes = Vec::new();
        if !service["spec"].is_object() {
            service["spec"] = json!({});
        }
        let old_spec = old.map(|o| &o["spec"]);
        self.cluster_ip(&mut service["spec"], old_spec, &taken, &mut causes)?;
        node_ports(&mut service["spec"], old_spec, &taken, &mut causes)?;
        if causes.is_empty() {
            Ok(guard)
        } else {
            Err(ApiError::invalid(res, &name, causes))
        }
    }

    /// Every ClusterIP and NodePort held by a Service other than `ns/name`.
    fn taken_by_others(&self, ns: &str, name: &str) -> Taken {
        let services = resources::by_kind("Service").expect("services are served");
        let (all, _, _) = self
            .cache
            .list(&services.prefix(None), None, None, |_| true);
        let mut taken = Taken {
            ips: HashSet::new(),
            node_ports: HashSet::new(),
        };
        for (_, s) in all {
            if meta_str(&s, "namespace") == Some(ns) && meta_str(&s, "name") == Some(name) {
                continue;
            }
            for ip in s["spec"]["clusterIPs"].as_array().into_iter().flatten() {
                if let Some(ip) = ip.as_str().and_then(|i| i.parse().ok()) {
                    taken.ips.insert(ip);
                }
            }
            for p in s["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(port) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                    let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
                    taken.node_ports.insert((port, protocol));
                }
            }
        }
        taken
    }

    fn cluster_ip(
        &self,
        spec: &mut Value,
        old: Option<&Value>,
        taken: &Taken,
        causes: &mut Vec<Cause>,
    ) -> ApiResult<()> {
        let range = self.service_cidr;
        let requested = spec["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .map(str::to_owned);
        let previous = old
            .filter(|o| kind(o) != "ExternalName")
            .and_then(|o| o["clusterIP"].as_str())
            .filter(|ip| !ip.is_empty())
            .map(str::to_owned);
        if kind(spec) == "ExternalName" {
            if requested.is_some() && requested != previous {
                causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    requested.unwrap_or_default(),
                    "may not be set when `type` is 'ExternalName'",
                ));
            }
            // An update to ExternalName gives the address back.
            if let Some(s) = spec.as_object_mut() {
                s.remove("clusterIP");
                s.remove("clusterIPs");
            }
            return Ok(());
        }
        let ip = match (requested, previous) {
            (Some(r), Some(p)) if r != p => {
                causes.push(Cause::invalid(
                    "spec.clusterIPs[0]",
                    &r,
                    "may not change once set",
                ));
                return Ok(());
            }
            (_, Some(p)) => p,
            (Some(r), None) if r == "None" => r,
            (Some(r), None) => {
                match r.parse::<Ipv4Addr>() {
                    Err(_) => causes.push(Cause::invalid(
                        "spec.clusterIPs[0]",
                        &r,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )),
                    Ok(ip)
                        if !range.contains(ip)
                            || ip == range.network()
                            || Some(ip) == broadcast(range) =>
                    {
                        causes.push(Cause::invalid(
                            "spec.clusterIPs",
                            format!("[{r}]"),
                            format!("failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {range}"),
                        ));
                    }
                    Ok(ip) if taken.ips.contains(&ip) => causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        format!("[{r}]"),
                        format!("failed to allocate IP {r}: provided IP is already allocated"),
                    )),
                    Ok(_) => {}
                }
                r
            }
            (None, None) => free_ip(range, &taken.ips)
                .ok_or_else(|| {
                    ApiError::internal(format!(
                        "failed to allocate a serviceIP: range is full ({range})"
                    ))
                })?
                .to_string(),
        };
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        if spec["ipFamilies"].is_null() {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec["ipFamilyPolicy"].is_null() {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        Ok(())
    }
}

/// Gives each port of a NodePort or LoadBalancer Service a NodePort (the one it had, else the
/// one requested if free, else a free one); takes them away from the other types.
fn node_ports(
    spec: &mut Value,
    old: Option<&Value>,
    taken: &Taken,
    causes: &mut Vec<Cause>,
) -> ApiResult<()> {
    let wanted = wants_node_ports(spec);
    let creating = old.is_none();
    let ty = kind(spec).to_owned();
    if wanted && spec["externalTrafficPolicy"].is_null() {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if ty == "LoadBalancer" && spec["allocateLoadBalancerNodePorts"].is_null() {
        spec["allocateLoadBalancerNodePorts"] = json!(true);
    }
    let old_ports: Vec<Value> = old
        .and_then(|o| o["ports"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut mine: HashSet<(u16, String)> = HashSet::new();
    let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (i, p) in ports.iter_mut().enumerate() {
        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
        let requested = p["nodePort"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0);
        if !wanted {
            if requested.is_some() && creating {
                causes.push(Cause {
                    reason: "FieldValueForbidden",
                    message: format!("Forbidden: may not be used when `type` is '{ty}'"),
                    field: format!("spec.ports[{i}].nodePort"),
                });
            }
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
            continue;
        }
        let previous = old_ports
            .iter()
            .find(|o| o["port"] == p["port"] && o["protocol"].as_str().unwrap_or("TCP") == protocol)
            .and_then(|o| o["nodePort"].as_u64())
            .and_then(|n| u16::try_from(n).ok());
        let port = match requested {
            Some(r) if Some(r) == previous => r,
            Some(r) => {
                if !NODE_PORTS.contains(&r) {
                    // Validation names this one.
                    continue;
                }
                if taken.node_ports.contains(&(r, protocol.clone()))
                    || mine.contains(&(r, protocol.clone()))
                {
                    causes.push(Cause::invalid_number(
                        format!("spec.ports[{i}].nodePort"),
                        i64::from(r),
                        "provided port is already allocated",
                    ));
                    continue;
                }
                r
            }
            None => match previous {
                Some(p) => p,
                None => free_node_port(&protocol, taken, &mine).ok_or_else(|| {
                    ApiError::internal("failed to allocate a nodePort: range is full (30000-32767)")
                })?,
            },
        };
        mine.insert((port, protocol));
        p["nodePort"] = json!(port);
    }
    Ok(())
}

/// The range's last address, which no Service gets.
fn broadcast(range: Cidr) -> Option<Ipv4Addr> {
    range.host(range.size() - 1)
}

/// A free address of `range` at random: neither the network nor the last address, nor the
/// first host, which the `kubernetes` Service holds, nor the tenth, cluster DNS's.
fn free_ip(range: Cidr, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let hosts = range.size().checked_sub(3)?;
    if hosts == 0 {
        return None;
    }
    let dns = dns_ip(range);
    let start = rand::random::<u64>() % hosts;
    (0..hosts)
        .map(|i| range.host(2 + (start + i) % hosts))
        .find_map(|ip| ip.filter(|ip| !taken.contains(ip) && Some(*ip) != dns))
}

/// Cluster DNS's address: the range's tenth host, as Kubernetes clusters conventionally
/// have it (10.96.0.10, k3s's 10.43.0.10); `None` in a range too small to hold it.
pub fn dns_ip(range: Cidr) -> Option<Ipv4Addr> {
    range.host(10).filter(|ip| Some(*ip) != broadcast(range))
}

/// A free NodePort at random.
fn free_node_port(protocol: &str, taken: &Taken, mine: &HashSet<(u16, String)>) -> Option<u16> {
    let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
    let start = rand::random::<u32>() % span;
    (0..span)
        .map(|i| NODE_PORTS.start() + u16::try_from((start + i) % span).unwrap_or(0))
        .find(|p| {
            let key = (*p, protocol.to_owned());
            !taken.node_ports.contains(&key) && !mine.contains(&key)
        })
}

/// The `kubernetes` Service of the `default` namespace: the API server at the first host of
/// the service range, port 443, as every Kubernetes cluster has it.
pub fn kubernetes_service(range: Cidr) -> Value {
    let ip = range.host(1).map(|ip| ip.to_string()).unwrap_or_default();
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            "sessionAffinity": "None"}})
}

/// The `kube-dns` Service of `kube-system`: where every node's agent answers cluster DNS,
/// on port 53 over UDP and TCP. It selects no pods; each agent serves it itself.
pub fn kube_dns_service(range: Cidr) -> Option<Value> {
    let ip = dns_ip(range)?.to_string();
    let (namespace, name) = crate::dns::SERVICE;
    Some(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "wk-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}],
            "sessionAffinity": "None"}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Cidr {
        "100.65.0.0/29".parse().unwrap()
    }

    #[test]
    fn free_addresses_skip_the_network_the_api_and_the_last_address() {
        let mut taken = HashSet::new();
        let mut given = Vec::new();
        while let Some(ip) = free_ip(range(), &taken) {
            taken.insert(ip);
            given.push(ip.to_string());
        }
        given.sort();
        assert_eq!(
            given,
            [
                "100.65.0.2",
                "100.65.0.3",
                "100.65.0.4",
                "100.65.0.5",
                "100.65.0.6"
            ]
        );
    }

    #[test]
    fn node_ports_are_kept_requested_or_free_and_never_shared() {
        let taken = Taken {
            ips: HashSet::new(),
            node_ports: [(30080, "TCP".to_owned())].into(),
        };
        let old = json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]});
        let mut spec = json!({"type": "NodePort", "ports": [
            {"port": 80, "protocol": "TCP"},
            {"port": 81, "protocol": "TCP", "nodePort": 30081},
            {"port": 82, "protocol": "TCP"}]});
        let mut causes = Vec::new();
        node_ports(&mut spec, Some(&old), &taken, &mut causes).unwrap();
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(
            spec["ports"][0]["nodePort"], 31000,
            "kept from the old spec"
        );
        assert_eq!(spec["ports"][1]["nodePort"], 30081, "requested and free");
        let third = spec["ports"][2]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&third) && ![30080, 30081, 31000].contains(&third));

        let mut clash = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]});
        node_ports(&mut clash, None, &taken, &mut causes).unwrap();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.ports[0].nodePort");
        assert_eq!(
            causes[0].message,
            "Invalid value: 30080: provided port is already allocated"
        );

        let mut plain = json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30090}]});
        let mut forbidden = Vec::new();
        node_ports(&mut plain, None, &taken, &mut forbidden).unwrap();
        assert_eq!(forbidden[0].reason, "FieldValueForbidden");
    }
}
