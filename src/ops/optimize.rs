//! `optimize`: rewrites an image so that the files a workload reads first are one contiguous
//! range: their chunks are copied, in the listed order, into a new blob appended to the blob
//! table, and the bootstrap's prefetch table lists them (nydusify's `optimize` command).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::blob::copy::ChunkCopier;
use crate::blob::reader::BlobSource;
use crate::error::{Error, IoContext, Result};
use crate::io::staged::{write_temp, Outputs};
use crate::model::prefetch::{Prefetch, PrefetchPolicy};
use crate::model::{BlobEntry, ChunkId, InodeId};
use crate::ops::opened::OpenedImage;
use crate::ops::report::Report;
use crate::rafs;

/// Where the bootstrap goes when `--output-bootstrap` is not given, as nydus-image names it
/// (in the working directory).
pub const DEFAULT_OUTPUT_BOOTSTRAP: &str = "optimized_bootstrap";

/// Options of `optimize`, as nydus-image spells them.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// The image's bootstrap.
    pub bootstrap: PathBuf,
    /// Where the image's blobs are.
    pub blobs: BlobSource,
    /// The list of files read first: one absolute path a line, or nydus-image's JSON
    /// (`{"version":"v1","files":[{"path":...}]}`).
    pub prefetch_files: PathBuf,
    /// The new bootstrap.
    pub output_bootstrap: PathBuf,
    /// Directory the new blob is written to, as `<blob id>`.
    pub output_blob_dir: PathBuf,
    /// Write the result as JSON (`blobs`: the image's blobs, the new one last).
    pub output_json: Option<PathBuf>,
}

/// What `optimize` wrote.
#[derive(Debug, Clone)]
pub struct OptimizeOutput {
    /// The new bootstrap.
    pub bootstrap: PathBuf,
    /// Blob ids in blob-table order; the new blob is the last.
    pub blobs: Vec<String>,
    /// The new blob's file.
    pub blob_path: PathBuf,
    /// Listed regular files whose data moved into the new blob.
    pub files: u64,
    /// Distinct chunks in the new blob.
    pub chunks: u64,
    /// Listed paths the image does not hold (skipped, as nydus-image skips them).
    pub missing: Vec<PathBuf>,
}

/// Runs `optimize`.
pub fn optimize(opts: &OptimizeOptions) -> Result<OptimizeOutput> {
    let text = std::fs::read_to_string(&opts.prefetch_files).ctx("read", &opts.prefetch_files)?;
    let listed = parse_list(&text, &opts.prefetch_files)?;
    let opened = OpenedImage::open(&opts.bootstrap, &opts.blobs)?;
    let mut image = opened.image;
    let prefetch = Prefetch::new(PrefetchPolicy::Fs, &listed.join("\n"));
    let table = prefetch.table(&image.tree);
    let found: HashSet<PathBuf> = table.iter().map(|e| image.tree.path(*e)).collect();
    let missing: Vec<PathBuf> = prefetch
        .patterns()
        .iter()
        .filter(|p| !found.contains(*p))
        .cloned()
        .collect();
    for p in &missing {
        log::warn!("prefetch file {} is not in the image: skipped", p.display());
    }
    let blob_index = image.blobs.len() as u32;
    let reading = image.clone();
    let mut copier = ChunkCopier::new(&reading, opened.blobs, blob_index, &opts.output_blob_dir)?;
    let mut moved: HashMap<InodeId, Vec<ChunkId>> = HashMap::new();
    for e in &table {
        let ino = image.tree[*e].inode;
        if moved.contains_key(&ino) || image.tree[ino].chunks().is_empty() {
            continue;
        }
        let mut ids = Vec::with_capacity(image.tree[ino].chunks().len());
        for id in image.tree[ino].chunks() {
            let info = copier.copy(*id)?;
            ids.push(ChunkId::new(image.chunks.len() as u32));
            image.chunks.push(info);
            image.digest_known.push(true);
        }
        moved.insert(ino, ids);
    }
    let chunks = copier.copied() as u64;
    let Some(blob) = copier.finish()? else {
        return Err(Error::InvalidOption(format!(
            "none of the {} files listed in {} is a file with data in the image",
            listed.len(),
            opts.prefetch_files.display()
        )));
    };
    let files = moved.len() as u64;
    for (ino, ids) in moved {
        if let Some(f) = image.tree[ino].file_mut() {
            f.chunks = ids;
        }
    }
    // the new bootstrap is inside no blob (formats/blob.md §12)
    image.blobs = image
        .blobs
        .iter()
        .map(BlobEntry::referenced_from_outside)
        .collect();
    image.blobs.push(blob.entry.clone());
    let boot = rafs::encode_like(
        &image,
        &image.tree,
        &image.chunks,
        &image.blobs,
        false,
        table,
    )?;
    let blob_path = opts.output_blob_dir.join(&blob.entry.id);
    let mut outputs = Outputs::new();
    blob.files
        .add_to(&mut outputs, Some(&blob_path), &blob.entry.id);
    let boot_path = opts.output_bootstrap.clone();
    outputs.add(write_temp(&boot_path, &boot, None)?, boot_path.clone());
    let out = OptimizeOutput {
        bootstrap: boot_path,
        blobs: image.blobs.iter().map(|b| b.id.clone()).collect(),
        blob_path,
        files,
        chunks,
        missing,
    };
    if let Some(j) = &opts.output_json {
        let json = Report::new(
            out.bootstrap.display().to_string(),
            out.blobs.clone(),
            image.version,
            image.compressor,
        )
        .pretty();
        outputs.add(write_temp(j, json.as_bytes(), None)?, j.clone());
    }
    outputs.commit()?;
    Ok(out)
}

/// The paths a prefetch list names, in order: nydus-image's JSON (`version` "v1", `files`
/// with `path`; byte `ranges` are not kept apart, whole files move) or plain text, one path a
/// line.
fn parse_list(text: &str, path: &Path) -> Result<Vec<String>> {
    if !text.trim_start().starts_with('{') {
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect());
    }
    let bad = |why: String| Error::InvalidOption(format!("{}: {why}", path.display()));
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not a prefetch list: {e}")))?;
    if doc["version"] != "v1" {
        return Err(bad(format!(
            "unsupported prefetch file version {}",
            doc["version"]
        )));
    }
    let files = doc["files"]
        .as_array()
        .ok_or_else(|| bad("no \"files\" array".into()))?;
    files
        .iter()
        .map(|f| {
            f["path"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("a file without a \"path\"".into()))
        })
        .collect()
}
