//! The admission the API server does between defaulting and storing, as Kubernetes'
//! LimitRanger and ResourceQuota plugins: LimitRange defaults and bounds for the containers of
//! a new pod, then every ResourceQuota of the namespace checked against what the new object
//! would add. Both refuse with 403 and Kubernetes' own messages.
//!
//! Quota usage is counted live from the watch cache under one lock, so two creates racing for
//! the last unit cannot both pass; the quota controller writes the same count into
//! `status.used` for kubectl to show.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::quantity::Quantity;
use super::resources::{self, ResourceInfo};

/// Resource names mapped to amounts, sorted as Kubernetes prints them.
pub type Usage = BTreeMap<String, Quantity>;

fn parse(v: &Value) -> Option<Quantity> {
    v.as_str()
        .and_then(|s| Quantity::parse(s).ok())
        .or_else(|| {
            v.as_i64()
                .map(|n| Quantity::from_millis(i128::from(n) * 1000))
        })
}

/// The entries of a resource list (`{"cpu": "500m"}`) that parse.
pub fn resource_list(v: &Value) -> Usage {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), parse(q)?)))
        .collect()
}

/// How Kubernetes prints an amount of `resource`: bytes with the largest exact binary suffix,
/// everything else in cores or units (`250m`, `2`).
pub fn show(resource: &str, q: Quantity) -> String {
    let bytes = ["memory", "storage", "ephemeral-storage"]
        .iter()
        .any(|b| resource == *b || resource.ends_with(&format!(".{b}")));
    if bytes && q.millis() % 1000 == 0 {
        q.bytes_string()
    } else {
        q.cpu_string()
    }
}

/// What a pod asks for under `field` (`requests` or `limits`): each resource summed over the
/// containers, or the largest init container's amount when that is more (init containers run
/// one at a time, before the others). A resource some container leaves out is still summed
/// over those that state it; `complete` tells which resources every container states.
pub fn pod_resources(spec: &Value, field: &str) -> (Usage, BTreeSet<String>) {
    let list = |key: &str| -> Vec<Usage> {
        spec[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| resource_list(&c["resources"][field]))
            .collect()
    };
    let (containers, inits) = (list("containers"), list("initContainers"));
    let mut total = Usage::new();
    for c in &containers {
        for (k, q) in c {
            let e = total.entry(k.clone()).or_default();
            *e = *e + *q;
        }
    }
    for c in &inits {
        for (k, q) in c {
            let e = total.entry(k.clone()).or_default();
            *e = (*e).max(*q);
        }
    }
    let complete = total
        .keys()
        .filter(|k| containers.iter().chain(&inits).all(|c| c.contains_key(*k)))
        .cloned()
        .collect();
    (total, complete)
}

// ---- LimitRange ----

/// Fills a LimitRange item's defaults as Kubernetes does: a Container item's default limit is
/// its max, and its default request is its default limit, else its min.
pub fn default_limit_range(object: &mut Value) {
    for item in object["spec"]["limits"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if item["type"] != "Container" {
            continue;
        }
        for (from, to) in [
            ("max", "default"),
            ("default", "defaultRequest"),
            ("min", "defaultRequest"),
        ] {
            let source = item[from].as_object().cloned().unwrap_or_default();
            if source.is_empty() {
                continue;
            }
            if !item[to].is_object() {
                item[to] = json!({});
            }
            for (k, v) in source {
                if item[to].get(&k).is_none() {
                    item[to][&k] = v;
                }
            }
        }
    }
}

/// Sets the requests and limits a container leaves out to the namespace's LimitRange
/// defaults. Returns whether anything changed.
pub fn apply_limit_defaults(pod: &mut Value, ranges: &[&Value]) -> bool {
    let mut changed = false;
    for range in ranges {
        for item in range["spec"]["limits"].as_array().into_iter().flatten() {
            if item["type"] != "Container" {
                continue;
            }
            for list in ["initContainers", "containers"] {
                for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
                    for (field, defaults) in [("limits", "default"), ("requests", "defaultRequest")]
                    {
                        for (k, v) in item[defaults].as_object().into_iter().flatten() {
                            if !c["resources"].is_object() {
                                c["resources"] = json!({});
                            }
                            if !c["resources"][field].is_object() {
                                c["resources"][field] = json!({});
                            }
                            if c["resources"][field].get(k).is_none() {
                                c["resources"][field][k] = v.clone();
                                changed = true;
                            }
                        }
                    }
                }
            }
        }
    }
    changed
}

