//! An image opened for reading its data: the one way `check`, `export`, `unpack` and the
//! compressed export load a bootstrap.

use std::path::{Path, PathBuf};

use crate::blob::reader::BlobSource;
use crate::error::Result;
use crate::format::blob::BlobFeatures;
use crate::model::Image;
use crate::rafs;

/// A decoded, validated image and where its blobs are.
#[derive(Debug)]
pub struct OpenedImage {
    /// The decoded bootstrap, its invariants checked ([`Image::validate`]).
    pub image: Image,
    /// Where chunk data is read from. When the bootstrap was cut from the end of a blob
    /// (inline meta) and no blob was named, that blob is its own data blob.
    pub blobs: BlobSource,
}

impl OpenedImage {
    /// Loads `bootstrap` (or a blob with an inlined bootstrap) and validates it.
    pub fn open(bootstrap: &Path, blobs: &BlobSource) -> Result<OpenedImage> {
        let loaded = rafs::load(bootstrap)?;
        loaded
            .image
            .validate()
            .map_err(|e| crate::error::in_file(bootstrap, e))?;
        let mut blobs = blobs.clone();
        if loaded.from_inline_blob && blobs.file.is_none() && blobs.dir.is_none() {
            blobs.file = Some(bootstrap.to_path_buf());
        }
        if blobs.zran_meta.is_none() {
            blobs.zran_meta = zran_meta(&loaded, bootstrap, &blobs);
        }
        Ok(OpenedImage {
            image: loaded.image,
            blobs,
        })
    }
}

/// Where the meta of a converter `targz-ref` blob is, when the bootstrap records no meta digest
/// (formats/blob.md §11): the blob itself when it was given as the bootstrap, else the blob
/// that the bootstrap's file name (cut at the first dot) names in the blob directory, as
/// upstream's runtime finds it.
fn zran_meta(loaded: &rafs::Loaded, bootstrap: &Path, blobs: &BlobSource) -> Option<PathBuf> {
    let needed = loaded
        .image
        .blobs
        .iter()
        .any(|b| b.features.contains(BlobFeatures::SEPARATE) && b.refs.meta_id().is_none());
    if !needed {
        return None;
    }
    if loaded.from_inline_blob {
        return Some(bootstrap.to_path_buf());
    }
    let name = bootstrap.file_name()?.to_string_lossy().into_owned();
    let stem = name.split('.').next()?;
    let p = blobs.dir.as_ref()?.join(stem);
    p.is_file().then_some(p)
}
