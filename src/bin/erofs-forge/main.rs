//! The erofs-forge command line: parses arguments (nydus-image compatible) and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use erofs_forge::codec::{Compressor, Digester};
use erofs_forge::ops::create::{self, CreateOptions, Progress, SourceType};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "erofs-forge",
    version,
    about = "Build nydus RAFS v6 (EROFS) images"
)]
struct Cli {
    /// Log level: trace, debug, info, warn, error.
    #[arg(short = 'l', long, global = true, default_value = "info")]
    log_level: String,
    /// Write logs to this file instead of stderr.
    #[arg(short = 'L', long, global = true)]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long, value_enum, default_value = "zstd")]
        compressor: CompressorArg,
        /// Worker threads.
        #[arg(long, default_value = "1")]
        threads: usize,
        /// Chunk size.
        #[arg(long, default_value = "0x100000", value_parser = parse_size)]
        chunk_size: u32,
    },
    /// Write the bootstrap that --blob-inline-meta stored at the end of a blob.
    ExtractBootstrap {
        /// The blob holding an inlined bootstrap.
        blob: PathBuf,
        /// Where to write the bootstrap.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct MergeArgs {
    /// Layer bootstraps, lowest first.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Output bootstrap.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Output directory (the bootstrap is named by its sha256) when -B is not given.
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// A bootstrap below all sources.
    #[arg(long)]
    parent_bootstrap: Option<PathBuf>,
    /// Chunk dictionary whose blobs the layers may reference.
    #[arg(long)]
    chunk_dict: Option<String>,
    /// Per source, comma-separated: the id of the source's own blob.
    #[arg(long)]
    original_blob_ids: Option<String>,
    /// Per source, comma-separated: a digest replacing the source's own blob id.
    #[arg(long)]
    blob_digests: Option<String>,
    /// Per source, comma-separated: the compressed size of the source's own blob.
    #[arg(long)]
    blob_sizes: Option<String>,
    /// Per source, comma-separated: ToC digests (accepted; this tool writes no ToC).
    #[arg(long)]
    blob_toc_digests: Option<String>,
    /// Per source, comma-separated: ToC sizes (accepted; this tool writes no ToC).
    #[arg(long)]
    blob_toc_sizes: Option<String>,
    /// How whiteouts are spelled in the layers: oci, overlayfs or none.
    #[arg(long, default_value = "oci")]
    whiteout_spec: String,
    /// Prefetch policy (only `none` so far).
    #[arg(long, default_value = "none")]
    prefetch_policy: String,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Write a raw block image: the bootstrap followed by every blob's uncompressed data.
    #[arg(long, required_unless_present = "tar")]
    block: bool,
    /// Write a tar of the image's tree instead (as `unpack --output`).
    #[arg(long, conflicts_with = "block")]
    tar: Option<PathBuf>,
    /// The bootstrap (or a blob with an inlined bootstrap).
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    /// Directory holding the blobs (named by id, or <id>.blob.data).
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// The blob file (single-blob images; the tar for tarfs images).
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Output file (default: <bootstrap>.disk).
    #[arg(short = 'O', long)]
    output: Option<PathBuf>,
    /// Append a dm-verity hash tree and print its root hash.
    #[arg(long)]
    verity: bool,
    /// Address the data inside the image and declare no extra device, so that every EROFS
    /// reader (fsck.erofs, older kernels) opens it; the default keeps nydus-image's layout.
    #[arg(long)]
    single_device: bool,
    /// Write a standalone EROFS image whose files use EROFS's own compression (lz4, lz4hc,
    /// zstd, lzma), instead of the nydus layout with uncompressed blobs.
    #[arg(long, requires = "block")]
    compressor: Option<String>,
    /// Accepted for compatibility (the export is single-threaded I/O).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Bootstrap to check (or a blob with an inlined bootstrap).
    #[arg(required_unless_present = "bootstrap_opt")]
    bootstrap: Option<PathBuf>,
    /// Bootstrap to check (deprecated form).
    #[arg(short = 'B', long = "bootstrap", conflicts_with = "bootstrap")]
    bootstrap_opt: Option<PathBuf>,
    /// Directory holding the blobs (named by id, or <id>.blob.data): verify every chunk.
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// One blob file holding the data: verify every chunk.
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Print every inode and chunk.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Write the result as JSON.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct UnpackArgs {
    /// Bootstrap (or a blob with an inlined bootstrap).
    #[arg(required_unless_present = "bootstrap_opt")]
    bootstrap: Option<PathBuf>,
    /// Bootstrap (deprecated form).
    #[arg(short = 'B', long = "bootstrap", conflicts_with = "bootstrap")]
    bootstrap_opt: Option<PathBuf>,
    /// Directory holding the blobs (named by id, or <id>.blob.data).
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// The blob file (single-blob images).
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Write a tar archive here.
    #[arg(short = 'o', long, required_unless_present = "output_dir")]
    output: Option<PathBuf>,
    /// Extract into this directory (created; must be empty if it exists).
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// Bootstrap (or a blob with an inlined bootstrap).
    #[arg(required_unless_present = "bootstrap_opt")]
    bootstrap: Option<PathBuf>,
    /// Bootstrap (deprecated form).
    #[arg(short = 'B', long = "bootstrap", conflicts_with = "bootstrap")]
    bootstrap_opt: Option<PathBuf>,
    /// The request: stats, blobs, prefetch, icheck INODE, chunk OFFSET, ls PATH, stat PATH.
    #[arg(short = 'R', long)]
    request: String,
}

#[derive(clap::Args)]
struct StatArgs {
    /// A bootstrap (repeatable).
    #[arg(short = 'B', long = "bootstrap")]
    bootstraps: Vec<PathBuf>,
    /// A directory: every regular file in it without an extension is a bootstrap.
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// A target image evaluated after the others.
    #[arg(short = 'T', long)]
    target: Option<PathBuf>,
    /// Write the JSON here instead of stdout.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceTypeArg {
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
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressorArg {
    None,
    #[value(name = "lz4_block")]
    Lz4Block,
    Zstd,
}

#[derive(Clone, Copy, ValueEnum)]
enum DigesterArg {
    Blake3,
    Sha256,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Source: a directory (dir-rafs), or a tar file, fifo or - for standard input (tar types).
    source: PathBuf,
    /// Source type.
    #[arg(
        short = 't',
        long = "type",
        alias = "source-type",
        value_enum,
        default_value = "dir-rafs"
    )]
    source_type: SourceTypeArg,
    /// RAFS version: 5 or 6.
    #[arg(short = 'v', long, default_value = "6")]
    fs_version: u32,
    /// Output bootstrap file.
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Output blob file.
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Output directory: the blob is named by its id, the bootstrap (without -B) by its sha256.
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// Append the bootstrap to the blob instead of writing a separate file.
    #[arg(long, alias = "inline-bootstrap")]
    blob_inline_meta: bool,
    /// Also write the uncompressed, 4 KiB-aligned blob cache (<id>.blob.data, <id>.blob.meta)
    /// here. Alone it replaces the blob (compressor none), as nydus-image does; with -D/--blob
    /// both are written.
    #[arg(long)]
    blob_cache_dir: Option<PathBuf>,
    /// Chunk compression.
    #[arg(long, value_enum)]
    compressor: Option<CompressorArg>,
    /// Chunk digest.
    #[arg(long, value_enum, default_value = "blake3")]
    digester: DigesterArg,
    /// Chunk size: a power of two from 0x1000 to 0x1000000 (decimal or 0x hex).
    #[arg(long, default_value = "0x100000", value_parser = parse_size)]
    chunk_size: u32,
    /// Align uncompressed chunk offsets to 4 KiB (always the case for v6).
    #[arg(long)]
    aligned_chunk: bool,
    /// Do not record uid/gid (as nydus-image --repeatable; output is reproducible either way).
    #[arg(long)]
    repeatable: bool,
    /// Write the build result as JSON.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
    /// Worker threads that read, digest and compress (default: all cores). With 1, the whole
    /// build runs on one thread; output is identical at any count.
    #[arg(long, default_value = "0")]
    threads: usize,
    /// How whiteouts are spelled in the source: oci, overlayfs or none.
    #[arg(long, default_value = "oci")]
    whiteout_spec: String,
    /// Build on top of this lower layer's bootstrap.
    #[arg(long)]
    parent_bootstrap: Option<PathBuf>,
    /// Chunk dictionary: `bootstrap=PATH` or `PATH`.
    #[arg(long)]
    chunk_dict: Option<String>,
    /// Prefetch policy (only `none` so far).
    #[arg(long, default_value = "none")]
    prefetch_policy: String,
    /// -t oci: the image to take from an index, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// Directory for the outputs under construction (default: beside each output). Finished
    /// outputs are moved (or, across filesystems, copied) into place only when the build
    /// succeeds.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
}

