//! `create -t oci`: converts a whole OCI image (layout directory, OCI archive or `docker save`
//! tar) into a nydus image written as an OCI image layout (formats/oci.md).
//!
//! Each layer is built like `create -t tar-rafs` (its bytes checked against its descriptor
//! while they are read), the per-layer bootstraps are merged like `merge`, and the result is
//! laid out as nydusify lays out a converted image: one layer per nydus data blob, then the
//! image bootstrap as a gzipped tar holding `image/image.boot`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::io::staged::write_atomic;
use crate::model::overlay::WhiteoutSpec;
use crate::ops::create::{self, CreateOptions, LayerStream, Progress, SourceType};
use crate::ops::merge::{self, MergeOptions};
use crate::ops::report::Report;
use crate::source::oci::{self, Platform, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST};

/// Media type of a nydus data blob layer.
pub const MEDIA_NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// Media type of the bootstrap layer (a gzipped tar).
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotation marking a data blob layer (value `"true"`).
pub const ANNOTATION_BLOB: &str = "containerd.io/snapshot/nydus-blob";
/// Annotation marking the bootstrap layer (value `"true"`).
pub const ANNOTATION_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
/// Annotation giving the RAFS version of the bootstrap layer (`"5"` or `"6"`).
pub const ANNOTATION_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
/// Annotation listing the blob ids the bootstrap references (a JSON array of hex strings).
pub const ANNOTATION_BLOB_IDS: &str = "containerd.io/snapshot/nydus-blob-ids";
/// The platform feature an index gives nydus manifests.
pub const OS_FEATURE_NYDUS: &str = "nydus.remoteimage.v1";
/// Where the bootstrap lies inside the bootstrap layer.
pub const BOOTSTRAP_IN_LAYER: &str = "image/image.boot";

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
    let dir = check_options(opts)?.to_path_buf();
    let want = match platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let image = open_source(opts, &want)?;
    let blobs_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir).ctx("create", &blobs_dir)?;
    // per-layer outputs are staged here and only the blobs the image uses move into blobs/
    let work = crate::io::staged::ScratchDir::new_in(&dir)?;
    let boots = convert_layers(opts, &image, work.path(), progress)?;
    let image_boot = work.path().join("image.boot");
    let merged = merge::merge(&MergeOptions {
        sources: boots,
        bootstrap: Some(image_boot.clone()),
        whiteout_spec: WhiteoutSpec::Oci,
        ..MergeOptions::default()
    })?;
    let mut layers = place_blobs(&merged.blobs, work.path(), &blobs_dir)?;
    let boot_bytes = std::fs::read(&image_boot).ctx("read", &image_boot)?;
    let boot_layer = layers.add_bootstrap(&blobs_dir, &boot_bytes, &merged, &image_boot)?;
    let config = write_config(opts, &image, &layers.diff_ids, &blobs_dir)?;
    let manifest = write_manifest(&image, &config, layers.layers, &blobs_dir)?;
    let p = image.platform.clone().unwrap_or(want);
    write_index(&dir, &image, &p, &manifest)?;
    let plain = match &opts.bootstrap {
        Some(p) => {
            write_atomic(p, &boot_bytes)?;
            Some(p.clone())
        }
        None => None,
    };
    let out = OciOutput {
        dir: dir.clone(),
        platform: p.to_string(),
        found_in: image.found_in,
        layers: image.layers.len(),
        manifest: format!("sha256:{}", manifest.hex),
        config: format!("sha256:{}", config.hex),
        blobs: layers.blob_paths,
        bootstrap_layer: boot_layer,
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
        report
            .extra
            .insert("image_layout".into(), json!(dir.display().to_string()));
        write_atomic(j, report.pretty().as_bytes())?;
    }
    Ok(out)
}

/// Opens the source image and checks that every layer is one this tool can read.
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
    Ok(image)
}

