//! Applying a layer onto the tree below it, with OCI or overlayfs whiteouts
//! (our rules: README "Layers").

use std::collections::HashMap;

use super::tree::{ChunkId, Entry, EntryId, FileType, Inode, InodeId, Tree};

/// How whiteouts are spelled in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutSpec {
    /// `.wh.NAME` removes NAME; `.wh..wh..opq` hides everything below its directory.
    #[default]
    Oci,
    /// A character device 0:0 removes its name; `trusted.overlay.opaque=y` makes a directory
    /// opaque.
    Overlayfs,
    /// No whiteouts: every entry is content.
    None,
}

impl std::str::FromStr for WhiteoutSpec {
    type Err = crate::Error;
    /// The names `--whiteout-spec` takes, as nydus-image spells them.
    fn from_str(s: &str) -> crate::Result<WhiteoutSpec> {
        match s {
            "oci" => Ok(WhiteoutSpec::Oci),
            "overlayfs" => Ok(WhiteoutSpec::Overlayfs),
            "none" => Ok(WhiteoutSpec::None),
            _ => Err(crate::Error::InvalidOption(format!(
                "invalid --whiteout-spec {s:?}: oci, overlayfs or none"
            ))),
        }
    }
}

/// OCI whiteout prefix.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// overlayfs opaque xattr.
pub const OVERLAY_OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

enum Whiteout<'a> {
    Remove(&'a [u8]),
    Opaque,
    OpaqueDir,
    Not,
}

fn classify<'a>(name: &'a [u8], inode: &Inode, spec: WhiteoutSpec) -> Whiteout<'a> {
    match spec {
        WhiteoutSpec::Oci if name == OPAQUE_MARKER => Whiteout::Opaque,
        WhiteoutSpec::Oci if name.starts_with(WHITEOUT_PREFIX) => {
            Whiteout::Remove(&name[WHITEOUT_PREFIX.len()..])
        }
        WhiteoutSpec::Overlayfs
            if inode.file_type() == FileType::CharDevice && inode.rdev() == 0 =>
        {
            Whiteout::Remove(name)
        }
        WhiteoutSpec::Overlayfs if is_opaque(inode) => Whiteout::OpaqueDir,
        _ => Whiteout::Not,
    }
}

/// Whether `tree` holds anything [`apply`] treats as a whiteout or opaque marker under `spec`.
pub fn has_whiteouts(tree: &Tree, spec: WhiteoutSpec) -> bool {
    tree.entries
        .iter()
        .any(|e| !matches!(classify(&e.name, &tree[e.inode], spec), Whiteout::Not))
}

/// Applies `upper` onto `lower` (both with sorted children): whiteouts remove lower entries,
/// upper entries replace or join lower ones, directories merge. Upper inodes are copied with
/// their chunk ids mapped through `chunk_map`. The result keeps unreachable entries in its arena:
/// call [`Tree::compact`] afterwards.
pub fn apply(
    lower: &mut Tree,
    upper: &Tree,
    spec: WhiteoutSpec,
    chunk_map: &dyn Fn(ChunkId) -> ChunkId,
) {
    apply_with(lower, upper, spec, chunk_map, false);
}

/// [`apply`] with overlayfs's rules that keeps the layer's marks in the result, as an image
/// meant to be stacked further holds them (mkfs.erofs `--incremental`): a whiteout replaces
/// what it names instead of removing it, an opaque directory hides what was below it and keeps
/// `trusted.overlay.opaque`, on the lower directory when the layer only implies it.
pub fn apply_keeping_marks(lower: &mut Tree, upper: &Tree, chunk_map: &dyn Fn(ChunkId) -> ChunkId) {
    if is_opaque(upper.inode_of(EntryId::ROOT)) {
        lower[EntryId::ROOT].children.clear();
    }
    apply_with(lower, upper, WhiteoutSpec::Overlayfs, chunk_map, true);
}

fn is_opaque(inode: &Inode) -> bool {
    inode.file_type() == FileType::Directory
        && inode
            .xattrs
            .iter()
            .any(|(k, v)| k == OVERLAY_OPAQUE_XATTR && v == b"y")
}

