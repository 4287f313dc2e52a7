//! `metrics.k8s.io/v1beta1` (what `kubectl top` and `wk top` read), served by asking each
//! node's agent for its usage summary, as metrics-server does with the kubelet.

use std::sync::Arc;

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::{ApiState, json_response, resources};

/// The group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its one version.
pub const VERSION: &str = "v1beta1";

fn resource(plural: &str, kind: &str, namespaced: bool) -> Value {
    json!({"resource": plural, "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
        "scope": if namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": &plural[..plural.len() - 1], "verbs": ["get", "list"]})
}

/// The group's entry in aggregated discovery.
pub fn aggregated_group() -> Value {
    json!({"metadata": {"name": GROUP}, "versions": [{"version": VERSION, "freshness": "Current",
        "resources": [resource("nodes", "NodeMetrics", false), resource("pods", "PodMetrics", true)]}]})
}

/// The group's entry in the legacy group list.
pub fn legacy_group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

fn resource_list() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [r("nodes", "NodeMetrics", false), r("pods", "PodMetrics", true)]})
}

/// What a metrics path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Query {
    /// `/apis/metrics.k8s.io`.
    Group,
    /// `/apis/metrics.k8s.io/v1beta1`.
    Resources,
    /// Node metrics, all or one.
    Nodes(Option<String>),
    /// Pod metrics: namespace (None: all) and name.
    Pods(Option<String>, Option<String>),
}

/// Parses the part of a path after `/apis/metrics.k8s.io`.
pub fn parse(rest: &[&str]) -> Option<Query> {
    let own = |s: &&str| (*s).to_owned();
    Some(match rest {
        [] => Query::Group,
        [v] if *v == VERSION => Query::Resources,
        [v, "nodes"] if *v == VERSION => Query::Nodes(None),
        [v, "nodes", name] if *v == VERSION => Query::Nodes(Some(own(name))),
        [v, "pods"] if *v == VERSION => Query::Pods(None, None),
        [v, "namespaces", ns, "pods"] if *v == VERSION => Query::Pods(Some(own(ns)), None),
        [v, "namespaces", ns, "pods", name] if *v == VERSION => {
            Query::Pods(Some(own(ns)), Some(own(name)))
        }
        _ => return None,
    })
}

/// Answers a metrics request.
///
/// # Errors
/// 404 for an unknown node or pod, 405 for anything but GET.
pub async fn handle(state: &Arc<ApiState>, method: &Method, query: Query) -> ApiResult<Response> {
    if *method != Method::GET {
        return Err(ApiError::method_not_allowed("metrics are read-only"));
    }
    match query {
        Query::Group => {
            let mut body = legacy_group();
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            Ok(json_response(StatusCode::OK, &body, &[]))
        }
        Query::Resources => Ok(json_response(StatusCode::OK, &resource_list(), &[])),
        Query::Nodes(name) => {
            let mut items = Vec::new();
            for (node, summary) in summaries(state).await {
                if name.as_ref().is_some_and(|n| *n != node) {
                    continue;
                }
                items.push(json!({
                    "metadata": {"name": node, "creationTimestamp": now()},
                    "timestamp": now(), "window": "10s",
                    "usage": {"cpu": nanocores(&summary["node"]["cpu"]["usageNanoCores"]),
                              "memory": kib(&summary["node"]["memory"]["workingSetBytes"])},
                }));
            }
            one_or_list("NodeMetrics", name, items)
        }
        Query::Pods(ns, name) => {
            let mut items = Vec::new();
            for (_, summary) in summaries(state).await {
                for p in summary["pods"].as_array().into_iter().flatten() {
                    let (pns, pname) = (
                        p["podRef"]["namespace"].as_str().unwrap_or_default(),
                        p["podRef"]["name"].as_str().unwrap_or_default(),
                    );
                    if ns.as_ref().is_some_and(|n| n != pns)
                        || name.as_ref().is_some_and(|n| n != pname)
                    {
                        continue;
                    }
                    let containers: Vec<Value> = p["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            json!({"name": c["name"], "usage": {
                            "cpu": nanocores(&c["cpu"]["usageNanoCores"]),
                            "memory": kib(&c["memory"]["workingSetBytes"])}})
                        })
                        .collect();
                    items.push(json!({
                        "metadata": {"name": pname, "namespace": pns, "creationTimestamp": now()},
                        "timestamp": now(), "window": "10s", "containers": containers,
                    }));
                }
            }
            one_or_list("PodMetrics", name, items)
        }
    }
}

fn now() -> String {
    crate::clock::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn nanocores(v: &Value) -> String {
    format!("{}n", v.as_u64().unwrap_or(0))
}

fn kib(v: &Value) -> String {
    format!("{}Ki", v.as_u64().unwrap_or(0) / 1024)
}

fn one_or_list(kind: &str, name: Option<String>, mut items: Vec<Value>) -> ApiResult<Response> {
    for item in &mut items {
        item["kind"] = json!(kind);
        item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
    }
    match name {
        Some(n) => match items.into_iter().next() {
            Some(item) => Ok(json_response(StatusCode::OK, &item, &[])),
            None => Err(ApiError::new(
                404,
                "NotFound",
                format!(
                    "{}.{GROUP} \"{n}\" not found",
                    kind.to_lowercase().replace("metrics", "")
                ),
            )),
        },
        None => Ok(json_response(
            StatusCode::OK,
            &json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {}, "items": items}),
            &[],
        )),
    }
}

/// Each registered node's `/stats/summary`, asked of its agent with the node token; nodes
/// whose agent does not answer are left out, as metrics-server does.
async fn summaries(state: &Arc<ApiState>) -> Vec<(String, Value)> {
    let nodes = resources::by_kind("Node").expect("nodes are served");
    let (all, _, _) = state.cache.list(&nodes.prefix(None), None, None, |_| true);
    let mut out = Vec::new();
    for (_, node) in all {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(client) = super::handlers::agent_client(state, &node) else {
            continue;
        };
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            client.get("/stats/summary"),
        )
        .await;
        if let Ok(Ok(summary)) = answer {
            out.push((name, summary));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_metrics_server_serves_them() {
        assert_eq!(parse(&[]), Some(Query::Group));
        assert_eq!(parse(&["v1beta1", "nodes"]), Some(Query::Nodes(None)));
        assert_eq!(
            parse(&["v1beta1", "namespaces", "a", "pods", "p"]),
            Some(Query::Pods(Some("a".into()), Some("p".into())))
        );
        assert_eq!(parse(&["v1", "nodes"]), None);
        assert_eq!(nanocores(&json!(1500)), "1500n");
        assert_eq!(kib(&json!(4096)), "4Ki");
    }
}
