//! `convert`: registry to registry, as `nydusify convert` does it (formats/oci.md §7). The
//! source image's manifests are read from its registry (or an OCI layout or archive); each
//! chosen platform's layers stream from the registry straight into the same conversion
//! `create -t oci` runs (their digests checked as they arrive, nothing of the source kept on
//! disk), and the converted blobs, config, manifests and, last, the index or tag are pushed.
//! A failed run leaves no tag: the tag is written by the last request.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::io::staged::{write_temp, Outputs, ScratchDir};
use crate::ops::create::{CreateOptions, NoProgress};
use crate::ops::export_compressed::ErofsCompression;
use crate::ops::oci::{self as oci_ops, LayerFormat};
use crate::registry::{Client, ImageRef, Manifest, Observer, Transport};
use crate::source::oci::{self, Platform, RemoteFiles, Store};

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The artifact type nydusify gives the nydus entries of a merged index.
const ARTIFACT_NYDUS: &str = "application/vnd.nydus.image.manifest.v1+json";

/// Where an image is: a registry, an OCI image layout directory, or an OCI archive.
#[derive(Debug, Clone)]
pub enum ImageLocation {
    /// `[host[:port]/]repository[:tag]` in a registry.
    Registry(ImageRef),
    /// `oci:DIR[:TAG]`.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The image's name in its index.json.
        tag: Option<String>,
    },
    /// `oci-archive:FILE` (read only).
    Archive(PathBuf),
}

impl ImageLocation {
    /// Parses a reference as skopeo and nydusify spell them (`docker://` optional).
    pub fn parse(s: &str) -> Result<ImageLocation> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => {
                    (d.to_string(), Some(t.to_string()))
                }
                _ => (rest.to_string(), None),
            };
            return Ok(ImageLocation::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            return Ok(ImageLocation::Archive(PathBuf::from(rest)));
        }
        let s = s.strip_prefix("docker://").unwrap_or(s);
        Ok(ImageLocation::Registry(ImageRef::parse(s)?))
    }

    fn describe(&self) -> String {
        match self {
            ImageLocation::Registry(r) => r.whole(),
            ImageLocation::Layout { dir, tag } => match tag {
                Some(t) => format!("oci:{}:{t}", dir.display()),
                None => format!("oci:{}", dir.display()),
            },
            ImageLocation::Archive(p) => format!("oci-archive:{}", p.display()),
        }
    }
}

/// Which platforms of a multi-platform source are converted.
#[derive(Debug, Clone)]
pub enum Platforms {
    /// One platform.
    One(Platform),
    /// Every platform the index lists.
    All,
}

/// The kind of manifest written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestKind {
    /// The source's own kind (docker stays docker, OCI stays OCI).
    #[default]
    Keep,
    /// OCI (`--oci`).
    Oci,
    /// Docker v2 schema 2 (`--docker-v2-format`).
    DockerV2,
}

/// What `convert` is asked to do.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The image to convert.
    pub source: ImageLocation,
    /// Where the converted image goes.
    pub target: ImageLocation,
    /// How registries are reached.
    pub transport: Transport,
    /// Which platforms are converted.
    pub platforms: Platforms,
    /// Original and converted manifests in one index.
    pub merge_platform: bool,
    /// The manifest kind written.
    pub manifest_kind: ManifestKind,
    /// nydus blobs, or native EROFS layers.
    pub layer_format: LayerFormat,
    /// EROFS compression for `--target-format erofs`.
    pub erofs_compression: Option<ErofsCompression>,
    /// The per-layer build settings (fs version, compressor, chunk size, batch size,
    /// prefetch); `source` and `blob_dir` are set per platform.
    pub create: CreateOptions,
    /// The converted manifest names the source manifest as its `subject`.
    pub with_referrer: bool,
    /// Reference the source's gzip layers in place (targz-ref, nydusify's `--oci-ref`).
    pub oci_ref: bool,
    /// A nydus image in a registry whose chunks the layers reuse (`--chunk-dict`).
    pub chunk_dict: Option<ImageRef>,
    /// Where layouts are built before they are pushed.
    pub work_dir: PathBuf,
    /// Where the JSON summary goes.
    pub output_json: Option<PathBuf>,
}

/// One layer's conversion, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    /// Digest of the blob written.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Whether it was uploaded (false: the target already had it, or mounted it).
    pub uploaded: bool,
    /// Seconds its push took.
    pub push_seconds: f64,
}

/// One platform's conversion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlatformReport {
    /// The platform.
    pub platform: String,
    /// The source manifest's digest.
    pub source_manifest: String,
    /// Bytes of the source's layers.
    pub source_size: u64,
    /// The converted manifest's digest.
    pub target_manifest: String,
    /// Bytes of the converted layers.
    pub target_size: u64,
    /// Seconds the pull and conversion took (they run as one stream).
    pub convert_seconds: f64,
    /// The converted image's layers and config.
    pub blobs: Vec<LayerReport>,
}

