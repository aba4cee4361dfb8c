//! An image opened for reading its data: the one way `check`, `export`, `unpack` and the
//! compressed export load a bootstrap.

use std::path::Path;

use crate::blob::reader::BlobSource;
use crate::error::Result;
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
        loaded.image.validate()?;
        let mut blobs = blobs.clone();
        if loaded.from_inline_blob && blobs.file.is_none() && blobs.dir.is_none() {
            blobs.file = Some(bootstrap.to_path_buf());
        }
        Ok(OpenedImage {
            image: loaded.image,
            blobs,
        })
    }
}
