//! Pure on-disk definitions: blob meta, RAFS v5, RAFS v6 / EROFS, EROFS compressed files,
//! tar headers.

pub mod blob;
pub mod erofs_z;
pub mod rafs_v5;
pub mod rafs_v6;
pub mod tar;
pub mod zran;
