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

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
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

/// A `Corrupt` error.
pub fn corrupt(what: &'static str, offset: u64, reason: &str) -> Error {
    Error::Corrupt {
        what,
        offset,
        reason: reason.to_string(),
    }
}
