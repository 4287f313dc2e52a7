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

/// Collects a spawned watch's lines in the background until the child is killed.
fn collect_lines(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The ReplicaSets of the `app=web` Deployment: name, revision, replicas and image per line.
fn replica_sets(c: &Cluster, label: &str) -> Vec<String> {
    let out = c.kubectl_ok(&[
        "get",
        "rs",
        "-l",
        label,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.spec.replicas} {.spec.template.spec.containers[0].image}{\"\\n\"}{end}",
    ]);
    let mut sets: Vec<String> = out.lines().map(str::to_owned).collect();
    sets.sort();
    sets
}

fn rollout_status(c: &Cluster, name: &str) {
    c.kubectl_ok(&["rollout", "status", "deployment", name, "--timeout=90s"]);
}

#[test]
fn a_deployment_scales_rolls_out_within_its_budget_and_rolls_back() {
    let c = Cluster::with_agent();
    import_all(&c);
    crate::guests::import(&c, crate::guests::http_hello(), "hello:v2");
    c.kubectl_ok(&["create", "deployment", "web", "--image", "hello:v1"]);
    c.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    rollout_status(&c, "web");
    assert_eq!(
        c.jsonpath("deployment", "web", "{.status.availableReplicas}"),
        "3"
    );
    let first = replica_sets(&c, "app=web");
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].ends_with(" 1 3 hello:v1"), "{first:?}");
    // The pods carry the set's hash label and are owned by it.
    let labels = c.kubectl_ok(&["get", "pods", "-l", "app=web", "--show-labels"]);
    assert_eq!(labels.matches("pod-template-hash=").count(), 3, "{labels}");
    let yaml = c.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "yaml"]);
    assert_eq!(yaml.matches("kind: ReplicaSet").count(), 3, "{yaml}");

    // A rolling update to a new image: 3 replicas with the default 25% budget never has fewer
    // than 3 available (maxUnavailable rounds down to 0, maxSurge up to 1).
    let mut watch = c.kubectl_spawn(&[
        "get",
        "deployment",
        "web",
        "-w",
        "-o",
        "jsonpath={.status.availableReplicas} {.status.updatedReplicas} {.status.replicas}{\"\\n\"}",
    ]);
    let seen = collect_lines(&mut watch);
    c.kubectl_ok(&["set", "image", "deployment/web", "hello=hello:v2"]);
    rollout_status(&c, "web");
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 2, "the watch saw the rollout: {seen:?}");
    for line in &seen {
        let available: i64 = line.split(' ').next().unwrap().parse().unwrap_or(0);
        assert!(
            available >= 3,
            "availability fell to {available} during the rollout: {seen:?}"
        );
    }
    let second = replica_sets(&c, "app=web");
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(
        second.iter().any(|s| s.ends_with(" 1 0 hello:v1")),
        "{second:?}"
    );
    assert!(
        second.iter().any(|s| s.ends_with(" 2 3 hello:v2")),
        "{second:?}"
    );
    let history = c.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    // Undo writes the old template back; the old set is matched to it (not a third set) and
    // becomes revision 3.
    c.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    rollout_status(&c, "web");
    let third = replica_sets(&c, "app=web");
    assert_eq!(third.len(), 2, "{third:?}");
    assert!(
        third.iter().any(|s| s.ends_with(" 3 3 hello:v1")),
        "{third:?}"
    );
    assert!(
        third.iter().any(|s| s.ends_with(" 2 0 hello:v2")),
        "{third:?}"
    );
    let images = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert!(!images.contains("hello:v2"), "{images}");

    // Paused, a template change rolls nothing out until resumed.
    c.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    c.kubectl_ok(&["set", "image", "deployment/web", "hello=hello:v2"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        replica_sets(&c, "app=web"),
        third,
        "a paused deployment rolled out"
    );
    let reason = c.jsonpath(
        "deployment",
        "web",
        "{.status.conditions[?(@.type==\"Progressing\")].reason}",
    );
    assert_eq!(reason, "DeploymentPaused");
    c.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    rollout_status(&c, "web");
    let fourth = replica_sets(&c, "app=web");
    assert!(
        fourth.iter().any(|s| s.ends_with(" 4 3 hello:v2")),
        "{fourth:?}"
    );

    // The same through `wk rollout`.
    c.wk_ok(&["rollout", "undo", "deployment/web"]);
    let status = c.wk_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    let history = c.wk_ok(&["rollout", "history", "deployment", "web"]);
    assert!(
        history.contains("\n4 ") && history.contains("\n5 "),
        "{history}"
    );
    let v1 = c.wk_ok(&["rollout", "history", "deployment/web", "--revision=5"]);
    assert!(v1.contains("hello:v1"), "{v1}");
    c.wk_ok(&["rollout", "pause", "deployment/web"]);
    let again = c.wk(&["rollout", "pause", "deployment/web"]);
    assert!(
        crate::harness::stderr(&again).contains("deployments.apps \"web\" is already paused"),
        "{}",
        crate::harness::stderr(&again)
    );
    c.wk_ok(&["rollout", "resume", "deployment/web"]);

    // Deleting the Deployment takes its sets and pods with it (background cascade).
    c.kubectl_ok(&["delete", "deployment", "web"]);
    let mut left = String::new();
    assert!(
        eventually(LONG, || {
            left = stdout(&c.kubectl(&["get", "rs,pods", "-l", "app=web", "-o", "name"]));
            left.trim().is_empty()
        }),
        "left behind: {left}"
    );
}

