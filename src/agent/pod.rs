//! One worker per pod, driving an explicit state machine: sandbox, init containers, containers
//! running, terminating, gone. API calls run on the agent's runtime; guests run on the pod's
//! own thread inside its sandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::logs::{self, ContainerLog, Streams};
use super::sandbox::{self, Sandbox, volumes};
use super::shim::{self, Runnable};
use super::status::{self, Container, State};
use super::wasm::{self, Exit, GuestSpec, Loaded, Stop};
use super::{Shared, env, images, probes};
use crate::api::quantity::Quantity;

/// The first restart back-off; it doubles up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(10);
/// The longest restart back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long starts over at the base back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The stages of a pod's life on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Sandbox,
    Init(usize),
    Running,
    Completed,
    Terminating,
}

/// Kubelet-style exponential back-off.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BASE_BACKOFF }
    }
}

impl Backoff {
    /// The delay before the next restart, after a run that lasted `ran`.
    pub fn delay(&mut self, ran: Duration) -> Duration {
        if ran >= BACKOFF_RESET {
            self.next = BASE_BACKOFF;
        }
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        d
    }
}

/// A container ready to run: its spec, resolved image, environment and module.
#[derive(Clone)]
struct Prepared {
    spec: Value,
    loaded: Runnable,
    guest: GuestSpec,
    init: bool,
}

/// Why a container could not be prepared.
enum Unprepared {
    /// Its image could not be pulled: the pod backs off pulling it.
    Pull {
        init: bool,
        index: usize,
        image: String,
        error: String,
    },
    /// Anything else (reported already): the sandbox is retried.
    Other,
}

/// The kubelet's image pull back-off: 10 s, doubling to 5 min.
const IMAGE_BACKOFF: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(300));

/// How long the first status report waits for the pod's containers to start.
const FIRST_STATUS_WINDOW: Duration = Duration::from_millis(50);

/// Whether every container has started or finished (or the pod failed as a whole).
fn settled(pod: &status::Pod) -> bool {
    pod.failed.is_some()
        || pod
            .containers
            .iter()
            .chain(&pod.init)
            .any(|c| matches!(&c.state, State::Waiting { reason, .. } if reason != "ContainerCreating" && reason != "PodInitializing"))
        || pod
            .containers
            .iter()
            .all(|c| !matches!(c.state, State::Waiting { .. }))
}

/// How long after a pod's sandbox is made its spare namespace is replaced.
const SPARE_REFILL_DELAY: Duration = Duration::from_millis(100);

/// How long a starting pod's events wait for its first status write.
const EVENT_HOLD: Duration = Duration::from_millis(100);

/// An event kept back until the pod's first status is written.
struct HeldEvent {
    pod: Arc<Value>,
    container: Option<String>,
    warning: bool,
    reason: &'static str,
    message: String,
}

/// The worker's shared view of its pod, written to the API by the status task.
struct Reporter {
    shared: Arc<Shared>,
    state: Mutex<status::Pod>,
    tx: watch::Sender<u64>,
    /// The last change the status writer has dealt with.
    written: watch::Sender<u64>,
    /// Events of a starting pod, sent once its first status is written (or [`EVENT_HOLD`]
    /// after the first of them): the status is what a client waits for, and each event is a
    /// store commit of its own that the status would queue behind. `None` once released.
    held: Mutex<Option<Vec<HeldEvent>>>,
}

impl Reporter {
    fn new(shared: Arc<Shared>, state: status::Pod) -> Self {
        Self {
            shared,
            state: Mutex::new(state),
            tx: watch::channel(0u64).0,
            written: watch::channel(0u64).0,
            held: Mutex::new(Some(Vec::new())),
        }
    }

    /// Records a kubelet event about the pod (and one of its containers), or holds it while
    /// the pod's first status is on its way.
    fn event(
        self: &Arc<Self>,
        pod: Arc<Value>,
        container: Option<&str>,
        warning: bool,
        reason: &'static str,
        message: &str,
    ) {
        let event = HeldEvent {
            pod,
            container: container.map(str::to_owned),
            warning,
            reason,
            message: message.to_owned(),
        };
        let event = match self.held.lock().as_deref_mut() {
            Ok(Some(held)) => {
                held.push(event);
                if held.len() == 1 {
                    let me = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(EVENT_HOLD).await;
                        me.release_events();
                    });
                }
                return;
            }
            _ => event,
        };
        self.send(&event);
    }

    /// Sends the held events, in order, and every later one at once.
    fn release_events(&self) {
        let held = self.held.lock().ok().and_then(|mut h| h.take());
        for e in held.into_iter().flatten() {
            self.send(&e);
        }
    }

    fn send(&self, e: &HeldEvent) {
        status::event(
            &self.shared.client,
            &e.pod,
            &self.shared.node_name,
            e.container.as_deref(),
            e.warning,
            e.reason,
            &e.message,
        );
    }

    fn update(&self, f: impl FnOnce(&mut status::Pod)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.tx.send_modify(|n| *n += 1);
    }

    fn snapshot(&self) -> status::Pod {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (briefly) until the writer has written every change so far, so the final
    /// container states reach the API before the pod object goes.
    async fn flush(&self) {
        let target = *self.tx.borrow();
        let mut written = self.written.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), written.wait_for(|w| *w >= target)).await;
    }
}

/// Everything one worker needs.
struct Worker {
    shared: Arc<Shared>,
    pod: watch::Receiver<Arc<Value>>,
    uid: String,
    ns: String,
    name: String,
    policy: String,
    reporter: Arc<Reporter>,
    deleting: CancellationToken,
}

/// Runs a pod until it is gone from the node. `pod` carries the latest object; when its
/// sender is dropped the pod was deleted outright.
pub async fn run(shared: Arc<Shared>, pod: watch::Receiver<Arc<Value>>) {
    let first = pod.borrow().clone();
    let meta = &first["metadata"];
    let uid = meta["uid"].as_str().unwrap_or_default().to_owned();
    let ns = meta["namespace"].as_str().unwrap_or("default").to_owned();
    let name = meta["name"].as_str().unwrap_or_default().to_owned();
    let policy = first["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_owned();
    let span = tracing::info_span!("pod", pod = %format!("{ns}/{name}"), uid = %uid);
    let _enter = span.enter();
    drop(_enter);

    let reporter = Arc::new(Reporter::new(
        shared.clone(),
        initial_state(&first, &shared),
    ));
    let rx = reporter.tx.subscribe();
    let deleting = CancellationToken::new();
    {
        let mut pod = pod.clone();
        let deleting = deleting.clone();
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                if pod
                    .borrow()
                    .pointer("/metadata/deletionTimestamp")
                    .is_some()
                {
                    break;
                }
                if pod.changed().await.is_err() {
                    // The sender goes away on a delete, and also when the agent stops: only
                    // the first means the pod is gone.
                    if shutdown.is_cancelled() {
                        return;
                    }
                    break;
                }
            }
            deleting.cancel();
        });
    }
    let writer = tokio::spawn(write_status(
        shared.clone(),
        pod.clone(),
        reporter.clone(),
        rx,
        policy.clone(),
    ));
    let w = Worker {
        shared,
        pod,
        uid,
        ns,
        name,
        policy,
        reporter,
        deleting,
    };
    let shutdown = w.shared.shutdown.clone();
    tokio::select! {
        () = w.drive(&first) => {}
        // Agent shutdown: drop everything running, keep the sandbox for the next agent.
        () = shutdown.cancelled() => {}
    }
    writer.abort();
}

