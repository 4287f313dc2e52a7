//! Serving a wasi:http component: a listener on the containerPort inside the pod's network
//! namespace, a fresh instance per request from the pre-instantiated template, a per-pod
//! concurrency limit and request timeout, and a graceful drain on stop.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{Guest, GuestSpec, Limiter, P2State, Stop, p2_state, slice};
use crate::agent::logs::LogStream;

/// Requests one pod serves at once by default; more wait for a slot.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// How long one request may take to produce its response headers, by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What a client is told when the guest takes longer than the request timeout.
const TIMED_OUT: &str = "the guest did not answer in time";
/// Why a request kept for a replay got 408.
const BODY_TIMED_OUT: &str = "the client did not send its body in time";
/// The pod annotation that sets its concurrency limit.
pub const CONCURRENCY_ANNOTATION: &str = "wk.dev/max-concurrent-requests";
/// The pod annotation that sets its request timeout, in seconds.
pub const TIMEOUT_ANNOTATION: &str = "wk.dev/request-timeout-seconds";
/// The pod annotation that lets one instance serve up to this many requests, one after another,
/// instead of a fresh instance for each: faster, but requests then share the guest's state.
pub const REUSE_ANNOTATION: &str = "wk.dev/instance-reuse";
/// The pod annotation that sets how many fresh instances each HTTP container keeps made ahead
/// of need, off the request's path (default 0: made when a request comes).
pub const PREWARM_ANNOTATION: &str = "wk.dev/prewarm-instances";
/// Instances are made ahead only while more of the node's pool slots than this are free, so
/// that they never keep a request of another pod waiting.
const PREWARM_SPARE_SLOTS: usize = 8;
/// With reuse, the instances (and so the requests) one container serves at once by default.
pub const REUSE_CONCURRENCY: usize = 16;
/// An instance idle this long is dropped, so an idle pod gives its memory back.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Until one instance has answered a second request, a reused instance that takes longer than
/// this is taken as one that cannot be reused (a fetch-event JS component waits forever).
const REUSE_TRIAL: Duration = Duration::from_secs(2);
/// While reuse is on trial, a request body up to this long is read before the guest runs and
/// kept, so that the request can be served again if the reused instance fails.
const REPLAY_BODY: usize = 64 * 1024;

/// How a pod's HTTP containers serve: its concurrency limit and request timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Requests served at once, per container; more wait for a slot. With reuse, also the
    /// most instances the container keeps.
    pub max_concurrent: usize,
    /// Time allowed to produce the response headers; past it the client gets 504.
    pub timeout: Duration,
    /// Requests one instance serves before it is dropped (1: a fresh instance each).
    pub reuse: u32,
    /// Fresh instances kept made ahead of need, without reuse (0: none).
    pub prewarm: usize,
}

