//! `chunkdict generate` (issue 16) with nydusify's argv and layout: a dictionary of the chunks
//! two versions of an image share; the next version built with it (`create --chunk-dict`,
//! then `merge --chunk-dict`) stores fewer new chunks than without, and reads back equal.
//! Upstream's dictionary fixture is read as well.

use crate::common::*;
use crate::compact::noise;
use std::fs;
use std::path::{Path, PathBuf};

fn put(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Version `v` (1, 2, 3) of an application: most files stay from version to version, a few
/// change, each version adds one.
fn app_version(dir: &Path, v: u64) {
    put(&dir.join("usr/lib/libbig.so"), &noise(100, 3 << 20));
    put(&dir.join("usr/bin/tool"), &noise(101, 700_000));
    put(&dir.join("usr/share/data"), &noise(102, 90_000));
    put(&dir.join("etc/version"), format!("{v}\n").as_bytes());
    put(&dir.join("app/main"), &noise(200 + v, 400_000));
    for i in 1..=v {
        put(
            &dir.join(format!("app/plugin{i}")),
            &noise(300 + i, 150_000),
        );
    }
}

/// The blob the build at `json` wrote: its chunk count (the chunks it stored).
fn new_chunks(boot: &Path, blob: &Path) -> u64 {
    let id = sha256_hex(&fs::read(blob).unwrap());
    let v: serde_json::Value =
        serde_json::from_slice(&forge(&["inspect", s(boot), "-R", "blobs"]).stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|b| b["blob_id"] == id.as_str())
        .map(|b| b["chunk_count"].as_u64().unwrap())
        .unwrap_or(0)
}

fn blob_ids(json: &Path) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(json).unwrap()).unwrap();
    doc["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_next_version_stores_fewer_chunks_with_the_dictionary() {
    let w = scratch();
    let work = w.path();
    let blobs = work.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let mut boots: Vec<PathBuf> = Vec::new();
    for v in 1..=2 {
        let src = work.join(format!("src-v{v}"));
        app_version(&src, v);
        // nydusify saves each bootstrap as WORK/<image ref, '/' replaced by ':'>/nydus_bootstrap
        let dir = work.join(format!("localhost:5000:app:v{v}"));
        fs::create_dir_all(&dir).unwrap();
        let b = dir.join("nydus_bootstrap");
        forge(&[
            "create",
            "--chunk-size",
            "0x10000",
            "-D",
            s(&blobs),
            "-B",
            s(&b),
            s(&src),
        ]);
        boots.push(b);
    }
    let dict = work.join("chunkdict_bootstrap");
    let json = work.join("nydus_bootstrap_output.json");
    let db = format!("sqlite://{}", s(&work.join("database.db")));
    let mut args = vec![
        "chunkdict",
        "generate",
        "--log-level",
        "warn",
        "--bootstrap",
        s(&dict),
        "--database",
        &db,
        "--output-json",
        s(&json),
    ];
    args.extend(boots.iter().map(|b| s(b)));
    let out = forge(&args);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(!blob_ids(&json).is_empty(), "nydusify reads `blobs`");
    // the dictionary is an image every reader takes, its chunks read from the blobs
    forge(&["check", s(&dict), "-D", s(&blobs)]);

    let next = work.join("src-v3");
    app_version(&next, 3);
    let build = |name: &str, extra: &[&str]| -> (PathBuf, PathBuf) {
        let (boot, blob) = (
            work.join(format!("{name}.boot")),
            work.join(format!("{name}.blob")),
        );
        let mut a = vec!["create", "--chunk-size", "0x10000"];
        a.extend_from_slice(extra);
        a.extend(["-b", s(&blob), "-B", s(&boot), s(&next)]);
        forge(&a);
        fs::copy(&blob, blobs.join(sha256_hex(&fs::read(&blob).unwrap()))).unwrap();
        (boot, blob)
    };
    let (plain_boot, plain_blob) = build("plain", &[]);
    let dict_arg = format!("bootstrap={}", s(&dict));
    let (with_boot, with_blob) = build("with-dict", &["--chunk-dict", &dict_arg]);
    let (without, with) = (
        new_chunks(&plain_boot, &plain_blob),
        new_chunks(&with_boot, &with_blob),
    );
    eprintln!(
        "chunkdict: next version stores {without} new chunks without the dictionary, {with} with it"
    );
    assert!(with < without, "{with} < {without}");
    forge(&["check", s(&with_boot), "-D", s(&blobs)]);
    let dest = work.join("unpacked");
    forge(&[
        "unpack",
        s(&with_boot),
        "-D",
        s(&blobs),
        "--output-dir",
        s(&dest),
    ]);
    let (mut a, mut b) = (manifest(&next), manifest(&dest));
    a.remove(&b""[..]);
    b.remove(&b""[..]);
    let d = diff(&a, &b);
    assert!(d.is_empty(), "{}", d.join("\n"));
    // the converter's merge of that layer, told about the dictionary
    let merged = work.join("merged");
    forge(&[
        "merge",
        "--chunk-dict",
        &dict_arg,
        "-B",
        s(&merged),
        s(&with_boot),
    ]);
    forge(&["check", s(&merged), "-D", s(&blobs)]);
}

