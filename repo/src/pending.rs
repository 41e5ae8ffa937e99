//! The set of chunk ids this run is storing but no index file lists yet.

use std::collections::HashSet;
use std::sync::Mutex;
use vmvault_chunker::ChunkId;

const SHARDS: usize = 64;

/// A concurrent set of chunk ids, sharded by the id's first byte to keep lock
/// contention low. Ids leave the set once an index file lists them, so its size is
/// bounded by one index file's worth of chunks, not by the backup or the repository.
pub struct PendingSet {
    shards: Vec<Mutex<HashSet<ChunkId>>>,
}

impl Default for PendingSet {
    fn default() -> Self {
        PendingSet {
            shards: (0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
        }
    }
}

impl PendingSet {
    fn shard(&self, id: &ChunkId) -> std::sync::MutexGuard<'_, HashSet<ChunkId>> {
        let m = &self.shards[id.0[0] as usize % SHARDS];
        // A poisoned shard only means another thread panicked mid-insert; the set
        // itself is still consistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts `id`; true if it was not there (the caller must then store the chunk).
    pub fn insert(&self, id: ChunkId) -> bool {
        self.shard(&id).insert(id)
    }

    /// Removes ids that an index file now lists.
    pub fn remove_all<'a>(&self, ids: impl Iterator<Item = &'a ChunkId>) {
        for id in ids {
            self.shard(id).remove(id);
        }
    }
}
