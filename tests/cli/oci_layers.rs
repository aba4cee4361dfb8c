//! Issue #5's demonstration: an OCI image of four layers built with umoci (deletions of files
//! and whole directories, a directory recreated, a file turned into a directory, hardlinks,
//! symlinks, a fifo, devices, mode and owner changes, and a hand-written layer with an opaque
//! directory and implied parents) is converted (1) layer by layer with `create -t tar-rafs` +
//! `merge` and (2) whole with `create -t oci`. The merged v6 image mounted by the kernel, and
//! `unpack --output-dir` of the merged v5 and v6 images, must equal `umoci unpack` of the same
//! image. Also: the OCI layout written, OCI-archive and docker-save (index without manifests,
//! moby #47065) inputs, and a layer whose bytes do not match its digest.
//!
//! The layout is also read by a real OCI client: `skopeo inspect` and `skopeo copy`.
//!
//! Needs root (devices, owners), umoci, skopeo and, for the mount checks, a kernel with EROFS;
//! otherwise it says SKIPPED and why.

use crate::common::*;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::umoci_image::*;

fn blob_ids(boot: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&forge(&["inspect", s(boot), "-R", "blobs"]).stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["blob_id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_same(what: &str, expect: &Path, got: &Path) {
    // every field of every entry, the root's own metadata included
    let d = diff(&manifest(expect), &manifest(got));
    assert!(
        d.is_empty(),
        "{what}: {} differences from umoci unpack:\n{}",
        d.len(),
        d.join("\n")
    );
    eprintln!("{what}: equal to umoci unpack");
}

fn mount_check(what: &str, boot: &Path, cache: &Path, expect: &Path) {
    if let Some(why) = cannot_mount() {
        missing(what, &why);
    }
    let devices: Vec<PathBuf> = blob_ids(boot)
        .iter()
        .map(|id| cache.join(format!("{id}.blob.data")))
        .collect();
    let m = mount(boot, &devices);
    assert_same(what, expect, m.dir.path());
}

fn unpack_check(what: &str, boot: &Path, blobs: &Path, expect: &Path, scratch: &Path) {
    let dest = scratch.join(format!("unpacked-{}", what.replace(' ', "-")));
    forge(&["unpack", s(boot), "-D", s(blobs), "--output-dir", s(&dest)]);
    assert_same(what, expect, &dest);
}

#[test]
#[cfg_attr(
    any(no_mount, no_umoci, no_skopeo),
    ignore = "needs a kernel EROFS mount, umoci, skopeo"
)]
fn oci_image_layers_match_umoci() {
    let w = scratch();
    let (img, expect) = image_and_rootfs("oci_image_layers_match_umoci", w.path());
    // the image holds what the layers say
    assert!(!expect.join("gone").exists() && !expect.join("etc/remove-me").exists());
    assert!(expect.join("file-then-dir/inside").is_file());
    assert!(!expect.join("opq/a").exists() && !expect.join("opq/sub").exists());
    assert!(!expect.join("recreated/old").exists());
    let layers: Vec<String> = manifest_of(&img)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        layers.len(),
        3,
        "base, changes, by hand (umoci new adds no layer)"
    );

    for v in ["5", "6"] {
        // (1) layer by layer, then merge
        let out = w.path().join(format!("layers-v{v}"));
        let cache = out.join("cache");
        fs::create_dir_all(&cache).unwrap();
        let mut boots = Vec::new();
        for (i, d) in layers.iter().enumerate() {
            let b = out.join(format!("layer{i}.boot"));
            forge(&[
                "create",
                "-t",
                "tar-rafs",
                "--fs-version",
                v,
                "-D",
                s(&out),
                "--blob-cache-dir",
                s(&cache),
                "-B",
                s(&b),
                s(&blob(&img, d)),
            ]);
            boots.push(b);
        }
        let merged = out.join("merged.boot");
        let mut args = vec!["merge", "-B", s(&merged)];
        args.extend(boots.iter().map(|b| s(b)));
        forge(&args);
        forge(&["check", s(&merged), "-D", s(&out)]);
        if v == "6" {
            mount_check("tar-rafs + merge, v6, kernel", &merged, &cache, &expect);
        }
        unpack_check(
            &format!("tar-rafs + merge v{v} unpack"),
            &merged,
            &out,
            &expect,
            w.path(),
        );

        // (2) the whole image at once
        let layout = w.path().join(format!("oci-v{v}"));
        let cache2 = w.path().join(format!("oci-cache-v{v}"));
        fs::create_dir_all(&cache2).unwrap();
        let boot = w.path().join(format!("oci-v{v}.boot"));
        let printed = forge(&[
            "create",
            "-t",
            "oci",
            "--fs-version",
            v,
            "-D",
            s(&layout),
            "--blob-cache-dir",
            s(&cache2),
            "-B",
            s(&boot),
            s(&img),
        ]);
        let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
        assert!(printed.contains("bootstrap layer path:"), "{printed}");
        let blobs = layout.join("blobs/sha256");
        forge(&["check", s(&boot), "-D", s(&blobs)]);
        check_layout(&layout, &boot, &cache2, v);
        skopeo_reads(&layout, w.path(), v);
        // the merged bootstraps are the same filesystem (the blob ids are the same too)
        assert_eq!(blob_ids(&boot), blob_ids(&merged));
        if v == "6" {
            mount_check("create -t oci, v6, kernel", &boot, &cache2, &expect);
        }
        unpack_check(
            &format!("create -t oci v{v} unpack"),
            &boot,
            &blobs,
            &expect,
            w.path(),
        );
    }
}

