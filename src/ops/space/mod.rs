//! `report`: where an image's bytes go. Per directory and file: logical size, stored
//! (compressed) size, chunks shared within the image and with other blobs; the top entries;
//! compression ratio per file type; a what-if table (other chunk sizes: dedup; other
//! compressors: size estimated from a sample of the data); and, against another version of the
//! image, the chunks it reuses and the bytes a pull would transfer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::codec::Compressor;
use crate::error::Result;
use crate::model::{ChunkId, EntryId, FileType, Image, InodeId};
use crate::ops::opened::OpenedImage;
use crate::rafs;

/// Options of `report`.
#[derive(Debug, Clone, Default)]
pub struct SpaceOptions {
    /// The image's bootstrap (or a blob with an inlined bootstrap).
    pub image: PathBuf,
    /// Its blobs: needed for the what-if table only.
    pub blobs: BlobSource,
    /// Another version of the image (its bootstrap): what it reuses of this one.
    pub other: Option<PathBuf>,
    /// How many entries the top list holds.
    pub top: usize,
}

/// Sizes of one entry (a file, or a directory with everything under it).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Sizes {
    /// Regular files (each inode once, at its first name).
    pub files: u64,
    /// Bytes of file data.
    pub logical: u64,
    /// Bytes stored in blobs (each chunk charged to the first file that uses it).
    pub stored: u64,
    /// Chunk references.
    pub chunk_refs: u64,
    /// References to a chunk another reference in the image already uses.
    pub shared_in_image: u64,
    /// References to a chunk whose data also sits in another blob of the image.
    pub shared_with_other_blobs: u64,
}

impl Sizes {
    fn add(&mut self, o: &Sizes) {
        self.files += o.files;
        self.logical += o.logical;
        self.stored += o.stored;
        self.chunk_refs += o.chunk_refs;
        self.shared_in_image += o.shared_in_image;
        self.shared_with_other_blobs += o.shared_with_other_blobs;
    }
}

/// A node of the size tree; small entries are folded into one `(N smaller entries)` node.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Entry name (`/` for the root).
    pub name: String,
    /// Its sizes.
    #[serde(flatten)]
    pub sizes: Sizes,
    /// Children, largest stored first (directories only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

/// One line of the top list.
#[derive(Debug, Clone, Serialize)]
pub struct TopEntry {
    /// Path from the root.
    pub path: String,
    /// Its sizes.
    #[serde(flatten)]
    pub sizes: Sizes,
}

/// One row of the what-if table.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    /// `chunk size 0x...` or `compressor NAME`.
    pub setting: String,
    /// Bytes of data after dedup at this chunk size (chunk rows), or the data's size before
    /// compression (compressor rows).
    pub unique_bytes: u64,
    /// Logical bytes / unique bytes.
    pub dedup_ratio: f64,
    /// Stored bytes with this compressor (compressor rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_stored: Option<u64>,
    /// Whether `estimated_stored` is scaled from a sample (else it is exact: no compression,
    /// or the compressor the image was built with).
    pub from_sample: bool,
}

/// What another version of the image reuses of this one.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    /// The other bootstrap.
    pub image: String,
    /// Its chunks whose data this image already has.
    pub reused_chunks: u64,
    /// Its chunks this image does not have.
    pub new_chunks: u64,
    /// Stored bytes of its reused chunks.
    pub reused_stored: u64,
    /// Stored bytes of its new chunks: what a chunk-deduplicating (lazy) pull transfers.
    pub pull_bytes_chunks: u64,
    /// Stored size of its blobs this image does not list: what a pull of whole blobs
    /// transfers.
    pub pull_bytes_blobs: u64,
}

/// What `report` found.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceReport {
    /// The bootstrap read.
    pub image: String,
    /// RAFS version.
    pub fs_version: u32,
    /// Chunk compressor.
    pub compressor: String,
    /// Chunk size.
    pub chunk_size: u32,
    /// Blobs in the blob table.
    pub blobs: u64,
    /// Chunk records in the bootstrap.
    pub chunks: u64,
    /// The whole image.
    pub total: Sizes,
    /// The size tree (entries under 1/2000 of the stored total folded).
    pub tree: Node,
    /// The largest files by stored bytes.
    pub top: Vec<TopEntry>,
    /// By file name extension (`(none)` without one): sizes and ratio.
    pub by_type: BTreeMap<String, Sizes>,
    /// Other chunk sizes and compressors (empty when the blobs were not given).
    pub what_if: Vec<WhatIf>,
    /// Why `what_if` is empty, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what_if_skipped: Option<String>,
    /// Against another version of the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versus: Option<Versus>,
}

