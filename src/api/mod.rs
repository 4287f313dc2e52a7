//! The Kubernetes-compatible HTTP API: routing, authentication and the request context.
#![allow(
    clippy::result_large_err,
    reason = "ApiError carries a whole Status (causes included); it is built only on the error path"
)]

pub mod admission;
pub mod apply;
pub mod convert;
pub mod discovery;
pub mod error;
pub mod exec;
pub mod handlers;
pub mod metrics;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod services;
pub mod table;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use self::error::{ApiError, ApiResult};
use self::handlers::meta_str;
use self::resources::ResourceInfo;
use crate::store::Cache;

/// The largest request body the API reads.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Who a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The cluster admin (the kubeconfig's token).
    Admin,
    /// A node agent (the join token).
    Node,
}

/// The bearer tokens the API accepts.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The admin token, written into the kubeconfig.
    pub admin: String,
    /// The node join token.
    pub node: String,
}

impl Tokens {
    fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim();
        // A whole join token (K10<hash>::node:<secret>) works as well as its secret.
        let (_, node_secret) = crate::client::parse_join_token(token);
        if constant_time_eq(token.as_bytes(), self.admin.as_bytes()) {
            Some(Identity::Admin)
        } else if constant_time_eq(node_secret.as_bytes(), self.node.as_bytes()) {
            Some(Identity::Node)
        } else {
            None
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the handlers share.
pub struct ApiState {
    /// The watch-fed cache in front of the store.
    pub cache: Arc<Cache>,
    /// Accepted tokens.
    pub tokens: Tokens,
    /// Cancelled when the server starts to shut down; long watches end on it.
    pub shutdown: CancellationToken,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// The cluster CA, PEM, served at `/cacerts` for joining agents to pin.
    pub ca_pem: String,
    /// Namespaces to empty and remove; a task started by [`ApiState::new`] takes them.
    finalizer: tokio::sync::mpsc::UnboundedSender<String>,
    /// Held from counting a namespace's quota usage until the object it admitted is stored,
    /// so that two creates cannot both take the last of a quota.
    quota_lock: tokio::sync::Mutex<()>,
    /// The range Services take their ClusterIPs from.
    pub service_cidr: crate::net::cidr::Cidr,
    /// Held from reading the Services' addresses and ports until a Service is stored.
    service_lock: tokio::sync::Mutex<()>,
}

impl ApiState {
    /// Builds the shared state and starts the namespace finalizer.
    pub fn new(
        cache: Arc<Cache>,
        tokens: Tokens,
        shutdown: CancellationToken,
        bookmark_interval: Duration,
        ca_pem: String,
        service_cidr: crate::net::cidr::Cidr,
    ) -> Arc<Self> {
        let (finalizer, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let state = Arc::new(Self {
            cache,
            tokens,
            shutdown,
            bookmark_interval,
            ca_pem,
            finalizer,
            quota_lock: tokio::sync::Mutex::new(()),
            service_cidr,
            service_lock: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            while let Some(ns) = rx.recv().await {
                let Some(state) = weak.upgrade() else { return };
                tokio::spawn(async move { state.finalize_namespace(&ns).await });
            }
        });
        state
    }

    /// Asks the finalizer to empty and remove a terminating namespace.
    pub fn finalize_later(&self, ns: String) {
        let _ = self.finalizer.send(ns);
    }
}

/// Builds the API router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/cacerts", get(cacerts))
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/apis", get(discovery::group_list))
        .route("/api/v1/namespaces/{ns}/pods/{name}/exec", any(exec::exec))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
        .route("/openapi/v3", get(discovery::openapi_index))
        .route("/openapi/v3/{*rest}", get(discovery::openapi_document))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found(uri: http::Uri) -> Response {
    ApiError::no_route(uri.path()).into_response()
}

/// The cluster CA, unauthenticated as in k3s: a joining agent checks it against the hash in
/// its token before trusting it.
async fn cacerts(State(state): State<Arc<ApiState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], state.ca_pem.clone()).into_response()
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/livez" | "/readyz" | "/cacerts") {
        return next.run(request).await;
    }
    match state.tokens.identify(request.headers()) {
        Some(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        None => {
            // Read (and drop) the body first: answering an h2 upload early resets its stream.
            let _ = axum::body::to_bytes(request.into_body(), MAX_BODY).await;
            ApiError::unauthorized().into_response()
        }
    }
}

/// Where a request under `/api` or `/apis` points.
#[derive(Debug)]
pub enum Route {
    /// `/apis/{group}`.
    Group(&'static str),
    /// `/api/v1` or `/apis/{group}/{version}`.
    Resources(&'static str),
    /// A resource, collection or subresource.
    Object(Target),
    /// `metrics.k8s.io`, answered from the agents.
    Metrics(metrics::Query),
}

/// A resource path: the type, and optionally namespace, name and subresource.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource type.
    pub res: &'static ResourceInfo,
    /// The namespace from the path.
    pub namespace: Option<String>,
    /// The object name from the path.
    pub name: Option<String>,
    /// The subresource from the path.
    pub sub: Option<String>,
}

impl Target {
    /// The store key of the named object.
    pub fn key(&self) -> String {
        self.res.key(
            self.namespace.as_deref(),
            self.name.as_deref().unwrap_or_default(),
        )
    }
}

/// Parses a path below `/api` or `/apis`.
///
/// # Errors
/// 404 for a group, version or resource the server does not serve.
pub fn parse_route(path: &str) -> ApiResult<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", metrics::GROUP, rest @ ..] => {
            return metrics::parse(rest)
                .map(Route::Metrics)
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["apis", group, rest @ ..] => {
            let Some(group) = resources::GROUPS.iter().find(|g| *g == group) else {
                return Err(ApiError::no_route(path));
            };
            match rest {
                [] => return Ok(Route::Group(group)),
                [v, rest @ ..] if *v == resources::version_of(group) => (*group, rest),
                [v, "namespaces", ns, plural, more @ ..]
                    if more.len() <= 2 && convert::view(group, v, plural).is_some() =>
                {
                    let owned = |s: Option<&&str>| s.map(|s| (*s).to_owned());
                    let target = Target {
                        res: convert::view(group, v, plural).expect("checked"),
                        namespace: Some((*ns).to_owned()),
                        name: owned(more.first()),
                        sub: owned(more.get(1)),
                    };
                    if target.sub.as_deref().is_some_and(|s| s != "status") {
                        return Err(ApiError::no_route(path));
                    }
                    return Ok(Route::Object(target));
                }
                [v, plural] if convert::view(group, v, plural).is_some() => {
                    return Ok(Route::Object(Target {
                        res: convert::view(group, v, plural).expect("checked"),
                        namespace: None,
                        name: None,
                        sub: None,
                    }));
                }
                _ => return Err(ApiError::no_route(path)),
            }
        }
        _ => return Err(ApiError::no_route(path)),
    };
    let lookup =
        |plural: &str| resources::lookup(group, plural).ok_or_else(|| ApiError::no_route(path));
    let owned = |s: Option<&&str>| s.map(|s| (*s).to_owned());
    let target = match rest {
        [] => return Ok(Route::Resources(group)),
        ["namespaces", ns, plural, more @ ..]
            if resources::lookup(group, plural).is_some_and(|r| r.namespaced) =>
        {
            if more.len() > 2 {
                return Err(ApiError::no_route(path));
            }
            Target {
                res: lookup(plural)?,
                namespace: Some((*ns).to_owned()),
                name: owned(more.first()),
                sub: owned(more.get(1)),
            }
        }
        [plural, more @ ..] if more.len() <= 2 => {
            let res = lookup(plural)?;
            if res.namespaced && !more.is_empty() {
                return Err(ApiError::no_route(path));
            }
            Target {
                res,
                namespace: None,
                name: owned(more.first()),
                sub: owned(more.get(1)),
            }
        }
        _ => return Err(ApiError::no_route(path)),
    };
    if let Some(sub) = &target.sub
        && target.res.subresource(sub).is_none()
    {
        return Err(ApiError::no_route(path));
    }
    if target.name.as_deref() == Some("") {
        return Err(ApiError::no_route(path));
    }
    Ok(Route::Object(target))
}

