//! Each controller (and the scheduler) against the real API in-process ([`crate::testkit`]),
//! on tokio's paused clock: grace periods, deadlines, windows and schedules pass in virtual
//! time, and each test checks that they are neither cut short nor overrun.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::testkit::{Api, template};

const PODS: &str = "/api/v1/namespaces/default/pods";
const RS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map_or(&[], Vec::as_slice)
}

fn count(list: &Value) -> usize {
    items(list).len()
}

fn condition<'a>(object: &'a Value, kind: &str) -> &'a Value {
    super::condition(object, kind).unwrap_or(&Value::Null)
}

/// A bare pod with `labels` on `node` (none: unscheduled), deleted without a grace period.
fn pod(name: &str, labels: &Value, node: Option<&str>) -> Value {
    let mut pod = template(labels);
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!(name);
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

/// A Deployment `web` of `replicas` pods labelled `labels`.
fn deployment(replicas: u32, labels: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
            "template": template(labels)}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn replicaset(name: &str, replicas: u32, labels: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
            "template": template(labels)}})
}

#[tokio::test(start_paused = true)]
async fn replicaset_adopts_creates_and_waits_min_ready_seconds_for_availability() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    let labels = json!({"app": "web"});
    let stray = api.create(PODS, pod("stray", &labels, None)).await;
    api.run(super::replicaset::start);
    api.schedule();
    api.kubelet_loop("default");
    let mut rs = replicaset("web", 3, &labels);
    rs["spec"]["minReadySeconds"] = json!(30);
    let rs = api.create(RS, rs).await;

    let ready = api
        .until("three ready replicas", &format!("{RS}/web"), |rs| {
            rs["status"]["readyReplicas"] == 3
        })
        .await;
    let ready_at = Instant::now();
    assert_eq!(
        ready["status"]["availableReplicas"].as_i64().unwrap_or(0),
        0
    );
    api.until("three available replicas", &format!("{RS}/web"), |rs| {
        rs["status"]["availableReplicas"] == 3
    })
    .await;
    assert!(
        ready_at.elapsed() >= Duration::from_secs(25),
        "{:?}",
        ready_at.elapsed()
    );

    let pods = api.get(PODS).await.unwrap();
    assert_eq!(
        count(&pods),
        3,
        "the stray pod is adopted, not joined by a third new one"
    );
    for p in items(&pods) {
        assert!(
            super::controlled_by(p, "ReplicaSet", super::uid(&rs)),
            "{p:#}"
        );
    }
    assert!(
        items(&pods)
            .iter()
            .any(|p| super::uid(p) == super::uid(&stray))
    );

    // A pod that stops matching is released, and replaced.
    api.patch(
        &format!("{PODS}/stray"),
        json!({"metadata": {"labels": {"app": "other"}}}),
    )
    .await;
    let released = api
        .until(
            "the relabelled pod released",
            &format!("{PODS}/stray"),
            |p| super::controller_of(p).is_none(),
        )
        .await;
    assert_eq!(released["metadata"]["labels"]["app"], "other");
    api.until(
        "a replacement",
        &format!("{PODS}?labelSelector=app%3Dweb"),
        |l| count(l) == 3,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn deployment_rolls_out_a_new_template_and_reports_a_missed_progress_deadline() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.run(|c, i, s| {
        super::replicaset::start(c, i, s);
        super::deployment::start(c, i, s);
    });
    api.schedule();
    api.kubelet_loop("default");
    let labels = json!({"app": "web"});
    api.create(DEPLOYMENTS, deployment(2, &labels)).await;
    let path = format!("{DEPLOYMENTS}/web");
    api.until("available", &path, |d| {
        condition(d, "Available")["status"] == "True" && d["status"]["availableReplicas"] == 2
    })
    .await;

    api.patch(
        &path,
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "registry.test/app:2"}]}}}}),
    )
    .await;
    let done = api
        .until("rolled out", &path, |d| {
            d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["updatedReplicas"] == 2
                && d["status"]["replicas"] == 2
                && d["status"]["availableReplicas"] == 2
                && condition(d, "Progressing")["reason"] == "NewReplicaSetAvailable"
        })
        .await;
    assert_eq!(
        done["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let sets = api.get(RS).await.unwrap();
    assert_eq!(count(&sets), 2);
    for rs in items(&sets) {
        let image = &rs["spec"]["template"]["spec"]["containers"][0]["image"];
        let want = if image == "registry.test/app:2" { 2 } else { 0 };
        assert_eq!(rs["spec"]["replicas"], want, "{rs:#}");
    }
    api.until("only new pods left", PODS, |l| {
        count(l) == 2
            && items(l)
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "registry.test/app:2")
    })
    .await;

    // Pods in a namespace no kubelet serves never become ready: the deadline passes.
    api.create("/api/v1/namespaces", namespace("stuck")).await;
    let began = Instant::now();
    api.create("/apis/apps/v1/namespaces/stuck/deployments", {
        let mut d = deployment(1, &labels);
        d["spec"]["progressDeadlineSeconds"] = json!(60);
        d
    })
    .await;
    api.until(
        "the progress deadline exceeded",
        "/apis/apps/v1/namespaces/stuck/deployments/web",
        |d| condition(d, "Progressing")["reason"] == "ProgressDeadlineExceeded",
    )
    .await;
    // Timestamps have whole seconds: a deadline may fall up to one second early.
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(59) && took < Duration::from_secs(90),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn daemonset_runs_one_pod_per_eligible_node_and_follows_nodes() {
    let api = Api::start().await;
    api.node("n1", json!({"edge": "true"})).await;
    api.node("n2", json!({"edge": "true"})).await;
    api.node("other", json!({})).await;
    api.run(|c, i, s| {
        super::daemonset::start(c, i, s);
        super::gc::start(c, i, s);
    });
    api.schedule();
    let labels = json!({"app": "agent"});
    let mut spec = template(&labels);
    spec["spec"]["nodeSelector"] = json!({"edge": "true"});
    api.create(
        "/apis/apps/v1/namespaces/default/daemonsets",
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": labels}, "template": spec}}),
    )
    .await;
    let on_nodes = |list: &Value| {
        let mut nodes: Vec<String> = items(list)
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
        nodes.sort();
        nodes
    };
    let pods = api
        .until("a pod on each edge node", PODS, |l| {
            on_nodes(l) == ["n1", "n2"] && count(l) == 2
        })
        .await;
    assert_eq!(count(&pods), 2);

    api.node("n3", json!({"edge": "true"})).await;
    api.until("a pod on the new node", PODS, |l| {
        on_nodes(l) == ["n1", "n2", "n3"]
    })
    .await;
    api.call(Method::DELETE, "/api/v1/nodes/n1", &Value::Null)
        .await
        .unwrap();
    let pods = api
        .until("the departed node's pod gone", PODS, |l| {
            on_nodes(l) == ["n2", "n3"]
        })
        .await;
    assert_eq!(count(&pods), 2);
}

#[tokio::test(start_paused = true)]
async fn statefulset_starts_pods_in_order_with_stable_names() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.run(super::statefulset::start);
    api.schedule();
    let labels = json!({"app": "db"});
    api.create(
        "/apis/apps/v1/namespaces/default/statefulsets",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": labels},
                "template": template(&labels)}}),
    )
    .await;
    api.until("db-0 bound", &format!("{PODS}/db-0"), |p| {
        p["spec"]["nodeName"] == "n1"
    })
    .await;
    api.sleep(30).await;
    assert_eq!(
        api.get(&format!("{PODS}/db-1"))
            .await
            .err()
            .and_then(|e| e.code()),
        Some(404),
        "db-1 waits for db-0 to be ready"
    );
    api.kubelet("default").await;
    api.until(
        "db-1 made once db-0 is ready",
        &format!("{PODS}/db-1"),
        |p| p.is_object(),
    )
    .await;

    // A deleted member comes back under its own name.
    let first = api.get(&format!("{PODS}/db-0")).await.unwrap();
    api.call(Method::DELETE, &format!("{PODS}/db-0"), &Value::Null)
        .await
        .unwrap();
    let again = api
        .until("db-0 recreated", &format!("{PODS}/db-0"), |p| {
            p.is_object() && super::uid(p) != super::uid(&first)
        })
        .await;
    assert_eq!(again["metadata"]["labels"]["app"], "db");
}

