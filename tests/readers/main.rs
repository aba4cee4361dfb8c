//! `cargo xtask readers`: upstream's own readers on every kind of image erofs-forge writes. The
//! kernel, which the CLI tests mount images with, ignores blob ids and blob features; nydusd
//! does not (issue #25: a merged bootstrap the kernel read fine named every blob after itself
//! in nydusd). Each image below, one per command and mode, is mounted by upstream's nydusd
//! (FUSE, localfs backend) and compared entry by entry with its source, and checked by
//! upstream's `nydus-image check`; one line per image, and the test fails on any failure.
//!
//! This is a test target of its own with `test = false`: `cargo test` (the README's test
//! command) does not run it, since it needs upstream's binaries (`EROFS_FORGE_UPSTREAM`), which
//! a clone of this repository does not carry; `.ci/run` runs it through `cargo xtask readers`
//! with the shared binaries as the second opinion. Without them it fails, never skips.

// test scratch directories need no signal cleanup
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)]
#[path = "../cli/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../cli/converter.rs"]
mod converter;
#[path = "../cli/estargz.rs"]
mod estargz;
#[allow(dead_code)]
#[path = "../cli/umoci_image.rs"]
mod umoci_image;
mod upstream;

use std::fs;
use std::path::{Path, PathBuf};

use common::{forge, full_tree, run_with_stdin, s, sha256_hex};
use upstream::Upstream;

/// One image to hand to upstream's readers.
struct Built {
    /// What nydusd is given as `--bootstrap` (a bootstrap, or a blob with one inlined).
    boot: PathBuf,
    /// The localfs directory: every blob named as the image's table (and nydusd) names it.
    blobs: PathBuf,
    /// The tree nydusd must serve.
    expect: PathBuf,
    /// Who serves it: nydusd, except for tarfs images, which nydusd does not serve over FUSE
    /// (upstream's own tarfs fixture fails the same way: "Failed to create device"); their
    /// runtime reader is the kernel, with the tar as the device.
    reader: Reader,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    Nydusd,
    KernelWithTar,
}

/// Runs erofs-forge with `stdin`; it must succeed (the bootstraps it writes are audited by
/// `common::audit_bootstraps`, nydusd's rules re-stated).
fn ok(args: &[&str], stdin: &[u8]) {
    let o = run_with_stdin(args, stdin);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The first blob id a `-J` document lists.
fn first_blob(json: &Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(json).unwrap()).unwrap();
    v["blobs"][0].as_str().unwrap().to_string()
}

/// Saves `bytes` in `dir` under their sha256; returns that path.
fn save_by_digest(dir: &Path, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(sha256_hex(bytes));
    fs::write(&p, bytes).unwrap();
    p
}

/// The sources every directory and tar case is built from.
struct Sources {
    /// The full fixture tree (every entry kind).
    tree: PathBuf,
    /// It as a GNU tar, and gzip- and zstd-compressed.
    tar: PathBuf,
    /// What the tar holds, extracted by GNU tar (no socket; GNU tar links hardlinked devices
    /// and fifos only as separate entries).
    tar_tree: PathBuf,
    tgz: PathBuf,
    tzst: PathBuf,
    /// The tree with one more directory on top (for `--parent-bootstrap` and `--chunk-dict`).
    upper: PathBuf,
    upper_only: PathBuf,
}