/// What `convert` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertOutput {
    /// The source as named.
    pub source: String,
    /// The target as written.
    pub target: String,
    /// Digest of the source's top manifest or index.
    pub source_digest: String,
    /// Digest of what the target tag names.
    pub target_digest: String,
    /// Each platform converted.
    pub platforms: Vec<PlatformReport>,
    /// Bytes uploaded.
    pub bytes_pushed: u64,
    /// Seconds the whole run took.
    pub seconds: f64,
}

/// The source's top document and the manifests chosen from it.
struct Source {
    top: Manifest,
    chosen: Vec<Chosen>,
}

/// One platform's manifest of the source.
struct Chosen {
    manifest: Manifest,
    /// The index entry naming it (`None` for a plain manifest).
    descriptor: Option<Value>,
    platform: Option<Platform>,
}

/// Converts and pushes (formats/oci.md §7).
pub fn convert(opts: &ConvertOptions, observer: Arc<dyn Observer>) -> Result<ConvertOutput> {
    let started = Instant::now();
    check(opts)?;
    std::fs::create_dir_all(&opts.work_dir).ctx("create", &opts.work_dir)?;
    let work = ScratchDir::new_in(&opts.work_dir)?;
    let client = Client::new(opts.transport.clone(), observer)?;
    let mut out = match (&opts.source, &opts.target) {
        (ImageLocation::Registry(src), ImageLocation::Registry(dst)) => {
            registry_to_registry(opts, &client, (src, dst), work.path())?
        }
        (ImageLocation::Registry(src), _) => registry_to_local(opts, &client, src, work.path())?,
        (_, ImageLocation::Registry(dst)) => local_to_registry(opts, &client, dst, work.path())?,
        _ => local_to_local(opts, work.path())?,
    };
    out.seconds = started.elapsed().as_secs_f64();
    write_json(opts, &out)?;
    Ok(out)
}

/// Every chosen platform of a registry image converted, pushed, then the tag.
fn registry_to_registry(
    opts: &ConvertOptions,
    client: &Client,
    (src, target): (&ImageRef, &ImageRef),
    work: &Path,
) -> Result<ConvertOutput> {
    let source = resolve(client, src, &opts.platforms)?;
    let dict = match &opts.chunk_dict {
        Some(r) => Some((r, fetch_dict(client, r, &opts.platforms, work)?)),
        None => None,
    };
    let mut reports = Vec::new();
    let mut converted = Vec::new();
    for (i, c) in source.chosen.iter().enumerate() {
        let layout = work.join(format!("platform-{i}"));
        let opened = open_remote(opts, client, src, c)?;
        let built = convert_platform(
            opts,
            client,
            (opened, Some(target)),
            dict.as_ref().map(|d| &d.1),
            &layout,
        )?;
        let ends = Ends {
            src: Some(src),
            target,
            dict: dict.as_ref().map(|d| d.0),
        };
        let (report, manifest) =
            push_platform(opts, client, &ends, &layout, Some(&c.manifest), built)?;
        std::fs::remove_dir_all(&layout).ctx("remove", &layout)?;
        let platform = platform_json(c, &report.platform);
        converted.push(Converted {
            chosen: c,
            manifest,
            platform,
        });
        reports.push(report);
    }
    let target_digest = publish(opts, client, src, target, &converted)?;
    Ok(output(
        opts,
        source.top.digest.clone(),
        target_digest,
        reports,
    ))
}

/// One platform of a registry image into a local layout or archive.
fn registry_to_local(
    opts: &ConvertOptions,
    client: &Client,
    src: &ImageRef,
    work: &Path,
) -> Result<ConvertOutput> {
    let source = resolve(client, src, &opts.platforms)?;
    let [c] = &source.chosen[..] else {
        return Err(Error::InvalidOption(format!(
            "{src} has {} platforms to convert: an {} target holds one, name it with --platform",
            source.chosen.len(),
            opts.target.describe()
        )));
    };
    let dict = match &opts.chunk_dict {
        Some(r) => Some(fetch_dict(client, r, &opts.platforms, work)?),
        None => None,
    };
    let opened = open_remote(opts, client, src, c)?;
    let (layout, archive) = local_target(opts, work)?;
    let (report, _) = convert_platform(opts, client, (opened, None), dict.as_ref(), &layout)?;
    if let Some(file) = archive {
        write_archive(&layout, &file)?;
    }
    let target = report.target_manifest.clone();
    Ok(output(
        opts,
        source.top.digest.clone(),
        target,
        vec![report],
    ))
}

/// A local image (layout or archive) converted and pushed under the target's tag.
fn local_to_registry(
    opts: &ConvertOptions,
    client: &Client,
    target: &ImageRef,
    work: &Path,
) -> Result<ConvertOutput> {
    let layout = work.join("platform-0");
    let opened = open_local(opts)?;
    let built = convert_platform(opts, client, (opened, Some(target)), None, &layout)?;
    let ends = Ends {
        src: None,
        target,
        dict: None,
    };
    let (report, manifest) = push_platform(opts, client, &ends, &layout, None, built)?;
    let tagged = target.at_tag(target.tag().unwrap_or("latest"));
    client.push_manifest(&tagged, &manifest.bytes, &manifest.media_type)?;
    Ok(output(opts, String::new(), manifest.digest, vec![report]))
}