fn job(name: &str, spec: Value) -> Value {
    let labels = json!({"job": name});
    let mut spec = spec;
    spec["template"] = template(&labels);
    spec["template"]["spec"]["restartPolicy"] = json!("Never");
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(start_paused = true)]
async fn job_completes_counts_failures_and_enforces_its_deadline() {
    let api = Api::start().await;
    api.run(super::job::start);

    api.create(
        JOBS,
        job("two", json!({"completions": 2, "parallelism": 1})),
    )
    .await;
    for done in 1..=2 {
        let pods = api
            .until(
                "a running pod of the job",
                &format!("{PODS}?labelSelector=job%3Dtwo"),
                |l| items(l).iter().any(|p| !super::finished(p)),
            )
            .await;
        assert_eq!(
            items(&pods).iter().filter(|p| !super::finished(p)).count(),
            1,
            "parallelism 1"
        );
        let running = items(&pods).iter().find(|p| !super::finished(p)).unwrap();
        api.finish("default", super::name(running), true).await;
        api.until("the success counted", &format!("{JOBS}/two"), |j| {
            j["status"]["succeeded"] == done
        })
        .await;
    }
    api.until("complete", &format!("{JOBS}/two"), |j| {
        condition(j, "Complete")["status"] == "True"
    })
    .await;

    api.create(JOBS, job("fails", json!({"backoffLimit": 0})))
        .await;
    let pods = api
        .until(
            "its pod",
            &format!("{PODS}?labelSelector=job%3Dfails"),
            |l| count(l) == 1,
        )
        .await;
    api.finish("default", super::name(&items(&pods)[0]), false)
        .await;
    api.until(
        "failed on its backoff limit",
        &format!("{JOBS}/fails"),
        |j| condition(j, "Failed")["reason"] == "BackoffLimitExceeded",
    )
    .await;

    let began = Instant::now();
    api.create(JOBS, job("slow", json!({"activeDeadlineSeconds": 30})))
        .await;
    api.until("failed on its deadline", &format!("{JOBS}/slow"), |j| {
        condition(j, "Failed")["reason"] == "DeadlineExceeded"
    })
    .await;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(40),
        "{took:?}"
    );
    api.until(
        "its running pod removed",
        &format!("{PODS}?labelSelector=job%3Dslow"),
        |l| items(l).iter().all(super::terminating),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn cronjob_makes_a_job_each_minute_and_forbid_waits_for_the_running_one() {
    let api = Api::start().await;
    api.run(|c, i, s| {
        super::job::start(c, i, s);
        super::cronjob::start(c, i, s);
    });
    let mut template = job("x", json!({}))["spec"].clone();
    template["template"]["metadata"] = json!({});
    api.create(
        "/apis/batch/v1/namespaces/default/cronjobs",
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
            "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
                "jobTemplate": {"spec": template}}}),
    )
    .await;
    api.until("the first Job", JOBS, |l| count(l) == 1).await;
    // Its pod never finishes (no kubelet), so Forbid holds the next runs back.
    api.sleep(150).await;
    let jobs = api.get(JOBS).await.unwrap();
    assert_eq!(count(&jobs), 1, "Forbid starts nothing while a Job runs");
    let cron = api
        .get("/apis/batch/v1/namespaces/default/cronjobs/tick")
        .await
        .unwrap();
    assert_eq!(cron["status"]["active"].as_array().map(Vec::len), Some(1));

    api.patch(
        "/apis/batch/v1/namespaces/default/cronjobs/tick",
        json!({"spec": {"concurrencyPolicy": "Allow"}}),
    )
    .await;
    let began = Instant::now();
    api.until("a second Job under Allow", JOBS, |l| count(l) == 2)
        .await;
    assert!(
        began.elapsed() <= Duration::from_secs(61),
        "{:?}",
        began.elapsed()
    );
    let jobs = api.get(JOBS).await.unwrap();
    for j in items(&jobs) {
        assert!(super::name(j).starts_with("tick-"), "{j:#}");
        assert_eq!(super::controller_of(j).unwrap()["kind"], "CronJob");
    }
}