fn apply_with(
    lower: &mut Tree,
    upper: &Tree,
    spec: WhiteoutSpec,
    chunk_map: &dyn Fn(ChunkId) -> ChunkId,
    keep_marks: bool,
) {
    let mut inode_map: HashMap<InodeId, InodeId> = HashMap::new();
    let mut map_inode = |lower: &mut Tree, ino: InodeId, strip_opaque: bool| -> InodeId {
        *inode_map.entry(ino).or_insert_with(|| {
            let mut inode = upper[ino].clone();
            if let Some(f) = inode.file_mut() {
                f.chunks = f.chunks.iter().map(|c| chunk_map(*c)).collect();
            }
            if strip_opaque {
                inode.xattrs.retain(|(k, _)| k != OVERLAY_OPAQUE_XATTR);
            }
            lower.add_inode(inode)
        })
    };
    // the upper root's attributes replace the lower root's, unless the layer only implies it
    if !upper.inode_of(EntryId::ROOT).is_implied_dir() {
        let root = map_inode(
            lower,
            upper[EntryId::ROOT].inode,
            spec == WhiteoutSpec::Overlayfs && !keep_marks,
        );
        lower[EntryId::ROOT].inode = root;
    }
    let mut stack: Vec<(EntryId, EntryId)> = vec![(EntryId::ROOT, EntryId::ROOT)];
    while let Some((ldir, udir)) = stack.pop() {
        // whiteouts first, so they never hide siblings from the same layer
        let kept = apply_whiteouts(lower, ldir, upper, udir, spec, keep_marks);
        let mut by_name: HashMap<Vec<u8>, EntryId> = lower[ldir]
            .children
            .iter()
            .map(|c| (lower[*c].name.clone(), *c))
            .collect();
        for (u, strip) in kept {
            let uino = upper[u].inode;
            let is_dir = upper[uino].is_dir();
            let name = upper[u].name.clone();
            let target = match by_name.get(&name) {
                Some(&l) => {
                    let lower_is_dir = lower.inode_of(l).is_dir();
                    // a directory the layer only implies leaves the lower one as it was
                    if !(is_dir && lower_is_dir && upper[uino].is_implied_dir()) {
                        lower[l].inode = map_inode(lower, uino, strip);
                    } else if keep_marks && is_opaque(&upper[uino]) {
                        let lino = lower[l].inode;
                        let mut xattrs = lower[lino].xattrs.clone();
                        xattrs.retain(|(k, _)| k != OVERLAY_OPAQUE_XATTR);
                        xattrs.push((OVERLAY_OPAQUE_XATTR.to_vec(), b"y".to_vec()));
                        lower[lino].set_xattrs(xattrs);
                    }
                    if !(is_dir && lower_is_dir) {
                        lower[l].children.clear();
                    }
                    l
                }
                None => {
                    let mapped = map_inode(lower, uino, strip);
                    let e = EntryId::new(lower.entries.len());
                    lower.entries.push(Entry {
                        name: name.clone(),
                        parent: ldir,
                        inode: mapped,
                        children: Vec::new(),
                    });
                    lower[ldir].children.push(e);
                    by_name.insert(name, e);
                    e
                }
            };
            if is_dir {
                stack.push((target, u));
            }
        }
        let names: Vec<Vec<u8>> = lower[ldir]
            .children
            .iter()
            .map(|c| lower[*c].name.clone())
            .collect();
        let mut pairs: Vec<(Vec<u8>, EntryId)> = names
            .into_iter()
            .zip(lower[ldir].children.iter().copied())
            .collect();
        pairs.sort();
        lower[ldir].children = pairs.into_iter().map(|p| p.1).collect();
    }
}

impl Tree {
    /// A copy holding only the entries reachable from the root and the inodes they use, in
    /// the same order; chunk ids are kept.
    pub fn compact(&self) -> Tree {
        let mut out = Tree::new(self[self[EntryId::ROOT].inode].clone());
        let mut inode_map: HashMap<InodeId, InodeId> =
            HashMap::from([(self[EntryId::ROOT].inode, InodeId::new(0))]);
        let mut stack = vec![(EntryId::ROOT, EntryId::ROOT)];
        while let Some((old, new)) = stack.pop() {
            for &c in &self[old].children {
                let ino = self[c].inode;
                let mapped = *inode_map.entry(ino).or_insert_with(|| {
                    out.inodes.push(self[ino].clone());
                    InodeId::new(out.inodes.len() - 1)
                });
                let e = EntryId::new(out.entries.len());
                out.entries.push(Entry {
                    name: self[c].name.clone(),
                    parent: new,
                    inode: mapped,
                    children: Vec::new(),
                });
                out[new].children.push(e);
                stack.push((c, e));
            }
        }
        out
    }
}

