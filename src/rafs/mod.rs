//! RAFS bootstraps: the encoders, the decoders, and the decoded [`Image`] model.

pub mod v5;
pub mod v6;

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::model::Tree;
use crate::model::{ChunkInfo, Image};

/// Largest bootstrap this tool loads into memory.
pub const MAX_BOOTSTRAP_SIZE: u64 = 1 << 32;

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

/// Encodes a tree with the settings of `like` (version, chunk size, compressor, digester,
/// uid/gid mode, tarfs), optionally as a single-device disk image (see
/// `EncodeOptions::single_device`): merge and export re-encode decoded images this way.
pub fn encode_like(
    like: &Image,
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[v6::BlobRecord],
    single_device: bool,
) -> Result<Vec<u8>> {
    use crate::format::rafs_v6::super_flags;
    let opts = v6::EncodeOptions {
        chunk_size: like.chunk_size,
        compressor: like.compressor,
        digester: like.digester,
        explicit_uid_gid: like.flags.contains(super_flags::EXPLICIT_UID_GID),
        block_size: if like.version == 5 {
            v6::encode::BLOCK_SIZE
        } else {
            u64::from(like.block_size)
        },
        tarfs: like.flags.contains(super_flags::TARTFS_MODE),
        single_device,
    };
    encode(like.version, tree, chunks, blobs, &opts)
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

/// A bootstrap as [`load`] found it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The decoded image.
    pub image: Image,
    /// Whether the bootstrap was cut from the end of a blob (inline meta); that blob then holds
    /// the image's data too.
    pub from_inline_blob: bool,
}

/// Loads and decodes a bootstrap file, or a blob with an inlined bootstrap; in the latter case
/// the placeholder blob id is replaced by the blob file's name.
pub fn load(path: &Path) -> Result<Loaded> {
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
    Ok(Loaded {
        image,
        from_inline_blob: from_blob,
    })
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