#[tokio::test(start_paused = true)]
async fn garbage_collector_cascades_orphans_and_deletes_in_the_foreground() {
    let api = Api::start().await;
    api.run(|c, i, s| {
        super::replicaset::start(c, i, s);
        super::gc::start(c, i, s);
    });
    for (name, policy) in [("a", "Orphan"), ("b", "Background"), ("c", "Foreground")] {
        let labels = json!({"set": name});
        api.create(RS, replicaset(name, 2, &labels)).await;
        let selector = format!("{PODS}?labelSelector=set%3D{name}");
        api.until("its pods", &selector, |l| count(l) == 2).await;
        let path = format!("{RS}/{name}");
        let answer = api
            .call(
                Method::DELETE,
                &path,
                &json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy}),
            )
            .await
            .unwrap();
        match policy {
            "Orphan" => {
                api.until("the set gone", &path, Value::is_null).await;
                api.sleep(10).await;
                let pods = api.get(&selector).await.unwrap();
                assert_eq!(count(&pods), 2, "orphaned pods stay");
                for p in items(&pods) {
                    assert!(super::controller_of(p).is_none(), "{p:#}");
                }
            }
            "Background" => {
                api.until("the set gone", &path, Value::is_null).await;
                api.until("its pods gone", &selector, |l| count(l) == 0)
                    .await;
            }
            _ => {
                assert_eq!(
                    answer["metadata"]["finalizers"],
                    json!(["foregroundDeletion"])
                );
                api.until("the set gone", &path, Value::is_null).await;
                let pods = api.get(&selector).await.unwrap();
                assert_eq!(count(&pods), 0, "the owner goes only after its dependents");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn namespace_deletion_empties_it_then_removes_it() {
    let api = Api::start().await;
    api.create("/api/v1/namespaces", namespace("tmp")).await;
    let maps = "/api/v1/namespaces/tmp/configmaps";
    api.create(
        maps,
        json!({"metadata": {"name": "plain"}, "data": {"k": "v"}}),
    )
    .await;
    api.create(
        maps,
        json!({"metadata": {"name": "held", "finalizers": ["test.wk.dev/hold"]}}),
    )
    .await;
    let answer = api
        .call(Method::DELETE, "/api/v1/namespaces/tmp", &Value::Null)
        .await
        .unwrap();
    assert_eq!(answer["status"]["phase"], "Terminating");
    api.until(
        "its plain content removed",
        &format!("{maps}/plain"),
        Value::is_null,
    )
    .await;
    let refused = api
        .call(Method::POST, maps, &json!({"metadata": {"name": "new"}}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(403), "{refused}");
    assert!(
        refused.to_string().contains("is being terminated"),
        "{refused}"
    );
    // An object's finalizer holds the namespace.
    api.sleep(30).await;
    let held = api.get("/api/v1/namespaces/tmp").await.unwrap();
    assert_eq!(held["status"]["phase"], "Terminating");
    assert!(super::terminating(
        &api.get(&format!("{maps}/held")).await.unwrap()
    ));
    api.patch(
        &format!("{maps}/held"),
        json!({"metadata": {"finalizers": null}}),
    )
    .await;
    api.until(
        "the namespace gone",
        "/api/v1/namespaces/tmp",
        Value::is_null,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn node_lifecycle_marks_a_silent_node_unreachable_then_evicts_its_pods() {
    let api = Api::start().await;
    api.node("quiet", json!({})).await;
    api.node("alive", json!({})).await;
    api.keep_alive("alive");
    api.create(PODS, pod("on-quiet", &json!({"a": "b"}), Some("quiet")))
        .await;
    api.create(PODS, pod("on-alive", &json!({"a": "b"}), Some("alive")))
        .await;
    api.kubelet("default").await;
    let began = Instant::now();
    api.run(|c, i, s| super::nodelifecycle::start(c, i, Duration::from_secs(20), s));

    let node = api
        .until("the silent node unreachable", "/api/v1/nodes/quiet", |n| {
            condition(n, "Ready")["status"] == "Unknown"
        })
        .await;
    let unreachable_after = began.elapsed();
    assert!(
        unreachable_after >= Duration::from_secs(20) && unreachable_after < Duration::from_secs(30),
        "{unreachable_after:?}"
    );
    let taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"),
        "{taints:?}"
    );
    let tainted = Instant::now();
    api.until("its pod evicted", &format!("{PODS}/on-quiet"), |p| {
        p.is_null() || super::terminating(p)
    })
    .await;
    let evicted_after = tainted.elapsed();
    assert!(
        evicted_after >= Duration::from_secs(28) && evicted_after < Duration::from_secs(40),
        "the default toleration is 30 s: {evicted_after:?}"
    );
    let alive = api.get("/api/v1/nodes/alive").await.unwrap();
    assert_eq!(condition(&alive, "Ready")["status"], "True");
    let kept = api.get(&format!("{PODS}/on-alive")).await.unwrap();
    assert!(!super::terminating(&kept));
}

#[tokio::test(start_paused = true)]
async fn disruption_budget_counts_healthy_pods_and_refuses_an_eviction_that_breaks_it() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    let labels = json!({"app": "db"});
    for name in ["db-0", "db-1"] {
        api.create(PODS, pod(name, &labels, Some("n1"))).await;
    }
    api.kubelet("default").await;
    api.run(super::disruption::start);
    let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
    api.create(
        pdbs,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "db"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": labels}}}),
    )
    .await;
    let pdb = api
        .until("the budget's status", &format!("{pdbs}/db"), |p| {
            p["status"]["currentHealthy"] == 2
        })
        .await;
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);
    let eviction = |name: &str| {
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": "default"}})
    };
    let refused = api
        .call(
            Method::POST,
            &format!("{PODS}/db-0/eviction"),
            &eviction("db-0"),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(429), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{refused}"
    );

    api.patch(&format!("{pdbs}/db"), json!({"spec": {"minAvailable": 1}}))
        .await;
    api.until("one disruption allowed", &format!("{pdbs}/db"), |p| {
        p["status"]["disruptionsAllowed"] == 1
    })
    .await;
    api.call(
        Method::POST,
        &format!("{PODS}/db-0/eviction"),
        &eviction("db-0"),
    )
    .await
    .unwrap();
    api.until("the evicted pod gone", &format!("{PODS}/db-0"), |p| {
        p.is_null() || super::terminating(p)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn volume_binder_provisions_a_waiting_claim_on_its_consumers_node() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.run(super::volume::start);
    api.schedule();
    let claims = "/api/v1/namespaces/default/persistentvolumeclaims";
    api.create(
        claims,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    api.sleep(20).await;
    let waiting = api.get(&format!("{claims}/data")).await.unwrap();
    assert_eq!(
        waiting["status"]["phase"], "Pending",
        "WaitForFirstConsumer"
    );
    assert_eq!(waiting["spec"]["storageClassName"], "local-path");

    let mut consumer = pod("user", &json!({}), None);
    consumer["spec"]["volumes"] =
        json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]);
    api.create(PODS, consumer).await;
    let claim = api
        .until("the claim bound", &format!("{claims}/data"), |c| {
            c["status"]["phase"] == "Bound"
        })
        .await;
    let volume = claim["spec"]["volumeName"].as_str().unwrap().to_owned();
    let pv = api
        .get(&format!("/api/v1/persistentvolumes/{volume}"))
        .await
        .unwrap();
    assert_eq!(pv["spec"]["csi"]["driver"], "wk.dev/local-path");
    assert_eq!(pv["spec"]["claimRef"]["uid"], claim["metadata"]["uid"]);
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["n1"])
    );
    api.until(
        "the pod bound with its claim",
        &format!("{PODS}/user"),
        |p| p["spec"]["nodeName"] == "n1",
    )
    .await;

    // The class's Delete policy removes the volume with its claim.
    api.call(Method::DELETE, &format!("{PODS}/user"), &Value::Null)
        .await
        .unwrap();
    api.call(Method::DELETE, &format!("{claims}/data"), &Value::Null)
        .await
        .unwrap();
    api.until(
        "the volume reclaimed",
        &format!("/api/v1/persistentvolumes/{volume}"),
        Value::is_null,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn resource_quota_tracks_use_and_admission_refuses_past_it() {
    let api = Api::start().await;
    api.run(super::resourcequota::start);
    let quotas = "/api/v1/namespaces/default/resourcequotas";
    api.create(
        quotas,
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
            "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}}),
    )
    .await;
    api.until("usage counted", &format!("{quotas}/q"), |q| {
        q["status"]["used"]["pods"] == "0"
    })
    .await;
    api.create(PODS, pod("a", &json!({}), None)).await;
    api.create(PODS, pod("b", &json!({}), None)).await;
    let used = api
        .until("two pods counted", &format!("{quotas}/q"), |q| {
            q["status"]["used"]["pods"] == "2"
        })
        .await;
    assert_eq!(used["status"]["used"]["requests.cpu"], "200m");
    let refused = api
        .call(Method::POST, PODS, &pod("c", &json!({}), None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(403), "{refused}");
    assert!(
        refused.to_string().contains("exceeded quota: q"),
        "{refused}"
    );
    api.call(Method::DELETE, &format!("{PODS}/a"), &Value::Null)
        .await
        .unwrap();
    api.until("the freed pod uncounted", &format!("{quotas}/q"), |q| {
        q["status"]["used"]["pods"] == "1"
    })
    .await;
    api.create(PODS, pod("c", &json!({}), None)).await;
}

#[tokio::test(start_paused = true)]
async fn scheduler_reports_why_a_pod_waits_and_binds_it_when_a_node_fits() {
    let api = Api::start().await;
    api.node("plain", json!({})).await;
    api.schedule();
    let mut gpu = pod("trainer", &json!({}), None);
    gpu["spec"]["nodeSelector"] = json!({"gpu": "true"});
    api.create(PODS, gpu).await;
    let waiting = api
        .until("unschedulable", &format!("{PODS}/trainer"), |p| {
            condition(p, "PodScheduled")["reason"] == "Unschedulable"
        })
        .await;
    assert_eq!(
        condition(&waiting, "PodScheduled")["message"],
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    );
    // The event is posted in the background, as client-go's recorder does.
    let events = api
        .until(
            "a FailedScheduling event",
            "/api/v1/namespaces/default/events?fieldSelector=reason%3DFailedScheduling",
            |l| count(l) == 1,
        )
        .await;
    assert_eq!(items(&events)[0]["involvedObject"]["name"], "trainer");
    assert_eq!(items(&events)[0]["type"], "Warning");

    api.node("gpu-1", json!({"gpu": "true"})).await;
    api.until(
        "bound to the labelled node",
        &format!("{PODS}/trainer"),
        |p| p["spec"]["nodeName"] == "gpu-1",
    )
    .await;

    // Requests count against what the node has left: gpu-1 has 3.9 CPUs after the trainer.
    let sized = |name: &str, cpu: &str| {
        let mut p = pod(name, &json!({}), None);
        p["spec"]["containers"][0]["resources"]["requests"] = json!({"cpu": cpu});
        p
    };
    api.create(PODS, sized("big", "3950m")).await;
    api.until(
        "the big pod on the node with room",
        &format!("{PODS}/big"),
        |p| p["spec"]["nodeName"] == "plain",
    )
    .await;
    api.create(PODS, sized("bigger", "3950m")).await;
    let refused = api
        .until("no room for another", &format!("{PODS}/bigger"), |p| {
            condition(p, "PodScheduled")["reason"] == "Unschedulable"
        })
        .await;
    assert_eq!(
        condition(&refused, "PodScheduled")["message"],
        "0/2 nodes are available: 2 Insufficient cpu."
    );
    // Room freed is room taken.
    api.call(Method::DELETE, &format!("{PODS}/big"), &Value::Null)
        .await
        .unwrap();
    api.until(
        "placed once the room is freed",
        &format!("{PODS}/bigger"),
        |p| p["spec"]["nodeName"] == "plain",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn node_ipam_gives_each_node_its_own_pod_cidr() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.node("n2", json!({})).await;
    tokio::spawn(super::nodeipam::run(
        api.client.clone(),
        crate::net::CLUSTER_CIDR,
        24,
        api.shutdown.child_token(),
    ));
    let mut cidrs = Vec::new();
    for name in ["n1", "n2"] {
        let node = api
            .until("a podCIDR", &format!("/api/v1/nodes/{name}"), |n| {
                n["spec"]["podCIDR"].is_string()
            })
            .await;
        let cidr = node["spec"]["podCIDR"].as_str().unwrap().to_owned();
        assert!(
            cidr.starts_with("100.64.") && cidr.ends_with(".0/24"),
            "{cidr}"
        );
        assert_eq!(node["spec"]["podCIDRs"], json!([cidr]));
        cidrs.push(cidr);
    }
    assert_ne!(cidrs[0], cidrs[1]);
}

#[tokio::test(start_paused = true)]
async fn leader_election_hands_over_only_after_the_lease_expires() {
    use std::sync::{Arc, Mutex};
    let api = Api::start().await;
    let led: Arc<Mutex<Vec<(&str, Instant)>>> = Arc::default();
    let first = api.shutdown.child_token();
    let record = |who: &'static str| {
        let led = led.clone();
        move |_term| led.lock().unwrap().push((who, Instant::now()))
    };
    tokio::spawn(super::leader::run(
        api.client.clone(),
        "first".into(),
        first.clone(),
        record("first"),
    ));
    api.until(
        "the first replica leads",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/wk-controller-manager",
        |l| l["spec"]["holderIdentity"] == "first",
    )
    .await;
    tokio::spawn(super::leader::run(
        api.client.clone(),
        "second".into(),
        api.shutdown.child_token(),
        record("second"),
    ));
    api.sleep(60).await;
    assert_eq!(
        led.lock()
            .unwrap()
            .iter()
            .map(|(w, _)| *w)
            .collect::<Vec<_>>(),
        ["first"],
        "the second waits while the first renews"
    );
    // The first stops renewing, as a crashed replica does.
    first.cancel();
    let stopped = Instant::now();
    api.until(
        "the second replica leads",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/wk-controller-manager",
        |l| l["spec"]["holderIdentity"] == "second",
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took >= super::leader::LEASE_DURATION - super::leader::RETRY
            && took <= super::leader::LEASE_DURATION + 2 * super::leader::RETRY,
        "{took:?}"
    );
    let led = led.lock().unwrap();
    assert_eq!(
        led.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        ["first", "second"]
    );
}

#[tokio::test(start_paused = true)]
async fn autoscaler_without_metrics_reports_it_and_leaves_the_scale_alone() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.run(|c, i, s| {
        super::replicaset::start(c, i, s);
        super::deployment::start(c, i, s);
        super::podautoscaler::start(c, i, Duration::from_secs(15), s);
    });
    api.schedule();
    api.kubelet_loop("default");
    let labels = json!({"app": "web"});
    api.create(DEPLOYMENTS, deployment(2, &labels)).await;
    api.create(
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}]}}),
    )
    .await;
    let hpa = api
        .until(
            "the metrics failure reported",
            "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web",
            |h| {
                h["status"]["currentReplicas"] == 2
                    && condition(h, "ScalingActive")["reason"] == "FailedGetResourceMetric"
            },
        )
        .await;
    assert_eq!(condition(&hpa, "ScalingActive")["status"], "False");
    api.sleep(120).await;
    let deployment = api.get(&format!("{DEPLOYMENTS}/web")).await.unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2, "no metrics, no scaling");
}

