//! Where a chunk's bytes live: the one chunk descriptor every source, writer, encoder and
//! decoder shares (formats/blob.md §2).

use crate::format::blob as format;
use crate::format::rafs_v6::ChunkRecord;

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
    /// Whether the stored bytes are encrypted (formats/blob.md §10).
    pub encrypted: bool,
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
    /// The 80-byte record describing this chunk at `file_offset` of a file (the v5 chunk
    /// record and the v6 chunk table entry, formats/rafs-v6.md §14).
    pub(crate) fn to_record(self, file_offset: u64) -> ChunkRecord {
        ChunkRecord {
            digest: self.digest,
            blob_index: self.blob_index.into(),
            flags: self.flags().into(),
            compressed_size: self.compressed_size.into(),
            uncompressed_size: self.uncompressed_size.into(),
            compressed_offset: self.compressed_offset.into(),
            uncompressed_offset: self.uncompressed_offset.into(),
            file_offset: file_offset.into(),
            index: self.index.into(),
            crc32: self.crc32.into(),
        }
    }

    /// The chunk an 80-byte record describes.
    pub(crate) fn from_record(r: &ChunkRecord) -> ChunkInfo {
        let flags = r.flags.get();
        ChunkInfo {
            digest: r.digest,
            crc32: r.crc32.get(),
            blob_index: r.blob_index.get(),
            index: r.index.get(),
            compressed: flags & format::CHUNK_FLAG_COMPRESSED != 0,
            has_crc32: flags & format::CHUNK_FLAG_HAS_CRC32 != 0,
            encrypted: flags & format::CHUNK_FLAG_ENCRYPTED != 0,
            compressed_offset: r.compressed_offset.get(),
            compressed_size: r.compressed_size.get(),
            uncompressed_offset: r.uncompressed_offset.get(),
            uncompressed_size: r.uncompressed_size.get(),
        }
    }

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
        } | if self.encrypted {
            format::CHUNK_FLAG_ENCRYPTED
        } else {
            0
        }
    }
}
