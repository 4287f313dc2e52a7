//! The agent's HTTPS endpoint (the kubelet's port 10250): container logs, usage and exec, for
//! the API server to proxy. Only the node token is accepted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;

use super::logs::{self, LogQuery};
use super::{AgentConfig, Error, Shared, sandbox};

/// Binds the endpoint; the returned future serves it until the agent shuts down.
///
/// # Errors
/// When the address cannot be bound or the certificate made.
pub async fn bind(
    config: &AgentConfig,
    shared: Arc<Shared>,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    Error,
> {
    let fail = |message: String| Error::Endpoint {
        addr: config.listen,
        message,
    };
    let mut names = vec![
        "localhost".to_owned(),
        config.node_name.clone(),
        config.address.to_string(),
    ];
    names.dedup();
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = rcgen::CertificateParams::new(names)
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| fail(e.to_string()))?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let listener = std::net::TcpListener::bind(config.listen).map_err(|e| fail(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let token = Arc::new(config.node_token.clone());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/stats/summary", get(summary))
        .route("/exec/{ns}/{pod}/{container}", get(super::exec::exec))
        .layer(axum::middleware::from_fn(
            move |headers: HeaderMap, req, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    let ok = headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .is_some_and(|t| t.trim() == token.as_str());
                    if ok {
                        next.run(req).await
                    } else {
                        (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response()
                    }
                }
            },
        ))
        .with_state(shared.clone());
    let server = axum_server::from_tcp_rustls(listener, tls).map_err(|e| fail(e.to_string()))?;
    let handle = axum_server::Handle::new();
    let server = server.handle(handle.clone());
    let shutdown = shared.shutdown.clone();
    let serve = async move {
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(Duration::from_secs(2)));
        });
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "the agent endpoint stopped");
        }
    };
    Ok((addr, serve))
}

/// kubectl's log options, as the API server forwards them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogParams {
    follow: Option<bool>,
    previous: Option<bool>,
    timestamps: Option<bool>,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    limit_bytes: Option<i64>,
}

fn text(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// The run numbers with a log file, oldest first.
fn runs(dir: &std::path::Path) -> Vec<u32> {
    let mut runs: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    runs.sort_unstable();
    runs
}

async fn container_logs(
    State(shared): State<Arc<Shared>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(params): Query<LogParams>,
) -> Response {
    let Some(uid) = shared.uid_of(&ns, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not on this node\n"),
        );
    };
    let (pod_dir, _) = sandbox::paths(&shared.data_dir, &uid);
    let dir = logs::container_dir(&pod_dir, &container);
    let runs = runs(&dir);
    let run = if params.previous.unwrap_or(false) {
        match runs.len() {
            n if n >= 2 => runs[n - 2],
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found\n"
                    ),
                );
            }
        }
    } else {
        match runs.last() {
            Some(r) => *r,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "container \"{container}\" in pod \"{pod}\" is waiting to start: no logs yet\n"
                    ),
                );
            }
        }
    };
    let current = dir.join(format!("{run}.log"));
    let query = LogQuery {
        timestamps: params.timestamps.unwrap_or(false),
        tail_lines: params.tail_lines.and_then(|n| usize::try_from(n).ok()),
        since_seconds: params.since_seconds.filter(|s| *s > 0),
        limit_bytes: params.limit_bytes.and_then(|n| usize::try_from(n).ok()),
    };
    let files = logs::run_files(&current);
    let first = {
        let (files, query) = (files.clone(), query.clone());
        tokio::task::spawn_blocking(move || logs::render(&files, &query)).await
    };
    let first = match first {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log: {e}\n"),
            );
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    if !params.follow.unwrap_or(false) || params.previous.unwrap_or(false) {
        return ([(header::CONTENT_TYPE, "text/plain")], first).into_response();
    }
    let body = Body::from_stream(follow(shared, current, first, query.timestamps));
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Sends what is there, then what is appended, until the container's run ends. When the file is
/// rotated, the rest of the rotated file is sent before the fresh one.
fn follow(
    shared: Arc<Shared>,
    path: PathBuf,
    first: Vec<u8>,
    timestamps: bool,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    use std::os::unix::fs::MetadataExt;
    let identity =
        |p: &std::path::Path| std::fs::metadata(p).map_or((0, 0), |m| (m.ino(), m.len()));
    let start = identity(&path);
    futures_util::stream::unfold(
        (Some(first), start),
        move |(first, (mut ino, mut offset))| {
            let shared = shared.clone();
            let path = path.clone();
            async move {
                if let Some(f) = first {
                    return Some((Ok(Bytes::from(f)), (None, (ino, offset))));
                }
                loop {
                    let live = shared.is_live(&path);
                    let (now_ino, len) = identity(&path);
                    if now_ino != ino {
                        // Rotated: finish the old file (now `.log.1`), then start the new one.
                        let rotated = logs::run_files(&path)[0].clone();
                        let (rest, _) = read_from(&rotated, offset, timestamps);
                        (ino, offset) = (now_ino, 0);
                        if !rest.is_empty() {
                            return Some((Ok(Bytes::from(rest)), (None, (ino, offset))));
                        }
                        continue;
                    }
                    if len > offset {
                        let (text, used) = read_from(&path, offset, timestamps);
                        if used > 0 {
                            return Some((Ok(Bytes::from(text)), (None, (ino, offset + used))));
                        }
                    }
                    if !live || shared.shutdown.is_cancelled() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        },
    )
}

/// The text of the whole records appended after `offset`, and how many bytes they took.
fn read_from(path: &std::path::Path, offset: u64, timestamps: bool) -> (Vec<u8>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut raw = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_end(&mut raw);
    }
    let Some(end) = raw.iter().rposition(|b| *b == b'\n') else {
        return (Vec::new(), 0);
    };
    raw.truncate(end + 1);
    let mut out = Vec::new();
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let (Some(time), Some(_), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if timestamps {
            out.extend_from_slice(time);
            out.push(b' ');
        }
        out.extend_from_slice(parts.next().unwrap_or_default());
        if tag != b"P" {
            out.push(b'\n');
        }
    }
    (out, (end + 1) as u64)
}

async fn summary(State(shared): State<Arc<Shared>>) -> Response {
    let pods: Vec<_> = shared
        .usage()
        .into_iter()
        .map(|p| {
            json!({
                "podRef": {"namespace": p.namespace, "name": p.name},
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "memory": {"workingSetBytes": c.memory},
                    "cpu": {"usageCoreNanoSeconds": c.cpu, "usageNanoCores": c.nanocores},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (cpu, memory) = shared.node_usage();
    let body = json!({"node": {"nodeName": shared.node_name,
        "cpu": {"usageNanoCores": cpu}, "memory": {"workingSetBytes": memory}}, "pods": pods});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
