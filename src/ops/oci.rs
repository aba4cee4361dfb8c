//! `create -t oci`: converts a whole OCI image (layout directory, OCI archive or `docker save`
//! tar) into a nydus image written as an OCI image layout (formats/oci.md).
//!
//! Each layer is built like `create -t tar-rafs` (its bytes checked against its descriptor
//! while they are read), the per-layer bootstraps are merged like `merge`, and the result is
//! laid out as nydus-snapshotter's converter (used by nydusify and acceleration-service) lays
//! out a converted image: one layer per nydus data blob, then the image bootstrap as a gzipped
//! tar holding `image/image.boot` and, for RAFS v6, each blob's `image/<id>.blob.meta`
//! (formats/oci.md §4).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::io::staged::{temp_dir_beside, write_temp, NewPaths, Outputs};
use crate::model::overlay::WhiteoutSpec;
use crate::ops::create::{self, CreateOptions, LayerStream, Progress, SourceType};
use crate::ops::merge::{self, MergeOptions};
use crate::ops::report::Report;
use crate::source::oci::{self, Platform, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST};

/// Media type of a nydus data blob layer.
pub(crate) const MEDIA_NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// Media type of the bootstrap layer (a gzipped tar).
pub(crate) const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotation marking a data blob layer (value `"true"`).
pub(crate) const ANNOTATION_BLOB: &str = "containerd.io/snapshot/nydus-blob";
/// Annotation marking an encrypted data blob layer (value `"true"`), as the converter's
/// encrypted path sets it.
pub(crate) const ANNOTATION_ENCRYPTED_BLOB: &str = "containerd.io/snapshot/nydus-encrypted-blob";
/// Annotation naming the gzip layer a targz-ref blob references (`convert --oci-ref`).
pub const ANNOTATION_NYDUS_REF: &str = "containerd.io/snapshot/nydus-ref";
/// Annotation marking the bootstrap layer (value `"true"`).
pub const ANNOTATION_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
/// Annotation giving the RAFS version of the bootstrap layer (`"5"` or `"6"`).
pub(crate) const ANNOTATION_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
/// The platform feature an index gives nydus manifests.
pub(crate) const OS_FEATURE_NYDUS: &str = "nydus.remoteimage.v1";
/// Where the bootstrap lies inside the bootstrap layer.
pub const BOOTSTRAP_IN_LAYER: &str = "image/image.boot";
/// The history entry the converter appends to the config for the bootstrap layer.
const BOOTSTRAP_HISTORY_CREATED_BY: &str = "Nydus Converter";
/// Its comment.
const BOOTSTRAP_HISTORY_COMMENT: &str = "Nydus Bootstrap Layer";

/// containerd's media type of a native EROFS layer (`core/images/mediatypes.go`): its
/// EROFS differ copies such a blob as the layer, unconverted.
pub const MEDIA_EROFS_LAYER: &str = "application/vnd.erofs.layer.v1";
/// The platform feature that makes containerd unpack with its EROFS snapshotter and differ.
pub(crate) const OS_FEATURE_EROFS: &str = "erofs";

/// What the layers of a converted image are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerFormat {
    /// nydus data blobs and a bootstrap layer (formats/oci.md §4).
    #[default]
    Nydus,
    /// Native EROFS images, one per layer (formats/oci.md §6).
    Erofs,
}

/// Called with each layer's output (a nydus data blob, or an EROFS layer) as soon as it is
/// complete, while the next layer is converted: `convert` pushes it meanwhile.
pub(crate) type OnLayer<'a> = Option<&'a (dyn Fn(&Path) + Sync)>;

/// A chunk dictionary that lives in a registry (`convert --chunk-dict`): its bootstrap here,
/// its blobs there. Layers are built against it; the dictionary blobs the merged image uses
/// are listed in the manifest without being part of the layout.
#[derive(Debug, Default)]
pub(crate) struct ChunkDictImage {
    /// Its image bootstrap.
    pub bootstrap: PathBuf,
    /// Its blobs: id (sha256 hex) → size.
    pub blobs: std::collections::HashMap<String, u64>,
    /// The blob cache meta files its bootstrap layer carries (RAFS v6), by blob id.
    pub metas: std::collections::HashMap<String, Vec<u8>>,
}

/// What `create -t oci` produced.
#[derive(Debug, Clone)]
pub struct OciOutput {
    /// The image layout directory written.
    pub dir: PathBuf,
    /// The platform of the converted image.
    pub platform: String,
    /// Which source document led to the image (`index.json` or `manifest.json`).
    pub found_in: &'static str,
    /// Layers read.
    pub layers: usize,
    /// Digest of the manifest written.
    pub manifest: String,
    /// Digest of the config written.
    pub config: String,
    /// Data blobs, in blob-table (and manifest) order: their files under `blobs/sha256`.
    pub blobs: Vec<PathBuf>,
    /// The bootstrap layer's file under `blobs/sha256`.
    pub bootstrap_layer: PathBuf,
    /// The image bootstrap as a plain file, when `--bootstrap` asked for one.
    pub bootstrap: Option<PathBuf>,
    /// RAFS version.
    pub fs_version: u32,
}

