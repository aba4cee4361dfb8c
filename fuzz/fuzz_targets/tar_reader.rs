//! The streaming tar reader (ustar, GNU, PAX, sparse) on an in-memory archive, no chunk pipeline.
#![no_main]
use std::path::Path;

use erofs_forge::fuzzing::read_tar;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(tree) = read_tar(
        &mut input,
        Path::new("fuzz.tar"),
        &mut erofs_forge_fuzz::Discard,
    ) {
        let order = tree.numbering_order();
        assert_eq!(order.len(), tree.entries.len());
        for e in order {
            let _ = tree.path(e);
        }
        let _ = tree.link_counts();
    }
});
