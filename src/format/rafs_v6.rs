//! On-disk structures of a RAFS v6 bootstrap. Pure data: no logic lives here.
//! Every integer is little-endian; each struct cites its section of formats/rafs-v6.md.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// EROFS superblock magic.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Byte offset of the EROFS superblock.
pub const SUPERBLOCK_OFFSET: usize = 1024;
/// Byte offset of the RAFS v6 extension superblock.
pub const EXT_SUPERBLOCK_OFFSET: usize = 1152;
/// Device table slot offset in 128-byte units (1408 / 128).
pub const DEVT_SLOTOFF: u16 = 11;
/// Byte offset of the device table.
pub const DEVICE_TABLE_OFFSET: usize = DEVT_SLOTOFF as usize * 128;
/// Compat bit telling nydus readers this EROFS image is a RAFS v6 bootstrap.
pub const FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// Incompat bit: compressed data is right-aligned in its blocks (zero padding first).
pub const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 0x1;
/// Incompat bit: per-algorithm configs follow the superblock; also big physical clusters.
pub const FEATURE_INCOMPAT_COMPR_CFGS: u32 = 0x2;
/// Incompat bits: chunk-based files and a device table.
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// See [`FEATURE_INCOMPAT_CHUNKED_FILE`].
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// nid of the root directory (the root sits one block after `meta_blkaddr`).
pub const ROOT_NID: u64 = 128;
/// Inode slot size: every inode starts at a multiple of this.
pub const INODE_SLOT: u64 = 32;

/// `i_format` data layouts (formats/rafs-v6.md §6.1).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
/// Tail data stored right after the inode.
pub const LAYOUT_FLAT_INLINE: u16 = 2;
/// Regular file made of chunk indexes.
pub const LAYOUT_CHUNK_BASED: u16 = 4;
/// EROFS compressed file with full (8-byte) lcluster indexes.
pub const LAYOUT_COMPRESSED_FULL: u16 = 1;
/// EROFS compressed file with compacted (2- and 4-byte) lcluster indexes.
pub const LAYOUT_COMPRESSED_COMPACT: u16 = 3;
/// `i_format` bit 0: extended (64-byte) inode.
pub const INODE_EXTENDED: u16 = 1;
/// Chunk format flag: the inode body holds chunk indexes.
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;

/// Directory entry file types (formats/rafs-v6.md §7).
pub mod file_type {
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHR: u8 = 3;
    /// Block device.
    pub const BLK: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symbolic link.
    pub const LNK: u8 = 7;
}

/// RafsSuperFlags as a type (formats/blob.md §8): the bits are [`super_flags`]' constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SuperFlags(pub u64);

impl SuperFlags {
    /// Whether every bit of `bits` is set.
    pub const fn contains(self, bits: u64) -> bool {
        self.0 & bits == bits
    }
}

/// RafsSuperFlags bits (formats/blob.md §8).
pub mod super_flags {
    /// Chunks stored uncompressed.
    pub const COMPRESSION_NONE: u64 = 0x1;
    /// LZ4 block compression.
    pub const COMPRESSION_LZ4: u64 = 0x2;
    /// BLAKE3 digests.
    pub const HASH_BLAKE3: u64 = 0x4;
    /// SHA-256 digests.
    pub const HASH_SHA256: u64 = 0x8;
    /// uid/gid are recorded.
    pub const EXPLICIT_UID_GID: u64 = 0x10;
    /// Some inode has xattrs.
    pub const HAS_XATTR: u64 = 0x20;
    /// gzip compression (targz-ref images, formats/blob.md §11).
    pub const COMPRESSION_GZIP: u64 = 0x40;
    /// zstd compression.
    pub const COMPRESSION_ZSTD: u64 = 0x80;
    /// Every blob carries a chunk digest array.
    pub const INLINED_CHUNK_DIGEST: u64 = 0x100;
    /// tar-tarfs image: data is referenced in place in the tar (512-byte blocks).
    pub const TARTFS_MODE: u64 = 0x200;
    /// Not encrypted.
    pub const ENCRYPTION_NONE: u64 = 0x0100_0000;
    /// Some blob is encrypted with AES-128-XTS (upstream's spelling "ASE"; formats/blob.md §10).
    pub const ENCRYPTION_AES_128_XTS: u64 = 0x0200_0000;

