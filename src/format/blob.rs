//! On-disk structures of a data blob. Pure data; sections cite formats/blob.md.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Blob meta header magic, at both ends of the header (formats/blob.md §3.1).
pub const BLOB_META_MAGIC: u32 = 0xB10B_B10B;
/// Size of the blob meta header.
pub const BLOB_META_HEADER_SIZE: usize = 4096;
/// Size of a v1 chunk-info record (formats/blob.md §3.2).
pub const CHUNK_INFO_V1_SIZE: usize = 16;
/// Size of a framing tar header (formats/blob.md §4).
pub const TAR_HEADER_SIZE: usize = 512;

/// BlobFeatures: what a blob holds and how it is framed (formats/blob.md §8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BlobFeatures(pub u32);

impl BlobFeatures {
    /// No feature.
    pub const NONE: BlobFeatures = BlobFeatures(0);
    /// Uncompressed chunk offsets are 4 KiB aligned.
    pub const ALIGNED: BlobFeatures = BlobFeatures(0x1);
    /// The bootstrap is inlined in the blob.
    pub const INLINED_FS_META: BlobFeatures = BlobFeatures(0x2);
    /// Chunk-info records are v2 (24 bytes).
    pub const CHUNK_INFO_V2: BlobFeatures = BlobFeatures(0x4);
    /// Chunks live in a gzip stream, read through inflate contexts (formats/blob.md §11).
    pub const ZRAN: BlobFeatures = BlobFeatures(0x8);
    /// The blob meta is stored apart from the data (formats/blob.md §11).
    pub const SEPARATE: BlobFeatures = BlobFeatures(0x10);
    /// Chunk digest array present.
    pub const INLINED_CHUNK_DIGEST: BlobFeatures = BlobFeatures(0x20);
    /// Tar-tarfs blob.
    pub const TARFS: BlobFeatures = BlobFeatures(0x40);
    /// Small chunks are packed into batch chunks, located by a batch context table after the
    /// chunk-info records (formats/blob.md §3.4).
    pub const BATCH: BlobFeatures = BlobFeatures(0x80);
    /// Chunks, the chunk-info array and the blob-meta header are encrypted (formats/blob.md §10).
    pub const ENCRYPTED: BlobFeatures = BlobFeatures(0x100);
    /// The blob's data lives outside any blob file (upstream's external blobs; never written).
    pub const EXTERNAL: BlobFeatures = BlobFeatures(0x800);
    /// Sections are framed by tar headers.
    pub const HAS_TAR_HEADER: BlobFeatures = BlobFeatures(0x1000_0000);
    /// Table of contents present.
    pub const HAS_TOC: BlobFeatures = BlobFeatures(0x2000_0000);
    /// Written by a builder that knows tar framing; always set.
    pub const CAP_TAR_TOC: BlobFeatures = BlobFeatures(0x4000_0000);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: BlobFeatures) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits, as the blob table and the blob meta header store them.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Names of the bits set, for listings.
    pub fn names(self) -> Vec<&'static str> {
        feature_names(self.0)
    }

    /// The words upstream's `check` lists for the bits set, in its order (its
    /// `format_blob_features`): a text interface, kept apart from [`BlobFeatures::names`].
    pub fn upstream_words(self) -> Vec<&'static str> {
        const WORDS: [(u32, &str); 12] = [
            (0x1, "aligned"),
            (0x80, "batch"),
            (0x4000_0000, "cap_toc"),
            (0x20, "chunk-digest"),
            (0x4, "chunk-v2"),
            (0x2, "fs-meta"),
            (0x10, "separate"),
            (0x1000_0000, "tar-header"),
            (0x2000_0000, "toc"),
            (0x8, "zran"),
            (0x100, "encrypted"),
            (0x200, "is-chunkdict-generated"),
        ];
        WORDS
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::ops::BitOr for BlobFeatures {
    type Output = BlobFeatures;
    fn bitor(self, rhs: BlobFeatures) -> BlobFeatures {
        BlobFeatures(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for BlobFeatures {
    fn bitor_assign(&mut self, rhs: BlobFeatures) {
        self.0 |= rhs.0;
    }
}

/// Size of one ToC entry (formats/blob.md §9).
pub const TOC_ENTRY_SIZE: usize = 128;
/// ToC entry flag: the section is stored uncompressed.
pub const TOC_FLAG_NONE: u32 = 0x1;
/// ToC entry flag: the section is zstd-compressed.
pub const TOC_FLAG_ZSTD: u32 = 0x2;
/// ToC entry flag: the section is lz4_block-compressed.
pub const TOC_FLAG_LZ4_BLOCK: u32 = 0x4;
/// Tar name (and ToC entry name) of the ToC section, the last of a `blob-toc` blob.
pub const TOC_SECTION: &str = "rafs.blob.toc";
/// Tar name of the inlined bootstrap section.
pub const BOOT_SECTION: &str = "image.boot";

/// One ToC entry of a `--features blob-toc` blob: where a section lies and what it holds
/// (formats/blob.md §9).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct TocEntry {
    /// `TOC_FLAG_*`: how the section is compressed.
    pub flags: U32,
    /// Zero.
    pub reserved1: U32,
    /// Section name, NUL-padded.
    pub name: [u8; 16],
    /// sha256 of the section's uncompressed bytes.
    pub uncompressed_digest: [u8; 32],
    /// Offset of the stored section in the blob.
    pub compressed_offset: U64,
    /// Stored size.
    pub compressed_size: U64,
    /// Size once decompressed.
    pub uncompressed_size: U64,
    /// Zero.
    pub reserved2: [u8; 48],
}
const _: () = assert!(std::mem::size_of::<TocEntry>() == TOC_ENTRY_SIZE);

impl TocEntry {
    /// The name without its NUL padding.
    pub fn name(&self) -> &[u8] {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(16);
        &self.name[..end]
    }
}

/// BlobChunkFlags: stored bytes are compressed.
pub const CHUNK_FLAG_COMPRESSED: u32 = 0x01;
/// BlobChunkFlags: stored bytes are encrypted (formats/blob.md §10).
pub const CHUNK_FLAG_ENCRYPTED: u32 = 0x04;
/// BlobChunkFlags: the crc32 field is valid.
pub const CHUNK_FLAG_HAS_CRC32: u32 = 0x10;

/// Chunk-info v2 flag bits (formats/blob.md §3.3): their own numbering, not BlobChunkFlags.
pub mod ci_v2_flags {
    /// Stored compressed.
    pub const COMPRESSED: u8 = 0x01;
    /// Inside a batch: the data word holds the batch index and offset.
    pub const BATCH: u8 = 0x04;
    /// Stored encrypted.
    pub const ENCRYPTED: u8 = 0x08;
    /// The data word holds the chunk's crc32.
    pub const HAS_CRC32: u8 = 0x10;
}

/// Size of one batch (or zran) context (formats/blob.md §3.4).
pub const BATCH_CONTEXT_SIZE: usize = 40;

/// One batch context: where a batch of small chunks, compressed as one frame, is stored
/// (formats/blob.md §3.4). The table sits in the uncompressed chunk-info data at the header's
/// `ci_zran_offset`, `ci_zran_count` entries long.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BatchContext {
    /// Stored size of the whole batch; equal to `uncompressed_batch_size` when the batch did
    /// not compress and is stored raw.
    pub compressed_size: U32,
    /// Sum of the member chunks' sizes (no 4 KiB alignment inside a batch).
    pub uncompressed_batch_size: U32,
    /// Zeros.
    pub reserved: [u8; 32],
}
const _: () = assert!(size_of::<BatchContext>() == BATCH_CONTEXT_SIZE);

/// Blob meta header, 4096 bytes, right after the stored chunk-info array (formats/blob.md §3.1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BlobMetaHeader {
    /// Magic number identifying the structure.
    pub magic: U32,
    /// BlobFeatures bits (formats/blob.md §8).
    pub features: U32,
    /// Compression of the chunk-info array (algorithm code).
    pub ci_compressor: U32,
    /// Number of chunk-info records.
    pub ci_entries: U32,
    /// Offset of the chunk-info array in the blob.
    pub ci_offset: U64,
    /// Stored size of the chunk-info array.
    pub ci_compressed_size: U64,
    /// Size of the chunk-info array uncompressed.
    pub ci_uncompressed_size: U64,
    /// Offset of the zran context table (0: none).
    pub ci_zran_offset: U64,
    /// Size of the zran context table.
    pub ci_zran_size: U64,
    /// Number of zran contexts.
    pub ci_zran_count: U32,
    /// Reserved: zeros.
    pub reserved: [u8; 4032],
    /// The magic number again, closing the header.
    pub magic2: U32,
}
const _: () = assert!(size_of::<BlobMetaHeader>() == BLOB_META_HEADER_SIZE);

