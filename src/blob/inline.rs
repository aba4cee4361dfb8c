//! Reading a bootstrap that `--blob-inline-meta` appended to a blob (formats/blob.md §4, §5).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::format::blob::TAR_HEADER_SIZE;
use crate::format::tar;

/// Upper bound on an inlined bootstrap we are willing to load.
pub const MAX_INLINE_BOOTSTRAP: u64 = 1 << 32;

/// Parses a framing tar header: its name and the size of the section before it.
pub fn parse_tar_header(h: &[u8], offset: u64) -> Result<(Vec<u8>, u64)> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "blob tar header",
        offset,
        reason,
    };
    let h: &[u8; TAR_HEADER_SIZE] = h.try_into().map_err(|_| corrupt("truncated".to_string()))?;
    tar::checksum_ok(h).map_err(corrupt)?;
    let size = tar::unsigned(tar::raw(h, tar::field::SIZE), "size").map_err(corrupt)?;
    Ok((tar::cstr(tar::raw(h, tar::field::NAME)).to_vec(), size))
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
