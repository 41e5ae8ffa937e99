//! Depth-first walks of a guest file system, in the order catalogs store: a directory
//! before its descendants, siblings in byte order of their names.

use super::{GuestError, GuestFs, NodeKind, NodeMeta, Result};

/// Bounds on a walk, so that a hostile file system (a directory that contains itself,
/// absurd fan-out) cannot make it run forever.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Entries visited at most; the walk stops with a problem beyond.
    pub max_entries: u64,
    /// Directory nesting followed at most.
    pub max_depth: usize,
    /// Longest path (bytes) followed.
    pub max_path: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_entries: 50_000_000,
            max_depth: 256,
            max_path: 4096,
        }
    }
}

/// What a walk met besides the entries it visited.
#[derive(Debug, Default)]
pub struct WalkReport {
    /// Entries visited.
    pub entries: u64,
    /// Directories that could not be read, and limits hit; the walk went on past each.
    pub problems: Vec<GuestError>,
}

/// Visits every entry under directory `start` (`""` for the root) of `fs`, depth first, a
/// directory before its descendants and siblings in byte order of their names; `visit`
/// gets each entry's path relative to the root (no leading `/`) and metadata. A directory
/// that cannot be read is reported in [`WalkReport::problems`] and skipped; an error
/// returned by `visit` stops the walk and is returned.
pub fn walk(
    fs: &dyn GuestFs,
    start: &str,
    limits: WalkLimits,
    visit: &mut dyn FnMut(&str, &NodeMeta) -> Result<()>,
) -> Result<WalkReport> {
    let mut report = WalkReport::default();
    let root = super::path_components(start)?.join("/");
    // Each frame: a directory's path and its remaining children, reversed (pop = next).
    let mut stack: Vec<(String, Vec<super::DirEntry>)> = Vec::new();
    match fs.read_dir(&root) {
        Ok(children) => stack.push((root, sorted(children))),
        Err(e) => return Err(e),
    }
    while let Some((dir, children)) = stack.last_mut() {
        let Some(child) = children.pop() else {
            stack.pop();
            continue;
        };
        let path = if dir.is_empty() {
            child.name.clone()
        } else {
            format!("{dir}/{}", child.name)
        };
        if report.entries >= limits.max_entries {
            report.problems.push(GuestError::corrupt(
                path,
                format!(
                    "more than {} entries: the walk stops here",
                    limits.max_entries
                ),
            ));
            break;
        }
        if path.len() > limits.max_path {
            report.problems.push(GuestError::corrupt(
                path,
                format!("path longer than {} bytes: skipped", limits.max_path),
            ));
            continue;
        }
        report.entries += 1;
        visit(&path, &child.meta)?;
        if child.meta.kind == NodeKind::Dir {
            if stack.len() >= limits.max_depth {
                report.problems.push(GuestError::corrupt(
                    path,
                    format!(
                        "directories nested deeper than {}: not followed",
                        limits.max_depth
                    ),
                ));
                continue;
            }
            match fs.read_dir(&path) {
                Ok(grand) => stack.push((path, sorted(grand))),
                Err(e) => report.problems.push(e),
            }
        }
    }
    Ok(report)
}

/// Sorts children by name bytes, reversed so that popping yields them in order; drops
/// duplicate names (a damaged directory), keeping the first.
fn sorted(mut children: Vec<super::DirEntry>) -> Vec<super::DirEntry> {
    children.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    children.dedup_by(|a, b| a.name == b.name);
    children.reverse();
    children
}
