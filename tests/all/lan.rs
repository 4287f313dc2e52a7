//! Several hosts on one LAN, as a rack of Raspberry Pis: each test host is a network namespace
//! of the test's own, joined to a bridge in this one by a veth, running a real `wk agent` with
//! its own pod bridge; the server runs here with no agent of its own. Every address comes from
//! the cluster's share of 100.64.0.0/10:
//!
//! - pods: `100.<66+N>.0.0/18` (a /24 per node);
//! - the LAN: `100.<66+N>.64.0/24`, the server at `.254`, host `i` at `.<i+1>`;
//! - Services: `100.<66+N>.128.0/17`.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::agent::LONG;
use crate::harness::{Bridge, Cluster, ExtraAgent, eventually, stderr, stdout};

/// One test host: a network namespace on the LAN with an agent in it.
pub struct Host {
    /// The Node's name (`host-<i>`).
    pub name: String,
    /// Its LAN address, the Node's InternalIP.
    pub ip: String,
    /// Its network namespace (`/run/netns/...`).
    pub netns: PathBuf,
    netns_name: String,
    /// Its agent.
    pub agent: Option<ExtraAgent>,
}

/// A cluster of test hosts on one LAN.
pub struct Lan {
    /// The server (no built-in agent), listening on the LAN.
    pub c: Cluster,
    /// The hosts, each a node.
    pub hosts: Vec<Host>,
    /// The LAN bridge in this namespace.
    bridge: String,
    /// `100.<66+N>`.
    pub prefix: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

impl Lan {
    /// Makes the LAN and `count` hosts, starts the server and an agent on each host, and
    /// waits until every Node is Ready.
    pub fn start(count: usize) -> Self {
        let numbered = tempfile::tempdir().expect("temp dir");
        let Bridge { n, prefix, .. } = Bridge::of(numbered.path());
        let bridge = format!("wkt{n}");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{prefix}.64.254/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        let listen = format!("{prefix}.64.254:0");
        let cluster_cidr = format!("{prefix}.0.0/18");
        let service_cidr = format!("{prefix}.128.0/17");
        let c = Cluster::serving(&[
            "--no-agent",
            "--listen",
            &listen,
            "--cluster-cidr",
            &cluster_cidr,
            "--service-cidr",
            &service_cidr,
        ]);
        let mut lan = Self {
            c,
            hosts: Vec::new(),
            bridge,
            prefix,
        };
        for i in 0..count {
            let netns_name = format!("{}h{i}", lan.bridge);
            let _ = Command::new("ip")
                .args(["netns", "del", &netns_name])
                .output();
            ip(&["netns", "add", &netns_name]);
            let host = Host {
                name: format!("host-{i}"),
                ip: format!("{}.64.{}", lan.prefix, i + 1),
                netns: PathBuf::from(format!("/run/netns/{netns_name}")),
                netns_name,
                agent: None,
            };
            // Pushed first, so that drop removes what is made even if a step fails.
            lan.hosts.push(host);
            let host = lan.hosts.last().expect("just pushed");
            let ns = host.netns_name.as_str();
            ip(&[
                "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["link", "set", ns, "master", &lan.bridge, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{}.64.254", lan.prefix),
            ]);
        }
        for i in 0..count {
            let (name, node_ip, netns) = {
                let h = &lan.hosts[i];
                (h.name.clone(), h.ip.clone(), h.netns.clone())
            };
            let listen = format!("{node_ip}:0");
            let agent = lan.c.join_agent(
                &name,
                Some(netns),
                &["--node-ip", &node_ip, "--agent-listen", &listen],
            );
            lan.hosts[i].agent = Some(agent);
        }
        let ready = || {
            stdout(&lan.c.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status}\n{end}",
            ]))
            .lines()
            .filter(|l| l.ends_with(" True") && l.contains('/'))
            .count()
        };
        assert!(
            eventually(LONG, || ready() == count),
            "nodes not ready:\n{}",
            stdout(&lan.c.kubectl(&["get", "nodes", "-o", "wide"]))
        );
        lan
    }

    /// Runs `cmd` in host `i`'s network namespace.
    pub fn run_in(&self, i: usize, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.hosts[i].netns.display()))
            .args(cmd)
            .output()
            .expect("run nsenter")
    }

    /// curl from host `i`: the body, and whether the request succeeded.
    pub fn curl_from(&self, i: usize, url: &str) -> (String, bool) {
        let out = self.run_in(i, &["curl", "-s", "-m", "10", url]);
        (stdout(&out), out.status.success())
    }

    /// The agent log of host `i`.
    pub fn log(&self, i: usize) -> String {
        self.hosts[i]
            .agent
            .as_ref()
            .map(ExtraAgent::log)
            .unwrap_or_default()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // The agents first (they release their pods' namespaces), then the hosts with every
        // link in them, then the LAN.
        for host in &mut self.hosts {
            host.agent.take();
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns_name])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// A manifest's pod spec pinned to node `host`.
fn pinned(host: &str) -> String {
    format!("nodeSelector: {{kubernetes.io/hostname: {host}}}")
}

