//! `compact` (issue 16) with nydusify's argv: a 4-layer image whose upper layers delete most
//! of the lower data shrinks, unpacks equal to the original and mounts equal in the kernel;
//! upstream's v6-compact / v5-compact inputs compact too, and upstream's broken output is
//! rejected.

use crate::common::*;
use crate::upstream_read::manifest_diff;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// `len` bytes that do not compress (xorshift), different for each `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn put(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Four layers: l1 and l2 bring most of the data, l3 and l4 delete most of it.
pub(crate) fn layers(base: &Path) -> Vec<PathBuf> {
    let l: Vec<PathBuf> = (1..=4).map(|i| base.join(format!("l{i}"))).collect();
    put(&l[0].join("opt/big-a"), &noise(1, 3 << 20));
    put(&l[0].join("opt/big-b"), &noise(2, 2 << 20));
    put(&l[0].join("opt/keep"), &noise(3, 300_000));
    put(&l[0].join("etc/conf"), b"v1\n");
    for i in 0..20 {
        put(&l[0].join(format!("data/s{i:02}")), &noise(10 + i, 5000));
    }
    put(&l[1].join("opt/big-c"), &noise(4, 2 << 20));
    put(&l[1].join("opt/mid"), &noise(5, 400_000));
    put(&l[1].join("etc/conf"), b"v2\n");
    put(&l[1].join("opt/.wh.big-a"), b"");
    put(&l[2].join("opt/.wh.big-b"), b"");
    put(&l[2].join("app/bin"), &noise(6, 100_000));
    for i in 0..18 {
        put(&l[2].join(format!("data/.wh.s{i:02}")), b"");
    }
    put(&l[3].join("opt/.wh.big-c"), b"");
    put(&l[3].join("app/extra"), &noise(7, 20_000));
    l
}

/// Builds each of `srcs` as a layer of RAFS version `v` into `work/blobs` and merges them into
/// `work/bootstrap`; returns the merged bootstrap and the blob directory.
pub(crate) fn merged_layers(work: &Path, srcs: &[PathBuf], v: &str) -> (PathBuf, PathBuf) {
    let blobs = work.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let mut boots = Vec::new();
    for (i, l) in srcs.iter().enumerate() {
        let b = work.join(format!("layer{i}.boot"));
        forge(&[
            "create",
            "--fs-version",
            v,
            "--whiteout-spec",
            "none",
            "-D",
            s(&blobs),
            "-B",
            s(&b),
            s(l),
        ]);
        boots.push(b);
    }
    let merged = work.join("bootstrap");
    let mut args = vec!["merge", "-B", s(&merged)];
    args.extend(boots.iter().map(|b| s(b)));
    forge(&args);
    (merged, blobs)
}

fn blob_sizes(boot: &Path) -> Vec<(String, u64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&forge(&["inspect", s(boot), "-R", "blobs"]).stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["blob_id"].as_str().unwrap().to_string(),
                b["compressed_size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn unpacked(boot: &Path, blobs: &Path, dest: &Path) -> BTreeMap<Vec<u8>, Desc> {
    forge(&["unpack", s(boot), "-D", s(blobs), "--output-dir", s(dest)]);
    let mut m = manifest(dest);
    m.remove(&b""[..]);
    m
}

/// nydusify's call (pkg/build `Compact`), localfs backend.
fn nydusify_compact(boot: &Path, blobs: &Path, out: &Path, json: &Path, extra: &[&str]) {
    let cfg = blobs.parent().unwrap().join("backend.json");
    fs::write(&cfg, format!("{{\"dir\":\"{}\"}}", s(blobs))).unwrap();
    let mut args = vec![
        "compact",
        "--bootstrap",
        s(boot),
        "--blob-dir",
        s(blobs),
        "--min-used-ratio",
        "50",
        "--compact-blob-size",
        "1048576",
        "--max-compact-size",
        "10485760",
        "--layers-to-compact",
        "2",
        "--backend-type",
        "localfs",
        "--backend-config-file",
        s(&cfg),
        "--log-level",
        "info",
        "--output-json",
        s(json),
        "--output-bootstrap",
        s(out),
    ];
    args.extend_from_slice(extra);
    let o = forge(&args);
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
#[cfg_attr(no_mount, ignore = "needs a kernel EROFS mount")]
fn compact_shrinks_a_four_layer_image_and_keeps_its_tree() {
    let w = scratch();
    let srcs = layers(w.path());
    for v in ["6", "5"] {
        let work = w.path().join(format!("v{v}"));
        let (merged, blobs) = merged_layers(&work, &srcs, v);
        let (out, json) = (work.join("bootstrap.compact"), work.join("compact.json"));
        nydusify_compact(&merged, &blobs, &out, &json, &[]);
        assert!(out.is_file(), "nydusify looks for the compacted bootstrap");
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        let (before, after) = (blob_sizes(&merged), blob_sizes(&out));
        let ids: Vec<&str> = after.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(doc["blobs"], serde_json::json!(ids));
        let total = |b: &[(String, u64)]| b.iter().map(|x| x.1).sum::<u64>();
        eprintln!(
            "compact v{v}: {} blobs, {} bytes -> {} blobs, {} bytes",
            before.len(),
            total(&before),
            after.len(),
            total(&after)
        );
        assert!(
            total(&after) < total(&before) / 2,
            "{before:?} -> {after:?}"
        );
        for (id, size) in &after {
            let len = fs::metadata(blobs.join(id)).unwrap().len();
            assert_eq!(len, *size, "blob {id} is in the blob dir with its size");
        }
        forge(&["check", s(&out), "-D", s(&blobs)]);
        let want = unpacked(&merged, &blobs, &work.join("orig"));
        let got = unpacked(&out, &blobs, &work.join("compacted"));
        let d = diff(&want, &got);
        assert!(d.is_empty(), "v{v} unpack:\n{}", d.join("\n"));
        if v == "6" {
            if let Some(why) = cannot_mount() {
                missing("compact (kernel part)", &why);
            }
            let disk = work.join("compacted.disk");
            export_block(&out, &blobs, &disk);
            let m = mount(&disk, &[]);
            let mut k = manifest(m.dir.path());
            k.remove(&b""[..]);
            let d = diff(&want, &k);
            assert!(d.is_empty(), "kernel:\n{}", d.join("\n"));
        }
    }
}

#[test]
fn compact_without_anything_to_do_writes_nothing_and_refuses_other_backends() {
    let w = scratch();
    let blobs = w.path().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let boot = w.path().join("image.boot");
    forge(&[
        "create",
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        s(&repo().join("fixtures/sample")),
    ]);
    forge(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--min-used-ratio",
        "50",
    ]);
    // upstream's default name, and nothing written when every blob is fully used
    assert!(!w.path().join("image.bootstrap.compact").exists());
    let err = forge_fails(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--backend-type",
        "oss",
        "--backend-config",
        "{}",
    ]);
    assert!(err.contains("\"oss\" is not supported"), "{err}");
    let err = forge_fails(&["compact", "-B", s(&boot), "-D", s(&w.path().join("none"))]);
    assert!(err.contains("find blob"), "{err}");
}

