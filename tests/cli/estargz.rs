//! An eStargz layer writer for the tests (`targz_ref`, `cargo xtask readers`).

use crate::common::sha256_hex;

/// A small eStargz writer following containerd/stargz-snapshotter `docs/estargz.md`: each tar
/// entry (header and payload) in its own gzip member, a regular file's payload split into
/// members of `chunk` bytes, the `.prefetch.landmark` after the first file, the TOC
/// (`stargz.index.json`, with the tar end blocks) in the last member, then the 51-byte footer
/// whose extra field holds the TOC's offset.
pub fn estargz(files: &[(&str, Vec<u8>)], chunk: usize) -> Vec<u8> {
    use flate2::write::GzEncoder;
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let header = |name: &str, size: usize| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        h.as_bytes().to_vec()
    };
    let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(512) * 512, 0);
    let mut out = Vec::new();
    let mut toc = Vec::new();
    let mut entries: Vec<(&str, Vec<u8>)> = files.to_vec();
    entries.insert(1.min(entries.len()), (".prefetch.landmark", vec![0xf]));
    for (name, data) in &entries {
        toc.push(
            serde_json::json!({"name": name, "type": "reg", "size": data.len(),
            "offset": out.len(), "digest": format!("sha256:{}", sha256_hex(data))}),
        );
        out.extend(gz(&header(name, data.len())));
        for (i, part) in data.chunks(chunk).enumerate() {
            let mut p = part.to_vec();
            if (i + 1) * chunk >= data.len() {
                pad(&mut p);
            }
            out.extend(gz(&p));
        }
    }
    let toc_offset = out.len();
    let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": toc})).unwrap();
    let mut last = header("stargz.index.json", json.len());
    last.extend(&json);
    pad(&mut last);
    last.extend([0u8; 1024]);
    out.extend(gz(&last));
    // footer: FEXTRA with subfield "SG" = "%016xSTARGZ", an empty deflate block, zero trailer
    let mut footer = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    footer.extend(format!("{toc_offset:016x}STARGZ").as_bytes());
    footer.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(footer.len(), 51);
    out.extend(footer);
    out
}
