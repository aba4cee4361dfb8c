//! Bad input on every command (issue #18; the table in README.md "Bad input"): a missing file,
//! a directory where a file is expected, a truncated bootstrap or archive, the blob of another
//! image, a bootstrap of the other RAFS version, an unreadable file (EACCES, run without root's
//! capabilities through `setpriv`) and a file that becomes a directory while `create` reads the
//! tree. Every case must end with exactly one stderr line `error: ...` naming the file (and
//! the offset where there is one), a non-zero exit that is not a panic, within a minute, and
//! an output directory left empty: no final name, no temporary file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::compact::noise;
use crate::signals::{until_stopped, wait_stderr};

/// One command run on one kind of bad input.
struct Case {
    /// The command as the README table names it.
    row: &'static str,
    /// Its arguments, relative to the fixture directory; `{out}` is an empty output directory.
    args: String,
    /// What the error line must hold (the file, the offset, the reason).
    expect: Vec<String>,
}

fn case(row: &'static str, args: &str, expect: &[&str]) -> Case {
    Case {
        row,
        args: args.to_string(),
        expect: expect.iter().map(|e| e.to_string()).collect(),
    }
}

/// The fixture directory (built once): two v6 images and two v5 images of different trees,
/// each with its blob directory; single-blob v6 images; tars; an OCI layout; bad copies.
struct Fixture {
    root: PathBuf,
    /// The blob id of `a6.boot` (its file in `A6/`).
    id_a6: String,
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn truncated(from: &Path, to: &Path, len: usize) {
    let bytes = std::fs::read(from).unwrap();
    write(to, &bytes[..len]);
}

fn build_images(r: &Path) {
    let at = |p: &str| r.join(p).to_str().unwrap().to_string();
    for (tree, seed) in [("src", 1), ("src2", 2)] {
        write(&r.join(tree).join("a"), format!("{tree}\n").as_bytes());
        // the second tree's blob is the shorter
        let big = 300_000 - 100_000 * (seed as usize - 1);
        write(&r.join(tree).join("d/big"), &noise(seed, big));
        write(&r.join(tree).join("d/small"), b"x\n");
    }
    for (name, v, tree) in [("a6", "6", "src"), ("b6", "6", "src2")]
        .into_iter()
        .chain([("a5", "5", "src"), ("b5", "5", "src2")])
    {
        let dir = at(&name.to_uppercase());
        std::fs::create_dir_all(&dir).unwrap();
        let boot = at(&format!("{name}.boot"));
        forge(&["create", "-v", v, "-D", &dir, "-B", &boot, &at(tree)]);
    }
    for (name, tree) in [("a6", "src"), ("b6", "src2")] {
        let (boot, blob) = (at(&format!("{name}b.boot")), at(&format!("{name}.blob")));
        forge(&["create", "-b", &blob, "-B", &boot, &at(tree)]);
    }
    // tars of the first tree, written by unpack
    let tar = at("src.tar");
    forge(&["unpack", &at("a6.boot"), "-D", &at("A6"), "-o", &tar]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &std::fs::read(&tar).unwrap()).unwrap();
    write(&r.join("src.tar.gz"), &gz.finish().unwrap());
}

/// A one-layer OCI image layout in `dir` whose layer is `layer` (a plain tar); returns the
/// layer's path inside the layout.
fn oci_layout(dir: &Path, layer: &[u8]) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        write(&blobs.join(&hex), bytes);
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(layer);
    let (os, arch) = ("linux", std::env::consts::ARCH.replace("x86_64", "amd64"));
    let arch = arch.replace("aarch64", "arm64");
    let config = serde_json::json!({"architecture": arch, "os": os,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}, "config": {}});
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer_size}]});
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": arch, "os": os}}]});
    write(&dir.join("index.json"), index.to_string().as_bytes());
    write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    blobs.join(layer_digest.trim_start_matches("sha256:"))
}