fn check_options(opts: &CreateOptions) -> Result<&Path> {
    let bad = |m: &str| Err(Error::InvalidOption(m.to_string()));
    if opts.blob.is_some() {
        return bad("-t oci writes one blob per layer under --blob-dir; --blob is not allowed");
    }
    if opts.blob_inline_meta {
        return bad("--blob-inline-meta is not supported with -t oci");
    }
    if opts.parent_bootstrap.is_some() || opts.chunk_dict.is_some() {
        return bad("--parent-bootstrap and --chunk-dict are not supported with -t oci");
    }
    if opts.whiteout_spec != WhiteoutSpec::Oci {
        return bad("OCI layers spell whiteouts the OCI way: --whiteout-spec must be oci");
    }
    match &opts.blob_dir {
        Some(d) => Ok(d),
        None => bad("-t oci needs --blob-dir DIR: the image layout is written there"),
    }
}

/// Whether a layer media type is a tar layer we can read (compression is told by magic bytes).
fn readable_layer(media: &str) -> bool {
    !media.contains("nydus") && media.contains("tar") && !media.ends_with("+encrypted")
}

/// Converts the OCI image `opts.source` (`PATH` or `PATH:REF`) for `platform` (default: this
/// machine's) into a nydus image laid out in `opts.blob_dir`.
pub fn create_oci(
    opts: &CreateOptions,
    platform: Option<&str>,
    progress: &dyn Progress,
) -> Result<OciOutput> {
    let want = wanted(platform)?;
    let image = open_source(opts, &want)?;
    create_oci_image(opts, image, want, progress, (None, None))
}

/// The platform asked for, or this machine's.
fn wanted(platform: Option<&str>) -> Result<Platform> {
    match platform {
        Some(p) => Platform::parse(p),
        None => Ok(Platform::host()),
    }
}

/// Converts an image already opened (from a layout, an archive or a registry) into a nydus
/// image laid out in `opts.blob_dir`; `want` names its platform when the image does not.
pub(crate) fn create_oci_image(
    opts: &CreateOptions,
    image: oci::Image,
    want: Platform,
    progress: &dyn Progress,
    (on_layer, dict): (OnLayer, Option<&ChunkDictImage>),
) -> Result<OciOutput> {
    let mut t = Target::open(opts, want, image)?;
    // per-layer outputs are staged here and only the blobs the image uses move into blobs/
    let work = crate::io::staged::ScratchDir::new_in(&t.dir)?;
    // the per-layer builds and the merge see the dictionary; the layout never holds it
    let with_dict = CreateOptions {
        chunk_dict: dict.map(|d| d.bootstrap.clone()),
        ..opts.clone()
    };
    // against a dictionary, a layer may write a blob the merged image ends up not using:
    // only the merge tells, so nothing is handed on early
    let on_layer = if dict.is_some() { None } else { on_layer };
    let boots = convert_layers(&with_dict, &t.image, work.path(), progress, on_layer)?;
    let image_boot = work.path().join("image.boot");
    let merged = merge::merge(&MergeOptions {
        sources: boots,
        bootstrap: Some(image_boot.clone()),
        chunk_dict: with_dict.chunk_dict.clone(),
        whiteout_spec: WhiteoutSpec::Oci,
        prefetch: opts.prefetch.clone(),
        ..MergeOptions::default()
    })?;
    let mut layers = place_blobs(
        &merged.blobs,
        work.path(),
        &mut t.blobs,
        (opts.encrypt, dict),
    )?;
    let boot_bytes = std::fs::read(&image_boot).ctx("read", &image_boot)?;
    let mut files = vec![LayerFile {
        name: BOOTSTRAP_IN_LAYER.into(),
        bytes: boot_bytes.clone(),
    }];
    if merged.fs_version == 6 {
        files.extend(blob_meta_files(&image_boot, &t.blobs.dir, dict)?);
    }
    let boot_layer = layers.add_bootstrap(&mut t.blobs, &files, &merged, &image_boot)?;
    // the image appears at once: index, layout marker, bootstrap and report are put in place
    // together, after every blob they name
    let (config, manifest, p) =
        t.publish(opts, (&layers.diff_ids, layers.layers), LayerFormat::Nydus)?;
    let plain = match &opts.bootstrap {
        Some(p) => {
            t.outputs.add(write_temp(p, &boot_bytes, None)?, p.clone());
            Some(p.clone())
        }
        None => None,
    };
    let out = OciOutput {
        dir: t.final_dir.clone(),
        platform: p.to_string(),
        found_in: t.image.found_in,
        layers: t.image.layers.len(),
        manifest: format!("sha256:{}", manifest.hex),
        config: format!("sha256:{}", config.hex),
        blobs: layers.blob_paths.iter().map(|b| t.placed(b)).collect(),
        bootstrap_layer: t.placed(&boot_layer),
        bootstrap: plain,
        fs_version: merged.fs_version,
    };
    if let Some(j) = &opts.output_json {
        let mut report = Report::new(
            out.bootstrap
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            merged.blobs.clone(),
            out.fs_version,
            opts.compressor.unwrap_or(crate::codec::Compressor::Zstd),
        );
        report.extra.insert("manifest".into(), json!(out.manifest));
        report.extra.insert(
            "image_layout".into(),
            json!(t.final_dir.display().to_string()),
        );
        t.outputs
            .add(write_temp(j, report.pretty().as_bytes(), None)?, j.clone());
    }
    t.commit(work)?;
    Ok(out)
}

