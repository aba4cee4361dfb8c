//! On-disk structures of EROFS compressed files ("z_erofs"), as `export --compressor` writes
//! them (formats/rafs-v6.md §19.1). Pure data: no logic lives here.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// lcluster type: the head of a block stored uncompressed.
pub const TYPE_PLAIN: u16 = 0;
/// lcluster type: the head of a compressed physical cluster.
pub const TYPE_HEAD1: u16 = 1;
/// lcluster type: inside an extent (distances to its head and the next).
pub const TYPE_NONHEAD: u16 = 2;
/// In the first NONHEAD entry after a compressed head: the low bits count its blocks.
pub const D0_CBLKCNT: u32 = 1 << 11;
/// Map header advise: lcluster indexes are compacted to 2 bytes where aligned (formats/rafs-v6.md §19.1).
pub const ADVISE_COMPACTED_2B: u16 = 0x0001;
/// Map header advise: heads may span several physical blocks (big pclusters).
pub const ADVISE_BIG_PCLUSTER_1: u16 = 0x0002;
/// Map header advise: plain heads may span several blocks too (compacted indexes need it
/// set together with `ADVISE_BIG_PCLUSTER_1`; plain extents here are one block each).
pub const ADVISE_BIG_PCLUSTER_2: u16 = 0x0004;

/// The map header after a compressed file's inode and xattrs, 8 bytes (§19.1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MapHeader {
    /// Fragment offset / tail-packing data: 0 (neither is used).
    pub fragment_off: U32,
    /// Advise bits (`ADVISE_BIG_PCLUSTER_1`).
    pub advise: U16,
    /// Algorithm code of the heads (low nibble).
    pub algorithm: u8,
    /// log2 of the lcluster size minus 12: 0 for 4 KiB.
    pub clusterbits: u8,
}
const _: () = assert!(size_of::<MapHeader>() == 8);

/// LZ4 configuration record after the superblock (size 14 and payload), §19.1.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Lz4Config {
    /// Payload size: 14.
    pub size: U16,
    /// Largest match distance: 65535.
    pub max_distance: U16,
    /// Largest physical cluster, in blocks.
    pub max_pclusterblks: U16,
    /// Zeros.
    pub reserved: [u8; 10],
}
const _: () = assert!(size_of::<Lz4Config>() == 16);

/// MicroLZMA configuration record (size 14 and payload), §19.1.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct LzmaConfig {
    /// Payload size: 14.
    pub size: U16,
    /// Dictionary size.
    pub dict_size: U32,
    /// Format: 0.
    pub format: U16,
    /// Zeros.
    pub reserved: [u8; 8],
}
const _: () = assert!(size_of::<LzmaConfig>() == 16);

/// Zstandard configuration record (size 6 and payload), §19.1.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ZstdConfig {
    /// Payload size: 6.
    pub size: U16,
    /// Format: 0.
    pub format: u8,
    /// log2 of the window size minus 10.
    pub windowlog: u8,
    /// Zeros.
    pub reserved: [u8; 4],
}
const _: () = assert!(size_of::<ZstdConfig>() == 8);
