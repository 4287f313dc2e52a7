//! The everyday verbs through the real kubectl.

use std::time::Duration;

use crate::harness::{Cluster, eventually, read_lines, stderr, stdout};

pub const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: 127.0.0.1:5000/hello:v1
        ports:
        - containerPort: 8000
        env:
        - name: GREETING
          value: hello
"#;

pub fn pod(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  containers:\n  - name: main\n    image: 127.0.0.1:5000/hello:v1\n    ports:\n    - containerPort: 8000\n"
    )
}

#[test]
fn get_prints_server_side_tables_yaml_labels_and_selections() {
    let c = Cluster::start();
    c.kubectl_apply(&pod("alpha", "app: web, tier: front"));
    c.kubectl_apply(&pod("beta", "app: db"));

    let table = c.kubectl_ok(&["get", "pods"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alpha") && l.contains("0/1") && l.contains("Pending")),
        "{table}"
    );

    let wide = c.kubectl_ok(&["get", "po", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("NODE"), "{wide}");

    let labels = c.kubectl_ok(&["get", "pods", "--show-labels"]);
    assert!(
        labels.lines().next().unwrap().ends_with("LABELS"),
        "{labels}"
    );
    assert!(
        labels
            .lines()
            .any(|l| l.starts_with("alpha") && l.contains("app=web,tier=front")),
        "{labels}"
    );

    let selected = c.kubectl_ok(&["get", "pods", "-l", "app=web"]);
    assert!(
        selected.contains("alpha") && !selected.contains("beta"),
        "{selected}"
    );
    let set = c.kubectl_ok(&["get", "pods", "-l", "app in (db,cache),!tier"]);
    assert!(set.contains("beta") && !set.contains("alpha"), "{set}");
    let fields = c.kubectl_ok(&["get", "pods", "--field-selector", "metadata.name!=alpha"]);
    assert!(
        fields.contains("beta") && !fields.contains("alpha"),
        "{fields}"
    );

    let yaml = c.kubectl_ok(&["get", "pod", "alpha", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Pod") && yaml.contains("uid:") && yaml.contains("creationTimestamp:"),
        "{yaml}"
    );
    assert!(
        yaml.contains("imagePullPolicy: IfNotPresent") && yaml.contains("protocol: TCP"),
        "defaults: {yaml}"
    );

    let all = c.kubectl_ok(&["get", "pods", "-A"]);
    assert!(
        all.lines().next().unwrap().starts_with("NAMESPACE"),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains("alpha")),
        "{all}"
    );

    let ns = c.kubectl_ok(&["get", "ns"]);
    for name in ["default", "kube-system", "kube-public"] {
        assert!(
            ns.lines()
                .any(|l| l.starts_with(name) && l.contains("Active")),
            "{ns}"
        );
    }

    let missing = c.kubectl(&["get", "pod", "nope"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("Error from server (NotFound): pods \"nope\" not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn apply_creates_then_merges_then_sends_nothing_when_unchanged() {
    let c = Cluster::start();
    assert!(
        c.kubectl_apply(DEPLOYMENT)
            .contains("deployment.apps/web created")
    );
    let table = c.kubectl_ok(&["get", "deploy"]);
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );

    // A new image and no env: strategic merge keeps the ports, drops env, changes the image.
    let changed = DEPLOYMENT.replace("hello:v1", "hello:v2").replace(
        "        env:\n        - name: GREETING\n          value: hello\n",
        "",
    );
    assert!(
        c.kubectl_apply(&changed)
            .contains("deployment.apps/web configured")
    );
    let spec = c.jsonpath("deploy", "web", "{.spec.template.spec.containers[0]}");
    let container: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(container["image"], "127.0.0.1:5000/hello:v2");
    assert_eq!(container["ports"][0]["containerPort"], 8000);
    assert!(container.get("env").is_none(), "{container}");
    let generation = c.jsonpath("deploy", "web", "{.metadata.generation}");
    assert_eq!(generation, "2");

    let rv_before = c.jsonpath("deploy", "web", "{.metadata.resourceVersion}");
    assert!(
        c.kubectl_apply(&changed)
            .contains("deployment.apps/web unchanged")
    );
    let rv_after = c.jsonpath("deploy", "web", "{.metadata.resourceVersion}");
    assert_eq!(rv_before, rv_after, "a no-op apply must not write");
}

#[test]
fn server_side_apply_creates_and_removes_fields_the_manager_dropped() {
    let c = Cluster::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(
        stdout(&out).contains("configmap/settings serverside-applied"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = c.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &cm.replace("  b: \"2\"\n", "  c: \"3\"\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let data = c.jsonpath("cm", "settings", "{.data}");
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data, serde_json::json!({"a": "1", "c": "3"}));
    let managers = c.jsonpath("cm", "settings", "{.metadata.managedFields[*].manager}");
    assert_eq!(managers, "kubectl");

    // Another applier that sets the same field to something else conflicts unless it forces.
    let other = cm.replace("  a: \"1\"\n  b: \"2\"\n", "  a: \"9\"\n");
    let out = c.kubectl_stdin(
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
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));
    let out = c.kubectl_stdin(
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
    assert_eq!(c.jsonpath("cm", "settings", "{.data.a}"), "9");
}

#[test]
fn create_refuses_duplicates_and_delete_waits_until_gone() {
    let c = Cluster::start();
    let manifest = pod("single", "app: one");
    let out = c.kubectl_stdin(&["create", "-f", "-"], &manifest);
    assert!(
        stdout(&out).contains("pod/single created"),
        "{}",
        stderr(&out)
    );
    let again = c.kubectl_stdin(&["create", "-f", "-"], &manifest);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("(AlreadyExists)")
            && stderr(&again).contains("pods \"single\" already exists"),
        "{}",
        stderr(&again)
    );

    let out = c.kubectl_ok(&["delete", "pod", "single"]);
    assert!(out.contains("pod \"single\" deleted"), "{out}");
    let gone = c.kubectl(&["get", "pod", "single"]);
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));

    c.kubectl_apply(&pod("l1", "group: g"));
    c.kubectl_apply(&pod("l2", "group: g"));
    c.kubectl_apply(&pod("keep", "group: h"));
    let out = c.kubectl_ok(&["delete", "pods", "-l", "group=g"]);
    assert!(
        out.contains("pod \"l1\" deleted") && out.contains("pod \"l2\" deleted"),
        "{out}"
    );
    let left = c.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.trim(), "pod/keep");
}

#[test]
fn delete_of_an_object_with_finalizers_waits_for_them() {
    let c = Cluster::start();
    c.kubectl_apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n");
    let out = c.kubectl_ok(&["delete", "cm", "held", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
    let ts = c.jsonpath("cm", "held", "{.metadata.deletionTimestamp}");
    assert!(!ts.is_empty(), "the object stays, marked for deletion");
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
        .kubectl(&["get", "cm", "held"])
        .status
        .success()));
}

#[test]
fn scale_label_annotate_and_patch_change_what_they_name() {
    let c = Cluster::start();
    c.kubectl_apply(DEPLOYMENT);
    assert!(
        c.kubectl_ok(&["scale", "deployment", "web", "--replicas=5"])
            .contains("deployment.apps/web scaled")
    );
    assert_eq!(c.jsonpath("deploy", "web", "{.spec.replicas}"), "5");
    let scale = c.kubectl_ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["selector"], "app=web");
    let out = c.kubectl(&[
        "scale",
        "deployment",
        "web",
        "--current-replicas=2",
        "--replicas=1",
    ]);
    assert!(
        !out.status.success(),
        "a wrong --current-replicas must fail"
    );

    assert!(
        c.kubectl_ok(&["label", "deploy", "web", "tier=front"])
            .contains("labeled")
    );
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "-l", "tier=front", "-o", "name"])
            .trim(),
        "deployment.apps/web"
    );
    assert!(
        c.kubectl_ok(&["label", "deploy", "web", "tier-"])
            .contains("unlabeled")
    );
    assert!(
        c.kubectl_ok(&["annotate", "deploy", "web", "note=hi"])
            .contains("annotated")
    );
    assert_eq!(
        c.jsonpath("deploy", "web", "{.metadata.annotations.note}"),
        "hi"
    );

    c.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
    ]);
    assert_eq!(c.jsonpath("deploy", "web", "{.spec.replicas}"), "2");
    let bad = c.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/nothing"}]"#,
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("/spec/nothing"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn replace_with_a_stale_resource_version_conflicts() {
    let c = Cluster::start();
    c.kubectl_apply(&pod("standalone", "app: s"));
    let stale = c.kubectl_ok(&["get", "pod", "standalone", "-o", "yaml"]);
    c.kubectl_ok(&["label", "pod", "standalone", "touched=yes"]);
    let out = c.kubectl_stdin(&["replace", "-f", "-"], &stale);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Error from server (Conflict)")
            && err.contains("the object has been modified"),
        "{err}"
    );
}