/// The bad copies: truncations, a blob under another image's name, directories and
/// unreadable files where files are expected, OCI layouts with a bad layer.
fn build_bad(r: &Path, id_a6: &str) {
    truncated(&r.join("a6.boot"), &r.join("t6.boot"), 10_000);
    // inside the superblock: nothing tells it from a blob any more
    truncated(&r.join("a6.boot"), &r.join("t6s.boot"), 1_000);
    truncated(&r.join("a5.boot"), &r.join("t5.boot"), 5_000);
    truncated(&r.join("src.tar"), &r.join("t.tar"), 100_000);
    truncated(&r.join("src.tar.gz"), &r.join("t.tar.gz"), 100_000);
    std::fs::create_dir_all(r.join("adir")).unwrap();
    std::fs::create_dir_all(r.join("NOBLOB")).unwrap();
    write(&r.join("pf"), b"/d/big\n");
    // W6: a6's blob name holding b6's blob; D6: a directory under that name
    let b6 = one_file(&r.join("B6"), "");
    write(&r.join("W6").join(id_a6), &std::fs::read(b6).unwrap());
    // W5 likewise for the v5 images (blobs without meta: the chunk table places the data)
    let (a5, b5) = (one_file(&r.join("A5"), ""), one_file(&r.join("B5"), ""));
    write(
        &r.join("W5").join(a5.file_name().unwrap()),
        &std::fs::read(b5).unwrap(),
    );
    std::fs::create_dir_all(r.join("D6").join(id_a6)).unwrap();
    // unreadable: a bootstrap, a blob, tars, a file and a directory of a source tree
    std::fs::copy(r.join("a6.boot"), r.join("e6.boot")).unwrap();
    let a6_blob = std::fs::read(r.join("A6").join(id_a6)).unwrap();
    write(&r.join("E6").join(id_a6), &a6_blob);
    std::fs::copy(r.join("src.tar"), r.join("e.tar")).unwrap();
    std::fs::copy(r.join("src.tar.gz"), r.join("e.tar.gz")).unwrap();
    write(&r.join("efile/ok"), b"ok\n");
    write(&r.join("efile/sub/locked"), b"secret\n");
    write(&r.join("edir/ok"), b"ok\n");
    write(&r.join("edir/closed/f"), b"f\n");
    for p in [
        "e6.boot",
        "e.tar",
        "e.tar.gz",
        "efile/sub/locked",
        "edir/closed",
    ] {
        chmod(&r.join(p), 0o000);
    }
    chmod(&r.join("E6").join(id_a6), 0o000);
    let tar = std::fs::read(r.join("src.tar")).unwrap();
    oci_layout(&r.join("lay"), &tar);
    std::fs::remove_file(oci_layout(&r.join("lay-missing"), &tar)).unwrap();
    let l = oci_layout(&r.join("lay-dir"), &tar);
    std::fs::remove_file(&l).unwrap();
    std::fs::create_dir(&l).unwrap();
    let l = oci_layout(&r.join("lay-trunc"), &tar);
    write(&l, &tar[..100_000]);
    chmod(&oci_layout(&r.join("lay-eacces"), &tar), 0o000);
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // shared by the tests of one run, rebuilt by the next run
        let root = repo().join("target/test-scratch/bad-input");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // reachable by the unprivileged runs
        chmod(&root, 0o755);
        build_images(&root);
        let name = |d: &str| {
            let f = one_file(&root.join(d), "");
            f.file_name().unwrap().to_str().unwrap().to_string()
        };
        let id_a6 = name("A6");
        build_bad(&root, &id_a6);
        Fixture { root, id_a6 }
    })
}

