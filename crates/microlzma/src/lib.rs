//! A safe wrapper of liblzma's MicroLZMA encoder, the LZMA framing the Linux EROFS driver
//! decompresses. No safe Rust binding offers it, so this crate holds the one piece of FFI the
//! project needs; the main library stays `#![forbid(unsafe_code)]`.

use liblzma_sys as sys;

/// Compresses all of `input` into one MicroLZMA stream with the given dictionary size and
/// preset (0-9). Returns `None` if liblzma reports an error.
pub fn compress(input: &[u8], dict_size: u32, preset: u32) -> Option<Vec<u8>> {
    // room for incompressible input plus the encoder's overhead
    let mut out = vec![0u8; input.len() + input.len() / 16 + 4096];
    // SAFETY: lzma_stream and lzma_options_lzma are plain C structs for which all-zero is the
    // documented initial value (LZMA_STREAM_INIT); the pointers handed to liblzma point into
    // `input` and `out`, which outlive the calls, with their exact lengths; lzma_end releases
    // the encoder's memory on every path.
    unsafe {
        let mut opts: sys::lzma_options_lzma = std::mem::zeroed();
        if sys::lzma_lzma_preset(&mut opts, preset) != 0 {
            return None;
        }
        opts.dict_size = dict_size;
        let mut strm: sys::lzma_stream = std::mem::zeroed();
        if sys::lzma_microlzma_encoder(&mut strm, &opts) != sys::LZMA_OK {
            sys::lzma_end(&mut strm);
            return None;
        }
        strm.next_in = input.as_ptr();
        strm.avail_in = input.len();
        strm.next_out = out.as_mut_ptr();
        strm.avail_out = out.len();
        let ret = sys::lzma_code(&mut strm, sys::LZMA_FINISH);
        let (total_in, total_out) = (strm.total_in, strm.total_out);
        sys::lzma_end(&mut strm);
        if ret != sys::LZMA_STREAM_END || total_in != input.len() as u64 {
            return None;
        }
        out.truncate(total_out as usize);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn compresses_repetitive_data() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let c = super::compress(&data, 65536, 6).unwrap();
        assert!(c.len() < 2000, "{}", c.len());
        assert_ne!(
            c[0], 0,
            "the first byte is never a zero (0-padding is skipped by readers)"
        );
    }
}
