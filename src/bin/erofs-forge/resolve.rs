//! Arguments → library options, before any I/O: the one place for nydus-image's compatibility
//! quirks (`--chunk-dict bootstrap=PATH`, comma-separated per-layer lists, the two bootstrap
//! spellings, options accepted but not yet supported).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use erofs_forge::ops::create::{CreateOptions, SourceType};
use erofs_forge::ops::{check, export, export_compressed, merge, unpack};
use erofs_forge::read::BlobSource;
use erofs_forge::{Prefetch, PrefetchPolicy, SourceLimits};

use crate::args::{
    BlobArgs, BootstrapArg, CheckArgs, CreateArgs, ExportArgs, FeatureArg, MergeArgs,
    SourceTypeArg, StatArgs, UnpackArgs,
};
// image maintenance (optimize, compact, chunkdict)
use crate::args::{BackendArgs, ChunkdictArgs, CompactArgs, OptimizeArgs};
use erofs_forge::ops::export_compressed::{ErofsCompression, ErofsCompressor};
use erofs_forge::ops::{chunkdict, compact, optimize};
use std::path::Path;

/// What `create` builds: one layer, or a whole OCI image.
pub enum CreatePlan {
    /// A bootstrap and blob from a directory or a tar.
    Layer(CreateOptions),
    /// A nydus OCI image layout from an OCI image (`-t oci`).
    Oci {
        /// Options every layer is built with.
        opts: CreateOptions,
        /// The image to take from an index, `os/arch[/variant]`.
        platform: Option<String>,
    },
    /// An OCI image layout of native EROFS layers (`-t oci --layer-format erofs`).
    OciErofs {
        /// Where the layout goes and the source's limits.
        opts: CreateOptions,
        /// The image to take from an index.
        platform: Option<String>,
        /// The layers' compression.
        compression: Option<ErofsCompression>,
    },
}

/// `--erofs-compressor ALG[,LEVEL]`.
pub fn erofs_compression(v: &str) -> Result<ErofsCompression> {
    let (name, level) = match v.split_once(',') {
        Some((n, l)) => (
            n,
            Some(l.parse::<u32>().with_context(|| format!("level {l:?}"))?),
        ),
        None => (v, None),
    };
    let algo: ErofsCompressor = name.parse()?;
    Ok(ErofsCompression {
        level,
        ..ErofsCompression::export(algo)
    })
}

/// What `export` writes.
pub enum ExportPlan {
    /// A tar of the tree (`--tar`).
    Tar(unpack::UnpackOptions),
    /// A standalone EROFS image with native compression (`--block --compressor`).
    Compressed(export_compressed::CompressedExportOptions),
    /// The nydus layout as one disk image (`--block`).
    Block(export::ExportOptions),
}

/// Whether the command line asks for `--version` (`-V`) and nothing else: printed in
/// nydus-image's multi-line shape instead of clap's, for acceleration-service.
pub fn asks_version(mut args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let first = args.next();
    let asked = matches!(
        first.as_ref().and_then(|a| a.to_str()),
        Some("--version" | "-V")
    );
    asked && args.next().is_none()
}

/// The prefetch patterns of `policy`, read from stdin until EOF as nydus-image reads them:
/// clients pipe a list (or `/` without a newline). Nothing is read for `none`, nor from a
/// terminal, where waiting for EOF would only hang.
fn prefetch(policy: PrefetchPolicy) -> Result<Prefetch> {
    let mut text = Vec::new();
    let stdin = std::io::stdin();
    if policy != PrefetchPolicy::None && !stdin.is_terminal() {
        stdin
            .lock()
            .read_to_end(&mut text)
            .context("failed to read prefetch patterns from stdin")?;
    }
    Ok(Prefetch::new(policy, &String::from_utf8_lossy(&text)))
}

/// `--chunk-dict` as nydus-image takes it: `bootstrap=PATH` or `PATH`.
fn chunk_dict(d: Option<String>) -> Option<PathBuf> {
    d.map(|d| PathBuf::from(d.strip_prefix("bootstrap=").unwrap_or(&d)))
}

fn split_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

impl BootstrapArg {
    /// The bootstrap, however it was given.
    pub fn path(self) -> Result<PathBuf> {
        match self.bootstrap.or(self.bootstrap_opt) {
            Some(p) => Ok(p),
            None => bail!("no bootstrap given"),
        }
    }
}

impl From<BlobArgs> for BlobSource {
    fn from(b: BlobArgs) -> BlobSource {
        BlobSource {
            dir: b.blob_dir,
            file: b.blob,
            zran_meta: None,
        }
    }
}

