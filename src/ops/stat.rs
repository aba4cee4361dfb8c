//! `stat`: file, chunk and dedup statistics of one or several bootstraps, as JSON.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::error::Result;
use crate::model::FileType;
use crate::model::Image;
use crate::rafs;

fn image_stats(
    path: &std::path::Path,
    image: &Image,
    seen: &mut HashSet<([u8; 32], u32)>,
) -> Value {
    let (mut dirs, mut files, mut symlinks, mut others, mut file_size, mut refs) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for i in &image.tree.inodes {
        match i.file_type() {
            FileType::Directory => dirs += 1,
            FileType::Regular => {
                files += 1;
                file_size += i.size();
                refs += i.chunks().len() as u64;
            }
            FileType::Symlink => symlinks += 1,
            _ => others += 1,
        }
    }
    let (mut own, mut own_c, mut own_u, mut dedup, mut dedup_u) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for c in &image.chunks {
        if seen.insert((c.digest, c.uncompressed_size)) {
            own += 1;
            own_c += u64::from(c.compressed_size);
            own_u += u64::from(c.uncompressed_size);
        } else {
            dedup += 1;
            dedup_u += u64::from(c.uncompressed_size);
        }
    }
    json!({
        "bootstrap": path.display().to_string(),
        "fs_version": image.version,
        "dirs": dirs,
        "files": files,
        "symlinks": symlinks,
        "other_files": others,
        "file_size": file_size,
        "chunk_refs": refs,
        "chunks": image.chunks.len(),
        "comp_size": image.chunks.iter().map(|c| u64::from(c.compressed_size)).sum::<u64>(),
        "uncomp_size": image.chunks.iter().map(|c| u64::from(c.uncompressed_size)).sum::<u64>(),
        "own_chunks": own,
        "own_comp_size": own_c,
        "own_uncomp_size": own_u,
        "dedup_chunks": dedup,
        "dedup_uncomp_size": dedup_u,
    })
}

/// Statistics of `bootstraps`, in order; a chunk counts as "own" in the first image that holds
/// it and as "dedup" in later ones.
pub fn stat(bootstraps: &[PathBuf]) -> Result<Value> {
    let mut seen = HashSet::new();
    let mut images = Vec::new();
    for p in bootstraps {
        let image = rafs::load(p)?.image;
        images.push(image_stats(p, &image, &mut seen));
    }
    let sum = |k: &str| {
        images
            .iter()
            .map(|v| v[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    Ok(json!({
        "dedup_enabled": bootstraps.len() > 1,
        "images": images,
        "total": {
            "files": sum("files"),
            "file_size": sum("file_size"),
            "chunk_refs": sum("chunk_refs"),
            "chunks": sum("chunks"),
            "unique_chunks": sum("own_chunks"),
            "unique_comp_size": sum("own_comp_size"),
            "unique_uncomp_size": sum("own_uncomp_size"),
            "dedup_chunks": sum("dedup_chunks"),
            "dedup_uncomp_size": sum("dedup_uncomp_size"),
        }
    }))
}