#[test]
fn cordon_and_uncordon_a_node() {
    let c = Cluster::start();
    c.kubectl_apply("apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {node-role.kubernetes.io/control-plane: \"true\"}\nstatus:\n  conditions:\n  - {type: Ready, status: \"True\"}\n  nodeInfo: {kubeletVersion: wk/0.1.0, machineID: m, systemUUID: s, bootID: b, kernelVersion: k, osImage: o, containerRuntimeVersion: c, kubeProxyVersion: p, operatingSystem: linux, architecture: amd64}\n");
    assert!(c.kubectl_ok(&["cordon", "n1"]).contains("node/n1 cordoned"));
    let nodes = c.kubectl_ok(&["get", "nodes"]);
    assert!(
        nodes.lines().any(|l| l.starts_with("n1")
            && l.contains("Ready,SchedulingDisabled")
            && l.contains("control-plane")),
        "{nodes}"
    );
    assert!(
        c.kubectl_ok(&["uncordon", "n1"])
            .contains("node/n1 uncordoned")
    );
    assert_eq!(c.jsonpath("node", "n1", "{.spec.unschedulable}"), "");
}

#[test]
fn describe_pod_shows_its_spec_and_events() {
    let c = Cluster::start();
    c.kubectl_apply(&pod("described", "app: d"));
    let uid = c.jsonpath("pod", "described", "{.metadata.uid}");
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: described.1\ninvolvedObject:\n  kind: Pod\n  name: described\n  namespace: default\n  uid: {uid}\nreason: Scheduled\nmessage: Successfully assigned default/described to n1\ntype: Normal\nsource: {{component: wk}}\ncount: 1\n"
    );
    c.kubectl_apply(&event);
    let out = c.kubectl_ok(&["describe", "pod", "described"]);
    assert!(out.contains("Name:") && out.contains("described"), "{out}");
    assert!(
        out.contains("Image:") && out.contains("127.0.0.1:5000/hello:v1"),
        "{out}"
    );
    assert!(out.contains("8000/TCP"), "{out}");
    assert!(
        out.contains("Scheduled") && out.contains("Successfully assigned default/described to n1"),
        "{out}"
    );
}

