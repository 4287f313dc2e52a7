//! Services through kubectl on the real server with its agent: ClusterIPs from the service
//! range, NodePorts, and Endpoints and EndpointSlices that follow the pods' readiness.

use std::io::{Read, Write};
use std::process::Command;

use crate::agent::{LONG, apply, curl, curl_in, get, pod, wait_for};
use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stderr, stdout};

fn jsonpath(c: &Cluster, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let query = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &query]);
    stdout(&c.kubectl(&args))
}

fn wait_jsonpath(c: &Cluster, what: &[&str], path: &str, want: &str) {
    let mut last = String::new();
    let ok = eventually(LONG, || {
        last = jsonpath(c, what, path);
        last == want
    });
    assert!(ok, "{what:?} {path} is {last:?}, not {want:?}");
}

#[test]
fn a_service_gets_an_address_and_endpoints_that_follow_ready_pods() {
    // A node address of this test's own, so that its NodePort clashes with no other test's.
    let c = Cluster::with_agent_args(&["--node-ip", "127.0.0.76"]);
    import_all(&c);
    let bridge = c.bridge.clone().unwrap();
    let container = |probe: &str| {
        format!(
            "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{{name: http, containerPort: 8000}}]\n    env:\n    - name: MY_IP\n      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}\n{probe}"
        )
    };
    let labelled = |manifest: String| {
        manifest.replacen("metadata:\n", "metadata:\n  labels: {app: hello}\n", 1)
    };
    apply(&c, &labelled(pod("hello-a", &container(""))));
    // Nothing listens on 8001: this one never becomes ready.
    apply(
        &c,
        &labelled(pod(
            "hello-b",
            &container("    readinessProbe: {httpGet: {port: 8001}, periodSeconds: 1}\n"),
        )),
    );
    apply(
        &c,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: hello-svc\nspec:\n  selector: {app: hello}\n  ports:\n  - {name: web, port: 8200, targetPort: http}\n",
    );
    let cluster_ip = jsonpath(&c, &["svc", "hello-svc"], "{.spec.clusterIP}");
    let service_prefix = bridge.service_cidr.trim_end_matches("128.0/17");
    assert!(
        cluster_ip.starts_with(service_prefix)
            && cluster_ip.split('.').nth(2).unwrap().parse::<u8>().unwrap() >= 128,
        "{cluster_ip} is in {}",
        bridge.service_cidr
    );
    wait_for(
        &c,
        "hello-a",
        "{.status.containerStatuses[0].ready}",
        "true",
    );
    wait_for(&c, "hello-b", "{.status.phase}", "Running");
    let ip_a = get(&c, "hello-a", "{.status.podIP}");
    let ip_b = get(&c, "hello-b", "{.status.podIP}");
    wait_jsonpath(
        &c,
        &["endpoints", "hello-svc"],
        "{.subsets[0].addresses[*].ip} {.subsets[0].notReadyAddresses[*].ip} {.subsets[0].ports[0].port}",
        &format!("{ip_a} {ip_b} 8000"),
    );
    let table = stdout(&c.kubectl(&["get", "endpoints", "hello-svc"]));
    assert!(table.contains(&format!("{ip_a}:8000")), "{table}");
    assert!(!table.contains(&ip_b), "not ready, not listed: {table}");
    wait_jsonpath(
        &c,
        &[
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=hello-svc",
        ],
        "{.items[0].endpoints[?(@.conditions.ready==true)].addresses[0]}",
        &ip_a,
    );
    let slices = stdout(&c.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=hello-svc",
    ]));
    assert!(
        slices.contains("IPv4") && slices.contains("8000") && slices.contains(&ip_a),
        "{slices}"
    );
    // The endpoint answers, and so does the Service: from the host and from a pod, through
    // the node's proxy, only ever from the ready pod.
    let (body, ok) = curl(&format!("http://{ip_a}:8000/"));
    assert!(ok && body == "Hello from wk!\n", "{body}");
    let link = format!("{}-svc", bridge.name);
    let held = |ip: &str| {
        let out = Command::new("ip")
            .args(["-br", "addr", "show", "dev", &link])
            .output()
            .unwrap();
        stdout(&out).contains(&format!("{ip}/32"))
    };
    assert!(
        eventually(LONG, || held(&cluster_ip)),
        "{cluster_ip} not on {link}:\n{}",
        crate::agent::tail(&c.log())
    );
    let via_service = format!("http://{cluster_ip}:8200/env/MY_IP");
    assert!(
        eventually(LONG, || curl(&via_service).0.starts_with(&ip_a)),
        "{via_service}: {:?}",
        curl(&via_service)
    );
    for _ in 0..6 {
        let (body, ok) = curl(&via_service);
        assert!(ok && body.starts_with(&ip_a), "host: {body}");
        let (body, ok) = curl_in(&c, "hello-b", &via_service);
        assert!(ok && body.starts_with(&ip_a), "pod: {body}");
    }

    // Pods reach the API server as `kubernetes.default`, at the range's first address.
    let api_ip = jsonpath(&c, &["svc", "kubernetes"], "{.spec.clusterIP}");
    assert_eq!(api_ip, format!("{service_prefix}128.1"));
    let netns = crate::agent::netns(&c, "hello-b");
    let healthz = || {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args([
                "curl",
                "-sk",
                "-m",
                "5",
                &format!("https://{api_ip}/healthz"),
            ])
            .output()
            .unwrap();
        stdout(&out)
    };
    assert!(eventually(LONG, || healthz() == "ok"), "{:?}", healthz());

    // kubectl's own generator: a NodePort Service for one pod.
    let out = c.kubectl(&[
        "expose",
        "pod",
        "hello-a",
        "--name",
        "direct",
        "--port",
        "8300",
        "--target-port",
        "8000",
        "--type",
        "NodePort",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let node_port: u16 = jsonpath(&c, &["svc", "direct"], "{.spec.ports[0].nodePort}")
        .parse()
        .unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let services = stdout(&c.kubectl(&["get", "svc"]));
    assert!(
        services.contains("kubernetes") && services.contains(&format!("8300:{node_port}/TCP")),
        "{services}"
    );
    wait_jsonpath(
        &c,
        &["endpoints", "direct"],
        "{.subsets[0].addresses[*].ip}",
        &ip_a,
    );
    let via_node_port = format!("http://127.0.0.76:{node_port}/env/MY_IP");
    assert!(
        eventually(LONG, || curl(&via_node_port).0.starts_with(&ip_a)),
        "{via_node_port}: {:?}",
        curl(&via_node_port)
    );
    let clash = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: clash\nspec:\n  type: NodePort\n  selector: {{app: hello}}\n  ports:\n  - {{port: 80, nodePort: {node_port}}}\n"),
    );
    assert!(!clash.status.success());
    assert!(
        stderr(&clash).contains("provided port is already allocated"),
        "{}",
        stderr(&clash)
    );

    // The proxy hands a connection for a Wasm pod of its own node straight to the pod's
    // server: no second connection to the pod's address, which a relay would open. One kept
    // open is closed when its endpoint leaves the Service (relabelled out of it here), while
    // the pod runs on.
    let mut kept = std::net::TcpStream::connect((cluster_ip.as_str(), 8200)).unwrap();
    kept.set_read_timeout(Some(LONG)).unwrap();
    kept.write_all(b"GET /env/MY_IP HTTP/1.1\r\nHost: hello-svc\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(&ip_a) {
        let n = kept.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let to_pod = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            crate::agent::netns(&c, "hello-a").display()
        ))
        .args(["ss", "-Htn", "state", "established", "( sport = :8000 )"])
        .output()
        .unwrap();
    assert!(to_pod.status.success(), "{}", stderr(&to_pod));
    assert_eq!(stdout(&to_pod).trim(), "", "a connection into the pod");
    c.kubectl_ok(&["label", "pod", "hello-a", "app=moved", "--overwrite"]);
    let closed_at = std::time::Instant::now();
    let end = kept.read(&mut buf);
    assert!(
        matches!(end, Ok(0))
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?} after {:?}",
        closed_at.elapsed()
    );
    let (body, ok) = curl(&format!("http://{ip_a}:8000/"));
    assert!(
        ok && body == "Hello from wk!\n",
        "the pod serves on: {body}"
    );

    // The ready pod deleted: no address left behind the Service.
    c.kubectl_ok(&["delete", "pod", "hello-a", "--timeout=30s"]);
    wait_jsonpath(
        &c,
        &["endpoints", "hello-svc"],
        "{.subsets[0].addresses[*].ip} {.subsets[0].notReadyAddresses[*].ip}",
        &format!(" {ip_b}"),
    );
    // No ready endpoint: the Service answers nothing, and its address leaves with it.
    assert!(
        eventually(LONG, || !curl(&via_service).1),
        "{:?}",
        curl(&via_service)
    );
    c.kubectl_ok(&["delete", "svc", "hello-svc"]);
    assert!(
        eventually(LONG, || !held(&cluster_ip)),
        "{cluster_ip} still held"
    );
}

