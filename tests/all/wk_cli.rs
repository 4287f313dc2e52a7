//! The everyday verbs through wk's own client, cross-checked with kubectl.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use crate::agent::LONG;
use crate::harness::{Cluster, WK, eventually, read_lines, stderr, stdout};
use crate::kubectl::{DEPLOYMENT, pod};

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {node-role.kubernetes.io/control-plane: \"true\"}\nstatus:\n  conditions:\n  - {type: Ready, status: \"True\"}\n  addresses:\n  - {type: InternalIP, address: 100.64.0.7}\n  nodeInfo: {kubeletVersion: wk/0.1.0, machineID: m, systemUUID: s, bootID: b, kernelVersion: k, osImage: o, containerRuntimeVersion: c, kubeProxyVersion: p, operatingSystem: linux, architecture: amd64}\n";

fn wk_apply(c: &Cluster, manifest: &str) -> String {
    let out = c.wk_stdin(&["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "wk apply failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs wk with extra environment variables (the harness's wk() sets only the cluster's).
fn wk_env(c: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(WK);
    cmd.env("HOME", c.home.path())
        .env("KUBECONFIG", &c.kubeconfig)
        .env_remove("KUBE_EDITOR")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wk")
}

/// Every cell starts where its header starts, as kubectl's tab writer lines them up (cells
/// hold no spaces in these tests; an empty cell is all blanks).
fn assert_aligned(table: &str) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|(i, c)| *c != ' ' && (*i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    for line in lines {
        let bytes = line.as_bytes();
        for (n, &s) in starts.iter().enumerate().skip(1) {
            let end = starts
                .get(n + 1)
                .copied()
                .unwrap_or(bytes.len())
                .min(bytes.len());
            let cell = line.get(s.min(bytes.len())..end).unwrap_or_default();
            let starts_here = bytes.get(s).is_some_and(|b| *b != b' ') && bytes[s - 1] == b' ';
            assert!(
                starts_here || cell.trim().is_empty(),
                "column at {s} does not line up:\n{table}"
            );
        }
    }
}

#[test]
fn get_prints_server_side_tables_yaml_labels_and_selections() {
    let c = Cluster::start();
    wk_apply(&c, &pod("alpha", "app: web, tier: front"));
    wk_apply(&c, &pod("beta", "app: db"));

    let table = c.wk_ok(&["get", "pods"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alpha ") && l.contains("0/1") && l.contains("Pending")),
        "{table}"
    );
    assert!(
        table.starts_with("NAME    READY   STATUS"),
        "kubectl's padding of 3: {table}"
    );
    assert_aligned(&table);

    let wide = c.wk_ok(&["get", "po", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("NODE"), "{wide}");
    assert_aligned(&wide);

    let labels = c.wk_ok(&["get", "pods", "--show-labels"]);
    assert!(
        labels.lines().next().unwrap().ends_with("LABELS"),
        "{labels}"
    );
    assert!(
        labels
            .lines()
            .any(|l| l.starts_with("alpha") && l.ends_with("app=web,tier=front")),
        "{labels}"
    );

    let selected = c.wk_ok(&["get", "pods", "-l", "app=web"]);
    assert!(
        selected.contains("alpha") && !selected.contains("beta"),
        "{selected}"
    );
    let set = c.wk_ok(&[
        "get",
        "pods",
        "-l",
        "app in (db,cache),!tier",
        "--no-headers",
    ]);
    assert!(set.starts_with("beta") && !set.contains("NAME"), "{set}");
    let fields = c.wk_ok(&["get", "pods", "--field-selector", "metadata.name!=alpha"]);
    assert!(
        fields.contains("beta") && !fields.contains("alpha"),
        "{fields}"
    );

    let yaml = c.wk_ok(&["get", "pod", "alpha", "-o", "yaml"]);
    assert!(
        yaml.starts_with("apiVersion: v1\nkind: Pod\n")
            && yaml.contains("uid:")
            && yaml.contains("creationTimestamp:"),
        "{yaml}"
    );
    let list = c.wk_ok(&["get", "pods", "-o", "yaml"]);
    assert!(
        list.contains("kind: List") && list.contains("- apiVersion: v1\n  kind: Pod"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&c.wk_ok(&["get", "pod/beta", "-o", "json"])).unwrap();
    assert_eq!(json["metadata"]["labels"]["app"], "db");

    assert_eq!(
        c.wk_ok(&["get", "pods", "-o", "name"]),
        c.kubectl_ok(&["get", "pods", "-o", "name"])
    );
    assert_eq!(
        c.wk_ok(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]),
        "alpha beta"
    );
    assert_eq!(
        c.wk_ok(&["get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}:{.spec.containers[0].ports[0].containerPort}{\"\\n\"}{end}"]),
        "alpha:8000\nbeta:8000\n"
    );
    let rv = c.wk_ok(&["get", "pods", "-o", "jsonpath={.metadata.resourceVersion}"]);
    assert!(
        !rv.is_empty() && rv.chars().all(|ch| ch.is_ascii_digit()),
        "{rv}"
    );
    let columns = c.wk_ok(&[
        "get",
        "pods",
        "-o",
        "custom-columns=NAME:.metadata.name,APP:.metadata.labels.app",
    ]);
    assert_eq!(columns, "NAME    APP\nalpha   web\nbeta    db\n");

    let all = c.wk_ok(&["get", "pods", "-A"]);
    assert!(
        all.lines().next().unwrap().starts_with("NAMESPACE"),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains("alpha")),
        "{all}"
    );
    let ns = c.wk_ok(&["get", "ns"]);
    for name in ["default", "kube-system", "kube-public"] {
        assert!(
            ns.lines()
                .any(|l| l.starts_with(name) && l.contains("Active")),
            "{ns}"
        );
    }
    let both = c.wk_ok(&["get", "pods,cm", "-o", "name"]);
    assert!(both.contains("pod/alpha"), "{both}");

    let empty = c.wk(&["get", "deploy"]);
    assert!(empty.status.success() && stdout(&empty).is_empty());
    assert_eq!(
        stderr(&empty).trim(),
        "No resources found in default namespace."
    );
    let missing = c.wk(&["get", "pod", "nope"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing).trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    let unknown = c.wk(&["get", "widgets"]);
    assert!(!unknown.status.success());
    assert_eq!(
        stderr(&unknown).trim(),
        "error: the server doesn't have a resource type \"widgets\""
    );
}

#[test]
fn get_watch_prints_each_change_after_the_list() {
    let c = Cluster::start();
    wk_apply(&c, &pod("before", "app: w"));
    let mut watch = c.wk_spawn(&["get", "pods", "-w", "--output-watch-events", "--no-headers"]);
    std::thread::sleep(Duration::from_millis(500));
    wk_apply(&c, &pod("after", "app: w"));
    c.wk_ok(&["label", "pod", "after", "x=y"]);
    c.wk_ok(&["delete", "pod", "after"]);
    let lines = read_lines(&mut watch, 4, Duration::from_secs(20));
    let _ = watch.kill();
    let _ = watch.wait();
    let events: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            (
                w.next().unwrap_or_default().to_owned(),
                w.next().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("ADDED", "before"),
            ("ADDED", "after"),
            ("MODIFIED", "after"),
            ("DELETED", "after")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{lines:?}"
    );

    // Without flags the header comes first, then plain rows.
    let mut watch = c.wk_spawn(&["get", "pods", "-w"]);
    let lines = read_lines(&mut watch, 2, Duration::from_secs(20));
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        lines[0].starts_with("NAME") && lines[1].starts_with("before"),
        "{lines:?}"
    );
}

#[test]
fn apply_creates_then_merges_then_sends_nothing_when_unchanged() {
    let c = Cluster::start();
    assert_eq!(wk_apply(&c, DEPLOYMENT), "deployment.apps/web created\n");
    let applied = c.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.kubectl\\.kubernetes\\.io/last-applied-configuration}",
    ]);
    let applied: serde_json::Value = serde_json::from_str(&applied).unwrap();
    assert_eq!(applied["metadata"]["namespace"], "default");

    let changed = DEPLOYMENT.replace("hello:v1", "hello:v2").replace(
        "        env:\n        - name: GREETING\n          value: hello\n",
        "",
    );
    assert_eq!(wk_apply(&c, &changed), "deployment.apps/web configured\n");
    let spec = c.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0]}",
    ]);
    let container: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(container["image"], "127.0.0.1:5000/hello:v2");
    assert_eq!(
        container["ports"][0]["containerPort"], 8000,
        "strategic merge keeps the ports"
    );
    assert!(container.get("env").is_none(), "{container}");

    let rv_before = c.wk_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_eq!(wk_apply(&c, &changed), "deployment.apps/web unchanged\n");
    let rv_after = c.wk_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_eq!(rv_before, rv_after, "a no-op apply must not write");

    // kubectl sees the same last-applied state: its apply of the same manifest is a no-op too.
    assert!(
        c.kubectl_apply(&changed)
            .contains("deployment.apps/web unchanged")
    );

    // A directory with several documents, and a dry run that stores nothing.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\ndata: {a: \"1\"}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n").unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"three"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let path = dir.path().to_str().unwrap();
    let out = c.wk_ok(&["apply", "-f", path, "--dry-run=server"]);
    assert!(
        out.contains("configmap/one created (server dry run)"),
        "{out}"
    );
    assert!(!c.wk(&["get", "cm", "one"]).status.success());
    let out = c.wk_ok(&["apply", "-f", path]);
    assert_eq!(
        out,
        "configmap/one created\nconfigmap/two created\nconfigmap/three created\n"
    );
}

