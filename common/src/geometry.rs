//! Chunk geometry: how an upload of `size` bytes is cut into chunks of `chunk_size`, and
//! which chunk size an upload gets. The server and the CLI must agree on every number here
//! (a chunk of the wrong length is refused), so both use this one module.
//!
//! Every chunk has exactly `chunk_size` bytes but the last, which holds the rest; an upload
//! of 0 bytes has no chunk at all.

use std::ops::Range;

use crate::api::ChunkSizeBounds;
use crate::ranges::{iter_ranges, IndexRanges};

const MIB: u64 = 1 << 20;

/// Number of chunks of an upload: `ceil(size / chunk_size)`; 0 for an empty upload (and
/// for a chunk size of 0, which no valid upload has).
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 {
        0
    } else {
        size.div_ceil(chunk_size)
    }
}

/// The shape of one upload: its size and chunk size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Total size in bytes.
    pub size: u64,
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u64,
}

impl Geometry {
    /// The geometry of an upload of `size` bytes in chunks of `chunk_size`.
    pub fn new(size: u64, chunk_size: u64) -> Self {
        Self { size, chunk_size }
    }

    /// Number of chunks.
    pub fn count(&self) -> u64 {
        chunk_count(self.size, self.chunk_size)
    }

    /// Byte offset where chunk `index` starts (saturating far past the end).
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(self.chunk_size)
    }

    /// Length of chunk `index`, or `None` when the upload has no such chunk.
    pub fn len(&self, index: u64) -> Option<u64> {
        (index < self.count()).then(|| (self.size - self.offset(index)).min(self.chunk_size))
    }

    /// Whether the upload has no chunk (0 bytes).
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Where chunk `index` ends (exclusive), clamped to the size.
    pub fn end(&self, index: u64) -> u64 {
        self.offset(index.saturating_add(1)).min(self.size)
    }

    /// The bytes of chunk `index`, or `None` when the upload has no such chunk.
    pub fn range(&self, index: u64) -> Option<Range<u64>> {
        self.len(index).map(|_| self.offset(index)..self.end(index))
    }

    /// Bytes covered by the first `chunks` chunks.
    pub fn prefix_bytes(&self, chunks: u64) -> u64 {
        self.offset(chunks).min(self.size)
    }

    /// Bytes held by a set of chunks (indexes past the end count for nothing).
    pub fn bytes_of(&self, chunks: &IndexRanges) -> u64 {
        iter_ranges(chunks).filter_map(|i| self.len(i)).sum()
    }
}

/// Why a chunk size cannot be used for an upload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// Outside the server's bounds.
    #[error("chunk_size {chunk_size} is outside the accepted range {min}..={max}")]
    OutOfBounds {
        /// The chunk size asked for.
        chunk_size: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// The upload would have more chunks than the server allows.
    #[error("{count} chunks of {chunk_size} bytes are more than the maximum of {max}; choose a larger chunk_size")]
    TooManyChunks {
        /// Chunks it would have.
        count: u64,
        /// The chunk size asked for.
        chunk_size: u64,
        /// Most chunks allowed.
        max: u64,
    },
}

/// The chunk size of an upload of `size` bytes when the client names none: the default,
/// grown in whole MiB until the chunk count fits `max_chunks`, within the bounds.
pub fn default_chunk_size(bounds: &ChunkSizeBounds, max_chunks: u64, size: u64) -> u64 {
    let needed = size
        .div_ceil(max_chunks.max(1))
        .div_ceil(MIB)
        .saturating_mul(MIB);
    needed.max(bounds.default).clamp(bounds.min, bounds.max)
}

/// Settles the chunk size of an upload of `size` bytes: the one `requested` if it is within
/// the bounds and gives at most `max_chunks` chunks, else the default rule.
pub fn choose_chunk_size(
    bounds: &ChunkSizeBounds,
    max_chunks: u64,
    size: u64,
    requested: Option<u64>,
) -> Result<u64, GeometryError> {
    let chunk_size = match requested {
        None => default_chunk_size(bounds, max_chunks, size),
        Some(c) if c < bounds.min || c > bounds.max => {
            return Err(GeometryError::OutOfBounds {
                chunk_size: c,
                min: bounds.min,
                max: bounds.max,
            })
        }
        Some(c) => c,
    };
    let count = chunk_count(size, chunk_size);
    if count > max_chunks {
        return Err(GeometryError::TooManyChunks {
            count,
            chunk_size,
            max: max_chunks,
        });
    }
    Ok(chunk_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = MIB;

    #[test]
    fn chunk_edges() {
        assert_eq!(chunk_count(0, C), 0);
        assert_eq!(chunk_count(1, C), 1);
        assert_eq!(chunk_count(3 * C, C), 3);
        assert_eq!(chunk_count(3 * C + 1, C), 4);
        assert_eq!(chunk_count(5, 0), 0);
        let g = Geometry::new(3 * C + 1, C);
        assert_eq!(g.len(2), Some(C));
        assert_eq!(g.len(3), Some(1));
        assert_eq!(g.len(4), None);
        assert_eq!(g.range(3), Some(3 * C..3 * C + 1));
        assert_eq!(g.end(3), 3 * C + 1);
        assert_eq!(g.end(99), 3 * C + 1);
        assert_eq!(g.offset(u64::MAX), u64::MAX);
        assert!(Geometry::new(0, C).is_empty());
        assert_eq!(Geometry::new(0, C).len(0), None);
        assert_eq!(g.prefix_bytes(2), 2 * C);
        assert_eq!(g.prefix_bytes(9), 3 * C + 1);
        assert_eq!(g.bytes_of(&vec![[0, 0], [3, 7]]), C + 1);
    }

    #[test]
    fn chunks_tile_the_file() {
        for (size, chunk) in [(5 * C + 7, C), (1, 64 << 10), (10 * C, 3 * C), (7, 7)] {
            let g = Geometry::new(size, chunk);
            let mut at = 0;
            for i in 0..g.count() {
                let r = g.range(i).unwrap();
                assert_eq!(r.start, at);
                assert!(r.end > r.start && r.end - r.start <= chunk);
                at = r.end;
            }
            assert_eq!(at, size);
        }
    }

    #[test]
    fn chunk_size_rules() {
        let b = ChunkSizeBounds {
            min: 64 << 10,
            max: 1 << 30,
            default: 8 * MIB,
        };
        assert_eq!(default_chunk_size(&b, 100_000, 0), 8 * MIB);
        assert_eq!(default_chunk_size(&b, 100_000, 1 << 40), 11 * MIB);
        assert_eq!(default_chunk_size(&b, 1, u64::MAX), 1 << 30);
        assert_eq!(choose_chunk_size(&b, 10, 100, Some(64 << 10)), Ok(64 << 10));
        assert_eq!(
            choose_chunk_size(&b, 10, 100, Some(1024)),
            Err(GeometryError::OutOfBounds {
                chunk_size: 1024,
                min: 64 << 10,
                max: 1 << 30
            })
        );
        assert!(matches!(
            choose_chunk_size(&b, 10, 11 * (64 << 10), Some(64 << 10)),
            Err(GeometryError::TooManyChunks { count: 11, .. })
        ));
        assert_eq!(choose_chunk_size(&b, 10, 100 * MIB, None), Ok(10 * MIB));
    }
}
