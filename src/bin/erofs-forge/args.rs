//! The command line as clap parses it: nydus-image's flags, spellings and aliases. Turning
//! these into library options is `resolve.rs`'s job.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};
use erofs_forge::ops::export_compressed::ErofsCompressor;
use erofs_forge::WhiteoutSpec;
use erofs_forge::{Compressor, Digester, PrefetchPolicy};

#[derive(Parser)]
#[command(
    name = "erofs-forge",
    version,
    about = "Build nydus RAFS v6 (EROFS) images"
)]
pub struct Cli {
    /// Log level: trace, debug, info, warn, error.
    #[arg(short = 'l', long, global = true, default_value = "info")]
    pub log_level: String,
    /// Write logs to this file instead of stderr.
    #[arg(short = 'L', long, global = true)]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build a RAFS filesystem (bootstrap + data blob) from a source.
    Create(CreateArgs),
    /// Overlay layer bootstraps (lowest first) into one image bootstrap.
    Merge(MergeArgs),
    /// Export an image as one raw disk image the kernel mounts alone (--block), or as a tar.
    Export(ExportArgs),
    /// Validate a bootstrap and, with its blobs, every chunk's data.
    Check(CheckArgs),
    /// Write an image's tree, with its data, as a tar or into a directory.
    Unpack(UnpackArgs),
    /// Answer one query about a bootstrap, as JSON.
    Inspect(InspectArgs),
    /// Dedup statistics of one or several bootstraps, as JSON.
    Stat(StatArgs),
    /// Benchmark helper: time read + digest + compress of a directory's file data alone.
    #[command(hide = true)]
    BenchBound {
        /// Source directory.
        source: PathBuf,
        /// Chunk compression.
        #[arg(long, default_value = "zstd", value_parser = compressor_parser())]
        compressor: Compressor,
        /// Worker threads.
        #[arg(long, default_value = "1")]
        threads: usize,
        /// Chunk size.
        #[arg(long, default_value = "0x100000", value_parser = parse_size)]
        chunk_size: u32,
    },
    /// Benchmark helper: time reading one chunk (first, last or an index) from a fresh reader.
    #[command(hide = true)]
    BenchChunkRead {
        #[command(flatten)]
        bootstrap: BootstrapArg,
        #[command(flatten)]
        blobs: BlobArgs,
        /// first, last (by place in the blob) or a chunk index.
        #[arg(long, default_value = "last")]
        chunk: String,
    },
    /// Write the bootstrap that --blob-inline-meta stored at the end of a blob.
    ExtractBootstrap {
        /// The blob holding an inlined bootstrap.
        blob: PathBuf,
        /// Where to write the bootstrap.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Copy the data of the files a workload reads first into a new blob, in their order, and
    /// list them in the bootstrap's prefetch table.
    Optimize(OptimizeArgs),
    /// Rewrite the sparsely used blobs of an image (dropping unused data, merging small
    /// blobs) and write a new bootstrap.
    Compact(CompactArgs),
    /// Convert an image in a registry into a nydus (or native EROFS) image pushed to a
    /// registry, as `nydusify convert` does.
    Convert(crate::convert::ConvertArgs),
    /// Chunk dictionaries: `generate` one from several images.
    Chunkdict {
        #[command(subcommand)]
        command: ChunkdictCommand,
    },
    /// Compare an image with its source, entry by entry (exit 0 equal, 1 different, 2 could
    /// not compare).
    Verify(crate::analyse::VerifyArgs),
    /// Where an image's bytes go: per directory, file and type, what-if other chunk sizes
    /// and compressors, and what another version of it reuses.
    Report(crate::analyse::ReportArgs),
}

#[derive(Subcommand)]
pub enum ChunkdictCommand {
    /// Record the images' chunks in a database and write a dictionary of the shared ones.
    Generate(ChunkdictArgs),
}

#[derive(clap::Args)]
pub struct ChunkdictArgs {
    /// The database: sqlite:// and an absolute path.
    #[arg(long, default_value = "sqlite:///home/runner/output/database.db")]
    pub database: String,
    /// The dictionary bootstrap to write.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// Accepted for compatibility (the dictionary has no blob of its own).
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// Accepted for compatibility (a dictionary has no prefetch table).
    #[arg(long, default_value = "none", value_parser = prefetch_parser())]
    pub prefetch_policy: PrefetchPolicy,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
    /// nydus-image configuration file (accepted; not needed).
    #[arg(short = 'C', long)]
    pub config: Option<PathBuf>,
    /// Print the chunk counts.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// The images' bootstraps, each in a directory named after its image reference
    /// (`...:name:tag`, as nydusify saves them).
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Layer bootstraps, lowest first.
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Output bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: Option<PathBuf>,
    /// Output directory (the bootstrap is named by its sha256) when -B is not given.
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// A bootstrap below all sources.
    #[arg(long)]
    pub parent_bootstrap: Option<PathBuf>,
    /// Chunk dictionary whose blobs the layers may reference.
    #[arg(long)]
    pub chunk_dict: Option<String>,
    /// Per source, comma-separated: the id of the source's own blob.
    #[arg(long)]
    pub original_blob_ids: Option<String>,
    /// Per source, comma-separated: a digest replacing the source's own blob id.
    #[arg(long)]
    pub blob_digests: Option<String>,
    /// Per source, comma-separated: the compressed size of the source's own blob.
    #[arg(long)]
    pub blob_sizes: Option<String>,
    /// Per source, comma-separated: the digest of the source's blob ToC, recorded in the blob
    /// table (nydus-snapshotter passes sha256 of the ToC entries).
    #[arg(long)]
    pub blob_toc_digests: Option<String>,
    /// Per source, comma-separated: the size of the source's blob ToC, recorded in the blob
    /// table.
    #[arg(long)]
    pub blob_toc_sizes: Option<String>,
    /// How whiteouts are spelled in the layers: oci, overlayfs or none.
    #[arg(long, default_value = "oci", value_parser = whiteout_parser())]
    pub whiteout_spec: WhiteoutSpec,
    /// Prefetch policy: fs (prefetch table and data order), blob (data order only) or none.
    /// With fs or blob, prefetch patterns (absolute paths, one a line) are read from stdin
    /// until EOF, unless stdin is a terminal.
    #[arg(long, default_value = "none", value_parser = prefetch_parser())]
    pub prefetch_policy: PrefetchPolicy,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Write a raw block image: the bootstrap followed by every blob's uncompressed data.
    #[arg(long, required_unless_present = "tar")]
    pub block: bool,
    /// Write a tar of the image's tree instead (as `unpack --output`).
    #[arg(long, conflicts_with = "block")]
    pub tar: Option<PathBuf>,
    /// The bootstrap (or a blob with an inlined bootstrap).
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// Output file (default: <bootstrap>.disk).
    #[arg(short = 'O', long)]
    pub output: Option<PathBuf>,
    /// Append a dm-verity hash tree and print its root hash.
    #[arg(long)]
    pub verity: bool,
    /// Address the data inside the image and declare no extra device, so that every EROFS
    /// reader (fsck.erofs, older kernels) opens it; the default keeps nydus-image's layout.
    #[arg(long)]
    pub single_device: bool,
    /// Write a standalone EROFS image whose files use EROFS's own compression (lz4, lz4hc,
    /// zstd, lzma), instead of the nydus layout with uncompressed blobs.
    #[arg(long, requires = "block", value_parser = erofs_compressor_parser())]
    pub compressor: Option<ErofsCompressor>,
    /// Accepted for compatibility (the export is single-threaded I/O).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArg,
    // with blobs given, every chunk's data is read and verified
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// Print every inode and chunk.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct UnpackArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArg,
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// Write a tar archive here.
    #[arg(short = 'o', long, required_unless_present = "output_dir")]
    pub output: Option<PathBuf>,
    /// Extract into this directory (created; must be empty if it exists).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArg,
    /// The request: stats, blobs, prefetch, icheck INODE, chunk OFFSET, ls PATH, stat PATH.
    #[arg(short = 'R', long)]
    pub request: String,
    /// Blob directory: `chunk OFFSET` then also shows a targz-ref chunk's zran fields (its
    /// inflate context), read from the blob meta there.
    #[arg(short = 'D', long = "blob-dir")]
    pub blob_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// A bootstrap (repeatable).
    #[arg(short = 'B', long = "bootstrap")]
    pub bootstraps: Vec<PathBuf>,
    /// A directory: every regular file in it without an extension is a bootstrap.
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// A target image evaluated after the others.
    #[arg(short = 'T', long)]
    pub target: Option<PathBuf>,
    /// Write the JSON here instead of stdout.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
}

/// `create --features` values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FeatureArg {
    /// A table of contents at the end of an inline-meta blob.
    #[value(name = "blob-toc")]
    BlobToc,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SourceTypeArg {
    #[value(name = "dir-rafs", alias = "directory")]
    DirRafs,
    /// A tar layer (plain, gzip, zstd or xz: told by its magic bytes).
    #[value(name = "tar-rafs")]
    TarRafs,
    /// Same as tar-rafs (compression is detected either way).
    #[value(name = "targz-rafs")]
    TargzRafs,
    /// An uncompressed tar referenced in place: 512-byte blocks, the tar is the device.
    #[value(name = "tar-tarfs")]
    TarTarfs,
    /// A whole OCI image (layout directory, OCI archive or docker save tar; PATH:REF picks
    /// one of several), written as a nydus OCI image layout into --blob-dir.
    #[value(name = "oci")]
    Oci,
    /// A gzip layer referenced in place: a bootstrap plus a zran meta blob (inflate contexts),
    /// the .tar.gz stays the data (nydus-snapshotter's OCIRef mode).
    #[value(name = "targz-ref")]
    TargzRef,
    /// An eStargz layer referenced in place, as targz-ref (its TOC and landmarks dropped).
    #[value(name = "estargz-ref")]
    EstargzRef,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Source: a directory (dir-rafs), or a tar file, fifo or - for standard input (tar types).
    pub source: PathBuf,
    /// Source type.
    #[arg(
        short = 't',
        long = "type",
        alias = "source-type",
        value_enum,
        default_value = "dir-rafs"
    )]
    pub source_type: SourceTypeArg,
    /// RAFS version: 5 or 6.
    #[arg(short = 'v', long, default_value = "6")]
    pub fs_version: u32,
    /// Output bootstrap file.
    #[arg(short = 'B', long)]
    pub bootstrap: Option<PathBuf>,
    /// Output blob file.
    #[arg(short = 'b', long)]
    pub blob: Option<PathBuf>,
    /// Output directory: the blob is named by its id, the bootstrap (without -B) by its sha256.
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// Append the bootstrap to the blob instead of writing a separate file.
    #[arg(long, alias = "inline-bootstrap", conflicts_with = "blob_id")]
    pub blob_inline_meta: bool,
    /// Image features, comma-separated or repeated. blob-toc (with --blob-inline-meta): end
    /// the blob with chunk digests, a zstd bootstrap and a table of contents, as nydus-image.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub features: Vec<FeatureArg>,
    /// Id the bootstrap records for the new blob (the object it is stored as), instead of its
    /// sha256; also its file name under --blob-dir. tar-tarfs: replaces the tar's sha256.
    #[arg(long)]
    pub blob_id: Option<String>,
    /// Data blob size for estargztoc-ref conversion (hex, with or without 0x, as
    /// nydus-image reads it); no other type uses it.
    #[arg(long, value_parser = parse_hex_u64)]
    pub blob_data_size: Option<u64>,
    /// File offset the blob's data will be stored at inside a larger file (a tar): chunk
    /// offsets count from there.
    #[arg(long, default_value = "0", hide = true)]
    pub blob_offset: u64,
    /// Also write the uncompressed, 4 KiB-aligned blob cache (<id>.blob.data, <id>.blob.meta)
    /// here. Alone it replaces the blob (compressor none), as nydus-image does; with -D/--blob
    /// both are written.
    #[arg(long)]
    pub blob_cache_dir: Option<PathBuf>,
    /// Chunk compression.
    #[arg(long, value_parser = compressor_parser())]
    pub compressor: Option<Compressor>,
    /// Chunk digest.
    #[arg(long, default_value = "blake3", value_parser = digester_parser())]
    pub digester: Digester,
    /// Chunk size: a power of two from 0x1000 to 0x1000000 (decimal or 0x hex).
    #[arg(long, default_value = "0x100000", value_parser = parse_size)]
    pub chunk_size: u32,
    /// Pack small files (one chunk under half this size) into batches of this size, each
    /// compressed as one frame: a power of two from 0x1000 up to the chunk size, or 0 for none
    /// (v6, dir-rafs, tar-rafs, targz-rafs).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub batch_size: u32,
    /// Encrypt the data blob (chunks and blob meta) with a fresh random AES-128-XTS key, which
    /// the bootstrap records (v6).
    #[arg(short = 'E', long)]
    pub encrypt: bool,
    /// Align uncompressed chunk offsets to 4 KiB (always the case for v6).
    #[arg(long)]
    pub aligned_chunk: bool,
    /// Do not record uid/gid (as nydus-image --repeatable; output is reproducible either way).
    #[arg(long)]
    pub repeatable: bool,
    /// Write the build result as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
    /// Worker threads that read, digest and compress (default: all cores). With 1, the whole
    /// build runs on one thread; output is identical at any count.
    #[arg(long, default_value = "0")]
    pub threads: usize,
    /// How whiteouts are spelled in the source: oci, overlayfs or none.
    #[arg(long, default_value = "oci", value_parser = whiteout_parser())]
    pub whiteout_spec: WhiteoutSpec,
    /// Build on top of this lower layer's bootstrap.
    #[arg(long)]
    pub parent_bootstrap: Option<PathBuf>,
    /// Chunk dictionary: `bootstrap=PATH` or `PATH`.
    #[arg(long)]
    pub chunk_dict: Option<String>,
    /// Prefetch policy: fs (prefetch table and data order), blob (data order only) or none.
    /// With fs or blob, prefetch patterns (absolute paths, one a line) are read from stdin
    /// until EOF, unless stdin is a terminal.
    #[arg(long, default_value = "none", value_parser = prefetch_parser())]
    pub prefetch_policy: PrefetchPolicy,
    /// -t oci: the image to take from an index, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    /// -t oci: the converted layers' format: nydus (data blobs and a bootstrap layer) or erofs
    /// (one native EROFS image per layer, containerd's application/vnd.erofs.layer.v1).
    #[arg(long, default_value = "nydus", value_parser = ["nydus", "erofs"])]
    pub layer_format: String,
    /// --layer-format erofs: compress the layers' file data (lz4, lz4hc, zstd or lzma,
    /// optionally `,LEVEL`), as mkfs.erofs -z; default: stored plain.
    #[arg(long, requires = "layer_format")]
    pub erofs_compressor: Option<String>,
    /// Directory for the outputs under construction (default: beside each output). Finished
    /// outputs are moved (or, across filesystems, copied) into place only when the build
    /// succeeds.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Most memory an xz or zstd source may need to decompress (its dictionary or window):
    /// bytes, or with K, M, G (binary). A stream declaring more is refused before it is
    /// allocated.
    #[arg(long, default_value = "256M", value_parser = parse_mem_size)]
    pub max_decompress_memory: u64,
    /// Most entries the source (a directory, a tar or each OCI layer) may have: each costs
    /// metadata memory for the whole build.
    #[arg(long, default_value = "10000000")]
    pub max_entries: u64,
}