#[test]
fn server_side_apply_creates_and_removes_fields_the_manager_dropped() {
    let c = Cluster::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = c.wk_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert_eq!(
        stdout(&out),
        "configmap/settings serverside-applied\n",
        "{}",
        stderr(&out)
    );
    let out = c.wk_stdin(
        &["apply", "--server-side", "-f", "-"],
        &cm.replace("  b: \"2\"\n", "  c: \"3\"\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let data: serde_json::Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "cm", "settings", "-o", "jsonpath={.data}"]))
            .unwrap();
    assert_eq!(data, serde_json::json!({"a": "1", "c": "3"}));
    assert_eq!(
        c.wk_ok(&[
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}"
        ]),
        "wk"
    );

    let other = cm.replace("  a: \"1\"\n  b: \"2\"\n", "  a: \"9\"\n");
    let out = c.wk_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "-f",
            "-",
        ],
        &other,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Error from server (Conflict)"),
        "{}",
        stderr(&out)
    );
    let out = c.wk_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &other,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        c.wk_ok(&["get", "cm", "settings", "-o", "jsonpath={.data.a}"]),
        "9"
    );
}

#[test]
fn create_refuses_duplicates_and_builds_deployments() {
    let c = Cluster::start();
    let manifest = pod("single", "app: one");
    let out = c.wk_stdin(&["create", "-f", "-"], &manifest);
    assert_eq!(stdout(&out), "pod/single created\n", "{}", stderr(&out));
    let again = c.wk_stdin(&["create", "-f", "-"], &manifest);
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again).trim(),
        "Error from server (AlreadyExists): error when creating \"STDIN\": pods \"single\" already exists"
    );

    let out = c.wk_ok(&[
        "create",
        "deployment",
        "hello",
        "--image",
        "127.0.0.1:5000/hello:v1",
        "--replicas",
        "3",
        "--port",
        "8000",
    ]);
    assert_eq!(out, "deployment.apps/hello created\n");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "hello",
            "-o",
            "jsonpath={.spec.replicas} {.spec.selector.matchLabels.app}"
        ]),
        "3 hello"
    );
    let container = c.kubectl_ok(&["get", "deploy", "hello", "-o", "jsonpath={.spec.template.spec.containers[0].name} {.spec.template.spec.containers[0].ports[0].containerPort}"]);
    assert_eq!(container, "hello 8000");
    assert_eq!(
        c.wk_ok(&["create", "namespace", "scratch"]),
        "namespace/scratch created\n"
    );
    assert_eq!(
        c.wk_ok(&[
            "create",
            "configmap",
            "conf",
            "-n",
            "scratch",
            "--from-literal",
            "k=v"
        ]),
        "configmap/conf created\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "cm",
            "conf",
            "-n",
            "scratch",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "v"
    );
}

