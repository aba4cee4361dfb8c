//! First pass of the v6 encoder: numbers the entries and assigns every inode, directory block,
//! symlink target and chunk index its place (formats/rafs-v6.md §12, §13). The second pass
//! (encode.rs) writes exactly at these places.

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::format::rafs_v6::{
    Dirent, InodeExtended, XattrEntry, XattrIbodyHeader, INODE_SLOT, ROOT_NID,
};
use crate::model::{EntryId, FileType, InodeId, Tree};

/// Offset of the root inode after `meta_addr`.
const ROOT_OFFSET: u64 = ROOT_NID * INODE_SLOT;

/// How an inode's data is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// All data blocks contiguous at `data_offset`.
    FlatPlain,
    /// Full blocks at `data_offset`, the partial tail right after the inode.
    FlatInline,
    /// Chunk indexes after the inode.
    ChunkBased,
    /// EROFS compressed file: map header and compacted lcluster indexes after the inode.
    CompressedCompact,
}

/// Where one inode goes.
#[derive(Debug, Clone, Copy)]
pub struct InodePlace {
    /// Offset of the inode relative to `meta_addr`.
    pub offset: u64,
    /// Offset (relative to `meta_addr`) of the first data block of a dir or symlink.
    pub data_offset: u64,
    /// Data layout.
    pub layout: DataLayout,
    /// Index of the first path of this inode (its `i_ino`).
    pub index: u32,
    /// Data size: dirent bytes, symlink target length, or file size.
    pub size: u64,
}

/// The complete placement of a tree's metadata.
#[derive(Debug)]
pub struct Layout {
    /// Placement of each inode, indexed like `Tree::inodes`; `None` for unreachable inodes.
    pub inodes: Vec<Option<InodePlace>>,
    /// Entries in numbering order (root first).
    pub order: Vec<EntryId>,
    /// Bytes of metadata after `meta_addr`, before the chunk table.
    pub end: u64,
    /// Size of each inode's xattr area (0 without xattrs).
    pub xattr_size: Vec<u64>,
}

/// Prefixes EROFS stores as a one-byte index (formats/rafs-v6.md §11), longest first where
/// one prefix extends another.
pub const XATTR_PREFIXES: [(&[u8], u8); 5] = [
    (b"system.posix_acl_default", 3),
    (b"system.posix_acl_access", 2),
    (b"user.", 1),
    (b"trusted.", 4),
    (b"security.", 6),
];

/// Splits an xattr name into its EROFS prefix index and the stored suffix.
pub fn split_xattr_name(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(p, idx)| (*idx, &name[p.len()..]))
}

/// Bytes of the inline xattr area of an inode (0 if it has none).
pub fn xattr_area_size(tree: &Tree, inode: InodeId, entry: EntryId) -> Result<u64> {
    let xattrs = &tree[inode].xattrs;
    if xattrs.is_empty() {
        return Ok(0);
    }
    let mut size = size_of::<XattrIbodyHeader>() as u64;
    for (name, value) in xattrs {
        let (_, suffix) = split_xattr_name(name).ok_or_else(|| Error::Unsupported {
            path: tree.path(entry),
            reason: format!(
                "xattr {:?} has a namespace EROFS cannot store",
                String::from_utf8_lossy(name)
            ),
        })?;
        if suffix.len() > 255 || value.len() > u16::MAX as usize {
            return Err(Error::Unsupported {
                path: tree.path(entry),
                reason: format!("xattr {:?} is too large", String::from_utf8_lossy(name)),
            });
        }
        size += (size_of::<XattrEntry>() + suffix.len() + value.len()).div_ceil(4) as u64 * 4;
    }
    if (size - 12) / 4 + 1 > u64::from(u16::MAX) {
        return Err(Error::Unsupported {
            path: tree.path(entry),
            reason: "xattrs take more space than an inode can address".into(),
        });
    }
    Ok(size)
}

/// Sorted directory entries of a directory, `.` and `..` included: (name, entry it points to).
pub fn dirents(tree: &Tree, dir: EntryId) -> Vec<(&[u8], EntryId)> {
    let e = &tree[dir];
    let mut list: Vec<(&[u8], EntryId)> = Vec::with_capacity(e.children.len() + 2);
    list.push((b".", dir));
    list.push((b"..", e.parent));
    list.extend(e.children.iter().map(|c| (tree[*c].name.as_slice(), *c)));
    list.sort_by(|a, b| a.0.cmp(b.0));
    list
}

/// Splits sorted dirents into blocks; returns the ranges of each block and the `i_size`.
pub fn pack_dirents(names: &[&[u8]], block: u64) -> (Vec<std::ops::Range<usize>>, u64) {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut used = 0u64;
    let mut full = 0u64;
    for (i, name) in names.iter().enumerate() {
        let need = (size_of::<Dirent>() + name.len()) as u64;
        if used + need > block {
            blocks.push(start..i);
            start = i;
            full += 1;
            used = 0;
        }
        used += need;
    }
    blocks.push(start..names.len());
    (blocks, full * block + used)
}

