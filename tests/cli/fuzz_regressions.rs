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
