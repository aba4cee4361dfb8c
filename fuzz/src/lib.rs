//! Helpers shared by the fuzz targets.

use std::io::Read;
use std::path::Path;

use erofs_forge::fuzzing::{DataLocation, FileData};
use erofs_forge::ops::inspect;
use erofs_forge::Image;
use erofs_forge::InodeId;

/// Everything the read side does with a decoded image that needs no blob, errors ignored:
/// validation, the inspect requests, path building, numbering and link counts.
pub fn exercise_bootstrap(bytes: &[u8]) {
    let Ok(image) = erofs_forge::read::decode(bytes) else {
        return;
    };
    exercise_image(&image);
}

/// The blob-less read side of a decoded image.
pub fn exercise_image(image: &Image) {
    let _ = image.validate();
    for req in ["stats", "blobs", "prefetch", "ls /", "icheck 1", "chunk 0"] {
        let _ = inspect::request(image, req);
    }
    let order = image.tree.numbering_order();
    assert_eq!(order.len(), image.tree.entries.len());
    let _ = image.tree.link_counts();
    for e in image.tree.entry_ids().take(32) {
        let p = image.tree.path(e);
        let _ = inspect::request(image, &format!("stat {}", p.display()));
    }
}

/// A [`FileData`] that reads at most 1 MiB of each file (the rest is skipped by the reader),
/// so that a tiny archive declaring a huge sparse file stays fast.
pub struct Discard;

impl FileData for Discard {
    fn file(
        &mut self,
        _inode: InodeId,
        data: &mut dyn Read,
        _size: u64,
        _location: DataLocation,
        _name: &Path,
    ) -> erofs_forge::Result<Option<Vec<erofs_forge::ChunkId>>> {
        let _ = std::io::copy(&mut data.take(1 << 20), &mut std::io::sink());
        Ok(None)
    }
}

/// A [`FileData`] that keeps every file's bytes, by inode.
#[derive(Default)]
pub struct Capture {
    /// The data of each regular file read.
    pub files: std::collections::HashMap<InodeId, Vec<u8>>,
}

impl FileData for Capture {
    fn file(
        &mut self,
        inode: InodeId,
        data: &mut dyn Read,
        _size: u64,
        _location: DataLocation,
        name: &Path,
    ) -> erofs_forge::Result<Option<Vec<erofs_forge::ChunkId>>> {
        let mut v = Vec::new();
        data.read_to_end(&mut v)
            .map_err(|e| erofs_forge::Error::Io {
                op: "read",
                path: name.to_path_buf(),
                source: e,
            })?;
        self.files.insert(inode, v);
        Ok(None)
    }
}
