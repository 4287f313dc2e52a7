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

/// Requests one pod serves at once; more wait for a slot.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// How long one request may take to produce its response headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One HTTP container's serving state.
pub struct HttpService {
    pre: ProxyPre<P2State>,
    engine: Engine,
    spec: GuestSpec,
    stdout: LogStream,
    stderr: LogStream,
    limit: Semaphore,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            pre,
            engine,
            spec,
            stdout,
            stderr,
            limit: Semaphore::new(MAX_CONCURRENT_REQUESTS),
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
        let mut store = Store::new(&self.engine, p2_state(builder.build(), limiter));
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
        match rx.await {
            Ok(Ok(response)) => Ok(response),
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
        Ok(
            match tokio::time::timeout(REQUEST_TIMEOUT, self.call(req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(message)) => {
                    tracing::debug!(%message, "request failed");
                    let status = if message.starts_with("bad request") {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    plain(status, &format!("{message}\n"))
                }
                Err(_) => plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the guest did not answer in time\n",
                ),
            },
        )
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
