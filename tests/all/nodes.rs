//! Several nodes: extra `wk agent` processes joined to the server, each with its own data
//! directory and node name. DaemonSets, placement by labels, and nodes that leave.

use crate::agent::LONG;
use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stdout};

/// Waits until `kubectl get KIND NAME -o jsonpath=PATH` prints `want`.
fn wait_for(c: &Cluster, kind: &str, name: &str, path: &str, want: &str) {
    let mut last = String::new();
    assert!(
        eventually(LONG, || {
            last = stdout(&c.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")]));
            last == want
        }),
        "{kind}/{name} {path} is {last:?}, not {want:?}\n{}\n{}",
        stdout(&c.kubectl(&["get", "pods", "-o", "wide"])),
        stdout(&c.kubectl(&["get", "events"]))
    );
}

/// The nodes the pods with this label run on, sorted.
fn nodes_of(c: &Cluster, label: &str) -> Vec<String> {
    let out = stdout(&c.kubectl(&[
        "get",
        "pods",
        "-l",
        label,
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]));
    let mut nodes: Vec<String> = out.lines().map(str::to_owned).collect();
    nodes.sort();
    nodes
}

fn daemonset(name: &str, selector: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: {name}\nspec:\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n{selector}      containers:\n      - name: main\n        image: {image}\n        command: [cmd, sleep, \"600000\"]\n"
    )
}

#[test]
fn daemonsets_follow_nodes_and_a_selector_waits_for_its_node() {
    let c = Cluster::with_agent();
    import_all(&c);
    c.kubectl_apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: needs-gpu\nspec:\n  nodeSelector: {gpu: \"true\"}\n  containers:\n  - name: main\n    image: cmd:v1\n    command: [cmd, sleep, \"600000\"]\n",
    );
    c.kubectl_apply(&daemonset("logs", "", "cmd:v1"));
    c.kubectl_apply(&daemonset(
        "gpu-daemon",
        "      nodeSelector: {gpu: \"true\"}\n",
        "cmd:v1",
    ));
    wait_for(&c, "ds", "logs", "{.status.numberReady}", "1");
    wait_for(&c, "ds", "gpu-daemon", "{.status.observedGeneration}", "1");
    assert_eq!(
        c.jsonpath("ds", "gpu-daemon", "{.status.desiredNumberScheduled}"),
        "0"
    );
    // Pending, with kube-scheduler's reason.
    let mut events = String::new();
    assert!(
        eventually(LONG, || {
            events = stdout(&c.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=needs-gpu",
            ]));
            events.contains(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
            )
        }),
        "{events}"
    );
    assert_eq!(c.jsonpath("pod", "needs-gpu", "{.status.phase}"), "Pending");

    // A labelled node joins: the pod lands there, and both sets follow it.
    let mut edge = c.add_agent("edge", &["--node-label", "gpu=true"]);
    wait_for(&c, "pod", "needs-gpu", "{.spec.nodeName}", "edge");
    wait_for(&c, "pod", "needs-gpu", "{.status.phase}", "Running");
    wait_for(&c, "ds", "logs", "{.status.numberReady}", "2");
    wait_for(&c, "ds", "gpu-daemon", "{.status.numberReady}", "1");
    assert_eq!(nodes_of(&c, "app=logs"), ["edge", "wk-test"]);
    assert_eq!(nodes_of(&c, "app=gpu-daemon"), ["edge"]);

    // A rolling update replaces each node's pod.
    c.kubectl_ok(&["set", "image", "ds/logs", "main=cmd2:v1"]);
    c.kubectl_ok(&["rollout", "status", "ds/logs", "--timeout=90s"]);
    let images = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=logs",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(images, "cmd2:v1 cmd2:v1");

    // The node leaves for good: its pods are cleaned up and the sets shrink.
    edge.kill();
    c.kubectl_ok(&["delete", "node", "edge"]);
    wait_for(&c, "ds", "logs", "{.status.desiredNumberScheduled}", "1");
    let mut left = Vec::new();
    assert!(
        eventually(LONG, || {
            left = nodes_of(&c, "app in (logs, gpu-daemon)");
            left == ["wk-test"]
        }),
        "{left:?}\n{}",
        stdout(&c.kubectl(&["get", "pods", "-o", "wide"]))
    );
    assert!(
        eventually(LONG, || stdout(&c.kubectl(&[
            "get",
            "pod",
            "needs-gpu",
            "-o",
            "name"
        ]))
        .is_empty()),
        "the pod of the node that left is still there"
    );
}