/// Runs `report`.
pub fn space(opts: &SpaceOptions) -> Result<SpaceReport> {
    let opened = OpenedImage::open(&opts.image, &opts.blobs)?;
    let image = &opened.image;
    let per_entry = entry_sizes(image);
    // the root holds everything: its row is the total
    let total = per_entry[EntryId::ROOT.index()].clone();
    let tree = fold_tree(image, &per_entry, EntryId::ROOT, total.stored / 2000);
    let have_data = opened.blobs.file.is_some() || opened.blobs.dir.is_some();
    let (what_if, skipped) = if have_data {
        (what_if(image, &opened.blobs)?, None)
    } else {
        (
            Vec::new(),
            Some("no blobs given (-D or -b): the data cannot be read".to_string()),
        )
    };
    let versus = match &opts.other {
        Some(p) => Some(versus(image, &rafs::load(p)?.image, p)),
        None => None,
    };
    Ok(SpaceReport {
        image: opts.image.display().to_string(),
        fs_version: image.version,
        compressor: image.compressor.name().to_string(),
        chunk_size: image.chunk_size,
        blobs: image.blobs.len() as u64,
        chunks: image.chunks.len() as u64,
        total,
        tree,
        top: top_files(image, &per_entry, opts.top),
        by_type: by_type(image, &per_entry),
        what_if,
        what_if_skipped: skipped,
        versus,
    })
}

/// Sizes of every entry, directories summed over their contents.
fn entry_sizes(image: &Image) -> Vec<Sizes> {
    let tree = &image.tree;
    let mut blobs_of: HashMap<([u8; 32], u32), HashSet<u32>> = HashMap::new();
    for c in &image.chunks {
        blobs_of
            .entry((c.digest, c.uncompressed_size))
            .or_default()
            .insert(c.blob_index);
    }
    let order = tree.numbering_order();
    let mut seen_inode = vec![false; tree.inodes.len()];
    let mut seen_chunk: HashSet<ChunkId> = HashSet::new();
    let mut sizes = vec![Sizes::default(); tree.entries.len()];
    for &e in &order {
        let ino = tree[e].inode;
        let i = &tree[ino];
        if i.file_type() != FileType::Regular || seen_inode[ino.index()] {
            continue;
        }
        seen_inode[ino.index()] = true;
        let s = &mut sizes[e.index()];
        s.files = 1;
        s.logical = i.size();
        for id in i.chunks() {
            s.chunk_refs += 1;
            let Some(c) = image.chunks.get(id.index()) else {
                continue;
            };
            if seen_chunk.insert(*id) {
                s.stored += u64::from(c.compressed_size);
            } else {
                s.shared_in_image += 1;
            }
            if blobs_of
                .get(&(c.digest, c.uncompressed_size))
                .is_some_and(|b| b.len() > 1)
            {
                s.shared_with_other_blobs += 1;
            }
        }
    }
    for &e in order.iter().rev() {
        if e != EntryId::ROOT {
            let s = sizes[e.index()].clone();
            sizes[tree[e].parent.index()].add(&s);
        }
    }
    sizes
}

fn name_of(image: &Image, e: EntryId) -> String {
    if e == EntryId::ROOT {
        "/".into()
    } else {
        String::from_utf8_lossy(&image.tree[e].name).into_owned()
    }
}

/// The size tree under `e`, children under `min` stored bytes folded into one node.
fn fold_tree(image: &Image, sizes: &[Sizes], e: EntryId, min: u64) -> Node {
    let mut children: Vec<EntryId> = image.tree[e].children.clone();
    children.sort_by_key(|c| std::cmp::Reverse(sizes[c.index()].stored));
    let mut out = Vec::new();
    let mut rest = Sizes::default();
    let mut folded = 0;
    for c in children {
        let s = &sizes[c.index()];
        if s.stored >= min.max(1) || (min == 0 && s.logical > 0) {
            out.push(fold_tree(image, sizes, c, min));
        } else if s.files > 0 || s.logical > 0 {
            rest.add(s);
            folded += 1;
        }
    }
    if folded > 0 {
        out.push(Node {
            name: format!("({folded} smaller entries)"),
            sizes: rest,
            children: Vec::new(),
        });
    }
    Node {
        name: name_of(image, e),
        sizes: sizes[e.index()].clone(),
        children: out,
    }
}

