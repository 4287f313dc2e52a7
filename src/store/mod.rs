//! Durable, revisioned key-value storage for API objects, and watches over it.
//!
//! Every write gets the next value of one global revision, the way etcd numbers its writes;
//! an object's `resourceVersion` is the revision of its last write. Only the API server
//! touches a [`Store`]; it reads through the watch-fed [`cache::Cache`].

pub mod cache;
pub mod redb;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub use self::cache::Cache;
pub use self::redb::RedbStore;

/// A store revision: 0 before the first write, then one more for every write.
pub type Revision = u64;

/// One stored value and the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, such as `/core/pods/default/web`.
    pub key: String,
    /// The bytes stored, JSON for API objects.
    pub value: Bytes,
    /// The revision of the write that produced this value (for a deletion, the deletion's).
    pub mod_revision: Revision,
}

/// What a write did to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key did not exist before.
    Created,
    /// The key existed and got a new value.
    Updated,
    /// The key was removed; the event carries its last value.
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Created, updated or deleted.
    pub kind: EventKind,
    /// The new value (the last value for a deletion) with the write's revision.
    pub kv: KeyValue,
}

/// A stream of committed events in revision order.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A create found the key already present.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key is not present.
    #[error("key {0} not found")]
    NotFound(String),
    /// The key's revision is not the one the write expected.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key written.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The revision the key has.
        actual: Revision,
    },
    /// A watch asked for a revision older than the store still remembers.
    #[error("revision {requested} is too old; the oldest available is {oldest}")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision a watch can start from.
        oldest: Revision,
    },
    /// The database could not be opened or created.
    #[error("opening the store at {path}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// What the database said.
        #[source]
        source: ::redb::DatabaseError,
    },
    /// The backend failed while reading or writing.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
}

/// Durable storage with a global revision, optimistic concurrency and watch.
///
/// A write returns only after it is durable. Implementations must number writes with one
/// increasing revision and deliver watch events in that order, so that etcd can back it too.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error>;

    /// Lists every key under `prefix`, in key order, with the revision the list was read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), Error>;

    /// Creates a key that must not exist yet, returning the write's revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, Error>;

    /// Replaces a key's value. With `expected`, the key's current revision must equal it.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<Revision, Error>;

    /// Removes a key, returning its last value with the deletion's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error>;

    /// Streams every event under `prefix` whose revision is at least `from`.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `from` is older than the store can replay.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<EventStream, Error>;

    /// The revision of the latest durable write.
    async fn current_revision(&self) -> Result<Revision, Error>;
}