/// `convert --oci-ref` (nydusify's zran mode): every gzip layer stays in place and is
/// referenced, as nydus-snapshotter's converter does it (formats/oci.md §7.1). Each layer is
/// read once into the scratch directory (its digest checked), made into the converter's
/// targz-ref blob (`create -t targz-ref --blob-inline-meta --features blob-toc`), and the
/// per-layer bootstraps are merged with those blobs' digests, sizes and ToC digests. The
/// manifest lists the small ref blobs, each annotated with the gzip layer it references,
/// then the bootstrap layer; the gzip layers themselves are not part of it.
pub(crate) fn create_oci_ref_image(
    opts: &CreateOptions,
    image: oci::Image,
    want: Platform,
    on_layer: OnLayer,
) -> Result<OciOutput> {
    let mut t = Target::open(opts, want, image)?;
    let work = crate::io::staged::ScratchDir::new_in(&t.dir)?;
    let mut refs = Vec::with_capacity(t.image.layers.len());
    for (i, l) in t.image.layers.iter().enumerate() {
        let r = ref_layer(opts, &t.image, i, l, work.path(), &mut t.blobs)?;
        if let Some(f) = on_layer {
            f(&r.path);
        }
        refs.push(r);
    }
    let image_boot = work.path().join("image.boot");
    let merged = merge::merge(&MergeOptions {
        sources: refs.iter().map(|r| r.boot.clone()).collect(),
        bootstrap: Some(image_boot.clone()),
        blob_digests: refs.iter().map(|r| r.hex.clone()).collect(),
        blob_sizes: refs.iter().map(|r| r.size).collect(),
        blob_toc_digests: refs.iter().map(|r| r.toc_hex.clone()).collect(),
        whiteout_spec: WhiteoutSpec::Oci,
        prefetch: opts.prefetch.clone(),
        ..MergeOptions::default()
    })?;
    let mut layers = Layers {
        layers: Vec::new(),
        diff_ids: Vec::new(),
        blob_paths: Vec::new(),
    };
    let mut files = vec![LayerFile {
        name: BOOTSTRAP_IN_LAYER.into(),
        bytes: std::fs::read(&image_boot).ctx("read", &image_boot)?,
    }];
    for r in &refs {
        layers.layers.push(json!({
            "mediaType": MEDIA_NYDUS_BLOB,
            "digest": format!("sha256:{}", r.hex),
            "size": r.size,
            "annotations": {
                ANNOTATION_BLOB: "true",
                ANNOTATION_NYDUS_REF: format!("sha256:{}", r.original),
            },
        }));
        layers.diff_ids.push(json!(format!("sha256:{}", r.hex)));
        layers.blob_paths.push(r.path.clone());
        if let Some(meta) = &r.meta {
            files.push(LayerFile {
                name: format!("image/{}.blob.meta", r.hex),
                bytes: meta.clone(),
            });
        }
    }
    let boot_layer = layers.add_bootstrap(&mut t.blobs, &files, &merged, &image_boot)?;
    let (config, manifest, p) =
        t.publish(opts, (&layers.diff_ids, layers.layers), LayerFormat::Nydus)?;
    let out = OciOutput {
        dir: t.final_dir.clone(),
        platform: p.to_string(),
        found_in: t.image.found_in,
        layers: t.image.layers.len(),
        manifest: format!("sha256:{}", manifest.hex),
        config: format!("sha256:{}", config.hex),
        blobs: layers.blob_paths.iter().map(|b| t.placed(b)).collect(),
        bootstrap_layer: t.placed(&boot_layer),
        bootstrap: None,
        fs_version: merged.fs_version,
    };
    t.commit(work)?;
    Ok(out)
}

/// One layer's targz-ref blob, placed in `blobs/sha256`.
struct RefLayer {
    /// Its file.
    path: PathBuf,
    /// Its sha256 (hex): the blob's meta digest in the merged bootstrap.
    hex: String,
    size: u64,
    /// sha256 (hex) of its ToC entry's data, as the converter computes it.
    toc_hex: String,
    /// The gzip layer it references (hex).
    original: String,
    /// Its bootstrap, in the scratch directory.
    boot: PathBuf,
    /// The blob cache meta file (RAFS v6), for the bootstrap layer.
    meta: Option<Vec<u8>>,
}

fn ref_layer(
    opts: &CreateOptions,
    image: &oci::Image,
    i: usize,
    l: &oci::Layer,
    work: &Path,
    blobs: &mut Blobs,
) -> Result<RefLayer> {
    let where_ = image.store.describe(&l.name);
    if !l.media_type.contains("gzip") {
        return Err(Error::Unsupported {
            path: where_,
            reason: format!(
                "layer {i} has media type {}: --oci-ref references gzip layers only",
                l.media_type
            ),
        });
    }
    // the layer, once, into the scratch directory: targz-ref reads a file
    let gz = work.join(format!("layer-{i}.tar.gz"));
    let (raw, _) = image.store.reader(&l.name)?;
    let mut stored = crate::source::tar::Digesting::new(raw, true);
    let mut f = std::fs::File::create(&gz).ctx("create", &gz)?;
    std::io::copy(&mut stored, &mut f).ctx("read", &where_)?;
    drop(f);
    let (size, digest) = stored.finish();
    let expected = create::LayerDigests {
        digest: l.digest.clone(),
        size: l.size,
        diff_id: None,
    };
    expected.check(
        format!("layer {i} ({})", where_.display()),
        (size, digest.clone()),
        None,
    )?;
    let original = digest.unwrap_or_default();
    let blob = work.join(format!("layer-{i}.ref"));
    let boot = work.join(format!("layer-{i}.boot"));
    create::create(
        &CreateOptions {
            source: gz.clone(),
            source_type: SourceType::TargzRef,
            fs_version: 6,
            // the converter's blob carries the bootstrap (its image.boot entry)
            bootstrap: None,
            blob: Some(blob.clone()),
            blob_dir: None,
            blob_inline_meta: true,
            blob_toc: true,
            output_json: None,
            ..opts.clone()
        },
        &crate::ops::create::NoProgress,
    )?;
    std::fs::remove_file(&gz).ctx("remove", &gz)?;
    let boot_bytes = crate::blob::inline::extract_bootstrap(&blob)?;
    std::fs::write(&boot, &boot_bytes).ctx("write", &boot)?;
    let bytes = std::fs::read(&blob).ctx("read", &blob)?;
    let toc_hex = toc_digest(&bytes).ok_or_else(|| {
        Error::Internal(format!(
            "{}: no ToC at the end of the ref blob",
            blob.display()
        ))
    })?;
    let (hex, path) = blobs.put(&bytes)?;
    let meta = match crate::rafs::load(&boot)?.image.blobs.first() {
        Some(entry) => Some(crate::blob::reader::cache_meta_file(&path, entry)?),
        None => None,
    };
    Ok(RefLayer {
        path,
        hex,
        size: bytes.len() as u64,
        toc_hex,
        original,
        boot,
        meta,
    })
}

