//! Discovery and OpenAPI: `/version`, `/api`, `/apis` (aggregated and legacy), and the small
//! OpenAPI v3 documents kubectl reads before it applies.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::json_response;
use super::resources::{ALL_VERBS, GROUPS, RESOURCES, ResourceInfo, version_of};

/// The Kubernetes version wk answers as (kubectl picks its client from `minor`).
pub const KUBE_VERSION: &str = "v1.32.4";
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `GET /version`.
pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "32",
            "gitVersion": KUBE_VERSION,
            "gitCommit": "wk",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "rust",
            "compiler": "rustc",
            "platform": format!("linux/{}", crate::arch()),
            "wkVersion": env!("CARGO_PKG_VERSION"),
        }),
        &[],
    )
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .next()
                .is_some_and(|first| first.contains("as=APIGroupDiscoveryList"))
        })
}

fn aggregated_response(items: Vec<Value>) -> Response {
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    let mut response = (
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AGGREGATED));
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| {
            json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs})
        })
        .collect();
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": ALL_VERBS,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(aggregated_resource)
        .collect();
    let mut versions =
        vec![json!({"version": version_of(group), "freshness": "Current", "resources": resources})];
    // Older versions served as views of the stored one.
    let v1 = &super::convert::HPA_V1;
    if group == v1.group {
        versions.push(json!({"version": v1.version, "freshness": "Current",
            "resources": [aggregated_resource(v1)]}));
    }
    json!({"metadata": {"name": group}, "versions": versions})
}

/// `GET /api`.
pub async fn core_versions(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_response(vec![aggregated_group("")]);
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        &[],
    )
}

fn legacy_group(group: &str) -> Value {
    let version = version_of(group);
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`.
pub async fn group_list(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        let mut items: Vec<Value> = GROUPS.iter().map(|g| aggregated_group(g)).collect();
        items.push(super::metrics::aggregated_group());
        return aggregated_response(items);
    }
    let mut groups: Vec<Value> = GROUPS.iter().map(|g| legacy_group(g)).collect();
    groups.push(super::metrics::legacy_group());
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        &[],
    )
}

/// `GET /apis/{group}`.
///
/// # Errors
/// None today; the signature matches the other routes.
pub fn group(group: &str, _headers: &HeaderMap) -> ApiResult<Response> {
    let mut body = legacy_group(group);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &body, &[]))
}

/// `GET /api/v1` or `GET /apis/{group}/v1`: the legacy APIResourceList (kubectl drain reads
/// `pods/eviction` here).
///
/// # Errors
/// None today; the signature matches the other routes.
pub fn resource_list(group: &str) -> ApiResult<Response> {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ALL_VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for s in r.subresources {
            let mut sub = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "", "namespaced": r.namespaced, "kind": s.kind, "verbs": s.verbs});
            if s.group != r.group || s.version != r.version {
                sub["group"] = json!(s.group);
                sub["version"] = json!(s.version);
            }
            resources.push(sub);
        }
    }
    let gv = if group.is_empty() {
        "v1".to_owned()
    } else {
        format!("{group}/{}", version_of(group))
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        &[],
    ))
}

/// The hash that names this build's OpenAPI documents.
fn openapi_hash() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in concat!(env!("CARGO_PKG_VERSION"), "-openapi-1").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/{}", version_of(group))
    }
}

/// `GET /openapi/v3`.
pub async fn openapi_index() -> Response {
    let hash = openapi_hash();
    let mut paths = serde_json::Map::new();
    for g in std::iter::once("").chain(GROUPS.iter().copied()) {
        let p = gv_path(g);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    let view = &super::convert::HPA_V1;
    let p = format!("apis/{}/{}", view.group, view.version);
    paths.insert(
        p.clone(),
        json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
    );
    json_response(StatusCode::OK, &json!({"paths": paths}), &[])
}

fn in_group(group: &str) -> Vec<&'static ResourceInfo> {
    RESOURCES.iter().filter(|r| r.group == group).collect()
}

/// `GET /openapi/v3/{api/v1 | apis/g/v}`: one PATCH operation per kind, each declaring the
/// `fieldValidation` parameter, so kubectl leaves validation to the server.
pub async fn openapi_document(
    axum::extract::Path(rest): axum::extract::Path<String>,
    uri: http::Uri,
) -> Response {
    let view = &super::convert::HPA_V1;
    let (gv, served): (String, Vec<&ResourceInfo>) = match rest
        .trim_matches('/')
        .split('/')
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["api", "v1"] => (gv_path(""), in_group("")),
        ["apis", g, v] if GROUPS.contains(g) && version_of(g) == *v => (gv_path(g), in_group(g)),
        ["apis", g, v] if *g == view.group && *v == view.version => {
            (format!("apis/{g}/{v}"), vec![view])
        }
        _ => return ApiError::no_route(uri.path()).into_response(),
    };
    let mut paths = serde_json::Map::new();
    for r in served {
        let path = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{gv}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                               {"name": "dryRun", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    let body = json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION}, "paths": paths});
    let mut response = json_response(StatusCode::OK, &body, &[]);
    if uri.query().is_some_and(|q| q.contains("hash=")) {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, immutable"),
        );
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", openapi_hash())) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}