fn top_files(image: &Image, sizes: &[Sizes], n: usize) -> Vec<TopEntry> {
    let mut files: Vec<EntryId> = image
        .tree
        .entry_ids()
        .filter(|e| sizes[e.index()].files == 1 && !image.tree.is_dir(*e))
        .collect();
    files.sort_by_key(|e| std::cmp::Reverse(sizes[e.index()].stored));
    files
        .into_iter()
        .take(n)
        .map(|e| TopEntry {
            path: image.tree.path(e).display().to_string(),
            sizes: sizes[e.index()].clone(),
        })
        .collect()
}

fn by_type(image: &Image, sizes: &[Sizes]) -> BTreeMap<String, Sizes> {
    let mut out: BTreeMap<String, Sizes> = BTreeMap::new();
    for e in image.tree.entry_ids() {
        let s = &sizes[e.index()];
        if s.files != 1 || image.tree.is_dir(e) {
            continue;
        }
        let name = String::from_utf8_lossy(&image.tree[e].name).into_owned();
        let ext = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() && ext.len() <= 8 => {
                format!(".{}", ext.to_ascii_lowercase())
            }
            _ => "(none)".to_string(),
        };
        out.entry(ext).or_default().add(s);
    }
    out
}

/// Chunk sizes the what-if table tries.
const WHAT_IF_CHUNK_SIZES: [u32; 4] = [0x1_0000, 0x4_0000, 0x10_0000, 0x40_0000];
/// Most bytes of data compressed for the compressor estimates.
const SAMPLE_BYTES: u64 = 32 << 20;

/// One piece of a file cut at a what-if chunk size.
struct Piece {
    digest: [u8; 32],
    /// Index into [`WHAT_IF_CHUNK_SIZES`].
    size: usize,
    len: u32,
}

/// Reads every file once, cutting it at each chunk size to count unique bytes, then
/// compresses a sample of the image's unique chunks with each compressor.
fn what_if(image: &Image, source: &BlobSource) -> Result<Vec<WhatIf>> {
    let files: Vec<InodeId> = image
        .tree
        .inode_ids()
        .filter(|i| !image.tree[*i].chunks().is_empty())
        .collect();
    let pieces: Vec<Vec<Piece>> = files
        .par_iter()
        .map_init(
            || ChunkReader::new(image, source.clone()),
            |reader, &i| cut(reader, image, i),
        )
        .collect::<Result<_>>()?;
    let logical: u64 = files.iter().map(|i| image.tree[*i].size()).sum();
    let mut rows = Vec::new();
    for (k, size) in WHAT_IF_CHUNK_SIZES.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut unique = 0u64;
        for p in pieces.iter().flatten().filter(|p| p.size == k) {
            if seen.insert(p.digest) {
                unique += u64::from(p.len);
            }
        }
        rows.push(WhatIf {
            setting: format!("chunk size {size:#x}"),
            unique_bytes: unique,
            dedup_ratio: ratio(logical, unique),
            estimated_stored: None,
            from_sample: false,
        });
    }
    rows.extend(compressor_rows(image, source, logical)?);
    Ok(rows)
}

/// File `i`'s data cut at every what-if chunk size, streamed chunk by chunk.
fn cut(reader: &mut ChunkReader, image: &Image, i: InodeId) -> Result<Vec<Piece>> {
    let n = WHAT_IF_CHUNK_SIZES.len();
    let mut hashers: Vec<blake3::Hasher> = vec![blake3::Hasher::new(); n];
    let mut filled = vec![0u32; n];
    let mut out = Vec::new();
    for id in image.tree[i].chunks() {
        let data = reader.read(*id)?;
        for k in 0..n {
            let size = WHAT_IF_CHUNK_SIZES[k];
            let mut rest = data.as_slice();
            while !rest.is_empty() {
                let take = rest.len().min((size - filled[k]) as usize);
                hashers[k].update(&rest[..take]);
                filled[k] += take as u32;
                rest = &rest[take..];
                if filled[k] == size {
                    let digest = *std::mem::take(&mut hashers[k]).finalize().as_bytes();
                    out.push(Piece {
                        digest,
                        size: k,
                        len: size,
                    });
                    filled[k] = 0;
                }
            }
        }
    }
    for (k, h) in hashers.iter().enumerate() {
        if filled[k] > 0 {
            let digest = *h.finalize().as_bytes();
            out.push(Piece {
                digest,
                size: k,
                len: filled[k],
            });
        }
    }
    Ok(out)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        ((a as f64 / b as f64) * 1000.0).round() / 1000.0
    }
}

