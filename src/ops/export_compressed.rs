//! `export --block --compressor ALGO`: a standalone EROFS image whose regular files use EROFS's
//! own compressed layout, so the kernel decompresses them (formats/rafs-v6.md §19). One file, no
//! blobs, no devices: small and mountable.
//!
//! Each file is cut at 4 KiB logical-cluster boundaries into extents of up to 16 clusters; an
//! extent is stored compressed (right-aligned in whole blocks, "0-padding") when that saves at
//! least one block, otherwise cluster by cluster uncompressed. Files under one block are stored
//! inline, as mkfs.erofs does.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use rayon::prelude::*;
use zerocopy::IntoBytes;

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, IoContext, Result};
use crate::format::erofs_z::*;
use crate::format::rafs_v6::*;
use crate::io::staged::{persist, temp_beside};
use crate::model::{ChunkId, FileType, InodeId};
use crate::ops::opened::OpenedImage;
use crate::rafs::v6::encode::{write_standalone_inodes, EncodeOptions, StandaloneFile};
use crate::rafs::v6::layout::{self, RegularLayout};
use crate::rafs::v6::zmap::{ExtentHead, ExtentMap};

const BLOCK: u64 = 4096;
/// Logical clusters per extent: 64 KiB of input per compressed physical cluster at most.
const EXTENT_CLUSTERS: u64 = 16;

/// EROFS compression algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErofsCompressor {
    /// LZ4 (fast).
    Lz4,
    /// LZ4 high compression (same on-disk format as LZ4).
    Lz4hc,
    /// Zstandard (Linux 6.10+).
    Zstd,
    /// MicroLZMA (Linux 5.16+).
    Lzma,
}

impl std::str::FromStr for ErofsCompressor {
    type Err = Error;
    /// Parses `lz4`, `lz4hc`, `zstd`, `lzma`.
    fn from_str(s: &str) -> Result<ErofsCompressor> {
        match s {
            "lz4" => Ok(ErofsCompressor::Lz4),
            "lz4hc" => Ok(ErofsCompressor::Lz4hc),
            "zstd" => Ok(ErofsCompressor::Zstd),
            "lzma" => Ok(ErofsCompressor::Lzma),
            _ => Err(Error::InvalidOption(format!(
                "unknown EROFS compressor {s:?}: lz4, lz4hc, zstd or lzma"
            ))),
        }
    }
}

impl std::fmt::Display for ErofsCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErofsCompressor::Lz4 => "lz4",
            ErofsCompressor::Lz4hc => "lz4hc",
            ErofsCompressor::Zstd => "zstd",
            ErofsCompressor::Lzma => "lzma",
        })
    }
}

/// The output `export --compressor` writes when `--output` is not given: `<bootstrap>.erofs`.
pub fn default_output(bootstrap: &std::path::Path) -> PathBuf {
    let mut p = bootstrap.as_os_str().to_os_string();
    p.push(".erofs");
    PathBuf::from(p)
}

impl ErofsCompressor {
    /// `Z_EROFS_COMPRESSION_*` code.
    fn code(self) -> u8 {
        match self {
            ErofsCompressor::Lz4 | ErofsCompressor::Lz4hc => 0,
            ErofsCompressor::Lzma => 1,
            ErofsCompressor::Zstd => 3,
        }
    }
}

/// How file data is compressed into EROFS extents: the algorithm, its level, and the input
/// size of one extent, which bounds a physical cluster (formats/rafs-v6.md §19.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErofsCompression {
    /// The algorithm.
    pub algo: ErofsCompressor,
    /// Its level (`None`: the algorithm's default here: lz4hc 9, zstd 9, lzma 6).
    pub level: Option<u32>,
    /// Blocks of a physical cluster at most: 2 to 256. Without `fill`, also the input of
    /// each extent.
    pub extent_blocks: u32,
    /// Size each extent's input so that its output nearly fills a physical cluster (what an
    /// explicit `mkfs.erofs -C` asks for); otherwise every extent takes `extent_blocks`
    /// blocks of input (formats/rafs-v6.md §19.1).
    pub fill: bool,
}

/// One extent of a file: the input bytes it covers, and its compressed form when that saves a
/// block.
#[derive(Debug)]
pub(crate) struct Packed {
    len: usize,
    stored: Option<Vec<u8>>,
}