/// Runs `c` in the fixture directory (as nobody with `as_nobody`); the failure, if any.
fn judge(f: &Fixture, c: &Case, n: usize, as_nobody: bool) -> Option<String> {
    // unique across the tests running at once
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let out = format!("out-{}-{n}", RUNS.fetch_add(1, Ordering::SeqCst));
    let out_dir = f.root.join(&out);
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir(&out_dir).unwrap();
    chmod(&out_dir, 0o777);
    let args: Vec<String> = c
        .args
        .replace("{out}", &out)
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut cmd = if as_nobody {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()]);
        cmd
    } else {
        Command::new(bin())
    };
    let child = cmd
        .args(&args)
        .current_dir(&f.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = wait_stderr(child, Duration::from_secs(60));
    let lines: Vec<&str> = err.lines().collect();
    let left: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut wrong = Vec::new();
    // 2 where nydus-image gives it (images that cannot be stacked) and for verify (could not
    // compare); 1 otherwise; never a signal or a panic (101)
    let stacking = c.expect.iter().any(|e| e.contains(", not v"));
    let want = if stacking || c.args.starts_with("verify") {
        2
    } else {
        1
    };
    if status.code() != Some(want) {
        wrong.push(format!("{status}, not exit code {want}"));
    }
    if lines.len() != 1 || !lines[0].starts_with("error: ") {
        wrong.push("not one `error:` line".into());
    }
    // a cause quoted twice ("x: No such file or directory: No such file or directory")
    let parts: Vec<&str> = err.trim_end().split(": ").collect();
    if parts.windows(2).any(|w| w[0] == w[1]) {
        wrong.push("a repeated cause".into());
    }
    // shown with --nocapture: the messages the README table describes
    println!("{} [{}]\n    {}", c.row, c.args, err.trim_end());
    wrong.extend(
        c.expect
            .iter()
            .filter(|e| !err.contains(e.as_str()))
            .map(|e| format!("no {e:?}")),
    );
    if left.is_empty() {
        std::fs::remove_dir(&out_dir).unwrap();
    } else {
        wrong.push(format!("left {left:?} in the output directory"));
    }
    (!wrong.is_empty()).then(|| format!("{} [{}]: {}\n    {err}", c.row, c.args, wrong.join(", ")))
}

