//! Watch-fed caches and work queues for controllers, in the spirit of client-go's shared
//! informers: one LIST+WATCH per resource, shared by every controller that reads it, with an
//! index of objects by owner uid. Handlers see each change; they only enqueue keys. A
//! controller's [`Queue`] dedupes keys, and its one worker reconciles them in turn.
//!
//! The cache may be stale. A controller that has written waits with [`Informer::wait_for`] until
//! the informer has seen its write's resourceVersion (wk's revisions are one counter across
//! every kind), so it never acts twice on the same gap — what client-go's "expectations" do.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Client, Error};

/// A change an informer saw: the object before and after (`None` for added and deleted).
pub type Handler = Box<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// The cache key of an object: `namespace/name`, or `name` for cluster-scoped kinds.
pub fn key_of(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// A notification that fires whenever one of `informers` sees a change, for loops that
/// recompute everything they serve rather than handle each event.
pub fn wake_on_change(informers: &[&Arc<Informer>]) -> Arc<tokio::sync::Notify> {
    let wake = Arc::new(tokio::sync::Notify::new());
    for informer in informers {
        let w = wake.clone();
        informer.on_change(move |_, _| w.notify_one());
    }
    wake
}

/// The numeric resourceVersion of an object or list (wk's store revision).
pub fn revision(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn uid(object: &Value) -> Option<&str> {
    object["metadata"]["uid"].as_str()
}

fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

#[derive(Default)]
struct Contents {
    objects: BTreeMap<String, Arc<Value>>,
    /// Owner uid → keys of the objects that name it in their ownerReferences.
    owned: HashMap<String, HashSet<String>>,
    /// uid → key.
    uids: HashMap<String, String>,
}

impl Contents {
    fn insert(&mut self, key: String, object: Arc<Value>) -> Option<Arc<Value>> {
        let old = self.remove(&key);
        for owner in owner_uids(&object) {
            self.owned
                .entry(owner.to_owned())
                .or_default()
                .insert(key.clone());
        }
        if let Some(u) = uid(&object) {
            self.uids.insert(u.to_owned(), key.clone());
        }
        self.objects.insert(key, object);
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        for owner in owner_uids(&old) {
            if let Some(set) = self.owned.get_mut(owner) {
                set.remove(key);
                if set.is_empty() {
                    self.owned.remove(owner);
                }
            }
        }
        if let Some(u) = uid(&old)
            && self.uids.get(u).is_some_and(|k| k == key)
        {
            self.uids.remove(u);
        }
        Some(old)
    }
}

/// A watch-fed cache of one resource (a path such as `/api/v1/pods`).
pub struct Informer {
    path: String,
    contents: RwLock<Contents>,
    handlers: RwLock<Vec<Handler>>,
    /// The newest resourceVersion seen (0 until the first list).
    seen: watch::Sender<u64>,
}

impl Informer {
    /// An informer for the collection at `path`; it does nothing until [`Informer::run`].
    pub fn new(path: &str) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_owned(),
            contents: RwLock::default(),
            handlers: RwLock::default(),
            seen: watch::channel(0).0,
        })
    }

    /// The collection path this informer lists and watches.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Calls `handler` on every later change (and now, as additions, for what is cached).
    pub fn on_change(
        &self,
        handler: impl Fn(Option<&Value>, Option<&Value>) + Send + Sync + 'static,
    ) {
        let cached: Vec<Arc<Value>> = self
            .contents
            .read()
            .expect("informer lock")
            .objects
            .values()
            .cloned()
            .collect();
        for object in cached {
            handler(None, Some(&object));
        }
        self.handlers
            .write()
            .expect("informer lock")
            .push(Box::new(handler));
    }

    /// The cached object at `key` (`namespace/name` or `name`).
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.contents
            .read()
            .expect("informer lock")
            .objects
            .get(key)
            .cloned()
    }

    /// The cached object with this uid.
    pub fn by_uid(&self, uid: &str) -> Option<Arc<Value>> {
        let contents = self.contents.read().expect("informer lock");
        contents
            .uids
            .get(uid)
            .and_then(|k| contents.objects.get(k))
            .cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<Value>> {
        let contents = self.contents.read().expect("informer lock");
        contents.objects.values().cloned().collect()
    }

    /// The cached objects of one namespace.
    pub fn list_namespace(&self, ns: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{ns}/");
        let contents = self.contents.read().expect("informer lock");
        contents
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The cached objects that name `owner_uid` in their ownerReferences.
    pub fn owned_by(&self, owner_uid: &str) -> Vec<Arc<Value>> {
        let contents = self.contents.read().expect("informer lock");
        contents
            .owned
            .get(owner_uid)
            .into_iter()
            .flatten()
            .filter_map(|k| contents.objects.get(k).cloned())
            .collect()
    }

    /// Whether the first list has been loaded.
    pub fn synced(&self) -> bool {
        *self.seen.borrow() > 0
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.seen.subscribe();
        let _ = rx.wait_for(|rv| *rv > 0).await;
    }

    /// Waits (at most `limit`) until this informer has seen resourceVersion `rv`: a controller's
    /// own write has then reached its cache. True when it has.
    pub async fn wait_for(&self, rv: u64, limit: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|seen| *seen >= rv))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn notify(&self, old: Option<&Value>, new: Option<&Value>) {
        for handler in self.handlers.read().expect("informer lock").iter() {
            handler(old, new);
        }
    }

    fn apply(&self, event: &Value) {
        let kind = event["type"].as_str().unwrap_or_default();
        if matches!(kind, "ADDED" | "MODIFIED" | "DELETED") {
            self.apply_object(kind == "DELETED", Arc::new(event["object"].clone()));
        } else {
            self.saw(revision(&event["object"]));
        }
    }

    /// Applies one change: `object` added or modified, or (`deleted`) gone.
    fn apply_object(&self, deleted: bool, object: Arc<Value>) {
        let rv = revision(&object);
        if deleted {
            let old = self
                .contents
                .write()
                .expect("informer lock")
                .remove(&key_of(&object));
            self.notify(old.as_deref().or(Some(&object)), None);
        } else {
            let old = self
                .contents
                .write()
                .expect("informer lock")
                .insert(key_of(&object), object.clone());
            self.notify(old.as_deref(), Some(&object));
        }
        self.saw(rv);
    }

    fn saw(&self, rv: u64) {
        if rv > 0 {
            self.seen.send_if_modified(|seen| {
                let newer = rv > *seen;
                *seen = (*seen).max(rv);
                newer
            });
        }
    }

    /// Fills the cache with `items`, as a first list would (for unit tests of its readers).
    #[cfg(test)]
    pub(crate) fn fill(&self, items: Vec<Value>) {
        self.replace_items(items.into_iter().map(Arc::new).collect(), 1);
    }

    /// Replaces the contents with a fresh list, telling the handlers what changed.
    fn replace(&self, list: &Value) {
        let items = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| Arc::new(item.clone()))
            .collect();
        self.replace_items(items, revision(list));
    }

    fn replace_items(&self, items: Vec<Arc<Value>>, rv: u64) {
        let mut fresh: BTreeMap<String, Arc<Value>> = BTreeMap::new();
        for item in items {
            fresh.insert(key_of(&item), item);
        }
        let mut changes = Vec::new();
        {
            let mut contents = self.contents.write().expect("informer lock");
            let gone: Vec<String> = contents
                .objects
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(old) = contents.remove(&key) {
                    changes.push((Some(old), None));
                }
            }
            for (key, object) in fresh {
                let old = contents.insert(key, object.clone());
                if old
                    .as_ref()
                    .is_none_or(|o| revision(o) != revision(&object))
                {
                    changes.push((old, Some(object)));
                }
            }
        }
        for (old, new) in changes {
            self.notify(old.as_deref(), new.as_deref());
        }
        let rv = rv.max(1);
        self.seen.send_modify(|seen| *seen = (*seen).max(rv));
    }

    /// As [`Informer::run`], from the API server's own watch cache in this process: the
    /// objects are the cache's (shared, not copied), and no connection is needed. For the
    /// controllers `wk server` runs.
    pub async fn run_local(
        self: Arc<Self>,
        cache: Arc<crate::store::cache::Cache>,
        prefix: String,
        shutdown: CancellationToken,
    ) {
        'relist: while !shutdown.is_cancelled() {
            let position = tokio::select! {
                r = cache.sync() => match r {
                    Ok(rv) => rv,
                    Err(_) => return,
                },
                () = shutdown.cancelled() => return,
            };
            let (items, listed, _) = cache.list(&prefix, None, None, |_| true);
            let position = position.max(listed);
            self.replace_items(items.into_iter().map(|(_, o)| o).collect(), position);
            let mut position = position;
            loop {
                let events = tokio::select! {
                    e = cache.events_after(position) => e,
                    () = shutdown.cancelled() => return,
                };
                let Ok(events) = events else {
                    // Fell out of the window: start again from a list.
                    continue 'relist;
                };
                if events.is_empty() {
                    return;
                }
                for event in events {
                    position = event.revision;
                    if event.key.starts_with(&prefix) {
                        let deleted = event.kind == crate::store::EventKind::Deleted;
                        self.apply_object(deleted, event.object.clone());
                    }
                }
                // Other kinds' writes move this informer's clock too (one revision counter).
                self.saw(position);
            }
        }
    }

    /// Lists, then watches from the list's resourceVersion, until `shutdown`. A watch that ends
    /// is resumed from the last version seen; one that answers 410 Gone relists.
    pub async fn run(self: Arc<Self>, client: Client, shutdown: CancellationToken) {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let mut from: Option<u64> = None;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let step = async {
                let rv = match from {
                    Some(rv) => rv,
                    None => {
                        let list = client.get(&self.path).await?;
                        self.replace(&list);
                        revision(&list)
                    }
                };
                from = Some(rv);
                let url = format!(
                    "{}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={rv}",
                    self.path
                );
                let mut stream = client.watch(&url, None).await?;
                while let Some(event) = stream.next().await? {
                    self.apply(&event);
                    let rv = revision(&event["object"]);
                    if rv > 0 {
                        from = Some(rv);
                    }
                    failures = 0;
                }
                Ok::<(), Error>(())
            };
            let result = tokio::select! {
                r = step => r,
                () = shutdown.cancelled() => return,
            };
            if let Err(e) = result {
                if e.code() == Some(410) {
                    from = None;
                    continue;
                }
                failures += 1;
                tracing::debug!(path = %self.path, error = %e, "informer watch failed; retrying");
                let wait = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One informer per path, shared by every controller of a server.
#[derive(Default)]
pub struct Informers {
    by_path: Mutex<HashMap<String, Arc<Informer>>>,
    /// The API server's cache, when the controllers run inside it.
    local: Option<Arc<crate::store::cache::Cache>>,
}

/// The store key prefix of a collection path (`/api/v1/pods`,
/// `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases`).
fn store_prefix(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _, rest @ ..] => ("", rest),
        ["apis", group, _, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural),
        [plural] => (None, *plural),
        _ => return None,
    };
    crate::api::resources::lookup(group, plural).map(|res| res.prefix(namespace))
}

