//! `compact`: rewrites the blobs of an image whose layers left them sparsely used (files
//! deleted or replaced higher in the stack). Blobs nothing uses are dropped; blobs used below
//! `--min-used-ratio` percent are rebuilt with only their used chunks; blobs smaller than
//! `--compact-blob-size` are merged, smallest first, into blobs of at most
//! `--max-compact-size` used bytes; chunks a `--chunk-dict` holds are referenced there instead
//! of being copied. nydus-image's rules (builder/src/compact.rs), where upstream's code runs
//! them; see README, `compact`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::blob::copy::ChunkCopier;
use crate::blob::reader::BlobSource;
use crate::error::{Error, Result};
use crate::io::staged::{write_temp, Outputs};
use crate::model::stack::{compact_blobs, StackKey};
use crate::model::{BlobEntry, ChunkId, ChunkInfo, EntryId, Image};
use crate::ops::opened::OpenedImage;
use crate::ops::report::Report;
use crate::rafs;

/// Options of `compact`, with nydus-image's defaults.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// The image's bootstrap.
    pub bootstrap: PathBuf,
    /// Directory holding the image's blobs; the new blobs are written there too.
    pub blob_dir: PathBuf,
    /// Rebuild blobs whose used share (in percent of their size) is below this; 0 disables.
    pub min_used_ratio: u8,
    /// Merge blobs (used bytes for rebuilt ones) smaller than this.
    pub compact_blob_size: u64,
    /// A merged blob holds at most this many used bytes.
    pub max_compact_size: u64,
    /// Compact only when the image has at least this many blobs (dictionary blobs count);
    /// 0 always.
    pub layers_to_compact: usize,
    /// A chunk dictionary: chunks it holds are referenced in its blobs, not copied.
    pub chunk_dict: Option<PathBuf>,
    /// The new bootstrap.
    pub output_bootstrap: PathBuf,
    /// Write the result as JSON (only when a bootstrap is written).
    pub output_json: Option<PathBuf>,
}

impl CompactOptions {
    /// Options with nydus-image's defaults: no ratio rule, 10 MiB small blobs, 100 MiB
    /// merged blobs, any number of layers, output beside the bootstrap.
    pub fn new(bootstrap: PathBuf, blob_dir: PathBuf) -> CompactOptions {
        CompactOptions {
            output_bootstrap: default_output(&bootstrap),
            bootstrap,
            blob_dir,
            min_used_ratio: 0,
            compact_blob_size: 10 << 20,
            max_compact_size: 100 << 20,
            layers_to_compact: 0,
            chunk_dict: None,
            output_json: None,
        }
    }
}

/// nydus-image's default output: the bootstrap's extension replaced by `bootstrap.compact`
/// (`image.boot` → `image.bootstrap.compact`, `bootstrap` → `bootstrap.bootstrap.compact`).
pub fn default_output(bootstrap: &Path) -> PathBuf {
    bootstrap.with_extension("bootstrap.compact")
}

/// What became of one blob of the original image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobFate {
    /// Kept as it is.
    Kept,
    /// No file uses it any more: dropped.
    Dropped,
    /// Its used chunks were copied into new blob number `n` of [`CompactOutput::new_blobs`].
    Rewritten(usize),
    /// A blob of the chunk dictionary: kept, and other blobs' chunks may move to it.
    Dictionary,
}

/// What `compact` did.
#[derive(Debug, Clone)]
pub struct CompactOutput {
    /// The bootstrap written; `None` when there was nothing to compact (nothing written).
    pub bootstrap: Option<PathBuf>,
    /// Blob ids of the new blob table.
    pub blobs: Vec<String>,
    /// Per original blob: its id, compressed size, used bytes and fate.
    pub before: Vec<(BlobEntry, BlobUse)>,
    /// Ids and sizes of the blobs written.
    pub new_blobs: Vec<(String, u64)>,
}

