//! A readable text dump of a decoded image: what the bootstrap says, entry by entry, in a
//! stable order. Golden copies of the upstream fixtures' dumps are checked by the tests
//! (`tests/cli/dump.rs`, re-blessed with `BLESS=1`), so that a decoder change shows up as a
//! reviewable text diff rather than as failing raw-offset assertions.

use std::fmt::Write as _;

use crate::model::{FileType, Image};

/// The dump of `image`.
pub fn dump(image: &Image) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "RAFS v{} block size {} chunk size {:#x} compressor {} digester {} flags {:#x}",
        image.version,
        image.block_size,
        image.chunk_size,
        image.compressor.name(),
        image.digester.name(),
        image.flags.0
    );
    let _ = writeln!(out, "blobs {}", image.blobs.len());
    for (i, b) in image.blobs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  blob {i} {} chunks {} compressed {:#x} uncompressed {:#x} mapped {} meta {:#x}+{:#x}/{:#x} features {}",
            b.id,
            b.chunk_count,
            b.compressed_size,
            b.uncompressed_size,
            b.mapped_blkaddr,
            b.ci_offset,
            b.ci_compressed_size,
            b.ci_uncompressed_size,
            b.features.names().join(",")
        );
    }
    let _ = writeln!(out, "prefetch {:?}", image.prefetch);
    let tree = &image.tree;
    let links = tree.link_counts();
    for e in tree.numbering_order() {
        let ino = tree[e].inode;
        let inode = &tree[ino];
        let _ = write!(
            out,
            "{} ino {} {:?} {:o} {}:{} size {} paths {} mtime {}.{:09}",
            escape(tree.path(e).as_os_str().as_encoded_bytes()),
            image.inode_numbers.get(ino.index()).copied().unwrap_or(0),
            inode.file_type(),
            inode.mode(),
            inode.uid,
            inode.gid,
            inode.size(),
            links[ino.index()],
            inode.mtime,
            inode.mtime_nsec
        );
        match inode.file_type() {
            FileType::Symlink => {
                let _ = write!(out, " -> {}", escape(inode.target()));
            }
            FileType::CharDevice | FileType::BlockDevice => {
                let _ = write!(out, " rdev {:#x}", inode.rdev());
            }
            _ => {}
        }
        out.push('\n');
        for (k, v) in &inode.xattrs {
            let _ = writeln!(out, "    xattr {}={}", escape(k), escape(v));
        }
        for id in inode.chunks() {
            let Some(c) = image.chunks.get(id.index()) else {
                let _ = writeln!(out, "    chunk {id}: missing");
                continue;
            };
            let _ = writeln!(
                out,
                "    chunk blob {} index {} uncompressed {:#x}+{:#x} stored {:#x}+{:#x}{} digest {}",
                c.blob_index,
                c.index,
                c.uncompressed_offset,
                c.uncompressed_size,
                c.compressed_offset,
                c.compressed_size,
                if c.compressed { " compressed" } else { "" },
                hex::encode(&c.digest[..8])
            );
        }
    }
    out
}

/// Bytes as text: printable ASCII as is, everything else (and `\`) as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}
