//! Services through kubectl on the real server with its agent: ClusterIPs from the service
//! range, NodePorts, and Endpoints and EndpointSlices that follow the pods' readiness.

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

    let results: Arc<Mutex<Vec<bool>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (results, stop) = (results.clone(), stop.clone());
        let url = format!("http://{cluster_ip}:8200/");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (body, ok) = curl(&url);
                results
                    .lock()
                    .unwrap()
                    .push(ok && body == "Hello from wk!\n");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let answered = |from: usize| {
        results.lock().unwrap()[from..]
            .iter()
            .filter(|ok| **ok)
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
    // Endpoint changes reach the proxy within a second; from then on, no errors.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let settled = results.lock().unwrap().len();
    assert!(
        eventually(LONG, || results.lock().unwrap().len() >= settled + 100),
        "the client stalled"
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let after = results.lock().unwrap()[settled..].to_vec();
    let failed = after.iter().filter(|ok| !**ok).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed after the endpoints settled",
        after.len()
    );
}
