//! The horizontal pod autoscaler, as kube-controller-manager's: every sync period each
//! autoscaling/v2 HorizontalPodAutoscaler reads its target's scale subresource, the pods its
//! selector picks and their usage from `metrics.k8s.io` (which the agents report), proposes a
//! size per metric with Kubernetes' algorithm (utilisation of requests against the target,
//! a 10% tolerance, pods that are missing metrics or not ready counted so that they damp the
//! change), takes the largest, then applies the stabilisation windows and scaling policies of
//! `spec.behavior` before writing the new size through the scale subresource.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{condition, name, namespace, terminating};
use crate::api::admission::{resource_list, show};
use crate::api::quantity::Quantity;
use crate::api::resources;
use crate::api::selector::LabelSelector;
use crate::client::events;
use crate::client::informer::{Action, Informer, Informers, Queue};
use crate::client::{Client, Error};

/// HorizontalPodAutoscalers.
pub const HPAS: &str = "/apis/autoscaling/v2/horizontalpodautoscalers";
const KIND: (&str, &str) = ("autoscaling/v2", "HorizontalPodAutoscaler");
const COMPONENT: &str = "horizontal-pod-autoscaler";
/// kube-controller-manager's default `--horizontal-pod-autoscaler-sync-period`.
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Usage within this fraction of the target changes nothing.
const TOLERANCE: f64 = 0.1;
/// How long after becoming ready a pod's CPU sample may still hold its start-up.
const METRIC_WINDOW: i64 = 10;

struct Ctx {
    client: Client,
    hpas: Arc<Informer>,
    pods: Arc<Informer>,
    period: Duration,
    /// Per autoscaler: recent recommendations (for stabilisation) and scale changes (for
    /// policies), kept in memory as kube-controller-manager keeps them.
    history: Mutex<HashMap<String, History>>,
}

#[derive(Default, Clone)]
struct History {
    recommendations: Vec<(Timestamp, i64)>,
    /// (when, replicas added (+) or removed (-)).
    changes: Vec<(Timestamp, i64)>,
}

/// Registers the controller on the shared informers and starts its worker; each autoscaler
/// is looked at every `period`.
pub fn start(
    client: &Client,
    informers: &Informers,
    period: Duration,
    shutdown: &CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        hpas: informers.get(HPAS),
        pods: informers.get(super::PODS),
        period,
        history: Mutex::new(HashMap::new()),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.hpas, &queue);
    let informers = vec![ctx.hpas.clone(), ctx.pods.clone()];
    super::run_worker(
        "horizontalpodautoscaler",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// One metric of `spec.metrics` that wk can read: a resource of the pods, or of one container
/// of them.
struct Metric<'a> {
    resource: &'a str,
    container: Option<&'a str>,
    target: &'a Value,
}

impl Metric<'_> {
    /// How the HPA describes this metric in events and conditions.
    fn describe(&self) -> String {
        let what = if self.target["type"] == "Utilization" {
            "utilization (percentage of request)"
        } else {
            "usage"
        };
        match self.container {
            Some(c) => format!("{} container resource {what} of {c}", self.resource),
            None => format!("{} resource {what}", self.resource),
        }
    }
}

/// What one metric proposes.
struct Proposal {
    replicas: i64,
    status: Value,
}

/// A pod's usage and requests of one resource (summed over containers, or one container).
fn pod_amounts(
    pod: &Value,
    metrics: &Value,
    resource: &str,
    container: Option<&str>,
) -> (Option<i128>, Result<i128, String>) {
    let picked = |c: &Value| container.is_none_or(|n| c["name"] == n);
    let usage = (!metrics.is_null()).then(|| {
        metrics["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| picked(c))
            .filter_map(|c| c["usage"][resource].as_str())
            .filter_map(|q| Quantity::parse(q).ok())
            .map(Quantity::millis)
            .fold(0i128, i128::saturating_add)
    });
    let mut request: i128 = 0;
    for c in pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| picked(c))
    {
        match resource_list(&c["resources"]["requests"]).get(resource) {
            Some(q) => request = request.saturating_add(q.millis()),
            None => {
                return (
                    usage,
                    Err(format!(
                        "missing request for {resource} in container {} of Pod {}",
                        c["name"].as_str().unwrap_or_default(),
                        name(pod)
                    )),
                );
            }
        }
    }
    (usage, Ok(request))
}