#[test]
fn watch_from_a_resource_version_streams_later_changes() {
    let c = Cluster::start();
    c.kubectl_apply(&pod("before", "app: w"));
    let list: serde_json::Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "--raw", "/api/v1/namespaces/default/pods"]))
            .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!rv.is_empty());
    let mut watch =
        c.kubectl_spawn(&["get", "pods", "-w", "--output-watch-events", "--no-headers"]);
    std::thread::sleep(Duration::from_millis(500));
    c.kubectl_apply(&pod("after", "app: w"));
    c.kubectl_ok(&["label", "pod", "after", "x=y"]);
    c.kubectl_ok(&["delete", "pod", "after"]);
    let lines = read_lines(&mut watch, 4, Duration::from_secs(20));
    let _ = watch.kill();
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

    // A raw watch from the list's resourceVersion replays nothing older and stops by itself.
    let out = c.kubectl_ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ]);
    let types: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"], "{out}");
}

#[test]
fn bad_manifests_get_errors_that_name_the_problem() {
    let c = Cluster::start();
    let out = c.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimage\nspec:\n  containers:\n  - name: main\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is invalid")
            && stderr(&out).contains("spec.containers[0].image: Required value"),
        "{}",
        stderr(&out)
    );

    let out = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &pod("extra", "a: b").replace("spec:\n", "spec:\n  colour: red\n"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("strict decoding error: unknown field \"spec.colour\""),
        "{}",
        stderr(&out)
    );

    let out = c.kubectl_stdin(&["create", "-f", "-"], "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: y}}\n    spec:\n      containers: [{name: c, image: i}]\n");
    assert!(
        stderr(&out).contains("spec.template.metadata.labels"),
        "{}",
        stderr(&out)
    );

    let out = c.kubectl_stdin(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods",
            "-f",
            "-",
        ],
        "{\"kind\": \"Pod\",\n \"metadata\": {\"name\": }}",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not valid JSON") && stderr(&out).contains("line 2"),
        "{}",
        stderr(&out)
    );

    let big = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"x\":\"{}\"}}}}",
        "a".repeat(4 << 20)
    );
    let out = c.kubectl_stdin(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        &big,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("larger than the limit"),
        "{}",
        stderr(&out)
    );

    let out = c.kubectl(&["get", "--raw", "/api/v1/namespaces/default/widgets"]);
    assert!(
        !out.status.success() && stderr(&out).contains("NotFound"),
        "{}",
        stderr(&out)
    );

    let out = c.kubectl_stdin(&["create", "--raw", "/api/v1/namespaces/default/pods", "-f", "-"], "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"t\"},\"spec\":{\"containers\":\"nope\"}}");
    assert!(
        !out.status.success() && stderr(&out).contains("spec.containers"),
        "{}",
        stderr(&out)
    );
    assert!(
        c.kubectl_ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty(),
        "no partial writes"
    );
}