/// One bound checked against one container's (or the pod's) requests and limits, worded as
/// Kubernetes' LimitRanger words it.
fn check_bound(
    bound: &str,
    kind: &str,
    resource: &str,
    enforced: &Value,
    requests: &Usage,
    limits: &Usage,
    errors: &mut Vec<String>,
) {
    let Some(e) = parse(enforced) else { return };
    let shown = enforced
        .as_str()
        .map_or_else(|| show(resource, e), str::to_owned);
    let (req, lim) = (requests.get(resource), limits.get(resource));
    let q = |v: &Quantity| show(resource, *v);
    let error = match bound {
        "min" => match (req, lim) {
            (None, _) => Some(format!(
                "minimum {resource} usage per {kind} is {shown}.  No request is specified"
            )),
            (Some(r), _) if *r < e => Some(format!(
                "minimum {resource} usage per {kind} is {shown}, but request is {}",
                q(r)
            )),
            (_, Some(l)) if *l < e => Some(format!(
                "minimum {resource} usage per {kind} is {shown}, but limit is {}",
                q(l)
            )),
            _ => None,
        },
        "max" => match (req, lim) {
            (_, None) => Some(format!(
                "maximum {resource} usage per {kind} is {shown}.  No limit is specified"
            )),
            (_, Some(l)) if *l > e => Some(format!(
                "maximum {resource} usage per {kind} is {shown}, but limit is {}",
                q(l)
            )),
            (Some(r), _) if *r > e => Some(format!(
                "maximum {resource} usage per {kind} is {shown}, but request is {}",
                q(r)
            )),
            _ => None,
        },
        _ => match (
            req.filter(|r| r.millis() > 0),
            lim.filter(|l| l.millis() > 0),
        ) {
            (None, _) => Some(format!(
                "{resource} max limit to request ratio per {kind} is {shown}, but no request is specified or request is 0"
            )),
            (_, None) => Some(format!(
                "{resource} max limit to request ratio per {kind} is {shown}, but no limit is specified or limit is 0"
            )),
            (Some(r), Some(l)) => {
                #[allow(clippy::cast_precision_loss)]
                let ratio = l.millis() as f64 / r.millis() as f64;
                #[allow(clippy::cast_precision_loss)]
                let most = e.millis() as f64 / 1000.0;
                (ratio > most).then(|| {
                    format!(
                        "{resource} max limit to request ratio per {kind} is {shown}, but provided ratio is {ratio:.6}"
                    )
                })
            }
        },
    };
    errors.extend(error);
}