impl Informers {
    /// The informer for `path`, made on first use.
    pub fn get(&self, path: &str) -> Arc<Informer> {
        self.by_path
            .lock()
            .expect("informers lock")
            .entry(path.to_owned())
            .or_insert_with(|| Informer::new(path))
            .clone()
    }

    /// Informers fed by the API server's own cache, in its process.
    pub fn local(cache: Arc<crate::store::cache::Cache>) -> Self {
        Self {
            by_path: Mutex::default(),
            local: Some(cache),
        }
    }

    /// Starts every informer asked for so far.
    pub fn start(&self, client: &Client, shutdown: &CancellationToken) {
        for informer in self.by_path.lock().expect("informers lock").values() {
            let token = shutdown.child_token();
            match (&self.local, store_prefix(informer.path())) {
                (Some(cache), Some(prefix)) => {
                    tokio::spawn(informer.clone().run_local(cache.clone(), prefix, token));
                }
                _ => {
                    tokio::spawn(informer.clone().run(client.clone(), token));
                }
            }
        }
    }
}

/// What a reconciliation asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    Await,
    /// Look again after this long (something comes due by time).
    RequeueAfter(Duration),
}

/// A deduplicating queue of keys, as client-go's workqueue: a key added while it waits is
/// queued once; a key added while it is being reconciled runs again afterwards.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Keys added while active.
    again: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queues `key` unless it is queued already.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.state.lock().expect("queue lock");
        if s.active.contains(&key) {
            s.again.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.order.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").order.len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    return key;
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: &str) {
        let mut s = self.state.lock().expect("queue lock");
        s.active.remove(key);
        if s.again.remove(key) && s.queued.insert(key.to_owned()) {
            s.order.push_back(key.to_owned());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// The back-off for a key that failed `n` times in a row: 50 ms doubling up to 30 s.
    fn backoff(&self, key: &str) -> Duration {
        let mut s = self.state.lock().expect("queue lock");
        let n = s.failures.entry(key.to_owned()).or_default();
        *n += 1;
        Duration::from_millis(50 * 2u64.pow((*n - 1).min(10))).min(Duration::from_secs(30))
    }

    fn forget(&self, key: &str) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    /// Runs `reconcile` on each key in turn until `shutdown`. A failure is retried with
    /// back-off; a conflict (a stale cache) at once.
    pub async fn work<F, Fut>(
        self: Arc<Self>,
        name: &str,
        shutdown: CancellationToken,
        reconcile: F,
    ) where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Action, Error>>,
    {
        loop {
            let key = tokio::select! {
                k = self.next() => k,
                () = shutdown.cancelled() => return,
            };
            let result = tokio::select! {
                r = reconcile(key.clone()) => r,
                () = shutdown.cancelled() => return,
            };
            self.done(&key);
            match result {
                Ok(action) => {
                    self.forget(&key);
                    if let Action::RequeueAfter(d) = action {
                        self.add_after(key, d);
                    }
                }
                Err(e) => {
                    let wait = if e.code() == Some(409) {
                        Duration::from_millis(20)
                    } else {
                        self.backoff(&key)
                    };
                    tracing::debug!(controller = name, key = %key, error = %e, ?wait, "reconcile failed; retrying");
                    self.add_after(key, wait);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(ns: &str, name: &str, uid: &str, owner: Option<&str>, rv: u64) -> Value {
        let mut o = json!({"metadata": {"namespace": ns, "name": name, "uid": uid,
            "resourceVersion": rv.to_string()}});
        if let Some(owner) = owner {
            o["metadata"]["ownerReferences"] = json!([{"uid": owner, "controller": true}]);
        }
        o
    }

    #[test]
    fn the_owner_index_follows_adds_updates_and_deletes() {
        let informer = Informer::new("/api/v1/pods");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        informer.on_change(move |old, new| {
            log.lock().unwrap().push((old.is_some(), new.is_some()));
        });
        informer.apply(&json!({"type": "ADDED", "object": object("a", "p", "u1", Some("rs1"), 5)}));
        informer.apply(&json!({"type": "ADDED", "object": object("b", "p", "u2", Some("rs1"), 6)}));
        assert_eq!(informer.owned_by("rs1").len(), 2);
        assert_eq!(informer.list_namespace("a").len(), 1);
        // Released: the index follows the new references.
        informer
            .apply(&json!({"type": "MODIFIED", "object": object("a", "p", "u1", Some("rs2"), 7)}));
        assert_eq!(informer.owned_by("rs1").len(), 1);
        assert_eq!(informer.owned_by("rs2").len(), 1);
        informer
            .apply(&json!({"type": "DELETED", "object": object("b", "p", "u2", Some("rs1"), 8)}));
        assert!(informer.owned_by("rs1").is_empty());
        assert!(informer.by_uid("u2").is_none());
        assert_eq!(informer.by_uid("u1").unwrap()["metadata"]["namespace"], "a");
        assert_eq!(
            *seen.lock().unwrap(),
            [(false, true), (false, true), (true, true), (true, false)]
        );
        assert_eq!(*informer.seen.borrow(), 8);
    }

    #[test]
    fn a_relist_reports_only_what_changed() {
        let informer = Informer::new("/api/v1/pods");
        informer.replace(&json!({"metadata": {"resourceVersion": "10"}, "items": [
            object("a", "keep", "u1", None, 3), object("a", "gone", "u2", None, 4)]}));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        informer.on_change(move |old, new| {
            let name =
                |v: Option<&Value>| v.map(|v| v["metadata"]["name"].as_str().unwrap().to_owned());
            log.lock().unwrap().push((name(old), name(new)));
        });
        seen.lock().unwrap().clear();
        informer.replace(&json!({"metadata": {"resourceVersion": "20"}, "items": [
            object("a", "keep", "u1", None, 3), object("a", "new", "u3", None, 15)]}));
        let mut changes = seen.lock().unwrap().clone();
        changes.sort();
        assert_eq!(
            changes,
            [
                (None, Some("new".to_owned())),
                (Some("gone".to_owned()), None)
            ]
        );
        assert!(informer.synced());
    }

    #[test]
    fn collection_paths_map_to_store_prefixes() {
        assert_eq!(store_prefix("/api/v1/pods").as_deref(), Some("/core/pods/"));
        assert_eq!(
            store_prefix("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
                .as_deref(),
            Some("/coordination.k8s.io/leases/kube-node-lease/")
        );
        assert_eq!(
            store_prefix("/apis/apps/v1/deployments").as_deref(),
            Some("/apps/deployments/")
        );
        assert_eq!(store_prefix("/apis/nope/v1/things"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_while_it_runs_runs_again_once() {
        let queue = Queue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await;
        assert_eq!(first, "a");
        queue.add("a");
        queue.add("a");
        assert_eq!(queue.len(), 1, "a waits until its run is done");
        queue.done("a");
        assert_eq!(queue.next().await, "b");
        queue.done("b");
        assert_eq!(queue.next().await, "a");
        queue.done("a");
        assert!(queue.is_empty());
        assert_eq!(queue.backoff("x"), Duration::from_millis(50));
        assert_eq!(queue.backoff("x"), Duration::from_millis(100));
        queue.forget("x");
        assert_eq!(queue.backoff("x"), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_version_ends_when_it_is_seen_or_times_out() {
        let informer = Informer::new("/api/v1/pods");
        assert!(!informer.wait_for(5, Duration::from_secs(1)).await);
        let waiter = {
            let informer = informer.clone();
            tokio::spawn(async move { informer.wait_for(5, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        informer.apply(&json!({"type": "ADDED", "object": object("a", "p", "u", None, 5)}));
        assert!(waiter.await.unwrap());
    }
}
