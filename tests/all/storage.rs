//! PersistentVolumeClaims on wk's node-local storage class, and StatefulSets that keep their
//! data, through kubectl against the real server and its agent.

use std::time::Duration;

use crate::agent::{LONG, get, wait_for};
use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stdout};

fn pvc(c: &Cluster, name: &str, path: &str) -> String {
    stdout(&c.kubectl(&["get", "pvc", name, "-o", &format!("jsonpath={path}")]))
}

fn wait_pvc(c: &Cluster, name: &str, path: &str, want: &str) {
    let mut last = String::new();
    assert!(
        eventually(LONG, || {
            last = pvc(c, name, path);
            last == want
        }),
        "pvc {name}: {path} is {last:?}, not {want:?}\n{}\n{}",
        stdout(&c.kubectl(&["get", "pvc,pv", "-o", "wide"])),
        stdout(&c.kubectl(&["get", "events"]))
    );
}

/// A pod running `cmd ARGS` once, with the claim `claim` at /data.
fn claim_pod(name: &str, claim: &str, args: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: cmd:v1\n    imagePullPolicy: IfNotPresent\n    command: [cmd, {args}]\n    volumeMounts: [{{name: data, mountPath: /data}}]\n  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n"
    )
}

#[test]
fn claims_get_node_local_volumes_that_outlive_pods_and_go_with_the_claim() {
    let c = Cluster::with_agent();
    import_all(&c);
    let classes = c.kubectl_ok(&["get", "storageclass"]);
    assert!(
        classes.contains("local-path (default)")
            && classes.contains("wk.dev/local-path")
            && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );

    // The README's example.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/claim.yaml"))
            .unwrap();
    c.kubectl_apply(&example);
    wait_for(&c, "hello-data", "{.status.phase}", "Running");
    wait_pvc(&c, "data", "{.status.phase}", "Bound");
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=data",
    ]);
    assert!(events.contains("ProvisioningSucceeded"), "{events}");

    // The claim waits for its first pod, then gets a volume on that pod's node.
    c.kubectl_apply(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: notes}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 64Mi}}\n",
    );
    assert_eq!(
        pvc(&c, "notes", "{.spec.storageClassName} {.status.phase}"),
        "local-path Pending"
    );
    let mut events = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            events = stdout(&c.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=notes",
            ]));
            events.contains("waiting for first consumer to be created before binding")
        }),
        "{events}"
    );
    c.kubectl_apply(&claim_pod("writer", "notes", "write, /data/note, kept"));
    wait_for(&c, "writer", "{.status.phase}", "Succeeded");
    wait_pvc(&c, "notes", "{.status.phase}", "Bound");
    let volume = pvc(&c, "notes", "{.spec.volumeName}");
    let node = c.kubectl_ok(&[
        "get",
        "pv",
        &volume,
        "-o",
        "jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.spec.claimRef.name} {.status.phase}",
    ]);
    assert_eq!(node, "wk-test notes Bound");
    let on_disk = c.agent_dir().join("storage").join(&volume).join("note");
    assert_eq!(std::fs::read_to_string(&on_disk).unwrap(), "kept");

    // Another pod reads what the first wrote.
    c.kubectl_ok(&["delete", "pod", "writer"]);
    c.kubectl_apply(&claim_pod("reader", "notes", "read, /data/note"));
    wait_for(&c, "reader", "{.status.phase}", "Succeeded");
    assert_eq!(c.kubectl_ok(&["logs", "reader"]).trim(), "kept");

    // A claim in use is kept while its pod may run; then it goes, its volume (reclaim policy
    // Delete) and the data with it.
    c.kubectl_apply(&claim_pod("holder", "notes", "sleep, \"600000\""));
    wait_for(&c, "holder", "{.status.phase}", "Running");
    c.kubectl_ok(&["delete", "pvc", "notes", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !pvc(&c, "notes", "{.metadata.deletionTimestamp}").is_empty(),
        "the claim is kept while a pod uses it"
    );
    c.kubectl_ok(&["delete", "pod", "holder", "--grace-period=1"]);
    assert!(
        eventually(LONG, || !c
            .kubectl(&["get", "pv", &volume])
            .status
            .success()),
        "the volume was not reclaimed: {}",
        stdout(&c.kubectl(&["get", "pv,pvc"]))
    );
    assert!(
        eventually(Duration::from_secs(30), || !on_disk.exists()),
        "the agent kept the data of a deleted volume"
    );

    // A claim no pod can reach says why its pods wait.
    c.kubectl_apply(&claim_pod("lost", "missing", "sleep, \"1\""));
    let mut why = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            why = get(&c, "lost", "{.status.conditions[0].message}");
            why.contains("persistentvolumeclaim \"missing\" not found")
        }),
        "{why}"
    );
}

#[test]
fn a_statefulset_keeps_each_ordinals_claim_and_data_across_pod_deletion() {
    let c = Cluster::with_agent();
    import_all(&c);
    // Each pod lists /data first (what an earlier pod of its ordinal left), then stamps it.
    c.kubectl_apply(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  replicas: 2\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      initContainers:\n      - {name: list, image: cmd:v1, imagePullPolicy: IfNotPresent, command: [cmd, ls, /data], volumeMounts: [{name: data, mountPath: /data}]}\n      - {name: stamp, image: cmd:v1, imagePullPolicy: IfNotPresent, command: [cmd, write, /data/stamp, here-before], volumeMounts: [{name: data, mountPath: /data}]}\n      containers:\n      - {name: main, image: cmd:v1, imagePullPolicy: IfNotPresent, command: [cmd, sleep, \"600000\"]}\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources: {requests: {storage: 32Mi}}\n",
    );
    wait_for(&c, "db-1", "{.status.phase}", "Running");
    for i in 0..2 {
        let claim = format!("data-db-{i}");
        wait_pvc(&c, &claim, "{.status.phase}", "Bound");
        assert_eq!(pvc(&c, &claim, "{.metadata.labels.app}"), "db");
        assert_eq!(
            get(
                &c,
                &format!("db-{i}"),
                "{.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}"
            ),
            claim
        );
    }
    assert!(
        !c.kubectl_ok(&["logs", "db-0", "-c", "list"])
            .contains("stamp"),
        "a new claim starts empty"
    );
    let first_uid = get(&c, "db-0", "{.metadata.uid}");
    c.kubectl_ok(&["delete", "pod", "db-0", "--grace-period=1"]);
    assert!(
        eventually(LONG, || {
            let uid = get(&c, "db-0", "{.metadata.uid}");
            !uid.is_empty() && uid != first_uid && get(&c, "db-0", "{.status.phase}") == "Running"
        }),
        "db-0 was not made again"
    );
    let listed = c.kubectl_ok(&["logs", "db-0", "-c", "list"]);
    assert!(
        listed.contains("file:/data/stamp:here-before"),
        "db-0's data did not survive its pod: {listed}"
    );
    // Deleting the set keeps the claims (the default retention policy).
    c.kubectl_ok(&["delete", "statefulset", "db"]);
    std::thread::sleep(Duration::from_secs(2));
    let claims = c.kubectl_ok(&["get", "pvc", "-o", "name"]);
    assert!(
        claims.contains("data-db-0") && claims.contains("data-db-1"),
        "{claims}"
    );
}