/// A local image into a local layout or archive: `create -t oci` with these settings.
fn local_to_local(opts: &ConvertOptions, work: &Path) -> Result<ConvertOutput> {
    let opened = open_local(opts)?;
    let (layout, archive) = local_target(opts, work)?;
    let client = Client::new(
        opts.transport.clone(),
        Arc::new(crate::registry::Unobserved),
    )?;
    let (report, _) = convert_platform(opts, &client, (opened, None), None, &layout)?;
    if let Some(file) = archive {
        write_archive(&layout, &file)?;
    }
    let target = report.target_manifest.clone();
    Ok(output(opts, String::new(), target, vec![report]))
}

/// The summary of a run, before its time is known.
fn output(
    opts: &ConvertOptions,
    source_digest: String,
    target_digest: String,
    platforms: Vec<PlatformReport>,
) -> ConvertOutput {
    ConvertOutput {
        source: opts.source.describe(),
        target: opts.target.describe(),
        source_digest,
        target_digest,
        bytes_pushed: platforms
            .iter()
            .flat_map(|r| &r.blobs)
            .filter(|b| b.uploaded)
            .map(|b| b.size)
            .sum(),
        platforms,
        seconds: 0.0,
    }
}

/// Where a local target's layout is built: the `oci:DIR` itself, or a scratch layout that
/// becomes the `oci-archive:FILE`.
fn local_target(opts: &ConvertOptions, work: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    match &opts.target {
        ImageLocation::Layout { dir, .. } => Ok((dir.clone(), None)),
        ImageLocation::Archive(file) => Ok((work.join("archive"), Some(file.clone()))),
        ImageLocation::Registry(r) => Err(Error::Internal(format!("{r} is not a local target"))),
    }
}

/// Writes a layout as an OCI archive (a plain tar of its files), in place at once.
fn write_archive(layout: &Path, file: &Path) -> Result<()> {
    let tmp = crate::io::staged::temp_beside(file)?;
    let mut t = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    t.mode(tar::HeaderMode::Deterministic);
    for name in ["oci-layout", "index.json"] {
        t.append_path_with_name(layout.join(name), name)
            .ctx("write", file)?;
    }
    t.append_dir_all("blobs", layout.join("blobs"))
        .ctx("write", file)?;
    t.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .ctx("write", file)?;
    crate::io::staged::persist(tmp, file)
}

/// The image one conversion reads, opened, and what names it.
struct Opened {
    image: oci::Image,
    want: Platform,
    /// How messages name it.
    name: String,
    /// Its manifest digest, when known.
    manifest: String,
}

/// The platform asked for (the machine's when every platform is).
fn wanted(opts: &ConvertOptions) -> Platform {
    match &opts.platforms {
        Platforms::One(p) => p.clone(),
        Platforms::All => Platform::host(),
    }
}

fn open_remote(
    opts: &ConvertOptions,
    client: &Client,
    src: &ImageRef,
    c: &Chosen,
) -> Result<Opened> {
    let store = remote_store(client, src, c)?;
    let want = c.platform.clone().unwrap_or_else(|| wanted(opts));
    Ok(Opened {
        image: oci::open_store(store, None, &want)?,
        want,
        name: src.whole(),
        manifest: c.manifest.digest.clone(),
    })
}

fn open_local(opts: &ConvertOptions) -> Result<Opened> {
    let path = match &opts.source {
        ImageLocation::Layout { dir, tag: Some(t) } => {
            PathBuf::from(format!("{}:{t}", dir.display()))
        }
        ImageLocation::Layout { dir, tag: None } => dir.clone(),
        ImageLocation::Archive(p) => p.clone(),
        ImageLocation::Registry(r) => {
            return Err(Error::Internal(format!("{r} is not a local source")))
        }
    };
    let want = wanted(opts);
    Ok(Opened {
        image: oci::open_image(&path, &want)?,
        want,
        name: opts.source.describe(),
        manifest: String::new(),
    })
}

