//! Repository locks (FORMAT.md section 10).
//!
//! Shared locks (backup, restore, check, sync) exclude exclusive ones (forget, prune,
//! repair, key removal) and vice versa. Taking a lock is a put followed by a second look:
//! a process that finds a conflicting lock after writing its own removes its own and
//! tries again, so two processes can never both believe they hold conflicting locks (the
//! store must list what was written before the listing started; local directories and
//! S3 do). A held lock is refreshed (a new lock object, then the old one removed) every
//! [`REFRESH_INTERVAL`]; a lock not refreshed for [`STALE_AFTER`], or one of this host
//! whose process is gone, is stale and ignored.

use crate::backend::{Backend, FileKind};
use crate::crypto::MasterKeys;
use crate::error::{RepoError, Result};
use crate::format::lock::LockInfo;
use crate::format::sealed::KIND_LOCK;
use crate::repository::{hostname, io_err, now_rfc3339, object_name, Repository};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often a held lock is rewritten with a fresh time.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A lock older than this (not refreshed) belongs to a process that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// A lock found in the repository.
#[derive(Debug, Clone)]
pub struct FoundLock {
    /// Its object name.
    pub name: String,
    /// What it says.
    pub info: LockInfo,
    /// Why it is stale, if it is.
    pub stale: Option<String>,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Why a lock is stale (its process is gone, or it was not refreshed), or `None`.
fn staleness(info: &LockInfo, host: &str, now: SystemTime) -> Option<String> {
    if info.host == host && !pid_alive(info.pid) {
        return Some(format!("process {} no longer runs on this host", info.pid));
    }
    let age = humantime::parse_rfc3339(&info.time)
        .ok()
        .and_then(|t| now.duration_since(t).ok());
    match age {
        Some(a) if a > STALE_AFTER => Some(format!(
            "not refreshed for {}",
            humantime::format_duration(Duration::from_secs(a.as_secs()))
        )),
        _ => None,
    }
}

/// Every lock in the repository, with its state. Locks that vanish while being read
/// are left out; damaged ones are an error naming them.
pub fn list_locks(repo: &Repository) -> Result<Vec<FoundLock>> {
    let host = hostname();
    let now = SystemTime::now();
    let names = repo
        .backend()
        .list(FileKind::Lock)
        .map_err(|e| io_err(FileKind::Lock, "", e))?;
    let mut out = Vec::new();
    for (name, _) in names {
        let info = match repo
            .get_sealed(FileKind::Lock, KIND_LOCK, &name)
            .and_then(|p| {
                LockInfo::decode(&p).map_err(|e| RepoError::corrupt(FileKind::Lock, &name, e.0))
            }) {
            Ok(i) => i,
            Err(RepoError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let stale = staleness(&info, &host, now);
        out.push(FoundLock { name, info, stale });
    }
    Ok(out)
}

/// Removes stale locks; returns them.
pub fn remove_stale(repo: &Repository) -> Result<Vec<FoundLock>> {
    let mut removed = Vec::new();
    for l in list_locks(repo)? {
        if l.stale.is_some() {
            repo.backend()
                .remove(FileKind::Lock, &l.name)
                .map_err(|e| io_err(FileKind::Lock, &l.name, e))?;
            removed.push(l);
        }
    }
    Ok(removed)
}

/// The live lock that conflicts with taking `exclusive`, other than `own`.
fn conflict(repo: &Repository, exclusive: bool, own: Option<&str>) -> Result<Option<FoundLock>> {
    for l in list_locks(repo)? {
        if Some(l.name.as_str()) == own {
            continue;
        }
        if let Some(_why) = &l.stale {
            // Stale locks of this host's dead processes are cleaned up on the way; others
            // are left for `unlock` (their host may only be slow).
            if l.info.host == hostname() {
                let _ = repo.backend().remove(FileKind::Lock, &l.name);
            }
            continue;
        }
        if l.info.exclusive || exclusive {
            return Ok(Some(l));
        }
    }
    Ok(None)
}

fn describe(l: &FoundLock) -> String {
    format!(
        "{} lock held by {} (pid {} on {}, since {}); if that process is no longer running, \
         `vmvault unlock` removes it once it is stale (after {} without refresh), or delete \
         locks/{} in the repository",
        if l.info.exclusive {
            "an exclusive"
        } else {
            "a shared"
        },
        l.info.operation,
        l.info.pid,
        l.info.host,
        l.info.time,
        humantime::format_duration(STALE_AFTER),
        l.name
    )
}

fn write_lock(
    backend: &dyn Backend,
    keys: &MasterKeys,
    operation: &str,
    exclusive: bool,
) -> Result<String> {
    let info = LockInfo {
        version: 1,
        exclusive,
        operation: operation.to_string(),
        host: hostname(),
        pid: std::process::id(),
        time: now_rfc3339(),
    };
    let sealed = keys
        .seal(KIND_LOCK, &info.encode(), false)
        .map_err(|e| RepoError::Invalid(e.to_string()))?;
    let name = object_name(&sealed);
    backend
        .put(FileKind::Lock, &name, &sealed)
        .map_err(|e| io_err(FileKind::Lock, &name, e))?;
    Ok(name)
}

/// A lock held by this process: refreshed in the background, removed when dropped.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    name: Arc<Mutex<String>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    refresher: Option<std::thread::JoinHandle<()>>,
    health: LockHealth,
}

/// Whether a held lock still protects its holder: a cheap handle to check before a
/// commit point (writing a snapshot, deleting packs).
#[derive(Clone, Debug)]
pub struct LockHealth {
    /// Wall-clock time of the last successful write of the lock (wall clock, so a
    /// suspended machine sees the time it was away).
    refreshed: Arc<Mutex<SystemTime>>,
}

/// A lock older than this at a commit point may already look stale to others.
const SAFE_AGE: Duration = Duration::from_secs(25 * 60);

impl LockHealth {
    /// Fails when the lock was last written so long ago that another process may have
    /// judged it stale (the store was unreachable, or this machine was suspended): the
    /// caller must not commit, as a prune may have run meanwhile.
    pub fn check(&self) -> Result<()> {
        let at = *self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        if age > SAFE_AGE {
            return Err(RepoError::Locked(format!(
                "this process's lock was last refreshed {} ago, so others may have treated it as stale; stopping before committing anything",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )));
        }
        Ok(())
    }
}

impl LockGuard {
    /// A handle to check, before a commit point, that the lock still holds.
    pub fn health(&self) -> LockHealth {
        self.health.clone()
    }
}

/// Takes a shared or exclusive lock for `operation`, failing at once if a conflicting
/// live lock exists.
pub fn lock(repo: &Repository, operation: &str, exclusive: bool) -> Result<LockGuard> {
    lock_with_retry(repo, operation, exclusive, Duration::ZERO)
}

/// Takes a lock, waiting up to `retry_for` for conflicting locks to go away.
pub fn lock_with_retry(
    repo: &Repository,
    operation: &str,
    exclusive: bool,
    retry_for: Duration,
) -> Result<LockGuard> {
    let deadline = Instant::now() + retry_for;
    let mut wait = Duration::from_millis(200);
    let mut jitter = [0u8; 1];
    loop {
        let blocked = match conflict(repo, exclusive, None)? {
            Some(l) => Some(l),
            None => {
                let name = write_lock(repo.backend().as_ref(), repo.keys(), operation, exclusive)?;
                match conflict(repo, exclusive, Some(&name))? {
                    None => return Ok(start_guard(repo, name, operation, exclusive)),
                    Some(l) => {
                        // Someone else wrote a conflicting lock at the same time: step
                        // back and try again.
                        let _ = repo.backend().remove(FileKind::Lock, &name);
                        Some(l)
                    }
                }
            }
        };
        if let Some(l) = blocked {
            if Instant::now() >= deadline {
                return Err(RepoError::Locked(describe(&l)));
            }
        }
        let _ = crate::crypto::random_bytes(&mut jitter);
        let pause = wait + Duration::from_millis(u64::from(jitter[0]) * 2);
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

fn start_guard(repo: &Repository, name: String, operation: &str, exclusive: bool) -> LockGuard {
    let backend = repo.backend().clone();
    let keys = repo.keys().clone();
    let name = Arc::new(Mutex::new(name));
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let health = LockHealth {
        refreshed: Arc::new(Mutex::new(SystemTime::now())),
    };
    let (b, n, s, h) = (backend.clone(), name.clone(), stop.clone(), health.clone());
    let operation = operation.to_string();
    let refresher = std::thread::Builder::new()
        .name("vmvault-lock".into())
        .spawn(move || {
            let (flag, cvar) = &*s;
            let mut wait = REFRESH_INTERVAL;
            loop {
                {
                    let stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
                    // Checked before every wait: the guard may be dropped before this
                    // thread first waits, and a notification nobody waits for is lost.
                    if *stopped {
                        return;
                    }
                    let (stopped, _) = cvar
                        .wait_timeout(stopped, wait)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        return;
                    }
                    // The flag's lock is released here, before the network I/O below,
                    // so that dropping the guard never waits on a slow store.
                }
                match write_lock(b.as_ref(), &keys, &operation, exclusive) {
                    Ok(new) => {
                        *h.refreshed.lock().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
                        let old = std::mem::replace(
                            &mut *n.lock().unwrap_or_else(|e| e.into_inner()),
                            new,
                        );
                        let _ = b.remove(FileKind::Lock, &old);
                        wait = REFRESH_INTERVAL;
                    }
                    // Try again soon: others judge staleness by the lock's time.
                    Err(_) => wait = Duration::from_secs(30),
                }
            }
        })
        .ok();
    LockGuard {
        backend,
        name,
        stop,
        refresher,
        health,
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        {
            let (flag, cvar) = &*self.stop;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cvar.notify_all();
        }
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let name = self.name.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = self.backend.remove(FileKind::Lock, &name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, pid: u32, time: &str) -> LockInfo {
        LockInfo {
            version: 1,
            exclusive: false,
            operation: "backup".into(),
            host: host.into(),
            pid,
            time: time.into(),
        }
    }

    #[test]
    fn staleness_by_pid_and_age() {
        let now = SystemTime::now();
        let fresh = now_rfc3339();
        let me = hostname();
        assert!(staleness(&info(&me, std::process::id(), &fresh), &me, now).is_none());
        // A pid that cannot exist on this host.
        assert!(staleness(&info(&me, u32::MAX - 1, &fresh), &me, now).is_some());
        // Another host's lock is judged by its age only.
        assert!(staleness(&info("elsewhere", u32::MAX - 1, &fresh), &me, now).is_none());
        let old = humantime::format_rfc3339_micros(now - STALE_AFTER - Duration::from_secs(60))
            .to_string();
        assert!(staleness(&info("elsewhere", 1, &old), &me, now).is_some());
    }
}
