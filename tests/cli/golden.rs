//! The worked example of formats/rafs-v6.md: one 5-byte file. Its blob id is known from the
//! upstream nydus-image, and the bootstrap layout from the format notes.

use crate::common::*;

#[test]
fn one_file_example_matches_upstream_blob_and_layout() {
    let src = scratch();
    let hello = src.path().join("hello");
    std::fs::write(&hello, b"hello").unwrap();
    let f = std::fs::File::options().write(true).open(&hello).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1704164645))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hello, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(src.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = scratch();
    let boot = out.path().join("boot");
    forge(&[
        "create",
        "-D",
        out.path().to_str().unwrap(),
        "-B",
        boot.to_str().unwrap(),
        src.path().to_str().unwrap(),
    ]);
    let id = "aa3b70cf2d0e8ac5d3a67e4d3177e9ad9b2a0a57690867ffc87de96158e875d1";
    let blob = std::fs::read(out.path().join(id)).expect("blob named by the upstream id");
    assert_eq!(blob.len(), 4117);
    let b = std::fs::read(&boot).unwrap();
    assert_eq!(b.len(), 20480);
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(u32_at(0x400), 0xE0F5_E1E2, "EROFS magic");
    assert_eq!(u16_at(0x40E), 128, "root nid");
    assert_eq!(u64_at(0x410), 2, "inos");
    assert_eq!(u32_at(0x428), 2, "meta_blkaddr");
    assert_eq!(u16_at(0x456), 1, "extra devices");
    assert_eq!(
        u64_at(0x480) & !0x10,
        0x0100_0084,
        "flags: encryption none, zstd, blake3"
    );
    assert_eq!(&b[0x580..0x580 + 64], id.as_bytes(), "device tag");
    assert_eq!(u32_at(0x580 + 68), 128, "mapped_blkaddr");
    assert_eq!(u32_at(0x1000 + 84), 0x4000_0001, "blob features");
    assert_eq!(u16_at(0x3000), 0x0005, "root: extended, inline");
    assert_eq!(u64_at(0x3008), 44, "root dirent size");
    assert_eq!(
        u16_at(0x3080),
        0x0009,
        "file at nid 132: extended, chunk-based"
    );
    assert_eq!(u32_at(0x3090), 0x28, "1 MiB chunks");
    assert_eq!(
        &b[0x30C0..0x30C8],
        &[0, 0, 1, 0, 0, 0, 0, 0],
        "chunk index: blob 0, chunk 0, block 0"
    );
    assert_eq!(u32_at(0x4000 + 76), 0x9A71_BB4C, "chunk table crc32c");
}
