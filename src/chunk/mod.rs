//! Chunking: digests, compression and the parallel pipeline that feeds the blob writer.

pub mod compress;
pub mod digest;
pub mod pipeline;

pub use compress::Compressor;
pub use digest::Digester;

/// Smallest chunk size accepted (formats/blob.md §2).
pub const MIN_CHUNK_SIZE: u32 = 0x1000;
/// Largest chunk size accepted (formats/blob.md §2).
pub const MAX_CHUNK_SIZE: u32 = 0x100_0000;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;

/// Checks that a chunk size is a power of two within the allowed range.
pub fn validate_chunk_size(size: u32) -> crate::Result<()> {
    if !size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        return Err(crate::Error::InvalidOption(format!(
            "chunk size {size:#x} must be a power of two between {MIN_CHUNK_SIZE:#x} and {MAX_CHUNK_SIZE:#x}"
        )));
    }
    Ok(())
}