/// Of a physical cluster, how much a filled extent's output aims at: a little room, so that
/// few extents overflow and are split.
const FILL_TARGET: f64 = 0.9;
/// A filled extent takes at most this many physical clusters of input.
const FILL_MAX_INPUT: usize = 8;
/// The most input one fixed-output extent takes (erofs-utils' window, well under the 12 MiB
/// a reader allows per physical cluster and the 2048 lclusters an index can count).
const FIXED_MAX_INPUT: usize = 4000 * 1024;

impl ErofsCompression {
    /// `export --compressor`'s settings: 64 KiB extents, the default levels.
    pub fn export(algo: ErofsCompressor) -> ErofsCompression {
        ErofsCompression {
            algo,
            level: None,
            extent_blocks: EXTENT_CLUSTERS as u32,
            fill: false,
        }
    }

    fn extent_bytes(self) -> usize {
        self.extent_blocks as usize * BLOCK as usize
    }

    /// The per-algorithm configuration record written after the superblock.
    fn config(self) -> Vec<u8> {
        let extent = self.extent_bytes() as u32;
        match self.algo {
            ErofsCompressor::Lz4 | ErofsCompressor::Lz4hc => Lz4Config {
                size: 14.into(),
                max_distance: 65535.into(),
                max_pclusterblks: (self.extent_blocks as u16).into(),
                reserved: [0; 10],
            }
            .as_bytes()
            .to_vec(),
            ErofsCompressor::Lzma => LzmaConfig {
                size: 14.into(),
                dict_size: extent.into(),
                format: 0.into(),
                reserved: [0; 8],
            }
            .as_bytes()
            .to_vec(),
            ErofsCompressor::Zstd => ZstdConfig {
                size: 6.into(),
                format: 0,
                // a frame holds one extent: its window need not be larger
                windowlog: (extent.next_power_of_two().trailing_zeros().max(17) - 10) as u8,
                reserved: [0; 4],
            }
            .as_bytes()
            .to_vec(),
        }
    }