    use crate::codec::{Compressor, Digester};

    /// The one mapping between chunk algorithms and RafsSuperFlags, for v5 and v6 alike
    /// (formats/blob.md §8).
    pub fn of_compressor(c: Compressor) -> u64 {
        match c {
            Compressor::None => COMPRESSION_NONE,
            Compressor::Lz4Block => COMPRESSION_LZ4,
            Compressor::Zstd => COMPRESSION_ZSTD,
            Compressor::Gzip => COMPRESSION_GZIP,
        }
    }

    /// The digest flag of `d`.
    pub fn of_digester(d: Digester) -> u64 {
        match d {
            Digester::Blake3 => HASH_BLAKE3,
            Digester::Sha256 => HASH_SHA256,
        }
    }

    /// The compressor `flags` name, tested in upstream's order (none, lz4, zstd). Flags naming
    /// none fall back to lz4_block, as upstream's conversion does for both versions (the v6
    /// decoder here used to fall back to zstd, for no stated reason).
    pub fn compressor(flags: u64) -> Compressor {
        if flags & COMPRESSION_NONE != 0 {
            Compressor::None
        } else if flags & COMPRESSION_LZ4 != 0 {
            Compressor::Lz4Block
        } else if flags & COMPRESSION_ZSTD != 0 {
            Compressor::Zstd
        } else if flags & COMPRESSION_GZIP != 0 {
            Compressor::Gzip
        } else {
            Compressor::Lz4Block
        }
    }

    /// The digester `flags` name (blake3 unless sha256 is set, as upstream).
    pub fn digester(flags: u64) -> Digester {
        if flags & HASH_SHA256 != 0 {
            Digester::Sha256
        } else {
            Digester::Blake3
        }
    }
}

/// EROFS superblock, 128 bytes at offset 1024 (formats/rafs-v6.md §2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    /// Magic number identifying the structure.
    pub magic: U32,
    /// CRC32C of the superblock block (0: unchecked).
    pub checksum: U32,
    /// Compatible feature bits.
    pub feature_compat: U32,
    /// log2 of the block size.
    pub blkszbits: u8,
    /// Superblock extension slots (0).
    pub extslots: u8,
    /// nid of the root directory.
    pub root_nid: U16,
    /// Number of inodes.
    pub inos: U64,
    /// Build time, seconds (0: reproducible).
    pub build_time: U64,
    /// Build time, nanoseconds.
    pub build_time_nsec: U32,
    /// Blocks of data addressed by the image.
    pub blocks: U32,
    /// Block address of the metadata area.
    pub meta_blkaddr: U32,
    /// Block address of the shared xattr area.
    pub xattr_blkaddr: U32,
    /// Filesystem UUID (zeros).
    pub uuid: [u8; 16],
    /// Volume name (zeros).
    pub volume_name: [u8; 16],
    /// Incompatible feature bits.
    pub feature_incompat: U32,
    /// Available compression algorithms (bitmap) or LZ4 max distance.
    pub u1: U16,
    /// Devices besides the primary one (one per blob).
    pub extra_devices: U16,
    /// Device table slot offset (in 128-byte slots).
    pub devt_slotoff: U16,
    /// Reserved: zeros.
    pub reserved: [u8; 38],
}
const _: () = assert!(size_of::<SuperBlock>() == 128);

