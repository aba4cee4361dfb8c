//! `optimize` (issue 16) with nydusify's argv: 50 files of the Debian tree (or, where it has
//! not been made, the full fixture tree) move into a new blob, in the listed order; the
//! bootstrap's prefetch table lists them; the image unpacks and mounts equal to the source.

use crate::common::*;
use std::path::{Path, PathBuf};

/// The tree to optimize: `target/xtask-trees/debian` (`cargo xtask debian ...`) if present,
/// else the full fixture tree built into `work`.
pub fn debian_or_full_tree(work: &Path) -> PathBuf {
    let debian = repo().join("target/xtask-trees/debian");
    if debian.is_dir() {
        return debian;
    }
    eprintln!("note: no target/xtask-trees/debian; using the full fixture tree and 400 files");
    let t = work.join("full");
    full_tree(&t, false);
    many_files(&t.join("many"), 400);
    t
}

/// `n` files of 1-20 KiB of distinct pseudo-random text in 20 directories: enough files and
/// chunks for a 50-file list and for a dictionary to matter, where no Debian tree was made.
fn many_files(dir: &Path, n: usize) {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..n {
        let sub = dir.join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&sub).unwrap();
        let len = 1024 + (rnd() % (19 * 1024)) as usize;
        let body: Vec<u8> = (0..len).map(|_| b'a' + (rnd() % 26) as u8).collect();
        std::fs::write(sub.join(format!("f{i:03}.txt")), body).unwrap();
    }
}

/// `n` regular files with data, spread over the tree, listed in reverse path order (so that
/// the list order is not the tree's order).
fn pick_files(root: &Path, n: usize) -> Vec<String> {
    let mut all: Vec<String> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file() && e.metadata().unwrap().len() > 0)
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap();
            format!("/{}", rel.to_str().unwrap())
        })
        .collect();
    all.sort();
    assert!(all.len() >= n, "{} files in {}", all.len(), root.display());
    let step = all.len() / n;
    let mut picked: Vec<String> = (0..n).map(|i| all[i * step].clone()).collect();
    picked.reverse();
    picked
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&forge(args).stdout).unwrap()
}

fn owners_only_as_root(
    mut m: std::collections::BTreeMap<Vec<u8>, Desc>,
) -> std::collections::BTreeMap<Vec<u8>, Desc> {
    if !is_root() {
        m.retain(|_, d| d.kind != 'c' && d.kind != 'b');
        for d in m.values_mut() {
            (d.uid, d.gid) = (0, 0);
            d.xattrs.retain(|(k, _)| k.starts_with(b"user."));
        }
    }
    m
}

#[test]
// one attribute: two `ignore`s active at once fail clippy's unused-attribute lint
#[cfg_attr(
    any(no_mount, no_full_tree),
    ignore = "needs a kernel EROFS mount, root and the fixture-tree tools"
)]
fn optimize_puts_the_listed_files_first_in_a_new_blob() {
    let w = scratch();
    let src = debian_or_full_tree(w.path());
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let boot = w.path().join("bootstrap");
    forge(&["create", "-D", s(&blobs), "-B", s(&boot), s(&src)]);
    let files = pick_files(&src, 50);
    let list = w.path().join("prefetch.files");
    std::fs::write(&list, files.join("\n") + "\n").unwrap();
    let (out_boot, out_json) = (w.path().join("optimized.boot"), w.path().join("out.json"));
    // nydusify's call (pkg/optimizer), localfs backend: the blob dir is also the output dir
    forge(&[
        "optimize",
        "--log-level",
        "warn",
        "--prefetch-files",
        s(&list),
        "--bootstrap",
        s(&boot),
        "--output-blob-dir",
        s(&blobs),
        "--output-bootstrap",
        s(&out_boot),
        "--output-json",
        s(&out_json),
        "--blob-dir",
        s(&blobs),
    ]);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    let ids: Vec<&str> = doc["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    let new_id = *ids.last().unwrap();
    let new_blob = std::fs::read(blobs.join(new_id)).unwrap();
    assert_eq!(
        sha256_hex(&new_blob),
        new_id,
        "the new blob is named by its sha256"
    );
    let table = json(&["inspect", s(&out_boot), "-R", "blobs"]);
    let table = table.as_array().unwrap();
    assert_eq!(table.last().unwrap()["blob_id"], new_id);
    let new_index = table.len() as u64 - 1;
    let chunk_count = table.last().unwrap()["chunk_count"].as_u64().unwrap();

    // the prefetch table names the 50 files, in the listed order
    let prefetch = json(&["inspect", s(&out_boot), "-R", "prefetch"]);
    let listed: Vec<String> = prefetch
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 50);
    // the new blob holds exactly those files' chunks, numbered in the listed order
    let mut next = 0u64;
    let mut shown = Vec::new();
    for f in &files {
        let st = json(&["inspect", s(&out_boot), "-R", &format!("stat {f}")]);
        for c in st["chunks"].as_array().unwrap() {
            assert_eq!(c["blob_index"].as_u64(), Some(new_index), "{f}: {c}");
            let idx = c["chunk_index"].as_u64().unwrap();
            assert!(idx <= next, "{f}: chunk {idx} comes before chunk {next}");
            if idx == next {
                next += 1;
            }
            if shown.len() < 5 {
                shown.push(format!(
                    "{f}: chunk {idx} at compressed offset {}",
                    c["compressed_offset"]
                ));
            }
        }
    }
    assert_eq!(next, chunk_count, "no other chunk is in the new blob");
    eprintln!(
        "optimize: new blob {new_id} ({} bytes, {chunk_count} chunks); first chunks:\n{}",
        new_blob.len(),
        shown.join("\n")
    );

    forge(&["check", s(&out_boot), "-D", s(&blobs)]);
    let dest = w.path().join("unpacked");
    forge(&[
        "unpack",
        s(&out_boot),
        "-D",
        s(&blobs),
        "--output-dir",
        s(&dest),
    ]);
    let want = owners_only_as_root(manifest(&src));
    let d = diff(&want, &owners_only_as_root(manifest(&dest)));
    assert!(d.is_empty(), "unpack:\n{}", d.join("\n"));

    if let Some(why) = cannot_mount() {
        missing("optimize (kernel part)", &why);
    }
    let disk = w.path().join("optimized.disk");
    export_block(&out_boot, &blobs, &disk);
    let m = mount(&disk, &[]);
    let d = diff(&want, &manifest(m.dir.path()));
    assert!(d.is_empty(), "kernel:\n{}", d.join("\n"));
}