/// Compresses up to [`SAMPLE_BYTES`] of evenly spread unique chunks with each compressor and
/// scales the result to the image's unique data.
fn compressor_rows(image: &Image, source: &BlobSource, logical: u64) -> Result<Vec<WhatIf>> {
    let mut seen = HashSet::new();
    let unique: Vec<ChunkId> = (0..image.chunks.len() as u32)
        .map(ChunkId::new)
        .filter(|i| {
            let c = &image.chunks[i.index()];
            seen.insert((c.digest, c.uncompressed_size))
        })
        .collect();
    let unique_bytes: u64 = unique
        .iter()
        .map(|i| u64::from(image.chunks[i.index()].uncompressed_size))
        .sum();
    let step = (unique_bytes / SAMPLE_BYTES + 1) as usize;
    let sample: Vec<ChunkId> = unique.iter().copied().step_by(step).collect();
    let algos = [Compressor::None, Compressor::Lz4Block, Compressor::Zstd];
    let sizes: Vec<[u64; 4]> = sample
        .par_iter()
        .map_init(
            || (ChunkReader::new(image, source.clone()), Vec::new()),
            |(reader, buf), &i| {
                let data = reader.read(i)?;
                let mut row = [data.len() as u64, 0, 0, 0];
                for (k, a) in algos.iter().enumerate() {
                    let smaller = *a != Compressor::None && a.compress_into(&data, buf)?;
                    row[k + 1] = if smaller { buf.len() } else { data.len() } as u64;
                }
                Ok(row)
            },
        )
        .collect::<Result<_>>()?;
    let total = |k: usize| sizes.iter().map(|r| r[k]).sum::<u64>();
    let raw = total(0);
    let unique_stored: u64 = unique
        .iter()
        .map(|i| u64::from(image.chunks[i.index()].compressed_size))
        .sum();
    let uniform = image.blobs.iter().all(|b| b.compressor == image.compressor);
    Ok(algos
        .iter()
        .enumerate()
        .map(|(k, a)| {
            // exact where it can be: raw data, and the image's own compressor (its chunks'
            // stored sizes); scaled from the sample otherwise
            let (stored, from_sample) = if *a == Compressor::None {
                (unique_bytes, false)
            } else if uniform && *a == image.compressor {
                (unique_stored, false)
            } else if raw == 0 {
                (0, true)
            } else {
                let scaled = unique_bytes as f64 * total(k + 1) as f64 / raw as f64;
                (scaled.round() as u64, true)
            };
            WhatIf {
                setting: format!("compressor {}", a.name()),
                unique_bytes,
                dedup_ratio: ratio(logical, unique_bytes),
                estimated_stored: Some(stored),
                from_sample,
            }
        })
        .collect())
}

/// What `other` reuses of `image`: chunks by digest and size, blobs by id.
fn versus(image: &Image, other: &Image, path: &std::path::Path) -> Versus {
    let have: HashSet<([u8; 32], u32)> = image
        .chunks
        .iter()
        .map(|c| (c.digest, c.uncompressed_size))
        .collect();
    let ids: HashSet<&str> = image.blobs.iter().map(|b| b.id.as_str()).collect();
    let mut v = Versus {
        image: path.display().to_string(),
        reused_chunks: 0,
        new_chunks: 0,
        reused_stored: 0,
        pull_bytes_chunks: 0,
        pull_bytes_blobs: 0,
    };
    let mut counted = HashSet::new();
    for c in &other.chunks {
        if !counted.insert((c.digest, c.uncompressed_size)) {
            continue;
        }
        if have.contains(&(c.digest, c.uncompressed_size)) {
            v.reused_chunks += 1;
            v.reused_stored += u64::from(c.compressed_size);
        } else {
            v.new_chunks += 1;
            v.pull_bytes_chunks += u64::from(c.compressed_size);
        }
    }
    v.pull_bytes_blobs = other
        .blobs
        .iter()
        .filter(|b| !ids.contains(b.id.as_str()))
        .map(|b| b.compressed_size)
        .sum();
    v
}

/// The page `report --html` writes (its script reads the JSON put in place of the marker).
const TREEMAP_PAGE: &str = include_str!("treemap.html");

impl SpaceReport {
    /// One self-contained HTML page: a zoomable treemap of stored bytes, coloured by
    /// compression ratio or reuse, with the report inlined (nothing is fetched at view time).
    pub fn html(&self) -> String {
        let json = serde_json::to_string(self)
            .unwrap_or_else(|_| "null".into())
            // inside <script>, "<" could end the element or open a comment: escape every one
            .replace('<', "\\u003c");
        TREEMAP_PAGE.replace("/*REPORT-JSON*/", &json)
    }
}
