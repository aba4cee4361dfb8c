//! Safe wrappers of liblz4's "destSize" compressors: compress as much of the input as fits a
//! given output size, and say how much was taken. EROFS fills each physical cluster this way
//! (formats/rafs-v6.md §19.1). `lz4-sys` builds liblz4 (1.10) but binds neither function, so
//! this crate declares them; the main library stays `#![forbid(unsafe_code)]`.

use std::cell::RefCell;
use std::os::raw::{c_char, c_int, c_void};

// Linked from the static liblz4 that lz4-sys builds.
use lz4_sys as _;

extern "C" {
    fn LZ4_sizeofStateHC() -> c_int;
    fn LZ4_compress_HC_destSize(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        target_dst_size: c_int,
        level: c_int,
    ) -> c_int;
    fn LZ4_compress_destSize(
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        target_dst_size: c_int,
    ) -> c_int;
}

thread_local! {
    /// One LZ4HC state per thread (about 256 KiB), kept between calls rather than allocated
    /// for each cluster; liblz4 resets it at the start of every call.
    static HC_STATE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// What a fixed-output compression made: the compressed bytes and how many input bytes they
/// hold (a prefix of the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    /// The compressed block, at most the capacity asked for.
    pub data: Vec<u8>,
    /// How many bytes of the input it decompresses to.
    pub consumed: usize,
}

/// Compresses the longest prefix of `input` whose LZ4 block fits `capacity` bytes, with LZ4HC
/// at `level` (`None`: plain LZ4, the fast compressor). `None` when liblz4 fails or the sizes
/// do not fit an `int`.
pub fn compress_dest_size(input: &[u8], capacity: usize, level: Option<i32>) -> Option<Filled> {
    let mut src_len = c_int::try_from(input.len()).ok()?;
    let cap = c_int::try_from(capacity).ok()?;
    let mut out = vec![0u8; capacity];
    let written = match level {
        Some(level) => HC_STATE.with(|state| {
            let mut state = state.borrow_mut();
            if state.is_empty() {
                // SAFETY: a plain query of a constant.
                let bytes = unsafe { LZ4_sizeofStateHC() } as usize;
                // u64 words: liblz4 wants the state 8-byte aligned
                state.resize(bytes.div_ceil(8), 0);
            }
            // SAFETY: `state` is at least LZ4_sizeofStateHC() bytes, 8-byte aligned, and
            // reinitialised by the call; `input` holds `src_len` readable bytes and `out`
            // `cap` writable ones; liblz4 writes at most `cap` bytes and stores in `src_len`
            // no more than it was given.
            unsafe {
                LZ4_compress_HC_destSize(
                    state.as_mut_ptr().cast(),
                    input.as_ptr().cast(),
                    out.as_mut_ptr().cast(),
                    &mut src_len,
                    cap,
                    level,
                )
            }
        }),
        // SAFETY: as above, without a caller-provided state.
        None => unsafe {
            LZ4_compress_destSize(
                input.as_ptr().cast(),
                out.as_mut_ptr().cast(),
                &mut src_len,
                cap,
            )
        },
    };
    if written <= 0 && !input.is_empty() {
        return None;
    }
    let consumed = usize::try_from(src_len).ok()?.min(input.len());
    out.truncate(usize::try_from(written.max(0)).ok()?.min(capacity));
    Some(Filled {
        data: out,
        consumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let words: [&[u8]; 5] = [b"extent ", b"cluster ", b"block ", b"erofs ", b"zero "];
        let mut x = 1u32;
        let mut out = Vec::new();
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(words[(x >> 16) as usize % words.len()]);
        }
        out.truncate(len);
        out
    }

    /// The block fits the capacity, holds a prefix of the input, and lz4's own decoder gives
    /// that prefix back.
    #[test]
    fn fills_the_capacity_with_a_prefix() {
        let input = text(1 << 20);
        for level in [None, Some(9), Some(12)] {
            let f = compress_dest_size(&input, 65536, level).unwrap();
            assert!(f.data.len() <= 65536 && f.data.len() > 60000, "{level:?}");
            assert!(f.consumed > 65536 && f.consumed < input.len(), "{level:?}");
            let back = lz4_sys_decompress(&f.data, f.consumed);
            assert_eq!(back, input[..f.consumed], "{level:?}");
        }
    }

    /// Input that fits whole is taken whole.
    #[test]
    fn small_input_is_taken_whole() {
        let input = text(5000);
        let f = compress_dest_size(&input, 65536, Some(9)).unwrap();
        assert_eq!(f.consumed, input.len());
        assert_eq!(lz4_sys_decompress(&f.data, f.consumed), input);
    }

    fn lz4_sys_decompress(block: &[u8], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        // SAFETY: bounded by both buffers' lengths.
        let n = unsafe {
            lz4_sys::LZ4_decompress_safe(
                block.as_ptr().cast(),
                out.as_mut_ptr().cast(),
                block.len() as c_int,
                size as c_int,
            )
        };
        assert_eq!(n as usize, size);
        out
    }
}
