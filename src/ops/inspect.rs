//! `inspect -R REQUEST`: answers one query about a bootstrap as JSON.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::blob::reader::{BlobSource, ChunkReader};
use crate::error::{Error, Result};
use crate::format::blob::BlobFeatures;
use crate::model::{ChunkInfo, Image};
use crate::model::{EntryId, FileType, InodeId};
use crate::ops::opened::OpenedImage;

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Regular => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::CharDevice => "chardev",
        FileType::BlockDevice => "blockdev",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

/// Finds the entry at an absolute path (`/` is the root).
pub fn lookup(image: &Image, path: &str) -> Result<EntryId> {
    let mut e = EntryId::ROOT;
    for comp in Path::new(path).components() {
        use std::path::Component;
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => e = image.tree[e].parent,
            Component::Normal(name) => {
                let children = &image.tree[e].children;
                let tree = &image.tree;
                let found = children
                    .binary_search_by(|c| tree[*c].name.as_slice().cmp(name.as_bytes()))
                    .map_err(|_| {
                        Error::InvalidOption(format!("{path}: no such file or directory"))
                    })?;
                e = children[found];
            }
            Component::Prefix(_) => {}
        }
    }
    Ok(e)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `c` is a batch member: a BATCH blob's bootstrap records members without a stored
/// size of their own (formats/blob.md §3.4); every other chunk has one.
fn in_batch(image: &Image, c: &ChunkInfo) -> bool {
    c.compressed_size == 0
        && image
            .blobs
            .get(c.blob_index as usize)
            .is_some_and(|b| b.features.contains(BlobFeatures::BATCH))
}

fn stat_json(image: &Image, e: EntryId) -> Value {
    let ino = image.tree[e].inode;
    let i = &image.tree[ino];
    let xattrs: BTreeMap<String, String> =
        i.xattrs.iter().map(|(k, v)| (lossy(k), lossy(v))).collect();
    let chunks: Vec<Value> = i
        .chunks()
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let c = &image.chunks[id.index()];
            json!({
                "file_offset": n as u64 * u64::from(image.chunk_size),
                "blob_index": c.blob_index,
                "blob_id": image.blobs.get(c.blob_index as usize).map(|b| b.id.clone()),
                "chunk_index": c.index,
                "digest": hex::encode(c.digest),
                "compressed_offset": c.compressed_offset,
                "compressed_size": c.compressed_size,
                "uncompressed_offset": c.uncompressed_offset,
                "uncompressed_size": c.uncompressed_size,
                "compressed": c.compressed,
                "encrypted": c.encrypted,
                "batched": in_batch(image, c),
            })
        })
        .collect();
    let nlink = image.tree.entries.iter().filter(|x| x.inode == ino).count();
    json!({
        "path": image.tree.path(e).to_string_lossy(),
        "inode": image.inode_numbers.get(ino.index()),
        "type": type_name(i.file_type()),
        "mode": format!("{:o}", i.mode()),
        "uid": i.uid,
        "gid": i.gid,
        "size": i.size(),
        "mtime": i.mtime,
        "mtime_nsec": i.mtime_nsec,
        "nlink": nlink,
        "rdev": i.rdev(),
        "target": (i.file_type() == FileType::Symlink).then(|| lossy(i.target())),
        "xattrs": xattrs,
        "chunks": chunks,
    })
}

