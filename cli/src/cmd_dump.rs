//! `vmvault dump`: one guest file of a snapshot to standard output.

use crate::browse::{follow, Browser, GuestPath};
use crate::Cli;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use vmvault_ingest::guest::NodeKind;

/// Arguments of `vmvault dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id (a unique prefix) or 'latest'.
    pub snapshot: String,
    /// The file: DISK/PART/path (symlinks are followed inside the guest file system).
    pub path: String,
    /// With 'latest': the newest snapshot of this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

/// Bytes read from the guest per step.
const STEP: usize = 1 << 20;

/// Runs `vmvault dump`.
pub fn run(cli: &Cli, a: &DumpArgs) -> Result<i32> {
    let b = Browser::open(cli, &a.snapshot, a.vm.as_deref())?;
    let path = GuestPath::parse(&a.path)?;
    let (fs, inner) = b.resolve(&path)?;
    let (inner, meta) = follow(fs, &inner)?;
    if meta.kind != NodeKind::File {
        bail!("{}: not a regular file", path.display());
    }
    let mut file = fs.open(&inner)?;
    let len = file.len();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; STEP];
    let mut pos = 0u64;
    while pos < len {
        let n = file.read_at(pos, &mut buf)?;
        if n == 0 {
            bail!(
                "{}: the file ended at {pos} bytes, its size says {len}",
                path.display()
            );
        }
        out.write_all(&buf[..n])
            .context("cannot write to standard output")?;
        pos += n as u64;
    }
    out.flush().context("cannot write to standard output")?;
    let _ = cli;
    Ok(crate::exit::OK)
}
