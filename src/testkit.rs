//! An in-process control plane for the unit tests of the controllers and the scheduler: the
//! real API (router, admission, watch cache and a redb store in a temporary directory),
//! reached through [`Client::in_process`], with the controllers started the way `wk server`
//! starts them. Tests run on tokio's paused clock, so grace periods, deadlines and schedules
//! pass in no real time ([`crate::clock`] moves the API's timestamps with it); nothing else
//! acts on the cluster unless the test does, so a test plays the kubelet where it needs one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Tokens};
use crate::client::informer::Informers;
use crate::client::{Client, Error};
use crate::store::{Cache, EventStream, KeyValue, RedbStore, Revision, Store};

/// How long [`Api::until`] waits, on the test's clock, before it fails the test.
const PATIENCE: Duration = Duration::from_secs(600);

/// A running in-process API; dropping it stops everything the test started on it.
pub struct Api {
    /// An admin client.
    pub client: Client,
    /// The API server's state (its cache, for informers).
    pub state: Arc<ApiState>,
    /// Cancelled on drop.
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Api {
    /// Opens a fresh store and serves the API on it, with the built-in namespaces and the
    /// default StorageClass, as `wk server` bootstraps.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("state.redb");
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&path))
            .await
            .expect("the store opens")
            .expect("the store opens");
        let store: Arc<dyn Store> = Arc::new(Awaited(Arc::new(store)));
        let cache = Cache::start(store).await.expect("the cache starts");
        let shutdown = CancellationToken::new();
        let tokens = Tokens {
            admin: "admin-token".into(),
            node: "node-token".into(),
        };
        let state = ApiState::new(
            cache,
            tokens,
            shutdown.clone(),
            Duration::from_secs(10),
            String::new(),
            crate::net::SERVICE_CIDR,
        );
        crate::server::bootstrap(
            &state,
            None,
            crate::server::Builtins {
                local_storage: true,
                ingress: true,
            },
        )
        .await
        .expect("the cluster bootstraps");
        let client = Client::in_process(
            crate::api::router(state.clone()),
            Some("admin-token".into()),
        );
        Self {
            client,
            state,
            shutdown,
            _dir: dir,
        }
    }

    /// Starts controllers with `start`, on informers fed by the API's cache, then the
    /// informers, as `wk server` does.
    pub fn run(&self, start: impl FnOnce(&Client, &Informers, &CancellationToken)) {
        let informers = Informers::local(self.state.cache.clone());
        start(&self.client, &informers, &self.shutdown);
        informers.start(&self.client, &self.shutdown);
    }

    /// Starts the scheduler, as `wk server` does.
    pub fn schedule(&self) {
        tokio::spawn(crate::scheduler::run(
            self.client.clone(),
            Some(self.state.cache.clone()),
            self.shutdown.child_token(),
        ));
    }

    /// Sends a request with a JSON (or, for PATCH, merge-patch) body.
    ///
    /// # Errors
    /// What the API answered.
    pub async fn call(&self, method: Method, path: &str, body: &Value) -> Result<Value, Error> {
        let content_type = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let body = (!body.is_null()).then(|| body.to_string().into_bytes());
        self.client
            .request(method, path, Some(content_type), body)
            .await
    }

    /// Creates `object` in the collection at `path`; the test fails if the API refuses it.
    pub async fn create(&self, path: &str, object: Value) -> Value {
        self.call(Method::POST, path, &object)
            .await
            .unwrap_or_else(|e| panic!("creating {object} at {path}: {e}"))
    }

    /// Merge-patches the object at `path`; the test fails if the API refuses it.
    pub async fn patch(&self, path: &str, patch: Value) -> Value {
        self.call(Method::PATCH, path, &patch)
            .await
            .unwrap_or_else(|e| panic!("patching {path} with {patch}: {e}"))
    }

    /// GETs `path`.
    ///
    /// # Errors
    /// What the API answered (404 for an object that is gone).
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.client.get(path).await
    }

    /// Polls `path` every 100 ms of the test's clock until `done` holds for what it reads
    /// (a 404 reads as null), and returns that; fails the test, naming `what`, after
    /// [`PATIENCE`].
    pub async fn until(&self, what: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let began = tokio::time::Instant::now();
        loop {
            let seen = match self.get(path).await {
                Ok(v) => v,
                Err(e) if e.code() == Some(404) => Value::Null,
                Err(e) => panic!("reading {path}: {e}"),
            };
            if done(&seen) {
                return seen;
            }
            assert!(
                began.elapsed() < PATIENCE,
                "{what}: still not so after {PATIENCE:?}; last read {seen:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers a Ready node with `labels`, 4 CPUs, 8 GiB and 110 pods, and its Lease.
    pub async fn node(&self, name: &str, labels: Value) {
        let mut labels = if labels.is_object() {
            labels
        } else {
            json!({})
        };
        labels["kubernetes.io/hostname"] = json!(name);
        self.create(
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels}}),
        )
        .await;
        let now = crate::agent::status::now();
        let resources = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        self.patch(
            &format!("/api/v1/nodes/{name}/status"),
            json!({"status": {"capacity": resources, "allocatable": resources,
                "addresses": [{"type": "InternalIP", "address": next_node_ip()}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}]}}),
        )
        .await;
        self.create(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                    "renewTime": micro_now()}}),
        )
        .await;
    }

    /// Renews a node's Lease every 10 s of the test's clock until the test ends.
    pub fn keep_alive(&self, name: &str) {
        let (client, path, stop) = (
            self.client.clone(),
            format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"),
            self.shutdown.child_token(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let renewal = json!({"spec": {"renewTime": micro_now()}});
                let _ = crate::controllers::merge_patch(&client, &path, &renewal).await;
            }
        });
    }

    /// Plays the kubelet for one pass over the pods of `namespace`: each bound pod that is
    /// not yet Running starts and becomes Ready now; a pod whose grace period has begun is
    /// removed (deleted with grace 0).
    pub async fn kubelet(&self, namespace: &str) {
        kubelet_pass(&self.client, namespace).await;
    }

    /// Runs [`Api::kubelet`] every second of the test's clock until the test ends.
    pub fn kubelet_loop(&self, namespace: &str) {
        let (client, namespace, stop) = (
            self.client.clone(),
            namespace.to_owned(),
            self.shutdown.child_token(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                kubelet_pass(&client, &namespace).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Finishes a pod as Succeeded (exit 0) or Failed (exit 1).
    pub async fn finish(&self, namespace: &str, name: &str, succeeded: bool) {
        let (phase, code) = if succeeded {
            ("Succeeded", 0)
        } else {
            ("Failed", 1)
        };
        let now = crate::agent::status::now();
        self.patch(
            &format!("/api/v1/namespaces/{namespace}/pods/{name}/status"),
            json!({"status": {"phase": phase,
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
                "containerStatuses": [{"name": "main", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code, "finishedAt": now}}}]}}),
        )
        .await;
    }

    /// Waits for the given virtual time to pass.
    pub async fn sleep(&self, seconds: u64) {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
}

/// One pass of [`Api::kubelet`].
async fn kubelet_pass(client: &Client, namespace: &str) {
    let Ok(list) = client
        .get(&format!("/api/v1/namespaces/{namespace}/pods"))
        .await
    else {
        return;
    };
    for pod in list["items"].as_array().into_iter().flatten() {
        let name = crate::controllers::name(pod);
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        if crate::controllers::terminating(pod) {
            let _ = client
                .request(
                    Method::DELETE,
                    &path,
                    Some("application/json"),
                    Some(br#"{"gracePeriodSeconds": 0}"#.to_vec()),
                )
                .await;
            continue;
        }
        if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
            || pod["status"]["phase"] != "Pending"
        {
            continue;
        }
        let now = crate::agent::status::now();
        let status = json!({"status": {"phase": "Running", "startTime": now,
            "podIP": next_pod_ip(), 
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}});
        let _ = crate::controllers::merge_patch(client, &format!("{path}/status"), &status).await;
    }
}

/// A pod address no other pod of any test has: the agent's would come from its podCIDR.
fn next_pod_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("100.64.{}.{}", n / 250 % 256, n % 250 + 2)
}

/// A node address no other node of any test has, in the loopback range.
fn next_node_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.0.{}.{}", n / 250 % 250 + 1, n % 250 + 2)
}