/// RAFS v6 extension superblock, 256 bytes at offset 1152 (formats/rafs-v6.md §3).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ExtSuperBlock {
    /// RafsSuperFlags (formats/blob.md §8).
    pub flags: U64,
    /// Offset of the blob table.
    pub blob_table_offset: U64,
    /// Size of the blob table in bytes.
    pub blob_table_size: U32,
    /// Chunk size.
    pub chunk_size: U32,
    /// Offset of the chunk table.
    pub chunk_table_offset: U64,
    /// Size of the chunk table in bytes.
    pub chunk_table_size: U64,
    /// Offset of the prefetch table.
    pub prefetch_table_offset: U64,
    /// Size of the prefetch table in bytes.
    pub prefetch_table_size: U32,
    /// Padding: zeros.
    pub padding: U32,
    /// Reserved: zeros.
    pub reserved: [u8; 200],
}
const _: () = assert!(size_of::<ExtSuperBlock>() == 256);

/// Device table slot, 128 bytes (formats/rafs-v6.md §4).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct DeviceSlot {
    /// The blob id, NUL padded.
    pub tag: [u8; 64],
    /// Blocks of the blob's uncompressed data.
    pub blocks: U32,
    /// Block address of the blob in a flattened disk image.
    pub mapped_blkaddr: U32,
    /// Reserved: zeros.
    pub reserved: [u8; 56],
}
const _: () = assert!(size_of::<DeviceSlot>() == 128);

/// `cipher_algo` of an AES-128-XTS encrypted blob (formats/blob.md §10).
pub const CIPHER_AES_128_XTS: u32 = 1;

/// Blob table entry, 256 bytes (formats/rafs-v6.md §5).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BlobEntry {
    /// The blob id, NUL padded.
    pub blob_id: [u8; 64],
    /// Index of this entry in the table.
    pub blob_index: U32,
    /// Chunk size.
    pub chunk_size: U32,
    /// Chunks the blob holds.
    pub chunk_count: U32,
    /// Compression of the blob's chunks (algorithm code).
    pub compression_algo: U32,
    /// Digest of the blob's chunks (algorithm code).
    pub digest_algo: U32,
    /// BlobFeatures bits (formats/blob.md §8).
    pub features: U32,
    /// Size of the stored (compressed) data.
    pub compressed_size: U64,
    /// Size of the uncompressed data.
    pub uncompressed_size: U64,
    /// Size of the blob's ToC (0: none).
    pub blob_toc_size: U32,
    /// Compression of the chunk-info array (algorithm code).
    pub ci_compressor: U32,
    /// Offset of the chunk-info array in the blob.
    pub ci_offset: U64,
    /// Stored size of the chunk-info array.
    pub ci_compressed_size: U64,
    /// Size of the chunk-info array uncompressed.
    pub ci_uncompressed_size: U64,
    /// sha256 of the blob's ToC.
    pub blob_toc_digest: [u8; 32],
    /// sha256 of the blob meta (separate-meta blobs).
    pub blob_meta_digest: [u8; 32],
    /// Size of the blob meta (separate-meta blobs).
    pub blob_meta_size: U64,
    /// Cipher IV (encrypted blobs).
    pub cipher_iv: [u8; 8],
    /// Cipher algorithm (0: none).
    pub cipher_algo: U32,
    /// Reserved: zeros.
    pub reserved: [u8; 36],
}
const _: () = assert!(size_of::<BlobEntry>() == 256);

/// Extended inode, 64 bytes (formats/rafs-v6.md §6.2).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct InodeExtended {
    /// i_format: inode version and data layout (formats/rafs-v6.md §6.1).
    pub format: U16,
    /// Inline xattr area size, in 4-byte units beyond the 12-byte header.
    pub xattr_icount: U16,
    /// File type and permission bits (`st_mode`).
    pub mode: U16,
    /// Reserved: zeros.
    pub reserved: U16,
    /// Size in bytes (for directories, of their entries).
    pub size: U64,
    /// Layout-dependent: block address, chunk format, rdev or compressed blocks.
    pub u: U32,
    /// Inode number.
    pub ino: U32,
    /// Owner user id.
    pub uid: U32,
    /// Owner group id.
    pub gid: U32,
    /// Modification time, seconds since the epoch.
    pub mtime: U64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Hard link count.
    pub nlink: U32,
    /// Reserved: zeros.
    pub reserved2: [u8; 16],
}
const _: () = assert!(size_of::<InodeExtended>() == 64);

