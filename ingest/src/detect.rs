//! Recognising an image's format from its magic bytes.

use std::fmt;
use std::str::FromStr;

/// The image formats vmvault reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A plain disk image or block device.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware: a text descriptor or a hosted sparse extent (monolithicSparse,
    /// streamOptimized), or an ESXi delta ("COWD").
    Vmdk,
    /// Microsoft Virtual PC / Hyper-V VHD (fixed, dynamic, differencing).
    Vhd,
    /// Hyper-V VHDX.
    Vhdx,
    /// XenServer / XCP-ng `xe vm-export` archive (a tar stream).
    Xva,
}

impl ImageFormat {
    /// Every format, in the order `--format` lists them.
    pub const ALL: [ImageFormat; 6] = [
        ImageFormat::Raw,
        ImageFormat::Qcow2,
        ImageFormat::Vmdk,
        ImageFormat::Vhd,
        ImageFormat::Vhdx,
        ImageFormat::Xva,
    ];

    /// The name used on the command line and in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Xva => "xva",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "vpc" => "vhd",
            "img" | "block" => "raw",
            other => other,
        };
        ImageFormat::ALL
            .into_iter()
            .find(|f| f.name() == alias)
            .ok_or_else(|| {
                let names: Vec<&str> = ImageFormat::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?} (known: {})", names.join(", "))
            })
    }
}

/// Bytes of the start of a file that [`detect`] looks at.
pub const DETECT_HEAD: usize = 1024;
/// Bytes of the end of a file that [`detect`] looks at (a VHD footer).
pub const DETECT_TAIL: usize = 512;

/// Guesses the format from the first [`DETECT_HEAD`] bytes of a file and its last
/// [`DETECT_TAIL`] bytes (either may be shorter for a small file). Anything unrecognised
/// is raw, which is also what a disk with no container looks like.
pub fn detect(head: &[u8], tail: &[u8]) -> ImageFormat {
    if head.starts_with(b"QFI\xfb") {
        return ImageFormat::Qcow2;
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") || is_vmdk_descriptor(head) {
        return ImageFormat::Vmdk;
    }
    if head.starts_with(b"vhdxfile") {
        return ImageFormat::Vhdx;
    }
    if head.starts_with(b"conectix") || tail.starts_with(b"conectix") {
        return ImageFormat::Vhd;
    }
    // Some old VHD writers leave a 511-byte footer.
    if tail.len() == DETECT_TAIL && tail[1..].starts_with(b"conectix") {
        return ImageFormat::Vhd;
    }
    if is_xva(head) {
        return ImageFormat::Xva;
    }
    ImageFormat::Raw
}

/// Containers vmvault does not read, recognised by their magic bytes so that they are
/// refused instead of being backed up as if their file bytes were the guest's disk.
/// Returns the container's name.
pub fn unsupported_container(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        return Some("VirtualBox VDI");
    }
    let table: [(&[u8], &str); 9] = [
        (b"QED\0", "QEMU QED"),
        (b"WithoutFreeSpace", "Parallels"),
        (b"WithouFreSpacExt", "Parallels"),
        (b"LUKS\xba\xbe", "LUKS-encrypted"),
        (b"\x1f\x8b", "gzip-compressed"),
        (b"\xfd7zXZ\0", "xz-compressed"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
        (b"BZh", "bzip2-compressed"),
        (b"QFI\xfb\0\0\0\x01", "qcow version 1"),
    ];
    table.into_iter().find(|(m, _)| at(0, m)).map(|(_, n)| n)
}

/// A VMDK text descriptor: the comment line VMware and qemu write, or a `version=` line
/// followed by `createType=` near the start, in a file that is plain text.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        // The head may cut a multi-byte character; look at the valid prefix.
        Err(e) => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(t) if e.valid_up_to() > 64 => t,
            _ => return false,
        },
    };
    text.contains("# Disk DescriptorFile")
        || (text.contains("createType=") && text.contains("version="))
}

/// A tar archive (ustar magic) whose first member is `ova.xml`, as `xe vm-export` writes.
fn is_xva(head: &[u8]) -> bool {
    head.len() >= 512 && &head[257..262] == b"ustar" && head.starts_with(b"ova.xml\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_are_recognised() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03", b""), ImageFormat::Qcow2);
        assert_eq!(detect(b"KDMV\x01\0\0\0", b""), ImageFormat::Vmdk);
        assert_eq!(
            detect(b"# Disk DescriptorFile\nversion=1\n", b""),
            ImageFormat::Vmdk
        );
        assert_eq!(detect(b"vhdxfile", b""), ImageFormat::Vhdx);
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        assert_eq!(detect(&[0u8; 1024], &tail), ImageFormat::Vhd);
        assert_eq!(detect(&[0u8; 1024], &[0u8; 512]), ImageFormat::Raw);
        let mut tar = vec![0u8; 1024];
        tar[..7].copy_from_slice(b"ova.xml");
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar, b""), ImageFormat::Xva);
    }

    #[test]
    fn unsupported_containers_are_named() {
        let mut vdi = vec![0u8; 512];
        vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(unsupported_container(&vdi), Some("VirtualBox VDI"));
        assert_eq!(unsupported_container(b"QED\0\0\0"), Some("QEMU QED"));
        assert_eq!(
            unsupported_container(b"\x1f\x8b\x08"),
            Some("gzip-compressed")
        );
        assert_eq!(unsupported_container(&[0u8; 512]), None);
        // A bzip2 magic that is only "BZh" plus text is still refused; a plain disk is not.
        assert_eq!(unsupported_container(b"\xeb\x3c\x90mkfs.fat"), None);
    }

    #[test]
    fn names_parse_back() {
        for f in ImageFormat::ALL {
            assert_eq!(f.name().parse::<ImageFormat>(), Ok(f));
        }
        assert_eq!("vpc".parse::<ImageFormat>(), Ok(ImageFormat::Vhd));
        assert!("iso".parse::<ImageFormat>().is_err());
    }
}