#[test]
fn delete_waits_until_gone_and_takes_selectors_and_files() {
    let c = Cluster::start();
    wk_apply(&c, &pod("single", "app: one"));
    assert_eq!(
        c.wk_ok(&["delete", "pod", "single"]),
        "pod \"single\" deleted\n"
    );
    let gone = c.kubectl(&["get", "pod", "single"]);
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
    let missing = c.wk(&["delete", "pod", "single"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing).trim(),
        "Error from server (NotFound): pods \"single\" not found"
    );
    assert!(
        c.wk(&["delete", "pod", "single", "--ignore-not-found"])
            .status
            .success()
    );

    wk_apply(&c, &pod("l1", "group: g"));
    wk_apply(&c, &pod("l2", "group: g"));
    wk_apply(&c, &pod("keep", "group: h"));
    let out = c.wk_ok(&["delete", "pods", "-l", "group=g"]);
    assert_eq!(out, "pod \"l1\" deleted\npod \"l2\" deleted\n");
    assert_eq!(
        c.kubectl_ok(&["get", "pods", "-o", "name"]).trim(),
        "pod/keep"
    );

    wk_apply(&c, DEPLOYMENT);
    let out = c.wk_stdin(&["delete", "-f", "-"], DEPLOYMENT);
    assert_eq!(
        stdout(&out),
        "deployment.apps \"web\" deleted\n",
        "{}",
        stderr(&out)
    );

    // An object held by a finalizer stays until the finalizer goes; --wait=false returns at once.
    wk_apply(
        &c,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n",
    );
    let out = c.wk(&["delete", "cm", "held", "--timeout", "1s"]);
    assert!(
        !out.status.success() && stderr(&out).contains("timed out waiting"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        c.wk_ok(&["delete", "cm", "held", "--wait=false"]),
        "configmap \"held\" deleted\n"
    );
    c.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(eventually(Duration::from_secs(5), || !c
        .wk(&["get", "cm", "held"])
        .status
        .success()));
}

#[test]
fn scale_label_and_annotate_change_what_they_name() {
    let c = Cluster::start();
    wk_apply(&c, DEPLOYMENT);
    assert_eq!(
        c.wk_ok(&["scale", "deployment", "web", "--replicas=5"]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    let out = c.wk(&[
        "scale",
        "deploy/web",
        "--current-replicas=2",
        "--replicas=1",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: Expected replicas to be 2, was 5"
    );
    assert_eq!(
        c.wk_ok(&[
            "scale",
            "deploy/web",
            "--current-replicas=5",
            "--replicas=1"
        ]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "1"
    );

    assert_eq!(
        c.wk_ok(&["label", "deploy", "web", "tier=front"]),
        "deployment.apps/web labeled\n"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "-l", "tier=front", "-o", "name"])
            .trim(),
        "deployment.apps/web"
    );
    let out = c.wk(&["label", "deploy", "web", "tier=back"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: 'tier' already has a value (front), and --overwrite is false"
    );
    assert_eq!(
        c.wk_ok(&["label", "deploy/web", "tier=back", "--overwrite"]),
        "deployment.apps/web labeled\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.labels.tier}"
        ]),
        "back"
    );
    assert_eq!(
        c.wk_ok(&["label", "deploy", "web", "tier-"]),
        "deployment.apps/web unlabeled\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.labels.tier}"
        ]),
        ""
    );

    assert_eq!(
        c.wk_ok(&["annotate", "deploy", "web", "note=hi"]),
        "deployment.apps/web annotated\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.note}"
        ]),
        "hi"
    );
    assert!(
        !c.wk(&["annotate", "deploy", "web", "note=bye"])
            .status
            .success()
    );
    c.wk_ok(&["annotate", "deploy", "web", "note-"]);
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.note}"
        ]),
        ""
    );
}

