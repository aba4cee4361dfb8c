//! Pure on-disk definitions: blob meta, RAFS v5, RAFS v6 / EROFS, tar headers.

pub mod blob;
pub mod rafs_v5;
pub mod rafs_v6;
pub mod tar;
