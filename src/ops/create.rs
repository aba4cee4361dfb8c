//! `create`: build a bootstrap and a data blob from a source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::blob::WrittenBlob;
use crate::blob::{BlobWriter, BlobWriterOptions};
use crate::chunk::pipeline::{self, ChunkTable, PipelineOptions};
use crate::codec::cipher::BlobKey;
use crate::codec::{Compressor, Digester};
use crate::error::{Error, IoContext, Result};
use crate::format::blob::{
    validate_chunk_size, BlobFeatures, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
use crate::io::staged::write_temp;
use crate::io::staged::Outputs;
use crate::model::overlay::{self, WhiteoutSpec};
use crate::model::prefetch::Prefetch;
use crate::model::stack::{compact_blobs, empty_tree, StackKey};
use crate::model::{BlobEntry, Image, Tree};
use crate::model::{ChunkId, FileType, InodeId};
use crate::ops::paths::bootstrap_path;
use crate::ops::report::Report;
use crate::rafs::v6::{self, EncodeOptions};
use crate::source::limits::SourceLimits;
use crate::source::tar;

/// Blob id written into a bootstrap inlined in its own blob (its id is not known yet).
pub(crate) const INLINE_PLACEHOLDER_ID: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// What the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceType {
    /// A local directory.
    #[default]
    Directory,
    /// A tar stream (plain, gzip, zstd or xz, told by its magic bytes): `tar-rafs`,
    /// `targz-rafs`. File data is chunked into a new blob.
    Tar,
    /// An uncompressed tar whose data stays in place: `tar-tarfs` (formats/rafs-v6.md §18).
    TarTarfs,
    /// A gzip layer whose data stays in place, read through inflate contexts: `targz-ref`
    /// (formats/blob.md §11).
    TargzRef,
    /// The same over an eStargz layer (its TOC and landmark files are not part of the tree):
    /// `estargz-ref`.
    EstargzRef,
}

/// Longest `--blob-id` nydus-image accepts.
pub const BLOB_ID_MAX_LEN: usize = 255;

/// Options of `create`, mirroring nydus-image's flags.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The source to build from.
    pub source: PathBuf,
    /// What kind of source it is.
    pub source_type: SourceType,
    /// RAFS version (only 6 so far).
    pub fs_version: u32,
    /// Output bootstrap path.
    pub bootstrap: Option<PathBuf>,
    /// Output blob path.
    pub blob: Option<PathBuf>,
    /// Output directory: blob named by its id, bootstrap (without `bootstrap`) by its sha256.
    pub blob_dir: Option<PathBuf>,
    /// Append the bootstrap to the blob.
    pub blob_inline_meta: bool,
    /// With `blob_inline_meta`: end the blob as upstream's `--features blob-toc` does (chunk
    /// digests, zstd bootstrap, ToC; formats/blob.md §9).
    pub blob_toc: bool,
    /// Also write `<id>.blob.data` / `<id>.blob.meta` here.
    pub blob_cache_dir: Option<PathBuf>,
    /// Chunk compression; `None` means the default (zstd, or none in blob-cache-only mode).
    pub compressor: Option<Compressor>,
    /// Chunk digest.
    pub digester: Digester,
    /// Chunk size.
    pub chunk_size: u32,
    /// Do not record uid/gid (nydus-image `--repeatable`).
    pub repeatable: bool,
    /// v5: align uncompressed chunk offsets to 4 KiB (v6 always does).
    pub aligned_chunk: bool,
    /// Build on top of this lower layer: its tree and chunks (formats: layers).
    pub parent_bootstrap: Option<PathBuf>,
    /// Reference chunks found in this image's blobs instead of storing them again.
    pub chunk_dict: Option<PathBuf>,
    /// How whiteouts are spelled in the source.
    pub whiteout_spec: WhiteoutSpec,
    /// Write the build result as JSON here.
    pub output_json: Option<PathBuf>,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Scratch directory for the outputs under construction (default: beside each output).
    /// On another filesystem, finished outputs are copied beside their final names before the
    /// rename.
    pub tmp_dir: Option<PathBuf>,
    /// `--prefetch-policy` and the patterns read for it.
    pub prefetch: Prefetch,
    /// `--blob-id`: the id the blob table records for the new blob (the name of the object
    /// it is stored as) instead of its sha256; also its file name under `--blob-dir` and in
    /// its cache files' names. For tar-tarfs it replaces the tar's sha256 (nydus-snapshotter
    /// passes the layer digest).
    pub blob_id: Option<String>,
    /// `--blob-offset`: where the blob's data will start inside a larger file (a tar that
    /// holds it): every chunk's compressed offset, and the blob meta's, is shifted by this.
    pub blob_offset: u64,
    /// `--batch-size`: pack small single-chunk files into batches of this size, each
    /// compressed as one frame (formats/blob.md §3.4); `None` (or 0) for no batches.
    pub batch_size: Option<u32>,
    /// `--encrypt`: encrypt the blob with a fresh random AES-128-XTS key, kept in the
    /// bootstrap's blob table as upstream keeps it (formats/blob.md §10).
    pub encrypt: bool,
    /// `--max-decompress-memory` and `--max-entries`: what the source may make the tool
    /// allocate.
    pub limits: SourceLimits,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            source: PathBuf::new(),
            source_type: SourceType::Directory,
            fs_version: 6,
            bootstrap: None,
            blob: None,
            blob_dir: None,
            blob_inline_meta: false,
            blob_toc: false,
            blob_cache_dir: None,
            compressor: None,
            digester: Digester::Blake3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            repeatable: false,
            aligned_chunk: false,
            parent_bootstrap: None,
            chunk_dict: None,
            whiteout_spec: WhiteoutSpec::Oci,
            output_json: None,
            threads: 0,
            tmp_dir: None,
            prefetch: Prefetch::default(),
            blob_id: None,
            blob_offset: 0,
            batch_size: None,
            encrypt: false,
            limits: SourceLimits::default(),
        }
    }
}

