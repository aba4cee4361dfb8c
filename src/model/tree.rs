//! The in-memory filesystem tree every source produces and every encoder consumes.
//!
//! Entries (names) and inodes (what the names point to) are kept apart so that a hardlink group
//! of any file type is one inode with several names. File data never lives here: an inode says
//! where its bytes come from ([`DataSource`]), and after the chunk pipeline which chunks hold them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Index of an [`Entry`] in [`Tree::entries`]. The root is always [`EntryId::ROOT`].
///
/// Entries, inodes and chunks each have their own id type so that passing one where another
/// is meant does not compile.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(usize);

impl EntryId {
    /// The root directory's entry.
    pub const ROOT: EntryId = EntryId(0);

    /// The id of the entry at `index` in [`Tree::entries`].
    pub fn new(index: usize) -> EntryId {
        EntryId(index)
    }

    /// The position of this entry in [`Tree::entries`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Index of an [`Inode`] in [`Tree::inodes`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId(usize);

impl InodeId {
    /// The id of the inode at `index` in [`Tree::inodes`].
    pub fn new(index: usize) -> InodeId {
        InodeId(index)
    }

    /// The position of this inode in [`Tree::inodes`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Index of a chunk in the chunk table a tree's files refer to (the pipeline's or an image's
/// `chunks`, a slice of [`crate::model::ChunkInfo`]). Stored as `u32`: the on-disk formats
/// count chunks in 32 bits.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(u32);

impl ChunkId {
    /// The id of the chunk at `index` in its chunk table.
    pub fn new(index: u32) -> ChunkId {
        ChunkId(index)
    }

    /// The position of this chunk in its chunk table.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id as the 32-bit number the formats store.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The longest name a directory entry may have (EROFS and RAFS both store at most 255 bytes).
pub const MAX_NAME_LEN: usize = 255;

/// File types a container image can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileType {
    /// The `S_IFMT` bits of this type.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
        }
    }

    /// The type from `S_IFMT` bits of a mode, if it is one of the known types.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::Regular,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }
}

/// Where a regular file's bytes are read from by the chunk pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// No data (empty file, or not a regular file).
    None,
    /// A file on the local filesystem (boxed: no spare capacity, 8 bytes less per inode).
    Path(Box<Path>),
}

/// A regular file's data: its size, where its bytes come from, and (after the chunk pipeline)
/// which chunks hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegularFile {
    /// Size in bytes.
    pub size: u64,
    /// Where the file data comes from.
    pub data: DataSource,
    /// Chunks holding the file data, in file order (filled by the chunk pipeline).
    pub chunks: Vec<ChunkId>,
}

/// What an inode is, with the data only that kind has: a size and chunks for regular files, a
/// target for symlinks, a device number for devices. Keeping them apart means a directory
/// cannot carry chunks or a symlink a device number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InodeKind {
    /// Regular file.
    Regular(RegularFile),
    /// Directory.
    Directory {
        /// A directory a tar layer only implies (a parent of listed entries, never listed
        /// itself). Its metadata are placeholders: when layers are merged it takes the lower
        /// layer's directory instead (`model::overlay::apply`). Not stored in images.
        implied: bool,
    },
    /// Symbolic link.
    Symlink {
        /// The link target (raw bytes).
        target: Vec<u8>,
    },
    /// Character device.
    CharDevice {
        /// Device number in the Linux `new_encode_dev` form.
        rdev: u32,
    },
    /// Block device.
    BlockDevice {
        /// Device number in the Linux `new_encode_dev` form.
        rdev: u32,
    },
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl InodeKind {
    /// A kind of the given type with empty per-kind data (size 0, no chunks, empty target,
    /// device 0, not implied).
    pub fn empty(file_type: FileType) -> InodeKind {
        match file_type {
            FileType::Regular => InodeKind::Regular(RegularFile {
                size: 0,
                data: DataSource::None,
                chunks: Vec::new(),
            }),
            FileType::Directory => InodeKind::Directory { implied: false },
            FileType::Symlink => InodeKind::Symlink { target: Vec::new() },
            FileType::CharDevice => InodeKind::CharDevice { rdev: 0 },
            FileType::BlockDevice => InodeKind::BlockDevice { rdev: 0 },
            FileType::Fifo => InodeKind::Fifo,
            FileType::Socket => InodeKind::Socket,
        }
    }

    /// A device of the given type (`CharDevice` or `BlockDevice`); any other type gets its
    /// empty kind, the number dropped.
    pub fn device(file_type: FileType, rdev: u32) -> InodeKind {
        match file_type {
            FileType::CharDevice => InodeKind::CharDevice { rdev },
            FileType::BlockDevice => InodeKind::BlockDevice { rdev },
            other => InodeKind::empty(other),
        }
    }

    /// The file type, without the per-kind data.
    pub fn file_type(&self) -> FileType {
        match self {
            InodeKind::Regular(_) => FileType::Regular,
            InodeKind::Directory { .. } => FileType::Directory,
            InodeKind::Symlink { .. } => FileType::Symlink,
            InodeKind::CharDevice { .. } => FileType::CharDevice,
            InodeKind::BlockDevice { .. } => FileType::BlockDevice,
            InodeKind::Fifo => FileType::Fifo,
            InodeKind::Socket => FileType::Socket,
        }
    }
}