fn check(opts: &ConvertOptions) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidOption(m.to_string()));
    let remote = matches!(opts.source, ImageLocation::Registry(_));
    let remote_target = matches!(opts.target, ImageLocation::Registry(_));
    if !remote && (opts.merge_platform || opts.with_referrer) {
        return bad("--merge-platform and --with-referrer need a registry source");
    }
    if !remote && matches!(opts.platforms, Platforms::All) {
        return bad("--all-platforms needs a registry source");
    }
    if !remote_target && (opts.merge_platform || matches!(opts.platforms, Platforms::All)) {
        return bad("--merge-platform and --all-platforms need a registry target (a layout target holds one image)");
    }
    if !remote && remote_target && opts.oci_ref {
        return bad("--oci-ref into a registry needs a registry source: the gzip layers it references must be in the registry");
    }
    if !remote_target && opts.manifest_kind == ManifestKind::DockerV2 {
        return bad(
            "--docker-v2-format applies to a registry target; a layout holds OCI manifests",
        );
    }
    if opts.chunk_dict.is_some() && !remote {
        return bad("--chunk-dict needs a registry source");
    }
    if opts.oci_ref && opts.layer_format == LayerFormat::Erofs {
        return bad(
            "--oci-ref references the source's gzip layers; it does not take --target-format erofs",
        );
    }
    if opts.merge_platform && opts.layer_format == LayerFormat::Erofs {
        return bad("--merge-platform writes nydus manifests beside the originals; it does not take --target-format erofs");
    }
    Ok(())
}

/// Reads the source's top document and picks the manifests to convert.
fn resolve(client: &Client, src: &ImageRef, platforms: &Platforms) -> Result<Source> {
    let top = client.manifest(src)?;
    let doc = parse_doc(&top.bytes, src)?;
    let is_index = matches!(top.media_type.as_str(), MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST)
        || (top.media_type.is_empty() && doc.get("manifests").is_some());
    if !is_index {
        return Ok(Source {
            chosen: vec![Chosen {
                manifest: top.clone(),
                descriptor: None,
                platform: None,
            }],
            top,
        });
    }
    let mut chosen = Vec::new();
    let mut seen = Vec::new();
    for entry in doc["manifests"].as_array().into_iter().flatten() {
        let Some(p) = entry.get("platform").and_then(Platform::of) else {
            continue;
        };
        // attestation manifests (buildkit's) carry unknown/unknown: not images
        if p.os == "unknown" {
            continue;
        }
        let take = match platforms {
            Platforms::All => true,
            Platforms::One(want) => want.accepts(&p),
        };
        seen.push(p.to_string());
        if !take
            || chosen
                .iter()
                .any(|c: &Chosen| c.platform.as_ref() == Some(&p))
        {
            continue;
        }
        let digest = entry["digest"].as_str().unwrap_or_default();
        let manifest = client.manifest(&src.at_digest(digest))?;
        chosen.push(Chosen {
            manifest,
            descriptor: Some(entry.clone()),
            platform: Some(p),
        });
    }
    if chosen.is_empty() {
        return Err(Error::InvalidOption(format!(
            "{src} has no image for {} (it has {})",
            match platforms {
                Platforms::One(p) => p.to_string(),
                Platforms::All => "any platform".into(),
            },
            seen.join(", ")
        )));
    }
    Ok(Source { top, chosen })
}

fn parse_doc(bytes: &[u8], at: &ImageRef) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::Unsupported {
        path: PathBuf::from(at.whole()),
        reason: format!("invalid JSON: {e}"),
    })
}

/// A registry repository seen as an image layout holding one manifest: what `create -t oci`
/// reads. Manifests come from memory; blobs stream from the registry as they are read.
struct RegistryFiles {
    client: Client,
    at: ImageRef,
    location: PathBuf,
    index: Vec<u8>,
    docs: HashMap<String, Vec<u8>>,
    sizes: HashMap<String, u64>,
}

impl RemoteFiles for RegistryFiles {
    fn location(&self) -> &Path {
        &self.location
    }

    fn exists(&self, name: &str) -> bool {
        name == "index.json" || blob_hex(name).is_some()
    }

    fn reader(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        if name == "index.json" {
            let b = self.index.clone();
            let n = b.len() as u64;
            return Ok((Box::new(Cursor::new(b)), n));
        }
        let hex = blob_hex(name).ok_or_else(|| Error::Unsupported {
            path: self.location.join(name),
            reason: "not a blob of the repository".into(),
        })?;
        if let Some(d) = self.docs.get(hex) {
            let n = d.len() as u64;
            return Ok((Box::new(Cursor::new(d.clone())), n));
        }
        let size = self.sizes.get(hex).copied();
        let r = self
            .client
            .blob_reader(&self.at, &format!("sha256:{hex}"), size);
        Ok((Box::new(r), size.unwrap_or(0)))
    }
}

fn blob_hex(name: &str) -> Option<&str> {
    name.strip_prefix("blobs/sha256/")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where a platform's blobs come from and go to.
#[derive(Clone, Copy)]
struct Ends<'a> {
    /// The source repository, when the source is a registry's.
    src: Option<&'a ImageRef>,
    target: &'a ImageRef,
    /// The chunk dictionary's repository, whose blobs the image may use.
    dict: Option<&'a ImageRef>,
}

/// One platform converted and pushed, for the index.
struct Converted<'a> {
    chosen: &'a Chosen,
    manifest: Manifest,
    /// Its index entry's platform object.
    platform: Value,
}