impl Serving {
    /// The pod's settings, from its annotations (defaults where absent).
    ///
    /// # Errors
    /// When an annotation is not a positive whole number, naming it.
    pub fn from_pod(pod: &serde_json::Value) -> Result<Self, String> {
        // A whole number (`least` or more) from an annotation, or None where it is absent.
        let whole = |key: &str, least: u64| -> Result<Option<u64>, String> {
            match pod["metadata"]["annotations"][key].as_str() {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= least => Ok(Some(n)),
                    _ if least > 0 => Err(format!(
                        "annotation {key}: {v:?} is not a positive whole number"
                    )),
                    _ => Err(format!("annotation {key}: {v:?} is not a whole number")),
                },
            }
        };
        let number = |key: &str| whole(key, 1);
        let reuse = number(REUSE_ANNOTATION)?.map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
        let default = if reuse > 1 {
            REUSE_CONCURRENCY
        } else {
            MAX_CONCURRENT_REQUESTS
        };
        Ok(Self {
            max_concurrent: number(CONCURRENCY_ANNOTATION)?.map_or(default, |n| {
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS)
            }),
            timeout: number(TIMEOUT_ANNOTATION)?.map_or(REQUEST_TIMEOUT, Duration::from_secs),
            reuse,
            prewarm: whole(PREWARM_ANNOTATION, 0)?
                .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
                .min(REUSE_CONCURRENCY),
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
    /// Requests per instance (1: no reuse).
    reuse: u32,
    /// Instances kept idle at most (the concurrency limit: no more are ever in use).
    max_instances: usize,
    /// Instances waiting for their next request, the most recently used last.
    idle: Mutex<Vec<Warm>>,
    /// Set once a reused instance has failed: every request gets a fresh instance after.
    refused: AtomicBool,
    /// Set once a reused instance has answered: reuse works for this component.
    proven: AtomicBool,
    /// Fresh instances kept made ahead of need (without reuse).
    prewarm: usize,
    /// Whether instances are being made ahead now.
    warming: AtomicBool,
    /// Interrupts in-flight guests when the grace period is over.
    pub kill: Stop,
}

/// An instance that has served and waits for its next request.
struct Warm {
    store: Guest<P2State>,
    proxy: Proxy,
    served: u32,
    since: Instant,
}

/// Why a request failed, and whether it was on an instance that had served before.
struct Failure {
    message: String,
    reused: bool,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            reused: false,
        }
    }
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
            reuse: serving.reuse,
            max_instances: serving.max_concurrent,
            idle: Mutex::new(Vec::new()),
            refused: AtomicBool::new(false),
            proven: AtomicBool::new(false),
            prewarm: serving.prewarm,
            warming: AtomicBool::new(false),
            kill: Stop::default(),
        })
    }

    /// A store for a new instance, once a pool slot is free.
    async fn new_store(&self) -> Result<Guest<P2State>, String> {
        let mut builder = self
            .spec
            .wasi_builder(Some(&self.stdout.fork()), Some(&self.stderr.fork()))
            .map_err(|e| e.to_string())?;
        let limiter = Limiter::new(self.spec.memory_limit, self.spec.memory_usage.clone());
        let state = p2_state(builder.build(), limiter, &self.spec);
        Ok(Guest::new(&self.engine, self.spec.slots.as_ref(), state).await)
    }

    /// Drops an instance that has served its last request, then makes the next ones ahead
    /// (with `prewarm`). With no other request in the pod this waits a turn first, so that
    /// the connection writes the response before the slot's memory is reset and an instance
    /// made on the pod's thread; under load the slot is reset at once, so that the next
    /// request takes it back while its memory is warm.
    async fn replace(self: &Arc<Self>, spent: Guest<P2State>) {
        if self.quiet() {
            tokio::task::yield_now().await;
        }
        drop(spent);
        self.prewarm();
    }

    /// Without reuse, makes instances ahead of need (up to `prewarm`, while pool slots are
    /// free), off the request's path. Each still serves one request only.
    fn prewarm(self: &Arc<Self>) {
        if self.reuse > 1 || self.prewarm == 0 || self.warming.swap(true, Ordering::AcqRel) {
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            let idle = || {
                service
                    .idle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            };
            while idle() < service.prewarm
                && !service.kill.stopped()
                && service
                    .spec
                    .slots
                    .as_ref()
                    .is_none_or(|s| s.available_permits() > PREWARM_SPARE_SLOTS)
            {
                let Ok(mut store) = service.new_store().await else {
                    break;
                };
                let meter = slice(&mut store, &service.kill, &service.spec);
                let made = meter.run(service.pre.instantiate_async(&mut store)).await;
                let Ok(proxy) = made else {
                    break;
                };
                service
                    .idle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Warm {
                        store,
                        proxy,
                        served: 0,
                        since: Instant::now(),
                    });
            }
            service.warming.store(false, Ordering::Release);
        });
    }

    /// Whether instances are ever kept (reused or made ahead); otherwise each request makes
    /// its own and nothing below it touches the idle list.
    fn keeps_instances(&self) -> bool {
        self.reuse > 1 || self.prewarm > 0
    }

    /// An instance made ahead or kept from an earlier request, dropping those idle too long.
    fn take_warm(&self) -> Option<Warm> {
        if !self.keeps_instances() {
            return None;
        }
        self.trim_idle(false);
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// Whether no other request than the one finishing is being served or waiting for a turn
    /// (the finishing one may still hold its permit until its connection takes the response).
    fn quiet(&self) -> bool {
        self.limit.available_permits() + 1 >= self.max_instances
    }

    /// Keeps an instance that has just served, if it may serve more; otherwise gives it back
    /// to be dropped.
    fn put_warm(&self, store: Guest<P2State>, proxy: Proxy, served: u32) -> Option<Guest<P2State>> {
        if served >= self.reuse
            || self.refused.load(Ordering::Relaxed)
            || self.kill.stopped()
            || store.data().limiter.hit_limit
        {
            return Some(store);
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() >= self.max_instances {
            return Some(store);
        }
        idle.push(Warm {
            store,
            proxy,
            served,
            since: Instant::now(),
        });
        None
    }

    /// Drops the instances that have been idle too long (all of them when `all`).
    pub fn trim_idle(&self, all: bool) {
        // Dropped after the lock is let go: giving an instance's memory back takes a while.
        let dropped: Vec<Warm> = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extract_if(.., |w| all || w.since.elapsed() >= IDLE_FOR)
            .collect();
        drop(dropped);
    }

    /// Turns instance reuse off after a reused instance failed, saying so in the agent's log
    /// and the container's.
    fn refuse_reuse(&self, why: &str) {
        if self.refused.swap(true, Ordering::SeqCst) {
            return;
        }
        self.trim_idle(true);
        let message = format!(
            "{REUSE_ANNOTATION} refused: an instance failed on a request after the first ({why}); \
             this component cannot serve more than one request per instance, so every request \
             now gets a fresh instance"
        );
        tracing::warn!(%message, "instance reuse turned off");
        self.stderr.line(&format!("wk: {message}"));
    }

    /// Serves one request; a request that failed on a reused instance turns reuse off and, when
    /// it can be sent again, is served again on a fresh instance: one without a body, and while
    /// reuse is on trial, one whose body is at most [`REPLAY_BODY`] long (read first, kept).
    async fn call(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, String> {
        // Only a reused instance's failure is served again: without reuse, nothing is copied.
        let reusing = self.reuse > 1 && !self.refused.load(Ordering::Relaxed);
        if !reusing {
            return self.call_once(req).await.map_err(|f| f.message);
        }
        // What hyper knows of the body: none, or its exact length (a Content-Length).
        let bodiless = req.body().is_end_stream();
        let length = req.body().size_hint().exact();
        let on_trial = !self.proven.load(Ordering::Relaxed);
        let keep = on_trial && length.is_some_and(|n| n <= REPLAY_BODY as u64);
        if !bodiless && !keep {
            return self.call_once(req).await.map_err(|f| f.message);
        }
        let (head, body) = req.into_parts();
        let body = if bodiless {
            Bytes::new()
        } else {
            let read = http_body_util::Limited::new(body, REPLAY_BODY).collect();
            match tokio::time::timeout(self.timeout, read).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) => return Err(format!("bad request: the body could not be read: {e}")),
                Err(_) => return Err(BODY_TIMED_OUT.to_owned()),
            }
        };
        let request = |body: Bytes| {
            let mut copy = Request::new(
                Full::new(body).map_err(|never: Infallible| -> hyper::Error { match never {} }),
            );
            *copy.method_mut() = head.method.clone();
            *copy.uri_mut() = head.uri.clone();
            *copy.version_mut() = head.version;
            *copy.headers_mut() = head.headers.clone();
            copy
        };
        match self.call_once(request(body.clone())).await {
            Err(Failure {
                message,
                reused: true,
            }) => {
                self.refuse_reuse(&message);
                self.call_once(request(body)).await.map_err(|f| f.message)
            }
            other => other.map_err(|f| f.message),
        }
    }

    async fn call_once<B>(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<HyperOutgoingBody>, Failure>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let taken = self.take_warm();
        let (mut store, warm, served) = match taken {
            Some(w) => (w.store, Some(w.proxy), w.served),
            None => {
                // Waiting for a free pool slot counts against the request's time.
                let Ok(store) = tokio::time::timeout(self.timeout, self.new_store()).await else {
                    return Err(Failure::new(TIMED_OUT));
                };
                (store.map_err(Failure::new)?, None, 0)
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| Failure::new(format!("bad request: {e}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| Failure::new(e.to_string()))?;
        let pre = self.pre.clone();
        let service = self.clone();
        let task = tokio::spawn(async move {
            // Set when the task first runs, not when it is spawned: a deadline set earlier
            // could have passed while the task waited its turn behind the other connections
            // (at 256 connections on one thread, more than a tick), so every guest yielded at
            // once and held its instance (and pool slot) through another whole round of the
            // queue.
            let meter = slice(&mut store, &service.kill, &service.spec);
            let (proxy, result) = meter
                .run(async {
                    let proxy = match warm {
                        Some(proxy) => proxy,
                        None => pre.instantiate_async(&mut store).await?,
                    };
                    let result = proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await;
                    Ok::<_, wasmtime::Error>((proxy, result))
                })
                .await?;
            let hit = store.data().limiter.hit_limit;
            match result {
                Ok(()) => {
                    if let Some(spent) = service.put_warm(store, proxy, served + 1) {
                        service.replace(spent).await;
                    }
                    Ok(())
                }
                Err(e) if hit => Err(e.context("OOMKilled: the guest went over its memory limit")),
                Err(e) => Err(e),
            }
        });
        let failed = |message: String| Failure {
            message,
            reused: served > 0,
        };
        // Until the guest has answered, a timeout or a client that goes away ends its instance
        // (with its task), so that it holds no slot or memory after.
        let mut guard = AbortOnDrop(Some(task.abort_handle()));
        let trial = served > 0 && !self.proven.load(Ordering::Relaxed);
        let deadline = if trial {
            REUSE_TRIAL.min(self.timeout)
        } else {
            self.timeout
        };
        let Ok(answer) = tokio::time::timeout(deadline, rx).await else {
            return Err(if trial {
                failed(format!(
                    "a reused instance did not answer within {}s",
                    deadline.as_secs_f32()
                ))
            } else {
                Failure::new(TIMED_OUT)
            });
        };
        match answer {
            Ok(Ok(response)) => {
                // The guest goes on writing the body.
                guard.0 = None;
                if trial {
                    self.proven.store(true, Ordering::Relaxed);
                }
                Ok(response)
            }
            Ok(Err(code)) => Err(failed(format!(
                "the guest answered with an error: {code:?}"
            ))),
            Err(_) => Err(failed(match task.await {
                Ok(Ok(())) => "the guest returned without setting a response".into(),
                Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(wasmtime_wasi::I32Exit(code)) => {
                        format!("the guest exited with status {code}")
                    }
                    None => format!("the guest failed: {e:#}"),
                },
                Err(e) => format!("the guest's task failed: {e}"),
            })),
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
                } else if message == BODY_TIMED_OUT {
                    StatusCode::REQUEST_TIMEOUT
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

/// Worker threads that a pod without a CPU limit spreads its connections over once it has
/// two open at once, and lets go after it has had none open for a while: a busy pod uses the
/// node's cores, and an idle one keeps only its own thread and memory (ADR 015).
pub struct Spread {
    make: Box<dyn Fn() -> Option<tokio::runtime::Runtime> + Send + Sync>,
    /// How long the workers outlive the pod's last open connection.
    idle: Duration,
    state: Mutex<SpreadState>,
}

#[derive(Default)]
struct SpreadState {
    workers: Option<tokio::runtime::Runtime>,
    /// Connections open on the pod's listeners, wherever they are served.
    open: usize,
    /// When the last one closed.
    closed_at: Option<Instant>,
}

/// One open connection, counted in its [`Spread`] until dropped.
pub struct Open(Arc<Spread>);

impl Drop for Open {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open -= 1;
        if state.open == 0 {
            state.closed_at = Some(Instant::now());
        }
    }
}

impl Spread {
    /// `make` starts the worker threads (inside the pod's namespace); None when it cannot.
    pub fn new(
        make: impl Fn() -> Option<tokio::runtime::Runtime> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::idle_after(IDLE_FOR, make)
    }

    fn idle_after(
        idle: Duration,
        make: impl Fn() -> Option<tokio::runtime::Runtime> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            make: Box::new(make),
            idle,
            state: Mutex::new(SpreadState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpreadState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a newly accepted connection and says where to serve it: on the worker threads
    /// (started now if this is the second open connection), or here when there are none.
    fn place(self: &Arc<Self>) -> (Option<tokio::runtime::Handle>, Open) {
        let mut state = self.lock();
        // A pod probed now and then never has its listener idle: a quiet spell since the
        // last connection closed also ends the workers.
        self.release(&mut state);
        state.open += 1;
        if state.workers.is_none() && state.open >= 2 {
            state.workers = (self.make)();
        }
        let workers = state.workers.as_ref().map(|rt| rt.handle().clone());
        drop(state);
        (workers, Open(self.clone()))
    }

    /// Stops the worker threads when no connection has been open for a while.
    fn release_if_idle(&self) {
        self.release(&mut self.lock());
    }

    fn release(&self, state: &mut SpreadState) {
        if state.open == 0 && state.closed_at.is_none_or(|t| t.elapsed() >= self.idle) {
            state.stop_workers();
        }
    }

    /// Whether the worker threads are running.
    #[cfg(test)]
    fn has_workers(&self) -> bool {
        self.lock().workers.is_some()
    }

    /// Stops the worker threads, without waiting for what runs on them. Call it where the
    /// serving ended, not on one of those threads.
    pub fn stop(&self) {
        self.lock().stop_workers();
    }
}

impl SpreadState {
    fn stop_workers(&mut self) {
        if let Some(rt) = self.workers.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Spread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `service` on `listener`, and the connections the service proxy hands over, until
/// `drain` is asked for; then stops accepting and waits for in-flight connections to finish.
/// With `spread`, connections move to worker threads while the pod is busy.
pub async fn serve(
    listener: TcpListener,
    mut handoffs: Option<crate::agent::handoff::Handoffs>,
    service: Arc<HttpService>,
    drain: Stop,
    spread: Option<Arc<Spread>>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, handed) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => (stream, None),
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            handoff = async {
                match &mut handoffs {
                    Some(h) => h.next().await,
                    None => std::future::pending().await,
                }
            } => match tokio::net::TcpStream::from_std(handoff.stream) {
                Ok(stream) => (stream, Some((handoff.cut, handoff.done))),
                Err(_) => continue,
            },
            () = drain.wait() => break,
            () = tokio::time::sleep(IDLE_FOR) => {
                service.trim_idle(false);
                if let Some(spread) = &spread {
                    spread.release_if_idle();
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let serve_one = {
            let svc = service.clone();
            let watcher = graceful.watcher();
            move |stream: tokio::net::TcpStream| async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper::service::service_fn(move |req| svc.clone().handle(req)),
                    );
                let conn = watcher.watch(conn);
                match handed {
                    None => {
                        let _ = conn.await;
                    }
                    // The proxy may cut a connection it handed over (its endpoint left the
                    // Service); `done` tells it when the connection is over.
                    Some((cut, done)) => {
                        tokio::select! {
                            _ = conn => {}
                            () = cut.cancelled() => {}
                        }
                        drop(done);
                    }
                }
            }
        };
        let (workers, open) = spread.as_ref().map(|s| s.place()).unzip();
        match workers.flatten() {
            // On the pod's worker threads: the stream moves to their reactor.
            Some(workers) => {
                if let Ok(stream) = stream.into_std() {
                    workers.spawn(async move {
                        if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                            serve_one(stream).await;
                        }
                        drop(open);
                    });
                }
            }
            None => {
                tokio::spawn(async move {
                    serve_one(stream).await;
                    drop(open);
                });
            }
        }
    }
    drop((listener, handoffs));
    graceful.shutdown().await;
    service.trim_idle(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_start_with_the_second_open_connection_and_stop_after_a_quiet_spell() {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = made.clone();
        let spread = Spread::idle_after(Duration::from_secs(1), move || {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .ok()
        });
        // One connection at a time stays here.
        let (here, first) = spread.place();
        assert!(here.is_none() && !spread.has_workers());
        // The second open at once goes to the workers, and so does the next while they run.
        let (there, second) = spread.place();
        assert!(there.is_some() && spread.has_workers());
        drop(first);
        let (still, third) = spread.place();
        assert!(still.is_some());
        drop((second, third));
        // Idle, but not for long enough yet.
        spread.release_if_idle();
        assert!(spread.has_workers());
        std::thread::sleep(Duration::from_millis(1100));
        // After a quiet spell the next connection finds them gone and is served here.
        let (here, alone) = spread.place();
        assert!(here.is_none() && !spread.has_workers());
        drop(alone);
        assert_eq!(made.load(Ordering::Relaxed), 1);
        // Busy again: started again; the pod's end stops them.
        let both = (spread.place(), spread.place());
        assert!(spread.has_workers());
        spread.stop();
        assert!(!spread.has_workers());
        drop(both);
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn serving_settings_come_from_annotations_and_bad_ones_are_named() {
        let pod = |a: serde_json::Value| serde_json::json!({"metadata": {"annotations": a}});
        assert_eq!(
            Serving::from_pod(&pod(serde_json::json!({}))).unwrap(),
            Serving {
                max_concurrent: MAX_CONCURRENT_REQUESTS,
                timeout: REQUEST_TIMEOUT,
                reuse: 1,
                prewarm: 0,
            }
        );
        let reusing = Serving::from_pod(&pod(serde_json::json!({REUSE_ANNOTATION: "50"}))).unwrap();
        assert_eq!(
            (reusing.reuse, reusing.max_concurrent),
            (50, REUSE_CONCURRENCY)
        );
        let set = Serving::from_pod(&pod(serde_json::json!({
            CONCURRENCY_ANNOTATION: "2", TIMEOUT_ANNOTATION: " 5 ", REUSE_ANNOTATION: "1000", PREWARM_ANNOTATION: "2"})))
        .unwrap();
        assert_eq!(
            set,
            Serving {
                max_concurrent: 2,
                timeout: Duration::from_secs(5),
                reuse: 1000,
                prewarm: 2,
            }
        );
        for bad in ["0", "-1", "ten", "1.5"] {
            for key in [CONCURRENCY_ANNOTATION, REUSE_ANNOTATION, PREWARM_ANNOTATION] {
                if key == PREWARM_ANNOTATION && bad == "0" {
                    continue;
                }
                let e = Serving::from_pod(&pod(serde_json::json!({key: bad}))).unwrap_err();
                assert!(e.contains(key) && e.contains(bad), "{e}");
            }
        }
    }
}
