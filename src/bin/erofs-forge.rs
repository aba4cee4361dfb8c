//! The erofs-forge command line: parses arguments (nydus-image compatible) and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use erofs_forge::chunk::{Compressor, Digester};
use erofs_forge::cmd::create::{self, CreateOptions, Progress, SourceType};
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
    /// Write the bootstrap that --blob-inline-meta stored at the end of a blob.
    ExtractBootstrap {
        /// The blob holding an inlined bootstrap.
        blob: PathBuf,
        /// Where to write the bootstrap.
        #[arg(short, long)]
        output: PathBuf,
    },
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
    /// RAFS version (only 6 is supported so far).
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
    /// Worker threads for digest and compression (default: all cores).
    #[arg(long, default_value = "0")]
    threads: usize,
    /// Whiteout specification (only meaningful for layer sources; accepted for compatibility).
    #[arg(long, default_value = "oci")]
    whiteout_spec: String,
    /// Prefetch policy (only `none` so far).
    #[arg(long, default_value = "none")]
    prefetch_policy: String,
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
    if !["oci", "overlayfs", "none"].contains(&a.whiteout_spec.as_str()) {
        bail!("invalid --whiteout-spec {:?}", a.whiteout_spec);
    }
    let opts = CreateOptions {
        source: a.source,
        source_type: match a.source_type {
            SourceTypeArg::DirRafs => SourceType::Directory,
            SourceTypeArg::TarRafs | SourceTypeArg::TargzRafs => SourceType::Tar,
            SourceTypeArg::TarTarfs => SourceType::TarTarfs,
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
        output_json: a.output_json,
        threads: a.threads,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Create(a) => run_create(a),
        Command::ExtractBootstrap { blob, output } => {
            erofs_forge::blob::inline::extract_bootstrap(&blob)
                .and_then(|b| create::write_atomic(&output, &b))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
