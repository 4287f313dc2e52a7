//! Pod status as the kubelet reports it: the phase, the conditions and the container statuses,
//! computed from the worker's view of its containers; plus the Events it posts.

use serde_json::{Value, json};

use crate::client::Client;

/// Kubernetes' timestamp format.
pub fn now() -> String {
    crate::clock::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One container's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not running: ContainerCreating, ErrImagePull, CrashLoopBackOff, PodInitializing...
    Waiting {
        /// The reason.
        reason: String,
        /// A message, if any.
        message: Option<String>,
    },
    /// Running since.
    Running {
        /// When it started.
        started_at: String,
    },
    /// Exited.
    Terminated {
        /// The exit code.
        exit_code: i32,
        /// Completed, Error, OOMKilled...
        reason: String,
        /// A message, if any.
        message: Option<String>,
        /// When it started.
        started_at: String,
        /// When it ended.
        finished_at: String,
    },
}

impl State {
    /// A waiting state.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            Self::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            Self::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason,
                    "startedAt": started_at, "finishedAt": finished_at});
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                json!({"terminated": t})
            }
        }
    }

    /// The exit code, if terminated.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// What the worker knows of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The container's name.
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// `name@sha256:...` once resolved.
    pub image_id: String,
    /// `wasm://...` once created.
    pub container_id: String,
    /// The current state.
    pub state: State,
    /// The previous run's terminated state.
    pub last: Option<State>,
    /// How many times it restarted.
    pub restart_count: u32,
    /// Whether it is ready (running, and its readiness probe passes).
    pub ready: bool,
}

impl Container {
    /// A container that has not been created yet.
    pub fn new(spec: &Value, waiting: &str) -> Self {
        Self {
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            image: spec["image"].as_str().unwrap_or_default().to_owned(),
            image_id: String::new(),
            container_id: String::new(),
            state: State::waiting(waiting, None),
            last: None,
            restart_count: 0,
            ready: false,
        }
    }

    fn json(&self) -> Value {
        let mut c = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "state": self.state.json(),
            "lastState": self.last.as_ref().map_or(json!({}), State::json),
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": matches!(self.state, State::Running { .. }),
        });
        if !self.container_id.is_empty() {
            c["containerID"] = json!(self.container_id);
        }
        c
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn terminated(&self) -> bool {
        matches!(self.state, State::Terminated { .. })
    }
}

/// What the worker knows of the whole pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// Init containers, in order.
    pub init: Vec<Container>,
    /// App containers.
    pub containers: Vec<Container>,
    /// Whether every init container succeeded.
    pub initialized: bool,
    /// Whether the sandbox exists.
    pub sandbox_ready: bool,
    /// The pod's IP.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: String,
    /// When the agent took the pod.
    pub start_time: String,
    /// A phase the worker decided (an init failure under restartPolicy Never).
    pub failed: Option<(String, String)>,
}

/// The pod phase for the containers' states under `policy`.
pub fn phase(pod: &Pod, policy: &str) -> &'static str {
    if pod.failed.is_some() {
        return "Failed";
    }
    if !pod.initialized || pod.containers.is_empty() {
        return "Pending";
    }
    if pod.containers.iter().all(Container::terminated) {
        let all_ok = pod
            .containers
            .iter()
            .all(|c| c.state.exit_code() == Some(0));
        return match (policy, all_ok) {
            ("Never" | "OnFailure", true) => "Succeeded",
            ("Never", false) => "Failed",
            _ => "Running",
        };
    }
    let started = |c: &Container| c.running() || c.last.is_some() || c.terminated();
    if pod.containers.iter().all(started) {
        "Running"
    } else {
        "Pending"
    }
}