/// How much of a blob the image uses, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUse {
    /// Compressed bytes of the distinct chunks files still reference.
    pub used: u64,
    /// What compact did with the blob.
    pub fate: BlobFate,
}

/// A chunk of a blob: (blob index, chunk index in the blob).
type ChunkKey = (u32, u32);

/// Which chunks the image uses and where they go: what `compact` decides before writing.
struct Analysis {
    /// Every blob chunk a file references, with one chunk id reading it.
    used: BTreeMap<ChunkKey, (ChunkId, ChunkInfo)>,
    /// Chunks the dictionary holds: where they go instead.
    to_dict: HashMap<ChunkKey, ChunkInfo>,
    /// Per blob: compressed bytes of its used chunks that stay in it.
    used_bytes: Vec<u64>,
    /// Per blob: what happens to it.
    fates: Vec<BlobFate>,
}

impl Analysis {
    fn of(opts: &CompactOptions, image: &Image, dict: Option<&Image>) -> Analysis {
        let dict_ids: HashSet<&str> = dict
            .iter()
            .flat_map(|d| &d.blobs)
            .map(|b| b.id.as_str())
            .collect();
        let is_dict = |b: &BlobEntry| dict_ids.contains(b.id.as_str());
        let used = used_chunks(image);
        let to_dict = dict_targets(image, dict, &is_dict);
        let mut used_bytes = vec![0u64; image.blobs.len()];
        for (key, (_, c)) in &used {
            if !to_dict.contains_key(key) {
                used_bytes[c.blob_index as usize] += u64::from(c.compressed_size);
            }
        }
        let fates = plan(opts, &image.blobs, &used_bytes, &is_dict);
        Analysis {
            used,
            to_dict,
            used_bytes,
            fates,
        }
    }

    /// Whether compacting changes anything: a blob dropped or rewritten, or a chunk moving to
    /// the dictionary.
    fn changes(&self) -> bool {
        let fate = |f: &BlobFate| *f != BlobFate::Kept && *f != BlobFate::Dictionary;
        self.fates.iter().any(fate) || self.used.keys().any(|k| self.to_dict.contains_key(k))
    }
}

/// Runs `compact`.
pub fn compact(opts: &CompactOptions) -> Result<CompactOutput> {
    let source = BlobSource {
        dir: Some(opts.blob_dir.clone()),
        file: None,
        zran_meta: None,
    };
    let mut image = OpenedImage::open(&opts.bootstrap, &source)?.image;
    present(&image, &opts.blob_dir)?;
    let dict = load_dict(opts, &image)?;
    let mut a = Analysis::of(opts, &image, dict.as_ref());
    let blob_count = image.blobs.len() + dict.as_ref().map_or(0, |d| d.blobs.len());
    let originals = image.blobs.clone();
    if blob_count < opts.layers_to_compact || !a.changes() {
        log::info!("compact: no chance to compact data blobs");
        let kept = vec![BlobFate::Kept; originals.len()];
        return Ok(CompactOutput {
            bootstrap: None,
            blobs: originals.iter().map(|b| b.id.clone()).collect(),
            before: uses(&originals, &kept, &a.used_bytes),
            new_blobs: Vec::new(),
        });
    }
    let dict_slot = add_dict_blobs(&mut image, dict.as_ref());
    let mut outputs = Outputs::new();
    let Rewritten { moved, new_blobs } = rewrite(opts, &mut image, &mut a, &mut outputs)?;
    for c in &mut image.chunks {
        let key = (c.blob_index, c.index);
        if let Some(d) = a.to_dict.get(&key) {
            let slot = dict_slot.get(d.blob_index as usize).copied();
            *c = ChunkInfo {
                blob_index: slot.ok_or_else(|| Error::Corrupt {
                    what: "chunk dictionary",
                    offset: u64::from(d.blob_index),
                    reason: "chunk of a blob outside its blob table".into(),
                })?,
                ..*d
            };
        } else if let Some(m) = moved.get(&key) {
            *c = *m;
        }
    }
    // the new bootstrap is inside no blob (formats/blob.md §12)
    image.blobs = image
        .blobs
        .iter()
        .map(BlobEntry::referenced_from_outside)
        .collect();
    let (path, ids) = encode(opts, &image, &mut outputs)?;
    outputs.commit()?;
    Ok(CompactOutput {
        bootstrap: Some(path),
        blobs: ids,
        before: uses(&originals, &a.fates, &a.used_bytes),
        new_blobs,
    })
}