#[test]
fn a_load_balancer_and_external_ips_are_served_on_the_node_with_client_affinity() {
    // A node address of this test's own, so that its ports clash with no other test's.
    let c = Cluster::with_agent_args(&["--node-ip", "127.0.0.77"]);
    import_all(&c);
    let spec = "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{containerPort: 8000}]\n    env:\n    - name: MY_IP\n      valueFrom: {fieldRef: {fieldPath: status.podIP}}\n";
    for name in ["lb-a", "lb-b"] {
        apply(
            &c,
            &pod(name, spec).replacen("metadata:\n", "metadata:\n  labels: {app: lb}\n", 1),
        );
    }
    apply(
        &c,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  type: LoadBalancer\n  selector: {app: lb}\n  sessionAffinity: ClientIP\n  externalIPs: [127.0.0.78]\n  ports:\n  - {port: 18200, targetPort: 8000}\n",
    );
    wait_jsonpath(
        &c,
        &["svc", "front"],
        "{.status.loadBalancer.ingress[*].ip}",
        "127.0.0.77",
    );
    let table = stdout(&c.kubectl(&["get", "svc", "front"]));
    assert!(
        table.contains("127.0.0.77,127.0.0.78") || table.contains("127.0.0.78,127.0.0.77"),
        "{table}"
    );
    for name in ["lb-a", "lb-b"] {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
    }
    let ips = [
        get(&c, "lb-a", "{.status.podIP}"),
        get(&c, "lb-b", "{.status.podIP}"),
    ];
    wait_jsonpath(
        &c,
        &["endpoints", "front"],
        "{.subsets[0].addresses[*].ip}",
        &format!("{} {}", ips[0], ips[1]),
    );
    let node_port = jsonpath(&c, &["svc", "front"], "{.spec.ports[0].nodePort}");
    for url in [
        "http://127.0.0.77:18200/env/MY_IP".to_owned(),
        "http://127.0.0.78:18200/env/MY_IP".to_owned(),
        format!("http://127.0.0.77:{node_port}/env/MY_IP"),
    ] {
        assert!(
            eventually(LONG, || {
                let body = curl(&url).0;
                ips.iter().any(|ip| body.starts_with(ip.as_str()))
            }),
            "{url}: {:?}",
            curl(&url)
        );
        // ClientIP affinity: one client, one pod, every time.
        let first = curl(&url).0;
        for _ in 0..5 {
            assert_eq!(curl(&url).0, first, "{url}");
        }
    }
    // A cordoned node serves no LoadBalancer: the ingress follows.
    c.kubectl_ok(&["cordon", "wk-test"]);
    wait_jsonpath(
        &c,
        &["svc", "front"],
        "{.status.loadBalancer.ingress[*].ip}",
        "",
    );
    c.kubectl_ok(&["uncordon", "wk-test"]);
    wait_jsonpath(
        &c,
        &["svc", "front"],
        "{.status.loadBalancer.ingress[*].ip}",
        "127.0.0.77",
    );
}