fn upstream(name: &str) -> PathBuf {
    repo().join("fixtures/upstream").join(name)
}

/// The first layer's bootstrap of an upstream compact fixture (`layers/<l1's blob id>`).
fn first_layer(d: &Path) -> PathBuf {
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("layer1.output.json")).unwrap()).unwrap();
    d.join("layers").join(doc["blobs"][0].as_str().unwrap())
}

#[test]
#[cfg_attr(no_root, ignore = "needs root")]
fn upstream_compact_inputs_compact_and_read_back() {
    for name in ["v6-compact", "v5-compact"] {
        let d = upstream(name);
        // upstream's input itself: checked, and unpacked equal to what nydusd serves
        let x = scratch();
        let (boot, blobs) = (d.join("bootstrap"), d.join("blobs"));
        forge(&["check", s(&boot), "-D", s(&blobs)]);
        let tree = x.path().join("tree");
        forge(&[
            "unpack",
            s(&boot),
            "-D",
            s(&blobs),
            "--output-dir",
            s(&tree),
        ]);
        manifest_diff(&d.join("expected.txt"), &tree);
        for dict in [None, Some(first_layer(&d))] {
            let w = scratch();
            let blobs = w.path().join("blobs");
            fs::create_dir_all(&blobs).unwrap();
            for e in fs::read_dir(d.join("blobs")).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
            }
            let (out, json) = (w.path().join("bootstrap.compact"), w.path().join("c.json"));
            let arg = dict.as_ref().map(|p| format!("bootstrap={}", s(p)));
            let extra: Vec<&str> = match &arg {
                Some(a) => vec!["--chunk-dict", a],
                None => vec![],
            };
            nydusify_compact(&d.join("bootstrap"), &blobs, &out, &json, &extra);
            forge(&["check", s(&out), "-D", s(&blobs)]);
            let dest = w.path().join("tree");
            forge(&["unpack", s(&out), "-D", s(&blobs), "--output-dir", s(&dest)]);
            manifest_diff(&d.join("expected.txt"), &dest);
            let (before, after) = (blob_sizes(&d.join("bootstrap")), blob_sizes(&out));
            let total = |b: &[(String, u64)]| b.iter().map(|x| x.1).sum::<u64>();
            eprintln!(
                "{name} (dict {}): {} bytes in {} blobs -> {} bytes in {} blobs",
                dict.is_some(),
                total(&before),
                before.len(),
                total(&after),
                after.len()
            );
            assert!(total(&after) < total(&before), "{name}");
        }
    }
    // upstream's v5 compaction against a dictionary: l2's and l3's files point past the one
    // blob its table lists
    let broken = upstream("v5-compact/bootstrap.compact-chunkdict");
    let err = forge_fails(&["check", s(&broken)]);
    assert!(err.contains("blob index outside the blob table"), "{err}");
    // its 0-byte "output" of the plain run is no bootstrap at all
    let err = forge_fails(&["check", s(&upstream("v6-compact/bootstrap.compact"))]);
    assert!(err.contains("shorter than a tar header"), "{err}");
}
