//! Encrypted blobs (`--encrypt`, formats/blob.md §10) and batched blobs written here
//! (`--batch-size`, §3.4): upstream's encrypted image is read by every reader; ours are read
//! back, mounted by the kernel through `export --block`, and decrypted by OpenSSL (through
//! Python's `cryptography`) to the same plaintext; damage and a wrong key are errors naming
//! the chunk, never data.

use crate::common::*;
use crate::upstream_read::manifest_diff;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    repo().join("fixtures/upstream/v6-encrypt")
}

const UPSTREAM_ID: &str = "f3c77ce5a3f1b311d6b4a9edefe503888bdac093e72f5a93068ae742dc081f4d";

/// A tree of many small files (most under half a 64 KiB batch, some duplicated), a few
/// multi-chunk files, a symlink and an empty file.
fn small_files_tree(dir: &Path) {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for d in 0..12 {
        let sub = dir.join(format!("pkg{d:02}/lib"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..40 {
            let len = (rnd() % 9000) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| b'a' + ((i as u64 * 7 + rnd() % 3) % 26) as u8)
                .collect();
            std::fs::write(sub.join(format!("m{f}.js")), &body).unwrap();
        }
        // the same bytes in every package: deduplicated, batched once
        std::fs::write(sub.join("LICENSE"), b"MIT License\nCopyright\n").unwrap();
    }
    let big: Vec<u8> = (0..2_600_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::write(dir.join("tiny"), b"x").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("pkg00/lib/m0.js", dir.join("link")).unwrap();
}

/// Builds `src` with `flags` into `out`; returns the bootstrap.
fn build(src: &Path, out: &Path, flags: &[&str]) -> PathBuf {
    let boot = out.join("bootstrap");
    let mut args = vec!["create", "-D", s(out), "-B", s(&boot)];
    args.extend_from_slice(flags);
    args.push(s(src));
    forge(&args);
    boot
}

/// The one data blob in `dir` (named by its 64-hex id).
fn blob_in(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().len() == 64)
        .unwrap()
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn upstream_encrypted_image_exported_mounts_as_upstream_serves_it() {
    if let Some(why) = cannot_mount() {
        missing(
            "upstream_encrypted_image_exported_mounts_as_upstream_serves_it",
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

/// A copy of upstream's blob with `byte` xored at `offset`, in a fresh blob directory.
fn damaged_copy(x: &Path, offset: usize, byte: u8) -> PathBuf {
    let blobs = x.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut bytes = std::fs::read(fixture().join("blobs").join(UPSTREAM_ID)).unwrap();
    bytes[offset] ^= byte;
    std::fs::write(blobs.join(UPSTREAM_ID), &bytes).unwrap();
    blobs
}

#[test]
fn flipped_ciphertext_byte_is_caught_with_its_chunk() {
    let boot = fixture().join("bootstrap");
    // tables.txt: chunk 3 is stored raw at 55 (1 MiB), chunk 2 compressed at 36 (19 bytes)
    for (offset, chunk) in [(60, "chunk 3"), (40, "chunk 2")] {
        let x = scratch();
        let blobs = damaged_copy(x.path(), offset, 0x20);
        let err = forge_fails(&["check", s(&boot), "-D", s(&blobs)]);
        assert!(err.contains(chunk), "offset {offset}: {err}");
        let out = x.path().join("t.tar");
        let err = forge_fails(&["unpack", s(&boot), "-D", s(&blobs), "-o", s(&out)]);
        assert!(err.contains(chunk), "offset {offset}: {err}");
        assert!(!out.exists(), "no tar of garbage is left behind");
    }
}

#[test]
fn wrong_key_is_an_error_not_data() {
    let x = scratch();
    let mut boot = std::fs::read(fixture().join("bootstrap")).unwrap();
    // the key is the blob table entry's blob_meta_digest: blob table at 4096, field at +168
    boot[4096 + 168] ^= 1;
    let wrong = x.path().join("bootstrap");
    std::fs::write(&wrong, &boot).unwrap();
    let blobs = fixture().join("blobs");
    let err = forge_fails(&["check", s(&wrong), "-D", s(&blobs)]);
    assert!(err.contains("wrong key"), "{err}");
    let tree = x.path().join("tree");
    let err = forge_fails(&[
        "unpack",
        s(&wrong),
        "-D",
        s(&blobs),
        "--output-dir",
        s(&tree),
    ]);
    assert!(err.contains("wrong key"), "{err}");
    // no key at all: cipher_algo (entry +216) 0
    let mut boot = std::fs::read(fixture().join("bootstrap")).unwrap();
    boot[4096 + 216] = 0;
    let keyless = x.path().join("keyless");
    std::fs::write(&keyless, &boot).unwrap();
    let err = forge_fails(&["check", s(&keyless), "-D", s(&blobs)]);
    assert!(err.contains("holds no key"), "{err}");
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn encrypted_and_batched_builds_read_back_and_mount_equal() {
    if let Some(why) = cannot_mount() {
        missing(
            "encrypted_and_batched_builds_read_back_and_mount_equal",
            &why,
        );
    }
    let src = scratch();
    small_files_tree(src.path());
    let cases: [&[&str]; 3] = [
        &["--encrypt"],
        &["--batch-size", "0x10000"],
        &["-E", "--batch-size", "0x4000", "--compressor", "lz4_block"],
    ];
    for flags in cases {
        let x = scratch();
        let boot = build(src.path(), x.path(), flags);
        let out = forge(&["check", s(&boot), "-D", s(x.path())]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("verified"), "{flags:?}: {text}");
        let tree = x.path().join("tree");
        forge(&[
            "unpack",
            s(&boot),
            "-D",
            s(x.path()),
            "--output-dir",
            s(&tree),
        ]);
        let differences = diff(&manifest(src.path()), &manifest(&tree));
        assert!(differences.is_empty(), "{flags:?}: {differences:?}");
        let disk = x.path().join("disk");
        export_block(&boot, x.path(), &disk);
        assert_mounts_equal(&disk, &[], src.path());
    }
}

#[test]
fn batches_pack_small_files_into_fewer_frames_and_a_smaller_blob() {
    let src = scratch();
    small_files_tree(src.path());
    let (plain, batched) = (scratch(), scratch());
    let boot = build(src.path(), plain.path(), &[]);
    let bboot = build(src.path(), batched.path(), &["--batch-size", "0x10000"]);
    let size = |d: &Path| std::fs::metadata(blob_in(d)).unwrap().len();
    assert!(
        size(batched.path()) < size(plain.path()),
        "batched {} vs {}",
        size(batched.path()),
        size(plain.path())
    );
    // the same chunks (dedup per chunk), members shown as such
    let stats = |b: &Path| {
        let out = forge(&["inspect", "-B", s(b), "-R", "stats"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["chunks"].as_u64().unwrap()
    };
    assert_eq!(stats(&boot), stats(&bboot));
    let out = forge(&["inspect", "-B", s(&bboot), "-R", "stat /tiny"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chunks"][0]["batched"], serde_json::json!(true), "{v}");
    let out = forge(&["check", s(&bboot), "-D", s(batched.path())]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("batch"));
}

#[test]
#[cfg_attr(
    no_py_crypto,
    ignore = "needs Debian's python3-cryptography and python3-zstandard"
)]
fn openssl_decrypts_our_encrypted_blob_to_the_same_plaintext() {
    let src = scratch();
    small_files_tree(src.path());
    let x = scratch();
    let boot = build(src.path(), x.path(), &["--encrypt"]);
    let out = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/tools/decrypt.py"))
        .arg(&boot)
        .arg(blob_in(x.path()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("header magic 0xb10bb10b") && text.contains("ci end + 4096: True"),
        "{text}"
    );
    let chunks: Vec<&str> = text.lines().filter(|l| l.starts_with("chunk @")).collect();
    assert!(chunks.len() > 400, "{text}");
    for line in chunks {
        // "plaintext N bytes (expected N)"
        let n = |after: &str| {
            let rest = &line[line.find(after).unwrap() + after.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(n("plaintext "), n("(expected "), "{line}");
    }
}

#[test]
fn keys_are_fresh_per_build() {
    let src = scratch();
    small_files_tree(src.path());
    let (a, b) = (scratch(), scratch());
    build(src.path(), a.path(), &["--encrypt"]);
    build(src.path(), b.path(), &["--encrypt"]);
    // a random key per build: the same tree gives different blobs (random by design)
    assert_ne!(
        std::fs::read(blob_in(a.path())).unwrap(),
        std::fs::read(blob_in(b.path())).unwrap()
    );
}

#[test]
fn encrypted_layers_merge_and_dedup_as_parents() {
    let src = scratch();
    small_files_tree(src.path());
    let x = scratch();
    let (l1, l2) = (x.path().join("l1"), x.path().join("l2"));
    std::fs::create_dir_all(&l1).unwrap();
    std::fs::create_dir_all(&l2).unwrap();
    let blobs = x.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let b1 = x.path().join("b1");
    forge(&["create", "-E", "-D", s(&blobs), "-B", s(&b1), s(src.path())]);
    // a second layer on the encrypted one: its copies dedup against encrypted chunks
    let upper = scratch();
    std::fs::copy(src.path().join("big.bin"), upper.path().join("big-copy")).unwrap();
    std::fs::write(upper.path().join("new.txt"), b"new\n").unwrap();
    let b2 = x.path().join("b2");
    forge(&[
        "create",
        "--parent-bootstrap",
        s(&b1),
        "-D",
        s(&blobs),
        "-B",
        s(&b2),
        s(upper.path()),
    ]);
    // the same through a chunk dictionary: the copy is referenced in the encrypted blob
    let b4 = x.path().join("b4");
    let dict = format!("bootstrap={}", s(&b1));
    forge(&[
        "create",
        "--chunk-dict",
        &dict,
        "-D",
        s(&blobs),
        "-B",
        s(&b4),
        s(upper.path()),
    ]);
    let tree = x.path().join("t-dict");
    forge(&["unpack", s(&b4), "-D", s(&blobs), "--output-dir", s(&tree)]);
    assert_eq!(
        std::fs::read(tree.join("big-copy")).unwrap(),
        std::fs::read(src.path().join("big.bin")).unwrap()
    );
    let out = forge(&["check", s(&b4), "-D", s(&blobs)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("encrypted"));
    // a merge of encrypted and plain layers is marked encrypted, as upstream marks it
    let b3 = x.path().join("b3");
    forge(&["create", "-D", s(&blobs), "-B", s(&b3), s(upper.path())]);
    let merged = x.path().join("merged");
    forge(&["merge", "-B", s(&merged), s(&b1), s(&b3)]);
    for boot in [&b2, &merged] {
        let out = forge(&["check", s(boot), "-D", s(&blobs)]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("encrypted"), "{text}");
        let tree = x
            .path()
            .join(format!("t-{}", boot.file_name().unwrap().to_str().unwrap()));
        forge(&["unpack", s(boot), "-D", s(&blobs), "--output-dir", s(&tree)]);
        assert_eq!(
            std::fs::read(tree.join("big-copy")).unwrap(),
            std::fs::read(src.path().join("big.bin")).unwrap()
        );
    }
}

#[test]
#[cfg_attr(no_umoci, ignore = "needs umoci")]
fn oci_conversion_with_encrypt_marks_its_data_layers() {
    let w = scratch();
    let (img, expect) = crate::umoci_image::image_and_rootfs(
        "oci_conversion_with_encrypt_marks_its_data_layers",
        w.path(),
    );
    let layout = w.path().join("out");
    let boot = w.path().join("boot");
    forge(&[
        "create",
        "-t",
        "oci",
        "--encrypt",
        "-D",
        s(&layout),
        "-B",
        s(&boot),
        s(&img),
    ]);
    let image_manifest = crate::umoci_image::manifest_of(&layout);
    let layers = image_manifest["layers"].as_array().unwrap();
    let (bootstrap_layer, data_layers) = layers.split_last().unwrap();
    assert!(!data_layers.is_empty());
    for l in data_layers {
        // as nydus-snapshotter's converter marks an encrypted layer
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/nydus-encrypted-blob"], "true",
            "{l}"
        );
    }
    assert!(
        bootstrap_layer["annotations"]["containerd.io/snapshot/nydus-encrypted-blob"].is_null()
    );
    let blobs = layout.join("blobs/sha256");
    let out = forge(&["check", s(&boot), "-D", s(&blobs)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("encrypted"));
    let tree = w.path().join("tree");
    forge(&[
        "unpack",
        s(&boot),
        "-D",
        s(&blobs),
        "--output-dir",
        s(&tree),
    ]);
    let differences = diff(&manifest(&expect), &manifest(&tree));
    assert!(differences.is_empty(), "{differences:?}");
}

#[test]
fn batch_size_and_encrypt_are_listed_and_validated_as_upstream_does() {
    // nydus-snapshotter's converter probes `create -h` for both flags before using them
    let help = String::from_utf8_lossy(&forge(&["create", "-h"]).stdout).into_owned();
    assert!(
        help.contains("--batch-size") && help.contains("--encrypt"),
        "{help}"
    );
    let src = scratch();
    std::fs::write(src.path().join("f"), b"data").unwrap();
    let x = scratch();
    let boot = x.path().join("b");
    let fails = |extra: &[&str]| {
        let mut args = vec!["create", "-D", s(x.path()), "-B", s(&boot)];
        args.extend_from_slice(extra);
        args.push(s(src.path()));
        forge_fails(&args)
    };
    for (flags, says) in [
        (&["--batch-size", "0x800"][..], "power of two between"),
        (&["--batch-size", "0x3000"], "power of two between"),
        (
            &["--batch-size", "0x10000", "--chunk-size", "0x8000"],
            "bigger than chunk size",
        ),
        (
            &["--batch-size", "0x1000", "--fs-version", "5"],
            "--fs-version 6 only",
        ),
        (&["--encrypt", "--fs-version", "5"], "--fs-version 6 only"),
    ] {
        let err = fails(flags);
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    // 0 is upstream's default: no batches
    forge(&[
        "create",
        "--batch-size",
        "0",
        "-D",
        s(x.path()),
        "-B",
        s(&boot),
        s(src.path()),
    ]);
    let out = forge(&["check", s(&boot), "-D", s(x.path())]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("batch"));
}
