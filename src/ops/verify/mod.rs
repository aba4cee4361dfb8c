//! `verify`: does an image hold exactly what its source held? Both sides are read into a
//! [`Tree`] (the image through its bootstrap and blobs, the source through `source::`), every
//! regular file's data is hashed once per side (in parallel), and the two listings are compared
//! entry by entry: type, mode, owner, size, content, symlink target, device number, hardlink
//! group, xattrs and mtime. Nothing is mounted, nothing needs root.

mod image_side;
mod source_side;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::blob::reader::BlobSource;
use crate::error::{Error, Result};
use crate::model::{EntryId, FileType, InodeId, Tree};

pub use source_side::SourceKind;

/// A field compared for each entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// File type (regular, directory, symlink, ...).
    Type,
    /// Permission bits, suid/sgid/sticky included.
    Mode,
    /// Owner.
    Uid,
    /// Group.
    Gid,
    /// Size of a regular file.
    Size,
    /// BLAKE3 of a regular file's data (compared when the sizes agree).
    Content,
    /// Symlink target.
    Target,
    /// Device number of a character or block device.
    Rdev,
    /// The other names of the same inode (non-directories).
    Hardlinks,
    /// One extended attribute (named in [`Difference::Changed::xattr`]).
    Xattr,
    /// Modification time, nanoseconds included.
    Mtime,
}

impl Field {
    /// Every field, in comparison order.
    pub const ALL: [Field; 11] = [
        Field::Type,
        Field::Mode,
        Field::Uid,
        Field::Gid,
        Field::Size,
        Field::Content,
        Field::Target,
        Field::Rdev,
        Field::Hardlinks,
        Field::Xattr,
        Field::Mtime,
    ];

    /// The name `--ignore` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Field::Type => "type",
            Field::Mode => "mode",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::Size => "size",
            Field::Content => "content",
            Field::Target => "target",
            Field::Rdev => "rdev",
            Field::Hardlinks => "hardlinks",
            Field::Xattr => "xattr",
            Field::Mtime => "mtime",
        }
    }

    /// Parses one `--ignore` name; `owner` stands for both uid and gid.
    pub fn parse_list(name: &str) -> Result<Vec<Field>> {
        if name == "owner" {
            return Ok(vec![Field::Uid, Field::Gid]);
        }
        let alias = if name == "xattrs" { "xattr" } else { name };
        Field::ALL
            .iter()
            .find(|f| f.name() == alias)
            .map(|f| vec![*f])
            .ok_or_else(|| {
                let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
                Error::InvalidOption(format!(
                    "unknown field {name:?} to ignore: owner, {}",
                    names.join(", ")
                ))
            })
    }
}

/// One way the image differs from the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// In the source, not in the image.
    Missing {
        /// Path from the root (`/` first).
        path: String,
    },
    /// In the image, not in the source.
    Extra {
        /// Path from the root (`/` first).
        path: String,
    },
    /// In both, with one field different.
    Changed {
        /// Path from the root (`/` first).
        path: String,
        /// The field.
        field: Field,
        /// The attribute's name, for [`Field::Xattr`].
        #[serde(skip_serializing_if = "Option::is_none")]
        xattr: Option<String>,
        /// The image's value (`None`: the image has no such value, e.g. a dropped xattr).
        image: Option<String>,
        /// The source's value (`None`: the source has no such value).
        source: Option<String>,
    },
}

impl Difference {
    /// The entry concerned.
    pub fn path(&self) -> &str {
        match self {
            Difference::Missing { path }
            | Difference::Extra { path }
            | Difference::Changed { path, .. } => path,
        }
    }
}