/// The platform object of an index entry: the source index's, else the image config's.
fn platform_json(c: &Chosen, from_config: &str) -> Value {
    if let Some(p) = c.descriptor.as_ref().and_then(|d| d.get("platform")) {
        return p.clone();
    }
    let mut p = json!({});
    let mut parts = from_config.split('/');
    p["os"] = json!(parts.next().unwrap_or("linux"));
    p["architecture"] = json!(parts.next().unwrap_or("amd64"));
    if let Some(v) = parts.next() {
        p["variant"] = json!(v);
    }
    p
}

/// The store through which one source manifest is converted: an index.json naming it, the
/// manifest itself, and the sizes of the blobs it lists.
fn remote_store(client: &Client, src: &ImageRef, c: &Chosen) -> Result<Store> {
    let doc = parse_doc(&c.manifest.bytes, src)?;
    let mut sizes = HashMap::new();
    for d in doc["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(doc.get("config"))
    {
        if let (Some(dg), Some(n)) = (d["digest"].as_str(), d["size"].as_u64()) {
            if let Some(hex) = dg.strip_prefix("sha256:") {
                sizes.insert(hex.to_string(), n);
            }
        }
    }
    let mut entry = json!({
        "mediaType": if c.manifest.media_type.is_empty() { MEDIA_OCI_MANIFEST } else { &c.manifest.media_type },
        "digest": c.manifest.digest,
        "size": c.manifest.bytes.len(),
    });
    if let Some(p) = c.descriptor.as_ref().and_then(|d| d.get("platform")) {
        entry["platform"] = p.clone();
    }
    let index = json!({"schemaVersion": 2, "manifests": [entry]});
    let hex = c.manifest.digest.trim_start_matches("sha256:").to_string();
    Ok(Store::Remote(Box::new(RegistryFiles {
        client: client.clone(),
        at: src.clone(),
        location: PathBuf::from(src.whole()),
        index: serde_json::to_vec(&index).unwrap_or_default(),
        docs: HashMap::from([(hex, c.manifest.bytes.clone())]),
        sizes,
    })))
}

/// Streams one platform's layers from the source through the conversion into a layout;
/// with a target, each finished layer blob is pushed meanwhile. Returns its report (the
/// manifest still to push) and the converted manifest.
fn convert_platform(
    opts: &ConvertOptions,
    client: &Client,
    (opened, target): (Opened, Option<&ImageRef>),
    dict: Option<&oci_ops::ChunkDictImage>,
    layout: &Path,
) -> Result<(PlatformReport, Value)> {
    let started = Instant::now();
    let Opened {
        image,
        want,
        name,
        manifest,
    } = opened;
    let source_size = image.layers.iter().filter_map(|l| l.size).sum();
    let platform = image
        .platform
        .clone()
        .unwrap_or_else(|| want.clone())
        .to_string();
    log::info!(
        "{name} ({platform}): converting {} layers",
        image.layers.len()
    );
    let copts = CreateOptions {
        source: PathBuf::from(&name),
        blob_dir: Some(layout.to_path_buf()),
        ..opts.create.clone()
    };
    let (manifest_digest, early) = match target {
        Some(target) => build_pushing(opts, client, target, (&copts, image, want), dict)?,
        None => (build(opts, (&copts, image, want), None, dict)?, Vec::new()),
    };
    let doc = read_layout_doc(layout, &manifest_digest)?;
    let report = PlatformReport {
        platform,
        source_manifest: manifest,
        source_size,
        // the layout's own manifest; a push may rewrite it (docker kind, subject)
        target_manifest: manifest_digest.clone(),
        target_size: 0,
        convert_seconds: started.elapsed().as_secs_f64(),
        blobs: early,
    };
    Ok((report, doc))
}

/// [`build`] with each finished layer blob pushed by a second thread while the next layer
/// converts.
fn build_pushing(
    opts: &ConvertOptions,
    client: &Client,
    target: &ImageRef,
    (copts, image, want): (&CreateOptions, oci::Image, Platform),
    dict: Option<&oci_ops::ChunkDictImage>,
) -> Result<(String, Vec<LayerReport>)> {
    let (tx, rx) = std::sync::mpsc::channel::<Finished>();
    std::thread::scope(|scope| -> Result<_> {
        let worker = scope.spawn(move || push_worker(client, target, rx));
        let built = {
            let on_layer = move |p: &Path| match Finished::open(p) {
                Ok(f) => {
                    let _ = tx.send(f);
                }
                Err(e) => log::warn!("{e}: pushed with the manifest instead"),
            };
            build(opts, (copts, image, want), Some(&on_layer), dict)
        };
        let pushed = worker
            .join()
            .map_err(|_| Error::Internal("the push thread panicked".into()))?;
        Ok((built?, pushed?))
    })
}

/// The converted layout of one image (nydus, nydus referencing its gzip layers, or native
/// EROFS layers); returns its manifest's digest.
fn build(
    opts: &ConvertOptions,
    (copts, image, want): (&CreateOptions, oci::Image, Platform),
    on_layer: oci_ops::OnLayer,
    dict: Option<&oci_ops::ChunkDictImage>,
) -> Result<String> {
    let out = match opts.layer_format {
        LayerFormat::Nydus if opts.oci_ref => {
            oci_ops::create_oci_ref_image(copts, image, want, on_layer)?.manifest
        }
        LayerFormat::Nydus => {
            oci_ops::create_oci_image(copts, image, want, &NoProgress, (on_layer, dict))?.manifest
        }
        LayerFormat::Erofs => {
            oci_ops::create_oci_erofs_image(copts, image, want, opts.erofs_compression, on_layer)?
                .manifest
        }
    };
    Ok(out)
}

/// A layer's blob, complete, opened at once (the layout moves it afterwards).
struct Finished {
    file: std::fs::File,
    digest: String,
    size: u64,
}

impl Finished {
    /// Opens a blob named by its sha256, as the layout names it.
    fn open(p: &Path) -> Result<Finished> {
        let file = std::fs::File::open(p).ctx("open", p)?;
        let size = file.metadata().ctx("stat", p)?.len();
        let hex = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        Ok(Finished {
            file,
            digest: format!("sha256:{hex}"),
            size,
        })
    }
}

/// Pushes each finished blob the target lacks, in the order they come.
fn push_worker(
    client: &Client,
    target: &ImageRef,
    rx: std::sync::mpsc::Receiver<Finished>,
) -> Result<Vec<LayerReport>> {
    let mut done = Vec::new();
    for f in rx {
        done.push(push_blob(client, target, &f)?);
    }
    Ok(done)
}

/// One blob made present in the target: uploaded unless it is there already.
fn push_blob(client: &Client, target: &ImageRef, f: &Finished) -> Result<LayerReport> {
    let started = Instant::now();
    let uploaded = if client.has_blob(target, &f.digest)? {
        client.skipped(&f.digest);
        false
    } else {
        client.push_file(target, &f.file, &f.digest, f.size)?;
        true
    };
    log::debug!(
        "{target}: blob {} ({} bytes) {}",
        f.digest,
        f.size,
        if uploaded { "pushed" } else { "already there" }
    );
    Ok(LayerReport {
        digest: f.digest.clone(),
        size: f.size,
        uploaded,
        push_seconds: started.elapsed().as_secs_f64(),
    })
}

fn read_layout_doc(layout: &Path, digest: &str) -> Result<Value> {
    let p = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let bytes = std::fs::read(&p).ctx("read", &p)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Unsupported {
        path: p,
        reason: format!("invalid JSON: {e}"),
    })
}

