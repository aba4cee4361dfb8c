//! `check`: validates a bootstrap's invariants and, with its blobs, every chunk's data.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, Result};
use crate::model::{ChunkId, Image};
use crate::ops::opened::OpenedImage;

/// Options of `check`.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Bootstrap (or a blob with an inlined bootstrap).
    pub bootstrap: PathBuf,
    /// Where the blobs are; without it only metadata is checked.
    pub blobs: BlobSource,
    /// Print every inode and chunk.
    pub verbose: bool,
}

/// What `check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The decoded image.
    pub image: Image,
    /// Chunks whose data was read and verified against their digests.
    pub chunks_verified: u64,
    /// Chunks read whose digest the image does not record (tarfs): size checked only.
    pub chunks_unverified: u64,
    /// Lines describing each inode (verbose mode).
    pub listing: Vec<String>,
}

/// Runs `check`.
pub fn check(opts: &CheckOptions) -> Result<CheckReport> {
    let OpenedImage {
        image,
        blobs: source,
    } = OpenedImage::open(&opts.bootstrap, &opts.blobs)?;
    let mut listing = Vec::new();
    if opts.verbose {
        for e in image.tree.numbering_order() {
            let i = image.tree.inode_of(e);
            listing.push(format!(
                "inode: {} ino {} mode {:o} uid {} gid {} size {} xattrs {} chunks {}",
                image.tree.path(e).display(),
                image.inode_numbers[image.tree[e].inode.index()],
                i.mode(),
                i.uid,
                i.gid,
                i.size(),
                i.xattrs.len(),
                i.chunks().len()
            ));
            for id in i.chunks() {
                let c = &image.chunks[id.index()];
                listing.push(format!(
                    "\t chunk: blob {} index {} digest {} compressed {:#x}+{:#x} uncompressed {:#x}+{:#x}",
                    c.blob_index,
                    c.index,
                    hex::encode(c.digest),
                    c.compressed_offset,
                    c.compressed_size,
                    c.uncompressed_offset,
                    c.uncompressed_size
                ));
            }
        }
    }
    let mut verified = 0;
    let mut unverified = 0;
    if source.file.is_some() || source.dir.is_some() {
        let mut reader = ChunkReader::new(&image, source);
        let mut seen = HashSet::new();
        let mut ids: Vec<ChunkId> = image
            .tree
            .inodes
            .iter()
            .flat_map(|i| i.chunks().iter().copied())
            .filter(|id| seen.insert(*id))
            .collect();
        // in each blob's data order: a batch or a zran context holding many small chunks is
        // then decompressed once, not once per chunk
        ids.sort_by_key(|id| {
            let c = &image.chunks[id.index()];
            (c.blob_index, c.index)
        });
        for id in &ids {
            let data = reader.read(*id)?;
            let c = &image.chunks[id.index()];
            if data.len() != c.uncompressed_size as usize {
                return Err(Error::Corrupt {
                    what: "chunk data",
                    offset: c.compressed_offset,
                    reason: format!(
                        "chunk {} decodes to {} bytes, not {}",
                        c.index,
                        data.len(),
                        c.uncompressed_size
                    ),
                });
            }
            if image.digest_known.get(id.index()).copied().unwrap_or(false) {
                verified += 1;
            } else {
                unverified += 1;
            }
        }
    }
    Ok(CheckReport {
        image,
        chunks_verified: verified,
        chunks_unverified: unverified,
        listing,
    })
}
