//! `merge`: overlays per-layer bootstraps (lowest first) into one image bootstrap that
//! references every layer's blob that is still used.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::blob::BlobSummary;
use crate::error::{Error, Result};
use crate::io::staged::write_temp;
use crate::model::overlay::{self, WhiteoutSpec};
use crate::model::ChunkInfo;
use crate::model::{BlobInfo, Image};
use crate::model::{FileType, Inode, Tree};
use crate::ops::paths::bootstrap_path;
use crate::ops::report::Report;
use crate::rafs;
use crate::rafs::v6::BlobRecord;

/// Options of `merge`, as nydus-image spells them.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Layer bootstraps, lowest first.
    pub sources: Vec<PathBuf>,
    /// Output bootstrap.
    pub bootstrap: Option<PathBuf>,
    /// Output directory (bootstrap named by its sha256) when `bootstrap` is not given.
    pub blob_dir: Option<PathBuf>,
    /// A bootstrap below all sources.
    pub parent_bootstrap: Option<PathBuf>,
    /// A chunk dictionary whose blobs layers may reference besides their own.
    pub chunk_dict: Option<PathBuf>,
    /// Per source: the id of its own blob.
    pub original_blob_ids: Vec<String>,
    /// Per source: a digest replacing its own blob's id.
    pub blob_digests: Vec<String>,
    /// Per source: its own blob's compressed size.
    pub blob_sizes: Vec<u64>,
    /// Whiteout spelling in the layers.
    pub whiteout_spec: WhiteoutSpec,
    /// Write the result as JSON.
    pub output_json: Option<PathBuf>,
}

/// What merge produced.
#[derive(Debug, Clone)]
pub struct MergeOutput {
    /// Bootstrap written.
    pub bootstrap: PathBuf,
    /// Blob ids in blob-table order.
    pub blobs: Vec<String>,
    /// RAFS version.
    pub fs_version: u32,
}

/// A blob-table record for a blob a bootstrap already describes.
pub fn record_of(b: &BlobInfo) -> BlobRecord {
    BlobRecord {
        id: b.id.clone(),
        summary: BlobSummary {
            id: b.id.clone(),
            chunk_count: b.chunk_count,
            compressed_size: b.compressed_size,
            file_size: b.compressed_size,
            uncompressed_size: b.uncompressed_size,
            features: b.features,
            ci_compressor: b.ci_compressor,
            ci_offset: b.ci_offset,
            ci_compressed_size: b.ci_compressed_size,
            ci_uncompressed_size: b.ci_uncompressed_size,
        },
        compressor: b.compressor,
        digester: b.digester,
    }
}

