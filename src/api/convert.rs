//! autoscaling/v1 HorizontalPodAutoscalers, a view of the autoscaling/v2 objects the server
//! stores, as Kubernetes serves both. `kubectl autoscale` creates through v1, and older
//! manifests say `targetCPUUtilizationPercentage`.
//!
//! A v1 request is turned into the v2 request it stands for and answered through the same
//! handlers; the answer is turned back. Writing through v1 changes only what v1 can say (the
//! target, the bounds and the CPU target), so a v2 object's other metrics and its behavior
//! are kept. Watches go through v2 only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use http::{Method, header};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::handlers::{self, decode_body};
use super::resources::{self, ResourceInfo};
use super::{ApiState, Ctx};

/// The v1 view, routed but not listed in RESOURCES (it shares v2's objects).
pub static HPA_V1: ResourceInfo = ResourceInfo {
    group: "autoscaling",
    version: "v1",
    plural: "horizontalpodautoscalers",
    singular: "horizontalpodautoscaler",
    kind: "HorizontalPodAutoscaler",
    namespaced: true,
    short_names: &["hpa"],
    categories: &["all"],
    subresources: &[resources::Subresource {
        name: "status",
        group: "autoscaling",
        version: "v1",
        kind: "HorizontalPodAutoscaler",
        verbs: resources::SUB_VERBS,
    }],
    fields: &[],
};

/// The resource a converted view of `group`/`version` serves, if any.
pub fn view(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    (group == HPA_V1.group && version == HPA_V1.version && plural == HPA_V1.plural)
        .then_some(&HPA_V1)
}

/// Whether a v2 metric is the one v1 can say: CPU utilization of the pods.
fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn cpu_metric(metrics: &Value) -> Option<&Value> {
    metrics.as_array()?.iter().find(|m| is_cpu_utilization(m))
}

/// A v1 object as v2, laid over `existing` (the stored v2 object) so that what v1 cannot
/// express is kept.
pub fn to_v2(v1: &Value, existing: Option<&Value>) -> Value {
    let mut out = existing.cloned().unwrap_or_else(|| json!({"spec": {}}));
    out["apiVersion"] = json!("autoscaling/v2");
    out["kind"] = json!("HorizontalPodAutoscaler");
    out["metadata"] = v1["metadata"].clone();
    let spec = &v1["spec"];
    for field in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        out["spec"][field] = spec[field].clone();
    }
    let mut metrics: Vec<Value> = out["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    metrics.retain(|m| !is_cpu_utilization(m));
    if let Some(pct) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.insert(
            0,
            json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": pct}}}),
        );
    }
    out["spec"]["metrics"] = json!(metrics);
    if let Some(m) = out["spec"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    if existing.is_none()
        && let Some(m) = out.as_object_mut()
    {
        m.remove("status");
    }
    out
}

