//! RAFS bootstraps: the encoders, the decoders, and the decoded [`Image`] model.

pub mod v5;
pub mod v6;

use std::path::Path;

use crate::blob::ChunkInfo;
use crate::codec::{Compressor, Digester};
use crate::error::{IoContext, Result};
use crate::model::Tree;

/// Largest bootstrap this tool loads into memory.
pub const MAX_BOOTSTRAP_SIZE: u64 = 1 << 32;

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

/// Encodes a bootstrap of RAFS `version` (5 or 6).
pub fn encode(
    version: u32,
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[v6::BlobRecord],
    opts: &v6::EncodeOptions,
) -> Result<Vec<u8>> {
    if version == 5 {
        v5::encode::encode(tree, chunks, blobs, opts)
    } else {
        v6::encode(tree, chunks, blobs, opts)
    }
}

/// Decodes a bootstrap of either version.
pub fn decode(bytes: &[u8]) -> Result<Image> {
    if bytes.len() >= 4 && bytes[..4] == crate::format::rafs_v5::RAFS_V5_MAGIC.to_le_bytes() {
        return v5::decode::decode(bytes);
    }
    if bytes.len() >= 1028 && bytes[1024..1028] == crate::format::rafs_v6::EROFS_MAGIC.to_le_bytes()
    {
        return v6::decode::decode(bytes);
    }
    Err(crate::io::bytes::corrupt(
        "bootstrap",
        0,
        "neither a RAFS v5 nor a RAFS v6 (EROFS) superblock",
    ))
}

/// Reads a bootstrap file; a blob with an inlined bootstrap is accepted too.
pub fn read_bootstrap(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_bootstrap_raw(path)?;
    if is_bootstrap(&bytes) {
        return Ok(bytes);
    }
    crate::blob::inline::extract_bootstrap(path)
}

/// Loads and decodes a bootstrap file, or a blob with an inlined bootstrap; in the latter case
/// the placeholder blob id is replaced by the blob file's name, and `true` is returned with it.
pub fn load(path: &Path) -> Result<(Image, bool)> {
    let bytes = read_bootstrap_raw(path)?;
    let from_blob = !is_bootstrap(&bytes);
    let bytes = if from_blob {
        crate::blob::inline::extract_bootstrap(path)?
    } else {
        bytes
    };
    let mut image = decode(&bytes)?;
    if from_blob {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for b in &mut image.blobs {
            if !b.id.is_empty() && b.id.bytes().all(|c| c == b'x') {
                b.id = name.clone();
            }
        }
    }
    Ok((image, from_blob))
}

fn is_bootstrap(bytes: &[u8]) -> bool {
    let is_v5 = bytes.len() >= 4 && bytes[..4] == 0x5241_4653u32.to_le_bytes();
    let is_v6 = bytes.len() >= 1028
        && bytes[1024..1028] == crate::format::rafs_v6::EROFS_MAGIC.to_le_bytes();
    is_v5 || is_v6
}

fn read_bootstrap_raw(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).ctx("stat", path)?;
    if meta.is_file() && meta.len() > MAX_BOOTSTRAP_SIZE {
        // too large for a bootstrap: only its inlined tail can be one
        return Ok(Vec::new());
    }
    std::fs::read(path).ctx("read", path)
}