/// Options of `verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// A bootstrap, a blob with an inlined bootstrap, an `export --block` image, or an OCI
    /// image layout written by `create -t oci`.
    pub image: PathBuf,
    /// Where the image's blobs are (not needed for inline-meta blobs, export images and
    /// layouts).
    pub blobs: BlobSource,
    /// A directory, a tar (any compression; `-` is standard input) or an OCI image.
    pub source: PathBuf,
    /// How to read `source` (default: told from what it is).
    pub source_kind: Option<SourceKind>,
    /// The image to pick from an OCI index (`os/arch[/variant]`; default: this machine's).
    pub platform: Option<String>,
    /// Fields left out of the comparison.
    pub ignore: Vec<Field>,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Entries in the image, the root included.
    pub image_entries: u64,
    /// Entries in the source, the root included.
    pub source_entries: u64,
    /// Bytes of file data hashed in the image (each inode once).
    pub image_bytes: u64,
    /// Bytes of file data hashed in the source (each inode once).
    pub source_bytes: u64,
    /// Fields left out of the comparison.
    pub ignored: Vec<Field>,
    /// Every difference, by path.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    /// Whether the image holds exactly the source.
    pub fn equal(&self) -> bool {
        self.differences.is_empty()
    }

    /// The one-line verdict.
    pub fn verdict(&self) -> String {
        if self.equal() {
            return format!(
                "equal: {} entries, {} bytes of file data",
                self.image_entries, self.image_bytes
            );
        }
        let count = |k: fn(&Difference) -> bool| self.differences.iter().filter(|d| k(d)).count();
        format!(
            "different: {} differences ({} missing from the image, {} extra in the image, {} changed) over {} image and {} source entries",
            self.differences.len(),
            count(|d| matches!(d, Difference::Missing { .. })),
            count(|d| matches!(d, Difference::Extra { .. })),
            count(|d| matches!(d, Difference::Changed { .. })),
            self.image_entries,
            self.source_entries
        )
    }
}

/// One side read: its tree and, per inode, the BLAKE3 of a regular file's data.
pub(crate) struct Side {
    pub(crate) tree: Tree,
    pub(crate) digests: Vec<Option<[u8; 32]>>,
    pub(crate) bytes: u64,
}

/// Runs `verify`. An error means the two could not be compared (exit code 2 on the command
/// line); differences are the report's.
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport> {
    let (image, source) = rayon::join(
        || image_side::read(&opts.image, &opts.blobs),
        || source_side::read(&opts.source, opts.source_kind, opts.platform.as_deref()),
    );
    let (image, source) = (image?, source?);
    let a = listing(&image);
    let b = listing(&source);
    let mut ignored = opts.ignore.clone();
    ignored.sort();
    ignored.dedup();
    let mut differences = Vec::new();
    let keys: std::collections::BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let path = String::from_utf8_lossy(k).into_owned();
        match (a.get(k), b.get(k)) {
            (Some(_), None) => differences.push(Difference::Extra { path }),
            (None, Some(_)) => differences.push(Difference::Missing { path }),
            (Some(x), Some(y)) => compare(&path, x, y, &ignored, &mut differences),
            (None, None) => {}
        }
    }
    Ok(VerifyReport {
        image_entries: a.len() as u64,
        source_entries: b.len() as u64,
        image_bytes: image.bytes,
        source_bytes: source.bytes,
        ignored,
        differences,
    })
}

/// What is compared of one entry.
struct Facts<'a> {
    kind: FileType,
    permissions: u16,
    uid: u32,
    gid: u32,
    size: u64,
    digest: Option<[u8; 32]>,
    target: &'a [u8],
    rdev: u32,
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
    mtime: (i64, u32),
    /// The inode's other names, sorted (non-directories only).
    links: Vec<Vec<u8>>,
}

