//! Output naming shared by the operations that write a bootstrap.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where a bootstrap goes: `-B PATH` when given, else `-D DIR/<sha256 of the bootstrap>`, as
/// nydus-image names it.
pub fn bootstrap_path(
    bootstrap: Option<&Path>,
    blob_dir: Option<&Path>,
    bytes: &[u8],
) -> Result<PathBuf> {
    match (bootstrap, blob_dir) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, Some(d)) => Ok(d.join(hex::encode(Sha256::digest(bytes)))),
        (None, None) => Err(Error::InvalidOption(
            "no output path for the bootstrap: give --bootstrap or --blob-dir".into(),
        )),
    }
}