    /// One extent compressed, when it is more than a block (a block cannot shrink).
    fn pack(self, extent: &[u8]) -> Result<Option<Vec<u8>>> {
        if extent.len() as u64 > BLOCK {
            self.compress(extent).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The input of the next extent, `left` bytes remaining, `ratio` the output/input seen
    /// so far: whole blocks, all that is left at the file's end.
    fn next_len(self, ratio: f64, left: usize) -> usize {
        let cluster = self.extent_bytes();
        let len = if self.fill {
            let want = (cluster as f64 * FILL_TARGET / ratio.max(0.01)) as usize;
            want.clamp(cluster / 2, cluster * FILL_MAX_INPUT) / BLOCK as usize * BLOCK as usize
        } else {
            cluster
        };
        len.min(left)
    }

    /// Packs one extent; with `fill`, one whose output would overflow the physical cluster
    /// is split in two (at a block) and each half packed again.
    fn pack_fitting(self, extent: &[u8]) -> Result<Vec<Packed>> {
        let stored = self.pack(extent)?;
        let fits = stored
            .as_ref()
            .is_none_or(|p| p.len() <= self.extent_bytes() || extent.len() <= self.extent_bytes());
        if fits {
            return Ok(vec![Packed {
                len: extent.len(),
                stored,
            }]);
        }
        let half = (extent.len() / 2).div_ceil(BLOCK as usize) * BLOCK as usize;
        let mut out = self.pack_fitting(&extent[..half])?;
        out.extend(self.pack_fitting(&extent[half..])?);
        Ok(out)
    }

    /// The ratio a run of packed extents achieved (stored plain counts as 1).
    fn ratio_of(packed: &[Packed]) -> Option<f64> {
        let input: usize = packed.iter().map(|p| p.len).sum();
        let output: usize = packed
            .iter()
            .map(|p| p.stored.as_ref().map_or(p.len, |s| s.len().min(p.len)))
            .sum();
        (input > 0).then(|| output as f64 / input as f64)
    }

    /// Whether filled extents come from liblz4's fixed-output compressor, which takes as
    /// much input as fits a physical cluster: they then end anywhere, not on a block
    /// (formats/rafs-v6.md §19.1).
    fn fixed_output(self) -> bool {
        self.fill && matches!(self.algo, ErofsCompressor::Lz4 | ErofsCompressor::Lz4hc)
    }

    /// Every extent of a whole file, packed one after the other on this thread.
    pub(crate) fn pack_file(self, data: &[u8]) -> Result<Vec<Packed>> {
        if self.fixed_output() {
            return self.pack_segment(data);
        }
        let mut out = Vec::new();
        // formats/rafs-v6.md §19.1: the first extent's guess
        let mut ratio = 0.7;
        let mut at = 0;
        while at < data.len() {
            let len = self.next_len(ratio, data.len() - at);
            let packed = self.pack_fitting(&data[at..at + len])?;
            ratio = Self::ratio_of(&packed).unwrap_or(ratio);
            at += len;
            out.extend(packed);
        }
        Ok(out)
    }

    /// A run of a file's bytes cut into extents that each fill one physical cluster: the
    /// longest input whose compressed form fits it, compressed when that saves a block;
    /// otherwise whole blocks of it stored plain (formats/rafs-v6.md §19.1).
    fn pack_segment(self, data: &[u8]) -> Result<Vec<Packed>> {
        let cluster = self.extent_bytes();
        let level = match self.algo {
            ErofsCompressor::Lz4hc => Some(self.level.unwrap_or(9) as i32),
            _ => None,
        };
        let block = BLOCK as usize;
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let window = &data[at..data.len().min(at + FIXED_MAX_INPUT)];
            let filled = lz4dest::compress_dest_size(window, cluster, level)
                .filter(|f| f.consumed > 0)
                .ok_or_else(|| Error::Codec {
                    algo: "lz4",
                    reason: "fixed-output compression failed".into(),
                })?;
            // a compressed extent spans at least two lclusters (it saves a block), so the
            // next one starts in a later lcluster, as the index needs
            if filled.data.len().div_ceil(block) < filled.consumed.div_ceil(block) {
                at += filled.consumed;
                out.push(Packed {
                    len: filled.consumed,
                    stored: Some(filled.data),
                });
            } else {
                let len = if at + filled.consumed == data.len() {
                    filled.consumed
                } else {
                    (filled.consumed / block).max(1) * block
                }
                .min(data.len() - at);
                at += len;
                out.push(Packed { len, stored: None });
            }
        }
        Ok(out)
    }

    fn compress(self, input: &[u8]) -> Result<Vec<u8>> {
        let codec = |algo: &'static str, e: std::io::Error| Error::Codec {
            algo,
            reason: e.to_string(),
        };
        match self.algo {
            ErofsCompressor::Lz4 => {
                lz4::block::compress(input, Some(lz4::block::CompressionMode::DEFAULT), false)
                    .map_err(|e| codec("lz4", e))
            }
            ErofsCompressor::Lz4hc => lz4::block::compress(
                input,
                Some(lz4::block::CompressionMode::HIGHCOMPRESSION(
                    self.level.unwrap_or(9) as i32,
                )),
                false,
            )
            .map_err(|e| codec("lz4hc", e)),
            ErofsCompressor::Zstd => zstd::bulk::compress(input, self.level.unwrap_or(9) as i32)
                .map_err(|e| codec("zstd", e)),
            ErofsCompressor::Lzma => {
                microlzma::compress(input, self.extent_bytes() as u32, self.level.unwrap_or(6))
                    .ok_or_else(|| Error::Codec {
                        algo: "lzma",
                        reason: "MicroLZMA encoder failed".into(),
                    })
            }
        }
    }
}

/// Options of the compressed export.
#[derive(Debug, Clone)]
pub struct CompressedExportOptions {
    /// The bootstrap (v5 or v6) to export.
    pub bootstrap: PathBuf,
    /// Where its blobs are.
    pub blobs: BlobSource,
    /// Output image.
    pub output: PathBuf,
    /// Compression.
    pub compressor: ErofsCompressor,
}

/// Reads a small file's data through its chunks, in order.
fn file_bytes(reader: &mut ChunkReader, chunks: &[ChunkId]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for id in chunks {
        out.extend_from_slice(&reader.read(*id)?);
    }
    Ok(out)
}

