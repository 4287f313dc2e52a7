//! What the server does to an object's body: typed decoding through k8s-openapi, strict field
//! checks, Kubernetes defaulting and validation.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::error::{ApiError, Cause};
use super::quantity::Quantity;
use super::resources::ResourceInfo;
use super::selector::{LabelSelector, validate_label_key, validate_label_value};

/// How unknown fields in a body are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn in a `Warning` header.
    Warn,
    /// Refuse the request, naming them.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; the Kubernetes default is Warn.
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not \"{other}\""
            ))),
        }
    }
}

fn typed<T: DeserializeOwned + Serialize>(
    res: &ResourceInfo,
    input: &Value,
) -> Result<Value, ApiError> {
    let parsed: T = serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {path}: {err}",
            kind = res.kind,
            v = res.version,
            err = e.inner()
        ))
    })?;
    serde_json::to_value(&parsed).map_err(ApiError::internal)
}

/// Decodes `input` as the resource's kind and returns the normalized JSON with unknown
/// fields removed, plus the unknown fields' paths.
///
/// # Errors
/// 400 when a field has the wrong type, or when `mode` is Strict and a field is unknown.
pub fn normalize(
    res: &ResourceInfo,
    input: &Value,
    mode: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let out = match res.kind {
        "Pod" => typed::<Pod>(res, input),
        "Namespace" => typed::<Namespace>(res, input),
        "Node" => typed::<Node>(res, input),
        "Service" => typed::<Service>(res, input),
        "Endpoints" => typed::<Endpoints>(res, input),
        "ConfigMap" => typed::<ConfigMap>(res, input),
        "Secret" => typed::<Secret>(res, input),
        "ServiceAccount" => typed::<ServiceAccount>(res, input),
        "Event" => typed::<Event>(res, input),
        "Deployment" => typed::<Deployment>(res, input),
        "ReplicaSet" => typed::<ReplicaSet>(res, input),
        "DaemonSet" => typed::<DaemonSet>(res, input),
        "StatefulSet" => typed::<StatefulSet>(res, input),
        "Job" => typed::<Job>(res, input),
        "CronJob" => typed::<CronJob>(res, input),
        "Lease" => typed::<Lease>(res, input),
        "ResourceQuota" => typed::<ResourceQuota>(res, input),
        "HorizontalPodAutoscaler" => {
            typed::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(res, input)
        }
        "LimitRange" => typed::<LimitRange>(res, input),
        "PersistentVolumeClaim" => typed::<PersistentVolumeClaim>(res, input),
        "PersistentVolume" => typed::<PersistentVolume>(res, input),
        "StorageClass" => typed::<k8s_openapi::api::storage::v1::StorageClass>(res, input),
        "PodDisruptionBudget" => {
            typed::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(res, input)
        }
        "EndpointSlice" => typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(res, input),
        "Ingress" => typed::<k8s_openapi::api::networking::v1::Ingress>(res, input),
        "IngressClass" => typed::<k8s_openapi::api::networking::v1::IngressClass>(res, input),
        "RuntimeClass" => typed::<k8s_openapi::api::node::v1::RuntimeClass>(res, input),
        other => Err(ApiError::internal(format!(
            "no typed decoder for kind {other}"
        ))),
    }?;
    let mut unknown = Vec::new();
    unknown_fields(input, &out, "", &mut unknown);
    if mode == FieldValidation::Strict && !unknown.is_empty() {
        let list = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {list}"
        )));
    }
    Ok((out, unknown))
}

/// Collects the paths present (and not null) in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, out: &Value, path: &str, found: &mut Vec<String>) {
    match (input, out) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, found),
                    None if v.is_null() => {}
                    None => found.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{idx}]"), found);
            }
        }
        _ => {}
    }
}

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

/// Sets `key` in the object at `v` when it is missing or null.
fn default_field(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj(v) {
        match m.get(key) {
            Some(x) if !x.is_null() => {}
            _ => {
                m.insert(key.to_owned(), value);
            }
        }
    }
}

/// The object at `key` under `v`, created empty when missing.
fn child<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let m = obj(v)?;
    let entry = m.entry(key.to_owned()).or_insert_with(|| json!({}));
    if entry.is_null() {
        *entry = json!({});
    }
    entry.is_object().then_some(entry)
}

/// The pull policy Kubernetes picks from an image reference: Always for `:latest` or no tag.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(spec: &mut Value, list: &str) {
    let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
        return;
    };
    for c in containers {
        let policy = c
            .get("image")
            .and_then(Value::as_str)
            .map(default_pull_policy);
        if let Some(policy) = policy {
            default_field(c, "imagePullPolicy", json!(policy));
        }
        default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
        default_field(c, "terminationMessagePolicy", json!("File"));
        default_field(c, "resources", json!({}));
        if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                default_field(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// A container that states a limit but no request for a resource requests its limit, as
/// Kubernetes defaults pods.
fn default_requests_from_limits(spec: &mut Value) {
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(limits) = c
                .pointer("/resources/limits")
                .and_then(Value::as_object)
                .cloned()
            else {
                continue;
            };
            if limits.is_empty() {
                continue;
            }
            let resources = &mut c["resources"];
            if !resources["requests"].is_object() {
                resources["requests"] = json!({});
            }
            for (k, v) in limits {
                if resources["requests"].get(&k).is_none() {
                    resources["requests"][&k] = v;
                }
            }
        }
    }
}

