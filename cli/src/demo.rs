//! `vmvault demo`: placeholder replaced below.
use anyhow::Result;
use clap::Args;

/// Arguments of `vmvault demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {}

/// Runs the demo.
pub fn run(_cli: &crate::Cli, _a: &DemoArgs) -> Result<i32> {
    anyhow::bail!("demo not yet written")
}
