//! The same input gives byte-identical output on every run and at any thread count.

use crate::common::*;
use std::path::Path;

fn build(source: &Path, threads: &str, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    let out = scratch();
    let cache = out.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mut args = vec![
        "create",
        "--threads",
        threads,
        "-D",
        out.path().to_str().unwrap(),
        "--blob-cache-dir",
        cache.to_str().unwrap(),
        "-B",
        out.path()
            .join("bootstrap")
            .to_str()
            .unwrap()
            .to_owned()
            .leak(),
    ];
    args.extend_from_slice(extra);
    args.push(source.to_str().unwrap());
    forge(&args);
    let mut files = Vec::new();
    for dir in [out.path(), cache.as_path()] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                files.push((
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 4,
        "bootstrap, blob, .blob.data, .blob.meta: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    files
}

fn assert_same(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)], what: &str) {
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "{what}: file names (blob ids) differ"
    );
    for (x, y) in a.iter().zip(b) {
        assert!(x.1 == y.1, "{what}: {} differs", x.0);
    }
}

fn check_tree(source: &Path) {
    for extra in [
        &["--compressor", "zstd"][..],
        &["--compressor", "lz4_block", "--chunk-size", "0x1000"],
    ] {
        let first = build(source, "1", extra);
        assert_same(&first, &build(source, "2", extra), "threads 1 vs 2");
        assert_same(
            &first,
            &build(source, "2", extra),
            "second run at 2 threads",
        );
        assert_same(&first, &build(source, "7", extra), "threads 1 vs 7");
    }
}

#[test]
fn sample_is_byte_identical_across_runs_and_threads() {
    check_tree(&repo().join("fixtures/sample"));
}

#[test]
#[cfg_attr(
    no_full_tree,
    ignore = "needs the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn full_tree_is_byte_identical_across_runs_and_threads() {
    if let Some(why) = cannot_build_full_tree() {
        missing("full_tree_is_byte_identical_across_runs_and_threads", &why);
    }
    let src = scratch();
    full_tree(src.path(), false);
    check_tree(src.path());
}