/// Progress callbacks (the binary draws a bar; the library stays silent).
pub trait Progress: Sync {
    /// The walk finished: this many regular files holding this many bytes will be read.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// This many more bytes were committed.
    fn advance(&self, _bytes: u64) {}
}

/// A [`Progress`] that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What `create` produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreateOutput {
    /// Bootstrap path written (empty when inlined into the blob).
    pub bootstrap: String,
    /// Blob ids in blob-table order (parent and dictionary blobs included).
    pub blobs: Vec<String>,
    /// Path of the blob file written, if any.
    pub blob_path: Option<PathBuf>,
    /// Size of the blob file.
    pub blob_size: u64,
    /// Entries in the tree.
    pub entries: u64,
    /// Regular files with data.
    pub files: u64,
    /// Bytes of file data read.
    pub data_bytes: u64,
    /// Chunks referenced by files.
    pub chunks: u64,
    /// Distinct chunks stored.
    pub unique_chunks: u64,
    /// Compressor used.
    pub compressor: Compressor,
    /// RAFS version written.
    pub fs_version: u32,
    /// Seconds per phase.
    pub timings: BTreeMap<String, f64>,
}

impl serde::Serialize for Compressor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

fn validate(o: &CreateOptions) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidOption(m.to_string()));
    if o.fs_version != 5 && o.fs_version != 6 {
        return bad("--fs-version must be 5 or 6");
    }
    if o.blob_toc && !o.blob_inline_meta {
        return bad(
            "--features blob-toc needs --blob-inline-meta: the ToC frames the inlined meta",
        );
    }
    if o.fs_version == 5 && o.blob_toc {
        return bad("--features blob-toc is supported with --fs-version 6 only");
    }
    validate_chunk_size(o.chunk_size)?;
    validate_blob_features(o)?;
    if let Some(id) = &o.blob_id {
        validate_blob_id(id, o.blob_inline_meta)?;
    }
    if let Some(d) = &o.tmp_dir {
        if !d.is_dir() {
            return Err(Error::InvalidOption(format!(
                "--tmp-dir {} is not a directory",
                d.display()
            )));
        }
    }
    if o.source_type == SourceType::Directory && crate::source::tar::is_stdin(&o.source) {
        return bad(
            "a directory source cannot be standard input; use -t tar-rafs for a tar stream",
        );
    }
    if o.source_type == SourceType::TarTarfs {
        if o.blob.is_some() {
            return bad("--blob is not allowed for tar-tarfs: the tar itself is the data blob");
        }
        if o.blob_inline_meta {
            return bad("--blob-inline-meta is not allowed for tar-tarfs");
        }
        if o.blob_cache_dir.is_some() {
            return bad(
                "--blob-cache-dir is not allowed for tar-tarfs: the tar itself is the device",
            );
        }
        if o.bootstrap.is_none() && o.blob_dir.is_none() {
            return bad("tar-tarfs needs --bootstrap or --blob-dir");
        }
        if let Some(d) = &o.blob_dir {
            if !d.is_dir() {
                return Err(Error::InvalidOption(format!(
                    "{} is not a directory",
                    d.display()
                )));
            }
        }
        return Ok(());
    }
    if o.blob_inline_meta && o.bootstrap.is_some() {
        return bad(
            "--blob-inline-meta conflicts with --bootstrap: the bootstrap goes into the blob",
        );
    }
    if o.blob_inline_meta && o.blob_cache_dir.is_some() && o.blob.is_none() && o.blob_dir.is_none()
    {
        return bad("--blob-inline-meta with --blob-cache-dir also needs --blob or --blob-dir");
    }
    if o.blob.is_none() && o.blob_dir.is_none() && o.blob_cache_dir.is_none() {
        return bad("one of --blob, --blob-dir or --blob-cache-dir is required");
    }
    if o.blob_inline_meta && o.blob.is_none() && o.blob_dir.is_none() {
        return bad("--blob-inline-meta needs --blob or --blob-dir");
    }
    if o.bootstrap.is_none() && o.blob_dir.is_none() && !o.blob_inline_meta {
        return bad("--bootstrap is required unless --blob-dir or --blob-inline-meta is given");
    }
    for d in [&o.blob_dir, &o.blob_cache_dir].into_iter().flatten() {
        if !d.is_dir() {
            return Err(Error::InvalidOption(format!(
                "{} is not a directory",
                d.display()
            )));
        }
    }
    Ok(())
}