/// skopeo (a real OCI client) inspects the layout and copies it to another layout: the
/// layers it lists are the manifest's, and the copy holds the same manifest and blobs.
fn skopeo_reads(layout: &Path, w: &Path, v: &str) {
    let manifest = manifest_of(layout);
    let digests: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:t", s(layout))])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = seen["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        listed, digests,
        "skopeo inspect lists the manifest's layers"
    );
    assert_eq!(seen["Architecture"], "amd64");
    let copy = w.join(format!("skopeo-copy-v{v}"));
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:t", s(layout)),
        &format!("oci:{}:t", s(&copy)),
    ]));
    assert_eq!(
        manifest_of(&copy),
        manifest,
        "skopeo copy keeps the manifest"
    );
    for d in digests {
        assert_eq!(
            fs::read(blob(&copy, d)).unwrap(),
            fs::read(blob(layout, d)).unwrap(),
            "skopeo copy keeps layer {d}"
        );
    }
}

/// The layout `create -t oci` wrote, as nydus-snapshotter's converter writes one: nydus media
/// types and annotations, config diff_ids and history, the bootstrap layer holding exactly the
/// image bootstrap and, for v6, each blob's cache meta file (equal to `--blob-cache-dir`'s).
fn check_layout(layout: &Path, boot: &Path, cache: &Path, v: &str) {
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(entry["platform"]["os.features"][0], "nydus.remoteimage.v1");
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "t"
    );
    let manifest = manifest_of(layout);
    let layers = manifest["layers"].as_array().unwrap();
    let ids = blob_ids(boot);
    assert_eq!(layers.len(), ids.len() + 1);
    for (l, id) in layers.iter().zip(&ids) {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.nydus.blob.v1"
        );
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/nydus-blob"],
            "true"
        );
        assert_eq!(l["digest"], format!("sha256:{id}"));
        let data = fs::read(blob(layout, l["digest"].as_str().unwrap())).unwrap();
        assert_eq!(l["size"], data.len());
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)),
            *id
        );
    }
    let top = layers.last().unwrap();
    assert_eq!(
        top["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let a = &top["annotations"];
    assert_eq!(a["containerd.io/snapshot/nydus-bootstrap"], "true");
    assert_eq!(a["containerd.io/snapshot/nydus-fs-version"], v);
    assert_eq!(a.as_object().unwrap().len(), 2, "{a}");
    let gz = fs::read(blob(layout, top["digest"].as_str().unwrap())).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut entries = Vec::new();
    for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        let path = e.path().unwrap().to_str().unwrap().to_string();
        entries.push((path, h.mode().unwrap(), b));
    }
    let mut want_entries = vec![
        ("image".to_string(), 0o755, Vec::new()),
        (
            "image/image.boot".to_string(),
            0o444,
            fs::read(boot).unwrap(),
        ),
    ];
    if v == "6" {
        for id in &ids {
            let meta = fs::read(cache.join(format!("{id}.blob.meta"))).unwrap();
            want_entries.push((format!("image/{id}.blob.meta"), 0o444, meta));
        }
    }
    assert_eq!(entries.len(), want_entries.len());
    for (got, want) in entries.iter().zip(&want_entries) {
        assert_eq!((&got.0, got.1), (&want.0, want.1));
        assert!(got.2 == want.2, "{}: content differs", got.0);
    }
    let config = json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let mut want: Vec<String> = ids.iter().map(|i| format!("sha256:{i}")).collect();
    want.push(format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tar_bytes))
    ));
    let got: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(config["architecture"], "amd64");
    assert!(config["config"].is_object(), "the source config is kept");
    let history = config["history"].as_array().unwrap();
    assert_eq!(
        history.last().unwrap(),
        &serde_json::json!({"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"})
    );
}

