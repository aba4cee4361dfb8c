//! The source side of `verify`: a directory walked, a tar streamed, or an OCI image's layers
//! streamed and stacked with the overlay rules, each regular file's data hashed as it is read.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::format::tar::{self as tarfmt, field, BLOCK};
use crate::model::overlay::{self, WhiteoutSpec};
use crate::model::stack::empty_tree;
use crate::model::{ChunkId, DataSource, FileType, InodeId, Tree};
use crate::source::tar::{DataLocation, FileData};
use crate::source::{dir, oci, tar};

use super::Side;

/// How a `verify` source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory, walked without following symlinks.
    Dir,
    /// One tar layer (plain, gzip, zstd or xz; a file, a fifo or `-`), whiteouts kept as
    /// files, as `create -t tar-rafs` keeps them.
    Tar,
    /// An OCI image (layout, OCI archive or `docker save` tar; `PATH:REF` picks one), its
    /// layers stacked with the OCI whiteout rules, as `create -t oci` stacks them.
    Oci,
}

impl std::str::FromStr for SourceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<SourceKind> {
        match s {
            "dir" | "directory" => Ok(SourceKind::Dir),
            "tar" => Ok(SourceKind::Tar),
            "oci" => Ok(SourceKind::Oci),
            _ => Err(Error::InvalidOption(format!(
                "invalid source type {s:?}: dir, tar or oci"
            ))),
        }
    }
}

/// Reads the source at `path` with its file data hashed.
pub(super) fn read(path: &Path, kind: Option<SourceKind>, platform: Option<&str>) -> Result<Side> {
    let kind = match kind {
        Some(k) => k,
        None => detect(path)?,
    };
    log::debug!("{}: read as a {kind:?} source", path.display());
    match kind {
        SourceKind::Dir => read_dir(path),
        SourceKind::Tar => {
            let mut hashing = Hashing::default();
            let tree = read_layer(path, tar::open_raw(path)?.0, &mut hashing)?;
            Ok(hashing.side(tree))
        }
        SourceKind::Oci => read_oci(path, platform),
    }
}

/// Tells the kind from what `path` is: a directory holding `oci-layout` or `index.json` is an
/// OCI layout, any other directory a tree; standard input is a tar; an uncompressed tar file
/// whose first entries include an image archive's (`oci-layout`, `index.json`,
/// `manifest.json`, `repositories`, `blobs/...`, or a `docker save` layer directory) is an OCI
/// image, any other file a tar layer.
fn detect(path: &Path) -> Result<SourceKind> {
    if tar::is_stdin(path) {
        return Ok(SourceKind::Tar);
    }
    if path.is_dir() {
        let layout = ["oci-layout", "index.json"]
            .iter()
            .any(|n| path.join(n).is_file());
        return Ok(if layout {
            SourceKind::Oci
        } else {
            SourceKind::Dir
        });
    }
    let (real, reference) = oci::split_ref(path);
    if reference.is_some() {
        return Ok(SourceKind::Oci);
    }
    let mut f = std::fs::File::open(&real).ctx("open", &real)?;
    let mut head = [0u8; BLOCK];
    let got = f.read(&mut head).ctx("read", &real)?;
    if got < BLOCK || tar::Compression::detect(&head[..6]) != tar::Compression::None {
        return Ok(SourceKind::Tar);
    }
    // image archives are small and list their own files first; a layer's first entries are
    // its root directory and top-level names
    let mut at = 0u64;
    for _ in 0..16 {
        if f.read_exact_at(&mut head, at).is_err() || tarfmt::is_zero(&head) {
            break;
        }
        let name =
            String::from_utf8_lossy(tarfmt::cstr(tarfmt::raw(&head, field::NAME))).into_owned();
        let first = name
            .trim_start_matches("./")
            .split('/')
            .next()
            .unwrap_or_default();
        let archive = [
            "oci-layout",
            "index.json",
            "manifest.json",
            "repositories",
            "blobs",
        ]
        .contains(&first)
            || (first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()));
        if archive {
            return Ok(SourceKind::Oci);
        }
        let Ok(size) = tarfmt::unsigned(tarfmt::raw(&head, field::SIZE), "size") else {
            break;
        };
        at += BLOCK as u64 + size.div_ceil(BLOCK as u64) * BLOCK as u64;
    }
    Ok(SourceKind::Tar)
}

