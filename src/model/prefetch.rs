//! Prefetch patterns (`--prefetch-policy`): which paths a bootstrap's prefetch table names and
//! which files' data goes first in the blob (formats/rafs-v6.md §6, formats/rafs-v5.md §4).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::tree::{EntryId, InodeId, Tree};
use crate::error::Error;

/// What `--prefetch-policy` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PrefetchPolicy {
    /// No prefetch table, data in tree order; stdin is not read.
    #[default]
    None,
    /// Prefetch table in the bootstrap, files under the patterns first in the blob.
    Fs,
    /// Files under the patterns first in the blob, but no prefetch table.
    Blob,
}

impl FromStr for PrefetchPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<PrefetchPolicy, Error> {
        match s {
            "none" => Ok(PrefetchPolicy::None),
            "fs" => Ok(PrefetchPolicy::Fs),
            "blob" => Ok(PrefetchPolicy::Blob),
            _ => Err(Error::InvalidOption(format!(
                "invalid prefetch policy {s:?}; expected fs, blob or none"
            ))),
        }
    }
}

/// The policy and its patterns, as upstream keeps them: absolute paths in input order, none
/// under an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefetch {
    /// The policy.
    pub policy: PrefetchPolicy,
    patterns: Vec<PathBuf>,
}

impl Prefetch {
    /// Parses patterns, one per line (the last may lack its newline), surrounding whitespace
    /// trimmed. Relative paths and paths equal to or under an earlier pattern are dropped, each
    /// with a warning as upstream logs it; a later pattern above an earlier one is kept.
    pub fn new(policy: PrefetchPolicy, text: &str) -> Prefetch {
        let mut patterns: Vec<PathBuf> = Vec::new();
        if policy == PrefetchPolicy::None {
            return Prefetch { policy, patterns };
        }
        for line in text.lines() {
            let path = normalize(Path::new(line.trim()));
            if !path.is_absolute() {
                log::warn!("prefetch pattern {line:?} is not an absolute path: ignored");
                continue;
            }
            if path.ancestors().any(|a| patterns.iter().any(|p| p == a)) {
                log::warn!("prefetch pattern {line:?} is covered by an earlier one: ignored");
                continue;
            }
            patterns.push(path);
        }
        Prefetch { policy, patterns }
    }

    /// The patterns kept, in input order.
    pub fn patterns(&self) -> &[PathBuf] {
        &self.patterns
    }

    /// Whether the blob's data order depends on the patterns.
    pub fn reorders_data(&self) -> bool {
        self.policy != PrefetchPolicy::None && !self.patterns.is_empty()
    }

    /// Each pattern's index, for lookups by path (clients send lists of thousands).
    fn index(&self) -> HashMap<&Path, usize> {
        let mut index = HashMap::with_capacity(self.patterns.len());
        for (i, p) in self.patterns.iter().enumerate() {
            index.entry(p.as_path()).or_insert(i);
        }
        index
    }

    /// The index of the deepest pattern at or above `path`.
    fn pattern_of(index: &HashMap<&Path, usize>, path: &Path) -> Option<usize> {
        path.ancestors().find_map(|a| index.get(a).copied())
    }

    /// The prefetch table's entries: per pattern naming an entry of `tree`, in pattern order,
    /// that entry. Empty unless
    /// the policy is `fs`; patterns naming nothing are dropped silently, as upstream does.
    pub fn table(&self, tree: &Tree) -> Vec<EntryId> {
        if self.policy != PrefetchPolicy::Fs || self.patterns.is_empty() {
            return Vec::new();
        }
        let index = self.index();
        let mut found: Vec<Option<EntryId>> = vec![None; self.patterns.len()];
        for e in tree.entry_ids() {
            if let Some(i) = index.get(tree.path(e).as_path()) {
                found[*i] = Some(e);
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Reorders `files` (each inode with data once, in tree order, as the source found them)
    /// into blob order: files with a path under a pattern first, by the lowest pattern index of
    /// any of their paths (hardlinks count at every name), the rest after them in tree order.
    pub fn data_order<T>(&self, tree: &Tree, files: Vec<(InodeId, T)>) -> Vec<(InodeId, T)> {
        if !self.reorders_data() {
            return files;
        }
        let index = self.index();
        let mut rank: Vec<Option<usize>> = vec![None; tree.inodes.len()];
        for e in tree.entry_ids() {
            if let Some(i) = Self::pattern_of(&index, &tree.path(e)) {
                let r = &mut rank[tree[e].inode.index()];
                *r = Some(r.map_or(i, |old| old.min(i)));
            }
        }
        let (mut first, rest): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|(ino, _)| rank[ino.index()].is_some());
        // stable: files under one pattern keep their tree order
        first.sort_by_key(|(ino, _)| rank[ino.index()]);
        first.extend(rest);
        first
    }
}

/// `path` with `.` and repeated or trailing separators gone, as upstream's `PathBuf`
/// comparison sees it (`..` is kept: upstream does not resolve it either).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_upstream_rules() {
        let text = "/a/b\n/a/b/c\n  /f  \nrel\n/a\n/h/i/\n/a/b\n/k";
        let p = Prefetch::new(PrefetchPolicy::Fs, text);
        let want: Vec<PathBuf> = ["/a/b", "/f", "/a", "/h/i", "/k"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(p.patterns(), want.as_slice());
        let index = p.index();
        assert_eq!(Prefetch::pattern_of(&index, Path::new("/a/b/x")), Some(0));
        assert_eq!(Prefetch::pattern_of(&index, Path::new("/a/z")), Some(2));
        assert_eq!(Prefetch::pattern_of(&index, Path::new("/z")), None);
        assert!(Prefetch::new(PrefetchPolicy::None, "/a")
            .patterns()
            .is_empty());
        assert_eq!(Prefetch::new(PrefetchPolicy::Fs, "/").patterns().len(), 1);
    }
}
