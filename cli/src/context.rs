//! Opening the repository and its cache from the global options.

use crate::Cli;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use vmvault_repo::backend::{Backend, CachedBackend, LocalBackend, ObjectBackend};
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
    open_backend(repo, cache_root(cli).as_deref())
}

/// The backend for a repository location: a directory path, `file://PATH`, or an
/// object-store URL (`s3://bucket/prefix`, `gs://...`, `az://...`). Remote
/// repositories keep copies of their snapshot objects under `cache` when given.
pub fn open_backend(location: &str, cache: Option<&std::path::Path>) -> Result<Arc<dyn Backend>> {
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(Arc::new(LocalBackend::new(path)));
    }
    if !location.contains("://") {
        return Ok(Arc::new(LocalBackend::new(location)));
    }
    let store: Arc<dyn Backend> = Arc::new(ObjectBackend::from_url(location)?);
    Ok(match cache {
        Some(root) => Arc::new(CachedBackend::new(store, root)),
        None => store,
    })
}

/// A password given without a terminal: the first line of `file`, else `$env_var`.
/// `None` when neither is given; an empty one is an error.
fn given_password(file: Option<&std::path::Path>, env_var: &str) -> Result<Option<Vec<u8>>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read password file {}", f.display()))?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(Some(line.as_bytes().to_vec()));
    }
    if let Ok(p) = std::env::var(env_var) {
        if p.is_empty() {
            bail!("{env_var} is set but empty");
        }
        return Ok(Some(p.into_bytes()));
    }
    Ok(None)
}

/// A password typed at the terminal (twice when `confirm`); `how` says how to give one
/// when there is no terminal.
pub fn prompt_password(prompt: &str, confirm: bool, how: &str) -> Result<Vec<u8>> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("no {prompt} given: use {how}");
    }
    let p = rpassword::prompt_password(format!("{prompt}: "))?;
    if p.is_empty() {
        bail!("empty password");
    }
    if confirm && rpassword::prompt_password(format!("repeat {prompt}: "))? != p {
        bail!("passwords do not match");
    }
    Ok(p.into_bytes())
}

/// The password from --password-file, VMVAULT_PASSWORD or the terminal.
pub fn password(cli: &Cli, confirm: bool) -> Result<Vec<u8>> {
    match given_password(cli.password_file.as_deref(), "VMVAULT_PASSWORD")? {
        Some(p) => Ok(p),
        None => prompt_password(
            "repository password",
            confirm,
            "--password-file, VMVAULT_PASSWORD_FILE or VMVAULT_PASSWORD",
        ),
    }
}

/// A second password: from `file`, then `$env_var`, else the terminal's answer to
/// `prompt` (`how` says how to give one without a terminal).
pub fn new_password(
    file: Option<&std::path::Path>,
    env_var: &str,
    prompt: &str,
    how: &str,
) -> Result<Vec<u8>> {
    match given_password(file, env_var)? {
        Some(p) => Ok(p),
        None => prompt_password(prompt, true, how),
    }
}

/// A second repository's password: from `file`, then `$env_var` (the file is given by
/// clap from its own env var), else `fallback` (the main repository's password).
pub fn other_password(
    file: Option<&std::path::Path>,
    env_var: &str,
    fallback: Vec<u8>,
) -> Result<Vec<u8>> {
    Ok(given_password(file, env_var)?.unwrap_or(fallback))
}

/// Opens the repository named by the global options.
pub fn open(cli: &Cli) -> Result<Repository> {
    Ok(open_with_password(cli)?.0)
}

/// Opens the repository named by the global options; also returns the password, for a
/// second repository that shares it.
pub fn open_with_password(cli: &Cli) -> Result<(Repository, Vec<u8>)> {
    let backend = backend(cli)?;
    let location = backend.location();
    let pw = password(cli, false)?;
    let repo = Repository::open(backend, &pw)
        .with_context(|| format!("cannot open repository {location}"))?;
    Ok((repo, pw))
}

/// Takes a repository lock, waiting up to --retry-lock for a conflicting one to go.
pub fn lock(
    cli: &Cli,
    repo: &Repository,
    operation: &str,
    exclusive: bool,
) -> Result<vmvault_repo::lock::LockGuard> {
    vmvault_repo::lock::lock_with_retry(
        repo,
        operation,
        exclusive,
        cli.retry_lock.unwrap_or_default(),
    )
    .map_err(|e| anyhow!(e))
}

/// The cache directory: --cache-dir, VMVAULT_CACHE_DIR, XDG, or ~/.cache.
pub fn cache_root(cli: &Cli) -> Option<PathBuf> {
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

/// Arguments of `vmvault init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Make a mirror of this repository (path or URL): same keys and chunker, so `sync`
    /// copies packs verbatim, still encrypted.
    #[arg(long, value_name = "SRC")]
    pub mirror_of: Option<String>,
    /// The source repository's password file, for --mirror-of (default: the new
    /// repository's password).
    #[arg(long, env = "VMVAULT_MIRROR_PASSWORD_FILE")]
    pub mirror_password_file: Option<PathBuf>,
    /// zstd level for the repository's chunks, -7 (fastest) ..= 22 (smallest); fixed
    /// at init. Level 1 backs up ~25 % faster and stores ~3 % more than the default 3
    /// (docs/PERFORMANCE.md).
    #[arg(long, value_name = "N", default_value_t = vmvault_repo::repository::DEFAULT_COMPRESSION_LEVEL,
          allow_negative_numbers = true, conflicts_with = "mirror_of")]
    pub compression_level: i32,
}

/// `vmvault init`.
pub fn init(cli: &Cli, a: &InitArgs) -> Result<i32> {
    let backend = backend(cli)?;
    let location = backend.location();
    let pw = password(cli, true)?;
    let repo = match &a.mirror_of {
        None => Repository::init_with_level(
            backend,
            &pw,
            KdfParams::default_v1(),
            vmvault_chunker::ChunkerParams::default_v1(),
            a.compression_level,
        ),
        Some(src_location) => {
            let src_pw = other_password(
                a.mirror_password_file.as_deref(),
                "VMVAULT_MIRROR_PASSWORD",
                pw.clone(),
            )?;
            let src_backend = open_backend(src_location, None)?;
            let shown = src_backend.location();
            let src = Repository::open(src_backend, &src_pw)
                .with_context(|| format!("cannot open the repository to mirror, {shown}"))?;
            Repository::init_mirror(backend, &pw, KdfParams::default_v1(), &src)
        }
    }
    .with_context(|| format!("cannot create repository at {location}"))?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"id": repo.config().id, "location": location, "compression_level": repo.config().compression.level, "mirror_of": a.mirror_of.as_deref().map(vmvault_repo::backend::redact_url)})
        );
    } else if !cli.quiet {
        println!(
            "created vmvault repository {} at {location}",
            repo.config().id
        );
        if let Some(src) = &a.mirror_of {
            println!(
                "it is a mirror of {}: `vmvault -r {} sync --to {}` copies snapshots to it",
                vmvault_repo::backend::redact_url(src),
                vmvault_repo::backend::redact_url(src),
                location
            );
        }
        println!("keep the password safe: without it the data cannot be recovered");
    }
    Ok(crate::exit::OK)
}
