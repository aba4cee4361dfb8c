//! `cargo xtask layers`: the library's import graph checked against its layer table.
//!
//! Each top-level module of `src/` sits on a layer; a module may import modules on lower
//! layers, and modules on its own layer as long as no two import each other. The binary
//! (`src/bin`) sits on top. The table below is the one home of the layer order (README
//! "Layout" and `lib.rs` describe it in words).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Result};

/// Top-level modules by layer, bottom first.
pub const LAYERS: &[&[&str]] = &[
    &["error"],
    &["io", "codec"],
    &["format"],
    &["model"],
    &["rafs", "blob"],
    &["chunk"],
    &["source"],
    &["ops"],
    &["bin"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// One reference from a file of module `from` to module `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub at: String,
}

/// The module a file of `src/` belongs to (`None` for `lib.rs`).
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    if first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Removes `//` comments (doc comments included) so that paths named in prose do not count.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::x` (or, in the binary, `erofs_forge::x`) path in `text`, grouped imports
/// (`crate::{a, b::c}`) included, with its line number.
pub fn references(text: &str, root: &str) -> Vec<(String, usize)> {
    let text = strip_comments(text);
    let mut out = Vec::new();
    let prefix = format!("{root}::");
    let mut from = 0;
    while let Some(i) = text[from..].find(&prefix) {
        let at = from + i;
        from = at + prefix.len();
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        let rest = &text[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((name, line));
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((name, line));
        }
    }
    out
}

/// Edges between top-level modules from every file under `src`.
pub fn edges(src: &Path) -> Result<Vec<Edge>> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src)?;
        let Some(from) = module_of(rel) else { continue };
        let root = if from == "bin" {
            "erofs_forge"
        } else {
            "crate"
        };
        let text = std::fs::read_to_string(&file)?;
        for (to, line) in references(&text, root) {
            // `crate::Result` and friends are the crate root's re-exports of `error`
            let to = if layer_of(&to).is_none() && to.chars().next().is_some_and(char::is_uppercase)
            {
                "error".to_string()
            } else {
                to
            };
            if to != from {
                out.push(Edge {
                    from: from.clone(),
                    to,
                    at: format!("src/{}:{line}", rel.display()),
                });
            }
        }
    }
    Ok(out)
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, files)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
    Ok(())
}

/// Every edge that breaks the table: upward, to an unknown module, or one half of a cycle
/// within a layer.
pub fn violations(edges: &[Edge]) -> Vec<String> {
    let pairs: BTreeSet<(&str, &str)> = edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    let mut out = Vec::new();
    for e in edges {
        let (Some(f), Some(t)) = (layer_of(&e.from), layer_of(&e.to)) else {
            out.push(format!(
                "{}: {} -> {}: module not in the layer table",
                e.at, e.from, e.to
            ));
            continue;
        };
        if t > f {
            out.push(format!("{}: {} -> {} imports upward", e.at, e.from, e.to));
        } else if t == f && pairs.contains(&(e.to.as_str(), e.from.as_str())) {
            out.push(format!(
                "{}: {} -> {} closes a cycle ({} also imports {})",
                e.at, e.from, e.to, e.to, e.from
            ));
        }
    }
    out
}

/// Runs `cargo xtask layers`.
pub fn check(root: &Path) -> Result<()> {
    let edges = edges(&root.join("src"))?;
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &edges {
        *counts.entry((e.from.clone(), e.to.clone())).or_default() += 1;
    }
    for (layer, mods) in LAYERS.iter().enumerate().rev() {
        for m in *mods {
            let to: Vec<String> = counts
                .iter()
                .filter(|((f, _), _)| f == m)
                .map(|((_, t), n)| format!("{t} ({n})"))
                .collect();
            println!("layers: {layer} {m:<7} -> {}", to.join(", "));
        }
    }
    let bad = violations(&edges);
    if !bad.is_empty() {
        bail!(
            "{} imports break the layer table:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
    println!("layers: {} imports, all downward, no cycles", edges.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            at: "x.rs:1".into(),
        }
    }

    #[test]
    fn references_read_paths_groups_and_skip_comments() {
        let text = "use crate::{io::staged, format::blob::X};\n// crate::ops::create\nlet x = crate::model::Tree::new();\nfoo_crate::ops::y();";
        let refs: Vec<String> = references(text, "crate").into_iter().map(|r| r.0).collect();
        assert_eq!(refs, ["io", "format", "model"]);
    }

    #[test]
    fn upward_edges_and_cycles_are_violations() {
        assert!(violations(&[edge("ops", "model"), edge("rafs", "format")]).is_empty());
        assert_eq!(violations(&[edge("format", "ops")]).len(), 1);
        assert_eq!(violations(&[edge("rafs", "blob")]).len(), 0);
        assert_eq!(
            violations(&[edge("rafs", "blob"), edge("blob", "rafs")]).len(),
            2
        );
        assert_eq!(violations(&[edge("model", "nowhere")]).len(), 1);
    }

    #[test]
    fn an_upward_import_in_a_source_tree_fails_the_check_naming_its_file() {
        let root = std::env::temp_dir().join(format!("xtask-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("src/format")).unwrap();
        std::fs::create_dir_all(root.join("src/ops")).unwrap();
        std::fs::write(root.join("src/ops/a.rs"), "use crate::format::x;\n").unwrap();
        assert!(check(&root).is_ok());
        std::fs::write(root.join("src/format/x.rs"), "\nuse crate::ops::a;\n").unwrap();
        let err = check(&root).unwrap_err().to_string();
        assert!(err.contains("1 imports break"), "{err}");
        assert!(err.contains("format/x.rs:2"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
