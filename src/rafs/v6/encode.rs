//! Second pass of the v6 encoder: writes the bootstrap at the places the layout assigned
//! (formats/rafs-v6.md).

use std::collections::{BTreeMap, HashMap};

use zerocopy::{FromBytes, IntoBytes};

use super::layout::{self, DataLayout, Layout};
use crate::codec::cipher::BlobKey;
use crate::codec::{Compressor, Digester};
use crate::error::{Error, Result};
use crate::format::blob::BlobFeatures;
use crate::format::rafs_v6::*;
use crate::model::{BlobEntry, ChunkInfo};
use crate::model::{ChunkId, EntryId, FileType, InodeId, Tree};

/// Metadata block size of native (non-tarfs) images.
pub const BLOCK_SIZE: u64 = 4096;
/// Metadata block size of tar-tarfs images (the tar's own block size).
pub const TARFS_BLOCK_SIZE: u64 = 512;
/// The superblock region, blob table, `meta_addr` and chunk table keep this alignment at
/// every block size (formats/rafs-v6.md §18).
pub const META_ALIGN: u64 = 4096;
/// Each blob of a flattened disk image starts on this boundary (formats/rafs-v6.md §15).
pub const MAPPED_BLOB_ALIGN: u64 = 0x80000;

/// Image-wide settings the bootstrap records.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Chunk size.
    pub chunk_size: u32,
    /// Compression recorded in the superblock flags.
    pub compressor: Compressor,
    /// Digest algorithm.
    pub digester: Digester,
    /// Record uid/gid (false for `--repeatable`, which stores 0).
    pub explicit_uid_gid: bool,
    /// Block size: [`BLOCK_SIZE`], or [`TARFS_BLOCK_SIZE`] for tarfs.
    pub block_size: u64,
    /// A tar-tarfs image (sets TARTFS_MODE).
    pub tarfs: bool,
    /// Address chunks inside the image itself, at the blobs' mapped block addresses, and
    /// declare no extra device: a disk image any EROFS reader opens (`export --single-device`).
    pub single_device: bool,
    /// Entries the prefetch table names, in table order (empty: no table).
    pub prefetch: Vec<EntryId>,
    /// Set HAS_XATTR even when no inode has an xattr, as upstream's merge always does
    /// (formats/blob.md §12); otherwise it is set when some inode has one.
    pub has_xattr: bool,
}

impl EncodeOptions {
    /// A tar-tarfs bootstrap (512-byte blocks, formats/rafs-v6.md §18): uid/gid kept, no
    /// prefetch table.
    pub fn tarfs(chunk_size: u32) -> EncodeOptions {
        EncodeOptions {
            digester: Digester::Sha256,
            block_size: TARFS_BLOCK_SIZE,
            tarfs: true,
            ..EncodeOptions::standalone(chunk_size)
        }
    }

    /// A plain EROFS image of 4096-byte blocks (no RAFS settings matter): uid/gid kept, no
    /// prefetch table; `chunk_size` for chunk-based files (a merge's, or none at all).
    pub fn standalone(chunk_size: u32) -> EncodeOptions {
        EncodeOptions {
            chunk_size,
            compressor: Compressor::None,
            digester: Digester::Blake3,
            explicit_uid_gid: true,
            block_size: BLOCK_SIZE,
            tarfs: false,
            single_device: false,
            prefetch: Vec::new(),
            has_xattr: false,
        }
    }
}

/// Block address of each blob in a flattened disk image: after the bootstrap, each on a 512 KiB
/// boundary after the one before (formats/rafs-v6.md §15).
pub fn mapped_blkaddrs(bootstrap_size: u64, blobs: &[BlobEntry], block: u64) -> Vec<u64> {
    let mut pos = bootstrap_size;
    blobs
        .iter()
        .map(|bl| {
            let mapped = align_up(pos, MAPPED_BLOB_ALIGN) / block;
            pos = (mapped + bl.uncompressed_size / block) * block;
            mapped
        })
        .collect()
}

fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn dirent_type(t: FileType) -> u8 {
    match t {
        FileType::Regular => file_type::REG,
        FileType::Directory => file_type::DIR,
        FileType::Symlink => file_type::LNK,
        FileType::CharDevice => file_type::CHR,
        FileType::BlockDevice => file_type::BLK,
        FileType::Fifo => file_type::FIFO,
        FileType::Socket => file_type::SOCK,
    }
}

fn id_bytes(id: &str) -> Result<[u8; 64]> {
    let mut out = [0u8; 64];
    if id.len() > 64 {
        return Err(Error::InvalidOption(format!(
            "blob id {id:?} is longer than 64 bytes"
        )));
    }
    out[..id.len()].copy_from_slice(id.as_bytes());
    Ok(out)
}

fn put(buf: &mut [u8], offset: u64, bytes: &[u8]) {
    let o = offset as usize;
    buf[o..o + bytes.len()].copy_from_slice(bytes);
}

/// Encodes `tree` (whose inodes reference `chunks` by id) as a RAFS v6 bootstrap.
pub fn encode(
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobEntry],
    opts: &EncodeOptions,
) -> Result<Vec<u8>> {
    let b = opts.block_size;
    if !b.is_power_of_two() || !(512..=BLOCK_SIZE).contains(&b) {
        return Err(Error::InvalidOption(format!(
            "block size {b} is not supported"
        )));
    }
    if blobs.len() > 254 {
        return Err(Error::Limit(format!(
            "{} blobs; a v6 image holds at most 254",
            blobs.len()
        )));
    }
    let layout = layout::compute(tree, b, opts.chunk_size)?;

    // Regions before the inode area (formats/rafs-v6.md §1).
    let nblobs = blobs.len() as u64;
    let blob_table_offset = align_up(DEVICE_TABLE_OFFSET as u64 + 128 * nblobs, META_ALIGN);
    let blob_table_size = 256 * nblobs;
    // like upstream, no prefetch table without a blob table (formats/rafs-v6.md §6)
    let prefetch_size = if blobs.is_empty() {
        0
    } else {
        4 * opts.prefetch.len() as u64
    };
    let meta_addr = if blobs.is_empty() {
        0
    } else {
        align_up(
            blob_table_offset + blob_table_size + prefetch_size,
            META_ALIGN,
        )
    };
    let inode_end = meta_addr + layout.end;

    // Chunk table: one record per (digest, blob), from the last file visiting it.
    let mut table: BTreeMap<([u8; 32], u32), ChunkRecord> = BTreeMap::new();
    for e in &layout.order {
        let inode = tree.inode_of(*e);
        if inode.file_type() != FileType::Regular {
            continue;
        }
        for (i, id) in inode.chunks().iter().enumerate() {
            let c = chunk(chunks, *id)?;
            table.insert(
                (c.digest, c.blob_index),
                c.to_record(i as u64 * u64::from(opts.chunk_size)),
            );
        }
    }
    let chunk_table_offset = align_up(inode_end, META_ALIGN);
    let chunk_table_size = 80 * table.len() as u64;
    let total = chunk_table_offset + align_up(chunk_table_size, META_ALIGN);
    let mut buf = vec![0u8; total as usize];

    write_superblocks(
        &mut buf,
        blobs,
        opts,
        &layout,
        meta_addr,
        blob_table_offset,
        chunk_table_offset,
        chunk_table_size,
        total,
    )?;
    if prefetch_size > 0 {
        write_prefetch_table(
            &mut buf,
            tree,
            opts,
            &layout,
            blob_table_offset + blob_table_size,
        )?;
    }
    let mapped = if opts.single_device {
        mapped_blkaddrs(total, blobs, opts.block_size)
    } else {
        Vec::new()
    };
    let data = FileData::Chunks {
        chunks,
        mapped: &mapped,
    };
    InodeWriter::new(tree, opts, &layout, meta_addr, data).write_all(&mut buf)?;
    for (i, rec) in table.values().enumerate() {
        put(&mut buf, chunk_table_offset + 80 * i as u64, rec.as_bytes());
    }
    Ok(buf)
}

