//! Serving a wasi:http component: a listener on the containerPort inside the pod's network
//! namespace, a fresh instance per request from the pre-instantiated template, a per-pod
//! concurrency limit and request timeout, and a graceful drain on stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{GuestSpec, Limiter, P2State, Stop, p2_state, slice};
use crate::agent::logs::LogStream;

/// Requests one pod serves at once by default; more wait for a slot.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// How long one request may take to produce its response headers, by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What a client is told when the guest takes longer than the request timeout.
const TIMED_OUT: &str = "the guest did not answer in time";
/// The pod annotation that sets its concurrency limit.
pub const CONCURRENCY_ANNOTATION: &str = "wk.dev/max-concurrent-requests";
/// The pod annotation that sets its request timeout, in seconds.
pub const TIMEOUT_ANNOTATION: &str = "wk.dev/request-timeout-seconds";

/// How a pod's HTTP containers serve: its concurrency limit and request timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Requests served at once, per container; more wait for a slot.
    pub max_concurrent: usize,
    /// Time allowed to produce the response headers; past it the client gets 504.
    pub timeout: Duration,
}

impl Serving {
    /// The pod's settings, from its annotations (defaults where absent).
    ///
    /// # Errors
    /// When an annotation is not a positive whole number, naming it.
    pub fn from_pod(pod: &serde_json::Value) -> Result<Self, String> {
        let number = |key: &str| -> Result<Option<u64>, String> {
            match pod["metadata"]["annotations"][key].as_str() {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!(
                        "annotation {key}: {v:?} is not a positive whole number"
                    )),
                },
            }
        };
        Ok(Self {
            max_concurrent: number(CONCURRENCY_ANNOTATION)?.map_or(MAX_CONCURRENT_REQUESTS, |n| {
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS)
            }),
            timeout: number(TIMEOUT_ANNOTATION)?.map_or(REQUEST_TIMEOUT, Duration::from_secs),
        })
    }
}

/// One HTTP container's serving state.
pub struct HttpService {
    pre: ProxyPre<P2State>,
    engine: Engine,
    spec: GuestSpec,
    stdout: LogStream,
    stderr: LogStream,
    limit: Semaphore,
    timeout: Duration,
    /// Interrupts in-flight guests when the grace period is over.
    pub kill: Stop,
}

impl HttpService {
    /// A service for a loaded HTTP component.
    pub fn new(
        pre: ProxyPre<P2State>,
        engine: Engine,
        spec: GuestSpec,
        stdout: LogStream,
        stderr: LogStream,
        serving: Serving,
    ) -> Arc<Self> {
        Arc::new(Self {
            pre,
            engine,
            spec,
            stdout,
            stderr,
            limit: Semaphore::new(serving.max_concurrent),
            timeout: serving.timeout,
            kill: Stop::default(),
        })
    }

    async fn call(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, String> {
        let mut builder = self
            .spec
            .wasi_builder(Some(&self.stdout), Some(&self.stderr))
            .map_err(|e| e.to_string())?;
        let limiter = Limiter::new(self.spec.memory_limit, self.spec.memory_usage.clone());
        // Waiting for a free pool slot counts against the request's time.
        let Ok(state) =
            tokio::time::timeout(self.timeout, p2_state(builder.build(), limiter, &self.spec))
                .await
        else {
            return Err(TIMED_OUT.into());
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        slice(&mut store, &self.kill, &self.spec);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| format!("bad request: {e}"))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| e.to_string())?;
        let pre = self.pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await;
            let hit = store.data().limiter.hit_limit;
            result.map_err(|e| {
                if hit {
                    e.context("OOMKilled: the guest went over its memory limit")
                } else {
                    e
                }
            })
        });
        // Until the guest has answered, a timeout or a client that goes away ends its instance
        // (with its task), so that it holds no slot or memory after.
        let mut guard = AbortOnDrop(Some(task.abort_handle()));
        let Ok(answer) = tokio::time::timeout(self.timeout, rx).await else {
            return Err(TIMED_OUT.into());
        };
        match answer {
            Ok(Ok(response)) => {
                // The guest goes on writing the body.
                guard.0 = None;
                Ok(response)
            }
            Ok(Err(code)) => Err(format!("the guest answered with an error: {code:?}")),
            Err(_) => match task.await {
                Ok(Ok(())) => Err("the guest returned without setting a response".into()),
                Ok(Err(e)) => Err(format!("the guest failed: {e:#}")),
                Err(e) => Err(format!("the guest's task failed: {e}")),
            },
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, Infallible> {
        let Ok(_permit) = self.limit.acquire().await else {
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
        };
        Ok(match self.call(req).await {
            Ok(response) => response,
            Err(message) => {
                tracing::debug!(%message, "request failed");
                let status = if message.starts_with("bad request") {
                    StatusCode::BAD_REQUEST
                } else if message == TIMED_OUT {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                plain(status, &format!("{message}\n"))
            }
        })
    }
}

/// Aborts a task when dropped, unless disarmed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text.to_owned()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `service` on `listener` until `drain` is asked for, then stops accepting and waits
/// for in-flight connections to finish.
pub async fn serve(listener: TcpListener, service: Arc<HttpService>, drain: Stop) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.wait() => break,
        };
        let Ok((stream, _)) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |req| svc.clone().handle(req)),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_settings_come_from_annotations_and_bad_ones_are_named() {
        let pod = |a: serde_json::Value| serde_json::json!({"metadata": {"annotations": a}});
        assert_eq!(
            Serving::from_pod(&pod(serde_json::json!({}))).unwrap(),
            Serving {
                max_concurrent: MAX_CONCURRENT_REQUESTS,
                timeout: REQUEST_TIMEOUT
            }
        );
        let set = Serving::from_pod(&pod(serde_json::json!({
            CONCURRENCY_ANNOTATION: "2", TIMEOUT_ANNOTATION: " 5 "})))
        .unwrap();
        assert_eq!(
            set,
            Serving {
                max_concurrent: 2,
                timeout: Duration::from_secs(5)
            }
        );
        for bad in ["0", "-1", "ten", "1.5"] {
            let e = Serving::from_pod(&pod(serde_json::json!({CONCURRENCY_ANNOTATION: bad})))
                .unwrap_err();
            assert!(e.contains(CONCURRENCY_ANNOTATION) && e.contains(bad), "{e}");
        }
    }
}
