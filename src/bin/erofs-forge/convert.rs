//! `erofs-forge convert`: registry to registry with `nydusify convert`'s flag names
//! (docs/convert.md). Parses, resolves into [`ConvertOptions`], runs, prints one summary line
//! per platform.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use erofs_forge::ops::convert::{self, ConvertOptions, ImageLocation, ManifestKind, Platforms};
use erofs_forge::ops::create::{CreateOptions, SourceType};
use erofs_forge::ops::oci::LayerFormat;
use erofs_forge::Platform;
use erofs_forge::{Compressor, ImageRef, Observer, Prefetch, PrefetchPolicy, Transfer, Transport};

use crate::args::parse_size;

/// `convert`'s command line: nydusify convert's flags, for what this tool supports.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source image: `[host[:port]/]repo[:tag]` in a registry, `oci:DIR[:TAG]` or
    /// `oci-archive:FILE`.
    #[arg(long)]
    source: String,
    /// Target image: a registry reference, or `oci:DIR` for a local source.
    #[arg(long)]
    target: Option<String>,
    /// Target is the source with this appended to its tag (`:latest` → `:latest-nydus`).
    #[arg(long, allow_hyphen_values = true)]
    target_suffix: Option<String>,
    /// Do not check the source registry's TLS certificate.
    #[arg(long)]
    source_insecure: bool,
    /// Do not check the target registry's TLS certificate.
    #[arg(long)]
    target_insecure: bool,
    /// Speak plain HTTP to the source and target registries.
    #[arg(long)]
    plain_http: bool,
    /// The platform converted from a multi-platform source (`os/arch[/variant]`).
    #[arg(long)]
    platform: Option<String>,
    /// Convert every platform of the source.
    #[arg(long)]
    all_platforms: bool,
    /// Push one index holding the source's manifests and the converted ones.
    #[arg(long)]
    merge_platform: bool,
    /// Write OCI manifests whatever the source's kind.
    #[arg(long)]
    oci: bool,
    /// Write docker v2 manifests whatever the source's kind.
    #[arg(long)]
    docker_v2_format: bool,
    /// RAFS version of the nydus image (5 or 6).
    #[arg(long, default_value = "6")]
    fs_version: u32,
    /// Compressor of the nydus blobs: none, lz4_block, zstd.
    #[arg(long, default_value = "zstd")]
    compressor: String,
    /// Chunk size (a power of two, 0x1000 to 0x1000000).
    #[arg(long, alias = "chunk-size", default_value = "0x100000", value_parser = parse_size)]
    fs_chunk_size: u32,
    /// Batch chunks smaller than this into one compressed unit (0: off).
    #[arg(long, default_value = "0")]
    batch_size: String,
    /// A chunk dictionary image (`bootstrap:registry:REF`).
    #[arg(long)]
    chunk_dict: Option<String>,
    /// Read prefetch patterns (absolute paths, one per line) from stdin.
    #[arg(long)]
    prefetch_patterns: bool,
    /// Reference the source's gzip layers in place (targz-ref).
    #[arg(long)]
    oci_ref: bool,
    /// Name the source manifest as the converted one's `subject`.
    #[arg(long)]
    with_referrer: bool,
    /// Where converted layers wait to be pushed.
    #[arg(long, default_value = "./tmp")]
    work_dir: PathBuf,
    /// Write a JSON summary here.
    #[arg(long, short = 'J')]
    output_json: Option<PathBuf>,
    /// How many times a failed registry request is tried again.
    #[arg(long, default_value = "3")]
    push_retry_count: u32,
    /// The wait before the first retry (`5s`, `500ms`, `1m`); doubled for each further one.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    push_retry_delay: Duration,
    /// Layers of the converted image: `nydus` (blobs and a bootstrap) or `erofs` (native EROFS
    /// layers, application/vnd.erofs.layer.v1).
    #[arg(long, default_value = "nydus")]
    target_format: String,
    /// EROFS compression of `--target-format erofs` layers: `ALG[,LEVEL]`.
    #[arg(long)]
    erofs_compressor: Option<String>,
}

