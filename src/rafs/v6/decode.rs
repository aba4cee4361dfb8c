//! RAFS v6 decoder: rebuilds the tree, chunk list and blob table from a bootstrap written by
//! erofs-forge or by nydus-image. Nothing in the input is trusted (formats/rafs-v6.md).

use std::collections::HashMap;

use super::layout::XATTR_PREFIXES;
use crate::codec::cipher::BlobKey;
use crate::codec::{Compressor, Digester};
use crate::error::Result;
use crate::format::blob::BlobFeatures;
use crate::format::rafs_v6::*;
use crate::io::bytes::{corrupt, Budget, Bytes};
use crate::model::ChunkInfo;
use crate::model::{BlobEntry as Blob, Image};
use crate::model::{
    ChunkId, DataSource, EntryId, FileType, Inode, InodeId, InodeKind, RegularFile, Tree,
};
use zerocopy::FromBytes;

type XattrPair = (Vec<u8>, Vec<u8>);

/// Most blobs a v6 image can reference.
const MAX_BLOBS: u64 = 256;
/// Deepest directory nesting accepted.
const MAX_DEPTH: usize = 4096;

struct RawInode {
    format: u16,
    xattr_icount: u16,
    mode: u16,
    size: u64,
    u: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    inode_size: u64,
}

impl RawInode {
    fn layout(&self) -> u16 {
        (self.format >> 1) & 0x7
    }
    fn xattr_size(&self) -> u64 {
        if self.xattr_icount == 0 {
            0
        } else {
            12 + (u64::from(self.xattr_icount) - 1) * 4
        }
    }
}

struct Decoder<'a> {
    b: Bytes<'a>,
    block: u64,
    meta_addr: u64,
    xattr_addr: u64,
    epoch: u64,
    chunk_size: u32,
    explicit_uid_gid: bool,
    /// chunk-table records by (blob index, chunk index)
    records: HashMap<(u32, u32), ChunkRecord>,
    chunks: Vec<ChunkInfo>,
    digest_known: Vec<bool>,
    chunk_ids: HashMap<(u32, u32, u32), ChunkId>,
    blob_count: u32,
    /// tarfs: data sits in the tar at `blkaddr × block`; chunk records carry nothing useful
    tarfs: bool,
    /// A plain EROFS image (no RAFS extension): flat plain files' data is in the image itself,
    /// which becomes one more blob after the table's (see [`Decoder::in_image`]).
    plain: bool,
    /// Chunks of that last blob: data inside the image.
    in_image_chunks: u32,
    /// What the image can still make the decoder allocate (see [`Budget`]).
    budget: Budgets,
}

/// Caps on what a bootstrap can make the decoder allocate ([`Budget`]). Shared xattrs are
/// legitimately referenced many times, so their budget is generous but finite.
struct Budgets {
    dirents: Budget,
    chunk_indexes: Budget,
    xattr_bytes: Budget,
}

impl Budgets {
    fn new(image_size: u64) -> Budgets {
        Budgets {
            dirents: Budget::new(image_size / 12 + 16),
            chunk_indexes: Budget::new(image_size / 8 + 16),
            xattr_bytes: Budget::new((64 << 20) + 8 * image_size),
        }
    }
}

/// Decodes a v6 bootstrap.
pub fn decode(data: &[u8]) -> Result<Image> {
    decode_bytes(Bytes::new(data))
}

/// Decodes an image of which only the metadata was read: `data` is the image less the
/// `gap_len` bytes at `gap_start` (file data of a plain image, laid out data first).
pub fn decode_sparse(data: &[u8], gap_start: u64, gap_len: u64) -> Result<Image> {
    decode_bytes(Bytes::with_gap(data, gap_start, gap_len))
}

