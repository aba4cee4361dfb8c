//! A decoded bootstrap: the tree, its chunks and its blob table, as every reader sees it.

use super::chunk::ChunkInfo;
use super::tree::{EntryId, FileType, Tree};
use crate::codec::cipher::BlobKey;
use crate::codec::{Compressor, Digester};
use crate::error::{Error, Result};
use crate::format::blob::BlobFeatures;
use crate::format::rafs_v6::SuperFlags;

/// One entry of the blob table: a blob as a bootstrap describes it (formats/rafs-v6.md §5,
/// formats/rafs-v5.md §6). The blob writer returns it, the encoders write it, the decoders read
/// it back, merge carries it between tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// Blob id (file name in a blob directory); 64 `x` inside an inlined bootstrap until the
    /// blob's own id is known.
    pub id: String,
    /// Chunks the blob holds.
    pub chunk_count: u32,
    /// Chunk compression.
    pub compressor: Compressor,
    /// Chunk digest.
    pub digester: Digester,
    /// What the blob holds and how it is framed.
    pub features: BlobFeatures,
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
    /// Compression of the chunk-info array (algorithm code, kept raw: upstream writes codes
    /// for arrays that do not exist).
    pub ci_compressor: u32,
    /// Block address in a flattened disk image, as the v6 device table read back says (the
    /// encoders compute it from the layout instead).
    pub mapped_blkaddr: u32,
    /// Key and tweak of an encrypted blob (formats/blob.md §10), kept in the clear in the
    /// blob table as upstream keeps them.
    pub cipher: Option<BlobKey>,
    /// Where the blob's meta and ToC are published apart from its data (v6 blob table).
    pub refs: BlobRefs,
}

/// Digests and sizes the v6 blob table records for a blob whose meta is published on its own:
/// a `targz-ref` meta file, or what `merge --blob-digests ...` was given (formats/blob.md §11).
/// All zero otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobRefs {
    /// sha256 of the file holding the blob meta (`blob_meta_digest`).
    pub meta_digest: [u8; 32],
    /// Its size (`blob_meta_size`).
    pub meta_size: u64,
    /// Digest of the blob's ToC (`blob_toc_digest`).
    pub toc_digest: [u8; 32],
    /// Size of the ToC (`blob_toc_size`).
    pub toc_size: u32,
}

impl BlobRefs {
    /// The meta file's id (hex of `meta_digest`), when one is recorded.
    pub fn meta_id(&self) -> Option<String> {
        (self.meta_digest != [0; 32]).then(|| hex::encode(self.meta_digest))
    }
}

impl BlobEntry {
    /// An empty entry (no chunks, no features, no chunk-info array) for a blob `id`.
    pub fn new(id: String, compressor: Compressor, digester: Digester) -> BlobEntry {
        BlobEntry {
            id,
            chunk_count: 0,
            compressor,
            digester,
            features: BlobFeatures::NONE,
            compressed_size: 0,
            uncompressed_size: 0,
            ci_offset: 0,
            ci_compressed_size: 0,
            ci_uncompressed_size: 0,
            ci_compressor: 0,
            mapped_blkaddr: 0,
            cipher: None,
            refs: BlobRefs::default(),
        }
    }

    /// This entry as a bootstrap other than the one inlined in the blob records it (merge,
    /// `--parent-bootstrap`, `--chunk-dict`): that bootstrap is not inside the blob, so
    /// INLINED_FS_META goes, as upstream's builder drops it from every blob it takes from
    /// another bootstrap. nydusd renames each blob still marked so after the file name of the
    /// bootstrap it loads, and then finds no such blob (formats/blob.md §12).
    pub fn referenced_from_outside(&self) -> BlobEntry {
        let mut e = self.clone();
        e.features = BlobFeatures(e.features.bits() & !BlobFeatures::INLINED_FS_META.bits());
        e
    }

    /// Whether this is a tar-tarfs blob (chunks address the tar in place).
    pub fn is_tarfs(&self) -> bool {
        self.features.contains(BlobFeatures::TARFS)
    }
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
    pub blobs: Vec<BlobEntry>,
    /// Chunk size.
    pub chunk_size: u32,
    /// RafsSuperFlags.
    pub flags: SuperFlags,
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

impl Image {
    /// Checks the invariants the decoder does not already enforce while building the tree:
    /// every reader runs it before trusting chunk addresses.
    pub fn validate(&self) -> Result<()> {
        self.validate_prefetch()?;
        let image = self;
        let bad = |reason: String| {
            Err(Error::Corrupt {
                what: "image",
                offset: 0,
                reason,
            })
        };
        for (i, c) in image.chunks.iter().enumerate() {
            let Some(blob) = image.blobs.get(c.blob_index as usize) else {
                return bad(format!(
                    "chunk {i} references blob {} of {}",
                    c.blob_index,
                    image.blobs.len()
                ));
            };
            if c.index >= blob.chunk_count && !blob.is_tarfs() {
                return bad(format!(
                    "chunk index {} beyond the {} chunks of blob {}",
                    c.index, blob.chunk_count, blob.id
                ));
            }
            let end = c
                .uncompressed_offset
                .checked_add(u64::from(c.uncompressed_size));
            if !blob.is_tarfs() && end.is_none_or(|e| e > blob.uncompressed_size) {
                return bad(format!(
                    "chunk {} of blob {} lies beyond its uncompressed size",
                    c.index, blob.id
                ));
            }
            if image.version == 6 && !blob.is_tarfs() && c.uncompressed_offset % 4096 != 0 {
                return bad(format!(
                    "chunk {} of blob {} is not 4 KiB aligned",
                    c.index, blob.id
                ));
            }
        }
        for (d, entry) in image.tree.entries.iter().enumerate() {
            let names = entry.children.windows(2);
            if let Some(w) = names
                .into_iter()
                .find(|w| image.tree[w[0]].name == image.tree[w[1]].name)
            {
                return bad(format!(
                    "{}: duplicate entry {:?}",
                    image.tree.path(EntryId::new(d)).display(),
                    String::from_utf8_lossy(&image.tree[w[0]].name)
                ));
            }
        }
        for (e, entry) in image.tree.entries.iter().enumerate() {
            let inode = &image.tree[entry.inode];
            if inode.file_type() != FileType::Regular {
                continue;
            }
            let expected = if image.chunk_size == 0 {
                0
            } else {
                inode.size().div_ceil(u64::from(image.chunk_size))
            };
            if inode.chunks().len() as u64 != expected {
                return bad(format!(
                    "{}: {} chunks for {} bytes",
                    image.tree.path(EntryId::new(e)).display(),
                    inode.chunks().len(),
                    inode.size()
                ));
            }
            let sum: u64 = inode
                .chunks()
                .iter()
                .map(|id| u64::from(image.chunks[id.index()].uncompressed_size))
                .sum();
            if sum != inode.size() {
                return bad(format!(
                    "{}: chunks hold {sum} bytes, the file {}",
                    image.tree.path(EntryId::new(e)).display(),
                    inode.size()
                ));
            }
        }
        Ok(())
    }

    /// Every prefetch table entry names an inode of the image (readers prefetch by it).
    fn validate_prefetch(&self) -> Result<()> {
        if self.prefetch.is_empty() {
            return Ok(());
        }
        let known: std::collections::HashSet<u64> = self.inode_numbers.iter().copied().collect();
        match self.prefetch.iter().find(|n| !known.contains(n)) {
            Some(n) => Err(Error::Corrupt {
                what: "prefetch table",
                offset: 0,
                reason: format!("entry {n} names no inode of the image"),
            }),
            None => Ok(()),
        }
    }
}