/// sha256 (hex) of a blob's ToC data: the entry whose tar header ends the blob
/// (formats/blob.md §9).
fn toc_digest(blob: &[u8]) -> Option<String> {
    let header = blob.len().checked_sub(512).map(|at| &blob[at..])?;
    let size_field = std::str::from_utf8(&header[124..136]).ok()?;
    let size =
        u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()?;
    let start = (blob.len() - 512).checked_sub(size as usize)?;
    Some(hex::encode(Sha256::digest(&blob[start..blob.len() - 512])))
}

/// What `create -t oci --layer-format erofs` produced.
#[derive(Debug, Clone)]
pub struct OciErofsOutput {
    /// The image layout directory written.
    pub dir: PathBuf,
    /// The platform of the converted image.
    pub platform: String,
    /// Layers converted.
    pub layers: usize,
    /// Digest of the manifest written.
    pub manifest: String,
    /// The EROFS layers, lowest first: their files under `blobs/sha256`.
    pub erofs_layers: Vec<PathBuf>,
}

/// Converts the OCI image `opts.source` into an image of native EROFS layers laid out in
/// `opts.blob_dir`: each layer made by `mkfs` as containerd's EROFS differ makes it
/// (`--tar=f --aufs -Enoinline_data`, compressed when asked), media type
/// [`MEDIA_EROFS_LAYER`], its `diff_id` its own digest, `os.features: ["erofs"]` in the config
/// and the index (formats/oci.md §6).
pub fn create_oci_erofs(
    opts: &CreateOptions,
    platform: Option<&str>,
    compression: Option<crate::ops::export_compressed::ErofsCompression>,
) -> Result<OciErofsOutput> {
    let want = wanted(platform)?;
    let image = open_source(opts, &want)?;
    create_oci_erofs_image(opts, image, want, compression, None)
}

/// [`create_oci_erofs`] of an image already opened.
pub(crate) fn create_oci_erofs_image(
    opts: &CreateOptions,
    image: oci::Image,
    want: Platform,
    compression: Option<crate::ops::export_compressed::ErofsCompression>,
    on_layer: OnLayer,
) -> Result<OciErofsOutput> {
    let mut t = Target::open(opts, want, image)?;
    let work = crate::io::staged::ScratchDir::new_in(&t.dir)?;
    let mut layers = Layers {
        layers: Vec::new(),
        diff_ids: Vec::new(),
        blob_paths: Vec::new(),
    };
    for (i, l) in t.image.layers.iter().enumerate() {
        let built = erofs_layer(opts, &t.image, i, l, work.path(), compression)?;
        layers.add_erofs(&built, &mut t.blobs)?;
        if let (Some(f), Some(p)) = (on_layer, layers.blob_paths.last()) {
            f(p);
        }
    }
    let (_config, manifest, p) =
        t.publish(opts, (&layers.diff_ids, layers.layers), LayerFormat::Erofs)?;
    let out = OciErofsOutput {
        dir: t.final_dir.clone(),
        platform: p.to_string(),
        layers: t.image.layers.len(),
        manifest: format!("sha256:{}", manifest.hex),
        erofs_layers: layers.blob_paths.iter().map(|b| t.placed(b)).collect(),
    };
    t.commit(work)?;
    Ok(out)
}

/// One layer as an EROFS image in `work`, its source bytes checked against the descriptor and
/// the config's diff_id while they are read. Reproducible: build time 0, the implied root
/// owned by 0:0, the UUID derived from the source layer's digest.
fn erofs_layer(
    opts: &CreateOptions,
    image: &oci::Image,
    i: usize,
    l: &oci::Layer,
    work: &Path,
    compression: Option<crate::ops::export_compressed::ErofsCompression>,
) -> Result<PathBuf> {
    use crate::ops::mkfs::{MkfsOptions, MkfsSource, Mtimes, Owners};
    let (raw, _) = image.store.reader(&l.name)?;
    let where_ = image.store.describe(&l.name);
    let output = work.join(format!("layer-{i}.erofs"));
    let mopts = MkfsOptions {
        output: output.clone(),
        source: MkfsSource::Tar(where_.clone()),
        compression,
        aufs: true,
        ovlfs_strip: false,
        uuid: layer_uuid(&l.digest.clone().unwrap_or_default()),
        label: None,
        build_time: 0,
        mtimes: Mtimes::Kept,
        owners: Owners::default(),
        xattrs: true,
        exclude: Vec::new(),
        incremental: false,
        process_ids: (0, 0),
        limits: opts.limits,
    };
    let mut stored = crate::source::tar::Digesting::new(raw, l.digest.is_some());
    let (input, _) = crate::source::tar::decompress(
        Box::new(&mut stored),
        &where_,
        opts.limits.decompress_memory,
    )?;
    let mut input = crate::source::tar::Digesting::new(input, l.diff_id.is_some());
    crate::ops::mkfs::mkfs_tar_stream(&mopts, &mut input, &where_)?;
    let diff = input.finish();
    std::io::copy(&mut stored, &mut std::io::sink()).ctx("read", &where_)?;
    let expected = create::LayerDigests {
        digest: l.digest.clone(),
        size: l.size,
        diff_id: l.diff_id.clone(),
    };
    expected.check(
        format!("layer {i} ({})", where_.display()),
        stored.finish(),
        diff.1,
    )?;
    Ok(output)
}