fn listing(side: &Side) -> BTreeMap<Vec<u8>, Facts<'_>> {
    let tree = &side.tree;
    let paths: Vec<Vec<u8>> = tree
        .entry_ids()
        .map(|e| tree.path(e).as_os_str().as_bytes().to_vec())
        .collect();
    let mut names: Vec<Vec<EntryId>> = vec![Vec::new(); tree.inodes.len()];
    for e in tree.entry_ids() {
        names[tree[e].inode.index()].push(e);
    }
    let mut out = BTreeMap::new();
    for e in tree.entry_ids() {
        let ino: InodeId = tree[e].inode;
        let i = &tree[ino];
        let links = match i.file_type() {
            FileType::Directory => Vec::new(),
            _ => {
                let mut l: Vec<Vec<u8>> = names[ino.index()]
                    .iter()
                    .filter(|o| **o != e)
                    .map(|o| paths[o.index()].clone())
                    .collect();
                l.sort();
                l
            }
        };
        let facts = Facts {
            kind: i.file_type(),
            permissions: i.permissions,
            uid: i.uid,
            gid: i.gid,
            size: i.size(),
            digest: side.digests.get(ino.index()).copied().flatten(),
            target: i.target(),
            rdev: i.rdev(),
            xattrs: &i.xattrs,
            mtime: (i.mtime, i.mtime_nsec),
            links,
        };
        out.insert(paths[e.index()].clone(), facts);
    }
    out
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Regular => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::CharDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

/// Bytes as text: UTF-8 as is, anything else escaped.
fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.escape_ascii().to_string(),
    }
}

fn rdev_text(rdev: u32) -> String {
    let major = (rdev >> 8) & 0xfff;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    format!("{major},{minor}")
}

fn links_text(l: &[Vec<u8>]) -> Option<String> {
    (!l.is_empty()).then(|| l.iter().map(|p| text(p)).collect::<Vec<_>>().join(" "))
}

fn compare(path: &str, a: &Facts, b: &Facts, ignored: &[Field], out: &mut Vec<Difference>) {
    let mut push = |field: Field, image: Option<String>, source: Option<String>| {
        if !ignored.contains(&field) && image != source {
            out.push(Difference::Changed {
                path: path.to_string(),
                field,
                xattr: None,
                image,
                source,
            });
        }
    };
    if a.kind != b.kind {
        // nothing else is comparable between a file and a directory
        push(
            Field::Type,
            Some(type_name(a.kind).into()),
            Some(type_name(b.kind).into()),
        );
        return;
    }
    let some = |s: String| Some(s);
    push(
        Field::Mode,
        some(format!("{:04o}", a.permissions)),
        some(format!("{:04o}", b.permissions)),
    );
    push(Field::Uid, some(a.uid.to_string()), some(b.uid.to_string()));
    push(Field::Gid, some(a.gid.to_string()), some(b.gid.to_string()));
    match a.kind {
        FileType::Regular => {
            push(
                Field::Size,
                some(a.size.to_string()),
                some(b.size.to_string()),
            );
            if a.size == b.size {
                let hex = |d: Option<[u8; 32]>| d.map(hex::encode);
                push(Field::Content, hex(a.digest), hex(b.digest));
            }
        }
        FileType::Symlink => push(Field::Target, some(text(a.target)), some(text(b.target))),
        FileType::CharDevice | FileType::BlockDevice => push(
            Field::Rdev,
            some(rdev_text(a.rdev)),
            some(rdev_text(b.rdev)),
        ),
        _ => {}
    }
    push(Field::Hardlinks, links_text(&a.links), links_text(&b.links));
    let mtime = |m: (i64, u32)| format!("{}.{:09}", m.0, m.1);
    push(Field::Mtime, some(mtime(a.mtime)), some(mtime(b.mtime)));
    if !ignored.contains(&Field::Xattr) {
        compare_xattrs(path, a.xattrs, b.xattrs, out);
    }
}

