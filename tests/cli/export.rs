//! export --block: one file the kernel mounts with no other device (nydus-image's layout and
//! our single-device layout, which fsck.erofs also reads), with a dm-verity tree that
//! veritysetup accepts and that catches a flipped byte.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `layers` (directory layers, whiteouts kept) and merges them; returns (bootstrap, blob dir).
fn build(work: &Path, layers: &[PathBuf]) -> (PathBuf, PathBuf) {
    let out = work.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut boots = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let b = out.join(format!("{i}.boot"));
        forge(&[
            "create",
            "--whiteout-spec",
            "none",
            "-D",
            s(&out),
            "-B",
            s(&b),
            s(l),
        ]);
        boots.push(b);
    }
    if boots.len() == 1 {
        return (boots.remove(0), out);
    }
    let merged = out.join("merged");
    let mut args = vec!["merge", "-B", s(&merged)];
    args.extend(boots.iter().map(|b| s(b)));
    forge(&args);
    (merged, out)
}

/// What fsck.erofs 1.5 --extract cannot restore: hardlinks (it writes copies) and xattrs.
fn fsck_view(
    mut m: std::collections::BTreeMap<Vec<u8>, Desc>,
) -> std::collections::BTreeMap<Vec<u8>, Desc> {
    for d in m.values_mut() {
        d.hardlink = None;
        d.xattrs.clear();
    }
    m
}

/// `exact`: compare everything; otherwise leave out the root and mtimes (the expected tree of
/// a merged image is written separately from its layers).
fn check_exports(work: &Path, boot: &Path, blobs: &Path, expect: &Path, exact: bool) {
    let strip = |mut m: std::collections::BTreeMap<Vec<u8>, Desc>| {
        if !exact {
            m.remove(&b""[..]);
            for d in m.values_mut() {
                d.mtime = (0, 0);
            }
        }
        m
    };
    // nydus-image's layout: the kernel reads the blobs at their mapped addresses
    let disk = work.join("image.disk");
    let out = forge(&[
        "export",
        "--block",
        "-B",
        s(boot),
        "-D",
        s(blobs),
        "-O",
        s(&disk),
        "--verity",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    {
        let m = mount(&disk, &[]);
        let d = diff(&strip(manifest(expect)), &strip(manifest(m.dir.path())));
        assert!(d.is_empty(), "flat image:\n{}", d.join("\n"));
    }
    // dm-verity with the printed arguments; then one flipped data byte must fail
    if Command::new("veritysetup")
        .arg("--version")
        .output()
        .is_ok()
    {
        let line = text
            .lines()
            .find(|l| l.starts_with("veritysetup verify"))
            .expect("veritysetup line");
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let ok = Command::new("veritysetup").args(&args).output().unwrap();
        assert!(
            ok.status.success(),
            "veritysetup: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let bad = work.join("bad.disk");
        let mut bytes = std::fs::read(&disk).unwrap();
        bytes[4096 * 5 + 17] ^= 0x40;
        std::fs::write(&bad, bytes).unwrap();
        let line = line.replace(s(&disk), s(&bad));
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let fail = Command::new("veritysetup").args(&args).output().unwrap();
        assert!(
            !fail.status.success(),
            "a flipped byte must fail verification"
        );
    } else {
        missing(
            "export dm-verity part",
            "veritysetup (cryptsetup-bin) is not installed",
        );
    }
    // single-device layout: the kernel, and fsck.erofs (which has no flat-image mode)
    let single = work.join("single.disk");
    forge(&[
        "export",
        "--block",
        "--single-device",
        "-B",
        s(boot),
        "-D",
        s(blobs),
        "-O",
        s(&single),
    ]);
    {
        let m = mount(&single, &[]);
        let d = diff(&strip(manifest(expect)), &strip(manifest(m.dir.path())));
        assert!(d.is_empty(), "single-device image:\n{}", d.join("\n"));
    }
    if Command::new("fsck.erofs").arg("--help").output().is_ok() {
        let x = work.join("fsck-extract");
        let o = Command::new("fsck.erofs")
            .arg(format!("--extract={}", s(&x)))
            .arg(&single)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let d = diff(
            &fsck_view(strip(manifest(expect))),
            &fsck_view(strip(manifest(&x))),
        );
        assert!(d.is_empty(), "fsck.erofs --extract:\n{}", d.join("\n"));
    } else {
        missing("export fsck.erofs part", "fsck.erofs is not installed");
    }
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree, no_fsck_erofs, no_veritysetup),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap), fsck.erofs, veritysetup"
)]
fn single_layer_export_mounts_alone() {
    if let Some(why) = cannot_mount().or_else(cannot_build_full_tree) {
        missing("single_layer_export_mounts_alone", &why);
    }
    let w = scratch();
    let src = w.path().join("src");
    full_tree(&src, false);
    let (boot, blobs) = build(w.path(), std::slice::from_ref(&src));
    check_exports(w.path(), &boot, &blobs, &src, true);
}