/// Writes the image; returns its size.
pub fn export(opts: &CompressedExportOptions) -> Result<u64> {
    let OpenedImage {
        image,
        blobs: source,
    } = OpenedImage::open(&opts.bootstrap, &opts.blobs)?;
    let mut reader = ChunkReader::new(&image, source);
    // compressed data goes to a scratch file beside the output, blocks numbered from 0
    // (registered, so that an interruption removes it; it is dropped, and so removed, at the end)
    let mut data = temp_beside(&opts.output)?;
    let how = ErofsCompression::export(opts.compressor);
    let (mut files, data_blocks) =
        compress_files(&image.tree, &mut reader, how, data.as_file_mut())?;
    let lay = layout::compute_with(&image.tree, BLOCK, &|ino, _| match files.get(&ino) {
        Some(f) => f.regular_layout(),
        None => RegularLayout::Data(0),
    })?;
    let meta_end = (lay.end).div_ceil(BLOCK) * BLOCK;
    let data_start = meta_end / BLOCK;
    relocate_indexes(&mut files, data_start)?;
    let total_blocks = data_start + data_blocks;
    let mut meta = vec![0u8; meta_end as usize];
    standalone_superblock(
        &mut meta,
        Some(how),
        lay.order.len() as u64,
        total_blocks,
        0,
        &ImageIdentity::default(),
    )?;
    let eopts = EncodeOptions::standalone(crate::format::blob::DEFAULT_CHUNK_SIZE);
    write_standalone_inodes(&mut meta, &image.tree, &eopts, &lay, &files, 0)?;

    let mut tmp = temp_beside(&opts.output)?;
    {
        let out = tmp.as_file_mut();
        out.write_all(&meta).ctx("write", &opts.output)?;
        let dpath = data.path().to_path_buf();
        let f = data.as_file_mut();
        f.seek(SeekFrom::Start(0)).ctx("seek", dpath)?;
        std::io::copy(&mut f.take(data_blocks * BLOCK), out).ctx("write", &opts.output)?;
    }
    persist(tmp, &opts.output)?;
    Ok(total_blocks * BLOCK)
}

/// Every regular file's body: small files inline, the others compressed into `data` (blocks
/// numbered from 0). Returns the bodies by inode and the data blocks written.
fn compress_files(
    tree: &crate::model::Tree,
    reader: &mut ChunkReader,
    how: ErofsCompression,
    data: &mut std::fs::File,
) -> Result<(HashMap<InodeId, StandaloneFile>, u64)> {
    let mut files: HashMap<InodeId, StandaloneFile> = HashMap::new();
    let mut next_block = 0u64;
    let mut done = vec![false; tree.inodes.len()];
    for e in tree.numbering_order() {
        let ino = tree[e].inode;
        let inode = &tree[ino];
        if inode.file_type() != FileType::Regular || std::mem::replace(&mut done[ino.index()], true)
        {
            continue;
        }
        let file = if inode.size() < BLOCK {
            StandaloneFile::Inline(file_bytes(reader, inode.chunks())?)
        } else {
            compress_file(reader, inode, how, data, &mut next_block)?
        };
        files.insert(ino, file);
    }
    Ok((files, next_block))
}

/// Index block addresses were relative to the data area; the data area starts at block
/// `data_start`.
fn relocate_indexes(files: &mut HashMap<InodeId, StandaloneFile>, data_start: u64) -> Result<()> {
    for f in files.values_mut() {
        match f {
            StandaloneFile::Compressed { map, .. } => map.relocate(data_start)?,
            StandaloneFile::Plain { blkaddr } => {
                *blkaddr = u32::try_from(u64::from(*blkaddr) + data_start)
                    .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))?;
            }
            StandaloneFile::Inline(_) => {}
        }
    }
    Ok(())
}

/// What a standalone image's superblock records besides its layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageIdentity {
    /// The filesystem UUID.
    pub uuid: [u8; 16],
    /// Build time, seconds since the epoch.
    pub build_time: u64,
    /// Volume label, NUL-padded.
    pub volume_name: [u8; 16],
}