/// v1 chunk-info record, two packed words (formats/blob.md §3.2).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkInfoV1 {
    /// Uncompressed offset (bits 12-43, 4 KiB aligned) and size - 1 (bits 44-63, high bits
    /// 8-11) (formats/blob.md §3.2).
    pub uncomp_info: U64,
    /// Compressed offset (bits 0-39) and size - 1 (bits 44-63, high bits 40-43); the chunk is
    /// compressed exactly when the two sizes differ.
    pub comp_info: U64,
}
const _: () = assert!(size_of::<ChunkInfoV1>() == CHUNK_INFO_V1_SIZE);

/// Size of a v2 chunk-info record (formats/blob.md §3.3).
pub const CHUNK_INFO_V2_SIZE: usize = 24;

/// v2 chunk-info record, three packed words (formats/blob.md §3.3): encrypted, batch and zran
/// blobs.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkInfoV2 {
    /// Uncompressed offset >> 12 (bits 0-31), size - 1 (bits 32-55), [`ci_v2_flags`] (56-63).
    pub uncomp_info: U64,
    /// Compressed offset (bits 0-39) and size (bits 40-63, not minus one).
    pub comp_info: U64,
    /// crc32, or batch index (bits 32-63) and offset inside the batch (bits 0-31).
    pub data: U64,
}
const _: () = assert!(size_of::<ChunkInfoV2>() == CHUNK_INFO_V2_SIZE);