const SERVICES: &str = "/api/v1/namespaces/default/services";

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(start_paused = true)]
async fn services_get_cluster_ips_and_node_ports_never_twice() {
    let api = Api::start().await;
    let kubernetes = api.get(&format!("{SERVICES}/kubernetes")).await.unwrap();
    assert_eq!(kubernetes["spec"]["clusterIP"], "100.65.0.1");
    assert_eq!(kubernetes["spec"]["ports"][0]["port"], 443);

    let a = api
        .create(SERVICES, service("a", json!({"ports": [{"port": 80}]})))
        .await;
    let ip = a["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let parsed: std::net::Ipv4Addr = ip.parse().unwrap();
    assert!(
        crate::net::SERVICE_CIDR.contains(parsed) && ip != "100.65.0.1",
        "{ip}"
    );
    assert_eq!(a["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(a["spec"]["ipFamilies"], json!(["IPv4"]));

    let refuse = |spec: Value, want: &'static str| {
        let api = &api;
        async move {
            let e = api
                .call(Method::POST, SERVICES, &service("x", spec))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Some(422), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    };
    refuse(
        json!({"clusterIP": ip, "ports": [{"port": 80}]}),
        "provided IP is already allocated",
    )
    .await;
    refuse(
        json!({"clusterIP": "100.66.0.5", "ports": [{"port": 80}]}),
        "is not in the valid range. The range of valid IPs is 100.65.0.0/16",
    )
    .await;

    let c = api
        .create(
            SERVICES,
            service(
                "c",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await;
    assert_eq!(c["spec"]["ports"][0]["nodePort"], 30080);
    refuse(
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated",
    )
    .await;
    let lb = api
        .create(
            SERVICES,
            service(
                "lb",
                json!({"type": "LoadBalancer", "ports": [{"port": 8200}]}),
            ),
        )
        .await;
    let port = lb["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&port) && port != 30080, "{port}");

    // An update that leaves them out keeps them; one that changes the address is refused.
    let mut replaced = api.get(&format!("{SERVICES}/a")).await.unwrap();
    replaced["spec"]
        .as_object_mut()
        .unwrap()
        .remove("clusterIP");
    replaced["spec"]
        .as_object_mut()
        .unwrap()
        .remove("clusterIPs");
    let kept = api
        .call(Method::PUT, &format!("{SERVICES}/a"), &replaced)
        .await
        .unwrap();
    assert_eq!(kept["spec"]["clusterIP"], ip.as_str());
    let moved = api
        .call(
            Method::PATCH,
            &format!("{SERVICES}/a"),
            &json!({"spec": {"clusterIP": "100.65.9.9", "clusterIPs": ["100.65.9.9"]}}),
        )
        .await
        .unwrap_err();
    assert!(
        moved.to_string().contains("may not change once set"),
        "{moved}"
    );
    let typed = api
        .patch(
            &format!("{SERVICES}/a"),
            json!({"spec": {"type": "NodePort"}}),
        )
        .await;
    assert!(typed["spec"]["ports"][0]["nodePort"].is_u64(), "{typed:#}");

    // A deleted Service's address is free again at once.
    api.call(Method::DELETE, &format!("{SERVICES}/a"), &Value::Null)
        .await
        .unwrap();
    let again = api
        .create(
            SERVICES,
            service("f", json!({"clusterIP": ip, "ports": [{"port": 80}]})),
        )
        .await;
    assert_eq!(again["spec"]["clusterIP"], ip.as_str());

    let headless = api
        .create(
            SERVICES,
            service("h", json!({"clusterIP": "None", "ports": [{"port": 80}]})),
        )
        .await;
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    let external = api
        .create(
            SERVICES,
            service(
                "e",
                json!({"type": "ExternalName", "externalName": "example.test"}),
            ),
        )
        .await;
    assert!(external["spec"]["clusterIP"].is_null(), "{external:#}");
}

#[tokio::test(start_paused = true)]
async fn endpoints_and_slices_follow_the_ready_pods_of_a_service() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.run(|c, i, s| {
        super::endpoints::start(c, i, s);
        super::endpointslice::start(c, i, s);
        super::gc::start(c, i, s);
    });
    let labels = json!({"app": "hello"});
    for name in ["hello-a", "hello-b"] {
        let mut p = pod(name, &labels, Some("n1"));
        p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8000}]);
        api.create(PODS, p).await;
    }
    api.create(PODS, pod("other", &json!({"app": "other"}), Some("n1")))
        .await;
    api.create(
        SERVICES,
        service(
            "hello-svc",
            json!({"selector": labels,
                "ports": [{"name": "web", "port": 8200, "targetPort": "http"}]}),
        ),
    )
    .await;
    let endpoints = "/api/v1/namespaces/default/endpoints/hello-svc";
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dhello-svc";
    // No pod has an address yet.
    let empty = api
        .until("the empty slice", slices, |l| count(l) == 1)
        .await;
    assert_eq!(items(&empty)[0]["endpoints"], json!([]));
    assert!(
        items(&empty)[0]["ports"].is_null(),
        "Kubernetes' placeholder slice has no ports"
    );

    api.kubelet("default").await;
    let ready = api
        .until("both pods ready behind the Service", endpoints, |e| {
            e["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    assert_eq!(
        ready["subsets"][0]["ports"],
        json!([{"name": "web", "port": 8000, "protocol": "TCP"}])
    );
    let pod_a = api.get(&format!("{PODS}/hello-a")).await.unwrap();
    let ip_a = pod_a["status"]["podIP"].as_str().unwrap().to_owned();
    assert_eq!(ready["subsets"][0]["addresses"][0]["ip"], ip_a.as_str());
    assert_eq!(ready["subsets"][0]["addresses"][0]["nodeName"], "n1");
    let slice = api
        .until("both in the slice", slices, |l| {
            items(l)
                .first()
                .and_then(|s| s["endpoints"].as_array())
                .map(Vec::len)
                == Some(2)
        })
        .await;
    let slice = &items(&slice)[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"][0]["addresses"], json!([ip_a]));
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(super::controller_of(slice).unwrap()["kind"], "Service");

    // A pod failing readiness leaves the addresses.
    api.patch(
        &format!("{PODS}/hello-a/status"),
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    )
    .await;
    let unready = api
        .until("the unready pod moved aside", endpoints, |e| {
            e["subsets"][0]["notReadyAddresses"][0]["ip"] == ip_a.as_str()
        })
        .await;
    assert_eq!(
        unready["subsets"][0]["addresses"].as_array().map(Vec::len),
        Some(1)
    );
    api.until("its slice endpoint not ready", slices, |l| {
        items(l)[0]["endpoints"][0]["conditions"]["ready"] == false
    })
    .await;
    // publishNotReadyAddresses: every endpoint of the slice is ready, as Kubernetes writes it.
    api.patch(
        &format!("{SERVICES}/hello-svc"),
        json!({"spec": {"publishNotReadyAddresses": true}}),
    )
    .await;
    api.until("the unready pod published", slices, |l| {
        items(l)[0]["endpoints"][0]["conditions"]["ready"] == true
            && items(l)[0]["endpoints"][0]["conditions"]["serving"] == false
    })
    .await;
    api.patch(
        &format!("{SERVICES}/hello-svc"),
        json!({"spec": {"publishNotReadyAddresses": false}}),
    )
    .await;
    api.until("the unready pod unpublished", slices, |l| {
        items(l)[0]["endpoints"][0]["conditions"]["ready"] == false
    })
    .await;

    // A pod deleted leaves; the Service deleted takes its Endpoints and slices.
    api.call(Method::DELETE, &format!("{PODS}/hello-b"), &Value::Null)
        .await
        .unwrap();
    api.until("the deleted pod gone", endpoints, |e| {
        e["subsets"][0]["addresses"].is_null()
    })
    .await;
    api.call(
        Method::DELETE,
        &format!("{SERVICES}/hello-svc"),
        &Value::Null,
    )
    .await
    .unwrap();
    api.until("the Endpoints gone", endpoints, Value::is_null)
        .await;
    api.until("the slices gone", slices, |l| count(l) == 0)
        .await;
}

#[tokio::test(start_paused = true)]
async fn servicelb_lists_the_schedulable_ready_nodes_as_ingress() {
    let api = Api::start().await;
    api.node("n1", json!({})).await;
    api.node("n2", json!({})).await;
    api.run(super::servicelb::start);
    let address = |node: &Value| {
        node["status"]["addresses"][0]["address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let n2 = address(&api.get("/api/v1/nodes/n2").await.unwrap());
    let mut both = vec![
        address(&api.get("/api/v1/nodes/n1").await.unwrap()),
        n2.clone(),
    ];
    both.sort();
    api.create(
        SERVICES,
        service(
            "front",
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
        ),
    )
    .await;
    api.create(SERVICES, service("plain", json!({"ports": [{"port": 80}]})))
        .await;
    let ingress = |s: &Value| -> Vec<String> {
        s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect()
    };
    let path = format!("{SERVICES}/front");
    api.until("both nodes listed", &path, |s| ingress(s) == both)
        .await;
    api.patch("/api/v1/nodes/n1", json!({"spec": {"unschedulable": true}}))
        .await;
    api.until("the cordoned node left out", &path, |s| {
        ingress(s) == [n2.clone()]
    })
    .await;
    api.patch(&path, json!({"spec": {"type": "ClusterIP"}}))
        .await;
    api.until("no ingress once it is no LoadBalancer", &path, |s| {
        s["status"]["loadBalancer"]["ingress"].is_null()
    })
    .await;
    let plain = api.get(&format!("{SERVICES}/plain")).await.unwrap();
    assert!(plain["status"]["loadBalancer"]["ingress"].is_null());
}

#[tokio::test(start_paused = true)]
async fn services_an_older_wk_stored_without_addresses_get_them_at_the_next_start() {
    let api = Api::start().await;
    // As an earlier wk stored it: no ClusterIP, no NodePort.
    let old = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "old", "namespace": "default", "uid": "u-old",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
    api.state
        .cache
        .store()
        .create(
            &crate::api::resources::by_kind("Service")
                .unwrap()
                .key(Some("default"), "old"),
            bytes::Bytes::from(old.to_string()),
        )
        .await
        .unwrap();
    api.state.cache.sync().await.unwrap();
    crate::server::bootstrap(
        &api.state,
        None,
        crate::server::Builtins {
            local_storage: true,
            ingress: true,
        },
    )
    .await
    .unwrap();
    let service = api.get(&format!("{SERVICES}/old")).await.unwrap();
    assert!(service["spec"]["clusterIP"].is_string(), "{service:#}");
    assert!(
        service["spec"]["ports"][0]["nodePort"].is_u64(),
        "{service:#}"
    );
}