/// `--batch-size` and `--encrypt`, as upstream validates them: RAFS v6 and a chunked source
/// only; a batch size a power of two from 4 KiB up to the chunk size.
fn validate_blob_features(o: &CreateOptions) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidOption(m));
    if let Some(b) = o.batch_size.filter(|b| *b > 0) {
        if o.fs_version != 6 {
            return bad("--batch-size is supported with --fs-version 6 only".into());
        }
        if o.source_type == SourceType::TarTarfs {
            return bad("--batch-size is not supported for tar-tarfs: the tar is the data".into());
        }
        if !b.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&b) {
            return bad(format!(
                "batch size {b:#x} must be a power of two between {MIN_CHUNK_SIZE:#x} and {MAX_CHUNK_SIZE:#x}"
            ));
        }
        if b > o.chunk_size {
            return bad(format!(
                "batch size {b:#x} is bigger than chunk size {:#x}",
                o.chunk_size
            ));
        }
    }
    if o.encrypt {
        if o.fs_version != 6 {
            return bad("--encrypt is supported with --fs-version 6 only".into());
        }
        if o.source_type == SourceType::TarTarfs {
            return bad("--encrypt is not supported for tar-tarfs: the tar is the data".into());
        }
    }
    Ok(())
}

/// `--blob-id`: at most 255 bytes, as nydus-image allows, and usable as a file name. An
/// inlined bootstrap cannot carry it (nydus-image rejects the pair too): readers take the id
/// of such a blob from its file name.
fn validate_blob_id(id: &str, inline_meta: bool) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidOption(m));
    if inline_meta {
        return bad("--blob-id conflicts with --blob-inline-meta".into());
    }
    if id.is_empty() || id.len() > BLOB_ID_MAX_LEN {
        return bad(format!(
            "--blob-id must be 1 to {BLOB_ID_MAX_LEN} bytes long"
        ));
    }
    if id.contains('/') || id == "." || id == ".." || id.contains('\0') {
        return bad(format!("--blob-id {id:?} is not usable as a file name"));
    }
    Ok(())
}

/// Checks that a parent or chunk dictionary can be combined with this build.
fn check_base(opts: &CreateOptions, img: &Image, path: &Path) -> Result<()> {
    let build = StackKey {
        version: opts.fs_version,
        chunk_size: opts.chunk_size,
        digester: opts.digester,
        explicit_uid_gid: !opts.repeatable,
        v5_compressor: (opts.fs_version == 5).then(|| Plan::new(opts).compressor),
    };
    build.check(
        &StackKey::of(img),
        &format!("{} (parent or chunk dictionary)", path.display()),
    )
}

/// A tar layer handed over as an open stream, with the digests it must have (OCI input).
pub(crate) struct LayerStream<'a> {
    /// The layer's stored bytes (plain, gzip, zstd or xz tar).
    pub raw: Box<dyn std::io::Read + Send + 'a>,
    /// Names the layer in messages.
    pub what: String,
    /// sha256 (hex) of the stored bytes.
    pub digest: Option<String>,
    /// Size of the stored bytes.
    pub size: Option<u64>,
    /// sha256 (hex) of the uncompressed tar.
    pub diff_id: Option<String>,
}

/// What an OCI layer's descriptor and config say its bytes are.
pub(crate) struct LayerDigests {
    /// sha256 (hex) of the stored bytes.
    pub digest: Option<String>,
    /// Size of the stored bytes.
    pub size: Option<u64>,
    /// sha256 (hex) of the uncompressed tar.
    pub diff_id: Option<String>,
}

