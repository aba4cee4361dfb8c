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
    &["source", "registry"],
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

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The body of the `{ … }` block `text` starts with (leading blanks allowed), braces matched,
/// and the rest of `text` after it.
fn braced(text: &str) -> Option<(&str, &str)> {
    let body = text.trim_start().strip_prefix('{')?;
    let mut depth = 1;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return Some((&body[..i], &body[i + 1..]));
        }
    }
    None
}

/// The names the crate root's `pub use` statement `stmt` (without `pub use` and `;`) defines,
/// and the top-level module they come from: `model::{Tree, Inode}` gives `model` and both names.
fn root_use(stmt: &str) -> Option<(String, Vec<String>)> {
    let stmt = stmt.trim();
    let stmt = stmt.strip_prefix("crate::").unwrap_or(stmt);
    let module: String = stmt.chars().take_while(|c| is_ident(*c)).collect();
    let tail = match stmt.rfind('{') {
        Some(i) => stmt[i + 1..].trim_end_matches('}'),
        None => stmt.rsplit("::").next().unwrap_or_default(),
    };
    let names = tail
        .split(',')
        .filter_map(|item| item.split_whitespace().last())
        .map(|n| n.trim_end_matches('}').to_string())
        .filter(|n| !n.is_empty() && n.chars().all(is_ident))
        .collect();
    (!module.is_empty()).then_some((module, names))
}

/// What the names the crate root adds stand for: each re-exported item (`pub use
/// model::Tree`) maps to the module it comes from, each facade module written inline in
/// `lib.rs` (`pub mod read { pub use crate::rafs::load; … }`) to every module it re-exports
/// from. A path through one of them (`erofs_forge::read::load`) is an edge to those modules.
pub fn root_aliases(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut root = String::new();
    let mut rest = strip_comments(lib);
    while let Some(i) = rest.find("pub mod ") {
        root.push_str(&rest[..i]);
        let after = &rest[i + "pub mod ".len()..];
        let name: String = after.chars().take_while(|c| is_ident(*c)).collect();
        let Some((body, tail)) = braced(&after[name.len()..]) else {
            rest = after.to_string();
            continue;
        };
        let modules = references(body, "crate").into_iter().map(|r| r.0);
        out.entry(name).or_default().extend(modules);
        rest = tail.to_string();
    }
    root.push_str(&rest);
    for stmt in root.split(';') {
        let Some(i) = stmt.find("pub use ") else {
            continue;
        };
        let Some((module, names)) = root_use(&stmt[i + "pub use ".len()..]) else {
            continue;
        };
        for n in names {
            out.entry(n).or_default().insert(module.clone());
        }
    }
    out
}

/// Edges between top-level modules from every file under `src`.
pub fn edges(src: &Path) -> Result<Vec<Edge>> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    files.sort();
    let aliases = match std::fs::read_to_string(src.join("lib.rs")) {
        Ok(lib) => root_aliases(&lib),
        Err(_) => BTreeMap::new(),
    };
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
            // `crate::Result`, `erofs_forge::read::load`: the root's re-exports and facades
            let targets = match aliases.get(&to) {
                Some(modules) if layer_of(&to).is_none() => modules.iter().cloned().collect(),
                _ => vec![to],
            };
            for to in targets.into_iter().filter(|t| *t != from) {
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
    fn root_re_exports_and_facades_resolve_to_their_modules() {
        let lib = "mod model;\npub use error::{Error, Result};\npub use model::{\n    Tree,\n    Inode,\n};\npub use model::overlay::WhiteoutSpec;\n/// Reading.\npub mod read {\n    pub use crate::rafs::{decode, load};\n    pub use crate::blob::reader::{BlobSource, ChunkReader};\n}\npub use codec::Compressor;\n";
        let a = root_aliases(lib);
        let get = |n: &str| a[n].iter().cloned().collect::<Vec<_>>().join(",");
        assert_eq!(get("Result"), "error");
        assert_eq!(get("Inode"), "model");
        assert_eq!(get("WhiteoutSpec"), "model");
        assert_eq!(get("Compressor"), "codec");
        assert_eq!(get("read"), "blob,rafs");
        assert!(!a.contains_key("model"));
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
