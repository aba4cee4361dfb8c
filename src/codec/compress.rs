//! Chunk compression (formats/blob.md §2).

use crate::error::{Error, Result};

/// The zstd level upstream uses for chunks and chunk-info arrays.
pub const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The chunk compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compressor {
    /// Stored raw.
    None,
    /// A raw LZ4 block (no frame, no size prefix).
    Lz4Block,
    /// One zstd frame with the content size.
    #[default]
    Zstd,
    /// gzip: only the chunks of a `targz-ref` image, read in place from the original layer
    /// through inflate contexts (formats/blob.md §11); never written as chunk data.
    Gzip,
}

impl Compressor {
    /// Algorithm code in blob tables (formats/blob.md §8).
    pub fn code(self) -> u32 {
        match self {
            Compressor::None => 0,
            Compressor::Lz4Block => 1,
            Compressor::Zstd => 3,
            Compressor::Gzip => 2,
        }
    }

    /// The name used on the command line and in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::None => "none",
            Compressor::Lz4Block => "lz4_block",
            Compressor::Zstd => "zstd",
            Compressor::Gzip => "gzip",
        }
    }

    /// The algorithm with this blob-table code.
    pub fn from_code(code: u32) -> Option<Compressor> {
        match code {
            0 => Some(Compressor::None),
            1 => Some(Compressor::Lz4Block),
            3 => Some(Compressor::Zstd),
            2 => Some(Compressor::Gzip),
            _ => None,
        }
    }

    /// Compresses `data` into `out` (cleared first). Returns false, leaving `out` unspecified,
    /// when the result would not be strictly smaller: the caller then stores `data` raw.
    pub fn compress_into(self, data: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        out.resize(self.bound(data.len())?, 0);
        let n = self.compress_to_slice(data, out)?;
        out.truncate(n.unwrap_or(0));
        Ok(n.is_some())
    }

    /// The most bytes compressing `len` bytes can take (0 for `None`).
    pub fn bound(self, len: usize) -> Result<usize> {
        match self {
            Compressor::None => Ok(0),
            Compressor::Lz4Block => lz4::block::compress_bound(len).map_err(|e| codec("lz4", e)),
            Compressor::Zstd => Ok(zstd::zstd_safe::compress_bound(len)),
            Compressor::Gzip => Err(gzip_is_read_only()),
        }
    }

    /// Compresses `data` into the start of `out`, which must hold [`Compressor::bound`] bytes.
    /// Returns the compressed length, or `None` when it would not be strictly smaller than
    /// `data`.
    pub fn compress_to_slice(self, data: &[u8], out: &mut [u8]) -> Result<Option<usize>> {
        let n = self.compress_any_size(data, out)?;
        Ok((n > 0 && n < data.len()).then_some(n))
    }

    /// `data` compressed even when that does not shrink it; `None` for [`Compressor::None`].
    /// (An encrypted blob stores tiny batches compressed: formats/blob.md §10.)
    pub fn compress_whole(self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        if self == Compressor::None {
            return Ok(None);
        }
        let mut out = vec![0u8; self.bound(data.len())?];
        let n = self.compress_any_size(data, &mut out)?;
        out.truncate(n);
        Ok(Some(out))
    }

    /// Compresses `data` into the start of `out` ([`Compressor::bound`] bytes) and returns the
    /// compressed length, whatever it is (0 for `None`).
    fn compress_any_size(self, data: &[u8], out: &mut [u8]) -> Result<usize> {
        let n = match self {
            Compressor::None => return Ok(0),
            Compressor::Gzip => return Err(gzip_is_read_only()),
            Compressor::Lz4Block => lz4::block::compress_to_buffer(
                data,
                Some(lz4::block::CompressionMode::DEFAULT),
                false,
                out,
            )
            .map_err(|e| codec("lz4", e))?,
            // a context costs about as much to set up as compressing a small chunk, so each
            // thread keeps one; zstd output does not depend on the context's history
            Compressor::Zstd => ZSTD_CONTEXT.with(|cell| -> Result<usize> {
                let mut slot = cell.borrow_mut();
                let ctx = match &mut *slot {
                    Some(ctx) => ctx,
                    None => slot.insert(
                        zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| codec("zstd", e))?,
                    ),
                };
                ctx.compress_to_buffer(data, out)
                    .map_err(|e| codec("zstd", e))
            })?,
        };
        Ok(n)
    }

    /// Decompresses `data` into exactly `size` bytes.
    pub fn decompress(self, data: &[u8], size: usize) -> Result<Vec<u8>> {
        match self {
            Compressor::None => Ok(data.to_vec()),
            Compressor::Lz4Block => {
                let out =
                    lz4::block::decompress(data, Some(size as i32)).map_err(|e| codec("lz4", e))?;
                check_len("lz4", out, size)
            }
            Compressor::Zstd => {
                let out = zstd::bulk::decompress(data, size).map_err(|e| codec("zstd", e))?;
                check_len("zstd", out, size)
            }
            // a zran chunk is not a gzip stream of its own: blob::zran inflates it from its
            // context
            Compressor::Gzip => Err(gzip_is_read_only()),
        }
    }
}

fn gzip_is_read_only() -> Error {
    codec(
        "gzip",
        "gzip chunks are read through their inflate context (targz-ref), not compressed or decompressed alone",
    )
}

fn codec(algo: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Codec {
        algo,
        reason: e.to_string(),
    }
}

fn check_len(algo: &'static str, out: Vec<u8>, size: usize) -> Result<Vec<u8>> {
    if out.len() != size {
        return Err(Error::Codec {
            algo,
            reason: format!("decompressed {} bytes, expected {size}", out.len()),
        });
    }
    Ok(out)
}

impl std::str::FromStr for Compressor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compressor::None),
            "lz4_block" => Ok(Compressor::Lz4Block),
            "zstd" => Ok(Compressor::Zstd),
            _ => Err(Error::InvalidOption(format!("unknown compressor {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_incompressible_raw() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        for c in [Compressor::Lz4Block, Compressor::Zstd] {
            assert!(c.compress_into(&data, &mut out).unwrap());
            assert!(out.len() < data.len());
            assert_eq!(c.decompress(&out, data.len()).unwrap(), data);
            // five bytes never shrink
            assert!(!c.compress_into(b"hello", &mut out).unwrap());
        }
        assert!(!Compressor::None.compress_into(&data, &mut out).unwrap());
    }

    #[test]
    fn compresses_into_the_start_of_a_slice() {
        let data = vec![3u8; 10_000];
        for c in [Compressor::Lz4Block, Compressor::Zstd] {
            let mut out = vec![0xAAu8; 4 + c.bound(data.len()).unwrap()];
            let n = c.compress_to_slice(&data, &mut out[4..]).unwrap().unwrap();
            assert_eq!(&out[..4], &[0xAA; 4], "bytes before the slice untouched");
            assert_eq!(c.decompress(&out[4..4 + n], data.len()).unwrap(), data);
            assert_eq!(c.compress_to_slice(b"abc", &mut out[4..]).unwrap(), None);
        }
        assert_eq!(Compressor::None.bound(100).unwrap(), 0);
    }

    #[test]
    fn zstd_frame_has_content_size_and_no_checksum() {
        let data = vec![7u8; 65536];
        let mut out = Vec::new();
        Compressor::Zstd.compress_into(&data, &mut out).unwrap();
        assert_eq!(&out[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        // frame header descriptor: single segment, 4-byte content size, no checksum
        assert_eq!(out[4] & 0x04, 0, "no checksum flag");
        assert_ne!(out[4] & 0x20, 0, "single segment");
    }
}