/// Where an image's blobs are read from: nydus-image's backend flags. Only `localfs` (a
/// directory) is read here.
#[derive(clap::Args)]
pub struct BackendArgs {
    /// Backend type; only localfs is supported.
    #[arg(long)]
    pub backend_type: Option<String>,
    /// Backend configuration as JSON (localfs: `{"dir": ...}`).
    #[arg(long, conflicts_with = "backend_config_file")]
    pub backend_config: Option<String>,
    /// Backend configuration file (JSON).
    #[arg(long)]
    pub backend_config_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct OptimizeArgs {
    /// The image's bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// The files read first: one absolute path a line (or nydus-image's JSON list).
    #[arg(short = 'p', long)]
    pub prefetch_files: PathBuf,
    /// nydus-image configuration file (accepted; blobs come from --blob-dir or the backend).
    #[arg(short = 'C', long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// The new bootstrap (default: `optimized_bootstrap` in the working directory).
    #[arg(short = 'O', long)]
    pub output_bootstrap: Option<PathBuf>,
    /// Directory for the new blob.
    #[arg(long)]
    pub output_blob_dir: PathBuf,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct CompactArgs {
    /// The image's bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Rebuild blobs whose used data is below this percentage of their size (0-99; 0: never).
    #[arg(long, default_value = "0", value_parser = clap::value_parser!(u8).range(0..100))]
    pub min_used_ratio: u8,
    /// Merge blobs smaller than this many bytes.
    #[arg(long, default_value = "10485760")]
    pub compact_blob_size: u64,
    /// A merged blob holds at most this many bytes.
    #[arg(long, default_value = "104857600")]
    pub max_compact_size: u64,
    /// Compact only if the image has at least this many blobs (0: always).
    #[arg(long, default_value = "0")]
    pub layers_to_compact: usize,
    /// Directory of the image's blobs; the new blobs are written there too.
    #[arg(short = 'D', long)]
    pub blob_dir: PathBuf,
    /// Chunk dictionary (`bootstrap=PATH` or PATH): chunks it holds are referenced, not copied.
    #[arg(long)]
    pub chunk_dict: Option<String>,
    /// The new bootstrap (default: the bootstrap's extension replaced by `bootstrap.compact`).
    #[arg(short = 'O', long)]
    pub output_bootstrap: Option<PathBuf>,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
}

/// The bootstrap of a reading command: positional, or `-B/--bootstrap` (the older form).
#[derive(clap::Args)]
pub struct BootstrapArg {
    /// Bootstrap (or a blob with an inlined bootstrap).
    #[arg(required_unless_present = "bootstrap_opt")]
    pub bootstrap: Option<PathBuf>,
    /// Bootstrap (deprecated form).
    #[arg(short = 'B', long = "bootstrap", conflicts_with = "bootstrap")]
    pub bootstrap_opt: Option<PathBuf>,
}

/// Where a reading command finds the image's blobs.
#[derive(clap::Args)]
pub struct BlobArgs {
    /// Directory holding the blobs (named by id, or <id>.blob.data). `--localfs-dir` is
    /// nydus-image's name for it in `export` (the snapshotter's tarfs export passes it).
    #[arg(short = 'D', long, alias = "localfs-dir")]
    pub blob_dir: Option<PathBuf>,
    /// The blob file (single-blob images; the tar for tarfs images).
    #[arg(short = 'b', long)]
    pub blob: Option<PathBuf>,
}

/// A parser listing `names` in `--help` and handing over the library type their `FromStr` gives.
fn named<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = erofs_forge::Error> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

fn compressor_parser() -> impl TypedValueParser<Value = Compressor> {
    named(&["none", "lz4_block", "zstd"])
}

fn digester_parser() -> impl TypedValueParser<Value = Digester> {
    named(&["blake3", "sha256"])
}

fn prefetch_parser() -> impl TypedValueParser<Value = PrefetchPolicy> {
    named(&["fs", "blob", "none"])
}

fn whiteout_parser() -> impl TypedValueParser<Value = WhiteoutSpec> {
    named(&["oci", "overlayfs", "none"])
}

fn erofs_compressor_parser() -> impl TypedValueParser<Value = ErofsCompressor> {
    named(&["lz4", "lz4hc", "zstd", "lzma"])
}

/// A hex number with or without `0x` (nydus-image's `--blob-data-size`).
pub fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let h = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(h, 16).map_err(|e| format!("invalid size {s:?}: {e}"))
}

/// Sizes in decimal or `0x` hex.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let v = parse_number(s).map_err(|e| format!("invalid size {s:?}: {e}"))?;
    u32::try_from(v).map_err(|e| format!("invalid size {s:?}: {e}"))
}

/// A number in decimal or `0x` hex.
pub fn parse_number(s: &str) -> Result<u64, std::num::ParseIntError> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
}

/// A memory size: decimal bytes, or with a binary `K`, `M`, `G` or `T` suffix (`KiB`... too).
pub fn parse_mem_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("invalid size {s:?}: a number with an optional K, M, G or T"))
}
