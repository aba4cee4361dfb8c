//! `merge`: overlays per-layer bootstraps (lowest first) into one image bootstrap that
//! references every layer's blob that is still used.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::io::staged::write_temp;
use crate::model::overlay::{self, WhiteoutSpec};
use crate::model::stack::{compact_blobs, empty_tree, StackKey};
use crate::model::ChunkInfo;
use crate::model::Image;
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
        StackKey::of(&layers[0].0).check(&StackKey::of(img), &format!("layer {name}"))?;
    }

    let mut blobs: Vec<BlobRecord> = Vec::new();
    let mut chunks: Vec<ChunkInfo> = Vec::new();
    let mut tree = empty_tree();
    for (img, source) in &layers {
        let mut own = 0;
        let mut local_to_global = Vec::with_capacity(img.blobs.len());
        for b in &img.blobs {
            let mut rec = BlobRecord::from(b);
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
    let bytes = rafs::encode_like(first, &tree, &chunks, &blobs, false)?;
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