fn parse_whiteout_spec(s: &str) -> Result<erofs_forge::model::overlay::WhiteoutSpec> {
    use erofs_forge::model::overlay::WhiteoutSpec;
    Ok(match s {
        "oci" => WhiteoutSpec::Oci,
        "overlayfs" => WhiteoutSpec::Overlayfs,
        "none" => WhiteoutSpec::None,
        _ => bail!("invalid --whiteout-spec {s:?}: oci, overlayfs or none"),
    })
}

fn split_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

fn parse_size(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.map_err(|e| format!("invalid size {s:?}: {e}"))
}

struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_length(bytes);
            if files == 0 {
                // a tar: bytes of the input read so far (of its size, when it is a file)
                b.set_message("reading");
                if bytes == 0 {
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                }
            } else {
                b.set_message(format!("{files} files"));
            }
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
}

fn init_logging(cli: &Cli) -> Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&cli.log_level);
    if let Some(path) = &cli.log_file {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    builder.try_init().ok();
    Ok(())
}

fn run_create(a: CreateArgs) -> Result<()> {
    if a.prefetch_policy != "none" {
        bail!(
            "--prefetch-policy {} is not supported yet",
            a.prefetch_policy
        );
    }
    let whiteout_spec = parse_whiteout_spec(&a.whiteout_spec)?;
    let chunk_dict = a
        .chunk_dict
        .map(|d| PathBuf::from(d.strip_prefix("bootstrap=").unwrap_or(&d)));
    let opts = CreateOptions {
        source: a.source,
        source_type: match a.source_type {
            SourceTypeArg::DirRafs => SourceType::Directory,
            SourceTypeArg::TarRafs | SourceTypeArg::TargzRafs => SourceType::Tar,
            SourceTypeArg::TarTarfs => SourceType::TarTarfs,
            SourceTypeArg::Oci => SourceType::Tar,
        },
        fs_version: a.fs_version,
        bootstrap: a.bootstrap,
        blob: a.blob,
        blob_dir: a.blob_dir,
        blob_inline_meta: a.blob_inline_meta,
        blob_cache_dir: a.blob_cache_dir,
        compressor: a.compressor.map(|c| match c {
            CompressorArg::None => Compressor::None,
            CompressorArg::Lz4Block => Compressor::Lz4Block,
            CompressorArg::Zstd => Compressor::Zstd,
        }),
        digester: match a.digester {
            DigesterArg::Blake3 => Digester::Blake3,
            DigesterArg::Sha256 => Digester::Sha256,
        },
        chunk_size: a.chunk_size,
        repeatable: a.repeatable,
        aligned_chunk: a.aligned_chunk,
        parent_bootstrap: a.parent_bootstrap,
        chunk_dict,
        whiteout_spec,
        output_json: a.output_json,
        threads: a.threads,
        tmp_dir: a.tmp_dir,
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let bar = Bar(bar);
    if matches!(a.source_type, SourceTypeArg::Oci) {
        let out = erofs_forge::ops::oci::create_oci(&opts, a.platform.as_deref(), &bar)?;
        if let Some(b) = &bar.0 {
            b.finish_and_clear();
        }
        println!("image layout: {}", out.dir.display());
        println!(
            "source image: {} ({} layers, from {})",
            out.platform, out.layers, out.found_in
        );
        println!("manifest: {}", out.manifest);
        println!("config: {}", out.config);
        for b in &out.blobs {
            println!("data blob path: {}", b.display());
        }
        println!("bootstrap layer path: {}", out.bootstrap_layer.display());
        match &out.bootstrap {
            Some(p) => println!("meta blob path: {}", p.display()),
            None => println!(
                "meta blob path: (only inside the bootstrap layer; -B writes it as a file)"
            ),
        }
        if let Some(c) = &opts.blob_cache_dir {
            println!("blob cache: {}", c.display());
        }
        return Ok(());
    }
    if a.platform.is_some() {
        bail!("--platform applies to -t oci only");
    }
    let out = create::create(&opts, &bar)?;
    if let Some(b) = &bar.0 {
        b.finish_and_clear();
    }
    let total = out.timings.get("total_build").copied().unwrap_or(0.0);
    println!("meta blob path: {}", out.bootstrap);
    if let Some(p) = &out.blob_path {
        println!("data blob path: {}", p.display());
    }
    println!("data blob size: {:#x}", out.blob_size);
    println!("data blobs: {:?}", out.blobs);
    println!(
        "built {} entries, {} files, {} bytes of data in {} chunks ({} unique, {}) in {:.2}s ({:.1} MB/s)",
        out.entries,
        out.files,
        out.data_bytes,
        out.chunks,
        out.unique_chunks,
        out.compressor.name(),
        total,
        out.data_bytes as f64 / 1e6 / total.max(1e-9)
    );
    Ok(())
}

fn run_merge(a: MergeArgs) -> Result<()> {
    use erofs_forge::ops::merge;
    if a.prefetch_policy != "none" {
        bail!(
            "--prefetch-policy {} is not supported yet",
            a.prefetch_policy
        );
    }
    let sizes = split_list(&a.blob_sizes)
        .iter()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("invalid --blob-sizes value {s:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = merge::merge(&merge::MergeOptions {
        sources: a.sources,
        bootstrap: a.bootstrap,
        blob_dir: a.blob_dir,
        parent_bootstrap: a.parent_bootstrap,
        chunk_dict: a
            .chunk_dict
            .map(|d| PathBuf::from(d.strip_prefix("bootstrap=").unwrap_or(&d))),
        original_blob_ids: split_list(&a.original_blob_ids),
        blob_digests: split_list(&a.blob_digests),
        blob_sizes: sizes,
        whiteout_spec: parse_whiteout_spec(&a.whiteout_spec)?,
        output_json: a.output_json,
    })?;
    println!("meta blob path: {}", out.bootstrap.display());
    println!("data blobs: {:?}", out.blobs);
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    use erofs_forge::ops::{export, unpack};
    let blobs = erofs_forge::blob::reader::BlobSource {
        dir: a.blob_dir,
        file: a.blob,
    };
    if let Some(tar) = a.tar {
        let n = unpack::unpack(&unpack::UnpackOptions {
            bootstrap: a.bootstrap,
            blobs,
            output_tar: Some(tar),
            output_dir: None,
        })?;
        println!("exported {n} entries");
        return Ok(());
    }
    if let Some(algo) = &a.compressor {
        use erofs_forge::ops::export_compressed as ec;
        let output = a.output.clone().unwrap_or_else(|| {
            let mut p = a.bootstrap.clone().into_os_string();
            p.push(".erofs");
            PathBuf::from(p)
        });
        let size = ec::export(&ec::CompressedExportOptions {
            bootstrap: a.bootstrap,
            blobs,
            output: output.clone(),
            compressor: ec::ErofsCompressor::parse(algo)?,
        })?;
        println!("EROFS image ({algo}): {} ({size} bytes)", output.display());
        return Ok(());
    }
    let out = export::export_block(&export::ExportOptions {
        bootstrap: a.bootstrap,
        blobs,
        output: a.output,
        verity: a.verity,
        single_device: a.single_device,
    })?;
    println!("block image: {}", out.path.display());
    if let Some(root) = &out.root_hash {
        let p = out.path.display();
        println!("dm-verity root hash: {root}");
        println!(
            "dm-verity options: --no-superblock --format=1 --hash=sha256 --salt=- --data-block-size={b} --hash-block-size={b} --data-blocks={} --hash-offset={}",
            out.data_blocks,
            out.data_size,
            b = export::VERITY_BLOCK
        );
        println!(
            "veritysetup verify {p} {p} {root} --no-superblock --format=1 --hash=sha256 --salt=- --data-block-size={b} --hash-block-size={b} --data-blocks={} --hash-offset={}",
            out.data_blocks,
            out.data_size,
            b = export::VERITY_BLOCK
        );
    }
    Ok(())
}

