//! Finding a differencing disk's parent: the parent locators (Windows relative and
//! absolute paths, Mac file URLs) and the header's parent name, tried in that order,
//! with the parent's unique id checked against the one the child records.

use super::format::{self, DynamicHeader, ParentLocator, FOOTER_SIZE};
use super::FORMAT;
use crate::image_file::{read_checked, ReadAt};
use crate::open::FileResolver;
use crate::{DiskSource, IngestError};
use std::path::PathBuf;

/// Longest parent locator data read (a Windows path of 32767 UTF-16 units).
const MAX_LOCATOR: u32 = 65536;

/// Decodes one locator's data into a path, or `None` for platforms vmvault does not use
/// (Mac OS aliases, the deprecated Wi2r/Wi2k) or undecodable data.
pub fn decode_locator(platform: &[u8; 4], data: &[u8]) -> Option<String> {
    let path = match platform {
        b"W2ru" | b"W2ku" => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16(&units).ok()?.replace('\\', "/")
        }
        b"MacX" => {
            let text = std::str::from_utf8(data).ok()?.trim_end_matches('\0');
            let rest = text.strip_prefix("file://")?;
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            percent_decode(rest)?
        }
        _ => return None,
    };
    (!path.is_empty()).then_some(path)
}

/// Decodes `%xx` escapes of a file URL's path.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The references to try for the parent, best first, without duplicates: relative
/// locators, absolute ones, Mac URLs, the header's parent name, then the bare file names
/// of all of those (next to the child), for chains moved from another machine.
pub fn candidates(file: &dyn ReadAt, header: &DynamicHeader) -> Vec<String> {
    let read = |l: &ParentLocator| -> Option<String> {
        if l.data_length > MAX_LOCATOR {
            return None;
        }
        let data = read_checked(
            file,
            FORMAT,
            "parent locator",
            l.data_offset,
            u64::from(l.data_length),
        )
        .ok()?;
        decode_locator(&l.platform, &data)
    };
    let mut out: Vec<String> = Vec::new();
    let add = |c: String, out: &mut Vec<String>| {
        if !c.is_empty() && !out.contains(&c) {
            out.push(c);
        }
    };
    for platform in [b"W2ru", b"W2ku", b"MacX"] {
        for l in header.locators.iter().filter(|l| &l.platform == platform) {
            if let Some(p) = read(l) {
                add(p, &mut out);
            }
        }
    }
    add(header.parent_name.replace('\\', "/"), &mut out);
    let names: Vec<String> = out
        .iter()
        .filter_map(|c| c.rsplit('/').next().map(str::to_string))
        .collect();
    for n in names {
        add(n, &mut out);
    }
    out
}

/// Opens the parent of the differencing disk `file` through `resolver`. A candidate that
/// cannot be found is skipped; one whose unique id differs from the child's record is
/// skipped too, and that mismatch is the error if no candidate fits. Other errors (a
/// damaged parent, a loop) are returned as they are.
pub fn open_parent(
    file: &dyn ReadAt,
    header: &DynamicHeader,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    let child = file.name();
    let tried = candidates(file, header);
    if tried.is_empty() {
        return Err(IngestError::Corrupt {
            what: child.to_string(),
            format: FORMAT,
            offset: 0,
            reason: "differencing disk without a usable parent locator or parent name".into(),
        });
    }
    let mut first_err: Option<IngestError> = None;
    for reference in &tried {
        match resolver.open_parent(child, reference, None) {
            Ok(parent) => match check_unique_id(child, reference, header, resolver) {
                Ok(()) => return Ok(parent),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            },
            Err(e @ (IngestError::Open { .. } | IngestError::Unsupported { .. })) => {
                first_err.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    let first = first_err.map_or_else(String::new, |e| e.to_string());
    Err(IngestError::Unsupported {
        path: PathBuf::from(child),
        reason: format!(
            "parent disk not found (tried {}); first failure: {first}",
            tried.join(", ")
        ),
    })
}

/// Compares the unique id in the footer of the file `reference` names with the one the
/// child's header records. Passes when the child records none, or when the file cannot be
/// opened or holds no VHD footer (then the parent was given some other way, or is not
/// a VHD, and there is nothing to compare).
fn check_unique_id(
    child: &str,
    reference: &str,
    header: &DynamicHeader,
    resolver: &mut dyn FileResolver,
) -> Result<(), IngestError> {
    if header.parent_unique_id == [0; 16] {
        return Ok(());
    }
    let Ok(parent_file) = resolver.open_file(child, reference) else {
        return Ok(());
    };
    let Some(footer) = parent_footer(parent_file.as_ref()) else {
        return Ok(());
    };
    if footer.unique_id == header.parent_unique_id {
        return Ok(());
    }
    Err(IngestError::Unsupported {
        path: PathBuf::from(child),
        reason: format!(
            "parent {reference} has unique id {} but the differencing disk was made from \
             {}: wrong parent, or the parent changed",
            hex(&footer.unique_id),
            hex(&header.parent_unique_id)
        ),
    })
}

/// The parent's footer: the end copy, else the copy at offset 0.
fn parent_footer(f: &dyn ReadAt) -> Option<format::Footer> {
    let len = f.len();
    let mut b = [0u8; FOOTER_SIZE];
    let end = len
        .checked_sub(FOOTER_SIZE as u64)
        .and_then(|at| f.read_exact_at(at, &mut b).ok())
        .and_then(|()| format::parse_footer(&b).ok());
    end.or_else(|| {
        f.read_exact_at(0, &mut b).ok()?;
        format::parse_footer(&b).ok()
    })
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_decode() {
        let utf16le: Vec<u8> = ".\\base.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(
            decode_locator(b"W2ru", &utf16le).as_deref(),
            Some("./base.vhd")
        );
        assert_eq!(
            decode_locator(b"MacX", b"file://localhost/a%20b/base.vhd\0").as_deref(),
            Some("/a b/base.vhd")
        );
        assert_eq!(decode_locator(b"Mac ", b"xx"), None);
        assert_eq!(decode_locator(b"MacX", b"file://%zz"), None);
    }
}
