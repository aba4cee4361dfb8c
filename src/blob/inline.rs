//! Reading a bootstrap that `--blob-inline-meta` appended to a blob (formats/blob.md §4, §5).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::format::blob::TAR_HEADER_SIZE;

/// Upper bound on an inlined bootstrap we are willing to load.
pub const MAX_INLINE_BOOTSTRAP: u64 = 1 << 32;

/// Parses a framing tar header: its name and the size of the section before it.
pub fn parse_tar_header(h: &[u8], offset: u64) -> Result<(Vec<u8>, u64)> {
    let corrupt = |reason: &str| Error::Corrupt {
        what: "blob tar header",
        offset,
        reason: reason.to_string(),
    };
    if h.len() != TAR_HEADER_SIZE {
        return Err(corrupt("truncated"));
    }
    let stored: u32 = std::str::from_utf8(&h[148..155])
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_matches(|c: char| c == ' ' || c == '\0'), 8).ok())
        .ok_or_else(|| corrupt("bad checksum field"))?;
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return Err(corrupt("checksum mismatch"));
    }
    let size = std::str::from_utf8(&h[124..135])
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == ' ' || c == '\0'), 8).ok())
        .ok_or_else(|| corrupt("bad size field"))?;
    let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
    Ok((h[..name_end].to_vec(), size))
}

/// Where the bootstrap inlined in a blob of `len` bytes lies, from the blob's last 512 bytes
/// `tail`: its offset and size. Pure: no I/O.
pub fn bootstrap_range(tail: &[u8], len: u64) -> Result<(u64, u64)> {
    let hdr_off = len
        .checked_sub(TAR_HEADER_SIZE as u64)
        .ok_or(Error::Corrupt {
            what: "inlined-meta blob",
            offset: len,
            reason: "shorter than a tar header".into(),
        })?;
    let (name, size) = parse_tar_header(tail, hdr_off)?;
    if name != b"image.boot" {
        return Err(Error::Corrupt {
            what: "inlined-meta blob",
            offset: hdr_off,
            reason: format!(
                "last section is {:?}, not image.boot",
                String::from_utf8_lossy(&name)
            ),
        });
    }
    if size > hdr_off || size > MAX_INLINE_BOOTSTRAP {
        return Err(Error::Corrupt {
            what: "image.boot section",
            offset: hdr_off,
            reason: format!("size {size} does not fit before its header"),
        });
    }
    Ok((hdr_off - size, size))
}

/// Reads the bootstrap inlined at the end of `blob`.
pub fn extract_bootstrap(blob: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(blob).ctx("open", blob)?;
    let len = f.metadata().ctx("stat", blob)?.len();
    if len < TAR_HEADER_SIZE as u64 {
        return Err(Error::Corrupt {
            what: "inlined-meta blob",
            offset: len,
            reason: "shorter than a tar header".into(),
        });
    }
    let hdr_off = len - TAR_HEADER_SIZE as u64;
    let mut h = [0u8; TAR_HEADER_SIZE];
    f.seek(SeekFrom::Start(hdr_off)).ctx("seek", blob)?;
    f.read_exact(&mut h).ctx("read", blob)?;
    let (start, size) = bootstrap_range(&h, len)?;
    let mut boot = vec![0u8; size as usize];
    f.seek(SeekFrom::Start(start)).ctx("seek", blob)?;
    f.read_exact(&mut boot).ctx("read", blob)?;
    Ok(boot)
}
