//! The RAFS v5 bootstrap decoder: the magic and version are forced so every input reaches it.
#![no_main]
use erofs_forge::fuzzing::{RAFS_V5_MAGIC, RAFS_V5_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if buf.len() < 8 {
        buf.resize(8, 0);
    }
    buf[..4].copy_from_slice(&RAFS_V5_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&RAFS_V5_VERSION.to_le_bytes());
    erofs_forge_fuzz::exercise_bootstrap(&buf);
});