/// The prefetch table at `offset`: the nid of each entry it names, right after the blob table
/// with no padding, and its place in the extended superblock (formats/rafs-v6.md §6).
fn write_prefetch_table(
    buf: &mut [u8],
    tree: &Tree,
    opts: &EncodeOptions,
    layout: &Layout,
    offset: u64,
) -> Result<()> {
    let mut table = Vec::with_capacity(4 * opts.prefetch.len());
    for e in &opts.prefetch {
        let place = layout.place(tree[*e].inode).ok_or_else(|| {
            Error::Internal(format!(
                "prefetch entry {} has no inode",
                tree.path(*e).display()
            ))
        })?;
        let nid = u32::try_from(place.offset / INODE_SLOT)
            .map_err(|_| Error::Limit("a prefetched inode's nid exceeds 32 bits".into()))?;
        table.extend_from_slice(&nid.to_le_bytes());
    }
    put(buf, offset, &table);
    let range = EXT_SUPERBLOCK_OFFSET..EXT_SUPERBLOCK_OFFSET + size_of::<ExtSuperBlock>();
    let ext = ExtSuperBlock::mut_from_bytes(&mut buf[range])
        .map_err(|_| Error::Internal("extended superblock out of place".into()))?;
    ext.prefetch_table_offset = offset.into();
    ext.prefetch_table_size = (table.len() as u32).into();
    Ok(())
}

fn chunk(chunks: &[ChunkInfo], id: ChunkId) -> Result<&ChunkInfo> {
    chunks.get(id.index()).ok_or_else(|| Error::Corrupt {
        what: "chunk reference",
        offset: u64::from(id.get()),
        reason: "no such chunk".into(),
    })
}

#[allow(clippy::too_many_arguments)]
fn write_superblocks(
    buf: &mut [u8],
    blobs: &[BlobEntry],
    opts: &EncodeOptions,
    layout: &Layout,
    meta_addr: u64,
    blob_table_offset: u64,
    chunk_table_offset: u64,
    chunk_table_size: u64,
    total: u64,
) -> Result<()> {
    let b = opts.block_size;
    let flags = rafs_flags(blobs, opts, layout);
    let data_blocks: u64 = blobs.iter().map(|bl| bl.uncompressed_size / b).sum();
    let sb = SuperBlock {
        magic: EROFS_MAGIC.into(),
        checksum: 0.into(),
        feature_compat: FEATURE_COMPAT_RAFS_V6.into(),
        blkszbits: b.trailing_zeros() as u8,
        extslots: 0,
        root_nid: (ROOT_NID as u16).into(),
        inos: (layout.order.len() as u64).into(),
        build_time: 0.into(),
        build_time_nsec: 0.into(),
        blocks: u32::try_from(if opts.single_device {
            // the whole disk image: bootstrap and every mapped blob
            mapped_blkaddrs(total, blobs, b)
                .last()
                .zip(blobs.last())
                .map(|(m, bl)| m + bl.uncompressed_size / b)
                .unwrap_or(total / b)
        } else {
            data_blocks
        })
        .map_err(|_| Error::Limit("blob data exceeds 2^32 blocks".into()))?
        .into(),
        meta_blkaddr: ((meta_addr / b) as u32).into(),
        xattr_blkaddr: 0.into(),
        uuid: [0; 16],
        volume_name: [0; 16],
        feature_incompat: (FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE).into(),
        u1: 0.into(),
        extra_devices: (if opts.single_device {
            0
        } else {
            blobs.len() as u16
        })
        .into(),
        devt_slotoff: DEVT_SLOTOFF.into(),
        reserved: [0; 38],
    };
    put(buf, SUPERBLOCK_OFFSET as u64, sb.as_bytes());
    let ext = ExtSuperBlock {
        flags: flags.into(),
        blob_table_offset: blob_table_offset.into(),
        blob_table_size: ((256 * blobs.len()) as u32).into(),
        chunk_size: opts.chunk_size.into(),
        chunk_table_offset: chunk_table_offset.into(),
        chunk_table_size: chunk_table_size.into(),
        prefetch_table_offset: 0.into(),
        prefetch_table_size: 0.into(),
        padding: 0.into(),
        reserved: [0; 200],
    };
    put(buf, EXT_SUPERBLOCK_OFFSET as u64, ext.as_bytes());

    write_blob_tables(buf, blobs, opts, blob_table_offset, total)
}