fn sources(w: &Path) -> Sources {
    let tree = w.join("tree");
    full_tree(&tree, false);
    let tar = w.join("tree.tar");
    let sh = |script: String| {
        let o = std::process::Command::new("sh")
            .args(["-ec", &script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh(format!(
        "tar --numeric-owner --xattrs --xattrs-include='*' --acls -C {} -cf {} .",
        s(&tree),
        s(&tar)
    ));
    let tar_tree = w.join("tar-tree");
    sh(format!(
        "mkdir {0}; tar --numeric-owner --xattrs --xattrs-include='*' --acls --same-permissions \
         -C {0} -xf {1}",
        s(&tar_tree),
        s(&tar)
    ));
    let (tgz, tzst) = (w.join("tree.tar.gz"), w.join("tree.tar.zst"));
    sh(format!(
        "gzip -9 -n -c {0} > {1}; zstd -q -c {0} > {2}",
        s(&tar),
        s(&tgz),
        s(&tzst)
    ));
    let upper_only = w.join("upper-only");
    let upper = w.join("upper");
    sh(format!(
        "mkdir -p {0}/added; echo one > {0}/added/one; head -c 300000 /dev/urandom > {0}/added/big; \
         cp -a {1}/. {2}/; cp -a {0}/. {2}/",
        s(&upper_only),
        s(&tree),
        s(&upper)
    ));
    // a directory layer's root is a real directory: its metadata replace the parent's
    sh(format!("touch -r {} {}", s(&upper_only), s(&upper)));
    Sources {
        tree,
        tar,
        tar_tree,
        tgz,
        tzst,
        upper,
        upper_only,
    }
}

/// `create` of a directory or tar into `w/blobs` with extra flags: the plain case.
fn create(w: &Path, src: &Path, expect: &Path, flags: &[&str], stdin: &[u8]) -> Built {
    let blobs = w.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let boot = w.join("bootstrap");
    let mut args = vec!["create", "-D", s(&blobs), "-B", s(&boot)];
    args.extend_from_slice(flags);
    args.push(s(src));
    ok(&args, stdin);
    Built {
        boot,
        blobs,
        expect: expect.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

/// `--blob-inline-meta` without `-B`: nydusd is handed the blob itself, named by its id.
fn inline_blob(w: &Path, src: &Sources) -> Built {
    let blobs = w.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let json = w.join("out.json");
    ok(
        &[
            "create",
            "--blob-inline-meta",
            "-D",
            s(&blobs),
            "-J",
            s(&json),
            s(&src.tree),
        ],
        b"",
    );
    let id = first_blob(&json);
    Built {
        boot: blobs.join(id),
        blobs,
        expect: src.tree.clone(),
        reader: Reader::Nydusd,
    }
}

/// The converter's Pack of the tree's tar (FIFOs, ToC) and its `image.boot` cut out through
/// the ToC and saved as `<sha256 of the layer>.boot`.
fn converter_layer(w: &Path, src: &Sources, version: &str) -> Built {
    let tar = fs::read(&src.tar).unwrap();
    let layer = converter::converter_pack(&w.join("pack"), &tar, version, &[]);
    let blobs = w.join("blobs");
    let saved = save_by_digest(&blobs, &layer);
    let boot = w.join(format!("{}.boot", sha256_hex(&layer)));
    let cut = converter::client_entry(&layer, "image.boot").expect("image.boot in the layer");
    fs::write(&boot, cut).unwrap();
    assert!(saved.exists());
    Built {
        boot,
        blobs,
        expect: src.tar_tree.clone(),
        reader: Reader::Nydusd,
    }
}

/// `-t tar-tarfs`: the tar is the blob, under its sha256.
fn tarfs(w: &Path, src: &Sources) -> Built {
    let blobs = w.join("blobs");
    save_by_digest(&blobs, &fs::read(&src.tar).unwrap());
    let boot = w.join("bootstrap");
    ok(
        &["create", "-t", "tar-tarfs", "-B", s(&boot), s(&src.tar)],
        b"",
    );
    Built {
        boot,
        blobs,
        expect: src.tar_tree.clone(),
        reader: Reader::KernelWithTar,
    }
}

/// `-t targz-ref`: the gzip layer itself is the data blob (under its sha256), the meta blob
/// beside it.
fn targz_ref(w: &Path, src: &Sources) -> Built {
    let b = create(w, &src.tgz, &src.tar_tree, &["-t", "targz-ref"], b"");
    save_by_digest(&b.blobs, &fs::read(&src.tgz).unwrap());
    b
}

/// The converter's OCIRef Pack: `targz-ref --blob-inline-meta --features blob-toc --blob F`,
/// F saved under its sha256 beside the layer, its bootstrap cut out as `<sha256 of F>.boot`.
fn targz_ref_converter(w: &Path, src: &Sources) -> Built {
    let blobs = w.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let f = w.join("blob.rafs");
    ok(
        &[
            "create",
            "--log-level",
            "warn",
            "--type",
            "targz-ref",
            "--blob-inline-meta",
            "--features",
            "blob-toc",
            "--blob",
            s(&f),
            s(&src.tgz),
        ],
        b"",
    );
    let meta = fs::read(&f).unwrap();
    save_by_digest(&blobs, &meta);
    save_by_digest(&blobs, &fs::read(&src.tgz).unwrap());
    let boot = w.join(format!("{}.boot", sha256_hex(&meta)));
    fs::write(&boot, converter::client_entry(&meta, "image.boot").unwrap()).unwrap();
    Built {
        boot,
        blobs,
        expect: src.tar_tree.clone(),
        reader: Reader::Nydusd,
    }
}

/// `-t estargz-ref` over an eStargz layer of a few files (the layer itself is the data blob);
/// nydusd must serve what GNU tar extracts, less eStargz's own TOC and landmark entries.
fn estargz_ref(w: &Path) -> Built {
    let big: Vec<u8> = (0..2_600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let files = [
        ("hello.txt", b"hello estargz\n".to_vec()),
        ("big.bin", big),
        ("small", vec![7u8; 5000]),
    ];
    let layer = w.join("layer.tar.gz");
    fs::write(&layer, estargz::estargz(&files, 1 << 20)).unwrap();
    let expect = w.join("expect");
    fs::create_dir_all(&expect).unwrap();
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "tar --numeric-owner -C {0} -xzf {1}; rm -f {0}/stargz.index.json {0}/.prefetch.landmark \
             {0}/.no.prefetch.landmark; chmod 0755 {0}; touch -d @0 {0}",
            s(&expect),
            s(&layer)
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = create(w, &layer, &expect, &["-t", "estargz-ref"], b"");
    save_by_digest(&b.blobs, &fs::read(&layer).unwrap());
    b
}

/// A layer on a parent bootstrap: the parent's blobs and the layer's in one directory.
fn on_parent(w: &Path, src: &Sources, version: &str) -> Built {
    let parent = create(
        &w.join("parent"),
        &src.tree,
        &src.tree,
        &["--fs-version", version],
        b"",
    );
    let boot = w.join("bootstrap");
    ok(
        &[
            "create",
            "--fs-version",
            version,
            "--parent-bootstrap",
            s(&parent.boot),
            "-D",
            s(&parent.blobs),
            "-B",
            s(&boot),
            s(&src.upper_only),
        ],
        b"",
    );
    Built {
        boot,
        blobs: parent.blobs,
        expect: src.upper.clone(),
        reader: Reader::Nydusd,
    }
}

/// A build deduplicated against a chunk dictionary (the tree's own bootstrap).
fn on_chunk_dict(w: &Path, src: &Sources) -> Built {
    let dict = create(&w.join("dict"), &src.tree, &src.tree, &[], b"");
    let arg = format!("bootstrap={}", s(&dict.boot));
    let boot = w.join("bootstrap");
    ok(
        &[
            "create",
            "--chunk-dict",
            &arg,
            "-D",
            s(&dict.blobs),
            "-B",
            s(&boot),
            s(&src.upper),
        ],
        b"",
    );
    Built {
        boot,
        blobs: dict.blobs,
        expect: src.upper.clone(),
        reader: Reader::Nydusd,
    }
}

/// `optimize` of the image `b`: the first three files of `tree` (with data) copied into a new
/// blob, in its prefetch table.
fn optimized(w: &Path, b: Built, tree: &Path) -> Built {
    let list = w.join("prefetch.txt");
    fs::write(&list, first_files(tree, 3).join("\n")).unwrap();
    let out = w.join("optimized.boot");
    ok(
        &[
            "optimize",
            "--log-level",
            "warn",
            "--prefetch-files",
            s(&list),
            "--bootstrap",
            s(&b.boot),
            "--blob-dir",
            s(&b.blobs),
            "--output-blob-dir",
            s(&b.blobs),
            "--output-bootstrap",
            s(&out),
        ],
        b"",
    );
    Built { boot: out, ..b }
}

/// Absolute paths of the first `n` regular files of `tree`, in name order.
fn first_files(tree: &Path, n: usize) -> Vec<String> {
    let mut files: Vec<String> = walkdir::WalkDir::new(tree)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.metadata().is_ok_and(|m| m.len() > 0))
        .map(|e| format!("/{}", e.path().strip_prefix(tree).unwrap().display()))
        .collect();
    files.truncate(n);
    files
}

type Case<'a> = (&'a str, Box<dyn Fn(&Path) -> Built + 'a>);

fn tree_cases(src: &Sources) -> Vec<Case<'_>> {
    let plain = |flags: &'static [&'static str]| {
        Box::new(move |w: &Path| create(w, &src.tree, &src.tree, flags, b""))
            as Box<dyn Fn(&Path) -> Built>
    };
    let tar = |p: &Path, v: &'static str| {
        let p = p.to_path_buf();
        Box::new(move |w: &Path| {
            create(
                w,
                &p,
                &src.tar_tree,
                &["-t", "tar-rafs", "--fs-version", v],
                b"",
            )
        }) as Box<dyn Fn(&Path) -> Built>
    };
    let first = first_files(&src.tree, 2).join("\n").into_bytes();
    let first5 = first.clone();
    vec![
        ("create v6 zstd", plain(&[])),
        ("create v6 lz4_block", plain(&["--compressor", "lz4_block"])),
        ("create v6 none", plain(&["--compressor", "none"])),
        (
            "create v6 sha256 64K chunks",
            plain(&["--digester", "sha256", "--chunk-size", "0x10000"]),
        ),
        ("create v5 zstd", plain(&["--fs-version", "5"])),
        (
            "create v5 lz4_block",
            plain(&["--fs-version", "5", "--compressor", "lz4_block"]),
        ),
        (
            "create v5 none aligned",
            plain(&[
                "--fs-version",
                "5",
                "--compressor",
                "none",
                "--aligned-chunk",
            ]),
        ),
        (
            "create v6 --batch-size 0x10000",
            plain(&["--batch-size", "0x10000"]),
        ),
        ("create v6 --encrypt", plain(&["--encrypt"])),
        (
            "create v6 --prefetch-policy fs",
            Box::new(move |w: &Path| {
                create(
                    w,
                    &src.tree,
                    &src.tree,
                    &["--prefetch-policy", "fs"],
                    &first,
                )
            }),
        ),
        (
            "create v5 --prefetch-policy fs",
            Box::new(move |w: &Path| {
                create(
                    w,
                    &src.tree,
                    &src.tree,
                    &["--fs-version", "5", "--prefetch-policy", "fs"],
                    &first5,
                )
            }),
        ),
        (
            "create v6 --blob-inline-meta (the blob as bootstrap)",
            Box::new(|w: &Path| inline_blob(w, src)),
        ),
        (
            "converter Pack v6 (image.boot by ToC)",
            Box::new(|w: &Path| converter_layer(w, src, "6")),
        ),
        (
            "converter Pack v5 (image.boot by tar header)",
            Box::new(|w: &Path| converter_layer(w, src, "5")),
        ),
        ("create -t tar-rafs v6", tar(&src.tar, "6")),
        ("create -t tar-rafs v5", tar(&src.tar, "5")),
        ("create -t targz-rafs v6 (gzip)", tar(&src.tgz, "6")),
        ("create -t tar-rafs v6 (zstd)", tar(&src.tzst, "6")),
        ("create -t tar-tarfs", Box::new(|w: &Path| tarfs(w, src))),
        (
            "create -t targz-ref",
            Box::new(|w: &Path| targz_ref(w, src)),
        ),
        (
            "create -t targz-ref converter (OCIRef)",
            Box::new(|w: &Path| targz_ref_converter(w, src)),
        ),
        ("create -t estargz-ref", Box::new(estargz_ref)),
        (
            "create v6 --parent-bootstrap",
            Box::new(|w: &Path| on_parent(w, src, "6")),
        ),
        (
            "create v5 --parent-bootstrap",
            Box::new(|w: &Path| on_parent(w, src, "5")),
        ),
        (
            "create v6 --chunk-dict",
            Box::new(|w: &Path| on_chunk_dict(w, src)),
        ),
        (
            "optimize",
            Box::new(|w: &Path| {
                let b = create(&w.join("image"), &src.tree, &src.tree, &[], b"");
                optimized(w, b, &src.tree)
            }),
        ),
        (
            // the layer's own bootstrap keeps INLINED_FS_META: the optimized one must not
            "optimize of a converter layer's image.boot",
            Box::new(|w: &Path| {
                let layer = converter_layer(&w.join("layer"), src, "6");
                optimized(w, layer, &src.tar_tree)
            }),
        ),
    ]
}

/// Runs both readers on every case; one line each; panics listing the failures.
fn judge(up: &Upstream, root: &Path, cases: Vec<Case<'_>>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, (name, build)) in cases.into_iter().enumerate() {
        let w = root.join(format!("case{i:02}"));
        fs::create_dir_all(&w).unwrap();
        let b = build(&w);
        let v5 = erofs_forge::read::load(&b.boot).unwrap().image.version == 5;
        let served = match b.reader {
            Reader::Nydusd => up.serves(&b.boot, &b.blobs, &b.expect, &w, v5),
            Reader::KernelWithTar => upstream::kernel_serves(&b.boot, &b.blobs, &b.expect),
        };
        let checked = up.check(&b.boot, &b.blobs);
        let verdict = |r: &Result<(), String>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("FAIL ({e})"),
        };
        let who = match b.reader {
            Reader::Nydusd => "nydusd",
            Reader::KernelWithTar => "kernel",
        };
        let line = format!(
            "readers: {name:<52} {who} {:<4} nydus-image check {}",
            verdict(&served),
            verdict(&checked)
        );
        println!("{line}");
        if served.is_err() || checked.is_err() {
            failures.push(line);
        }
    }
    failures
}

