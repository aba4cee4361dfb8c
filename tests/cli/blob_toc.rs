//! `create --features blob-toc`, the nydus-snapshotter converter's Pack call: the blob ends as
//! upstream's does (formats/blob.md §9), section for section, and the kernel mounts the result.

use crate::common::*;
use crate::upstream_read::manifest_diff;
use std::path::{Path, PathBuf};

/// One tar-framed section of an inline-meta blob: name, data, header.
struct Section {
    name: String,
    data: Vec<u8>,
    header: Vec<u8>,
}

/// The sections, walking back from the end (formats/blob.md §4), first section first.
fn sections(blob: &[u8]) -> Vec<Section> {
    let mut out = Vec::new();
    let mut end = blob.len();
    while end > 0 {
        let header = &blob[end - 512..end];
        let h = tar::Header::from_byte_slice(header);
        let size = h.entry_size().unwrap() as usize;
        let start = end - 512 - size;
        out.push(Section {
            name: String::from_utf8_lossy(&h.path_bytes()).into_owned(),
            data: blob[start..end - 512].to_vec(),
            header: header.to_vec(),
        });
        end = start;
    }
    out.reverse();
    out
}

fn upstream() -> PathBuf {
    repo().join("fixtures/upstream/v6-blob-toc")
}

/// The converter's Pack argv (less `--prefetch-policy fs`, not supported yet) on the source
/// upstream's fixture was built from.
fn pack(dir: &Path) -> PathBuf {
    let blob = dir.join("blob.rafs");
    let tar = repo().join("fixtures/upstream/source-tar-input.tar");
    forge(&[
        "create",
        "--log-level",
        "warn",
        "--blob",
        blob.to_str().unwrap(),
        "--whiteout-spec",
        "none",
        "--fs-version",
        "6",
        "--type",
        "tar-rafs",
        "--blob-inline-meta",
        "--features",
        "blob-toc",
        "--compressor",
        "zstd",
        tar.to_str().unwrap(),
    ]);
    blob
}

#[test]
fn blob_toc_layout_matches_upstream() {
    let x = scratch();
    let ours = std::fs::read(pack(x.path())).unwrap();
    let theirs = std::fs::read(upstream().join("blob.rafs")).unwrap();
    let (ours, theirs) = (sections(&ours), sections(&theirs));
    let names = |s: &[Section]| s.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&ours),
        [
            "image.blob",
            "blob.meta",
            "blob.digest",
            "image.boot",
            "rafs.blob.toc"
        ]
    );
    assert_eq!(names(&ours), names(&theirs));
    // chunk data, blob meta and chunk digests are byte-identical, headers included
    for i in 0..3 {
        assert!(ours[i].data == theirs[i].data, "{} data", ours[i].name);
        assert_eq!(ours[i].header, theirs[i].header, "{}", ours[i].name);
    }
    // the bootstrap differs (upstream's has a prefetch table and drops mtime nanoseconds), so
    // its ToC entry does; every other ToC entry is identical
    let (toc, their_toc) = (&ours[4].data, &theirs[4].data);
    assert_eq!(toc.len(), their_toc.len());
    assert_eq!(toc[..4 * 128], their_toc[..4 * 128]);
    // the image.boot entry: same flags (zstd), name and offset
    assert_eq!(toc[4 * 128..4 * 128 + 24], their_toc[4 * 128..4 * 128 + 24]);
    assert_eq!(
        toc[4 * 128 + 56..4 * 128 + 64],
        their_toc[4 * 128 + 56..4 * 128 + 64]
    );
    // the bootstrap is zstd, as upstream's
    assert_eq!(ours[3].data[..4], [0x28, 0xb5, 0x2f, 0xfd]);
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn blob_toc_layer_is_read_by_every_reader() {
    let x = scratch();
    let blob = pack(x.path());
    // the converter names the layer by the sha256 of the whole blob: so does our id
    let id = sha256_hex(&std::fs::read(&blob).unwrap());
    let named = x.path().join(&id);
    std::fs::rename(&blob, &named).unwrap();
    let dir = x.path().to_str().unwrap();
    let out = forge(&["check", "-B", named.to_str().unwrap(), "-D", dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" toc") && text.contains(&id), "{text}");
    let boot = x.path().join(format!("{id}.boot"));
    let boot_s = boot.to_str().unwrap();
    forge(&["extract-bootstrap", named.to_str().unwrap(), "-o", boot_s]);
    let merged = x.path().join("merged");
    forge(&["merge", "-B", merged.to_str().unwrap(), boot_s]);
    forge(&["check", "-B", merged.to_str().unwrap(), "-D", dir]);
    let tree = x.path().join("tree");
    forge(&[
        "unpack",
        "-B",
        boot_s,
        "-D",
        dir,
        "--output-dir",
        tree.to_str().unwrap(),
    ]);
    manifest_diff(&upstream().join("expected.txt"), &tree);
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn blob_toc_layer_mounts_equal_to_its_source() {
    if let Some(why) = cannot_mount() {
        missing("blob_toc_layer_mounts_equal_to_its_source", &why);
    }
    let x = scratch();
    let blob = pack(x.path());
    let disk = x.path().join("layer.disk");
    export_block(&blob, x.path(), &disk);
    let m = mount(&disk, &[]);
    // upstream's runtime view of the same tar
    manifest_diff(&upstream().join("expected.txt"), m.dir.path());
}