/// How long after a pod starts its CPU samples may still hold its start-up
/// (`--horizontal-pod-autoscaler-cpu-initialization-period`).
const CPU_INITIALIZATION: i64 = 300;
/// How long after a pod starts it may still become Ready for the first time
/// (`--horizontal-pod-autoscaler-initial-readiness-delay`).
const INITIAL_READINESS: i64 = 30;

/// Whether a pod's CPU sample cannot be trusted, by Kubernetes' rule: within the CPU
/// initialisation period, when it is not Ready or became Ready less than one metrics window
/// ago; after it, only when it is not Ready and has never been.
fn unready_for_cpu(pod: &Value, now: Timestamp) -> bool {
    let at = |v: &Value| v.as_str().and_then(|t| t.parse::<Timestamp>().ok());
    let (Some(c), Some(started)) = (condition(pod, "Ready"), at(&pod["status"]["startTime"]))
    else {
        return true;
    };
    let changed = at(&c["lastTransitionTime"]).unwrap_or(started);
    if now.as_second() - started.as_second() < CPU_INITIALIZATION {
        c["status"] != "True" || now.as_second() - changed.as_second() < METRIC_WINDOW
    } else {
        c["status"] == "False" && changed.as_second() - started.as_second() < INITIAL_READINESS
    }
}

/// The replica count one metric asks for, with Kubernetes' handling of pods that have no
/// metrics (assumed at 100% of request when scaling down, 0 when up) and of unready pods
/// (assumed 0 when scaling up); a change those assumptions reverse or cancel is no change.
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn propose(
    metric: &Metric<'_>,
    pods: &[Arc<Value>],
    usage: &HashMap<String, Value>,
    current: i64,
    now: Timestamp,
) -> Result<Proposal, String> {
    let utilization = metric.target["type"] == "Utilization";
    let target = if utilization {
        i128::from(metric.target["averageUtilization"].as_i64().unwrap_or(80))
    } else {
        metric.target["averageValue"]
            .as_str()
            .and_then(|q| Quantity::parse(q).ok())
            .map_or(0, Quantity::millis)
    };
    if target <= 0 {
        return Err(format!("invalid target for {}", metric.describe()));
    }
    let mut with_metrics: HashMap<&str, (i128, i128)> = HashMap::new();
    let (mut missing, mut unready) = (HashSet::new(), HashSet::new());
    for pod in pods {
        if terminating(pod)
            || pod["status"]["phase"] == "Failed"
            || pod["status"]["phase"] == "Succeeded"
        {
            continue;
        }
        let m = usage.get(name(pod)).unwrap_or(&Value::Null);
        let (used, request) = pod_amounts(pod, m, metric.resource, metric.container);
        let request = if utilization {
            request.map_err(|e| format!("failed to get {} utilization: {e}", metric.resource))?
        } else {
            request.unwrap_or(0)
        };
        // In Kubernetes' order: pending pods are unready, then pods with no sample are
        // missing, then CPU samples too close to start-up are unready.
        let used = match used {
            _ if pod["status"]["phase"] == "Pending" => None,
            None => {
                missing.insert(name(pod));
                None
            }
            Some(_) if metric.resource == "cpu" && unready_for_cpu(pod, now) => None,
            Some(u) => Some(u),
        };
        if used.is_none() && !missing.contains(name(pod)) {
            unready.insert(name(pod));
        }
        with_metrics.insert(name(pod), (used.unwrap_or(0), request));
    }
    let counted = |skip: &dyn Fn(&str) -> bool| {
        with_metrics
            .iter()
            .filter(|(n, _)| !skip(n))
            .fold((0i128, 0i128, 0i128), |(u, r, n), (_, (pu, pr))| {
                (u.saturating_add(*pu), r.saturating_add(*pr), n + 1)
            })
    };
    let (used, requested, ready_count) = counted(&|n| missing.contains(n) || unready.contains(n));
    if ready_count == 0 {
        return Err(format!(
            "failed to get {} utilization: did not receive metrics for targeted pods (pods might be unready)",
            metric.resource
        ));
    }
    let ratio_of = |used: i128, requested: i128, n: i128| -> f64 {
        if utilization {
            if requested == 0 {
                return 0.0;
            }
            (used.saturating_mul(100) / requested) as f64 / target as f64
        } else {
            used as f64 / (target as f64 * n as f64)
        }
    };
    if utilization && requested == 0 {
        return Err(format!(
            "failed to get {} utilization: no metrics returned matched known pods",
            metric.resource
        ));
    }
    let ratio = ratio_of(used, requested, ready_count);
    let average_value = used / ready_count;
    let current_metric = if utilization {
        json!({"averageUtilization": if requested == 0 { 0 } else { used * 100 / requested },
            "averageValue": show(metric.resource, Quantity::from_millis(average_value))})
    } else {
        json!({"averageValue": show(metric.resource, Quantity::from_millis(average_value))})
    };
    let status = match metric.container {
        Some(c) => json!({"type": "ContainerResource", "containerResource": {
            "name": metric.resource, "container": c, "current": current_metric}}),
        None => {
            json!({"type": "Resource", "resource": {"name": metric.resource, "current": current_metric}})
        }
    };
    let proposal = |replicas| {
        Ok(Proposal {
            replicas,
            status: status.clone(),
        })
    };
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return proposal(current);
        }
        return proposal((ratio * ready_count as f64).ceil() as i64);
    }
    // Fill in the pods the sample could not use, against the direction of the change.
    let mut filled = with_metrics.clone();
    for (n, (u, r)) in &mut filled {
        if missing.contains(n) {
            *u = if ratio < 1.0 {
                if utilization {
                    r.saturating_mul(target.max(100)) / 100
                } else {
                    target
                }
            } else {
                0
            };
        }
    }
    if !scale_up_with_unready {
        filled.retain(|n, _| !unready.contains(n));
    }
    #[allow(clippy::float_cmp)]
    if ratio == 1.0 {
        filled.retain(|n, _| !missing.contains(n));
    }
    let (u, r, n) = filled
        .values()
        .fold((0i128, 0i128, 0i128), |(u, r, n), (pu, pr)| {
            (u.saturating_add(*pu), r.saturating_add(*pr), n + 1)
        });
    let new_ratio = ratio_of(u, r, n);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return proposal(current);
    }
    let replicas = (new_ratio * n as f64).ceil() as i64;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return proposal(current);
    }
    proposal(replicas)
}