/// Writes the superblock of a standalone image (and, when compressed, the compression
/// configuration after it) into `block0`, the image's first 4096 bytes.
pub(crate) fn standalone_superblock(
    block0: &mut [u8],
    compression: Option<ErofsCompression>,
    inodes: u64,
    total_blocks: u64,
    meta_blkaddr: u64,
    id: &ImageIdentity,
) -> Result<()> {
    let too_large = || Error::Limit("image larger than 2^32 blocks".into());
    let sb = SuperBlock {
        magic: EROFS_MAGIC.into(),
        checksum: 0.into(),
        feature_compat: 0.into(),
        blkszbits: 12,
        extslots: 0,
        root_nid: (ROOT_NID as u16).into(),
        inos: inodes.into(),
        build_time: id.build_time.into(),
        build_time_nsec: 0.into(),
        blocks: u32::try_from(total_blocks).map_err(|_| too_large())?.into(),
        meta_blkaddr: u32::try_from(meta_blkaddr).map_err(|_| too_large())?.into(),
        xattr_blkaddr: 0.into(),
        uuid: id.uuid,
        volume_name: id.volume_name,
        // zero padding (right-aligned compressed data), compression configs / big pclusters
        feature_incompat: compression
            .map_or(0, |_| {
                FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_COMPR_CFGS
            })
            .into(),
        u1: compression.map_or(0, |c| 1u16 << c.algo.code()).into(),
        extra_devices: 0.into(),
        devt_slotoff: 0.into(),
        reserved: [0; 38],
    };
    block0[SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 128].copy_from_slice(sb.as_bytes());
    if let Some(c) = compression {
        let cfg = c.config();
        block0[EXT_SUPERBLOCK_OFFSET..EXT_SUPERBLOCK_OFFSET + cfg.len()].copy_from_slice(&cfg);
    }
    Ok(())
}

/// Compresses one file into `data`, returning its map header and indexes.
fn compress_file(
    reader: &mut ChunkReader,
    inode: &crate::model::Inode,
    how: ErofsCompression,
    data: &mut std::fs::File,
    next_block: &mut u64,
) -> Result<StandaloneFile> {
    let mut w = ExtentWriter::new(how, *next_block, inode.size());
    let mut left = inode.size();
    for id in inode.chunks() {
        let bytes = reader.read(*id)?;
        let take = (bytes.len() as u64).min(left) as usize;
        w.push(&bytes[..take], data)?;
        left -= take as u64;
    }
    if left > 0 {
        return Err(Error::Corrupt {
            what: "file data",
            offset: inode.size() - left,
            reason: "chunks end before the file".into(),
        });
    }
    let (file, next) = w.finish(data)?;
    *next_block = next;
    Ok(file)
}

/// One regular file compressed into EROFS extents as its bytes arrive (formats/rafs-v6.md
/// §19.1): a window of extents is compressed in parallel, then written in order, its blocks
/// numbered from the block given at the start. Memory: one window, whatever the file's size.
pub(crate) struct ExtentWriter {
    how: ErofsCompression,
    size: u64,
    pending: Vec<u8>,
    window: usize,
    next_block: u64,
    blocks: u64,
    /// Output/input of what was compressed so far (sizes filled extents).
    ratio: f64,
    /// Bytes of the file already placed in extents.
    placed: u64,
    /// Every extent so far, in file order; the index is made from them at the end.
    heads: Vec<ExtentHead>,
}

/// Of a file, the bytes each parallel task packs with [`ErofsCompression::pack_segment`];
/// segments start at multiples of it whatever the window, so the image does not depend on
/// how the bytes arrived or on the thread count.
const FIXED_SEGMENT: usize = 16 << 20;

impl ExtentWriter {
    /// A writer for a file of `size` bytes whose data starts at block `first_block`.
    pub(crate) fn new(how: ErofsCompression, first_block: u64, size: u64) -> ExtentWriter {
        ExtentWriter {
            how,
            size,
            pending: Vec::new(),
            // filled extents are sized by the ratio of the window before: the window must not
            // depend on the thread count, or the image would
            window: if how.fixed_output() {
                FIXED_SEGMENT
            } else if how.fill {
                how.extent_bytes() * FILL_MAX_INPUT * 8
            } else {
                how.extent_bytes() * 4 * rayon::current_num_threads().max(1)
            },
            next_block: first_block,
            blocks: 0,
            ratio: 0.7,
            placed: 0,
            heads: Vec::new(),
        }
    }

