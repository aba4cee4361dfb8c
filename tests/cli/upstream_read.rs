//! Images written by the upstream nydus-image (fixtures/upstream): `check` accepts them (and
//! rejects the one upstream got wrong), `unpack` gives exactly what upstream's runtime serves.

use crate::common::*;
use std::path::Path;
use std::process::Command;

pub(crate) fn manifest_diff(expected: &Path, actual: &Path) {
    let out = Command::new("python3")
        .arg(repo().join("tests/tools/manifest.py"))
        .arg("diff")
        .arg(expected)
        .arg(actual)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{} vs {}:\n{}",
        expected.display(),
        actual.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn upstream(name: &str) -> std::path::PathBuf {
    repo().join("fixtures/upstream").join(name)
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn check_and_unpack_upstream_images() {
    for name in [
        "v5-zstd",
        "v6-zstd",
        "v6-lz4_block",
        "v6-batch",
        "v6-encrypt",
    ] {
        let d = upstream(name);
        let (boot, blobs) = (d.join("bootstrap"), d.join("blobs"));
        let out = forge(&[
            "check",
            boot.to_str().unwrap(),
            "-D",
            blobs.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("metadata is valid") && text.contains("verified 7 chunks"),
            "{name}: {text}"
        );
        let x = scratch();
        let dir = x.path().join("tree");
        forge(&[
            "unpack",
            boot.to_str().unwrap(),
            "-D",
            blobs.to_str().unwrap(),
            "--output-dir",
            dir.to_str().unwrap(),
        ]);
        manifest_diff(&d.join("expected.txt"), &dir);
        let tar = x.path().join("t.tar");
        forge(&[
            "unpack",
            boot.to_str().unwrap(),
            "-D",
            blobs.to_str().unwrap(),
            "--output",
            tar.to_str().unwrap(),
        ]);
        // a tar cannot hold the socket: compare without it
        let filtered = x.path().join("expected-no-socket.txt");
        let text = std::fs::read_to_string(d.join("expected.txt")).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("\ts\t") && !l.ends_with("\ts"))
            .collect();
        std::fs::write(&filtered, kept.join("\n") + "\n").unwrap();
        manifest_diff(&filtered, &tar);
    }
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn inline_meta_blob_is_read_alone() {
    let d = upstream("v6-inline-meta");
    let blob = one_file(&d.join("blobs"), "");
    let out = forge(&["check", blob.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fs-meta") && text.contains("verified 7 chunks"),
        "{text}"
    );
    // the placeholder id is replaced by the blob's file name
    assert!(text.contains(blob.file_name().unwrap().to_str().unwrap()));
    let x = scratch();
    let dir = x.path().join("tree");
    forge(&[
        "unpack",
        blob.to_str().unwrap(),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    manifest_diff(&d.join("expected.txt"), &dir);
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn tarfs_image_reads_data_from_the_tar() {
    let d = upstream("v6-tar-tarfs");
    let tar = upstream("source-tar-input.tar");
    let boot = d.join("bootstrap");
    let out = forge(&[
        "check",
        boot.to_str().unwrap(),
        "--blob",
        tar.to_str().unwrap(),
    ]);
    // a tarfs blob: its chunks are the tar's own bytes, without digests
    assert!(String::from_utf8_lossy(&out.stdout).contains("read 9 chunks whose digests"));
    let x = scratch();
    let dir = x.path().join("tree");
    forge(&[
        "unpack",
        boot.to_str().unwrap(),
        "--blob",
        tar.to_str().unwrap(),
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    manifest_diff(&d.join("expected.txt"), &dir);
}

#[test]
fn upstream_broken_v5_image_is_rejected() {
    let boot = upstream("v5-tar-rafs/bootstrap");
    let err = forge_fails(&["check", boot.to_str().unwrap()]);
    assert!(err.contains("offset"), "the error names an offset: {err}");
}

/// The converter's `--features blob-toc` layer: read through its ToC (formats/blob.md §9) by
/// every reader, as the blob, as its extracted `<id>.boot`, and as a merge source.
#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn blob_toc_layer_is_read_exactly() {
    let d = upstream("v6-blob-toc");
    let x = scratch();
    // the converter names the layer by the sha256 of the whole blob
    let id = "57e08e46708f192e558a0ec1359d2032402f1f548686dc2148da6c2019f5c7ce";
    let blob = x.path().join(id);
    std::fs::copy(d.join("blob.rafs"), &blob).unwrap();
    let dir = x.path().to_str().unwrap();
    let out = forge(&["check", "-B", blob.to_str().unwrap(), "-D", dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" toc") && text.contains(id) && text.contains("verified 7 chunks"),
        "{text}"
    );
    let out = forge(&["inspect", "-B", blob.to_str().unwrap(), "-R", "blobs"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    let boot = x.path().join(format!("{id}.boot"));
    forge(&[
        "extract-bootstrap",
        blob.to_str().unwrap(),
        "-o",
        boot.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&boot).unwrap() == std::fs::read(d.join("image.boot")).unwrap());
    // saved as `<id>.boot`, the placeholder id becomes the file name cut at the first dot
    let out = forge(&["check", "-B", boot.to_str().unwrap(), "-D", dir]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified 7 chunks"));
    for source in [&blob, &boot] {
        let tree = x
            .path()
            .join(format!("tree-{}", source.extension().is_some()));
        forge(&[
            "unpack",
            source.to_str().unwrap(),
            "-D",
            dir,
            "--output-dir",
            tree.to_str().unwrap(),
        ]);
        manifest_diff(&d.join("expected.txt"), &tree);
    }
    let merged = x.path().join("merged.boot");
    forge(&[
        "merge",
        "-B",
        merged.to_str().unwrap(),
        boot.to_str().unwrap(),
    ]);
    let out = forge(&["check", "-B", merged.to_str().unwrap(), "-D", dir]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified 7 chunks"));
    let disk = x.path().join("layer.disk");
    forge(&[
        "export",
        "--block",
        "-B",
        blob.to_str().unwrap(),
        "-D",
        dir,
        "-O",
        disk.to_str().unwrap(),
    ]);
    assert!(disk.metadata().unwrap().len() > 0);
}

/// `check`'s blob listing is a text interface: the same lines as upstream's transcript
/// (decimal sizes, upstream's feature words).
#[test]
fn check_lists_blobs_as_upstream_does() {
    let d = upstream("v6-zstd");
    let out = forge(&["check", "-B", d.join("bootstrap").to_str().unwrap()]);
    let ours = String::from_utf8_lossy(&out.stdout);
    let theirs = std::fs::read_to_string(
        repo().join("fixtures/upstream/cli/nydus-image_check_-B_v6-zstd.txt"),
    )
    .unwrap();
    let head = |t: &str| t.lines().take(2).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(head(&ours), head(&theirs));
}