/// Prints the total; on a failure keeps the work directory (its `caseNN` directories hold
/// each image, its blobs and nydusd's log) and fails.
fn report(failures: Vec<String>, total: &str, work: tempfile::TempDir) {
    println!("readers: {} failures ({total})", failures.len());
    if !failures.is_empty() {
        println!("readers: work directory kept: {}", work.keep().display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_of_image_from_the_fixture_tree() {
    let up = Upstream::from_env();
    let w = common::scratch();
    let src = sources(w.path());
    let cases = tree_cases(&src);
    let n = cases.len();
    let failures = judge(&up, w.path(), cases);
    report(failures, &format!("{n} images of the fixture tree"), w);
}

#[test]
fn every_kind_of_image_from_the_umoci_image() {
    let up = Upstream::from_env();
    let w = common::scratch();
    let (img, rootfs) = umoci_image::image_and_rootfs("readers", w.path());
    let cases = umoci_cases(&img, &rootfs);
    let n = cases.len();
    let failures = judge(&up, w.path(), cases);
    report(failures, &format!("{n} images of the umoci image"), w);
}

fn umoci_cases<'a>(img: &'a Path, rootfs: &'a Path) -> Vec<Case<'a>> {
    vec![
        (
            "merge v6 of tar-rafs layers",
            Box::new(move |w: &Path| merged(w, img, rootfs, "6")),
        ),
        (
            "merge v5 of tar-rafs layers",
            Box::new(move |w: &Path| merged(w, img, rootfs, "5")),
        ),
        (
            "converter v6: Pack, ToC, Merge, image.boot",
            Box::new(move |w: &Path| converter_image(w, img, rootfs, "6")),
        ),
        (
            "converter v5: Pack, tar headers, Merge, image.boot",
            Box::new(move |w: &Path| converter_image(w, img, rootfs, "5")),
        ),
        (
            "create -t oci v6",
            Box::new(move |w: &Path| oci(w, img, rootfs, "6")),
        ),
        (
            "create -t oci v5",
            Box::new(move |w: &Path| oci(w, img, rootfs, "5")),
        ),
        (
            "convert --oci-ref (targz-ref layers of the image)",
            Box::new(move |w: &Path| oci_ref(w, img, rootfs)),
        ),
        (
            "compact of the v6 merge",
            Box::new(move |w: &Path| compacted(w, img, rootfs)),
        ),
        (
            "chunkdict generate, a layer on it",
            Box::new(move |w: &Path| on_chunkdict(w, img, rootfs)),
        ),
    ]
}

/// Each layer `create -t tar-rafs` into one blob directory, then `merge`.
fn layer_bootstraps(w: &Path, img: &Path, version: &str) -> (Vec<PathBuf>, PathBuf) {
    let blobs = w.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let mut boots = Vec::new();
    for (i, d) in layer_digests(img).iter().enumerate() {
        let b = w.join(format!("layer{i}.boot"));
        let tar = umoci_image::blob(img, d);
        forge(&[
            "create",
            "-t",
            "tar-rafs",
            "--fs-version",
            version,
            "-D",
            s(&blobs),
            "-B",
            s(&b),
            s(&tar),
        ]);
        boots.push(b);
    }
    (boots, blobs)
}

fn layer_digests(img: &Path) -> Vec<String> {
    umoci_image::manifest_of(img)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn merged(w: &Path, img: &Path, rootfs: &Path, version: &str) -> Built {
    let (boots, blobs) = layer_bootstraps(w, img, version);
    let boot = w.join("bootstrap");
    let mut args = vec!["merge", "-B", s(&boot)];
    args.extend(boots.iter().map(|b| s(b)));
    forge(&args);
    Built {
        boot,
        blobs,
        expect: rootfs.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

/// nydus-snapshotter's converter end to end: each layer Packed through FIFOs, its
/// `image.boot` cut out (ToC for v6, tar headers for v5) and saved under the layer blob's
/// sha256, Merge with those as file names, the result saved as `image.boot` as the
/// snapshotter stores it.
fn converter_image(w: &Path, img: &Path, rootfs: &Path, version: &str) -> Built {
    let blobs = w.join("blobs");
    let layers = w.join("layers");
    fs::create_dir_all(&layers).unwrap();
    let mut sources = Vec::new();
    for (i, (_, tar)) in converter::layer_tars(img).iter().enumerate() {
        let bytes = converter::converter_pack(&w.join(format!("pack{i}")), tar, version, &[]);
        let hex = sha256_hex(&bytes);
        save_by_digest(&blobs, &bytes);
        let boot = converter::client_entry(&bytes, "image.boot").expect("image.boot");
        fs::write(layers.join(&hex), boot).unwrap();
        sources.push(layers.join(hex));
    }
    let boot = w.join("image.boot");
    let json = w.join("merge-output.json");
    let mut args = vec![
        "merge",
        "--log-level",
        "warn",
        "--prefetch-policy",
        "fs",
        "--output-json",
        s(&json),
        "--bootstrap",
        s(&boot),
    ];
    args.extend(sources.iter().map(|p| s(p)));
    ok(&args, b"/");
    Built {
        boot,
        blobs,
        expect: rootfs.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

fn oci(w: &Path, img: &Path, rootfs: &Path, version: &str) -> Built {
    let blobs = w.join("blobs");
    let boot = w.join("bootstrap");
    let src = format!("{}:t", s(img));
    forge(&[
        "create",
        "-t",
        "oci",
        "--fs-version",
        version,
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        &src,
    ]);
    // the layout's blobs are named by their digests, which are the nydus blob ids
    let blobs = blobs.join("blobs/sha256");
    Built {
        boot,
        blobs,
        expect: rootfs.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

/// `convert --oci-ref` of the image's layout: the ref blobs and the bootstrap layer; nydusd
/// reads the ref blobs' meta and inflates the image's own gzip layers (both saved under
/// their digests in one directory, as a registry would serve them).
fn oci_ref(w: &Path, img: &Path, rootfs: &Path) -> Built {
    let out = w.join("layout");
    let src = format!("oci:{}:t", s(img));
    let target = format!("oci:{}", s(&out));
    forge(&[
        "convert",
        "--source",
        &src,
        "--target",
        &target,
        "--oci-ref",
        "--work-dir",
        s(&w.join("work")),
    ]);
    let blobs = w.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    for dir in [out.join("blobs/sha256"), img.join("blobs/sha256")] {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
        }
    }
    let m = umoci_image::manifest_of(&out);
    let top = m["layers"].as_array().unwrap().last().unwrap().clone();
    let gz = fs::read(umoci_image::blob(&out, top["digest"].as_str().unwrap())).unwrap();
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar_bytes).unwrap();
    let boot = w.join("bootstrap");
    for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("image/image.boot") {
            e.unpack(&boot).unwrap();
        }
    }
    Built {
        boot,
        blobs,
        expect: rootfs.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

fn compacted(w: &Path, img: &Path, rootfs: &Path) -> Built {
    let m = merged(w, img, rootfs, "6");
    let out = w.join("compacted.boot");
    forge(&[
        "compact",
        "--bootstrap",
        s(&m.boot),
        "--blob-dir",
        s(&m.blobs),
        "--min-used-ratio",
        "99",
        "--compact-blob-size",
        "104857600",
        "--output-bootstrap",
        s(&out),
    ]);
    Built {
        boot: out,
        blobs: m.blobs,
        expect: rootfs.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

/// nydusify's chunkdict call over three versions (l1, l1+l2, l1+l2+l3), then the image built
/// again with `--chunk-dict` on the dictionary.
fn on_chunkdict(w: &Path, img: &Path, rootfs: &Path) -> Built {
    let (boots, blobs) = layer_bootstraps(w, img, "6");
    let mut sources = Vec::new();
    for n in 1..=boots.len() {
        let dir = w.join(format!("localhost:5000:umoci:v{n}"));
        fs::create_dir_all(&dir).unwrap();
        let merged = dir.join("nydus_bootstrap");
        let mut args = vec!["merge", "-B", s(&merged)];
        args.extend(boots[..n].iter().map(|b| s(b)));
        forge(&args);
        sources.push(merged);
    }
    let dict = w.join("chunkdict_bootstrap");
    let db = format!("sqlite://{}", s(&w.join("database.db")));
    let mut args = vec![
        "chunkdict",
        "generate",
        "--log-level",
        "warn",
        "--bootstrap",
        s(&dict),
        "--database",
        &db,
    ];
    args.extend(sources.iter().map(|b| s(b)));
    forge(&args);
    // every layer again, deduplicated against the dictionary, and merged
    let arg = format!("bootstrap={}", s(&dict));
    let mut layer_boots = Vec::new();
    for (i, d) in layer_digests(img).iter().enumerate() {
        let b = w.join(format!("dict-layer{i}.boot"));
        let tar = umoci_image::blob(img, d);
        forge(&[
            "create",
            "-t",
            "tar-rafs",
            "--chunk-dict",
            &arg,
            "-D",
            s(&blobs),
            "-B",
            s(&b),
            s(&tar),
        ]);
        layer_boots.push(b);
    }
    let boot = w.join("bootstrap");
    let mut args = vec!["merge", "--chunk-dict", &arg, "-B", s(&boot)];
    args.extend(layer_boots.iter().map(|b| s(b)));
    forge(&args);
    Built {
        boot,
        blobs,
        expect: rootfs.to_path_buf(),
        reader: Reader::Nydusd,
    }
}

/// Issue #25's case: the converter's Merge of upstream's own inline-meta layers
/// (fixtures/upstream/v6-merge-inline), the bootstrap saved as `image.boot` as the snapshotter
/// saves it. nydusd serves exactly what it serves for upstream's merge (`nydusd.txt`, written
/// by the shared `manifest.py`; tests/tools/ has a copy).
#[test]
fn converter_merge_of_upstreams_inline_layers() {
    let up = Upstream::from_env();
    let dir = common::repo().join("fixtures/upstream/v6-merge-inline");
    let w = common::scratch();
    let boot = w.path().join("image.boot");
    let layer = |id: &str| dir.join("layers").join(id);
    let (l1, l2) = (
        layer("182ff32685f02e17cc6e28cf2da75da3f20491891479c4b149a465eeeed4797b"),
        layer("29b75862740e6205e229e4a65b0cdf215616aee2afdae559bca328e5852075ec"),
    );
    ok(
        &[
            "merge",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--bootstrap",
            s(&boot),
            s(&l1),
            s(&l2),
        ],
        b"/",
    );
    let daemon = up
        .mount(&boot, &dir.join("blobs"), w.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let listed = w.path().join("served.txt");
    let tool = common::repo().join("tests/tools/manifest.py");
    let o = std::process::Command::new("python3")
        .arg(&tool)
        .args(["dir", s(&daemon.mnt), "-o", s(&listed)])
        .output()
        .unwrap();
    drop(daemon);
    assert!(
        o.status.success(),
        "manifest.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // the first line names the mount point
    let body = |p: &Path| -> Vec<String> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    let (ours, theirs) = (body(&listed), body(&dir.join("nydusd.txt")));
    assert!(!theirs.is_empty());
    assert!(
        ours == theirs,
        "nydusd serves our merge differently from upstream's"
    );
    println!(
        "readers: converter merge of v6-merge-inline      nydusd ok (= nydusd.txt, {} entries)",
        ours.len()
    );
}