    /// Takes the file's next bytes; compresses and writes every full window.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut dyn Write) -> Result<()> {
        if self.pending.capacity() == 0 {
            // a window and the piece that fills it, not the double a growing Vec would take
            let most = (self.window + bytes.len()).min(self.size as usize);
            self.pending.reserve_exact(most.max(bytes.len()));
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= self.window {
            self.flush(self.window, out)?;
        }
        Ok(())
    }

    /// Writes what is left; returns the file's body and the next free block.
    pub(crate) fn finish(mut self, out: &mut dyn Write) -> Result<(StandaloneFile, u64)> {
        self.flush(self.pending.len(), out)?;
        // nothing compressed: its blocks are a plain file's, which needs no index (as
        // erofs-utils stores an incompressible file)
        if let (true, Some(first)) = (
            self.heads.iter().all(|h| h.compressed.is_none()),
            self.heads.first(),
        ) {
            let blkaddr = first.blkaddr;
            return Ok((StandaloneFile::Plain { blkaddr }, self.next_block));
        }
        let blocks = u32::try_from(self.blocks)
            .map_err(|_| Error::Limit("file larger than 2^32 blocks".into()))?;
        Ok((
            StandaloneFile::Compressed {
                map: ExtentMap {
                    algorithm: self.how.algo.code(),
                    size: self.size,
                    heads: self.heads,
                },
                blocks,
            },
            self.next_block,
        ))
    }

    /// Compresses the first `take` pending bytes (whole blocks but for the file's last) in
    /// parallel and writes them in order: fixed-output segments, or extents sized by the
    /// ratio seen so far.
    fn flush(&mut self, take: usize, out: &mut dyn Write) -> Result<()> {
        let how = self.how;
        let mut pending = std::mem::take(&mut self.pending);
        let packed: Vec<Packed> = if how.fixed_output() {
            pending[..take]
                .par_chunks(FIXED_SEGMENT)
                .map(|s| how.pack_segment(s))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect()
        } else {
            let mut extents: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            while at < take {
                let len = how.next_len(self.ratio, take - at);
                extents.push(&pending[at..at + len]);
                at += len;
            }
            let packed: Vec<Packed> = extents
                .par_iter()
                .map(|e| how.pack_fitting(e))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect();
            self.ratio = ErofsCompression::ratio_of(&packed).unwrap_or(self.ratio);
            packed
        };
        self.emit(&pending[..take], packed, out)?;
        pending.drain(..take);
        self.pending = pending;
        Ok(())
    }

    /// A whole file at once, its extents already packed ([`ErofsCompression::pack_file`]):
    /// how many small files are compressed side by side, each on one thread, then written in
    /// order.
    pub(crate) fn whole(
        how: ErofsCompression,
        first_block: u64,
        data: &[u8],
        packed: Vec<Packed>,
        out: &mut dyn Write,
    ) -> Result<(StandaloneFile, u64)> {
        let mut w = ExtentWriter::new(how, first_block, data.len() as u64);
        w.emit(data, packed, out)?;
        w.finish(out)
    }