/// Builds each layer (its digests checked as it streams) into `work`; returns their bootstraps.
fn convert_layers(
    opts: &CreateOptions,
    image: &oci::Image,
    work: &Path,
    progress: &dyn Progress,
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

/// Moves the data blobs the merged image uses into `blobs_dir`, in its blob table's order.
fn place_blobs(ids: &[String], work: &Path, blobs_dir: &Path) -> Result<Layers> {
    let mut out = Layers {
        layers: Vec::new(),
        diff_ids: Vec::new(),
        blob_paths: Vec::new(),
    };
    for id in ids {
        let staged = work.join(id);
        let dest = blobs_dir.join(id);
        if !dest.exists() {
            std::fs::rename(&staged, &dest).ctx("move into place", &staged)?;
        }
        let size = std::fs::metadata(&dest).ctx("stat", &dest)?.len();
        out.layers.push(json!({
            "mediaType": MEDIA_NYDUS_BLOB,
            "digest": format!("sha256:{id}"),
            "size": size,
            "annotations": { ANNOTATION_BLOB: "true" },
        }));
        out.diff_ids.push(json!(format!("sha256:{id}")));
        out.blob_paths.push(dest);
    }
    Ok(out)
}

impl Layers {
    /// Adds the bootstrap layer, a gzipped tar holding `image/image.boot`; returns its path.
    fn add_bootstrap(
        &mut self,
        blobs_dir: &Path,
        boot_bytes: &[u8],
        merged: &merge::MergeOutput,
        image_boot: &Path,
    ) -> Result<PathBuf> {
        let tar = bootstrap_tar(boot_bytes);
        let tar_digest = hex::encode(Sha256::digest(&tar));
        let gz = gzip(&tar).ctx("compress", image_boot)?;
        let (hex, path) = put_blob(blobs_dir, &gz)?;
        self.layers.push(json!({
            "mediaType": MEDIA_LAYER_GZIP,
            "digest": format!("sha256:{hex}"),
            "size": gz.len(),
            "annotations": {
                ANNOTATION_BOOTSTRAP: "true",
                ANNOTATION_FS_VERSION: merged.fs_version.to_string(),
                ANNOTATION_BLOB_IDS: serde_json::to_string(&merged.blobs).unwrap_or_default(),
            },
        }));
        self.diff_ids.push(json!(format!("sha256:{tar_digest}")));
        Ok(path)
    }
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
    blobs_dir: &Path,
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
    let bytes = to_json(&config);
    let (hex, _) = put_blob(blobs_dir, &bytes)?;
    Ok(Written {
        hex,
        size: bytes.len(),
    })
}

fn write_manifest(
    image: &oci::Image,
    config: &Written,
    layers: Vec<Value>,
    blobs_dir: &Path,
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
    let (hex, _) = put_blob(blobs_dir, &bytes)?;
    Ok(Written {
        hex,
        size: bytes.len(),
    })
}

/// `oci-layout` and `index.json`, naming the one manifest for `p`.
fn write_index(dir: &Path, image: &oci::Image, p: &Platform, manifest: &Written) -> Result<()> {
    let mut platform_doc = Map::new();
    platform_doc.insert("architecture".into(), json!(p.architecture));
    platform_doc.insert("os".into(), json!(p.os));
    if let Some(v) = &p.variant {
        platform_doc.insert("variant".into(), json!(v));
    }
    platform_doc.insert("os.features".into(), json!([OS_FEATURE_NYDUS]));
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
    write_atomic(
        &dir.join("oci-layout"),
        &to_json(&json!({ "imageLayoutVersion": "1.0.0" })),
    )?;
    write_atomic(&dir.join("index.json"), &to_json(&index))
}

/// Compact JSON (keys sorted: serde_json's map is ordered by key), so output is reproducible.
fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Writes `bytes` as `blobs/sha256/<sha256>`; returns the hex digest and the path.
fn put_blob(blobs_dir: &Path, bytes: &[u8]) -> Result<(String, PathBuf)> {
    let hex = hex::encode(Sha256::digest(bytes));
    let path = blobs_dir.join(&hex);
    write_atomic(&path, bytes)?;
    Ok((hex, path))
}

/// gzip with a fixed header (no name, mtime 0), so equal input gives equal bytes.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// A ustar header: name, mode, size, type; owner 0:0, mtime 0.
fn ustar_header(name: &str, mode: u32, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{:0w$o}", v, w = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    put(&mut h, 100, 8, u64::from(mode));
    put(&mut h, 108, 8, 0);
    put(&mut h, 116, 8, 0);
    put(&mut h, 124, 12, size);
    put(&mut h, 136, 12, 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The bootstrap layer's tar: the directory `image/` and `image/image.boot`.
fn bootstrap_tar(boot: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(boot.len() + 4096);
    t.extend_from_slice(&ustar_header("image/", 0o755, 0, b'5'));
    t.extend_from_slice(&ustar_header(
        BOOTSTRAP_IN_LAYER,
        0o644,
        boot.len() as u64,
        b'0',
    ));
    t.extend_from_slice(boot);
    t.resize(t.len().div_ceil(512) * 512 + 1024, 0);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tar_reads_back() {
        let boot = vec![7u8; 1000];
        let t = bootstrap_tar(&boot);
        assert_eq!(t.len() % 512, 0);
        for at in [0, 512] {
            let h: &[u8; 512] = t[at..at + 512].try_into().unwrap();
            crate::format::tar::checksum_ok(h).unwrap();
        }
        assert_eq!(
            &t[512..512 + BOOTSTRAP_IN_LAYER.len()],
            BOOTSTRAP_IN_LAYER.as_bytes()
        );
        assert_eq!(&t[1024..2024], &boot[..]);
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