#[test]
fn deletion_cascades_in_the_foreground_or_orphans_by_policy() {
    let c = Cluster::with_agent();
    import_all(&c);
    c.kubectl_ok(&[
        "create",
        "deployment",
        "fg",
        "--image",
        "hello:v1",
        "--replicas=2",
    ]);
    c.kubectl_ok(&[
        "create",
        "deployment",
        "orphans",
        "--image",
        "hello:v1",
        "--replicas=2",
    ]);
    rollout_status(&c, "fg");
    rollout_status(&c, "orphans");

    // Foreground: kubectl waits for the Deployment, which goes only after its set and pods.
    c.kubectl_ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=90s",
    ]);
    let left = stdout(&c.kubectl(&["get", "rs,pods", "-l", "app=fg", "-o", "name"]));
    assert!(left.trim().is_empty(), "the deployment went before: {left}");

    // Orphan: the set stays, with no owner, and keeps its pods.
    c.kubectl_ok(&["delete", "deployment", "orphans", "--cascade=orphan"]);
    let mut owners = String::from("?");
    assert!(
        eventually(LONG, || {
            owners = stdout(&c.kubectl(&[
                "get",
                "rs",
                "-l",
                "app=orphans",
                "-o",
                "jsonpath={.items[*].metadata.ownerReferences}",
            ]));
            owners.is_empty() && stdout(&c.kubectl(&["get", "deployment", "orphans"])).is_empty()
        }),
        "the set was not released: {owners:?}"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let sets = replica_sets(&c, "app=orphans");
    assert_eq!(sets.len(), 1, "{sets:?}");
    let pods = c.kubectl_ok(&["get", "pods", "-l", "app=orphans", "-o", "name"]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
}

#[test]
fn a_recreate_deployment_stops_old_pods_first_keeps_its_history_limit_and_misses_a_deadline() {
    let c = Cluster::with_agent();
    import_all(&c);
    c.kubectl_apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: rec\nspec:\n  replicas: 2\n  revisionHistoryLimit: 1\n  strategy: {type: Recreate}\n  selector:\n    matchLabels: {app: rec}\n  template:\n    metadata:\n      labels: {app: rec}\n    spec:\n      containers:\n      - name: hello\n        image: hello:v1\n",
    );
    rollout_status(&c, "rec");
    let mut watch = c.kubectl_spawn(&[
        "get",
        "pods",
        "-l",
        "app=rec",
        "-w",
        "--output-watch-events",
        "-o",
        "jsonpath={.type} {.object.metadata.name} {.object.metadata.labels.pod-template-hash}{\"\\n\"}",
    ]);
    let seen = collect_lines(&mut watch);
    c.kubectl_ok(&["rollout", "restart", "deployment/rec"]);
    rollout_status(&c, "rec");
    // The watch may lag behind the rollout: wait until it has shown the new pods.
    eventually(LONG, || {
        let lines = seen.lock().unwrap();
        let hashes: std::collections::BTreeSet<&str> =
            lines.iter().filter_map(|l| l.split(' ').nth(2)).collect();
        hashes.len() >= 2
    });
    let _ = watch.kill();
    let _ = watch.wait();
    // No new pod was made while an old one existed.
    let seen = seen.lock().unwrap().clone();
    let mut alive: std::collections::BTreeMap<String, String> = Default::default();
    let mut hashes = std::collections::BTreeSet::new();
    for line in &seen {
        let [event, pod, hash] = line.split(' ').collect::<Vec<_>>()[..] else {
            continue;
        };
        hashes.insert(hash.to_owned());
        match event {
            "DELETED" => {
                alive.remove(pod);
            }
            _ => {
                let others: Vec<&String> = alive.values().filter(|h| *h != hash).collect();
                assert!(
                    others.is_empty(),
                    "{pod} ({hash}) came while {others:?} pods lived: {seen:?}"
                );
                alive.insert(pod.to_owned(), hash.to_owned());
            }
        }
    }
    assert_eq!(hashes.len(), 2, "old and new pods were seen: {seen:?}");

    // A second restart leaves the current set and one old one (revisionHistoryLimit 1).
    // kubectl refuses a restart within a second of the last (restartedAt has whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.kubectl_ok(&["rollout", "restart", "deployment/rec"]);
    rollout_status(&c, "rec");
    let mut sets = Vec::new();
    assert!(
        eventually(LONG, || {
            sets = replica_sets(&c, "app=rec");
            sets.len() == 2
        }),
        "{sets:?}"
    );

    // An image that cannot be pulled never becomes available: the deadline passes.
    c.kubectl_ok(&[
        "patch",
        "deployment/rec",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":3,"template":{"spec":{"containers":[{"name":"hello","image":"127.0.0.1:1/absent:v1"}]}}}}"#,
    ]);
    let out = c.kubectl(&["rollout", "status", "deployment/rec", "--timeout=60s"]);
    assert!(!out.status.success());
    assert!(
        crate::harness::stderr(&out).contains("exceeded its progress deadline"),
        "{}",
        crate::harness::stderr(&out)
    );
    let progressing = c.jsonpath(
        "deployment",
        "rec",
        "{.status.conditions[?(@.type==\"Progressing\")].reason}",
    );
    assert_eq!(progressing, "ProgressDeadlineExceeded");
}