#[test]
#[cfg_attr(
    any(no_mount, no_fsck_erofs, no_veritysetup),
    ignore = "needs a kernel EROFS mount, fsck.erofs, veritysetup"
)]
fn merged_three_layer_export_mounts_alone() {
    if let Some(why) = cannot_mount() {
        missing("merged_three_layer_export_mounts_alone", &why);
    }
    let w = scratch();
    let l: Vec<PathBuf> = (1..=3).map(|i| w.path().join(format!("l{i}"))).collect();
    let e = w.path().join("expect");
    let put = |p: PathBuf, d: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    };
    put(l[0].join("etc/conf"), "v1");
    put(l[0].join("usr/lib/big"), &"x".repeat(3 << 20));
    put(l[0].join("gone/file"), "deleted later");
    put(l[1].join("etc/conf"), "v2");
    put(l[1].join(".wh.gone"), "");
    put(l[1].join("usr/lib/more"), &"y".repeat(100_000));
    put(l[2].join("usr/lib/.wh..wh..opq"), "");
    put(l[2].join("usr/lib/only"), "only this remains");
    put(e.join("etc/conf"), "v2");
    put(e.join("usr/lib/only"), "only this remains");
    let (boot, blobs) = build(w.path(), &l);
    check_exports(w.path(), &boot, &blobs, &e, false);
}

#[test]
#[cfg_attr(
    any(no_mount, no_full_tree, no_fsck_erofs),
    ignore = "needs a kernel EROFS mount, the full fixture tree (root, setfattr, setfacl, setcap), fsck.erofs"
)]
fn compressed_export_mounts_and_fsck_reads_it() {
    if let Some(why) = cannot_mount().or_else(cannot_build_full_tree) {
        missing("compressed_export_mounts_and_fsck_reads_it", &why);
    }
    let w = scratch();
    let src = w.path().join("src");
    full_tree(&src, false);
    // sizes around extent and block boundaries, compressible and not
    let text: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
    for (name, len) in [
        ("exact-64k", 65_536usize),
        ("one-block", 4096),
        ("block-plus-1", 4097),
        ("odd", 200_001),
    ] {
        std::fs::write(src.join(name), &text.as_bytes()[..len]).unwrap();
    }
    let (boot, blobs) = build(w.path(), std::slice::from_ref(&src));
    for algo in ["lz4", "lz4hc", "zstd", "lzma"] {
        let img = w.path().join(format!("{algo}.erofs"));
        forge(&[
            "export",
            "--block",
            "--compressor",
            algo,
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
            "-O",
            s(&img),
        ]);
        {
            let m = mount(&img, &[]);
            let d = diff(&manifest(&src), &manifest(m.dir.path()));
            assert!(d.is_empty(), "{algo}:\n{}", d.join("\n"));
        }
        let packed = std::fs::metadata(&img).unwrap().len();
        let raw: u64 = manifest(&src).values().map(|d| d.size).sum();
        assert!(
            packed < raw,
            "{algo}: {packed} bytes for {raw} bytes of files"
        );
        // Debian's fsck.erofs 1.5 knows lz4 only (no zstd; built without lzma)
        if algo.starts_with("lz4") && Command::new("fsck.erofs").arg("--help").output().is_ok() {
            let x = w.path().join(format!("fsck-{algo}"));
            let o = Command::new("fsck.erofs")
                .arg(format!("--extract={}", s(&x)))
                .arg(&img)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "fsck.erofs {algo}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let files = |m: std::collections::BTreeMap<Vec<u8>, Desc>| -> Vec<(Vec<u8>, String)> {
                m.into_iter()
                    .filter(|(_, d)| d.kind == 'f')
                    .map(|(k, d)| (k, d.sha256))
                    .collect()
            };
            assert_eq!(
                files(manifest(&src)),
                files(manifest(&x)),
                "{algo}: fsck.erofs extracts the same data"
            );
        }
    }
}
