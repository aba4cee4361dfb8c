//! Bounds-checked access to an untrusted byte buffer: every read names the structure and
//! offset it failed at, and nothing is allocated from a size that was not checked first.

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::error::{Error, Result};

/// A view of untrusted bytes (a bootstrap, a chunk-info array).
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    data: &'a [u8],
    /// Where the bytes that were not read start, and how many there are: `data` holds what
    /// comes before them, then what comes after (an image's file data, never decoded).
    gap: (u64, u64),
}

impl<'a> Bytes<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes {
            data,
            gap: (data.len() as u64, 0),
        }
    }

    /// Wraps `data`, the input less the `len` bytes at `start`, which were not read: a read
    /// there fails.
    pub fn with_gap(data: &'a [u8], start: u64, len: u64) -> Bytes<'a> {
        Bytes {
            data,
            gap: (start.min(data.len() as u64), len),
        }
    }

    /// Total length.
    pub fn len(&self) -> u64 {
        self.data.len() as u64 + self.gap.1
    }

    /// `len` bytes at `offset`.
    pub fn slice(&self, offset: u64, len: u64, what: &'static str) -> Result<&'a [u8]> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| corrupt(what, offset, "offset overflows"))?;
        if end > self.len() {
            return Err(corrupt(
                what,
                offset,
                &format!("{len} bytes needed, the image ends at {:#x}", self.len()),
            ));
        }
        let (gap_start, gap_len) = self.gap;
        if end <= gap_start || len == 0 && offset <= gap_start {
            return Ok(&self.data[offset as usize..end as usize]);
        }
        if offset >= gap_start + gap_len {
            return Ok(&self.data[(offset - gap_len) as usize..(end - gap_len) as usize]);
        }
        Err(corrupt(
            what,
            offset,
            "lies in the file data, which was not read (metadata expected)",
        ))
    }

    /// A structure at `offset`.
    pub fn get<T: FromBytes + KnownLayout + Immutable>(
        &self,
        offset: u64,
        what: &'static str,
    ) -> Result<&'a T> {
        let bytes = self.slice(offset, size_of::<T>() as u64, what)?;
        T::ref_from_bytes(bytes).map_err(|_| corrupt(what, offset, "misaligned structure"))
    }
}

/// A cap on what decoding may allocate from counts and sizes found in the input. In a
/// well-formed image every dirent, chunk record and xattr table occupies its own bytes, so
/// their totals are bounded by the image size; crafted images whose structures overlap would
/// otherwise multiply them (quadratic memory from a small input).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    left: u64,
}

impl Budget {
    /// A budget of `n` units.
    pub fn new(n: u64) -> Budget {
        Budget { left: n }
    }

    /// Takes `n`, or fails naming what overran it.
    pub fn spend(&mut self, n: u64, what: &'static str, at: u64) -> Result<()> {
        self.left = self.left.checked_sub(n).ok_or_else(|| {
            corrupt(
                what,
                at,
                "more than the image can hold (overlapping structures?): refusing to allocate for it",
            )
        })?;
        Ok(())
    }
}

/// A `Corrupt` error.
pub fn corrupt(what: &'static str, offset: u64, reason: &str) -> Error {
    Error::Corrupt {
        what,
        offset,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::Bytes;

    #[test]
    fn a_gap_reads_around_it_and_refuses_into_it() {
        // the input was 0..=9, bytes 3..7 not read
        let data = [0u8, 1, 2, 7, 8, 9];
        let b = Bytes::with_gap(&data, 3, 4);
        assert_eq!(b.len(), 10);
        assert_eq!(b.slice(0, 3, "x").unwrap(), &[0, 1, 2]);
        assert_eq!(b.slice(7, 3, "x").unwrap(), &[7, 8, 9]);
        assert_eq!(b.slice(3, 0, "x").unwrap(), &[] as &[u8]);
        assert!(b.slice(2, 2, "x").is_err());
        assert!(b.slice(5, 1, "x").is_err());
        assert!(b.slice(8, 3, "x").is_err());
        let whole = Bytes::new(&data);
        assert_eq!(whole.slice(2, 3, "x").unwrap(), &[2, 7, 8]);
    }
}
