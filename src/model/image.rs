//! A decoded bootstrap: the tree, its chunks and its blob table, as every reader sees it.

use super::chunk::ChunkInfo;
use super::tree::Tree;
use crate::codec::{Compressor, Digester};

/// A blob as a bootstrap describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Blob id (file name in a blob directory).
    pub id: String,
    /// Chunks the blob holds.
    pub chunk_count: u32,
    /// Chunk compression.
    pub compressor: Compressor,
    /// Chunk digest.
    pub digester: Digester,
    /// BlobFeatures bits.
    pub features: u32,
    /// Compressed size (the blob file, or where an inlined bootstrap starts).
    pub compressed_size: u64,
    /// Size of the uncompressed view.
    pub uncompressed_size: u64,
    /// Chunk-info array location (v6).
    pub ci_offset: u64,
    /// Stored size of the chunk-info array.
    pub ci_compressed_size: u64,
    /// Size of the chunk-info array uncompressed.
    pub ci_uncompressed_size: u64,
    /// Compression of the chunk-info array.
    pub ci_compressor: u32,
    /// Block address in a flattened disk image (v6 device table).
    pub mapped_blkaddr: u32,
}

/// A decoded bootstrap: the tree, where its chunks are, and the image-wide settings.
#[derive(Debug, Clone)]
pub struct Image {
    /// RAFS version, 5 or 6.
    pub version: u32,
    /// The filesystem tree; regular files reference `chunks` by id.
    pub tree: Tree,
    /// Every chunk referenced by a file.
    pub chunks: Vec<ChunkInfo>,
    /// Whether each chunk's digest is known (false for v6 chunks found only by index).
    pub digest_known: Vec<bool>,
    /// The blob table.
    pub blobs: Vec<BlobInfo>,
    /// Chunk size.
    pub chunk_size: u32,
    /// RafsSuperFlags.
    pub flags: u64,
    /// Compression named by the superblock.
    pub compressor: Compressor,
    /// Digest named by the superblock.
    pub digester: Digester,
    /// Metadata block size (v6: 4096, or 512 for tarfs; v5: 0).
    pub block_size: u32,
    /// On-disk inode number of each tree inode (v6 nid, v5 i_ino).
    pub inode_numbers: Vec<u64>,
    /// Prefetch table entries (v6 nids, v5 inode numbers).
    pub prefetch: Vec<u64>,
    /// Size of the bootstrap.
    pub size: u64,
}
