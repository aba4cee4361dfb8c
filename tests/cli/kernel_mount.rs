//! The kernel is the judge: images built from trees holding every entry kind mount, and the
//! mounted tree equals the source (contents, modes, owners, mtimes, xattrs, hardlinks, devices,
//! symlinks). Data is read through the blob cache file, as the kernel needs it uncompressed.

use crate::common::*;
use std::path::PathBuf;

fn build_and_check(source: &std::path::Path, extra: &[&str], compressor: &str) {
    let out = scratch();
    let cache = out.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let boot = out.path().join("bootstrap");
    let mut args = vec![
        "create",
        "--compressor",
        compressor,
        "-D",
        out.path().to_str().unwrap(),
        "--blob-cache-dir",
        cache.to_str().unwrap(),
        "-B",
        boot.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(source.to_str().unwrap());
    forge(&args);
    let data = one_file(&cache, ".blob.data");
    assert_mounts_equal(&boot, std::slice::from_ref(&data), source);
    shared_mount_check(&boot, &[data], source);
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn full_tree_mounts_equal_for_every_compressor() {
    if let Some(why) = cannot_mount().or_else(cannot_build_full_tree) {
        missing("full_tree_mounts_equal_for_every_compressor", &why);
    }
    let src = scratch();
    full_tree(src.path(), false);
    for c in ["none", "lz4_block", "zstd"] {
        build_and_check(src.path(), &[], c);
    }
    build_and_check(
        src.path(),
        &["--digester", "sha256", "--chunk-size", "0x4000"],
        "zstd",
    );
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn sample_fixture_mounts_equal() {
    if let Some(why) = cannot_mount() {
        missing("sample_fixture_mounts_equal", &why);
    }
    build_and_check(&repo().join("fixtures/sample"), &[], "zstd");
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn file_larger_than_4gib_mounts_equal() {
    if let Some(why) = cannot_mount().or_else(cannot_build_full_tree) {
        missing("file_larger_than_4gib_mounts_equal", &why);
    }
    let src = scratch();
    full_tree(src.path(), true);
    build_and_check(src.path(), &["--chunk-size", "0x1000000"], "zstd");
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn inline_meta_bootstrap_extracted_mounts_equal() {
    if let Some(why) = cannot_mount().or_else(cannot_build_full_tree) {
        missing("inline_meta_bootstrap_extracted_mounts_equal", &why);
    }
    let src = scratch();
    full_tree(src.path(), false);
    let out = scratch();
    let cache = out.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    forge(&[
        "create",
        "--blob-inline-meta",
        "-D",
        out.path().to_str().unwrap(),
        "--blob-cache-dir",
        cache.to_str().unwrap(),
        src.path().to_str().unwrap(),
    ]);
    let blobs: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(blobs.len(), 1, "one blob and nothing else: {blobs:?}");
    let blob = blobs[0].clone();
    let boot = out.path().join("extracted.boot");
    forge(&[
        "extract-bootstrap",
        blob.to_str().unwrap(),
        "-o",
        boot.to_str().unwrap(),
    ]);
    let data: PathBuf = one_file(&cache, ".blob.data");
    // the cache is named by the blob file's id
    assert_eq!(
        data.file_name().unwrap().to_str().unwrap(),
        format!("{}.blob.data", blob.file_name().unwrap().to_str().unwrap())
    );
    assert_mounts_equal(&boot, std::slice::from_ref(&data), src.path());
    shared_mount_check(&boot, &[data], src.path());
}
