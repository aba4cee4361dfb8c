//! create → check (every chunk verified) → unpack gives back the source tree, for v5 and v6,
//! each compressor and each digester; the tar output is read back by an independent tar reader.

use crate::common::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// v5 keeps only regular files as hardlinks (nydusd's rule): other hardlinked types come back
/// as separate entries.
fn without_non_regular_hardlinks(mut m: BTreeMap<Vec<u8>, Desc>) -> BTreeMap<Vec<u8>, Desc> {
    for d in m.values_mut() {
        if d.kind != 'f' {
            d.hardlink = None;
        }
    }
    m
}

fn roundtrip(src: &Path, version: &str, compressor: &str, digester: &str) {
    let out = scratch();
    let boot = out.path().join("bootstrap");
    let o = out.path().to_str().unwrap();
    forge(&[
        "create",
        "--fs-version",
        version,
        "--compressor",
        compressor,
        "--digester",
        digester,
        "-D",
        o,
        "-B",
        boot.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let checked = forge(&["check", boot.to_str().unwrap(), "-D", o]);
    assert!(String::from_utf8_lossy(&checked.stdout).contains("metadata is valid"));
    let dest = out.path().join("unpacked");
    forge(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        o,
        "--output-dir",
        dest.to_str().unwrap(),
    ]);
    let (mut want, mut got) = (manifest(src), manifest(&dest));
    if version == "5" {
        want = without_non_regular_hardlinks(want);
        got = without_non_regular_hardlinks(got);
    }
    if !is_root() {
        // a plain user cannot restore owners, devices or trusted xattrs
        for m in [&mut want, &mut got] {
            m.retain(|_, d| d.kind != 'c' && d.kind != 'b');
            for d in m.values_mut() {
                d.uid = 0;
                d.gid = 0;
                d.xattrs.retain(|(k, _)| k.starts_with(b"user."));
            }
        }
    }
    let differences = diff(&want, &got);
    assert!(
        differences.is_empty(),
        "v{version} {compressor} {digester}:\n{}",
        differences.join("\n")
    );

    // the tar: every entry and its data, read by the tar crate
    let tar = out.path().join("out.tar");
    forge(&[
        "unpack",
        boot.to_str().unwrap(),
        "-D",
        o,
        "--output",
        tar.to_str().unwrap(),
    ]);
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut seen = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let raw = entry.path_bytes().into_owned();
        let key = raw.strip_prefix(b"./").unwrap_or(&raw);
        let key = key.strip_suffix(b"/").unwrap_or(key).to_vec();
        let path = String::from_utf8_lossy(&key).into_owned();
        let d = want
            .get(&key)
            .unwrap_or_else(|| panic!("{path} is not in the source"));
        let h = entry.header().clone();
        assert_eq!(h.mode().unwrap() & 0o7777, d.mode, "{path} mode");
        assert_eq!(h.mtime().unwrap() as i64, d.mtime.0, "{path} mtime");
        if h.entry_type().is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            use sha2::Digest;
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&data)),
                d.sha256,
                "{path} content"
            );
        }
        if d.kind == 'l' && !h.entry_type().is_hard_link() {
            assert_eq!(
                entry.link_name_bytes().unwrap().as_ref(),
                d.target.as_slice(),
                "{path} target"
            );
        }
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .into_iter()
            .flatten()
            .map(|e| e.unwrap())
            .filter(|e| e.key_bytes().starts_with(b"SCHILY.xattr."))
            .map(|e| (e.key_bytes()[13..].to_vec(), e.value_bytes().to_vec()))
            .collect();
        if !h.entry_type().is_hard_link() {
            assert_eq!(xattrs, d.xattrs, "{path} xattrs");
        }
        seen += 1;
    }
    let sockets = want.values().filter(|d| d.kind == 's').count();
    assert_eq!(
        seen + sockets,
        want.len(),
        "every entry but sockets is in the tar"
    );
}

#[test]
fn sample_round_trips_in_every_format() {
    let src = repo().join("fixtures/sample");
    for v in ["5", "6"] {
        for c in ["none", "lz4_block", "zstd"] {
            for d in ["blake3", "sha256"] {
                roundtrip(&src, v, c, d);
            }
        }
    }
}

#[test]
#[cfg_attr(
    no_full_tree,
    ignore = "needs the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn full_tree_round_trips_in_every_format() {
    if let Some(why) = cannot_build_full_tree() {
        missing("full_tree_round_trips_in_every_format", &why);
    }
    let src = scratch();
    full_tree(src.path(), false);
    for v in ["5", "6"] {
        for c in ["none", "lz4_block", "zstd"] {
            for d in ["blake3", "sha256"] {
                roundtrip(src.path(), v, c, d);
            }
        }
    }
}