/// The scaling rules of one direction, with Kubernetes' defaults where `behavior` is silent.
struct Rules {
    window: i64,
    select: String,
    /// (type, value, period seconds).
    policies: Vec<(String, i64, i64)>,
}

fn rules(behavior: &Value, up: bool) -> Rules {
    let b = &behavior[if up { "scaleUp" } else { "scaleDown" }];
    let policies: Vec<(String, i64, i64)> = b["policies"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["type"].as_str().unwrap_or("Pods").to_owned(),
                        p["value"].as_i64().unwrap_or(0),
                        p["periodSeconds"].as_i64().unwrap_or(15),
                    )
                })
                .collect()
        })
        .unwrap_or_else(|| {
            if up {
                vec![("Pods".into(), 4, 15), ("Percent".into(), 100, 15)]
            } else {
                vec![("Percent".into(), 100, 15)]
            }
        });
    Rules {
        window: b["stabilizationWindowSeconds"]
            .as_i64()
            .unwrap_or(if up { 0 } else { 300 }),
        select: b["selectPolicy"].as_str().unwrap_or("Max").to_owned(),
        policies,
    }
}

/// The most (scaling up) or least (down) replicas the policies allow now, given the changes
/// made within each policy's period.
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn policy_limit(
    rules: &Rules,
    current: i64,
    changes: &[(Timestamp, i64)],
    now: Timestamp,
    up: bool,
) -> i64 {
    if rules.select == "Disabled" {
        return current;
    }
    let max = rules.select != "Min";
    let mut result: Option<i64> = None;
    for (kind, value, period) in &rules.policies {
        let since = now.as_second() - period;
        let (added, removed) =
            changes
                .iter()
                .filter(|(t, _)| t.as_second() > since)
                .fold(
                    (0, 0),
                    |(a, r), (_, c)| if *c > 0 { (a + c, r) } else { (a, r - c) },
                );
        let start = current - added + removed;
        let proposed = match (kind.as_str(), up) {
            ("Pods", true) => start + value,
            ("Pods", false) => start - value,
            (_, true) => (start as f64 * (1.0 + *value as f64 / 100.0)).ceil() as i64,
            (_, false) => (start as f64 * (1.0 - *value as f64 / 100.0)) as i64,
        };
        // Max picks the policy allowing the most change: the highest limit up, the lowest down.
        result = Some(match result {
            None => proposed,
            Some(r) if max == up => r.max(proposed),
            Some(r) => r.min(proposed),
        });
    }
    result.unwrap_or(current)
}

