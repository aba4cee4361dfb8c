//! On-disk structures of a zran (`targz-ref`) blob meta: the inflate contexts that let a chunk
//! be decompressed from the middle of a gzip layer (formats/blob.md §11).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of one inflate context record (formats/blob.md §11).
pub const ZRAN_CONTEXT_SIZE: usize = 40;
/// Largest inflate window (dictionary) a context carries: deflate's 32 KiB.
pub const ZRAN_WINDOW_SIZE: usize = 1 << 15;
/// v2 chunk-record flag (in `uncomp_info` bits 56-63): the chunk lives in a gzip stream and is
/// read through an inflate context (formats/blob.md §3.3).
pub const CI_V2_FLAG_ZRAN: u8 = 0x02;
/// v2 chunk-record flag: the stored bytes are compressed (formats/blob.md §3.3).
pub const CI_V2_FLAG_COMPRESSED: u8 = 0x01;
/// v2 chunk-info flag: the data word holds the chunk's crc32 (tar-ref records).
pub const CI_V2_FLAG_HAS_CRC32: u8 = 0x10;

/// Where inflating may restart inside a gzip stream (upstream `ZranInflateContext`,
/// formats/blob.md §11).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ZranContext {
    /// Offset in the compressed stream where inflating restarts.
    pub in_offset: U64,
    /// Offset in the uncompressed stream at that point.
    pub out_offset: U64,
    /// Offset of the dictionary in the dictionary table.
    pub dict_offset: U64,
    /// Compressed bytes the context spans.
    pub in_len: U32,
    /// Uncompressed bytes the context spans.
    pub out_len: U32,
    /// Size of the dictionary (0 or up to 32 KiB).
    pub dict_size: U32,
    /// The byte before `in_offset`, whose top `ctx_bits` bits start the block.
    pub ctx_byte: u8,
    /// Unread bits (0-7) of `ctx_byte`.
    pub ctx_bits: u8,
    /// Zero.
    pub reserved: [u8; 2],
}
const _: () = assert!(size_of::<ZranContext>() == ZRAN_CONTEXT_SIZE);
