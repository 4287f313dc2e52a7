//! ResourceQuota and LimitRange admission, and the quota controller's status, through kubectl
//! against the real server (no agent: the pods stay Pending, and count all the same).

use std::time::Duration;

use crate::harness::{Cluster, eventually, stderr, stdout};

const LIMITS: &str = "
apiVersion: v1
kind: LimitRange
metadata: {name: sizes, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 200m, memory: 128Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: '1'}
";

const QUOTA: &str = "
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: '3', requests.cpu: 300m, limits.memory: 1Gi, count/configmaps: '1'}
";

fn run(c: &Cluster, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", name, "-n", "team", "--image", "hello:v1"];
    args.extend_from_slice(extra);
    c.kubectl(&args)
}

fn used(c: &Cluster, resource: &str) -> String {
    stdout(&c.kubectl(&[
        "get",
        "quota",
        "compute",
        "-n",
        "team",
        "-o",
        &format!(
            "jsonpath={{.status.used['{}']}}",
            resource.replace('.', "\\.")
        ),
    ]))
}

fn wait_used(c: &Cluster, resource: &str, want: &str) {
    let mut last = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            last = used(c, resource);
            last == want
        }),
        "quota status.used[{resource}] is {last:?}, not {want:?}"
    );
}

#[test]
fn limit_ranges_default_and_bound_pods_and_quotas_refuse_what_exceeds_them() {
    let c = Cluster::start();
    c.kubectl_ok(&["create", "namespace", "team"]);
    c.kubectl_apply(LIMITS);
    c.kubectl_apply(QUOTA);

    // The LimitRange fills in what the container leaves out.
    c.kubectl_ok(&["run", "p1", "-n", "team", "--image", "hello:v1"]);
    let resources = c.kubectl_ok(&[
        "get",
        "pod",
        "p1",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.containers[0].resources}",
    ]);
    let resources: serde_json::Value = serde_json::from_str(&resources).unwrap();
    assert_eq!(
        resources,
        serde_json::json!({"limits": {"cpu": "200m", "memory": "128Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"}})
    );

    // Its max refuses a bigger limit, with Kubernetes' words.
    let big = run(
        &c,
        "big",
        &[
            "--overrides",
            r#"{"spec": {"containers": [{"name": "big", "image": "hello:v1", "resources": {"limits": {"cpu": "2"}}}]}}"#,
        ],
    );
    assert!(!big.status.success());
    assert!(
        stderr(&big).contains(
            r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{}",
        stderr(&big)
    );

    // The quota lets pods in until its requests.cpu and pods are spent.
    c.kubectl_ok(&["run", "p2", "-n", "team", "--image", "hello:v1"]);
    c.kubectl_ok(&["run", "p3", "-n", "team", "--image", "hello:v1"]);
    let fourth = run(&c, "p4", &[]);
    assert!(!fourth.status.success());
    assert!(
        stderr(&fourth).contains(
            r#"pods "p4" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=100m, used: pods=3,requests.cpu=300m, limited: pods=3,requests.cpu=300m"#
        ),
        "{}",
        stderr(&fourth)
    );
    wait_used(&c, "pods", "3");
    wait_used(&c, "requests.cpu", "300m");
    wait_used(&c, "limits.memory", "384Mi");
    let listed = c.kubectl_ok(&["get", "quota", "-n", "team"]);
    assert!(
        listed.contains("pods: 3/3") && listed.contains("limits.memory: 384Mi/1Gi"),
        "{listed}"
    );
    let described = c.kubectl_ok(&["describe", "quota", "compute", "-n", "team"]);
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["requests.cpu", "300m", "300m"]),
        "{described}"
    );

    // Freed room is usable again, and the status follows.
    c.kubectl_ok(&["delete", "pod", "p1", "-n", "team", "--wait=false"]);
    wait_used(&c, "pods", "2");
    c.kubectl_ok(&["run", "p4", "-n", "team", "--image", "hello:v1"]);

    // Object counts.
    c.kubectl_ok(&["create", "configmap", "one", "-n", "team"]);
    let two = c.kubectl(&["create", "configmap", "two", "-n", "team"]);
    assert!(
        stderr(&two).contains(
            r#"configmaps "two" is forbidden: exceeded quota: compute, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"#
        ),
        "{}",
        stderr(&two)
    );

    // A ReplicaSet that meets the quota says why in a FailedCreate event.
    c.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image",
        "hello:v1",
        "--replicas=2",
    ]);
    let mut events = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            events = stdout(&c.kubectl(&["get", "events", "-n", "team"]));
            events.contains("FailedCreate") && events.contains("exceeded quota: compute")
        }),
        "{events}"
    );

    // A quota on something that cannot be counted is refused.
    let bad = c.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: bad, namespace: team}\nspec:\n  hard: {widgets: '1'}\n",
    );
    assert!(
        stderr(&bad).contains(
            "spec.hard[widgets]: Invalid value: \"widgets\": must be a standard resource for quota"
        ),
        "{}",
        stderr(&bad)
    );
    let inverted = c.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad, namespace: team}\nspec:\n  limits:\n  - type: Container\n    min: {cpu: '2'}\n    max: {cpu: '1'}\n",
    );
    assert!(
        stderr(&inverted).contains("min value 2 is greater than max value 1"),
        "{}",
        stderr(&inverted)
    );
}
