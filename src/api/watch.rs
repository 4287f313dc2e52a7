//! Watch streams: newline-delimited JSON events, resumable from a resourceVersion.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::{ApiError, ApiResult};
use super::handlers::Filters;
use super::{ApiState, Ctx, table};
use crate::store::{EventKind, Revision};

/// Watches with no timeoutSeconds end after a random time in this range, as the real server's.
const DEFAULT_TIMEOUT: std::ops::Range<u64> = 1800..3600;

struct Stream {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    kind: &'static str,
    table: bool,
}

impl Stream {
    /// Sends one event; false when the client has gone.
    async fn send(&self, ty: &str, object: &Value) -> bool {
        let object = if self.table && ty != "BOOKMARK" && ty != "ERROR" {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            table::table(self.kind, &[object], &rv, None, crate::clock::now())
        } else {
            object.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn bookmark(
        &self,
        res: &super::resources::ResourceInfo,
        rv: Revision,
        initial_end: bool,
    ) -> bool {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(
            "BOOKMARK",
            &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}),
        )
        .await
    }
}

/// Answers a `watch=true` request with a stream of events.
///
/// # Errors
/// 400 for bad parameters; an expired resourceVersion is reported in the stream as an ERROR
/// event with a 410 Status, as the real server does.
pub async fn serve(state: &Arc<ApiState>, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let filters = Filters::parse(ctx)?;
    let from = match ctx.query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion \"{rv}\"")))?,
        ),
    };
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds \"{s}\"")))?,
        ),
        None => {
            use rand::Rng;
            Duration::from_secs(rand::rng().random_range(DEFAULT_TIMEOUT))
        }
    };
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    let send_initial = ctx.query.flag("sendInitialEvents");
    let (tx, rx) = mpsc::channel(256);
    let stream = Stream {
        tx,
        kind: t.res.kind,
        table: ctx.wants_table(),
    };
    let prefix = t.res.prefix(t.namespace.as_deref());
    let res = t.res;
    let state = state.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut position = match from {
            Some(rv) if !send_initial => rv,
            _ => {
                if state.cache.sync().await.is_err() {
                    return;
                }
                let (items, revision, _) = state
                    .cache
                    .list(&prefix, None, None, |o| filters.matches(o));
                for (_, object) in items {
                    if !stream.send("ADDED", &object).await {
                        return;
                    }
                }
                if send_initial && bookmarks && !stream.bookmark(res, revision, true).await {
                    return;
                }
                revision
            }
        };
        let mut ticker = tokio::time::interval(state.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => return,
                () = stream.tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if !stream.bookmark(res, position, false).await {
                        return;
                    }
                }
                events = state.cache.events_after(position) => match events {
                    Err(expired) => {
                        let status = ApiError::gone(expired.to_string()).to_status();
                        stream.send("ERROR", &status).await;
                        return;
                    }
                    Ok(events) => {
                        for event in events {
                            position = event.revision;
                            if !event.key.starts_with(&prefix) {
                                continue;
                            }
                            let now = event.kind != EventKind::Deleted && filters.matches(&event.object);
                            let before = event.prev.as_ref().is_some_and(|p| filters.matches(p));
                            let ty = match (before, now) {
                                (false, true) => "ADDED",
                                (true, true) => "MODIFIED",
                                (true, false) => "DELETED",
                                (false, false) if event.kind == EventKind::Deleted && filters.matches(&event.object) => "DELETED",
                                (false, false) => continue,
                            };
                            if !stream.send(ty, &event.object).await {
                                return;
                            }
                        }
                    }
                },
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