#[test]
fn chunkdict_refuses_other_databases_and_reads_upstreams_sources() {
    let w = scratch();
    let up = repo().join("fixtures/upstream/chunkdict");
    let sources: Vec<PathBuf> = (1..=3)
        .map(|v| up.join(format!("sources/app-v{v}.bootstrap")))
        .collect();
    let dict = w.path().join("dict");
    let mut args = vec!["chunkdict", "generate", "-B", s(&dict), "--database"];
    let bad = vec!["mysql://localhost/db", "sqlite://relative.db"];
    for db in bad {
        let mut a = args.clone();
        a.push(db);
        a.extend(sources.iter().map(|b| s(b)));
        let err = forge_fails(&a);
        assert!(err.contains("--database"), "{err}");
    }
    let db = format!("sqlite://{}", s(&w.path().join("db.sqlite")));
    args.push(&db);
    args.extend(sources.iter().map(|b| s(b)));
    forge(&args);
    // a source of another RAFS version is named
    let v5 = w.path().join("v5.boot");
    let b5 = w.path().join("b5");
    fs::create_dir_all(&b5).unwrap();
    let sample = repo().join("fixtures/sample");
    forge(&["create", "-v", "5", "-D", s(&b5), "-B", s(&v5), s(&sample)]);
    let mut mixed = args.clone();
    mixed.extend([s(&sources[0]), s(&v5)]);
    let err = forge_fails(&mixed);
    assert!(
        err.contains("v5.boot") && err.contains("RAFS v5, not v6"),
        "{err}"
    );
    // upstream's three versions share l1's chunks: our dictionary holds each once, with the
    // blob's own chunk indexes, and checks against the blobs
    let blobs = repo().join("fixtures/upstream/v6-compact/blobs");
    let out = forge(&["check", s(&dict), "-D", s(&blobs)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("metadata is valid"));
}

#[test]
fn upstreams_broken_dictionary_is_rejected() {
    // upstream's dictionary claims 97 chunks of l1's 47-chunk blob and gives chunks indexes
    // past the blob's chunk-info array (fixtures/upstream/chunkdict/check.txt); before that,
    // its one directory entry is named "/chunkdict", slash included
    let up = repo().join("fixtures/upstream/chunkdict/chunkdict_bootstrap");
    let blobs = repo().join("fixtures/upstream/v6-compact/blobs");
    let err = forge_fails(&["check", s(&up), "-D", s(&blobs)]);
    eprintln!("our check of upstream's dictionary: {err}");
    assert!(err.contains("/chunkdict: invalid file name"), "{err}");
}

/// A copy of `from` made of hardlinks (`cp -al`, cheap for the Debian tree), in which the
/// `n` files whose index is `k` modulo `step` are replaced by new content (unlinked first:
/// the source keeps its bytes) and a new directory of `n` files is added.
fn next_version(from: &Path, to: &Path, tag: &str, k: usize, step: usize) {
    let out = std::process::Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -al: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(to)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file() && e.metadata().unwrap().len() > 0)
        .map(|e| e.path().to_path_buf())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate().filter(|(i, _)| i % step == k) {
        let mut data = fs::read(f).unwrap();
        data.extend_from_slice(format!("\n{tag} {i}\n").as_bytes());
        fs::remove_file(f).unwrap();
        fs::write(f, data).unwrap();
    }
    for i in 0..20 {
        put(
            &to.join(format!("opt/{tag}/f{i}")),
            &noise(1000 + i, 50_000),
        );
    }
}