fn initial_state(pod: &Value, shared: &Shared) -> status::Pod {
    let spec = &pod["spec"];
    let list = |k: &str| spec[k].as_array().cloned().unwrap_or_default();
    let has_init = !list("initContainers").is_empty();
    let waiting = if has_init {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let restore = |c: &mut Container, statuses: &Value| {
        // An agent restart keeps the restart counts the pod already shows.
        if let Some(old) = statuses
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == c.name.as_str()))
        {
            c.restart_count = old["restartCount"].as_u64().unwrap_or(0) as u32;
        }
    };
    let mut init: Vec<Container> = list("initContainers")
        .iter()
        .map(|c| Container::new(c, "PodInitializing"))
        .collect();
    let mut containers: Vec<Container> = list("containers")
        .iter()
        .map(|c| Container::new(c, waiting))
        .collect();
    for c in &mut init {
        restore(c, &pod["status"]["initContainerStatuses"]);
    }
    for c in &mut containers {
        restore(c, &pod["status"]["containerStatuses"]);
    }
    status::Pod {
        init,
        containers,
        initialized: !has_init,
        sandbox_ready: false,
        pod_ip: (spec["hostNetwork"].as_bool().unwrap_or(false) || shared.host_network)
            .then(|| shared.node_ip.clone()),
        host_ip: shared.node_ip.clone(),
        start_time: pod["status"]["startTime"]
            .as_str()
            .map_or_else(status::now, str::to_owned),
        failed: None,
    }
}

