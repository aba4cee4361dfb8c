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
use zerocopy::{FromBytes, IntoBytes};

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, IoContext, Result};
use crate::format::erofs_z::*;
use crate::format::rafs_v6::*;
use crate::io::staged::{persist, temp_beside};
use crate::model::{ChunkId, FileType, InodeId};
use crate::ops::opened::OpenedImage;
use crate::rafs::v6::encode::{write_standalone_inodes, EncodeOptions, StandaloneFile};
use crate::rafs::v6::layout::{self, RegularLayout};

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

    /// Every extent of a whole file, packed one after the other on this thread.
    pub(crate) fn pack_file(self, data: &[u8]) -> Result<Vec<Packed>> {
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

fn lcluster_index(kind: u16, blkaddr_or_delta: u32) -> LclusterIndex {
    LclusterIndex {
        advise: kind.into(),
        clusterofs: 0.into(),
        u: blkaddr_or_delta.into(),
    }
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
        let StandaloneFile::Compressed { body, .. } = f else {
            continue;
        };
        // after the map header and its reserved word
        for raw in body.chunks_exact_mut(8).skip(2) {
            let Ok(idx) = LclusterIndex::mut_from_bytes(raw) else {
                continue;
            };
            let kind = idx.advise.get() & 3;
            if kind == TYPE_PLAIN || kind == TYPE_HEAD1 {
                let abs = u32::try_from(u64::from(idx.u.get()) + data_start)
                    .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))?;
                idx.u = abs.into();
            }
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
    body: Vec<u8>,
    pending: Vec<u8>,
    window: usize,
    next_block: u64,
    blocks: u64,
    /// Output/input of what was compressed so far (sizes filled extents).
    ratio: f64,
}

impl ExtentWriter {
    /// A writer for a file of `size` bytes whose data starts at block `first_block`.
    pub(crate) fn new(how: ErofsCompression, first_block: u64, size: u64) -> ExtentWriter {
        let nclusters = size.div_ceil(BLOCK);
        let mut body = Vec::with_capacity(16 + 8 * nclusters as usize);
        // map header: no tail packing, big pclusters for HEAD1, algorithm, 4 KiB lclusters
        let header = MapHeader {
            fragment_off: 0.into(),
            advise: ADVISE_BIG_PCLUSTER_1.into(),
            algorithm: how.algo.code(),
            clusterbits: 0,
        };
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&[0u8; 8]); // reserved
        ExtentWriter {
            how,
            body,
            pending: Vec::new(),
            // filled extents are sized by the ratio of the window before: the window must not
            // depend on the thread count, or the image would
            window: if how.fill {
                how.extent_bytes() * FILL_MAX_INPUT * 8
            } else {
                how.extent_bytes() * 4 * rayon::current_num_threads().max(1)
            },
            next_block: first_block,
            blocks: 0,
            ratio: 0.7,
        }
    }

    /// Takes the file's next bytes; compresses and writes every full window.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut dyn Write) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= self.window {
            self.flush(self.window, out)?;
        }
        Ok(())
    }

    /// Writes what is left; returns the file's body and the next free block.
    pub(crate) fn finish(mut self, out: &mut dyn Write) -> Result<(StandaloneFile, u64)> {
        self.flush(self.pending.len(), out)?;
        let blocks = u32::try_from(self.blocks)
            .map_err(|_| Error::Limit("file larger than 2^32 blocks".into()))?;
        Ok((
            StandaloneFile::Compressed {
                body: self.body,
                blocks,
            },
            self.next_block,
        ))
    }

    /// Compresses the first `take` pending bytes (whole blocks but for the file's last) in
    /// parallel, in extents sized by the ratio seen so far, and writes them in order.
    fn flush(&mut self, take: usize, out: &mut dyn Write) -> Result<()> {
        let how = self.how;
        let mut pending = std::mem::take(&mut self.pending);
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
    /// its packed form saves a block, else block by block; records their indexes.
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
                    self.index(TYPE_HEAD1, self.next_block as u32);
                    self.index(
                        TYPE_NONHEAD,
                        (D0_CBLKCNT | k as u32) | (((n - 1) as u32) << 16),
                    );
                    for j in 2..n {
                        self.index(TYPE_NONHEAD, j as u32 | (((n - j) as u32) << 16));
                    }
                    self.next_block += k;
                    self.blocks += k;
                }
                _ => {
                    for piece in extent.chunks(BLOCK as usize) {
                        written.extend_from_slice(piece);
                        written.resize(written.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
                        self.index(TYPE_PLAIN, self.next_block as u32);
                        self.next_block += 1;
                        self.blocks += 1;
                    }
                }
            }
            out.write_all(&written).ctx("write", "compressed data")?;
        }
        Ok(())
    }

    fn index(&mut self, kind: u16, blkaddr_or_delta: u32) {
        self.body
            .extend_from_slice(lcluster_index(kind, blkaddr_or_delta).as_bytes());
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

    /// Filled extents: whole blocks but the last, every stored form within one physical
    /// cluster, the input covered exactly, and fewer extents than fixed 64 KiB ones.
    #[test]
    fn filled_extents_stay_within_the_physical_cluster() {
        let data = sample(3 << 20 | 1234);
        let fixed = ErofsCompression::export(ErofsCompressor::Lz4hc);
        let filled = ErofsCompression {
            fill: true,
            ..fixed
        };
        let packed = filled.pack_file(&data).unwrap();
        let (last, rest) = packed.split_last().unwrap();
        assert!(rest.iter().all(|p| p.len % BLOCK as usize == 0));
        assert_eq!(packed.iter().map(|p| p.len).sum::<usize>(), data.len());
        assert!(last.len > 0);
        for p in &packed {
            if let Some(s) = &p.stored {
                assert!(
                    s.len() <= filled.extent_bytes(),
                    "{} > one cluster",
                    s.len()
                );
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
