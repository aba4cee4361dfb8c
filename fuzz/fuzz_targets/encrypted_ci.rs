//! Encrypted chunk info (`--encrypt`, formats/blob.md §10): a v2 chunk-info array (with batch
//! contexts when BATCH is set), compressed, then sealed with a fixed AES-128-XTS key together
//! with its header, decoded by `decode_blob_meta`; then each of the first chunks' stored bytes
//! (from the data region) decrypted by the reader's `decrypt_chunk` and decompressed as the
//! reader does.
//!
//! Input: a control byte (bits 0-1: ci compressor none, lz4_block, zstd; bit 2: BATCH; bit 3:
//! the ci array is taken as already encrypted; bit 4: each chunk's bytes are encrypted first,
//! and must decrypt to themselves; bit 5: lz4_block data, else zstd), the chunk count (u16),
//! the batch table's offset (u32) and count (u16), the ci array's length (u16), the ci array,
//! then the data region (the blob before its meta).
#![no_main]
use erofs_forge::fuzzing::{decode_blob_meta, decrypt_chunk, BlobMetaHeader, BLOB_META_MAGIC};
use erofs_forge::{BlobEntry, BlobFeatures, BlobKey, Compressor, Digester};
use erofs_forge_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromZeros, IntoBytes};

/// The fixed key: two different halves, as XTS needs.
const KEY: BlobKey = BlobKey {
    key: *b"0123456789abcdefFEDCBA9876543210",
    iv: [7; 16],
};
/// Chunks read per input.
const CHUNKS_READ: usize = 16;
/// The reader refuses chunks over 16 MiB before reading them.
const MAX_CHUNK: u32 = 16 << 20;

fn seal(bytes: &[u8]) -> Vec<u8> {
    KEY.encrypt(bytes).expect("the fixed key's halves differ")
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let ctl = input.u8();
    let chunk_count = u32::from(input.u16());
    let batch_offset = u64::from(input.u32());
    let batch_count = u32::from(input.u16());
    let ci_len = usize::from(input.u16());
    let ci = input.bytes(ci_len);
    let region = input.rest();
    let ci_compressor = match ctl & 3 {
        0 => Compressor::None,
        1 => Compressor::Lz4Block,
        _ => Compressor::Zstd,
    };
    let compressed = ci_compressor.compress_whole(ci).ok().flatten();
    let plain_stored = compressed.unwrap_or_else(|| ci.to_vec());
    let stored = if ctl & 8 != 0 {
        ci.to_vec()
    } else {
        seal(&plain_stored)
    };
    let mut features = BlobFeatures::ALIGNED;
    features |= BlobFeatures::CHUNK_INFO_V2;
    features |= BlobFeatures::ENCRYPTED;
    if ctl & 4 != 0 {
        features |= BlobFeatures::BATCH;
    }
    let blob = BlobEntry {
        id: "fuzz".into(),
        chunk_count,
        compressor: if ctl & 0x20 != 0 {
            Compressor::Lz4Block
        } else {
            Compressor::Zstd
        },
        digester: Digester::Blake3,
        features,
        compressed_size: region.len() as u64,
        uncompressed_size: 0,
        ci_offset: region.len() as u64,
        ci_compressed_size: stored.len() as u64,
        ci_uncompressed_size: ci.len() as u64,
        ci_compressor: ci_compressor.code(),
        mapped_blkaddr: 0,
        refs: Default::default(),
        cipher: Some(KEY),
    };
    let mut h = BlobMetaHeader::new_zeroed();
    h.magic = BLOB_META_MAGIC.into();
    h.magic2 = BLOB_META_MAGIC.into();
    h.features = features.bits().into();
    h.ci_compressor = ci_compressor.code().into();
    h.ci_entries = chunk_count.into();
    h.ci_offset = blob.ci_offset.into();
    h.ci_compressed_size = blob.ci_compressed_size.into();
    h.ci_uncompressed_size = blob.ci_uncompressed_size.into();
    h.ci_zran_offset = batch_offset.into();
    h.ci_zran_count = batch_count.into();
    let header = seal(h.as_bytes());
    let Ok(entries) = decode_blob_meta(stored, &header, &blob) else {
        return;
    };
    assert!(entries.len() <= chunk_count as usize);
    for (i, e) in entries.iter().enumerate().take(CHUNKS_READ) {
        if e.uncompressed_size > MAX_CHUNK || e.compressed_size > 2 * MAX_CHUNK {
            continue;
        }
        let len = e.batch.map_or(e.compressed_size, |s| s.stored_size) as usize;
        let Some(piece) = usize::try_from(e.compressed_offset)
            .ok()
            .and_then(|at| region.get(at..at.checked_add(len)?))
        else {
            continue;
        };
        let stored = if ctl & 0x10 != 0 {
            seal(piece)
        } else {
            piece.to_vec()
        };
        let Ok(plain) = decrypt_chunk(&blob, stored, e.compressed_offset, i as u32) else {
            continue;
        };
        if ctl & 0x10 != 0 {
            assert!(
                plain == piece,
                "chunk {i}: does not decrypt to what was sealed"
            );
        }
        // as the reader: a batch stored raw is exactly as long as the batch
        let (size, raw) = match e.batch {
            Some(s) => (s.batch_size, plain.len() == s.batch_size as usize),
            None => (e.uncompressed_size, !e.compressed),
        };
        if !raw {
            if let Ok(out) = blob.compressor.decompress(&plain, size as usize) {
                assert_eq!(out.len(), size as usize);
            }
        }
    }
});
