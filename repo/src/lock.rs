//! Repository locks (FORMAT.md section 10).

use crate::backend::FileKind;
use crate::error::{RepoError, Result};
use crate::format::lock::LockInfo;
use crate::format::sealed::KIND_LOCK;
use crate::repository::{hostname, now_rfc3339, Repository};

/// A lock held by this process; removed when dropped.
pub struct LockGuard<'r> {
    repo: &'r Repository,
    name: String,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes a shared or exclusive lock for `operation`, after checking that no conflicting
/// live lock exists. Stale locks of this host (dead pid) are removed on the way.
pub fn lock<'r>(repo: &'r Repository, operation: &str, exclusive: bool) -> Result<LockGuard<'r>> {
    let host = hostname();
    let names = repo
        .backend()
        .list(FileKind::Lock)
        .map_err(|e| crate::repository::io_err(FileKind::Lock, "", e))?;
    for (name, _) in names {
        let info = match repo
            .get_sealed(FileKind::Lock, KIND_LOCK, &name)
            .and_then(|p| {
                LockInfo::decode(&p).map_err(|e| RepoError::corrupt(FileKind::Lock, &name, e.0))
            }) {
            Ok(i) => i,
            // A lock removed while we listed it is simply gone.
            Err(RepoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if info.host == host && !pid_alive(info.pid) {
            let _ = repo.backend().remove(FileKind::Lock, &name);
            continue;
        }
        if info.exclusive || exclusive {
            return Err(RepoError::Locked(format!(
                "{} lock held by {} (pid {} on {}, since {}); if that process is no longer running, delete locks/{name} in the repository",
                if info.exclusive { "an exclusive" } else { "a shared" },
                info.operation,
                info.pid,
                info.host,
                info.time
            )));
        }
    }
    let info = LockInfo {
        version: 1,
        exclusive,
        operation: operation.to_string(),
        host,
        pid: std::process::id(),
        time: now_rfc3339(),
    };
    let name = repo.put_sealed(FileKind::Lock, KIND_LOCK, &info.encode())?;
    Ok(LockGuard { repo, name })
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.repo.backend().remove(FileKind::Lock, &self.name);
    }
}
