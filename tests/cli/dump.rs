//! Golden text dumps of the upstream fixtures (`ops::dump`): what our decoder reads from each
//! image nydus-image built. `BLESS=1 cargo test --test cli dump` rewrites them after a
//! deliberate change; the diff is then reviewed like any other.

use erofs_forge::ops::dump::dump;
use erofs_forge::read;

use crate::common::repo;

/// (fixture, the bootstrap inside it: a bootstrap file, or a blob with an inlined one).
const FIXTURES: &[(&str, &str)] = &[
    ("v5-zstd", "bootstrap"),
    ("v6-zstd", "bootstrap"),
    ("v6-lz4_block", "bootstrap"),
    ("v6-tar-rafs", "bootstrap"),
    ("v6-tar-tarfs", "bootstrap"),
    ("v6-prefetch-fs", "bootstrap"),
    ("v5-prefetch-fs", "bootstrap"),
    ("v6-merge-prefetch", "bootstrap"),
    (
        "v6-inline-meta",
        "blobs/cad085d9a07308fa3fad4ce9350fb7bdd6bc7ca8aa9f0e175ee763254100c618",
    ),
];
// not here: v5-tar-rafs, which upstream wrote broken (its inode digests do not verify; see
// fixtures/upstream/README.md); upstream_read checks that it is rejected with an offset.

#[test]
fn upstream_fixture_dumps_match_their_golden_copies() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut differ = Vec::new();
    for (name, file) in FIXTURES {
        let path = repo().join("fixtures/upstream").join(name).join(file);
        let image = read::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .image;
        let text = dump(&image);
        let golden = repo().join("tests/golden").join(format!("{name}.dump"));
        if bless {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (BLESS=1 writes it)", golden.display()));
        if want != text {
            differ.push(format!("{name}: dump differs from {}", golden.display()));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