/// The whole `status` the agent writes.
pub fn pod_status(pod: &Pod, policy: &str) -> Value {
    let t = now();
    let ready = !pod.containers.is_empty() && pod.containers.iter().all(|c| c.ready);
    let cond = |ty: &str, ok: bool, reason: Option<&str>| {
        let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" },
            "lastProbeTime": null, "lastTransitionTime": t});
        if let Some(r) = reason.filter(|_| !ok) {
            c["reason"] = json!(r);
        }
        c
    };
    let phase = phase(pod, policy);
    let done = matches!(phase, "Succeeded" | "Failed");
    let not_ready_reason = if done {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            cond("PodReadyToStartContainers", pod.sandbox_ready, None),
            cond("Initialized", pod.initialized || done, Some("ContainersNotInitialized")),
            cond("Ready", ready, Some(not_ready_reason)),
            cond("ContainersReady", ready, Some(not_ready_reason)),
            cond("PodScheduled", true, None),
        ],
        "hostIP": pod.host_ip,
        "hostIPs": [{"ip": pod.host_ip}],
        "startTime": pod.start_time,
        "containerStatuses": pod.containers.iter().map(Container::json).collect::<Vec<_>>(),
        "qosClass": "BestEffort",
    });
    if !pod.init.is_empty() {
        status["initContainerStatuses"] = pod.init.iter().map(Container::json).collect();
    }
    if let Some(ip) = &pod.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some((reason, message)) = &pod.failed {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

/// A condition as last written: its type, its status and when that status began.
pub type Transition = (String, String, String);

/// Gives each condition of `status` the transition time it was last written with, when its
/// status has not changed since; a changed or new one keeps the time [`pod_status`] gave it, as
/// the kubelet's conditions do. Returns the conditions as they are now, for the next call.
pub fn keep_transition_times(status: &mut Value, written: &[Transition]) -> Vec<Transition> {
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        let since = written
            .iter()
            .find(|(t, s, _)| c["type"] == t.as_str() && c["status"] == s.as_str())
            .map(|(_, _, since)| since.clone());
        if let Some(since) = since {
            c["lastTransitionTime"] = json!(since);
        }
    }
    transitions(status)
}

/// The type, status and transition time of each condition of `status` (a pod's or a node's).
pub fn transitions(status: &Value) -> Vec<Transition> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                text(&c["type"]),
                text(&c["status"]),
                text(&c["lastTransitionTime"]),
            )
        })
        .collect()
}

/// A digest of a status for telling whether it changed since the last write. The conditions'
/// transition times are left out: [`pod_status`] stamps them with the time it runs.
pub fn digest(status: &Value) -> u64 {
    let mut s = status.clone();
    if let Some(conditions) = s["conditions"].as_array_mut() {
        for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("lastTransitionTime");
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&s.to_string(), &mut h);
    std::hash::Hasher::finish(&h)
}

