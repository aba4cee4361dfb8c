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

/// Reads the fields a target's input starts with, little-endian; past the end every field is
/// zero and every slice empty, so that any input is taken.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn word<const N: usize>(&mut self) -> [u8; N] {
        let mut w = [0u8; N];
        let b = self.bytes(N);
        w[..b.len()].copy_from_slice(b);
        w
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.word::<1>()[0]
    }

    /// The next u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.word())
    }

    /// The next u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.word())
    }

    /// The next u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.word())
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// An in-memory blob of `zeros` zero bytes followed by `tail`: a large blob whose interesting
/// part is its end, without allocating the rest.
pub struct ZeroPrefixed<'a> {
    /// Zero bytes before the tail.
    pub zeros: u64,
    /// The blob's last bytes.
    pub tail: &'a [u8],
    /// Read position.
    pub pos: u64,
}

impl ZeroPrefixed<'_> {
    /// Total length.
    pub fn len(&self) -> u64 {
        self.zeros + self.tail.len() as u64
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Read for ZeroPrefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = if self.pos < self.zeros {
            let n = (self.zeros - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            n
        } else {
            let at = (self.pos - self.zeros).min(self.tail.len() as u64) as usize;
            let n = (self.tail.len() - at).min(buf.len());
            buf[..n].copy_from_slice(&self.tail[at..at + n]);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for ZeroPrefixed<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            std::io::SeekFrom::Start(p) => Some(p),
            std::io::SeekFrom::End(d) => self.len().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}
