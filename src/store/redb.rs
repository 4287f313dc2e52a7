//! The embedded backend: one redb file, with concurrent writes batched into group commits.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Error, Event, EventKind, EventStream, KeyValue, Revision, Store};

const OBJECTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// The most writes one commit takes; more wait for the next one.
const MAX_BATCH: usize = 2048;
/// How many recent events a new watch can replay.
const REPLAY_WINDOW: usize = 8192;
/// redb's page cache; the API server keeps its own object cache, so this stays small.
const CACHE_BYTES: usize = 16 << 20;

enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

enum Outcome {
    Written(Revision),
    Deleted(KeyValue),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// Recent events and the watches that want new ones.
struct Hub {
    ring: VecDeque<Event>,
    last: Revision,
    subscribers: Vec<(String, mpsc::UnboundedSender<Result<Event, Error>>)>,
}

impl Hub {
    fn publish(&mut self, events: Vec<Event>) {
        for event in events {
            self.last = event.kv.mod_revision;
            self.subscribers.retain(|(prefix, tx)| {
                !event.kv.key.starts_with(prefix.as_str()) || tx.send(Ok(event.clone())).is_ok()
            });
            if self.ring.len() == REPLAY_WINDOW {
                self.ring.pop_front();
            }
            self.ring.push_back(event);
        }
    }
}

/// A [`Store`] in one redb file.
///
/// A single writer thread takes every write that is waiting, applies them in one transaction
/// and commits it durably, so many concurrent writers share one fsync.
pub struct RedbStore {
    db: Arc<Database>,
    writer: Mutex<Option<std_mpsc::Sender<Request>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    revision: Arc<AtomicU64>,
    hub: Arc<Mutex<Hub>>,
    repaired: bool,
    path: PathBuf,
}

/// Creates an empty database at `path` all at once: it is made under another name and renamed
/// into place, so a process killed while creating it leaves no half-written file that the next
/// start would refuse as "not a redb database".
fn create_whole(path: &Path) -> Result<(), ::redb::DatabaseError> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".creating");
    let partial = path.with_file_name(name);
    let io = |e: std::io::Error| ::redb::DatabaseError::Storage(::redb::StorageError::Io(e));
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    drop(Database::create(&partial)?);
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

