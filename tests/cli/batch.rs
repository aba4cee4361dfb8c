//! Batched blobs (`--batch-size`, formats/blob.md §3.3, §3.4): small chunks packed into one
//! compressed frame. Upstream's v6-batch image is read by `check`, `unpack` (in
//! upstream_read.rs) and, through `export --block`, by the kernel; a damaged batch is caught.

use crate::common::*;
use crate::upstream_read::manifest_diff;

fn fixture() -> std::path::PathBuf {
    repo().join("fixtures/upstream/v6-batch")
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn upstream_batch_image_exported_mounts_as_upstream_serves_it() {
    if let Some(why) = cannot_mount() {
        missing(
            "upstream_batch_image_exported_mounts_as_upstream_serves_it",
            &why,
        );
    }
    let d = fixture();
    let x = scratch();
    let disk = x.path().join("disk");
    export_block(&d.join("bootstrap"), &d.join("blobs"), &disk);
    let m = mount(&disk, &[]);
    manifest_diff(&d.join("expected.txt"), m.dir.path());
}

#[test]
fn flipped_byte_in_a_batch_is_caught_by_check() {
    let d = fixture();
    let x = scratch();
    let blobs = x.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let id = "199c4895b0e9fe7060e32c1b7076882c838d8bf894754261ee357b470afb5651";
    let mut bytes = std::fs::read(d.join("blobs").join(id)).unwrap();
    // the batch is the 25-byte zstd frame at offset 0 (fixtures/upstream README, v6-batch)
    bytes[12] ^= 0x55;
    std::fs::write(blobs.join(id), &bytes).unwrap();
    let err = forge_fails(&[
        "check",
        d.join("bootstrap").to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
    ]);
    assert!(
        err.contains("batch 0") || err.contains("digest mismatch"),
        "{err}"
    );
}

#[test]
fn batch_chunks_of_a_parent_bootstrap_are_deduplicated_and_read() {
    let d = fixture();
    let x = scratch();
    let (src, blobs) = (x.path().join("src"), x.path().join("blobs"));
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::create_dir(&blobs).unwrap();
    // the same bytes as upstream's hello.txt (6 B), one-byte and inline-5000: batch members
    let expected = std::fs::read_to_string(d.join("expected.txt")).unwrap();
    assert!(expected.contains("/dir/inline-5000\tf"));
    let inline: Vec<u8> = {
        let x2 = scratch();
        let out = x2.path().join("t");
        forge(&[
            "unpack",
            d.join("bootstrap").to_str().unwrap(),
            "-D",
            d.join("blobs").to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        std::fs::read(out.join("dir/inline-5000")).unwrap()
    };
    std::fs::write(src.join("dir/inline-copy"), &inline).unwrap();
    std::fs::write(src.join("new.txt"), b"new\n").unwrap();
    let boot = x.path().join("boot");
    forge(&[
        "create",
        "--parent-bootstrap",
        d.join("bootstrap").to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "-B",
        boot.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    for f in std::fs::read_dir(d.join("blobs")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, blobs.join(f.file_name().unwrap())).unwrap();
    }
    // dedup per chunk: the copy reuses the batch member, only new.txt's chunk is written
    let out = forge(&[
        "check",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 1: ") && text.contains("chunk count: 1,") && text.contains("verified 8"),
        "{text}"
    );
    let tree = x.path().join("tree");
    forge(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "--output-dir",
        tree.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(tree.join("dir/inline-copy")).unwrap(), inline);
    assert_eq!(std::fs::read(tree.join("new.txt")).unwrap(), b"new\n");
}
