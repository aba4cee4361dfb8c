//! `merge`: overlays per-layer bootstraps (lowest first) into one image bootstrap that
//! references every layer's blob that is still used.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::blob::BlobFeatures;
use crate::io::staged::write_temp;
use crate::model::overlay::{self, WhiteoutSpec};
use crate::model::prefetch::Prefetch;
use crate::model::stack::{compact_blobs, empty_tree, StackKey};
use crate::model::{BlobEntry, Image, Tree};
use crate::model::{ChunkId, ChunkInfo};
use crate::ops::paths::bootstrap_path;
use crate::ops::report::Report;
use crate::rafs;

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
    /// Per source: the digest of its own blob's ToC (`--blob-toc-digests`).
    pub blob_toc_digests: Vec<String>,
    /// Per source: the size of its own blob's ToC (`--blob-toc-sizes`).
    pub blob_toc_sizes: Vec<u32>,
    /// Whiteout spelling in the layers.
    pub whiteout_spec: WhiteoutSpec,
    /// Write the result as JSON.
    pub output_json: Option<PathBuf>,
    /// `--prefetch-policy` and the patterns read for it: the merged tree's prefetch table.
    pub prefetch: Prefetch,
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
    check_lists(opts)?;
    let dict_ids: Vec<String> = match &opts.chunk_dict {
        Some(p) => rafs::load(p)?
            .image
            .blobs
            .into_iter()
            .map(|b| b.id)
            .collect(),
        None => Vec::new(),
    };
    let layers = load_layers(opts)?;
    let mut stack = Stack::default();
    for layer in &layers {
        stack.push(opts, layer, &dict_ids)?;
    }
    let Stack {
        tree,
        chunks,
        blobs,
    } = stack;
    let mut tree = tree.compact();
    let (chunks, blobs) = compact_blobs(&mut tree, &chunks, &blobs)?;
    let first = &layers[0].image;
    let table = opts.prefetch.table(&tree);
    let opts_like = rafs::v6::EncodeOptions {
        has_xattr: true,
        ..rafs::options_like(first, false, table)
    };
    let bytes = rafs::encode(first.version, &tree, &chunks, &blobs, &opts_like)?;
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

/// One value per source in each per-source list, or none at all.
fn check_lists(opts: &MergeOptions) -> Result<()> {
    if opts.sources.is_empty() {
        return Err(Error::InvalidOption(
            "merge needs at least one source bootstrap".into(),
        ));
    }
    for (list, name) in [
        (opts.original_blob_ids.len(), "--original-blob-ids"),
        (opts.blob_digests.len(), "--blob-digests"),
        (opts.blob_sizes.len(), "--blob-sizes"),
        (opts.blob_toc_digests.len(), "--blob-toc-digests"),
        (opts.blob_toc_sizes.len(), "--blob-toc-sizes"),
    ] {
        if list != 0 && list != opts.sources.len() {
            return Err(Error::InvalidOption(format!(
                "{name} needs one value per source ({} sources)",
                opts.sources.len()
            )));
        }
    }
    Ok(())
}

/// A layer to stack: its image, and which source it is (`None` for the parent bootstrap).
struct Layer {
    image: Image,
    source: Option<usize>,
}

/// The parent bootstrap (if any) and the sources, bottom first, checked to stack on the first.
fn load_layers(opts: &MergeOptions) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    if let Some(p) = &opts.parent_bootstrap {
        layers.push(Layer {
            image: rafs::load(p)?.image,
            source: None,
        });
    }
    for (i, p) in opts.sources.iter().enumerate() {
        layers.push(Layer {
            image: rafs::load(p)?.image,
            source: Some(i),
        });
    }
    let first = StackKey::of(&layers[0].image);
    for l in layers.iter().skip(1) {
        let name = l
            .source
            .map(|i| opts.sources[i].display().to_string())
            .unwrap_or_default();
        first.check(&StackKey::of(&l.image), &format!("layer {name}"))?;
    }
    Ok(layers)
}