#[test]
fn edit_puts_back_what_the_editor_changed() {
    let c = Cluster::start();
    wk_apply(&c, DEPLOYMENT);
    let dir = tempfile::tempdir().unwrap();
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let bump = script("bump.sh", "sed -i 's/hello:v1/hello:v2/' \"$1\"");
    let out = wk_env(&c, &["edit", "deployment", "web"], &[("EDITOR", &bump)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "deployment.apps/web edited\n");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "127.0.0.1:5000/hello:v2"
    );

    // Another writer changes the object while the editor is open: the edit sends only what
    // it changed, as kubectl's patch does, so neither change is lost and nothing conflicts.
    let race = script(
        "race.sh",
        "kubectl annotate deployment web other=writer >/dev/null && sed -i 's/hello:v2/hello:v3/' \"$1\"",
    );
    let out = wk_env(&c, &["edit", "deployment", "web"], &[("EDITOR", &race)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        c.jsonpath(
            "deploy",
            "web",
            "{.spec.template.spec.containers[0].image} {.metadata.annotations.other}"
        ),
        "127.0.0.1:5000/hello:v3 writer"
    );

    let out = wk_env(&c, &["edit", "deploy/web"], &[("EDITOR", "true")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), "Edit cancelled, no changes made.");

    let spoil = script(
        "spoil.sh",
        "sed -i 's/^  replicas: 2$/  replicas: many/' \"$1\"",
    );
    let out = wk_env(
        &c,
        &["edit", "deploy", "web"],
        &[("KUBE_EDITOR", &spoil), ("EDITOR", "false")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Error from server")
            && stderr(&out).contains("A copy of your changes has been stored"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
}

#[test]
fn cordon_and_uncordon_a_node() {
    let c = Cluster::start();
    wk_apply(&c, NODE);
    assert_eq!(c.wk_ok(&["cordon", "n1"]), "node/n1 cordoned\n");
    assert_eq!(c.wk_ok(&["cordon", "n1"]), "node/n1 already cordoned\n");
    let nodes = c.wk_ok(&["get", "nodes"]);
    assert!(
        nodes.lines().any(|l| l.starts_with("n1")
            && l.contains("Ready,SchedulingDisabled")
            && l.contains("control-plane")),
        "{nodes}"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"]),
        "true"
    );
    assert_eq!(c.wk_ok(&["uncordon", "n1"]), "node/n1 uncordoned\n");
    assert_eq!(
        c.kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"]),
        ""
    );
    assert_eq!(c.wk_ok(&["uncordon", "n1"]), "node/n1 already uncordoned\n");
}

fn event(
    name: &str,
    kind: &str,
    object: &str,
    namespace: &str,
    uid: &str,
    reason: &str,
    message: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: {name}\n  namespace: default\ninvolvedObject:\n  kind: {kind}\n  name: {object}\n  namespace: \"{namespace}\"\n  uid: {uid}\nreason: {reason}\nmessage: \"{message}\"\ntype: Normal\nsource: {{component: wk}}\ncount: 1\n"
    )
}

#[test]
fn describe_pods_deployments_and_nodes_with_their_events() {
    let c = Cluster::start();
    wk_apply(&c, &pod("described", "app: d"));
    let uid = c.wk_ok(&["get", "pod", "described", "-o", "jsonpath={.metadata.uid}"]);
    wk_apply(
        &c,
        &event(
            "described.1",
            "Pod",
            "described",
            "default",
            &uid,
            "Scheduled",
            "Successfully assigned default/described to n1",
        ),
    );
    let out = c.wk_ok(&["describe", "pod", "described"]);
    assert!(
        out.starts_with("Name:         described\nNamespace:    default\n"),
        "{out}"
    );
    assert!(out.contains("Labels:       app=d\n"), "{out}");
    assert!(out.contains("Containers:\n  main:\n"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("Image:") && l.ends_with("127.0.0.1:5000/hello:v1")), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("Port:") && l.ends_with("8000/TCP")),
        "{out}"
    );
    let events: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .collect();
    assert_eq!(
        events[1].split_whitespace().collect::<Vec<_>>(),
        ["Type", "Reason", "Age", "From", "Message"],
        "{out}"
    );
    assert!(
        events[3].contains("Normal")
            && events[3].contains("Scheduled")
            && events[3].ends_with("Successfully assigned default/described to n1"),
        "{out}"
    );

    wk_apply(&c, DEPLOYMENT);
    let out = c.wk_ok(&["describe", "deploy", "web"]);
    assert!(out.starts_with("Name:"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("Replicas:") && l.contains("2 desired |")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("Selector:") && l.ends_with("app=web")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("StrategyType:") && l.ends_with("RollingUpdate")),
        "{out}"
    );
    assert!(
        out.contains("Pod Template:\n") && out.contains("GREETING:"),
        "{out}"
    );
    assert!(out.contains("NewReplicaSet:"), "{out}");
    // The controller's events, once they are in.
    let mut out = out;
    assert!(
        eventually(LONG, || {
            out = c.wk_ok(&["describe", "deploy", "web"]);
            out.lines()
                .skip_while(|l| !l.starts_with("Events:"))
                .any(|l| {
                    l.contains("ScalingReplicaSet")
                        && l.contains("Scaled up replica set web-")
                        && l.ends_with("from 0 to 2")
                })
        }),
        "{out}"
    );

    wk_apply(&c, NODE);
    let node_uid = c.wk_ok(&["get", "node", "n1", "-o", "jsonpath={.metadata.uid}"]);
    wk_apply(
        &c,
        &event(
            "n1.1",
            "Node",
            "n1",
            "",
            &node_uid,
            "NodeReady",
            "Node n1 status is now: NodeReady",
        ),
    );
    wk_apply(
        &c,
        &pod("onnode", "app: n").replace("spec:\n", "spec:\n  nodeName: n1\n"),
    );
    let out = c.wk_ok(&["describe", "node", "n1"]);
    for want in [
        "Roles:              control-plane",
        "Unschedulable:      false",
        "System Info:",
        "Kubelet Version:",
        "InternalIP:  100.64.0.7",
        "Allocated resources:",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    assert!(
        out.contains("Non-terminated Pods:")
            && out.contains("(1 in total)")
            && out.contains("onnode"),
        "{out}"
    );
    assert!(
        out.contains("NodeReady") && out.contains("Node n1 status is now: NodeReady"),
        "{out}"
    );
    let kubectl = c.kubectl_ok(&["describe", "node", "n1"]);
    assert!(
        kubectl.contains("Node n1 status is now: NodeReady"),
        "{kubectl}"
    );
}

#[test]
fn version_api_resources_and_completion() {
    let c = Cluster::start();
    let out = c.wk_ok(&["version"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("Client Version: v{}", env!("CARGO_PKG_VERSION")).as_str()),
        "{out}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("Server Version: v1.")),
        "{out}"
    );
    assert!(
        c.wk_ok(&["version", "--client"])
            .starts_with("Client Version:")
    );

    let out = c.wk_ok(&["api-resources"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        row("pods"),
        Some(vec!["pods", "po", "v1", "true", "Pod"]),
        "{out}"
    );
    assert_eq!(
        row("deployments"),
        Some(vec![
            "deployments",
            "deploy",
            "apps/v1",
            "true",
            "Deployment"
        ]),
        "{out}"
    );
    assert!(!out.contains("pods/status"), "{out}");
    assert_aligned(&out);
    let names = c.wk_ok(&["api-resources", "--namespaced=false", "-o", "name"]);
    assert!(
        names.lines().any(|l| l == "nodes") && !names.lines().any(|l| l == "pods"),
        "{names}"
    );

    let script = c.wk_ok(&["completion", "bash"]);
    assert!(
        script.contains("_wk()") && script.contains("complete"),
        "{}",
        &script[..200.min(script.len())]
    );
}

#[test]
fn bad_input_gets_errors_that_name_the_problem() {
    let c = Cluster::start();
    let out = c.wk_stdin(
        &["apply", "-f", "-"],
        &pod("extra", "a: b").replace("spec:\n", "spec:\n  colour: red\n"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("Error from server (BadRequest): error when creating \"STDIN\": "),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("strict decoding error: unknown field \"spec.colour\""),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n    labels: {}\n",
    )
    .unwrap();
    let out = c.wk(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("error: error parsing ")
            && stderr(&out).contains("bad.yaml")
            && stderr(&out).contains("line 5"),
        "{}",
        stderr(&out)
    );

    let out = c.wk_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimage\nspec:\n  containers:\n  - name: main\n");
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "The Pod \"noimage\" is invalid: spec.containers[0].image: Required value"
    );
    let out = c.wk_stdin(&["create", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata:\n  name: twice\nspec:\n  containers:\n  - name: a\n  - name: a\n    image: i\n");
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.starts_with("The Pod \"twice\" is invalid: \n* "),
        "{err}"
    );
    assert!(
        err.lines()
            .filter(|l| l.starts_with("* spec.containers["))
            .count()
            >= 2,
        "{err}"
    );

    let out = c.wk_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no matches for kind \"Widget\" in version \"example.com/v1\""),
        "{}",
        stderr(&out)
    );
    let out = c.wk_stdin(&["apply", "-f", "-"], "metadata:\n  name: untyped\n");
    assert!(
        stderr(&out).contains("apiVersion not set, kind not set"),
        "{}",
        stderr(&out)
    );

    // One bad object does not stop the others, but the command still fails.
    let out = c.wk_stdin(
        &["apply", "-f", "-"],
        &format!(
            "{}---\n{}",
            pod("fine", "a: b"),
            pod("worse", "a: b").replace("spec:\n", "spec:\n  colour: red\n")
        ),
    );
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "pod/fine created\n");
    assert!(c.wk(&["get", "pod", "fine"]).status.success());
}

#[test]
fn run_makes_a_deployment_and_a_service_that_answers() {
    let c = Cluster::with_agent();
    crate::guests::import_all(&c);
    let out = c.wk_ok(&[
        "run",
        "web",
        "--image",
        "hello:v1",
        "--port",
        "8000",
        "--service-port",
        "8200",
        "--replicas",
        "2",
    ]);
    assert_eq!(out, "deployment.apps/web created\nservice/web created\n");
    let service = c.kubectl_ok(&[
        "get", "svc", "web", "-o",
        "jsonpath={.spec.type} {.spec.selector.app} {.spec.ports[0].port} {.spec.ports[0].targetPort}",
    ]);
    assert_eq!(service, "ClusterIP web 8200 8000");
    c.kubectl_ok(&["rollout", "status", "deployment", "web", "--timeout=60s"]);
    let ip = c.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let url = format!("http://{ip}:8200/");
    assert!(
        eventually(LONG, || crate::agent::curl(&url).0 == "Hello from wk!\n"),
        "{url}: {:?}",
        crate::agent::curl(&url)
    );
    // Without a port there is nothing to put a Service in front of.
    let out = c.wk(&["run", "job", "--image", "cmd:v1", "--service-port", "80"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--service-port needs --port"),
        "{}",
        stderr(&out)
    );
    // Taken names are refused as kubectl refuses them.
    let out = c.wk(&["run", "web", "--image", "hello:v1"]);
    assert!(
        stderr(&out).contains("deployments.apps \"web\" already exists"),
        "{}",
        stderr(&out)
    );
}
