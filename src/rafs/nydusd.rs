//! What upstream's runtime makes of a bootstrap when it loads it (formats/blob.md §12): the
//! blob ids it rewrites and the blob files it then looks up. The Linux kernel ignores blob
//! ids and features, so an image the kernel mounts can still be one nydusd cannot serve; this
//! module re-states nydusd's load-time rules so that every bootstrap erofs-forge writes can be
//! held to them without running nydusd.

use std::path::Path;

use crate::format::blob::BlobFeatures;
use crate::model::{BlobEntry, Image};

/// How nydusd is handed the bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed<'a> {
    /// A bootstrap file of its own, at this path.
    Bootstrap(&'a Path),
    /// A blob with the bootstrap inlined at its end, at this path.
    InlineBlob(&'a Path),
}

/// The blob files nydusd opens for one blob-table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The blob's index in the table.
    pub index: usize,
    /// The name under which the data blob is looked up in the blob directory.
    pub data: String,
    /// For a blob whose meta is published apart from its data (SEPARATE), the meta blob's name.
    pub meta: Option<String>,
}

/// nydusd's file prefix of a path: the file name up to its first dot (`<id>.boot` gives
/// `<id>`; upstream's `BlobInfo::get_blob_id_from_meta_path`), `None` when that is empty.
pub fn file_prefix(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    // Path::file_stem keeps a leading dot: ".x.boot" → ".x"
    let cut = name
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '.')
        .map_or(name.len(), |(i, _)| i);
    let prefix = &name[..cut];
    (!prefix.is_empty()).then(|| prefix.to_string())
}

fn has(b: &BlobEntry, f: BlobFeatures) -> bool {
    b.features.contains(f)
}

/// Whether nydusd gives this blob the bootstrap's file prefix as its meta path on load.
fn takes_meta_path(b: &BlobEntry, handed: Handed<'_>) -> bool {
    match handed {
        // RafsSuper::load_from_file, "fix blob id for old converters"
        Handed::Bootstrap(_) => has(b, BlobFeatures::INLINED_FS_META),
        // RafsSuper::set_blob_id_from_meta_path, after the bootstrap was cut out of the blob
        Handed::InlineBlob(_) => {
            has(b, BlobFeatures::INLINED_FS_META) || !has(b, BlobFeatures::CAP_TAR_TOC)
        }
    }
}

/// The blob files nydusd looks up for `image` handed to it as `handed`: `BlobInfo::blob_id`
/// for the data, `BlobInfo::get_blob_meta_id` for a separate meta blob.
pub fn lookups(image: &Image, handed: Handed<'_>) -> Vec<Lookup> {
    let path = match handed {
        Handed::Bootstrap(p) | Handed::InlineBlob(p) => p,
    };
    let prefix = file_prefix(path).unwrap_or_default();
    image
        .blobs
        .iter()
        .enumerate()
        .map(|(index, b)| {
            let meta_path = takes_meta_path(b, handed).then_some(prefix.as_str());
            let renamed = (!has(b, BlobFeatures::EXTERNAL)
                && has(b, BlobFeatures::INLINED_FS_META)
                && !has(b, BlobFeatures::SEPARATE))
                || !has(b, BlobFeatures::CAP_TAR_TOC);
            let data = match meta_path {
                Some(p) if renamed && !p.is_empty() => p.to_string(),
                _ => b.id.clone(),
            };
            let meta = has(b, BlobFeatures::SEPARATE).then(|| match meta_path {
                Some(p) if has(b, BlobFeatures::INLINED_FS_META) => p.to_string(),
                _ => hex::encode(b.refs.meta_digest),
            });
            Lookup { index, data, meta }
        })
        .collect()
}

