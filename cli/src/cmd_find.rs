//! `vmvault find`: search the file catalogs of every snapshot.

use crate::browse::{kind_name, open_repo, time_text};
use crate::exit::UsageError;
use crate::Cli;
use anyhow::{anyhow, Result};
use clap::Args;
use vmvault_repo::catalog::read_catalog;

/// Arguments of `vmvault find`.
#[derive(Args, Debug)]
pub struct FindArgs {
    /// A shell pattern (`*`, `?`, `[a-z]`). Without a `/` it is matched against file
    /// names; with one, against the whole path inside the file system (`etc/*.conf`),
    /// where `*` also matches `/`.
    pub pattern: String,
    /// Only snapshots of this VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Only files modified after this time (RFC 3339, or YYYY-MM-DD, UTC).
    #[arg(long)]
    pub newer: Option<String>,
}

/// Runs `vmvault find`.
pub fn run(cli: &Cli, a: &FindArgs) -> Result<i32> {
    let newer = a.newer.as_deref().map(parse_date).transpose()?;
    let pattern: Vec<char> = a.pattern.chars().collect();
    let whole_path = a.pattern.contains('/');
    let (repo, cache, _lock) = open_repo(cli, "find")?;
    let (snaps, problems) = repo.list_snapshots().map_err(|e| anyhow!(e))?;
    for p in problems {
        eprintln!("vmvault: warning: {p}");
    }
    let mut hits = Vec::new();
    let mut without_catalog = 0;
    for (id, snap) in &snaps {
        if a.vm.as_ref().is_some_and(|vm| &snap.vm != vm) {
            continue;
        }
        if snap.catalogs.iter().all(|c| c.manifest.is_none()) {
            without_catalog += 1;
            continue;
        }
        for record in &snap.catalogs {
            let Some(dec) = read_catalog(repo, cache, record).map_err(|e| anyhow!(e))? else {
                continue;
            };
            for e in dec {
                let e = e.map_err(|e| {
                    anyhow!(
                        "snapshot {}: catalog of {}/{}: {e}",
                        &id[..12],
                        record.disk,
                        record.volume
                    )
                })?;
                if newer.is_some_and(|t| e.meta.mtime <= t) {
                    continue;
                }
                let subject = if whole_path {
                    e.path.as_str()
                } else {
                    e.path.rsplit('/').next().unwrap_or(&e.path)
                };
                let subject: Vec<char> = subject.chars().collect();
                if glob(&pattern, &subject) {
                    hits.push((id.clone(), snap, record, e));
                }
            }
        }
    }
    if cli.json {
        let out: Vec<_> = hits
            .iter()
            .map(|(id, snap, r, e)| {
                serde_json::json!({
                    "snapshot": id,
                    "vm": snap.vm,
                    "time": snap.time,
                    "path": format!("{}/{}/{}", r.disk, r.volume, e.path),
                    "type": kind_name(e.meta.kind),
                    "size": e.meta.size,
                    "mtime": time_text(e.meta.mtime),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
    } else {
        for (id, snap, r, e) in &hits {
            println!(
                "{}  {}  {:<12} {:>12}  {}  {}/{}/{}",
                &id[..12],
                &snap.time[..19.min(snap.time.len())],
                snap.vm,
                e.meta.size,
                time_text(e.meta.mtime),
                r.disk,
                r.volume,
                e.path
            );
        }
        if hits.is_empty() && !cli.quiet {
            eprintln!("no matches");
        }
    }
    if without_catalog > 0 && !cli.quiet {
        eprintln!(
            "vmvault: note: {without_catalog} snapshot(s) have no catalog and were not searched"
        );
    }
    Ok(if hits.is_empty() { 1 } else { crate::exit::OK })
}

/// Parses RFC 3339 or a plain date (midnight UTC) into Unix seconds.
fn parse_date(s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(s)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")))
        .map_err(|_| UsageError(format!("--newer {s:?}: expected YYYY-MM-DD or RFC 3339")))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| UsageError(format!("--newer {s:?}: before 1970")))?;
    Ok(d.as_secs() as i64)
}

/// Shell-style matching of the whole `s` against `p`: `*` any run, `?` one character,
/// `[...]` a class (`!` or `^` negates, `a-z` ranges), `\` escapes. Iterative, linear in
/// practice (backtracks only to the last `*`).
pub fn glob(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(p, pi, s[si]) {
                        if matched {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == '[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; `None` when the class is
/// not closed (then `[` is literal).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::glob;

    fn m(p: &str, s: &str) -> bool {
        glob(
            &p.chars().collect::<Vec<_>>(),
            &s.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn shell_patterns() {
        assert!(m("*.conf", "nginx.conf"));
        assert!(!m("*.conf", "nginx.conf.bak"));
        assert!(m("nginx.c?nf", "nginx.conf"));
        assert!(m("[a-c]*", "bash"));
        assert!(!m("[!a-c]*", "bash"));
        assert!(m("etc/*.conf", "etc/nginx/nginx.conf"));
        assert!(m("*", ""));
        assert!(!m("?", ""));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("[x", "[x"));
        assert!(m("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaa"));
    }
}