impl LayerDigests {
    /// Compares with what reading found: the stored bytes' count and sha256, and the
    /// uncompressed tar's sha256. A mismatch names the layer and the field.
    pub(crate) fn check(
        self,
        what: String,
        stored: (u64, Option<String>),
        diff_id: Option<String>,
    ) -> Result<()> {
        let checks = [
            (
                "size",
                self.size.map(|s| s.to_string()),
                Some(stored.0.to_string()),
            ),
            ("sha256", self.digest, stored.1),
            ("uncompressed sha256 (diff_id)", self.diff_id, diff_id),
        ];
        for (field, expected, actual) in checks {
            if let (Some(expected), Some(actual)) = (expected, actual) {
                if !expected.eq_ignore_ascii_case(&actual) {
                    return Err(Error::Mismatch {
                        what,
                        field,
                        expected,
                        actual,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Builds an image from `opts.source`.
pub fn create(opts: &CreateOptions, progress: &dyn Progress) -> Result<CreateOutput> {
    validate(opts)?;
    if opts.source_type == SourceType::TarTarfs {
        return create_tarfs(opts, progress);
    }
    if matches!(
        opts.source_type,
        SourceType::TargzRef | SourceType::EstargzRef
    ) {
        return crate::ops::targz_ref::create_targz_ref(opts, progress);
    }
    build(opts, progress, None)
}

/// Builds a layer from an open tar stream (`opts.source` only names it), checking its bytes
/// against the digests and size given while reading them: a mismatch is an error naming the
/// layer, and nothing is written.
pub(crate) fn create_layer(
    opts: &CreateOptions,
    progress: &dyn Progress,
    layer: LayerStream<'_>,
) -> Result<CreateOutput> {
    if opts.source_type != SourceType::Tar {
        return Err(Error::InvalidOption(
            "a layer stream is built as tar-rafs".into(),
        ));
    }
    validate(opts)?;
    build(opts, progress, Some(layer))
}

/// How a build runs, decided from the options before any input is read.
struct Plan {
    compressor: Compressor,
    threads: usize,
    /// `--blob-cache-dir` alone: chunks go to the cache only, stored raw, as upstream does.
    cache_only: bool,
}

impl Plan {
    fn new(opts: &CreateOptions) -> Plan {
        let cache_only =
            opts.blob_cache_dir.is_some() && opts.blob.is_none() && opts.blob_dir.is_none();
        let compressor = match (opts.compressor, cache_only) {
            (Some(c), false) => c,
            (None, false) => Compressor::Zstd,
            (_, true) => Compressor::None,
        };
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        Plan {
            compressor,
            threads,
            cache_only,
        }
    }
}

/// What the layer is built on: the parent bootstrap and the chunk dictionary. Their blobs come
/// first in the blob table and their chunks seed dedup.
#[derive(Default)]
struct Base {
    table: ChunkTable,
    blobs: Vec<BlobEntry>,
    parent: Option<Image>,
}

impl Base {
    fn load(opts: &CreateOptions) -> Result<Base> {
        let mut base = Base::default();
        for (path, is_parent) in [(&opts.parent_bootstrap, true), (&opts.chunk_dict, false)] {
            let Some(path) = path else { continue };
            let img = crate::rafs::load(path)?.image;
            check_base(opts, &img, path)?;
            let offset = base.blobs.len() as u32;
            base.blobs
                .extend(img.blobs.iter().map(BlobEntry::referenced_from_outside));
            for c in &img.chunks {
                base.table.push(crate::model::ChunkInfo {
                    blob_index: c.blob_index + offset,
                    ..*c
                });
            }
            if is_parent {
                base.parent = Some(img);
            }
        }
        Ok(base)
    }
}

/// The source read into a tree, its file data streamed into the blob.
struct Input {
    tree: Tree,
    /// Chunk ids of each inode's data.
    per_inode: Vec<Vec<ChunkId>>,
    files: u64,
    bytes: u64,
}

impl Input {
    /// Gives each inode its chunk ids; returns how many chunk references there are.
    fn attach_chunks(&mut self) -> u64 {
        let per_inode = std::mem::take(&mut self.per_inode);
        let refs = per_inode.iter().map(|v| v.len() as u64).sum();
        for (ino, ids) in self.tree.inode_ids().zip(per_inode) {
            if let (false, Some(f)) = (ids.is_empty(), self.tree[ino].file_mut()) {
                f.chunks = ids;
            }
        }
        refs
    }
}

/// The bootstrap and blob outputs of an encoded build.
struct Encoded {
    written: Option<WrittenBlob>,
    /// The blob's file name (its id).
    file_id: String,
    files: crate::blob::writer::BlobFiles,
    /// The bootstrap, unless it went into the blob.
    bootstrap: Option<Vec<u8>>,
    /// Blob ids in blob-table order.
    table_ids: Vec<String>,
}

fn build(
    opts: &CreateOptions,
    progress: &dyn Progress,
    layer: Option<LayerStream<'_>>,
) -> Result<CreateOutput> {
    let t0 = Instant::now();
    let mut timings = BTreeMap::new();
    let plan = Plan::new(opts);
    let mut base = Base::load(opts)?;
    let mut writer = blob_writer(opts, &plan, base.blobs.len() as u32)?;
    let t1 = Instant::now();
    let mut input = read_input(opts, &plan, progress, layer, &mut base.table, &mut writer)?;
    timings.insert("load_tree".into(), t0.elapsed().as_secs_f64());
    let chunk_refs = input.attach_chunks();
    let data = writer.finish_data()?;
    timings.insert("dump_blob".into(), t1.elapsed().as_secs_f64());
    let mut tree = stack_on_parent(opts, base.parent.as_ref(), input.tree);
    let t2 = Instant::now();
    let encoded = encode(opts, &plan, &base, &mut tree, writer, data)?;
    timings.insert("dump_bootstrap".into(), t2.elapsed().as_secs_f64());
    let (outputs, out) = outputs(opts, &plan, encoded)?;
    timings.insert("total_build".into(), t0.elapsed().as_secs_f64());
    let out = CreateOutput {
        entries: tree.entries.len() as u64,
        files: input.files,
        data_bytes: input.bytes,
        chunks: chunk_refs,
        unique_chunks: base.table.chunks.len() as u64,
        timings,
        ..out
    };
    publish(out, opts, outputs)
}

/// The blob writer, its temporary files in the blob's directory (or `--tmp-dir`).
fn blob_writer(opts: &CreateOptions, plan: &Plan, blob_index: u32) -> Result<BlobWriter> {
    let blob_tmp_dir: PathBuf = match (&opts.blob, &opts.blob_dir, &opts.blob_cache_dir) {
        (Some(b), _, _) => parent_dir(b),
        (None, Some(d), _) => d.clone(),
        (None, None, Some(c)) => c.clone(),
        (None, None, None) => PathBuf::from("."),
    };
    let mut writer = BlobWriter::new(
        BlobWriterOptions {
            compressor: plan.compressor,
            digester: opts.digester,
            inline_meta: opts.blob_inline_meta,
            toc: opts.blob_toc,
            blob_index,
            write_blob: !plan.cache_only,
            cache_dir: opts.blob_cache_dir.clone(),
            v6: opts.fs_version == 6,
            aligned: opts.aligned_chunk,
            tmp_dir: opts.tmp_dir.clone(),
            blob_path: opts.blob.clone(),
            blob_offset: opts.blob_offset,
            batch_size: opts.batch_size.filter(|b| *b > 0),
            cipher: if opts.encrypt {
                Some(BlobKey::generate().map_err(|e| {
                    Error::InvalidOption(format!("cannot draw an encryption key: {e}"))
                })?)
            } else {
                None
            },
        },
        &blob_tmp_dir,
    )?;
    if let Some(b) = &opts.blob {
        writer.set_label(b);
    }
    Ok(writer)
}

/// Reads the source (a directory walk, or a tar stream), its file data going through the
/// chunk pipeline into `writer` as it is read.
fn read_input(
    opts: &CreateOptions,
    plan: &Plan,
    progress: &dyn Progress,
    layer: Option<LayerStream<'_>>,
    table: &mut ChunkTable,
    writer: &mut BlobWriter,
) -> Result<Input> {
    let popts = PipelineOptions {
        chunk_size: opts.chunk_size,
        digester: opts.digester,
        compressor: plan.compressor,
        threads: plan.threads,
        batch_size: opts.batch_size.filter(|b| *b > 0),
    };
    match opts.source_type {
        SourceType::Directory => walk_input(opts, &popts, progress, table, writer),
        SourceType::Tar | SourceType::TarTarfs | SourceType::TargzRef | SourceType::EstargzRef => {
            tar_input(opts, &popts, progress, layer, table, writer)
        }
    }
}

fn walk_input(
    opts: &CreateOptions,
    popts: &PipelineOptions,
    progress: &dyn Progress,
    table: &mut ChunkTable,
    writer: &mut BlobWriter,
) -> Result<Input> {
    // the walk feeds the pipeline as it goes, so totals are not known up front
    progress.start(0, 0);
    let source = &opts.source;
    // prefetched files go first (upstream's blob layout), so their order is known only after
    // the walk: then the walk collects and the data follows it
    let deferred = opts.prefetch.reorders_data();
    let max_entries = opts.limits.entries;
    let (per_inode, (tree, files, bytes)) =
        pipeline::run_with(popts, table, writer, &|n| progress.advance(n), |sink| {
            let (mut files, mut bytes) = (0u64, 0u64);
            let mut later = Vec::new();
            let tree =
                crate::source::dir::walk_with(source, max_entries, &mut |ino, path, size| {
                    files += 1;
                    bytes += size;
                    if deferred {
                        later.push((ino, (path.to_path_buf(), size)));
                        return Ok(());
                    }
                    sink.add_path(ino, path, size)
                })?;
            for (ino, (path, size)) in opts.prefetch.data_order(&tree, later) {
                sink.add_path(ino, &path, size)?;
            }
            Ok((tree, files, bytes))
        })?;
    Ok(Input {
        tree,
        per_inode,
        files,
        bytes,
    })
}

fn tar_input(
    opts: &CreateOptions,
    popts: &PipelineOptions,
    progress: &dyn Progress,
    layer: Option<LayerStream<'_>>,
    table: &mut ChunkTable,
    writer: &mut BlobWriter,
) -> Result<Input> {
    let (raw, size, expect) = match layer {
        Some(l) => {
            let size = l.size;
            (l.raw, size, Some((l.what, l.digest, l.size, l.diff_id)))
        }
        None => {
            let (raw, size) = tar::open_raw(&opts.source)?;
            (raw, size, None)
        }
    };
    progress.start(0, size.unwrap_or(0));
    let report = |n: u64| progress.advance(n);
    let mut stored = tar::Digesting::new(
        tar::Counting::new(raw, &report),
        expect.as_ref().is_some_and(|e| e.1.is_some()),
    );
    let want_diff = expect.as_ref().is_some_and(|e| e.3.is_some());
    let stored_ref = &mut stored;
    let source = opts.source.clone();
    let max_memory = opts.limits.decompress_memory;
    let max_entries = opts.limits.entries;
    let ran = pipeline::run_with(popts, table, writer, &|_| {}, move |sink| {
        let (input, compression) = tar::decompress(Box::new(stored_ref), &source, max_memory)?;
        log::debug!(
            "{}: tar, compression {}",
            source.display(),
            compression.name()
        );
        let mut input = tar::Digesting::new(input, want_diff);
        let mut files = PipelineFiles {
            sink,
            files: 0,
            bytes: 0,
        };
        let tree = tar::read_tar_limited(&mut input, &source, &mut files, max_entries)
            .map_err(|e| crate::error::in_file(&source, e))?;
        Ok((tree, files.files, files.bytes, input.finish()))
    });
    let (per_inode, (tree, files, bytes, diff)) = match (ran, &expect) {
        (Ok(v), _) => v,
        (Err(e), Some((what, Some(digest), size, _))) if !matches!(e, Error::Interrupted) => {
            return Err(wrong_bytes_first(e, stored, what, (digest, *size)))
        }
        (Err(e), _) => return Err(e),
    };
    if let Some((what, digest, size, diff_id)) = expect {
        // whatever follows the compressed stream counts too
        std::io::copy(&mut stored, &mut std::io::sink()).ctx("read", &opts.source)?;
        let expected = LayerDigests {
            digest,
            size,
            diff_id,
        };
        expected.check(what, stored.finish(), diff.1)?;
    }
    Ok(Input {
        tree,
        per_inode,
        files,
        bytes,
    })
}

/// A layer that could not be read, all of whose bytes arrived but are not the ones its
/// descriptor names: that is the error to report (a flipped byte shows first as a broken gzip
/// stream, say), so the rest of the bytes are read to tell. A layer cut short, or a source
/// that failed, keeps its reading error, which says where.
fn wrong_bytes_first<R: std::io::Read>(
    e: Error,
    mut stored: tar::Digesting<R>,
    what: &str,
    (digest, size): (&str, Option<u64>),
) -> Error {
    if std::io::copy(&mut stored, &mut std::io::sink()).is_err() {
        return e;
    }
    match stored.finish() {
        (count, _) if size.is_some_and(|s| s != count) => e,
        (_, Some(actual)) if !actual.eq_ignore_ascii_case(digest) => Error::Mismatch {
            what: what.to_string(),
            field: "sha256",
            expected: digest.to_string(),
            actual,
        },
        _ => e,
    }
}

/// The layer goes on top of its parent; whiteouts are applied and never stored. Without a
/// parent a directory drops them and a tar layer keeps them for `merge`, as nydus-image does.
fn stack_on_parent(opts: &CreateOptions, parent: Option<&Image>, tree: Tree) -> Tree {
    let keep_as_is =
        opts.whiteout_spec == WhiteoutSpec::None || opts.source_type != SourceType::Directory;
    match (parent, opts.whiteout_spec) {
        (None, _) if keep_as_is => tree,
        // nothing to apply: skip copying the whole tree
        (None, spec) if !overlay::has_whiteouts(&tree, spec) => tree,
        (lower, spec) => {
            let mut merged = lower.map(|p| p.tree.clone()).unwrap_or_else(empty_tree);
            overlay::apply(&mut merged, &tree, spec, &|c| c);
            merged.compact()
        }
    }
}

/// Encodes the bootstrap, into the blob (inline meta) or as its own output, and finishes the
/// blob.
fn encode(
    opts: &CreateOptions,
    plan: &Plan,
    base: &Base,
    tree: &mut Tree,
    mut writer: BlobWriter,
    data: Option<WrittenBlob>,
) -> Result<Encoded> {
    let eopts = EncodeOptions {
        chunk_size: opts.chunk_size,
        compressor: plan.compressor,
        digester: opts.digester,
        explicit_uid_gid: !opts.repeatable,
        block_size: v6::encode::BLOCK_SIZE,
        tarfs: false,
        single_device: false,
        prefetch: opts.prefetch.table(tree),
        has_xattr: false,
    };
    let records = |id: &str, w: &Option<WrittenBlob>| -> Vec<BlobEntry> {
        let mut all = base.blobs.clone();
        all.extend(w.iter().map(|w| BlobEntry {
            id: id.to_string(),
            ..w.entry.clone()
        }));
        all
    };
    if opts.blob_inline_meta {
        let placeholder = records(INLINE_PLACEHOLDER_ID, &data);
        let (chunks, blobs) = compact_blobs(tree, &base.table.chunks, &placeholder)?;
        let boot = crate::rafs::encode(opts.fs_version, tree, &chunks, &blobs, &eopts)?;
        writer.append_bootstrap(&boot)?;
        let (written, file_id, files) = writer.finish()?;
        let table_ids = blobs
            .iter()
            .map(|b| {
                if b.id == INLINE_PLACEHOLDER_ID {
                    file_id.clone()
                } else {
                    b.id.clone()
                }
            })
            .collect();
        return Ok(Encoded {
            written,
            file_id,
            files,
            bootstrap: None,
            table_ids,
        });
    }
    let (mut written, file_id, files) = writer.finish()?;
    if let (Some(w), Some(id)) = (written.as_mut(), &opts.blob_id) {
        w.entry.id = id.clone();
    }
    let new_id = written
        .as_ref()
        .map(|w| w.entry.id.clone())
        .unwrap_or_default();
    let (chunks, blobs) = compact_blobs(tree, &base.table.chunks, &records(&new_id, &written))?;
    let boot = crate::rafs::encode(opts.fs_version, tree, &chunks, &blobs, &eopts)?;
    Ok(Encoded {
        written,
        file_id,
        files,
        bootstrap: Some(boot),
        table_ids: blobs.iter().map(|b| b.id.clone()).collect(),
    })
}

/// Stages every output under a temporary name (none takes its final name yet) and describes
/// them; the counters of the returned output are filled in by the caller.
fn outputs(opts: &CreateOptions, plan: &Plan, e: Encoded) -> Result<(Outputs, CreateOutput)> {
    // a blob file exists when it holds chunks, or the inlined bootstrap
    let blob_written = !plan.cache_only && (e.written.is_some() || opts.blob_inline_meta);
    // the blob is named by the id the blob table records (`--blob-id`, else its sha256)
    let id = opts.blob_id.clone().unwrap_or_else(|| e.file_id.clone());
    let blob_path = match (&opts.blob, &opts.blob_dir) {
        (Some(p), _) if blob_written => Some(p.clone()),
        (None, Some(d)) if blob_written => Some(d.join(&id)),
        _ => None,
    };
    let mut outputs = Outputs::new();
    let mut boot_path = String::new();
    if let Some(bytes) = &e.bootstrap {
        let path = bootstrap_path(opts.bootstrap.as_deref(), opts.blob_dir.as_deref(), bytes)?;
        outputs.add(
            write_temp(&path, bytes, opts.tmp_dir.as_deref())?,
            path.clone(),
        );
        boot_path = path.display().to_string();
    }
    e.files.add_to(&mut outputs, blob_path.as_deref(), &id);
    let out = CreateOutput {
        bootstrap: boot_path,
        blobs: e.table_ids,
        blob_path,
        blob_size: e.written.as_ref().map(|w| w.file_size).unwrap_or(0),
        entries: 0,
        files: 0,
        data_bytes: 0,
        chunks: 0,
        unique_chunks: 0,
        compressor: plan.compressor,
        fs_version: opts.fs_version,
        timings: BTreeMap::new(),
    };
    Ok((outputs, out))
}

/// Feeds tar file data to the chunk pipeline, in archive order.
struct PipelineFiles<'s, 'a> {
    sink: &'s mut pipeline::ChunkSink<'a>,
    files: u64,
    bytes: u64,
}

impl tar::FileData for PipelineFiles<'_, '_> {
    fn file(
        &mut self,
        inode: InodeId,
        data: &mut dyn std::io::Read,
        size: u64,
        _location: tar::DataLocation,
        name: &Path,
    ) -> Result<Option<Vec<ChunkId>>> {
        self.sink.add_file(inode, data, size, name)?;
        self.files += 1;
        self.bytes += size;
        Ok(None)
    }
}

/// A tar read for tarfs: its tree, each file's chunks where the tar holds them, the one blob
/// table entry naming the tar (none when it holds no file data, as upstream) and its size.
pub(crate) struct TarfsRead {
    pub tree: Tree,
    pub chunks: Vec<crate::model::ChunkInfo>,
    pub blobs: Vec<BlobEntry>,
    pub tar_size: u64,
}

/// Reads the tar `raw` (which must not be compressed: its file data is referenced in place)
/// to its end; the blob id is `blob_id`, else the tar's sha256 (formats/rafs-v6.md §18).
pub(crate) fn read_tarfs(
    raw: Box<dyn std::io::Read + Send + '_>,
    source: &Path,
    chunk_size: u32,
    limits: &SourceLimits,
    blob_id: Option<String>,
) -> Result<TarfsRead> {
    let mut hashing = tar::Digesting::new(raw, true);
    let mut chunks = tar::TarfsChunks {
        chunk_size,
        chunks: Vec::new(),
    };
    let tree = {
        let (mut input, compression) =
            tar::decompress(Box::new(&mut hashing), source, limits.decompress_memory)?;
        if compression != tar::Compression::None {
            return Err(Error::Unsupported {
                path: source.to_path_buf(),
                reason: format!(
                    "tar-tarfs references file data inside the tar, so the tar must not be compressed (this one is {})",
                    compression.name()
                ),
            });
        }
        let tree = tar::read_tar_limited(&mut input, source, &mut chunks, limits.entries)
            .map_err(|e| crate::error::in_file(source, e))?;
        // the tar's end blocks and padding are the device's too
        std::io::copy(&mut input, &mut std::io::sink()).ctx("read", source)?;
        tree
    };
    let (tar_size, sha256) = hashing.finish();
    let id = blob_id.unwrap_or(sha256.unwrap_or_default());
    let blobs = if chunks.chunks.is_empty() {
        Vec::new()
    } else {
        vec![BlobEntry {
            chunk_count: chunks.chunks.len() as u32,
            compressed_size: tar_size,
            uncompressed_size: tar_size,
            features: BlobFeatures::TARFS | BlobFeatures::CAP_TAR_TOC,
            // no chunk-info array; upstream leaves the header default (lz4) here
            ci_compressor: Compressor::Lz4Block.code(),
            ..BlobEntry::new(id, Compressor::None, Digester::Sha256)
        }]
    };
    Ok(TarfsRead {
        tree,
        chunks: chunks.chunks,
        blobs,
        tar_size,
    })
}

/// `tar-tarfs`: a bootstrap with 512-byte blocks whose chunks point at the file data inside
/// the tar, which is the image's only device (formats/rafs-v6.md §18). No blob is written; the
/// blob id is the sha256 of the tar.
fn create_tarfs(opts: &CreateOptions, progress: &dyn Progress) -> Result<CreateOutput> {
    let t0 = Instant::now();
    let mut timings = BTreeMap::new();
    if opts.compressor.is_some_and(|c| c != Compressor::None) {
        log::warn!("tar-tarfs stores no data: the compressor is none");
    }
    let (raw, size) = tar::open_raw(&opts.source)?;
    progress.start(0, size.unwrap_or(0));
    let report = |n: u64| progress.advance(n);
    let read = read_tarfs(
        Box::new(tar::Counting::new(raw, &report)),
        &opts.source,
        opts.chunk_size,
        &opts.limits,
        opts.blob_id.clone(),
    )?;
    let TarfsRead {
        tree,
        chunks,
        blobs,
        tar_size,
    } = read;
    timings.insert("load_tree".into(), t0.elapsed().as_secs_f64());

    let file_count = tree
        .inodes
        .iter()
        .filter(|i| i.file_type() == FileType::Regular && !i.chunks().is_empty())
        .count() as u64;
    let data_bytes: u64 = chunks.iter().map(|c| u64::from(c.uncompressed_size)).sum();
    let t2 = Instant::now();
    let eopts = EncodeOptions {
        explicit_uid_gid: !opts.repeatable,
        prefetch: opts.prefetch.table(&tree),
        ..EncodeOptions::tarfs(opts.chunk_size)
    };
    let bytes = v6::encode(&tree, &chunks, &blobs, &eopts)?;
    timings.insert("dump_bootstrap".into(), t2.elapsed().as_secs_f64());
    let path = bootstrap_path(opts.bootstrap.as_deref(), opts.blob_dir.as_deref(), &bytes)?;
    let mut outputs = Outputs::new();
    outputs.add(
        write_temp(&path, &bytes, opts.tmp_dir.as_deref())?,
        path.clone(),
    );
    timings.insert("total_build".into(), t0.elapsed().as_secs_f64());
    let out = CreateOutput {
        bootstrap: path.display().to_string(),
        blobs: blobs.iter().map(|b| b.id.clone()).collect(),
        blob_path: None,
        blob_size: if blobs.is_empty() { 0 } else { tar_size },
        entries: tree.entries.len() as u64,
        files: file_count,
        data_bytes,
        chunks: chunks.len() as u64,
        unique_chunks: chunks.len() as u64,
        compressor: Compressor::None,
        fs_version: 6,
        timings,
    };
    publish(out, opts, outputs)
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// [`publish`], for the other `create` modes' modules.
pub(crate) fn publish_output(
    out: CreateOutput,
    opts: &CreateOptions,
    outputs: Outputs,
) -> Result<CreateOutput> {
    publish(out, opts, outputs)
}

/// Adds the `--output-json` document to `outputs` and moves every output to its final name.
fn publish(out: CreateOutput, opts: &CreateOptions, mut outputs: Outputs) -> Result<CreateOutput> {
    if let Some(path) = &opts.output_json {
        let json = output_json(&out);
        outputs.add(
            write_temp(path, json.as_bytes(), opts.tmp_dir.as_deref())?,
            path.clone(),
        );
    }
    outputs.commit()?;
    Ok(out)
}

/// The `--output-json` document, with the fields nydusify reads (README, `create`: `-J`).
pub fn output_json(out: &CreateOutput) -> String {
    let mut report = Report::new(
        out.bootstrap.clone(),
        out.blobs.clone(),
        out.fs_version,
        out.compressor,
    );
    report.timings = out.timings.clone();
    report.events = BTreeMap::from([
        ("blob_uncompressed_size", out.data_bytes),
        ("chunks", out.chunks),
        ("unique_chunks", out.unique_chunks),
    ]);
    report.pretty()
}
