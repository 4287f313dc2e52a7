//! `wk server` itself: first start, restarts, shutdown, tokens and HTTP versions.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Cluster, read_lines, stderr, wait_timeout};

fn curl(c: &Cluster, token: Option<&str>, extra: &[&str], path: &str) -> (String, String) {
    let ca = c.data.path().join("server/tls/server-ca.crt");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--cacert"]).arg(&ca).args(extra);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg("-w")
        .arg("\n%{http_code} %{http_version}")
        .arg(format!("{}{path}", c.url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {path} failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_owned(), status.to_owned())
}

#[test]
fn first_start_writes_a_private_kubeconfig_and_tokens_that_later_starts_reuse() {
    let c = Cluster::start();
    let kubeconfig = std::fs::read_to_string(&c.kubeconfig).unwrap();
    let mode = std::fs::metadata(&c.kubeconfig)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    for needle in [
        "certificate-authority-data:",
        "name: default",
        "current-context: default",
        "token:",
        &format!("server: {}", c.url),
    ] {
        assert!(
            kubeconfig.contains(needle),
            "{needle} missing from\n{kubeconfig}"
        );
    }
    let node_token = std::fs::read_to_string(c.data.path().join("node-token")).unwrap();
    assert!(node_token.trim().len() >= 32);
    c.kubectl_apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: survivor\ndata: {k: v}\n");
    let ca = std::fs::read(c.data.path().join("server/tls/server-ca.crt")).unwrap();

    let (status, data) = c.stop();
    assert!(
        status.success(),
        "SIGTERM must drain and exit cleanly, got {status}"
    );
    let c = Cluster::start_in(data);
    assert_eq!(
        std::fs::read_to_string(c.data.path().join("node-token")).unwrap(),
        node_token
    );
    assert_eq!(
        std::fs::read(c.data.path().join("server/tls/server-ca.crt")).unwrap(),
        ca,
        "the CA is reused"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "cm", "survivor", "-o", "jsonpath={.data.k}"]),
        "v"
    );
}

#[test]
fn a_watch_from_before_a_restart_is_told_it_expired() {
    let c = Cluster::start();
    c.kubectl_apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n");
    let old = c.kubectl_ok(&[
        "get",
        "cm",
        "a",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let (_, data) = c.stop();
    let c = Cluster::start_in(data);
    c.kubectl_apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n");
    let older = old.parse::<u64>().unwrap() - 1;
    let out = c.kubectl_ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={older}&timeoutSeconds=2")]);
    let event: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
}

#[test]
fn watches_send_bookmarks_when_asked() {
    let c = Cluster::start();
    let mut child = c.kubectl_spawn(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=4",
    ]);
    let lines = read_lines(&mut child, 1, Duration::from_secs(10));
    let _ = child.kill();
    let event: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(event["type"], "BOOKMARK");
    assert!(
        event["object"]["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty())
    );
}

#[test]
fn health_is_open_and_everything_else_needs_a_token() {
    let c = Cluster::start();
    assert_eq!(curl(&c, None, &[], "/healthz").1, "200 2");
    let (body, status) = curl(&c, None, &[], "/api/v1/pods");
    assert!(status.starts_with("401"), "{status}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    let admin = std::fs::read_to_string(c.data.path().join("server/admin-token")).unwrap();
    let (_, status) = curl(&c, Some(admin.trim()), &["--http1.1"], "/api/v1/pods");
    assert_eq!(status, "200 1.1", "HTTP/1.1 works");
    let (_, status) = curl(&c, Some(admin.trim()), &[], "/api/v1/pods");
    assert_eq!(status, "200 2", "h2 is offered over ALPN");
}

#[test]
fn the_node_token_reaches_only_what_a_node_needs() {
    let c = Cluster::start();
    let node = std::fs::read_to_string(c.data.path().join("node-token")).unwrap();
    let (_, status) = curl(&c, Some(node.trim()), &[], "/api/v1/nodes");
    assert!(status.starts_with("200"), "{status}");
    let (_, status) = curl(
        &c,
        Some(node.trim()),
        &[],
        "/api/v1/namespaces/default/pods",
    );
    assert!(status.starts_with("200"), "{status}");
    let (body, status) = curl(
        &c,
        Some(node.trim()),
        &[],
        "/apis/apps/v1/namespaces/default/deployments",
    );
    assert!(
        status.starts_with("403") && body.contains("Forbidden"),
        "{status} {body}"
    );
    let (body, status) = curl(
        &c,
        Some(node.trim()),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{}",
        ],
        "/api/v1/namespaces/default/secrets",
    );
    assert!(status.starts_with("403"), "{status} {body}");
}

#[test]
fn sigterm_drains_open_watches_and_exits_cleanly() {
    let c = Cluster::start();
    let mut watch = c.kubectl_spawn(&["get", "pods", "-w"]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = c.stop();
    assert!(status.success(), "{status}");
    let watch_status = wait_timeout(&mut watch, Duration::from_secs(10))
        .expect("kubectl get -w ends when the server drains");
    assert!(
        watch_status.success(),
        "kubectl get -w exits 0 when the server closes the stream: {}",
        stderr(&watch.wait_with_output().unwrap())
    );
}
