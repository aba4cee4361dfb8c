//! Prefetch table: a small bootstrap of each version (`fuzz/bases/`, built with
//! `--prefetch-policy fs`) whose prefetch table and its superblock fields come from the input
//! (formats/rafs-v5.md §2, §4; formats/rafs-v6.md §3, §6), decoded and read back as `inspect`
//! does; then the prefetch pattern list (`--prefetch-policy` stdin) applied to its tree.
//!
//! Input: a control byte (bit 0: v6; bit 1: the count field from the input; bit 2: the table
//! offset from the input), the count (u32), the offset (u32), the table length (u16), the
//! table, then the pattern list.
#![no_main]
use erofs_forge::{Prefetch, PrefetchPolicy};
use erofs_forge_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const V5: &[u8] = include_bytes!("../bases/prefetch-v5");
const V6: &[u8] = include_bytes!("../bases/prefetch-v6");

/// Where the superblock holds the prefetch table's offset (u64) and its count (u32: entries in
/// v5, bytes in v6): formats/rafs-v5.md §2, formats/rafs-v6.md §3.
const V5_FIELDS: (usize, usize) = (40, 60);
const V6_FIELDS: (usize, usize) = (1192, 1200);

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let ctl = input.u8();
    let v6 = ctl & 1 != 0;
    let count = input.u32();
    let offset = input.u32();
    let table_len = usize::from(input.u16());
    let table = input.bytes(table_len);
    let text = String::from_utf8_lossy(input.rest());
    let (base, (off_at, count_at)) = if v6 { (V6, V6_FIELDS) } else { (V5, V5_FIELDS) };
    let mut b = base.to_vec();
    let mut table_at = [0u8; 8];
    table_at.copy_from_slice(&b[off_at..off_at + 8]);
    let mut table_at = u64::from_le_bytes(table_at);
    if ctl & 4 != 0 {
        table_at = u64::from(offset);
        b[off_at..off_at + 8].copy_from_slice(&table_at.to_le_bytes());
    }
    let count = if ctl & 2 != 0 {
        count
    } else if v6 {
        table.len() as u32
    } else {
        (table.len() / 4) as u32
    };
    b[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    if let Some(start) = usize::try_from(table_at).ok().filter(|s| *s < b.len()) {
        let n = table.len().min(b.len() - start);
        b[start..start + n].copy_from_slice(&table[..n]);
    }
    if let Ok(image) = erofs_forge::read::decode(&b) {
        erofs_forge_fuzz::exercise_image(&image);
        let prefetch = Prefetch::new(PrefetchPolicy::Fs, &text);
        let entries = prefetch.table(&image.tree);
        assert!(entries.len() <= image.tree.entries.len());
        // each inode once, in tree order, as the sources hand them
        let mut seen = std::collections::HashSet::new();
        let files: Vec<_> = image
            .tree
            .entry_ids()
            .map(|e| (image.tree[e].inode, e))
            .filter(|(i, _)| seen.insert(*i))
            .collect();
        let n = files.len();
        assert_eq!(prefetch.data_order(&image.tree, files).len(), n);
    }
});