#[test]
// one attribute: two `ignore`s active at once (a machine with neither) fail clippy's
// unused-attribute lint before the test command has installed anything
#[cfg_attr(
    any(no_umoci, no_full_tree, no_mount),
    ignore = "needs umoci, root, the fixture-tree tools and a kernel EROFS mount"
)]
fn debian_versions_and_umoci_layers_make_a_dictionary() {
    let w = scratch();
    let work = w.path();
    let blobs = work.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let save = |name: &str| -> PathBuf {
        let dir = work.join(format!("localhost:5000:{name}"));
        fs::create_dir_all(&dir).unwrap();
        dir.join("nydus_bootstrap")
    };
    let mut sources = Vec::new();
    // the umoci test image: l1, l1+l2, l1+l2+l3 as three versions
    let (img, _) = crate::umoci_image::image_and_rootfs("chunkdict umoci", work);
    let layers: Vec<String> = crate::umoci_image::manifest_of(&img)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let mut boots = Vec::new();
    for (i, d) in layers.iter().enumerate() {
        let b = work.join(format!("umoci-layer{i}.boot"));
        let tar = crate::umoci_image::blob(&img, d);
        forge(&[
            "create",
            "-t",
            "tar-rafs",
            "-D",
            s(&blobs),
            "-B",
            s(&b),
            s(&tar),
        ]);
        boots.push(b);
        let merged = save(&format!("umoci:v{}", i + 1));
        let mut args = vec!["merge", "-B", s(&merged)];
        args.extend(boots.iter().map(|b| s(b)));
        forge(&args);
        sources.push(merged);
    }
    // two versions of the Debian tree (or the full fixture tree), then the next one
    let v1 = crate::optimize::debian_or_full_tree(work);
    let (v2, v3) = (work.join("debian-v2"), work.join("debian-v3"));
    next_version(&v1, &v2, "v2", 0, 40);
    next_version(&v2, &v3, "v3", 1, 40);
    for (v, src) in [(1, &v1), (2, &v2)] {
        let b = save(&format!("debian:v{v}"));
        forge(&["create", "-D", s(&blobs), "-B", s(&b), s(src)]);
        sources.push(b);
    }
    let dict = work.join("chunkdict_bootstrap");
    let db = format!("sqlite://{}", s(&work.join("database.db")));
    let json = work.join("nydus_bootstrap_output.json");
    let mut args = vec![
        "chunkdict",
        "generate",
        "--log-level",
        "warn",
        "--bootstrap",
        s(&dict),
    ];
    args.extend(["--database", &db, "--output-json", s(&json)]);
    args.extend(sources.iter().map(|b| s(b)));
    let out = forge(&args);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim());
    forge(&["check", s(&dict), "-D", s(&blobs)]);
    let build = |name: &str, extra: &[&str]| -> u64 {
        let (boot, blob) = (
            work.join(format!("{name}.boot")),
            work.join(format!("{name}.blob")),
        );
        let mut a = vec!["create"];
        a.extend_from_slice(extra);
        a.extend(["-b", s(&blob), "-B", s(&boot), s(&v3)]);
        forge(&a);
        fs::copy(&blob, blobs.join(sha256_hex(&fs::read(&blob).unwrap()))).unwrap();
        new_chunks(&boot, &blob)
    };
    let without = build("plain", &[]);
    let dict_arg = format!("bootstrap={}", s(&dict));
    let with = build("with-dict", &["--chunk-dict", &dict_arg]);
    eprintln!("chunkdict (Debian v3): {without} new chunks without the dictionary, {with} with it");
    assert!(with * 4 < without, "{with} vs {without}");
    // the image built on the dictionary, flattened with every blob it uses, in the kernel
    if let Some(why) = cannot_mount() {
        missing("chunkdict (kernel part)", &why);
    }
    let disk = work.join("with-dict.disk");
    let boot = work.join("with-dict.boot");
    export_block(&boot, &blobs, &disk);
    let m = mount(&disk, &[]);
    // v3 is made of hardlinks into v1 and v2: compare without link counts
    let plain = |mut t: std::collections::BTreeMap<Vec<u8>, Desc>| {
        t.remove(&b""[..]);
        t.values_mut().for_each(|d| d.hardlink = None);
        t
    };
    let d = diff(&plain(manifest(&v3)), &plain(manifest(m.dir.path())));
    assert!(d.is_empty(), "kernel:\n{}", d.join("\n"));
}