/// `create`.
pub fn create(a: CreateArgs) -> Result<CreatePlan> {
    let oci = matches!(a.source_type, SourceTypeArg::Oci);
    if matches!(a.source_type, SourceTypeArg::TarTarfs) && a.prefetch_policy == PrefetchPolicy::Blob
    {
        // as nydus-image: a tarfs blob is the tar itself, its data order is not ours
        bail!("conversion type tar-tarfs conflicts with '--prefetch-policy blob'");
    }
    if a.platform.is_some() && !oci {
        bail!("--platform applies to -t oci only");
    }
    let opts = CreateOptions {
        source: a.source,
        source_type: match a.source_type {
            SourceTypeArg::DirRafs => SourceType::Directory,
            // -t oci converts each layer as a tar
            SourceTypeArg::TarRafs | SourceTypeArg::TargzRafs | SourceTypeArg::Oci => {
                SourceType::Tar
            }
            SourceTypeArg::TarTarfs => SourceType::TarTarfs,
            SourceTypeArg::TargzRef => SourceType::TargzRef,
            SourceTypeArg::EstargzRef => SourceType::EstargzRef,
        },
        fs_version: a.fs_version,
        bootstrap: a.bootstrap,
        blob: a.blob,
        blob_dir: a.blob_dir,
        blob_inline_meta: a.blob_inline_meta,
        blob_toc: a.features.contains(&FeatureArg::BlobToc),
        blob_cache_dir: a.blob_cache_dir,
        compressor: a.compressor,
        digester: a.digester,
        chunk_size: a.chunk_size,
        repeatable: a.repeatable,
        aligned_chunk: a.aligned_chunk,
        parent_bootstrap: a.parent_bootstrap,
        chunk_dict: chunk_dict(a.chunk_dict),
        whiteout_spec: a.whiteout_spec,
        output_json: a.output_json,
        threads: a.threads,
        tmp_dir: a.tmp_dir,
        prefetch: prefetch(a.prefetch_policy)?,
        blob_id: a.blob_id,
        blob_offset: a.blob_offset,
        batch_size: Some(a.batch_size).filter(|b| *b > 0),
        encrypt: a.encrypt,
        limits: SourceLimits {
            decompress_memory: a.max_decompress_memory,
            entries: a.max_entries,
        },
    };
    if a.blob_data_size.is_some() {
        // as nydus-image, which reads it for estargztoc-ref only (not a type built here)
        log::debug!("--blob-data-size is used by estargztoc-ref conversion only; ignored");
    }
    if (a.layer_format == "erofs" || a.erofs_compressor.is_some()) && !oci {
        bail!("--layer-format and --erofs-compressor apply to -t oci only");
    }
    Ok(if oci && a.layer_format == "erofs" {
        CreatePlan::OciErofs {
            opts,
            platform: a.platform,
            compression: a
                .erofs_compressor
                .as_deref()
                .map(erofs_compression)
                .transpose()?,
        }
    } else if oci {
        CreatePlan::Oci {
            opts,
            platform: a.platform,
        }
    } else {
        CreatePlan::Layer(opts)
    })
}

/// `merge`.
pub fn merge(a: MergeArgs) -> Result<merge::MergeOptions> {
    let blob_sizes = split_list(&a.blob_sizes)
        .iter()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("invalid --blob-sizes value {s:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(merge::MergeOptions {
        sources: a.sources,
        bootstrap: a.bootstrap,
        blob_dir: a.blob_dir,
        parent_bootstrap: a.parent_bootstrap,
        chunk_dict: chunk_dict(a.chunk_dict),
        original_blob_ids: split_list(&a.original_blob_ids),
        blob_digests: split_list(&a.blob_digests),
        blob_sizes,
        blob_toc_digests: split_list(&a.blob_toc_digests),
        blob_toc_sizes: split_list(&a.blob_toc_sizes)
            .iter()
            .map(|s| {
                s.trim()
                    .parse::<u32>()
                    .with_context(|| format!("invalid --blob-toc-sizes value {s:?}"))
            })
            .collect::<Result<Vec<_>>>()?,
        whiteout_spec: a.whiteout_spec,
        output_json: a.output_json,
        prefetch: prefetch(a.prefetch_policy)?,
    })
}

/// `export`.
pub fn export(a: ExportArgs) -> ExportPlan {
    let blobs = BlobSource::from(a.blobs);
    if let Some(tar) = a.tar {
        return ExportPlan::Tar(unpack::UnpackOptions {
            bootstrap: a.bootstrap,
            blobs,
            output_tar: Some(tar),
            output_dir: None,
        });
    }
    if let Some(compressor) = a.compressor {
        return ExportPlan::Compressed(export_compressed::CompressedExportOptions {
            output: a
                .output
                .unwrap_or_else(|| export_compressed::default_output(&a.bootstrap)),
            bootstrap: a.bootstrap,
            blobs,
            compressor,
        });
    }
    ExportPlan::Block(export::ExportOptions {
        bootstrap: a.bootstrap,
        blobs,
        output: a.output,
        verity: a.verity,
        single_device: a.single_device,
    })
}

