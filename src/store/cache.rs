//! The watch-fed memory cache that serves the API's lists, gets and watches.
//!
//! It holds every API object as JSON with `metadata.resourceVersion` set from the store's
//! revision, plus a window of recent events. A watch resumes from any revision still in the
//! window; an older one is told it has expired, which the API answers with 410 Gone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use super::{Error, Event, EventKind, KeyValue, Revision, Store};

/// How many events the window keeps for resuming watches.
pub const WINDOW_EVENTS: usize = 10_000;

/// One change to a cached object, as watches receive it.
#[derive(Debug)]
pub struct CacheEvent {
    /// Created, updated or deleted.
    pub kind: EventKind,
    /// The store key.
    pub key: String,
    /// The object after the change (its last state for a deletion).
    pub object: Arc<Value>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Value>>,
    /// The revision of the change.
    pub revision: Revision,
}

/// A watch asked for a revision that has left the window.
#[derive(Debug, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    /// The revision asked for.
    pub requested: Revision,
    /// The oldest revision a watch can resume from.
    pub oldest: Revision,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Value>>,
    window: VecDeque<Arc<CacheEvent>>,
    /// Every event up to here has been applied.
    revision: Revision,
    /// Watches must start at or after this revision.
    oldest: Revision,
}

/// The memory cache in front of a [`Store`].
pub struct Cache {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    applied: watch::Sender<Revision>,
}

impl Cache {
    /// Loads everything from `store` and keeps following it until the store closes.
    ///
    /// # Errors
    /// What the store's first list or watch fails with.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, Error> {
        let (applied, _) = watch::channel(0);
        let cache = Arc::new(Self {
            store,
            state: RwLock::new(State::default()),
            applied,
        });
        let from = cache.relist().await?;
        let stream = cache.store.watch("/", from + 1).await?;
        let weak = Arc::downgrade(&cache);
        tokio::spawn(follow(weak, stream));
        Ok(cache)
    }

    async fn relist(&self) -> Result<Revision, Error> {
        let (kvs, revision) = self.store.list("/").await?;
        let mut objects = BTreeMap::new();
        for kv in kvs {
            if let Some(object) = decode(&kv) {
                objects.insert(kv.key, Arc::new(object));
            }
        }
        let mut state = self.state.write().map_err(|_| Error::Closed)?;
        *state = State {
            objects,
            window: VecDeque::new(),
            revision,
            oldest: revision,
        };
        drop(state);
        self.applied.send_replace(revision);
        Ok(revision)
    }

    fn apply(&self, event: Event) {
        let Some(object) = decode(&event.kv) else {
            return;
        };
        let object = Arc::new(object);
        let revision = event.kv.mod_revision;
        let Ok(mut state) = self.state.write() else {
            return;
        };
        if revision <= state.revision {
            return;
        }
        let prev = match event.kind {
            EventKind::Deleted => state.objects.remove(&event.kv.key),
            EventKind::Created | EventKind::Updated => {
                state.objects.insert(event.kv.key.clone(), object.clone())
            }
        };
        state.window.push_back(Arc::new(CacheEvent {
            kind: event.kind,
            key: event.kv.key,
            object,
            prev,
            revision,
        }));
        if state.window.len() > WINDOW_EVENTS
            && let Some(dropped) = state.window.pop_front()
        {
            state.oldest = dropped.revision;
        }
        state.revision = revision;
        drop(state);
        self.applied.send_replace(revision);
    }

    /// Waits until the cache has applied every write the store has acknowledged, so that a
    /// read after a write sees it.
    ///
    /// # Errors
    /// When the store cannot say its revision, or the cache has stopped.
    pub async fn sync(&self) -> Result<Revision, Error> {
        let target = self.store.current_revision().await?;
        self.wait_for(target).await?;
        Ok(target)
    }

    /// Waits until the cache has applied revision `target`.
    ///
    /// # Errors
    /// [`Error::Closed`] when the cache stops following the store.
    pub async fn wait_for(&self, target: Revision) -> Result<(), Error> {
        let mut rx = self.applied.subscribe();
        rx.wait_for(|r| *r >= target)
            .await
            .map(|_| ())
            .map_err(|_| Error::Closed)
    }

    /// The revision the cache has applied.
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.state.read().ok()?.objects.get(key).cloned()
    }

    /// The objects under `prefix` in key order, starting after `after` when given, at most
    /// `limit` of those that pass `keep`; and the revision they were read at.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> (Vec<(String, Arc<Value>)>, Revision, bool) {
        let Ok(state) = self.state.read() else {
            return (Vec::new(), 0, false);
        };
        let start = match after {
            Some(after) if after.starts_with(prefix) => std::ops::Bound::Excluded(after.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut out = Vec::new();
        let mut more = false;
        for (key, object) in state.objects.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if !keep(object) {
                continue;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                more = true;
                break;
            }
            out.push((key.clone(), object.clone()));
        }
        (out, state.revision, more)
    }

    /// Waits for the events after revision `after` and returns them, oldest first.
    ///
    /// # Errors
    /// [`Expired`] when `after` is older than the window.
    pub async fn events_after(&self, after: Revision) -> Result<Vec<Arc<CacheEvent>>, Expired> {
        let mut rx = self.applied.subscribe();
        loop {
            {
                let Ok(state) = self.state.read() else {
                    return Ok(Vec::new());
                };
                if after < state.oldest {
                    return Err(Expired {
                        requested: after,
                        oldest: state.oldest,
                    });
                }
                if state.revision > after {
                    let from = state.window.partition_point(|e| e.revision <= after);
                    return Ok(state.window.range(from..).cloned().collect());
                }
            }
            if rx.changed().await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Checks that a watch can resume from `after` now.
    ///
    /// # Errors
    /// [`Expired`] when `after` is older than the window.
    pub fn check_resumable(&self, after: Revision) -> Result<(), Expired> {
        match self.state.read() {
            Ok(state) if after < state.oldest => Err(Expired {
                requested: after,
                oldest: state.oldest,
            }),
            _ => Ok(()),
        }
    }

    /// The number of cached objects.
    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.objects.len()).unwrap_or(0)
    }

    /// Whether the cache holds no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store behind the cache, for writes.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

async fn follow(cache: std::sync::Weak<Cache>, mut stream: super::EventStream) {
    loop {
        match stream.next().await {
            Some(Ok(event)) => match cache.upgrade() {
                Some(cache) => cache.apply(event),
                None => return,
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "store watch failed; listing again");
                let Some(strong) = cache.upgrade() else {
                    return;
                };
                match strong.relist().await {
                    Ok(rev) => match strong.store.watch("/", rev + 1).await {
                        Ok(s) => stream = s,
                        Err(e) => {
                            tracing::error!(error = %e, "store watch could not restart");
                            return;
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "store list failed");
                        return;
                    }
                }
            }
            None => return,
        }
    }
}

/// Parses a stored object and sets its resourceVersion from the write's revision.
fn decode(kv: &KeyValue) -> Option<Value> {
    match serde_json::from_slice::<Value>(&kv.value) {
        Ok(mut object) => {
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(
                    "resourceVersion".into(),
                    Value::String(kv.mod_revision.to_string()),
                );
            }
            Some(object)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "stored object is not JSON; skipped");
            None
        }
    }
}
