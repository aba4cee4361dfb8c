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
use crate::codec::{Compressor, Digester};
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
/// LZMA dictionary: one extent.
const LZMA_DICT: u32 = (EXTENT_CLUSTERS * BLOCK) as u32;

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

    /// The per-algorithm configuration record written after the superblock.
    fn config(self) -> Vec<u8> {
        match self {
            ErofsCompressor::Lz4 | ErofsCompressor::Lz4hc => Lz4Config {
                size: 14.into(),
                max_distance: 65535.into(),
                max_pclusterblks: (EXTENT_CLUSTERS as u16).into(),
                reserved: [0; 10],
            }
            .as_bytes()
            .to_vec(),
            ErofsCompressor::Lzma => LzmaConfig {
                size: 14.into(),
                dict_size: LZMA_DICT.into(),
                format: 0.into(),
                reserved: [0; 8],
            }
            .as_bytes()
            .to_vec(),
            ErofsCompressor::Zstd => ZstdConfig {
                size: 6.into(),
                format: 0,
                // frames of at most 64 KiB fit a 128 KiB window
                windowlog: 17 - 10,
                reserved: [0; 4],
            }
            .as_bytes()
            .to_vec(),
        }
    }

    fn compress(self, input: &[u8]) -> Result<Vec<u8>> {
        let codec = |algo: &'static str, e: std::io::Error| Error::Codec {
            algo,
            reason: e.to_string(),
        };
        match self {
            ErofsCompressor::Lz4 => {
                lz4::block::compress(input, Some(lz4::block::CompressionMode::DEFAULT), false)
                    .map_err(|e| codec("lz4", e))
            }
            ErofsCompressor::Lz4hc => lz4::block::compress(
                input,
                Some(lz4::block::CompressionMode::HIGHCOMPRESSION(9)),
                false,
            )
            .map_err(|e| codec("lz4hc", e)),
            ErofsCompressor::Zstd => zstd::bulk::compress(input, 9).map_err(|e| codec("zstd", e)),
            ErofsCompressor::Lzma => {
                microlzma::compress(input, LZMA_DICT, 6).ok_or_else(|| Error::Codec {
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
    let (mut files, data_blocks) = compress_files(
        &image.tree,
        &mut reader,
        opts.compressor,
        data.as_file_mut(),
    )?;
    let lay = layout::compute_with(&image.tree, BLOCK, &|ino, inode| match files.get(&ino) {
        Some(f) if f.data.is_some() => RegularLayout::Data(inode.size()),
        Some(f) => RegularLayout::Slots(f.body.len() as u64 / 8),
        None => RegularLayout::Data(0),
    })?;
    let meta_end = (lay.end).div_ceil(BLOCK) * BLOCK;
    let data_start = meta_end / BLOCK;
    relocate_indexes(&mut files, data_start)?;
    let total_blocks = data_start + data_blocks;
    let mut meta = vec![0u8; meta_end as usize];
    write_superblock(
        &mut meta,
        opts.compressor,
        lay.order.len() as u64,
        total_blocks,
    )?;
    let eopts = EncodeOptions {
        chunk_size: crate::format::blob::DEFAULT_CHUNK_SIZE,
        compressor: Compressor::None,
        digester: Digester::Blake3,
        explicit_uid_gid: true,
        block_size: BLOCK,
        tarfs: false,
        single_device: false,
        prefetch: Vec::new(),
        has_xattr: false,
    };
    write_standalone_inodes(&mut meta, &image.tree, &eopts, &lay, &files)?;

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
    algo: ErofsCompressor,
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
            StandaloneFile {
                data: Some(file_bytes(reader, inode.chunks())?),
                ..Default::default()
            }
        } else {
            compress_file(reader, inode, algo, data, &mut next_block)?
        };
        files.insert(ino, file);
    }
    Ok((files, next_block))
}

/// Index block addresses were relative to the data area; the data area starts at block
/// `data_start`.
fn relocate_indexes(files: &mut HashMap<InodeId, StandaloneFile>, data_start: u64) -> Result<()> {
    for f in files.values_mut() {
        // after the map header and its reserved word
        for raw in f.body.chunks_exact_mut(8).skip(2) {
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

/// The superblock and the compression configuration after it.
fn write_superblock(
    meta: &mut [u8],
    algo: ErofsCompressor,
    inodes: u64,
    total_blocks: u64,
) -> Result<()> {
    let sb = SuperBlock {
        magic: EROFS_MAGIC.into(),
        checksum: 0.into(),
        feature_compat: 0.into(),
        blkszbits: 12,
        extslots: 0,
        root_nid: (ROOT_NID as u16).into(),
        inos: inodes.into(),
        build_time: 0.into(),
        build_time_nsec: 0.into(),
        blocks: u32::try_from(total_blocks)
            .map_err(|_| Error::Limit("image larger than 2^32 blocks".into()))?
            .into(),
        meta_blkaddr: 0.into(),
        xattr_blkaddr: 0.into(),
        uuid: [0; 16],
        volume_name: [0; 16],
        // zero padding (right-aligned compressed data), compression configs / big pclusters
        feature_incompat: (FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_COMPR_CFGS).into(),
        u1: (1u16 << algo.code()).into(),
        extra_devices: 0.into(),
        devt_slotoff: 0.into(),
        reserved: [0; 38],
    };
    meta[SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 128].copy_from_slice(sb.as_bytes());
    let cfg = algo.config();
    meta[EXT_SUPERBLOCK_OFFSET..EXT_SUPERBLOCK_OFFSET + cfg.len()].copy_from_slice(&cfg);
    Ok(())
}

/// Compresses one file into `data`, returning its map header and indexes.
fn compress_file(
    reader: &mut ChunkReader,
    inode: &crate::model::Inode,
    algo: ErofsCompressor,
    data: &mut std::fs::File,
    next_block: &mut u64,
) -> Result<StandaloneFile> {
    let nclusters = inode.size().div_ceil(BLOCK);
    let mut body = Vec::with_capacity(16 + 8 * nclusters as usize);
    // map header: no tail packing, big pclusters for HEAD1, algorithm, 4 KiB logical clusters
    let header = MapHeader {
        fragment_off: 0.into(),
        advise: ADVISE_BIG_PCLUSTER_1.into(),
        algorithm: algo.code(),
        clusterbits: 0,
    };
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(&[0u8; 8]); // reserved
    let extent_len = (EXTENT_CLUSTERS * BLOCK) as usize;
    // a window of extents is compressed in parallel, then written in order: bounded memory
    let window = extent_len * 4 * rayon::current_num_threads().max(1);
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk_iter = inode.chunks().iter();
    let mut left = inode.size();
    let mut blocks = 0u64;
    while left > 0 {
        let want = left.min(window as u64) as usize;
        while pending.len() < want {
            let Some(id) = chunk_iter.next() else { break };
            pending.extend_from_slice(&reader.read(*id)?);
        }
        let take = want.min(pending.len());
        if take == 0 {
            return Err(Error::Corrupt {
                what: "file data",
                offset: inode.size() - left,
                reason: "chunks end before the file".into(),
            });
        }
        left -= take as u64;
        let extents: Vec<&[u8]> = pending[..take].chunks(extent_len).collect();
        let packed: Vec<Option<Vec<u8>>> = extents
            .par_iter()
            .map(|e| {
                if e.len() as u64 > BLOCK {
                    algo.compress(e).map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<_>>()?;
        for (extent, packed) in extents.iter().zip(packed) {
            let n = (extent.len() as u64).div_ceil(BLOCK);
            match packed {
                Some(p) if (p.len() as u64).div_ceil(BLOCK) < n => {
                    let k = (p.len() as u64).div_ceil(BLOCK);
                    // right-aligned in its blocks: the decompressor skips the leading zeros
                    let mut buf = vec![0u8; (k * BLOCK) as usize];
                    let at = buf.len() - p.len();
                    buf[at..].copy_from_slice(&p);
                    data.write_all(&buf).ctx("write", "compressed data")?;
                    body.extend_from_slice(
                        lcluster_index(TYPE_HEAD1, *next_block as u32).as_bytes(),
                    );
                    body.extend_from_slice(
                        lcluster_index(
                            TYPE_NONHEAD,
                            (D0_CBLKCNT | k as u32) | (((n - 1) as u32) << 16),
                        )
                        .as_bytes(),
                    );
                    for j in 2..n {
                        body.extend_from_slice(
                            lcluster_index(TYPE_NONHEAD, j as u32 | (((n - j) as u32) << 16))
                                .as_bytes(),
                        );
                    }
                    *next_block += k;
                    blocks += k;
                }
                _ => {
                    for piece in extent.chunks(BLOCK as usize) {
                        let mut buf = piece.to_vec();
                        buf.resize(BLOCK as usize, 0);
                        data.write_all(&buf).ctx("write", "compressed data")?;
                        body.extend_from_slice(
                            lcluster_index(TYPE_PLAIN, *next_block as u32).as_bytes(),
                        );
                        *next_block += 1;
                        blocks += 1;
                    }
                }
            }
        }
        pending.drain(..take);
    }
    Ok(StandaloneFile {
        data: None,
        body,
        compressed_blocks: u32::try_from(blocks)
            .map_err(|_| Error::Limit("file larger than 2^32 blocks".into()))?,
    })
}