fn run_check(a: CheckArgs) -> Result<()> {
    use erofs_forge::ops::check;
    let Some(bootstrap) = a.bootstrap.or(a.bootstrap_opt) else {
        bail!("no bootstrap given")
    };
    let opts = check::CheckOptions {
        bootstrap: bootstrap.clone(),
        blobs: erofs_forge::blob::reader::BlobSource {
            dir: a.blob_dir,
            file: a.blob,
        },
        verbose: a.verbose,
    };
    let report = check::check(&opts)?;
    for line in &report.listing {
        println!("{line}");
    }
    let img = &report.image;
    println!("RAFS filesystem metadata is valid, referenced data blobs: ");
    for (i, b) in img.blobs.iter().enumerate() {
        println!(
            "\t {i}: {}, compressed size {:#x}, uncompressed size {:#x}, chunk size: {:#x}, chunk count: {}, features: {}",
            b.id,
            b.compressed_size,
            b.uncompressed_size,
            img.chunk_size,
            b.chunk_count,
            erofs_forge::format::blob::feature_names(b.features).join(" ")
        );
    }
    if report.chunks_verified > 0 {
        println!(
            "verified {} chunks against their digests",
            report.chunks_verified
        );
    }
    if report.chunks_unverified > 0 {
        println!(
            "read {} chunks whose digests the image does not record (sizes checked)",
            report.chunks_unverified
        );
    }
    if let Some(path) = a.output_json {
        let report = erofs_forge::ops::report::Report::new(
            bootstrap.display().to_string(),
            img.blobs.iter().map(|b| b.id.clone()).collect(),
            img.version,
            img.compressor,
        );
        erofs_forge::io::staged::write_atomic(&path, report.compact().as_bytes())?;
    }
    Ok(())
}