/// The dictionary's blobs join the table after the image's (once: the image may use one
/// already); returns each dictionary blob's index in the table.
fn add_dict_blobs(image: &mut Image, dict: Option<&Image>) -> Vec<u32> {
    let mut slots = Vec::new();
    for b in dict.iter().flat_map(|d| &d.blobs) {
        let slot = match image.blobs.iter().position(|x| x.id == b.id) {
            Some(i) => i,
            None => {
                image.blobs.push(b.clone());
                image.blobs.len() - 1
            }
        };
        slots.push(slot as u32);
    }
    slots
}

/// What [`rewrite`] wrote.
struct Rewritten {
    /// Where each copied chunk went.
    moved: HashMap<ChunkKey, ChunkInfo>,
    /// The new blobs' ids and sizes.
    new_blobs: Vec<(String, u64)>,
}

/// Writes one new blob per group of rewritten blobs (into `outputs`), appended to the table;
/// returns where each copied chunk went and the new blobs.
fn rewrite(
    opts: &CompactOptions,
    image: &mut Image,
    a: &mut Analysis,
    outputs: &mut Outputs,
) -> Result<Rewritten> {
    let source = BlobSource {
        dir: Some(opts.blob_dir.clone()),
        file: None,
        zran_meta: None,
    };
    let mut moved = HashMap::new();
    let mut new_blobs = Vec::new();
    let reading = image.clone();
    for members in groups(&a.fates) {
        let blob_index = image.blobs.len() as u32;
        let mut copier = ChunkCopier::new(&reading, source.clone(), blob_index, &opts.blob_dir)?;
        for (key, (id, _)) in &a.used {
            if members.contains(&key.0) && !a.to_dict.contains_key(key) {
                moved.insert(*key, copier.copy(*id)?);
            }
        }
        let fate = match copier.finish()? {
            Some(blob) => {
                log::info!("compact: new blob {} from blobs {members:?}", blob.entry.id);
                let path = opts.blob_dir.join(&blob.entry.id);
                blob.files.add_to(outputs, Some(&path), &blob.entry.id);
                new_blobs.push((blob.entry.id.clone(), blob.entry.compressed_size));
                image.blobs.push(blob.entry);
                BlobFate::Rewritten(new_blobs.len() - 1)
            }
            // every used chunk went to the dictionary
            None => BlobFate::Dropped,
        };
        for m in &members {
            a.fates[*m as usize] = fate.clone();
        }
    }
    Ok(Rewritten { moved, new_blobs })
}

/// Encodes the rewritten image (blobs it no longer uses left out) and adds the bootstrap and
/// the JSON to `outputs`; returns the bootstrap's path and the blob ids.
fn encode(
    opts: &CompactOptions,
    image: &Image,
    outputs: &mut Outputs,
) -> Result<(PathBuf, Vec<String>)> {
    let prefetch = prefetch_entries(image);
    let mut tree = image.tree.clone();
    let (chunks, blobs) = compact_blobs(&mut tree, &image.chunks, &image.blobs)?;
    let boot = rafs::encode_like(image, &tree, &chunks, &blobs, false, prefetch)?;
    let path = opts.output_bootstrap.clone();
    outputs.add(write_temp(&path, &boot, None)?, path.clone());
    let ids: Vec<String> = blobs.iter().map(|b| b.id.clone()).collect();
    if let Some(j) = &opts.output_json {
        let doc = Report::new(
            path.display().to_string(),
            ids.clone(),
            image.version,
            image.compressor,
        );
        outputs.add(write_temp(j, doc.pretty().as_bytes(), None)?, j.clone());
    }
    Ok((path, ids))
}

