//! Zran meta: the ci area of a `targz-ref` (or tar-ref) blob meta, chunk records, inflate
//! contexts and dictionaries, as `ZranMeta::parse` decodes it (formats/blob.md §11); then each
//! of the first chunks inflated from its context as the reader does, the layer being the rest
//! of the input.
//!
//! Input: a control byte (bit 0: ZRAN feature, else a tar-ref), chunk count (u16), the header's
//! context table offset (u32), context count (u16), ci_zran_size (u32), the ci area's length
//! (u32), the ci area, then the layer.
#![no_main]
use erofs_forge::fuzzing::{gzip_header_len, inflate_span, BlobMetaHeader, ZranMeta};
use erofs_forge::BlobFeatures;
use erofs_forge_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use zerocopy::FromZeros;

/// Chunks inflated per input: enough to reach several contexts, few enough to stay fast.
const CHUNKS_READ: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let ctl = input.u8();
    let chunk_count = u32::from(input.u16());
    let mut h = BlobMetaHeader::new_zeroed();
    if ctl & 1 != 0 {
        h.features = BlobFeatures::ZRAN.bits().into();
    }
    h.ci_zran_offset = u64::from(input.u32()).into();
    h.ci_zran_count = u32::from(input.u16()).into();
    h.ci_zran_size = u64::from(input.u32()).into();
    let raw_len = input.u32() as usize;
    let raw = input.bytes(raw_len);
    let layer = input.rest();
    let _ = gzip_header_len(layer);
    let Ok(meta) = ZranMeta::parse(raw, &h, chunk_count) else {
        return;
    };
    assert_eq!(meta.chunks.len(), chunk_count as usize);
    for ch in meta.chunks.iter().take(CHUNKS_READ) {
        if meta.in_place {
            continue;
        }
        // as ZranBlob::read: the context's whole span first, its span's bytes from the layer
        let ctx = meta.contexts[ch.context as usize];
        let want = ctx.out_len.get() as usize;
        let start = usize::try_from(ctx.in_offset.get()).unwrap_or(usize::MAX);
        let span = layer.get(start..).unwrap_or(&[]);
        let span = &span[..span.len().min(ctx.in_len.get() as usize)];
        if let Ok(out) = inflate_span(&ctx, meta.dict(&ctx), span, want) {
            assert_eq!(out.len(), want);
        }
    }
});