/// Applies the stabilisation windows and policies to a recommendation. Returns the size and
/// the ScalingLimited reason and message.
fn normalize(
    hpa: &Value,
    history: &mut History,
    current: i64,
    desired: i64,
    now: Timestamp,
) -> (i64, &'static str, String) {
    let behavior = &hpa["spec"]["behavior"];
    let (up, down) = (rules(behavior, true), rules(behavior, false));
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_i64().unwrap_or(1),
        hpa["spec"]["maxReplicas"].as_i64().unwrap_or(1),
    );
    // Stabilise: no higher than the lowest recommendation of the up window, no lower than the
    // highest of the down window.
    let (mut up_rec, mut down_rec) = (desired, desired);
    for (t, r) in &history.recommendations {
        if t.as_second() > now.as_second() - up.window {
            up_rec = up_rec.min(*r);
        }
        if t.as_second() > now.as_second() - down.window {
            down_rec = down_rec.max(*r);
        }
    }
    let keep = up.window.max(down.window);
    history
        .recommendations
        .retain(|(t, _)| t.as_second() > now.as_second() - keep);
    history.recommendations.push((now, desired));
    let stabilized = current.max(up_rec).min(down_rec);
    let longest = up
        .policies
        .iter()
        .chain(&down.policies)
        .map(|p| p.2)
        .max()
        .unwrap_or(15);
    history
        .changes
        .retain(|(t, _)| t.as_second() > now.as_second() - longest);
    // With no behavior at all, Kubernetes keeps its older rules: up to twice the replicas (at
    // least 4) at a time, down at any pace.
    let legacy = behavior.is_null();
    if stabilized > current {
        let limit = if legacy {
            current.saturating_mul(2).max(4)
        } else {
            policy_limit(&up, current, &history.changes, now, true).max(current)
        };
        let (allowed, reason) = if max > limit {
            (limit, "ScaleUpLimit")
        } else {
            (max, "TooManyReplicas")
        };
        if stabilized > allowed {
            return (
                allowed,
                reason,
                format!(
                    "the desired replica count is more than the {}",
                    if reason == "ScaleUpLimit" {
                        "scale-up limit"
                    } else {
                        "maximum replica count"
                    }
                ),
            );
        }
    } else if stabilized < current {
        let limit = if legacy {
            min
        } else {
            policy_limit(&down, current, &history.changes, now, false).min(current)
        };
        let (allowed, reason) = if min < limit {
            (limit, "ScaleDownLimit")
        } else {
            (min, "TooFewReplicas")
        };
        if stabilized < allowed {
            return (
                allowed,
                reason,
                format!(
                    "the desired replica count is less than the {}",
                    if reason == "ScaleDownLimit" {
                        "scale-down limit"
                    } else {
                        "minimum replica count"
                    }
                ),
            );
        }
    }
    (
        stabilized,
        "DesiredWithinRange",
        "the desired count is within the acceptable range".into(),
    )
}

fn set_condition(
    conditions: &mut Vec<Value>,
    old: &Value,
    kind: &str,
    state: bool,
    reason: &str,
    message: &str,
) {
    let status = if state { "True" } else { "False" };
    let since = condition(old, kind)
        .filter(|c| c["status"] == status)
        .map_or_else(
            || json!(crate::clock::now().to_string()),
            |c| c["lastTransitionTime"].clone(),
        );
    conditions.push(
        json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": since}),
    );
}

