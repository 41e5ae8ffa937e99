//! A disk read from a stream (standard input): all data, size known only at the end.

use crate::sequential::{Segment, SequentialDisk};
use crate::{Extent, ExtentKind, IngestError};
use std::io::{ErrorKind, Read};

/// A disk whose bytes arrive on a stream. Every byte is data (zero runs are still found
/// by the chunker); the size is whatever the stream delivers.
pub struct StreamDisk<R: Read + Send> {
    reader: R,
    name: String,
    next: u64,
    done: bool,
    expected: Option<u64>,
}

impl<R: Read + Send> StreamDisk<R> {
    /// Wraps a stream; `name` appears in error messages ("stdin").
    pub fn new(reader: R, name: &str) -> Self {
        StreamDisk {
            reader,
            name: name.to_string(),
            next: 0,
            done: false,
            expected: None,
        }
    }

    /// Declares the stream's size: a stream that ends before it, or runs past it, is an
    /// error instead of a silently shorter or longer disk.
    pub fn with_expected_size(mut self, size: u64) -> Self {
        self.expected = Some(size);
        self
    }

    fn check_end(&self, total: u64) -> Result<(), IngestError> {
        if total == 0 && self.expected.is_none() {
            // An exporter that failed upstream leaves an empty pipe: never a disk.
            return Err(IngestError::Unsupported {
                path: self.name.clone().into(),
                reason: "the stream is empty (did the program writing it fail?); give \
                         --size 0 to store an empty disk on purpose"
                    .into(),
            });
        }
        match self.expected {
            Some(expected) if total != expected => Err(IngestError::Truncated {
                what: self.name.clone(),
                expected,
                got: total,
            }),
            _ => Ok(()),
        }
    }
}

impl<R: Read + Send> SequentialDisk for StreamDisk<R> {
    fn size_hint(&self) -> Option<u64> {
        self.expected
    }

    fn next_segment(
        &mut self,
        segment_size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Segment>, IngestError> {
        if self.done {
            return Ok(None);
        }
        buf.resize(segment_size, 0);
        let mut filled = 0;
        while filled < segment_size {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(IngestError::Read {
                        what: self.name.clone(),
                        offset: self.next + filled as u64,
                        source,
                    })
                }
            }
        }
        if let Some(expected) = self.expected {
            if self.next + filled as u64 > expected {
                return Err(IngestError::Read {
                    what: self.name.clone(),
                    offset: expected,
                    source: std::io::Error::other(format!(
                        "stream is longer than the declared size of {expected} bytes"
                    )),
                });
            }
        }
        if self.done {
            self.check_end(self.next + filled as u64)?;
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        let offset = self.next;
        self.next += filled as u64;
        Ok(Some(Segment {
            offset,
            len: filled as u64,
            extents: vec![Extent {
                offset,
                len: filled as u64,
                kind: ExtentKind::Data,
            }],
            data_start: 0,
        }))
    }

    fn format_name(&self) -> &'static str {
        "stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_cut_into_aligned_segments() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut s = StreamDisk::new(&data[..], "test");
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut offsets = Vec::new();
        while let Some(seg) = s.next_segment(4096, &mut buf).unwrap() {
            offsets.push(seg.offset);
            got.extend_from_slice(&buf);
        }
        assert_eq!(offsets, vec![0, 4096, 8192]);
        assert_eq!(got, data);
    }

    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("device gone"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn declared_size_catches_short_and_long_streams() {
        let data = vec![7u8; 10_000];
        let mut buf = Vec::new();
        let mut short = StreamDisk::new(&data[..], "stdin").with_expected_size(20_000);
        let mut res = Ok(None);
        for _ in 0..10 {
            res = short.next_segment(4096, &mut buf);
            if !matches!(res, Ok(Some(_))) {
                break;
            }
        }
        let err = res.unwrap_err();
        assert!(err.to_string().contains("ended early"), "{err}");
        let mut long = StreamDisk::new(&data[..], "stdin").with_expected_size(5000);
        long.next_segment(4096, &mut buf).unwrap();
        assert!(long.next_segment(4096, &mut buf).is_err());
        let mut exact = StreamDisk::new(&data[..], "stdin").with_expected_size(10_000);
        let mut n = 0;
        while exact.next_segment(4096, &mut buf).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn read_errors_carry_the_offset() {
        let mut s = StreamDisk::new(Failing(5000), "stdin");
        let mut buf = Vec::new();
        let err = s.next_segment(4096, &mut buf).unwrap();
        assert!(err.is_some());
        let err = s.next_segment(4096, &mut buf).unwrap_err();
        assert!(err.to_string().contains("offset 5000"), "{err}");
    }
}