/// autoscaling/v2 defaults: one replica at least, CPU at 80% when no metric is named, and
/// Kubernetes' scaling rules filled into a `behavior` that is given.
fn default_autoscaler(object: &mut Value) {
    let Some(spec) = child(object, "spec") else {
        return;
    };
    default_field(spec, "minReplicas", json!(1));
    if spec["metrics"].as_array().is_none_or(Vec::is_empty) {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
    if spec["behavior"].is_object() {
        let defaults = [
            (
                "scaleUp",
                0,
                json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15}]),
            ),
            (
                "scaleDown",
                300,
                json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            ),
        ];
        for (direction, window, policies) in defaults {
            let behavior = &mut spec["behavior"];
            if !behavior[direction].is_object() {
                behavior[direction] = json!({});
            }
            let rules = &mut behavior[direction];
            default_field(rules, "stabilizationWindowSeconds", json!(window));
            default_field(rules, "selectPolicy", json!("Max"));
            default_field(rules, "policies", policies);
        }
    }
}

/// Pod spec defaults, for pods and for pod templates.
fn default_pod_spec(spec: &mut Value, restart_policy: bool) {
    if restart_policy {
        default_field(spec, "restartPolicy", json!("Always"));
    }
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    default_field(spec, "securityContext", json!({}));
    default_field(spec, "enableServiceLinks", json!(true));
    default_containers(spec, "initContainers");
    default_containers(spec, "containers");
}

fn default_template(spec: &mut Value, restart_policy: bool) {
    if let Some(pod_spec) = child(spec, "template").and_then(|t| child(t, "spec")) {
        default_pod_spec(pod_spec, restart_policy);
    }
}

pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(res));
            let request = requests.and_then(|r| r.get(res)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn default_job_spec(spec: &mut Value) {
    let both_unset = spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null);
    if both_unset {
        default_field(spec, "completions", json!(1));
    }
    default_field(spec, "parallelism", json!(1));
    default_field(spec, "backoffLimit", json!(6));
    default_field(spec, "completionMode", json!("NonIndexed"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    default_field(spec, "manualSelector", json!(false));
    default_template(spec, false);
}

/// Adds the NoExecute tolerations for not-ready and unreachable nodes that a pod lacks, as
/// Kubernetes' DefaultTolerationSeconds admission does, but for 30 s instead of 300 (ADR 009).
fn default_tolerations(spec: &mut Value) {
    use crate::controllers::nodelifecycle::{DEFAULT_TOLERATION_SECONDS, NOT_READY, UNREACHABLE};
    let Some(map) = obj(spec) else { return };
    let list = map.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [NOT_READY, UNREACHABLE] {
        let covered = list.iter().any(|t| {
            t["key"] == key
                && t["effect"]
                    .as_str()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute")
        });
        if !covered {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}),
            );
        }
    }
}

