//! `kubectl exec`: `GET /api/v1/namespaces/{ns}/pods/{name}/exec` upgraded to a WebSocket
//! (`v5.channel.k8s.io`, or `v4`), passed through to the pod's node. The API server checks
//! the pod and the container, opens the same upgrade to the node agent's endpoint
//! (`/exec/{ns}/{pod}/{container}`, HTTP/1.1 over TLS, with the node token), answers kubectl
//! with the agent's 101, and then copies bytes both ways until either side closes, as
//! kube-apiserver's upgrade-aware proxy does. The agent speaks the stream protocol
//! (`crate::agent::exec`). kubectl's older SPDY fallback is refused with 400.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;

use super::error::{ApiError, ApiResult};
use super::handlers::{agent_address, node_of, pick_container};
use super::{ApiState, Identity, resources};

/// Headers of the WebSocket handshake that pass between kubectl and the agent.
const HANDSHAKE: [header::HeaderName; 5] = [
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// The exec subresource.
pub async fn exec(
    State(state): State<Arc<ApiState>>,
    identity: Option<Extension<Identity>>,
    Path((ns, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    if identity.is_some_and(|i| i.0 == Identity::Node) {
        return ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: User \"system:node\" cannot create resource \"pods/exec\""
        ))
        .into_response();
    }
    proxy(&state, &ns, &name, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn proxy(
    state: &ApiState,
    ns: &str,
    name: &str,
    mut request: Request,
) -> ApiResult<Response> {
    let pods = resources::by_kind("Pod").expect("pods are served");
    state
        .cache
        .sync()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let pod = state
        .cache
        .get(&pods.key(Some(ns), name))
        .ok_or_else(|| ApiError::not_found(pods, name))?;
    let query = request.uri().query().unwrap_or_default().to_owned();
    let requested = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned());
    let container = pick_container(&pod, requested.as_deref())?;
    let node = node_of(state, &pod, &container)?;
    // After the pod's checks, so that kubectl's SPDY retry of a refused request shows why.
    let websocket = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket {
        return Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not served",
        ));
    }
    let address = agent_address(&node).ok_or_else(|| {
        ApiError::unavailable(format!("the node of pod {ns}/{name} has no agent endpoint"))
    })?;
    let path = format!("/exec/{ns}/{name}/{container}?{query}");
    let mut agent = open(&address, &path, request.headers(), &state.tokens.node)
        .await
        .map_err(|e| ApiError::unavailable(format!("exec on the node at {address}: {e}")))?;
    if agent.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = agent.status();
        let body = http_body_util::BodyExt::collect(agent.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(match code {
            StatusCode::NOT_FOUND => ApiError::new(404, "NotFound", body),
            StatusCode::BAD_REQUEST => ApiError::bad_request(body),
            _ => ApiError::unavailable(format!("the node answered {code}: {body}")),
        });
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in agent.headers() {
        if matches!(
            *k,
            header::UPGRADE
                | header::CONNECTION
                | header::SEC_WEBSOCKET_ACCEPT
                | header::SEC_WEBSOCKET_PROTOCOL
        ) {
            answer = answer.header(k, v);
        }
    }
    let client_side = hyper::upgrade::on(&mut request);
    let agent_side = hyper::upgrade::on(&mut agent);
    tokio::spawn(async move {
        match (client_side.await, agent_side.await) {
            (Ok(client), Ok(agent)) => {
                let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    answer
        .body(Body::empty())
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// Sends the upgrade request to the agent over a connection of its own (HTTP/1.1 over TLS: an
/// upgrade cannot travel over HTTP/2), with kubectl's handshake headers and the node token.
async fn open(
    address: &str,
    path: &str,
    from: &HeaderMap,
    token: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut tls = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::client::kubeconfig::NoVerify::new()))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The agent's certificate is self-signed and not verified; the agent checks the token.
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let server_name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "exec connection to the agent ended");
        }
    });
    let mut request = hyper::Request::get(path)
        .header(header::HOST, address)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    for name in HANDSHAKE {
        if let Some(v) = from.get(&name) {
            request.headers_mut().insert(name, v.clone());
        }
    }
    request
        .headers_mut()
        .entry(header::CONNECTION)
        .or_insert(HeaderValue::from_static("Upgrade"));
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}
