//! RAFS v5 decoder: rebuilds the tree, chunks and blob table, and verifies every inode digest
//! (formats/rafs-v5.md §11). Nothing in the input is trusted.

use std::collections::HashMap;

use zerocopy::FromBytes;

use crate::codec::{Compressor, Digester};
use crate::error::{Error, Result};
use crate::format::blob::BlobFeatures;
use crate::format::rafs_v5::*;
use crate::format::rafs_v6::{super_flags, SuperFlags};
use crate::io::bytes::{corrupt, Budget, Bytes};
use crate::model::ChunkInfo;
use crate::model::{BlobEntry, Image};
use crate::model::{
    ChunkId, DataSource, EntryId, FileType, Inode as TreeInode, InodeId, InodeKind, RegularFile,
    Tree,
};

const MAX_DEPTH: usize = 4096;

struct Record<'a> {
    raw: &'a Inode,
    name: &'a [u8],
    target: &'a [u8],
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    chunks: &'a [u8],
    offset: u64,
}

/// Decodes a v5 bootstrap.
pub fn decode(data: &[u8]) -> Result<Image> {
    let b = Bytes::new(data);
    let sb = superblock(b)?;
    let flags = sb.flags.get();
    let (compressor, digester) = algorithms(flags);
    let blobs = blob_table(b, sb, compressor, digester)?;
    let entries = u64::from(sb.inode_table_entries.get());
    let table = b.slice(
        sb.inode_table_offset.get(),
        entries.saturating_mul(4),
        "inode table",
    )?;
    let mut d = Decoder {
        b,
        table_offset: sb.inode_table_offset.get(),
        table,
        entries,
        explicit_uid_gid: flags & super_flags::EXPLICIT_UID_GID != 0,
        blob_count: blobs.len(),
        chunks: Vec::new(),
        chunk_ids: HashMap::new(),
        // xattr tables and chunk records occupy their own bytes in a well-formed image
        xattr_budget: Budget::new((64u64 << 20) + 8 * b.len()),
        chunk_budget: Budget::new(b.len() / 80 + 16),
    };
    let walked = d.walk()?;
    verify_digests(&walked.tree, &d.chunks, digester, &walked.digests)?;
    Ok(Image {
        version: 5,
        tree: walked.tree,
        digest_known: vec![true; d.chunks.len()],
        chunks: d.chunks,
        blobs,
        chunk_size: sb.block_size.get(),
        flags: SuperFlags(flags),
        compressor,
        digester,
        block_size: 0,
        inode_numbers: walked.numbers,
        prefetch: prefetch_table(b, sb)?,
        size: data.len() as u64,
    })
}

/// The prefetch table's inode numbers, up to the first 0 entry (formats/rafs-v5.md §4).
fn prefetch_table(b: Bytes<'_>, sb: &SuperBlock) -> Result<Vec<u64>> {
    let entries = u64::from(sb.prefetch_table_entries.get());
    if entries == 0 {
        return Ok(Vec::new());
    }
    let t = b.slice(
        sb.prefetch_table_offset.get(),
        4 * entries,
        "prefetch table",
    )?;
    Ok(t.chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .take_while(|n| *n != 0)
        .collect())
}

/// The superblock, its magic, version, size and chunk size checked.
fn superblock(b: Bytes<'_>) -> Result<&SuperBlock> {
    let sb: &SuperBlock = b.get(0, "RAFS v5 superblock")?;
    if sb.magic.get() != RAFS_V5_MAGIC || sb.fs_version.get() != RAFS_V5_VERSION {
        return Err(corrupt("RAFS v5 superblock", 0, "bad magic or version"));
    }
    if u64::from(sb.sb_size.get()) != SUPERBLOCK_SIZE {
        return Err(corrupt(
            "RAFS v5 superblock",
            8,
            "superblock size is not 8192",
        ));
    }
    let chunk_size = sb.block_size.get();
    if !chunk_size.is_power_of_two() || !(0x1000..=0x100_0000).contains(&chunk_size) {
        return Err(corrupt(
            "RAFS v5 superblock",
            12,
            &format!("invalid chunk size {chunk_size:#x}"),
        ));
    }
    Ok(sb)
}

