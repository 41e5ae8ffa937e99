//! Building file catalogs at backup time: find the volumes of a disk, walk each browsable
//! file system, and encode its entries (FORMAT.md section 15).

use crate::format::catalog::CatalogEncoder;
use crate::format::snapshot::SnapshotCatalog;
use std::sync::Arc;
use vmvault_ingest::guest::volumes::{discover, open_fs, Layout};
use vmvault_ingest::guest::walk::{walk, WalkLimits};
use vmvault_ingest::guest::{GuestError, VolumeRead};

/// A disk to catalogue: its snapshot name and random access to its logical bytes.
pub struct CatalogSource {
    /// The disk's name in the snapshot.
    pub disk: String,
    /// Its bytes as the guest sees them.
    pub view: Arc<dyn VolumeRead>,
}

/// One volume found on a disk, with its encoded catalog if its file system was walked.
pub struct BuiltCatalog {
    /// The snapshot record, `manifest` still unset.
    pub record: SnapshotCatalog,
    /// The catalog stream, if there is one.
    pub bytes: Option<Vec<u8>>,
}

/// Problems quoted in a note, at most.
const NOTE_PROBLEMS: usize = 3;

fn note(problems: &[GuestError]) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let mut text: Vec<String> = problems
        .iter()
        .take(NOTE_PROBLEMS)
        .map(|p| p.to_string())
        .collect();
    if problems.len() > NOTE_PROBLEMS {
        text.push(format!("and {} more", problems.len() - NOTE_PROBLEMS));
    }
    Some(text.join("; "))
}

/// Finds the volumes of `source` and catalogues each browsable one. Never fails: what
/// cannot be read becomes a note on the volume (or, for the disk as a whole, an empty
/// list plus the returned problem text).
pub fn build_catalogs(source: &CatalogSource) -> (Vec<BuiltCatalog>, Option<String>) {
    let layout = match discover(source.view.clone()) {
        Ok(l) => l,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let Layout {
        volumes, problems, ..
    } = layout;
    let mut out = Vec::new();
    for v in volumes {
        let mut record = SnapshotCatalog {
            disk: source.disk.clone(),
            volume: v.name.clone(),
            content: v.content.name().to_string(),
            start: v.start,
            size: v.size,
            description: v.description.clone(),
            entries: 0,
            catalog_size: 0,
            manifest: None,
            note: None,
        };
        let mut bytes = None;
        if v.content.browsable() {
            match catalogue_volume(&v) {
                Ok((enc, problems)) => {
                    record.entries = enc.entries();
                    let b = enc.finish();
                    record.catalog_size = b.len() as u64;
                    bytes = Some(b);
                    record.note = note(&problems);
                }
                Err(e) => record.note = Some(e.to_string()),
            }
        } else {
            record.note = Some(match v.content.name() {
                "lvm2-pv" => "LVM physical volume: its logical volumes are listed".into(),
                "unknown" => "no file system recognised".into(),
                other => format!("{other}: not browsable"),
            });
        }
        out.push(BuiltCatalog { record, bytes });
    }
    (out, note(&problems))
}

fn catalogue_volume(
    v: &vmvault_ingest::guest::volumes::Volume,
) -> Result<(CatalogEncoder, Vec<GuestError>), GuestError> {
    let fs = open_fs(v.content, v.view.clone())?;
    let mut enc = CatalogEncoder::new();
    let mut skipped = Vec::new();
    let report = walk(&*fs, "", WalkLimits::default(), &mut |path, meta| {
        if !enc.push(path, meta) {
            skipped.push(GuestError::corrupt(
                format!("{}/{path}", v.view.name()),
                "path cannot be catalogued",
            ));
        }
        Ok(())
    })?;
    let mut problems = report.problems;
    problems.extend(skipped);
    Ok((enc, problems))
}

/// Opens the catalog of one volume of a snapshot for reading, entry by entry (every
/// chunk authenticated as it is fetched). `None` when the volume has no catalog.
pub fn read_catalog<'r>(
    repo: &'r crate::Repository,
    cache: &'r crate::cache::IndexCache,
    record: &SnapshotCatalog,
) -> crate::error::Result<
    Option<
        crate::format::catalog::CatalogDecoder<
            std::io::BufReader<crate::disk_reader::SnapshotStream<'r>>,
        >,
    >,
> {
    let Some(disk) = record.as_disk() else {
        return Ok(None);
    };
    let stream = crate::disk_reader::SnapshotStream::open(repo, cache, &disk)?;
    let dec = crate::format::catalog::CatalogDecoder::new(std::io::BufReader::with_capacity(
        1 << 20,
        stream,
    ))
    .map_err(|e| {
        crate::error::RepoError::Invalid(format!(
            "catalog of {}/{}: {e}",
            record.disk, record.volume
        ))
    })?;
    Ok(Some(dec))
}