/// A Lease's microsecond timestamp.
fn micro_now() -> String {
    crate::clock::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// A pod template with one container; deletions need no grace period, so that no kubelet has
/// to finish them.
pub fn template(labels: &Value) -> Value {
    json!({"metadata": {"labels": labels},
        "spec": {"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "registry.test/app:1",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

/// The store, with each write awaited on a blocking thread.
///
/// redb commits on its own writer thread, which tokio's paused clock cannot see: while a
/// task awaits a commit the runtime looks idle and would jump the clock to its next timer.
/// A write awaited inside `spawn_blocking` holds the clock still until it is durable, as
/// every other wait in these tests does.
struct Awaited(Arc<RedbStore>);

impl Awaited {
    async fn blocking<T: Send + 'static, F>(
        &self,
        op: impl FnOnce(Arc<RedbStore>) -> F + Send + 'static,
    ) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let store = self.0.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(op(store)))
            .await
            .expect("a store write task")
    }
}

#[async_trait::async_trait]
impl Store for Awaited {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, crate::store::Error> {
        self.0.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), crate::store::Error> {
        self.0.list(prefix).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, crate::store::Error> {
        let key = key.to_owned();
        self.blocking(move |s| async move { s.create(&key, value).await })
            .await
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<Revision, crate::store::Error> {
        let key = key.to_owned();
        self.blocking(move |s| async move { s.update(&key, value, expected).await })
            .await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<KeyValue, crate::store::Error> {
        let key = key.to_owned();
        self.blocking(move |s| async move { s.delete(&key, expected).await })
            .await
    }

    async fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<EventStream, crate::store::Error> {
        self.0.watch(prefix, from).await
    }

    async fn current_revision(&self) -> Result<Revision, crate::store::Error> {
        self.0.current_revision().await
    }
}
