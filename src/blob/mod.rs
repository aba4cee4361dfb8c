//! Data blobs: chunk data, blob meta, framing, blob cache files (formats/blob.md).

pub mod format;
pub mod inline;
pub mod reader;
pub mod writer;

pub use writer::{BlobSummary, BlobWriter, BlobWriterOptions};

/// Where one chunk's bytes live (formats/blob.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Digest of the uncompressed bytes.
    pub digest: [u8; 32],
    /// CRC-32C of the uncompressed bytes.
    pub crc32: u32,
    /// Whether `crc32` was computed (not for tarfs chunks).
    pub has_crc32: bool,
    /// Index of the blob in the bootstrap's blob table.
    pub blob_index: u32,
    /// Index of the chunk within its blob.
    pub index: u32,
    /// Whether the stored bytes are compressed.
    pub compressed: bool,
    /// Offset of the stored bytes in the blob file.
    pub compressed_offset: u64,
    /// Length of the stored bytes.
    pub compressed_size: u32,
    /// Offset in the virtual uncompressed blob (4 KiB aligned for v6).
    pub uncompressed_offset: u64,
    /// Length of the chunk's data.
    pub uncompressed_size: u32,
}

impl ChunkInfo {
    /// BlobChunkFlags of this chunk (formats/blob.md §8).
    pub fn flags(&self) -> u32 {
        (if self.has_crc32 {
            format::CHUNK_FLAG_HAS_CRC32
        } else {
            0
        }) | if self.compressed {
            format::CHUNK_FLAG_COMPRESSED
        } else {
            0
        }
    }
}