/// Smallest chunk size accepted (formats/blob.md §2).
pub const MIN_CHUNK_SIZE: u32 = 0x1000;
/// Largest chunk size accepted (formats/blob.md §2).
pub const MAX_CHUNK_SIZE: u32 = 0x100_0000;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;

/// Checks that a chunk size is a power of two within the allowed range.
pub fn validate_chunk_size(size: u32) -> crate::Result<()> {
    if !size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        return Err(crate::Error::InvalidOption(format!(
            "chunk size {size:#x} must be a power of two between {MIN_CHUNK_SIZE:#x} and {MAX_CHUNK_SIZE:#x}"
        )));
    }
    Ok(())
}

/// Names of BlobFeatures bits, for listings.
fn feature_names(bits: u32) -> Vec<&'static str> {
    const NAMES: [(u32, &str); 13] = [
        (0x1, "aligned"),
        (0x2, "inlined_fs_meta"),
        (0x4, "chunk_info_v2"),
        (0x8, "zran"),
        (0x10, "separate"),
        (0x20, "inlined_chunk_digest"),
        (0x40, "tarfs"),
        (0x80, "batch"),
        (0x100, "encrypted"),
        (0x800, "external"),
        (0x1000_0000, "has_tar_header"),
        (0x2000_0000, "has_toc"),
        (0x4000_0000, "cap_tar_toc"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect()
}
