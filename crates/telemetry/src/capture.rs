//! Bounded body capture: counts every byte that passes, keeps at most `limit` of them.

/// Capture limit used when a caller passes 0 (the Go original treated a non-positive limit as 64 KiB).
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 * 1024;

/// The first `limit` bytes of a body plus the total byte count.
///
/// Memory is bounded by `limit`: bytes past it are counted and dropped, and `truncated` is set
/// as soon as one byte is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    kept: Vec<u8>,
    limit: usize,
    total: u64,
    truncated: bool,
}

impl Capture {
    /// An empty capture that keeps at most `limit` bytes (0 means [`DEFAULT_CAPTURE_LIMIT`]).
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 {
            DEFAULT_CAPTURE_LIMIT
        } else {
            limit
        };
        Self {
            kept: Vec::new(),
            limit,
            total: 0,
            truncated: false,
        }
    }

    /// A capture holding `bytes` as if they had streamed through a capture of `limit`.
    pub fn from_bytes(limit: usize, bytes: &[u8]) -> Self {
        let mut capture = Self::new(limit);
        capture.push(bytes);
        capture
    }

    /// Records a chunk that passed through the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.total = self.total.saturating_add(chunk.len() as u64);
        let room = self.limit - self.kept.len();
        if chunk.len() > room {
            self.truncated = true;
        }
        let take = chunk.len().min(room);
        if take > 0 {
            // Grow geometrically up to the limit instead of reserving the whole limit up front:
            // most bodies are far smaller than the limit.
            self.kept.extend_from_slice(&chunk[..take]);
        }
    }

    /// The kept bytes (at most `limit`).
    pub fn bytes(&self) -> &[u8] {
        &self.kept
    }

    /// Every byte counted, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True once at least one byte was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_everything_keeps_limit() {
        let mut c = Capture::new(4);
        c.push(b"ab");
        assert!(!c.truncated());
        c.push(b"cd");
        assert!(!c.truncated());
        assert_eq!(c.bytes(), b"abcd");
        c.push(b"e");
        assert!(c.truncated());
        c.push(b"fgh");
        assert_eq!(c.bytes(), b"abcd");
        assert_eq!(c.total(), 8);
    }

    #[test]
    fn zero_limit_means_default() {
        assert_eq!(Capture::new(0).limit(), DEFAULT_CAPTURE_LIMIT);
    }
}
