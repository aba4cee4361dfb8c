//! RAFS bootstraps: the encoders, the decoders, and the decoded [`Image`] model.

pub mod nydusd;
pub mod v5;
pub mod v6;

use std::path::Path;

use crate::error::{in_file, Error, IoContext, Result};
use crate::model::Tree;
use crate::model::{BlobEntry, ChunkInfo, Image};

/// Largest bootstrap this tool loads into memory.
pub const MAX_BOOTSTRAP_SIZE: u64 = 1 << 32;

/// Encodes a bootstrap of RAFS `version` (5 or 6).
pub fn encode(
    version: u32,
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobEntry],
    opts: &v6::EncodeOptions,
) -> Result<Vec<u8>> {
    if version == 5 {
        v5::encode::encode(tree, chunks, blobs, opts)
    } else {
        v6::encode(tree, chunks, blobs, opts)
    }
}

/// Encodes a tree with the settings of `like` (version, chunk size, compressor, digester,
/// uid/gid mode, tarfs), optionally as a single-device disk image (see
/// `EncodeOptions::single_device`), with a prefetch table naming `prefetch`: merge and export
/// re-encode decoded images this way.
pub fn encode_like(
    like: &Image,
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobEntry],
    single_device: bool,
    prefetch: Vec<crate::model::EntryId>,
) -> Result<Vec<u8>> {
    let opts = options_like(like, single_device, prefetch);
    encode(like.version, tree, chunks, blobs, &opts)
}

/// The encoder options [`encode_like`] uses: the settings of `like`.
pub fn options_like(
    like: &Image,
    single_device: bool,
    prefetch: Vec<crate::model::EntryId>,
) -> v6::EncodeOptions {
    use crate::format::rafs_v6::super_flags;
    v6::EncodeOptions {
        chunk_size: like.chunk_size,
        compressor: like.compressor,
        digester: like.digester,
        explicit_uid_gid: like.flags.contains(super_flags::EXPLICIT_UID_GID),
        block_size: if like.version == 5 {
            v6::encode::BLOCK_SIZE
        } else {
            u64::from(like.block_size)
        },
        tarfs: like.flags.contains(super_flags::TARTFS_MODE),
        single_device,
        prefetch,
        has_xattr: false,
    }
}

/// Decodes a bootstrap of either version.
pub fn decode(bytes: &[u8]) -> Result<Image> {
    if bytes.len() >= 4 && bytes[..4] == crate::format::rafs_v5::RAFS_V5_MAGIC.to_le_bytes() {
        return v5::decode::decode(bytes);
    }
    if bytes.len() >= 1028 && bytes[1024..1028] == crate::format::rafs_v6::EROFS_MAGIC.to_le_bytes()
    {
        return v6::decode::decode(bytes);
    }
    Err(crate::io::bytes::corrupt(
        "bootstrap",
        0,
        "neither a RAFS v5 nor a RAFS v6 (EROFS) superblock",
    ))
}

/// Reads a bootstrap file; a blob with an inlined bootstrap is accepted too.
pub fn read_bootstrap(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_bootstrap_raw(path)?;
    if is_bootstrap(&bytes) {
        return Ok(bytes);
    }
    inlined_bootstrap(path)
}

/// The bootstrap inlined at the end of the blob `path`; when there is none the error says
/// that the file is neither kind, with what the blob reader found.
fn inlined_bootstrap(path: &Path) -> Result<Vec<u8>> {
    crate::blob::inline::extract_bootstrap(path).map_err(|e| match e {
        Error::Corrupt { .. } => in_file(
            path,
            crate::io::bytes::corrupt(
                "bootstrap",
                0,
                &format!(
                    "no RAFS v5 or v6 superblock, and not a blob with an inlined bootstrap ({e})"
                ),
            ),
        ),
        other => in_file(path, other),
    })
}

/// A bootstrap as [`load`] found it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The decoded image.
    pub image: Image,
    /// Whether the bootstrap was cut from the end of a blob (inline meta); that blob then holds
    /// the image's data too.
    pub from_inline_blob: bool,
}