#[test]
fn udp_reaches_the_endpoints_a_user_lists_for_a_selectorless_service() {
    let c = Cluster::with_agent();
    // An endpoint of the user's own: a UDP echo server on the host.
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from);
        }
    });
    apply(
        &c,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns-like\nspec:\n  ports:\n  - {{name: q, port: 5353, protocol: UDP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-like-1\n  labels: {{kubernetes.io/service-name: dns-like}}\naddressType: IPv4\nports:\n- {{name: q, port: {port}, protocol: UDP}}\nendpoints:\n- addresses: [127.0.0.1]\n  conditions: {{ready: true}}\n"
        ),
    );
    // The endpoint controllers leave a Service without a selector alone.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let endpoints = c.kubectl(&["get", "endpoints", "dns-like"]);
    assert!(!endpoints.status.success(), "{}", stdout(&endpoints));
    let cluster_ip = jsonpath(&c, &["svc", "dns-like"], "{.spec.clusterIP}");
    let client = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    let answered = eventually(LONG, || {
        let _ = client.send_to(b"ping", (cluster_ip.as_str(), 5353));
        matches!(client.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"echo:ping")
    });
    assert!(answered, "no echo through {cluster_ip}:5353/UDP");
}

#[test]
fn a_client_looping_through_a_service_sees_no_errors_once_scaling_settles() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let c = Cluster::with_agent();
    import_all(&c);
    c.kubectl_ok(&[
        "create",
        "deployment",
        "hello",
        "--image",
        "hello:v1",
        "--replicas=3",
        "--port=8000",
    ]);
    c.kubectl_ok(&[
        "expose",
        "deployment",
        "hello",
        "--name",
        "hello-svc",
        "--port",
        "8200",
        "--target-port",
        "8000",
    ]);
    c.kubectl_ok(&["rollout", "status", "deployment", "hello", "--timeout=60s"]);
    let cluster_ip = jsonpath(&c, &["svc", "hello-svc"], "{.spec.clusterIP}");
    let ready = |c: &Cluster| {
        jsonpath(
            c,
            &[
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=hello-svc",
            ],
            "{.items[0].endpoints[?(@.conditions.ready==true)].addresses[0]}",
        )
        .split_whitespace()
        .count()
    };
    assert!(eventually(LONG, || ready(&c) == 3));

    // Each request's start (seconds into the loop) and outcome: whether it got the answer,
    // and what it got otherwise.
    type Outcome = (f64, Result<(), String>);
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let began = std::time::Instant::now();
    let client = {
        let (results, stop) = (results.clone(), stop.clone());
        let url = format!("http://{cluster_ip}:8200/");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let start = began.elapsed().as_secs_f64();
                let out = std::process::Command::new("curl")
                    .args(["-sS", "-m", "10", &url])
                    .output()
                    .expect("run curl");
                let body = stdout(&out);
                let outcome = if out.status.success() && body == "Hello from wk!\n" {
                    Ok(())
                } else {
                    Err(format!(
                        "from {start:.2} to {:.2} s: {} {body:?} {}",
                        began.elapsed().as_secs_f64(),
                        out.status,
                        crate::harness::stderr(&out).trim()
                    ))
                };
                results.lock().unwrap().push((start, outcome));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let answered = |from: usize| {
        results.lock().unwrap()[from..]
            .iter()
            .filter(|(_, r)| r.is_ok())
            .count()
    };
    assert!(
        eventually(LONG, || answered(0) >= 20),
        "the Service never answered"
    );

    c.kubectl_ok(&["scale", "deployment", "hello", "--replicas=0"]);
    assert!(eventually(LONG, || ready(&c) == 0));
    c.kubectl_ok(&["scale", "deployment", "hello", "--replicas=3"]);
    c.kubectl_ok(&["rollout", "status", "deployment", "hello", "--timeout=60s"]);
    assert!(eventually(LONG, || ready(&c) == 3));
    // Endpoint changes reach the proxy within a second; no request made from then on fails.
    // (One made before may still have been on its way through an endpoint that went.)
    std::thread::sleep(std::time::Duration::from_secs(1));
    let settled_at = began.elapsed().as_secs_f64();
    let after = |results: &[Outcome]| -> Vec<Outcome> {
        results
            .iter()
            .filter(|(start, _)| *start >= settled_at)
            .cloned()
            .collect()
    };
    assert!(
        eventually(LONG, || after(&results.lock().unwrap()).len() >= 100),
        "the client stalled"
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let after = after(&results.lock().unwrap());
    let failed: Vec<&String> = after.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed after the endpoints settled (at {settled_at:.2} s): {failed:?}\nthe proxy's log:\n{}\nserver log:\n{}",
        failed.len(),
        after.len(),
        c.log()
            .lines()
            .filter(|l| l.contains("proxy"))
            .collect::<Vec<_>>()
            .join("\n"),
        crate::agent::tail(&c.log())
    );
}