#[test]
fn deleting_a_namespace_deletes_what_is_in_it() {
    let c = Cluster::start();
    c.kubectl_apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n");
    c.kubectl_apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n  namespace: scratch\ndata: {a: b}\n");
    let p = pod("inside", "app: x").replace("metadata:\n", "metadata:\n  namespace: scratch\n");
    c.kubectl_apply(&p);
    assert!(
        c.kubectl_ok(&["delete", "namespace", "scratch"])
            .contains("namespace \"scratch\" deleted")
    );
    assert!(!c.kubectl(&["get", "ns", "scratch"]).status.success());
    assert!(
        c.kubectl_ok(&["get", "pods,cm", "-n", "scratch", "-o", "name"])
            .trim()
            .is_empty()
    );
}

#[test]
fn requests_without_a_valid_token_are_refused() {
    let c = Cluster::start();
    let out = c.kubectl(&["get", "pods", "--token", "wrong"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("You must be logged in to the server"),
        "{}",
        stderr(&out)
    );
}

/// kubectl 1.32's generator commands send protobuf bodies (kubectl-compat.md 3.1).
#[test]
fn generator_commands_send_protobuf_and_create_real_objects() {
    let c = Cluster::start();
    c.kubectl_ok(&["create", "namespace", "team-a"]);
    assert_eq!(
        c.kubectl_ok(&["get", "ns", "team-a", "-o", "jsonpath={.status.phase}"]),
        "Active"
    );

    c.kubectl_ok(&[
        "create",
        "deployment",
        "hello",
        "--image=127.0.0.1:5000/hello:v1",
        "--replicas=3",
        "--port=8000",
        "-n",
        "team-a",
        "--",
        "serve",
        "--verbose",
    ]);
    let d = |path: &str| {
        c.kubectl_ok(&[
            "get",
            "deploy",
            "hello",
            "-n",
            "team-a",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert_eq!(d("{.spec.replicas}"), "3");
    assert_eq!(d("{.spec.selector.matchLabels.app}"), "hello");
    assert_eq!(
        d("{.spec.template.spec.containers[0].image}"),
        "127.0.0.1:5000/hello:v1"
    );
    assert_eq!(
        d("{.spec.template.spec.containers[0].command}"),
        r#"["serve","--verbose"]"#
    );
    assert_eq!(
        d("{.spec.template.spec.containers[0].ports[0].containerPort}"),
        "8000"
    );
    assert_eq!(
        d("{.spec.strategy.type}"),
        "RollingUpdate",
        "defaulted after decoding"
    );
    assert_eq!(d("{.metadata.managedFields[0].manager}"), "kubectl-create");

    c.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
        "--from-literal=level=3",
    ]);
    assert_eq!(
        c.jsonpath("configmap", "settings", "{.data.mode}/{.data.level}"),
        "fast/3"
    );

    c.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
    ]);
    assert_eq!(
        c.jsonpath("secret", "creds", "{.data.password}"),
        "aHVudGVyMg=="
    );
    assert_eq!(c.jsonpath("secret", "creds", "{.type}"), "Opaque");

    c.kubectl_ok(&["create", "service", "nodeport", "web", "--tcp=8200:8000"]);
    assert_eq!(c.jsonpath("service", "web", "{.spec.type}"), "NodePort");
    assert_eq!(
        c.jsonpath(
            "service",
            "web",
            "{.spec.ports[0].port}/{.spec.ports[0].targetPort}"
        ),
        "8200/8000"
    );

    c.kubectl_ok(&[
        "create",
        "job",
        "once",
        "--image=127.0.0.1:5000/hello:v1",
        "--",
        "run",
    ]);
    assert_eq!(
        c.jsonpath("job", "once", "{.spec.template.spec.restartPolicy}"),
        "Never"
    );

    // A name the server refuses is still a clear 422 after protobuf decoding.
    let bad = c.kubectl(&["create", "namespace", "Not_Valid"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("Invalid"), "{}", stderr(&bad));
}

/// Updates own the fields they change (managedFields, operation Update), so a later
/// server-side apply of a different value conflicts until forced, as in Kubernetes.
#[test]
fn server_side_apply_conflicts_with_a_field_another_client_changed() {
    let c = Cluster::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n  level: \"1\"\n";
    let applied = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(applied.status.success(), "{}", stderr(&applied));
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"mode":"slow"}}"#,
    ]);
    let managers = c.jsonpath(
        "configmap",
        "settings",
        "{range .metadata.managedFields[*]}{.manager}/{.operation} {end}",
    );
    assert_eq!(
        managers.trim(),
        "kubectl/Apply kubectl-patch/Update",
        "{managers}"
    );

    let conflict = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(!conflict.status.success());
    let err = stderr(&conflict);
    assert!(
        err.contains("conflict") && err.contains("kubectl-patch") && err.contains(".data.mode"),
        "{err}"
    );
    assert_eq!(c.jsonpath("configmap", "settings", "{.data.mode}"), "slow");

    let forced = c.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        cm,
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(c.jsonpath("configmap", "settings", "{.data.mode}"), "fast");
    let managers = c.jsonpath(
        "configmap",
        "settings",
        "{.metadata.managedFields[*].manager}",
    );
    assert_eq!(
        managers, "kubectl",
        "the patch manager owned only mode, which was taken: {managers}"
    );
}