/// The gzip layers `--oci-ref` blobs name, made present in the target repository.
fn copy_referenced(
    client: &Client,
    (src, target): (&ImageRef, &ImageRef),
    source: &Manifest,
    descriptors: &[Value],
) -> Result<()> {
    let source_doc = parse_doc(&source.bytes, src)?;
    for d in descriptors {
        if let Some(orig) = d["annotations"][oci_ops::ANNOTATION_NYDUS_REF].as_str() {
            let size = source_doc["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["digest"] == orig)
                .and_then(|l| l["size"].as_u64())
                .unwrap_or(0);
            copy_blob(client, src, target, orig, size)?;
        }
    }
    Ok(())
}

/// The converted manifest as it is pushed: its kind chosen, its source named when asked.
fn final_manifest(
    opts: &ConvertOptions,
    mut doc: Value,
    source: Option<&Manifest>,
    config: (String, u64),
) -> Value {
    let docker = match opts.manifest_kind {
        ManifestKind::DockerV2 => true,
        ManifestKind::Oci => false,
        ManifestKind::Keep => source.is_some_and(|m| m.media_type == MEDIA_DOCKER_MANIFEST),
    };
    if docker {
        doc["mediaType"] = json!(MEDIA_DOCKER_MANIFEST);
        doc["config"]["mediaType"] = json!(MEDIA_DOCKER_CONFIG);
        for l in doc["layers"].as_array_mut().into_iter().flatten() {
            if l["mediaType"] == MEDIA_OCI_LAYER_GZIP {
                l["mediaType"] = json!(MEDIA_DOCKER_LAYER_GZIP);
            }
        }
    }
    if let (true, Some(source)) = (opts.with_referrer, source) {
        doc["subject"] = json!({
            "mediaType": if source.media_type.is_empty() { MEDIA_OCI_MANIFEST } else { &source.media_type },
            "digest": source.digest,
            "size": source.bytes.len(),
        });
    }
    doc["config"]["digest"] = json!(config.0);
    doc["config"]["size"] = json!(config.1);
    doc
}

/// Pushes a converted layout's blobs, then its manifest by digest.
fn push_platform(
    opts: &ConvertOptions,
    client: &Client,
    ends: &Ends,
    layout: &Path,
    source: Option<&Manifest>,
    (mut report, doc): (PlatformReport, Value),
) -> Result<(PlatformReport, Manifest)> {
    let Ends { src, target, dict } = *ends;
    let blobs_dir = layout.join("blobs/sha256");
    let mut descriptors: Vec<Value> = doc["layers"].as_array().cloned().unwrap_or_default();
    descriptors.push(doc["config"].clone());
    let early = std::mem::take(&mut report.blobs);
    // --oci-ref: the gzip layers the ref blobs name must be in the target repository too
    // (check() allows it into a registry only from a registry)
    if let (Some(src), Some(source)) = (src, source) {
        copy_referenced(client, (src, target), source, &descriptors)?;
    }
    for d in &descriptors {
        let digest = d["digest"].as_str().unwrap_or_default();
        let blob = match early.iter().find(|b| b.digest == digest) {
            Some(b) => b.clone(),
            None => {
                let path = blobs_dir.join(digest.trim_start_matches("sha256:"));
                match dict {
                    // a dictionary blob the image uses: from the dictionary's repository
                    Some(from) if !path.exists() => {
                        let size = d["size"].as_u64().unwrap_or(0);
                        copy_blob(client, from, target, digest, size)?;
                        LayerReport {
                            digest: digest.to_string(),
                            size,
                            uploaded: false,
                            push_seconds: 0.0,
                        }
                    }
                    _ => push_blob(client, target, &Finished::open(&path)?)?,
                }
            }
        };
        report.target_size += blob.size;
        report.blobs.push(blob);
    }
    let config = (
        doc["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        doc["config"]["size"].as_u64().unwrap_or(0),
    );
    let doc = final_manifest(opts, doc, source, config);
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    let manifest = Manifest {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        media_type: doc["mediaType"]
            .as_str()
            .unwrap_or(MEDIA_OCI_MANIFEST)
            .to_string(),
        bytes,
    };
    client.push_manifest(
        &target.at_digest(&manifest.digest),
        &manifest.bytes,
        &manifest.media_type,
    )?;
    report.target_manifest = manifest.digest.clone();
    Ok((report, manifest))
}

/// Puts the tag in place, last: the converted manifest itself when one platform was converted
/// and nothing is merged, else an index of them (after the source's own entries with
/// `--merge-platform`).
fn publish(
    opts: &ConvertOptions,
    client: &Client,
    src: &ImageRef,
    target: &ImageRef,
    converted: &[Converted],
) -> Result<String> {
    let tagged = target.at_tag(target.tag().unwrap_or("latest"));
    if let ([one], false) = (converted, opts.merge_platform) {
        let m = &one.manifest;
        client.push_manifest(&tagged, &m.bytes, &m.media_type)?;
        return Ok(m.digest.clone());
    }
    let mut entries = Vec::new();
    if opts.merge_platform {
        for c in converted {
            copy_manifest(client, src, target, &c.chosen.manifest)?;
            let mut e = source_entry(c.chosen);
            e["platform"] = c.platform.clone();
            entries.push(e);
        }
    }
    for c in converted {
        let mut e = json!({
            "mediaType": c.manifest.media_type,
            "digest": c.manifest.digest,
            "size": c.manifest.bytes.len(),
            "platform": c.platform,
        });
        if opts.merge_platform {
            e["artifactType"] = json!(ARTIFACT_NYDUS);
        }
        entries.push(e);
    }
    let docker = converted
        .iter()
        .all(|c| c.manifest.media_type == MEDIA_DOCKER_MANIFEST);
    let media = if docker {
        MEDIA_DOCKER_LIST
    } else {
        MEDIA_OCI_INDEX
    };
    let index = json!({"schemaVersion": 2, "mediaType": media, "manifests": entries});
    let bytes = serde_json::to_vec(&index).unwrap_or_default();
    client.push_manifest(&tagged, &bytes, media)?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
}

/// The source's own index entry for a manifest (or one made from it).
fn source_entry(c: &Chosen) -> Value {
    let mut e = c.descriptor.clone().unwrap_or_else(|| json!({}));
    e["mediaType"] = json!(if c.manifest.media_type.is_empty() {
        MEDIA_OCI_MANIFEST
    } else {
        &c.manifest.media_type
    });
    e["digest"] = json!(c.manifest.digest);
    e["size"] = json!(c.manifest.bytes.len());
    e
}

/// Makes a source manifest and its blobs present in the target repository: mounted when
/// both are on one registry, else streamed through.
fn copy_manifest(client: &Client, src: &ImageRef, target: &ImageRef, m: &Manifest) -> Result<()> {
    let doc = parse_doc(&m.bytes, src)?;
    let mut descriptors: Vec<Value> = doc["layers"].as_array().cloned().unwrap_or_default();
    descriptors.push(doc["config"].clone());
    for d in descriptors {
        let digest = d["digest"].as_str().unwrap_or_default();
        let size = d["size"].as_u64().unwrap_or(0);
        copy_blob(client, src, target, digest, size)?;
    }
    client.push_manifest(&target.at_digest(&m.digest), &m.bytes, &m.media_type)
}

/// Reads a chunk dictionary image (a nydus image in a registry): its bootstrap into `work`,
/// its blobs' sizes and the blob meta files of its bootstrap layer.
fn fetch_dict(
    client: &Client,
    r: &ImageRef,
    platforms: &Platforms,
    work: &Path,
) -> Result<oci_ops::ChunkDictImage> {
    let found = resolve(client, r, platforms)?;
    let doc = parse_doc(&found.chosen[0].manifest.bytes, r)?;
    let mut dict = oci_ops::ChunkDictImage {
        bootstrap: work.join("chunk-dict.boot"),
        ..Default::default()
    };
    let mut boot_layer = None;
    for l in doc["layers"].as_array().into_iter().flatten() {
        let digest = l["digest"].as_str().unwrap_or_default();
        let size = l["size"].as_u64().unwrap_or(0);
        if l["annotations"][oci_ops::ANNOTATION_BOOTSTRAP] == "true" {
            boot_layer = Some((digest.to_string(), size));
        } else if let Some(hex) = digest.strip_prefix("sha256:") {
            dict.blobs.insert(hex.to_string(), size);
        }
    }
    let (digest, size) = boot_layer.ok_or_else(|| Error::Unsupported {
        path: PathBuf::from(r.whole()),
        reason: "--chunk-dict: not a nydus image (its manifest has no bootstrap layer)".into(),
    })?;
    let gz = client.blob_reader(r, &digest, Some(size));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let what = || PathBuf::from(format!("{} bootstrap layer {digest}", r.whole()));
    let mut found_boot = false;
    for e in tar.entries().ctx("read", what())? {
        let mut e = e.ctx("read", what())?;
        let name = e.path().ctx("read", what())?.to_string_lossy().into_owned();
        if name == oci_ops::BOOTSTRAP_IN_LAYER {
            let mut f = std::fs::File::create(&dict.bootstrap).ctx("create", &dict.bootstrap)?;
            std::io::copy(&mut e, &mut f).ctx("read", what())?;
            found_boot = true;
        } else if let Some(id) = name
            .strip_prefix("image/")
            .and_then(|n| n.strip_suffix(".blob.meta"))
        {
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).ctx("read", what())?;
            dict.metas.insert(id.to_string(), bytes);
        }
    }
    if !found_boot {
        return Err(Error::Unsupported {
            path: what(),
            reason: format!("no {}", oci_ops::BOOTSTRAP_IN_LAYER),
        });
    }
    Ok(dict)
}

/// One blob of the source made present in the target.
pub(crate) fn copy_blob(
    client: &Client,
    src: &ImageRef,
    target: &ImageRef,
    digest: &str,
    size: u64,
) -> Result<()> {
    if client.has_blob(target, digest)? {
        return Ok(());
    }
    if src.registry() == target.registry()
        && src.repository() != target.repository()
        && client.mount(target, src, digest)
    {
        return Ok(());
    }
    let tmp = crate::io::staged::temp_in(std::env::temp_dir().as_path())?;
    let mut w = tmp.as_file();
    let mut r = client.blob_reader(src, digest, Some(size));
    let copied = std::io::copy(&mut r, &mut w).map_err(|e| Error::Registry {
        registry: src.registry().to_string(),
        what: format!("get blob {digest} ({})", src.repository()),
        reason: e.to_string(),
    })?;
    if copied != size {
        return Err(Error::Registry {
            registry: src.registry().to_string(),
            what: format!("get blob {digest} ({})", src.repository()),
            reason: format!("{copied} bytes, the manifest says {size}"),
        });
    }
    client.push_file(target, tmp.as_file(), digest, size)
}

fn write_json(opts: &ConvertOptions, out: &ConvertOutput) -> Result<()> {
    let Some(path) = &opts.output_json else {
        return Ok(());
    };
    let secs = |s: f64| (s * 1e9) as u64;
    let convert_s: f64 = out.platforms.iter().map(|p| p.convert_seconds).sum();
    let push_s: f64 = out
        .platforms
        .iter()
        .flat_map(|p| &p.blobs)
        .map(|b| b.push_seconds)
        .sum();
    // nydusify's five fields (nanoseconds), then what this tool adds
    let doc = json!({
        "SourceImageSize": out.platforms.iter().map(|p| p.source_size).sum::<u64>(),
        "TargetImageSize": out.platforms.iter().map(|p| p.target_size).sum::<u64>(),
        "SourcePullElapsed": 0,
        "ConversionElapsed": secs(convert_s),
        "TargetPushElapsed": secs(push_s),
        "source": out.source,
        "target": out.target,
        "source_digest": out.source_digest,
        "target_digest": out.target_digest,
        "platforms": out.platforms,
        "bytes_pushed": out.bytes_pushed,
        "seconds": out.seconds,
    });
    let mut outputs = Outputs::new();
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    outputs.add(write_temp(path, text.as_bytes(), None)?, path.clone());
    outputs.commit()
}