#[test]
fn the_controllers_run_only_while_the_server_holds_the_leader_lease() {
    let c = Cluster::with_agent();
    import_all(&c);
    let mut holder = String::new();
    assert!(
        eventually(LONG, || {
            holder = stdout(&c.kubectl(&[
                "get",
                "lease",
                "-n",
                "kube-system",
                "wk-controller-manager",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]));
            !holder.is_empty()
        }),
        "no leader lease"
    );
    // Another replica takes the Lease (and keeps it renewed): this server steps down, and
    // a new Deployment gets no ReplicaSet.
    let take = |who: &str| {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        c.kubectl_ok(&[
            "patch",
            "lease",
            "-n",
            "kube-system",
            "wk-controller-manager",
            "--type=merge",
            "-p",
            &format!("{{\"spec\":{{\"holderIdentity\":\"{who}\",\"renewTime\":\"{now}\"}}}}"),
        ]);
    };
    take("elsewhere");
    assert!(
        eventually(LONG, || c.log().contains("lost the leader lease")),
        "the server did not step down"
    );
    c.kubectl_ok(&["create", "deployment", "follower", "--image", "hello:v1"]);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_secs(3));
        take("elsewhere");
    }
    let sets = stdout(&c.kubectl(&["get", "rs", "-l", "app=follower", "-o", "name"]));
    assert!(
        sets.trim().is_empty(),
        "a controller ran without the lease: {sets}"
    );
    // The other replica stops renewing: after the lease duration this server leads again.
    c.kubectl_ok(&["rollout", "status", "deployment/follower", "--timeout=90s"]);
    let now_holder = stdout(&c.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "wk-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}",
    ]));
    assert!(
        now_holder.starts_with(&holder),
        "{now_holder} (was {holder})"
    );
    assert!(now_holder.ends_with(" 1"), "{now_holder}");
}