/// RafsSuperFlags of the image (formats/blob.md §8).
fn rafs_flags(blobs: &[BlobEntry], opts: &EncodeOptions, layout: &Layout) -> u64 {
    // a merge is encrypted when any of its layers is, as upstream marks it
    let encryption = if blobs.iter().any(|b| b.cipher.is_some()) {
        super_flags::ENCRYPTION_AES_128_XTS
    } else {
        super_flags::ENCRYPTION_NONE
    };
    let mut flags = encryption
        | super_flags::of_compressor(opts.compressor)
        | super_flags::of_digester(opts.digester);
    if opts.explicit_uid_gid {
        flags |= super_flags::EXPLICIT_UID_GID;
    }
    if opts.tarfs {
        flags |= super_flags::TARTFS_MODE;
    }
    if opts.has_xattr || layout.xattr_size.iter().any(|s| *s > 0) {
        flags |= super_flags::HAS_XATTR;
    }
    // set when every blob inlines its chunk digests, vacuously for no blob (upstream rule)
    if blobs
        .iter()
        .all(|bl| bl.features.contains(BlobFeatures::INLINED_CHUNK_DIGEST))
    {
        flags |= super_flags::INLINED_CHUNK_DIGEST;
    }
    flags
}

/// The device table and the blob table: one slot and one entry per blob.
fn write_blob_tables(
    buf: &mut [u8],
    blobs: &[BlobEntry],
    opts: &EncodeOptions,
    blob_table_offset: u64,
    total: u64,
) -> Result<()> {
    let b = opts.block_size;
    let mapped_all = mapped_blkaddrs(total, blobs, b);
    for (i, bl) in blobs.iter().enumerate() {
        let s = bl;
        let blocks = s.uncompressed_size / b;
        let mapped = mapped_all[i];
        let id = id_bytes(&bl.id)?;
        let slot = DeviceSlot {
            tag: id,
            blocks: (blocks as u32).into(),
            mapped_blkaddr: u32::try_from(mapped)
                .map_err(|_| Error::Limit("blob mapped beyond 2^32 blocks".into()))?
                .into(),
            reserved: [0; 56],
        };
        put(
            buf,
            DEVICE_TABLE_OFFSET as u64 + 128 * i as u64,
            slot.as_bytes(),
        );
        let cipher = CipherFields::of(bl.cipher.as_ref());
        let entry = crate::format::rafs_v6::BlobEntry {
            blob_id: id,
            blob_index: (i as u32).into(),
            chunk_size: opts.chunk_size.into(),
            chunk_count: s.chunk_count.into(),
            compression_algo: bl.compressor.code().into(),
            digest_algo: bl.digester.code().into(),
            features: s.features.bits().into(),
            compressed_size: s.compressed_size.into(),
            uncompressed_size: s.uncompressed_size.into(),
            blob_toc_size: s.refs.toc_size.into(),
            ci_compressor: s.ci_compressor.into(),
            ci_offset: s.ci_offset.into(),
            ci_compressed_size: s.ci_compressed_size.into(),
            ci_uncompressed_size: s.ci_uncompressed_size.into(),
            blob_toc_digest: s.refs.toc_digest,
            // an encrypted blob keeps its key where a ref blob keeps its meta digest
            blob_meta_digest: if bl.cipher.is_some() {
                cipher.key
            } else {
                s.refs.meta_digest
            },
            blob_meta_size: if bl.cipher.is_some() {
                cipher.iv_low
            } else {
                s.refs.meta_size
            }
            .into(),
            cipher_iv: cipher.iv_high,
            cipher_algo: cipher.algo.into(),
            reserved: [0; 36],
        };
        put(buf, blob_table_offset + 256 * i as u64, entry.as_bytes());
    }
    Ok(())
}