fn decode_bytes(b: Bytes<'_>) -> Result<Image> {
    let sb: &SuperBlock = b.get(SUPERBLOCK_OFFSET as u64, "EROFS superblock")?;
    if sb.magic.get() != EROFS_MAGIC {
        return Err(corrupt("EROFS superblock", 1024, "bad magic"));
    }
    let bits = sb.blkszbits;
    if bits != 9 && bits != 12 {
        return Err(corrupt(
            "EROFS superblock",
            0x40c,
            &format!("block size 2^{bits} is not 512 or 4096"),
        ));
    }
    let block = 1u64 << bits;
    let ext: &ExtSuperBlock = b.get(EXT_SUPERBLOCK_OFFSET as u64, "RAFS v6 extended superblock")?;
    let flags = ext.flags.get();
    let compressor = super_flags::compressor(flags);
    let digester = super_flags::digester(flags);
    let chunk_size = ext.chunk_size.get();
    let is_rafs = sb.feature_compat.get() & FEATURE_COMPAT_RAFS_V6 != 0;
    if is_rafs && (!chunk_size.is_power_of_two() || !(0x1000..=0x100_0000).contains(&chunk_size)) {
        return Err(corrupt(
            "RAFS v6 extended superblock",
            0x494,
            &format!("invalid chunk size {chunk_size:#x}"),
        ));
    }

    let nblobs = blob_count(sb, ext, is_rafs)?;
    let blobs = blob_table(b, sb, ext, nblobs)?;
    let records = if is_rafs {
        chunk_records(b, ext)?
    } else {
        HashMap::new()
    };
    let prefetch = if is_rafs {
        prefetch_table(b, ext)?
    } else {
        Vec::new()
    };

    let mut d = Decoder {
        b,
        block,
        meta_addr: u64::from(sb.meta_blkaddr.get()) * block,
        xattr_addr: u64::from(sb.xattr_blkaddr.get()) * block,
        epoch: sb.build_time.get(),
        chunk_size: if is_rafs { chunk_size } else { 0 },
        explicit_uid_gid: !is_rafs || flags & super_flags::EXPLICIT_UID_GID != 0,
        records,
        chunks: Vec::new(),
        digest_known: Vec::new(),
        chunk_ids: HashMap::new(),
        blob_count: nblobs as u32,
        tarfs: flags & super_flags::TARTFS_MODE != 0,
        plain: !is_rafs,
        in_image_chunks: 0,
        budget: Budgets::new(b.len()),
    };
    let root_nid = u64::from(sb.root_nid.get());
    let (tree, nids) = d.walk(root_nid)?;
    let mut blobs = blobs;
    if d.in_image_chunks > 0 {
        blobs.push(image_as_blob(sb, b.len(), d.in_image_chunks));
    }
    Ok(Image {
        version: 6,
        tree,
        chunks: d.chunks,
        digest_known: d.digest_known,
        blobs,
        chunk_size,
        flags: SuperFlags(flags),
        compressor,
        digester,
        block_size: block as u32,
        inode_numbers: nids,
        prefetch,
        size: b.len(),
    })
}

/// Bytes of a plain image's file data one chunk of the image-as-blob describes.
pub const IN_IMAGE_CHUNK: u64 = crate::format::blob::DEFAULT_CHUNK_SIZE as u64;

/// The blob standing for a plain image's own data: named by the image's UUID in hex (as
/// mkfs.erofs tags a source image's device), or `image` when the UUID is clear.
fn image_as_blob(sb: &SuperBlock, size: u64, chunks: u32) -> crate::model::BlobEntry {
    let id = if sb.uuid == [0; 16] {
        "image".to_string()
    } else {
        hex::encode(sb.uuid)
    };
    crate::model::BlobEntry {
        chunk_count: chunks,
        compressed_size: size,
        uncompressed_size: size,
        ..crate::model::BlobEntry::new(
            id,
            crate::codec::Compressor::None,
            crate::codec::Digester::Blake3,
        )
    }
}

/// Blobs in the blob table, which must match the device count.
fn blob_count(sb: &SuperBlock, ext: &ExtSuperBlock, is_rafs: bool) -> Result<u64> {
    let nblobs_dev = u64::from(sb.extra_devices.get());
    let blob_table_size = if is_rafs {
        u64::from(ext.blob_table_size.get())
    } else {
        0
    };
    if blob_table_size % 256 != 0 || blob_table_size / 256 > MAX_BLOBS {
        return Err(corrupt(
            "RAFS v6 extended superblock",
            0x490,
            &format!("blob table size {blob_table_size}"),
        ));
    }
    let nblobs = blob_table_size / 256;
    if is_rafs && nblobs != nblobs_dev {
        return Err(corrupt(
            "EROFS superblock",
            0x456,
            &format!("{nblobs_dev} extra devices but {nblobs} blobs in the blob table"),
        ));
    }
    Ok(nblobs)
}

