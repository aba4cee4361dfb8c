//! Layers: merge applies OCI and overlayfs whiteouts, opaque directories and replacements;
//! --parent-bootstrap and --chunk-dict store only new chunks. Checked by unpacking (v5 and v6)
//! and, as root, by mounting the merged v6 image with every blob's cache as a device.

use crate::common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn write(p: &Path, data: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn no_mtimes(mut m: BTreeMap<Vec<u8>, Desc>) -> BTreeMap<Vec<u8>, Desc> {
    for d in m.values_mut() {
        d.mtime = (0, 0);
    }
    m.remove(&b""[..]); // the root's attributes come from the top layer's root
    m
}

/// Layers with every OCI rule; returns (layer dirs, expected merged tree).
fn oci_layers(base: &Path) -> (Vec<PathBuf>, PathBuf) {
    let (l1, l2, l3, exp) = (
        base.join("l1"),
        base.join("l2"),
        base.join("l3"),
        base.join("expect"),
    );
    write(&l1.join("a/x"), "x");
    write(&l1.join("a/y"), "y");
    write(&l1.join("b/deep/big"), &"0123456789".repeat(50_000));
    write(&l1.join("f"), "a file that becomes a directory");
    write(&l1.join("d/inner"), "a directory that becomes a file");
    write(&l1.join("c/keep"), "kept until layer 3");
    write(&l1.join("c/stay"), "stays");
    // layer 2: opaque a, delete b, f becomes a dir, d becomes a file, a hardlink
    write(&l2.join("a/.wh..wh..opq"), "");
    write(&l2.join("a/z"), "z");
    fs::hard_link(l2.join("a/z"), l2.join("a/z-link")).unwrap();
    write(&l2.join(".wh.b"), "");
    write(&l2.join("f/inside"), "now a dir");
    write(&l2.join("d"), "now a file");
    // layer 3: delete one file of c, add a symlink, change a mode
    write(&l3.join("c/.wh.keep"), "");
    write(&l3.join("c/new"), "new");
    std::os::unix::fs::symlink("/somewhere", l3.join("sym")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(l3.join("c"), fs::Permissions::from_mode(0o700)).unwrap();
    // what a runtime unpacking l1, l2, l3 ends with
    write(&exp.join("a/z"), "z");
    fs::hard_link(exp.join("a/z"), exp.join("a/z-link")).unwrap();
    write(&exp.join("f/inside"), "now a dir");
    write(&exp.join("d"), "now a file");
    write(&exp.join("c/stay"), "stays");
    write(&exp.join("c/new"), "new");
    std::os::unix::fs::symlink("/somewhere", exp.join("sym")).unwrap();
    fs::set_permissions(exp.join("c"), fs::Permissions::from_mode(0o700)).unwrap();
    (vec![l1, l2, l3], exp)
}

fn blob_ids(boot: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&forge(&["inspect", s(boot), "-R", "blobs"]).stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["blob_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn merge_applies_oci_rules_v5_and_v6() {
    let w = scratch();
    let (layers, expect) = oci_layers(w.path());
    for v in ["5", "6"] {
        let out = w.path().join(format!("out{v}"));
        let cache = out.join("cache");
        fs::create_dir_all(&cache).unwrap();
        let mut boots = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let b = out.join(format!("layer{i}.boot"));
            // directory layers keep their whiteouts with --whiteout-spec none, like tar layers
            forge(&[
                "create",
                "--fs-version",
                v,
                "--whiteout-spec",
                "none",
                "-D",
                s(&out),
                "--blob-cache-dir",
                s(&cache),
                "-B",
                s(&b),
                s(l),
            ]);
            boots.push(b);
        }
        let merged = out.join("merged");
        let mut args = vec!["merge", "-B", s(&merged)];
        args.extend(boots.iter().map(|b| s(b)));
        forge(&args);
        forge(&["check", s(&merged), "-D", s(&out)]);
        let ids = blob_ids(&merged);
        assert_eq!(
            ids.len(),
            3,
            "every layer still has data in the image: {ids:?}"
        );
        let dest = out.join("unpacked");
        forge(&[
            "unpack",
            s(&merged),
            "-D",
            s(&out),
            "--output-dir",
            s(&dest),
        ]);
        let got = no_mtimes(manifest(&dest));
        assert!(
            got.keys()
                .all(|k| !k.split(|c| *c == b'/').any(|p| p.starts_with(b".wh."))),
            "no whiteouts left"
        );
        let differences = diff(&no_mtimes(manifest(&expect)), &got);
        assert!(differences.is_empty(), "v{v}:\n{}", differences.join("\n"));
        if v == "6" {
            if let Some(why) = cannot_mount() {
                missing("merge_applies_oci_rules_v5_and_v6 (kernel part)", &why);
            }
            let devices: Vec<PathBuf> = ids
                .iter()
                .map(|id| cache.join(format!("{id}.blob.data")))
                .collect();
            let m = mount(&merged, &devices);
            let differences = diff(
                &no_mtimes(manifest(&expect)),
                &no_mtimes(manifest(m.dir.path())),
            );
            assert!(
                differences.is_empty(),
                "kernel:\n{}",
                differences.join("\n")
            );
        }
    }
}

#[test]
#[cfg_attr(
    no_full_tree,
    ignore = "needs the full fixture tree (root, setfattr, setfacl, setcap)"
)]
fn merge_applies_overlayfs_rules() {
    if let Some(why) = cannot_build_full_tree() {
        missing("merge_applies_overlayfs_rules", &why);
    }
    let w = scratch();
    let (l1, l2, exp) = (
        w.path().join("l1"),
        w.path().join("l2"),
        w.path().join("exp"),
    );
    write(&l1.join("gone"), "deleted by a 0:0 device");
    write(&l1.join("o/old"), "hidden by an opaque dir");
    write(&l1.join("kept"), "kept");
    fs::create_dir_all(l2.join("o")).unwrap();
    write(&l2.join("o/new"), "new");
    let ok = std::process::Command::new("mknod")
        .arg(l2.join("gone"))
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(ok.success());
    xattr::set(l2.join("o"), "trusted.overlay.opaque", b"y").unwrap();
    write(&exp.join("kept"), "kept");
    write(&exp.join("o/new"), "new");
    let out = w.path().join("out");
    fs::create_dir_all(&out).unwrap();
    for (i, l) in [&l1, &l2].iter().enumerate() {
        forge(&[
            "create",
            "--whiteout-spec",
            "none",
            "-D",
            s(&out),
            "-B",
            s(&out.join(format!("{i}.boot"))),
            s(l),
        ]);
    }
    let merged = out.join("merged");
    forge(&[
        "merge",
        "--whiteout-spec",
        "overlayfs",
        "-B",
        s(&merged),
        s(&out.join("0.boot")),
        s(&out.join("1.boot")),
    ]);
    let dest = out.join("t");
    forge(&[
        "unpack",
        s(&merged),
        "-D",
        s(&out),
        "--output-dir",
        s(&dest),
    ]);
    let differences = diff(&no_mtimes(manifest(&exp)), &no_mtimes(manifest(&dest)));
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

fn blob_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().unwrap().len() == 64)
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn parent_bootstrap_and_chunk_dict_store_only_new_chunks() {
    let w = scratch();
    let v1 = w.path().join("v1");
    for i in 0..20 {
        // 20 distinct 256 KiB files of 64 KiB chunks
        let body: String = (0..27_000)
            .map(|n| format!("{i:02}{n:08}"))
            .collect::<Vec<_>>()
            .concat();
        write(&v1.join(format!("lib/f{i:02}")), &body[..262_144]);
    }
    let (o1, o2, o3) = (
        w.path().join("o1"),
        w.path().join("o2"),
        w.path().join("o3"),
    );
    for d in [&o1, &o2, &o3] {
        fs::create_dir_all(d).unwrap();
    }
    let b1 = o1.join("boot");
    forge(&[
        "create",
        "--chunk-size",
        "0x10000",
        "-D",
        s(&o1),
        "-B",
        s(&b1),
        s(&v1),
    ]);
    // the upper layer: one file changed at its end, one new, one deleted
    let up = w.path().join("up");
    let mut changed = fs::read_to_string(v1.join("lib/f03")).unwrap();
    changed.push_str("tail");
    write(&up.join("lib/f03"), &changed);
    write(&up.join("lib/new"), "brand new");
    write(&up.join("lib/.wh.f07"), "");
    let b2 = o2.join("boot");
    forge(&[
        "create",
        "--chunk-size",
        "0x10000",
        "--parent-bootstrap",
        s(&b1),
        "-D",
        s(&o2),
        "-B",
        s(&b2),
        s(&up),
    ]);
    let (first, second) = (blob_size(&o1), blob_size(&o2));
    assert!(
        second * 20 < first,
        "parent build stores only new chunks: {second} vs {first}"
    );
    // the image is the whole stacked tree: v1 with the layer applied
    let expect = w.path().join("expect");
    fs::create_dir_all(expect.join("lib")).unwrap();
    for i in (0..20).filter(|i| *i != 7) {
        fs::copy(
            v1.join(format!("lib/f{i:02}")),
            expect.join(format!("lib/f{i:02}")),
        )
        .unwrap();
    }
    write(&expect.join("lib/f03"), &changed);
    write(&expect.join("lib/new"), "brand new");
    let all = w.path().join("all");
    fs::create_dir_all(&all).unwrap();
    for d in [&o1, &o2] {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            fs::copy(&p, all.join(p.file_name().unwrap())).unwrap();
        }
    }
    assert_eq!(blob_ids(&b2).len(), 2);
    forge(&["check", s(&b2), "-D", s(&all)]);
    let t = w.path().join("t2");
    forge(&["unpack", s(&b2), "-D", s(&all), "--output-dir", s(&t)]);
    let differences = diff(&no_mtimes(manifest(&expect)), &no_mtimes(manifest(&t)));
    assert!(
        differences.is_empty(),
        "parent:\n{}",
        differences.join("\n")
    );

    // chunk dictionary: a full second tree, deduplicated against the first image
    let v2 = w.path().join("v2");
    fs::create_dir_all(v2.join("lib")).unwrap();
    for e in fs::read_dir(expect.join("lib")).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, v2.join("lib").join(p.file_name().unwrap())).unwrap();
    }
    let b3 = o3.join("boot");
    forge(&[
        "create",
        "--chunk-size",
        "0x10000",
        "--chunk-dict",
        &format!("bootstrap={}", s(&b1)),
        "-D",
        s(&o3),
        "-B",
        s(&b3),
        s(&v2),
    ]);
    let third = blob_size(&o3);
    assert!(
        third * 20 < first,
        "dictionary build stores only new chunks: {third} vs {first}"
    );
    for e in fs::read_dir(&o3).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, all.join(p.file_name().unwrap())).unwrap();
    }
    forge(&["check", s(&b3), "-D", s(&all)]);
    let t = w.path().join("t3");
    forge(&["unpack", s(&b3), "-D", s(&all), "--output-dir", s(&t)]);
    let differences = diff(&no_mtimes(manifest(&v2)), &no_mtimes(manifest(&t)));
    assert!(differences.is_empty(), "dict:\n{}", differences.join("\n"));
}