/// Writes the pod's status whenever the worker changes it.
async fn write_status(
    shared: Arc<Shared>,
    pod: watch::Receiver<Arc<Value>>,
    reporter: Arc<Reporter>,
    mut changes: watch::Receiver<u64>,
    policy: String,
) {
    // What was last written, as a digest: a pod keeps no copy of its status for this.
    let mut last: Option<u64> = None;
    // The conditions as last written, whose transition times carry over.
    let mut transitions: Vec<status::Transition> = Vec::new();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        if last.is_none() {
            // Like the kubelet's status manager, batch the first report: a pod that starts at
            // once is written once, as Running, rather than Pending and then Running.
            let until = tokio::time::Instant::now() + FIRST_STATUS_WINDOW;
            while !settled(&reporter.snapshot()) {
                match tokio::time::timeout_at(until, changes.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
            }
        }
        let generation = *changes.borrow_and_update();
        let object = pod.borrow().clone();
        let mut status = status::pod_status(&reporter.snapshot(), &policy);
        status["qosClass"] = json!(status::qos_class(&object["spec"]));
        let digest = status::digest(&status);
        if last == Some(digest) {
            reporter.written.send_replace(generation);
            continue;
        }
        let conditions = status::keep_transition_times(&mut status, &transitions);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let body = json!({"status": status});
        for attempt in 0..5 {
            match shared
                .client
                .request(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
                    Some("application/merge-patch+json"),
                    Some(body.to_string().into_bytes()),
                )
                .await
            {
                Ok(_) => {
                    last = Some(digest);
                    transitions = conditions;
                    reporter.written.send_replace(generation);
                    break;
                }
                Err(e) if e.code() == Some(404) => return,
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "status write failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        reporter.release_events();
    }
}

impl Worker {
    fn current(&self) -> Arc<Value> {
        self.pod.borrow().clone()
    }

    async fn event(
        &self,
        container: Option<&str>,
        warning: bool,
        reason: &'static str,
        message: &str,
    ) {
        self.reporter
            .event(self.current(), container, warning, reason, message);
    }

    /// Sleeps, or returns early (false) when the pod is being deleted.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.deleting.cancelled() => false,
        }
    }

    async fn drive(&self, first: &Value) {
        let phase = first["status"]["phase"].as_str().unwrap_or_default();
        let mut stage = if matches!(phase, "Succeeded" | "Failed") {
            // Finished before an agent restart: never run again.
            Stage::Completed
        } else {
            Stage::Sandbox
        };
        let mut sandbox: Option<Sandbox> = None;
        let mut prepared: Vec<Arc<Prepared>> = Vec::new();
        let mut init_backoff = Backoff::default();
        let mut stops: Vec<(ContainerStop, Arc<Prepared>)> = Vec::new();
        let mut supervisors = tokio::task::JoinSet::new();
        let mut sandbox_backoff = Duration::from_secs(1);
        let mut image_backoff = IMAGE_BACKOFF.0;
        let mut refresher: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            if self.deleting.is_cancelled() && stage != Stage::Terminating {
                stage = Stage::Terminating;
            }
            match stage {
                Stage::Sandbox => match self.prepare().await {
                    Ok((sb, ready)) => {
                        sandbox = Some(sb);
                        prepared = ready.into_iter().map(Arc::new).collect();
                        self.reporter.update(|s| s.sandbox_ready = true);
                        let skip = first["status"]["initContainerStatuses"]
                            .as_array()
                            .is_some_and(|l| {
                                !l.is_empty()
                                    && l.iter().all(|s| s["state"]["terminated"]["exitCode"] == 0)
                            });
                        stage = if skip {
                            self.reporter.update(|s| s.initialized = true);
                            Stage::Running
                        } else {
                            Stage::Init(0)
                        };
                    }
                    Err(PrepareError::Retry) => {
                        if !self.pause(sandbox_backoff).await {
                            continue;
                        }
                        sandbox_backoff = (sandbox_backoff * 2).min(Duration::from_secs(30));
                    }
                    Err(PrepareError::ImagePull(failed)) => {
                        for f in &failed {
                            if let Unprepared::Pull {
                                init,
                                index,
                                image,
                                error,
                            } = f
                            {
                                let cname = self.container_name(*init, *index);
                                let m = format!("Back-off pulling image \"{image}\"");
                                self.set_waiting(
                                    *init,
                                    *index,
                                    "ImagePullBackOff",
                                    &format!("{m}: ErrImagePull: {error}"),
                                );
                                self.event(Some(&cname), false, "BackOff", &m).await;
                                self.event(Some(&cname), true, "Failed", "Error: ImagePullBackOff")
                                    .await;
                            }
                        }
                        if !self.pause(image_backoff).await {
                            continue;
                        }
                        image_backoff = (image_backoff * 2).min(IMAGE_BACKOFF.1);
                    }
                },
                Stage::Init(i) => {
                    let inits: Vec<&Arc<Prepared>> = prepared.iter().filter(|p| p.init).collect();
                    let Some(p) = inits.get(i) else {
                        self.reporter.update(|s| {
                            s.initialized = true;
                            for c in &mut s.containers {
                                c.state = State::waiting("ContainerCreating", None);
                            }
                        });
                        stage = Stage::Running;
                        continue;
                    };
                    let sb = sandbox.as_ref().expect("the sandbox exists past its stage");
                    let stop = Stop::default();
                    let started = Instant::now();
                    let exit = tokio::select! {
                        exit = self.run_once(sb, p, i, true, &stop) => exit,
                        () = self.deleting.cancelled() => { stop.stop(); continue; }
                    };
                    if exit == Exit::Code(0) {
                        stage = Stage::Init(i + 1);
                        continue;
                    }
                    let cname = p.spec["name"].as_str().unwrap_or_default().to_owned();
                    if self.policy == "Never" {
                        self.reporter.update(|s| {
                            s.failed = Some((
                                "Init:Error".into(),
                                format!("init container {cname} failed"),
                            ));
                        });
                        stage = Stage::Completed;
                        continue;
                    }
                    let delay = init_backoff.delay(started.elapsed());
                    self.back_off(true, i, &cname, delay).await;
                    if !self.pause(delay).await {
                        continue;
                    }
                }
                Stage::Running => {
                    let sb = sandbox.as_ref().expect("the sandbox exists past its stage");
                    refresher = Some(tokio::spawn(refresh_volumes(
                        self.shared.clone(),
                        self.pod.clone(),
                        sb.dir.clone(),
                    )));
                    let apps: Vec<&Arc<Prepared>> = prepared.iter().filter(|p| !p.init).collect();
                    for (i, p) in apps.into_iter().enumerate() {
                        let stop = ContainerStop::default();
                        stops.push((stop.clone(), Arc::clone(p)));
                        supervisors.spawn(supervise(
                            self.clone_for_task(),
                            sb.handle(),
                            Arc::clone(p),
                            i,
                            stop,
                        ));
                    }
                    // Containers run until they finish for good or the pod is deleted.
                    loop {
                        tokio::select! {
                            done = supervisors.join_next() => if done.is_none() { break },
                            () = self.deleting.cancelled() => break,
                        }
                    }
                    stage = if self.deleting.is_cancelled() {
                        Stage::Terminating
                    } else {
                        Stage::Completed
                    };
                }
                Stage::Completed => {
                    self.deleting.cancelled().await;
                    stage = Stage::Terminating;
                }
                Stage::Terminating => {
                    if let Some(r) = refresher.take() {
                        r.abort();
                    }
                    let grace = self.grace();
                    let handle = sandbox.as_ref().map(Sandbox::handle);
                    self.terminate(&stops, handle, &mut supervisors, grace)
                        .await;
                    self.reporter.flush().await;
                    if let Some(sb) = sandbox.take() {
                        self.teardown(sb).await;
                    } else {
                        let (dir, ns) = sandbox::paths(&self.shared.data_dir, &self.uid);
                        let pod_dir = dir.clone();
                        let _ = tokio::task::spawn_blocking(move || shim::stop_pod(&pod_dir)).await;
                        volumes::unmount_all(&dir);
                        if let Some(net) = self.shared.net.get() {
                            net.detach(&self.uid).await;
                        }
                        sandbox::netns::destroy(&ns);
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    self.shared.forget(&self.uid);
                    self.delete_object().await;
                    return;
                }
            }
        }
    }

    fn clone_for_task(&self) -> TaskCtx {
        TaskCtx {
            shared: self.shared.clone(),
            pod: self.pod.clone(),
            uid: self.uid.clone(),
            policy: self.policy.clone(),
            reporter: self.reporter.clone(),
        }
    }

    fn grace(&self) -> Duration {
        let pod = self.current();
        let secs = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(secs as u64)
    }

    async fn back_off(&self, init: bool, index: usize, name: &str, delay: Duration) {
        let message = format!(
            "back-off {}s restarting failed container={name} pod={}_{}({})",
            delay.as_secs(),
            self.name,
            self.ns,
            self.uid
        );
        self.reporter.update(|s| {
            let list = if init { &mut s.init } else { &mut s.containers };
            if let Some(c) = list.get_mut(index) {
                if let State::Terminated { .. } = c.state {
                    c.last = Some(c.state.clone());
                }
                c.state = State::waiting("CrashLoopBackOff", Some(message.clone()));
            }
        });
        self.event(
            Some(name),
            true,
            "BackOff",
            "Back-off restarting failed container",
        )
        .await;
    }

    /// Stops every container: HTTP services drain for up to the grace period, commands stop
    /// at once (with no lifecycle export there is no gentler signal), then whatever is left
    /// is interrupted.
    async fn terminate(
        &self,
        stops: &[(ContainerStop, Arc<Prepared>)],
        handle: Option<tokio::runtime::Handle>,
        supervisors: &mut tokio::task::JoinSet<()>,
        grace: Duration,
    ) {
        if !stops.is_empty() {
            for c in &self.reporter.snapshot().containers {
                if matches!(c.state, State::Running { .. }) {
                    self.event(
                        Some(&c.name),
                        false,
                        "Killing",
                        &format!("Stopping container {}", c.name),
                    )
                    .await;
                }
            }
        }
        // preStop hooks run first and count against the grace period, as in Kubernetes. A
        // container that exits meanwhile (its hook told it to) is not restarted: the pod is
        // going.
        let drained = tokio::time::timeout(grace, async {
            let hooks = stops.iter().map(|(stop, p)| {
                let handle = handle.clone();
                async move {
                    stop.finished.stop();
                    if let Some(handle) = handle {
                        self.pre_stop(p, &handle, grace).await;
                    }
                    stop.drain.stop();
                }
            });
            futures_util::future::join_all(hooks).await;
            while supervisors.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            for (s, _) in stops {
                s.finished.stop();
                s.kill.stop();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while supervisors.join_next().await.is_some() {}
            })
            .await;
            supervisors.abort_all();
        }
    }

    /// Runs a container's preStop: the spec's `lifecycle.preStop` (exec or httpGet), else the
    /// component's `wk:pod/lifecycle.pre-stop` export. A failure is an event, not a reason to
    /// keep the container.
    async fn pre_stop(&self, p: &Prepared, handle: &tokio::runtime::Handle, grace: Duration) {
        let name = p.spec["name"].as_str().unwrap_or_default();
        let result = if let Some(hook) = p
            .spec
            .pointer("/lifecycle/preStop")
            .filter(|v| v.is_object())
        {
            let mut probe = hook.clone();
            probe["timeoutSeconds"] = json!(grace.as_secs().max(1));
            let ports = container_ports(&p.spec);
            let exec = probes::ExecTarget {
                loaded: p.loaded.clone(),
                engine: self.shared.runtime.engine().clone(),
                guest: p.guest.clone(),
            };
            probes::check(&probe, &ports, handle, &exec).await
        } else if let Some(loaded) = p.loaded.wasm().filter(|l| l.has_hook(wasm::Hook::PreStop)) {
            let (loaded, engine, guest) = (
                loaded.clone(),
                self.shared.runtime.engine().clone(),
                p.guest.clone(),
            );
            let (dir, _) = sandbox::paths(&self.shared.data_dir, &self.uid);
            let log =
                match ContainerLog::create(logs::container_dir(&dir, name).join("pre-stop.log")) {
                    Ok(l) => l,
                    Err(e) => return tracing::warn!(error = %e, "no log for the pre-stop hook"),
                };
            let run = handle.spawn(async move {
                let (out, err) = (log.stream("stdout"), log.stream("stderr"));
                wasm::call_hook(
                    &loaded,
                    &engine,
                    &guest,
                    &out,
                    &err,
                    wasm::Hook::PreStop,
                    grace,
                )
                .await
            });
            run.await.unwrap_or_else(|e| Err(e.to_string()))
        } else {
            return;
        };
        if let Err(message) = result {
            self.event(
                Some(name),
                true,
                "FailedPreStopHook",
                &format!("PreStopHook failed: {message}"),
            )
            .await;
        }
    }

    /// Deletes the pod object with grace 0 once nothing of it is left, as the kubelet does.
    async fn delete_object(&self) {
        delete_now(&self.shared.client, &self.current()).await;
    }

    /// Connects the sandbox's namespace to the node's pod network, if there is one, and
    /// returns the pod as its containers should see it (with its podIP).
    async fn connect(&self, sb: &Sandbox, pod: Arc<Value>) -> std::io::Result<Arc<Value>> {
        let (Some(ns), Some(net)) = (&sb.netns, self.shared.net.get()) else {
            return Ok(pod);
        };
        let ip = match &sb.wired {
            Some(holder) => net
                .hand_over(holder, &self.uid)
                .inspect_err(|_| net.forget(holder))?,
            None => net.attach(&self.uid, ns).await?,
        }
        .to_string();
        self.reporter.update(|s| s.pod_ip = Some(ip.clone()));
        let mut pod = (*pod).clone();
        pod["status"]["podIP"] = json!(ip);
        pod["status"]["podIPs"] = json!([{ "ip": ip }]);
        Ok(Arc::new(pod))
    }

    /// Reports why the sandbox could not be set up, removes it, and asks for a retry.
    async fn give_up(&self, sb: Sandbox, reason: &'static str, message: &str) -> PrepareError {
        self.event(None, true, reason, message).await;
        self.teardown(sb).await;
        PrepareError::Retry
    }

    /// Removes the sandbox: Linux containers still in it (an adopted one whose pod could not
    /// be prepared again), volumes, network, namespace and directory.
    async fn teardown(&self, sb: Sandbox) {
        let dir = sb.dir.clone();
        if dir.join("shim").exists() {
            let _ = tokio::task::spawn_blocking(move || shim::stop_pod(&dir)).await;
        }
        volumes::unmount_all(&sb.dir);
        if let Some(net) = self.shared.net.get() {
            net.detach(&self.uid).await;
        }
        sb.teardown().await;
    }

    /// Makes the sandbox, mounts the volumes and loads every container's module.
    async fn prepare(&self) -> Result<(Sandbox, Vec<Prepared>), PrepareError> {
        let pod = self.current();
        let host_network =
            pod["spec"]["hostNetwork"].as_bool().unwrap_or(false) || self.shared.host_network;
        let data = self.shared.data_dir.clone();
        let (uid, name) = (self.uid.clone(), self.name.clone());
        let shared = self.shared.clone();
        let sb = match tokio::task::spawn_blocking(move || {
            let net = shared.net.get();
            Sandbox::create(
                &data,
                &uid,
                &name,
                host_network,
                shared.spare_netns.as_ref(),
                &|holder| net.iter().for_each(|n| n.forget(holder)),
            )
        })
        .await
        {
            Ok(Ok(sb)) => sb,
            Ok(Err(e)) => {
                self.event(
                    None,
                    true,
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {e}"),
                )
                .await;
                return Err(PrepareError::Retry);
            }
            Err(e) => {
                tracing::error!(error = %e, "sandbox creation panicked");
                return Err(PrepareError::Retry);
            }
        };
        let pod = match self.connect(&sb, pod).await {
            Ok(pod) => pod,
            Err(e) => {
                let m = format!("Failed to create pod sandbox: setting up the pod's network: {e}");
                return Err(self.give_up(sb, "FailedCreatePodSandBox", &m).await);
            }
        };
        // What a Linux container of the pod mounts as /etc/resolv.conf.
        let node_resolv = self.shared.resolv_conf.clone();
        let resolv = crate::dns::resolv_conf(
            &pod,
            self.shared.dns.get().and_then(|d| d.address()),
            || {
                node_resolv
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default()
            },
        );
        if let Err(e) = tokio::fs::write(sb.dir.join("resolv.conf"), resolv).await {
            let m = format!("Failed to create pod sandbox: writing resolv.conf: {e}");
            return Err(self.give_up(sb, "FailedCreatePodSandBox", &m).await);
        }
        let storage = volumes::storage_dir(&self.shared.data_dir);
        let ready = match volumes::prepare(&self.shared.client, &pod, &sb.dir, &storage).await {
            Ok(r) => r,
            Err(e) => {
                let m = format!("MountVolume.SetUp failed for {e}");
                return Err(self.give_up(sb, "FailedMount", &m).await);
            }
        };
        let mut out = Vec::new();
        let secrets = self.pull_secrets(&pod).await;
        let specs: Vec<(bool, Value)> = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (true, c.clone()))
            .chain(
                pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (false, c.clone())),
            )
            .collect();
        let mut index = (0usize, 0usize);
        let mut failed = false;
        let mut pulls = Vec::new();
        for (init, spec) in specs {
            let i = if init { index.0 } else { index.1 };
            if init {
                index.0 += 1;
            } else {
                index.1 += 1;
            }
            match self
                .prepare_container(&pod, &sb, &spec, &ready, &secrets, init, i)
                .await
            {
                Ok((loaded, guest)) => out.push(Prepared {
                    spec,
                    loaded,
                    guest,
                    init,
                }),
                Err(Unprepared::Other) => failed = true,
                Err(p @ Unprepared::Pull { .. }) => pulls.push(p),
            }
        }
        if failed || !pulls.is_empty() {
            self.teardown(sb).await;
            return Err(if pulls.is_empty() {
                PrepareError::Retry
            } else {
                PrepareError::ImagePull(pulls)
            });
        }
        // Make the next pod's namespace once this one is up and reported, not while it is set
        // up: namespace and veth creation take the same kernel lock, and CPUs are few.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_REFILL_DELAY).await;
            shared.spawn_refill();
        });
        self.shared.track(
            &self.uid,
            &self.ns,
            &self.name,
            out.iter()
                .map(|p| {
                    (
                        p.spec["name"].as_str().unwrap_or_default().to_owned(),
                        p.guest.memory_usage.clone(),
                        p.guest.cpu_nanos.clone(),
                    )
                })
                .collect(),
        );
        Ok((sb, out))
    }

    fn set_waiting(&self, init: bool, i: usize, reason: &str, message: &str) {
        self.reporter.update(|s| {
            let list = if init { &mut s.init } else { &mut s.containers };
            if let Some(c) = list.get_mut(i) {
                c.state = State::waiting(reason, Some(message.to_owned()));
            }
        });
    }

    /// The name of a container by its place in the spec.
    fn container_name(&self, init: bool, index: usize) -> String {
        let pod = self.current();
        let list = if init { "initContainers" } else { "containers" };
        pod["spec"][list][index]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The credentials of the pod's `imagePullSecrets`. Secrets that cannot be read are
    /// reported, and the pull goes on without them, as the kubelet does.
    async fn pull_secrets(&self, pod: &Value) -> Vec<crate::oci::registry::DockerConfig> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for r in pod["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(name) = r["name"].as_str().filter(|n| !n.is_empty()) else {
                continue;
            };
            let path = format!("/api/v1/namespaces/{}/secrets/{name}", self.ns);
            let secret = match self.shared.client.get(&path).await {
                Ok(s) => s,
                Err(e) => {
                    missing.push(format!("{name} ({e})"));
                    continue;
                }
            };
            let key = match secret["type"].as_str() {
                Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
                Some("kubernetes.io/dockercfg") => ".dockercfg",
                other => {
                    missing.push(format!(
                        "{name} (type {:?}, not kubernetes.io/dockerconfigjson)",
                        other.unwrap_or_default()
                    ));
                    continue;
                }
            };
            use base64::Engine as _;
            let parsed = secret["data"][key]
                .as_str()
                .ok_or_else(|| format!("no {key} key"))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|e| e.to_string())
                })
                .and_then(|raw| crate::oci::registry::DockerConfig::parse(&raw));
            match parsed {
                Ok(c) => out.push(c),
                Err(e) => missing.push(format!("{name} ({e})")),
            }
        }
        if !missing.is_empty() {
            let m = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.event(None, true, "FailedToRetrieveImagePullSecret", &m)
                .await;
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    async fn prepare_container(
        &self,
        pod: &Value,
        sb: &Sandbox,
        spec: &Value,
        ready: &HashMap<String, volumes::Ready>,
        secrets: &[crate::oci::registry::DockerConfig],
        init: bool,
        i: usize,
    ) -> Result<(Runnable, GuestSpec), Unprepared> {
        let cname = spec["name"].as_str().unwrap_or_default();
        let image_name = spec["image"].as_str().unwrap_or_default();
        let policy = crate::oci::Policy::of(spec["imagePullPolicy"].as_str(), image_name);
        let puller = &self.shared.puller;
        let pulling = || {
            self.reporter.event(
                self.current(),
                Some(cname),
                false,
                "Pulling",
                &format!("Pulling image \"{image_name}\""),
            );
        };
        let started = std::time::Instant::now();
        // Image GC waits while an image is resolved, pulled and marked used.
        let collecting = self.shared.image_lock.read().await;
        let ensured = puller.ensure(image_name, policy, secrets, pulling).await;
        if let Ok((image, _)) = &ensured {
            self.shared.use_image(&self.uid, &image.id);
        }
        drop(collecting);
        let image = match ensured {
            Ok((image, pulled)) => {
                let m = match &pulled {
                    Some(p) => format!(
                        "Successfully pulled image \"{image_name}\" in {:.3}s. Image size: {} bytes.",
                        started.elapsed().as_secs_f64(),
                        p.size
                    ),
                    None => format!("Container image \"{image_name}\" already present on machine"),
                };
                if pulled.is_some() {
                    self.shared.gc_wake.notify_one();
                }
                self.event(Some(cname), false, "Pulled", &m).await;
                image
            }
            Err(crate::oci::Unavailable::NeverPull(m)) => {
                self.set_waiting(init, i, "ErrImageNeverPull", &m);
                self.event(Some(cname), true, "ErrImageNeverPull", &m).await;
                return Err(Unprepared::Other);
            }
            Err(crate::oci::Unavailable::Inspect(m)) => {
                self.set_waiting(init, i, "ImageInspectError", &m);
                self.event(Some(cname), true, "InspectFailed", &m).await;
                return Err(Unprepared::Other);
            }
            Err(crate::oci::Unavailable::Pull(e)) => {
                let m = format!("Failed to pull image \"{image_name}\": {e}");
                self.set_waiting(init, i, "ErrImagePull", &m);
                self.event(Some(cname), true, "Failed", &m).await;
                self.event(Some(cname), true, "Failed", "Error: ErrImagePull")
                    .await;
                return Err(Unprepared::Pull {
                    init,
                    index: i,
                    image: image_name.to_owned(),
                    error: e.to_string(),
                });
            }
        };
        self.shared.images.touch(&image.id);
        let store = self.shared.images.clone();
        let check = image.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.verify(&check)).await {
            self.set_waiting(init, i, "ErrImagePull", &e.to_string());
            self.event(Some(cname), true, "Failed", &e.to_string())
                .await;
            return Err(Unprepared::Other);
        }
        let class = pod["spec"]["runtimeClassName"].as_str();
        let loaded = match (&image.linux, class) {
            (Some(_), Some(c)) if c != "runc" => Err(format!(
                "{image_name} is a Linux image, which runtimeClassName {c:?} does not run (it needs \"runc\")"
            )),
            (None, Some(c)) if c != "wasmtime" => Err(format!(
                "{image_name} is a Wasm image, which runtimeClassName {c:?} does not run (it needs \"wasmtime\")"
            )),
            (Some(linux), _) => match &self.shared.shim {
                Ok(shim) => self.linux_parts(shim, &image, linux).await,
                Err(why) => {
                    let m = format!("Linux containers cannot run on this node: {why}");
                    self.set_waiting(init, i, "RuntimeUnavailable", &m);
                    self.event(Some(cname), true, "Failed", &format!("Error: {m}"))
                        .await;
                    return Err(Unprepared::Other);
                }
            },
            (None, _) => self
                .shared
                .runtime
                .load(&image.digest, &image.path)
                .await
                .map(Parts::Wasm)
                .map_err(|e| e.to_string()),
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(m) => {
                self.set_waiting(init, i, "CreateContainerError", &m);
                self.event(Some(cname), true, "Failed", &format!("Error: {m}"))
                    .await;
                return Err(Unprepared::Other);
            }
        };
        let env = match env::environment(&self.shared.client, pod, spec).await {
            Ok(e) => e,
            Err(e) => {
                self.set_waiting(init, i, "CreateContainerConfigError", &e.0);
                self.event(Some(cname), true, "Failed", &format!("Error: {}", e.0))
                    .await;
                return Err(Unprepared::Other);
            }
        };
        let mounts = match volumes::mounts(spec, ready) {
            Ok(m) => m,
            Err(e) => {
                self.set_waiting(init, i, "CreateContainerConfigError", &e.to_string());
                self.event(Some(cname), true, "Failed", &format!("Error: {e}"))
                    .await;
                return Err(Unprepared::Other);
            }
        };
        let limit = |r: &str| {
            spec["resources"]["limits"][r]
                .as_str()
                .and_then(|q| Quantity::parse(q).ok())
        };
        let repo = images::repository(image_name);
        self.reporter.update(|s| {
            let list = if init { &mut s.init } else { &mut s.containers };
            if let Some(c) = list.get_mut(i) {
                c.image_id = format!("{repo}@{}", image.id);
            }
        });
        let guest = GuestSpec {
            argv: env::argv(spec, &env),
            env,
            mounts,
            working_dir: spec["workingDir"].as_str().map(str::to_owned),
            memory_limit: limit("memory")
                .map_or(wasm::DEFAULT_MEMORY_LIMIT, |q| q.value().max(0) as u64),
            cpu_millis: limit("cpu").map(|q| q.millis().max(1) as u64),
            network: true,
            dns: self.shared.dns.get().map(|dns| {
                crate::dns::Resolver::new(
                    dns.clone(),
                    pod["metadata"]["namespace"].as_str().unwrap_or("default"),
                )
            }),
            slots: self.shared.runtime.slots(),
            memory_usage: Arc::new(AtomicU64::new(0)),
            cpu_nanos: Arc::new(AtomicU64::new(0)),
        };
        let runnable = match loaded {
            Parts::Wasm(wasm) => Runnable::Wasm(wasm),
            Parts::Linux(shim, image_root, config) => {
                let (dir, hostname) = (&sb.dir, pod_hostname(pod));
                let etc = shim::etc_files(dir, &hostname, pod["status"]["podIP"].as_str());
                let etc_files = match etc {
                    Ok(f) => f,
                    Err(e) => {
                        let m = format!("writing the pod's /etc files: {e}");
                        self.set_waiting(init, i, "CreateContainerError", &m);
                        return Err(Unprepared::Other);
                    }
                };
                let memory = limit("memory").map(|q| q.value().max(0) as u64);
                let mut container = shim::container(pod, spec, &guest, memory);
                // A limit the node's cgroups cannot enforce is said, not silently kept.
                for m in shim::drop_unenforced(&mut container, shim.controllers) {
                    self.event(Some(cname), true, "LimitNotEnforced", &m).await;
                }
                let request = wk_shim::supervise::Request {
                    id: format!("{}-{cname}", self.uid),
                    runc: PathBuf::new(),
                    runc_root: PathBuf::new(),
                    image: config,
                    image_root,
                    container,
                    pod: wk_shim::spec::Pod {
                        netns: sb.netns.clone(),
                        hostname,
                        etc_files,
                    },
                    log: PathBuf::new(),
                    overlay: true,
                };
                let bundle = dir.join("shim").join(cname);
                let usage = (guest.memory_usage.clone(), guest.cpu_nanos.clone());
                Runnable::Linux(Arc::new(shim::Linux::new(shim, request, bundle, usage)))
            }
        };
        Ok((runnable, guest))
    }

    /// What a Linux image's containers need: the node's shim, the image's unpacked root and
    /// its config.
    async fn linux_parts(
        &self,
        shim: &Arc<shim::Shim>,
        image: &images::Image,
        linux: &images::Linux,
    ) -> Result<Parts, String> {
        let (store, config, linux) = (
            self.shared.images.clone(),
            image.digest.clone(),
            linux.clone(),
        );
        let root = tokio::task::spawn_blocking(move || store.rootfs(&config, &linux))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("unpacking image {}: {e}", image.id))?;
        let raw = tokio::fs::read(&image.path)
            .await
            .map_err(|e| format!("reading the image config: {e}"))?;
        let config: Value = serde_json::from_slice(&raw)
            .map_err(|e| format!("the image config is not JSON: {e}"))?;
        Ok(Parts::Linux(
            shim.clone(),
            root,
            wk_shim::spec::Image::from_config(&config),
        ))
    }

    async fn run_once(
        &self,
        sb: &Sandbox,
        p: &Prepared,
        i: usize,
        init: bool,
        stop: &Stop,
    ) -> Exit {
        let ctx = self.clone_for_task();
        run_command_once(&ctx, &sb.handle(), p, i, init, stop, stop).await
    }
}