    /// Writes `data`'s extents in order, each compressed (right-aligned in its blocks) when
    /// its packed form saves a block, else in plain one-block pieces; records where each
    /// starts.
    fn emit(&mut self, data: &[u8], packed: Vec<Packed>, out: &mut dyn Write) -> Result<()> {
        let mut written = Vec::new();
        let mut at = 0;
        for p in packed {
            let extent = &data[at..at + p.len];
            at += p.len;
            written.clear();
            let n = (extent.len() as u64).div_ceil(BLOCK);
            match p.stored {
                Some(p) if (p.len() as u64).div_ceil(BLOCK) < n => {
                    let k = (p.len() as u64).div_ceil(BLOCK);
                    // right-aligned in its blocks: the decompressor skips the leading zeros
                    written.resize((k * BLOCK) as usize - p.len(), 0);
                    written.extend_from_slice(&p);
                    self.place(extent.len(), Some(k as u32))?;
                }
                _ => {
                    for piece in extent.chunks(BLOCK as usize) {
                        written.extend_from_slice(piece);
                        written.resize(written.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
                        self.place(piece.len(), None)?;
                    }
                    self.close_shifted_tail()?;
                }
            }
            out.write_all(&written).ctx("write", "compressed data")?;
        }
        Ok(())
    }

    /// When the file's last plain block started inside an lcluster and runs into the next,
    /// that last lcluster gets a head of its own at the same offset, past the end of the
    /// file (as erofs-utils writes it): the reader then maps the lcluster's bytes to the
    /// block before, which holds them, rather than to a whole lcluster of one block.
    fn close_shifted_tail(&mut self) -> Result<()> {
        let Some(last) = self.heads.last().copied() else {
            return Ok(());
        };
        let crosses = last.start / BLOCK != (self.placed - 1) / BLOCK;
        if last.compressed.is_none() && self.placed == self.size && crosses {
            self.heads.push(ExtentHead {
                start: self.placed / BLOCK * BLOCK + last.start % BLOCK,
                blkaddr: last.blkaddr,
                compressed: None,
            });
        }
        Ok(())
    }

    /// Records an extent of `len` bytes starting at the next free block, `compressed` into
    /// that many blocks or one block plain.
    fn place(&mut self, len: usize, compressed: Option<u32>) -> Result<()> {
        let blkaddr = u32::try_from(self.next_block)
            .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))?;
        self.heads.push(ExtentHead {
            start: self.placed,
            blkaddr,
            compressed,
        });
        let k = u64::from(compressed.unwrap_or(1));
        self.placed += len as u64;
        self.next_block += k;
        self.blocks += k;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text-like input that compresses about 3:1 with lz4hc.
    fn sample(len: usize) -> Vec<u8> {
        let words = ["erofs ", "forge ", "cluster ", "extent ", "block ", "zero "];
        let mut x = 7u64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
            if x % 13 == 0 {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// Filled extents: every stored form within one physical cluster, the input covered
    /// exactly, and fewer extents than fixed 64 KiB ones. zstd's are sized by the ratio and
    /// end on blocks; lz4hc's come from the fixed-output compressor and end anywhere, each
    /// compressed one saving a block.
    #[test]
    fn filled_extents_stay_within_the_physical_cluster() {
        for algo in [ErofsCompressor::Zstd, ErofsCompressor::Lz4hc] {
            filled_extents_of(algo);
        }
    }

    fn filled_extents_of(algo: ErofsCompressor) {
        let data = sample(3 << 20 | 1234);
        let fixed = ErofsCompression::export(algo);
        let filled = ErofsCompression {
            fill: true,
            ..fixed
        };
        let packed = filled.pack_file(&data).unwrap();
        let (last, rest) = packed.split_last().unwrap();
        if algo == ErofsCompressor::Zstd {
            assert!(rest.iter().all(|p| p.len % BLOCK as usize == 0));
        } else {
            assert!(rest.iter().any(|p| p.len % BLOCK as usize != 0));
        }
        assert_eq!(packed.iter().map(|p| p.len).sum::<usize>(), data.len());
        assert!(last.len > 0);
        for p in &packed {
            if let Some(s) = &p.stored {
                assert!(
                    s.len() <= filled.extent_bytes(),
                    "{} > one cluster",
                    s.len()
                );
                if filled.fixed_output() {
                    assert!(s.len().div_ceil(4096) < p.len.div_ceil(4096));
                }
            }
        }
        assert!(packed.len() < fixed.pack_file(&data).unwrap().len());
        // the window writer cuts the same way whatever the pushes' sizes
        let mut a = Vec::new();
        let mut w = ExtentWriter::new(filled, 0, data.len() as u64);
        for piece in data.chunks(100_000) {
            w.push(piece, &mut a).unwrap();
        }
        w.finish(&mut a).unwrap();
        let mut b = Vec::new();
        let mut w = ExtentWriter::new(filled, 0, data.len() as u64);
        w.push(&data, &mut b).unwrap();
        w.finish(&mut b).unwrap();
        assert!(a == b, "the output depends on how the file's bytes arrive");
        // nor on the number of threads
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = one.install(|| {
            let mut c = Vec::new();
            let mut w = ExtentWriter::new(filled, 0, data.len() as u64);
            w.push(&data, &mut c).unwrap();
            w.finish(&mut c).unwrap();
            c
        });
        assert!(a == c, "the output depends on the thread count");
    }
}