/// Compact inode, 32 bytes (formats/rafs-v6.md §6.3); read only.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct InodeCompact {
    /// i_format: inode version and data layout (formats/rafs-v6.md §6.1).
    pub format: U16,
    /// Inline xattr area size, in 4-byte units beyond the 12-byte header.
    pub xattr_icount: U16,
    /// File type and permission bits (`st_mode`).
    pub mode: U16,
    /// Hard link count.
    pub nlink: U16,
    /// Size in bytes (for directories, of their entries).
    pub size: U32,
    /// Modification time, seconds since the epoch.
    pub mtime: U32,
    /// Layout-dependent: block address, chunk format, rdev or compressed blocks.
    pub u: U32,
    /// Inode number.
    pub ino: U32,
    /// Owner user id.
    pub uid: U16,
    /// Owner group id.
    pub gid: U16,
    /// Reserved: zeros.
    pub reserved: U32,
}
const _: () = assert!(size_of::<InodeCompact>() == 32);

/// Directory entry, 12 bytes (formats/rafs-v6.md §7).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Dirent {
    /// nid of the entry's inode.
    pub nid: U64,
    /// Offset of the entry's name in the block.
    pub nameoff: U16,
    /// File type (formats/rafs-v6.md §7).
    pub file_type: u8,
    /// Reserved: zeros.
    pub reserved: u8,
}
const _: () = assert!(size_of::<Dirent>() == 12);

/// Chunk index of a chunk-based file, 8 bytes (formats/rafs-v6.md §9).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkIndex {
    /// Chunk index within the blob, bits 0-15.
    pub blob_ci_lo: U16,
    /// Bits 0-7: blob index + 1; bits 8-15: chunk index bits 16-23.
    pub blob_ci_hi: U16,
    /// Uncompressed offset / block size.
    pub blkaddr: U32,
}
const _: () = assert!(size_of::<ChunkIndex>() == 8);

/// Inline xattr body header, 12 bytes (formats/rafs-v6.md §11).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct XattrIbodyHeader {
    /// Bloom filter of names (0: unused).
    pub name_filter: U32,
    /// Shared xattrs referenced after the header.
    pub shared_count: u8,
    /// Reserved: zeros.
    pub reserved: [u8; 7],
}
const _: () = assert!(size_of::<XattrIbodyHeader>() == 12);

/// Inline xattr entry header, 4 bytes, followed by name suffix and value (formats/rafs-v6.md §11).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct XattrEntry {
    /// Length of the name suffix.
    pub name_len: u8,
    /// Index of the name prefix.
    pub name_index: u8,
    /// Length of the value.
    pub value_size: U16,
}
const _: () = assert!(size_of::<XattrEntry>() == 4);

/// Chunk record, 80 bytes: the v6 chunk table entry (formats/rafs-v6.md §14).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkRecord {
    /// Digest (of the inode's content for inodes, of the uncompressed bytes for chunks).
    pub digest: [u8; 32],
    /// Index of the chunk's blob in the blob table.
    pub blob_index: U32,
    /// Chunk flags (formats/blob.md §8).
    pub flags: U32,
    /// Size of the stored (compressed) data.
    pub compressed_size: U32,
    /// Size of the uncompressed data.
    pub uncompressed_size: U32,
    /// Offset of the stored bytes in the blob.
    pub compressed_offset: U64,
    /// Offset in the blob's uncompressed view.
    pub uncompressed_offset: U64,
    /// Offset of the chunk within its file.
    pub file_offset: U64,
    /// Index of the chunk within its blob.
    pub index: U32,
    /// CRC-32C of the uncompressed bytes (when the flags say so).
    pub crc32: U32,
}
const _: () = assert!(size_of::<ChunkRecord>() == 80);