#[test]
fn optimize_refuses_other_backends_and_names_missing_blobs() {
    let w = scratch();
    let src = repo().join("fixtures/sample");
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let boot = w.path().join("bootstrap");
    forge(&["create", "-D", s(&blobs), "-B", s(&boot), s(&src)]);
    let list = w.path().join("list");
    let first = pick_files(&src, 1);
    std::fs::write(&list, &first[0]).unwrap();
    let out = w.path().join("out");
    let err = forge_fails(&[
        "optimize",
        "--prefetch-files",
        s(&list),
        "--bootstrap",
        s(&boot),
        "--output-blob-dir",
        s(&out),
        "--backend-type",
        "registry",
        "--backend-config",
        "{}",
    ]);
    assert!(err.contains("\"registry\" is not supported"), "{err}");
    let empty = w.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = forge_fails(&[
        "optimize",
        "--prefetch-files",
        s(&list),
        "--bootstrap",
        s(&boot),
        "--output-blob-dir",
        s(&empty),
        "--blob-dir",
        s(&empty),
    ]);
    assert!(err.contains("find blob"), "{err}");
}

#[test]
fn optimize_a_v5_image_with_upstreams_json_list() {
    let w = scratch();
    let src = repo().join("fixtures/sample");
    let blobs = w.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let boot = w.path().join("bootstrap");
    forge(&[
        "create",
        "-v",
        "5",
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        s(&src),
    ]);
    let files = pick_files(&src, 2);
    // nydus-image's own list format; a path the image lacks is skipped
    let list = w.path().join("list.json");
    let entries: Vec<String> = files
        .iter()
        .chain(std::iter::once(&"/not/there".to_string()))
        .map(|f| format!("{{\"path\":\"{f}\"}}"))
        .collect();
    std::fs::write(
        &list,
        format!("{{\"version\":\"v1\",\"files\":[{}]}}", entries.join(",")),
    )
    .unwrap();
    let out = w.path().join("optimized");
    forge(&[
        "optimize",
        "-p",
        s(&list),
        "-B",
        s(&boot),
        "--output-blob-dir",
        s(&blobs),
        "-O",
        s(&out),
        "-D",
        s(&blobs),
    ]);
    let prefetch = json(&["inspect", s(&out), "-R", "prefetch"]);
    assert_eq!(prefetch.as_array().unwrap().len(), 2, "{prefetch}");
    forge(&["check", s(&out), "-D", s(&blobs)]);
    let dest = w.path().join("tree");
    forge(&["unpack", s(&out), "-D", s(&blobs), "--output-dir", s(&dest)]);
    let (mut a, mut b) = (manifest(&src), manifest(&dest));
    a.remove(&b""[..]);
    b.remove(&b""[..]);
    let d = diff(&owners_only_as_root(a), &owners_only_as_root(b));
    assert!(d.is_empty(), "{}", d.join("\n"));
}
