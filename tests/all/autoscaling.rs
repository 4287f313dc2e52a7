//! HorizontalPodAutoscalers through kubectl against the real server and its agent, scaling
//! on the CPU the agent measures.

use std::time::Duration;

use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stdout};

const WAIT: Duration = Duration::from_secs(120);

fn deployment(name: &str, replicas: u32, cpu: &str, container: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - name: main\n        resources: {{requests: {{cpu: {cpu}}}}}\n{container}"
    )
}

fn wait_replicas(c: &Cluster, name: &str, want: &str) {
    let mut last = String::new();
    assert!(
        eventually(WAIT, || {
            last =
                stdout(&c.kubectl(&["get", "deployment", name, "-o", "jsonpath={.spec.replicas}"]));
            last == want
        }),
        "deployment {name} has {last} replicas, not {want}\n{}\n{}\n{}",
        stdout(&c.kubectl(&["get", "hpa", name, "-o", "yaml"])),
        stdout(&c.kubectl(&["get", "pods", "-o", "wide"])),
        stdout(&c.kubectl(&["top", "pods"]))
    );
}

#[test]
fn an_autoscaler_scales_a_busy_deployment_up_and_an_idle_one_down() {
    let c = Cluster::with_agent_args(&["--horizontal-pod-autoscaler-sync-period", "2s"]);
    import_all(&c);
    // One pod that spins a whole core against a request of 100m: far above 50%.
    c.kubectl_apply(&deployment(
        "busy",
        1,
        "100m",
        "        image: cmd:v1\n        imagePullPolicy: IfNotPresent\n        command: [cmd, spin]\n",
    ));
    c.kubectl_ok(&[
        "autoscale",
        "deployment",
        "busy",
        "--min=1",
        "--max=2",
        "--cpu-percent=50",
    ]);
    // kubectl autoscale wrote through autoscaling/v1; the object reads back through both.
    let v1 = c.kubectl_ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "busy",
        "-o",
        "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage}",
    ]);
    assert_eq!(v1, "autoscaling/v1 50");
    let v2 = c.jsonpath(
        "hpa",
        "busy",
        "{.apiVersion} {.spec.metrics[0].resource.target.averageUtilization}",
    );
    assert_eq!(v2, "autoscaling/v2 50");
    wait_replicas(&c, "busy", "2");
    let mut events = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            events = stdout(&c.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=busy,involvedObject.kind=HorizontalPodAutoscaler",
            ]));
            events.contains("SuccessfulRescale")
        }),
        "{events}"
    );
    assert!(
        events.contains(
            "New size: 2; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );
    let listed = c.kubectl_ok(&["get", "hpa", "busy"]);
    assert!(
        listed.contains("Deployment/busy") && listed.contains("%/50%"),
        "{listed}"
    );
    let limited = c.kubectl_ok(&[
        "get",
        "hpa",
        "busy",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingLimited\")].reason}",
    ]);
    // Two is its maximum, or the step it was allowed this period.
    assert!(
        ["TooManyReplicas", "DesiredWithinRange"].contains(&limited.as_str()),
        "{limited}"
    );
    c.kubectl_ok(&["delete", "deployment", "busy"]);

    // Three idle HTTP pods, with no scale-down window: down to the minimum.
    c.kubectl_apply(&deployment(
        "idle",
        3,
        "50m",
        "        image: hello:v1\n        imagePullPolicy: IfNotPresent\n",
    ));
    c.kubectl_apply(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: idle}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: idle}\n  minReplicas: 1\n  maxReplicas: 3\n  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}\n  behavior:\n    scaleDown: {stabilizationWindowSeconds: 0}\n",
    );
    // The server filled in the rest of Kubernetes' scaling rules.
    let policies = c.jsonpath("hpa", "idle", "{.spec.behavior.scaleUp.policies[*].type}");
    assert_eq!(policies, "Pods Percent");
    wait_replicas(&c, "idle", "1");
    let targets = c.kubectl_ok(&["get", "hpa", "idle"]);
    assert!(targets.contains("cpu: 0%/50%"), "{targets}");

    // wk autoscale makes one as kubectl does; a second autoscaler on the same target makes
    // both stand still.
    let made = c.wk_ok(&[
        "autoscale",
        "deployment",
        "idle",
        "--max",
        "3",
        "--name",
        "idle-wk",
    ]);
    assert!(
        made.contains("horizontalpodautoscaler.autoscaling/idle-wk autoscaled"),
        "{made}"
    );
    assert_eq!(
        c.jsonpath(
            "hpa",
            "idle-wk",
            "{.spec.scaleTargetRef.name} {.spec.metrics[0].resource.target.averageUtilization}"
        ),
        "idle 80"
    );
    let mut reason = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            reason = c.jsonpath(
                "hpa",
                "idle-wk",
                "{.status.conditions[?(@.type==\"ScalingActive\")].reason}",
            );
            reason == "AmbiguousSelector"
        }),
        "{reason}"
    );

    // A maximum below the minimum is refused.
    let bad = c.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: idle}\n  minReplicas: 3\n  maxReplicas: 2\n",
    );
    assert!(
        crate::harness::stderr(&bad).contains(
            "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"
        ),
        "{}",
        crate::harness::stderr(&bad)
    );
}