/// The blob table, with each blob's device slot.
fn blob_table(
    b: Bytes<'_>,
    sb: &SuperBlock,
    ext: &ExtSuperBlock,
    nblobs: u64,
) -> Result<Vec<Blob>> {
    let devt = u64::from(sb.devt_slotoff.get()) * 128;
    let mut blobs = Vec::new();
    for i in 0..nblobs {
        let off = ext
            .blob_table_offset
            .get()
            .checked_add(256 * i)
            .ok_or_else(|| corrupt("blob table", 0, "offset overflows"))?;
        let e: &BlobEntry = b.get(off, "blob table entry")?;
        let slot: &DeviceSlot = b.get(devt + 128 * i, "device slot")?;
        if u64::from(e.blob_index.get()) != i {
            return Err(corrupt(
                "blob table entry",
                off + 64,
                "blob index out of order",
            ));
        }
        let compressor = Compressor::from_code(e.compression_algo.get())
            .ok_or_else(|| corrupt("blob table entry", off + 76, "unknown compression"))?;
        let digester = match e.digest_algo.get() {
            0 => Digester::Blake3,
            1 => Digester::Sha256,
            _ => return Err(corrupt("blob table entry", off + 80, "unknown digest")),
        };
        let cipher = match e.cipher_algo.get() {
            0 => None,
            CIPHER_AES_128_XTS => {
                let mut iv = [0u8; 16];
                iv[..8].copy_from_slice(&e.blob_meta_size.get().to_le_bytes());
                iv[8..].copy_from_slice(&e.cipher_iv);
                Some(BlobKey {
                    key: e.blob_meta_digest,
                    iv,
                })
            }
            other => {
                return Err(corrupt(
                    "blob table entry",
                    off + 248,
                    &format!("unknown cipher algorithm {other}"),
                ))
            }
        };
        // an encrypted blob keeps its key where a ref blob keeps its meta digest
        let refs = crate::model::BlobRefs {
            meta_digest: if cipher.is_some() {
                [0; 32]
            } else {
                e.blob_meta_digest
            },
            meta_size: if cipher.is_some() {
                0
            } else {
                e.blob_meta_size.get()
            },
            toc_digest: e.blob_toc_digest,
            toc_size: e.blob_toc_size.get(),
        };
        let id = trim_id(&e.blob_id)
            .ok_or_else(|| corrupt("blob table entry", off, "blob id is not text"))?;
        blobs.push(Blob {
            id,
            chunk_count: e.chunk_count.get(),
            compressor,
            digester,
            features: BlobFeatures(e.features.get()),
            compressed_size: e.compressed_size.get(),
            uncompressed_size: e.uncompressed_size.get(),
            ci_offset: e.ci_offset.get(),
            ci_compressed_size: e.ci_compressed_size.get(),
            ci_uncompressed_size: e.ci_uncompressed_size.get(),
            ci_compressor: e.ci_compressor.get(),
            mapped_blkaddr: slot.mapped_blkaddr.get(),
            refs,
            cipher,
        });
    }
    Ok(blobs)
}

/// The chunk table's records by (blob index, chunk index).
fn chunk_records(b: Bytes<'_>, ext: &ExtSuperBlock) -> Result<HashMap<(u32, u32), ChunkRecord>> {
    let mut records = HashMap::new();
    if ext.chunk_table_size.get() == 0 {
        return Ok(records);
    }
    let off = ext.chunk_table_offset.get();
    let size = ext.chunk_table_size.get();
    if size % 80 != 0 {
        return Err(corrupt("chunk table", off, "size is not a multiple of 80"));
    }
    let table = b.slice(off, size, "chunk table")?;
    for (i, rec) in table.chunks_exact(80).enumerate() {
        let r = ChunkRecord::read_from_bytes(rec)
            .map_err(|_| corrupt("chunk table", off + 80 * i as u64, "bad record"))?;
        records.insert((r.blob_index.get(), r.index.get()), r);
    }
    Ok(records)
}

/// The prefetch table's entries (nids).
fn prefetch_table(b: Bytes<'_>, ext: &ExtSuperBlock) -> Result<Vec<u64>> {
    if ext.prefetch_table_size.get() == 0 {
        return Ok(Vec::new());
    }
    let t = b.slice(
        ext.prefetch_table_offset.get(),
        u64::from(ext.prefetch_table_size.get()),
        "prefetch table",
    )?;
    Ok(t.chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect())
}

