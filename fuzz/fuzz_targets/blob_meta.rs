//! Blob meta: the chunk-info array decoder (v1 and v2 records, stored raw, lz4 or zstd, in the
//! clear or encrypted) behind a blob meta header, and the framing tar header of `--blob-inline-meta` blobs.
//!
//! Input: a control byte, then chunk count (u32), uncompressed size (u32) and ci offset or blob
//! length (u64), all little-endian; the rest is the stored chunk-info array (or the tar header).
#![no_main]
use erofs_forge::fuzzing::{bootstrap_range, parse_tar_header};
use erofs_forge::fuzzing::{decode_blob_meta, decode_ci_array};
use erofs_forge::fuzzing::{BLOB_META_HEADER_SIZE, BLOB_META_MAGIC};
use erofs_forge::{BlobEntry, BlobFeatures, BlobKey, Compressor, Digester};
use libfuzzer_sys::fuzz_target;

fn u32_at(d: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&d[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

fn tar_mode(ctl: u8, len: u64, rest: &[u8]) {
    let mut h = [0u8; 512];
    let n = rest.len().min(512);
    h[..n].copy_from_slice(&rest[..n]);
    if ctl & 2 != 0 {
        // a valid checksum, so the size and name paths are reached
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:07o}\0").as_bytes());
    }
    let _ = parse_tar_header(&h, 0);
    if let Ok((start, size)) = bootstrap_range(&h, len) {
        assert!(start.checked_add(size).is_some_and(|end| end + 512 == len));
    }
    // a short header is an error, not a panic
    let _ = parse_tar_header(&h[..n], 0);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let ctl = data[0];
    let chunk_count = u32_at(data, 1);
    let ci_uncompressed_size = u64::from(u32_at(data, 5));
    let word = u64_at(data, 9);
    let stored = &data[17..];
    if ctl & 1 != 0 {
        return tar_mode(ctl, word, stored);
    }
    let v2 = ctl & 2 != 0;
    let ci_compressor = u32::from((ctl >> 2) & 3);
    let mut features = BlobFeatures::ALIGNED;
    if v2 {
        features |= BlobFeatures::CHUNK_INFO_V2;
    }
    let blob = BlobEntry {
        id: "fuzz".into(),
        chunk_count,
        compressor: Compressor::Zstd,
        digester: Digester::Blake3,
        features,
        compressed_size: 0,
        uncompressed_size: 0,
        ci_offset: word,
        ci_compressed_size: stored.len() as u64,
        ci_uncompressed_size,
        ci_compressor,
        mapped_blkaddr: 0,
        refs: Default::default(),
        // encrypted blob meta (formats/blob.md §10): the header is sealed below
        cipher: (ctl & 0x40 != 0).then_some(BlobKey {
            key: *b"0123456789abcdefFEDCBA9876543210",
            iv: [7; 16],
        }),
    };
    let mut header = vec![0u8; BLOB_META_HEADER_SIZE];
    let magic = if ctl & 0x10 != 0 {
        0x1234_5678
    } else {
        BLOB_META_MAGIC
    };
    header[0..4].copy_from_slice(&magic.to_le_bytes());
    header[4..8].copy_from_slice(&blob.features.bits().to_le_bytes());
    header[8..12].copy_from_slice(&ci_compressor.to_le_bytes());
    header[12..16].copy_from_slice(&chunk_count.to_le_bytes());
    let off = if ctl & 0x20 != 0 { word ^ 1 } else { word };
    header[16..24].copy_from_slice(&off.to_le_bytes());
    header[24..32].copy_from_slice(&(stored.len() as u64).to_le_bytes());
    header[32..40].copy_from_slice(&ci_uncompressed_size.to_le_bytes());
    header[4092..4096].copy_from_slice(&BLOB_META_MAGIC.to_le_bytes());
    if let Some(key) = &blob.cipher {
        header = key.encrypt(&header).expect("the fixed key's halves differ");
    }
    if let Ok(entries) = decode_blob_meta(stored.to_vec(), &header, &blob) {
        assert!(entries.len() <= chunk_count as usize);
    }
    let _ = decode_blob_meta(stored.to_vec(), &header[..100], &blob);
    let entries = decode_ci_array(stored, chunk_count, v2);
    assert!(entries.len() <= chunk_count as usize);
    for e in entries {
        assert!(e.uncompressed_size >= 1 || v2);
    }
});