/// Fills in the fields Kubernetes defaults. `creating` adds create-only defaults (initial
/// status, generated selectors).
pub fn apply_defaults(res: &ResourceInfo, object: &mut Value, creating: bool) {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match res.kind {
        "Pod" => {
            if let Some(spec) = child(object, "spec") {
                default_pod_spec(spec, true);
                default_requests_from_limits(spec);
            }
            if creating {
                if let Some(spec) = child(object, "spec") {
                    default_tolerations(spec);
                }
                let qos = qos_class(object.get("spec").unwrap_or(&Value::Null));
                if let Some(status) = child(object, "status") {
                    default_field(status, "phase", json!("Pending"));
                    default_field(status, "qosClass", json!(qos));
                }
            }
        }
        "LimitRange" => super::admission::default_limit_range(object),
        "HorizontalPodAutoscaler" => default_autoscaler(object),
        "PersistentVolumeClaim" => {
            if let Some(spec) = child(object, "spec") {
                default_field(spec, "volumeMode", json!("Filesystem"));
            }
            if creating {
                object["status"] = json!({"phase": "Pending"});
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = child(object, "spec") {
                default_field(spec, "volumeMode", json!("Filesystem"));
                default_field(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            }
            if creating {
                object["status"] = json!({"phase": "Pending"});
            }
        }
        "StorageClass" => {
            default_field(object, "reclaimPolicy", json!("Delete"));
            default_field(object, "volumeBindingMode", json!("Immediate"));
        }
        "Service" => {
            let Some(spec) = child(object, "spec") else {
                return;
            };
            default_field(spec, "type", json!("ClusterIP"));
            default_field(spec, "sessionAffinity", json!("None"));
            let external_name = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
            if !external_name {
                default_field(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    default_field(p, "protocol", json!("TCP"));
                    // Zero means unset, as in Kubernetes (and protobuf bodies always carry it).
                    if let Some(m) = p.as_object_mut() {
                        m.retain(|k, v| {
                            !(matches!(k.as_str(), "nodePort" | "targetPort") && *v == json!(0))
                        });
                    }
                    if let Some(port) = p.get("port").cloned() {
                        default_field(p, "targetPort", port);
                    }
                }
            }
            if let Some(status) = child(object, "status") {
                default_field(status, "loadBalancer", json!({}));
            }
        }
        "Deployment" => {
            let Some(spec) = child(object, "spec") else {
                return;
            };
            default_field(spec, "replicas", json!(1));
            default_field(spec, "revisionHistoryLimit", json!(10));
            default_field(spec, "progressDeadlineSeconds", json!(600));
            if let Some(strategy) = child(spec, "strategy") {
                default_field(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                    && let Some(ru) = child(strategy, "rollingUpdate")
                {
                    default_field(ru, "maxUnavailable", json!("25%"));
                    default_field(ru, "maxSurge", json!("25%"));
                }
            }
            default_template(spec, true);
        }
        "ReplicaSet" => {
            let Some(spec) = child(object, "spec") else {
                return;
            };
            default_field(spec, "replicas", json!(1));
            default_template(spec, true);
        }
        "StatefulSet" => {
            let Some(spec) = child(object, "spec") else {
                return;
            };
            default_field(spec, "replicas", json!(1));
            default_field(spec, "podManagementPolicy", json!("OrderedReady"));
            default_field(spec, "revisionHistoryLimit", json!(10));
            if let Some(strategy) = child(spec, "updateStrategy") {
                default_field(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                    && let Some(ru) = child(strategy, "rollingUpdate")
                {
                    default_field(ru, "partition", json!(0));
                }
            }
            if let Some(p) = child(spec, "persistentVolumeClaimRetentionPolicy") {
                default_field(p, "whenDeleted", json!("Retain"));
                default_field(p, "whenScaled", json!("Retain"));
            }
            default_template(spec, true);
        }
        "DaemonSet" => {
            let Some(spec) = child(object, "spec") else {
                return;
            };
            default_field(spec, "revisionHistoryLimit", json!(10));
            if let Some(strategy) = child(spec, "updateStrategy") {
                default_field(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                    && let Some(ru) = child(strategy, "rollingUpdate")
                {
                    default_field(ru, "maxUnavailable", json!(1));
                    default_field(ru, "maxSurge", json!(0));
                }
            }
            default_template(spec, true);
        }
        "Job" => {
            let manual = object
                .pointer("/spec/manualSelector")
                .and_then(Value::as_bool)
                == Some(true);
            if creating && !manual && !uid.is_empty() {
                let labels = json!({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                                    "controller-uid": uid, "job-name": name});
                if let Some(spec) = child(object, "spec") {
                    default_field(
                        spec,
                        "selector",
                        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                    );
                    if let Some(tl) = child(spec, "template")
                        .and_then(|t| child(t, "metadata"))
                        .and_then(|m| child(m, "labels"))
                    {
                        for (k, v) in labels.as_object().into_iter().flatten() {
                            default_field(tl, k, v.clone());
                        }
                    }
                }
            }
            if let Some(spec) = child(object, "spec") {
                default_job_spec(spec);
            }
        }
        "CronJob" => {
            let Some(spec) = child(object, "spec") else {
                return;
            };
            default_field(spec, "concurrencyPolicy", json!("Allow"));
            default_field(spec, "suspend", json!(false));
            default_field(spec, "successfulJobsHistoryLimit", json!(3));
            default_field(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(js) = child(spec, "jobTemplate").and_then(|t| child(t, "spec")) {
                default_field(js, "backoffLimit", json!(6));
                default_field(js, "completionMode", json!("NonIndexed"));
                default_field(js, "suspend", json!(false));
                default_template(js, false);
            }
        }
        "Namespace" => {
            if let Some(labels) = child(object, "metadata").and_then(|m| child(m, "labels")) {
                default_field(labels, "kubernetes.io/metadata.name", json!(name));
            }
            if let Some(spec) = child(object, "spec") {
                default_field(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = child(object, "status") {
                default_field(status, "phase", json!("Active"));
            }
        }
        "Secret" => {
            default_field(object, "type", json!("Opaque"));
            // stringData is write-only: it is merged into data (winning over it), as the
            // Kubernetes API server does.
            if let Some(Value::Object(strings)) =
                object.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine as _;
                let data = object
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in strings {
                        let text = v.as_str().unwrap_or_default();
                        data.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

/// Whether the kind counts `metadata.generation` up on spec changes.
pub fn has_generation(res: &ResourceInfo) -> bool {
    matches!(res.group, "apps" | "batch" | "policy")
}

// ---- validation ----

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Whether `s` is a DNS-1123 label (at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS-1123 subdomain (at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Checks a name against the resource's naming rule, returning the rule's message on failure.
pub fn check_name(res: &ResourceInfo, name: &str) -> Result<(), String> {
    let label = matches!(res.kind, "Namespace" | "Service");
    let ok = if label {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name)
    };
    if ok {
        Ok(())
    } else if label {
        Err(DNS1123_LABEL_MSG.to_owned())
    } else {
        Err(DNS1123_SUBDOMAIN_MSG.to_owned())
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn validate_metadata(res: &ResourceInfo, object: &Value, causes: &mut Vec<Cause>) {
    let name = str_at(object, "/metadata/name").unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if let Err(msg) = check_name(res, name) {
        causes.push(Cause::invalid("metadata.name", name, msg));
    }
    if let Some(labels) = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
    {
        for (k, v) in labels {
            if let Err(msg) = validate_label_key(k) {
                causes.push(Cause::invalid("metadata.labels", k, msg));
            }
            match v.as_str() {
                Some(s) => {
                    if let Err(msg) = validate_label_value(s) {
                        causes.push(Cause::invalid(format!("metadata.labels.{k}"), s, msg));
                    }
                }
                None => causes.push(Cause::invalid(
                    format!("metadata.labels.{k}"),
                    v,
                    "must be a string",
                )),
            }
        }
    }
    if let Some(annotations) = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in annotations {
            if let Err(msg) = validate_label_key(k) {
                causes.push(Cause::invalid("metadata.annotations", k, msg));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than 262144 bytes (is {total})"),
                field: "metadata.annotations".into(),
            });
        }
    }
}

fn validate_containers(
    spec: &Value,
    path: &str,
    names: &mut Vec<String>,
    list: &str,
    volumes: &[String],
    causes: &mut Vec<Cause>,
) {
    let Some(containers) = spec.get(list).and_then(Value::as_array) else {
        return;
    };
    for (i, c) in containers.iter().enumerate() {
        let p = format!("{path}.{list}[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{p}.name"))),
            Some(n) => {
                if !is_dns1123_label(n) {
                    causes.push(Cause::invalid(format!("{p}.name"), n, DNS1123_LABEL_MSG));
                }
                if names.iter().any(|x| x == n) {
                    causes.push(Cause::duplicate(format!("{p}.name"), n));
                }
                names.push(n.to_owned());
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            causes.push(Cause::required(format!("{p}.image")));
        }
        if let Some(policy) = c.get("imagePullPolicy").and_then(Value::as_str)
            && !["Always", "IfNotPresent", "Never"].contains(&policy)
        {
            causes.push(Cause::not_supported(
                format!("{p}.imagePullPolicy"),
                policy,
                &["Always", "IfNotPresent", "Never"],
            ));
        }
        for (j, port) in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let pp = format!("{p}.ports[{j}]");
            match port.get("containerPort").and_then(Value::as_i64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => causes.push(Cause::invalid(
                    format!("{pp}.containerPort"),
                    n,
                    "must be between 1 and 65535, inclusive",
                )),
                None => causes.push(Cause::required(format!("{pp}.containerPort"))),
            }
            if let Some(proto) = port.get("protocol").and_then(Value::as_str)
                && !["TCP", "UDP", "SCTP"].contains(&proto)
            {
                causes.push(Cause::not_supported(
                    format!("{pp}.protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        for (j, m) in c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mp = format!("{p}.volumeMounts[{j}]");
            match m.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{mp}.name"))),
                Some(n) if !volumes.iter().any(|v| v == n) => causes.push(Cause {
                    reason: "FieldValueNotFound",
                    message: format!("Not found: \"{n}\""),
                    field: format!("{mp}.name"),
                }),
                Some(_) => {}
            }
            if m.get("mountPath")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(format!("{mp}.mountPath")));
            }
        }
    }
}

/// Validates a pod spec at `path` (such as `spec` or `spec.template.spec`).
fn validate_pod_spec(spec: Option<&Value>, path: &str, restart: &[&str], causes: &mut Vec<Cause>) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        causes.push(Cause::required(path.to_owned()));
        return;
    };
    let mut volumes = Vec::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match v.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{path}.volumes[{i}].name"))),
            Some(n) => {
                if !is_dns1123_label(n) {
                    causes.push(Cause::invalid(
                        format!("{path}.volumes[{i}].name"),
                        n,
                        DNS1123_LABEL_MSG,
                    ));
                }
                if volumes.iter().any(|x| x == n) {
                    causes.push(Cause::duplicate(format!("{path}.volumes[{i}].name"), n));
                }
                volumes.push(n.to_owned());
            }
        }
    }
    if spec
        .get("containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = Vec::new();
    validate_containers(spec, path, &mut names, "initContainers", &volumes, causes);
    validate_containers(spec, path, &mut names, "containers", &volumes, causes);
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !restart.contains(&policy) {
            causes.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                restart,
            ));
        }
    } else if !restart.contains(&"Always") {
        causes.push(Cause::required(format!("{path}.restartPolicy")));
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        && g < 0
    {
        causes.push(Cause::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
}

/// Validates a workload's selector against its pod template's labels.
fn validate_selector_and_template(
    spec: &Value,
    path: &str,
    restart: &[&str],
    causes: &mut Vec<Cause>,
) {
    let selector = spec.get("selector");
    match selector {
        None | Some(Value::Null) => causes.push(Cause::required(format!("{path}.selector"))),
        Some(sel) => match LabelSelector::from_json(sel) {
            Err(e) => causes.push(Cause::invalid(format!("{path}.selector"), sel, e)),
            Ok(parsed) if parsed.is_empty() => causes.push(Cause::invalid(
                format!("{path}.selector"),
                sel,
                "empty selector is invalid for deployment",
            )),
            Ok(parsed) => {
                let labels = spec
                    .pointer("/template/metadata/labels")
                    .and_then(Value::as_object);
                if !parsed.matches(labels) {
                    let shown = labels
                        .map(|l| Value::Object(l.clone()))
                        .unwrap_or(json!({}));
                    causes.push(Cause::invalid(
                        format!("{path}.template.metadata.labels"),
                        labels_string(&shown),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    validate_pod_spec(
        spec.pointer("/template/spec"),
        &format!("{path}.template.spec"),
        restart,
        causes,
    );
}

fn labels_string(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn validate_replicas(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::invalid_number(
            format!("{path}.replicas"),
            r,
            "must be greater than or equal to 0",
        ));
    }
}

fn validate_data_keys(object: &Value, field: &str, causes: &mut Vec<Cause>) {
    for (k, _) in object
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c));
        if !ok {
            causes.push(Cause::invalid(
                format!("{field}[{k}]"),
                k,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

fn validate_service(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").cloned().unwrap_or(json!({}));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&ty) {
        causes.push(Cause::not_supported("spec.type", ty, &types));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        match p.get("port").and_then(Value::as_i64) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => causes.push(Cause::invalid(
                format!("{pp}.port"),
                n,
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(Cause::required(format!("{pp}.port"))),
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{pp}.name")));
        }
        if !name.is_empty() {
            if names.contains(&name) {
                causes.push(Cause::duplicate(format!("{pp}.name"), name));
            }
            names.push(name);
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && !(30000..=32767).contains(&np)
        {
            causes.push(Cause::invalid(
                format!("{pp}.nodePort"),
                np,
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            ));
        }
    }
    if ty == "ExternalName"
        && spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.externalName"));
    }
}

fn validate_cron_schedule(schedule: &str) -> Result<(), String> {
    let mut text = schedule.trim();
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest
                .split_once(char::is_whitespace)
                .map_or("", |(_, s)| s.trim());
        }
    }
    crate::controllers::cronjob::Schedule::parse(text).map(drop)
}

/// Validates a whole object, answering 422 with one cause per bad field.
///
/// # Errors
/// 422 Invalid listing every problem found.
pub fn validate(res: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    validate_metadata(res, object, &mut causes);
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    match res.kind {
        "Pod" => validate_pod_spec(
            object.get("spec"),
            "spec",
            &["Always", "OnFailure", "Never"],
            &mut causes,
        ),
        "Deployment" | "ReplicaSet" | "StatefulSet" => {
            validate_replicas(&spec, "spec", &mut causes);
            // A StatefulSet's claim templates are volumes of its pods.
            let mut spec = spec.clone();
            let claims: Vec<Value> = spec["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    json!({"name": t["metadata"]["name"],
                    "persistentVolumeClaim": {"claimName": t["metadata"]["name"]}})
                })
                .collect();
            if !claims.is_empty() && spec["template"]["spec"].is_object() {
                let mut volumes = spec["template"]["spec"]["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                volumes.retain(|v| !claims.iter().any(|c| c["name"] == v["name"]));
                volumes.extend(claims);
                spec["template"]["spec"]["volumes"] = json!(volumes);
            }
            validate_selector_and_template(&spec, "spec", &["Always"], &mut causes);
            if res.kind == "Deployment" {
                let ty = spec
                    .pointer("/strategy/type")
                    .and_then(Value::as_str)
                    .unwrap_or("RollingUpdate");
                if !["RollingUpdate", "Recreate"].contains(&ty) {
                    causes.push(Cause::not_supported(
                        "spec.strategy.type",
                        ty,
                        &["Recreate", "RollingUpdate"],
                    ));
                }
            }
        }
        "DaemonSet" => validate_selector_and_template(&spec, "spec", &["Always"], &mut causes),
        "Job" => {
            validate_selector_and_template(&spec, "spec", &["OnFailure", "Never"], &mut causes)
        }
        "CronJob" => {
            match spec.get("schedule").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required("spec.schedule")),
                Some(s) => {
                    if let Err(e) = validate_cron_schedule(s) {
                        causes.push(Cause::invalid("spec.schedule", s, e));
                    }
                }
            }
            validate_pod_spec(
                spec.pointer("/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
                &["OnFailure", "Never"],
                &mut causes,
            );
        }
        "PodDisruptionBudget"
            if spec.get("minAvailable").is_some() && spec.get("maxUnavailable").is_some() =>
        {
            causes.push(Cause::invalid(
                "spec",
                &spec,
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        "ResourceQuota" => validate_quota(&spec, &mut causes),
        "HorizontalPodAutoscaler" => validate_autoscaler(&spec, &mut causes),
        "PersistentVolumeClaim" | "PersistentVolume" => {
            validate_volume(res.kind, &spec, &mut causes)
        }
        "StorageClass" => {
            if str_at(object, "/provisioner").is_none_or(str::is_empty) {
                causes.push(Cause::required("provisioner"));
            }
            let mode = str_at(object, "/volumeBindingMode").unwrap_or_default();
            if !["Immediate", "WaitForFirstConsumer"].contains(&mode) {
                causes.push(Cause::not_supported(
                    "volumeBindingMode",
                    mode,
                    &["Immediate", "WaitForFirstConsumer"],
                ));
            }
        }
        "LimitRange" => validate_limit_range(&spec, &mut causes),
        "Service" => validate_service(object, &mut causes),
        "ConfigMap" => {
            validate_data_keys(object, "data", &mut causes);
            validate_data_keys(object, "binaryData", &mut causes);
        }
        "Secret" => {
            validate_data_keys(object, "data", &mut causes);
            validate_data_keys(object, "stringData", &mut causes);
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let name = str_at(object, "/metadata/name").unwrap_or_default();
        Err(ApiError::invalid(res, name, causes))
    }
}

/// The quantities of a resource list, each checked, at `path`.
fn quantities(list: &Value, path: &str, causes: &mut Vec<Cause>) -> Vec<(String, Quantity)> {
    let mut out = Vec::new();
    for (k, v) in list.as_object().into_iter().flatten() {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        match Quantity::parse(&text) {
            Ok(q) if q.millis() >= 0 => out.push((k.clone(), q)),
            Ok(_) => causes.push(Cause::invalid(
                format!("{path}[{k}]"),
                &text,
                "must be greater than or equal to 0",
            )),
            Err(e) => causes.push(Cause::invalid(format!("{path}[{k}]"), &text, e)),
        }
    }
    out
}

fn validate_quota(spec: &Value, causes: &mut Vec<Cause>) {
    for (k, _) in quantities(&spec["hard"], "spec.hard", causes) {
        if !super::admission::quota_name_known(&k) {
            causes.push(Cause::invalid(
                format!("spec.hard[{k}]"),
                &k,
                "must be a standard resource for quota",
            ));
        }
    }
    let named = spec["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| ("spec.scopes", s));
    let selected = spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                "spec.scopeSelector.matchExpressions.scopeName",
                &e["scopeName"],
            )
        });
    for (path, scope) in named.chain(selected) {
        let s = scope.as_str().unwrap_or_default();
        if !super::admission::SCOPES.contains(&s) {
            causes.push(Cause::not_supported(path, s, super::admission::SCOPES));
        }
    }
    for (i, e) in spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let op = e["operator"].as_str().unwrap_or_default();
        if op != "Exists" {
            causes.push(Cause::not_supported(
                format!("spec.scopeSelector.matchExpressions[{i}].operator"),
                op,
                &["Exists"],
            ));
        }
    }
}

/// The access modes a claim or volume may ask for.
const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn validate_volume(kind: &str, spec: &Value, causes: &mut Vec<Cause>) {
    let modes = spec["accessModes"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if modes.is_empty() {
        causes.push(Cause::required("spec.accessModes"));
    }
    for m in modes {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            causes.push(Cause::not_supported("spec.accessModes", m, ACCESS_MODES));
        }
    }
    let (field, path) = if kind == "PersistentVolume" {
        (&spec["capacity"], "spec.capacity")
    } else {
        (&spec["resources"]["requests"], "spec.resources.requests")
    };
    match field.get("storage") {
        None => causes.push(Cause::required(format!("{path}[storage]"))),
        Some(_) => {
            for (k, q) in quantities(field, path, causes) {
                if k == "storage" && q.millis() <= 0 {
                    causes.push(Cause::invalid(
                        format!("{path}[storage]"),
                        q.millis() / 1000,
                        "must be greater than zero",
                    ));
                }
            }
        }
    }
    if kind == "PersistentVolume" {
        let sources = ["hostPath", "local", "csi"];
        let given: Vec<&str> = sources
            .iter()
            .copied()
            .filter(|s| !spec[*s].is_null())
            .collect();
        if given.len() != 1 {
            causes.push(Cause::invalid(
                "spec",
                given.join(", "),
                "must specify exactly one volume source of those wk mounts: hostPath, local, or csi with the driver wk.dev/local-path",
            ));
        }
    }
}

fn validate_autoscaler(spec: &Value, causes: &mut Vec<Cause>) {
    for direction in ["scaleUp", "scaleDown"] {
        let rules = &spec["behavior"][direction];
        if !rules.is_object() {
            continue;
        }
        let path = format!("spec.behavior.{direction}");
        if let Some(w) = rules["stabilizationWindowSeconds"].as_i64()
            && !(0..=3600).contains(&w)
        {
            causes.push(Cause::invalid_number(
                format!("{path}.stabilizationWindowSeconds"),
                w,
                "must be less than or equal to 3600 and not negative",
            ));
        }
        let select = rules["selectPolicy"].as_str().unwrap_or("Max");
        if !["Max", "Min", "Disabled"].contains(&select) {
            causes.push(Cause::not_supported(
                format!("{path}.selectPolicy"),
                select,
                &["Disabled", "Max", "Min"],
            ));
        }
        match rules["policies"].as_array() {
            Some(p) if p.is_empty() => {
                causes.push(Cause::required(format!("{path}.policies")));
            }
            Some(policies) => {
                for (i, p) in policies.iter().enumerate() {
                    let at = format!("{path}.policies[{i}]");
                    let ty = p["type"].as_str().unwrap_or_default();
                    if !["Pods", "Percent"].contains(&ty) {
                        causes.push(Cause::not_supported(
                            format!("{at}.type"),
                            ty,
                            &["Percent", "Pods"],
                        ));
                    }
                    let value = p["value"].as_i64().unwrap_or(0);
                    if value <= 0 {
                        causes.push(Cause::invalid_number(
                            format!("{at}.value"),
                            value,
                            "must be greater than zero",
                        ));
                    }
                    let period = p["periodSeconds"].as_i64().unwrap_or(0);
                    if !(1..=1800).contains(&period) {
                        causes.push(Cause::invalid_number(
                            format!("{at}.periodSeconds"),
                            period,
                            "must be greater than zero and less than or equal to 1800",
                        ));
                    }
                }
            }
            None => {}
        }
    }
    for field in ["kind", "name"] {
        if spec["scaleTargetRef"][field]
            .as_str()
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("spec.scaleTargetRef.{field}")));
        }
    }
    let min = spec["minReplicas"].as_i64().unwrap_or(1);
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    if min < 1 {
        causes.push(Cause::invalid_number(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
    if max < min {
        causes.push(Cause::invalid_number(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to `minReplicas`",
        ));
    }
    for (i, m) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        let ty = m["type"].as_str().unwrap_or_default();
        let field = match ty {
            "Resource" => "resource",
            "ContainerResource" => "containerResource",
            "Pods" | "Object" | "External" => continue,
            _ => {
                causes.push(Cause::not_supported(
                    format!("spec.metrics[{i}].type"),
                    ty,
                    &[
                        "ContainerResource",
                        "External",
                        "Object",
                        "Pods",
                        "Resource",
                    ],
                ));
                continue;
            }
        };
        let target = &m[field]["target"];
        let path = format!("spec.metrics[{i}].{field}.target");
        match target["type"].as_str().unwrap_or_default() {
            "Utilization" if target["averageUtilization"].as_i64().is_none_or(|u| u < 1) => {
                causes.push(Cause::required(format!("{path}.averageUtilization")));
            }
            "AverageValue" if target["averageValue"].is_null() => {
                causes.push(Cause::required(format!("{path}.averageValue")));
            }
            "Utilization" | "AverageValue" => {}
            other => causes.push(Cause::not_supported(
                format!("{path}.type"),
                other,
                &["AverageValue", "Utilization"],
            )),
        }
    }
}

fn validate_limit_range(spec: &Value, causes: &mut Vec<Cause>) {
    for (i, item) in spec["limits"].as_array().into_iter().flatten().enumerate() {
        let path = format!("spec.limits[{i}]");
        let ty = item["type"].as_str().unwrap_or_default();
        if !["Container", "Pod", "PersistentVolumeClaim"].contains(&ty) {
            causes.push(Cause::not_supported(
                format!("{path}.type"),
                ty,
                &["Container", "PersistentVolumeClaim", "Pod"],
            ));
        }
        let field =
            |f: &str, causes: &mut Vec<Cause>| -> std::collections::BTreeMap<String, Quantity> {
                quantities(&item[f], &format!("{path}.{f}"), causes)
                    .into_iter()
                    .collect()
            };
        let (min, max) = (field("min", causes), field("max", causes));
        let (default, request) = (field("default", causes), field("defaultRequest", causes));
        field("maxLimitRequestRatio", causes);
        if ty == "Pod" && (!default.is_empty() || !request.is_empty()) {
            causes.push(Cause::invalid(
                format!("{path}.default"),
                &item["default"],
                "may not be specified when `type` is 'Pod'",
            ));
        }
        let show = |k: &str, q: Quantity| super::admission::show(k, q);
        for (k, lo) in &min {
            if let Some(hi) = max.get(k).filter(|hi| lo > hi) {
                causes.push(Cause::invalid(
                    format!("{path}.min[{k}]"),
                    show(k, *lo),
                    format!(
                        "min value {} is greater than max value {}",
                        show(k, *lo),
                        show(k, *hi)
                    ),
                ));
            }
        }
        for (name, list) in [("default", &default), ("defaultRequest", &request)] {
            for (k, q) in list {
                if let Some(lo) = min.get(k).filter(|lo| q < lo) {
                    causes.push(Cause::invalid(
                        format!("{path}.{name}[{k}]"),
                        show(k, *q),
                        format!(
                            "min value {} is greater than {name} value {}",
                            show(k, *lo),
                            show(k, *q)
                        ),
                    ));
                }
                if let Some(hi) = max.get(k).filter(|hi| q > hi) {
                    causes.push(Cause::invalid(
                        format!("{path}.{name}[{k}]"),
                        show(k, *q),
                        format!(
                            "{name} value {} is greater than max value {}",
                            show(k, *q),
                            show(k, *hi)
                        ),
                    ));
                }
            }
        }
    }
}

/// Checks what an update may not change, comparing the stored and the new object.
///
/// # Errors
/// 422 Invalid naming each immutable field that changed.
pub fn validate_update(res: &ResourceInfo, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let changed = |ptr: &str| old.pointer(ptr) != new.pointer(ptr);
    match res.kind {
        "PersistentVolumeClaim" => {
            // Only the size may change, and a volume name may be set once (by the binder).
            for field in ["accessModes", "selector", "volumeMode", "dataSource"] {
                if changed(&format!("/spec/{field}")) {
                    causes.push(Cause::immutable(format!("spec.{field}")));
                }
            }
            for field in ["volumeName", "storageClassName"] {
                let was = old["spec"][field].as_str().unwrap_or_default();
                if !was.is_empty() && changed(&format!("/spec/{field}")) {
                    causes.push(Cause::immutable(format!("spec.{field}")));
                }
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job"
            if changed("/spec/selector") =>
        {
            causes.push(Cause::immutable("spec.selector"));
        }
        "Pod" => {
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("image");
                            }
                        }
                    }
                }
                if let Some(m) = spec.as_object_mut() {
                    for mutable in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "nodeName",
                        "schedulingGates",
                    ] {
                        m.remove(mutable);
                    }
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push(Cause {
                    reason: "FieldValueForbidden",
                    message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                    field: "spec".into(),
                });
            }
            let old_node = old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !old_node.is_empty() && changed("/spec/nodeName") {
                causes.push(Cause::immutable("spec.nodeName"));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let name = str_at(new, "/metadata/name").unwrap_or_default();
        Err(ApiError::invalid(res, name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::by_kind;

    fn res(kind: &str) -> &'static ResourceInfo {
        by_kind(kind).unwrap()
    }

    #[test]
    fn pull_policy_follows_the_tag_rule() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("127.0.0.1:5000/hello"), "Always");
        assert_eq!(
            default_pull_policy("127.0.0.1:5000/hello:v1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("hello@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn strict_decoding_names_every_unknown_field() {
        let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","bogus":1},"spec":{"containers":[{"name":"a","image":"i","colour":"red"}]}});
        let err = normalize(res("Pod"), &pod, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("unknown field \"metadata.bogus\""),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("unknown field \"spec.containers[0].colour\""),
            "{}",
            err.message
        );
        let (_, unknown) = normalize(res("Pod"), &pod, FieldValidation::Ignore).unwrap();
        assert_eq!(unknown.len(), 2);
    }

    #[test]
    fn a_wrong_type_is_a_bad_request_naming_the_field() {
        let d = json!({"metadata":{"name":"d"},"spec":{"replicas":"three"}});
        let err = normalize(res("Deployment"), &d, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("spec.replicas"), "{}", err.message);
    }

    #[test]
    fn pod_validation_names_each_bad_field() {
        let pod = json!({"metadata":{"name":"Bad_Name"},"spec":{"containers":[{"name":"a"},{"name":"a","image":"x","ports":[{"containerPort":70000}]}]}});
        let err = validate(res("Pod"), &pod).unwrap_err();
        assert_eq!(err.code, 422);
        let fields: Vec<_> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"metadata.name"));
        assert!(fields.contains(&"spec.containers[0].image"));
        assert!(fields.contains(&"spec.containers[1].name"));
        assert!(fields.contains(&"spec.containers[1].ports[0].containerPort"));
    }

    #[test]
    fn deployment_selector_must_match_template_labels() {
        let d = json!({"metadata":{"name":"web"},"spec":{"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"other"}},"spec":{"containers":[{"name":"w","image":"i"}]}}}});
        let err = validate(res("Deployment"), &d).unwrap_err();
        assert_eq!(err.causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn deployment_defaults_match_kubernetes() {
        let mut d = json!({"metadata":{"name":"web"},"spec":{"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"w","image":"nginx","ports":[{"containerPort":80}]}]}}}});
        apply_defaults(res("Deployment"), &mut d, true);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":"25%","maxSurge":"25%"}})
        );
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            30
        );
    }

    #[test]
    fn pod_spec_changes_other_than_images_are_refused() {
        let old =
            json!({"metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"x:1"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(validate_update(res("Pod"), &old, &new).is_ok());
        new["spec"]["containers"][0]["command"] = json!(["sh"]);
        assert_eq!(
            validate_update(res("Pod"), &old, &new).unwrap_err().code,
            422
        );
    }
}