/// Compression and digest named by the superblock flags (formats/rafs-v5.md §2).
fn algorithms(flags: u64) -> (Compressor, Digester) {
    (super_flags::compressor(flags), super_flags::digester(flags))
}

/// The blob table (NUL-terminated ids) and, when present, the extended blob table.
fn blob_table(
    b: Bytes<'_>,
    sb: &SuperBlock,
    compressor: Compressor,
    digester: Digester,
) -> Result<Vec<BlobEntry>> {
    let bt = b.slice(
        sb.blob_table_offset.get(),
        u64::from(sb.blob_table_size.get()),
        "blob table",
    )?;
    let mut ids = Vec::new();
    let mut pos = 0usize;
    while pos + 8 < bt.len() {
        let rest = &bt[pos + 8..];
        let end = rest.iter().position(|c| *c == 0).unwrap_or(rest.len());
        let id = std::str::from_utf8(&rest[..end]).map_err(|_| {
            corrupt(
                "blob table",
                sb.blob_table_offset.get() + pos as u64,
                "blob id is not text",
            )
        })?;
        if id.is_empty() {
            break;
        }
        ids.push(id.to_string());
        pos += 8 + end + 1;
    }
    let next = u64::from(sb.extended_blob_table_entries.get());
    if next as usize != ids.len() && next != 0 {
        return Err(corrupt(
            "extended blob table",
            sb.extended_blob_table_offset.get(),
            "entry count differs from the blob table",
        ));
    }
    let mut blobs = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let mut blob = BlobEntry::new(id, compressor, digester);
        if next > 0 {
            let e: &ExtBlobEntry = b.get(
                sb.extended_blob_table_offset.get() + 64 * i as u64,
                "extended blob table entry",
            )?;
            blob.chunk_count = e.chunk_count.get();
            blob.features = BlobFeatures(e.features.get());
            blob.uncompressed_size = e.uncompressed_size.get();
            blob.compressed_size = e.compressed_size.get();
        }
        blobs.push(blob);
    }
    Ok(blobs)
}

/// Reads inode records, bounded by the image and by allocation budgets.
struct Decoder<'a> {
    b: Bytes<'a>,
    table_offset: u64,
    table: &'a [u8],
    entries: u64,
    explicit_uid_gid: bool,
    blob_count: usize,
    chunks: Vec<ChunkInfo>,
    /// (blob index, chunk index) → chunk id: a chunk shared by files is one chunk.
    chunk_ids: HashMap<(u32, u32), ChunkId>,
    xattr_budget: Budget,
    chunk_budget: Budget,
}

/// The tree a walk rebuilt.
struct Walked {
    tree: Tree,
    /// On-disk inode number of each tree inode.
    numbers: Vec<u64>,
    /// (entry, stored digest, record offset), checked after the walk.
    digests: Vec<(EntryId, [u8; 32], u64)>,
}

impl<'a> Decoder<'a> {
    /// Offset of the record at inode-table index `index` (1-based).
    fn slot(&self, index: u64) -> Result<u64> {
        if index == 0 || index > self.entries {
            return Err(corrupt(
                "inode table",
                self.table_offset,
                &format!("inode index {index} out of range"),
            ));
        }
        let i = (index - 1) as usize * 4;
        let t = self.table;
        let v = u32::from_le_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
        Ok(u64::from(v) << 3)
    }

