//! nydus-snapshotter's converter as a client of `nydus-image`, re-implemented from its sources
//! (`pkg/converter`): Pack of a layer through FIFOs, and the two ways it finds a file inside
//! a nydus layer (the blob ToC, then tar headers from the end). Used by the client tests and
//! by `cargo xtask readers`.

use crate::common::*;
use crate::umoci_image::{blob, manifest_of};

use std::fs;
use std::io::Read;
use std::path::Path;

pub fn octal(field: &[u8]) -> u64 {
    let t: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    u64::from_str_radix(t.trim(), 8).unwrap_or(0)
}

/// The converter's `seekFileByTarHeader`: walks tar headers back from the end of a nydus
/// layer, each header following its data.
pub fn by_tar_headers(layer: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut cur = layer.len().checked_sub(512)? as i64;
    while cur >= 0 {
        let h = &layer[cur as usize..cur as usize + 512];
        let end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let size = octal(&h[124..136]) as i64;
        assert!(cur >= size, "invalid nydus tar data, name {name}");
        if &h[..end] == name.as_bytes() {
            return Some(layer[(cur - size) as usize..cur as usize].to_vec());
        }
        cur = cur - size - 512;
    }
    None
}

/// The converter's `seekFileByTOC`: 128-byte entries in `rafs.blob.toc`, the data at the
/// entry's compressed offset, zstd (flag 2) or none (flag 1). `Ok(None)`: no ToC or no such
/// entry (it then walks tar headers); `Err`: an entry it cannot read (it gives up).
pub fn by_toc(layer: &[u8], name: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(toc) = by_tar_headers(layer, "rafs.blob.toc") else {
        return Ok(None);
    };
    assert_eq!(toc.len() % 128, 0, "invalid entries length {}", toc.len());
    for e in toc.chunks_exact(128) {
        let flags = u32::from_le_bytes(e[0..4].try_into().unwrap());
        let end = e[8..24].iter().position(|b| *b == 0).unwrap_or(16);
        if &e[8..8 + end] != name.as_bytes() {
            continue;
        }
        let off = u64::from_le_bytes(e[56..64].try_into().unwrap()) as usize;
        let size = u64::from_le_bytes(e[64..72].try_into().unwrap()) as usize;
        let data = &layer[off..off + size];
        return match flags & 0xf {
            1 => Ok(Some(data.to_vec())),
            2 => Ok(Some(zstd::decode_all(data).unwrap())),
            c => Err(format!("unsupported compressor {c:#x} of {name}")),
        };
    }
    Ok(None)
}

/// The converter's `seekFile`: the ToC first, then tar headers (older blobs).
pub fn client_entry(layer: &[u8], name: &str) -> Option<Vec<u8>> {
    match by_toc(layer, name) {
        Ok(Some(d)) => Some(d),
        Ok(None) => by_tar_headers(layer, name),
        Err(_) => None,
    }
}

/// The uncompressed tar of each layer of the image (the converter feeds these to the FIFO),
/// with the layer's digest hex.
pub fn layer_tars(img: &Path) -> Vec<(String, Vec<u8>)> {
    manifest_of(img)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap();
            let gz = fs::read(blob(img, d)).unwrap();
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut tar)
                .unwrap();
            (d.strip_prefix("sha256:").unwrap().to_string(), tar)
        })
        .collect()
}

/// The converter's Pack of one layer: `blob.targz` a FIFO fed the uncompressed tar,
/// `blob.rafs` a FIFO read to EOF, `/` without a newline on stdin. Returns the layer bytes.
pub fn converter_pack(work: &Path, tar: &[u8], fs_version: &str, extra: &[&str]) -> Vec<u8> {
    fs::create_dir_all(work).unwrap();
    let rafs = work.join("blob.rafs");
    let targz = work.join("blob.targz");
    mkfifo(&rafs);
    mkfifo(&targz);
    let mut args = vec![
        "create",
        "--log-level",
        "warn",
        "--prefetch-policy",
        "fs",
        "--blob",
        s(&rafs),
        "--whiteout-spec",
        "none",
        "--fs-version",
        fs_version,
        "--type",
        "tar-rafs",
        "--blob-inline-meta",
    ];
    if fs_version == "6" {
        args.extend(["--features", "blob-toc"]);
    }
    args.extend(extra);
    args.push(s(&targz));
    let (o, mut got) = run_fifos(&args, b"/", &[(&targz, tar.to_vec())], &[&rafs]);
    assert_ok(&o);
    let bytes = got.remove(0);
    assert!(!bytes.is_empty(), "the client read nothing from blob.rafs");
    bytes
}
