//! `cargo xtask citations`: every `formats/<file>.md §N` the code cites names a file that
//! exists and a section heading (`## §N`, `### §N.M`) that file has.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Result};

/// One citation: the document, the section if any, and where it was found.
#[derive(Debug, PartialEq, Eq)]
pub struct Citation {
    pub doc: String,
    pub section: Option<String>,
    pub line: usize,
}

/// The citations in `text`.
pub fn citations(text: &str) -> Vec<Citation> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("formats/") {
            rest = &rest[at + "formats/".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
                .collect();
            let Some(doc) = name.find(".md").map(|e| name[..e + 3].to_string()) else {
                continue; // a directory or another file type, not a document citation
            };
            let after = &rest[doc.len()..];
            let section = after.strip_prefix(" §").map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect::<String>()
                    .trim_end_matches('.')
                    .to_string()
            });
            out.push(Citation {
                doc,
                section,
                line: i + 1,
            });
        }
    }
    out
}

/// The section numbers a format document's headings define.
pub fn sections(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches('#').trim_start().strip_prefix('§'))
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect::<String>()
        })
        .map(|s| s.trim_end_matches('.').to_string())
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect(&p, files)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
    Ok(())
}

/// What a scan of a source tree found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Citations seen.
    pub citations: usize,
    /// Files read.
    pub files: usize,
    /// One line per citation that does not resolve, `file:line: why`.
    pub unresolved: Vec<String>,
}

/// Reads every Rust file under `root`'s source folders and checks each citation against
/// `root/formats/`.
pub fn scan(root: &Path) -> Result<Scan> {
    let mut files = Vec::new();
    for d in ["src", "tests", "xtask/src", "fuzz/src", "fuzz/fuzz_targets"] {
        collect(&root.join(d), &mut files)?;
    }
    files.sort();
    let mut out = Scan {
        files: files.len(),
        ..Scan::default()
    };
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for c in citations(&text) {
            out.citations += 1;
            let at = format!("{}:{}", file.strip_prefix(root)?.display(), c.line);
            let Ok(doc) = std::fs::read_to_string(root.join("formats").join(&c.doc)) else {
                out.unresolved
                    .push(format!("{at}: formats/{} does not exist", c.doc));
                continue;
            };
            if let Some(s) = &c.section {
                if !sections(&doc).contains(s) {
                    out.unresolved
                        .push(format!("{at}: formats/{} has no §{s}", c.doc));
                }
            }
        }
    }
    Ok(out)
}

/// Runs `cargo xtask citations`.
pub fn check(root: &Path) -> Result<()> {
    let scan = scan(root)?;
    if !scan.unresolved.is_empty() {
        bail!(
            "{} citations do not resolve:\n{}",
            scan.unresolved.len(),
            scan.unresolved.join("\n")
        );
    }
    println!(
        "citations: {} citations in {} files, all resolve",
        scan.citations, scan.files
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_and_sections_are_read() {
        let text = "x\n/// see (formats/blob.md §3.2). and formats/rafs-v6.md §18, formats/tar.md.\n// fixtures/ formats/ dir";
        let c = citations(text);
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c[0].doc.as_str(), c[0].section.as_deref(), c[0].line),
            ("blob.md", Some("3.2"), 2)
        );
        assert_eq!(c[1].section.as_deref(), Some("18"));
        assert_eq!(
            (c[2].doc.as_str(), c[2].section.as_deref()),
            ("tar.md", None)
        );
        let s = sections("# T\n## §1 A\n### §1.2 B\ntext §9\n## §10 C");
        assert_eq!(s.into_iter().collect::<Vec<_>>(), ["1", "1.2", "10"]);
    }

    #[test]
    fn a_missing_section_and_a_missing_file_are_reported_with_their_place() {
        // spelled through `f` so that this file's own scan does not count them
        let f = "formats";
        let root = std::env::temp_dir().join(format!("xtask-citations-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(f)).unwrap();
        std::fs::create_dir_all(root.join("src/a")).unwrap();
        std::fs::write(root.join(f).join("x.md"), "# X\n## §1 One\n### §1.1 Sub\n").unwrap();
        std::fs::write(
            root.join("src/a/b.rs"),
            format!("// {f}/x.md §1.1 ok\n// {f}/x.md §2 gone\n\n// {f}/y.md §1\n"),
        )
        .unwrap();
        let scan = scan(&root).unwrap();
        assert_eq!((scan.citations, scan.files), (3, 1));
        assert_eq!(
            scan.unresolved,
            [
                format!("src/a/b.rs:2: {f}/x.md has no §2"),
                format!("src/a/b.rs:4: {f}/y.md does not exist")
            ]
        );
        assert!(check(&root).is_err());
        std::fs::write(root.join("src/a/b.rs"), format!("// {f}/x.md §1\n")).unwrap();
        assert!(check(&root).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