    /// The inode record at `offset`, with its name, symlink target, xattrs and chunk records.
    fn record(&mut self, offset: u64) -> Result<Record<'a>> {
        let b = self.b;
        let raw: &Inode = b.get(offset, "inode")?;
        let mut at = offset + 128;
        let name_len = u64::from(raw.name_size.get());
        if name_len == 0 || name_len > 256 {
            return Err(corrupt("inode", offset + 100, "invalid name size"));
        }
        let name = b.slice(at, name_len, "inode name")?;
        at += name_len.div_ceil(8) * 8;
        let mut target: &[u8] = &[];
        if raw.flags.get() & inode_flags::SYMLINK != 0 {
            let n = u64::from(raw.symlink_size.get());
            target = b.slice(at, n, "symlink target")?;
            at += n.div_ceil(8) * 8;
        }
        let mut xattrs = Vec::new();
        if raw.flags.get() & inode_flags::XATTR != 0 {
            let total = self.xattrs(at, &mut xattrs)?;
            at += (8 + total).div_ceil(8) * 8;
        }
        let mut chunks: &[u8] = &[];
        if FileType::from_mode(raw.mode.get()) == Some(FileType::Regular) {
            let n = u64::from(raw.child_count.get());
            chunks = b.slice(at, n.saturating_mul(80), "chunk records")?;
            self.chunk_budget.spend(n, "chunk records", at)?;
        }
        Ok(Record {
            raw,
            name,
            target,
            xattrs,
            chunks,
            offset,
        })
    }

    /// The xattr table at `at` (formats/rafs-v5.md §8); returns its size.
    fn xattrs(&mut self, at: u64, out: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<u64> {
        let b = self.b;
        let total = u64::from_le_bytes(b.slice(at, 8, "xattr table")?.try_into().unwrap_or([0; 8]));
        let body = b.slice(at + 8, total, "xattr table")?;
        self.xattr_budget.spend(total, "xattr table", at)?;
        let mut p = 0usize;
        while p + 4 <= body.len() {
            let size =
                u32::from_le_bytes([body[p], body[p + 1], body[p + 2], body[p + 3]]) as usize;
            let pair = body
                .get(p + 4..p + 4 + size)
                .ok_or_else(|| corrupt("xattr pair", at + 8 + p as u64, "overruns the table"))?;
            let nul = pair
                .iter()
                .position(|c| *c == 0)
                .ok_or_else(|| corrupt("xattr pair", at + 8 + p as u64, "no NUL after the name"))?;
            out.push((pair[..nul].to_vec(), pair[nul + 1..].to_vec()));
            p += 4 + size;
        }
        Ok(total)
    }

    /// The tree inode a record describes; a regular file's chunks join the chunk list.
    fn inode(&mut self, r: &Record) -> Result<TreeInode> {
        let mode = r.raw.mode.get();
        let ft = FileType::from_mode(mode).ok_or_else(|| {
            corrupt(
                "inode",
                r.offset + 60,
                &format!("unknown file type in mode {mode:#o}"),
            )
        })?;
        let kind = match ft {
            FileType::Regular => {
                let mut chunks = Vec::with_capacity(r.chunks.len() / 80);
                for (k, rec) in r.chunks.chunks_exact(80).enumerate() {
                    chunks.push(self.chunk(rec, r.offset + 128 + 80 * k as u64)?);
                }
                InodeKind::Regular(RegularFile {
                    size: r.raw.size.get(),
                    data: DataSource::None,
                    chunks,
                })
            }
            FileType::Symlink => InodeKind::Symlink {
                target: r.target.to_vec(),
            },
            _ => InodeKind::device(ft, r.raw.rdev.get()),
        };
        let mut i = TreeInode::with_kind(kind, (mode & 0o7777) as u16);
        if self.explicit_uid_gid {
            i.uid = r.raw.uid.get();
            i.gid = r.raw.gid.get();
        }
        i.mtime = r.raw.mtime.get() as i64;
        i.mtime_nsec = r.raw.mtime_nsec.get().min(999_999_999);
        i.set_xattrs(r.xattrs.clone());
        Ok(i)
    }

    /// The id of the chunk an 80-byte record at `at` describes.
    fn chunk(&mut self, rec: &[u8], at: u64) -> Result<ChunkId> {
        let c =
            ChunkRecord::read_from_bytes(rec).map_err(|_| corrupt("chunk record", at, "bad"))?;
        let key = (c.blob_index.get(), c.index.get());
        if key.0 as usize >= self.blob_count {
            return Err(corrupt(
                "chunk record",
                at,
                "blob index outside the blob table",
            ));
        }
        if let Some(id) = self.chunk_ids.get(&key) {
            return Ok(*id);
        }
        let id = ChunkId::new(self.chunks.len() as u32);
        self.chunks.push(ChunkInfo::from_record(&c));
        self.chunk_ids.insert(key, id);
        Ok(id)
    }

    /// Rebuilds the tree from the root record, depth first; hardlinked regular files (same
    /// ino, nlink > 1) share one inode.
    fn walk(&mut self) -> Result<Walked> {
        let root = self.record(self.slot(1)?)?;
        let root_inode = self.inode(&root)?;
        if root_inode.file_type() != FileType::Directory {
            return Err(corrupt("root inode", root.offset, "is not a directory"));
        }
        let mut w = Walked {
            tree: Tree::new(root_inode),
            numbers: vec![root.raw.ino.get()],
            digests: Vec::new(),
        };
        let mut by_ino: HashMap<u64, InodeId> = HashMap::new();
        // (entry, record, depth)
        let mut stack = vec![(EntryId::ROOT, root, 0usize)];
        let mut visited = 0u64;
        while let Some((entry, rec, depth)) = stack.pop() {
            w.digests.push((entry, rec.raw.digest, rec.offset));
            if FileType::from_mode(rec.raw.mode.get()) != Some(FileType::Directory) {
                continue;
            }
            if depth > MAX_DEPTH {
                return Err(corrupt("directory", rec.offset, "nesting too deep"));
            }
            let first = u64::from(rec.raw.child_index.get());
            let count = u64::from(rec.raw.child_count.get());
            visited += count;
            if visited > self.entries {
                return Err(corrupt(
                    "directory",
                    rec.offset,
                    "more children than inode table entries (a loop?)",
                ));
            }
            for idx in first..first.saturating_add(count) {
                let child = self.record(self.slot(idx)?)?;
                let ino = child.raw.ino.get();
                let is_reg = FileType::from_mode(child.raw.mode.get()) == Some(FileType::Regular);
                let inode_id = match by_ino.get(&ino) {
                    Some(id) if is_reg && child.raw.nlink.get() > 1 => *id,
                    _ => {
                        let id = w.tree.add_inode(self.inode(&child)?);
                        w.numbers.push(ino);
                        if is_reg {
                            by_ino.insert(ino, id);
                        }
                        id
                    }
                };
                let e = w
                    .tree
                    .add_entry(entry, child.name, inode_id)
                    .map_err(|err| corrupt("inode name", child.offset + 128, &err.to_string()))?;
                stack.push((e, child, depth + 1));
            }
        }
        w.tree.sort();
        Ok(w)
    }
}

