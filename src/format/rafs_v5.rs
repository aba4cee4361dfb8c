//! On-disk structures of a RAFS v5 bootstrap. Pure data; sections cite formats/rafs-v5.md.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Superblock magic ("RAFS" read as a little-endian u32).
pub const RAFS_V5_MAGIC: u32 = 0x5241_4653;
/// Version field value.
pub const RAFS_V5_VERSION: u32 = 0x500;
/// Size of the superblock.
pub const SUPERBLOCK_SIZE: u64 = 8192;
/// Every region is aligned to this.
pub const ALIGNMENT: u64 = 8;

/// Inode flags (formats/rafs-v5.md §4).
pub mod inode_flags {
    /// Symlink.
    pub const SYMLINK: u64 = 0x1;
    /// Hardlink (set by upstream's tar builder only).
    pub const HARDLINK: u64 = 0x2;
    /// Has an xattr table.
    pub const XATTR: u64 = 0x4;
    /// Sparse file (never set).
    pub const HAS_HOLE: u64 = 0x8;
}

/// Superblock, 8192 bytes at offset 0 (formats/rafs-v5.md §2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    pub magic: U32,
    pub fs_version: U32,
    pub sb_size: U32,
    pub block_size: U32,
    pub flags: U64,
    pub inodes_count: U64,
    pub inode_table_offset: U64,
    pub prefetch_table_offset: U64,
    pub blob_table_offset: U64,
    pub inode_table_entries: U32,
    pub prefetch_table_entries: U32,
    pub blob_table_size: U32,
    pub extended_blob_table_entries: U32,
    pub extended_blob_table_offset: U64,
    pub reserved: [u8; 8112],
}
const _: () = assert!(size_of::<SuperBlock>() == 8192);

/// Extended blob table entry, 64 bytes (formats/rafs-v5.md §6).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ExtBlobEntry {
    pub chunk_count: U32,
    pub features: U32,
    pub uncompressed_size: U64,
    pub compressed_size: U64,
    pub reserved: [u8; 40],
}
const _: () = assert!(size_of::<ExtBlobEntry>() == 64);

/// Inode, 128 bytes, followed by name, symlink target, xattrs and chunks (formats/rafs-v5.md §7).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Inode {
    pub digest: [u8; 32],
    pub parent: U64,
    pub ino: U64,
    pub uid: U32,
    pub gid: U32,
    pub projid: U32,
    pub mode: U32,
    pub size: U64,
    pub blocks: U64,
    pub flags: U64,
    pub nlink: U32,
    pub child_index: U32,
    pub child_count: U32,
    pub name_size: U16,
    pub symlink_size: U16,
    pub rdev: U32,
    pub mtime_nsec: U32,
    pub mtime: U64,
    pub reserved: [u8; 8],
}
const _: () = assert!(size_of::<Inode>() == 128);

/// Chunk record, 80 bytes, after each file inode (formats/rafs-v5.md §9): the same layout as
/// the v6 chunk table entry.
pub use crate::format::rafs_v6::ChunkRecord;
