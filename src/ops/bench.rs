//! The stage bound for benchmarks: the time the unavoidable per-chunk work takes on this
//! machine — read, digest, CRC and compress every chunk of a tree's files — spread over the
//! worker threads with nothing else (no dedup, no writer, no metadata). A build is compared
//! with it as a ratio.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::codec::{digest, Compressor, Digester};
use crate::error::{Error, IoContext, Result};
use crate::model::{ChunkId, DataSource};
use crate::ops::opened::OpenedImage;

/// What [`stage_bound`] measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StageBound {
    /// Seconds the stage took over all threads.
    pub seconds: f64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Seconds the walk before it took (not part of the bound).
    pub walk_seconds: f64,
}

/// The stage bound of the directory `source`.
pub fn stage_bound(
    source: &Path,
    compressor: Compressor,
    digester: Digester,
    chunk_size: u32,
    threads: usize,
) -> Result<StageBound> {
    let walk_start = Instant::now();
    let tree = crate::source::dir::walk(source)?;
    let walk_seconds = walk_start.elapsed().as_secs_f64();
    let mut seen = vec![false; tree.inodes.len()];
    let mut files = Vec::new();
    for e in tree.numbering_order() {
        let ino = tree[e].inode;
        let i = &tree[ino];
        if let Some(f) = i.file() {
            if let DataSource::Path(p) = &f.data {
                if !std::mem::replace(&mut seen[ino.index()], true) {
                    files.push((p.to_path_buf(), f.size));
                }
            }
        }
    }
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| Error::InvalidOption(e.to_string()))?;
    let t = Instant::now();
    pool.install(|| {
        files.par_iter().try_for_each_init(
            || (vec![0u8; chunk_size as usize], Vec::new()),
            |(buf, out), (path, size)| -> Result<()> {
                let mut f = std::fs::File::open(path).ctx("open", path)?;
                let mut left = *size;
                while left > 0 {
                    let n = left.min(u64::from(chunk_size)) as usize;
                    f.read_exact(&mut buf[..n]).ctx("read", path)?;
                    std::hint::black_box(digester.digest(&buf[..n]));
                    std::hint::black_box(digest::crc32(&buf[..n]));
                    compressor.compress_into(&buf[..n], out)?;
                    left -= n as u64;
                }
                Ok(())
            },
        )
    })?;
    Ok(StageBound {
        seconds: t.elapsed().as_secs_f64(),
        bytes,
        walk_seconds,
    })
}

/// What [`chunk_read`] measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ChunkRead {
    /// Index of the chunk in the image's chunk list.
    pub chunk: u32,
    /// Where its bytes start in its blob (for a targz-ref image: in the `.tar.gz`).
    pub compressed_offset: u64,
    /// Its uncompressed size.
    pub bytes: u32,
    /// Seconds reading it took, blob meta load included, from a fresh reader.
    pub seconds: f64,
}

/// Reads one chunk of an image from a fresh reader and times it: `which` is `first` or `last`
/// (the chunk stored first or last in its blob) or a chunk index. For a targz-ref image this
/// shows random access: the last chunk costs what the first does (formats/blob.md §11).
pub fn chunk_read(bootstrap: &Path, blobs: &BlobSource, which: &str) -> Result<ChunkRead> {
    let opened = OpenedImage::open(bootstrap, blobs)?;
    let chunks = &opened.image.chunks;
    let by_offset = |last: bool| {
        let it = (0..chunks.len()).map(|i| (chunks[i].compressed_offset, i));
        if last { it.max() } else { it.min() }.map(|(_, i)| i)
    };
    let index = match which {
        "first" => by_offset(false),
        "last" => by_offset(true),
        n => n.parse::<usize>().ok().filter(|i| *i < chunks.len()),
    }
    .ok_or_else(|| Error::InvalidOption(format!("no chunk {which:?} in the image")))?;
    let mut reader = ChunkReader::new(&opened.image, opened.blobs.clone());
    let t = Instant::now();
    let data = reader.read(ChunkId::new(index as u32))?;
    Ok(ChunkRead {
        chunk: index as u32,
        compressed_offset: chunks[index].compressed_offset,
        bytes: data.len() as u32,
        seconds: t.elapsed().as_secs_f64(),
    })
}
