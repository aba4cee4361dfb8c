//! Blob ToC: the bootstrap inlined in a `--blob-inline-meta` blob, found through the ToC of a
//! `--features blob-toc` blob (decompressed, sha256 checked) or directly before the last tar
//! header (formats/blob.md §4, §5, §9), from an in-memory blob.
//!
//! Input: the number of zero bytes the blob starts with (u32, cut to 16 MiB), then its tail.
#![no_main]
use std::path::Path;

use erofs_forge::fuzzing::{extract_bootstrap_from, toc_bootstrap_entry};
use erofs_forge_fuzz::{Input, ZeroPrefixed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let zeros = u64::from(input.u32() % (16 << 20));
    let tail = input.rest();
    let mut blob = ZeroPrefixed {
        zeros,
        tail,
        pos: 0,
    };
    let len = blob.len();
    if let Ok(boot) = extract_bootstrap_from(&mut blob, len, Path::new("fuzz.blob")) {
        let _ = erofs_forge::read::decode(&boot);
    }
    // the ToC entries alone: the tail as a ToC ending where the blob does
    let _ = toc_bootstrap_entry(tail, len);
});