fn run_unpack(a: UnpackArgs) -> Result<()> {
    use erofs_forge::ops::unpack;
    let Some(bootstrap) = a.bootstrap.or(a.bootstrap_opt) else {
        bail!("no bootstrap given")
    };
    let n = unpack::unpack(&unpack::UnpackOptions {
        bootstrap,
        blobs: erofs_forge::blob::reader::BlobSource {
            dir: a.blob_dir,
            file: a.blob,
        },
        output_tar: a.output,
        output_dir: a.output_dir,
    })?;
    println!("unpacked {n} entries");
    Ok(())
}

fn run_inspect(a: InspectArgs) -> Result<()> {
    let Some(bootstrap) = a.bootstrap.or(a.bootstrap_opt) else {
        bail!("no bootstrap given")
    };
    let image = erofs_forge::rafs::load(&bootstrap)?.image;
    let v = erofs_forge::ops::inspect::request(&image, &a.request)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn run_stat(a: StatArgs) -> Result<()> {
    let mut list = a.bootstraps;
    if let Some(dir) = &a.blob_dir {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_none())
            .filter(|p| {
                erofs_forge::rafs::read_bootstrap(p)
                    .map(|b| erofs_forge::rafs::decode(&b).is_ok())
                    .unwrap_or(false)
            })
            .collect();
        found.sort();
        list.extend(found);
    }
    list.extend(a.target);
    if list.is_empty() {
        bail!("give -B BOOTSTRAP or -D DIR");
    }
    let v = erofs_forge::ops::stat::stat(&list)?;
    let text = serde_json::to_string_pretty(&v)?;
    match a.output_json {
        Some(p) => erofs_forge::io::staged::write_atomic(&p, text.as_bytes())?,
        None => println!("{text}"),
    }
    Ok(())
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temporary outputs (waiting for a rename into place
/// that is under way), then exit with 128 + the signal number.
fn handle_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot handle signals ({e}); an interrupted run may leave temporary files");
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let n = erofs_forge::io::staged::remove_all();
            eprintln!(
                "interrupted by signal {sig}: removed {n} temporary file{}",
                if n == 1 { "" } else { "s" }
            );
            std::process::exit(128 + sig);
        }
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    handle_signals();
    if let Err(e) = init_logging(&cli) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Create(a) => run_create(a),
        Command::Check(a) => run_check(a),
        Command::Merge(a) => run_merge(a),
        Command::Export(a) => run_export(a),
        Command::Unpack(a) => run_unpack(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Stat(a) => run_stat(a),
        Command::BenchBound {
            source,
            compressor,
            threads,
            chunk_size,
        } => {
            let c = match compressor {
                CompressorArg::None => Compressor::None,
                CompressorArg::Lz4Block => Compressor::Lz4Block,
                CompressorArg::Zstd => Compressor::Zstd,
            };
            erofs_forge::ops::bench::stage_bound(&source, c, Digester::Blake3, chunk_size, threads)
                .map(|b| println!("{}", serde_json::json!(b)))
                .map_err(Into::into)
        }
        Command::ExtractBootstrap { blob, output } => {
            erofs_forge::blob::inline::extract_bootstrap(&blob)
                .and_then(|b| erofs_forge::io::staged::write_atomic(&output, &b))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // as nydus-image: 2 when images cannot be stacked (acceleration-service then
            // retries without its chunk-dictionary cache)
            let incompatible = matches!(
                e.downcast_ref::<erofs_forge::Error>(),
                Some(erofs_forge::Error::Incompatible { .. })
            );
            if incompatible {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