/// Loads and decodes a bootstrap file, or a blob with an inlined bootstrap; in the latter case
/// the placeholder blob id is replaced by the blob file's name.
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = read_bootstrap_raw(path)?;
    let from_blob = !is_bootstrap(&bytes);
    let bytes = if from_blob {
        inlined_bootstrap(path)?
    } else {
        bytes
    };
    let mut image = decode(&bytes).map_err(|e| in_file(path, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // an inlined bootstrap saved on its own names its blob as upstream does: the file name cut
    // at the first dot, when that is a blob id (`<id>.boot`, `<id>.image.boot`; blob.md §9)
    let stem = nydusd::file_prefix(path).unwrap_or_default();
    let named_by_id = stem.len() == 64 && stem.bytes().all(|c| c.is_ascii_hexdigit());
    if from_blob || named_by_id {
        let name = if from_blob {
            file_name
        } else {
            stem.to_string()
        };
        for b in &mut image.blobs {
            if !b.id.is_empty() && b.id.bytes().all(|c| c == b'x') {
                b.id = name.clone();
            }
        }
    }
    Ok(Loaded {
        image,
        from_inline_blob: from_blob,
    })
}

fn is_bootstrap(bytes: &[u8]) -> bool {
    let is_v5 = bytes.len() >= 4 && bytes[..4] == 0x5241_4653u32.to_le_bytes();
    let is_v6 = bytes.len() >= 1028
        && bytes[1024..1028] == crate::format::rafs_v6::EROFS_MAGIC.to_le_bytes();
    is_v5 || is_v6
}

fn read_bootstrap_raw(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).ctx("stat", path)?;
    if meta.is_file() && meta.len() > MAX_BOOTSTRAP_SIZE {
        // too large for a bootstrap: only its inlined tail can be one
        return Ok(Vec::new());
    }
    std::fs::read(path).ctx("read", path)
}

#[cfg(test)]
mod tests {
    //! Encode → decode round trips of a small tree holding every entry kind, both versions.

    use super::*;
    use crate::codec::{Compressor, Digester};
    use crate::model::BlobEntry;
    use crate::model::{ChunkId, DataSource, EntryId, FileType, Inode, InodeKind, RegularFile};

    fn sample() -> (Tree, Vec<ChunkInfo>) {
        let data = b"0123456789";
        let mut root = Inode::new(FileType::Directory, 0o755);
        root.mtime = 1_704_164_645;
        let mut tree = Tree::new(root);
        let mut file = Inode::with_kind(
            InodeKind::Regular(RegularFile {
                size: data.len() as u64,
                data: DataSource::None,
                chunks: vec![ChunkId::new(0)],
            }),
            0o640,
        );
        (file.uid, file.gid) = (1000, 100);
        (file.mtime, file.mtime_nsec) = (1_704_164_645, 123_456_789);
        file.set_xattrs(vec![(b"user.x".to_vec(), b"y".to_vec())]);
        let file = tree.add_inode(file);
        tree.add_entry(EntryId::ROOT, b"a", file).unwrap();
        let link = Inode::with_kind(
            InodeKind::Symlink {
                target: b"a".to_vec(),
            },
            0o777,
        );
        let link = tree.add_inode(link);
        tree.add_entry(EntryId::ROOT, b"l", link).unwrap();
        let dir = tree.add_inode(Inode::new(FileType::Directory, 0o700));
        let d = tree.add_entry(EntryId::ROOT, b"d", dir).unwrap();
        let dev = Inode::with_kind(InodeKind::CharDevice { rdev: 0x103 }, 0o600);
        let dev = tree.add_inode(dev);
        tree.add_entry(d, b"c", dev).unwrap();
        tree.add_entry(d, b"a2", file).unwrap();
        let fifo = tree.add_inode(Inode::new(FileType::Fifo, 0o644));
        tree.add_entry(EntryId::ROOT, b"f", fifo).unwrap();
        tree.sort();
        let chunk = ChunkInfo {
            digest: Digester::Blake3.digest(data),
            crc32: crate::codec::digest::crc32(data),
            has_crc32: true,
            encrypted: false,
            blob_index: 0,
            index: 0,
            compressed: false,
            compressed_offset: 0,
            compressed_size: data.len() as u32,
            uncompressed_offset: 0,
            uncompressed_size: data.len() as u32,
        };
        (tree, vec![chunk])
    }

    fn blob() -> BlobEntry {
        BlobEntry {
            chunk_count: 1,
            compressed_size: 10,
            uncompressed_size: 4096,
            features: crate::format::blob::BlobFeatures::CAP_TAR_TOC,
            ..BlobEntry::new("ab".repeat(32), Compressor::None, Digester::Blake3)
        }
    }