#[test]
fn the_seed_scenario_runs_across_three_hosts() {
    let lan = Lan::start(3);
    let c = &lan.c;
    let (a, b, outside) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    // The seed's app on host A, its Service exposed at host C's address; a Wasm client on B.
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hello\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: hello}}\n  template:\n    metadata:\n      labels: {{app: hello}}\n    spec:\n      {}\n      containers:\n      - name: hello\n        image: hello:v1\n        ports: [{{containerPort: 8000}}]\n        env: [{{name: GREETING, value: \"Hello Kubernetes!\"}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: hello-svc\nspec:\n  selector: {{app: hello}}\n  externalIPs: [{}]\n  ports:\n  - {{port: 8200, targetPort: 8000}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: hello-lb\nspec:\n  type: LoadBalancer\n  selector: {{app: hello}}\n  ports:\n  - {{port: 18300, targetPort: 8000}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  {}\n  containers:\n  - name: client\n    image: hello:v1\n    ports: [{{containerPort: 8000}}]\n",
        pinned(&a.name),
        outside.ip,
        pinned(&b.name),
    );
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.kubectl(&["rollout", "status", "deployment", "hello", "--timeout=60s"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), lan.log(0));
    let pods = |selector: &str, path: &str| {
        stdout(&c.kubectl(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            &format!("jsonpath={path}"),
        ]))
    };
    assert_eq!(
        pods("app=hello", "{.items[*].spec.nodeName}"),
        format!("{0} {0}", a.name)
    );
    let hello_ip = pods("app=hello", "{.items[0].status.podIP}");
    let a_range = stdout(&c.kubectl(&["get", "node", &a.name, "-o", "jsonpath={.spec.podCIDR}"]));
    assert!(
        a_range.starts_with(&format!("{}.", lan.prefix)) && a_range.ends_with("/24"),
        "{a_range}"
    );
    let client_ready = || {
        stdout(&c.kubectl(&[
            "get",
            "pod",
            "client",
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ])) == "true"
    };
    assert!(
        eventually(LONG, client_ready),
        "client not ready:\n{}",
        lan.log(1)
    );
    let client_ip = stdout(&c.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]));

    // A pod on B reaches a pod on A at its own address, through the host-gw routes.
    let fetch = |url: &str| lan.curl_from(1, &format!("http://{client_ip}:8000/fetch?url={url}"));
    let direct = format!("http://{hello_ip}:8000/");
    assert!(
        eventually(LONG, || fetch(&direct).0 == "200 Hello Kubernetes!"),
        "{direct} from B: {:?}\nroutes on B: {}\n{}",
        fetch(&direct),
        stdout(&lan.run_in(1, &["ip", "route"])),
        lan.log(1)
    );
    // ... and the Service by name, from the Wasm pod on another node.
    for name in ["hello-svc", "hello-svc.default.svc.cluster.local"] {
        let url = format!("http://{name}:8200/");
        assert!(
            eventually(LONG, || fetch(&url).0 == "200 Hello Kubernetes!"),
            "{url} from B: {:?}",
            fetch(&url)
        );
    }
    // From outside the cluster, at the externalIP (host C's address, served by C's proxy).
    let external = format!("http://{}:8200/", outside.ip);
    assert!(
        eventually(LONG, || crate::agent::curl(&external).0
            == "Hello Kubernetes!"),
        "{external}: {:?}\n{}",
        crate::agent::curl(&external),
        lan.log(2)
    );
    // NodePort and LoadBalancer on every node, and the ClusterIP from every host.
    let node_port = stdout(&c.kubectl(&[
        "get",
        "svc",
        "hello-lb",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]));
    let cluster_ip = stdout(&c.kubectl(&[
        "get",
        "svc",
        "hello-svc",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]));
    for (i, host) in lan.hosts.iter().enumerate() {
        for url in [
            format!("http://{}:{node_port}/", host.ip),
            format!("http://{}:18300/", host.ip),
        ] {
            assert!(
                eventually(LONG, || crate::agent::curl(&url).0 == "Hello Kubernetes!"),
                "{url}: {:?}",
                crate::agent::curl(&url)
            );
        }
        let url = format!("http://{cluster_ip}:8200/");
        assert!(
            eventually(LONG, || lan.curl_from(i, &url).0 == "Hello Kubernetes!"),
            "{url} from {}: {:?}",
            host.name,
            lan.curl_from(i, &url)
        );
    }
    let ingress = stdout(&c.kubectl(&[
        "get",
        "svc",
        "hello-lb",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[*].ip}",
    ]));
    for host in &lan.hosts {
        assert!(ingress.contains(&host.ip), "{} in {ingress}", host.ip);
    }
    // The server reaches each node's agent over the LAN: logs of a pod on host B.
    let out = c.kubectl(&["logs", "client"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// What pods and Services leave on host `i`: its veths, routes, ClusterIPs and netns mounts,
/// with the address records, less what its spare namespaces hold.
fn footprint(lan: &Lan, i: usize) -> (Vec<String>, Vec<String>, String, usize, Vec<String>) {
    let dir = lan.hosts[i]
        .agent
        .as_ref()
        .expect("agent")
        .dir
        .path()
        .to_owned();
    let mut records = Vec::new();
    for range in std::fs::read_dir(dir.join("net"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for file in std::fs::read_dir(range.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            let mut lines = text.lines();
            records.push((
                lines.next().unwrap_or_default().to_owned(),
                lines.next().unwrap_or_default().to_owned(),
            ));
        }
    }
    let spare_links: Vec<String> = records
        .iter()
        .filter(|(holder, _)| holder.starts_with("spare-"))
        .map(|(_, link)| link.clone())
        .collect();
    let held: Vec<String> = records
        .iter()
        .filter(|(holder, _)| !holder.starts_with("spare-"))
        .map(|(holder, _)| holder.clone())
        .collect();
    let links: Vec<String> = stdout(&lan.run_in(i, &["ip", "-br", "link"]))
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|l| l.split('@').next().unwrap_or(l).to_owned())
        .filter(|l| l.starts_with("wkv") && !spare_links.contains(l))
        .collect();
    let mut routes: Vec<String> = stdout(&lan.run_in(i, &["ip", "route"]))
        .lines()
        .map(str::to_owned)
        .collect();
    routes.sort();
    let vips = routes_and_vips(lan, i).1;
    let pod_netns = std::fs::read_dir(dir.join("netns")).map_or(0, |d| d.count());
    let mut leftover = links;
    leftover.extend(held);
    (leftover, routes, vips, pod_netns, spare_links)
}

#[test]
fn a_hundred_pods_and_services_come_and_go_without_leaving_anything_behind() {
    let lan = Lan::start(2);
    let c = &lan.c;
    let settled = |i: usize| {
        let (leftover, _, _, pod_netns, _) = footprint(&lan, i);
        leftover.is_empty() && pod_netns == 0
    };
    for i in 0..2 {
        assert!(
            eventually(LONG, || settled(i)),
            "host {i}: {:?}",
            footprint(&lan, i)
        );
    }
    let before: Vec<_> = (0..2).map(|i| footprint(&lan, i)).collect();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: churn\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {app: churn}\n  template:\n    metadata:\n      labels: {app: churn}\n    spec:\n      containers:\n      - name: hello\n        image: hello:v1\n        ports: [{containerPort: 8000}]\n";
    let out = c.kubectl_stdin(&["apply", "-f", "-"], deployment);
    assert!(out.status.success(), "{}", stderr(&out));
    let running = || {
        stdout(&c.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=churn",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ]))
        .split_whitespace()
        .count()
    };
    // Ten rounds of ten pods, each round with a Service (and its ClusterIP) of its own.
    for round in 0..10 {
        let service = format!("churn-{round}");
        c.kubectl_ok(&[
            "expose",
            "deployment",
            "churn",
            "--name",
            &service,
            "--port",
            "80",
            "--target-port",
            "8000",
        ]);
        c.kubectl_ok(&["scale", "deployment", "churn", "--replicas=10"]);
        assert!(
            eventually(LONG, || running() == 10),
            "round {round}: {} running",
            running()
        );
        c.kubectl_ok(&["scale", "deployment", "churn", "--replicas=0"]);
        c.kubectl_ok(&["delete", "service", &service]);
        assert!(
            eventually(LONG, || running() == 0),
            "round {round}: {} left",
            running()
        );
    }
    let nodes = stdout(&c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=Scheduled",
        "-o",
        "jsonpath={.items[*].message}",
    ]));
    for host in &lan.hosts {
        assert!(nodes.contains(&host.name), "no pod ran on {}", host.name);
    }
    for (i, before) in before.iter().enumerate() {
        let mut last = footprint(&lan, i);
        let clean = eventually(LONG, || {
            last = footprint(&lan, i);
            let (leftover, routes, vips, pod_netns, _) = &last;
            leftover.is_empty() && pod_netns == &0 && routes == &before.1 && vips == &before.2
        });
        assert!(
            clean,
            "host {i} after 100 pods: left {:?}, {} pod namespaces; routes {:?} (were {:?}); ClusterIPs {:?} (were {:?})",
            last.0, last.3, last.1, before.1, last.2, before.2
        );
    }
}

/// wk's own routes on host `i` (routing protocol 0x77), and the ClusterIPs it holds.
fn routes_and_vips(lan: &Lan, i: usize) -> (String, String) {
    let routes = stdout(&lan.run_in(i, &["ip", "route", "show", "proto", "0x77"]));
    let vips = stdout(&lan.run_in(i, &["ip", "-br", "addr", "show", "dev", "wk0-svc"]));
    let mut vips: Vec<&str> = vips
        .split_whitespace()
        .skip(2)
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    vips.sort_unstable();
    (routes, vips.join(" "))
}

#[test]
fn an_agent_stopped_takes_its_routes_and_service_addresses_and_a_restart_brings_them_back() {
    let mut lan = Lan::start(2);
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: far\n  labels: {{app: far}}\nspec:\n  {}\n  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{{containerPort: 8000}}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: near\nspec:\n  {}\n  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{{containerPort: 8000}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: far\nspec:\n  selector: {{app: far}}\n  ports:\n  - {{port: 8200, targetPort: 8000}}\n",
        pinned(&lan.hosts[0].name),
        pinned(&lan.hosts[1].name),
    );
    let out = lan.c.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", stderr(&out));
    let ready = |name: &str| {
        stdout(&lan.c.kubectl(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ])) == "true"
    };
    assert!(
        eventually(LONG, || ready("far") && ready("near")),
        "pods not ready"
    );
    let near_ip = stdout(
        &lan.c
            .kubectl(&["get", "pod", "near", "-o", "jsonpath={.status.podIP}"]),
    );
    let fetch = |lan: &Lan| {
        lan.curl_from(
            1,
            &format!("http://{near_ip}:8000/fetch?url=http://far:8200/"),
        )
        .0
    };
    assert!(
        eventually(LONG, || fetch(&lan) == "200 Hello from wk!\n"),
        "{:?}",
        fetch(&lan)
    );
    let (routes, vips) = routes_and_vips(&lan, 1);
    let far_range = stdout(&lan.c.kubectl(&[
        "get",
        "node",
        &lan.hosts[0].name,
        "-o",
        "jsonpath={.spec.podCIDR}",
    ]));
    assert!(
        routes.contains(&format!("{far_range} via {}", lan.hosts[0].ip)),
        "{routes}"
    );
    assert!(
        vips.split(' ').count() >= 3,
        "kubernetes, kube-dns and far: {vips}"
    );

    // Stopped, the agent takes its routes and ClusterIPs with it; its pod stays, for the next
    // agent to adopt.
    let agent = lan.hosts[1].agent.as_mut().unwrap();
    assert!(
        agent.stop().is_some_and(|s| s.success()),
        "the agent did not stop cleanly"
    );
    assert_eq!(routes_and_vips(&lan, 1), (String::new(), String::new()));
    // Started again, it adopts the pod and puts both back: the pod reaches the Service again.
    lan.hosts[1].agent.as_mut().unwrap().restart();
    assert!(
        eventually(LONG, || routes_and_vips(&lan, 1)
            == (routes.clone(), vips.clone())),
        "{:?}",
        routes_and_vips(&lan, 1)
    );
    assert!(
        eventually(LONG, || fetch(&lan) == "200 Hello from wk!\n"),
        "{:?}",
        fetch(&lan)
    );
    // Killed (no clean-up), and started again: nothing is doubled.
    lan.hosts[1].agent.as_mut().unwrap().kill();
    lan.hosts[1].agent.as_mut().unwrap().restart();
    assert!(
        eventually(LONG, || fetch(&lan) == "200 Hello from wk!\n"),
        "{:?}",
        fetch(&lan)
    );
    assert_eq!(routes_and_vips(&lan, 1), (routes, vips));
}
