//! Opening the repository and its cache from the global options.

use crate::Cli;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use vmvault_repo::backend::{Backend, LocalBackend};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::format::keyfile::KdfParams;
use vmvault_repo::Repository;

/// The backend for `--repo`.
pub fn backend(cli: &Cli) -> Result<Arc<dyn Backend>> {
    let Some(repo) = cli.repo.as_deref() else {
        return Err(crate::exit::UsageError(
            "no repository given: use -r/--repo or set VMVAULT_REPOSITORY".into(),
        )
        .into());
    };
    let path = repo.strip_prefix("file://").unwrap_or(repo);
    if path.contains("://") {
        bail!("repository URL {repo:?}: only local directories are supported by this version");
    }
    Ok(Arc::new(LocalBackend::new(path)))
}

/// The password from --password-file, VMVAULT_PASSWORD or the terminal.
pub fn password(cli: &Cli, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = &cli.password_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read password file {}", f.display()))?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(line.as_bytes().to_vec());
    }
    if let Ok(p) = std::env::var("VMVAULT_PASSWORD") {
        if p.is_empty() {
            bail!("VMVAULT_PASSWORD is set but empty");
        }
        return Ok(p.into_bytes());
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("no password given: use --password-file, VMVAULT_PASSWORD_FILE or VMVAULT_PASSWORD");
    }
    let p = rpassword::prompt_password("repository password: ")?;
    if p.is_empty() {
        bail!("empty password");
    }
    if confirm && rpassword::prompt_password("repeat password: ")? != p {
        bail!("passwords do not match");
    }
    Ok(p.into_bytes())
}

/// Opens the repository named by the global options.
pub fn open(cli: &Cli) -> Result<Repository> {
    let backend = backend(cli)?;
    let location = backend.location();
    let pw = password(cli, false)?;
    Repository::open(backend, &pw).with_context(|| format!("cannot open repository {location}"))
}

/// The cache directory: --cache-dir, VMVAULT_CACHE_DIR, XDG, or ~/.cache.
fn cache_root(cli: &Cli) -> Option<PathBuf> {
    if cli.no_cache {
        return None;
    }
    if let Some(d) = &cli.cache_dir {
        return Some(d.clone());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("vmvault"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("vmvault"))
}

/// Opens (and updates) the local index cache, printing any warnings.
pub fn cache(cli: &Cli, repo: &Repository) -> Result<IndexCache> {
    let root = cache_root(cli);
    let (cache, warnings) = IndexCache::open(root.as_deref(), repo)
        .map_err(|e| anyhow!(e))
        .context("cannot open the local cache")?;
    for w in warnings {
        eprintln!("vmvault: warning: {w}");
    }
    Ok(cache)
}

/// `vmvault init`.
pub fn init(cli: &Cli) -> Result<i32> {
    let backend = backend(cli)?;
    let location = backend.location();
    let pw = password(cli, true)?;
    let repo = Repository::init(
        backend,
        &pw,
        KdfParams::default_v1(),
        vmvault_chunker::ChunkerParams::default_v1(),
    )
    .with_context(|| format!("cannot create repository at {location}"))?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"id": repo.config().id, "location": location})
        );
    } else if !cli.quiet {
        println!(
            "created vmvault repository {} at {location}",
            repo.config().id
        );
        println!("keep the password safe: without it the data cannot be recovered");
    }
    Ok(crate::exit::OK)
}