/// Recomputes each inode digest from the decoded tree and compares it with the stored one.
fn verify_digests(
    tree: &Tree,
    chunks: &[ChunkInfo],
    digester: Digester,
    records: &[(EntryId, [u8; 32], u64)],
) -> Result<()> {
    let mut computed = vec![[0u8; 32]; tree.entries.len()];
    let stored: HashMap<EntryId, ([u8; 32], u64)> =
        records.iter().map(|(e, d, o)| (*e, (*d, *o))).collect();
    // children have larger entry ids than their parents: walk backwards
    for e in (0..tree.entries.len()).rev().map(EntryId::new) {
        let inode = tree.inode_of(e);
        let mut input = Vec::new();
        match inode.file_type() {
            FileType::Regular => inode
                .chunks()
                .iter()
                .for_each(|id| input.extend_from_slice(&chunks[id.index()].digest)),
            FileType::Symlink => input.extend_from_slice(inode.target()),
            FileType::Directory => tree[e]
                .children
                .iter()
                .for_each(|c| input.extend_from_slice(&computed[c.index()])),
            _ => {}
        }
        computed[e.index()] = digester.digest(&input);
        if let Some((d, off)) = stored.get(&e) {
            if *d != computed[e.index()] {
                return Err(Error::Corrupt {
                    what: "inode digest",
                    offset: *off,
                    reason: format!("invalid inode digest for {}", tree.path(e).display()),
                });
            }
        }
    }
    Ok(())
}