/// Where an encrypted blob's key and tweak go in its blob-table entry: upstream keeps them in
/// the clear in fields named for other things (formats/blob.md §10).
struct CipherFields {
    key: [u8; 32],
    iv_low: u64,
    iv_high: [u8; 8],
    algo: u32,
}

impl CipherFields {
    fn of(key: Option<&BlobKey>) -> CipherFields {
        match key {
            None => CipherFields {
                key: [0; 32],
                iv_low: 0,
                iv_high: [0; 8],
                algo: 0,
            },
            Some(k) => {
                let (low, high) = k.iv.split_at(8);
                CipherFields {
                    key: k.key,
                    iv_low: u64::from_le_bytes(low.try_into().unwrap_or([0; 8])),
                    iv_high: high.try_into().unwrap_or([0; 8]),
                    algo: crate::format::rafs_v6::CIPHER_AES_128_XTS,
                }
            }
        }
    }
}

/// The body of a regular file in a standalone EROFS image (no blobs, formats/rafs-v6.md §19).
#[derive(Debug, Clone)]
pub enum StandaloneFile {
    /// Data placed like a symlink target (small files): inline tail or a block of the metadata.
    Inline(Vec<u8>),
    /// Data in contiguous blocks outside the metadata, from block `blkaddr` (flat plain).
    Plain {
        /// First block of the data (absolute).
        blkaddr: u32,
    },
    /// An EROFS compressed layout.
    Compressed {
        /// Its extents (absolute block addresses), indexed after the inode.
        map: super::zmap::ExtentMap,
        /// Blocks of compressed data (`i_u`).
        blocks: u32,
    },
}

impl StandaloneFile {
    /// What the layout pass reserves after the inode.
    pub fn regular_layout(&self) -> layout::RegularLayout {
        match self {
            StandaloneFile::Inline(d) => layout::RegularLayout::Data(d.len() as u64),
            StandaloneFile::Plain { .. } => layout::RegularLayout::External,
            StandaloneFile::Compressed { map, .. } => {
                layout::RegularLayout::CompactIndex(map.lclusters())
            }
        }
    }
}

/// Writes every inode of a standalone image; regular files take their bodies from `files`.
pub(crate) fn write_standalone_inodes(
    buf: &mut [u8],
    tree: &Tree,
    opts: &EncodeOptions,
    layout: &Layout,
    files: &HashMap<InodeId, StandaloneFile>,
    meta_blkaddr: u64,
) -> Result<()> {
    let mut w = InodeWriter::new(tree, opts, layout, 0, FileData::Standalone(files));
    w.block_base = meta_blkaddr;
    w.write_all(buf)
}

/// Where regular files' data lives, which decides what follows their inodes.
enum FileData<'a> {
    /// RAFS: chunks in blobs; chunk indexes follow each file's inode. `mapped` holds each
    /// blob's block address in a single-device disk image (empty otherwise).
    Chunks {
        chunks: &'a [ChunkInfo],
        mapped: &'a [u64],
    },
    /// A standalone EROFS image: each file's inline data or compressed body, by inode.
    Standalone(&'a HashMap<InodeId, StandaloneFile>),
}

/// The on-disk layout, `i_u` and link count of one inode.
struct Shape {
    layout: DataLayout,
    u: u32,
    nlink: u32,
}

/// Writes the inodes the first pass placed, with what follows each (xattrs, inline data,
/// dirents, chunk indexes).
struct InodeWriter<'a> {
    tree: &'a Tree,
    opts: &'a EncodeOptions,
    layout: &'a Layout,
    meta_addr: u64,
    /// Block at which the metadata (`buf`) lies on disk when it is not at the image's start
    /// (a standalone image written data first): added to directory and symlink blocks.
    block_base: u64,
    data: FileData<'a>,
    links: Vec<u32>,
}