/// Metadata of one inode, shared by all names of a hardlink group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// What the inode is, with its per-kind data.
    pub kind: InodeKind,
    /// Permission bits including suid/sgid/sticky (`0o7777`).
    pub permissions: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Inode {
    /// A new inode of the given kind with everything else zero or empty.
    pub fn with_kind(kind: InodeKind, permissions: u16) -> Inode {
        Inode {
            kind,
            permissions: permissions & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    /// A new inode of the given type with empty per-kind data and everything else zero.
    pub fn new(file_type: FileType, permissions: u16) -> Inode {
        Inode::with_kind(InodeKind::empty(file_type), permissions)
    }

    /// A directory implied by a tar layer: 0755, 0:0, mtime 0, no xattrs, marked implied.
    pub fn implied_dir() -> Inode {
        Inode::with_kind(InodeKind::Directory { implied: true }, 0o755)
    }

    /// The file type.
    pub fn file_type(&self) -> FileType {
        self.kind.file_type()
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, InodeKind::Directory { .. })
    }

    /// The regular file's data, if this is a regular file.
    pub fn file(&self) -> Option<&RegularFile> {
        match &self.kind {
            InodeKind::Regular(f) => Some(f),
            _ => None,
        }
    }

    /// The regular file's data, mutable, if this is a regular file.
    pub fn file_mut(&mut self) -> Option<&mut RegularFile> {
        match &mut self.kind {
            InodeKind::Regular(f) => Some(f),
            _ => None,
        }
    }

    /// The size in bytes of a regular file; 0 for every other kind.
    pub fn size(&self) -> u64 {
        self.file().map_or(0, |f| f.size)
    }

    /// The chunks of a regular file; empty for every other kind.
    pub fn chunks(&self) -> &[ChunkId] {
        self.file().map_or(&[], |f| f.chunks.as_slice())
    }

    /// The device number of a device; 0 for every other kind.
    pub fn rdev(&self) -> u32 {
        match self.kind {
            InodeKind::CharDevice { rdev } | InodeKind::BlockDevice { rdev } => rdev,
            _ => 0,
        }
    }

    /// The target of a symlink; empty for every other kind.
    pub fn target(&self) -> &[u8] {
        match &self.kind {
            InodeKind::Symlink { target } => target,
            _ => &[],
        }
    }

    /// Whether this inode stands for a directory a layer only implies: marked so by the tar
    /// reader, or, for a layer loaded back from a bootstrap (where the mark is not stored),
    /// a directory with exactly the implied placeholders (0755, 0:0, mtime 0.0, no xattrs).
    pub fn is_implied_dir(&self) -> bool {
        match self.kind {
            InodeKind::Directory { implied: true } => true,
            InodeKind::Directory { implied: false } => {
                self.permissions == 0o755
                    && self.uid == 0
                    && self.gid == 0
                    && self.mtime == 0
                    && self.mtime_nsec == 0
                    && self.xattrs.is_empty()
            }
            _ => false,
        }
    }

    /// The full `st_mode` (type and permission bits).
    pub fn mode(&self) -> u32 {
        self.file_type().mode_bits() | u32::from(self.permissions)
    }

    /// Sets the xattrs, sorted by name (later duplicates replace earlier ones).
    pub fn set_xattrs(&mut self, mut xattrs: Vec<(Vec<u8>, Vec<u8>)>) {
        xattrs.sort_by(|a, b| a.0.cmp(&b.0));
        // keep the last value given for a repeated name
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(xattrs.len());
        for (k, v) in xattrs {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        self.xattrs = out;
    }
}

/// One name in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name in its directory (raw bytes; empty for the root).
    pub name: Vec<u8>,
    /// The directory holding this entry (the root is its own parent).
    pub parent: EntryId,
    /// The inode this name points to.
    pub inode: InodeId,
    /// Children of a directory, sorted by name bytes once [`Tree::sort`] has run.
    pub children: Vec<EntryId>,
}

/// A filesystem tree: entries (names) and the inodes they point to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// All entries; index 0 is the root directory.
    pub entries: Vec<Entry>,
    /// All inodes.
    pub inodes: Vec<Inode>,
}

