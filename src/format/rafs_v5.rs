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
    /// Has an xattr table.
    pub const XATTR: u64 = 0x4;
}

/// Superblock, 8192 bytes at offset 0 (formats/rafs-v5.md §2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    /// Magic number identifying the structure.
    pub magic: U32,
    /// RAFS version (0x500).
    pub fs_version: U32,
    /// Superblock size (8192).
    pub sb_size: U32,
    /// Chunk size.
    pub block_size: U32,
    /// RafsSuperFlags (formats/blob.md §8).
    pub flags: U64,
    /// Number of distinct inodes.
    pub inodes_count: U64,
    /// Offset of the inode table.
    pub inode_table_offset: U64,
    /// Offset of the prefetch table.
    pub prefetch_table_offset: U64,
    /// Offset of the blob table.
    pub blob_table_offset: U64,
    /// Entries in the inode table.
    pub inode_table_entries: U32,
    /// Entries in the prefetch table.
    pub prefetch_table_entries: U32,
    /// Size of the blob table in bytes.
    pub blob_table_size: U32,
    /// Entries in the extended blob table.
    pub extended_blob_table_entries: U32,
    /// Offset of the extended blob table.
    pub extended_blob_table_offset: U64,
    /// Reserved: zeros.
    pub reserved: [u8; 8112],
}
const _: () = assert!(size_of::<SuperBlock>() == 8192);

/// Extended blob table entry, 64 bytes (formats/rafs-v5.md §6).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ExtBlobEntry {
    /// Chunks the blob holds.
    pub chunk_count: U32,
    /// BlobFeatures bits (formats/blob.md §8).
    pub features: U32,
    /// Size of the uncompressed data.
    pub uncompressed_size: U64,
    /// Size of the stored (compressed) data.
    pub compressed_size: U64,
    /// Reserved: zeros.
    pub reserved: [u8; 40],
}
const _: () = assert!(size_of::<ExtBlobEntry>() == 64);

/// Inode, 128 bytes, followed by name, symlink target, xattrs and chunks (formats/rafs-v5.md §7).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Inode {
    /// Digest (of the inode's content for inodes, of the uncompressed bytes for chunks).
    pub digest: [u8; 32],
    /// Inode number of the parent directory.
    pub parent: U64,
    /// Inode number.
    pub ino: U64,
    /// Owner user id.
    pub uid: U32,
    /// Owner group id.
    pub gid: U32,
    /// Project id (0).
    pub projid: U32,
    /// File type and permission bits (`st_mode`).
    pub mode: U32,
    /// Size in bytes (for directories, of their entries).
    pub size: U64,
    /// 512-byte blocks the inode occupies.
    pub blocks: U64,
    /// Inode flags (formats/rafs-v5.md §4).
    pub flags: U64,
    /// Hard link count.
    pub nlink: U32,
    /// Directories: inode-table index of the first child.
    pub child_index: U32,
    /// Directories: number of children; regular files: number of chunk records.
    pub child_count: U32,
    /// Length of the name that follows the inode.
    pub name_size: U16,
    /// Length of the symlink target that follows the name.
    pub symlink_size: U16,
    /// Device number (devices only).
    pub rdev: U32,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Modification time, seconds since the epoch.
    pub mtime: U64,
    /// Reserved: zeros.
    pub reserved: [u8; 8],
}
const _: () = assert!(size_of::<Inode>() == 128);

/// Chunk record, 80 bytes, after each file inode (formats/rafs-v5.md §9): the same layout as
/// the v6 chunk table entry.
pub use crate::format::rafs_v6::ChunkRecord;
