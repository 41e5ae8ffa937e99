//! Zero detection.

/// True when every byte of `buf` is zero. Scans in 256-byte steps with an OR-reduction
/// the compiler vectorises, and stops at the first non-zero step.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut steps = buf.chunks_exact(256);
    for step in &mut steps {
        if step.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    steps.remainder().iter().all(|&b| b == 0)
}