/// A stored v2 object as v1.
pub fn to_v1(v2: &Value) -> Value {
    let spec = &v2["spec"];
    let mut out = json!({
        "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": v2["metadata"],
        "spec": {"scaleTargetRef": spec["scaleTargetRef"], "minReplicas": spec["minReplicas"],
                 "maxReplicas": spec["maxReplicas"]},
        "status": {"currentReplicas": v2["status"]["currentReplicas"].as_i64().unwrap_or(0),
                   "desiredReplicas": v2["status"]["desiredReplicas"].as_i64().unwrap_or(0)},
    });
    if let Some(pct) = cpu_metric(&spec["metrics"])
        .and_then(|m| m["resource"]["target"]["averageUtilization"].as_i64())
    {
        out["spec"]["targetCPUUtilizationPercentage"] = json!(pct);
    }
    for field in ["observedGeneration", "lastScaleTime"] {
        if !v2["status"][field].is_null() {
            out["status"][field] = v2["status"][field].clone();
        }
    }
    let current = v2["status"]["currentMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        .and_then(|m| m["resource"]["current"]["averageUtilization"].as_i64());
    if let Some(c) = current {
        out["status"]["currentCPUUtilizationPercentage"] = json!(c);
    }
    out
}

/// Serves a request to the v1 view through the v2 handlers.
///
/// # Errors
/// 405 for watches and server-side apply through v1; otherwise as the v2 request.
pub async fn handle(state: &Arc<ApiState>, mut ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let v2 = resources::lookup("autoscaling", HPA_V1.plural)
        .ok_or_else(|| ApiError::internal("autoscaling/v2 is not served"))?;
    let only_v2 = |what: &str| {
        ApiError::method_not_allowed(format!(
            "{what} of horizontalpodautoscalers are served through autoscaling/v2 only"
        ))
    };
    if ctx.method == Method::GET && ctx.target.name.is_none() && ctx.query.flag("watch") {
        return Err(only_v2("watches"));
    }
    ctx.target.res = v2;
    let body = match ctx.method {
        Method::POST => {
            let v1 = decode_body(&ctx, &body)?;
            json_body(&mut ctx, &to_v2(&v1, None))?
        }
        Method::PUT => {
            let v1 = decode_body(&ctx, &body)?;
            let existing = state.read(&ctx.target).await?;
            json_body(&mut ctx, &to_v2(&v1, Some(&existing)))?
        }
        Method::PATCH => {
            let patch = decode_body(&ctx, &body)?;
            let kind = handlers::patch_kind(&ctx)?;
            if kind == handlers::PatchKind::Apply {
                return Err(only_v2("server-side applies"));
            }
            let existing = state.read(&ctx.target).await?;
            let patched =
                handlers::apply_patch(kind, "HorizontalPodAutoscaler", &to_v1(&existing), &patch)?;
            if !patched["metadata"].is_object() || !patched["spec"].is_object() {
                return Err(ApiError::bad_request(
                    "the patched object must keep metadata and spec as objects",
                ));
            }
            let mut v2_body = to_v2(&patched, Some(&existing));
            // The update must apply to the object the patch was computed on.
            v2_body["metadata"]["resourceVersion"] =
                existing["metadata"]["resourceVersion"].clone();
            ctx.method = Method::PUT;
            json_body(&mut ctx, &v2_body)?
        }
        _ => body,
    };
    let response = handlers::handle(state, ctx, body).await?;
    answer_as_v1(response).await
}

/// Replaces the body with `object` as JSON.
fn json_body(ctx: &mut Ctx, object: &Value) -> ApiResult<Bytes> {
    ctx.headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(Bytes::from(
        serde_json::to_vec(object).map_err(ApiError::internal)?,
    ))
}

/// Turns the v2 objects of a JSON answer (an object or a list) into v1.
async fn answer_as_v1(response: Response) -> ApiResult<Response> {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(ApiError::internal)?;
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(Response::from_parts(parts, axum::body::Body::from(bytes)));
    };
    match value["kind"].as_str() {
        Some("HorizontalPodAutoscaler") => value = to_v1(&value),
        Some("HorizontalPodAutoscalerList") => {
            value["apiVersion"] = json!("autoscaling/v1");
            if let Some(items) = value["items"].as_array_mut() {
                for item in items {
                    *item = to_v1(item);
                }
            }
        }
        _ => return Ok(Response::from_parts(parts, axum::body::Body::from(bytes))),
    }
    let out = serde_json::to_vec(&value).map_err(ApiError::internal)?;
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, axum::body::Body::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_convert_both_ways_keeping_what_v1_cannot_say() {
        let v1 = json!({"metadata": {"name": "web"}, "spec": {"scaleTargetRef":
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60}});
        let v2 = to_v2(&v1, None);
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            60
        );
        assert_eq!(to_v1(&v2)["spec"], v1["spec"]);
        // A v2 object with a memory metric and a behavior keeps both through a v1 write.
        let mut stored = v2.clone();
        stored["spec"]["metrics"].as_array_mut().unwrap().push(json!({"type": "Resource",
            "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}}));
        stored["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 0}});
        let mut edited = to_v1(&stored);
        edited["spec"]["targetCPUUtilizationPercentage"] = json!(70);
        let back = to_v2(&edited, Some(&stored));
        assert_eq!(back["spec"]["behavior"], stored["spec"]["behavior"]);
        let metrics = back["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
        assert_eq!(metrics[1]["resource"]["name"], "memory");
    }
}
