//! Stacking images: what layers, parents and chunk dictionaries must share, and the blob-table
//! compaction every operation that combines images ends with.

use std::collections::HashMap;

use super::chunk::ChunkInfo;
use super::image::Image;
use super::tree::{ChunkId, FileType, Inode, Tree};
use crate::codec::{Compressor, Digester};
use crate::error::{Error, Result};
use crate::format::rafs_v6::super_flags;

/// The settings every image in a stack shares: merged layers, a parent bootstrap and a chunk
/// dictionary must all agree with the image being built on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackKey {
    /// RAFS version.
    pub version: u32,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunk digest.
    pub digester: Digester,
    /// Whether uid/gid are recorded (false for `--repeatable` images).
    pub explicit_uid_gid: bool,
    /// The compressor of a RAFS v5 image: v5 names one compressor in its superblock for every
    /// blob (formats/rafs-v5.md §2), so v5 images stack only with the same one (upstream's
    /// merge does not check it and writes images whose chunks fail to decompress). `None` for
    /// v6, where each blob carries its own.
    pub v5_compressor: Option<Compressor>,
}

impl StackKey {
    /// The settings an image was built with.
    pub fn of(image: &Image) -> StackKey {
        StackKey {
            version: image.version,
            chunk_size: image.chunk_size,
            digester: image.digester,
            explicit_uid_gid: image.flags.contains(super_flags::EXPLICIT_UID_GID),
            v5_compressor: (image.version == 5).then_some(image.compressor),
        }
    }

    /// Checks that `other` (described by `what`, e.g. "parent bootstrap /x") stacks on an image
    /// with these settings; the error names the first setting that differs, with both values.
    pub fn check(&self, other: &StackKey, what: &str) -> Result<()> {
        let reason = if other.chunk_size != self.chunk_size {
            format!(
                "chunk size {:#x}, not {:#x}",
                other.chunk_size, self.chunk_size
            )
        } else if other.version != self.version {
            format!("RAFS v{}, not v{}", other.version, self.version)
        } else if other.digester != self.digester {
            format!(
                "digester {}, not {}",
                other.digester.name(),
                self.digester.name()
            )
        } else if other.explicit_uid_gid != self.explicit_uid_gid {
            "one records uid/gid and the other does not (--repeatable)".to_string()
        } else if let (Some(a), Some(b)) = (other.v5_compressor, self.v5_compressor) {
            if a == b {
                return Ok(());
            }
            format!(
                "RAFS v5 compressor {}, not {} (v5 names one for all blobs)",
                a.name(),
                b.name()
            )
        } else {
            return Ok(());
        };
        Err(Error::Incompatible {
            what: what.to_string(),
            reason,
        })
    }
}

/// An empty tree to stack layers on (the bottom layer's root replaces this root).
pub fn empty_tree() -> Tree {
    Tree::new(Inode::new(FileType::Directory, 0o755))
}

/// Keeps only the blobs and chunks the tree uses; blobs are renumbered in the order the tree
/// first uses them (numbering order), chunks in the order files reference them. `B` is whatever
/// the caller's blob table holds per blob.
pub fn compact_blobs<B: Clone>(
    tree: &mut Tree,
    chunks: &[ChunkInfo],
    blobs: &[B],
) -> Result<(Vec<ChunkInfo>, Vec<B>)> {
    let mut blob_map: HashMap<u32, u32> = HashMap::new();
    let mut chunk_map: HashMap<ChunkId, ChunkId> = HashMap::new();
    let mut new_chunks = Vec::new();
    let mut new_blobs = Vec::new();
    let mut done = vec![false; tree.inodes.len()];
    for e in tree.numbering_order() {
        let ino = tree[e].inode;
        if std::mem::replace(&mut done[ino.index()], true) {
            continue;
        }
        let mut ids = Vec::with_capacity(tree[ino].chunks().len());
        for id in tree[ino].chunks() {
            let c = *chunks.get(id.index()).ok_or_else(|| Error::Corrupt {
                what: "chunk reference",
                offset: u64::from(id.get()),
                reason: "no such chunk".into(),
            })?;
            let nb = *blob_map.entry(c.blob_index).or_insert_with(|| {
                new_blobs.push(c.blob_index);
                new_blobs.len() as u32 - 1
            });
            let nid = *chunk_map.entry(*id).or_insert_with(|| {
                new_chunks.push(ChunkInfo {
                    blob_index: nb,
                    ..c
                });
                ChunkId::new(new_chunks.len() as u32 - 1)
            });
            ids.push(nid);
        }
        if let Some(f) = tree[ino].file_mut() {
            f.chunks = ids;
        }
    }
    let records = new_blobs
        .iter()
        .map(|b| {
            blobs
                .get(*b as usize)
                .cloned()
                .ok_or_else(|| Error::Corrupt {
                    what: "chunk",
                    offset: u64::from(*b),
                    reason: "blob index outside the blob table".into(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((new_chunks, records))
}