/// The partial-block free lists of the allocator (formats/rafs-v6.md §12).
struct Allocator {
    block: u64,
    cursor: u64,
    free: Vec<VecDeque<u64>>,
}

impl Allocator {
    fn new(block: u64) -> Allocator {
        Allocator {
            block,
            // the root sits one 4 KiB block after meta_addr whatever the block size
            // (formats/rafs-v6.md §1), so its nid is always 128
            cursor: ROOT_OFFSET,
            free: vec![VecDeque::new(); (block / INODE_SLOT) as usize],
        }
    }

    fn mark_partial(&mut self, off: u64) {
        let rem = off % self.block;
        if rem != 0 {
            self.free[((self.block - rem) / INODE_SLOT) as usize].push_back(off - rem);
        }
    }

    fn take_partial(&mut self, size: u64) -> Option<u64> {
        if size >= self.block {
            return None;
        }
        let need = size.div_ceil(INODE_SLOT);
        for k in need..self.block / INODE_SLOT {
            if let Some(base) = self.free[k as usize].pop_front() {
                let start = base + self.block - INODE_SLOT * k;
                self.mark_partial(start + INODE_SLOT * need);
                return Some(start);
            }
        }
        None
    }

    fn align(&mut self, to: u64) {
        self.cursor = self.cursor.div_ceil(to) * to;
    }

    /// Places an inode with `inode_size` bytes of inode+xattrs and `d` bytes of block data.
    /// Returns (inode offset, data offset, layout).
    fn place_with_data(&mut self, inode_size: u64, d: u64) -> (u64, u64, DataLayout) {
        let b = self.block;
        let tail = d % b;
        let result = if tail != 0 && inode_size + tail <= b {
            let start = match self.take_partial(inode_size + tail) {
                Some(s) => s,
                None => {
                    if b - self.cursor % b < inode_size + tail {
                        self.mark_partial(self.cursor);
                        self.align(b);
                    }
                    let s = self.cursor;
                    self.cursor += inode_size + tail;
                    s
                }
            };
            if d != tail {
                self.mark_partial(self.cursor);
                self.align(b);
            }
            let data = self.cursor;
            self.cursor += d - tail;
            (start, data, DataLayout::FlatInline)
        } else {
            let start = match self.take_partial(inode_size) {
                Some(s) => s,
                None => {
                    let s = self.cursor;
                    self.cursor += inode_size;
                    s
                }
            };
            self.mark_partial(self.cursor);
            self.align(b);
            let data = self.cursor;
            self.cursor += d;
            self.align(b);
            (start, data, DataLayout::FlatPlain)
        };
        self.align(INODE_SLOT);
        result
    }

    fn place_file(&mut self, total: u64) -> u64 {
        let start = match self.take_partial(total) {
            Some(s) => s,
            None => {
                let s = self.cursor;
                self.cursor += total;
                s
            }
        };
        self.align(INODE_SLOT);
        start
    }

    fn place_special(&mut self, inode_size: u64) -> u64 {
        let start = self.cursor;
        self.cursor += inode_size;
        self.align(INODE_SLOT);
        start
    }
}

/// How a regular file's body is laid out after its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegularLayout {
    /// This many 8-byte slots (chunk indexes, or a compressed file's map header and indexes).
    Slots(u64),
    /// This many bytes of data, placed like a symlink target (inline tail or plain blocks).
    Data(u64),
    /// Data in blocks outside the metadata (a standalone image's plain files): the inode alone.
    External,
    /// A compressed file's map header and compacted indexes for this many lclusters, whose
    /// size depends on where the inode ends ([`super::zmap::compact_len`]).
    CompactIndex(u64),
}

/// Places a regular file's inode, and its data when that lives in the metadata.
fn place_regular(
    alloc: &mut Allocator,
    how: RegularLayout,
    inode_bytes: u64,
    index: u32,
    size: u64,
) -> InodePlace {
    let (offset, data_offset, layout, size) = match how {
        RegularLayout::Slots(count) => {
            let total = inode_bytes.div_ceil(8) * 8 + 8 * count;
            (alloc.place_file(total), 0, DataLayout::ChunkBased, size)
        }
        RegularLayout::CompactIndex(lclusters) => {
            // inodes start on 32-byte slots, so the inode's size places the indexes
            let total =
                inode_bytes.div_ceil(8) * 8 + super::zmap::compact_len(lclusters, inode_bytes);
            (alloc.place_file(total), 0, DataLayout::ChunkBased, size)
        }
        RegularLayout::External => (
            alloc.place_file(inode_bytes),
            0,
            DataLayout::FlatPlain,
            size,
        ),
        RegularLayout::Data(d) => {
            let (offset, data_offset, layout) = alloc.place_with_data(inode_bytes, d);
            (offset, data_offset, layout, d)
        }
    };
    InodePlace {
        offset,
        data_offset,
        layout,
        index,
        size,
    }
}

