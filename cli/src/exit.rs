//! Exit codes (documented in README.md, "Exit codes").

use vmvault_repo::RepoError;

/// Success.
pub const OK: i32 = 0;
/// Any failure not listed below.
pub const FAILURE: i32 = 1;
/// Bad command line.
pub const USAGE: i32 = 2;
/// `check` found damage.
pub const CHECK_FAILED: i32 = 3;
/// No repository at the given location.
pub const NO_REPOSITORY: i32 = 10;
/// The repository is locked by another operation.
pub const LOCKED: i32 = 11;
/// Wrong password.
pub const WRONG_PASSWORD: i32 = 12;
/// Interrupted by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: i32 = 130;

/// A command-line mistake detected after parsing (exit code [`USAGE`]).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Maps an error to its exit code by the repository error inside it, if any.
pub fn code_for(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some() {
        return USAGE;
    }
    match e.downcast_ref::<RepoError>() {
        Some(RepoError::NoRepository(_)) => NO_REPOSITORY,
        Some(RepoError::Locked(_)) => LOCKED,
        Some(RepoError::WrongPassword { .. }) => WRONG_PASSWORD,
        Some(RepoError::Interrupted) => INTERRUPTED,
        _ => FAILURE,
    }
}
