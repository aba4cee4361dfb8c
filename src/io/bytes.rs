//! Bounds-checked access to an untrusted byte buffer: every read names the structure and
//! offset it failed at, and nothing is allocated from a size that was not checked first.

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::error::{Error, Result};

/// A view of untrusted bytes (a bootstrap, a chunk-info array).
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    /// Total length.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
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
        Ok(&self.data[offset as usize..end as usize])
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
