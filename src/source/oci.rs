//! OCI image input: an image layout directory (`oci-layout`, `index.json`, `blobs/`), a tar of
//! one (oci-archive), or a `docker save` tar (`manifest.json` and layer tars; newer ones are
//! OCI layouts as well). Finds the image manifest for a platform and lists its layers with the
//! digests each must be checked against (formats/oci.md).
//!
//! A tar archive is indexed in one pass (name → data offset and size) and blobs are then read
//! in place, so nothing is unpacked. Only plain (uncompressed) archives can be read this way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::format::tar::{self as header, field, kind, Magic, BLOCK};

/// Largest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;
/// Index nesting followed at most.
const MAX_INDEX_DEPTH: usize = 4;

/// OCI image index media type.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The media type `docker save` layers have (an uncompressed tar).
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Index annotation naming an image in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Index annotation docker and containerd use for the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image's files served from elsewhere (a registry), by their names in an image layout
/// (`index.json`, `blobs/sha256/<hex>`).
pub trait RemoteFiles: Send + Sync {
    /// Names the store in messages (`registry/repository`).
    fn location(&self) -> &Path;
    /// Whether a file of that name is there.
    fn exists(&self, name: &str) -> bool;
    /// A reader of a file's bytes as they arrive, and its size (0 when unknown).
    fn reader(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)>;
}

/// Where an image's files are: a directory, a plain tar indexed once, or a registry.
pub enum Store {
    /// An image layout directory.
    Dir(PathBuf),
    /// A tar archive: each regular file's data offset and size, by normalised name.
    Archive {
        /// The archive.
        path: PathBuf,
        /// Name → (offset of the data, size).
        files: HashMap<String, (u64, u64)>,
    },
    /// A registry's repository, seen as an image layout.
    Remote(Box<dyn RemoteFiles>),
}

impl Store {
    /// Opens a layout directory, or indexes a tar archive.
    pub fn open(path: &Path) -> Result<Store> {
        let meta = std::fs::metadata(path).ctx("stat", path)?;
        if meta.is_dir() {
            return Ok(Store::Dir(path.to_path_buf()));
        }
        Ok(Store::Archive {
            path: path.to_path_buf(),
            files: index_tar(path)?,
        })
    }

    /// The store's own path.
    pub fn path(&self) -> &Path {
        match self {
            Store::Dir(p) => p,
            Store::Archive { path, .. } => path,
            Store::Remote(r) => r.location(),
        }
    }