fn trim_id(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).ok().map(str::to_string)
}

impl Decoder<'_> {
    fn inode_offset(&self, nid: u64) -> Result<u64> {
        nid.checked_mul(32)
            .and_then(|o| o.checked_add(self.meta_addr))
            .filter(|o| *o < self.b.len())
            .ok_or_else(|| corrupt("inode", nid, "nid points outside the image"))
    }

    fn raw_inode(&self, nid: u64) -> Result<(u64, RawInode)> {
        let off = self.inode_offset(nid)?;
        let first: &[u8] = self.b.slice(off, 2, "inode")?;
        let format = u16::from_le_bytes([first[0], first[1]]);
        if format & 1 == 1 {
            let i: &InodeExtended = self.b.get(off, "extended inode")?;
            Ok((
                off,
                RawInode {
                    format,
                    xattr_icount: i.xattr_icount.get(),
                    mode: i.mode.get(),
                    size: i.size.get(),
                    u: i.u.get(),
                    uid: i.uid.get(),
                    gid: i.gid.get(),
                    mtime: i.mtime.get() as i64,
                    mtime_nsec: i.mtime_nsec.get().min(999_999_999),
                    inode_size: 64,
                },
            ))
        } else {
            let i: &InodeCompact = self.b.get(off, "compact inode")?;
            Ok((
                off,
                RawInode {
                    format,
                    xattr_icount: i.xattr_icount.get(),
                    mode: i.mode.get(),
                    size: u64::from(i.size.get()),
                    u: i.u.get(),
                    uid: u32::from(i.uid.get()),
                    gid: u32::from(i.gid.get()),
                    mtime: self.epoch.saturating_add(u64::from(i.mtime.get())) as i64,
                    mtime_nsec: 0,
                    inode_size: 32,
                },
            ))
        }
    }

    /// Data of a directory or symlink: plain blocks at `i_u`, or full blocks plus an inline tail.
    fn flat_data(&self, nid: u64, off: u64, r: &RawInode) -> Result<Vec<u8>> {
        let size = r.size;
        if size > self.b.len() {
            return Err(corrupt(
                "inode",
                off,
                &format!("data size {size} exceeds the image"),
            ));
        }
        let tail_at = off + r.inode_size + r.xattr_size();
        match r.layout() {
            0 => Ok(self
                .b
                .slice(
                    u64::from(r.u) * self.block,
                    size,
                    "directory or symlink data",
                )?
                .to_vec()),
            2 => {
                let tail = size % self.block;
                let full = size - tail;
                // with no full block, `i_u` is unused (erofs-utils writes 0xffffffff there)
                let mut v = if full == 0 {
                    Vec::new()
                } else {
                    self.b
                        .slice(
                            u64::from(r.u) * self.block,
                            full,
                            "directory or symlink blocks",
                        )?
                        .to_vec()
                };
                if (tail_at % self.block) + tail > self.block {
                    return Err(corrupt("inline data", tail_at, "crosses a block boundary"));
                }
                v.extend_from_slice(self.b.slice(tail_at, tail, "inline tail")?);
                Ok(v)
            }
            other => Err(corrupt(
                "inode",
                nid,
                &format!("data layout {other} is not supported here"),
            )),
        }
    }

    fn xattrs(&mut self, off: u64, r: &RawInode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let size = r.xattr_size();
        if size == 0 {
            return Ok(Vec::new());
        }
        let start = off + r.inode_size;
        let area = self.b.slice(start, size, "inline xattrs")?;
        let hdr = XattrIbodyHeader::ref_from_bytes(&area[..12])
            .map_err(|_| corrupt("xattr header", start, "bad"))?;
        let shared = usize::from(hdr.shared_count);
        let mut out = Vec::new();
        let mut pos = 12 + 4 * shared;
        if pos > area.len() {
            return Err(corrupt(
                "xattr header",
                start,
                "shared xattr ids overrun the xattr area",
            ));
        }
        for i in 0..shared {
            let p = 12 + 4 * i;
            let id = u32::from_le_bytes([area[p], area[p + 1], area[p + 2], area[p + 3]]);
            let at = self.xattr_addr + u64::from(id) * 4;
            let (pair, len) = self.xattr_entry(at)?;
            self.budget
                .xattr_bytes
                .spend(len as u64, "shared xattr", at)?;
            out.push(pair);
        }
        while pos + 4 <= area.len() {
            let (pair, len) = self.xattr_entry(start + pos as u64)?;
            self.budget
                .xattr_bytes
                .spend(len as u64, "xattr entry", start + pos as u64)?;
            out.push(pair);
            pos += len;
        }
        Ok(out)
    }

    fn xattr_entry(&self, at: u64) -> Result<(XattrPair, usize)> {
        let e: &XattrEntry = self.b.get(at, "xattr entry")?;
        let prefix: &[u8] = XATTR_PREFIXES
            .iter()
            .find(|(_, idx)| *idx == e.name_index)
            .map(|(p, _)| *p)
            .ok_or_else(|| {
                corrupt(
                    "xattr entry",
                    at,
                    &format!("unknown name index {}", e.name_index),
                )
            })?;
        let nlen = u64::from(e.name_len);
        let vlen = u64::from(e.value_size.get());
        let suffix = self.b.slice(at + 4, nlen, "xattr name")?;
        let value = self.b.slice(at + 4 + nlen, vlen, "xattr value")?;
        let mut name = prefix.to_vec();
        name.extend_from_slice(suffix);
        let len = (4 + nlen + vlen).div_ceil(4) * 4;
        Ok(((name, value.to_vec()), len as usize))
    }

    fn dirents(&mut self, nid: u64, off: u64, r: &RawInode) -> Result<Vec<(Vec<u8>, u64)>> {
        // each dirent takes 12 bytes of the directory's own data: spend before copying it
        self.budget
            .dirents
            .spend(r.size.div_ceil(12), "directory", off)?;
        let data = self.flat_data(nid, off, r)?;
        let mut out = Vec::new();
        for (bi, blk) in data.chunks(self.block as usize).enumerate() {
            let at = off + bi as u64;
            if blk.len() < 12 {
                return Err(corrupt("directory block", at, "shorter than one dirent"));
            }
            let first =
                Dirent::ref_from_bytes(&blk[..12]).map_err(|_| corrupt("dirent", at, "bad"))?;
            let n0 = usize::from(first.nameoff.get());
            if n0 % 12 != 0 || n0 == 0 || n0 > blk.len() {
                return Err(corrupt(
                    "directory block",
                    at,
                    &format!("first name offset {n0} is invalid"),
                ));
            }
            let count = n0 / 12;
            for j in 0..count {
                let de = Dirent::ref_from_bytes(&blk[j * 12..j * 12 + 12])
                    .map_err(|_| corrupt("dirent", at, "bad"))?;
                let start = usize::from(de.nameoff.get());
                let end = if j + 1 < count {
                    usize::from(
                        Dirent::ref_from_bytes(&blk[(j + 1) * 12..(j + 2) * 12])
                            .map_err(|_| corrupt("dirent", at, "bad"))?
                            .nameoff
                            .get(),
                    )
                } else {
                    blk.len()
                };
                if start > end || end > blk.len() || start < n0 {
                    return Err(corrupt("dirent", at, "name offsets out of order"));
                }
                let mut name = &blk[start..end];
                if j + 1 == count {
                    if let Some(z) = name.iter().position(|c| *c == 0) {
                        name = &name[..z];
                    }
                }
                out.push((name.to_vec(), de.nid.get()));
            }
        }
        Ok(out)
    }

    fn chunk_id(&mut self, blob: u32, ci: u32, blkaddr: u32, usize_hint: u32) -> Result<ChunkId> {
        if let Some(id) = self.chunk_ids.get(&(blob, ci, blkaddr)) {
            return Ok(*id);
        }
        let record = if self.tarfs {
            None
        } else {
            self.records.get(&(blob, ci))
        };
        let (info, known) = match record {
            Some(r) => (
                ChunkInfo {
                    blob_index: blob,
                    index: ci,
                    ..ChunkInfo::from_record(r)
                },
                r.digest != [0; 32],
            ),
            None => (
                ChunkInfo {
                    digest: [0; 32],
                    crc32: 0,
                    blob_index: blob,
                    index: ci,
                    compressed: false,
                    has_crc32: false,
                    encrypted: false,
                    compressed_offset: u64::from(blkaddr) * self.block,
                    compressed_size: usize_hint,
                    uncompressed_offset: u64::from(blkaddr) * self.block,
                    uncompressed_size: usize_hint,
                },
                false,
            ),
        };
        let id = ChunkId::new(self.chunks.len() as u32);
        self.chunks.push(info);
        self.digest_known.push(known);
        self.chunk_ids.insert((blob, ci, blkaddr), id);
        Ok(id)
    }

    fn file_chunks(&mut self, nid: u64, off: u64, r: &RawInode) -> Result<Vec<ChunkId>> {
        if self.plain && r.layout() == LAYOUT_FLAT_PLAIN {
            return self.in_image(nid, r);
        }
        if r.layout() != LAYOUT_CHUNK_BASED {
            let what = match r.layout() {
                LAYOUT_COMPRESSED_FULL | LAYOUT_COMPRESSED_COMPACT => "compressed",
                LAYOUT_FLAT_INLINE => "inline",
                _ => "plain",
            };
            return Err(corrupt(
                "inode",
                nid,
                &format!(
                    "regular file layout {} ({what}) is not chunk-based{}",
                    r.layout(),
                    if self.plain {
                        ": its data cannot be referenced from another image"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if r.size == 0 {
            return Ok(Vec::new());
        }
        if self.chunk_size == 0 {
            return Err(corrupt(
                "inode",
                nid,
                "chunk-based file in an image without a chunk size",
            ));
        }
        let count = r.size.div_ceil(u64::from(self.chunk_size));
        let idx_at = (off + r.inode_size + r.xattr_size()).div_ceil(8) * 8;
        self.budget
            .chunk_indexes
            .spend(count, "chunk indexes", idx_at)?;
        let table = self
            .b
            .slice(idx_at, count.saturating_mul(8), "chunk indexes")?;
        let mut ids = Vec::with_capacity(count as usize);
        for (i, raw) in table.chunks_exact(8).enumerate() {
            let c = ChunkIndex::ref_from_bytes(raw)
                .map_err(|_| corrupt("chunk index", idx_at, "bad"))?;
            let hi = c.blob_ci_hi.get();
            let dev = u32::from(hi & 0xff);
            if dev == 0 || dev > self.blob_count {
                return Err(corrupt(
                    "chunk index",
                    idx_at + 8 * i as u64,
                    &format!("device {dev} is not a blob of this image"),
                ));
            }
            let ci = (u32::from(hi >> 8) << 16) | u32::from(c.blob_ci_lo.get());
            let left = r.size - i as u64 * u64::from(self.chunk_size);
            let hint = left.min(u64::from(self.chunk_size)) as u32;
            ids.push(self.chunk_id(dev - 1, ci, c.blkaddr.get(), hint)?);
        }
        Ok(ids)
    }

    /// A plain image's flat plain file: contiguous blocks from `i_u` in the image itself,
    /// described as chunks of [`IN_IMAGE_CHUNK`] bytes of the blob standing for the image (the
    /// last of the table), so that another image can reference them as a device (mkfs.erofs's
    /// merge of layer images, formats/rafs-v6.md §20).
    fn in_image(&mut self, nid: u64, r: &RawInode) -> Result<Vec<ChunkId>> {
        if r.size == 0 {
            return Ok(Vec::new());
        }
        let start = u64::from(r.u) * self.block;
        if start
            .checked_add(r.size)
            .is_none_or(|end| end > self.b.len())
        {
            return Err(corrupt(
                "inode",
                nid,
                &format!("file data at block {} runs past the image", r.u),
            ));
        }
        let count = r.size.div_ceil(IN_IMAGE_CHUNK);
        self.budget
            .chunk_indexes
            .spend(count, "file data extents", start)?;
        let mut ids = Vec::with_capacity(count as usize);
        for i in 0..count {
            let at = start + i * IN_IMAGE_CHUNK;
            let size = (r.size - i * IN_IMAGE_CHUNK).min(IN_IMAGE_CHUNK) as u32;
            let id = ChunkId::new(self.chunks.len() as u32);
            self.chunks.push(ChunkInfo {
                digest: [0; 32],
                crc32: 0,
                blob_index: self.blob_count,
                index: self.in_image_chunks,
                compressed: false,
                has_crc32: false,
                encrypted: false,
                compressed_offset: at,
                compressed_size: size,
                uncompressed_offset: at,
                uncompressed_size: size,
            });
            self.digest_known.push(false);
            self.in_image_chunks += 1;
            ids.push(id);
        }
        Ok(ids)
    }

    fn inode(&mut self, nid: u64) -> Result<(Inode, u64, RawInode)> {
        let (off, r) = self.raw_inode(nid)?;
        if r.format & !0xf != 0 && r.format & 0x10 == 0 {
            return Err(corrupt(
                "inode",
                off,
                &format!("unknown format bits {:#x}", r.format),
            ));
        }
        let mode = u32::from(r.mode);
        let ft = FileType::from_mode(mode).ok_or_else(|| {
            corrupt(
                "inode",
                off + 4,
                &format!("unknown file type in mode {mode:#o}"),
            )
        })?;
        let kind = match ft {
            FileType::Regular => InodeKind::Regular(RegularFile {
                size: r.size,
                data: DataSource::None,
                chunks: self.file_chunks(nid, off, &r)?,
            }),
            FileType::Symlink => {
                if r.size > 4096 {
                    return Err(corrupt("symlink", off, "target longer than 4096 bytes"));
                }
                InodeKind::Symlink {
                    target: self.flat_data(nid, off, &r)?,
                }
            }
            _ => InodeKind::device(ft, r.u),
        };
        let mut inode = Inode::with_kind(kind, (mode & 0o7777) as u16);
        if self.explicit_uid_gid {
            inode.uid = r.uid;
            inode.gid = r.gid;
        }
        inode.mtime = r.mtime;
        inode.mtime_nsec = r.mtime_nsec;
        inode.set_xattrs(self.xattrs(off, &r)?);
        Ok((inode, off, r))
    }

    fn walk(&mut self, root_nid: u64) -> Result<(Tree, Vec<u64>)> {
        let (root, off, raw) = self.inode(root_nid)?;
        if root.file_type() != FileType::Directory {
            return Err(corrupt("root inode", off, "is not a directory"));
        }
        let mut tree = Tree::new(root);
        let mut nids: Vec<u64> = vec![root_nid];
        let mut by_nid: HashMap<u64, InodeId> = HashMap::from([(root_nid, InodeId::new(0))]);
        // (entry id, nid, depth, raw inode offset, parent nid)
        let mut stack = vec![(EntryId::ROOT, root_nid, 0usize, off, raw, root_nid)];
        while let Some((entry, nid, depth, off, raw, parent_nid)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(corrupt("directory", off, "nesting too deep"));
            }
            let mut children = self.dirents(nid, off, &raw)?;
            // "." and ".." must be what they say: a ".." naming anything else is a crafted
            // name, not a link to the parent
            for (n, child) in &children {
                let want = match n.as_slice() {
                    b"." => nid,
                    b".." => parent_nid,
                    _ => continue,
                };
                if *child != want {
                    return Err(corrupt(
                        "dirent",
                        off,
                        &format!(
                            "invalid file name {:?}: it points to nid {child}, not {want}",
                            String::from_utf8_lossy(n)
                        ),
                    ));
                }
            }
            children.retain(|(n, _)| n != b"." && n != b"..");
            for (name, child_nid) in children {
                let mut subdir = None;
                let ino = match by_nid.get(&child_nid).copied() {
                    Some(ino) => {
                        if tree[ino].file_type() == FileType::Directory {
                            return Err(corrupt(
                                "dirent",
                                off,
                                &format!("directory nid {child_nid} is linked twice"),
                            ));
                        }
                        ino
                    }
                    None => {
                        let (inode, coff, craw) = self.inode(child_nid)?;
                        let is_dir = inode.file_type() == FileType::Directory;
                        let ino = tree.add_inode(inode);
                        nids.push(child_nid);
                        by_nid.insert(child_nid, ino);
                        if is_dir {
                            subdir = Some((coff, craw));
                        }
                        ino
                    }
                };
                let e = tree
                    .add_entry(entry, &name, ino)
                    .map_err(|err| corrupt("dirent", off, &err.to_string()))?;
                if let Some((o, r)) = subdir {
                    stack.push((e, child_nid, depth + 1, o, r, nid));
                }
            }
        }
        tree.sort();
        Ok((tree, nids))
    }
}