/// Breaks of nydusd's load-time rules that hold whatever the bootstrap's file is named: each
/// is a blob that no name of the bootstrap lets nydusd find. Empty for a servable image.
pub fn violations(image: &Image) -> Vec<String> {
    let mut out = Vec::new();
    let renamed: Vec<usize> = image
        .blobs
        .iter()
        .enumerate()
        .filter(|(_, b)| has(b, BlobFeatures::INLINED_FS_META) && !has(b, BlobFeatures::SEPARATE))
        .map(|(i, _)| i)
        .collect();
    if renamed.len() > 1 {
        out.push(format!(
            "blobs {renamed:?} carry INLINED_FS_META: nydusd names them all after the \
             bootstrap's file, so all but one are looked up under a wrong id"
        ));
    }
    for (i, b) in image.blobs.iter().enumerate() {
        out.extend(entry_violation(i, b, renamed.contains(&i)));
        if image.blobs[..i].iter().any(|o| o.id == b.id) && !renamed.contains(&i) {
            // the device slots' tags must be unique: a duplicate fails every load
            out.push(format!("blob {i}: id {} is listed twice", b.id));
        }
    }
    let has_xattrs = image.tree.inodes.iter().any(|n| !n.xattrs.is_empty());
    if has_xattrs
        && !image
            .flags
            .contains(crate::format::rafs_v6::super_flags::HAS_XATTR)
    {
        // nydusd answers getxattr with ENOSYS without the flag: the xattrs vanish
        out.push("inodes have xattrs but the superblock lacks HAS_XATTR".into());
    }
    out
}