#[test]
fn a_statefulset_keeps_stable_names_in_order_and_updates_from_the_top() {
    let c = Cluster::with_agent();
    import_all(&c);
    let mut watch = c.kubectl_spawn(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "-w",
        "--output-watch-events",
        "-o",
        "jsonpath={.type} {.object.metadata.name}{\"\\n\"}",
    ]);
    let seen = collect_lines(&mut watch);
    c.kubectl_apply(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  replicas: 3\n  serviceName: db\n  selector:\n    matchLabels: {app: db}\n  template:\n    metadata:\n      labels: {app: db}\n    spec:\n      containers:\n      - name: main\n        image: cmd:v1\n        command: [cmd, sleep, \"600000\"]\n",
    );
    let ready = |want: &str| {
        let mut last = String::new();
        assert!(
            eventually(LONG, || {
                last = c.jsonpath("sts", "db", "{.status.readyReplicas}");
                last == want
            }),
            "readyReplicas {last}, not {want}\n{}",
            stdout(&c.kubectl(&["get", "pods", "-o", "wide"]))
        );
    };
    ready("3");
    let _ = watch.kill();
    let _ = watch.wait();
    // OrderedReady: each pod was made only after the one before it.
    let added: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix("ADDED ").map(str::to_owned))
        .collect();
    assert_eq!(added, ["db-0", "db-1", "db-2"]);
    assert_eq!(
        c.jsonpath("pod", "db-1", "{.spec.hostname}.{.spec.subdomain}"),
        "db-1.db"
    );

    // A deleted pod comes back under its name.
    let old_uid = c.jsonpath("pod", "db-1", "{.metadata.uid}");
    c.kubectl_ok(&["delete", "pod", "db-1", "--timeout=60s"]);
    assert!(
        eventually(LONG, || {
            let uid = stdout(&c.kubectl(&["get", "pod", "db-1", "-o", "jsonpath={.metadata.uid}"]));
            !uid.is_empty() && uid != old_uid
        }),
        "db-1 was not made again"
    );
    ready("3");

    // A partitioned update touches only the ordinals at or above the partition.
    let image = |pod: &str| c.jsonpath("pod", pod, "{.spec.containers[0].image}");
    c.kubectl_ok(&["patch", "sts", "db", "--type=merge", "-p",
        "{\"spec\":{\"updateStrategy\":{\"rollingUpdate\":{\"partition\":2}},\"template\":{\"spec\":{\"containers\":[{\"name\":\"main\",\"image\":\"cmd2:v1\",\"command\":[\"cmd\",\"sleep\",\"600000\"]}]}}}}"]);
    assert!(eventually(LONG, || stdout(&c.kubectl(&[
        "get",
        "pod",
        "db-2",
        "-o",
        "jsonpath={.spec.containers[0].image}"
    ])) == "cmd2:v1"));
    ready("3");
    assert_eq!(
        (image("db-0"), image("db-1")),
        ("cmd:v1".to_owned(), "cmd:v1".to_owned())
    );
    c.kubectl_ok(&[
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        "{\"spec\":{\"updateStrategy\":{\"rollingUpdate\":{\"partition\":0}}}}",
    ]);
    assert!(
        eventually(LONG, || {
            let images = stdout(&c.kubectl(&[
                "get",
                "pods",
                "-l",
                "app=db",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ]));
            images == "cmd2:v1 cmd2:v1 cmd2:v1"
        }),
        "{}",
        stdout(&c.kubectl(&["get", "pods", "-o", "wide"]))
    );
    ready("3");
    assert_eq!(
        c.jsonpath("sts", "db", "{.status.currentRevision}"),
        c.jsonpath("sts", "db", "{.status.updateRevision}")
    );

    // Scaling down removes the highest ordinals.
    c.kubectl_ok(&["scale", "sts", "db", "--replicas=1"]);
    assert!(
        eventually(LONG, || stdout(
            &c.kubectl(&["get", "pods", "-l", "app=db", "-o", "name"])
        )
        .trim()
            == "pod/db-0"),
        "{}",
        stdout(&c.kubectl(&["get", "pods"]))
    );
}