impl RedbStore {
    /// Opens the database at `path`, creating it when missing.
    ///
    /// # Errors
    /// [`Error::Open`] when the file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            create_whole(path).map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        }
        let repaired = Arc::new(AtomicBool::new(false));
        let flag = repaired.clone();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(move |_| flag.store(true, Ordering::Relaxed))
            .create(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        let revision = {
            // Quick repair here too: a process killed right after opening must not leave a
            // last commit that makes the next open repair the whole file.
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_quick_repair(true);
            let revision = {
                txn.open_table(OBJECTS).map_err(backend)?;
                let meta = txn.open_table(META).map_err(backend)?;
                meta.get(REVISION_KEY)
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0)
            };
            txn.commit().map_err(backend)?;
            revision
        };
        let db = Arc::new(db);
        let revision = Arc::new(AtomicU64::new(revision));
        let hub = Arc::new(Mutex::new(Hub {
            ring: VecDeque::new(),
            last: revision.load(Ordering::Acquire),
            subscribers: Vec::new(),
        }));
        let (tx, rx) = std_mpsc::channel();
        let writer_thread = {
            let (db, revision, hub) = (db.clone(), revision.clone(), hub.clone());
            std::thread::Builder::new()
                .name("wk-store-writer".into())
                .spawn(move || write_loop(&db, &revision, &hub, &rx))
                .map_err(|e| Error::Backend(format!("starting the writer thread: {e}")))?
        };
        Ok(Self {
            db,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
            revision,
            hub,
            repaired: repaired.load(Ordering::Relaxed),
            path: path.to_owned(),
        })
    }

    /// Whether opening the file needed a repair (it does not after a crash: commits are
    /// two-phase with quick repair).
    pub fn repaired_on_open(&self) -> bool {
        self.repaired
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after the writes already queued, and waits for it.
    pub fn close(&self) {
        drop(self.writer.lock().map(|mut w| w.take()));
        let handle = self.writer_thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    async fn submit(&self, op: Op) -> Result<Outcome, Error> {
        let (reply, rx) = oneshot::channel();
        {
            let writer = self.writer.lock().map_err(|_| Error::Closed)?;
            writer
                .as_ref()
                .ok_or(Error::Closed)?
                .send(Request { op, reply })
                .map_err(|_| Error::Closed)?;
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Error::Backend(format!("read task failed: {e}")))?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn write_loop(
    db: &Database,
    revision: &AtomicU64,
    hub: &Mutex<Hub>,
    rx: &std_mpsc::Receiver<Request>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        match commit(db, revision.load(Ordering::Acquire), ops) {
            Ok((outcomes, events, last)) => {
                revision.store(last, Ordering::Release);
                if let Ok(mut hub) = hub.lock() {
                    hub.publish(events);
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for reply in replies {
                    let _ = reply.send(Err(Error::Backend(e.to_string())));
                }
            }
        }
    }
}

type Committed = (Vec<Result<Outcome, Error>>, Vec<Event>, Revision);

/// Applies a batch in one durable transaction; each op succeeds or fails on its own.
fn commit(db: &Database, mut rev: Revision, ops: Vec<Op>) -> Result<Committed, Error> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_quick_repair(true);
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut events = Vec::with_capacity(ops.len());
    {
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        for op in ops {
            let key = match &op {
                Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => {
                    key.clone()
                }
            };
            let current = objects.get(key.as_str()).map_err(backend)?.map(|v| {
                let (r, bytes) = v.value();
                (r, Bytes::copy_from_slice(bytes))
            });
            let outcome = match (op, current) {
                (Op::Create { .. }, Some(_)) => Err(Error::AlreadyExists(key)),
                (Op::Update { .. } | Op::Delete { .. }, None) => Err(Error::NotFound(key)),
                (
                    Op::Update {
                        expected: Some(e), ..
                    }
                    | Op::Delete {
                        expected: Some(e), ..
                    },
                    Some((actual, _)),
                ) if e != actual => Err(Error::Conflict {
                    key,
                    expected: e,
                    actual,
                }),
                (Op::Create { value, .. } | Op::Update { value, .. }, current) => {
                    rev += 1;
                    objects
                        .insert(key.as_str(), (rev, value.as_ref()))
                        .map_err(backend)?;
                    let kind = if current.is_some() {
                        EventKind::Updated
                    } else {
                        EventKind::Created
                    };
                    events.push(Event {
                        kind,
                        kv: KeyValue {
                            key,
                            value,
                            mod_revision: rev,
                        },
                    });
                    Ok(Outcome::Written(rev))
                }
                (Op::Delete { .. }, Some((_, last))) => {
                    rev += 1;
                    objects.remove(key.as_str()).map_err(backend)?;
                    let kv = KeyValue {
                        key,
                        value: last,
                        mod_revision: rev,
                    };
                    events.push(Event {
                        kind: EventKind::Deleted,
                        kv: kv.clone(),
                    });
                    Ok(Outcome::Deleted(kv))
                }
            };
            outcomes.push(outcome);
        }
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(REVISION_KEY, rev).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok((outcomes, events, rev))
}

fn read_kv(key: &str, v: (u64, &[u8])) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(v.1),
        mod_revision: v.0,
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let key = key.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            Ok(objects
                .get(key.as_str())
                .map_err(backend)?
                .map(|v| read_kv(&key, v.value())))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), Error> {
        let prefix = prefix.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let revision = meta
                .get(REVISION_KEY)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut out = Vec::new();
            for entry in objects.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push(read_kv(k.value(), v.value()));
            }
            Ok((out, revision))
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, Error> {
        match self
            .submit(Op::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            Outcome::Written(rev) => Ok(rev),
            Outcome::Deleted(kv) => Ok(kv.mod_revision),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<Revision, Error> {
        match self
            .submit(Op::Update {
                key: key.to_owned(),
                value,
                expected,
            })
            .await?
        {
            Outcome::Written(rev) => Ok(rev),
            Outcome::Deleted(kv) => Ok(kv.mod_revision),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error> {
        match self
            .submit(Op::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            Outcome::Deleted(kv) => Ok(kv),
            Outcome::Written(rev) => Err(Error::Backend(format!(
                "delete of {key} answered a write at {rev}"
            ))),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<EventStream, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut hub = self.hub.lock().map_err(|_| Error::Closed)?;
        if from <= hub.last {
            let oldest = hub.ring.front().map_or(hub.last + 1, |e| e.kv.mod_revision);
            if from < oldest {
                return Err(Error::Compacted {
                    requested: from,
                    oldest,
                });
            }
            for event in hub
                .ring
                .iter()
                .filter(|e| e.kv.mod_revision >= from && e.kv.key.starts_with(prefix))
            {
                let _ = tx.send(Ok(event.clone()));
            }
        }
        hub.subscribers.push((prefix.to_owned(), tx));
        Ok(Box::pin(tokio_stream_from(rx)))
    }

    async fn current_revision(&self) -> Result<Revision, Error> {
        Ok(self.revision.load(Ordering::Acquire))
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