/// The query string as a map; empty pairs (kube-rs sends `?&`) are skipped.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// One parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter (`true` or `1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// Whether `dryRun=All` was asked for.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "dryRun must be \"All\", not \"{other}\""
            ))),
        }
    }
}

/// One API request, parsed.
pub struct Ctx {
    /// The method.
    pub method: Method,
    /// The target.
    pub target: Target,
    /// The query.
    pub query: Query,
    /// The headers.
    pub headers: HeaderMap,
    /// Who asked.
    pub identity: Identity,
}

impl Ctx {
    /// Whether the client asked for a server-side Table.
    pub fn wants_table(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .next()
                    .is_some_and(|first| first.contains("as=Table"))
            })
    }
}

fn node_may(method: &Method, target: &Target) -> bool {
    let read = *method == Method::GET;
    match target.res.plural {
        "nodes" | "leases" | "events" => true,
        "pods" => read || *method == Method::DELETE || target.sub.as_deref() == Some("status"),
        "services"
        | "endpoints"
        | "endpointslices"
        | "ingresses"
        | "ingressclasses"
        | "runtimeclasses"
        | "configmaps"
        | "secrets"
        | "namespaces"
        | "persistentvolumeclaims"
        | "persistentvolumes" => read,
        _ => false,
    }
}

