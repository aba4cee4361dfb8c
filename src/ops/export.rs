//! `export --block`: one raw disk image the kernel mounts with no other device: the bootstrap,
//! then each blob's uncompressed data at the block address its device slot gives
//! (formats/rafs-v6.md §15), optionally followed by a dm-verity hash tree. `export --tar` is
//! `unpack` to a tar.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, IoContext, Result};
use crate::io::staged::{persist, temp_beside};
use crate::ops::opened::OpenedImage;
use crate::rafs;

/// dm-verity data block size: 512 bytes, as nydus-image writes it and as nydus-snapshotter's
/// parser of the `dm-verity options:` line requires (it spells `--data-block-size=512`).
pub const VERITY_DATA_BLOCK: u64 = 512;
/// dm-verity hash block size.
pub const VERITY_HASH_BLOCK: u64 = 4096;

/// Options of `export --block`.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The v6 bootstrap.
    pub bootstrap: PathBuf,
    /// Where the blobs are.
    pub blobs: BlobSource,
    /// Output image (default: `<bootstrap>.disk`).
    pub output: Option<PathBuf>,
    /// Append a dm-verity hash tree.
    pub verity: bool,
    /// Rewrite the bootstrap so chunks are addressed inside the image and no extra device is
    /// declared: readable by any EROFS reader, not only kernels with flat-image support.
    pub single_device: bool,
}

/// What `export --block` wrote.
#[derive(Debug, Clone)]
pub struct ExportOutput {
    /// The disk image.
    pub path: PathBuf,
    /// Bytes of filesystem data (where the hash tree starts, with `--verity`).
    pub data_size: u64,
    /// dm-verity root hash (hex), with `--verity`.
    pub root_hash: Option<String>,
    /// Data blocks covered by the hash tree.
    pub data_blocks: u64,
}

/// Writes the block image.
pub fn export_block(opts: &ExportOptions) -> Result<ExportOutput> {
    let OpenedImage {
        image,
        blobs: source,
    } = OpenedImage::open(&opts.bootstrap, &opts.blobs)?;
    if image.version != 6 {
        return Err(Error::Unsupported {
            path: opts.bootstrap.clone(),
            reason: format!(
                "RAFS v{}: export --block needs a RAFS v6 bootstrap",
                image.version
            ),
        });
    }
    let block = u64::from(image.block_size);
    let (boot, positions) = if opts.single_device {
        let bytes = crate::rafs::encode_like(
            &image,
            &image.tree,
            &image.chunks,
            &image.blobs,
            true,
            Vec::new(),
        )?;
        let pos = crate::rafs::v6::encode::mapped_blkaddrs(bytes.len() as u64, &image.blobs, block);
        (bytes, pos)
    } else {
        let pos = image
            .blobs
            .iter()
            .map(|b| u64::from(b.mapped_blkaddr))
            .collect();
        (rafs::read_bootstrap(&opts.bootstrap)?, pos)
    };
    // every blob must sit after the bootstrap and after the blob before it
    let mut end = boot.len() as u64;
    for (b, pos) in image.blobs.iter().zip(&positions) {
        let start = pos * block;
        if start < end {
            return Err(Error::Corrupt {
                what: "device table",
                offset: start,
                reason: format!(
                    "blob {} is mapped at {start:#x}, inside what comes before it (ends {end:#x})",
                    b.id
                ),
            });
        }
        end = start + b.uncompressed_size / block * block;
    }
    let out = opts.output.clone().unwrap_or_else(|| {
        let mut p = opts.bootstrap.clone().into_os_string();
        p.push(".disk");
        PathBuf::from(p)
    });
    let mut tmp = temp_beside(&out)?;
    {
        let f = tmp.as_file_mut();
        f.write_all(&boot)
            .map_err(|e| crate::error::write_error(e, &out, Some(boot.len() as u64)))?;
        f.set_len(end).ctx("size", &out)?;
        let mut reader = ChunkReader::new(&image, source);
        let mut done = HashSet::new();
        for inode in &image.tree.inodes {
            for id in inode.chunks() {
                if !done.insert(*id) {
                    continue;
                }
                let c = image.chunks[id.index()];
                let data = reader.read(*id)?;
                let at = positions[c.blob_index as usize] * block + c.uncompressed_offset;
                f.write_all_at(&data, at)
                    .map_err(|e| crate::error::write_error(e, &out, Some(data.len() as u64)))?;
            }
        }
    }
    let mut root_hash = None;
    let data_size = end.div_ceil(VERITY_HASH_BLOCK) * VERITY_HASH_BLOCK;
    if opts.verity {
        let f = tmp.as_file_mut();
        f.set_len(data_size).ctx("size", &out)?;
        root_hash = Some(append_verity_tree(f, data_size, &out)?);
    }
    persist(tmp, &out)?;
    Ok(ExportOutput {
        path: out,
        data_size,
        root_hash,
        data_blocks: data_size / VERITY_DATA_BLOCK,
    })
}

/// Appends a dm-verity (format 1, sha256, empty salt, no superblock) hash tree over the first
/// `data_size` bytes of `f` at offset `data_size`; returns the root hash in hex.
///
/// Levels are stored from the top (one block) down to the leaf level, as veritysetup lays
/// them out; each hash block holds 128 digests, zero-padded.
pub(crate) fn append_verity_tree(f: &mut File, data_size: u64, name: &Path) -> Result<String> {
    let per_block = (VERITY_HASH_BLOCK / 32) as usize;
    // level 0: digests of the 512-byte data blocks, read a megabyte at a time
    let mut level: Vec<[u8; 32]> = Vec::with_capacity((data_size / VERITY_DATA_BLOCK) as usize);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < data_size {
        let n = (data_size - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], at).ctx("read", name)?;
        for block in buf[..n].chunks(VERITY_DATA_BLOCK as usize) {
            level.push(Sha256::digest(block).into());
        }
        at += n as u64;
    }
    let mut levels: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut blocks =
            Vec::with_capacity(level.len().div_ceil(per_block) * VERITY_HASH_BLOCK as usize);
        for group in level.chunks(per_block) {
            let mut b = vec![0u8; VERITY_HASH_BLOCK as usize];
            for (i, d) in group.iter().enumerate() {
                b[i * 32..i * 32 + 32].copy_from_slice(d);
            }
            blocks.extend_from_slice(&b);
        }
        let next: Vec<[u8; 32]> = blocks
            .chunks(VERITY_HASH_BLOCK as usize)
            .map(|b| Sha256::digest(b).into())
            .collect();
        levels.push(blocks);
        if next.len() == 1 {
            f.seek(SeekFrom::Start(data_size)).ctx("seek", name)?;
            for l in levels.iter().rev() {
                f.write_all(l).ctx("write", name)?;
            }
            return Ok(hex::encode(next[0]));
        }
        level = next;
    }
}