/// Go-style durations: `5s`, `500ms`, `1m`, `1m30s`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n.max(0.0)));
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        num.clear();
        total += v * match unit.as_str() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: unit {unit:?}")),
        };
    }
    if !num.is_empty() {
        return Err(format!("invalid duration {s:?}: a number without a unit"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// The target: `--target`, or the source with `--target-suffix` appended to its tag.
fn target(a: &ConvertArgs) -> Result<ImageLocation> {
    match (&a.target, &a.target_suffix) {
        (Some(_), Some(_)) => bail!("--target conflicts with --target-suffix"),
        (None, None) => bail!("--target or --target-suffix is required"),
        (Some(t), None) => Ok(ImageLocation::parse(t)?),
        (None, Some(suffix)) => match ImageLocation::parse(&a.source)? {
            ImageLocation::Registry(r) => {
                if r.digest().is_some() {
                    bail!("--target-suffix: unsupported digested image reference {r}");
                }
                let tag = format!("{}{suffix}", r.tag().unwrap_or("latest"));
                Ok(ImageLocation::Registry(r.at_tag(&tag)))
            }
            _ => bail!("--target-suffix needs a registry source"),
        },
    }
}

/// `--chunk-dict bootstrap:registry:REF` (nydusify's form; REF may hold colons), or REF.
fn chunk_dict_ref(v: &str) -> Result<ImageRef> {
    let r = match v.strip_prefix("bootstrap:") {
        Some(rest) => match rest.split_once(':') {
            Some(("registry", r)) => r,
            Some(("local", _)) => bail!(
                "--chunk-dict {v}: a local dictionary is not supported by convert (nor by nydusify); push it to a registry"
            ),
            _ => bail!("--chunk-dict {v}: expected bootstrap:registry:REF"),
        },
        None => v,
    };
    Ok(ImageRef::parse(r)?)
}

fn registry_of(l: &ImageLocation) -> Option<String> {
    match l {
        ImageLocation::Registry(r) => Some(r.registry().to_string()),
        _ => None,
    }
}

fn transport(a: &ConvertArgs, source: &ImageLocation, target: &ImageLocation) -> Transport {
    let both: Vec<String> = [registry_of(source), registry_of(target)]
        .into_iter()
        .flatten()
        .collect();
    let mut insecure = Vec::new();
    if a.source_insecure {
        insecure.extend(registry_of(source));
    }
    if a.target_insecure {
        insecure.extend(registry_of(target));
    }
    Transport {
        plain_http: if a.plain_http { both } else { Vec::new() },
        insecure,
        retries: a.push_retry_count,
        retry_delay: a.push_retry_delay,
    }
}

/// The per-layer build settings.
fn create_options(a: &ConvertArgs) -> Result<CreateOptions> {
    if a.fs_version != 5 && a.fs_version != 6 {
        bail!("--fs-version {}: 5 or 6", a.fs_version);
    }
    let compressor: Compressor = a
        .compressor
        .parse()
        .with_context(|| format!("--compressor {}", a.compressor))?;
    let batch = parse_size(&a.batch_size).map_err(anyhow::Error::msg)?;
    let mut patterns = String::new();
    if a.prefetch_patterns && !std::io::stdin().is_terminal() {
        std::io::stdin()
            .lock()
            .read_to_string(&mut patterns)
            .context("failed to read prefetch patterns from stdin")?;
    }
    let prefetch = if a.prefetch_patterns {
        Prefetch::new(PrefetchPolicy::Fs, &patterns)
    } else {
        Prefetch::default()
    };
    Ok(CreateOptions {
        source_type: SourceType::Tar,
        fs_version: a.fs_version,
        compressor: Some(compressor),
        chunk_size: a.fs_chunk_size,
        batch_size: Some(batch).filter(|b| *b > 0),
        prefetch,
        ..CreateOptions::default()
    })
}

fn resolve(a: ConvertArgs) -> Result<ConvertOptions> {
    if a.oci && a.docker_v2_format {
        bail!("--oci conflicts with --docker-v2-format");
    }
    let source = ImageLocation::parse(&a.source)?;
    let target = target(&a)?;
    let layer_format = match a.target_format.as_str() {
        "nydus" => LayerFormat::Nydus,
        "erofs" => LayerFormat::Erofs,
        other => bail!("--target-format {other:?}: nydus or erofs"),
    };
    if a.erofs_compressor.is_some() && layer_format != LayerFormat::Erofs {
        bail!("--erofs-compressor applies to --target-format erofs");
    }
    let platforms = if a.all_platforms {
        Platforms::All
    } else {
        Platforms::One(match &a.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        })
    };
    Ok(ConvertOptions {
        transport: transport(&a, &source, &target),
        create: create_options(&a)?,
        source,
        target,
        platforms,
        merge_platform: a.merge_platform,
        // --oci-ref writes OCI manifests, as nydusify forces it
        manifest_kind: if a.oci || a.oci_ref {
            ManifestKind::Oci
        } else if a.docker_v2_format {
            ManifestKind::DockerV2
        } else {
            ManifestKind::Keep
        },
        layer_format,
        erofs_compression: a
            .erofs_compressor
            .as_deref()
            .map(crate::resolve::erofs_compression)
            .transpose()?,
        with_referrer: a.with_referrer,
        oci_ref: a.oci_ref,
        chunk_dict: a.chunk_dict.as_deref().map(chunk_dict_ref).transpose()?,
        work_dir: a.work_dir,
        output_json: a.output_json,
    })
}

/// One bar per blob moving (pull of a source layer, push of a converted blob) on a terminal;
/// a plain line per blob done otherwise.
struct Transfers {
    bars: Option<indicatif::MultiProgress>,
    live: Mutex<HashMap<(bool, String), indicatif::ProgressBar>>,
}

impl Transfers {
    fn for_stderr() -> Transfers {
        Transfers {
            bars: std::io::stderr()
                .is_terminal()
                .then(indicatif::MultiProgress::new),
            live: Mutex::new(HashMap::new()),
        }
    }
}

fn way_name(way: Transfer) -> &'static str {
    match way {
        Transfer::Pull => "pull",
        Transfer::Push => "push",
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

impl Observer for Transfers {
    fn started(&self, way: Transfer, digest: &str, size: u64) {
        let Some(m) = &self.bars else {
            return;
        };
        let b = m.add(indicatif::ProgressBar::new(size));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(way_name(way));
        b.set_message(short(digest).to_string());
        if let Ok(mut live) = self.live.lock() {
            live.insert((way == Transfer::Pull, digest.to_string()), b);
        }
    }

    fn moved(&self, way: Transfer, digest: &str, bytes: u64) {
        if let Ok(live) = self.live.lock() {
            if let Some(b) = live.get(&(way == Transfer::Pull, digest.to_string())) {
                b.inc(bytes);
            }
        }
    }

    fn finished(&self, way: Transfer, digest: &str, moved: bool) {
        let bar = self
            .live
            .lock()
            .ok()
            .and_then(|mut l| l.remove(&(way == Transfer::Pull, digest.to_string())));
        match (&self.bars, bar) {
            (Some(_), Some(b)) => b.finish(),
            (Some(_), None) => {}
            (None, _) => {
                let what = match (way, moved) {
                    (Transfer::Pull, _) => "received",
                    (Transfer::Push, true) => "pushed",
                    (Transfer::Push, false) => "already there",
                };
                eprintln!("{} {digest}: {what}", way_name(way));
            }
        }
    }
}

/// Runs `convert` and prints what it pushed.
pub fn run(a: ConvertArgs) -> Result<()> {
    let opts = resolve(a)?;
    let out = convert::convert(&opts, Arc::new(Transfers::for_stderr()))?;
    for p in &out.platforms {
        let pushed = p.blobs.iter().filter(|b| b.uploaded).count();
        crate::out::outln!(
            "{} {}: {} -> {} ({} blobs, {} pushed, {} already there)",
            out.target,
            p.platform,
            p.source_manifest,
            p.target_manifest,
            p.blobs.len(),
            pushed,
            p.blobs.len() - pushed
        );
    }
    crate::out::outln!("{} {}", out.target, out.target_digest);
    Ok(())
}