/// The same image as an OCI archive and as a docker save tar whose index lists nothing
/// (moby #47065: read manifest.json instead) gives the same bootstrap; a layer whose bytes do
/// not match its digest is an error naming it.
#[test]
#[cfg_attr(any(no_root, no_umoci), ignore = "needs root, umoci")]
fn archives_docker_save_and_bad_digests() {
    if let Some(why) = why_skip() {
        missing("archives_docker_save_and_bad_digests", &why);
    }
    let w = scratch();
    let img = build_image(w.path());
    let create = |src: &Path, name: &str| -> Vec<u8> {
        let out = w.path().join(format!("out-{name}"));
        let boot = w.path().join(format!("{name}.boot"));
        forge(&["create", "-t", "oci", "-D", s(&out), "-B", s(&boot), s(src)]);
        fs::read(&boot).unwrap()
    };
    let from_layout = create(&img, "layout");

    let archive = w.path().join("img.tar");
    sh(&format!("tar -C {} -cf {} .", s(&img), s(&archive)));
    assert_eq!(create(&archive, "archive"), from_layout);
    // PATH:REF names the image
    let named = PathBuf::from(format!("{}:t", s(&archive)));
    assert_eq!(create(&named, "archive-named"), from_layout);
    let err = forge_fails(&[
        "create",
        "-t",
        "oci",
        "-D",
        s(&w.path().join("out-x")),
        &format!("{}:nope", s(&archive)),
    ]);
    assert!(err.contains("nope"), "{err}");
    let err = forge_fails(&[
        "create",
        "-t",
        "oci",
        "--platform",
        "linux/s390x",
        "-D",
        s(&w.path().join("out-y")),
        s(&archive),
    ]);
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64"),
        "{err}"
    );

    // docker save of Docker 25.0.0: index.json without manifests, manifest.json with paths
    let d = w.path().join("dsave");
    sh(&format!(
        "mkdir -p {0} && cp -r {1}/blobs {0}/",
        s(&d),
        s(&img)
    ));
    fs::write(
        d.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let m = manifest_of(&img);
    let layer_paths: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("blobs/sha256/{}", &l["digest"].as_str().unwrap()[7..]))
        .collect();
    let doc = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", &m["config"]["digest"].as_str().unwrap()[7..]),
        "RepoTags": ["forge/test:t"],
        "Layers": layer_paths,
    }]);
    fs::write(d.join("manifest.json"), doc.to_string()).unwrap();
    let dtar = w.path().join("dsave.tar");
    sh(&format!("tar -C {} -cf {} .", s(&d), s(&dtar)));
    assert_eq!(create(&dtar, "docker-save"), from_layout);

    // one byte changed in the base layer's blob
    let bad = w.path().join("bad");
    sh(&format!("cp -r {} {}", s(&img), s(&bad)));
    let base = &m["layers"][0]["digest"].as_str().unwrap()[7..];
    let p = bad.join("blobs/sha256").join(base);
    let mut bytes = fs::read(&p).unwrap();
    bytes[9] ^= 1; // the gzip header's OS byte: the tar still reads, the digest does not match
    fs::write(&p, &bytes).unwrap();
    let out = w.path().join("out-bad");
    let err = forge_fails(&["create", "-t", "oci", "-D", s(&out), s(&bad)]);
    assert!(
        err.contains("layer 0") && err.contains(base) && err.contains("sha256"),
        "{err}"
    );
    assert!(
        !out.join("index.json").exists(),
        "nothing is published after a failed check"
    );
}

/// path, data (None: a directory), mode, uid and gid, mtime.
type TarEntry<'a> = (&'a str, Option<&'a [u8]>, u32, u32, u64);