/// A version-4-shaped UUID drawn from a layer's digest, so that equal layers give equal images.
fn layer_uuid(digest: &str) -> [u8; 16] {
    let h = Sha256::digest(format!("erofs:blobs/{digest}").as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[..16]);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Where a conversion writes, and what it converts.
struct Target {
    /// The layout directory named on the command line.
    final_dir: PathBuf,
    /// Where the layout is built: a temporary name beside `final_dir` for a new layout (it
    /// appears whole at the end), or `final_dir` itself when adding to one.
    dir: PathBuf,
    outputs: Outputs,
    want: Platform,
    image: oci::Image,
    blobs: Blobs,
}

impl Target {
    fn open(opts: &CreateOptions, want: Platform, image: oci::Image) -> Result<Target> {
        let final_dir = check_options(opts)?.to_path_buf();
        check_layers(&image)?;
        let mut outputs = Outputs::new();
        let dir = if std::fs::symlink_metadata(&final_dir).is_err() {
            let tmp = temp_dir_beside(&final_dir)?;
            outputs.add_dir(tmp.clone(), final_dir.clone());
            tmp
        } else {
            final_dir.clone()
        };
        let mut blobs = Blobs {
            dir: dir.join("blobs/sha256"),
            created: NewPaths::default(),
        };
        blobs.created.create_dir_all(&blobs.dir)?;
        Ok(Target {
            final_dir,
            dir,
            outputs,
            want,
            image,
            blobs,
        })
    }

    /// Where a path inside the layout being built will be once the layout is in place.
    fn placed(&self, p: &Path) -> PathBuf {
        match p.strip_prefix(&self.dir) {
            Ok(rel) => self.final_dir.join(rel),
            Err(_) => p.to_path_buf(),
        }
    }

    /// Writes the converted image's config and manifest into the blobs, and stages the
    /// index naming it; returns the config, the manifest and the platform.
    fn publish(
        &mut self,
        opts: &CreateOptions,
        layers: (&[Value], Vec<Value>),
        format: LayerFormat,
    ) -> Result<(Written, Written, Platform)> {
        let (config, manifest, p) = write_documents(
            opts,
            (&self.image, self.want.clone()),
            layers,
            &mut self.blobs,
            format,
        )?;
        write_index(
            &self.dir,
            &self.image,
            &p,
            &manifest,
            &mut self.outputs,
            format,
        )?;
        Ok((config, manifest, p))
    }

    /// Puts the layout in place, after every blob it names, and keeps the blobs written.
    fn commit(self, work: crate::io::staged::ScratchDir) -> Result<()> {
        // the scratch directory lies inside the layout: gone before the layout moves
        drop(work);
        self.outputs.commit()?;
        self.blobs.created.keep();
        Ok(())
    }
}

/// Opens the source image.
fn open_source(opts: &CreateOptions, want: &Platform) -> Result<oci::Image> {
    let image = oci::open_image(&opts.source, want)?;
    log::info!(
        "{}: {} layers of the {} image (from {})",
        opts.source.display(),
        image.layers.len(),
        image
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unnamed platform".into()),
        image.found_in
    );
    Ok(image)
}

/// Checks that every layer of the image is one this tool can read.
fn check_layers(image: &oci::Image) -> Result<()> {
    for (i, l) in image.layers.iter().enumerate() {
        if !readable_layer(&l.media_type) {
            return Err(Error::Unsupported {
                path: image.store.describe(&l.name),
                reason: format!(
                    "layer {i} has media type {}: only tar layers (plain, gzip, zstd) can be converted",
                    l.media_type
                ),
            });
        }
    }
    Ok(())
}

/// Builds each layer (its digests checked as it streams) into `work`; returns their bootstraps.
fn convert_layers(
    opts: &CreateOptions,
    image: &oci::Image,
    work: &Path,
    progress: &dyn Progress,
    on_layer: OnLayer,
) -> Result<Vec<PathBuf>> {
    let mut boots = Vec::with_capacity(image.layers.len());
    for (i, l) in image.layers.iter().enumerate() {
        let (raw, _) = image.store.reader(&l.name)?;
        let where_ = image.store.describe(&l.name);
        let boot = work.join(format!("layer-{i}.boot"));
        let lopts = CreateOptions {
            source: where_.clone(),
            source_type: SourceType::Tar,
            bootstrap: Some(boot.clone()),
            blob: None,
            blob_dir: Some(work.to_path_buf()),
            output_json: None,
            ..opts.clone()
        };
        let out = create::create_layer(
            &lopts,
            progress,
            LayerStream {
                raw,
                what: format!("layer {i} ({})", where_.display()),
                digest: l.digest.clone(),
                size: l.size,
                diff_id: l.diff_id.clone(),
            },
        )?;
        log::info!(
            "layer {i}: {} entries, {} bytes of file data, blob {:?}",
            out.entries,
            out.data_bytes,
            out.blob_path
        );
        if let (Some(f), Some(b)) = (on_layer, &out.blob_path) {
            f(b);
        }
        boots.push(boot);
    }
    Ok(boots)
}

/// The manifest's layers and the config's diff_ids, as they are added.
struct Layers {
    layers: Vec<Value>,
    diff_ids: Vec<Value>,
    blob_paths: Vec<PathBuf>,
}

/// Moves the data blobs the merged image uses into `blobs_dir`, in its blob table's order;
/// `encrypted` (`--encrypt`) marks their layers as the converter does.
fn place_blobs(
    ids: &[String],
    work: &Path,
    blobs: &mut Blobs,
    (encrypted, dict): (bool, Option<&ChunkDictImage>),
) -> Result<Layers> {
    let mut out = Layers {
        layers: Vec::new(),
        diff_ids: Vec::new(),
        blob_paths: Vec::new(),
    };
    for id in ids {
        let staged = work.join(id);
        let dest = blobs.dir.join(id);
        let dict_size = dict.and_then(|d| d.blobs.get(id)).copied();
        let size = match dict_size {
            // a dictionary blob: named, not copied (the push brings it from its repository)
            Some(size) if !staged.exists() && !dest.exists() => size,
            _ => {
                if !dest.exists() {
                    blobs.created.rename(&staged, &dest)?;
                }
                out.blob_paths.push(dest.clone());
                std::fs::metadata(&dest).ctx("stat", &dest)?.len()
            }
        };
        let mut annotations = json!({ ANNOTATION_BLOB: "true" });
        if encrypted {
            annotations[ANNOTATION_ENCRYPTED_BLOB] = json!("true");
        }
        out.layers.push(json!({
            "mediaType": MEDIA_NYDUS_BLOB,
            "digest": format!("sha256:{id}"),
            "size": size,
            "annotations": annotations,
        }));
        out.diff_ids.push(json!(format!("sha256:{id}")));
    }
    Ok(out)
}

/// A file of the bootstrap layer: its path in the tar and its bytes.
struct LayerFile {
    name: String,
    bytes: Vec<u8>,
}

/// `image/<blob id>.blob.meta` for each blob of the image (RAFS v6): the blob cache's meta
/// file, which the snapshotter puts beside the bootstrap so that the kernel (fscache) and
/// nydusd find each blob's chunk table without fetching the blob first.
fn blob_meta_files(
    image_boot: &Path,
    blobs_dir: &Path,
    dict: Option<&ChunkDictImage>,
) -> Result<Vec<LayerFile>> {
    let image = crate::rafs::load(image_boot)?.image;
    let mut out = Vec::with_capacity(image.blobs.len());
    for b in &image.blobs {
        let path = blobs_dir.join(&b.id);
        let bytes = match dict.and_then(|d| d.metas.get(&b.id)) {
            Some(meta) if !path.exists() => meta.clone(),
            _ => crate::blob::reader::cache_meta_file(&path, b)?,
        };
        out.push(LayerFile {
            name: format!("image/{}.blob.meta", b.id),
            bytes,
        });
    }
    Ok(out)
}

impl Layers {
    /// Adds an EROFS layer built in the scratch directory: moved into `blobs/sha256` under
    /// its digest, which is also its diff_id (containerd's unpacker checks it so).
    fn add_erofs(&mut self, built: &Path, blobs: &mut Blobs) -> Result<()> {
        let (hex, size) = sha256_file(built)?;
        let dest = blobs.dir.join(&hex);
        if !dest.exists() {
            blobs.created.rename(built, &dest)?;
        }
        self.layers.push(json!({
            "mediaType": MEDIA_EROFS_LAYER,
            "digest": format!("sha256:{hex}"),
            "size": size,
        }));
        self.diff_ids.push(json!(format!("sha256:{hex}")));
        self.blob_paths.push(dest);
        Ok(())
    }

    /// Adds the bootstrap layer, a gzipped tar holding `files` under `image/`; returns its
    /// path.
    fn add_bootstrap(
        &mut self,
        blobs: &mut Blobs,
        files: &[LayerFile],
        merged: &merge::MergeOutput,
        image_boot: &Path,
    ) -> Result<PathBuf> {
        let tar = bootstrap_tar(files).ctx("write the bootstrap layer for", image_boot)?;
        let tar_digest = hex::encode(Sha256::digest(&tar));
        let gz = gzip(&tar).ctx("compress", image_boot)?;
        let (hex, path) = blobs.put(&gz)?;
        self.layers.push(json!({
            "mediaType": MEDIA_LAYER_GZIP,
            "digest": format!("sha256:{hex}"),
            "size": gz.len(),
            "annotations": {
                ANNOTATION_BOOTSTRAP: "true",
                ANNOTATION_FS_VERSION: merged.fs_version.to_string(),
            },
        }));
        self.diff_ids.push(json!(format!("sha256:{tar_digest}")));
        Ok(path)
    }
}

/// The config and manifest of a converted image, written after every blob they name, and
/// the platform its index entry names.
fn write_documents(
    opts: &CreateOptions,
    (image, want): (&oci::Image, Platform),
    (diff_ids, layers): (&[Value], Vec<Value>),
    blobs: &mut Blobs,
    format: LayerFormat,
) -> Result<(Written, Written, Platform)> {
    let config = write_config(opts, image, diff_ids, blobs, format)?;
    let manifest = write_manifest(image, &config, layers, blobs)?;
    let p = image.platform.clone().unwrap_or(want);
    Ok((config, manifest, p))
}

/// A document written into `blobs/sha256`: its digest (hex) and size.
struct Written {
    hex: String,
    size: usize,
}

/// The source config with the new layers' diff_ids.
fn write_config(
    opts: &CreateOptions,
    image: &oci::Image,
    diff_ids: &[Value],
    blobs: &mut Blobs,
    format: LayerFormat,
) -> Result<Written> {
    let mut config = image.config.clone();
    let obj = config.as_object_mut().ok_or_else(|| Error::Unsupported {
        path: opts.source.clone(),
        reason: "the image config is not a JSON object".into(),
    })?;
    obj.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    match format {
        // the converter appends one history entry for the bootstrap layer and keeps the rest
        LayerFormat::Nydus => {
            let history = obj.entry("history").or_insert_with(|| json!([]));
            if let Some(h) = history.as_array_mut() {
                h.push(json!({
                    "created_by": BOOTSTRAP_HISTORY_CREATED_BY,
                    "comment": BOOTSTRAP_HISTORY_COMMENT,
                }));
            }
        }
        // as containerd's EROFS converter (UpdateManifestPlatform): the platform feature
        LayerFormat::Erofs => {
            obj.insert("os.features".into(), json!([OS_FEATURE_EROFS]));
        }
    }
    let bytes = to_json(&config);
    let (hex, _) = blobs.put(&bytes)?;
    Ok(Written {
        hex,
        size: bytes.len(),
    })
}

fn write_manifest(
    image: &oci::Image,
    config: &Written,
    layers: Vec<Value>,
    blobs: &mut Blobs,
) -> Result<Written> {
    let mut manifest = Map::new();
    manifest.insert("schemaVersion".into(), json!(2));
    manifest.insert("mediaType".into(), json!(MEDIA_MANIFEST));
    manifest.insert(
        "config".into(),
        json!({
            "mediaType": MEDIA_CONFIG,
            "digest": format!("sha256:{}", config.hex),
            "size": config.size,
        }),
    );
    manifest.insert("layers".into(), Value::Array(layers));
    if let Some(a) = &image.manifest_annotations {
        manifest.insert("annotations".into(), a.clone());
    }
    let bytes = to_json(&Value::Object(manifest));
    let (hex, _) = blobs.put(&bytes)?;
    Ok(Written {
        hex,
        size: bytes.len(),
    })
}

/// `oci-layout` and `index.json`, naming the one manifest for `p`.
fn write_index(
    dir: &Path,
    image: &oci::Image,
    p: &Platform,
    manifest: &Written,
    outputs: &mut Outputs,
    format: LayerFormat,
) -> Result<()> {
    let mut platform_doc = Map::new();
    platform_doc.insert("architecture".into(), json!(p.architecture));
    platform_doc.insert("os".into(), json!(p.os));
    if let Some(v) = &p.variant {
        platform_doc.insert("variant".into(), json!(v));
    }
    let feature = match format {
        LayerFormat::Nydus => OS_FEATURE_NYDUS,
        LayerFormat::Erofs => OS_FEATURE_EROFS,
    };
    platform_doc.insert("os.features".into(), json!([feature]));
    let mut entry = Map::new();
    entry.insert("mediaType".into(), json!(MEDIA_MANIFEST));
    entry.insert("digest".into(), json!(format!("sha256:{}", manifest.hex)));
    entry.insert("size".into(), json!(manifest.size));
    entry.insert("platform".into(), Value::Object(platform_doc));
    if let Some(a) = &image.index_annotations {
        entry.insert("annotations".into(), a.clone());
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [Value::Object(entry)],
    });
    for (name, doc) in [
        ("oci-layout", json!({ "imageLayoutVersion": "1.0.0" })),
        ("index.json", index),
    ] {
        let path = dir.join(name);
        outputs.add(write_temp(&path, &to_json(&doc), None)?, path);
    }
    Ok(())
}