/// Every blob of the image is in the blob directory (named by its id), before anything is
/// decided from the sizes its table records.
fn present(image: &Image, dir: &Path) -> Result<()> {
    for b in &image.blobs {
        let p = dir.join(&b.id);
        if !p.is_file() {
            return Err(Error::Io {
                op: "find blob",
                path: p,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
    }
    Ok(())
}

fn uses(blobs: &[BlobEntry], fates: &[BlobFate], used: &[u64]) -> Vec<(BlobEntry, BlobUse)> {
    blobs
        .iter()
        .zip(fates)
        .zip(used)
        .map(|((b, f), u)| {
            let fate = f.clone();
            (b.clone(), BlobUse { used: *u, fate })
        })
        .collect()
}

/// Chunks of the image's own blobs that the dictionary holds too: where they go instead.
fn dict_targets(
    image: &Image,
    dict: Option<&Image>,
    is_dict: &dyn Fn(&BlobEntry) -> bool,
) -> HashMap<ChunkKey, ChunkInfo> {
    let mut index = HashMap::new();
    if let Some(d) = dict {
        for (c, known) in d.chunks.iter().zip(&d.digest_known) {
            if *known {
                index.entry((c.digest, c.uncompressed_size)).or_insert(*c);
            }
        }
    }
    let mut targets = HashMap::new();
    for (c, known) in image.chunks.iter().zip(&image.digest_known) {
        let own = image.blobs.get(c.blob_index as usize);
        if !*known || own.is_none_or(is_dict) {
            continue;
        }
        if let Some(d) = index.get(&(c.digest, c.uncompressed_size)) {
            targets.insert((c.blob_index, c.index), *d);
        }
    }
    targets
}

/// The chunk dictionary, checked to stack with the image.
fn load_dict(opts: &CompactOptions, image: &Image) -> Result<Option<Image>> {
    let Some(p) = &opts.chunk_dict else {
        return Ok(None);
    };
    let dict = rafs::load(p)?.image;
    StackKey::of(image).check(
        &StackKey::of(&dict),
        &format!("chunk dictionary {}", p.display()),
    )?;
    Ok(Some(dict))
}

/// Every distinct blob chunk a file references (with one chunk id reading it), in blob then
/// chunk order.
fn used_chunks(image: &Image) -> BTreeMap<ChunkKey, (ChunkId, ChunkInfo)> {
    let mut used = BTreeMap::new();
    for inode in &image.tree.inodes {
        for id in inode.chunks() {
            if let Some(c) = image.chunks.get(id.index()) {
                used.entry((c.blob_index, c.index)).or_insert((*id, *c));
            }
        }
    }
    used
}

/// Decides each blob's fate: nydus-image's rules (delete unused, rebuild under the ratio,
/// merge small blobs greedily, smallest first). Rewritten blobs are marked `Rewritten(g)` with
/// `g` the index of their group's first member; [`groups`] collects them.
fn plan(
    opts: &CompactOptions,
    blobs: &[BlobEntry],
    used: &[u64],
    is_dict: &dyn Fn(&BlobEntry) -> bool,
) -> Vec<BlobFate> {
    let mut fates: Vec<BlobFate> = blobs
        .iter()
        .zip(used)
        .enumerate()
        .map(|(i, (b, u))| {
            if is_dict(b) {
                BlobFate::Dictionary
            } else if *u == 0 {
                BlobFate::Dropped
            } else if b.compressed_size > 0
                && u * 100 / b.compressed_size < u64::from(opts.min_used_ratio)
            {
                BlobFate::Rewritten(i)
            } else {
                BlobFate::Kept
            }
        })
        .collect();
    // small blobs: an original blob's size is its file, a rebuilt one's its used bytes
    let mut small: Vec<(usize, u64)> = fates
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let size = match f {
                BlobFate::Kept => blobs[i].compressed_size,
                BlobFate::Rewritten(_) => used[i],
                _ => return None,
            };
            (size < opts.compact_blob_size).then_some((i, size))
        })
        .collect();
    small.sort_by_key(|(i, size)| (*size, *i));
    if small.len() < 2 {
        return fates;
    }
    let (mut into, mut total) = (small[0].0, used[small[0].0]);
    for (i, _) in small.iter().skip(1) {
        if total + used[*i] <= opts.max_compact_size {
            fates[into] = BlobFate::Rewritten(into);
            fates[*i] = BlobFate::Rewritten(into);
            total += used[*i];
        } else {
            (into, total) = (*i, used[*i]);
        }
    }
    fates
}

/// The groups of blobs rewritten together, each as its members' indexes.
fn groups(fates: &[BlobFate]) -> Vec<Vec<u32>> {
    let mut by_leader: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (i, f) in fates.iter().enumerate() {
        if let BlobFate::Rewritten(g) = f {
            by_leader.entry(*g).or_default().push(i as u32);
        }
    }
    by_leader.into_values().collect()
}

/// The image's prefetch table as tree entries (the first entry of each listed inode), so that
/// the rewritten bootstrap keeps it.
fn prefetch_entries(image: &Image) -> Vec<EntryId> {
    let mut first: HashMap<u64, EntryId> = HashMap::new();
    for e in image.tree.numbering_order() {
        let ino = image.tree[e].inode;
        if let Some(n) = image.inode_numbers.get(ino.index()) {
            first.entry(*n).or_insert(e);
        }
    }
    image
        .prefetch
        .iter()
        .filter_map(|n| first.get(n).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Compressor, Digester};

    fn blob(id: &str, size: u64) -> BlobEntry {
        BlobEntry {
            compressed_size: size,
            ..BlobEntry::new(id.into(), Compressor::Zstd, Digester::Blake3)
        }
    }

    fn opts(ratio: u8, small: u64, max: u64) -> CompactOptions {
        let mut o = CompactOptions::new("b".into(), "d".into());
        (o.min_used_ratio, o.compact_blob_size, o.max_compact_size) = (ratio, small, max);
        o
    }

    #[test]
    fn unused_blobs_drop_sparse_ones_rebuild_full_ones_stay() {
        let blobs = [
            blob("a", 1000),
            blob("b", 1000),
            blob("c", 1000),
            blob("d", 1000),
        ];
        let is_dict = |b: &BlobEntry| b.id == "d";
        let fates = plan(&opts(50, 0, 0), &blobs, &[0, 400, 900, 10], &is_dict);
        use BlobFate::*;
        assert_eq!(fates, [Dropped, Rewritten(1), Kept, Dictionary]);
    }

    #[test]
    fn small_blobs_merge_smallest_first_up_to_the_limit() {
        let blobs = [
            blob("a", 300),
            blob("b", 100),
            blob("c", 200),
            blob("big", 5000),
        ];
        let fates = plan(&opts(0, 1000, 350), &blobs, &[300, 100, 200, 5000], &|_| {
            false
        });
        use BlobFate::*;
        // 100 + 200 fit in 350; 300 more would not, so "a" starts a group of its own and,
        // alone, stays as it is; "big" is not small
        assert_eq!(fates, [Kept, Rewritten(1), Rewritten(1), Kept]);
        assert_eq!(groups(&fates), [vec![1, 2]]);
    }

    #[test]
    fn default_output_replaces_the_extension_as_upstream() {
        let out = |p: &str| default_output(Path::new(p));
        assert_eq!(out("d/image.boot"), Path::new("d/image.bootstrap.compact"));
        assert_eq!(
            out("d/bootstrap"),
            Path::new("d/bootstrap.bootstrap.compact")
        );
    }
}
