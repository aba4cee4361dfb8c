//! The RAFS v6 (EROFS) bootstrap decoder: the EROFS magic is forced so every input reaches it.
#![no_main]
use erofs_forge::fuzzing::EROFS_MAGIC;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if buf.len() < 1028 {
        buf.resize(1028, 0);
    }
    buf[1024..1028].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
    erofs_forge_fuzz::exercise_bootstrap(&buf);
});
