//! The controllers of `wk server`, through kubectl against the real server and its agent.

use crate::agent::{LONG, apply, get};
use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stdout};

fn rs_status(c: &Cluster, name: &str, field: &str) -> String {
    stdout(&c.kubectl(&[
        "get",
        "rs",
        name,
        "-o",
        &format!("jsonpath={{.status.{field}}}"),
    ]))
}

fn wait_rs(c: &Cluster, name: &str, field: &str, want: &str) {
    let mut last = String::new();
    assert!(
        eventually(LONG, || {
            last = rs_status(c, name, field);
            last == want
        }),
        "replicaset {name}: status.{field} is {last:?}, not {want:?}\npods:\n{}\nevents:\n{}",
        stdout(&c.kubectl(&["get", "pods", "-o", "wide", "--show-labels"])),
        stdout(&c.kubectl(&["get", "events"]))
    );
}

#[test]
fn a_replicaset_keeps_its_pods_adopts_orphans_and_scales() {
    let c = Cluster::with_agent();
    import_all(&c);
    let container = |indent: &str| {
        [
            "containers:",
            "- name: hello",
            "  image: hello:v1",
            "  imagePullPolicy: IfNotPresent",
            "  ports: [{containerPort: 8000}]",
        ]
        .map(|l| format!("{indent}{l}\n"))
        .concat()
    };
    apply(
        &c,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\n  labels: {{app: web}}\nspec:\n{}",
            container("  ")
        ),
    );
    apply(
        &c,
        &format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n{}",
            container("      ")
        ),
    );
    wait_rs(&c, "web", "readyReplicas", "3");
    assert_eq!(rs_status(&c, "web", "fullyLabeledReplicas"), "3");
    let owner = get(&c, "stray", "{.metadata.ownerReferences[0].name}");
    assert_eq!(owner, "web", "the matching orphan was adopted");
    let names = stdout(&c.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"]));
    assert_eq!(names.lines().count(), 3, "two made, one adopted: {names}");
    assert!(
        names.lines().filter(|n| n.starts_with("pod/web-")).count() == 2,
        "{names}"
    );

    c.kubectl_ok(&["scale", "rs", "web", "--replicas=1"]);
    wait_rs(&c, "web", "replicas", "1");
    wait_rs(&c, "web", "readyReplicas", "1");
    let events = stdout(&c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]));
    assert!(
        events.contains("SuccessfulCreate") && events.contains("SuccessfulDelete"),
        "{events}"
    );

    // A pod that stops matching is released, and replaced.
    let survivor = stdout(&c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        "metadata.deletionTimestamp=",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]));
    let survivor = if survivor.is_empty() {
        stdout(&c.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]))
    } else {
        survivor
    };
    let before = stdout(&c.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"]));
    c.kubectl_ok(&["label", "pod", &survivor, "app=other", "--overwrite"]);
    let mut owners = String::new();
    assert!(
        eventually(LONG, || {
            owners = get(&c, &survivor, "{.metadata.ownerReferences}");
            owners.is_empty()
        }),
        "{survivor} still owned: {owners}"
    );
    let mut now = String::new();
    assert!(
        eventually(LONG, || {
            now = stdout(&c.kubectl(&["get", "pods", "-l", "app=web", "-o", "name"]));
            now.lines().any(|n| !before.contains(n))
        }),
        "no replacement for the released pod: {now}"
    );
    wait_rs(&c, "web", "readyReplicas", "1");
}
