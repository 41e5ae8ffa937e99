//! Chunker parameters as stored in the repository config (FORMAT.md section 11).

/// The parameters that decide where chunks are cut. Fixed at `init`: changing any of
/// them would stop deduplication against older snapshots. Serialised with these field
/// names in the repository config (FORMAT.md section 11).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    /// Size of the independent, aligned segments the disk is cut into.
    pub segment_size: u64,
    /// FastCDC minimum chunk size.
    pub min_size: u32,
    /// FastCDC average (target) chunk size.
    pub avg_size: u32,
    /// FastCDC maximum chunk size.
    pub max_size: u32,
    /// FastCDC normalization level, 0..=3.
    pub normalization: u8,
    /// Granularity of zero detection.
    pub zero_block: u32,
    /// Shortest zero run that becomes a zero extent instead of chunk data.
    pub zero_run_min: u32,
}

/// Largest chunk any reader accepts (FORMAT.md section 6).
pub const MAX_CHUNK: u32 = 16 << 20;

impl ChunkerParams {
    /// The defaults for new repositories, chosen by the measurement in ARCHITECTURE.md.
    pub fn default_v1() -> Self {
        Self::with_avg(128 << 10)
    }

    /// Defaults around a given average chunk size: min = avg/4, max = avg*4.
    pub fn with_avg(avg: u32) -> Self {
        ChunkerParams {
            segment_size: 4 << 20,
            min_size: avg / 4,
            avg_size: avg,
            max_size: avg * 4,
            normalization: 1,
            zero_block: 4096,
            zero_run_min: 64 << 10,
        }
    }

    /// Checks the invariants every reader relies on; parameters from a config file
    /// must pass this before a [`crate::Chunker`] is built from them.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let fail = |m: &str| Err(ParamsError(m.to_string()));
        let pow2 = |v: u64| v != 0 && v.is_power_of_two();
        if !pow2(u64::from(self.zero_block)) || !(512..=1 << 20).contains(&self.zero_block) {
            return fail("zero_block must be a power of two between 512 B and 1 MiB");
        }
        if !pow2(u64::from(self.avg_size)) || !(4096..=4 << 20).contains(&self.avg_size) {
            return fail("avg_size must be a power of two between 4 KiB and 4 MiB");
        }
        if self.min_size < 256 || self.min_size > self.avg_size || !self.min_size.is_multiple_of(2)
        {
            return fail("min_size must be even, at least 256 and at most avg_size");
        }
        if self.max_size < self.avg_size
            || self.max_size > MAX_CHUNK
            || !self.max_size.is_multiple_of(2)
        {
            return fail("max_size must be even, between avg_size and 16 MiB");
        }
        if self.normalization > 3 {
            return fail("normalization must be 0..=3");
        }
        if self.segment_size < u64::from(self.max_size)
            || self.segment_size > 1 << 30
            || !self.segment_size.is_multiple_of(u64::from(self.zero_block))
        {
            return fail(
                "segment_size must be a multiple of zero_block, at least max_size, at most 1 GiB",
            );
        }
        if self.zero_run_min < self.zero_block || !self.zero_run_min.is_multiple_of(self.zero_block)
        {
            return fail("zero_run_min must be a multiple of zero_block");
        }
        Ok(())
    }
}

/// Why a set of chunker parameters was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError(pub String);

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunker parameters: {}", self.0)
    }
}

impl std::error::Error for ParamsError {}