/// Applies the whiteouts among `udir`'s children to the lower directory `ldir`, and returns
/// the upper children left to copy, each with whether it is an opaque directory (whose
/// opaque xattr is then stripped).
fn apply_whiteouts(
    lower: &mut Tree,
    ldir: EntryId,
    upper: &Tree,
    udir: EntryId,
    spec: WhiteoutSpec,
    keep_marks: bool,
) -> Vec<(EntryId, bool)> {
    let mut kept = Vec::new();
    for &u in &upper[udir].children {
        let name = upper[u].name.as_slice();
        let uinode = upper.inode_of(u);
        match classify(name, uinode, spec) {
            Whiteout::Opaque => lower[ldir].children.clear(),
            Whiteout::Remove(target) => {
                let keep: Vec<EntryId> = lower[ldir]
                    .children
                    .iter()
                    .copied()
                    .filter(|c| lower[*c].name != target)
                    .collect();
                lower[ldir].children = keep;
                if keep_marks {
                    kept.push((u, false));
                }
            }
            Whiteout::OpaqueDir => {
                let existing = lower[ldir]
                    .children
                    .iter()
                    .copied()
                    .find(|c| lower[*c].name == name);
                if let Some(l) = existing {
                    lower[l].children.clear();
                }
                kept.push((u, !keep_marks));
            }
            Whiteout::Not => kept.push((u, false)),
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tree::InodeKind;

    fn tree(spec: &[(&str, FileType)]) -> Tree {
        let mut t = Tree::new(Inode::new(FileType::Directory, 0o755));
        for (path, ft) in spec {
            let mut parent = EntryId::ROOT;
            let parts: Vec<&str> = path.split('/').collect();
            for (i, p) in parts.iter().enumerate() {
                let found = t[parent]
                    .children
                    .iter()
                    .copied()
                    .find(|c| t[*c].name == p.as_bytes());
                parent = match found {
                    Some(f) => f,
                    None => {
                        let ft = if i + 1 == parts.len() {
                            *ft
                        } else {
                            FileType::Directory
                        };
                        let inode = Inode::new(ft, 0o644);
                        let ino = t.add_inode(inode);
                        t.add_entry(parent, p.as_bytes(), ino).unwrap()
                    }
                };
            }
        }
        t.sort();
        t
    }

    fn paths(t: &Tree) -> Vec<String> {
        let t = t.compact();
        let mut v: Vec<String> = t
            .entry_ids()
            .skip(1)
            .map(|e| t.path(e).display().to_string())
            .collect();
        v.sort();
        v
    }

    use FileType::*;

    #[test]
    fn has_whiteouts_sees_each_kind_under_its_spec() {
        let plain = tree(&[("a/b", Regular), ("c", CharDevice)]);
        assert!(!has_whiteouts(&plain, WhiteoutSpec::Oci));
        // a 0:0 character device is a whiteout only to overlayfs
        assert!(has_whiteouts(&plain, WhiteoutSpec::Overlayfs));
        assert!(!has_whiteouts(&plain, WhiteoutSpec::None));
        let oci = tree(&[("a/.wh.b", Regular)]);
        assert!(has_whiteouts(&oci, WhiteoutSpec::Oci));
        assert!(!has_whiteouts(&oci, WhiteoutSpec::Overlayfs));
        let opaque = tree(&[("d/.wh..wh..opq", Regular)]);
        assert!(has_whiteouts(&opaque, WhiteoutSpec::Oci));
        let mut xattr = tree(&[("d/x", Regular)]);
        let d = xattr[xattr[EntryId::ROOT].children[0]].inode;
        xattr[d].set_xattrs(vec![(OVERLAY_OPAQUE_XATTR.to_vec(), b"y".to_vec())]);
        assert!(has_whiteouts(&xattr, WhiteoutSpec::Overlayfs));
        assert!(!has_whiteouts(&xattr, WhiteoutSpec::Oci));
    }

    #[test]
    fn oci_whiteouts_and_opaque() {
        let mut low = tree(&[
            ("a/x", Regular),
            ("a/y", Regular),
            ("b", Regular),
            ("c/d", Regular),
        ]);
        let up = tree(&[
            ("a/.wh..wh..opq", Regular),
            ("a/z", Regular),
            (".wh.b", Regular),
            ("c/.wh.d", Regular),
        ]);
        apply(&mut low, &up, WhiteoutSpec::Oci, &|c| c);
        assert_eq!(paths(&low), vec!["/a", "/a/z", "/c"]);
    }

    #[test]
    fn overlayfs_whiteouts_and_opaque_dirs() {
        let mut low = tree(&[("a/x", Regular), ("b", Regular)]);
        let mut up = tree(&[("a/new", Regular), ("b", CharDevice)]);
        let a = up[EntryId::ROOT].children[0];
        let ino = up[a].inode;
        up[ino].xattrs = vec![(OVERLAY_OPAQUE_XATTR.to_vec(), b"y".to_vec())];
        apply(&mut low, &up, WhiteoutSpec::Overlayfs, &|c| c);
        assert_eq!(paths(&low), vec!["/a", "/a/new"]);
        let t = low.compact();
        assert!(
            t.inode_of(t[EntryId::ROOT].children[0]).xattrs.is_empty(),
            "opaque xattr dropped"
        );
    }

    #[test]
    fn file_replaced_by_dir_and_back() {
        let mut low = tree(&[("f", Regular), ("d/inner", Regular)]);
        let up = tree(&[("f/now-a-dir", Regular), ("d", Symlink)]);
        apply(&mut low, &up, WhiteoutSpec::Oci, &|c| c);
        assert_eq!(paths(&low), vec!["/d", "/f", "/f/now-a-dir"]);
        let t = low.compact();
        assert_eq!(
            t.inode_of(t[EntryId::ROOT].children[0]).file_type(),
            Symlink
        );
    }

    #[test]
    fn whiteouts_in_the_bottom_layer_are_dropped() {
        let mut base = Tree::new(Inode::new(Directory, 0o755));
        let layer = tree(&[(".wh.gone", Regular), ("kept", Regular)]);
        apply(&mut base, &layer, WhiteoutSpec::Oci, &|c| c);
        assert_eq!(paths(&base), vec!["/kept"]);
    }

    fn dir_meta(t: &Tree, path: &str) -> (u16, u32, i64) {
        let t = t.compact();
        let mut e = EntryId::ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            e = t[e]
                .children
                .iter()
                .copied()
                .find(|x| t[*x].name == c.as_bytes())
                .unwrap();
        }
        let i = t.inode_of(e);
        (i.permissions, i.uid, i.mtime)
    }

    fn set_meta(t: &mut Tree, path: &str, perm: u16, uid: u32, mtime: i64) {
        let mut e = EntryId::ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            e = t[e]
                .children
                .iter()
                .copied()
                .find(|x| t[*x].name == c.as_bytes())
                .unwrap();
        }
        let ino = t[e].inode;
        t[ino].permissions = perm;
        t[ino].uid = uid;
        t[ino].mtime = mtime;
        t[ino].kind = InodeKind::Directory { implied: false };
    }

    #[test]
    fn implied_directories_keep_the_lower_metadata() {
        let mut low = tree(&[("a/x", Regular), ("b/y", Regular)]);
        set_meta(&mut low, "", 0o700, 0, 11);
        set_meta(&mut low, "a", 0o750, 7, 22);
        set_meta(&mut low, "b", 0o711, 8, 33);
        let mut up = tree(&[("a/new", Regular), ("b/new", Regular)]);
        // "a" and the root as the tar reader marks them; "b" as a bootstrap gives it back
        // (no mark, but exactly the placeholders)
        let root = up[EntryId::ROOT].inode;
        up[root] = Inode::implied_dir();
        let a = up[EntryId::ROOT].children[0];
        let ai = up[a].inode;
        up[ai] = Inode::implied_dir();
        let b = up[EntryId::ROOT].children[1];
        let bi = up[b].inode;
        up[bi] = Inode::new(Directory, 0o755);
        apply(&mut low, &up, WhiteoutSpec::Oci, &|c| c);
        assert_eq!(dir_meta(&low, ""), (0o700, 0, 11));
        assert_eq!(dir_meta(&low, "a"), (0o750, 7, 22));
        assert_eq!(dir_meta(&low, "b"), (0o711, 8, 33));
        assert_eq!(
            paths(&low),
            vec!["/a", "/a/new", "/a/x", "/b", "/b/new", "/b/y"]
        );
    }

    #[test]
    fn listed_directories_replace_the_lower_metadata() {
        let mut low = tree(&[("a/x", Regular)]);
        set_meta(&mut low, "a", 0o750, 7, 22);
        let mut up = tree(&[("a/new", Regular)]);
        // one attribute off the placeholders is enough to count as listed
        set_meta(&mut up, "a", 0o755, 0, 1);
        apply(&mut low, &up, WhiteoutSpec::Oci, &|c| c);
        assert_eq!(dir_meta(&low, "a"), (0o755, 0, 1));
        // an implied directory over a file replaces the file
        let mut low = tree(&[("f", Regular)]);
        let mut up = tree(&[("f/inner", Regular)]);
        let f = up[EntryId::ROOT].children[0];
        let fi = up[f].inode;
        up[fi] = Inode::implied_dir();
        apply(&mut low, &up, WhiteoutSpec::Oci, &|c| c);
        assert_eq!(paths(&low), vec!["/f", "/f/inner"]);
        assert_eq!(dir_meta(&low, "f"), (0o755, 0, 0));
    }
}