async fn dispatch(
    State(state): State<Arc<ApiState>>,
    identity: Option<axum::Extension<Identity>>,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let identity = identity.map_or(Identity::Admin, |e| e.0);
    let result = async {
        // Read the body before any answer: answering an h2 upload early resets its stream.
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => return Err(ApiError::too_large(MAX_BODY)),
        };
        let route = parse_route(uri.path())?;
        let target = match route {
            Route::Group(g) => return discovery::group(g, &headers),
            Route::Resources(g) => return discovery::resource_list(g),
            Route::Object(t) => t,
            Route::Metrics(q) => return metrics::handle(&state, &method, q).await,
        };
        if identity == Identity::Node && !node_may(&method, &target) {
            return Err(ApiError::forbidden(format!(
                "{} is forbidden: User \"system:node\" cannot {} resource \"{}\"",
                target.res.qualified(),
                method.as_str().to_lowercase(),
                target.res.plural
            )));
        }
        let ctx = Ctx {
            method,
            target,
            query: Query::parse(uri.query()),
            headers,
            identity,
        };
        if std::ptr::eq(ctx.target.res, &convert::HPA_V1) {
            return convert::handle(&state, ctx, body).await;
        }
        handlers::handle(&state, ctx, body).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A JSON response with optional `Warning` headers.
pub fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    bytes_response(code, Bytes::from(body), warnings)
}

/// A JSON response from bytes already serialized.
pub fn bytes_response(code: StatusCode, body: Bytes, warnings: &[String]) -> Response {
    let mut response = (code, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.append(header::WARNING, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match parse_route(path).unwrap() {
            Route::Object(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn namespaced_and_cluster_paths_resolve() {
        let t = target("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(
            (
                t.res.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let t = target("/api/v1/namespaces/default");
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = target("/api/v1/namespaces/kube-system/status");
        assert_eq!(
            (t.res.plural, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("kube-system"), Some("status"))
        );
        let t = target("/apis/apps/v1/namespaces/x/deployments/d/scale");
        assert_eq!(
            (t.res.kind, t.sub.as_deref()),
            ("Deployment", Some("scale"))
        );
        let t = target("/api/v1/pods");
        assert!(t.namespace.is_none() && t.name.is_none());
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for p in [
            "/api/v2/pods",
            "/apis/nope/v1/x",
            "/api/v1/widgets",
            "/api/v1/pods/x",
            "/api/v1/namespaces/d/pods/p/nosuch",
            "/apis/apps/v2/deployments",
        ] {
            assert_eq!(parse_route(p).unwrap_err().code, 404, "{p}");
        }
    }

    #[test]
    fn queries_tolerate_empty_pairs() {
        let q = Query::parse(Some("&labelSelector=app%3Dweb&&watch=true"));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert!(q.flag("watch"));
    }
}