fn compare_xattrs(
    path: &str,
    a: &[(Vec<u8>, Vec<u8>)],
    b: &[(Vec<u8>, Vec<u8>)],
    out: &mut Vec<Difference>,
) {
    let a: BTreeMap<&[u8], &[u8]> = a
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let b: BTreeMap<&[u8], &[u8]> = b
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let names: std::collections::BTreeSet<&&[u8]> = a.keys().chain(b.keys()).collect();
    for n in names {
        let (x, y) = (a.get(*n), b.get(*n));
        if x != y {
            out.push(Difference::Changed {
                path: path.to_string(),
                field: Field::Xattr,
                xattr: Some(text(n)),
                image: x.map(|v| text(v)),
                source: y.map(|v| text(v)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    //! The comparison on hand-made sides: each field's typed difference, and --ignore.

    use super::*;
    use crate::model::{Inode, InodeKind};

    fn side(edit: impl Fn(&mut Tree)) -> Side {
        let mut tree = Tree::new(Inode::new(FileType::Directory, 0o755));
        let mut f = Inode::new(FileType::Regular, 0o644);
        f.set_xattrs(vec![(b"user.a".to_vec(), b"1".to_vec())]);
        let f = tree.add_inode(f);
        tree.add_entry(EntryId::ROOT, b"f", f).unwrap();
        tree.add_entry(EntryId::ROOT, b"g", f).unwrap();
        let l = tree.add_inode(Inode::with_kind(
            InodeKind::Symlink {
                target: b"f".to_vec(),
            },
            0o777,
        ));
        tree.add_entry(EntryId::ROOT, b"l", l).unwrap();
        edit(&mut tree);
        let digests = tree
            .inodes
            .iter()
            .map(|i| (i.file_type() == FileType::Regular).then_some([0; 32]))
            .collect();
        Side {
            tree,
            digests,
            bytes: 0,
        }
    }

    fn diff(a: &Side, b: &Side, ignored: &[Field]) -> Vec<Difference> {
        let (x, y) = (listing(a), listing(b));
        let mut out = Vec::new();
        for (k, v) in &x {
            match y.get(k) {
                Some(w) => compare(&String::from_utf8_lossy(k), v, w, ignored, &mut out),
                None => out.push(Difference::Extra {
                    path: String::from_utf8_lossy(k).into_owned(),
                }),
            }
        }
        out
    }

    #[test]
    fn each_field_is_typed_and_ignorable() {
        let base = side(|_| {});
        assert!(diff(&base, &side(|_| {}), &[]).is_empty());
        let other = side(|t| {
            t.inodes[1].permissions = 0o600;
            t.inodes[1].uid = 7;
            t.inodes[1].xattrs.clear();
            t.inodes[1].mtime = 5;
        });
        let d = diff(&base, &other, &[]);
        let fields: Vec<Field> = d
            .iter()
            .filter_map(|d| match d {
                Difference::Changed { field, .. } => Some(*field),
                _ => None,
            })
            .collect();
        // both names of the hardlinked file report each field
        for f in [Field::Mode, Field::Uid, Field::Xattr, Field::Mtime] {
            assert_eq!(
                fields.iter().filter(|x| **x == f).count(),
                2,
                "{f:?}: {d:?}"
            );
        }
        let dropped = d.iter().find(|d| {
            matches!(
                d,
                Difference::Changed {
                    field: Field::Xattr,
                    ..
                }
            )
        });
        assert!(matches!(
            dropped,
            Some(Difference::Changed { image: Some(v), source: None, xattr: Some(n), .. })
                if v == "1" && n == "user.a"
        ));
        let ignored = [
            Field::Mode,
            Field::Uid,
            Field::Gid,
            Field::Xattr,
            Field::Mtime,
        ];
        assert!(diff(&base, &other, &ignored).is_empty());
    }

    #[test]
    fn a_type_change_is_reported_alone() {
        let other = side(|t| {
            t.inodes[2] = Inode::new(FileType::Regular, 0o600);
        });
        let d = diff(&side(|_| {}), &other, &[]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            matches!(&d[0], Difference::Changed { field: Field::Type, path, .. } if path == "/l")
        );
    }

    #[test]
    fn owner_names_both_ids() {
        assert_eq!(
            Field::parse_list("owner").unwrap(),
            vec![Field::Uid, Field::Gid]
        );
        assert_eq!(Field::parse_list("xattrs").unwrap(), vec![Field::Xattr]);
        assert!(Field::parse_list("colour").is_err());
    }
}
