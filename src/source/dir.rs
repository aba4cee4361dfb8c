//! Directory source: walks a local directory (never following symlinks) into a [`Tree`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::model::{DataSource, EntryId, FileType, Inode, InodeId, InodeKind, RegularFile, Tree};
use crate::source::limits::DEFAULT_MAX_ENTRIES;

/// Reads the directory `root` into a tree with sorted children.
///
/// Hardlinks of every non-directory type become one inode with several names. The root keeps
/// its own metadata (mode, owner, mtime, xattrs).
pub fn walk(root: &Path) -> Result<Tree> {
    walk_with(root, DEFAULT_MAX_ENTRIES, &mut |_, _, _| Ok(()))
}

/// [`walk`], handing each regular file with data to `on_file` (its inode, path and size) as
/// soon as it is found, so that its data can be processed while the walk goes on.
///
/// Directories are read in numbering order (formats/rafs-v6.md §13: a directory's children
/// in name order, then the subdirectories' contents, depth first), so `on_file` sees each
/// inode once, at its first name, in the order its data goes into the blob. A tree of more
/// than `max_entries` entries (the root included) is refused.
pub fn walk_with(
    root: &Path,
    max_entries: u64,
    on_file: &mut dyn FnMut(InodeId, &Path, u64) -> Result<()>,
) -> Result<Tree> {
    walk_excluding(root, max_entries, &|_| false, on_file)
}

/// [`walk_with`], leaving out every entry (and what is under it) for which `skip` holds: it
/// is given the path relative to `root`, without a leading slash (`usr/bin/ls`).
pub fn walk_excluding(
    root: &Path,
    max_entries: u64,
    skip: &dyn Fn(&[u8]) -> bool,
    on_file: &mut dyn FnMut(InodeId, &Path, u64) -> Result<()>,
) -> Result<Tree> {
    let meta = std::fs::symlink_metadata(root).ctx("stat", root)?;
    if !meta.is_dir() {
        return Err(Error::Unsupported {
            path: root.to_path_buf(),
            reason: "source is not a directory".into(),
        });
    }
    let mut tree = Tree::new(inode_from(root, &meta)?);
    let mut links: HashMap<(u64, u64), InodeId> = HashMap::new();
    let mut pending: Vec<(EntryId, PathBuf)> = vec![(EntryId::ROOT, root.to_path_buf())];
    let mut subdirs: Vec<(EntryId, PathBuf)> = Vec::new();
    while let Some((dir, dir_path)) = pending.pop() {
        let mut items = std::fs::read_dir(&dir_path)
            .and_then(|rd| {
                rd.map(|item| item.map(|item| (item.file_name(), item)))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .ctx("read directory", &dir_path)?;
        items.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, item) in items {
            let path = dir_path.join(&name);
            if skip(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .as_os_str()
                    .as_bytes(),
            ) {
                continue;
            }
            // stat relative to the open directory: no path lookup from the root
            let meta = item.metadata().ctx("stat", &path)?;
            let (inode, new) = if !meta.is_dir() && meta.nlink() > 1 {
                match links.entry((meta.dev(), meta.ino())) {
                    Entry::Occupied(o) => (*o.get(), false),
                    Entry::Vacant(v) => {
                        (*v.insert(tree.add_inode(inode_from(&path, &meta)?)), true)
                    }
                }
            } else {
                (tree.add_inode(inode_from(&path, &meta)?), true)
            };
            let entry = tree.add_entry(dir, name.as_bytes(), inode)?;
            if tree.entries.len() as u64 > max_entries {
                return Err(Error::TooManyEntries {
                    path: root.to_path_buf(),
                    limit: max_entries,
                });
            }
            if meta.is_dir() {
                subdirs.push((entry, path));
            } else if new && meta.is_file() && meta.len() > 0 {
                crate::io::failpoint::reached("file");
                on_file(inode, &path, meta.len())?;
            }
        }
        pending.extend(subdirs.drain(..).rev());
    }
    Ok(tree)
}

fn inode_from(path: &Path, meta: &std::fs::Metadata) -> Result<Inode> {
    let mode = meta.mode();
    let file_type = FileType::from_mode(mode).ok_or_else(|| Error::Unsupported {
        path: path.to_path_buf(),
        reason: format!("unknown file type in mode {mode:#o}"),
    })?;
    let kind = match file_type {
        FileType::Regular => InodeKind::Regular(RegularFile {
            size: meta.size(),
            data: match meta.size() {
                0 => DataSource::None,
                _ => DataSource::Path(path.into()),
            },
            chunks: Vec::new(),
        }),
        FileType::Symlink => InodeKind::Symlink {
            target: std::fs::read_link(path)
                .ctx("readlink", path)?
                .as_os_str()
                .as_bytes()
                .to_vec(),
        },
        FileType::CharDevice | FileType::BlockDevice => {
            let rdev = encode_rdev(meta.rdev()).ok_or_else(|| Error::Unsupported {
                path: path.to_path_buf(),
                reason: format!("device number {:#x} does not fit in 32 bits", meta.rdev()),
            })?;
            InodeKind::device(file_type, rdev)
        }
        other => InodeKind::empty(other),
    };
    let mut inode = Inode::with_kind(kind, (mode & 0o7777) as u16);
    inode.uid = meta.uid();
    inode.gid = meta.gid();
    inode.mtime = meta.mtime();
    inode.mtime_nsec = meta.mtime_nsec().clamp(0, 999_999_999) as u32;
    inode.set_xattrs(read_xattrs(path)?);
    Ok(inode)
}

/// The Linux `new_encode_dev` form of a device number, as EROFS stores it (32 bits: minor low
/// byte, major 12 bits, minor high bits).
pub fn encode_rdev(rdev: u64) -> Option<u32> {
    let major = libc::major(rdev) as u64;
    let minor = libc::minor(rdev) as u64;
    if major > 0xfff || minor > 0xfffff {
        return None;
    }
    Some(((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)) as u32)
}

fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        // filesystems without xattr support simply have none
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list xattrs of", path),
    };
    let mut out = Vec::new();
    for name in names {
        // an xattr can vanish between list and get; skip it then
        if let Some(value) = xattr::get(path, &name).ctx("read xattr of", path)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test scratch directories need no signal cleanup
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_linux() {
        assert_eq!(encode_rdev(libc::makedev(1, 3)), Some(0x103));
        assert_eq!(encode_rdev(libc::makedev(8, 0x123)), Some(0x10_08_23));
        assert_eq!(encode_rdev(libc::makedev(0x1000, 0)), None);
    }

    #[test]
    fn walks_hardlinks_as_one_inode() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        std::fs::hard_link(d.path().join("l"), d.path().join("m")).unwrap();
        let t = walk(d.path()).unwrap();
        let names: Vec<&[u8]> = t[EntryId::ROOT]
            .children
            .iter()
            .map(|c| t[*c].name.as_slice())
            .collect();
        assert_eq!(names, vec![&b"a"[..], b"b", b"l", b"m"]);
        let ino = |i: usize| t[t[EntryId::ROOT].children[i]].inode;
        assert_eq!(ino(0), ino(1));
        assert_eq!(ino(2), ino(3));
        assert_ne!(ino(0), ino(2));
        assert_eq!(t[ino(2)].target(), b"a");
    }
}