/// What a container's image gives it to run: a loaded module, or a Linux image's shim, root
/// and config.
enum Parts {
    Wasm(Loaded),
    Linux(Arc<shim::Shim>, PathBuf, wk_shim::spec::Image),
}

/// The pod's host name: `spec.hostname`, else its name.
fn pod_hostname(pod: &Value) -> String {
    pod["spec"]["hostname"]
        .as_str()
        .or(pod["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_owned()
}

enum PrepareError {
    Retry,
    ImagePull(Vec<Unprepared>),
}

/// What a container task needs of its worker.
#[derive(Clone)]
struct TaskCtx {
    shared: Arc<Shared>,
    pod: watch::Receiver<Arc<Value>>,
    uid: String,
    policy: String,
    reporter: Arc<Reporter>,
}

impl TaskCtx {
    /// The kubelet's Created (first run only) and Started events.
    async fn started_events(&self, name: &str, restart: u32) {
        if restart == 0 {
            self.event(name, false, "Created", &format!("Created container {name}"))
                .await;
        }
        self.event(name, false, "Started", &format!("Started container {name}"))
            .await;
    }

    async fn event(&self, container: &str, warning: bool, reason: &'static str, message: &str) {
        let pod = self.pod.borrow().clone();
        self.reporter
            .event(pod, Some(container), warning, reason, message);
    }

    fn set(&self, init: bool, i: usize, f: impl FnOnce(&mut Container)) {
        self.reporter.update(|s| {
            let list = if init { &mut s.init } else { &mut s.containers };
            if let Some(c) = list.get_mut(i) {
                f(c);
            }
        });
    }

    fn restart_count(&self, init: bool, i: usize) -> u32 {
        let s = self.reporter.snapshot();
        let list = if init { &s.init } else { &s.containers };
        list.get(i).map_or(0, |c| c.restart_count)
    }
}

/// How the worker stops one container: drain (HTTP stops accepting), kill (interrupt the
/// guest), finished (do not restart).
#[derive(Clone, Default)]
struct ContainerStop {
    drain: Stop,
    kill: Stop,
    finished: Stop,
}

/// How often projected volumes (configMap, secret, downwardAPI) are brought up to date.
pub const VOLUME_REFRESH: Duration = Duration::from_secs(5);

/// Keeps a running pod's projected volumes equal to their objects, as the kubelet does.
async fn refresh_volumes(shared: Arc<Shared>, pod: watch::Receiver<Arc<Value>>, dir: PathBuf) {
    let projected = |p: &Value| {
        p["spec"]["volumes"].as_array().is_some_and(|v| {
            v.iter()
                .any(|v| v.get("emptyDir").is_none() && v.get("hostPath").is_none())
        })
    };
    if !projected(&pod.borrow()) {
        return;
    }
    loop {
        tokio::time::sleep(VOLUME_REFRESH).await;
        let current = pod.borrow().clone();
        match volumes::refresh(&shared.client, &current, &dir).await {
            Ok(true) => {
                tracing::debug!(pod = ?current["metadata"]["name"], "projected volumes updated")
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "refreshing projected volumes failed"),
        }
    }
}

/// The liveness check of a component exporting `wk:pod/health`, when the spec sets no
/// livenessProbe: every 10 s, three failures in a row end the run.
async fn health_checks<F: std::future::Future<Output = ()>>(
    ctx: &TaskCtx,
    handle: &tokio::runtime::Handle,
    p: &Prepared,
    name: &str,
    kill: impl Fn(String) -> F,
) {
    let Some(module) = p.loaded.wasm() else {
        return;
    };
    let timing = probes::Timing::of(&json!({}));
    let mut tracker = probes::Tracker::default();
    let sink =
        match tempfile::NamedTempFile::new().map(|f| ContainerLog::create(f.path().to_owned())) {
            Ok(Ok(log)) => log,
            _ => return,
        };
    loop {
        tokio::time::sleep(timing.period).await;
        let (loaded, engine, guest) = (
            module.clone(),
            ctx.shared.runtime.engine().clone(),
            p.guest.clone(),
        );
        let (out, err) = (sink.stream("stdout"), sink.stream("stderr"));
        let result = handle
            .spawn(async move {
                wasm::call_hook(
                    &loaded,
                    &engine,
                    &guest,
                    &out,
                    &err,
                    wasm::Hook::Health,
                    Duration::from_secs(1),
                )
                .await
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(m) = &result {
            ctx.event(
                name,
                true,
                "Unhealthy",
                &format!(
                    "Liveness check {} failed: {m}",
                    wasm::Hook::Health.describe()
                ),
            )
            .await;
        }
        if tracker.record(result.is_ok(), &timing) == Some(false) {
            return kill("failed its wk:pod/health check".into()).await;
        }
    }
}

/// A container's named ports, for probes and hooks.
fn container_ports(spec: &Value) -> Vec<(String, u16)> {
    spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            let port = u16::try_from(x["containerPort"].as_u64()?).ok()?;
            Some((x["name"].as_str().unwrap_or_default().to_owned(), port))
        })
        .collect()
}

/// A container with a readiness probe is not ready until the probe passes.
fn has_readiness(spec: &Value) -> bool {
    spec.get("readinessProbe").is_some_and(Value::is_object)
}

fn log_path(ctx: &TaskCtx, name: &str, restart: u32) -> PathBuf {
    let (dir, _) = sandbox::paths(&ctx.shared.data_dir, &ctx.uid);
    logs::run_file(&dir, name, restart)
}

/// Runs one command container once, reporting its running and terminated states.
async fn run_command_once(
    ctx: &TaskCtx,
    handle: &tokio::runtime::Handle,
    p: &Prepared,
    i: usize,
    init: bool,
    drain: &Stop,
    stop: &Stop,
) -> Exit {
    let name = p.spec["name"].as_str().unwrap_or_default().to_owned();
    let restart = ctx.restart_count(init, i);
    let path = log_path(ctx, &name, restart);
    // What runs: a module with its log, or a Linux container once the shim has started it
    // (or one a previous agent started, adopted with its log).
    let run = match &p.loaded {
        Runnable::Wasm(loaded) => match ContainerLog::create(path.clone()) {
            Ok(log) => Run::Wasm(loaded.clone(), log),
            Err(e) => return Exit::Failed(format!("creating the log file: {e}")),
        },
        Runnable::Linux(linux) => match linux.start(&path).await {
            Ok(started) => Run::Linux(started),
            Err(message) => return Exit::Failed(message),
        },
    };
    let started_at = status::now();
    let container_id = match &p.loaded {
        Runnable::Wasm(_) => format!("wasm://{}/{name}/{restart}", ctx.uid),
        Runnable::Linux(l) => format!("runc://{}", l.id()),
    };
    let gated = has_readiness(&p.spec);
    ctx.set(init, i, |c| {
        c.state = State::Running {
            started_at: started_at.clone(),
        };
        c.container_id = container_id.clone();
        c.ready = !init && !gated;
    });
    if !matches!(&run, Run::Linux(s) if s.adopted()) {
        ctx.started_events(&name, restart).await;
    }
    ctx.shared.live_logs(&path, true);
    let exit = match run {
        Run::Linux(started) => started.wait(drain, stop).await,
        Run::Wasm(loaded, log) => {
            let (engine, guest, stop2) = (
                ctx.shared.runtime.engine().clone(),
                p.guest.clone(),
                stop.clone(),
            );
            let (out, err) = (log.stream("stdout"), log.stream("stderr"));
            let task = handle.spawn(async move {
                wasm::run_command(&loaded, &engine, &guest, &out, &err, &stop2).await
            });
            match task.await {
                Ok(exit) => exit,
                Err(e) if e.is_panic() => Exit::Trap(
                    "the host panicked running this container; the agent caught it".into(),
                ),
                Err(_) => Exit::Killed,
            }
        }
    };
    ctx.shared.live_logs(&path, false);
    let finished_at = status::now();
    ctx.set(init, i, |c| {
        c.ready = false;
        c.state = ended(&exit, started_at, finished_at);
    });
    exit
}

/// One run of a command container, started.
enum Run<'a> {
    Wasm(Loaded, Arc<ContainerLog>),
    Linux(shim::Started<'a>),
}

/// The terminated state the kubelet shows for a run that ended with `exit`.
fn ended(exit: &Exit, started_at: String, finished_at: String) -> State {
    State::Terminated {
        exit_code: exit.code(),
        reason: exit.reason().to_owned(),
        message: exit.message(),
        started_at,
        finished_at,
    }
}

/// Runs one app container under the restart policy until it finishes for good or is stopped.
async fn supervise(
    ctx: TaskCtx,
    handle: tokio::runtime::Handle,
    p: Arc<Prepared>,
    i: usize,
    stop: ContainerStop,
) {
    let name = p.spec["name"].as_str().unwrap_or_default().to_owned();
    let is_http = p.loaded.is_http();
    // A command exporting wk:pod/lifecycle.pre-stop handles its stop (as a process handles
    // SIGTERM) and gets the grace period to exit; any other command is stopped once its
    // preStop ran, as SIGTERM's default action would.
    let gentle =
        is_http || matches!(p.loaded, Runnable::Linux(_)) || p.loaded.has_hook(wasm::Hook::PreStop);
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        // This run's own stop, so a failed liveness probe can end one run without ending
        // the container for good.
        let run = ContainerStop::default();
        let link = {
            let (outer, run) = (stop.clone(), run.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = outer.drain.wait() => {
                        run.drain.stop();
                        // A command has no gentler stop than SIGTERM's default (terminate)
                        // until it exports wk's lifecycle hook: draining it means stopping it.
                        if !gentle {
                            run.kill.stop();
                        }
                        outer.kill.wait().await;
                        run.kill.stop();
                    }
                    () = outer.kill.wait() => run.kill.stop(),
                }
            })
        };
        let probes = tokio::spawn(watch_probes(
            ctx.clone(),
            handle.clone(),
            p.clone(),
            i,
            run.clone(),
        ));
        let exit = match &p.loaded {
            Runnable::Wasm(Loaded::Http(pre)) => {
                serve_http(&ctx, &handle, &p, pre.clone(), i, &run).await
            }
            _ => run_command_once(&ctx, &handle, &p, i, false, &run.drain, &run.kill).await,
        };
        probes.abort();
        link.abort();
        if let Exit::Failed(m) = &exit {
            // It never started (a port in use, say): shown as the kubelet shows a StartError.
            let now = status::now();
            ctx.set(false, i, |c| {
                c.ready = false;
                c.state = ended(&exit, now.clone(), now.clone());
            });
            ctx.event(&name, true, "Failed", &format!("Error: {m}"))
                .await;
        }
        if stop.finished.stopped() {
            return;
        }
        let restart = match ctx.policy.as_str() {
            "Never" => false,
            "OnFailure" => exit != Exit::Code(0),
            _ => true,
        };
        if !restart {
            return;
        }
        let delay = backoff.delay(started.elapsed());
        let message = format!(
            "back-off {}s restarting failed container={name}",
            delay.as_secs()
        );
        ctx.set(false, i, |c| {
            if let State::Terminated { .. } = c.state {
                c.last = Some(c.state.clone());
            }
            c.state = State::waiting("CrashLoopBackOff", Some(message));
        });
        ctx.event(
            &name,
            true,
            "BackOff",
            "Back-off restarting failed container",
        )
        .await;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.finished.wait() => return,
        }
        ctx.set(false, i, |c| c.restart_count += 1);
    }
}