/// The rule one blob-table entry breaks, if any.
fn entry_violation(i: usize, b: &BlobEntry, renamed: bool) -> Option<String> {
    let placeholder = b.id.is_empty() || b.id.bytes().all(|c| c == b'x');
    if placeholder && !renamed {
        return Some(format!(
            "blob {i} has the placeholder id {:?} and no INLINED_FS_META: nydusd looks it up \
             under that id",
            b.id
        ));
    }
    let separate = has(b, BlobFeatures::SEPARATE);
    if separate && !has(b, BlobFeatures::INLINED_FS_META) && b.refs.meta_id().is_none() {
        return Some(format!(
            "blob {i} ({}) keeps its meta apart (SEPARATE) but records no blob_meta_digest: \
             nydusd looks the meta up as 000…0",
            b.id
        ));
    }
    let v2 = has(b, BlobFeatures::CHUNK_INFO_V2);
    for (f, name) in [
        (BlobFeatures::BATCH, "BATCH"),
        (BlobFeatures::ZRAN, "ZRAN"),
        (BlobFeatures::ENCRYPTED, "ENCRYPTED"),
    ] {
        if has(b, f) && !v2 {
            // nydusd decodes their chunk records as v1 (16 bytes) without it
            return Some(format!("blob {i} ({}): {name} without CHUNK_INFO_V2", b.id));
        }
    }
    if b.id.len() > 64 {
        // the v6 blob table and device slots hold 64 bytes of id
        return Some(format!("blob {i}: id longer than 64 bytes: {:?}", b.id));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Compressor, Digester};

    fn blob(id: &str, features: BlobFeatures) -> BlobEntry {
        let mut b = BlobEntry::new(id.into(), Compressor::Zstd, Digester::Blake3);
        b.features = features;
        b
    }

    /// An empty v6 image whose blob table is `blobs` (the tree and chunks do not matter here).
    fn image(blobs: Vec<BlobEntry>) -> Image {
        let opts = crate::rafs::v6::EncodeOptions {
            chunk_size: 0x10_0000,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            explicit_uid_gid: true,
            block_size: crate::rafs::v6::encode::BLOCK_SIZE,
            tarfs: false,
            single_device: false,
            prefetch: Vec::new(),
            has_xattr: false,
        };
        let tree = crate::model::stack::empty_tree();
        let bytes = crate::rafs::encode(6, &tree, &[], &[], &opts).unwrap();
        let mut img = crate::rafs::decode(&bytes).unwrap();
        img.blobs = blobs;
        img
    }

    const TOC: BlobFeatures = BlobFeatures(0x7000_0021);
    const INLINE: BlobFeatures = BlobFeatures(0x7000_0023);

    #[test]
    fn file_prefix_is_cut_at_the_first_dot() {
        let p = |s: &str| file_prefix(Path::new(s));
        assert_eq!(p("/a/abc.image.boot").as_deref(), Some("abc"));
        assert_eq!(p("bootstrap").as_deref(), Some("bootstrap"));
        assert_eq!(p(".x.boot").as_deref(), Some(".x"));
        assert_eq!(p("/"), None);
    }

    #[test]
    fn a_merged_table_keeping_inlined_fs_meta_is_refused() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let img = image(vec![blob(&a, INLINE), blob(&b, INLINE)]);
        assert_eq!(violations(&img).len(), 1);
        // what nydusd does with it when the bootstrap is saved as image.boot
        let found = lookups(&img, Handed::Bootstrap(Path::new("/s/image.boot")));
        assert_eq!(found[0].data, "image");
        assert_eq!(found[1].data, "image");
        let img = image(vec![blob(&a, TOC), blob(&b, TOC)]);
        assert!(violations(&img).is_empty());
        let found = lookups(&img, Handed::Bootstrap(Path::new("/s/image.boot")));
        assert_eq!((found[0].data.as_str(), found[1].data.as_str()), (&*a, &*b));
    }

    #[test]
    fn a_layer_bootstrap_is_named_after_its_file() {
        let img = image(vec![blob(&"x".repeat(64), INLINE)]);
        assert!(violations(&img).is_empty());
        let id = "c".repeat(64);
        let path = format!("/w/{id}.boot");
        let found = lookups(&img, Handed::Bootstrap(Path::new(&path)));
        assert_eq!(found[0].data, id);
        let found = lookups(&img, Handed::InlineBlob(Path::new(&format!("/w/{id}"))));
        assert_eq!(found[0].data, id);
    }

    #[test]
    fn separate_meta_needs_a_digest_or_the_file_name() {
        let sep = BlobFeatures(TOC.bits() | BlobFeatures::SEPARATE.bits());
        let img = image(vec![blob(&"d".repeat(64), sep)]);
        assert_eq!(violations(&img).len(), 1);
        let mut b = blob(&"d".repeat(64), sep);
        b.refs.meta_digest = [0xee; 32];
        let img = image(vec![b]);
        assert!(violations(&img).is_empty());
        let found = lookups(&img, Handed::Bootstrap(Path::new("/w/boot")));
        assert_eq!(found[0].data, "d".repeat(64));
        assert_eq!(found[0].meta.as_deref(), Some(&*"ee".repeat(32)));
        // inline: the meta blob is the one the bootstrap was cut from
        let inline = BlobFeatures(sep.bits() | BlobFeatures::INLINED_FS_META.bits());
        let img = image(vec![blob(&"d".repeat(64), inline)]);
        assert!(violations(&img).is_empty());
        let found = lookups(&img, Handed::InlineBlob(Path::new("/w/metablob")));
        assert_eq!(found[0].data, "d".repeat(64));
        assert_eq!(found[0].meta.as_deref(), Some("metablob"));
    }

    #[test]
    fn duplicate_ids_and_v1_records_of_v2_features_are_refused() {
        let a = "a".repeat(64);
        assert_eq!(
            violations(&image(vec![blob(&a, TOC), blob(&a, TOC)])).len(),
            1
        );
        let batch = BlobFeatures(TOC.bits() | BlobFeatures::BATCH.bits());
        assert_eq!(violations(&image(vec![blob(&a, batch)])).len(), 1);
        let v2 = BlobFeatures(batch.bits() | BlobFeatures::CHUNK_INFO_V2.bits());
        assert!(violations(&image(vec![blob(&a, v2)])).is_empty());
    }

    #[test]
    fn a_placeholder_id_without_the_rename_is_refused() {
        let img = image(vec![blob(&"x".repeat(64), TOC)]);
        assert_eq!(violations(&img).len(), 1);
    }
}
