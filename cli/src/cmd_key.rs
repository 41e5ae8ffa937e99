//! `vmvault key list|add|remove|passwd`: the passwords that open the repository.

use crate::{context, Cli};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use vmvault_repo::format::keyfile::KdfParams;

/// Arguments of `vmvault key`.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
    /// The new password's file, for add and passwd (else VMVAULT_NEW_PASSWORD, or a prompt).
    #[arg(long, global = true, env = "VMVAULT_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// What to do with keys.
#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// List key files (the one this password opened is marked).
    List,
    /// Add a password.
    Add,
    /// Remove a key file (by id prefix); the last one cannot be removed.
    Remove {
        /// Key id (a unique prefix).
        id: String,
    },
    /// Change this password: adds a key file for the new one, removes the current one.
    Passwd,
}

fn new_password(a: &KeyArgs) -> Result<Vec<u8>> {
    context::new_password(
        a.new_password_file.as_deref(),
        "VMVAULT_NEW_PASSWORD",
        "new password",
        "--new-password-file, VMVAULT_NEW_PASSWORD_FILE or VMVAULT_NEW_PASSWORD",
    )
}

/// Runs `vmvault key ...`.
pub fn run(cli: &Cli, a: &KeyArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    match &a.action {
        KeyAction::List => {
            let keys = repo.list_keys().map_err(|e| anyhow!(e))?;
            if cli.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(name, k)| match k {
                        Ok(k) => serde_json::json!({
                            "id": name, "created": k.created, "host": k.host,
                            "current": name == repo.key_name(),
                        }),
                        Err(e) => serde_json::json!({"id": name, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("  ID            CREATED               HOST");
                for (name, k) in &keys {
                    let mark = if name == repo.key_name() { "*" } else { " " };
                    match k {
                        Ok(k) => println!(
                            "{mark} {}  {:<20}  {}",
                            &name[..12],
                            k.created.get(..19).unwrap_or(&k.created).replace('T', " "),
                            k.host
                        ),
                        Err(e) => println!("{mark} {}  damaged: {e}", &name[..12]),
                    }
                }
            }
        }
        KeyAction::Add => {
            let pw = new_password(a)?;
            let _lock = context::lock(cli, &repo, "key add", false)?;
            let name = repo
                .add_key(&pw, KdfParams::default_v1())
                .map_err(|e| anyhow!(e))?;
            if cli.json {
                println!("{}", serde_json::json!({"added": name}));
            } else if !cli.quiet {
                println!("added key {}", &name[..12]);
            }
        }
        KeyAction::Remove { id } => {
            let keys = repo.list_keys().map_err(|e| anyhow!(e))?;
            let hits: Vec<&String> = keys
                .iter()
                .map(|(n, _)| n)
                .filter(|n| n.starts_with(&id.to_ascii_lowercase()))
                .collect();
            let name = match hits.as_slice() {
                [one] => (*one).clone(),
                [] => bail!("no key file matches {id:?}"),
                _ => bail!("{id:?} matches {} key files; give more digits", hits.len()),
            };
            if name == repo.key_name() {
                bail!("refusing to remove the key this password opened; use `key passwd` to change it, or open with another password");
            }
            let _lock = context::lock(cli, &repo, "key remove", true)?;
            repo.remove_key(&name).map_err(|e| anyhow!(e))?;
            if cli.json {
                println!("{}", serde_json::json!({"removed": name}));
            } else if !cli.quiet {
                println!("removed key {}", &name[..12]);
            }
        }
        KeyAction::Passwd => {
            let pw = new_password(a)?;
            let _lock = context::lock(cli, &repo, "key passwd", true)?;
            let added = repo
                .add_key(&pw, KdfParams::default_v1())
                .map_err(|e| anyhow!(e))?;
            repo.remove_key(repo.key_name()).map_err(|e| anyhow!(e))?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"added": added, "removed": repo.key_name()})
                );
            } else if !cli.quiet {
                println!(
                    "password changed: key {} replaces {}",
                    &added[..12],
                    &repo.key_name()[..12]
                );
            }
        }
    }
    Ok(crate::exit::OK)
}