    /// Names a file of the store in messages.
    pub fn describe(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Whether the store holds a regular file of that name.
    pub fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => safe_name(name).is_some() && d.join(name).is_file(),
            Store::Archive { files, .. } => files.contains_key(&normalise(name)),
            Store::Remote(r) => r.exists(name),
        }
    }

    /// A reader of a file's bytes and its size.
    pub fn reader(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let bad = || Error::Unsupported {
            path: self.describe(name),
            reason: "not a file of the image (names must stay inside it)".into(),
        };
        match self {
            Store::Dir(d) => {
                let rel = safe_name(name).ok_or_else(bad)?;
                let p = d.join(rel);
                let f = File::open(&p).ctx("open", &p)?;
                let size = f.metadata().ctx("stat", &p)?.len();
                Ok((Box::new(f), size))
            }
            Store::Archive { path, files } => {
                let (offset, size) = *files.get(&normalise(name)).ok_or_else(|| Error::Io {
                    op: "find",
                    path: self.describe(name),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file in the archive",
                    ),
                })?;
                let mut f = File::open(path).ctx("open", path)?;
                f.seek(SeekFrom::Start(offset)).ctx("seek", path)?;
                Ok((Box::new(f.take(size)), size))
            }
            Store::Remote(r) => r.reader(name),
        }
    }

    /// Reads and parses a JSON document of the store.
    pub fn json(&self, name: &str) -> Result<Value> {
        let (r, size) = self.reader(name)?;
        let path = self.describe(name);
        if size > MAX_JSON {
            return Err(Error::Limit(format!(
                "{}: {size} bytes of JSON, at most {MAX_JSON} are read",
                path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        r.take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .ctx("read", &path)?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(Error::Limit(format!(
                "{}: {size} bytes of JSON, at most {MAX_JSON} are read",
                path.display()
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Unsupported {
            path,
            reason: format!("invalid JSON: {e}"),
        })
    }
}

/// A relative name that stays inside a directory (no `..`, not absolute).
fn safe_name(name: &str) -> Option<PathBuf> {
    let n = normalise(name);
    if n.is_empty() || n.split('/').any(|c| c == "..") {
        return None;
    }
    Some(PathBuf::from(n))
}

/// Drops leading `/` and `./`, empty and `.` components; resolves `..` where it can.
fn normalise(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Indexes a plain tar: every regular file's data offset and size, and links resolved to the
/// files they point at (old `docker save` links identical layers to one another).
/// Hand-read rather than with the `tar` crate, to bound the memory a hostile header can claim
/// (formats/tar.md §6).
fn index_tar(path: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let f = File::open(path).ctx("open", path)?;
    let mut r = BufReader::with_capacity(64 << 10, f);
    let corrupt = |offset: u64, reason: String| Error::Tar {
        entry: path.display().to_string(),
        offset,
        reason,
    };
    let mut files: HashMap<String, (u64, u64)> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut pos: u64 = 0;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    loop {
        let mut h = [0u8; BLOCK];
        let got = read_block(&mut r, &mut h, path)?;
        if got == 0 && pos == 0 {
            return Err(corrupt(0, "empty file: not an image archive".into()));
        }
        if got < BLOCK || header::is_zero(&h) {
            break;
        }
        if pos == 0 {
            refuse_compressed(path, &h)?;
        }
        header::checksum_ok(&h).map_err(|e| corrupt(pos, e))?;
        let at = pos;
        pos += BLOCK as u64;
        let mut size =
            header::unsigned(header::raw(&h, field::SIZE), "size").map_err(|e| corrupt(at, e))?;
        if let Some(s) = pax.get(&b"size"[..]) {
            size = header::pax_unsigned(s, "size").map_err(|e| corrupt(at, e))?;
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let typeflag = h[field::TYPEFLAG];
        let read_body = |r: &mut BufReader<File>, limit: u64| -> Result<Vec<u8>> {
            if size > limit {
                return Err(corrupt(at, format!("extended header of {size} bytes")));
            }
            let mut body = vec![0u8; padded as usize];
            r.read_exact(&mut body).ctx("read", path)?;
            body.truncate(size as usize);
            Ok(body)
        };
        match typeflag {
            kind::GNU_LONGNAME => {
                long_name = Some(header::cstr(&read_body(&mut r, 1 << 20)?).to_vec());
            }
            kind::GNU_LONGLINK => {
                long_link = Some(header::cstr(&read_body(&mut r, 1 << 20)?).to_vec());
            }
            kind::PAX_LOCAL => {
                let body = read_body(&mut r, 1 << 20)?;
                for rec in header::pax_records(&body).map_err(|e| corrupt(at, e))? {
                    pax.insert(rec.key.to_vec(), rec.value.to_vec());
                }
            }
            _ => {
                let mut name = header::cstr(header::raw(&h, field::NAME)).to_vec();
                if header::magic(&h) == Magic::Posix {
                    let prefix = header::cstr(header::raw(&h, field::PREFIX));
                    if !prefix.is_empty() {
                        name = [prefix, b"/", &name].concat();
                    }
                }
                let name = pax
                    .remove(&b"path"[..])
                    .or(long_name.take())
                    .unwrap_or(name);
                let link = pax
                    .remove(&b"linkpath"[..])
                    .or(long_link.take())
                    .unwrap_or_else(|| header::cstr(header::raw(&h, field::LINKNAME)).to_vec());
                let name = normalise(&String::from_utf8_lossy(&name));
                let link = String::from_utf8_lossy(&link).into_owned();
                match typeflag {
                    kind::REGULAR | kind::REGULAR_OLD | kind::CONTIGUOUS => {
                        files.insert(name, (pos, size));
                    }
                    kind::HARDLINK => links.push((name, normalise(&link))),
                    kind::SYMLINK => {
                        let target = symlink_target(&name, &link);
                        links.push((name, target));
                    }
                    _ => {}
                }
                pax.clear();
                long_name = None;
                long_link = None;
                r.seek_relative(padded as i64).ctx("seek", path)?;
                pos += padded;
                continue;
            }
        }
        pos += padded;
    }
    resolve_links(&mut files, &links);
    Ok(files)
}

/// Fills `h` as far as the file allows; returns how many bytes it got.
fn read_block(r: &mut impl Read, h: &mut [u8; BLOCK], path: &Path) -> Result<usize> {
    let mut got = 0;
    while got < BLOCK {
        let n = r.read(&mut h[got..]).ctx("read", path)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Image archives are read in place: a compressed one is refused with what it is.
fn refuse_compressed(path: &Path, h: &[u8; BLOCK]) -> Result<()> {
    let c = super::tar::Compression::detect(&h[..6]);
    if c != super::tar::Compression::None {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "a {}-compressed archive: image archives are read in place, decompress it first",
                c.name()
            ),
        });
    }
    Ok(())
}

/// Where a symlink entry `name` pointing at `link` leads, as an archive path.
fn symlink_target(name: &str, link: &str) -> String {
    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    if link.starts_with('/') {
        normalise(link)
    } else {
        normalise(&format!("{dir}/{link}"))
    }
}

/// Links to files take the files' data; links to links resolve in a few rounds; cycles and
/// dangling links stay out.
fn resolve_links(files: &mut HashMap<String, (u64, u64)>, links: &[(String, String)]) {
    for _ in 0..8 {
        let mut changed = false;
        for (name, target) in links {
            if !files.contains_key(name) {
                if let Some(v) = files.get(target).copied() {
                    files.insert(name.clone(), v);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// An image platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture in GOARCH spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v8`), if any.
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::InvalidOption(format!(
                "--platform {s:?}: expected os/arch or os/arch/variant"
            )));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// The machine's own platform, as OCI spells it.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            a => a,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// The platform an index descriptor or a config states, if it states one.
    pub fn of(v: &Value) -> Option<Platform> {
        let os = v.get("os")?.as_str()?;
        let arch = v.get("architecture")?.as_str()?;
        Some(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: v.get("variant").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Whether an image of platform `have` runs here: os and architecture equal; a variant
    /// asked for must match (arm64 without a variant counts as v8).
    pub fn accepts(&self, have: &Platform) -> bool {
        if self.os != have.os || self.architecture != have.architecture {
            return false;
        }
        match (&self.variant, &have.variant) {
            (None, _) => true,
            (Some(w), Some(h)) => w == h,
            (Some(w), None) => self.architecture == "arm64" && w == "v8",
        }
    }
}

/// One layer of the chosen image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Its file in the store.
    pub name: String,
    /// Its media type (docker's uncompressed tar type when the source gives none).
    pub media_type: String,
    /// sha256 (hex) its stored bytes must have.
    pub digest: Option<String>,
    /// Size its stored bytes must have.
    pub size: Option<u64>,
    /// sha256 (hex) of its uncompressed tar, checked when the source gives no digest of the
    /// stored bytes (`docker save`'s manifest.json).
    pub diff_id: Option<String>,
}

/// The image chosen from a source.
pub struct Image {
    /// Where its files are.
    pub store: Store,
    /// Its layers, lowest first.
    pub layers: Vec<Layer>,
    /// Its config document.
    pub config: Value,
    /// The manifest's annotations, if any.
    pub manifest_annotations: Option<Value>,
    /// The annotations of the index entry that named it, if any.
    pub index_annotations: Option<Value>,
    /// Its platform, as its config (or index entry) states it.
    pub platform: Option<Platform>,
    /// Which document led to it: `index.json` or `manifest.json`.
    pub found_in: &'static str,
}

/// Splits `PATH:REF` when PATH exists and the whole does not.
pub fn split_ref(source: &Path) -> (PathBuf, Option<String>) {
    if source.exists() {
        return (source.to_path_buf(), None);
    }
    let s = source.to_string_lossy();
    match s.rsplit_once(':') {
        Some((p, r)) if !r.is_empty() && !r.contains('/') && Path::new(p).exists() => {
            (PathBuf::from(p), Some(r.to_string()))
        }
        _ => (source.to_path_buf(), None),
    }
}

/// The blob name of a digest (`sha256:<64 hex>` only).
fn blob_name(digest: &str, what: &Path) -> Result<(String, String)> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Unsupported {
            path: what.to_path_buf(),
            reason: format!("digest {digest:?} is not sha256:<64 hex digits>"),
        })?;
    let hex = hex.to_ascii_lowercase();
    Ok((format!("blobs/sha256/{hex}"), hex))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The names an index entry gives (`org.opencontainers.image.ref.name`, then
/// `io.containerd.image.name`).
fn ref_names(descriptor: &Value) -> Vec<String> {
    let Some(a) = descriptor.get("annotations") else {
        return Vec::new();
    };
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|k| str_field(a, k))
        .map(str::to_string)
        .collect()
}

/// Whether one of `names` is `want` (full name, or its tag).
fn named(names: &[String], want: &str) -> bool {
    names
        .iter()
        .any(|n| n == want || n.rsplit_once(':').is_some_and(|t| t.1 == want))
}

/// Appends the names of `more` that `names` lacks.
fn add_names(names: &mut Vec<String>, more: &[String]) {
    for n in more {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
}

/// An image manifest the index leads to: one entry (the same manifest may be listed again under
/// other names).
struct Candidate {
    digest: String,
    descriptor: Value,
    /// The entry's names, and those of the nested indexes leading to it.
    names: Vec<String>,
}

/// Collects every entry for an image manifest an index lists (nested indexes followed; their
/// names go to the manifests under them) whose blob the store holds. A manifest listed under
/// several names gives an entry for each; `select` merges them.
fn collect(
    store: &Store,
    index: &Value,
    depth: usize,
    above: &[String],
    out: &mut Vec<Candidate>,
) -> Result<()> {
    let Some(list) = index.get("manifests").and_then(Value::as_array) else {
        return Ok(());
    };
    for d in list {
        let Some(digest) = str_field(d, "digest") else {
            continue;
        };
        let Ok((name, _)) = blob_name(digest, store.path()) else {
            continue;
        };
        if !store.exists(&name) {
            continue;
        }
        let mut names = above.to_vec();
        add_names(&mut names, &ref_names(d));
        let media = str_field(d, "mediaType").unwrap_or("");
        if media == MEDIA_INDEX || media == DOCKER_LIST {
            if depth < MAX_INDEX_DEPTH {
                let nested = store.json(&name)?;
                collect(store, &nested, depth + 1, &names, out)?;
            }
            continue;
        }
        if !(media.is_empty() || media == MEDIA_MANIFEST || media == DOCKER_MANIFEST) {
            continue;
        }
        out.push(Candidate {
            digest: digest.to_string(),
            descriptor: d.clone(),
            names,
        });
    }
    Ok(())
}

/// The distinct images `reference` names (every image without one). Entries are matched by
/// name first; entries for the same manifest then count once, keeping the first matching
/// entry's descriptor and the names of all of them.
fn select(found: Vec<Candidate>, reference: Option<&str>) -> Vec<Candidate> {
    let mut images: Vec<Candidate> = Vec::new();
    for c in found {
        if reference.is_some_and(|r| !named(&c.names, r)) {
            continue;
        }
        match images.iter_mut().find(|i| i.digest == c.digest) {
            Some(image) => add_names(&mut image.names, &c.names),
            None => images.push(c),
        }
    }
    images
}

/// Every name the entries give, each once, in index order.
fn offered_names(found: &[Candidate]) -> Vec<String> {
    let mut names = Vec::new();
    for c in found {
        add_names(&mut names, &c.names);
    }
    names
}

/// The error for a `reference` no entry of index.json gives.
fn unnamed(store: &Store, reference: &str, offered: &[String]) -> Error {
    let listed = if offered.is_empty() {
        "its entries have no names".to_string()
    } else {
        format!("it names {}", offered.join(", "))
    };
    Error::Unsupported {
        path: store.describe("index.json"),
        reason: format!("no image manifest named {reference:?} ({listed})"),
    }
}

/// Opens `source` (`PATH` or `PATH:REF`) and picks the image for `want`.
pub fn open_image(source: &Path, want: &Platform) -> Result<Image> {
    let (path, reference) = split_ref(source);
    open_store(Store::open(&path)?, reference.as_deref(), want)
}

/// Picks the image for `want` (named `reference`, if given) from an opened store.
pub fn open_store(store: Store, reference: Option<&str>, want: &Platform) -> Result<Image> {
    let path = store.path().to_path_buf();
    let reference = reference.map(str::to_string);
    if store.exists("index.json") {
        let index = store.json("index.json")?;
        let mut found = Vec::new();
        collect(&store, &index, 0, &[], &mut found)?;
        let offered = offered_names(&found);
        let images = select(found, reference.as_deref());
        if !images.is_empty() {
            return from_index(store, images, want, reference.as_deref());
        }
        if !store.exists("manifest.json") {
            return Err(match &reference {
                Some(r) => unnamed(&store, r, &offered),
                None => Error::Unsupported {
                    path: store.describe("index.json"),
                    reason: "lists no image manifest whose blob is present".into(),
                },
            });
        }
        log::info!(
            "{}: no usable image manifest, reading manifest.json instead",
            store.describe("index.json").display()
        );
    }
    if store.exists("manifest.json") {
        return from_docker_manifest(store, want, reference.as_deref());
    }
    Err(Error::Unsupported {
        path,
        reason: "neither index.json nor manifest.json: not an OCI image layout, OCI archive or docker save archive".into(),
    })
}

fn from_index(
    store: Store,
    images: Vec<Candidate>,
    want: &Platform,
    reference: Option<&str>,
) -> Result<Image> {
    let mut seen = Vec::new();
    let mut chosen: Vec<(Candidate, Value, Value, Option<Platform>)> = Vec::new();
    for c in images {
        let (name, _) = blob_name(&c.digest, store.path())?;
        let manifest = store.json(&name)?;
        let config_digest = manifest
            .get("config")
            .and_then(|c| str_field(c, "digest"))
            .ok_or_else(|| Error::Unsupported {
                path: store.describe(&name),
                reason: "image manifest without a config digest".into(),
            })?;
        let (config_name, _) = blob_name(config_digest, &store.describe(&name))?;
        let config = store.json(&config_name)?;
        // the config states what the image is; the index entry may say so too
        let platform =
            Platform::of(&config).or_else(|| c.descriptor.get("platform").and_then(Platform::of));
        match &platform {
            Some(p) if !want.accepts(p) => {
                seen.push(p.to_string());
                continue;
            }
            _ => {}
        }
        chosen.push((c, manifest, config, platform));
    }
    if chosen.len() > 1 {
        let mut refs = Vec::new();
        for (c, ..) in &chosen {
            if c.names.is_empty() {
                add_names(&mut refs, std::slice::from_ref(&c.digest));
            } else {
                add_names(&mut refs, &c.names);
            }
        }
        return Err(Error::InvalidOption(format!(
            "{} holds {} images for {want}{}: name one as {}:REF ({})",
            store.path().display(),
            chosen.len(),
            reference
                .map(|r| format!(" named {r:?}"))
                .unwrap_or_default(),
            store.path().display(),
            refs.join(", ")
        )));
    }
    let Some((c, manifest, config, platform)) = chosen.pop() else {
        return Err(Error::InvalidOption(format!(
            "{} has no image for {want} (it has {})",
            store.path().display(),
            seen.join(", ")
        )));
    };
    let (mname, _) = blob_name(&c.digest, store.path())?;
    let mpath = store.describe(&mname);
    let list = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Unsupported {
            path: mpath.clone(),
            reason: "image manifest without layers".into(),
        })?;
    let mut layers = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let digest = str_field(d, "digest").ok_or_else(|| Error::Unsupported {
            path: mpath.clone(),
            reason: format!("layer {i} has no digest"),
        })?;
        let (name, hex) = blob_name(digest, &mpath)?;
        layers.push(Layer {
            name,
            media_type: str_field(d, "mediaType")
                .unwrap_or(MEDIA_MANIFEST)
                .to_string(),
            digest: Some(hex),
            size: d.get("size").and_then(Value::as_u64),
            diff_id: None,
        });
    }
    Ok(Image {
        store,
        layers,
        config,
        manifest_annotations: manifest.get("annotations").cloned(),
        index_annotations: c.descriptor.get("annotations").cloned(),
        platform,
        found_in: "index.json",
    })
}

/// `docker save`'s own list: `[{"Config": path, "RepoTags": [...], "Layers": [paths]}]`.
fn from_docker_manifest(store: Store, want: &Platform, reference: Option<&str>) -> Result<Image> {
    let mpath = store.describe("manifest.json");
    let doc = store.json("manifest.json")?;
    let entries = doc.as_array().ok_or_else(|| Error::Unsupported {
        path: mpath.clone(),
        reason: "not a list of images".into(),
    })?;
    let mut seen = Vec::new();
    let mut chosen = Vec::new();
    for e in entries {
        if let Some(r) = reference {
            let tagged = e
                .get("RepoTags")
                .and_then(Value::as_array)
                .is_some_and(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .any(|n| n == r || n.rsplit_once(':').is_some_and(|t| t.1 == r))
                });
            if !tagged {
                continue;
            }
        }
        let config_name = str_field(e, "Config").ok_or_else(|| Error::Unsupported {
            path: mpath.clone(),
            reason: "an entry without Config".into(),
        })?;
        let config = store.json(config_name)?;
        let platform = Platform::of(&config);
        if let Some(p) = &platform {
            if !want.accepts(p) {
                seen.push(p.to_string());
                continue;
            }
        }
        chosen.push((e, config, platform));
    }
    if chosen.len() > 1 {
        return Err(Error::InvalidOption(format!(
            "{} holds {} images for {want}: name one as {}:TAG",
            store.path().display(),
            chosen.len(),
            store.path().display()
        )));
    }
    let Some((e, config, platform)) = chosen.pop() else {
        return Err(Error::InvalidOption(format!(
            "{} has no image for {want}{}{}",
            mpath.display(),
            reference
                .map(|r| format!(" tagged {r:?}"))
                .unwrap_or_default(),
            if seen.is_empty() {
                String::new()
            } else {
                format!(" (it has {})", seen.join(", "))
            }
        )));
    };
    let layers = docker_layers(e, &config, &mpath)?;
    Ok(Image {
        store,
        layers,
        config,
        manifest_annotations: None,
        index_annotations: None,
        platform,
        found_in: "manifest.json",
    })
}

/// The layers of a `docker save` manifest entry, each with the diff_id its config gives.
fn docker_layers(e: &Value, config: &Value, mpath: &Path) -> Result<Vec<Layer>> {
    let names: Vec<&str> = e
        .get("Layers")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let diff_ids: Vec<&str> = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if diff_ids.len() != names.len() {
        return Err(Error::Unsupported {
            path: mpath.to_path_buf(),
            reason: format!(
                "{} layers but the config lists {} diff_ids",
                names.len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(names.len());
    for (name, diff_id) in names.into_iter().zip(diff_ids) {
        let (_, diff_hex) = blob_name(diff_id, mpath)?;
        // newer docker stores layers as blobs named by their digest
        let digest = normalise(name)
            .strip_prefix("blobs/sha256/")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string);
        layers.push(Layer {
            name: name.to_string(),
            media_type: DOCKER_LAYER.to_string(),
            digest,
            size: None,
            diff_id: Some(diff_hex),
        });
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let want = Platform::parse("linux/arm64/v8").unwrap();
        let have = |s: &str| Platform::parse(s).unwrap();
        assert!(want.accepts(&have("linux/arm64")));
        assert!(want.accepts(&have("linux/arm64/v8")));
        assert!(!want.accepts(&have("linux/arm64/v9")));
        assert!(Platform::parse("linux/amd64")
            .unwrap()
            .accepts(&have("linux/amd64/v3")));
        assert!(!Platform::parse("linux/amd64")
            .unwrap()
            .accepts(&have("windows/amd64")));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
        assert_eq!(have("linux/arm/v7").to_string(), "linux/arm/v7");
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise("./blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(normalise("a/../b/./c//d"), "b/c/d");
        assert_eq!(normalise("/x"), "x");
        assert!(safe_name("../etc/passwd").is_none());
        assert!(safe_name("a/../../b").is_none());
        assert!(safe_name("a/b").is_some());
    }

    /// A layout whose index lists manifest 1 as `a` and as `alias` (what `latest` usually is),
    /// and a nested index `multi` of manifests 1 and 2; every name resolves.
    #[test]
    #[allow(clippy::disallowed_methods)] // test scratch directories need no signal cleanup
    fn every_ref_resolves() {
        let d = tempfile::tempdir().unwrap();
        let digest = |n: u8| format!("sha256:{}", format!("{n:x}").repeat(64));
        let entry = |n: u8, media: &str, name: Option<&str>| {
            let mut e = serde_json::json!({"mediaType": media, "digest": digest(n), "size": 2});
            if let Some(name) = name {
                e["annotations"] = serde_json::json!({ REF_NAME: name });
            }
            e
        };
        let blobs = d.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |n: u8, doc: &Value| {
            let hex = &digest(n)["sha256:".len()..];
            std::fs::write(blobs.join(hex), doc.to_string()).unwrap();
        };
        put(1, &serde_json::json!({}));
        put(2, &serde_json::json!({}));
        put(
            3,
            &serde_json::json!({"manifests": [
                entry(1, MEDIA_MANIFEST, None),
                entry(2, MEDIA_MANIFEST, None),
            ]}),
        );
        let index = serde_json::json!({"manifests": [
            entry(1, MEDIA_MANIFEST, Some("a")),
            entry(1, MEDIA_MANIFEST, Some("alias")),
            entry(3, MEDIA_INDEX, Some("docker.io/x/multi:v1")),
        ]});
        let store = Store::Dir(d.path().to_path_buf());
        let found = || {
            let mut out = Vec::new();
            collect(&store, &index, 0, &[], &mut out).unwrap();
            out
        };
        let pick = |r: Option<&str>| -> Vec<(String, Option<String>, Vec<String>)> {
            select(found(), r)
                .into_iter()
                .map(|c| {
                    let own = ref_names(&c.descriptor).first().cloned();
                    (c.digest, own, c.names)
                })
                .collect()
        };
        let v = |names: &[&str]| -> Vec<String> { names.iter().map(|n| n.to_string()).collect() };
        assert_eq!(found().len(), 4, "an entry for each manifest listed");
        assert_eq!(pick(Some("a")), [(digest(1), Some("a".into()), v(&["a"]))]);
        // the entry kept is the one named: its annotations go to the output index
        assert_eq!(
            pick(Some("alias")),
            [(digest(1), Some("alias".into()), v(&["alias"]))]
        );
        let multi = v(&["docker.io/x/multi:v1"]);
        for r in ["v1", "docker.io/x/multi:v1"] {
            assert_eq!(
                pick(Some(r)),
                [
                    (digest(1), None, multi.clone()),
                    (digest(2), None, multi.clone())
                ]
            );
        }
        assert!(pick(Some("nope")).is_empty());
        // without a name: each image once, with every name it has
        assert_eq!(
            pick(None),
            [
                (
                    digest(1),
                    Some("a".into()),
                    v(&["a", "alias", "docker.io/x/multi:v1"])
                ),
                (digest(2), None, multi.clone()),
            ]
        );
        assert_eq!(
            offered_names(&found()),
            v(&["a", "alias", "docker.io/x/multi:v1"])
        );
        let err = unnamed(&store, "nope", &offered_names(&found())).to_string();
        assert!(
            err.contains(
                r#"no image manifest named "nope" (it names a, alias, docker.io/x/multi:v1)"#
            ),
            "{err}"
        );
    }
}
