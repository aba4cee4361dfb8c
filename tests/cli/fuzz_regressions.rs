//! Inputs the fuzz targets (fuzz/) found crashing, kept as regression tests. Each test applies
//! the same transformation as its target and must get an error or a result, never a panic.
//! The inputs live under fixtures/fuzz/<target>/.

use crate::common::repo;

use erofs_forge::ops::inspect;

/// What the `v5_bootstrap` target does to its input: force the v5 magic and version.
fn as_v5(mut bytes: Vec<u8>) -> Vec<u8> {
    use erofs_forge::fuzzing::{RAFS_V5_MAGIC, RAFS_V5_VERSION};
    if bytes.len() < 8 {
        bytes.resize(8, 0);
    }
    bytes[..4].copy_from_slice(&RAFS_V5_MAGIC.to_le_bytes());
    bytes[4..8].copy_from_slice(&RAFS_V5_VERSION.to_le_bytes());
    bytes
}

/// The blob-less read side, as the bootstrap targets drive it.
fn exercise(bytes: &[u8]) -> Result<(), String> {
    let image = erofs_forge::read::decode(bytes).map_err(|e| e.to_string())?;
    let _ = image.validate();
    for req in ["stats", "blobs", "prefetch", "ls /", "icheck 1", "chunk 0"] {
        let _ = inspect::request(&image, req);
    }
    assert_eq!(image.tree.numbering_order().len(), image.tree.entries.len());
    Ok(())
}

fn input(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(repo().join("fixtures/fuzz").join(target).join(name)).unwrap()
}

/// v5: a root inode that is not a directory reached `Tree::new` (a debug assertion) before the
/// decoder checked its type.
#[test]
fn v5_root_not_a_directory() {
    let err = exercise(&as_v5(input("v5_bootstrap", "root-not-a-directory"))).unwrap_err();
    assert!(err.contains("root inode"), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
}

/// What the `zran_meta` target does with its input: the header fields, the ci area, then the
/// layer (see fuzz/fuzz_targets/zran_meta.rs); returns the parse result.
fn parse_zran(data: &[u8]) -> Result<erofs_forge::fuzzing::ZranMeta, String> {
    use erofs_forge::fuzzing::{BlobMetaHeader, ZranMeta};
    use zerocopy::FromZeros;
    let word = |at: usize, n: usize| {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&data[at..at + n]);
        u64::from_le_bytes(w)
    };
    let mut h = BlobMetaHeader::new_zeroed();
    if data[0] & 1 != 0 {
        h.features = erofs_forge::BlobFeatures::ZRAN.bits().into();
    }
    let chunk_count = word(1, 2) as u32;
    h.ci_zran_offset = word(3, 4).into();
    h.ci_zran_count = (word(7, 2) as u32).into();
    h.ci_zran_size = word(9, 4).into();
    let raw_len = word(13, 4) as usize;
    let raw = &data[17..(17 + raw_len).min(data.len())];
    ZranMeta::parse(raw, &h, chunk_count).map_err(|e| e.to_string())
}

/// zran meta: a context declaring a ~4 GiB uncompressed span passed the checks, and reading a
/// chunk of it allocated the whole span (libFuzzer: malloc(4143989544)). Refused when parsed.
#[test]
fn zran_context_spanning_4_gib() {
    let err = parse_zran(&input("zran_meta", "context-spans-4gib")).unwrap_err();
    assert!(
        err.contains("zran context") && err.contains("uncompressed bytes, more than"),
        "{err}"
    );
}

/// blob ToC: an image.boot entry declaring a ~4 GiB bootstrap made the reader allocate all of
/// it before decompressing 16 KiB of zstd (libFuzzer: malloc(4294918151)). Now the bootstrap
/// grows only as it decompresses, and the size mismatch is an error naming the section.
#[test]
fn blob_toc_bootstrap_declaring_4_gib() {
    // as the blob_toc target: zero bytes (u32), then the blob's tail
    let data = input("blob_toc", "boot-declares-4gib");
    let zeros = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap()) % (16 << 20));
    let mut blob = vec![0u8; zeros as usize];
    blob.extend_from_slice(&data[4..]);
    let len = blob.len() as u64;
    let mut r = std::io::Cursor::new(blob);
    let err = erofs_forge::fuzzing::extract_bootstrap_from(&mut r, len, std::path::Path::new("b"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("image.boot section"), "{err}");
}