impl Layout {
    /// Where inode `ino` was placed, if it is reachable.
    pub fn place(&self, ino: InodeId) -> Option<InodePlace> {
        self.inodes.get(ino.index()).copied().flatten()
    }
}

/// Computes the layout of `tree` with metadata block size `block` and chunk size `chunk_size`.
pub fn compute(tree: &Tree, block: u64, chunk_size: u32) -> Result<Layout> {
    compute_with(tree, block, &|_, inode| {
        RegularLayout::Slots(inode.size().div_ceil(u64::from(chunk_size)))
    })
}

/// [`compute`] with the body of each regular file given by `regular`.
pub fn compute_with(
    tree: &Tree,
    block: u64,
    regular: &dyn Fn(InodeId, &crate::model::Inode) -> RegularLayout,
) -> Result<Layout> {
    let order = tree.numbering_order();
    if order.len() > u32::MAX as usize {
        return Err(Error::Limit("more than 2^32 entries".into()));
    }
    let mut first_index = vec![0u32; tree.inodes.len()];
    let mut first_entry: Vec<Option<EntryId>> = vec![None; tree.inodes.len()];
    for (i, e) in order.iter().enumerate() {
        let ino = tree[*e].inode.index();
        if first_entry[ino].is_none() {
            first_entry[ino] = Some(*e);
            first_index[ino] = i as u32 + 1;
        }
    }
    let mut xattr_size = vec![0u64; tree.inodes.len()];
    for (ino, e) in first_entry.iter().enumerate() {
        if let Some(e) = e {
            xattr_size[ino] = xattr_area_size(tree, InodeId::new(ino), *e)?;
        }
    }

    let mut alloc = Allocator::new(block);
    let mut places: Vec<Option<InodePlace>> = vec![None; tree.inodes.len()];
    let inode_bytes = |ino: InodeId| size_of::<InodeExtended>() as u64 + xattr_size[ino.index()];

    // Depth first: a directory is placed when entered, then its non-directory children in
    // name order, then each child directory in turn.
    let mut stack = vec![EntryId::ROOT];
    while let Some(dir) = stack.pop() {
        let dino = tree[dir].inode;
        let names: Vec<&[u8]> = dirents(tree, dir).iter().map(|d| d.0).collect();
        let (_, d_size) = pack_dirents(&names, block);
        let (offset, data_offset, layout) = alloc.place_with_data(inode_bytes(dino), d_size);
        places[dino.index()] = Some(InodePlace {
            offset,
            data_offset,
            layout,
            index: first_index[dino.index()],
            size: d_size,
        });
        for child in &tree[dir].children {
            let ino = tree[*child].inode;
            let inode = &tree[ino];
            if inode.file_type() == FileType::Directory || places[ino.index()].is_some() {
                continue;
            }
            let place = match inode.file_type() {
                FileType::Regular => place_regular(
                    &mut alloc,
                    regular(ino, inode),
                    inode_bytes(ino),
                    first_index[ino.index()],
                    inode.size(),
                ),
                FileType::Symlink => {
                    let d = inode.target().len() as u64;
                    let (offset, data_offset, layout) = alloc.place_with_data(inode_bytes(ino), d);
                    InodePlace {
                        offset,
                        data_offset,
                        layout,
                        index: first_index[ino.index()],
                        size: d,
                    }
                }
                _ => InodePlace {
                    offset: alloc.place_special(inode_bytes(ino)),
                    data_offset: 0,
                    layout: DataLayout::FlatPlain,
                    index: first_index[ino.index()],
                    size: 0,
                },
            };
            places[ino.index()] = Some(place);
        }
        stack.extend(tree[dir].children.iter().rev().filter(|c| tree.is_dir(**c)));
    }
    Ok(Layout {
        inodes: places,
        order,
        end: alloc.cursor,
        xattr_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirent_packing_starts_a_new_block_when_full() {
        let long = [b'n'; 200];
        let names: Vec<&[u8]> = std::iter::repeat_n(&long[..], 30).collect();
        // 212 bytes each: 19 fit in 4096 (4028), the 20th starts block 2
        let (blocks, size) = pack_dirents(&names, 4096);
        assert_eq!(blocks, vec![0..19, 19..30]);
        assert_eq!(size, 4096 + 11 * 212);
    }

    #[test]
    fn xattr_prefixes() {
        assert_eq!(split_xattr_name(b"user.x"), Some((1, &b"x"[..])));
        assert_eq!(
            split_xattr_name(b"system.posix_acl_access"),
            Some((2, &b""[..]))
        );
        assert_eq!(
            split_xattr_name(b"system.posix_acl_default"),
            Some((3, &b""[..]))
        );
        assert_eq!(
            split_xattr_name(b"security.capability"),
            Some((6, &b"capability"[..]))
        );
        assert_eq!(
            split_xattr_name(b"trusted.overlay.opaque"),
            Some((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(split_xattr_name(b"system.nfs4_acl"), None);
    }
}