/// Compact JSON (keys sorted: serde_json's map is ordered by key), so output is reproducible.
fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The layout's `blobs/sha256`, and what this run added to it (removed again if the run fails
/// or is interrupted before the index names it).
struct Blobs {
    dir: PathBuf,
    created: NewPaths,
}

impl Blobs {
    /// Writes `bytes` as `blobs/sha256/<sha256>`; returns the hex digest and the path.
    fn put(&mut self, bytes: &[u8]) -> Result<(String, PathBuf)> {
        let hex = hex::encode(Sha256::digest(bytes));
        let path = self.dir.join(&hex);
        self.created.write(&path, bytes)?;
        Ok((hex, path))
    }
}

/// sha256 (hex) and size of a file, read in pieces.
fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let f = std::fs::File::open(path).ctx("open", path)?;
    let mut d = crate::source::tar::Digesting::new(f, true);
    std::io::copy(&mut d, &mut std::io::sink()).ctx("read", path)?;
    let (size, hex) = d.finish();
    Ok((hex.unwrap_or_default(), size))
}

/// gzip with a fixed header (no name, mtime 0), so equal input gives equal bytes.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// The bootstrap layer's tar, as the converter writes it: the directory `image` (0755), then
/// each file (0444); owner 0:0, mtime 0, ustar.
fn bootstrap_tar(files: &[LayerFile]) -> std::io::Result<Vec<u8>> {
    let mut t = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_path("image")?;
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_cksum();
    t.append(&dir, std::io::empty())?;
    for f in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(&f.name)?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o444);
        h.set_size(f.bytes.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        t.append(&h, f.bytes.as_slice())?;
    }
    t.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// An image layout served from memory, recording which file is opened when.
    struct Recorded {
        files: HashMap<String, Vec<u8>>,
        events: Arc<Mutex<Vec<String>>>,
        at: PathBuf,
    }

    impl oci::RemoteFiles for Recorded {
        fn location(&self) -> &Path {
            &self.at
        }
        fn exists(&self, name: &str) -> bool {
            self.files.contains_key(name)
        }
        fn reader(&self, name: &str) -> Result<(Box<dyn std::io::Read + Send>, u64)> {
            self.events.lock().unwrap().push(format!("open {name}"));
            let b = self.files[name].clone();
            let n = b.len() as u64;
            Ok((Box::new(std::io::Cursor::new(b)), n))
        }
    }

    fn one_file_tar(name: &str, body: &[u8]) -> Vec<u8> {
        let mut t = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append(&h, body).unwrap();
        t.into_inner().unwrap()
    }

    /// `convert` pushes a layer's blob while the next layer converts: the hook for layer N
    /// fires before layer N+1 is opened, whatever the timing.
    #[test]
    fn each_layer_is_handed_on_before_the_next_is_read() {
        let mut files = HashMap::new();
        let mut put = |bytes: Vec<u8>| {
            let hex = hex::encode(Sha256::digest(&bytes));
            files.insert(format!("blobs/sha256/{hex}"), bytes);
            hex
        };
        let layers: Vec<(String, usize)> = (0..3)
            .map(|i| {
                let t = one_file_tar(&format!("f{i}"), &vec![i as u8 + 1; 10_000]);
                let n = t.len();
                (put(t), n)
            })
            .collect();
        let config = put(
            json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
                .to_string()
                .into_bytes(),
        );
        let manifest = put(
            json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": format!("sha256:{config}"), "size": 1},
                "layers": layers.iter().map(|(h, n)| json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{h}"), "size": n})).collect::<Vec<_>>()})
            .to_string()
            .into_bytes(),
        );
        files.insert(
            "index.json".into(),
            json!({"schemaVersion": 2, "manifests": [{"mediaType": MEDIA_MANIFEST,
                "digest": format!("sha256:{manifest}"), "size": 1}]})
            .to_string()
            .into_bytes(),
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let store = oci::Store::Remote(Box::new(Recorded {
            files,
            events: events.clone(),
            at: PathBuf::from("memory"),
        }));
        let want = Platform::host();
        let image = oci::open_store(store, None, &want).unwrap();
        let dir = crate::io::staged::ScratchDir::new_in(&std::env::temp_dir()).unwrap();
        let opts = CreateOptions {
            source_type: SourceType::Tar,
            blob_dir: Some(dir.path().join("layout")),
            ..CreateOptions::default()
        };
        let seen = events.clone();
        let hook = move |p: &Path| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            seen.lock().unwrap().push(format!("blob {name}"));
        };
        create_oci_image(&opts, image, want, &create::NoProgress, (Some(&hook), None)).unwrap();
        let log = events.lock().unwrap().clone();
        let layer_opens: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, e)| layers.iter().any(|(h, _)| e.ends_with(h.as_str())))
            .map(|(i, _)| i)
            .collect();
        let blobs: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, e)| e.starts_with("blob "))
            .map(|(i, _)| i)
            .collect();
        assert_eq!((layer_opens.len(), blobs.len()), (3, 3), "{log:#?}");
        for i in 0..3 {
            assert!(layer_opens[i] < blobs[i], "{log:#?}");
            if i + 1 < 3 {
                assert!(blobs[i] < layer_opens[i + 1], "{log:#?}");
            }
        }
    }

    #[test]
    fn bootstrap_tar_reads_back() {
        let files = [
            LayerFile {
                name: BOOTSTRAP_IN_LAYER.into(),
                bytes: vec![7u8; 1000],
            },
            LayerFile {
                name: "image/ab.blob.meta".into(),
                bytes: vec![1u8; 8192],
            },
        ];
        let t = bootstrap_tar(&files).unwrap();
        assert_eq!(t.len() % 512, 0);
        for at in [0, 512, 2048] {
            let h: &[u8; 512] = t[at..at + 512].try_into().unwrap();
            crate::format::tar::checksum_ok(h).unwrap();
        }
        assert_eq!(&t[..6], b"image\0");
        assert_eq!(t[156], b'5');
        assert_eq!(
            &t[512..512 + BOOTSTRAP_IN_LAYER.len()],
            BOOTSTRAP_IN_LAYER.as_bytes()
        );
        assert_eq!(&t[512 + 100..512 + 107], b"0000444");
        assert_eq!(&t[1024..2024], &[7u8; 1000][..]);
        assert_eq!(&t[2048..2066], b"image/ab.blob.meta");
        assert_eq!(&t[2560..2560 + 8192], &[1u8; 8192][..]);
        assert_eq!(gzip(&t).unwrap(), gzip(&t).unwrap());
    }

    #[test]
    fn layer_media_types() {
        assert!(readable_layer(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(readable_layer(
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ));
        assert!(readable_layer(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!readable_layer(MEDIA_NYDUS_BLOB));
        assert!(!readable_layer(
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        ));
        assert!(!readable_layer("application/vnd.erofs"));
    }
}