/// Runs a container's startup, liveness and readiness probes for one run: readiness sets the
/// Ready flag; a failed startup or liveness probe ends the run (the restart policy decides
/// what next).
async fn watch_probes(
    ctx: TaskCtx,
    handle: tokio::runtime::Handle,
    p: Arc<Prepared>,
    i: usize,
    run: ContainerStop,
) {
    let spec = &p.spec;
    let (startup, liveness, readiness) = (
        spec.get("startupProbe").filter(|v| v.is_object()),
        spec.get("livenessProbe").filter(|v| v.is_object()),
        spec.get("readinessProbe").filter(|v| v.is_object()),
    );
    let health = liveness.is_none() && p.loaded.has_hook(wasm::Hook::Health);
    if startup.is_none() && liveness.is_none() && readiness.is_none() && !health {
        return;
    }
    let name = spec["name"].as_str().unwrap_or_default().to_owned();
    // Probes start once the container runs.
    loop {
        let s = ctx.reporter.snapshot();
        if s.containers
            .get(i)
            .is_some_and(|c| matches!(c.state, State::Running { .. }))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ports = container_ports(spec);
    let exec = probes::ExecTarget {
        loaded: p.loaded.clone(),
        engine: ctx.shared.runtime.engine().clone(),
        guest: p.guest.clone(),
    };
    let kill = |why: String| {
        let (ctx, name, run) = (ctx.clone(), name.clone(), run.clone());
        async move {
            ctx.event(
                &name,
                false,
                "Killing",
                &format!("Container {name} {why}, will be restarted"),
            )
            .await;
            run.drain.stop();
            run.kill.stop();
        }
    };
    if let Some(probe) = startup
        && !run_probe(
            &ctx,
            &name,
            "Startup",
            probe,
            &ports,
            &handle,
            &exec,
            |_| true,
        )
        .await
    {
        return kill("failed startup probe".into()).await;
    }
    let live = async {
        match liveness {
            Some(probe) => {
                run_probe(
                    &ctx,
                    &name,
                    "Liveness",
                    probe,
                    &ports,
                    &handle,
                    &exec,
                    |healthy| !healthy,
                )
                .await;
                kill("failed liveness probe".into()).await;
            }
            None if health => health_checks(&ctx, &handle, &p, &name, kill).await,
            None => std::future::pending::<()>().await,
        }
    };
    let ready = async {
        match readiness {
            Some(probe) => {
                run_probe(
                    &ctx,
                    &name,
                    "Readiness",
                    probe,
                    &ports,
                    &handle,
                    &exec,
                    |ready| {
                        ctx.set(false, i, |c| c.ready = ready);
                        false
                    },
                )
                .await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = live => {}
        () = ready => {}
    }
}

/// Runs one probe on its timing, with an `Unhealthy` event for each failed check, until
/// `settle` accepts a change of its healthy state; returns that state.
#[allow(
    clippy::too_many_arguments,
    reason = "the probe's context, spelled out once"
)]
async fn run_probe(
    ctx: &TaskCtx,
    name: &str,
    what: &str,
    probe: &Value,
    ports: &[(String, u16)],
    handle: &tokio::runtime::Handle,
    exec: &probes::ExecTarget,
    mut settle: impl FnMut(bool) -> bool,
) -> bool {
    let timing = probes::Timing::of(probe);
    tokio::time::sleep(timing.initial_delay).await;
    let mut tracker = probes::Tracker::default();
    loop {
        let result = probes::check(probe, ports, handle, exec).await;
        if let Err(m) = &result {
            ctx.event(
                name,
                true,
                "Unhealthy",
                &format!("{what} probe failed: {m}"),
            )
            .await;
        }
        if let Some(state) = tracker.record(result.is_ok(), &timing)
            && settle(state)
        {
            return state;
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// The port an HTTP component without a containerPort is served on.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Serves an HTTP container on its containerPorts (inside the pod's namespace) and hostPorts
/// (on the node) until drained.
async fn serve_http(
    ctx: &TaskCtx,
    handle: &tokio::runtime::Handle,
    p: &Prepared,
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<wasm::P2State>,
    i: usize,
    stop: &ContainerStop,
) -> Exit {
    let name = p.spec["name"].as_str().unwrap_or_default().to_owned();
    let mut ports: Vec<(u16, Option<u16>)> = p.spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|port| port["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .filter_map(|port| {
            let c = u16::try_from(port["containerPort"].as_u64()?).ok()?;
            let h = port["hostPort"]
                .as_u64()
                .and_then(|h| u16::try_from(h).ok())
                .filter(|h| *h > 0);
            Some((c, h))
        })
        .collect();
    // No containerPort (`kubectl create deployment --image`): the port `wasmtime serve`
    // listens on.
    if ports.is_empty() {
        ports.push((DEFAULT_HTTP_PORT, None));
    }
    let serving = wasm::http::Serving::from_pod(&ctx.pod.borrow());
    let serving = match serving {
        Ok(s) => s,
        Err(m) => {
            ctx.set(false, i, |c| {
                c.state = State::waiting("CreateContainerConfigError", Some(m.clone()))
            });
            ctx.event(&name, true, "Failed", &format!("Error: {m}"))
                .await;
            stop.finished.wait().await;
            return Exit::Killed;
        }
    };
    let restart = ctx.restart_count(false, i);
    let path = log_path(ctx, &name, restart);
    let log = match ContainerLog::create(path.clone()) {
        Ok(l) => l,
        Err(e) => return Exit::Failed(format!("creating the log file: {e}")),
    };
    let service = wasm::http::HttpService::new(
        pre,
        ctx.shared.runtime.engine().clone(),
        p.guest.clone(),
        log.stream("stdout"),
        log.stream("stderr"),
        serving,
    );
    // Bind every port first, so a clash is reported before the container counts as started.
    let mut listeners = Vec::new();
    let mut host_listeners = Vec::new();
    for (port, host_port) in &ports {
        let port = *port;
        let bound = handle
            .spawn(async move { tokio::net::TcpListener::bind(("0.0.0.0", port)).await })
            .await;
        match bound {
            Ok(Ok(l)) => listeners.push(l),
            Ok(Err(e)) => return Exit::Failed(format!("listening on port {port} in the pod: {e}")),
            Err(e) => return Exit::Failed(e.to_string()),
        }
        if let Some(hp) = host_port {
            // Bound here, in the node's namespace, and served on the pod's own thread with
            // its containerPort (registered with that thread's runtime there).
            let bound = std::net::TcpListener::bind(("0.0.0.0", *hp))
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            match bound {
                Ok(l) => host_listeners.push(l),
                Err(e) => return Exit::Failed(format!("hostPort {hp}: {e}")),
            }
        }
    }
    let started_at = status::now();
    let gated = has_readiness(&p.spec);
    ctx.set(false, i, |c| {
        c.state = State::Running {
            started_at: started_at.clone(),
        };
        c.container_id = format!("wasm://{}/{name}/{restart}", ctx.uid);
        c.ready = !gated;
    });
    ctx.started_events(&name, restart).await;
    ctx.shared.live_logs(&path, true);
    // A pod whose CPU limit is over one core serves on that many threads (up to the node's
    // cores), inside its namespace; one with a limit of a core or less, on the pod's own
    // thread: more threads than the limit allows cannot help (ADR 011).
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = p
        .guest
        .cpu_millis
        .map_or(1, |m| usize::try_from(m.div_ceil(1000)).unwrap_or(cores))
        .clamp(1, cores);
    let netns = || {
        let (_, ns) = sandbox::paths(&ctx.shared.data_dir, &ctx.uid);
        sandbox::netns::is_mounted(&ns).then_some(ns)
    };
    let workers = (threads > 1)
        .then(|| sandbox::worker_runtime(&name, netns().as_deref(), threads))
        .flatten();
    // Without a CPU limit the pod may use every core, as on Kubernetes, but worker threads
    // start only once it has two connections open at once and stop when it has none.
    let spread = (p.guest.cpu_millis.is_none() && cores > 1).then(|| {
        let (name, ns) = (name.clone(), netns());
        wasm::http::Spread::new(move || sandbox::worker_runtime(&name, ns.as_deref(), cores))
    });
    // The service proxy hands this node's connections for the pod's ports straight over.
    let pod_ip = ctx.pod.borrow()["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let spawn =
        |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| match &workers {
            Some(rt) => rt.spawn(fut),
            None => handle.spawn(fut),
        };
    let mut serving = Vec::new();
    for listener in listeners {
        let handoffs = pod_ip.zip(listener.local_addr().ok()).map(|(ip, bound)| {
            ctx.shared
                .local_http
                .register(std::net::SocketAddr::new(ip, bound.port()))
        });
        let fut = wasm::http::serve(
            listener,
            handoffs,
            service.clone(),
            stop.drain.clone(),
            spread.clone(),
        );
        serving.push(spawn(Box::pin(fut)));
    }
    for listener in host_listeners {
        let (svc, drain, spread) = (service.clone(), stop.drain.clone(), spread.clone());
        serving.push(spawn(Box::pin(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => wasm::http::serve(l, None, svc, drain, spread).await,
                Err(e) => tracing::warn!(error = %e, "hostPort listener not served"),
            }
        })));
    }
    let kill_watch = {
        let kill = stop.kill.clone();
        let svc = service.clone();
        tokio::spawn(async move {
            kill.wait().await;
            svc.kill.stop();
        })
    };
    for s in serving {
        let _ = s.await;
    }
    // It holds the service (and so the log file) until aborted.
    kill_watch.abort();
    if let Some(rt) = workers {
        rt.shutdown_background();
    }
    if let Some(spread) = spread {
        spread.stop();
    }
    ctx.shared.live_logs(&path, false);
    ctx.set(false, i, |c| {
        c.ready = false;
        c.state = ended(&Exit::Code(0), started_at, status::now());
    });
    Exit::Code(0)
}

/// Deletes a pod object with grace 0 (its uid as precondition), as the kubelet does once
/// nothing of the pod is left on the node.
pub async fn delete_now(client: &crate::client::Client, pod: &Value) {
    let meta = &pod["metadata"];
    let body = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}});
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        meta["namespace"].as_str().unwrap_or("default"),
        meta["name"].as_str().unwrap_or_default()
    );
    for attempt in 0..5u32 {
        match client
            .request(
                Method::DELETE,
                &path,
                Some("application/json"),
                Some(body.to_string().into_bytes()),
            )
            .await
        {
            Ok(_) => return,
            Err(e) if matches!(e.code(), Some(404 | 409)) => return,
            Err(e) => {
                tracing::debug!(%path, error = %e, "deleting the pod object failed");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

/// Fails a pod the node will not run (the kubelet's admission rejection), with an event.
pub async fn reject(shared: &Shared, pod: &Value, reason: &str, message: &str) {
    let meta = &pod["metadata"];
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/status",
        meta["namespace"].as_str().unwrap_or("default"),
        meta["name"].as_str().unwrap_or_default()
    );
    let patch = json!({"status": {"phase": "Failed", "reason": reason, "message": message,
        "startTime": pod["status"]["startTime"].as_str().map_or_else(status::now, str::to_owned)}});
    if let Err(e) = shared
        .client
        .request(
            Method::PATCH,
            &path,
            Some("application/merge-patch+json"),
            Some(patch.to_string().into_bytes()),
        )
        .await
    {
        tracing::warn!(%path, error = %e, "could not mark the pod rejected");
    }
    status::event(
        &shared.client,
        pod,
        &shared.node_name,
        None,
        true,
        reason,
        message,
    );
}
