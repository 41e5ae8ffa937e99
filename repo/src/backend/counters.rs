//! Request accounting: what a command cost in storage requests and bytes moved.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals of the requests a backend made. Object stores count HTTP requests
/// (a listing counts one request per page of up to 1000 names, as S3 pages them);
/// the local directory counts the file operations that would be those requests.
#[derive(Default, Debug)]
pub struct RequestCounters {
    put: AtomicU64,
    get: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A copy of [`RequestCounters`] at one moment, for summaries and `--json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Objects written (multipart uploads count every part plus the start and the end).
    pub put: u64,
    /// Whole or ranged reads.
    pub get: u64,
    /// Listing pages.
    pub list: u64,
    /// Deletions.
    pub delete: u64,
    /// Bytes sent.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
}

/// Names in one page of an S3 listing.
pub const LIST_PAGE: u64 = 1000;

impl RequestCounters {
    /// Counts `n` PUT requests carrying `bytes`.
    pub fn put(&self, n: u64, bytes: u64) {
        self.put.fetch_add(n, Ordering::Relaxed);
        self.bytes_up.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one GET returning `bytes`.
    pub fn get(&self, bytes: u64) {
        self.get.fetch_add(1, Ordering::Relaxed);
        self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a listing that returned `names` names.
    pub fn list(&self, names: u64) {
        self.list
            .fetch_add(names.div_ceil(LIST_PAGE).max(1), Ordering::Relaxed);
    }

    /// Counts one DELETE.
    pub fn delete(&self) {
        self.delete.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

impl RequestCounts {
    /// All requests together.
    pub fn total(&self) -> u64 {
        self.put + self.get + self.list + self.delete
    }

    /// The requests made between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put.saturating_sub(earlier.put),
            get: self.get.saturating_sub(earlier.get),
            list: self.list.saturating_sub(earlier.list),
            delete: self.delete.saturating_sub(earlier.delete),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_counts_pages() {
        let c = RequestCounters::default();
        c.list(0);
        c.list(1000);
        c.list(1001);
        assert_eq!(c.snapshot().list, 1 + 1 + 2);
    }

    #[test]
    fn since_subtracts() {
        let c = RequestCounters::default();
        c.put(1, 10);
        let a = c.snapshot();
        c.put(2, 5);
        c.get(7);
        let d = c.snapshot().since(&a);
        assert_eq!((d.put, d.bytes_up, d.get, d.bytes_down), (2, 5, 1, 7));
        assert_eq!(d.total(), 3);
    }
}
