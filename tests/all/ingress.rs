//! The built-in Ingress controller through kubectl: two hosts to two Services, a path rule, a
//! default backend, TLS from a `kubernetes.io/tls` Secret, and the class that turns it on.

use std::process::Command;

use crate::agent::{LONG, apply, wait_for};
use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stderr, stdout};

/// curl to `url` with `host` resolved to the node's address: the body and the HTTP status.
fn curl_host(host: &str, url: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("{host}:80:127.0.0.80")])
        .args(["--resolve", &format!("{host}:443:127.0.0.80")])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let text = stdout(&out);
    match text.rsplit_once('\n') {
        Some((body, code)) => (body.to_owned(), code.to_owned()),
        None => (String::new(), text),
    }
}

#[test]
fn ingress_routes_hosts_and_paths_to_services_over_http_and_https() {
    // A node address of this test's own, so that its ports 80 and 443 are its own.
    let c = Cluster::with_agent_args(&["--node-ip", "127.0.0.80"]);
    import_all(&c);
    let classes = c.kubectl_ok(&["get", "ingressclass"]);
    assert!(
        classes.contains("wk") && classes.contains("wk.dev/ingress"),
        "{classes}"
    );
    for (name, greeting) in [("one", "one"), ("two", "two"), ("fallback", "fallback")] {
        apply(
            &c,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  nodeName: wk-test\n  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{{containerPort: 8000}}]\n    env: [{{name: GREETING, value: {greeting}}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: web, port: 80, targetPort: 8000}}\n"
            ),
        );
    }
    for name in ["one", "two", "fallback"] {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
    }

    // A CA of the test's own signs the certificate for one.example.test.
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "wk test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["one.example.test".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_path, crt, key_path) = (
        dir.path().join("ca.pem"),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&crt, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    c.kubectl_ok(&[
        "create",
        "secret",
        "tls",
        "one-tls",
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
    ]);

    apply(
        &c,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  ingressClassName: wk\n  defaultBackend:\n    service: {name: fallback, port: {name: web}}\n  tls:\n  - hosts: [one.example.test]\n    secretName: one-tls\n  rules:\n  - host: one.example.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: one, port: {number: 80}}}}\n  - host: two.example.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: two, port: {number: 80}}}}\n      - {path: /env/GREETING, pathType: Exact, backend: {service: {name: one, port: {name: web}}}}\n      - {path: /missing, pathType: Prefix, backend: {service: {name: nothing, port: {number: 80}}}}\n",
    );
    let answers = |host: &str, url: &str, want: &str| {
        let mut last = (String::new(), String::new());
        let ok = eventually(LONG, || {
            last = curl_host(host, url, &[]);
            last.0 == want
        });
        assert!(
            ok,
            "{url} as {host}: {last:?}\n{}",
            crate::agent::tail(&c.log())
        );
    };
    answers("one.example.test", "http://one.example.test/", "one");
    answers("two.example.test", "http://two.example.test/", "two");
    // The Exact path goes to another Service; a longer path falls back to the Prefix rule.
    answers(
        "two.example.test",
        "http://two.example.test/env/GREETING",
        "one",
    );
    answers(
        "two.example.test",
        "http://two.example.test/env/GREETING/",
        "env GREETING/ not set\n",
    );
    answers(
        "other.example.test",
        "http://other.example.test/",
        "fallback",
    );
    let (body, code) = curl_host("two.example.test", "http://two.example.test/missing", &[]);
    assert_eq!(
        (body.as_str(), code.as_str()),
        ("no available server\n", "503")
    );

    // HTTPS: the Secret's certificate for its host, verified against the test's CA.
    let ca_arg = ca_path.to_str().unwrap();
    let (body, code) = curl_host(
        "one.example.test",
        "https://one.example.test/",
        &["--cacert", ca_arg],
    );
    assert_eq!((body.as_str(), code.as_str()), ("one", "200"));
    // Another name gets the node's own certificate, which the CA did not sign.
    let (_, code) = curl_host(
        "two.example.test",
        "https://two.example.test/",
        &["--cacert", ca_arg],
    );
    assert_eq!(code, "000", "two.example.test is not covered by one-tls");
    let (body, _) = curl_host("two.example.test", "https://two.example.test/", &["-k"]);
    assert_eq!(body, "two");

    // kubectl shows the class, the hosts, the node's address and the ports.
    let mut table = String::new();
    assert!(
        eventually(LONG, || {
            table = c.kubectl_ok(&["get", "ingress", "web"]);
            table.contains("127.0.0.80")
        }),
        "{table}"
    );
    assert!(
        table.contains("wk")
            && table.contains("one.example.test,two.example.test")
            && table.contains("80, 443"),
        "{table}"
    );

    // kubectl's generator sends protobuf, with the rule's value inlined in JSON; an Ingress
    // that names no class gets the default one.
    c.kubectl_ok(&[
        "create",
        "ingress",
        "made",
        "--rule=four.example.test/*=two:web",
    ]);
    let made = c.kubectl_ok(&[
        "get", "ingress", "made", "-o",
        "jsonpath={.spec.ingressClassName} {.spec.rules[0].host} {.spec.rules[0].http.paths[0].pathType} {.spec.rules[0].http.paths[0].backend.service.name}",
    ]);
    assert_eq!(
        made, "wk four.example.test Prefix two",
        "the default class is set"
    );
    answers("four.example.test", "http://four.example.test/", "two");

    // An Ingress of another class is not served; without the class wk, nothing is.
    apply(
        &c,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: theirs\nspec:\n  ingressClassName: nginx\n  rules:\n  - host: three.example.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: two, port: {number: 80}}}}\n",
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        curl_host("three.example.test", "http://three.example.test/", &[]).0,
        "fallback"
    );
    let out = c.kubectl(&["delete", "ingressclass", "wk"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(LONG, || curl_host(
            "one.example.test",
            "http://one.example.test/",
            &[]
        )
        .1 == "000"),
        "still served without its class"
    );
}