/// Directories a tar layer only implies keep the lower layer's metadata after per-layer
/// bootstraps are written to disk and merged (the mark is not stored; the placeholders are
/// recognised), v5 and v6. No root needed.
#[test]
fn implied_directories_survive_per_layer_bootstraps() {
    let w = scratch();
    let tar_of = |name: &str, entries: &[TarEntry]| -> PathBuf {
        let p = w.path().join(name);
        let mut b = tar::Builder::new(fs::File::create(&p).unwrap());
        for (path, data, mode, uid, mtime) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_path(path).unwrap();
            h.set_mode(*mode);
            h.set_uid(u64::from(*uid));
            h.set_gid(u64::from(*uid));
            h.set_mtime(*mtime);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_cksum();
                    b.append(&h, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, &b""[..]).unwrap();
                }
            }
        }
        b.finish().unwrap();
        p
    };
    let l1 = tar_of(
        "l1.tar",
        &[
            ("./", None, 0o711, 0, 1_500_000_000),
            ("a/", None, 0o750, 1000, 1_600_000_000),
            ("a/b/", None, 0o700, 1001, 1_600_000_001),
            ("a/b/x", Some(b"x"), 0o644, 0, 1_600_000_002),
        ],
    );
    // layer 2 lists neither the root, a nor a/b; c is new and implied too
    let l2 = tar_of(
        "l2.tar",
        &[
            ("a/b/y", Some(b"y"), 0o644, 0, 1_700_000_000),
            ("c/z", Some(b"z"), 0o644, 0, 1_700_000_000),
        ],
    );
    for v in ["5", "6"] {
        let out = w.path().join(format!("v{v}"));
        fs::create_dir_all(&out).unwrap();
        let mut boots = Vec::new();
        for (i, l) in [&l1, &l2].iter().enumerate() {
            let b = out.join(format!("l{i}.boot"));
            forge(&[
                "create",
                "-t",
                "tar-rafs",
                "-v",
                v,
                "-D",
                s(&out),
                "-B",
                s(&b),
                s(l),
            ]);
            boots.push(b);
        }
        let merged = out.join("merged");
        forge(&["merge", "-B", s(&merged), s(&boots[0]), s(&boots[1])]);
        let meta = |p: &str| {
            let st: serde_json::Value = serde_json::from_slice(
                &forge(&["inspect", s(&merged), "-R", &format!("stat {p}")]).stdout,
            )
            .unwrap();
            (
                st["mode"].as_str().unwrap().to_string(),
                st["uid"].as_u64().unwrap(),
                st["mtime"].as_i64().unwrap(),
            )
        };
        let m = |mode: &str, uid: u64, mtime: i64| (mode.to_string(), uid, mtime);
        assert_eq!(meta("/"), m("40711", 0, 1_500_000_000), "v{v} root");
        assert_eq!(meta("/a"), m("40750", 1000, 1_600_000_000), "v{v} a");
        assert_eq!(meta("/a/b"), m("40700", 1001, 1_600_000_001), "v{v} a/b");
        assert_eq!(
            meta("/c"),
            m("40755", 0, 0),
            "v{v} c: new, so the placeholders"
        );
        assert_eq!(meta("/a/b/x").0, "100644");
        assert_eq!(meta("/a/b/y").0, "100644");
    }
}

/// Issue #25: a manifest the index lists under two tags (`umoci tag`, as `latest` usually is)
/// is found by either, and gives the same bootstrap and blobs; an unknown tag is an error
/// listing both.
#[test]
#[cfg_attr(any(no_umoci, no_root), ignore = "needs umoci, root")]
fn every_tag_of_a_manifest_resolves() {
    let w = scratch();
    let img = w.path().join("L");
    let bundle = w.path().join("b");
    let tagged = |t: &str| format!("{}:{t}", s(&img));
    umoci(&["init", "--layout", s(&img)]);
    umoci(&["new", "--image", &tagged("a")]);
    umoci(&["unpack", "--image", &tagged("a"), s(&bundle)]);
    write(&bundle.join("rootfs/f"), b"hi\n");
    umoci(&["repack", "--image", &tagged("a"), s(&bundle)]);
    umoci(&["tag", "--image", &tagged("a"), "alias"]);
    let index = json(&img.join("index.json"));
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(entries[0]["digest"], entries[1]["digest"], "{index}");

    let create = |t: &str, out: &str, boot: &str| -> (PathBuf, PathBuf) {
        let (out, boot) = (w.path().join(out), w.path().join(boot));
        forge(&[
            "create",
            "-t",
            "oci",
            "-D",
            s(&out),
            "-B",
            s(&boot),
            &tagged(t),
        ]);
        (out, boot)
    };
    let (o1, b1) = create("a", "o1", "b1");
    let (o2, b2) = create("alias", "o2", "b2");
    assert!(
        fs::read(&b1).unwrap() == fs::read(&b2).unwrap(),
        "the bootstraps differ"
    );
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
            .collect();
        v.sort();
        v
    };
    let names = files(&o1);
    assert_eq!(names, files(&o2));
    assert!(
        names.iter().any(|n| n.starts_with("blobs/sha256")),
        "{names:?}"
    );
    for n in names.iter().filter(|n| n.starts_with("blobs")) {
        assert!(
            fs::read(o1.join(n)).unwrap() == fs::read(o2.join(n)).unwrap(),
            "{}: content differs",
            n.display()
        );
    }
    // each output index keeps the entry that was named
    for (o, t) in [(&o1, "a"), (&o2, "alias")] {
        let entry = &json(&o.join("index.json"))["manifests"][0];
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], t);
    }

    let err = forge_fails(&[
        "create",
        "-t",
        "oci",
        "-D",
        s(&w.path().join("o3")),
        "-B",
        s(&w.path().join("b3")),
        &tagged("nope"),
    ]);
    assert!(
        err.contains("\"nope\"") && err.contains("a, alias"),
        "{err}"
    );
}