/// Checks a pod against the Container and Pod items of the namespace's LimitRanges.
///
/// # Errors
/// Every broken bound, one message for one, `[a, b]` for several (Kubernetes' aggregate).
pub fn check_limit_ranges(pod: &Value, ranges: &[&Value]) -> Result<(), String> {
    let mut errors = Vec::new();
    for range in ranges {
        for item in range["spec"]["limits"].as_array().into_iter().flatten() {
            let bounds = ["min", "max", "maxLimitRequestRatio"];
            match item["type"].as_str() {
                Some("Container") => {
                    for list in ["initContainers", "containers"] {
                        for c in pod["spec"][list].as_array().into_iter().flatten() {
                            let requests = resource_list(&c["resources"]["requests"]);
                            let limits = resource_list(&c["resources"]["limits"]);
                            for bound in bounds {
                                for (res, q) in item[bound].as_object().into_iter().flatten() {
                                    check_bound(
                                        bound,
                                        "Container",
                                        res,
                                        q,
                                        &requests,
                                        &limits,
                                        &mut errors,
                                    );
                                }
                            }
                        }
                    }
                }
                Some("Pod") => {
                    let (requests, _) = pod_resources(&pod["spec"], "requests");
                    let (mut limits, complete) = pod_resources(&pod["spec"], "limits");
                    // A pod has a limit only where every container has one.
                    limits.retain(|k, _| complete.contains(k));
                    for bound in bounds {
                        for (res, q) in item[bound].as_object().into_iter().flatten() {
                            check_bound(bound, "Pod", res, q, &requests, &limits, &mut errors);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// Checks a claim's storage against the PersistentVolumeClaim items of the namespace's
/// LimitRanges (`min` and `max` of `requests.storage`).
///
/// # Errors
/// Every broken bound, worded as Kubernetes' LimitRanger words it.
pub fn check_claim_limits(claim: &Value, ranges: &[&Value]) -> Result<(), String> {
    let requests = resource_list(&claim["spec"]["resources"]["requests"]);
    let mut errors = Vec::new();
    for range in ranges {
        for item in range["spec"]["limits"].as_array().into_iter().flatten() {
            if item["type"] != "PersistentVolumeClaim" {
                continue;
            }
            for (bound, word) in [("min", "minimum"), ("max", "maximum")] {
                for (res, q) in item[bound].as_object().into_iter().flatten() {
                    let (Some(enforced), Some(asked)) = (parse(q), requests.get(res)) else {
                        continue;
                    };
                    let broken = if bound == "min" {
                        *asked < enforced
                    } else {
                        *asked > enforced
                    };
                    if broken {
                        let shown = q
                            .as_str()
                            .map_or_else(|| show(res, enforced), str::to_owned);
                        errors.push(format!(
                            "{word} {res} usage per PersistentVolumeClaim is {shown}, but request is {}",
                            show(res, *asked)
                        ));
                    }
                }
            }
        }
    }
    errors.dedup();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

// ---- ResourceQuota ----

/// The scopes a quota may name, all about pods.
pub const SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
];

/// The resource names a quota counts, besides `count/<resource>[.<group>]` and
/// `requests.*`/`limits.*` of any resource.
pub const QUOTA_NAMES: &[&str] = &[
    "pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "services",
    "services.nodeports",
    "services.loadbalancers",
    "configmaps",
    "secrets",
    "resourcequotas",
    "persistentvolumeclaims",
    "requests.storage",
];

/// Whether a quota can count `name`.
pub fn quota_name_known(name: &str) -> bool {
    QUOTA_NAMES.contains(&name)
        || name.starts_with("requests.")
        || name.starts_with("limits.")
        || name
            .strip_prefix("count/")
            .is_some_and(|r| count_resource(r).is_some())
}

/// The resource a `count/` name counts: `pods`, `deployments.apps`.
fn count_resource(name: &str) -> Option<&'static ResourceInfo> {
    let (plural, group) = name.split_once('.').unwrap_or((name, ""));
    resources::lookup(group, plural).filter(|r| r.namespaced)
}

/// The `count/` name of a resource.
fn count_name(res: &ResourceInfo) -> String {
    if res.group.is_empty() {
        format!("count/{}", res.plural)
    } else {
        format!("count/{}.{}", res.plural, res.group)
    }
}

/// Whether a pod is past counting: it has finished running.
fn pod_done(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a pod's requests and limits are all empty (its QoS class is BestEffort).
fn best_effort(pod: &Value) -> bool {
    ["requests", "limits"]
        .iter()
        .all(|f| pod_resources(&pod["spec"], f).0.is_empty())
}

/// The scopes a quota applies under, from `scopes` and `scopeSelector` (`Exists`).
fn scopes_of(quota: &Value) -> Vec<&str> {
    let mut scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    scopes.extend(
        quota["spec"]["scopeSelector"]["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["scopeName"].as_str()),
    );
    scopes
}

/// Whether a quota counts `object` of type `res`: a quota with scopes counts only pods in
/// them.
fn in_scope(quota: &Value, res: &ResourceInfo, object: &Value) -> bool {
    let scopes = scopes_of(quota);
    if scopes.is_empty() {
        return true;
    }
    res.kind == "Pod"
        && scopes.iter().all(|s| {
            let deadline = object["spec"]["activeDeadlineSeconds"].as_i64().is_some();
            match *s {
                "Terminating" => deadline,
                "NotTerminating" => !deadline,
                "BestEffort" => best_effort(object),
                "NotBestEffort" => !best_effort(object),
                _ => false,
            }
        })
}

/// What one object of type `res` counts for in a quota.
pub fn usage_of(res: &ResourceInfo, object: &Value) -> Usage {
    let one = Quantity::from_millis(1000);
    let mut usage = Usage::new();
    if res.kind == "Pod" && pod_done(object) {
        return usage;
    }
    usage.insert(count_name(res), one);
    match res.kind {
        "Pod" => {
            usage.insert("pods".into(), one);
            for field in ["requests", "limits"] {
                for (k, q) in pod_resources(&object["spec"], field).0 {
                    if field == "requests"
                        && matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
                    {
                        usage.insert(k.clone(), q);
                    }
                    usage.insert(format!("{field}.{k}"), q);
                }
            }
        }
        "Service" => {
            usage.insert("services".into(), one);
            let ty = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if ty == "LoadBalancer" {
                usage.insert("services.loadbalancers".into(), one);
            }
            if matches!(ty, "NodePort" | "LoadBalancer") {
                let ports = object["spec"]["ports"].as_array().map_or(0, Vec::len);
                usage.insert(
                    "services.nodeports".into(),
                    Quantity::from_millis(i128::try_from(ports).unwrap_or(0) * 1000),
                );
            }
        }
        "ConfigMap" => {
            usage.insert("configmaps".into(), one);
        }
        "Secret" => {
            usage.insert("secrets".into(), one);
        }
        "ResourceQuota" => {
            usage.insert("resourcequotas".into(), one);
        }
        "PersistentVolumeClaim" => {
            usage.insert("persistentvolumeclaims".into(), one);
            if let Some(q) = parse(&object["spec"]["resources"]["requests"]["storage"]) {
                usage.insert("requests.storage".into(), q);
            }
        }
        _ => {}
    }
    usage
}

/// The resource types whose objects can count toward `name`.
fn counted_by(name: &str) -> Vec<&'static ResourceInfo> {
    let kind = |k| resources::by_kind(k).into_iter().collect::<Vec<_>>();
    if let Some(r) = name.strip_prefix("count/") {
        return count_resource(r).into_iter().collect();
    }
    match name {
        "services" | "services.nodeports" | "services.loadbalancers" => kind("Service"),
        "configmaps" => kind("ConfigMap"),
        "secrets" => kind("Secret"),
        "resourcequotas" => kind("ResourceQuota"),
        "persistentvolumeclaims" | "requests.storage" => kind("PersistentVolumeClaim"),
        _ => kind("Pod"),
    }
}

/// The resource types a quota's hard limits count.
pub fn counted_resources(quota: &Value) -> Vec<&'static ResourceInfo> {
    let mut out: Vec<&'static ResourceInfo> = Vec::new();
    for name in resource_list(&quota["spec"]["hard"]).keys() {
        for r in counted_by(name) {
            if !out.iter().any(|o| std::ptr::eq(*o, r)) {
                out.push(r);
            }
        }
    }
    out
}

/// What the objects of a namespace use of each of a quota's hard limits, reading each counted
/// resource type's objects through `objects`.
pub fn quota_used<L, I>(quota: &Value, mut objects: L) -> Usage
where
    L: FnMut(&'static ResourceInfo) -> I,
    I: IntoIterator,
    I::Item: std::borrow::Borrow<Value>,
{
    let hard = resource_list(&quota["spec"]["hard"]);
    let mut used: Usage = hard
        .keys()
        .map(|k| (k.clone(), Quantity::default()))
        .collect();
    for res in counted_resources(quota) {
        for object in objects(res) {
            let object: &Value = object.borrow();
            // An object held by a finalizer still holds what it uses (a claim's storage).
            if !in_scope(quota, res, object) {
                continue;
            }
            for (k, q) in usage_of(res, object) {
                if let Some(u) = used.get_mut(&k) {
                    *u = *u + q;
                }
            }
        }
    }
    used
}

/// `a=1,b=2`, as Kubernetes prints resource lists in quota errors.
fn pretty(list: &Usage, keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{k}={}", show(k, list.get(k).copied().unwrap_or_default())))
        .collect::<Vec<_>>()
        .join(",")
}

/// The compute resources a quota makes every container state.
const MUST_STATE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// Checks that creating `object` keeps `quota` within its hard limits, given what is `used`.
///
/// # Errors
/// Kubernetes' message: `exceeded quota: NAME, requested: ..., used: ..., limited: ...`, or
/// `failed quota: NAME: must specify ...` for a pod that leaves a counted resource unstated.
pub fn check_quota(
    quota: &Value,
    used: &Usage,
    res: &ResourceInfo,
    object: &Value,
) -> Result<(), String> {
    if !in_scope(quota, res, object) {
        return Ok(());
    }
    let name = quota["metadata"]["name"].as_str().unwrap_or_default();
    let hard = resource_list(&quota["spec"]["hard"]);
    if res.kind == "Pod" {
        let required: Vec<&str> = MUST_STATE
            .iter()
            .copied()
            .filter(|r| hard.contains_key(*r))
            .collect();
        let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for list in ["initContainers", "containers"] {
            for c in object["spec"][list].as_array().into_iter().flatten() {
                let requests = resource_list(&c["resources"]["requests"]);
                let limits = resource_list(&c["resources"]["limits"]);
                for r in &required {
                    let (field, base) = r.split_once('.').unwrap_or(("requests", r));
                    let stated = if field == "limits" {
                        &limits
                    } else {
                        &requests
                    };
                    if !stated.contains_key(base) {
                        missing
                            .entry(r)
                            .or_default()
                            .insert(c["name"].as_str().unwrap_or_default());
                    }
                }
            }
        }
        if !missing.is_empty() {
            let parts: Vec<String> = missing
                .iter()
                .map(|(r, cs)| {
                    format!(
                        "{r} for: {}",
                        cs.iter().copied().collect::<Vec<_>>().join(",")
                    )
                })
                .collect();
            return Err(format!(
                "failed quota: {name}: must specify {}",
                parts.join("; ")
            ));
        }
    }
    let requested = usage_of(res, object);
    let exceeded: Vec<String> = hard
        .iter()
        .filter(|(k, limit)| {
            requested.get(*k).is_some_and(|q| q.millis() > 0)
                && used.get(*k).copied().unwrap_or_default() + requested[*k] > **limit
        })
        .map(|(k, _)| k.clone())
        .collect();
    if exceeded.is_empty() {
        return Ok(());
    }
    Err(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        pretty(&requested, &exceeded),
        pretty(used, &exceeded),
        pretty(&hard, &exceeded)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": containers}})
    }

    fn res(kind: &str) -> &'static ResourceInfo {
        resources::by_kind(kind).unwrap()
    }

    #[test]
    fn pod_resources_add_containers_and_take_the_biggest_init_container() {
        let spec = json!({
            "containers": [{"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                           {"resources": {"requests": {"cpu": "200m"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "1"}}}]});
        let (req, complete) = pod_resources(&spec, "requests");
        assert_eq!(req["cpu"], Quantity::parse("1").unwrap());
        assert_eq!(req["memory"], Quantity::parse("64Mi").unwrap());
        assert!(complete.contains("cpu") && !complete.contains("memory"));
    }

    #[test]
    fn limit_range_defaults_follow_kubernetes() {
        let mut lr = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"},
            "min": {"memory": "32Mi"}}]}});
        default_limit_range(&mut lr);
        let item = &lr["spec"]["limits"][0];
        assert_eq!(item["default"]["cpu"], "1");
        assert_eq!(item["defaultRequest"]["cpu"], "1");
        assert_eq!(item["defaultRequest"]["memory"], "32Mi");
        let mut p = pod(json!([{"name": "c", "resources": {"limits": {"cpu": "500m"}}}]));
        assert!(apply_limit_defaults(&mut p, &[&lr]));
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"]["memory"],
            "32Mi"
        );
        assert!(!apply_limit_defaults(&mut p, &[&lr]));
    }

    #[test]
    fn limit_range_bounds_are_worded_as_kubernetes_words_them() {
        let lr = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"},
            "min": {"cpu": "100m"}, "maxLimitRequestRatio": {"cpu": "2"}}]}});
        let fine = pod(
            json!([{"name": "c", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "1"}}}]),
        );
        assert_eq!(check_limit_ranges(&fine, &[&lr]), Ok(()));
        let big = pod(
            json!([{"name": "c", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}}]),
        );
        assert_eq!(
            check_limit_ranges(&big, &[&lr]).unwrap_err(),
            "maximum cpu usage per Container is 1, but limit is 2"
        );
        let skewed = pod(
            json!([{"name": "c", "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "1"}}}]),
        );
        assert_eq!(
            check_limit_ranges(&skewed, &[&lr]).unwrap_err(),
            "[minimum cpu usage per Container is 100m, but request is 50m, cpu max limit to request ratio per Container is 2, but provided ratio is 20.000000]"
        );
        let pod_lr = json!({"spec": {"limits": [{"type": "Pod", "max": {"memory": "1Gi"}}]}});
        let two = pod(
            json!([{"name": "a", "resources": {"limits": {"memory": "768Mi"}}},
                            {"name": "b", "resources": {"limits": {"memory": "512Mi"}}}]),
        );
        assert_eq!(
            check_limit_ranges(&two, &[&pod_lr]).unwrap_err(),
            "maximum memory usage per Pod is 1Gi, but limit is 1280Mi"
        );
        let unlimited =
            pod(json!([{"name": "a", "resources": {"limits": {"memory": "64Mi"}}}, {"name": "b"}]));
        assert_eq!(
            check_limit_ranges(&unlimited, &[&pod_lr]).unwrap_err(),
            "maximum memory usage per Pod is 1Gi.  No limit is specified"
        );
    }

    #[test]
    fn quota_counts_what_runs_and_refuses_what_would_exceed_it() {
        let quota = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2",
            "requests.cpu": "1", "count/configmaps": "1"}}});
        let small = pod(json!([{"name": "c", "resources": {"requests": {"cpu": "400m"}}}]));
        let mut done = small.clone();
        done["status"]["phase"] = json!("Succeeded");
        let pods = [small.clone(), done];
        let used = quota_used(&quota, |r| {
            if r.kind == "Pod" {
                pods.to_vec()
            } else {
                vec![]
            }
        });
        assert_eq!(used["pods"], Quantity::parse("1").unwrap());
        assert_eq!(used["requests.cpu"], Quantity::parse("400m").unwrap());
        assert_eq!(check_quota(&quota, &used, res("Pod"), &small), Ok(()));
        let big = pod(json!([{"name": "c", "resources": {"requests": {"cpu": "700m"}}}]));
        assert_eq!(
            check_quota(&quota, &used, res("Pod"), &big).unwrap_err(),
            "exceeded quota: q, requested: requests.cpu=700m, used: requests.cpu=400m, limited: requests.cpu=1"
        );
        let bare = pod(json!([{"name": "web"}, {"name": "log"}]));
        assert_eq!(
            check_quota(&quota, &used, res("Pod"), &bare).unwrap_err(),
            "failed quota: q: must specify requests.cpu for: log,web"
        );
        let cm = json!({"metadata": {"name": "c"}});
        let mut one_cm = used.clone();
        one_cm.insert("count/configmaps".into(), Quantity::parse("1").unwrap());
        assert_eq!(
            check_quota(&quota, &one_cm, res("ConfigMap"), &cm).unwrap_err(),
            "exceeded quota: q, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
        );
    }

    #[test]
    fn claims_are_held_to_persistent_volume_claim_limits() {
        let lr = json!({"spec": {"limits": [{"type": "PersistentVolumeClaim",
            "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]}});
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert_eq!(check_claim_limits(&claim("1Gi"), &[&lr]), Ok(()));
        assert_eq!(
            check_claim_limits(&claim("512Mi"), &[&lr]).unwrap_err(),
            "minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 512Mi"
        );
        assert_eq!(
            check_claim_limits(&claim("5Gi"), &[&lr]).unwrap_err(),
            "maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"
        );
    }

    #[test]
    fn scoped_quotas_count_only_their_pods() {
        let quota = json!({"metadata": {"name": "be"}, "spec": {"hard": {"pods": "0"},
            "scopes": ["BestEffort"]}});
        let bare = pod(json!([{"name": "c"}]));
        let sized = pod(json!([{"name": "c", "resources": {"requests": {"memory": "1Mi"}}}]));
        let used = quota_used(&quota, |_| Vec::<Value>::new());
        assert!(check_quota(&quota, &used, res("Pod"), &bare).is_err());
        assert_eq!(check_quota(&quota, &used, res("Pod"), &sized), Ok(()));
        assert_eq!(
            check_quota(&quota, &used, res("ConfigMap"), &json!({})),
            Ok(())
        );
    }
}