/// A resolver standing in for the node's upstream on `addr`:53 (UDP): `example.test` is
/// 100.127.0.9, other names are unknown. Runs until the test process ends.
fn upstream_resolver(addr: &str) {
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    let socket = std::net::UdpSocket::bind((addr, 53)).expect("bind the test's upstream resolver");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, OpCode::Query);
            reply.queries = query.queries.clone();
            match query.queries.first() {
                Some(q) if q.name().to_ascii() == "example.test." => {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A([100, 127, 0, 9].into())),
                    ));
                }
                _ => reply.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
        }
    });
}

/// Asks a DNS server over UDP for `name`'s A records.
fn dig(server: &str, name: &str) -> Vec<String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    if socket.send_to(&q.to_vec().unwrap(), (server, 53)).is_err() {
        return vec!["unreachable".into()];
    }
    let mut buf = [0u8; 4096];
    let Ok(n) = socket.recv(&mut buf) else {
        return vec!["no answer".into()];
    };
    let reply = Message::from_vec(&buf[..n]).unwrap();
    if reply.answers.is_empty() {
        return vec![format!("{:?}", reply.metadata.response_code)];
    }
    reply.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn pods_resolve_services_and_statefulset_members_through_cluster_dns() {
    upstream_resolver("127.0.0.79");
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.79\n").unwrap();
    let c = Cluster::with_agent_args(&["--resolv-conf", resolv.to_str().unwrap()]);
    import_all(&c);
    let bridge = c.bridge.clone().unwrap();
    let service_prefix = bridge.service_cidr.trim_end_matches("128.0/17");
    let dns_ip = jsonpath(
        &c,
        &["-n", "kube-system", "svc", "kube-dns"],
        "{.spec.clusterIP}",
    );
    assert_eq!(dns_ip, format!("{service_prefix}128.10"));

    apply(
        &c,
        &pod("hello-a", "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{containerPort: 8000}]\n")
            .replacen("metadata:\n", "metadata:\n  labels: {app: hello}\n", 1),
    );
    apply(
        &c,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: hello-svc\nspec:\n  selector: {app: hello}\n  ports:\n  - {name: http, port: 8200, targetPort: 8000}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8000}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: alias\nspec:\n  type: ExternalName\n  externalName: hello-svc.default.svc.cluster.local\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: outside\nspec:\n  type: ExternalName\n  externalName: example.test\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: web\nspec:\n  serviceName: web\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: hello:v1\n        ports: [{containerPort: 8000}]\n",
    );
    let cluster_ip = jsonpath(&c, &["svc", "hello-svc"], "{.spec.clusterIP}");
    wait_for(
        &c,
        "hello-a",
        "{.status.containerStatuses[0].ready}",
        "true",
    );
    wait_for(&c, "web-1", "{.status.containerStatuses[0].ready}", "true");
    let web0 = get(&c, "web-0", "{.status.podIP}");
    let web1 = get(&c, "web-1", "{.status.podIP}");
    wait_jsonpath(
        &c,
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        "{.items[0].endpoints[*].hostname}",
        "web-0 web-1",
    );

    // From the host, at cluster DNS's address: this node's agent answers.
    let fqdn = "hello-svc.default.svc.cluster.local.";
    assert!(
        eventually(LONG, || dig(&dns_ip, fqdn) == [cluster_ip.clone()]),
        "{fqdn}: {:?}\n{}",
        dig(&dns_ip, fqdn),
        crate::agent::tail(&c.log())
    );
    assert_eq!(
        dig(&dns_ip, "web-1.web.default.svc.cluster.local."),
        std::slice::from_ref(&web1)
    );
    assert_eq!(
        dig(&dns_ip, "nope.default.svc.cluster.local."),
        ["NXDomain"]
    );
    assert_eq!(
        dig(&dns_ip, "example.test."),
        ["100.127.0.9"],
        "forwarded upstream"
    );
    assert_eq!(
        dig(&dns_ip, "outside.default.svc.cluster.local."),
        ["example.test.", "100.127.0.9"]
    );

    // A Wasm guest's getaddrinfo goes through wasi:sockets/ip-name-lookup to cluster DNS,
    // with its namespace's search path.
    apply(
        &c,
        &pod(
            "resolver",
            "  restartPolicy: Never\n  containers:\n  - name: resolve\n    image: cmd2:v1\n    args: [resolve, hello-svc, hello-svc.default.svc.cluster.local, web-0.web, web, alias, example.test, kubernetes.default, nope]\n",
        ),
    );
    wait_for(&c, "resolver", "{.status.phase}", "Failed");
    let logs = c.kubectl_ok(&["logs", "resolver"]);
    let mut web = [web0.clone(), web1.clone()];
    web.sort_by_key(|ip| ip.parse::<std::net::Ipv4Addr>().unwrap());
    for want in [
        format!("hello-svc {cluster_ip}\n"),
        format!("hello-svc.default.svc.cluster.local {cluster_ip}\n"),
        format!("web-0.web {web0}\n"),
        format!("web {} {}\n", web[0], web[1]),
        format!("alias {cluster_ip}\n"),
        "example.test 100.127.0.9\n".to_owned(),
        format!("kubernetes.default {service_prefix}128.1\n"),
        "nope error:".to_owned(),
    ] {
        assert!(logs.contains(&want), "{want:?} in:\n{logs}");
    }

    // The resolv.conf a Linux container of the pod would mount: libc's resolver, inside the
    // pod's network namespace, asks cluster DNS at its ClusterIP with the search path.
    let uid = get(&c, "hello-a", "{.metadata.uid}");
    let resolv = c.agent_dir().join("pods").join(&uid).join("resolv.conf");
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        format!(
            "nameserver {dns_ip}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        )
    );
    let netns = crate::agent::netns(&c, "hello-a");
    let getent = |name: &str| {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && nsenter --net={} getent ahostsv4 {name}",
            resolv.display(),
            netns.display()
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        stdout(&out)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(getent("hello-svc"), cluster_ip);
    assert_eq!(getent("web-1.web"), web1);
    assert_eq!(getent("example.test"), "100.127.0.9");

    // Outgoing wasi:http to a Service by its short and full names, through the proxy.
    let ip_a = get(&c, "hello-a", "{.status.podIP}");
    for name in ["hello-svc", "hello-svc.default.svc.cluster.local", "alias"] {
        let url = format!("http://{ip_a}:8000/fetch?url=http://{name}:8200/");
        let (body, ok) = curl(&url);
        assert!(ok && body == "200 Hello from wk!\n", "{url}: {body}");
    }
    let (body, _) = curl(&format!("http://{ip_a}:8000/fetch?url=http://nope:8200/"));
    assert!(
        body.starts_with("error:") && body.contains("DnsError"),
        "{body}"
    );
}