#[test]
fn a_killed_nodes_pods_are_replaced_elsewhere_and_cleaned_up_when_it_returns() {
    let c = Cluster::with_agent();
    import_all(&c);
    let mut edge = c.add_agent("edge", &[]);
    // Two replicas spread over the two nodes; they leave an unreachable node after 2 s.
    c.kubectl_apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: keep\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: keep}\n  template:\n    metadata:\n      labels: {app: keep}\n    spec:\n      tolerations:\n      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      containers:\n      - name: main\n        image: cmd:v1\n        command: [cmd, sleep, \"600000\"]\n",
    );
    c.kubectl_ok(&["rollout", "status", "deployment/keep", "--timeout=90s"]);
    assert_eq!(nodes_of(&c, "app=keep"), ["edge", "wk-test"]);
    let on_edge = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=keep",
        "--field-selector",
        "spec.nodeName=edge",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    // Pods get the default not-ready toleration (30 s, ADR 009) besides their own.
    let tolerations = c.jsonpath("pod", &on_edge, "{.spec.tolerations}");
    assert!(
        tolerations.contains("node.kubernetes.io/not-ready")
            && tolerations.contains("\"tolerationSeconds\":30"),
        "{tolerations}"
    );

    let killed = std::time::Instant::now();
    edge.kill();
    // Within the 20 s grace period plus the toleration, the pod is replaced on wk-test.
    let mut running = Vec::new();
    assert!(
        eventually(std::time::Duration::from_secs(90), || {
            running = stdout(&c.kubectl(&[
                "get",
                "pods",
                "-l",
                "app=keep",
                "--field-selector",
                "status.phase=Running",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ]))
            .lines()
            .filter(|l| l.trim() == "wk-test")
            .map(str::to_owned)
            .collect();
            running.len() == 2
        }),
        "{running:?}\n{}",
        stdout(&c.kubectl(&["get", "pods", "-o", "wide"]))
    );
    let took = killed.elapsed();
    assert_eq!(
        c.jsonpath(
            "node",
            "edge",
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "Unknown"
    );
    let taints = c.jsonpath("node", "edge", "{.spec.taints}");
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    assert!(
        took >= std::time::Duration::from_secs(15),
        "replaced before the grace period: {took:?}"
    );
    // The old pod waits, terminating, for its node.
    assert!(
        !c.jsonpath("pod", &on_edge, "{.metadata.deletionTimestamp}")
            .is_empty()
    );

    // The node returns: its stale pod is cleaned up and the taint goes.
    edge.restart();
    assert!(
        eventually(LONG, || stdout(
            &c.kubectl(&["get", "pod", &on_edge, "-o", "name"])
        )
        .is_empty()),
        "the stale pod outlived its node's return"
    );
    wait_for(
        &c,
        "node",
        "edge",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
    );
    assert!(
        eventually(LONG, || !c
            .jsonpath("node", "edge", "{.spec.taints}")
            .contains("unreachable")),
        "{}",
        c.jsonpath("node", "edge", "{.spec.taints}")
    );
}

#[test]
fn drain_evicts_within_disruption_budgets_and_pods_land_on_other_nodes() {
    let c = Cluster::with_agent();
    import_all(&c);
    let _edge = c.add_agent("edge", &[]);
    c.kubectl_apply(&daemonset("logs", "", "cmd:v1"));
    c.kubectl_apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: main\n        image: cmd:v1\n        command: [cmd, sleep, \"600000\"]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\nspec:\n  minAvailable: 2\n  selector:\n    matchLabels: {app: web}\n",
    );
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(nodes_of(&c, "app=web"), ["edge", "wk-test"]);
    wait_for(&c, "pdb", "web", "{.status.currentHealthy}", "2");
    assert_eq!(
        c.jsonpath("pdb", "web", "{.status.disruptionsAllowed}"),
        "0"
    );
    let table = c.kubectl_ok(&["get", "pdb"]);
    assert!(
        table.contains("MIN AVAILABLE") && table.contains("ALLOWED DISRUPTIONS"),
        "{table}"
    );

    // The budget holds: kubectl drain cordons, then retries the eviction until its timeout.
    let out = c.kubectl(&["drain", "edge", "--ignore-daemonsets", "--timeout=7s"]);
    assert!(!out.status.success());
    let err = crate::harness::stderr(&out);
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    assert_eq!(c.jsonpath("node", "edge", "{.spec.unschedulable}"), "true");
    assert_eq!(nodes_of(&c, "app=web"), ["edge", "wk-test"]);

    // With room in the budget the pod is evicted and recreated on the other node; the
    // daemon stays.
    c.kubectl_ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        "{\"spec\":{\"minAvailable\":1}}",
    ]);
    wait_for(&c, "pdb", "web", "{.status.disruptionsAllowed}", "1");
    let out = c.kubectl_ok(&["drain", "edge", "--ignore-daemonsets", "--timeout=90s"]);
    assert!(out.contains("node/edge drained"), "{out}");
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(nodes_of(&c, "app=web"), ["wk-test", "wk-test"]);
    assert_eq!(nodes_of(&c, "app=logs"), ["edge", "wk-test"]);

    // wk drain refuses what it should, then drains the other way.
    c.kubectl_apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\nspec:\n  nodeName: wk-test\n  containers:\n  - name: main\n    image: cmd:v1\n    command: [cmd, sleep, \"600000\"]\n",
    );
    let refused = c.wk(&["drain", "wk-test"]);
    let err = crate::harness::stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        err.contains("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): default/logs-")
            && err.contains("cannot delete Pods that declare no controller (use --force to override): default/stray"),
        "{err}"
    );
    c.wk_ok(&["uncordon", "edge"]);
    let out = c.wk_ok(&[
        "drain",
        "wk-test",
        "--ignore-daemonsets",
        "--force",
        "--timeout=90s",
    ]);
    assert!(
        out.contains("node/wk-test drained") && out.contains("pod/stray evicted"),
        "{out}"
    );
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(nodes_of(&c, "app=web"), ["edge", "edge"]);
}