    /// Encoding options of the round trips: 1 MiB chunks, uncompressed, blake3.
    fn options(prefetch: Vec<EntryId>) -> v6::EncodeOptions {
        v6::EncodeOptions {
            chunk_size: 0x10_0000,
            compressor: Compressor::None,
            digester: Digester::Blake3,
            explicit_uid_gid: true,
            block_size: v6::encode::BLOCK_SIZE,
            tarfs: false,
            single_device: false,
            prefetch,
            has_xattr: false,
        }
    }

    #[test]
    fn every_entry_kind_survives_encode_and_decode_in_both_versions() {
        let (tree, chunks) = sample();
        let opts = options(Vec::new());
        for version in [5, 6] {
            let bytes = encode(version, &tree, &chunks, &[blob()], &opts).unwrap();
            let image = decode(&bytes).unwrap();
            image.validate().unwrap();
            assert_eq!(image.version, version);
            // the device slot's address is the layout's, not the entry's
            let mapped_blkaddr = image.blobs[0].mapped_blkaddr;
            assert_eq!(
                image.blobs,
                [BlobEntry {
                    mapped_blkaddr,
                    ..blob()
                }],
                "v{version}"
            );
            let (want, got) = (&tree, &image.tree);
            let paths = |t: &Tree| -> Vec<_> {
                t.numbering_order().into_iter().map(|e| t.path(e)).collect()
            };
            assert_eq!(paths(want), paths(got), "v{version}: entries");
            for (a, b) in want
                .numbering_order()
                .into_iter()
                .zip(got.numbering_order())
            {
                let (x, y) = (want.inode_of(a), got.inode_of(b));
                let what = format!("v{version} {}", want.path(a).display());
                assert_eq!(x.mode(), y.mode(), "{what}: mode");
                assert_eq!((x.uid, x.gid), (y.uid, y.gid), "{what}: owner");
                assert_eq!(x.target(), y.target(), "{what}: target");
                assert_eq!(x.rdev(), y.rdev(), "{what}: rdev");
                assert_eq!(x.xattrs, y.xattrs, "{what}: xattrs");
                if x.file_type() == FileType::Regular {
                    assert_eq!(x.size(), y.size(), "{what}: size");
                    assert_eq!((x.mtime, x.mtime_nsec), (y.mtime, y.mtime_nsec), "{what}");
                    let digests = |i: &Inode, c: &[ChunkInfo]| -> Vec<[u8; 32]> {
                        i.chunks().iter().map(|id| c[id.index()].digest).collect()
                    };
                    assert_eq!(digests(x, &chunks), digests(y, &image.chunks), "{what}");
                }
            }
            // the hardlink is one inode in both versions (v5 shares regular files)
            let a = got
                .numbering_order()
                .into_iter()
                .find(|e| got.path(*e).ends_with("a"));
            let a2 = got
                .numbering_order()
                .into_iter()
                .find(|e| got.path(*e).ends_with("a2"));
            assert_eq!(
                a.map(|e| got[e].inode),
                a2.map(|e| got[e].inode),
                "v{version}: hardlink"
            );
        }
    }

    #[test]
    fn prefetch_tables_survive_encode_and_decode_in_both_versions() {
        let (tree, chunks) = sample();
        let find = |name: &str| {
            tree.numbering_order()
                .into_iter()
                .find(|e| tree.path(*e) == std::path::Path::new(name))
                .unwrap()
        };
        let opts = options(vec![find("/d"), find("/a"), EntryId::ROOT]);
        for version in [5, 6] {
            let bytes = encode(version, &tree, &chunks, &[blob()], &opts).unwrap();
            let mut image = decode(&bytes).unwrap();
            image.validate().unwrap();
            let number = |path: &str| {
                let e = image
                    .tree
                    .numbering_order()
                    .into_iter()
                    .find(|e| image.tree.path(*e) == std::path::Path::new(path))
                    .unwrap();
                image.inode_numbers[image.tree[e].inode.index()]
            };
            let want = vec![number("/d"), number("/a"), number("/")];
            assert_eq!(image.prefetch, want, "v{version}");
            image.prefetch.push(1 << 30);
            assert!(
                image.validate().is_err(),
                "v{version}: a dangling entry is refused"
            );
        }
    }
}