/// Runs every case; fails listing every case that went wrong.
fn table(cases: Vec<Case>, as_nobody: bool) {
    let f = fixture();
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(n, c)| judge(f, c, n, as_nobody))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every command that reads a bootstrap, on bootstrap `boot` with the blobs of `blobs`.
fn on_bootstrap(boot: &str, blobs: &str, expect: &[&str]) -> Vec<Case> {
    let rows: [(&'static str, String); 16] = [
        ("merge", format!("merge -B {{out}}/m {boot}")),
        (
            "export --block",
            format!("export --block -B {boot} {blobs} -O {{out}}/x"),
        ),
        (
            "export --block --verity",
            format!("export --block --verity -B {boot} {blobs} -O {{out}}/x"),
        ),
        (
            "export --block --compressor",
            format!("export --block --compressor lz4 -B {boot} {blobs} -O {{out}}/x"),
        ),
        (
            "export --tar",
            format!("export --tar {{out}}/x.tar -B {boot} {blobs}"),
        ),
        ("check", format!("check {boot} {blobs} -J {{out}}/c.json")),
        ("inspect", format!("inspect {boot} -R stats")),
        ("stat", format!("stat -B {boot} -J {{out}}/s.json")),
        (
            "unpack -o",
            format!("unpack {boot} {blobs} -o {{out}}/x.tar"),
        ),
        (
            "unpack --output-dir",
            format!("unpack {boot} {blobs} --output-dir {{out}}/d"),
        ),
        ("compact", format!("compact -B {boot} {blobs} -O {{out}}/x")),
        (
            "optimize",
            format!("optimize -B {boot} {blobs} -p pf -O {{out}}/x --output-blob-dir {{out}}"),
        ),
        (
            "chunkdict generate",
            format!("chunkdict generate {boot} -B {{out}}/x -D {{out}}"),
        ),
        (
            "verify",
            format!("verify {boot} src {blobs} -J {{out}}/v.json"),
        ),
        ("report", format!("report {boot} {blobs} -J {{out}}/r.json")),
        (
            "create --parent-bootstrap",
            format!("create -D {{out}} --parent-bootstrap {boot} src2"),
        ),
    ];
    rows.into_iter()
        .map(|(row, args)| Case {
            row,
            args,
            expect: expect.iter().map(|e| e.to_string()).collect(),
        })
        .collect()
}

/// The commands that read chunk data, on bootstrap `boot` with the blobs of `blobs`.
fn on_blob(boot: &str, blobs: &str, expect: &[&str]) -> Vec<Case> {
    let keep = [
        "export --block",
        "export --block --verity",
        "export --block --compressor",
        "export --tar",
        "check",
        "unpack -o",
        "unpack --output-dir",
        "optimize",
        "verify",
        "report",
    ];
    on_bootstrap(boot, blobs, expect)
        .into_iter()
        .filter(|c| keep.contains(&c.row))
        .collect()
}

#[test]
fn missing_file() {
    let nf = "No such file or directory";
    let mut cases = on_bootstrap("nope.boot", "-D A6", &["nope.boot", nf]);
    cases.extend([
        case("create (dir)", "create -D {out} nope", &["nope", nf]),
        case(
            "create -t tar-rafs",
            "create -t tar-rafs -D {out} nope.tar",
            &["nope.tar", nf],
        ),
        case(
            "create -t targz-rafs",
            "create -t targz-rafs -D {out} nope.tgz",
            &["nope.tgz", nf],
        ),
        case(
            "create -t oci",
            "create -l warn -t oci -D {out} nope",
            &["nope", nf],
        ),
        case(
            "create -t oci",
            "create -l warn -t oci -D {out} lay-missing",
            &["lay-missing/blobs/sha256/", nf],
        ),
    ]);
    let blob = format!("NOBLOB/{}", fixture().id_a6);
    cases.extend(on_blob("a6.boot", "-D NOBLOB", &[&blob, nf]));
    cases.extend(on_blob("a6b.boot", "-b nope.blob", &["nope.blob", nf]));
    table(cases, false);
}

#[test]
fn directory_where_a_file_is_expected() {
    let mut cases = on_bootstrap("adir", "-D A6", &["adir", "Is a directory"]);
    // verify tells an image from an OCI layout by what it is: a directory is a layout
    for c in cases.iter_mut().filter(|c| c.row == "verify") {
        c.expect = vec!["adir".into(), "not an OCI image layout".into()];
    }
    let tar = "a tar source must be a file";
    cases.extend([
        case(
            "create (dir)",
            "create -D {out} src/a",
            &["src/a", "not a directory"],
        ),
        case(
            "create -t tar-rafs",
            "create -t tar-rafs -D {out} adir",
            &["adir", tar],
        ),
        case(
            "create -t targz-rafs",
            "create -t targz-rafs -D {out} adir",
            &["adir", tar],
        ),
        case(
            "create -t oci",
            "create -l warn -t oci -D {out} adir",
            &["adir", "not an OCI image layout"],
        ),
        case(
            "create -t oci",
            "create -l warn -t oci -D {out} lay-dir",
            &["lay-dir/blobs/sha256/", "Is a directory"],
        ),
    ]);
    let blob = format!("D6/{}", fixture().id_a6);
    cases.extend(on_blob("a6.boot", "-D D6", &[&blob, "Is a directory"]));
    cases.extend(on_blob("a6b.boot", "-b adir", &["adir", "Is a directory"]));
    table(cases, false);
}

#[test]
fn truncated_input() {
    let mut cases = on_bootstrap("t6.boot", "-D A6", &["t6.boot: ", "at offset 0x"]);
    cases.extend(on_bootstrap(
        "t5.boot",
        "-D A5",
        &["t5.boot: ", "at offset 0x"],
    ));
    let no_superblock = "no RAFS v5 or v6 superblock, and not a blob with an inlined bootstrap";
    cases.extend(on_bootstrap(
        "t6s.boot",
        "-D A6",
        &["t6s.boot: ", "at offset 0x", no_superblock],
    ));
    let cut = "the archive ends inside this entry's data";
    cases.extend([
        case(
            "create -t tar-rafs",
            "create -t tar-rafs -D {out} t.tar",
            &["t.tar: tar entry", "at offset 0x", cut],
        ),
        case(
            "create -t targz-rafs",
            "create -t targz-rafs -D {out} t.tar.gz",
            &["t.tar.gz: tar entry", "at offset 0x"],
        ),
        case(
            "create -t oci",
            "create -l warn -t oci -D {out} lay-trunc",
            &["lay-trunc/blobs/sha256/", "at offset 0x", cut],
        ),
        case(
            "verify",
            "verify a6.boot t.tar -D A6",
            &["t.tar: tar entry", "at offset 0x"],
        ),
    ]);
    table(cases, false);
}

#[test]
fn blob_of_another_image() {
    let f = fixture();
    // the chunks' digests do not match, or (a blob with its own meta) the blob meta is not
    // where the image says
    let in_dir = format!("W6/{}: ", f.id_a6);
    let mut cases = on_blob("a6.boot", "-D W6", &[&in_dir, "at offset 0x"]);
    cases.extend(on_blob(
        "a6b.boot",
        "-b b6.blob",
        &["b6.blob: ", "at offset 0x"],
    ));
    let a5_blob = one_file(&f.root.join("A5"), "");
    let in_w5 = format!("W5/{}: ", a5_blob.file_name().unwrap().to_str().unwrap());
    let v5 = on_blob("a5.boot", "-D W5", &[&in_w5, "at offset 0x"]);
    // export --block takes v6 only (bootstrap_of_the_other_version)
    cases.extend(
        v5.into_iter()
            .filter(|c| !c.row.starts_with("export --block")),
    );
    table(cases, false);
    // what reads only the bootstrap, or checks only that the blob is there, succeeds
    let w = scratch();
    let at = |p: &str| f.root.join(p).to_str().unwrap().to_string();
    forge(&["inspect", &at("a6.boot"), "-R", "stats"]);
    let x = w.path().join("x");
    let out = forge(&[
        "compact",
        "-B",
        &at("a6.boot"),
        "-D",
        &at("W6"),
        "-O",
        s(&x),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing written"));
    assert!(!x.exists());
}

#[test]
fn bootstrap_of_the_other_version() {
    let (v5, v6) = ("RAFS v5, not v6", "RAFS v6, not v5");
    table(
        vec![
            case(
                "merge",
                "merge -B {out}/m a6.boot b5.boot",
                &["b5.boot", v5],
            ),
            case(
                "merge",
                "merge -B {out}/m a5.boot b6.boot",
                &["b6.boot", v6],
            ),
            case(
                "merge --parent-bootstrap",
                "merge -B {out}/m --parent-bootstrap a5.boot b6.boot",
                &["b6.boot", v6],
            ),
            case(
                "create --parent-bootstrap",
                "create -D {out} --parent-bootstrap a5.boot src2",
                &["a5.boot", v5],
            ),
            case(
                "create --parent-bootstrap",
                "create -v 5 -D {out} --parent-bootstrap a6.boot src2",
                &["a6.boot", v6],
            ),
            case(
                "create --chunk-dict",
                "create -D {out} --chunk-dict a5.boot src2",
                &["a5.boot", v5],
            ),
            case(
                "create --chunk-dict",
                "create -v 5 -D {out} --chunk-dict a6.boot src2",
                &["a6.boot", v6],
            ),
            case(
                "compact --chunk-dict",
                "compact -B a6.boot -D A6 -O {out}/x --chunk-dict a5.boot",
                &["a5.boot", v5],
            ),
            case(
                "chunkdict generate",
                "chunkdict generate a5.boot a6.boot -B {out}/x -D {out}",
                &["a6.boot", v6],
            ),
            case(
                "export --block",
                "export --block -B a5.boot -D A5 -O {out}/x",
                &[
                    "a5.boot",
                    "RAFS v5: export --block needs a RAFS v6 bootstrap",
                ],
            ),
            case(
                "export --block --verity",
                "export --block --verity -B a5.boot -D A5 -O {out}/x",
                &[
                    "a5.boot",
                    "RAFS v5: export --block needs a RAFS v6 bootstrap",
                ],
            ),
        ],
        false,
    );
    // merge reads only the dictionary's blob table, which both versions share
    let w = scratch();
    let at = |p: &str| fixture().root.join(p).to_str().unwrap().to_string();
    let m = w.path().join("m");
    forge(&[
        "merge",
        "-B",
        s(&m),
        "--chunk-dict",
        &at("a5.boot"),
        &at("b6.boot"),
    ]);
    // export of a v5 image into an EROFS image with its own compression converts it
    let x = w.path().join("x");
    forge(&[
        "export",
        "--block",
        "--compressor",
        "lz4",
        "-B",
        &at("a5.boot"),
        "-D",
        &at("A5"),
        "-O",
        s(&x),
    ]);
    assert!(x.is_file());
}

#[test]
#[cfg_attr(no_root, ignore = "needs root (to drop its capabilities with setpriv)")]
fn unreadable_file() {
    let denied = "Permission denied";
    let mut cases = on_bootstrap("e6.boot", "-D A6", &["e6.boot", denied]);
    cases.extend([
        case(
            "create (dir)",
            "create -D {out} efile",
            &["open efile/sub/locked", denied],
        ),
        case(
            "create (dir)",
            "create -v 5 -D {out} efile",
            &["open efile/sub/locked", denied],
        ),
        case(
            "create (dir)",
            "create -D {out} edir",
            &["edir/closed", denied],
        ),
        case(
            "create -t tar-rafs",
            "create -t tar-rafs -D {out} e.tar",
            &["e.tar", denied],
        ),
        case(
            "create -t targz-rafs",
            "create -t targz-rafs -D {out} e.tar.gz",
            &["e.tar.gz", denied],
        ),
        case(
            "create -t oci",
            "create -l warn -t oci -D {out} lay-eacces",
            &["lay-eacces/blobs/sha256/", denied],
        ),
        case(
            "verify",
            "verify a6.boot efile -D A6",
            &["efile/sub/locked", denied],
        ),
    ]);
    let blob = format!("E6/{}", fixture().id_a6);
    cases.extend(on_blob("a6.boot", "-D E6", &[&blob, denied]));
    table(cases, true);
}

/// `create` of a tree whose first file becomes a directory after the walk saw it and before
/// its data is read (the binary stops itself at that point: `EROFS_FORGE_STOP_AT=file:1`).
fn type_change(version: &str) {
    let w = scratch();
    let (src, out) = (w.path().join("src"), w.path().join("out"));
    write(&src.join("a"), b"a file\n");
    write(&src.join("b/c"), &noise(3, 10_000));
    std::fs::create_dir(&out).unwrap();
    let child = Command::new(bin())
        .args(["create", "-v", version, "-D", s(&out), s(&src)])
        .env("EROFS_FORGE_STOP_AT", "file:1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = until_stopped(child).expect("the run stops at its first file");
    std::fs::remove_file(src.join("a")).unwrap();
    std::fs::create_dir(src.join("a")).unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT).unwrap();
    let (status, err) = wait_stderr(child, Duration::from_secs(60));
    assert!(status.code() == Some(1), "{status}: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("stopped at "))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    let want = format!(
        "error: {}: changed type while the tree was read: now a directory",
        src.join("a").display()
    );
    assert_eq!(lines[0], want);
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "output left behind"
    );
}

#[test]
fn file_becomes_a_directory_during_create_v6() {
    type_change("6");
}

#[test]
fn file_becomes_a_directory_during_create_v5() {
    type_change("5");
}