/// `check`, and where its JSON goes.
pub fn check(a: CheckArgs) -> Result<(check::CheckOptions, Option<PathBuf>)> {
    let opts = check::CheckOptions {
        bootstrap: a.bootstrap.path()?,
        blobs: a.blobs.into(),
        verbose: a.verbose,
    };
    Ok((opts, a.output_json))
}

/// `unpack`.
pub fn unpack(a: UnpackArgs) -> Result<unpack::UnpackOptions> {
    Ok(unpack::UnpackOptions {
        bootstrap: a.bootstrap.path()?,
        blobs: a.blobs.into(),
        output_tar: a.output,
        output_dir: a.output_dir,
    })
}

/// `stat`: the bootstraps to read, `-T` last; `-D DIR` adds every extension-less file there
/// that decodes as a bootstrap, in name order.
pub fn stat(a: StatArgs) -> Result<Vec<PathBuf>> {
    let mut list = a.bootstraps;
    if let Some(dir) = &a.blob_dir {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_none())
            .filter(|p| {
                erofs_forge::read::read_bootstrap(p)
                    .map(|b| erofs_forge::read::decode(&b).is_ok())
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
    Ok(list)
}

/// The blob directory nydus-image's backend flags name: `--blob-dir`, or a `localfs` backend's
/// `dir`. Other backends (registry, oss, s3, ...) are refused: this tool reads local blobs only.
pub fn localfs_dir(backend: &BackendArgs, blob_dir: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(t) = backend.backend_type.as_deref().filter(|t| *t != "localfs") {
        bail!(
            "backend type {t:?} is not supported: only localfs (a directory of blobs, \
             --blob-dir) is read here; fetch the blobs first"
        );
    }
    let config = match (&backend.backend_config, &backend.backend_config_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(p)) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?)
        }
        (None, None) => None,
    };
    if let Some(dir) = blob_dir {
        return Ok(Some(dir.to_path_buf()));
    }
    let Some(text) = config.filter(|_| backend.backend_type.is_some()) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).context("localfs backend configuration is not JSON")?;
    // nydus's localfs config names the directory `dir` (or `blob_file` for a single blob)
    match v["dir"].as_str() {
        Some(d) => Ok(Some(PathBuf::from(d))),
        None => bail!("localfs backend configuration has no \"dir\""),
    }
}

/// `optimize`.
pub fn optimize(a: OptimizeArgs) -> Result<optimize::OptimizeOptions> {
    let dir = localfs_dir(&a.backend, a.blobs.blob_dir.as_deref())?;
    if dir.is_none() && a.blobs.blob.is_none() {
        bail!("give --blob-dir (or --blob, or a localfs backend) to read the image's blobs");
    }
    Ok(optimize::OptimizeOptions {
        bootstrap: a.bootstrap,
        blobs: BlobSource {
            dir,
            file: a.blobs.blob,
            zran_meta: None,
        },
        prefetch_files: a.prefetch_files,
        output_bootstrap: a
            .output_bootstrap
            .unwrap_or_else(|| PathBuf::from(optimize::DEFAULT_OUTPUT_BOOTSTRAP)),
        output_blob_dir: a.output_blob_dir,
        output_json: a.output_json,
    })
}

/// `compact`: the blobs are read from `--blob-dir` (a localfs backend must name the same
/// place: nydusify passes both).
pub fn compact(a: CompactArgs) -> Result<compact::CompactOptions> {
    localfs_dir(&a.backend, Some(&a.blob_dir))?;
    let mut opts = compact::CompactOptions::new(a.bootstrap, a.blob_dir);
    opts.min_used_ratio = a.min_used_ratio;
    opts.compact_blob_size = a.compact_blob_size;
    opts.max_compact_size = a.max_compact_size;
    opts.layers_to_compact = a.layers_to_compact;
    opts.chunk_dict = chunk_dict(a.chunk_dict);
    if let Some(p) = a.output_bootstrap {
        opts.output_bootstrap = p;
    }
    opts.output_json = a.output_json;
    Ok(opts)
}

/// `chunkdict generate`.
pub fn chunkdict(a: ChunkdictArgs) -> chunkdict::ChunkdictOptions {
    chunkdict::ChunkdictOptions {
        sources: a.sources,
        database: a.database,
        bootstrap: a.bootstrap,
        output_json: a.output_json,
    }
}