fn record(client: &Client, hpa: &Value, warning: bool, reason: &str, message: &str) {
    events::record_about(client, hpa, KIND, COMPONENT, warning, reason, message);
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(hpa) = ctx.hpas.get(key) else {
        if let Ok(mut h) = ctx.history.lock() {
            h.remove(key);
        }
        return Ok(Action::Await);
    };
    if terminating(&hpa) {
        return Ok(Action::Await);
    }
    let again = Action::RequeueAfter(ctx.period);
    let ns = namespace(&hpa);
    let target = &hpa["spec"]["scaleTargetRef"];
    let (kind, target_name) = (
        target["kind"].as_str().unwrap_or_default(),
        target["name"].as_str().unwrap_or_default(),
    );
    let group = target["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    let scale_path = resources::by_kind(kind)
        .filter(|r| r.group == group && r.subresource("scale").is_some())
        .map(|r| format!("{}/scale", resources::object_path(r, Some(ns), target_name)));
    let mut conditions = Vec::new();
    let status_path = format!(
        "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{}/status",
        name(&hpa)
    );
    let fetched = match scale_path {
        None => Err(format!("no scale subresource for {kind} in {group:?}")),
        Some(path) => match ctx.client.get(&path).await {
            Ok(scale) => Ok((path, scale)),
            Err(e) => Err(super::message_of(&e)),
        },
    };
    let (scale_path, scale) = match fetched {
        Ok(found) => found,
        Err(why) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {why}");
            set_condition(
                &mut conditions,
                &hpa,
                "AbleToScale",
                false,
                "FailedGetScale",
                &message,
            );
            record(&ctx.client, &hpa, true, "FailedGetScale", &message);
            let status = json!({"conditions": conditions});
            write_status(ctx, &hpa, &status_path, status, None).await?;
            return Ok(again);
        }
    };
    // Two autoscalers on one target would fight; Kubernetes lets neither act.
    let mut rivals: Vec<String> = ctx
        .hpas
        .list_namespace(ns)
        .iter()
        .filter(|h| !terminating(h) && h["spec"]["scaleTargetRef"]["kind"] == kind)
        .filter(|h| h["spec"]["scaleTargetRef"]["name"] == target_name)
        .map(|h| format!("{ns}/{}", name(h)))
        .collect();
    if rivals.len() > 1 {
        rivals.sort();
        let message = format!(
            "pods by selector {} are controlled by multiple HPAs: [{}]",
            scale["status"]["selector"].as_str().unwrap_or_default(),
            rivals.join(" ")
        );
        set_condition(
            &mut conditions,
            &hpa,
            "ScalingActive",
            false,
            "AmbiguousSelector",
            &message,
        );
        record(&ctx.client, &hpa, true, "AmbiguousSelector", &message);
        let status = json!({"conditions": conditions});
        write_status(ctx, &hpa, &status_path, status, None).await?;
        return Ok(again);
    }
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_i64().unwrap_or(1),
        hpa["spec"]["maxReplicas"].as_i64().unwrap_or(1),
    );
    set_condition(
        &mut conditions,
        &hpa,
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    );
    let now = crate::clock::now();
    let mut status = json!({"currentReplicas": scale["status"]["replicas"].as_i64().unwrap_or(0),
        "desiredReplicas": current, "currentMetrics": [],
        "observedGeneration": hpa["metadata"]["generation"]});
    if let Some(t) = hpa["status"]["lastScaleTime"].as_str() {
        status["lastScaleTime"] = json!(t);
    }
    if current == 0 && min > 0 {
        set_condition(
            &mut conditions,
            &hpa,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        );
        status["conditions"] = json!(conditions);
        write_status(ctx, &hpa, &status_path, status, None).await?;
        return Ok(again);
    }
    let (desired, reason_text, metric_error) = if current > max {
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".to_owned(),
            None,
        )
    } else if current < min {
        (
            min,
            "Current number of replicas below Spec.MinReplicas".to_owned(),
            None,
        )
    } else {
        match recommend(ctx, &hpa, &scale, current, now).await? {
            Ok((replicas, statuses, above)) => {
                status["currentMetrics"] = json!(statuses);
                (replicas, above, None)
            }
            Err(e) => (current, String::new(), Some(e)),
        }
    };
    if let Some((reason, message)) = metric_error {
        set_condition(
            &mut conditions,
            &hpa,
            "ScalingActive",
            false,
            reason,
            &message,
        );
        record(&ctx.client, &hpa, true, reason, &message);
        status["conditions"] = json!(conditions);
        write_status(ctx, &hpa, &status_path, status, None).await?;
        return Ok(again);
    }
    let (size, limit_reason, limit_message) = {
        let mut all = ctx
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let history = all.entry(key.to_owned()).or_default();
        if current > max || current < min {
            (
                desired,
                "DesiredWithinRange",
                "the desired count is within the acceptable range".to_owned(),
            )
        } else {
            normalize(&hpa, history, current, desired, now)
        }
    };
    set_condition(
        &mut conditions,
        &hpa,
        "ScalingActive",
        true,
        "ValidMetricFound",
        "the HPA was able to successfully calculate a replica count from the metrics",
    );
    set_condition(
        &mut conditions,
        &hpa,
        "ScalingLimited",
        limit_reason != "DesiredWithinRange",
        limit_reason,
        &limit_message,
    );
    status["desiredReplicas"] = json!(size);
    let mut scaled_at = None;
    if size != current {
        let patch = json!({"spec": {"replicas": size}});
        if let Err(e) = super::merge_patch(&ctx.client, &scale_path, &patch).await {
            let message = format!(
                "the HPA controller was unable to update the target scale: {}",
                super::message_of(&e)
            );
            conditions[0] = json!({"type": "AbleToScale", "status": "False", "reason": "FailedUpdateScale",
                "message": message, "lastTransitionTime": now.to_string()});
            record(&ctx.client, &hpa, true, "FailedRescale", &message);
            status["conditions"] = json!(conditions);
            write_status(ctx, &hpa, &status_path, status, None).await?;
            return Ok(again);
        }
        if let Ok(mut all) = ctx.history.lock() {
            all.entry(key.to_owned())
                .or_default()
                .changes
                .push((now, size - current));
        }
        record(
            &ctx.client,
            &hpa,
            false,
            "SuccessfulRescale",
            &format!("New size: {size}; reason: {reason_text}"),
        );
        conditions[0] = json!({"type": "AbleToScale", "status": "True", "reason": "SucceededRescale",
            "message": format!("the HPA controller was able to update the target scale to {size}"),
            "lastTransitionTime": condition(&hpa, "AbleToScale").filter(|c| c["status"] == "True")
                .map_or_else(|| json!(now.to_string()), |c| c["lastTransitionTime"].clone())});
        scaled_at = Some(now);
    } else {
        conditions[0]["reason"] = json!("ReadyForNewScale");
        conditions[0]["message"] = json!("recommended size matches current size");
    }
    status["conditions"] = json!(conditions);
    write_status(ctx, &hpa, &status_path, status, scaled_at).await?;
    Ok(again)
}