/// Runs one request: `stats`, `blobs`, `prefetch`, `icheck INODE`, `chunk OFFSET`, `ls PATH`,
/// `stat PATH`.
pub fn request(image: &Image, req: &str) -> Result<Value> {
    let mut words = req.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next();
    let need = |what: &str| Error::InvalidOption(format!("request {cmd:?} needs {what}"));
    match cmd {
        "stats" => {
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for i in &image.tree.inodes {
                *counts.entry(type_name(i.file_type())).or_default() += 1;
            }
            Ok(json!({
                "inodes_count": image.tree.inodes.len(),
                "entries": image.tree.entries.len(),
                "types": counts,
                "fs_version": image.version,
                "chunk_size": image.chunk_size,
                "compressor": image.compressor.name(),
                "digester": image.digester.name(),
                "blobs": image.blobs.len(),
                "chunks": image.chunks.len(),
                "bootstrap_size": image.size,
            }))
        }
        "blobs" => Ok(Value::Array(
            image
                .blobs
                .iter()
                .map(|b| {
                    json!({
                        "blob_id": b.id,
                        "compressed_size": b.compressed_size,
                        "decompressed_size": b.uncompressed_size,
                        "readahead_offset": 0,
                        "readahead_size": 0,
                        "chunk_count": b.chunk_count,
                        "features": b.features.names(),
                        "compressor": b.compressor.name(),
                        "digester": b.digester.name(),
                    })
                })
                .collect(),
        )),
        "prefetch" => Ok(Value::Array(
            image
                .prefetch
                .iter()
                .map(|n| json!({"inode": n, "path": prefetch_paths(image, *n)}))
                .collect(),
        )),
        "icheck" => {
            let n: u64 = arg.and_then(|a| a.parse().ok()).ok_or_else(|| need("an inode number"))?;
            Ok(json!(paths_of(image, n)))
        }
        "chunk" => {
            let off = arg.and_then(parse_u64).ok_or_else(|| need("a compressed offset"))?;
            let found: Vec<Value> = image
                .chunks
                .iter()
                .filter(|c| c.compressed_offset <= off && off < c.compressed_offset + u64::from(c.compressed_size.max(1)))
                .map(|c| {
                    json!({"blob_index": c.blob_index, "chunk_index": c.index, "digest": hex::encode(c.digest),
                           "compressed_offset": c.compressed_offset, "compressed_size": c.compressed_size,
                           "uncompressed_offset": c.uncompressed_offset, "uncompressed_size": c.uncompressed_size,
                           "encrypted": c.encrypted, "batched": in_batch(image, c)})
                })
                .collect();
            Ok(Value::Array(found))
        }
        "ls" => {
            let e = lookup(image, arg.unwrap_or("/"))?;
            let entries: Vec<Value> = image.tree[e]
                .children
                .iter()
                .map(|c| {
                    let i = image.tree.inode_of(*c);
                    json!({
                        "name": lossy(&image.tree[*c].name),
                        "inode": image.inode_numbers.get(image.tree[*c].inode.index()),
                        "type": type_name(i.file_type()),
                        "mode": format!("{:o}", i.mode()),
                        "size": i.size(),
                    })
                })
                .collect();
            Ok(Value::Array(entries))
        }
        "stat" => {
            let e = lookup(image, arg.ok_or_else(|| need("a path"))?)?;
            Ok(stat_json(image, e))
        }
        _ => Err(Error::InvalidOption(format!(
            "unknown request {req:?}; try stats, blobs, prefetch, icheck INODE, chunk OFFSET, ls PATH, stat PATH"
        ))),
    }
}

/// Adds to each chunk of a `chunk OFFSET` answer that lives in a targz-ref blob its zran fields:
/// the inflate context it is read through and where it lies in it (formats/blob.md §11). The
/// blob meta is found in `blob_dir` as `check` finds it.
pub fn add_zran_fields(bootstrap: &Path, blob_dir: &Path, answer: &mut Value) -> Result<()> {
    let source = BlobSource {
        dir: Some(blob_dir.to_path_buf()),
        ..BlobSource::default()
    };
    let opened = OpenedImage::open(bootstrap, &source)?;
    let mut reader = ChunkReader::new(&opened.image, opened.blobs.clone());
    let Value::Array(chunks) = answer else {
        return Ok(());
    };
    for c in chunks.iter_mut() {
        let index = |k: &str| c.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let (Some(b), Some(i)) = (index("blob_index"), index("chunk_index")) else {
            continue;
        };
        let zran = opened
            .image
            .blobs
            .get(b as usize)
            .is_some_and(|bl| bl.features.contains(BlobFeatures::ZRAN));
        if !zran {
            continue;
        }
        let meta = &reader.zran_blob(b)?.meta;
        let Some(ch) = meta.chunks.get(i as usize) else {
            continue;
        };
        let ctx = meta.contexts[ch.context as usize];
        c["zran"] = json!({
            "context_index": ch.context,
            "offset_in_context": ch.offset,
            "in_offset": ctx.in_offset.get(),
            "in_len": ctx.in_len.get(),
            "out_offset": ctx.out_offset.get(),
            "out_len": ctx.out_len.get(),
            "dict_size": ctx.dict_size.get(),
            "ctx_byte": ctx.ctx_byte,
            "ctx_bits": ctx.ctx_bits,
        });
    }
    Ok(())
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Paths of a prefetch table entry as nydus-image prints them: directories end in `/`; in v6 a
/// file lists all its hardlinks, in v5 its first path, with a `/` appended as to a directory.
fn prefetch_paths(image: &Image, number: u64) -> Vec<String> {
    let Some(ino) = image.inode_numbers.iter().position(|n| *n == number) else {
        return Vec::new();
    };
    let ino = InodeId::new(ino);
    let tree = &image.tree;
    let named = |e: EntryId| {
        let path = tree.path(e).to_string_lossy().into_owned();
        let dir = image.version == 5 || tree[ino].file_type() == FileType::Directory;
        if e == EntryId::ROOT || !dir {
            path
        } else {
            path + "/"
        }
    };
    let mut entries = tree
        .numbering_order()
        .into_iter()
        .filter(|e| tree[*e].inode == ino);
    if image.version == 5 {
        return entries.next().map(named).into_iter().collect();
    }
    let mut paths: Vec<String> = entries.map(named).collect();
    paths.sort();
    paths
}

fn paths_of(image: &Image, number: u64) -> Vec<String> {
    image
        .inode_numbers
        .iter()
        .position(|n| *n == number)
        .map(|ino| {
            let ino = InodeId::new(ino);
            let mut paths: Vec<String> = (image.tree.entry_ids())
                .filter(|e| image.tree[*e].inode == ino)
                .map(|e| image.tree.path(e).to_string_lossy().into_owned())
                .collect();
            paths.sort();
            paths
        })
        .unwrap_or_default()
}
