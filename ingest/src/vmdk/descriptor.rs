//! The VMDK text descriptor: parsing (pure, on text) and building.
//!
//! A descriptor is a list of lines: `key=value` settings (`createType`, `CID`,
//! `parentCID`, `parentFileNameHint`, `ddb.*`), comments (`#`) and extent lines
//! `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`, in the order the extents make up the disk.

/// Largest descriptor read (a file or an embedded one); larger is not a descriptor.
pub const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Most extent lines accepted in one descriptor.
pub const MAX_EXTENTS: usize = 4096;

/// The kind of data store an extent line names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentType {
    /// A flat file, from OFFSET sectors (`FLAT`, and ESXi's `VMFS` at offset 0).
    Flat,
    /// A hosted sparse file ("KDMV").
    Sparse,
    /// No file: reads as zeros.
    Zero,
    /// Any other type (`VMFSSPARSE`, `SESPARSE`, `VMFSRDM`, `VMFSRAW`, ...), by name.
    Other(String),
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// `NOACCESS`: the extent's content is not available.
    pub no_access: bool,
    /// Length of the extent in 512-byte sectors.
    pub sectors: u64,
    /// What kind of store.
    pub kind: ExtentType,
    /// The file it names, if any (relative to the descriptor).
    pub file: Option<String>,
    /// Offset in sectors into the file (flat extents).
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType`, unquoted.
    pub create_type: String,
    /// `CID` (hex).
    pub cid: Option<u32>,
    /// `parentCID` (hex); `ffffffff` means no parent.
    pub parent_cid: Option<u32>,
    /// `parentFileNameHint`: the parent of a delta disk.
    pub parent_hint: Option<String>,
    /// The extents, in disk order.
    pub extents: Vec<ExtentLine>,
}

/// Parses descriptor `text` (the part before the first NUL byte, so a padded embedded
/// descriptor works). Fails with a reason for a malformed extent line or when there is no
/// `createType`; unknown keys and the disk database are ignored.
pub fn parse(bytes: &[u8]) -> Result<Descriptor, String> {
    let bytes = match bytes.iter().position(|b| *b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    };
    let text = String::from_utf8_lossy(bytes);
    let mut d = Descriptor::default();
    let mut create_type = None;
    for (no, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") && !first_is_key(line) {
            if d.extents.len() >= MAX_EXTENTS {
                return Err(format!("more than {MAX_EXTENTS} extent lines"));
            }
            let e = parse_extent(line).map_err(|r| format!("line {}: {r}: {line:?}", no + 1))?;
            d.extents.push(e);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim() {
            "createType" => create_type = Some(value.to_string()),
            "CID" => d.cid = Some(parse_cid(value, no)?),
            "parentCID" => d.parent_cid = Some(parse_cid(value, no)?),
            "parentFileNameHint" if !value.is_empty() => {
                d.parent_hint = Some(value.to_string());
            }
            _ => {}
        }
    }
    d.create_type = create_type.ok_or("no createType line: not a VMDK descriptor")?;
    Ok(d)
}

/// A `RW=...` style line is a setting, not an extent.
fn first_is_key(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|w| w.contains('='))
        || line
            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
            .trim_start()
            .starts_with('=')
}

fn parse_cid(value: &str, no: usize) -> Result<u32, String> {
    u32::from_str_radix(value, 16).map_err(|_| format!("line {}: bad CID {value:?}", no + 1))
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Parses `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
fn parse_extent(line: &str) -> Result<ExtentLine, String> {
    let (access_word, rest) = split_word(line);
    let no_access = access_word == "NOACCESS";
    let (sectors, rest) = split_word(rest);
    let sectors: u64 = sectors
        .parse()
        .map_err(|_| format!("bad sector count {sectors:?}"))?;
    let (kind_word, rest) = split_word(rest);
    let kind = match kind_word {
        "FLAT" | "VMFS" => ExtentType::Flat,
        "SPARSE" => ExtentType::Sparse,
        "ZERO" => ExtentType::Zero,
        "" => return Err("no extent type".into()),
        other => ExtentType::Other(other.to_string()),
    };
    let rest = rest.trim_start();
    let (file, rest) = if let Some(q) = rest.strip_prefix('"') {
        let end = q.find('"').ok_or("unterminated file name")?;
        (Some(q[..end].to_string()), &q[end + 1..])
    } else if rest.is_empty() {
        (None, rest)
    } else {
        return Err("file name is not quoted".into());
    };
    let (off_word, tail) = split_word(rest);
    if !tail.trim().is_empty() {
        // Later fields (e.g. a partition UUID of a device extent) are not used.
        if !matches!(kind, ExtentType::Other(_)) {
            return Err("unexpected text after the offset".into());
        }
    }
    let offset = if off_word.is_empty() {
        0
    } else {
        off_word
            .parse()
            .map_err(|_| format!("bad offset {off_word:?}"))?
    };
    match (&kind, &file) {
        (ExtentType::Zero, _) => {}
        (_, None) => return Err("no file name".into()),
        (_, Some(f)) if f.is_empty() => return Err("empty file name".into()),
        _ => {}
    }
    if offset != 0 && !matches!(kind, ExtentType::Flat | ExtentType::Other(_)) {
        return Err("an offset is only allowed for FLAT extents".into());
    }
    Ok(ExtentLine {
        no_access,
        sectors,
        kind,
        file,
        offset,
    })
}