/// The largest size the metrics propose, with their statuses and the reason for the change;
/// or the reason and message why no metric could be read.
async fn recommend(
    ctx: &Ctx,
    hpa: &Value,
    scale: &Value,
    current: i64,
    now: Timestamp,
) -> Result<Result<(i64, Vec<Value>, String), (&'static str, String)>, Error> {
    let ns = namespace(hpa);
    let selector = scale["status"]["selector"].as_str().unwrap_or_default();
    let Ok(selector) = LabelSelector::parse(selector) else {
        return Ok(Err((
            "InvalidSelector",
            format!(
                "couldn't convert selector into a corresponding internal selector object: {selector}"
            ),
        )));
    };
    let pods: Vec<Arc<Value>> = ctx
        .pods
        .list_namespace(ns)
        .into_iter()
        .filter(|p| selector.matches(p["metadata"]["labels"].as_object()))
        .collect();
    let default_metric = json!([{"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    let specs = match hpa["spec"]["metrics"].as_array() {
        Some(m) if !m.is_empty() => m.clone(),
        _ => default_metric.as_array().cloned().unwrap_or_default(),
    };
    let usage: HashMap<String, Value> = match ctx
        .client
        .request(
            Method::GET,
            &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"),
            None,
            None,
        )
        .await
    {
        Ok(list) => list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (name(m).to_owned(), m.clone()))
            .collect(),
        Err(e) => {
            return Ok(Err((
                "FailedGetResourceMetric",
                format!(
                    "the HPA was unable to compute the replica count: unable to get metrics for resource: {}",
                    super::message_of(&e)
                ),
            )));
        }
    };
    let (mut best, mut statuses, mut reason, mut first_error) =
        (None::<i64>, Vec::new(), String::new(), None);
    for spec in &specs {
        let metric = match spec["type"].as_str() {
            Some("Resource") => Metric {
                resource: spec["resource"]["name"].as_str().unwrap_or_default(),
                container: None,
                target: &spec["resource"]["target"],
            },
            Some("ContainerResource") => Metric {
                resource: spec["containerResource"]["name"]
                    .as_str()
                    .unwrap_or_default(),
                container: spec["containerResource"]["container"].as_str(),
                target: &spec["containerResource"]["target"],
            },
            other => {
                let kind = other.unwrap_or_default();
                first_error.get_or_insert((
                    "FailedGetExternalMetric",
                    format!("the HPA was unable to compute the replica count: wk serves no custom or external metrics API, so {kind} metrics cannot be read"),
                ));
                continue;
            }
        };
        match propose(&metric, &pods, &usage, current, now) {
            Ok(p) => {
                statuses.push(p.status);
                if best.is_none_or(|b| p.replicas > b) {
                    best = Some(p.replicas);
                    reason = format!("{} above target", metric.describe());
                }
            }
            Err(e) => {
                first_error.get_or_insert((
                    if metric.container.is_some() {
                        "FailedGetContainerResourceMetric"
                    } else {
                        "FailedGetResourceMetric"
                    },
                    format!("the HPA was unable to compute the replica count: {e}"),
                ));
            }
        }
    }
    // Kubernetes scales on what it could read unless a failing metric might want more.
    match (best, first_error) {
        (Some(b), None) => Ok(Ok((
            b,
            statuses,
            if b < current {
                "All metrics below target".into()
            } else {
                reason
            },
        ))),
        // Kubernetes goes on when the metrics it could read ask for no fewer replicas.
        (Some(b), Some(_)) if b >= current => Ok(Ok((b, statuses, reason))),
        (_, Some(e)) => Ok(Err(e)),
        (None, None) => Ok(Err((
            "FailedGetResourceMetric",
            "the HPA has no metrics".into(),
        ))),
    }
}

async fn write_status(
    ctx: &Ctx,
    hpa: &Value,
    path: &str,
    mut status: Value,
    scaled_at: Option<Timestamp>,
) -> Result<(), Error> {
    if let Some(t) = scaled_at {
        status["lastScaleTime"] = json!(t.to_string());
    }
    for field in ["currentReplicas", "desiredReplicas", "lastScaleTime"] {
        if status.get(field).is_none()
            && let Some(v) = hpa["status"].get(field)
        {
            status[field] = v.clone();
        }
    }
    if hpa["status"] == status {
        return Ok(());
    }
    super::merge_patch(&ctx.client, path, &json!({"status": status})).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: &str, cpu_request: &str, phase: &str) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": n},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu_request}}}]},
            "status": {"phase": phase, "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    }

    fn usage(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(n, cpu)| {
                (
                    (*n).to_owned(),
                    json!({"containers": [{"name": "c", "usage": {"cpu": cpu}}]}),
                )
            })
            .collect()
    }

    fn cpu_at(percent: i64) -> Value {
        json!({"type": "Utilization", "averageUtilization": percent})
    }

    fn proposed(pods: &[Arc<Value>], used: &[(&str, &str)], target: &Value, current: i64) -> i64 {
        let metric = Metric {
            resource: "cpu",
            container: None,
            target,
        };
        propose(&metric, pods, &usage(used), current, crate::clock::now())
            .unwrap()
            .replicas
    }

    #[test]
    fn utilization_above_target_scales_in_proportion() {
        let pods = [pod("a", "100m", "Running"), pod("b", "100m", "Running")];
        let target = cpu_at(50);
        assert_eq!(
            proposed(&pods, &[("a", "200m"), ("b", "200m")], &target, 2),
            8
        );
        // Within the 10% tolerance nothing changes.
        assert_eq!(
            proposed(&pods, &[("a", "52m"), ("b", "53m")], &target, 2),
            2
        );
        // Idle pods go down to what the usage needs (the minimum is applied later).
        assert_eq!(proposed(&pods, &[("a", "0"), ("b", "0")], &target, 2), 0);
    }

    #[test]
    fn missing_and_unready_pods_damp_the_change() {
        let target = cpu_at(50);
        // Scaling down, a pod with no sample counts as using all it asked for.
        let three = [
            pod("a", "100m", "Running"),
            pod("b", "100m", "Running"),
            pod("c", "100m", "Running"),
        ];
        assert_eq!(
            proposed(&three, &[("a", "10m"), ("b", "10m")], &target, 3),
            3
        );
        // Scaling up, a pending pod counts as idle: 100% on one ready pod becomes 50%.
        let two = [pod("a", "100m", "Running"), pod("b", "100m", "Pending")];
        assert_eq!(proposed(&two, &[("a", "100m")], &target, 2), 2);
        // With no sample at all there is nothing to go on.
        let metric = Metric {
            resource: "cpu",
            container: None,
            target: &target,
        };
        let err = propose(&metric, &two, &HashMap::new(), 2, crate::clock::now())
            .err()
            .unwrap();
        assert!(
            err.contains("did not receive metrics for targeted pods"),
            "{err}"
        );
        // A pod that asks for no CPU cannot have a utilization.
        let bare = [Arc::new(
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running"}}),
        )];
        let err = propose(
            &metric,
            &bare,
            &usage(&[("x", "1m")]),
            1,
            crate::clock::now(),
        )
        .err()
        .unwrap();
        assert_eq!(
            err,
            "failed to get cpu utilization: missing request for cpu in container c of Pod x"
        );
    }

    #[test]
    fn stabilization_and_policies_limit_each_step() {
        let now = crate::clock::now();
        let hpa = |behavior: Value| json!({"spec": {"minReplicas": 1, "maxReplicas": 10, "behavior": behavior}});
        // The default scale-down window keeps the highest recent recommendation.
        let mut h = History {
            recommendations: vec![(now - jiff::SignedDuration::from_secs(100), 5)],
            changes: vec![],
        };
        assert_eq!(normalize(&hpa(json!(null)), &mut h, 5, 2, now).0, 5);
        // With no window it goes straight down, to no fewer than the minimum.
        let no_window = json!({"scaleDown": {"stabilizationWindowSeconds": 0}});
        let mut h = History::default();
        assert_eq!(
            normalize(&hpa(no_window.clone()), &mut h, 5, 0, now),
            (
                1,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count".into()
            )
        );
        // Up: at most 4 pods or 100% more per 15 s, whichever is more.
        let mut h = History::default();
        assert_eq!(normalize(&hpa(json!({})), &mut h, 1, 20, now).0, 5);
        assert_eq!(
            normalize(&hpa(json!({})), &mut h, 1, 20, now).1,
            "ScaleUpLimit"
        );
        // With no behavior at all, Kubernetes' older rule: twice as many, at least 4.
        let mut h = History::default();
        assert_eq!(normalize(&hpa(json!(null)), &mut h, 1, 20, now).0, 4);
        assert_eq!(normalize(&hpa(json!(null)), &mut h, 3, 20, now).0, 6);
        // What was added within the period counts against it.
        let mut h = History {
            recommendations: vec![],
            changes: vec![(now - jiff::SignedDuration::from_secs(5), 4)],
        };
        assert_eq!(normalize(&hpa(json!({})), &mut h, 5, 20, now).0, 5);
        // A Disabled direction never moves.
        let mut h = History::default();
        let disabled = json!({"scaleUp": {"selectPolicy": "Disabled"}});
        assert_eq!(normalize(&hpa(disabled), &mut h, 3, 8, now).0, 3);
    }
}