/// The pod's QoS class, from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .collect();
    let any = containers.iter().any(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
            || c["resources"]["limits"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][*r];
            let request = &c["resources"]["requests"][*r];
            !limit.is_null() && (request.is_null() || request == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Posts a kubelet Event about `pod` (and its `container`), in the background.
pub fn event(
    client: &Client,
    pod: &Value,
    node: &str,
    container: Option<&str>,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let mut involved = crate::client::events::reference(pod);
    involved["kind"] = json!("Pod");
    involved["apiVersion"] = json!("v1");
    if let Some(c) = container {
        let list = if pod["spec"]["initContainers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["name"] == c))
        {
            "initContainers"
        } else {
            "containers"
        };
        involved["fieldPath"] = json!(format!("spec.{list}{{{c}}}"));
    }
    let source = crate::client::events::Source {
        component: "kubelet",
        host: Some(node),
    };
    crate::client::events::record(client, involved, source, warning, reason, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(state: State) -> Container {
        Container {
            state,
            ..Container::new(&json!({"name": "c", "image": "i"}), "ContainerCreating")
        }
    }

    /// A pod whose one container runs, not ready yet.
    fn running() -> Pod {
        Pod {
            initialized: true,
            sandbox_ready: true,
            host_ip: "127.0.0.1".into(),
            start_time: now(),
            containers: vec![c(State::Running { started_at: now() })],
            ..Pod::default()
        }
    }

    /// The condition of type `ty` in a status.
    fn condition<'a>(s: &'a Value, ty: &str) -> &'a Value {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
            .unwrap()
    }

    /// Sets every condition's transition time.
    fn stamp(s: &mut Value, time: &str) {
        for c in s["conditions"].as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!(time);
        }
    }

    fn exited(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: now(),
            finished_at: now(),
        }
    }

    #[test]
    fn the_phase_follows_the_containers_and_the_restart_policy() {
        let mut pod = Pod {
            initialized: true,
            containers: vec![c(State::waiting("ContainerCreating", None))],
            ..Pod::default()
        };
        assert_eq!(phase(&pod, "Always"), "Pending");
        pod.containers[0].state = State::Running { started_at: now() };
        assert_eq!(phase(&pod, "Always"), "Running");
        pod.containers[0].state = exited(0);
        assert_eq!(phase(&pod, "Never"), "Succeeded");
        assert_eq!(phase(&pod, "OnFailure"), "Succeeded");
        assert_eq!(phase(&pod, "Always"), "Running", "it will restart");
        pod.containers[0].state = exited(3);
        assert_eq!(phase(&pod, "Never"), "Failed");
        assert_eq!(phase(&pod, "OnFailure"), "Running");
        pod.containers[0].state = State::waiting("CrashLoopBackOff", None);
        pod.containers[0].last = Some(exited(3));
        assert_eq!(phase(&pod, "Always"), "Running");
        pod.initialized = false;
        assert_eq!(phase(&pod, "Always"), "Pending");
        pod.failed = Some(("Init".into(), "init failed".into()));
        assert_eq!(phase(&pod, "Never"), "Failed");
    }

    #[test]
    fn status_has_the_kubelet_shape() {
        let mut pod = running();
        pod.containers[0].ready = true;
        let s = pod_status(&pod, "Always");
        assert_eq!(s["phase"], "Running");
        assert_eq!(condition(&s, "Ready")["status"], "True");
        assert_eq!(s["containerStatuses"][0]["started"], true);
        assert!(s["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
        assert!(s.get("initContainerStatuses").is_none());
    }

    #[test]
    fn a_status_digest_changes_with_the_status_and_not_with_the_transition_times() {
        let mut pod = running();
        let first = pod_status(&pod, "Always");
        let mut later = first.clone();
        stamp(&mut later, "2099-01-01T00:00:00Z");
        assert_ne!(first, later);
        assert_eq!(
            digest(&first),
            digest(&later),
            "only the transition times differ"
        );

        pod.containers[0].ready = true;
        let ready = pod_status(&pod, "Always");
        assert_ne!(digest(&first), digest(&ready), "the pod became ready");
        pod.containers[0].restart_count = 1;
        assert_ne!(
            digest(&ready),
            digest(&pod_status(&pod, "Always")),
            "a restart"
        );
        let mut qos = ready.clone();
        qos["qosClass"] = json!("Burstable");
        assert_ne!(
            digest(&ready),
            digest(&qos),
            "a field outside the conditions"
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut pod = running();
        let time = |s: &Value, ty: &str| condition(s, ty)["lastTransitionTime"].clone();
        let mut first = pod_status(&pod, "Always");
        stamp(&mut first, "2020-01-01T00:00:00Z");
        let written = keep_transition_times(&mut first, &[]);
        assert_eq!(
            time(&first, "Ready"),
            "2020-01-01T00:00:00Z",
            "nothing written yet"
        );

        pod.containers[0].ready = true;
        let mut second = pod_status(&pod, "Always");
        let written = keep_transition_times(&mut second, &written);
        assert_eq!(
            time(&second, "Initialized"),
            "2020-01-01T00:00:00Z",
            "still True"
        );
        assert_eq!(time(&second, "PodScheduled"), "2020-01-01T00:00:00Z");
        assert_ne!(
            time(&second, "Ready"),
            "2020-01-01T00:00:00Z",
            "False to True"
        );
        let ready_since = time(&second, "Ready");

        pod.containers[0].restart_count = 1;
        let mut third = pod_status(&pod, "Always");
        stamp(&mut third, "2099-01-01T00:00:00Z");
        keep_transition_times(&mut third, &written);
        assert_eq!(time(&third, "Ready"), ready_since, "still True");
        assert_eq!(time(&third, "Initialized"), "2020-01-01T00:00:00Z");
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        assert_eq!(qos_class(&json!({"containers": [{}]})), "BestEffort");
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"memory": "1Gi"}}}]})),
            "Burstable"
        );
    }
}
