//! Reading a bootstrap that `--blob-inline-meta` appended to a blob (formats/blob.md §4, §5),
//! directly before the last tar header or, in a `--features blob-toc` blob, through the ToC
//! (formats/blob.md §9).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use zerocopy::FromBytes;

use crate::codec::Compressor;
use crate::error::{Error, IoContext, Result};
use crate::format::blob::{self as format, TocEntry, TAR_HEADER_SIZE, TOC_ENTRY_SIZE};
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

/// Upper bound on a ToC we are willing to load (8192 entries).
pub const MAX_TOC: u64 = 1 << 20;

/// Finds the `image.boot` entry in the ToC bytes `toc` (stored at `toc_offset`, so every
/// section must end before it) and checks its sizes. Pure: no I/O.
pub fn toc_bootstrap_entry(toc: &[u8], toc_offset: u64) -> Result<TocEntry> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "blob ToC",
        offset: toc_offset,
        reason,
    };
    let entries = <[TocEntry]>::ref_from_bytes(toc).map_err(|_| {
        corrupt(format!(
            "{} bytes are not a whole number of {TOC_ENTRY_SIZE}-byte entries",
            toc.len()
        ))
    })?;
    let entry = entries
        .iter()
        .find(|e| e.name() == format::BOOT_SECTION.as_bytes())
        .ok_or_else(|| corrupt("no image.boot entry".into()))?;
    let (offset, stored) = (entry.compressed_offset.get(), entry.compressed_size.get());
    if offset
        .checked_add(stored)
        .is_none_or(|end| end > toc_offset)
    {
        return Err(corrupt(format!(
            "image.boot entry {offset}+{stored} does not end before the ToC"
        )));
    }
    if entry.uncompressed_size.get() > MAX_INLINE_BOOTSTRAP {
        return Err(corrupt("image.boot entry is too large".into()));
    }
    Ok(*entry)
}

/// Reads the bootstrap of a `blob-toc` blob whose ToC (`toc_size` bytes) ends at `toc_end`:
/// decompressed as its ToC entry says and checked against the entry's sha256.
fn bootstrap_via_toc<R: Read + Seek>(
    f: &mut R,
    blob: &Path,
    toc_end: u64,
    toc_size: u64,
) -> Result<Vec<u8>> {
    if toc_size > toc_end || toc_size > MAX_TOC {
        return Err(Error::Corrupt {
            what: "rafs.blob.toc section",
            offset: toc_end,
            reason: format!("size {toc_size} does not fit before its header"),
        });
    }
    let toc_offset = toc_end - toc_size;
    let toc = read_at(f, blob, toc_offset, toc_size)?;
    let entry = toc_bootstrap_entry(&toc, toc_offset)?;
    let offset = entry.compressed_offset.get();
    let stored = read_at(f, blob, offset, entry.compressed_size.get())?;
    let corrupt = |reason: String| Error::Corrupt {
        what: "image.boot section",
        offset,
        reason,
    };
    let compressor = match entry.flags.get() {
        format::TOC_FLAG_NONE => Compressor::None,
        format::TOC_FLAG_ZSTD => Compressor::Zstd,
        format::TOC_FLAG_LZ4_BLOCK => Compressor::Lz4Block,
        other => return Err(corrupt(format!("unknown ToC compression flags {other:#x}"))),
    };
    let boot = inflate_boot(compressor, &stored, entry.uncompressed_size.get(), offset)?;
    if Sha256::digest(&boot).as_slice() != entry.uncompressed_digest {
        return Err(corrupt("sha256 differs from its ToC entry".into()));
    }
    Ok(boot)
}

/// Decompresses an inlined bootstrap whose ToC entry declares `size` bytes, without allocating
/// what it declares before the data proves it: zstd streams into a growing buffer; lz4 cannot
/// expand a byte into more than 255, so a larger claim is refused at once.
fn inflate_boot(compressor: Compressor, stored: &[u8], size: u64, offset: u64) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "image.boot section",
        offset,
        reason,
    };
    match compressor {
        Compressor::Zstd => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::with_buffer(stored)
                .and_then(|d| d.take(size.saturating_add(1)).read_to_end(&mut out))
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if out.len() as u64 != size {
                return Err(corrupt(format!(
                    "decompressed {} bytes, its ToC entry says {size}",
                    out.len()
                )));
            }
            Ok(out)
        }
        Compressor::Lz4Block if size > (stored.len() as u64).saturating_mul(256) + 64 => {
            Err(corrupt(format!(
                "{} bytes of lz4 cannot hold the {size} bytes its ToC entry says",
                stored.len()
            )))
        }
        c => Ok(c.decompress(stored, size as usize)?),
    }
}

fn read_at<R: Read + Seek>(f: &mut R, blob: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(offset)).ctx("seek", blob)?;
    f.read_exact(&mut buf).ctx("read", blob)?;
    Ok(buf)
}

/// Reads the bootstrap inlined at the end of `blob`.
pub fn extract_bootstrap(blob: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(blob).ctx("open", blob)?;
    let len = f.metadata().ctx("stat", blob)?.len();
    extract_bootstrap_from(&mut f, len, blob)
}

/// Reads the bootstrap inlined at the end of the blob `f` (`len` bytes, named `blob` in
/// errors): any seekable reader, so that the fuzz target can hand it an in-memory blob.
pub fn extract_bootstrap_from<R: Read + Seek>(f: &mut R, len: u64, blob: &Path) -> Result<Vec<u8>> {
    if len < TAR_HEADER_SIZE as u64 {
        return Err(Error::Corrupt {
            what: "inlined-meta blob",
            offset: len,
            reason: "shorter than a tar header".into(),
        });
    }
    let hdr_off = len - TAR_HEADER_SIZE as u64;
    let h = read_at(f, blob, hdr_off, TAR_HEADER_SIZE as u64)?;
    let (name, size) = parse_tar_header(&h, hdr_off)?;
    if name == format::TOC_SECTION.as_bytes() {
        return bootstrap_via_toc(f, blob, hdr_off, size);
    }
    let (start, size) = bootstrap_range(&h, len)?;
    read_at(f, blob, start, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromZeros, IntoBytes};

    fn entry(name: &str, offset: u64, stored: u64) -> TocEntry {
        let mut e = TocEntry::new_zeroed();
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.flags = format::TOC_FLAG_NONE.into();
        e.compressed_offset = offset.into();
        e.compressed_size = stored.into();
        e.uncompressed_size = stored.into();
        e
    }

    #[test]
    fn toc_entry_for_the_bootstrap_must_fit_before_the_toc() {
        let toc = [entry("image.blob", 0, 10), entry("image.boot", 10, 90)];
        let found = toc_bootstrap_entry(toc.as_bytes(), 100).unwrap();
        assert_eq!(found.compressed_offset.get(), 10);
        assert!(toc_bootstrap_entry(toc.as_bytes(), 99).is_err());
        assert!(toc_bootstrap_entry(&toc.as_bytes()[..200], 100).is_err());
        assert!(toc_bootstrap_entry(toc[..1].as_bytes(), 100).is_err());
        let huge = [entry("image.boot", u64::MAX, 2)];
        assert!(toc_bootstrap_entry(huge.as_bytes(), 100).is_err());
    }
}
