//! The image side of `verify`: the tree from the bootstrap, each regular file's data read back
//! from the blobs (chunk digests checked on the way) and hashed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, IoContext, Result};
use crate::model::{FileType, Image, Inode, InodeId};
use crate::ops::opened::OpenedImage;
use crate::rafs;
use crate::source::oci;

use super::Side;

/// Where the image's chunk data is read from.
enum Data {
    /// Blobs (or blob cache files) through the chunk reader.
    Blobs(BlobSource),
    /// An `export --block` image: each blob's uncompressed data at its device slot's block
    /// address in the same file (formats/rafs-v6.md §15).
    Flat(PathBuf),
}

/// Reads the image at `path` (a bootstrap, an inline-meta blob, an `export --block` image or a
/// `create -t oci` layout) with its file data hashed.
pub(super) fn read(path: &Path, blobs: &BlobSource) -> Result<Side> {
    let (image, data) = open(path, blobs)?;
    let digests = hash_files(&image, &data)?;
    let bytes = image
        .tree
        .inodes
        .iter()
        .filter(|i| i.file_type() == FileType::Regular)
        .map(Inode::size)
        .sum();
    Ok(Side {
        tree: image.tree,
        digests,
        bytes,
    })
}

fn open(path: &Path, blobs: &BlobSource) -> Result<(Image, Data)> {
    let given = blobs.file.is_some() || blobs.dir.is_some();
    if path.is_dir() {
        return open_layout(path, blobs);
    }
    let opened = OpenedImage::open(path, blobs)?;
    let image = opened.image;
    if !given && opened.blobs.file.is_none() && is_flat(&image, path)? {
        return Ok((image, Data::Flat(path.to_path_buf())));
    }
    let has_data = image.tree.inodes.iter().any(|i| !i.chunks().is_empty());
    if has_data && opened.blobs.file.is_none() && opened.blobs.dir.is_none() {
        return Err(Error::InvalidOption(format!(
            "{}: the image's data is in blobs: give -D BLOB_DIR or -b BLOB",
            path.display()
        )));
    }
    Ok((image, Data::Blobs(opened.blobs)))
}

/// Whether `path` is an `export --block` image: a v6 bootstrap whose file reaches past every
/// blob's data at the block address its device slot gives.
fn is_flat(image: &Image, path: &Path) -> Result<bool> {
    if image.version != 6 || image.blobs.is_empty() {
        return Ok(false);
    }
    let len = std::fs::metadata(path).ctx("stat", path)?.len();
    let block = u64::from(image.block_size);
    Ok(image.blobs.iter().all(|b| {
        b.mapped_blkaddr > 0
            && u64::from(b.mapped_blkaddr) * block + b.uncompressed_size / block * block <= len
    }))
}

/// An OCI image layout written by `create -t oci`: the bootstrap is `image/image.boot` in the
/// last layer (formats/oci.md §4.2), the data blobs are `blobs/sha256/<blob id>`.
fn open_layout(dir: &Path, blobs: &BlobSource) -> Result<(Image, Data)> {
    let img = oci::open_image(dir, &oci::Platform::host())?;
    let layer = img.layers.last().ok_or_else(|| Error::Unsupported {
        path: dir.to_path_buf(),
        reason: "the image has no layers: no nydus bootstrap layer".into(),
    })?;
    let where_ = img.store.describe(&layer.name);
    let (raw, _) = img.store.reader(&layer.name)?;
    let (plain, _) = crate::source::tar::decompress(
        raw,
        &where_,
        crate::source::limits::DEFAULT_MAX_DECOMPRESS_MEMORY,
    )?;
    let mut archive = ::tar::Archive::new(plain);
    let mut boot = None;
    for entry in archive.entries().ctx("read", &where_)? {
        let mut entry = entry.ctx("read", &where_)?;
        let name = entry.path().ctx("read", &where_)?.into_owned();
        if name == Path::new("image/image.boot") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).ctx("read", &where_)?;
            boot = Some(bytes);
            break;
        }
    }
    let boot = boot.ok_or_else(|| Error::Unsupported {
        path: where_.clone(),
        reason: "the last layer holds no image/image.boot: not a nydus image".into(),
    })?;
    let image = rafs::decode(&boot).map_err(|e| crate::error::in_file(&where_, e))?;
    image
        .validate()
        .map_err(|e| crate::error::in_file(&where_, e))?;
    let source = if blobs.file.is_some() || blobs.dir.is_some() {
        blobs.clone()
    } else {
        BlobSource {
            dir: Some(dir.join("blobs/sha256")),
            ..BlobSource::default()
        }
    };
    Ok((image, Data::Blobs(source)))
}

/// BLAKE3 of each regular file's data, by inode index; files are read in parallel, each
/// worker with its own chunk reader.
fn hash_files(image: &Image, data: &Data) -> Result<Vec<Option<[u8; 32]>>> {
    let files: Vec<InodeId> = image
        .tree
        .inode_ids()
        .filter(|i| image.tree[*i].file_type() == FileType::Regular)
        .collect();
    let hashed: Vec<[u8; 32]> = match data {
        Data::Blobs(source) => files
            .par_iter()
            .map_init(
                || ChunkReader::new(image, source.clone()),
                |reader, &i| {
                    let mut h = blake3::Hasher::new();
                    for id in image.tree[i].chunks() {
                        h.update(&reader.read(*id)?);
                    }
                    Ok(*h.finalize().as_bytes())
                },
            )
            .collect::<Result<_>>()?,
        Data::Flat(path) => {
            let f = File::open(path).ctx("open", path)?;
            files
                .par_iter()
                .map(|&i| hash_flat(image, &f, path, &image.tree[i]))
                .collect::<Result<_>>()?
        }
    };
    let mut out = vec![None; image.tree.inodes.len()];
    for (i, d) in files.iter().zip(hashed) {
        out[i.index()] = Some(d);
    }
    Ok(out)
}

fn hash_flat(image: &Image, f: &File, path: &Path, inode: &Inode) -> Result<[u8; 32]> {
    let block = u64::from(image.block_size);
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::new();
    for id in inode.chunks() {
        let c = image.chunks.get(id.index()).ok_or_else(|| Error::Corrupt {
            what: "chunk",
            offset: u64::from(id.get()),
            reason: "no such chunk".into(),
        })?;
        let blob = image
            .blobs
            .get(c.blob_index as usize)
            .ok_or_else(|| Error::Corrupt {
                what: "chunk",
                offset: u64::from(c.index),
                reason: "blob index outside the blob table".into(),
            })?;
        buf.resize(c.uncompressed_size as usize, 0);
        let at = u64::from(blob.mapped_blkaddr) * block + c.uncompressed_offset;
        f.read_exact_at(&mut buf, at).ctx("read chunk from", path)?;
        h.update(&buf);
    }
    Ok(*h.finalize().as_bytes())
}