impl Tree {
    /// A tree holding only a root directory with the given inode.
    pub fn new(root: Inode) -> Tree {
        debug_assert_eq!(root.file_type(), FileType::Directory);
        Tree {
            entries: vec![Entry {
                name: Vec::new(),
                parent: EntryId::ROOT,
                inode: InodeId(0),
                children: Vec::new(),
            }],
            inodes: vec![root],
        }
    }

    /// Every entry id, in arena order (parents before their children).
    pub fn entry_ids(&self) -> impl DoubleEndedIterator<Item = EntryId> + use<> {
        (0..self.entries.len()).map(EntryId)
    }

    /// Every inode id, in arena order.
    pub fn inode_ids(&self) -> impl DoubleEndedIterator<Item = InodeId> + use<> {
        (0..self.inodes.len()).map(InodeId)
    }

    /// Adds an inode and returns its id.
    pub fn add_inode(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        InodeId(self.inodes.len() - 1)
    }

    /// Adds a name for `inode` in directory `parent`. Names are checked here, so that every
    /// source gets the same rules.
    pub fn add_entry(&mut self, parent: EntryId, name: &[u8], inode: InodeId) -> Result<EntryId> {
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(Error::Unsupported {
                path: self.path_of_child(parent, name),
                reason: "invalid file name".into(),
            });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::Unsupported {
                path: self.path_of_child(parent, name),
                reason: format!(
                    "name is {} bytes long, the limit is {MAX_NAME_LEN}",
                    name.len()
                ),
            });
        }
        let id = EntryId(self.entries.len());
        self.entries.push(Entry {
            name: name.to_vec(),
            parent,
            inode,
            children: Vec::new(),
        });
        self[parent].children.push(id);
        Ok(id)
    }

    /// The child of directory `dir` named `name`.
    pub fn child(&self, dir: EntryId, name: &[u8]) -> Option<EntryId> {
        self[dir]
            .children
            .iter()
            .copied()
            .find(|c| self[*c].name == name)
    }

    /// Takes `entry` (and so what is under it) out of its directory; the arena keeps it until
    /// [`Tree::prune_unreachable`].
    pub fn detach(&mut self, entry: EntryId) {
        let parent = self[entry].parent;
        self[parent].children.retain(|c| *c != entry);
    }

    /// The inode of an entry.
    pub fn inode_of(&self, entry: EntryId) -> &Inode {
        &self[self[entry].inode]
    }

    /// The path of an entry, `/` for the root.
    pub fn path(&self, mut entry: EntryId) -> PathBuf {
        let mut parts = Vec::new();
        while entry != EntryId::ROOT {
            parts.push(self[entry].name.as_slice());
            entry = self[entry].parent;
        }
        let mut path = PathBuf::from("/");
        for p in parts.iter().rev() {
            path.push(OsStr::from_bytes(p));
        }
        path
    }

    fn path_of_child(&self, parent: EntryId, name: &[u8]) -> PathBuf {
        let mut p = self.path(parent);
        p.push(OsStr::from_bytes(name));
        p
    }

    /// Sorts every directory's children by raw name bytes.
    pub fn sort(&mut self) {
        // children are taken out while sorted so that names are compared in place: a copy of
        // every name would double the tree's peak memory
        for i in 0..self.entries.len() {
            let mut children = std::mem::take(&mut self.entries[i].children);
            children.sort_by(|a, b| self.entries[a.0].name.cmp(&self.entries[b.0].name));
            self.entries[i].children = children;
        }
    }

    /// Whether an entry is a directory.
    pub fn is_dir(&self, entry: EntryId) -> bool {
        self.inode_of(entry).is_dir()
    }

    /// Entries in numbering order: the root, then for each directory (depth first, in name
    /// order) all of its children before the contents of any subdirectory. This is the order
    /// RAFS assigns inode indexes in and the order file data goes into the blob.
    pub fn numbering_order(&self) -> Vec<EntryId> {
        let mut order = Vec::with_capacity(self.entries.len());
        order.push(EntryId::ROOT);
        let mut stack = vec![EntryId::ROOT];
        while let Some(dir) = stack.pop() {
            let children = &self[dir].children;
            order.extend_from_slice(children);
            stack.extend(children.iter().rev().filter(|c| self.is_dir(**c)));
        }
        order
    }

    /// Drops entries no longer reachable from the root (left behind when a source replaced a
    /// directory by something else), renumbering the rest. Inode ids do not change.
    pub fn prune_unreachable(&mut self) {
        // entries are moved, not copied, into the new arena (each is kept at most once), so
        // the tree is never held twice
        let mut old = std::mem::take(&mut self.entries);
        let len = old.len();
        let mut take = |id: EntryId| {
            std::mem::replace(
                &mut old[id.0],
                Entry {
                    name: Vec::new(),
                    parent: EntryId::ROOT,
                    inode: InodeId(0),
                    children: Vec::new(),
                },
            )
        };
        // whether an old entry was already kept (an entry reached twice is kept once)
        let mut seen = vec![false; len];
        let mut kept: Vec<Entry> = Vec::with_capacity(len);
        seen[0] = true;
        kept.push(take(EntryId::ROOT));
        let mut i = 0;
        while i < kept.len() {
            let children = std::mem::take(&mut kept[i].children);
            let mut new_children = Vec::with_capacity(children.len());
            for c in children {
                if seen[c.0] {
                    continue;
                }
                seen[c.0] = true;
                let id = EntryId(kept.len());
                let mut e = take(c);
                e.parent = EntryId(i);
                kept.push(e);
                new_children.push(id);
            }
            kept[i].children = new_children;
            i += 1;
        }
        self.entries = kept;
    }

    /// How many names point to each inode.
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.inodes.len()];
        for e in &self.entries {
            counts[e.inode.0] += 1;
        }
        counts
    }
}

