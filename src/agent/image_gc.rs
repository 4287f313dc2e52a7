//! Image garbage collection, as the kubelet's: when the data directory's filesystem is fuller
//! than the high threshold, images no running pod uses are removed, least recently used first,
//! until usage is at the low threshold. Images younger than the minimum age are spared (a pod
//! may be about to start from one).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Shared;

/// When to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Disk usage, in percent, at or above which images are collected.
    pub high: u8,
    /// Disk usage, in percent, collection brings the disk down to.
    pub low: u8,
    /// Images used or pulled more recently than this are kept.
    pub min_age: Duration,
}

impl Default for Policy {
    /// The kubelet's defaults: 85 %, 80 %, two minutes.
    fn default() -> Self {
        Self {
            high: 85,
            low: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// Content no image records (left by a failed pull or a crash) is removed once this old.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// How often the disk is checked besides after pulls and pod deletions (the kubelet's period).
const PERIOD: Duration = Duration::from_secs(300);

/// Bytes used and total on the filesystem holding `path`.
fn disk_usage(path: &std::path::Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let free = s.blocks_free() as u64 * frsize;
    Some((total.saturating_sub(free), total))
}

/// One collection pass. Returns the ids removed.
pub fn collect(shared: &Shared, policy: Policy) -> Vec<String> {
    let Some((used, total)) = disk_usage(&shared.data_dir) else {
        return Vec::new();
    };
    if total == 0 || u128::from(used) * 100 < u128::from(policy.high) * u128::from(total) {
        return Vec::new();
    }
    let target = used.saturating_sub(total / 100 * u64::from(policy.low));
    // No pull runs and no pod resolves an image while this holds.
    let _collecting = shared.image_lock.blocking_write();
    let store = &shared.images;
    let mut freed = store.sweep(ORPHAN_AGE);
    let in_use = shared.images_in_use();
    let index = store.index();
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for id in store.by_last_use() {
        if freed >= target && target > 0 {
            break;
        }
        let Some(record) = index.images.get(&id) else {
            continue;
        };
        let age = now
            .duration_since(store.last_used(&id, record))
            .unwrap_or_default();
        if in_use.contains(&id) || age < policy.min_age {
            continue;
        }
        match store.remove(&id) {
            Ok(bytes) => {
                freed += bytes;
                if !store.content_path(&record.wasm).exists() {
                    shared.runtime.forget(&record.wasm);
                }
                tracing::info!(image = %id, bytes, "image garbage collection removed an unused image");
                removed.push(id);
            }
            Err(e) => tracing::warn!(image = %id, error = %e, "image garbage collection failed"),
        }
    }
    if freed < target {
        tracing::warn!(
            wanted = target,
            freed,
            "image garbage collection could not free enough: the rest is in use or too recent"
        );
    }
    removed
}

/// Collects every [`PERIOD`], and whenever woken (after pulls and pod deletions).
pub async fn run(shared: Arc<Shared>, policy: Policy) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(PERIOD) => {}
            () = shared.gc_wake.notified() => {}
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || collect(&s, policy)).await;
    }
}