impl<'a> InodeWriter<'a> {
    fn new(
        tree: &'a Tree,
        opts: &'a EncodeOptions,
        layout: &'a Layout,
        meta_addr: u64,
        data: FileData<'a>,
    ) -> InodeWriter<'a> {
        InodeWriter {
            tree,
            opts,
            layout,
            meta_addr,
            block_base: 0,
            data,
            links: tree.link_counts(),
        }
    }

    fn nid_of(&self, ino: InodeId) -> u64 {
        self.layout
            .place(ino)
            .map(|p| p.offset / INODE_SLOT)
            .unwrap_or(0)
    }

    /// Every inode once, in layout order.
    fn write_all(&self, buf: &mut [u8]) -> Result<()> {
        let mut written = vec![false; self.tree.inodes.len()];
        for e in &self.layout.order {
            let ino = self.tree[*e].inode;
            if std::mem::replace(&mut written[ino.index()], true) {
                continue;
            }
            let Some(place) = self.layout.place(ino) else {
                continue;
            };
            let abs = self.meta_addr + place.offset;
            let shape = self.shape(*e, ino, &place)?;
            put(buf, abs, self.raw_inode(ino, &place, &shape).as_bytes());
            let xattr_bytes = self.layout.xattr_size[ino.index()];
            if xattr_bytes > 0 {
                write_xattrs(buf, abs + 64, &self.tree[ino])?;
            }
            self.write_body(buf, *e, ino, &place, abs + 64 + xattr_bytes)?;
        }
        Ok(())
    }

    fn shape(&self, e: EntryId, ino: InodeId, place: &layout::InodePlace) -> Result<Shape> {
        let b = self.opts.block_size;
        let inode = &self.tree[ino];
        let data_block = (self.block_base + (self.meta_addr + place.data_offset) / b) as u32;
        let (layout, u, nlink) = match inode.file_type() {
            FileType::Directory => {
                let subdirs = self.tree[e]
                    .children
                    .iter()
                    .filter(|c| self.tree.is_dir(**c))
                    .count();
                (place.layout, data_block, 2 + subdirs as u32)
            }
            FileType::Symlink => (place.layout, data_block, self.links[ino.index()]),
            FileType::Regular => match &self.data {
                FileData::Standalone(files) => match files.get(&ino) {
                    Some(StandaloneFile::Inline(_)) => {
                        (place.layout, data_block, self.links[ino.index()])
                    }
                    Some(StandaloneFile::Plain { blkaddr }) => {
                        (DataLayout::FlatPlain, *blkaddr, self.links[ino.index()])
                    }
                    Some(StandaloneFile::Compressed { blocks, .. }) => (
                        DataLayout::CompressedCompact,
                        *blocks,
                        self.links[ino.index()],
                    ),
                    None => (
                        DataLayout::ChunkBased,
                        chunk_format(inode, &[], self.opts.chunk_size, b)?,
                        self.links[ino.index()],
                    ),
                },
                FileData::Chunks { chunks, .. } => (
                    DataLayout::ChunkBased,
                    chunk_format(inode, chunks, self.opts.chunk_size, b)?,
                    self.links[ino.index()],
                ),
            },
            FileType::CharDevice | FileType::BlockDevice => {
                (DataLayout::FlatPlain, inode.rdev(), self.links[ino.index()])
            }
            FileType::Fifo | FileType::Socket => {
                (DataLayout::FlatPlain, 0, self.links[ino.index()])
            }
        };
        Ok(Shape { layout, u, nlink })
    }

    fn raw_inode(&self, ino: InodeId, place: &layout::InodePlace, shape: &Shape) -> InodeExtended {
        let inode = &self.tree[ino];
        let xattr_bytes = self.layout.xattr_size[ino.index()];
        let layout_bits = match shape.layout {
            DataLayout::FlatPlain => LAYOUT_FLAT_PLAIN,
            DataLayout::FlatInline => LAYOUT_FLAT_INLINE,
            DataLayout::ChunkBased => LAYOUT_CHUNK_BASED,
            DataLayout::CompressedCompact => LAYOUT_COMPRESSED_COMPACT,
        };
        let (uid, gid) = if self.opts.explicit_uid_gid {
            (inode.uid, inode.gid)
        } else {
            (0, 0)
        };
        InodeExtended {
            format: (INODE_EXTENDED | layout_bits << 1).into(),
            xattr_icount: (if xattr_bytes == 0 {
                0
            } else {
                ((xattr_bytes - 12) / 4 + 1) as u16
            })
            .into(),
            mode: (inode.mode() as u16).into(),
            reserved: 0.into(),
            size: place.size.into(),
            u: shape.u.into(),
            ino: place.index.into(),
            uid: uid.into(),
            gid: gid.into(),
            // negative times (before 1970) cannot be stored: they become the epoch
            mtime: (inode.mtime.max(0) as u64).into(),
            mtime_nsec: (if inode.mtime < 0 { 0 } else { inode.mtime_nsec }).into(),
            nlink: shape.nlink.into(),
            reserved2: [0; 16],
        }
    }

    /// What follows the inode (and its xattrs) at `after`, or goes to its data blocks.
    fn write_body(
        &self,
        buf: &mut [u8],
        e: EntryId,
        ino: InodeId,
        place: &layout::InodePlace,
        after: u64,
    ) -> Result<()> {
        let b = self.opts.block_size;
        let inode = &self.tree[ino];
        let data = self.meta_addr + place.data_offset;
        let in_blocks = |bytes: &[u8]| -> Vec<Vec<u8>> {
            bytes.chunks(b as usize).map(|c| c.to_vec()).collect()
        };
        match (inode.file_type(), &self.data) {
            (FileType::Directory, _) => {
                let blocks = self.dirent_blocks(e, place);
                write_block_data(buf, &blocks, place.layout, data, after, b);
            }
            (FileType::Symlink, _) => {
                write_block_data(
                    buf,
                    &in_blocks(inode.target()),
                    place.layout,
                    data,
                    after,
                    b,
                );
            }
            (FileType::Regular, FileData::Standalone(files)) => match files.get(&ino) {
                Some(StandaloneFile::Inline(bytes)) => {
                    write_block_data(buf, &in_blocks(bytes), place.layout, data, after, b)
                }
                Some(StandaloneFile::Compressed { map, .. }) => {
                    put(buf, after.div_ceil(8) * 8, &map.encode(after)?)
                }
                Some(StandaloneFile::Plain { .. }) | None => {}
            },
            (FileType::Regular, FileData::Chunks { chunks, mapped }) => {
                let mut off = after.div_ceil(8) * 8;
                for id in inode.chunks() {
                    let idx = self.chunk_index(chunk(chunks, *id)?, mapped)?;
                    put(buf, off, idx.as_bytes());
                    off += 8;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A directory's dirent blocks: per block, the dirents, then their names.
    fn dirent_blocks(&self, e: EntryId, place: &layout::InodePlace) -> Vec<Vec<u8>> {
        let tree = self.tree;
        let list = layout::dirents(tree, e);
        let names: Vec<&[u8]> = list.iter().map(|d| d.0).collect();
        let (blocks, size) = layout::pack_dirents(&names, self.opts.block_size);
        let mut block_data = Vec::with_capacity(blocks.len());
        for range in &blocks {
            let mut blk = Vec::new();
            let mut nameoff = (12 * range.len()) as u16;
            for i in range.clone() {
                let target = tree[list[i].1].inode;
                let d = Dirent {
                    nid: self.nid_of(target).into(),
                    nameoff: nameoff.into(),
                    file_type: dirent_type(tree[target].file_type()),
                    reserved: 0,
                };
                blk.extend_from_slice(d.as_bytes());
                nameoff += list[i].0.len() as u16;
            }
            for i in range.clone() {
                blk.extend_from_slice(list[i].0);
            }
            block_data.push(blk);
        }
        debug_assert_eq!(size, place.size);
        block_data
    }

    /// The chunk index of `c`: by blob and chunk index, or (single device) by the block where
    /// its data sits in the disk image.
    fn chunk_index(&self, c: &ChunkInfo, mapped: &[u64]) -> Result<ChunkIndex> {
        let b = self.opts.block_size;
        if self.opts.single_device {
            let base = mapped.get(c.blob_index as usize).copied().unwrap_or(0);
            return Ok(ChunkIndex {
                blob_ci_lo: 0.into(),
                blob_ci_hi: 0.into(),
                blkaddr: u32::try_from(base + c.uncompressed_offset / b)
                    .map_err(|_| Error::Limit("disk image larger than 2^32 blocks".into()))?
                    .into(),
            });
        }
        let hi = (c.blob_index + 1) as u16 | (((c.index >> 16) & 0xff) as u16) << 8;
        Ok(ChunkIndex {
            blob_ci_lo: (c.index as u16).into(),
            blob_ci_hi: hi.into(),
            blkaddr: u32::try_from(c.uncompressed_offset / b)
                .map_err(|_| Error::Limit("blob larger than 2^32 blocks".into()))?
                .into(),
        })
    }
}

/// Writes directory or symlink data: full blocks at `data`, and the partial tail either after
/// the inode (inline) or as one more block.
fn write_block_data(
    buf: &mut [u8],
    blocks: &[Vec<u8>],
    layout: DataLayout,
    data: u64,
    after_inode: u64,
    b: u64,
) {
    let n = blocks.len();
    for (i, blk) in blocks.iter().enumerate() {
        let is_tail = i + 1 == n && (blk.len() as u64) < b;
        if is_tail && layout == DataLayout::FlatInline {
            put(buf, after_inode, blk);
        } else {
            put(buf, data + i as u64 * b, blk);
        }
    }
}

fn write_xattrs(buf: &mut [u8], at: u64, inode: &crate::model::Inode) -> Result<()> {
    let mut entries: Vec<(u8, &[u8], &[u8])> = inode
        .xattrs
        .iter()
        .filter_map(|(k, v)| layout::split_xattr_name(k).map(|(i, s)| (i, s, v.as_slice())))
        .collect();
    entries.sort();
    put(buf, at, XattrIbodyHeader::default().as_bytes());
    let mut off = at + 12;
    for (index, suffix, value) in entries {
        let h = XattrEntry {
            name_len: suffix.len() as u8,
            name_index: index,
            value_size: (value.len() as u16).into(),
        };
        put(buf, off, h.as_bytes());
        put(buf, off + 4, suffix);
        put(buf, off + 4 + suffix.len() as u64, value);
        off += (4 + suffix.len() + value.len()).div_ceil(4) as u64 * 4;
    }
    Ok(())
}

/// The chunk-based format word of a regular file (formats/rafs-v6.md §9): one large chunk
/// when the data is contiguous in one blob, so the kernel maps it in one go.
fn chunk_format(
    inode: &crate::model::Inode,
    chunks: &[ChunkInfo],
    chunk_size: u32,
    block: u64,
) -> Result<u32> {
    let mut contiguous = true;
    let mut prev: Option<&ChunkInfo> = None;
    for id in inode.chunks() {
        let c = chunk(chunks, *id)?;
        if let Some(p) = prev {
            if p.blob_index != c.blob_index
                || p.uncompressed_offset + u64::from(chunk_size) != c.uncompressed_offset
            {
                contiguous = false;
            }
        }
        prev = Some(c);
    }
    let size = if contiguous && inode.size() > u64::from(chunk_size) {
        inode.size().next_power_of_two()
    } else {
        u64::from(chunk_size)
    };
    let mut bits = size.trailing_zeros() - block.trailing_zeros();
    if bits > 0x1f {
        // the field has 5 bits: beyond 2^31 blocks, fall back to the image chunk size
        bits = chunk_size.trailing_zeros() - block.trailing_zeros();
    }
    Ok(u32::from(CHUNK_FORMAT_INDEXES) | bits)
}
