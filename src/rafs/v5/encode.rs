//! RAFS v5 encoder (formats/rafs-v5.md). Layout pass: numbering, then record offsets in
//! depth-first order; write pass: the same order, asserting each offset.

use std::collections::HashMap;

use zerocopy::IntoBytes;

use crate::codec::Digester;
use crate::error::{Error, Result};
use crate::format::rafs_v5::*;
use crate::format::rafs_v6::super_flags;
use crate::model::{BlobEntry, ChunkInfo};
use crate::model::{EntryId, FileType, InodeId, Tree};

/// The settings of a v5 bootstrap: the image-wide fields of the v6 options (chunk size,
/// compressor, digester, uid/gid); the block size, tarfs and single-device fields are v6-only.
pub use crate::rafs::v6::EncodeOptions;

fn align8(v: u64) -> u64 {
    v.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Size of the v5 xattr table of a list of pairs (0 when empty), before padding.
fn xattr_payload(xattrs: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    xattrs
        .iter()
        .map(|(k, v)| 4 + k.len() as u64 + 1 + v.len() as u64)
        .sum()
}

/// Which entries are later paths of a regular-file hardlink group, and the i_ino of each entry.
/// Only regular files are shared in v5: nydusd requires a parent's ino below its children's
/// otherwise, so other hardlinked types get an inode each (formats/rafs-v5.md §12).
struct Numbering {
    index: Vec<u32>,
    /// Directories: the index their first child gets (the next free index, for empty ones).
    child_index: Vec<u32>,
    ino: Vec<u64>,
    nlink: Vec<u32>,
    unique: u64,
}

fn number(tree: &Tree, order: &[EntryId]) -> Numbering {
    let mut index = vec![0u32; tree.entries.len()];
    let mut ino = vec![0u64; tree.entries.len()];
    let mut first: HashMap<InodeId, EntryId> = HashMap::new();
    let mut groups: HashMap<InodeId, u32> = HashMap::new();
    let mut unique = 0;
    for (i, e) in order.iter().enumerate() {
        index[e.index()] = i as u32 + 1;
        let inode = tree[*e].inode;
        if tree[inode].file_type() == FileType::Regular {
            *groups.entry(inode).or_default() += 1;
            if let Some(f) = first.get(&inode) {
                ino[e.index()] = u64::from(index[f.index()]);
                continue;
            }
            first.insert(inode, *e);
        }
        ino[e.index()] = u64::from(index[e.index()]);
        unique += 1;
    }
    let nlink = (0..tree.entries.len())
        .map(|e| {
            let e = EntryId::new(e);
            let inode = tree[e].inode;
            match tree[inode].file_type() {
                FileType::Regular => groups.get(&inode).copied().unwrap_or(1),
                FileType::Directory => {
                    2 + tree[e].children.iter().filter(|c| tree.is_dir(**c)).count() as u32
                }
                _ => 1,
            }
        })
        .collect();
    // replay the numbering walk: a directory's children are numbered when it is popped
    let mut child_index = vec![0u32; tree.entries.len()];
    let mut numbered = 1u32;
    let mut stack = vec![EntryId::ROOT];
    while let Some(d) = stack.pop() {
        child_index[d.index()] = numbered + 1;
        numbered += tree[d].children.len() as u32;
        stack.extend(tree[d].children.iter().rev().filter(|c| tree.is_dir(**c)));
    }
    Numbering {
        index,
        child_index,
        ino,
        nlink,
        unique,
    }
}

/// Depth-first pre-order: a directory, then each child subtree in name order.
fn dfs_order(tree: &Tree) -> Vec<EntryId> {
    let mut out = Vec::with_capacity(tree.entries.len());
    let mut stack = vec![EntryId::ROOT];
    while let Some(e) = stack.pop() {
        out.push(e);
        stack.extend(tree[e].children.iter().rev());
    }
    out
}

fn record_size(tree: &Tree, e: EntryId) -> u64 {
    let inode = tree.inode_of(e);
    let name_len = if e == EntryId::ROOT {
        1
    } else {
        tree[e].name.len() as u64
    };
    let mut size = 128 + align8(name_len);
    if inode.file_type() == FileType::Symlink {
        size += align8(inode.target().len() as u64);
    }
    if !inode.xattrs.is_empty() {
        size += align8(8 + xattr_payload(&inode.xattrs));
    }
    if inode.file_type() == FileType::Regular {
        size += 80 * inode.chunks().len() as u64;
    }
    size
}

/// Computes every inode digest bottom-up (formats/rafs-v5.md §11).
fn digests(
    tree: &Tree,
    chunks: &[ChunkInfo],
    digester: Digester,
    dfs: &[EntryId],
) -> Result<Vec<[u8; 32]>> {
    let mut d = vec![[0u8; 32]; tree.entries.len()];
    for &e in dfs.iter().rev() {
        let inode = tree.inode_of(e);
        let mut input = Vec::new();
        match inode.file_type() {
            FileType::Regular => {
                for id in inode.chunks() {
                    let c = chunks.get(id.index()).ok_or_else(|| Error::Corrupt {
                        what: "chunk reference",
                        offset: u64::from(id.get()),
                        reason: "no such chunk".into(),
                    })?;
                    input.extend_from_slice(&c.digest);
                }
            }
            FileType::Symlink => input.extend_from_slice(inode.target()),
            FileType::Directory => {
                for c in &tree[e].children {
                    input.extend_from_slice(&d[c.index()]);
                }
            }
            _ => {}
        }
        d[e.index()] = digester.digest(&input);
    }
    Ok(d)
}

/// Encodes `tree` as a RAFS v5 bootstrap.
pub fn encode(
    tree: &Tree,
    chunks: &[ChunkInfo],
    blobs: &[BlobEntry],
    opts: &EncodeOptions,
) -> Result<Vec<u8>> {
    let order = tree.numbering_order();
    check_xattrs(tree, &order)?;
    let num = number(tree, &order);
    let dfs = dfs_order(tree);
    let digest = digests(tree, chunks, opts.digester, &dfs)?;

    // layout pass
    let entries = order.len() as u64;
    let inode_table_offset = SUPERBLOCK_SIZE;
    let prefetch_offset = inode_table_offset + align8(4 * entries);
    let prefetch = prefetch_table(opts, &num);
    let blob_table_offset = prefetch_offset + prefetch.len() as u64;
    let blob_table = blob_table(blobs);
    let ext_offset = blob_table_offset + blob_table.len() as u64;
    let mut offsets = vec![0u64; tree.entries.len()];
    let mut pos = ext_offset + 64 * blobs.len() as u64;
    for &e in &dfs {
        offsets[e.index()] = pos;
        pos += record_size(tree, e);
    }
    if pos > (1 << 31) {
        return Err(Error::Limit("a v5 bootstrap is limited to 2 GiB".into()));
    }
    let total = pos;

    // write pass
    let mut buf = Vec::with_capacity(total as usize);
    let mut flags =
        super_flags::of_compressor(opts.compressor) | super_flags::of_digester(opts.digester);
    if opts.explicit_uid_gid {
        flags |= super_flags::EXPLICIT_UID_GID;
    }
    if opts.has_xattr || tree.inodes.iter().any(|i| !i.xattrs.is_empty()) {
        flags |= super_flags::HAS_XATTR;
    }
    let sb = SuperBlock {
        magic: RAFS_V5_MAGIC.into(),
        fs_version: RAFS_V5_VERSION.into(),
        sb_size: (SUPERBLOCK_SIZE as u32).into(),
        block_size: opts.chunk_size.into(),
        flags: flags.into(),
        inodes_count: num.unique.into(),
        inode_table_offset: inode_table_offset.into(),
        prefetch_table_offset: prefetch_offset.into(),
        blob_table_offset: blob_table_offset.into(),
        inode_table_entries: (entries as u32).into(),
        prefetch_table_entries: (opts.prefetch.len() as u32).into(),
        blob_table_size: (blob_table.len() as u32).into(),
        extended_blob_table_entries: (blobs.len() as u32).into(),
        extended_blob_table_offset: ext_offset.into(),
        reserved: [0; 8112],
    };
    buf.extend_from_slice(sb.as_bytes());
    // inode table: by index, the record of the first path of each ino
    let mut table = vec![0u32; align8(4 * entries) as usize / 4];
    for &e in &order {
        table[num.index[e.index()] as usize - 1] = (offsets[e.index()] >> 3) as u32;
    }
    for t in &table {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    buf.extend_from_slice(&prefetch);
    buf.extend_from_slice(&blob_table);
    for b in blobs {
        let e = ExtBlobEntry {
            chunk_count: b.chunk_count.into(),
            features: b.features.bits().into(),
            uncompressed_size: b.uncompressed_size.into(),
            compressed_size: b.compressed_size.into(),
            reserved: [0; 40],
        };
        buf.extend_from_slice(e.as_bytes());
    }
    let records = Records {
        tree,
        chunks,
        opts,
        num: &num,
        digest: &digest,
    };
    for &e in &dfs {
        debug_assert_eq!(buf.len() as u64, offsets[e.index()]);
        records.write(&mut buf, e);
    }
    debug_assert_eq!(buf.len() as u64, total);
    Ok(buf)
}

/// The same xattr namespaces as v6 (and nydus-image) accept, checked before anything is written.
fn check_xattrs(tree: &Tree, order: &[EntryId]) -> Result<()> {
    for &e in order {
        for (name, value) in &tree.inode_of(e).xattrs {
            if crate::rafs::v6::layout::split_xattr_name(name).is_none() || value.len() > 65536 {
                return Err(Error::Unsupported {
                    path: tree.path(e),
                    reason: format!("xattr {:?} cannot be stored", String::from_utf8_lossy(name)),
                });
            }
        }
    }
    Ok(())
}

/// The prefetch table: the `i_ino` of each entry it names, zero padded to 8 bytes
/// (formats/rafs-v5.md §4).
fn prefetch_table(opts: &EncodeOptions, num: &Numbering) -> Vec<u8> {
    let mut t: Vec<u8> = opts
        .prefetch
        .iter()
        .flat_map(|e| (num.ino[e.index()] as u32).to_le_bytes())
        .collect();
    t.resize(align8(t.len() as u64) as usize, 0);
    t
}

/// The blob table: per blob, 8 reserved bytes and its id, NUL-separated, padded to 8
/// (formats/rafs-v5.md §5).
fn blob_table(blobs: &[BlobEntry]) -> Vec<u8> {
    let mut t = Vec::new();
    for (i, b) in blobs.iter().enumerate() {
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(b.id.as_bytes());
        if i + 1 < blobs.len() {
            t.push(0);
        }
    }
    t.resize(align8(t.len() as u64) as usize, 0);
    t
}

/// Writes inode records (formats/rafs-v5.md §7): the inode, its name, symlink target, xattr
/// table and chunk records.
struct Records<'a> {
    tree: &'a Tree,
    chunks: &'a [ChunkInfo],
    opts: &'a EncodeOptions,
    num: &'a Numbering,
    digest: &'a [[u8; 32]],
}

impl Records<'_> {
    fn write(&self, buf: &mut Vec<u8>, e: EntryId) {
        let inode = self.tree.inode_of(e);
        let name: &[u8] = if e == EntryId::ROOT {
            b"/"
        } else {
            &self.tree[e].name
        };
        buf.extend_from_slice(self.raw_inode(e, name).as_bytes());
        push_padded(buf, name);
        if inode.file_type() == FileType::Symlink {
            push_padded(buf, inode.target());
        }
        if !inode.xattrs.is_empty() {
            let mut x = Vec::new();
            x.extend_from_slice(&xattr_payload(&inode.xattrs).to_le_bytes());
            for (k, v) in &inode.xattrs {
                x.extend_from_slice(&((k.len() + 1 + v.len()) as u32).to_le_bytes());
                x.extend_from_slice(k);
                x.push(0);
                x.extend_from_slice(v);
            }
            push_padded(buf, &x);
        }
        if inode.file_type() == FileType::Regular {
            for (i, id) in inode.chunks().iter().enumerate() {
                let c = &self.chunks[id.index()];
                let r = c.to_record(i as u64 * u64::from(self.opts.chunk_size));
                buf.extend_from_slice(r.as_bytes());
            }
        }
    }

    fn raw_inode(&self, e: EntryId, name: &[u8]) -> Inode {
        let (tree, num) = (self.tree, self.num);
        let inode = tree.inode_of(e);
        let entry = &tree[e];
        let xattr_len = if inode.xattrs.is_empty() {
            0
        } else {
            align8(xattr_payload(&inode.xattrs))
        };
        let (size, child_index, child_count) = match inode.file_type() {
            FileType::Directory => {
                let names: u64 = entry
                    .children
                    .iter()
                    .map(|c| tree[*c].name.len() as u64 + 8)
                    .sum();
                (
                    names.max(1).div_ceil(4096) * 4096,
                    num.child_index[e.index()],
                    entry.children.len() as u32,
                )
            }
            FileType::Regular => (inode.size(), 0, inode.chunks().len() as u32),
            FileType::Symlink => (inode.target().len() as u64, 0, 0),
            _ => (0, 0, 0),
        };
        let mut iflags = 0;
        if inode.file_type() == FileType::Symlink {
            iflags |= inode_flags::SYMLINK;
        }
        if !inode.xattrs.is_empty() {
            iflags |= inode_flags::XATTR;
        }
        let (uid, gid) = if self.opts.explicit_uid_gid {
            (inode.uid, inode.gid)
        } else {
            (0, 0)
        };
        Inode {
            digest: self.digest[e.index()],
            parent: (if e == EntryId::ROOT {
                0
            } else {
                num.ino[entry.parent.index()]
            })
            .into(),
            ino: num.ino[e.index()].into(),
            uid: uid.into(),
            gid: gid.into(),
            projid: 0.into(),
            mode: inode.mode().into(),
            size: size.into(),
            blocks: (size + xattr_len).div_ceil(512).into(),
            flags: iflags.into(),
            nlink: num.nlink[e.index()].into(),
            child_index: child_index.into(),
            child_count: child_count.into(),
            name_size: (name.len() as u16).into(),
            symlink_size: (inode.target().len() as u16).into(),
            rdev: inode.rdev().into(),
            mtime_nsec: inode.mtime_nsec.into(),
            mtime: (inode.mtime.max(0) as u64).into(),
            reserved: [0; 8],
        }
    }
}

fn push_padded(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(bytes);
    let pad = align8(bytes.len() as u64) as usize - bytes.len();
    buf.extend(std::iter::repeat_n(0u8, pad));
}