/// The first whitespace-separated word of `s` and the rest after it.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Builds the descriptor of a single-extent sparse disk of `sectors` sectors stored in
/// `file`, as embedded in the images [`super::create_writer`] writes (the CID is
/// derived from the size and name, so equal inputs give equal files).
pub fn embedded(create_type: &str, file: &str, sectors: u64) -> String {
    let cid = (sectors as u32) ^ 0x5a5a_0000 ^ (file.len() as u32);
    let heads = 16u64;
    let cylinders = (sectors / (heads * 63)).clamp(1, 16383);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{create_type}\"\n\
         \n\
         # Extent description\n\
         RW {sectors} SPARSE \"{file}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_and_vmware_descriptors() {
        let text = b"# Disk DescriptorFile\nversion=1\nCID=52b2a1f0\nparentCID=ffffffff\n\
            createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\n\
            RW 4194304 FLAT \"d-f001.vmdk\" 0\nRW 100 FLAT \"name with space.vmdk\" 7\n\
            RDONLY 8 ZERO\nRW 2048 SPARSE \"s.vmdk\"\n\nddb.adapterType = \"ide\"\n";
        let d = parse(text).unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentFlat");
        assert_eq!(d.cid, Some(0x52b2a1f0));
        assert_eq!(d.parent_cid, Some(0xffffffff));
        assert_eq!(d.extents.len(), 4);
        assert_eq!(d.extents[1].file.as_deref(), Some("name with space.vmdk"));
        assert_eq!(d.extents[1].offset, 7);
        assert_eq!(d.extents[2].kind, ExtentType::Zero);
        assert!(!d.extents[2].no_access);
        assert_eq!(d.extents[3].kind, ExtentType::Sparse);

        let delta = b"version=1\r\nCID=1\r\nparentCID=2\r\ncreateType=\"vmfsSparse\"\r\n\
            parentFileNameHint=\"base.vmdk\"\r\nRW 10 VMFSSPARSE \"d-delta.vmdk\"\r\n\0\0\0";
        let d = parse(delta).unwrap();
        assert_eq!(d.parent_hint.as_deref(), Some("base.vmdk"));
        assert_eq!(d.extents[0].kind, ExtentType::Other("VMFSSPARSE".into()));
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse(b"version=1\n").is_err());
        for bad in [
            "RW x FLAT \"a\" 0",
            "RW 5 FLAT a 0",
            "RW 5 FLAT \"a 0",
            "RW 5 SPARSE",
            "RW 5 SPARSE \"a\" 9",
            "RW 5 FLAT \"a\" 0 junk",
        ] {
            let text = format!("createType=\"custom\"\n{bad}\n");
            assert!(parse(text.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn built_descriptor_parses_back() {
        let d = parse(embedded("streamOptimized", "x.vmdk", 2048).as_bytes()).unwrap();
        assert_eq!(d.create_type, "streamOptimized");
        assert_eq!(d.extents[0].sectors, 2048);
        assert_eq!(d.extents[0].file.as_deref(), Some("x.vmdk"));
    }
}