// Ids print as their bare number: dumps and error messages show them that way.
impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for InodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Index<EntryId> for Tree {
    type Output = Entry;
    fn index(&self, id: EntryId) -> &Entry {
        &self.entries[id.0]
    }
}

impl std::ops::IndexMut<EntryId> for Tree {
    fn index_mut(&mut self, id: EntryId) -> &mut Entry {
        &mut self.entries[id.0]
    }
}

impl std::ops::Index<InodeId> for Tree {
    type Output = Inode;
    fn index(&self, id: InodeId) -> &Inode {
        &self.inodes[id.0]
    }
}

impl std::ops::IndexMut<InodeId> for Tree {
    fn index_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Inode {
        Inode::new(FileType::Directory, 0o755)
    }

    #[test]
    fn numbering_lists_siblings_before_descending() {
        let mut t = Tree::new(dir());
        let a = t.add_inode(dir());
        let f = t.add_inode(Inode::new(FileType::Regular, 0o644));
        let b = t.add_inode(dir());
        let ea = t.add_entry(EntryId::ROOT, b"a", a).unwrap();
        t.add_entry(EntryId::ROOT, b"z", f).unwrap();
        let eb = t.add_entry(EntryId::ROOT, b"b", b).unwrap();
        t.add_entry(ea, b"in-a", f).unwrap();
        t.add_entry(eb, b"in-b", f).unwrap();
        t.sort();
        let names: Vec<&[u8]> = t
            .numbering_order()
            .iter()
            .map(|e| t[*e].name.as_slice())
            .collect();
        assert_eq!(names, vec![&b""[..], b"a", b"b", b"z", b"in-a", b"in-b"]);
        assert_eq!(t.link_counts()[f.index()], 3);
    }

    #[test]
    fn pruning_drops_detached_subtrees() {
        let mut t = Tree::new(dir());
        let a = t.add_inode(dir());
        let f = t.add_inode(Inode::new(FileType::Regular, 0o644));
        let ea = t.add_entry(EntryId::ROOT, b"a", a).unwrap();
        t.add_entry(ea, b"x", f).unwrap();
        t.add_entry(EntryId::ROOT, b"y", f).unwrap();
        assert_eq!(t.link_counts()[f.index()], 2);
        // "a" becomes a file: its child is detached
        t[ea].children.clear();
        t[ea].inode = f;
        t.prune_unreachable();
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.link_counts()[f.index()], 2);
        assert_eq!(t.path(EntryId::new(2)), PathBuf::from("/y"));
    }

    #[test]
    fn rejects_bad_names() {
        let mut t = Tree::new(dir());
        let f = t.add_inode(Inode::new(FileType::Regular, 0o644));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(t.add_entry(EntryId::ROOT, bad, f).is_err(), "{bad:?}");
        }
        assert!(t.add_entry(EntryId::ROOT, &[b'n'; 256], f).is_err());
        assert!(t.add_entry(EntryId::ROOT, &[b'n'; 255], f).is_ok());
    }

    #[test]
    fn xattrs_sorted_and_unique() {
        let mut i = dir();
        i.set_xattrs(vec![
            (b"user.b".to_vec(), b"1".to_vec()),
            (b"security.a".to_vec(), b"2".to_vec()),
            (b"user.b".to_vec(), b"3".to_vec()),
        ]);
        assert_eq!(
            i.xattrs,
            vec![
                (b"security.a".to_vec(), b"2".to_vec()),
                (b"user.b".to_vec(), b"3".to_vec())
            ]
        );
    }
}
