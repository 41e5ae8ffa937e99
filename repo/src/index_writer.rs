//! Writing index files in batches, for the commands that index packs after the fact
//! (sync, prune, repair).

use crate::backend::FileKind;
use crate::cache::IndexCache;
use crate::error::Result;
use crate::format::index::{encode_index, IndexPack};
use crate::format::sealed::KIND_INDEX;
use crate::repository::Repository;

/// Index entries per index file.
pub const INDEX_FLUSH_ENTRIES: usize = 100_000;

/// Gathers index records and writes an index file every [`INDEX_FLUSH_ENTRIES`] entries
/// and on [`IndexWriter::flush`]. Only records of packs already stored may be added.
pub struct IndexWriter<'a> {
    repo: &'a Repository,
    cache: Option<&'a IndexCache>,
    batch: Vec<IndexPack>,
    entries: usize,
    /// Names of the index files written so far.
    pub written: Vec<String>,
}

impl<'a> IndexWriter<'a> {
    /// A writer into `repo`, also recording each index file in `cache` when given.
    pub fn new(repo: &'a Repository, cache: Option<&'a IndexCache>) -> Self {
        IndexWriter {
            repo,
            cache,
            batch: Vec::new(),
            entries: 0,
            written: Vec::new(),
        }
    }

    /// Adds one pack's record, writing an index file when the batch is full.
    pub fn add(&mut self, record: IndexPack) -> Result<()> {
        self.entries += record.entries.len();
        self.batch.push(record);
        if self.entries >= INDEX_FLUSH_ENTRIES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is gathered (nothing if empty).
    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let name = self.repo.put_sealed(
            FileKind::Index,
            KIND_INDEX,
            &encode_index(&self.batch, self.repo.config().pack_version()),
        )?;
        if let Some(c) = self.cache {
            c.add_index(&name, &self.batch)?;
        }
        self.batch.clear();
        self.entries = 0;
        self.written.push(name);
        Ok(())
    }
}