/// One file of a directory source, read.
struct Hashed {
    inode: InodeId,
    digest: [u8; 32],
    bytes: u64,
}

fn read_dir(path: &Path) -> Result<Side> {
    let tree = dir::walk(path)?;
    let files: Vec<(InodeId, &Path)> = tree
        .inode_ids()
        .filter_map(|i| match tree[i].file().map(|f| &f.data) {
            Some(DataSource::Path(p)) => Some((i, &**p)),
            _ => None,
        })
        .collect();
    let hashed: Vec<Hashed> = files
        .par_iter()
        .map(|&(inode, p)| {
            let f = std::fs::File::open(p).ctx("open", p)?;
            let mut h = blake3::Hasher::new();
            let bytes = std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut h)
                .ctx("read", p)?;
            let digest = *h.finalize().as_bytes();
            Ok(Hashed {
                inode,
                digest,
                bytes,
            })
        })
        .collect::<Result<_>>()?;
    let empty = *blake3::hash(b"").as_bytes();
    let mut digests: Vec<Option<[u8; 32]>> = tree
        .inodes
        .iter()
        .map(|i| (i.file_type() == FileType::Regular).then_some(empty))
        .collect();
    let mut bytes = 0;
    for h in hashed {
        digests[h.inode.index()] = Some(h.digest);
        bytes += h.bytes;
    }
    Ok(Side {
        tree,
        digests,
        bytes,
    })
}

/// Hashes each file's data as the tar reader hands it over; the file's one "chunk" id is the
/// index of its digest, so the digests follow the inodes through the overlay merge.
#[derive(Default)]
struct Hashing {
    digests: Vec<[u8; 32]>,
    bytes: u64,
}

impl FileData for Hashing {
    fn file(
        &mut self,
        _inode: InodeId,
        data: &mut dyn Read,
        _size: u64,
        _location: DataLocation,
        name: &Path,
    ) -> Result<Option<Vec<ChunkId>>> {
        let mut h = blake3::Hasher::new();
        self.bytes += std::io::copy(data, &mut h).ctx("read", name)?;
        self.digests.push(*h.finalize().as_bytes());
        Ok(Some(vec![ChunkId::new(self.digests.len() as u32 - 1)]))
    }
}

impl Hashing {
    /// The side of `tree`, whose files carry digest indexes as chunk ids.
    fn side(self, tree: Tree) -> Side {
        let empty = *blake3::hash(b"").as_bytes();
        let digests = tree
            .inodes
            .iter()
            .map(|i| match i.file() {
                Some(f) => Some(match f.chunks.first() {
                    Some(c) => self.digests.get(c.index()).copied().unwrap_or(empty),
                    None => empty,
                }),
                None => None,
            })
            .collect();
        Side {
            tree,
            digests,
            bytes: self.bytes,
        }
    }
}

fn read_layer(what: &Path, raw: Box<dyn Read + Send>, hashing: &mut Hashing) -> Result<Tree> {
    let (mut plain, _) = tar::decompress(
        raw,
        what,
        crate::source::limits::DEFAULT_MAX_DECOMPRESS_MEMORY,
    )?;
    tar::read_tar(&mut plain, what, hashing).map_err(|e| crate::error::in_file(what, e))
}

fn read_oci(path: &Path, platform: Option<&str>) -> Result<Side> {
    let want = match platform {
        Some(p) => oci::Platform::parse(p)?,
        None => oci::Platform::host(),
    };
    let image = oci::open_image(path, &want)?;
    let mut hashing = Hashing::default();
    let mut tree = empty_tree();
    for l in &image.layers {
        let (raw, _) = image.store.reader(&l.name)?;
        let layer = read_layer(&image.store.describe(&l.name), raw, &mut hashing)?;
        // digest indexes are global across layers: chunk ids carry over unchanged
        overlay::apply(&mut tree, &layer, WhiteoutSpec::Oci, &|c| c);
    }
    Ok(hashing.side(tree.compact()))
}
