//! eStargz / targz-ref layer scan: the one pass of `create -t estargz-ref` (and `targz-ref`)
//! over an in-memory layer (gzip members, deflate block boundaries and windows, the tar inside,
//! the eStargz TOC and landmark entries dropped). What it records must read back: the zran
//! meta is encoded as the meta file holds it, parsed again, and each of the first chunks,
//! inflated from the layer through its context, must have the digest the scan gave it
//! (formats/blob.md §11).
//!
//! erofs-forge reads no eStargz TOC JSON: `stargz.index.json` is a tar entry it drops, and the
//! layer's own tar is the truth (formats/rafs-v6.md §17). So this target fuzzes the layer.
//!
//! Input: a control byte (bit 0: targz-ref instead of estargz-ref; bits 1-2: chunk size 4, 8
//! or 16 KiB), then the layer.
#![no_main]
use std::path::PathBuf;

use erofs_forge::fuzzing::{encode_meta, inflate_span, scan_layer, BlobMetaHeader, ZranMeta};
use erofs_forge::ops::create::{CreateOptions, SourceType};
use erofs_forge::{Compressor, Digester};
use erofs_forge_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

/// Chunks read back per input.
const CHUNKS_READ: usize = 8;

/// The meta file's bytes (stored ci area, then the 4096-byte header) decoded as a reader does.
fn reparse(bytes: &[u8], chunk_count: u32) -> ZranMeta {
    let (stored, header) = bytes.split_at(bytes.len() - 4096);
    let h = BlobMetaHeader::read_from_bytes(header).expect("a 4096-byte header");
    let algo = Compressor::from_code(h.ci_compressor.get()).expect("a known ci compressor");
    let raw = algo
        .decompress(stored, h.ci_uncompressed_size.get() as usize)
        .expect("our own ci area decompresses");
    match ZranMeta::parse(&raw, &h, chunk_count) {
        Ok(m) => m,
        Err(e) => panic!("our own zran meta does not parse: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let ctl = input.u8();
    let layer = input.rest();
    let opts = CreateOptions {
        source: PathBuf::from("fuzz.tar.gz"),
        source_type: if ctl & 1 != 0 {
            SourceType::TargzRef
        } else {
            SourceType::EstargzRef
        },
        chunk_size: 0x1000 << ((ctl >> 1) % 3),
        ..CreateOptions::default()
    };
    let Ok(scanned) = scan_layer(Box::new(std::io::Cursor::new(layer.to_vec())), &opts) else {
        return;
    };
    let _ = scanned.tree.link_counts();
    let meta = scanned.meta;
    let encoded = match encode_meta(&meta, meta.kind()) {
        Ok(e) => e,
        Err(e) => panic!("the scanned meta does not encode: {e}"),
    };
    let back = reparse(&encoded.bytes, meta.chunks.len() as u32);
    assert_eq!(
        back.chunks, meta.chunks,
        "chunk records differ after a round trip"
    );
    assert_eq!(back.contexts.len(), meta.contexts.len());
    for (i, ch) in back.chunks.iter().enumerate().take(CHUNKS_READ) {
        let piece = if back.in_place {
            let start = ch.compressed_offset as usize;
            layer[start..start + ch.compressed_size as usize].to_vec()
        } else {
            let ctx = back.contexts[ch.context as usize];
            let start = ctx.in_offset.get() as usize;
            let span = &layer[start..start + ctx.in_len.get() as usize];
            let end = ch.offset as usize + ch.uncompressed_size as usize;
            match inflate_span(&ctx, back.dict(&ctx), span, end) {
                Ok(out) => out[ch.offset as usize..].to_vec(),
                Err(e) => panic!("chunk {i}: its context does not inflate: {e:?}"),
            }
        };
        assert!(
            Digester::Sha256.digest(&piece) == scanned.chunks[i].digest,
            "chunk {i}: read back with other bytes"
        );
    }
});