/// Keeps only the blobs and chunks the tree uses; blobs are renumbered in the order the tree
/// first uses them (numbering order), chunks in the order files reference them.
pub fn compact_blobs(
    tree: &mut Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobRecord],
) -> Result<(Vec<ChunkInfo>, Vec<BlobRecord>)> {
    let mut blob_map: HashMap<u32, u32> = HashMap::new();
    let mut chunk_map: HashMap<u32, u32> = HashMap::new();
    let mut new_chunks = Vec::new();
    let mut new_blobs = Vec::new();
    let mut done = vec![false; tree.inodes.len()];
    for e in tree.numbering_order() {
        let ino = tree.entries[e].inode;
        if std::mem::replace(&mut done[ino], true) {
            continue;
        }
        let mut ids = Vec::with_capacity(tree.inodes[ino].chunks.len());
        for id in &tree.inodes[ino].chunks {
            let c = *chunks.get(*id as usize).ok_or_else(|| Error::Corrupt {
                what: "chunk reference",
                offset: u64::from(*id),
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
                new_chunks.len() as u32 - 1
            });
            ids.push(nid);
        }
        tree.inodes[ino].chunks = ids;
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

/// Checks that an image can be stacked on `first` (same chunk size, version, uid/gid mode and
/// digester).
pub fn check_compatible(first: &Image, other: &Image, name: &str) -> Result<()> {
    let explicit = |i: &Image| i.flags & crate::format::rafs_v6::super_flags::EXPLICIT_UID_GID != 0;
    let problem = if first.chunk_size != other.chunk_size {
        Some(format!(
            "chunk size {:#x} != {:#x}",
            other.chunk_size, first.chunk_size
        ))
    } else if first.version != other.version {
        Some(format!("RAFS v{} != v{}", other.version, first.version))
    } else if explicit(first) != explicit(other) {
        Some("one records uid/gid, the other does not (--repeatable)".to_string())
    } else if first.digester != other.digester {
        Some(format!(
            "digester {} != {}",
            other.digester.name(),
            first.digester.name()
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::InvalidOption(format!(
            "{name} is not compatible with the first layer: {p}"
        ))),
        None => Ok(()),
    }
}

/// An empty tree to stack layers on (the bottom layer's root replaces this root).
pub fn empty_tree() -> Tree {
    Tree::new(Inode::new(FileType::Directory, 0o755))
}

/// Runs `merge`.
pub fn merge(opts: &MergeOptions) -> Result<MergeOutput> {
    if opts.sources.is_empty() {
        return Err(Error::InvalidOption(
            "merge needs at least one source bootstrap".into(),
        ));
    }
    for (list, name) in [
        (opts.original_blob_ids.len(), "--original-blob-ids"),
        (opts.blob_digests.len(), "--blob-digests"),
        (opts.blob_sizes.len(), "--blob-sizes"),
    ] {
        if list != 0 && list != opts.sources.len() {
            return Err(Error::InvalidOption(format!(
                "{name} needs one value per source ({} sources)",
                opts.sources.len()
            )));
        }
    }
    let dict_ids: Vec<String> = match &opts.chunk_dict {
        Some(p) => rafs::load(p)?
            .image
            .blobs
            .into_iter()
            .map(|b| b.id)
            .collect(),
        None => Vec::new(),
    };
    let mut layers: Vec<(Image, Option<usize>)> = Vec::new();
    if let Some(p) = &opts.parent_bootstrap {
        layers.push((rafs::load(p)?.image, None));
    }
    for (i, p) in opts.sources.iter().enumerate() {
        layers.push((rafs::load(p)?.image, Some(i)));
    }
    for (img, i) in layers.iter().skip(1) {
        let name = i
            .map(|i| opts.sources[i].display().to_string())
            .unwrap_or_default();
        check_compatible(&layers[0].0, img, &name)?;
    }

    let mut blobs: Vec<BlobRecord> = Vec::new();
    let mut chunks: Vec<ChunkInfo> = Vec::new();
    let mut tree = empty_tree();
    for (img, source) in &layers {
        let mut own = 0;
        let mut local_to_global = Vec::with_capacity(img.blobs.len());
        for b in &img.blobs {
            let mut rec = record_of(b);
            if let Some(i) = source.filter(|_| !dict_ids.contains(&b.id)) {
                own += 1;
                if own > 1 {
                    return Err(Error::InvalidOption(format!(
                        "{} references more than one blob of its own (a merged image is not a layer)",
                        opts.sources[i].display()
                    )));
                }
                if let Some(id) = opts.original_blob_ids.get(i) {
                    rec.id = id.clone();
                }
                if let Some(d) = opts.blob_digests.get(i) {
                    rec.id = d.trim_start_matches("sha256:").to_string();
                }
                if let Some(s) = opts.blob_sizes.get(i) {
                    rec.summary.compressed_size = *s;
                }
            }
            let global = match blobs.iter().position(|x| x.id == rec.id) {
                Some(g) => g,
                None => {
                    blobs.push(rec);
                    blobs.len() - 1
                }
            };
            local_to_global.push(global as u32);
        }
        let offset = chunks.len() as u32;
        for c in &img.chunks {
            let g = *local_to_global
                .get(c.blob_index as usize)
                .ok_or_else(|| Error::Corrupt {
                    what: "chunk",
                    offset: u64::from(c.index),
                    reason: "blob index outside the blob table".into(),
                })?;
            chunks.push(ChunkInfo {
                blob_index: g,
                ..*c
            });
        }
        overlay::apply(&mut tree, &img.tree, opts.whiteout_spec, &|id| id + offset);
    }
    let mut tree = tree.compact();
    let (chunks, blobs) = compact_blobs(&mut tree, &chunks, &blobs)?;
    let first = &layers[0].0;
    let bytes = encode(first, &tree, &chunks, &blobs)?;
    let path = bootstrap_path(opts.bootstrap.as_deref(), opts.blob_dir.as_deref(), &bytes)?;
    let mut outputs = crate::io::staged::Outputs::new();
    outputs.add(write_temp(&path, &bytes, None)?, path.clone());
    let out = MergeOutput {
        bootstrap: path,
        blobs: blobs.iter().map(|b| b.id.clone()).collect(),
        fs_version: first.version,
    };
    if let Some(j) = &opts.output_json {
        let json = Report::new(
            out.bootstrap.display().to_string(),
            out.blobs.clone(),
            out.fs_version,
            first.compressor,
        )
        .pretty();
        outputs.add(write_temp(j, json.as_bytes(), None)?, j.clone());
    }
    outputs.commit()?;
    Ok(out)
}

/// Encodes a tree with the settings of `like` (version, chunk size, compressor, digester).
pub fn encode(
    like: &Image,
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobRecord],
) -> Result<Vec<u8>> {
    encode_with(like, tree, chunks, blobs, false)
}

/// [`encode`], optionally as a single-device disk image (see `EncodeOptions::single_device`).
pub fn encode_with(
    like: &Image,
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobRecord],
    single_device: bool,
) -> Result<Vec<u8>> {
    let explicit = like.flags & crate::format::rafs_v6::super_flags::EXPLICIT_UID_GID != 0;
    let opts = crate::rafs::v6::EncodeOptions {
        chunk_size: like.chunk_size,
        compressor: like.compressor,
        digester: like.digester,
        explicit_uid_gid: explicit,
        block_size: if like.version == 5 {
            crate::rafs::v6::encode::BLOCK_SIZE
        } else {
            u64::from(like.block_size)
        },
        tarfs: like.flags & crate::format::rafs_v6::super_flags::TARTFS_MODE != 0,
        single_device,
    };
    crate::rafs::encode(like.version, tree, chunks, blobs, &opts)
}