/// The merged tree so far, with the chunks and blobs its layers brought.
struct Stack {
    tree: Tree,
    chunks: Vec<ChunkInfo>,
    blobs: Vec<BlobEntry>,
}

impl Default for Stack {
    fn default() -> Stack {
        Stack {
            tree: empty_tree(),
            chunks: Vec::new(),
            blobs: Vec::new(),
        }
    }
}

impl Stack {
    /// Puts `layer` on top: its blobs join the table (once each), its chunks follow the ones
    /// before, and its tree is applied with the overlay rules.
    fn push(&mut self, opts: &MergeOptions, layer: &Layer, dict_ids: &[String]) -> Result<()> {
        let img = &layer.image;
        let mut own = 0;
        let mut local_to_global = Vec::with_capacity(img.blobs.len());
        for b in &img.blobs {
            let mut rec = b.referenced_from_outside();
            if let Some(i) = layer.source.filter(|_| !dict_ids.contains(&b.id)) {
                own += 1;
                if own > 1 {
                    return Err(Error::InvalidOption(format!(
                        "{} references more than one blob of its own (a merged image is not a layer)",
                        opts.sources[i].display()
                    )));
                }
                rename_own_blob(opts, i, &mut rec)?;
            }
            let global = match self.blobs.iter().position(|x| x.id == rec.id) {
                Some(g) => g,
                None => {
                    self.blobs.push(rec);
                    self.blobs.len() - 1
                }
            };
            local_to_global.push(global as u32);
        }
        let offset = self.chunks.len() as u32;
        for c in &img.chunks {
            let g = *local_to_global
                .get(c.blob_index as usize)
                .ok_or_else(|| Error::Corrupt {
                    what: "chunk",
                    offset: u64::from(c.index),
                    reason: "blob index outside the blob table".into(),
                })?;
            self.chunks.push(ChunkInfo {
                blob_index: g,
                ..*c
            });
        }
        overlay::apply(&mut self.tree, &img.tree, opts.whiteout_spec, &|id| {
            ChunkId::new(id.get() + offset)
        });
        Ok(())
    }
}

/// Source `i`'s own blob takes the id and size the converter passes for it. For a blob whose
/// meta is published apart from its data (targz-ref, formats/blob.md §11) they name the meta
/// blob instead: the layer's digest stays the blob id.
fn rename_own_blob(opts: &MergeOptions, i: usize, rec: &mut BlobEntry) -> Result<()> {
    if let Some(d) = opts.blob_toc_digests.get(i) {
        rec.refs.toc_digest = digest_bytes(d, "--blob-toc-digests")?;
    }
    if let Some(s) = opts.blob_toc_sizes.get(i) {
        rec.refs.toc_size = *s;
    }
    if rec.features.contains(BlobFeatures::SEPARATE) {
        if let Some(d) = opts.blob_digests.get(i) {
            rec.refs.meta_digest = digest_bytes(d, "--blob-digests")?;
        }
        if let Some(s) = opts.blob_sizes.get(i) {
            rec.refs.meta_size = *s;
        }
        return Ok(());
    }
    if let Some(id) = opts.original_blob_ids.get(i) {
        rec.id = id.clone();
    }
    if let Some(d) = opts.blob_digests.get(i) {
        rec.id = d.trim_start_matches("sha256:").to_string();
    }
    if let Some(s) = opts.blob_sizes.get(i) {
        rec.compressed_size = *s;
    }
    Ok(())
}

/// A sha256 given on the command line (hex, `sha256:` prefix allowed) as bytes.
fn digest_bytes(d: &str, flag: &str) -> Result<[u8; 32]> {
    let hex_part = d.trim().trim_start_matches("sha256:");
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| {
        Error::InvalidOption(format!(
            "{flag}: {d:?} is not a sha256 digest (64 hex digits)"
        ))
    })?;
    Ok(out)
}
