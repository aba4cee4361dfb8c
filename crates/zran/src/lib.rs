//! A safe wrapper of the few zlib-rs inflate calls that random access into a gzip stream
//! ("zran") needs and that no safe API offers: stopping at deflate block boundaries
//! (`Z_BLOCK`) and reading `data_type`, the inflate window (`inflateGetDictionary`), and
//! restarting mid-byte (`inflatePrime`). The main library stays `#![forbid(unsafe_code)]`;
//! this crate holds the unsafe lines, each with its reason.

use zlib_rs::c_api::z_stream;
use zlib_rs::inflate::{self, InflateConfig, InflateStream};
use zlib_rs::{InflateFlush, ReturnCode};

/// Size of the deflate window (the largest dictionary).
pub const WINDOW_SIZE: usize = 1 << 15;

/// What one inflate call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
    /// The deflate stream (or gzip member) ended.
    pub stream_end: bool,
    /// zlib's `data_type` after the call: unused bits of the last input byte (0-7), +64 in the
    /// last block, +128 right after a block end or a gzip header.
    pub data_type: i32,
}

/// An inflate error, with zlib's return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error(pub i32);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0 {
            -2 => "stream error",
            -3 => "invalid deflate data",
            -4 => "out of memory",
            -5 => "no progress possible",
            _ => "inflate error",
        };
        write!(f, "{what} (zlib code {})", self.0)
    }
}

impl std::error::Error for Error {}

/// An inflate stream: raw deflate, or gzip (header and trailer parsed by inflate).
pub struct Inflater {
    stream: InflateStream<'static>,
}

fn check(rc: ReturnCode) -> Result<(), Error> {
    match rc {
        ReturnCode::Ok => Ok(()),
        other => Err(Error(other as i32)),
    }
}

impl Inflater {
    /// A raw deflate inflater (`gzip` false) or a gzip one.
    pub fn new(gzip: bool) -> Inflater {
        Inflater {
            stream: InflateStream::new(config(gzip)),
        }
    }

    /// Starts over on a new stream, raw or gzip.
    pub fn reset(&mut self, gzip: bool) -> Result<(), Error> {
        check(inflate::reset_with_config(&mut self.stream, config(gzip)))
    }

    /// Feeds the `bits` (0-7) low bits of `value` before the next input (`inflatePrime`).
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), Error> {
        if bits == 0 {
            return Ok(());
        }
        check(inflate::prime(
            &mut self.stream,
            i32::from(bits),
            i32::from(value),
        ))
    }

    /// Presets the window of a raw stream (`inflateSetDictionary`).
    pub fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), Error> {
        check(inflate::set_dictionary(&mut self.stream, dict))
    }

    /// Inflates from `input` into `output`; with `block`, stops at the next block boundary
    /// (`Z_BLOCK`). "No progress" (`Z_BUF_ERROR`) is not an error: the step says 0 and 0.
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8], block: bool) -> Result<Step, Error> {
        let avail_in = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let avail_out = u32::try_from(output.len()).unwrap_or(u32::MAX);
        let flush = if block {
            InflateFlush::Block
        } else {
            InflateFlush::NoFlush
        };
        let strm = self.z_stream();
        strm.next_in = input.as_ptr();
        strm.avail_in = avail_in;
        strm.next_out = output.as_mut_ptr();
        strm.avail_out = avail_out;
        // SAFETY: the stream was initialised by InflateStream::new; next_in/next_out point into
        // `input` and `output`, borrowed for this call, with at most their lengths available.
        let rc = unsafe { inflate::inflate(&mut self.stream, flush) };
        let strm = self.z_stream();
        let step = Step {
            consumed: (avail_in - strm.avail_in) as usize,
            produced: (avail_out - strm.avail_out) as usize,
            stream_end: rc == ReturnCode::StreamEnd,
            data_type: strm.data_type,
        };
        // the pointers must not outlive the borrows
        strm.next_in = std::ptr::null();
        strm.next_out = std::ptr::null_mut();
        strm.avail_in = 0;
        strm.avail_out = 0;
        match rc {
            ReturnCode::Ok | ReturnCode::StreamEnd | ReturnCode::BufError => Ok(step),
            other => Err(Error(other as i32)),
        }
    }

    /// The current window (the last up to 32 KiB of output, oldest first) into `buf`; returns
    /// its length (`inflateGetDictionary`).
    pub fn window(&self, buf: &mut [u8; WINDOW_SIZE]) -> usize {
        // SAFETY: `buf` holds WINDOW_SIZE bytes, the most a window holds.
        unsafe { inflate::get_dictionary(&self.stream, buf.as_mut_ptr()) }
    }

    fn z_stream(&mut self) -> &mut z_stream {
        // SAFETY: InflateStream is #[repr(C)] with z_stream's layout (zlib-rs asserts size and
        // alignment, and its own as_z_stream_mut does this cast); the borrow is unique.
        unsafe { &mut *(&mut self.stream as *mut InflateStream<'static>).cast::<z_stream>() }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        let _ = inflate::end(&mut self.stream);
    }
}

fn config(gzip: bool) -> InflateConfig {
    InflateConfig {
        window_bits: if gzip { 31 } else { -15 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_gzip_header_then_inflates() {
        // gzip of "hello" (no name, mtime 0)
        let gz = [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0, 0x86, 0xa6,
            0x10, 0x36, 5, 0, 0, 0,
        ];
        let mut z = Inflater::new(true);
        let mut out = [0u8; 16];
        let s = z.inflate(&gz, &mut out, true).unwrap();
        assert_eq!(s.consumed, 10);
        assert_ne!(s.data_type & 128, 0);
        let s2 = z.inflate(&gz[10..], &mut out, false).unwrap();
        assert!(s2.stream_end);
        assert_eq!(&out[..s2.produced], b"hello");
    }
}
