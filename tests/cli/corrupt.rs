//! Corrupt bootstraps: flipped bytes and truncations at many offsets of v5 and v6 images must
//! give an error or a valid result from decode, check, inspect and unpack; never a panic.

use crate::common::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use erofs_forge::ops::inspect;
use erofs_forge::read::{BlobSource, ChunkReader};

/// Everything the read side does with a decoded image, errors ignored.
fn exercise(bytes: &[u8], blobs: &Path) {
    let Ok(image) = erofs_forge::read::decode(bytes) else {
        return;
    };
    let _ = image.validate();
    for req in [
        "stats",
        "blobs",
        "prefetch",
        "ls /",
        "icheck 128",
        "chunk 0",
    ] {
        let _ = inspect::request(&image, req);
    }
    for e in image.tree.entry_ids().take(64) {
        let p = image.tree.path(e);
        let _ = inspect::request(&image, &format!("stat {}", p.display()));
    }
    let _ = image.tree.numbering_order();
    let mut reader = ChunkReader::new(
        &image,
        BlobSource {
            dir: Some(blobs.to_path_buf()),
            file: None,
            zran_meta: None,
        },
    );
    for id in 0..image.chunks.len().min(16) {
        let _ = reader.read(erofs_forge::ChunkId::new(id as u32));
    }
}

/// Unpacks to a tar and to a directory, errors ignored.
fn unpack_both(bytes: &[u8], blobs: &Path, work: &Path) {
    let boot = work.join("boot");
    std::fs::write(&boot, bytes).unwrap();
    let _ = std::fs::remove_dir_all(work.join("dir"));
    let _ = erofs_forge::ops::unpack::unpack(&erofs_forge::ops::unpack::UnpackOptions {
        bootstrap: boot,
        blobs: BlobSource {
            dir: Some(blobs.to_path_buf()),
            file: None,
            zran_meta: None,
        },
        output_tar: Some(work.join("out.tar")),
        output_dir: Some(work.join("dir")),
    });
}

/// A small deterministic generator, so failures are reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn torture(name: &str, bytes: &[u8], blobs: &Path, mutations: usize) {
    let mut rng = Lcg(bytes.len() as u64);
    let mut panics = Vec::new();
    // the metadata head (superblocks, tables, first inodes) gets every byte flipped
    let head = bytes.len().min(16 * 1024);
    let mut cases: Vec<(usize, u8)> = (0..head)
        .filter(|o| bytes[*o] != 0 || o % 4 == 0)
        .map(|o| (o, 0xff))
        .collect();
    for _ in 0..mutations {
        let off = (rng.next() as usize) % bytes.len();
        cases.push((off, (rng.next() % 255 + 1) as u8));
    }
    let work = scratch();
    for (n, (off, x)) in cases.into_iter().enumerate() {
        let mut m = bytes.to_vec();
        m[off] ^= x;
        if catch_unwind(AssertUnwindSafe(|| exercise(&m, blobs))).is_err() {
            panics.push(format!("flip {off:#x} ^ {x:#x}"));
        }
        if n % 100 == 0
            && catch_unwind(AssertUnwindSafe(|| unpack_both(&m, blobs, work.path()))).is_err()
        {
            panics.push(format!("unpack after flip {off:#x} ^ {x:#x}"));
        }
    }
    for i in 0..200 {
        let len = bytes.len() * i / 200 + (rng.next() as usize % 64);
        let len = len.min(bytes.len());
        if catch_unwind(AssertUnwindSafe(|| exercise(&bytes[..len], blobs))).is_err() {
            panics.push(format!("truncate at {len:#x}"));
        }
    }
    assert!(
        panics.is_empty(),
        "{name}: {} panics, first: {:?}",
        panics.len(),
        &panics[..panics.len().min(10)]
    );
}

#[test]
fn corrupt_bootstraps_never_panic() {
    std::panic::set_hook(Box::new(|_| {}));
    let up = repo().join("fixtures/upstream");
    for (name, dir) in [("upstream v6", "v6-zstd"), ("upstream v5", "v5-zstd")] {
        let d = up.join(dir);
        let bytes = std::fs::read(d.join("bootstrap")).unwrap();
        torture(name, &bytes, &d.join("blobs"), 3000);
    }
    let src = repo().join("fixtures/sample");
    for v in ["5", "6"] {
        let out = scratch();
        let boot = out.path().join("b");
        forge(&[
            "create",
            "--fs-version",
            v,
            "-D",
            out.path().to_str().unwrap(),
            "-B",
            boot.to_str().unwrap(),
            src.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&boot).unwrap();
        torture(&format!("own v{v}"), &bytes, out.path(), 2000);
    }
    let _ = std::panic::take_hook();
}

#[test]
fn corrupt_inputs_through_the_cli_give_errors_naming_an_offset() {
    let d = repo().join("fixtures/upstream/v6-zstd");
    let mut bytes = std::fs::read(d.join("bootstrap")).unwrap();
    bytes[0x40c] = 7; // block size bits
    let x = scratch();
    let bad = x.path().join("bad");
    std::fs::write(&bad, &bytes).unwrap();
    for cmd in [&["check"][..], &["inspect", "-R", "stats"]] {
        let mut args = cmd.to_vec();
        args.insert(1, bad.to_str().unwrap());
        let err = forge_fails(&args);
        assert!(err.contains("offset 0x40c"), "{cmd:?}: {err}");
    }
    let err = forge_fails(&[
        "unpack",
        bad.to_str().unwrap(),
        "-D",
        d.join("blobs").to_str().unwrap(),
        "--output-dir",
        x.path().join("o").to_str().unwrap(),
    ]);
    assert!(err.contains("offset"), "{err}");
    assert!(
        !x.path().join("o").exists(),
        "nothing unpacked from a bad image"
    );
    std::fs::write(&bad, &bytes[..3000]).unwrap();
    let err = forge_fails(&["check", bad.to_str().unwrap()]);
    assert!(
        err.contains("superblock") || err.contains("image.boot") || err.contains("offset"),
        "{err}"
    );
}
